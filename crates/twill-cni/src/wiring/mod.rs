//! The kernel side of one attachment: the node's bridge with the gateway address, a veth
//! pair born with one end in each namespace, the pod's address and routes. All over
//! netlink: one socket in the node's namespace, one in the pod's.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use twill_api::cni::{CniError, ErrorCode, Interface};
use twill_netlink::netns::Netns;
use twill_netlink::route::{Handle, Link, Route};

/// What ADD asks of the kernel.
pub struct Plan<'a> {
    pub bridge: &'a str,
    pub mtu: u32,
    pub hairpin: bool,
    pub gateway: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub pod_ip: Ipv4Addr,
    pub ifname: &'a str,
    pub host_veth: String,
    /// Routes in the pod: (destination, gateway).
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub route_localnet: bool,
}

/// The three interfaces of the result, in the spec's order: bridge, host veth, pod side.
pub struct Attached {
    pub bridge: Interface,
    pub host: Interface,
    pub pod: Interface,
}

fn kernel(what: &str, e: twill_netlink::Error) -> CniError {
    CniError::new(ErrorCode::Kernel, format!("{what} failed")).with_details(e.to_string())
}

pub fn mac_string(mac: Option<[u8; 6]>) -> String {
    mac.map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
    .unwrap_or_default()
}

fn iface(link: &Link, sandbox: &str) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: mac_string(link.mac),
        mtu: Some(link.mtu),
        sandbox: sandbox.to_string(),
    }
}

/// Makes sure the bridge exists, is up and holds the gateway address; turns on forwarding.
pub fn ensure_bridge(host: &mut Handle, plan: &Plan<'_>) -> Result<Link, CniError> {
    let bridge = host
        .create_bridge(plan.bridge, Some(plan.mtu))
        .map_err(|e| kernel(&format!("creating bridge {}", plan.bridge), e))?;
    host.add_address(bridge.index, plan.gateway, plan.subnet.prefix_len())
        .map_err(|e| {
            kernel(
                &format!("adding gateway {} to {}", plan.gateway, plan.bridge),
                e,
            )
        })?;
    ensure_sysctl("net/ipv4/ip_forward", "1")?;
    if plan.route_localnet {
        // 127.0.0.1:hostPort is DNATed to the pod; the kernel drops martian 127/8 sources
        // routed out of a bridge unless route_localnet is on for it (as CNI portmap does).
        ensure_sysctl(
            &format!("net/ipv4/conf/{}/route_localnet", plan.bridge),
            "1",
        )?;
    }
    Ok(bridge)
}

/// Writes a sysctl of the node's namespace, skipping the write when it already holds `value`
/// (a read is cheaper than a write that takes the sysctl lock).
fn ensure_sysctl(key: &str, value: &str) -> Result<(), CniError> {
    if twill_netlink::get_sysctl(None, key).is_ok_and(|v| v == value) {
        return Ok(());
    }
    twill_netlink::set_sysctl(None, key, value).map_err(|e| {
        CniError::new(
            ErrorCode::Io,
            format!("cannot set sysctl {} = {value}", key.replace('/', ".")),
        )
        .with_details(e.to_string())
    })
}

