//! The pod-wiring seam: how a pod's veth meets the node. ADD, DEL, CHECK and GC ask a
//! [`Wiring`] and never branch on the kind themselves.
//!
//! - [`bridge`]: Docker's and CNI bridge's way. Every host veth is a port of the node's
//!   bridge, which holds the gateway address of the pod's block.
//! - [`l3`]: Calico's way. No bridge: the pod holds its address as a /32 with a default
//!   route via 169.254.1.1, which proxy ARP on its host veth answers; the node has a
//!   `/32 dev <veth> scope link` route per pod.
//!
//! Both share the veth pair (born with one end in each namespace), the pod side's address
//! and routes, and teardown: deleting the host veth takes the pod end, the node's /32 route
//! and the veth's sysctls with it. All over netlink and /proc/sys: no subprocess, and no
//! helper thread either: twill-cni is single-threaded, so its own thread enters the pod's
//! namespace to open the pod's socket (a thread that must wait to be scheduled costs
//! milliseconds on a busy node).

pub mod bridge;
pub mod l3;

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use twill_api::cni::{CniError, ErrorCode, Interface, NetConf};
use twill_api::wiring::PodWiring;
use twill_netlink::netns::Netns;
use twill_netlink::route::{Handle, Link, Route, VethPair};

/// What ADD asks of the kernel for one pod, whatever the wiring.
pub struct Plan<'a> {
    pub mtu: u32,
    /// The pod's block and the address the bridge holds in it (unused in l3).
    pub gateway: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub pod_ip: Ipv4Addr,
    pub ifname: &'a str,
    pub host_veth: String,
    /// The pod end's MAC, set before it comes up (the record holds it).
    pub pod_mac: [u8; 6],
    /// Routes in the pod: (destination, gateway).
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Host ports reach the pod from 127.0.0.1 (DNAT of a loopback source).
    pub route_localnet: bool,
}

/// The result's interfaces in the spec's order (node side first), and which is the pod's.
pub struct Attached {
    pub interfaces: Vec<Interface>,
    pub pod: usize,
}

/// What CHECK compares the kernel with: what ADD made, from the record and prevResult.
pub struct Expected<'a> {
    pub ifname: &'a str,
    pub host_veth: &'a str,
    pub pod_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub routes: &'a [(Ipv4Net, Ipv4Addr)],
}

/// One way of wiring pods, with what it needs from the network config.
pub enum Wiring<'a> {
    Bridge(bridge::Bridge<'a>),
    L3(l3::L3),
}

impl<'a> Wiring<'a> {
    pub fn new(kind: PodWiring, conf: &'a NetConf) -> Wiring<'a> {
        match kind {
            PodWiring::Bridge => Wiring::Bridge(bridge::Bridge {
                name: &conf.bridge,
                hairpin: conf.hairpin,
            }),
            PodWiring::L3 => Wiring::L3(l3::L3),
        }
    }

    /// Whether the wiring's anti-spoofing is per-pod nftables elements (bridge: `table
    /// bridge twill`, added by ADD before the veth, removed by DEL and GC) rather than a
    /// setting of the veth that goes with it (l3: strict `rp_filter`).
    pub fn guards_in_nft(&self) -> bool {
        match self {
            Wiring::Bridge(_) => true,
            Wiring::L3(_) => false,
        }
    }

    /// The pod's next hop, given the gateway of its block (the bridge's address).
    pub fn gateway(&self, block_gateway: Ipv4Addr) -> Ipv4Addr {
        match self {
            Wiring::Bridge(_) => block_gateway,
            Wiring::L3(_) => twill_api::wiring::L3_GATEWAY,
        }
    }

    /// The prefix length of the pod's address in its block.
    pub fn prefix_len(&self, subnet: Ipv4Net) -> u8 {
        match self {
            Wiring::Bridge(_) => subnet.prefix_len(),
            Wiring::L3(_) => 32,
        }
    }

    /// The pod's routes from `ipam.routes`, each via `gateway` unless it names its own.
    /// In l3 the pod reaches nothing but 169.254.1.1, so another gateway is an error.
    pub fn routes(
        &self,
        conf: &NetConf,
        gateway: Ipv4Addr,
    ) -> Result<Vec<(Ipv4Net, Ipv4Addr)>, CniError> {
        conf.ipam
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| match (self, r.gw) {
                (Wiring::L3(_), Some(gw)) if gw != gateway => Err(CniError::invalid(format!(
                    "field \"ipam.routes[{i}].gw\": {gw} is unreachable for a pod wired \"l3\", which only reaches {gateway}; leave \"gw\" out"
                ))),
                (_, gw) => Ok((r.dst, gw.unwrap_or(gateway))),
            })
            .collect()
    }

