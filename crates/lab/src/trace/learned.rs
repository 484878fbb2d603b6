//! Pure: which router on a traced path learned its route to the destination, and from
//! whom. Each node or router namespace the packet crossed is asked by the tool that knows:
//! a node's BGP speaker (`twill bgp rib --socket <state-dir>/bgp.sock`), BIRD (`birdc show
//! route for DST all`), FRR (`vtysh -c 'show ip bgp DST json'`); for RIP and the agent's
//! own routes the kernel's route (its `proto` and `via`) says it. The parsers take those
//! outputs; the I/O edge in [`crate::trace`] runs the commands.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;
use twill_bgp::speaker::control::RibReply;

use crate::routes::RouteEntry;

/// Who told one router of the path about the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteOrigin {
    /// The lab member (`n1`, `rt`).
    pub member: String,
    /// The kernel route the packet took there, as `ip route` prints it.
    pub route: String,
    /// In words: "BGP from n2 (198.51.100.12), AS path 64512, next hop 198.51.100.12".
    pub learned: String,
    /// What said so: `twill bgp rib`, `birdc show route all`, `vtysh show ip bgp`, `kernel`.
    pub source: String,
}

/// Names an address: the lab member that holds it, if any.
pub type Namer<'a> = &'a dyn Fn(Ipv4Addr) -> Option<String>;

fn who(ip: Ipv4Addr, name: Namer) -> String {
    match name(ip) {
        Some(m) => format!("{m} ({ip})"),
        None => ip.to_string(),
    }
}

/// One path of a BGP table, as any of the three speakers shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpPath {
    pub prefix: Ipv4Net,
    /// The peer it came from; None: originated here.
    pub peer: Option<Ipv4Addr>,
    pub next_hop: Option<Ipv4Addr>,
    /// Space-separated ASes; empty for iBGP or local.
    pub as_path: String,
}

impl BgpPath {
    pub fn describe(&self, name: Namer) -> String {
        let Some(peer) = self.peer else {
            return format!("{}: originated here (its own block)", self.prefix);
        };
        let path = if self.as_path.is_empty() {
            "empty AS path (iBGP)".to_string()
        } else {
            format!("AS path {}", self.as_path)
        };
        let nh = self
            .next_hop
            .map(|n| format!(", next hop {}", who(n, name)))
            .unwrap_or_default();
        format!("{}: BGP from {}, {path}{nh}", self.prefix, who(peer, name))
    }
}

/// The best path for `dst` in a twill speaker's RIB (longest matching prefix).
pub fn best_in_rib(rib: &RibReply, dst: Ipv4Addr) -> Option<BgpPath> {
    let route = rib
        .routes
        .iter()
        .filter_map(|r| match r.prefix {
            ipnet::IpNet::V4(p) if p.contains(&dst) => Some((p, r)),
            _ => None,
        })
        .max_by_key(|(p, _)| p.prefix_len())?;
    let best = route.1.paths.iter().find(|p| p.best)?;
    Some(BgpPath {
        prefix: route.0,
        peer: best.peer.as_deref().and_then(|p| {
            // `IP` or `IP:PORT`.
            p.rsplit_once(':').map_or(p, |(ip, _)| ip).parse().ok()
        }),
        next_hop: best.next_hop.and_then(|n| match n {
            std::net::IpAddr::V4(a) => Some(a),
            _ => None,
        }),
        as_path: best.as_path.clone(),
    })
}