/// Creates the veth pair, configures both ends and the pod's routes. On error the caller
/// removes the host end (which removes the pair).
pub fn attach(
    host: &mut Handle,
    pod_ns: &Netns,
    bridge: &Link,
    plan: &Plan<'_>,
) -> Result<Attached, CniError> {
    let create = |host: &mut Handle| {
        host.create_veth(
            &plan.host_veth,
            plan.ifname,
            pod_ns,
            plan.mtu,
            Some(bridge.index),
        )
    };
    let mut created = create(host);
    if created.as_ref().is_err_and(|e| e.is_exists()) {
        // The host end is named after this attachment, whose address record we have
        // just created: a veth of that name is a leftover of an earlier DEL whose reaper
        // has not finished (or died). Remove it and try once more.
        if let Ok(Some(stale)) = host.link_by_name(&plan.host_veth) {
            if stale.kind.as_deref() == Some("veth") {
                detach(host, &plan.host_veth)?;
                created = create(host);
            }
        }
    }
    created.map_err(|e| {
        if e.is_exists() {
            CniError::new(
                ErrorCode::Kernel,
                format!(
                    "interface {} already exists in {}",
                    plan.ifname,
                    pod_ns.path().display()
                ),
            )
            .with_details("the pod already has an interface of that name: choose another CNI_IFNAME or remove it")
        } else {
            kernel(
                &format!("creating veth {} <-> {}", plan.host_veth, plan.ifname),
                e,
            )
        }
    })?;
    let host_link = host
        .link_by_name(&plan.host_veth)
        .map_err(|e| kernel("reading the host veth", e))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::Kernel,
                format!("veth {} vanished after creation", plan.host_veth),
            )
        })?;
    if plan.hairpin {
        host.set_hairpin(host_link.index, true)
            .map_err(|e| kernel("turning on hairpin mode", e))?;
    }

    let mut pod =
        Handle::new_in(pod_ns).map_err(|e| kernel("opening netlink in the pod's namespace", e))?;
    let pod_link = pod
        .link_by_name(plan.ifname)
        .map_err(|e| kernel("reading the pod interface", e))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::Kernel,
                format!("{} missing in the pod after creation", plan.ifname),
            )
        })?;
    pod.add_address(pod_link.index, plan.pod_ip, plan.subnet.prefix_len())
        .map_err(|e| kernel(&format!("adding {} to the pod", plan.pod_ip), e))?;
    pod.set_link_up(pod_link.index)
        .map_err(|e| kernel("bringing the pod interface up", e))?;
    for (dst, gw) in &plan.routes {
        let route = Route {
            gateway: Some(*gw),
            oif: Some(pod_link.index),
            ..Route::new(*dst)
        };
        pod.add_route(&route)
            .map_err(|e| kernel(&format!("adding route {dst} via {gw} in the pod"), e))?;
    }
    let sandbox = pod_ns.path().display().to_string();
    let bridge_now = host
        .link_by_index(bridge.index)
        .ok()
        .flatten()
        .unwrap_or_else(|| bridge.clone());
    Ok(Attached {
        bridge: iface(&bridge_now, ""),
        host: iface(&host_link, ""),
        pod: iface(&pod_link, &sandbox),
    })
}

/// Cuts the pod off at once: its host end goes down, so the bridge stops forwarding to
/// it and its address can be handed out again. Returns whether the veth still exists.
pub fn cut_off(host: &mut Handle, host_veth: &str) -> Result<bool, CniError> {
    match host.link_by_name(host_veth) {
        Ok(Some(link)) => match host.set_link_down(link.index) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(kernel(&format!("taking veth {host_veth} down"), e)),
        },
        Ok(None) => Ok(false),
        Err(e) => Err(kernel(&format!("looking up veth {host_veth}"), e)),
    }
}

/// Removes the pod's veth pair by its host end. Gone already is fine.
pub fn detach(host: &mut Handle, host_veth: &str) -> Result<(), CniError> {
    match host.link_by_name(host_veth) {
        Ok(Some(link)) => match host.delete_link(link.index) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(kernel(&format!("deleting veth {host_veth}"), e)),
        },
        Ok(None) => Ok(()),
        Err(e) => Err(kernel(&format!("looking up veth {host_veth}"), e)),
    }
}

/// CHECK: the pod interface exists with the address and routes the result promised.
pub fn verify(
    pod_ns: &Netns,
    ifname: &str,
    ip: Ipv4Addr,
    prefix: u8,
    routes: &[(Ipv4Net, Ipv4Addr)],
) -> Result<(), CniError> {
    let failed = |m: String| CniError::new(ErrorCode::CheckFailed, m);
    let mut pod =
        Handle::new_in(pod_ns).map_err(|e| kernel("opening netlink in the pod's namespace", e))?;
    let link = pod
        .link_by_name(ifname)
        .map_err(|e| kernel("reading the pod interface", e))?
        .ok_or_else(|| {
            failed(format!(
                "interface {ifname} is missing in {}",
                pod_ns.path().display()
            ))
        })?;
    if !link.up {
        return Err(failed(format!("interface {ifname} is down")));
    }
    let addrs = pod
        .addresses(Some(link.index))
        .map_err(|e| kernel("reading pod addresses", e))?;
    if !addrs
        .iter()
        .any(|(_, net)| net.addr() == ip && net.prefix_len() == prefix)
    {
        return Err(failed(format!("{ifname} lacks address {ip}/{prefix}")));
    }
    let have = pod
        .routes(254)
        .map_err(|e| kernel("reading pod routes", e))?;
    for (dst, gw) in routes {
        if !have.iter().any(|r| r.dst == *dst && r.gateway == Some(*gw)) {
            return Err(failed(format!(
                "route {dst} via {gw} is missing in the pod"
            )));
        }
    }
    Ok(())
}