    /// Wires the pod: node-side set-up, the veth pair, both ends' addresses and routes.
    /// On error the caller removes the host veth (which removes everything per pod).
    pub fn attach(
        &self,
        host: &mut Handle,
        pod_ns: &Netns,
        plan: &Plan<'_>,
    ) -> Result<Attached, CniError> {
        match self {
            Wiring::Bridge(b) => b.attach(host, pod_ns, plan),
            Wiring::L3(l) => l.attach(host, pod_ns, plan),
        }
    }

    /// CHECK: the kernel still holds what `attach` made.
    pub fn verify(
        &self,
        host: &mut Handle,
        pod_ns: &Netns,
        want: &Expected<'_>,
    ) -> Result<(), CniError> {
        match self {
            Wiring::Bridge(b) => b.verify(host, pod_ns, want),
            Wiring::L3(l) => l.verify(host, pod_ns, want),
        }
    }
}

pub(crate) fn kernel(what: &str, e: twill_netlink::Error) -> CniError {
    CniError::new(ErrorCode::Kernel, format!("{what} failed")).with_details(e.to_string())
}

pub(crate) fn check_failed(msg: String) -> CniError {
    CniError::new(ErrorCode::CheckFailed, msg)
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

/// "aa:bb:cc:dd:ee:ff" back to bytes (what [`mac_string`] wrote).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub(crate) fn iface(link: &Link, sandbox: &str) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: mac_string(link.mac),
        mtu: Some(link.mtu),
        sandbox: sandbox.to_string(),
    }
}

/// Sets a sysctl of the node's namespace unless it already holds `value`.
pub(crate) fn ensure_sysctl(key: &str, value: &str) -> Result<(), CniError> {
    twill_netlink::ensure_sysctl(None, key, value)
        .map(drop)
        .map_err(|e| {
            CniError::new(
                ErrorCode::Io,
                format!("cannot set sysctl {} = {value}", key.replace('/', ".")),
            )
            .with_details(e.to_string())
        })
}

/// Creates the veth pair, host end up (a port of `master` if given, with `host_mac` if
/// given), pod end down in the pod. Returns the host end.
pub(crate) fn create_veth(
    host: &mut Handle,
    pod_ns: &Netns,
    plan: &Plan<'_>,
    master: Option<u32>,
    host_mac: Option<[u8; 6]>,
) -> Result<Link, CniError> {
    let pair = VethPair {
        host_name: &plan.host_veth,
        peer_name: plan.ifname,
        peer_ns: pod_ns,
        mtu: plan.mtu,
        host_master: master,
        host_mac,
    };
    let mut created = host.create_veth_pair(&pair);
    if created.as_ref().is_err_and(|e| e.is_exists()) {
        // The host end is named after this attachment, whose address record we have
        // just created: a veth of that name is a leftover of an earlier DEL whose reaper
        // has not finished (or died). Remove it and try once more.
        if let Ok(Some(stale)) = host.link_by_name(&plan.host_veth) {
            if stale.kind.as_deref() == Some("veth") {
                detach(host, &plan.host_veth)?;
                created = host.create_veth_pair(&pair);
            }
        }
    }
    if created.as_ref().is_err_and(|e| e.is_exists())
        && remove_reaped_pod_end(host, pod_ns, plan.ifname)
    {
        // The pod end is a leftover of another attachment's DEL in this pod (a runtime
        // that DELs then ADDs again in one sandbox with a new container ID).
        created = host.create_veth_pair(&pair);
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
    host.link_by_name(&plan.host_veth)
        .map_err(|e| kernel("reading the host veth", e))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::Kernel,
                format!("veth {} vanished after creation", plan.host_veth),
            )
        })
}

/// If the pod's `ifname` is the pod end of a veth whose host end twill-cni named and DEL
/// took down (its reaper has not deleted it yet), deletes that veth and returns true.
/// Anything else of that name (the operator's, or a live attachment's) is left alone.
fn remove_reaped_pod_end(host: &mut Handle, pod_ns: &Netns, ifname: &str) -> bool {
    let Ok(mut pod) = Handle::new_here_in(pod_ns) else {
        return false;
    };
    let Ok(Some(pod_end)) = pod.link_by_name(ifname) else {
        return false;
    };
    let (Some("veth"), Some(peer)) = (pod_end.kind.as_deref(), pod_end.peer_index) else {
        return false;
    };
    let Ok(Some(host_end)) = host.link_by_index(peer) else {
        return false;
    };
    let leftover = host_end.kind.as_deref() == Some("veth")
        && !host_end.up
        && host_end.peer_index == Some(pod_end.index)
        && crate::names::is_host_veth(&host_end.name);
    leftover
        && match host.delete_link(host_end.index) {
            Ok(()) => true,
            Err(e) => e.is_not_found(),
        }
}

