//! ovs-vswitchd's tunnel neighbour cache, kept filled from the host's (pure).
//!
//! With the userspace (netdev) datapath OVS builds the outer Ethernet header of a tunnel
//! packet itself, from its own cache of next-hop MACs (`ovs-appctl tnl/neigh/show`). On a
//! miss it sends an ARP request and DROPS the packet (ofproto-dpif-xlate.c,
//! native_tunnel_output: "neighbor cache miss ... sending ARP request"), and it fills the
//! cache only by snooping ARP replies and gratuitous ARPs on its bridges
//! (tnl-neigh-cache.c, tnl_arp_snoop: "Snoop normal ARP replies and gratuitous ARP
//! requests/replies only"). When the peer ARPed this node first, the host's kernel learns
//! the peer from that request and never asks, so OVS never sees a reply: the first packet
//! of every pod to that peer was lost (a TCP SYN costs a 1 s retransmit; in CI the lab's
//! one-packet ping across nodes failed).
//!
//! The host's kernel already knows the next hop's MAC (its own ARP, or the peer's
//! request), so the agent copies it into OVS (`ovs-appctl tnl/neigh/set BRIDGE IP MAC`,
//! which OVS refreshes on every lookup and ages after 15 idle minutes like its own
//! entries). This module plans that: the next hop of each peer from the kernel's routes,
//! its MAC from the kernel's neighbours, what OVS lacks. I/O: [`crate::tools`].

use ipnet::Ipv4Net;
use serde_json::Value;
use std::net::Ipv4Addr;

/// One entry of `ovs-appctl tnl/neigh/show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub bridge: String,
    /// Expired (shown as STALE): OVS no longer uses it.
    pub stale: bool,
}

/// Parses `ovs-appctl tnl/neigh/show` (IPv4 entries; the header and IPv6 entries are
/// skipped). Pure.
///
/// ```text
/// IP                                            MAC                 Bridge
/// ==========================================================================
/// 192.0.2.12                                    36:d0:18:f6:7f:4a   br-phy
/// 192.0.2.1                                     2e:11:0a:00:00:01   br-phy STALE
/// ```
pub fn parse_cache(text: &str) -> Vec<CacheEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let ip = f.next()?.parse().ok()?;
            let mac = twill_netlink::neigh::parse_mac(f.next()?)?;
            let bridge = f.next()?.to_string();
            Some(CacheEntry {
                ip,
                mac,
                bridge,
                stale: f.next() == Some("STALE"),
            })
        })
        .collect()
}

/// A route of the host's main table, as `ip -j -4 route show table main` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
    pub metric: u32,
}

/// Parses `ip -j -4 route show table main` (unicast routes with a device; blackholes and
/// other types are skipped). Pure.
pub fn parse_routes(json: &str) -> Result<Vec<KernelRoute>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let rows = v.as_array().ok_or("not a JSON array")?;
    Ok(rows
        .iter()
        .filter(|r| r["type"].as_str().is_none_or(|t| t == "unicast"))
        .filter_map(|r| {
            let dst = match r["dst"].as_str()? {
                "default" => Ipv4Net::default(),
                s if s.contains('/') => s.parse().ok()?,
                s => Ipv4Net::new(s.parse().ok()?, 32).ok()?,
            };
            Some(KernelRoute {
                dst,
                gateway: r["gateway"].as_str().and_then(|g| g.parse().ok()),
                dev: r["dev"].as_str()?.to_string(),
                metric: r["metric"].as_u64().unwrap_or(0) as u32,
            })
        })
        .collect())
}

/// The next hop towards `dst` by the kernel's rules (longest prefix, then lowest metric):
/// (the address whose MAC the outer header needs, the device). None: no route.
pub fn next_hop(routes: &[KernelRoute], dst: Ipv4Addr) -> Option<(Ipv4Addr, String)> {
    routes
        .iter()
        .filter(|r| r.dst.contains(&dst))
        .max_by(|a, b| {
            (a.dst.prefix_len(), std::cmp::Reverse(a.metric))
                .cmp(&(b.dst.prefix_len(), std::cmp::Reverse(b.metric)))
        })
        .map(|r| (r.gateway.unwrap_or(dst), r.dev.clone()))
}

/// A neighbour of the host, as `ip -j -4 neigh show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNeighbour {
    pub ip: Ipv4Addr,
    pub dev: String,
    /// None while unresolved (INCOMPLETE, FAILED).
    pub mac: Option<[u8; 6]>,
    pub states: Vec<String>,
}

