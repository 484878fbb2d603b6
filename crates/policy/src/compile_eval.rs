//! The compiled table checked against the model: a small interpreter of the nft rules
//! [`crate::compile`] writes (that subset of nft's syntax, with the kernel's semantics of
//! jump/goto/return, vmap dispatch and mark bits) runs each flow's first packet through
//! the source node's and the destination node's tables, and must agree with
//! [`crate::model::evaluate`] on generated clusters (seeded; every failure prints the
//! seed, the flow and the policies). The kernel accepting the same text is checked by
//! twilld's tests, which load it and send real packets.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::compile::{Elem, Ruleset, CHAIN_OPEN};

/// A packet as the forward hook sees it.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Fell off the end of a chain or `return`.
    Return,
    Drop,
}

fn tokens(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = rule.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let s: String = chars.by_ref().take_while(|c| *c != '"').collect();
            out.push(format!("\"{s}\""));
        } else if c == '{' {
            let s: String = chars.by_ref().take_while(|c| *c != '}').collect();
            out.push(format!("{s}}}"));
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                s.push(c);
                chars.next();
            }
            out.push(s);
        }
    }
    out
}

fn set_items(tok: &str) -> Vec<String> {
    tok.trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn proto_num(s: &str) -> u8 {
    match s {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        n => n.parse().expect("a protocol"),
    }
}

fn in_ports(p: u16, item: &str) -> bool {
    match item.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().unwrap()..=b.parse().unwrap()).contains(&p),
        None => item.parse::<u16>().unwrap() == p,
    }
}

fn in_net(ip: Ipv4Addr, item: &str) -> bool {
    let n: Ipv4Net = if item.contains('/') {
        item.parse().unwrap()
    } else {
        Ipv4Net::new(item.parse().unwrap(), 32).unwrap()
    };
    n.contains(&ip)
}

fn hex(s: &str) -> u32 {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

struct Run<'a> {
    rs: &'a Ruleset,
    pkt: &'a Packet,
    mark: u32,
    logs: Vec<String>,
    drops: BTreeMap<String, u64>,
}

impl Run<'_> {
    fn set_has(&self, set: &str, e: &Elem) -> bool {
        self.rs
            .sets
            .get(set)
            .unwrap_or_else(|| panic!("set {set} is not in the table"))
            .elements
            .contains(e)
    }

    /// Runs `chain`; what it ends with.
    fn chain(&mut self, chain: &str) -> Verdict {
        let rules = self
            .rs
            .chains
            .get(chain)
            .unwrap_or_else(|| panic!("chain {chain} is not in the table"))
            .clone();
        for rule in &rules {
            if let Some(v) = self.rule(rule) {
                return v;
            }
        }
        Verdict::Return
    }

    /// One rule: `None` to go on with the next one.
    fn rule(&mut self, rule: &str) -> Option<Verdict> {
        let t = tokens(rule);
        let p = self.pkt;
        let mut i = 0;
        let neg = |t: &[String], i: &mut usize| {
            if t.get(*i).map(String::as_str) == Some("!=") {
                *i += 1;
                true
            } else {
                false
            }
        };
        while i < t.len() {
            match t[i].as_str() {
                "ip" => {
                    let addr = if t[i + 1] == "saddr" { p.src } else { p.dst };
                    i += 2;
                    if t.get(i).map(String::as_str) == Some(".") {
                        // ip X . meta l4proto . th Y [!=] @set
                        let port = if t[i + 5] == "sport" {
                            p.sport
                        } else {
                            p.dport
                        };
                        i += 6;
                        let n = neg(&t, &mut i);
                        let set = t[i].trim_start_matches('@');
                        i += 1;
                        if self.set_has(set, &Elem::Port(addr, p.proto, port)) == n {
                            return None;
                        }
                        continue;
                    }
                    let n = neg(&t, &mut i);
                    let tok = &t[i];
                    i += 1;
                    let hit = if let Some(set) = tok.strip_prefix('@') {
                        self.set_has(set, &Elem::Addr(addr))
                    } else if tok.starts_with('{') {
                        set_items(tok).iter().any(|n| in_net(addr, n))
                    } else {
                        in_net(addr, tok)
                    };
                    if hit == n {
                        return None;
                    }
                }
                "th" => {
                    let port = if t[i + 1] == "sport" {
                        p.sport
                    } else {
                        p.dport
                    };
                    i += 2;
                    let n = neg(&t, &mut i);
                    let tok = &t[i];
                    i += 1;
                    let items = if tok.starts_with('{') {
                        set_items(tok)
                    } else {
                        vec![tok.clone()]
                    };
                    // th needs a transport header with ports.
                    let has_ports = [6, 17, 132].contains(&p.proto);
                    if !has_ports || items.iter().any(|x| in_ports(port, x)) == n {
                        return None;
                    }
                }
                "meta" if t[i + 1] == "l4proto" => {
                    let tok = &t[i + 2];
                    i += 3;
                    let items = if tok.starts_with('{') {
                        set_items(tok)
                    } else {
                        vec![tok.clone()]
                    };
                    if !items.iter().any(|x| proto_num(x) == p.proto) {
                        return None;
                    }
                }
                "meta" if t[i + 1] == "mark" && t[i + 2] == "set" => {
                    // meta mark set meta mark (|,&) X
                    let v = hex(&t[i + 6]);
                    match t[i + 5].as_str() {
                        "|" => self.mark |= v,
                        "&" => self.mark &= v,
                        o => panic!("mark op {o}"),
                    }
                    i += 7;
                }
                "meta" if t[i + 1] == "mark" && t[i + 2] == "&" => {
                    // meta mark & X == Y
                    let (m, v) = (hex(&t[i + 3]), hex(&t[i + 5]));
                    i += 6;
                    if self.mark & m != v {
                        return None;
                    }
                }
                "counter" => {
                    *self.drops.entry(t[i + 2].clone()).or_default() += 1;
                    i += 3;
                }
                "log" => {
                    self.logs.push(t[i + 2].trim_matches('"').to_string());
                    i += 5;
                }
                "return" => return Some(Verdict::Return),
                "drop" => return Some(Verdict::Drop),
                "jump" => {
                    let target = t[i + 1].clone();
                    i += 2;
                    if self.chain(&target) == Verdict::Drop {
                        return Some(Verdict::Drop);
                    }
                }
                "goto" => return Some(self.chain(&t[i + 1].clone())),
                other => panic!("the interpreter does not know {other:?} in {rule:?}"),
            }
        }
        None
    }
}

