//! `twill lab trace` and `twill lab graph` on a real two-node VXLAN lab: the hops a probe
//! crossed (veth, bridge, VXLAN device, the uplink with outer UDP 8472), masquerade, and the
//! topology as DOT and SVG; the l3 wiring; and the udp backend across the router (the TUN,
//! the datapath process with its counters, the outer UDP 8285). Needs root, tcpdump and (for
//! SVG) graphviz.

mod common;
use common::*;

use std::path::PathBuf;

use serde_json::Value;

fn trace(name: &str, args: &[&str]) -> Value {
    let mut a = vec!["lab", "trace", "--name", name, "-o", "json"];
    a.extend_from_slice(args);
    let o = twill(&a);
    assert!(o.status.success(), "trace {args:?}:\n{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", text(&o)))
}

fn hops(v: &Value) -> Vec<String> {
    v["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{}/{}",
                h["member"].as_str().unwrap(),
                h["device"].as_str().unwrap()
            )
        })
        .collect()
}

fn all_seen(v: &Value) {
    for h in v["hops"].as_array().unwrap() {
        assert_eq!(h["seen"], true, "hop not seen: {h}\n{v:#}");
    }
}

#[test]
fn trace_and_graph_a_two_node_vxlan_lab() {
    twill_testkit::require_root("trace_and_graph_a_two_node_vxlan_lab");
    ensure_binaries();
    let name = format!("twlt{:04x}", std::process::id() & 0xffff);
    let _guard = LabGuard(name.clone());
    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--backend",
        "vxlan",
    ]);
    assert!(up.status.success(), "up:\n{}", text(&up));

    // Pod to pod on one node: switched by the node's bridge.
    let v = trace(&name, &["n1-p1", "n1-p2"]);
    let h = hops(&v);
    assert_eq!(h.len(), 5, "{h:?}");
    assert_eq!(
        (h[0].as_str(), h[2].as_str(), h[4].as_str()),
        ("n1-p1/eth0", "n1/twl0", "n1-p2/eth0")
    );
    assert!(
        h[1].starts_with("n1/twl") && h[3].starts_with("n1/twl"),
        "{h:?}"
    );
    all_seen(&v);
    assert_eq!(v["answered"], true);
    assert_eq!(v["nat"].as_array().unwrap().len(), 0, "{v:#}");

    // Pod to outside: masquerade to the node IP.
    let v = trace(&name, &["n1-p1", "out"]);
    all_seen(&v);
    let nat = &v["nat"][0];
    assert_eq!(
        (
            nat["kind"].as_str(),
            nat["to"].as_str(),
            nat["how"].as_str()
        ),
        (Some("SNAT"), Some("192.0.2.11"), Some("masquerade")),
        "{v:#}"
    );
    assert_eq!(nat["member"], "n1");
    let last = v["hops"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (last["member"].as_str(), last["packet"]["src"].as_str()),
        (Some("out"), Some("192.0.2.11"))
    );

    // Pod to pod across nodes: the inner header on twl.1, the outer UDP 8472 on eth0.
    let v = trace(&name, &["n1-p1", "n2-p1"]);
    all_seen(&v);
    let hs = v["hops"].as_array().unwrap();
    let on = |m: &str, d: &str, dir: &str| {
        hs.iter()
            .find(|h| h["member"] == m && h["device"] == d && h["direction"] == dir)
            .unwrap_or_else(|| panic!("no hop {m}/{d}/{dir} in {v:#}"))
    };
    let vx = on("n1", "twl.1", "out");
    assert!(vx["outer"].is_null());
    assert_eq!(vx["packet"]["dst"], v["dst"]["ip"]);
    let up = on("n1", "eth0", "out");
    assert_eq!(up["outer"]["ip"]["src"], "192.0.2.11");
    assert_eq!(up["outer"]["ip"]["dst"], "192.0.2.12");
    assert_eq!(up["outer"]["ip"]["dport"], 8472);
    assert_eq!(up["outer"]["vni"], 1);
    assert_eq!(up["packet"]["src"], v["src"]["ip"]);
    on("n2", "twl.1", "in");
    assert_eq!(
        v["outcome"].as_str().unwrap().split(' ').nth(2),
        Some("n2-p1")
    );

    // A host port from outside: DNAT to n1's first pod, and the path goes on to it.
    let v = trace(&name, &["out", "n1", "--proto", "tcp"]);
    let dnat = v["nat"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "DNAT");
    assert!(
        dnat.is_some_and(|n| n["from"] == "192.0.2.11:30080" && n["how"] == "host port"),
        "{v:#}"
    );
    assert_eq!(hops(&v).last().map(String::as_str), Some("n1-p1/eth0"));

    // The table names the outer and inner headers.
    let o = twill(&["lab", "trace", "--name", &name, "n1-p1", "n2-p1"]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("outer 192.0.2.11:") && t.contains("→ 192.0.2.12:8472") && t.contains("inner "),
        "{t}"
    );

    // Graph: every pod in the DOT; SVG through graphviz.
    let o = twill(&["lab", "graph", "--name", &name]);
    assert!(o.status.success(), "{}", text(&o));
    let dot = String::from_utf8_lossy(&o.stdout);
    assert!(dot.starts_with("digraph"));
    for pod in ["n1-p1", "n1-p2", "n2-p1", "n2-p2"] {
        assert!(dot.contains(&format!("cluster_{name}-{pod}\"")), "{pod}");
    }
    assert!(dot.contains("VXLAN vni 1"));
    twill_testkit::require_program("trace_and_graph_a_two_node_vxlan_lab", "dot", "graphviz");
    {
        let dir = twill_testkit::TempDir::new("graph");
        let svg: PathBuf = dir.path.join("lab.svg");
        let o = twill(&[
            "lab",
            "graph",
            "--name",
            &name,
            "-o",
            "svg",
            "--out",
            svg.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let head = std::fs::read_to_string(&svg).unwrap();
        assert!(
            head.starts_with("<?xml") || head.starts_with("<svg"),
            "{}",
            &head[..80.min(head.len())]
        );
    }
}

/// The l3 path, traced on a real two-node lab with pods wired pure L3: the pod's default
/// via 169.254.1.1, proxy ARP answering for it with the host veth's MAC, the node's /32
/// route to the other pod's veth, the block's blackhole for an address no pod holds; the
/// graph draws the pods with no bridge.
#[test]
fn trace_and_graph_a_two_node_l3_lab() {
    twill_testkit::require_root("trace_and_graph_a_two_node_l3_lab");
    ensure_binaries();
    let name = format!("twl3{:04x}", std::process::id() & 0xffff);
    let _guard = LabGuard(name.clone());
    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--backend",
        "vxlan",
        "--pod-wiring",
        "l3",
    ]);
    assert!(up.status.success(), "up:\n{}", text(&up));

    // Pod to pod on one node: through the host, no bridge.
    let v = trace(&name, &["n1-p1", "n1-p2"]);
    let h = hops(&v);
    assert_eq!(h.len(), 4, "{h:?}");
    assert_eq!((h[0].as_str(), h[3].as_str()), ("n1-p1/eth0", "n1-p2/eth0"));
    assert!(
        h[1].starts_with("n1/twl") && h[2].starts_with("n1/twl"),
        "{h:?}"
    );
    all_seen(&v);
    let hs = v["hops"].as_array().unwrap();
    assert_eq!(
        hs[0]["note"], "route default via 169.254.1.1 dev eth0",
        "{v:#}"
    );
    assert_eq!(hs[0]["l2"]["dst"], "ee:ee:ee:ee:ee:ee", "{v:#}");
    let p2 = v["dst"]["ip"].as_str().unwrap();
    let dev = h[2].trim_start_matches("n1/");
    assert_eq!(
        hs[2]["note"].as_str().unwrap(),
        format!("route {p2} dev {dev} proto 84 scope link (l3: the pod's /32 to its host veth)"),
        "{v:#}"
    );
    // The pod asked for its gateway afresh, and proxy ARP answered with the fixed MAC.
    let arp = v["arp"].as_array().unwrap();
    let p1 = v["src"]["ip"].as_str().unwrap();
    assert!(
        arp.iter()
            .any(|a| a["member"] == "n1-p1"
                && a["arp"] == format!("ARP who-has 169.254.1.1 tell {p1}")),
        "{v:#}"
    );
    assert!(
        arp.iter().any(
            |a| a["arp"] == "ARP reply 169.254.1.1 is-at ee:ee:ee:ee:ee:ee" && a["proxy"] == true
        ),
        "{v:#}"
    );
    let o = twill(&["lab", "trace", "--name", &name, "n1-p1", "n1-p2"]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("[proxy ARP: no interface holds it; the host veth answers]"),
        "{t}"
    );

    // Across nodes: the far node's /32 route delivers it.
    let v = trace(&name, &["n1-p1", "n2-p1"]);
    all_seen(&v);
    let hs = v["hops"].as_array().unwrap();
    let last_out = &hs[hs.len() - 2];
    assert_eq!(last_out["member"], "n2");
    assert!(
        last_out["note"]
            .as_str()
            .unwrap()
            .ends_with("(l3: the pod's /32 to its host veth)"),
        "{v:#}"
    );

    // An address of n1's block that no pod holds: the blackhole drops it at once.
    let st = status_json(&name);
    let block = st["nodes"][0]["blocks"][0].as_str().unwrap().to_string();
    let net: ipnet::Ipv4Net = block.parse().unwrap();
    let unused = std::net::Ipv4Addr::from(u32::from(net.network()) + 77).to_string();
    let v = trace(&name, &["n1-p1", &unused]);
    assert_eq!(v["answered"], false);
    let outcome = v["outcome"].as_str().unwrap();
    assert!(
        outcome.contains(&format!("n1 drops it: `blackhole {block} proto 84`")),
        "{v:#}"
    );

    // Graph: no bridge on the nodes; the pods' host veths are l3 veths.
    let o = twill(&["lab", "graph", "--name", &name]);
    assert!(o.status.success(), "{}", text(&o));
    let dot = String::from_utf8_lossy(&o.stdout);
    for n in ["n1", "n2"] {
        assert!(!dot.contains(&format!("\"{name}-{n}/twl0\"")), "{dot}");
    }
    assert_eq!(dot.matches("proxy ARP for 169.254.1.1").count(), 4, "{dot}");
    assert!(dot.contains(&format!("blocks {block}\\npods: l3")), "{dot}");
    for pod in ["n1-p1", "n1-p2", "n2-p1", "n2-p2"] {
        assert!(dot.contains(&format!("cluster_{name}-{pod}\"")), "{pod}");
    }
}

