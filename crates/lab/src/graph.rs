//! `twill lab graph`: the lab's topology as Graphviz DOT. Pure: [`to_dot`] builds it from a
//! [`topo::Topology`] (read from the kernel by [`live`]) and the plan's host ports and
//! segment subnets; [`live::render_with_dot`] turns it into SVG.
//!
//! One cluster per namespace (pods nested in their node), one graph node per device; edges
//! for veth pairs (solid), bridge ports (dotted), VXLAN tunnels (dashed, both ways, with VNI
//! and UDP port) and host ports (green, node → pod).

pub mod live;
pub mod topo;

use std::collections::HashMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use topo::{Link, Namespace, Role, Topology};
use twill_api::wiring::{L3_GATEWAY, L3_HOST_MAC};

use crate::trace::pcap::Mac;

use crate::plan::LabPlan;

/// A host port: `node`'s address:`host_port` forwarded to `pod`:`container_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub node_netns: String,
    pub pod_netns: String,
    pub proto: String,
    pub host_port: u16,
    pub container_port: u16,
}

/// What the plan adds to what the kernel shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    pub host_ports: Vec<HostPort>,
    /// Segment namespace → its subnet (an underlay bridge has no address to show it).
    pub segment_subnets: HashMap<String, String>,
    /// Node namespace → the blocks it holds (from the store): in l3 no bridge address
    /// shows them.
    pub node_blocks: HashMap<String, Vec<String>>,
    pub pod_wiring: crate::plan::PodWiring,
    /// `--backend ovs`: node namespace → its OVS (bridges, ports, per-peer flows), read from
    /// each node's database and integration bridge.
    pub ovs: HashMap<String, crate::ovs::NodeOvs>,
}

impl Extras {
    pub fn from_plan(plan: &LabPlan) -> Extras {
        let mut host_ports = Vec::new();
        for n in &plan.nodes {
            for p in &n.pods {
                for m in &p.port_mappings {
                    host_ports.push(HostPort {
                        node_netns: n.netns.clone(),
                        pod_netns: p.netns.clone(),
                        proto: m.protocol.clone(),
                        host_port: m.host_port,
                        container_port: m.container_port,
                    });
                }
            }
        }
        Extras {
            host_ports,
            segment_subnets: plan
                .segments
                .iter()
                .map(|s| (s.netns.clone(), s.subnet.to_string()))
                .collect(),
            node_blocks: HashMap::new(),
            pod_wiring: plan.pod_wiring,
            ovs: HashMap::new(),
        }
    }
}

/// A DOT double-quoted string.
pub fn quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The graph node id of a device.
pub fn node_id(netns: &str, dev: &str) -> String {
    quote(&format!("{netns}/{dev}"))
}

fn addrs(l: &Link) -> String {
    l.addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn device_label(l: &Link) -> String {
    let mut parts = vec![l.name.clone()];
    match l.kind.as_str() {
        "bridge" => parts.push("bridge".into()),
        "vxlan" => {
            if let Some(v) = &l.vxlan {
                parts.push(format!("vxlan vni {} udp/{}", v.vni, v.port));
            }
        }
        "veth" if l.master.is_some() => parts.push("veth (port)".into()),
        // An l3 pod's host end: no bridge, the fixed MAC, proxy ARP for the pod's gateway.
        "veth" if l.mac == Some(Mac(L3_HOST_MAC)) => parts.push(format!(
            "l3 veth {}\nproxy ARP for {L3_GATEWAY}",
            Mac(L3_HOST_MAC)
        )),
        "veth" => {}
        other => parts.push(other.into()),
    }
    if !l.addrs.is_empty() {
        parts.push(addrs(l));
    }
    if !l.up {
        parts.push("DOWN".into());
    }
    parts.join("\n")
}

fn style(l: &Link) -> &'static str {
    match l.kind.as_str() {
        "bridge" => "shape=box, style=\"rounded,filled\", fillcolor=\"#ffe9b3\"",
        "vxlan" => "shape=hexagon, style=filled, fillcolor=\"#d9c8f5\"",
        _ if l.master.is_some() => "shape=box, style=filled, fillcolor=\"#f2f2f2\", fontsize=8",
        _ => "shape=box, style=filled, fillcolor=white",
    }
}