/// The pod side: its address, the interface up, a scope-link route to each of
/// `link_routes` (next hops no address of the pod covers), then `plan.routes`.
pub(crate) fn configure_pod(
    pod_ns: &Netns,
    plan: &Plan<'_>,
    prefix_len: u8,
    link_routes: &[Ipv4Addr],
) -> Result<Link, CniError> {
    let mut pod = Handle::new_here_in(pod_ns)
        .map_err(|e| kernel("opening netlink in the pod's namespace", e))?;
    let pod_link = pod
        .link_by_name(plan.ifname)
        .map_err(|e| kernel("reading the pod interface", e))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::Kernel,
                format!("{} missing in the pod after creation", plan.ifname),
            )
        })?;
    pod.set_mac(pod_link.index, plan.pod_mac)
        .map_err(|e| kernel("setting the pod interface's MAC", e))?;
    pod.add_address(pod_link.index, plan.pod_ip, prefix_len)
        .map_err(|e| kernel(&format!("adding {} to the pod", plan.pod_ip), e))?;
    pod.set_link_up(pod_link.index)
        .map_err(|e| kernel("bringing the pod interface up", e))?;
    for hop in link_routes {
        let route = Route {
            oif: Some(pod_link.index),
            scope: Route::SCOPE_LINK,
            ..Route::new(Ipv4Net::from(*hop))
        };
        pod.add_route(&route).map_err(|e| {
            kernel(
                &format!("adding route {hop} dev {} in the pod", plan.ifname),
                e,
            )
        })?;
    }
    for (dst, gw) in &plan.routes {
        let route = Route {
            gateway: Some(*gw),
            oif: Some(pod_link.index),
            ..Route::new(*dst)
        };
        pod.add_route(&route)
            .map_err(|e| kernel(&format!("adding route {dst} via {gw} in the pod"), e))?;
    }
    Ok(Link {
        up: true,
        mac: Some(plan.pod_mac),
        ..pod_link
    })
}