/// The udp backend traced on a real lab, the nodes on two segments so the outer UDP crosses
/// the router: the ping goes into n1's twl.tun, through n1's datapath process (its pid, its
/// peer-counters moving), out of eth0 as UDP 8285 to n2's node IP with the bare pod packet
/// inside, across rt, into n2's datapath (admitted, counted) and out of n2's twl.tun to the
/// pod. About 7 s (lab up and down included).
#[test]
fn trace_a_two_node_udp_lab_across_the_router() {
    twill_testkit::require_root("trace_a_two_node_udp_lab_across_the_router");
    twill_testkit::require_program(
        "trace_a_two_node_udp_lab_across_the_router",
        "tcpdump",
        "tcpdump",
    );
    ensure_binaries();
    let name = format!("twlu{:04x}", std::process::id() & 0xffff);
    let _guard = LabGuard(name.clone());
    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--segments",
        "2",
        "--pods-per-node",
        "1",
        "--backend",
        "udp",
    ]);
    assert!(up.status.success(), "up:\n{}", text(&up));

    let v = trace(&name, &["n1-p1", "n2-p1"]);
    all_seen(&v);
    assert_eq!(v["answered"], true, "{v:#}");
    let h = hops(&v);
    let at = |x: &str| {
        h.iter()
            .position(|y| y == x)
            .unwrap_or_else(|| panic!("no hop {x} in {h:?}"))
    };
    // In this order: TUN, datapath, uplink, router, far uplink, far datapath, far TUN, pod.
    let order = [
        at("n1/twl.tun"),
        at("n1/twill-datapath"),
        at("n1/eth0"),
        at("rt/eth1"),
        at("n2/eth0"),
        at("n2/twill-datapath"),
        at("n2/twl.tun"),
        at("n2-p1/eth0"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{h:?}");
    let hs = v["hops"].as_array().unwrap();
    let hop = |i: usize| &hs[i];

    // The TUN carries the bare pod packet (no link header).
    let tun = hop(order[0]);
    assert_eq!(tun["packet"]["src"], v["src"]["ip"], "{tun:#}");
    assert!(tun["l2"].is_null() && tun["outer"].is_null(), "{tun:#}");

    // The userspace hops: the real datapath processes, their counters moved for the peer.
    let n1_ip = "192.0.2.11";
    let n2_ip = "198.51.100.12";
    for (i, way, peer, node) in [(order[1], "tx", n2_ip, "n1"), (order[5], "rx", n1_ip, "n2")] {
        let p = &hop(i)["process"];
        assert_eq!(hop(i)["direction"], "process");
        assert_eq!(
            (p["way"].as_str(), p["peer"].as_str()),
            (Some(way), Some(peer)),
            "{p:#}"
        );
        assert_eq!(p["port"], 8285);
        assert!(p["queues"].as_u64().unwrap() >= 1, "{p:#}");
        let pid = p["pid"].as_u64().unwrap();
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        assert!(
            cmd.contains("datapath") && cmd.contains("--ctl"),
            "pid {pid}: {cmd}"
        );
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &format!("{name}-{node}")])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&pids.stdout)
                .split_whitespace()
                .any(|x| x == pid.to_string()),
            "datapath {pid} is not in {node}'s namespace"
        );
        let c = &hop(i)["counted"];
        assert!(c["packets"].as_u64().unwrap() >= 1, "{c:#}");
        assert!(c["bytes"].as_u64().unwrap() >= 84, "{c:#}");
    }

    // The outer header on both uplinks and across the router: node IP to node IP, UDP 8285,
    // the pod packet inside.
    for i in [order[2], order[3], order[4]] {
        let o = &hop(i)["outer"];
        assert_eq!(o["encap"], "udp", "{:#}", hop(i));
        assert_eq!(o["ip"]["src"], n1_ip);
        assert_eq!(o["ip"]["dst"], n2_ip);
        assert_eq!(o["ip"]["dport"], 8285);
        assert!(o["vni"].is_null());
        assert_eq!(hop(i)["packet"]["src"], v["src"]["ip"]);
        assert_eq!(hop(i)["packet"]["dst"], v["dst"]["ip"]);
    }
    // The router decremented the outer TTL only; the inner one went down at each node.
    let outer_ttl = |i: usize| hop(i)["outer"]["ip"]["ttl"].as_u64().unwrap();
    let inner_ttl = |i: usize| hop(i)["packet"]["ttl"].as_u64().unwrap();
    assert_eq!(outer_ttl(order[2]), outer_ttl(order[4]) + 1, "{v:#}");
    assert_eq!(inner_ttl(order[2]), inner_ttl(order[4]), "{v:#}");

    // The table says it in words.
    let o = twill(&["lab", "trace", "--name", &name, "n1-p1", "n2-p1"]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("TUN → UDP socket: counted +")
            && t.contains("UDP socket → TUN: counted +")
            && t.contains(&format!("→ {n2_ip}:8285 UDP length"))
            && t.contains("udp backend (the bare inner packet)"),
        "{t}"
    );
}