fn ns_label(ns: &Namespace, extras: &Extras) -> String {
    let first = |name: &str| {
        ns.links
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.addrs.first())
            .map(|a| a.addr().to_string())
    };
    match ns.role {
        Role::Segment => format!(
            "segment {}{}\n{}",
            ns.member,
            extras
                .segment_subnets
                .get(&ns.name)
                .map(|s| format!(" {s}"))
                .unwrap_or_default(),
            ns.name
        ),
        Role::Router => format!("router {}\n{}", ns.member, ns.name),
        Role::Outside => format!("outside host\n{}", ns.name),
        Role::Store => format!("store host (etcd)\n{}", ns.name),
        Role::Node => {
            let blocks: Vec<String> = match extras.node_blocks.get(&ns.name) {
                Some(b) => b.clone(),
                None => ns
                    .links
                    .iter()
                    .filter(|l| l.kind == "bridge")
                    .flat_map(|l| l.addrs.iter().map(|a| a.trunc().to_string()))
                    .collect(),
            };
            let wiring = match extras.pod_wiring {
                crate::plan::PodWiring::L3 => "\npods: l3, a /32 route each, no bridge",
                crate::plan::PodWiring::Bridge => "",
            };
            format!(
                "node {}  IP {}\nblocks {}{wiring}\n{}",
                ns.member,
                first("eth0")
                    .or_else(|| first(crate::plan::OVS_PHY_BRIDGE))
                    .unwrap_or_else(|| "-".into()),
                if blocks.is_empty() {
                    "-".into()
                } else {
                    blocks.join(", ")
                },
                ns.name
            )
        }
        Role::Pod => format!(
            "pod {}  {}",
            ns.member,
            first("eth0").unwrap_or_else(|| "no IP".into())
        ),
    }
}

fn fill(role: Role) -> &'static str {
    match role {
        Role::Segment => "#dbeafe",
        Role::Router => "#e2e8f0",
        Role::Outside => "#fde2e2",
        Role::Store => "#fef3c7",
        Role::Node => "#dcfce7",
        Role::Pod => "#ffffff",
    }
}

fn cluster(out: &mut String, ns: &Namespace, extras: &Extras, indent: &str, inner: &[&Namespace]) {
    let _ = writeln!(
        out,
        "{indent}subgraph {} {{",
        quote(&format!("cluster_{}", ns.name))
    );
    let _ = writeln!(
        out,
        "{indent}  label={}; style=\"rounded,filled\"; fillcolor={};",
        quote(&ns_label(ns, extras)),
        quote(fill(ns.role))
    );
    for l in ns.links.iter().filter(|l| l.name != "lo") {
        let _ = writeln!(
            out,
            "{indent}  {} [label={}, {}];",
            node_id(&ns.name, &l.name),
            quote(&device_label(l)),
            style(l)
        );
    }
    for p in inner {
        cluster(out, p, extras, &format!("{indent}  "), &[]);
    }
    if let Some(o) = extras.ovs.get(&ns.name) {
        ovs_cluster(out, ns, o, &format!("{indent}  "));
    }
    let _ = writeln!(out, "{indent}}}");
}

/// The graph node id of an OVS port (its bridge's, for the bridge itself).
pub fn ovs_port_id(netns: &str, bridge: &str, port: &str) -> String {
    quote(&format!("{netns}/ovs:{bridge}/{port}"))
}

