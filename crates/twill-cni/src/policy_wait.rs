//! No early packet. ADD marks the pod's interface as a pod interface (interface group
//! [`POD_GROUP`]: its host veth, and in bridge wiring the bridge) and, when the node's
//! policy table (`table inet twill-policy`, twilld `--policy true`) exists, waits until
//! twilld has put the pod in both dispatch maps (`from_pod`, `to_pod`) with its profile.
//! Until then the table drops every packet of that interface ("unknown interface"), so
//! the pod's first packet is judged by its policy or not sent at all. The wait is bounded
//! (`policyWaitSeconds` in the CNI config, default 10); a timeout fails the ADD, which
//! then undoes everything it did.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use twill_api::cni::{CniError, ErrorCode, NetConf};
use twill_api::wiring::PodWiring;
use twill_netlink::codec::IfInfoMsg;
use twill_netlink::rtnl::RTM_SETLINK;
use twill_netlink::Handle;
use twill_nft::policy::{key_addr, key_ifname, Element, ElementData, ElementTable, FAMILY_INET};
use twill_policy::compile::{MAP_FROM_POD, MAP_TO_POD, POD_GROUP, TABLE};

/// IFLA_GROUP (linux/if_link.h).
const IFLA_GROUP: u16 = 27;
/// How often the maps are looked at while waiting.
const POLL: Duration = Duration::from_millis(10);

fn kernel(what: String, e: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::Kernel, what).with_details(e.to_string())
}

/// Puts link `name` in [`POD_GROUP`].
fn set_group(host: &mut Handle, name: &str) -> Result<(), CniError> {
    let link = host
        .link_by_name(name)
        .map_err(|e| kernel(format!("cannot look up {name}"), e))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::Kernel,
                format!("{name} vanished while the pod was being added"),
            )
        })?;
    let mut b = IfInfoMsg::link(link.index).request(RTM_SETLINK);
    b.attr_u32(IFLA_GROUP, POD_GROUP);
    host.socket().request(b.build()).map(drop).map_err(|e| {
        kernel(
            format!("cannot put {name} in interface group {POD_GROUP:#x}"),
            e,
        )
    })
}

/// The interface the pod's packets carry in the node's forward hook (the dispatch key).
fn dispatch_iface<'a>(conf: &'a NetConf, host_veth: &'a str) -> &'a str {
    match conf.pod_wiring {
        PodWiring::L3 => host_veth,
        PodWiring::Bridge => &conf.bridge,
    }
}

/// Marks the pod's interfaces and, if the policy table exists, waits for the pod's
/// dispatch entries (see the module doc).
pub fn wait(conf: &NetConf, host_veth: &str, pod_ip: Ipv4Addr) -> Result<(), CniError> {
    let mut host = Handle::new().map_err(|e| kernel("cannot open a netlink socket".into(), e))?;
    set_group(&mut host, host_veth)?;
    if conf.pod_wiring == PodWiring::Bridge {
        set_group(&mut host, &conf.bridge)?;
    }
    let mut table = ElementTable::new(FAMILY_INET, TABLE)
        .map_err(|e| kernel("cannot open nftables".into(), e))?;
    if !table
        .exists()
        .map_err(|e| kernel("cannot look for the policy table".into(), e))?
    {
        return Ok(());
    }
    let iface = dispatch_iface(conf, host_veth);
    let mut key = Vec::with_capacity(20);
    key_ifname(&mut key, iface);
    key_addr(&mut key, pod_ip);
    let element = Element {
        key,
        data: ElementData::None,
    };
    let end = Instant::now() + conf.policy_wait;
    loop {
        let mut present = true;
        for map in [MAP_FROM_POD, MAP_TO_POD] {
            present &= table
                .has(map, &element)
                .map_err(|e| kernel(format!("cannot read the policy map {map}"), e))?;
        }
        if present {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(timeout(conf, iface, pod_ip));
        }
        std::thread::sleep(POLL);
    }
}

fn timeout(conf: &NetConf, iface: &str, ip: Ipv4Addr) -> CniError {
    CniError::new(
        ErrorCode::TryAgainLater,
        format!(
            "the pod's network policy is not in place after {}s: this node has table inet {TABLE} (twilld --policy true) but \"{iface}\" . {ip} is not in its dispatch maps, and a pod without its policy may not send; the pod was not added",
            conf.policy_wait.as_secs()
        ),
    )
    .with_details(format!(
        "is twilld running with --policy true and reaching the store (curl its /readyz; /metrics twill_policy_loaded)? It programs the pod once it publishes its endpoint. If the store is slow, raise policyWaitSeconds in the CNI config (now {}); to run without policy, start twilld with --policy false, which removes the table",
        conf.policy_wait.as_secs()
    ))
}