/// What one direction's dispatch did: allowed, and the Log prefixes hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub logs: Vec<String>,
    pub drops: BTreeMap<String, u64>,
}

/// Runs the packet through `rs`'s `from_pod` (egress of the pod behind `iface`) or
/// `to_pod` (ingress) dispatch; `None` if the key is not in the map (the real table
/// then drops it as an unknown interface).
pub fn dispatch(rs: &Ruleset, egress: bool, iface: &str, pkt: &Packet) -> Option<Outcome> {
    let (map, addr) = if egress {
        (&rs.from_pod, pkt.src)
    } else {
        (&rs.to_pod, pkt.dst)
    };
    let chain = map.get(&(iface.to_string(), addr))?;
    let mut run = Run {
        rs,
        pkt,
        mark: 0,
        logs: Vec::new(),
        drops: BTreeMap::new(),
    };
    let v = if chain == CHAIN_OPEN {
        Verdict::Return
    } else {
        run.chain(chain)
    };
    Some(Outcome {
        allowed: v == Verdict::Return,
        logs: run.logs,
        drops: run.drops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, PodId};
    use crate::compile::{compile, log_prefix, proto_number};
    use crate::model::{evaluate, Destination, Flow, Source};
    use serde_json::{json, Value};
    use twill_api::cni::Protocol;
    use twill_api::policy::PolicyType;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len())].clone()
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const NS: [&str; 3] = ["x", "y", "z"];
    const PODS: [&str; 3] = ["a", "b", "c"];

    fn pod_ip(ns: usize, pod: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, ns as u8 + 1, pod as u8 + 2)
    }

    /// x/y/z × a/b/c; x on n1 (l3), y on n2 (bridge br0), z on n1 and n2.
    fn entries() -> Vec<(String, Value)> {
        let mut e = Vec::new();
        for (n, ns) in NS.iter().enumerate() {
            e.push((format!("namespaces/{ns}"), json!({"labels": {"ns": ns}})));
            for (p, pod) in PODS.iter().enumerate() {
                let node = if n == 0 || (n == 2 && p == 0) {
                    "n1"
                } else {
                    "n2"
                };
                let wiring = if node == "n1" { "l3" } else { "bridge" };
                e.push((
                    format!("endpoints/{node}/{ns}/{pod}"),
                    json!({"namespace": ns, "pod": pod, "node": node, "containerID": format!("{ns}{pod}"),
                        "ifname": "eth0", "hostVeth": format!("twl{ns}{pod}"), "ips": [pod_ip(n, p)],
                        "wiring": wiring, "labels": {"pod": pod},
                        "namedPorts": [
                            {"name": "serve-80-tcp", "port": 80, "protocol": "TCP"},
                            {"name": "serve-81-udp", "port": 81, "protocol": "UDP"},
                            {"name": "serve-80-udp", "port": 80, "protocol": "UDP"}]}),
                ));
            }
        }
        e
    }

    fn sel(r: &mut Rng, key: &str, values: &[&str]) -> Value {
        match r.below(4) {
            0 => json!({}),
            1 => json!({"matchLabels": {key: r.pick(values)}}),
            2 => {
                json!({"matchExpressions": [{"key": key, "operator": r.pick(&["In", "NotIn"]), "values": [r.pick(values)]}]})
            }
            _ => {
                json!({"matchExpressions": [{"key": r.pick(&[key, "missing"]), "operator": r.pick(&["Exists", "DoesNotExist"])}]})
            }
        }
    }

    fn peer(r: &mut Rng) -> Value {
        match r.below(4) {
            0 => json!({"podSelector": sel(r, "pod", &PODS)}),
            1 => json!({"namespaceSelector": sel(r, "ns", &NS)}),
            2 => {
                json!({"podSelector": sel(r, "pod", &PODS), "namespaceSelector": sel(r, "ns", &NS)})
            }
            _ => {
                let n = r.below(3) + 1;
                let except: Vec<String> = if r.chance(50) {
                    vec![format!("10.244.{n}.{}/32", r.below(3) + 2)]
                } else {
                    vec![]
                };
                json!({"ipBlock": {"cidr": format!("10.244.{n}.0/24"), "except": except}})
            }
        }
    }

    fn port(r: &mut Rng) -> Value {
        let proto = r.pick(&["TCP", "UDP"]);
        match r.below(4) {
            0 => json!({"protocol": proto}),
            1 => json!({"protocol": proto, "port": r.pick(&[80, 81])}),
            2 => json!({"protocol": proto, "port": 80, "endPort": 81}),
            _ => {
                json!({"protocol": proto, "port": format!("serve-{}-{}", r.pick(&[80, 81]), proto.to_lowercase())})
            }
        }
    }

    fn np(r: &mut Rng) -> Value {
        let rules = |r: &mut Rng, field: &str| -> Vec<Value> {
            (0..r.below(3))
                .map(|_| {
                    let peers: Vec<Value> = (0..r.below(3)).map(|_| peer(r)).collect();
                    let ports: Vec<Value> = (0..r.below(3)).map(|_| port(r)).collect();
                    json!({field: peers, "ports": ports})
                })
                .collect()
        };
        let types = r.pick(&[
            vec![],
            vec!["Ingress"],
            vec!["Egress"],
            vec!["Ingress", "Egress"],
        ]);
        json!({"podSelector": sel(r, "pod", &PODS), "policyTypes": types,
               "ingress": rules(r, "from"), "egress": rules(r, "to")})
    }

    fn calico_sel(r: &mut Rng) -> String {
        r.pick(&[
            "",
            "pod == 'a'",
            "pod != 'b'",
            "has(pod)",
            "pod in {'a', 'c'}",
            "projectcalico.org/namespace == 'y'",
        ])
        .to_string()
    }

    fn entity(r: &mut Rng) -> Value {
        let mut e = json!({});
        if r.chance(40) {
            e["selector"] = calico_sel(r).into();
        }
        if r.chance(20) {
            e["namespaceSelector"] = r.pick(&["ns == 'x'", "ns != 'z'"]).into();
        }
        if r.chance(25) {
            e["nets"] = json!([format!("10.244.{}.0/24", r.below(3) + 1)]);
        }
        if r.chance(15) {
            e["notNets"] = json!([format!("10.244.{}.{}/32", r.below(3) + 1, r.below(3) + 2)]);
        }
        if r.chance(30) {
            e["ports"] = json!([r.pick(&[
                json!(80),
                json!("81"),
                json!("80:81"),
                json!("serve-80-tcp")
            ])]);
        }
        if r.chance(10) {
            e["notPorts"] = json!([r.pick(&[json!(81), json!("serve-81-udp")])]);
        }
        e
    }

    fn gnp(r: &mut Rng) -> Value {
        let rules = |r: &mut Rng| -> Vec<Value> {
            (0..r.below(4))
                .map(|_| {
                    let mut rule = json!({"action": r.pick(&["Allow", "Deny", "Log", "Pass"])});
                    if r.chance(60) {
                        rule["protocol"] = r.pick(&["TCP", "UDP"]).into();
                    }
                    if r.chance(50) {
                        rule["source"] = entity(r);
                    }
                    if r.chance(50) {
                        rule["destination"] = entity(r);
                    }
                    // Ports need a protocol that has them (Calico's validation).
                    let ports = ["source", "destination"].iter().any(|e| {
                        rule.get(*e).is_some_and(|v| {
                            v.get("ports").is_some() || v.get("notPorts").is_some()
                        })
                    });
                    if ports && rule.get("protocol").is_none() {
                        rule["protocol"] = "TCP".into();
                    }
                    rule
                })
                .collect()
        };
        let mut g = json!({"selector": calico_sel(r), "ingress": rules(r), "egress": rules(r)});
        if r.chance(80) {
            g["order"] = (r.below(5) as f64).into();
        }
        g["types"] = json!(r.pick(&[vec!["Ingress"], vec!["Egress"], vec!["Ingress", "Egress"]]));
        if r.chance(20) {
            g["namespaceSelector"] = "ns != 'x'".into();
        }
        g
    }

    fn iface(c: &Cluster, ip: Ipv4Addr) -> (String, String) {
        let p = c.pod_by_ip(ip).unwrap();
        let i = if p.endpoint.wiring == twill_api::wiring::PodWiring::L3 {
            p.endpoint.host_veth.clone()
        } else {
            "br0".to_string()
        };
        (p.node().to_string(), i)
    }

    #[test]
    fn the_compiled_table_agrees_with_the_model_on_generated_clusters() {
        let mut checked = 0;
        for seed in 1..=60u64 {
            let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut e = entries();
            for i in 0..r.below(4) {
                e.push((format!("networkpolicies/{}/p{i}", r.pick(&NS)), np(&mut r)));
            }
            for i in 0..r.below(3) {
                e.push((format!("globalnetworkpolicies/g{i}"), gnp(&mut r)));
            }
            let text: Vec<(String, String)> =
                e.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
            let c = Cluster::from_entries(text.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            assert_eq!(
                c.problems().count(),
                0,
                "seed {seed}: {:?}",
                c.problems().collect::<Vec<_>>()
            );
            let bridges: BTreeMap<String, String> = c
                .pods()
                .filter(|p| p.endpoint.wiring == twill_api::wiring::PodWiring::Bridge)
                .map(|p| (p.endpoint.host_veth.clone(), "br0".to_string()))
                .collect();
            let tables: BTreeMap<&str, Ruleset> = ["n1", "n2"]
                .iter()
                .map(|n| (*n, compile(&c, n, &bridges)))
                .collect();
            for (sn, sns) in NS.iter().enumerate() {
                for (sp, spod) in PODS.iter().enumerate() {
                    for (dn, dns) in NS.iter().enumerate() {
                        for (dp, dpod) in PODS.iter().enumerate() {
                            if (sn, sp) == (dn, dp) {
                                continue;
                            }
                            for (proto, dport) in [
                                (Protocol::Tcp, 80),
                                (Protocol::Tcp, 81),
                                (Protocol::Udp, 80),
                                (Protocol::Udp, 81),
                            ] {
                                let flow = Flow::pods(
                                    &PodId::new(sns, spod),
                                    &PodId::new(dns, dpod),
                                    proto,
                                    dport,
                                );
                                let flow = Flow {
                                    source_port: Some(40000),
                                    ..flow
                                };
                                let model = evaluate(&c, &flow);
                                let pkt = Packet {
                                    src: pod_ip(sn, sp),
                                    dst: pod_ip(dn, dp),
                                    proto: proto_number(proto),
                                    sport: 40000,
                                    dport,
                                };
                                let (snode, siface) = iface(&c, pkt.src);
                                let (dnode, diface) = iface(&c, pkt.dst);
                                let eg = dispatch(&tables[snode.as_str()], true, &siface, &pkt)
                                    .expect("source dispatched");
                                let allowed = eg.allowed && {
                                    let ing =
                                        dispatch(&tables[dnode.as_str()], false, &diface, &pkt)
                                            .expect("destination dispatched");
                                    let mut logs = eg.logs.clone();
                                    logs.extend(ing.logs.clone());
                                    let want: Vec<String> = model
                                        .logged()
                                        .map(|l| {
                                            let d = if model
                                                .egress
                                                .as_ref()
                                                .is_some_and(|v| v.logged.contains(l))
                                            {
                                                PolicyType::Egress
                                            } else {
                                                PolicyType::Ingress
                                            };
                                            log_prefix(
                                                c.global_policy(&l.policy).unwrap(),
                                                d,
                                                l.rule,
                                            )
                                        })
                                        .collect();
                                    if model.allowed {
                                        assert_eq!(
                                            logs, want,
                                            "seed {seed}: {flow:?}: logs\n{text:#?}"
                                        );
                                    }
                                    ing.allowed
                                };
                                assert_eq!(
                                    allowed, model.allowed,
                                    "seed {seed}: {flow:?}\nmodel: {model:#?}\npolicies: {text:#?}"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
            let _ = Destination::Ip(Ipv4Addr::LOCALHOST);
            let _ = Source::Host;
        }
        assert!(checked > 10_000);
    }
}
