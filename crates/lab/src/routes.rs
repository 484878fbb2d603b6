//! A namespace's routing table as the lab explains it (`lab demo`, `lab trace`): parsed
//! from `ip -j route show`, looked up by longest prefix, and read for the pure-L3 story
//! (Calico's table: the node's block as a blackhole, a /32 per pod to its veth, no
//! bridge). Pure; the callers run `ip`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

/// One route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    /// `unicast` unless `ip` says otherwise (`blackhole`, `unreachable`, ...).
    pub kind: String,
    pub gateway: Option<Ipv4Addr>,
    pub dev: Option<String>,
    pub scope: Option<String>,
    /// As `ip` prints it: `kernel`, `84` (Twill's), ...
    pub protocol: Option<String>,
    pub prefsrc: Option<Ipv4Addr>,
    /// `onlink`, ...
    pub flags: Vec<String>,
}

impl RouteEntry {
    pub fn is_twill(&self) -> bool {
        self.protocol.as_deref() == Some("84")
    }
}

impl std::fmt::Display for RouteEntry {
    /// As `ip route` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind != "unicast" {
            write!(f, "{} ", self.kind)?;
        }
        if self.dst.prefix_len() == 0 {
            f.write_str("default")?;
        } else if self.dst.prefix_len() == 32 {
            write!(f, "{}", self.dst.addr())?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if let Some(p) = &self.protocol {
            write!(f, " proto {p}")?;
        }
        if let Some(s) = &self.scope {
            write!(f, " scope {s}")?;
        }
        if let Some(s) = self.prefsrc {
            write!(f, " src {s}")?;
        }
        for flag in &self.flags {
            write!(f, " {flag}")?;
        }
        Ok(())
    }
}