/// A node's Open vSwitch: one cluster per bridge with its ports; a port that is also a
/// kernel device (an internal port's tap, a system port) is tied to it.
fn ovs_cluster(out: &mut String, ns: &Namespace, o: &crate::ovs::NodeOvs, indent: &str) {
    let _ = writeln!(
        out,
        "{indent}subgraph {} {{",
        quote(&format!("cluster_{}_ovs", ns.name))
    );
    let _ = writeln!(
        out,
        "{indent}  label=\"Open vSwitch (ovs-vswitchd)\"; style=\"rounded,filled\"; fillcolor=\"#e0f2fe\";"
    );
    for b in &o.view.bridges {
        let _ = writeln!(
            out,
            "{indent}  subgraph {} {{",
            quote(&format!("cluster_{}_ovs_{}", ns.name, b.name))
        );
        let owner = if b.external_ids.contains_key("twill-owner") {
            "\nTwill's"
        } else {
            ""
        };
        let flows = if b.name == crate::ovs::INTEGRATION_BRIDGE {
            format!(
                ", {} flows",
                o.flows.iter().filter(|f| f.is_twills()).count()
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{indent}    label={}; style=\"rounded,filled\"; fillcolor=\"#bae6fd\";",
            quote(&format!(
                "OVS bridge {} ({}{flows}){owner}",
                b.name, b.datapath_type
            ))
        );
        for p in &b.ports {
            let tunnel = o.view.tunnels.iter().find(|t| t.name == p.name);
            let label = match tunnel {
                Some(t) => format!(
                    "{}\n{} remote_ip={}\nlocal_ip={}",
                    p.name,
                    t.kind,
                    t.remote_ip,
                    if t.local_ip.is_empty() {
                        "-"
                    } else {
                        &t.local_ip
                    }
                ),
                None => format!(
                    "{}\n{}",
                    p.name,
                    match p.kinds.first().map(String::as_str) {
                        Some("") | None => "system port",
                        Some(k) => k,
                    }
                ),
            };
            let shape = if tunnel.is_some() {
                "shape=hexagon, style=filled, fillcolor=\"#c7d2fe\""
            } else {
                "shape=box, style=filled, fillcolor=\"#f0f9ff\", fontsize=8"
            };
            let _ = writeln!(
                out,
                "{indent}    {} [label={}, {shape}];",
                ovs_port_id(&ns.name, &b.name, &p.name),
                quote(&label)
            );
        }
        let _ = writeln!(out, "{indent}  }}");
    }
    let _ = writeln!(out, "{indent}}}");
    for b in &o.view.bridges {
        for p in &b.ports {
            if ns.links.iter().any(|l| l.name == p.name) {
                let _ = writeln!(
                    out,
                    "{indent}{} -> {} [style=dotted, color=\"#0369a1\", tooltip=\"OVS port\"];",
                    node_id(&ns.name, &p.name),
                    ovs_port_id(&ns.name, &b.name, &p.name)
                );
            }
        }
    }
}

/// The OVS tunnels between nodes: (node A's netns, tunnel port, node B's netns, tunnel port,
/// kind, A's flows towards B out+in, B's towards A), for every pair whose flows name each
/// other's node IP. Pure.
pub fn ovs_tunnels(extras: &Extras, node_ips: &HashMap<String, Ipv4Addr>) -> Vec<OvsTunnel> {
    let mut names: Vec<&String> = extras.ovs.keys().collect();
    names.sort();
    let mut v = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let (oa, ob) = (&extras.ovs[*a], &extras.ovs[*b]);
            let (Some(ipa), Some(ipb)) = (node_ips.get(*a), node_ips.get(*b)) else {
                continue;
            };
            let (pa, pb) = (oa.peers(), ob.peers());
            let (Some(fa), Some(fb)) = (pa.get(ipb), pb.get(ipa)) else {
                continue;
            };
            let (Some(ta), Some(tb)) = (oa.view.tunnels.first(), ob.view.tunnels.first()) else {
                continue;
            };
            v.push(OvsTunnel {
                a: ((*a).clone(), ta.name.clone(), *ipa, *fa),
                b: ((*b).clone(), tb.name.clone(), *ipb, *fb),
                kind: ta.kind.clone(),
            });
        }
    }
    v
}

/// One tunnel between two nodes' OVS: each end (netns, tunnel port, node IP, its (out, in)
/// flows for the other), and the kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvsTunnel {
    pub a: (String, String, Ipv4Addr, (usize, usize)),
    pub b: (String, String, Ipv4Addr, (usize, usize)),
    pub kind: String,
}