/// Cuts the pod off at once: its host end goes down, so nothing forwards to it any more
/// (in l3 the kernel drops its /32 route with it) and its address can be handed out again.
/// Returns the veth's index if it still exists (what the reaper deletes: by index, so a
/// veth of the same name that a re-ADD makes meanwhile is not touched).
pub fn cut_off(host: &mut Handle, host_veth: &str) -> Result<Option<u32>, CniError> {
    match host.link_by_name(host_veth) {
        Ok(Some(link)) => match host.set_link_down(link.index) {
            Ok(()) => Ok(Some(link.index)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(kernel(&format!("taking veth {host_veth} down"), e)),
        },
        Ok(None) => Ok(None),
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

/// CHECK, pod side: the interface is up with the address, the scope-link routes to
/// `link_routes` and the routes the result promised.
pub(crate) fn verify_pod(
    pod_ns: &Netns,
    want: &Expected<'_>,
    link_routes: &[Ipv4Addr],
) -> Result<(), CniError> {
    let ifname = want.ifname;
    let mut pod = Handle::new_here_in(pod_ns)
        .map_err(|e| kernel("opening netlink in the pod's namespace", e))?;
    let link = pod
        .link_by_name(ifname)
        .map_err(|e| kernel("reading the pod interface", e))?
        .ok_or_else(|| {
            check_failed(format!(
                "interface {ifname} is missing in {}",
                pod_ns.path().display()
            ))
        })?;
    if !link.up {
        return Err(check_failed(format!("interface {ifname} is down")));
    }
    let addrs = pod
        .addresses(Some(link.index))
        .map_err(|e| kernel("reading pod addresses", e))?;
    let (ip, prefix) = (want.pod_ip, want.prefix_len);
    if !addrs
        .iter()
        .any(|(_, net)| net.addr() == ip && net.prefix_len() == prefix)
    {
        return Err(check_failed(format!(
            "{ifname} lacks address {ip}/{prefix}"
        )));
    }
    let have = pod
        .routes(Route::TABLE_MAIN)
        .map_err(|e| kernel("reading pod routes", e))?;
    for hop in link_routes {
        let dst = Ipv4Net::from(*hop);
        if !have.iter().any(|r| {
            r.dst == dst
                && r.gateway.is_none()
                && r.oif == Some(link.index)
                && r.scope == Route::SCOPE_LINK
        }) {
            return Err(check_failed(format!(
                "route {dst} dev {ifname} scope link is missing in the pod"
            )));
        }
    }
    for (dst, gw) in want.routes {
        if !have.iter().any(|r| r.dst == *dst && r.gateway == Some(*gw)) {
            return Err(check_failed(format!(
                "route {dst} via {gw} is missing in the pod"
            )));
        }
    }
    Ok(())
}

/// CHECK, node side: the host veth exists and is a veth.
pub(crate) fn host_veth(host: &mut Handle, name: &str) -> Result<Link, CniError> {
    match host.link_by_name(name) {
        Ok(Some(l)) if l.kind.as_deref() == Some("veth") => Ok(l),
        Ok(Some(l)) => Err(check_failed(format!(
            "{name} is a {} device, not the pod's host veth",
            l.kind.as_deref().unwrap_or("plain")
        ))),
        Ok(None) => Err(check_failed(format!("host veth {name} is missing"))),
        Err(e) => Err(kernel(&format!("looking up veth {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::wiring::L3_GATEWAY;

    fn conf(routes: &str) -> NetConf {
        NetConf::parse(
            format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"twill-cni",
                "ipam":{{"subnet":"10.244.1.0/24","routes":{routes}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn macs_round_trip() {
        let m = [0x02, 0xab, 0, 0x10, 0xff, 9];
        assert_eq!(parse_mac(&mac_string(Some(m))), Some(m));
        assert_eq!(parse_mac("02:ab:00:10:ff"), None);
        assert_eq!(parse_mac("02:ab:00:10:ff:09:00"), None);
        assert_eq!(parse_mac("zz:ab:00:10:ff:09"), None);
    }

    #[test]
    fn each_wiring_gives_its_gateway_and_prefix() {
        let c = conf("[]");
        let subnet: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let block_gw = Ipv4Addr::new(10, 244, 1, 1);
        let bridge = Wiring::new(PodWiring::Bridge, &c);
        assert_eq!(bridge.gateway(block_gw), block_gw);
        assert_eq!(bridge.prefix_len(subnet), 24);
        let l3 = Wiring::new(PodWiring::L3, &c);
        assert_eq!(l3.gateway(block_gw), L3_GATEWAY);
        assert_eq!(l3.prefix_len(subnet), 32);
    }

    #[test]
    fn l3_routes_go_via_169_254_1_1_and_no_other_gateway() {
        let c = conf(r#"[{"dst":"0.0.0.0/0"},{"dst":"192.0.2.0/24","gw":"169.254.1.1"}]"#);
        let l3 = Wiring::new(PodWiring::L3, &c);
        let want: Vec<(Ipv4Net, Ipv4Addr)> = vec![
            ("0.0.0.0/0".parse().unwrap(), L3_GATEWAY),
            ("192.0.2.0/24".parse().unwrap(), L3_GATEWAY),
        ];
        assert_eq!(l3.routes(&c, L3_GATEWAY).unwrap(), want);

        let c = conf(r#"[{"dst":"0.0.0.0/0"},{"dst":"192.0.2.0/24","gw":"10.244.1.254"}]"#);
        let e = Wiring::new(PodWiring::L3, &c)
            .routes(&c, L3_GATEWAY)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.contains("\"ipam.routes[1].gw\""), "{}", e.msg);
        assert!(e.msg.contains("10.244.1.254"), "{}", e.msg);
        // The bridge takes any gateway the pod can reach on its subnet.
        let gw = Ipv4Addr::new(10, 244, 1, 1);
        let routes = Wiring::new(PodWiring::Bridge, &c).routes(&c, gw).unwrap();
        assert_eq!(routes[0].1, gw);
        assert_eq!(routes[1].1, Ipv4Addr::new(10, 244, 1, 254));
    }

    #[test]
    fn l3_sysctls_cover_proxy_arp_and_anti_spoofing() {
        let keys = l3::veth_sysctls("twlabc", true);
        for want in [
            ("net/ipv4/conf/twlabc/proxy_arp", "1"),
            ("net/ipv4/neigh/twlabc/proxy_delay", "0"),
            ("net/ipv4/conf/twlabc/rp_filter", "1"),
            ("net/ipv4/conf/twlabc/forwarding", "1"),
            ("net/ipv4/conf/twlabc/route_localnet", "1"),
        ] {
            assert!(
                keys.iter().any(|(k, v)| (k.as_str(), *v) == want),
                "{want:?} missing from {keys:?}"
            );
        }
        assert!(!l3::veth_sysctls("twlabc", false)
            .iter()
            .any(|(k, _)| k.ends_with("route_localnet")));
    }
}