/// `ip -j route show` output; entries it cannot read are left out.
pub fn parse_routes(text: &str) -> Vec<RouteEntry> {
    let Ok(Value::Array(v)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    v.iter()
        .filter_map(|r| {
            let dst = match r.get("dst")?.as_str()? {
                "default" => Ipv4Net::default(),
                s => s
                    .parse()
                    .ok()
                    .or_else(|| s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))?,
            };
            let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
            Some(RouteEntry {
                dst,
                kind: s("type").unwrap_or_else(|| "unicast".into()),
                gateway: s("gateway").and_then(|g| g.parse().ok()),
                dev: s("dev"),
                scope: s("scope"),
                protocol: s("protocol"),
                prefsrc: s("prefsrc").and_then(|g| g.parse().ok()),
                flags: r
                    .get("flags")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| f.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The route the kernel's main table picks for `dst`: the longest matching prefix.
pub fn lookup(routes: &[RouteEntry], dst: Ipv4Addr) -> Option<&RouteEntry> {
    routes
        .iter()
        .filter(|r| r.dst.contains(&dst))
        .max_by_key(|r| r.dst.prefix_len())
}

/// What an l3 node's table shows, and what it lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L3Table {
    /// The node's blocks, each a blackhole route.
    pub blackholes: Vec<RouteEntry>,
    /// One /32 per pod to its host veth: (pod, route).
    pub pod_routes: Vec<(String, RouteEntry)>,
    /// What is not as the l3 wiring promises, each in words.
    pub missing: Vec<String>,
}

/// Reads an l3 node's table against what it should hold: a Twill blackhole for each of
/// its `blocks`, a Twill `/32 dev <veth> scope link` for each of its `pods` (name, address)
/// and no bridge among its `bridges`. Pure.
pub fn l3_table(
    routes: &[RouteEntry],
    blocks: &[Ipv4Net],
    pods: &[(String, Ipv4Addr)],
    bridges: &[String],
) -> L3Table {
    let mut t = L3Table::default();
    for b in blocks {
        match routes.iter().find(|r| r.dst == *b && r.kind == "blackhole") {
            Some(r) => t.blackholes.push(r.clone()),
            None => t.missing.push(format!(
                "no blackhole route for the node's block {b} (twilld adds one per block it holds in l3)"
            )),
        }
    }
    for (pod, ip) in pods {
        let want = Ipv4Net::from(*ip);
        match routes
            .iter()
            .find(|r| r.dst == want && r.kind == "unicast" && r.dev.is_some())
        {
            Some(r) if r.is_twill() && r.scope.as_deref() == Some("link") => {
                t.pod_routes.push((pod.clone(), r.clone()))
            }
            Some(r) => t.missing.push(format!(
                "the route to {pod} ({r}) is not Twill's /32 scope link route"
            )),
            None => t.missing.push(format!(
                "no /32 route to {pod} ({ip}): twill-cni adds one per l3 pod"
            )),
        }
    }
    for b in bridges {
        t.missing.push(format!(
            "a bridge {b} is on the node: l3 wires pods without one"
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip -j route show` on an l3 node of the lab (vxlan backend).
    const L3_NODE: &str = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
        {"dst":"10.244.4.0/24","gateway":"10.244.4.0","dev":"twl.1","protocol":"84","flags":["onlink"]},
        {"type":"blackhole","dst":"10.244.226.0/24","protocol":"84","flags":[]},
        {"dst":"10.244.226.2","dev":"twlb5ffba1f10f2","protocol":"84","scope":"link","flags":[]},
        {"dst":"10.244.226.3","dev":"twlc005f236f371","protocol":"84","scope":"link","flags":[]},
        {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.11","flags":[]}]"#;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_parse_print_as_ip_does_and_match_the_longest_prefix() {
        let r = parse_routes(L3_NODE);
        assert_eq!(r.len(), 6);
        let lines: Vec<String> = r.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "default via 192.0.2.1 dev eth0",
                "10.244.4.0/24 via 10.244.4.0 dev twl.1 proto 84 onlink",
                "blackhole 10.244.226.0/24 proto 84",
                "10.244.226.2 dev twlb5ffba1f10f2 proto 84 scope link",
                "10.244.226.3 dev twlc005f236f371 proto 84 scope link",
                "192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.11",
            ]
        );
        assert_eq!(
            lookup(&r, ip("10.244.226.3")).unwrap().dev.as_deref(),
            Some("twlc005f236f371")
        );
        assert_eq!(lookup(&r, ip("10.244.226.99")).unwrap().kind, "blackhole");
        assert_eq!(lookup(&r, ip("203.0.113.10")).unwrap().dst.prefix_len(), 0);
        assert!(parse_routes("not json").is_empty());
    }

    #[test]
    fn the_l3_story_is_read_and_gaps_are_named() {
        let r = parse_routes(L3_NODE);
        let block: Ipv4Net = "10.244.226.0/24".parse().unwrap();
        let pods = [
            ("n1-p1".to_string(), ip("10.244.226.2")),
            ("n1-p2".to_string(), ip("10.244.226.3")),
        ];
        let t = l3_table(&r, &[block], &pods, &[]);
        assert!(t.missing.is_empty(), "{:?}", t.missing);
        assert_eq!(t.blackholes.len(), 1);
        assert_eq!(t.pod_routes[1].0, "n1-p2");
        // A bridge node: no blackhole, no /32s, a bridge.
        let bridge = parse_routes(
            r#"[{"dst":"10.244.226.0/24","dev":"twl0","protocol":"kernel","scope":"link"}]"#,
        );
        let t = l3_table(&bridge, &[block], &pods[..1], &["twl0".into()]);
        assert_eq!(
            t.missing,
            [
                "no blackhole route for the node's block 10.244.226.0/24 (twilld adds one per block it holds in l3)",
                "no /32 route to n1-p1 (10.244.226.2): twill-cni adds one per l3 pod",
                "a bridge twl0 is on the node: l3 wires pods without one",
            ]
        );
    }
}