/// The pods of a node: the namespaces behind the veths plugged into its bridges.
fn pods_of<'a>(topo: &'a Topology, node: &Namespace) -> Vec<&'a Namespace> {
    let mut v = Vec::new();
    for l in &node.links {
        if let Some((pns, _)) = topo.peer(l) {
            if pns.role == Role::Pod && !v.iter().any(|p: &&Namespace| p.name == pns.name) {
                v.push(pns);
            }
        }
    }
    v
}

/// A device: (namespace, name).
pub type DevKey = (String, String);
/// A tunnel between two VXLAN devices, with its VNI and UDP port.
pub type Tunnel = (DevKey, DevKey, u32, u16);

/// The VXLAN tunnels: (netns, device) pairs whose FDB points at each other's local address.
pub fn tunnels(topo: &Topology) -> Vec<Tunnel> {
    let mut locals: HashMap<Ipv4Addr, (String, String)> = HashMap::new();
    for ns in &topo.namespaces {
        for l in &ns.links {
            if let Some(local) = l.vxlan.as_ref().and_then(|v| v.local) {
                locals.insert(local, (ns.name.clone(), l.name.clone()));
            }
        }
    }
    let mut out = Vec::new();
    for ns in &topo.namespaces {
        for l in &ns.links {
            let Some(v) = &l.vxlan else { continue };
            for (_, remote) in &l.fdb {
                if let Some(far) = locals.get(remote) {
                    let here = (ns.name.clone(), l.name.clone());
                    let (a, b) = if here <= *far {
                        (here, far.clone())
                    } else {
                        (far.clone(), here)
                    };
                    if !out.iter().any(|(x, y, _, _)| *x == a && *y == b) {
                        out.push((a, b, v.vni, v.port));
                    }
                }
            }
        }
    }
    out
}

