//! Pure-L3 wiring, Calico's: no bridge, no gateway address on the node.
//!
//! - A veth pair, each end born in its namespace; the host end has the fixed MAC
//!   [`L3_HOST_MAC`].
//! - The pod: its address as a /32, `169.254.1.1 dev eth0 scope link`, and its routes
//!   (the default one) via 169.254.1.1. No interface holds 169.254.1.1: the pod's ARP
//!   request for it is answered by proxy ARP on the host veth (`proxy_arp=1`, and
//!   `neigh.<veth>.proxy_delay=0`, else the kernel delays answers to broadcast requests
//!   by up to 0.8 s), with the veth's own MAC. The kernel answers only for an address it
//!   routes through another interface: the node needs a route to 169.254.1.1 (its
//!   default route), which ADD checks.
//! - The node: forwarding on, and `<pod>/32 dev <veth> scope link proto 0x54`. The route
//!   goes with the veth.
//!
//! Anti-spoofing by strict reverse-path filtering (`rp_filter=1`) on the host veth: a
//! packet from the pod is dropped unless the node's route back to its source leaves by
//! that same veth, which only the pod's own /32 does. Chosen over an nftables rule because
//! it is per veth and goes with it (no per-pod rule or set element to add and remove), it
//! costs one sysctl write in ADD and nothing in DEL, and the kernel counts every drop
//! (`nstat IPReversePathFilter`). The kernel applies max(conf.all, conf.<veth>), so
//! `conf.all.rp_filter=2` (loose) would quietly defeat it: ADD refuses that, as Calico's
//! Felix does (its IgnoreLooseRPF).

use super::{
    check_failed, configure_pod, create_veth, ensure_sysctl, host_veth, iface, kernel, verify_pod,
    Attached, Expected, Plan,
};
use ipnet::Ipv4Net;
use twill_api::cni::{CniError, ErrorCode};
use twill_api::wiring::{L3_GATEWAY, L3_HOST_MAC};
use twill_netlink::netns::Netns;
use twill_netlink::route::{Handle, Route, ROUTE_PROTOCOL};

pub struct L3;

/// The sysctls of a host veth (`net/ipv4/conf/<veth>/...` unless given in full), and
/// their values.
pub(super) fn veth_sysctls(veth: &str, route_localnet: bool) -> Vec<(String, &'static str)> {
    let conf = |k: &str| format!("net/ipv4/conf/{veth}/{k}");
    let mut v = vec![
        (conf("forwarding"), "1"),
        (conf("rp_filter"), "1"),
        (conf("proxy_arp"), "1"),
        (format!("net/ipv4/neigh/{veth}/proxy_delay"), "0"),
    ];
    if route_localnet {
        // 127.0.0.1:hostPort is DNATed to the pod; the kernel drops martian 127/8 sources
        // routed out of the veth unless route_localnet is on for it.
        v.push((conf("route_localnet"), "1"));
    }
    v
}

/// The node's route to the pod.
fn pod_route(plan_ip: std::net::Ipv4Addr, veth_index: u32) -> Route {
    Route {
        oif: Some(veth_index),
        scope: Route::SCOPE_LINK,
        protocol: ROUTE_PROTOCOL,
        ..Route::new(Ipv4Net::from(plan_ip))
    }
}

fn node_unfit(msg: String, fix: &str) -> CniError {
    CniError::new(ErrorCode::Kernel, msg).with_details(fix.to_string())
}