/// BIRD's `show route for DST all`: the first (best) route's prefix, the protocol it came
/// from (the lab names each session after its node), `via`, and `BGP.as_path`.
pub fn parse_bird_route(text: &str) -> Option<(BgpPath, String)> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("Table"));
    lines.next()?;
    let mut prefix = None;
    let mut protocol = String::new();
    let mut path = BgpPath {
        prefix: Ipv4Net::default(),
        peer: None,
        next_hop: None,
        as_path: String::new(),
    };
    for l in lines {
        let t = l.trim();
        // Further routes of the prefix: `                     unicast [n4 ...] (100)`.
        let another = l.starts_with(char::is_whitespace) && t.starts_with("unicast");
        if another && prefix.is_some() {
            break;
        }
        if !l.starts_with(char::is_whitespace) && !t.is_empty() {
            if prefix.is_some() {
                break; // the next route
            }
            let mut words = t.split_whitespace();
            prefix = words.next().and_then(|p| p.parse::<Ipv4Net>().ok());
            // `unicast [n1 15:40:01.123] * (100) [AS64512i]`
            protocol = t
                .split_once('[')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("")
                .trim_end_matches(']')
                .to_string();
        } else if let Some(rest) = t.strip_prefix("via ") {
            path.next_hop = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(rest) = t.strip_prefix("BGP.as_path:") {
            path.as_path = rest.trim().to_string();
        } else if let Some(rest) = t.strip_prefix("BGP.next_hop:") {
            if path.next_hop.is_none() {
                path.next_hop = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
    }
    path.prefix = prefix?;
    // A BGP route came from the neighbour of its session; BIRD names the next hop.
    path.peer = path.next_hop;
    Some((path, protocol))
}

/// FRR's `show ip bgp DST json`: the best path's prefix, peer, next hop and AS path.
pub fn parse_frr_bgp_json(text: &str) -> Option<BgpPath> {
    let v: Value = serde_json::from_str(text).ok()?;
    let prefix: Ipv4Net = v["prefix"].as_str()?.parse().ok()?;
    let paths = v["paths"].as_array()?;
    let best = paths
        .iter()
        .find(|p| p["bestpath"]["overall"].as_bool() == Some(true))
        .or_else(|| paths.first())?;
    let ip = |x: &Value| x.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok());
    Some(BgpPath {
        prefix,
        peer: ip(&best["peer"]["peerId"]),
        next_hop: best["nexthops"]
            .as_array()
            .and_then(|n| n.first())
            .and_then(|n| ip(&n["ip"])),
        as_path: best["aspath"]["string"]
            .as_str()
            .unwrap_or("")
            .replace("Local", "")
            .trim()
            .to_string(),
    })
}

/// What the kernel route itself says of its origin: its protocol and gateway. `rip`: the
/// lab runs the rip backend, whose learned routes twilld installs as its own (84).
pub fn from_kernel(r: &RouteEntry, name: Namer, rip: bool) -> String {
    let via = r
        .gateway
        .map(|g| format!(" via {}", who(g, name)))
        .unwrap_or_default();
    match r.protocol.as_deref() {
        Some("rip") | Some("189") => match r.gateway {
            Some(g) => format!("{}: RIP, heard from {}", r.dst, who(g, name)),
            None => format!("{}: RIP", r.dst),
        },
        Some("bgp") | Some("186") => format!("{}: BGP{via}", r.dst),
        Some("bird") | Some("12") => format!("{}: BIRD{via}", r.dst),
        Some("84") if r.kind == "blackhole" => {
            format!("{}: this node's own block (the agent's blackhole)", r.dst)
        }
        Some("84") if r.dst.prefix_len() == 32 && r.gateway.is_none() => format!(
            "{}: a local pod's /32 to its host veth{} (twill-cni, l3)",
            r.dst,
            r.dev.as_ref().map(|d| format!(" {d}")).unwrap_or_default()
        ),
        Some("84") if rip && r.gateway.is_some() => format!(
            "{}: RIP, heard by twilld's speaker{} (installed as proto 84)",
            r.dst,
            r.gateway
                .map(|g| format!(" from {}", who(g, name)))
                .unwrap_or_default()
        ),
        Some("84") => format!("{}: programmed by twilld from the store{via}", r.dst),
        Some("kernel") => format!("{}: connected (the interface's own subnet)", r.dst),
        None | Some("boot") | Some("static") if r.dst.prefix_len() == 0 => {
            format!("default route, set by the lab{via}")
        }
        p => format!("{}: proto {}{via}", r.dst, p.unwrap_or("?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_bgp::speaker::control::{RibPath, RibRoute};
    use twill_bgp::speaker::kernel::KernelStats;

    fn namer(ip: Ipv4Addr) -> Option<String> {
        match ip.to_string().as_str() {
            "192.0.2.11" => Some("n1".into()),
            "192.0.2.1" | "198.51.100.1" => Some("rt".into()),
            "198.51.100.12" => Some("n2".into()),
            _ => None,
        }
    }

    #[test]
    fn a_twill_rib_names_the_best_path_of_the_longest_prefix() {
        let path = |peer: Option<&str>, best, as_path: &str| RibPath {
            peer: peer.map(str::to_owned),
            next_hop: peer.map(|p| p.split(':').next().unwrap().parse().unwrap()),
            as_path: as_path.into(),
            origin: "igp".into(),
            local_pref: None,
            med: None,
            communities: vec![],
            large_communities: vec![],
            best,
            multipath: false,
            stale: false,
        };
        let rib = RibReply {
            routes: vec![
                RibRoute {
                    prefix: "10.244.0.0/16".parse().unwrap(),
                    paths: vec![path(Some("192.0.2.1"), true, "64513")],
                },
                RibRoute {
                    prefix: "10.244.4.0/24".parse().unwrap(),
                    paths: vec![
                        path(Some("192.0.2.1"), false, "64513"),
                        path(Some("198.51.100.12:179"), true, ""),
                    ],
                },
            ],
            kernel: KernelStats::default(),
        };
        let b = best_in_rib(&rib, "10.244.4.2".parse().unwrap()).unwrap();
        assert_eq!(b.prefix.to_string(), "10.244.4.0/24");
        assert_eq!(
            b.describe(&namer),
            "10.244.4.0/24: BGP from n2 (198.51.100.12), empty AS path (iBGP), next hop n2 (198.51.100.12)"
        );
        assert!(best_in_rib(&rib, "10.9.0.1".parse().unwrap()).is_none());
        let local = BgpPath {
            prefix: "10.244.1.0/24".parse().unwrap(),
            peer: None,
            next_hop: None,
            as_path: String::new(),
        };
        assert!(local.describe(&namer).contains("originated here"));
    }

    #[test]
    fn bird_and_frr_answers_are_read() {
        let bird = "BIRD 2.0.12 ready.\nTable master4:\n\
                    10.244.4.0/24        unicast [n2 15:40:01.123] * (100) [AS64512i]\n\
                    \tvia 198.51.100.12 on eth1\n\tType: BGP univ\n\tBGP.origin: IGP\n\
                    \tBGP.as_path: 64512\n\tBGP.next_hop: 198.51.100.12\n\tBGP.local_pref: 100\n\
                    \x20                    unicast [n4 15:40:02.000] (100) [AS64512i]\n\
                    \tvia 198.51.100.14 on eth1\n";
        let (p, proto) = parse_bird_route(bird).unwrap();
        assert_eq!(proto, "n2");
        assert_eq!(
            p.describe(&namer),
            "10.244.4.0/24: BGP from n2 (198.51.100.12), AS path 64512, next hop n2 (198.51.100.12)"
        );
        assert!(parse_bird_route("BIRD 2.0.12 ready.\nNetwork not found\n").is_none());

        let frr = r#"{"prefix":"10.244.1.0/24","paths":[
            {"aspath":{"string":"64512","segments":[]},"bestpath":{"overall":true},
             "nexthops":[{"ip":"192.0.2.11","afi":"ipv4"}],"peer":{"peerId":"192.0.2.11"}},
            {"aspath":{"string":"64512"},"nexthops":[{"ip":"192.0.2.13"}],"peer":{"peerId":"192.0.2.13"}}]}"#;
        let p = parse_frr_bgp_json(frr).unwrap();
        assert_eq!(
            p.describe(&namer),
            "10.244.1.0/24: BGP from n1 (192.0.2.11), AS path 64512, next hop n1 (192.0.2.11)"
        );
        assert!(parse_frr_bgp_json("{}").is_none());
    }

    #[test]
    fn a_rip_backend_route_is_named_for_rip() {
        let routes = crate::routes::parse_routes(
            r#"[{"dst":"10.244.4.0/24","gateway":"198.51.100.1","dev":"eth0","protocol":"84","flags":[]}]"#,
        );
        assert_eq!(
            from_kernel(&routes[0], &namer, true),
            "10.244.4.0/24: RIP, heard by twilld's speaker from rt (198.51.100.1) (installed as proto 84)"
        );
        assert!(from_kernel(&routes[0], &namer, false).contains("from the store"));
    }

    #[test]
    fn the_kernel_says_what_rip_and_the_agent_did() {
        let routes = crate::routes::parse_routes(
            r#"[{"dst":"10.244.4.0/24","gateway":"192.0.2.1","dev":"eth0","protocol":"rip","metric":20,"flags":[]},
                {"type":"blackhole","dst":"10.244.1.0/24","protocol":"84","flags":[]},
                {"dst":"10.244.1.2","dev":"twl1234","protocol":"84","scope":"link","flags":[]},
                {"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]}]"#,
        );
        assert_eq!(
            from_kernel(&routes[0], &namer, false),
            "10.244.4.0/24: RIP, heard from rt (192.0.2.1)"
        );
        assert!(from_kernel(&routes[1], &namer, false).contains("own block"));
        assert_eq!(
            from_kernel(&routes[2], &namer, false),
            "10.244.1.2/32: a local pod's /32 to its host veth twl1234 (twill-cni, l3)"
        );
        assert_eq!(
            from_kernel(&routes[3], &namer, false),
            "default route, set by the lab via rt (192.0.2.1)"
        );
    }
}