/// The whole lab as a DOT digraph.
pub fn to_dot(topo: &Topology, extras: &Extras) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph {} {{", quote(&format!("lab {}", topo.lab)));
    let _ = writeln!(
        s,
        "  graph [label={}, labelloc=t, fontname=\"Helvetica\", fontsize=14, rankdir=TB, \
         compound=true, newrank=true, nodesep=0.3, ranksep=0.6];",
        quote(&format!("twill lab {}", topo.lab))
    );
    let _ = writeln!(s, "  node [fontname=\"Helvetica\", fontsize=9];");
    let _ = writeln!(s, "  edge [fontname=\"Helvetica\", fontsize=8, dir=none];");
    for ns in &topo.namespaces {
        match ns.role {
            Role::Pod => {} // drawn inside their node
            Role::Node => cluster(&mut s, ns, extras, "  ", &pods_of(topo, ns)),
            _ => cluster(&mut s, ns, extras, "  ", &[]),
        }
    }
    // Pods no node claims (a node namespace missing) still appear.
    let claimed: Vec<String> = topo
        .namespaces
        .iter()
        .filter(|n| n.role == Role::Node)
        .flat_map(|n| pods_of(topo, n).into_iter().map(|p| p.name.clone()))
        .collect();
    for ns in topo
        .namespaces
        .iter()
        .filter(|n| n.role == Role::Pod && !claimed.contains(&n.name))
    {
        cluster(&mut s, ns, extras, "  ", &[]);
    }
    for ((ans, a), (bns, b)) in topo.veth_pairs() {
        let _ = writeln!(
            s,
            "  {} -> {} [penwidth=1.5, tooltip=\"veth pair\"];",
            node_id(ans, &a.name),
            node_id(bns, &b.name)
        );
    }
    for ns in &topo.namespaces {
        for l in &ns.links {
            if let Some(m) = &l.master {
                let _ = writeln!(
                    s,
                    "  {} -> {} [style=dotted, tooltip=\"bridge port\"];",
                    node_id(&ns.name, &l.name),
                    node_id(&ns.name, m)
                );
            }
        }
    }
    for ((ans, a), (bns, b), vni, port) in tunnels(topo) {
        let local = |ns: &str, d: &str| {
            topo.link(ns, d)
                .and_then(|l| l.vxlan.as_ref()?.local)
                .map(|a| a.to_string())
                .unwrap_or_default()
        };
        let _ = writeln!(
            s,
            "  {} -> {} [style=dashed, color=\"#7c3aed\", fontcolor=\"#7c3aed\", penwidth=2, dir=both, constraint=false, label={}];",
            node_id(&ans, &a),
            node_id(&bns, &b),
            quote(&format!("VXLAN vni {vni}\n{} ⇄ {}\nudp/{port}", local(&ans, &a), local(&bns, &b)))
        );
    }
    let node_ips: HashMap<String, Ipv4Addr> = topo
        .namespaces
        .iter()
        .filter(|n| n.role == Role::Node)
        .filter_map(|n| {
            let l = n
                .links
                .iter()
                .find(|l| l.name == crate::plan::OVS_PHY_BRIDGE)
                .or_else(|| n.links.iter().find(|l| l.name == "eth0"))?;
            Some((n.name.clone(), l.addrs.first()?.addr()))
        })
        .collect();
    for t in ovs_tunnels(extras, &node_ips) {
        let id = |(ns, port, ..): &(String, String, Ipv4Addr, (usize, usize))| {
            ovs_port_id(ns, crate::ovs::INTEGRATION_BRIDGE, port)
        };
        let _ = writeln!(
            s,
            "  {} -> {} [style=dashed, color=\"#1d4ed8\", fontcolor=\"#1d4ed8\", penwidth=2, dir=both, constraint=false, label={}];",
            id(&t.a),
            id(&t.b),
            quote(&format!(
                "{} {} ⇄ {}\nflows {}+{} / {}+{}",
                t.kind.to_uppercase(),
                t.a.2,
                t.b.2,
                t.a.3 .0,
                t.a.3 .1,
                t.b.3 .0,
                t.b.3 .1
            ))
        );
    }
    for hp in &extras.host_ports {
        if topo.link(&hp.node_netns, "eth0").is_none() || topo.link(&hp.pod_netns, "eth0").is_none()
        {
            continue;
        }
        let _ = writeln!(
            s,
            "  {} -> {} [style=dashed, color=\"#15803d\", fontcolor=\"#15803d\", dir=forward, constraint=false, label={}];",
            node_id(&hp.node_netns, "eth0"),
            node_id(&hp.pod_netns, "eth0"),
            quote(&format!("hostPort {} {}→{}", hp.proto, hp.host_port, hp.container_port))
        );
    }
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::topo::samples::two_node_vxlan;
    use super::*;

    fn extras() -> Extras {
        Extras {
            host_ports: vec![HostPort {
                node_netns: "twltr-n1".into(),
                pod_netns: "twltr-n1-p1".into(),
                proto: "tcp".into(),
                host_port: 30080,
                container_port: 8080,
            }],
            segment_subnets: [("twltr-ul".to_string(), "192.0.2.0/24".to_string())].into(),
            ..Extras::default()
        }
    }

    #[test]
    fn quoting_escapes_what_dot_needs() {
        assert_eq!(quote("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
    }

    #[test]
    fn dot_is_balanced_and_holds_every_member_and_edge() {
        let t = two_node_vxlan();
        let dot = to_dot(&t, &extras());
        assert!(dot.starts_with("digraph \"lab twltr\" {"), "{dot}");
        assert!(dot.trim_end().ends_with('}'));
        // Braces balance outside quoted strings.
        let (mut depth, mut in_q, mut esc) = (0i32, false, false);
        for c in dot.chars() {
            match (c, in_q, esc) {
                (_, true, true) => esc = false,
                ('\\', true, false) => esc = true,
                ('"', _, false) => in_q = !in_q,
                ('{', false, _) => depth += 1,
                ('}', false, _) => {
                    depth -= 1;
                    assert!(depth >= 0);
                }
                _ => {}
            }
        }
        assert_eq!((depth, in_q), (0, false));
        for ns in &t.namespaces {
            assert!(
                dot.contains(&quote(&format!("cluster_{}", ns.name))),
                "{}",
                ns.name
            );
        }
        for pod in [
            "n1-p1  10.244.226.2",
            "n2-p1  10.244.4.2",
            "n2-p2  10.244.4.3",
        ] {
            assert!(dot.contains(&format!("pod {pod}")), "{pod}");
        }
        assert!(
            dot.contains("node n1  IP 192.0.2.11\\nblocks 10.244.226.0/24"),
            "{dot}"
        );
        assert!(dot.contains("segment ul 192.0.2.0/24"));
        // Every veth pair is an edge, once.
        for ((a, al), (b, bl)) in t.veth_pairs() {
            let e = format!(
                "{} -> {} [penwidth=1.5",
                node_id(a, &al.name),
                node_id(b, &bl.name)
            );
            assert_eq!(dot.matches(&e).count(), 1, "{e}");
        }
        assert_eq!(dot.matches("tooltip=\"veth pair\"").count(), 7);
        assert_eq!(dot.matches("tooltip=\"bridge port\"").count(), 6);
        // One tunnel, drawn once although both ends list the other.
        assert_eq!(dot.matches("VXLAN vni 1\\n").count(), 1, "{dot}");
        assert!(dot.contains("192.0.2.11 ⇄ 192.0.2.12\\nudp/8472"));
        assert!(dot.contains(&format!(
            "{} -> {} [style=dashed, color=\"#15803d\"",
            node_id("twltr-n1", "eth0"),
            node_id("twltr-n1-p1", "eth0")
        )));
        assert!(dot.contains("hostPort tcp 30080→8080"));
        // Pods sit inside their node's cluster.
        let n1 = dot.find("cluster_twltr-n1\"").unwrap();
        let p1 = dot.find("cluster_twltr-n1-p1\"").unwrap();
        let n2 = dot.find("cluster_twltr-n2\"").unwrap();
        assert!(n1 < p1 && p1 < n2);
    }

    #[test]
    fn l3_pods_hang_off_their_node_with_no_bridge() {
        // n1 of the sample, rewired l3: no bridge, its pod's host veth with the fixed MAC.
        let mut t = two_node_vxlan();
        let n1 = t
            .namespaces
            .iter_mut()
            .find(|n| n.name == "twltr-n1")
            .unwrap();
        n1.links.retain(|l| l.kind != "bridge");
        let veth = n1.links.iter_mut().find(|l| l.name == "twlaaaa").unwrap();
        veth.master = None;
        veth.mac = Some(Mac(L3_HOST_MAC));
        let mut x = extras();
        x.pod_wiring = crate::plan::PodWiring::L3;
        x.node_blocks
            .insert("twltr-n1".into(), vec!["10.244.226.0/24".into()]);
        let dot = to_dot(&t, &x);
        assert!(
            dot.contains("node n1  IP 192.0.2.11\\nblocks 10.244.226.0/24\\npods: l3, a /32 route each, no bridge"),
            "{dot}"
        );
        assert!(
            dot.contains("twlaaaa\\nl3 veth ee:ee:ee:ee:ee:ee\\nproxy ARP for 169.254.1.1"),
            "{dot}"
        );
        // The pod is still drawn inside its node, joined by its veth pair; n1 has no
        // bridge port left.
        let n1_at = dot.find("subgraph \"cluster_twltr-n1\"").unwrap();
        let pod_at = dot.find("subgraph \"cluster_twltr-n1-p1\"").unwrap();
        assert!(pod_at > n1_at, "{dot}");
        assert!(
            dot.contains("\"twltr-n1/twlaaaa\" -> \"twltr-n1-p1/eth0\"")
                || dot.contains("\"twltr-n1-p1/eth0\" -> \"twltr-n1/twlaaaa\""),
            "{dot}"
        );
        assert!(!dot.contains("\"twltr-n1/twl0\""), "{dot}");
    }

    #[test]
    fn a_tunnel_needs_both_ends() {
        let mut t = two_node_vxlan();
        t.namespaces.retain(|n| n.name != "twltr-n2");
        assert!(tunnels(&t).is_empty());
        let dot = to_dot(&t, &Extras::default());
        // n2's pods lost their node but are still drawn.
        assert!(dot.contains("cluster_twltr-n2-p1"));
    }
}