/// What the node must offer before any l3 pod is wired: loose reverse-path filtering
/// would defeat anti-spoofing, and without a route to 169.254.1.1 proxy ARP stays silent.
fn check_node(host: &mut Handle) -> Result<(), CniError> {
    if twill_netlink::get_sysctl(None, "net/ipv4/conf/all/rp_filter").is_ok_and(|v| v == "2") {
        return Err(node_unfit(
            "net.ipv4.conf.all.rp_filter is 2 (loose) on this node: the kernel then checks every interface loosely, and an l3 pod could send with another pod's address".into(),
            "set it to 1 or 0 (sysctl -w net.ipv4.conf.all.rp_filter=1); twill-cni turns strict mode on for each pod's host veth itself",
        ));
    }
    match host.route_to(L3_GATEWAY) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(node_unfit(
            format!("this node has no route to {L3_GATEWAY}, the gateway of l3 pods: proxy ARP on a pod's veth answers only for addresses the node routes elsewhere, so the pod could reach nothing"),
            "give the node a default route (or at least a route to 169.254.1.1/32 through its uplink)",
        )),
        Err(e) => Err(kernel(&format!("looking up the route to {L3_GATEWAY}"), e)),
    }
}

impl L3 {
    pub fn attach(
        &self,
        host: &mut Handle,
        pod_ns: &Netns,
        plan: &Plan<'_>,
    ) -> Result<Attached, CniError> {
        check_node(host)?;
        ensure_sysctl("net/ipv4/ip_forward", "1")?;
        let host_link = create_veth(host, pod_ns, plan, None, Some(L3_HOST_MAC))?;
        // Before the pod side comes up, so its first packet meets proxy ARP and the
        // reverse-path filter.
        for (key, value) in veth_sysctls(&plan.host_veth, plan.route_localnet) {
            ensure_sysctl(&key, value)?;
        }
        host.add_route(&pod_route(plan.pod_ip, host_link.index))
            .map_err(|e| {
                kernel(
                    &format!("adding route {}/32 dev {}", plan.pod_ip, plan.host_veth),
                    e,
                )
            })?;
        let pod_link = configure_pod(pod_ns, plan, 32, &[L3_GATEWAY])?;
        let sandbox = pod_ns.path().display().to_string();
        Ok(Attached {
            interfaces: vec![iface(&host_link, ""), iface(&pod_link, &sandbox)],
            pod: 1,
        })
    }

    /// The pod's /32, its link route to 169.254.1.1 and its routes; on the node a veth
    /// on no bridge, with its fixed MAC, its sysctls and the pod's /32 route.
    pub fn verify(
        &self,
        host: &mut Handle,
        pod_ns: &Netns,
        want: &Expected<'_>,
    ) -> Result<(), CniError> {
        verify_pod(pod_ns, want, &[L3_GATEWAY])?;
        let name = want.host_veth;
        let veth = host_veth(host, name)?;
        if let Some(master) = veth.master {
            return Err(check_failed(format!(
                "host veth {name} is a port of link #{master}; an l3 pod's veth is on no bridge"
            )));
        }
        if !veth.up {
            return Err(check_failed(format!("host veth {name} is down")));
        }
        if veth.mac != Some(L3_HOST_MAC) {
            return Err(check_failed(format!(
                "host veth {name} has MAC {}, not {}",
                super::mac_string(veth.mac),
                super::mac_string(Some(L3_HOST_MAC))
            )));
        }
        let want_route = pod_route(want.pod_ip, veth.index);
        let routes = host
            .routes(Route::TABLE_MAIN)
            .map_err(|e| kernel("reading the node's routes", e))?;
        if !routes.iter().any(|r| {
            r.dst == want_route.dst
                && r.oif == want_route.oif
                && r.gateway.is_none()
                && r.scope == Route::SCOPE_LINK
                && r.protocol == ROUTE_PROTOCOL
        }) {
            return Err(check_failed(format!(
                "the node's route {}/32 dev {name} scope link proto {ROUTE_PROTOCOL} is missing",
                want.pod_ip
            )));
        }
        // route_localnet is only wanted with host ports, which CHECK does not know here.
        for (key, value) in veth_sysctls(name, false) {
            let have = twill_netlink::get_sysctl(None, &key)
                .map_err(|e| kernel(&format!("reading sysctl {key}"), e))?;
            if have != value {
                return Err(check_failed(format!(
                    "sysctl {} is {have}, not {value}",
                    key.replace('/', ".")
                )));
            }
        }
        Ok(())
    }
}