impl KernelNeighbour {
    /// A MAC the kernel would send to: resolved, not FAILED or INCOMPLETE.
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        let bad = self
            .states
            .iter()
            .any(|s| s == "FAILED" || s == "INCOMPLETE" || s == "NONE");
        self.mac.filter(|_| !bad)
    }
}

/// Parses `ip -j -4 neigh show`. Pure.
pub fn parse_neighbours(json: &str) -> Result<Vec<KernelNeighbour>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let rows = v.as_array().ok_or("not a JSON array")?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(KernelNeighbour {
                ip: r["dst"].as_str()?.parse().ok()?,
                dev: r["dev"].as_str()?.to_string(),
                mac: r["lladdr"]
                    .as_str()
                    .and_then(twill_netlink::neigh::parse_mac),
                states: r["state"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// Whether a kernel device that is a port of the OVS bridge holding the node IP answers
/// ARP for that IP itself, with its own MAC ("ARP flux"), given `arp_ignore` of `all` and
/// of the device (the kernel takes the larger). With 0, a peer's ARP request reaching the
/// port gets two replies: the port's (straight from its kernel stack) and the bridge's
/// (through OVS). The peer's host keeps the first, the port's MAC, on which OVS does not
/// take tunnel packets (it decapsulates what is sent to the bridge's MAC); copying the
/// host's neighbours into OVS would then break the tunnel. With 1 only the bridge answers.
/// Pure.
pub fn arp_flux(arp_ignore: &[u8; 2]) -> bool {
    arp_ignore[0].max(arp_ignore[1]) == 0
}

/// What the cache needs for the peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeighPlan {
    /// `tnl/neigh/set BRIDGE IP MAC` to run.
    pub set: Vec<(Ipv4Addr, [u8; 6])>,
    /// Next hops the kernel has no MAC for yet: (peer, next hop, device). Their first
    /// packet would be dropped; the caller asks the kernel to resolve them and looks again.
    pub unresolved: Vec<(Ipv4Addr, Ipv4Addr, String)>,
    /// Peers with no route at all.
    pub unrouted: Vec<Ipv4Addr>,
}

/// Plans the cache of `bridge` (the OVS bridge holding the node IP) for `peers`: every
/// peer's next hop must be in it with the MAC the kernel has. Pure.
pub fn plan(
    bridge: &str,
    peers: &[Ipv4Addr],
    routes: &[KernelRoute],
    neighbours: &[KernelNeighbour],
    cache: &[CacheEntry],
) -> NeighPlan {
    let mut out = NeighPlan::default();
    for &peer in peers {
        let Some((hop, dev)) = next_hop(routes, peer) else {
            out.unrouted.push(peer);
            continue;
        };
        if out.set.iter().any(|(ip, _)| *ip == hop) {
            continue;
        }
        let kernel = neighbours
            .iter()
            .find(|n| n.ip == hop && n.dev == dev)
            .and_then(KernelNeighbour::usable_mac);
        let cached = cache
            .iter()
            .find(|c| c.ip == hop && c.bridge == bridge && !c.stale)
            .map(|c| c.mac);
        match (kernel, cached) {
            // What OVS learnt itself (a snooped reply) stays: it keeps its entries fresh
            // from the replies it sees, the kernel's included.
            (_, Some(_)) => {}
            (Some(k), None) => out.set.push((hop, k)),
            (None, None) => {
                if !out.unresolved.iter().any(|(_, h, _)| *h == hop) {
                    out.unresolved.push((peer, hop, dev));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CACHE: &str =
        "IP                                            MAC                 Bridge\n\
==========================================================================\n\
192.0.2.12                                    36:d0:18:f6:7f:4a   br-phy\n\
192.0.2.1                                     2e:11:0a:00:00:01   br-phy STALE\n\
fe80::1                                       2e:11:0a:00:00:02   br-phy\n";

    const ROUTES: &str = r#"[
        {"dst":"default","gateway":"192.0.2.1","dev":"br-phy","flags":[]},
        {"dst":"192.0.2.0/24","dev":"br-phy","protocol":"kernel","scope":"link","prefsrc":"192.0.2.11","flags":[]},
        {"dst":"10.244.4.0/24","gateway":"169.254.84.84","dev":"twl.ovs","protocol":"84","flags":["onlink"]},
        {"type":"blackhole","dst":"10.244.9.0/24","flags":[]}
    ]"#;

    const NEIGH: &str = r#"[
        {"dst":"192.0.2.12","dev":"br-phy","lladdr":"36:d0:18:f6:7f:4a","state":["STALE"]},
        {"dst":"192.0.2.13","dev":"br-phy","lladdr":"36:d0:18:f6:7f:4b","state":["REACHABLE"]},
        {"dst":"192.0.2.14","dev":"br-phy","state":["FAILED"]},
        {"dst":"192.0.2.1","dev":"br-phy","lladdr":"2e:11:0a:00:00:01","state":["DELAY"]}
    ]"#;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_cache_listing_decodes_with_stale_entries_marked() {
        let c = parse_cache(CACHE);
        assert_eq!(c.len(), 2, "header and IPv6 skipped: {c:?}");
        assert_eq!(c[0].ip, ip("192.0.2.12"));
        assert_eq!(c[0].mac, [0x36, 0xd0, 0x18, 0xf6, 0x7f, 0x4a]);
        assert_eq!((c[0].bridge.as_str(), c[0].stale), ("br-phy", false));
        assert!(c[1].stale);
        assert!(parse_cache("garbage\n\n1.2.3.4 zz br\n").is_empty());
    }

    #[test]
    fn the_next_hop_is_the_longest_prefix_s_gateway_or_the_peer_itself() {
        let r = parse_routes(ROUTES).unwrap();
        assert_eq!(r.len(), 3, "the blackhole is not a way out: {r:?}");
        assert_eq!(
            next_hop(&r, ip("192.0.2.12")),
            Some((ip("192.0.2.12"), "br-phy".into()))
        );
        assert_eq!(
            next_hop(&r, ip("198.51.100.12")),
            Some((ip("192.0.2.1"), "br-phy".into()))
        );
        assert_eq!(next_hop(&[], ip("198.51.100.12")), None);
        assert!(parse_routes("{").is_err());
    }

    #[test]
    fn only_what_ovs_lacks_or_holds_wrong_is_set_and_the_unknown_is_named() {
        let routes = parse_routes(ROUTES).unwrap();
        let neigh = parse_neighbours(NEIGH).unwrap();
        let cache = parse_cache(CACHE);
        let p = plan(
            "br-phy",
            &[
                ip("192.0.2.12"),    // cached with the kernel's MAC: nothing
                ip("192.0.2.13"),    // the kernel knows it, OVS does not: set
                ip("192.0.2.14"),    // nobody knows it: unresolved
                ip("198.51.100.12"), // via 192.0.2.1, cached but STALE: set
                ip("198.51.100.13"), // the same next hop: once
            ],
            &routes,
            &neigh,
            &cache,
        );
        assert_eq!(
            p.set,
            [
                (ip("192.0.2.13"), [0x36, 0xd0, 0x18, 0xf6, 0x7f, 0x4b]),
                (ip("192.0.2.1"), [0x2e, 0x11, 0x0a, 0, 0, 1])
            ]
        );
        assert_eq!(
            p.unresolved,
            [(ip("192.0.2.14"), ip("192.0.2.14"), "br-phy".to_string())]
        );
        assert!(p.unrouted.is_empty());
        // Another bridge's entry does not count; no route at all is named.
        let p = plan("br-other", &[ip("192.0.2.12")], &routes, &neigh, &cache);
        assert_eq!(p.set.len(), 1);
        let p = plan("br-phy", &[ip("192.0.2.12")], &[], &neigh, &cache);
        assert_eq!(p.unrouted, [ip("192.0.2.12")]);
    }

    #[test]
    fn an_entry_ovs_learnt_itself_is_left_to_it() {
        let routes = parse_routes(ROUTES).unwrap();
        let mut neigh = parse_neighbours(NEIGH).unwrap();
        neigh[0].mac = Some([2, 0, 0, 0, 0, 1]);
        let p = plan(
            "br-phy",
            &[ip("192.0.2.12")],
            &routes,
            &neigh,
            &parse_cache(CACHE),
        );
        assert_eq!(p, NeighPlan::default());
    }

    #[test]
    fn a_port_answering_arp_for_the_node_ip_is_flux() {
        assert!(arp_flux(&[0, 0]));
        assert!(!arp_flux(&[0, 1]));
        assert!(!arp_flux(&[2, 0]));
    }
}
