//! The multi-node lab across backends, stores and segments, through the real `twill`,
//! `twilld` and `twill-cni`: one test per combination (nextest runs them in parallel), each
//! proving the whole check matrix and reading the kernel back; then a node joins and
//! another leaves under a ping flood and a TCP stream between two other nodes' pods. Needs
//! root.

mod common;
use common::*;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_api::backend::BackendKind;
use twill_api::wiring::PodWiring;
use twill_store::StoreKind;

/// Twill's routes in a namespace, as the kernel lists them.
fn twill_routes(netns: &str) -> Vec<Value> {
    ip_json(netns, &["route", "show", "proto", "84"])
        .as_array()
        .unwrap()
        .clone()
}

/// The backends of the matrix: twill-api's kinds, vxlan twice (with and without
/// directRouting), and udp (its userspace datapath: like vxlan's, its UDP crosses the
/// router).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    HostGw,
    Vxlan,
    VxlanDirect,
    Static,
    Udp,
    /// udp with `--partial-checksums`: the datapaths send each other partial inner checksums.
    UdpPartial,
}

impl Backend {
    fn kind(self) -> BackendKind {
        match self {
            Backend::HostGw => BackendKind::HostGw,
            Backend::Vxlan | Backend::VxlanDirect => BackendKind::Vxlan,
            Backend::Static => BackendKind::Static,
            Backend::Udp | Backend::UdpPartial => BackendKind::Udp,
        }
    }
}

/// Up, check (every row as expected), the kernel read back, down.
fn matrix(tag: char, backend: Backend, store: StoreKind, segments: u8, wiring: PodWiring) {
    let test = format!("matrix {backend:?} {store} {segments} {wiring}");
    twill_testkit::require_root(&test);
    ensure_binaries();
    let name = lab_name(tag);
    let guard = LabGuard(name.clone());
    let nodes = if segments == 2 { "3" } else { "2" };
    let segs = segments.to_string();
    let mut args = vec![
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        nodes,
        "--pods-per-node",
        "2",
        "--segments",
        &segs,
        "--backend",
    ];
    args.push(backend.kind().name());
    if backend == Backend::VxlanDirect {
        args.push("--direct-routing");
    }
    if backend == Backend::UdpPartial {
        args.push("--partial-checksums");
    }
    if backend != Backend::Static {
        args.extend(["--store", store.name()]);
    }
    args.extend(["--pod-wiring", wiring.name()]);
    let started = Instant::now();
    let up = twill(&args);
    assert!(up.status.success(), "up failed:\n{}", text(&up));
    let up_time = started.elapsed();

    let started = Instant::now();
    let check = twill(&["lab", "check", "--name", &name, "-o", "json"]);
    let check_time = started.elapsed();
    let report: Value = serde_json::from_slice(&check.stdout)
        .unwrap_or_else(|e| panic!("check -o json: {e}\n{}", text(&check)));
    let rows = report["checks"].as_array().unwrap();
    let bad: Vec<&Value> = rows.iter().filter(|r| r["passed"] != true).collect();
    assert!(
        check.status.success() && bad.is_empty(),
        "unexpected rows: {bad:#?}\n{}",
        text(&check)
    );
    for r in rows {
        for field in ["from", "to", "kind", "expected", "result", "detail"] {
            assert!(r[field].is_string(), "{field} missing in {r}");
        }
        assert_eq!(r["expected"], r["result"], "{r}");
    }
    let kinds = |k: &str| rows.iter().filter(|r| r["kind"] == k).count();
    // Ordered node pairs × (pod→pod icmp, pod→pod tcp, node→pod icmp).
    if segments == 2 {
        // n1,n3 on segment 1, n2 on segment 2: 2 ordered pairs on a segment, 4 across.
        assert_eq!(
            (kinds("across nodes"), kinds("across segments")),
            (6, 12),
            "{report:#}"
        );
    } else {
        assert_eq!(
            (kinds("across nodes"), kinds("across segments")),
            (6, 0),
            "{report:#}"
        );
    }
    // Only host-gw across segments fails (besides the outside→pod rows), and says why.
    for r in rows
        .iter()
        .filter(|r| r["kind"] == "across nodes" || r["kind"] == "across segments")
    {
        let should_fail = backend == Backend::HostGw && r["kind"] == "across segments";
        assert_eq!(r["expected"] == "fail", should_fail, "{r}");
        if should_fail {
            let d = r["detail"].as_str().unwrap();
            assert!(
                d.contains("host-gw needs a shared segment") && d.contains("off-segment"),
                "{r}"
            );
        }
        if r["name"] == "pod→pod tcp, other node, source kept" && !should_fail {
            // The answer names the sending pod's own address: no NAT between pods.
            let d = r["detail"].as_str().unwrap();
            assert!(d.contains("saw source 10.244."), "{r}");
        }
    }
    // Each pod's gateway: the bridge answers pings; in l3 proxy ARP answers for 169.254.1.1
    // with the host veth's fixed MAC.
    let (gw_row, other_row) = if wiring == PodWiring::L3 {
        ("pod→gateway proxy arp", "pod→gateway icmp")
    } else {
        ("pod→gateway icmp", "pod→gateway proxy arp")
    };
    let pods = if segments == 2 { 6 } else { 4 };
    assert_eq!(
        rows.iter().filter(|r| r["name"] == gw_row).count(),
        pods,
        "{report:#}"
    );
    assert!(!rows.iter().any(|r| r["name"] == other_row), "{report:#}");
    // pod→outside is masqueraded to the node IP on either segment.
    for r in rows
        .iter()
        .filter(|r| r["name"] == "pod→outside via masquerade")
    {
        let d = r["detail"].as_str().unwrap();
        assert!(
            d.contains("saw source 192.0.2.") || d.contains("saw source 198.51.100."),
            "{r}"
        );
    }

    // The kernel, read back.
    let st = status_json(&name);
    let blocks = blocks_by_node(&st);
    let ns = |n: &str| format!("{name}-{n}");
    let rt_routes = ip_json(&ns("rt"), &["route", "show"]);
    assert!(
        !rt_routes.to_string().contains("10.244."),
        "the router knows the pod network: {rt_routes}"
    );
    let fwd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns("rt"),
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
    if segments == 2 {
        let def = ip_json(&ns("n2"), &["route", "show", "default"]);
        assert_eq!(def[0]["gateway"], "198.51.100.1", "{def}");
        let addr = ip_json(&ns("n2"), &["addr", "show", "dev", "eth0"]);
        assert!(addr.to_string().contains("198.51.100.12"), "{addr}");
    }
    let n1 = twill_routes(&ns("n1"));
    let route_to = |node: &str| -> Vec<&Value> {
        n1.iter()
            .filter(|r| blocks[node].iter().any(|b| r["dst"] == *b))
            .collect()
    };
    let n2_routes = route_to("n2");
    let tunnel = || {
        let link = ip_json(&ns("n1"), &["link", "show", "dev", "twl.1"]);
        let info = &link[0]["linkinfo"];
        assert_eq!(info["info_kind"], "vxlan", "{link}");
        assert_eq!(info["info_data"]["port"], 8472, "{link}");
        assert_eq!(link[0]["mtu"], 1450, "{link}");
    };
    match backend {
        Backend::HostGw if segments == 2 => {
            assert!(
                n2_routes.is_empty(),
                "host-gw routed across segments: {n1:?}"
            );
            let r3 = route_to("n3");
            assert_eq!(r3.len(), 1, "{n1:?}");
            assert_eq!(r3[0]["gateway"], "192.0.2.13");
        }
        Backend::HostGw => {
            assert_eq!(n2_routes.len(), 1, "{n1:?}");
            assert_eq!(n2_routes[0]["gateway"], "192.0.2.12");
            assert_eq!(n2_routes[0]["dev"], "eth0");
        }
        Backend::Vxlan | Backend::Static => {
            tunnel();
            assert_eq!(n2_routes.len(), 1, "{n1:?}");
            assert_eq!(n2_routes[0]["dev"], "twl.1");
            let fdb = Command::new("bridge")
                .args(["-n", &ns("n1"), "-j", "fdb", "show", "dev", "twl.1"])
                .output()
                .unwrap();
            let want = if segments == 2 {
                "198.51.100.12"
            } else {
                "192.0.2.12"
            };
            assert!(
                String::from_utf8_lossy(&fdb.stdout).contains(want),
                "{}",
                text(&fdb)
            );
        }
        Backend::Udp | Backend::UdpPartial => {
            // The TUN the datapath made and twilld set up: MTU uplink - 28, persistent.
            let link = ip_json(&ns("n1"), &["link", "show", "dev", "twl.tun"]);
            assert_eq!(link[0]["linkinfo"]["info_kind"], "tun", "{link}");
            assert_eq!(link[0]["mtu"], 1472, "{link}");
            assert_eq!(n2_routes.len(), 1, "{n1:?}");
            assert_eq!(n2_routes[0]["dev"], "twl.tun", "{n1:?}");
            assert_eq!(n2_routes[0]["scope"], "link", "{n1:?}");
            assert!(n2_routes[0].get("gateway").is_none(), "{n1:?}");
        }
        Backend::VxlanDirect => {
            tunnel();
            assert_eq!(n2_routes[0]["dev"], "twl.1", "{n1:?}");
            let r3 = route_to("n3");
            assert_eq!(
                (r3[0]["dev"].as_str(), r3[0]["gateway"].as_str()),
                (Some("eth0"), Some("192.0.2.13")),
                "{n1:?}"
            );
        }
    }
    // How pods meet the node, read back from n1 and its first pod.
    let links = ip_json(&ns("n1"), &["link", "show"]);
    let bridges: Vec<&Value> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "bridge")
        .collect();
    let pod_ip = st["nodes"][0]["pods"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let pod_addr = ip_json(&ns("n1-p1"), &["-4", "addr", "show", "dev", "eth0"]);
    let pod_routes = ip_json(&ns("n1-p1"), &["route", "show"]);
    let blackholes: Vec<&str> = n1
        .iter()
        .filter(|r| r["type"] == "blackhole")
        .filter_map(|r| r["dst"].as_str())
        .collect();
    if wiring == PodWiring::L3 {
        assert!(bridges.is_empty(), "l3 node has a bridge: {bridges:?}");
        // twilld: a blackhole per block the node holds, so an address no pod has is
        // unreachable at once (and a BGP speaker can announce the block whole).
        let mut want: Vec<&str> = blocks["n1"].iter().map(String::as_str).collect();
        want.sort();
        let mut have = blackholes.clone();
        have.sort();
        assert_eq!(have, want, "n1's blackholes: {n1:?}");
        // The pod: its address as a /32, 169.254.1.1 on the link, the default via it.
        assert_eq!(pod_addr[0]["addr_info"][0]["prefixlen"], 32, "{pod_addr}");
        assert!(
            pod_routes
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1"),
            "{pod_routes}"
        );
        // The node: a /32 per pod, scope link, to its veth (whose MAC is the fixed one).
        for pod in st["nodes"][0]["pods"].as_array().unwrap() {
            let ip = pod["address"].as_str().unwrap();
            let r: Vec<&Value> = n1.iter().filter(|r| r["dst"] == ip).collect();
            assert_eq!(r.len(), 1, "no /32 route for {ip}: {n1:?}");
            assert_eq!(r[0]["scope"], "link", "{r:?}");
            let dev = r[0]["dev"].as_str().unwrap();
            let veth = ip_json(&ns("n1"), &["link", "show", "dev", dev]);
            assert_eq!(veth[0]["address"], "ee:ee:ee:ee:ee:ee", "{veth}");
            assert!(veth[0].get("master").is_none(), "{veth}");
        }
    } else {
        assert!(blackholes.is_empty(), "a blackhole in bridge mode: {n1:?}");
        assert_eq!(bridges.len(), 1, "{links}");
        assert_eq!(bridges[0]["ifname"], "twl0");
        assert_ne!(pod_addr[0]["addr_info"][0]["prefixlen"], 32, "{pod_addr}");
        assert!(
            !n1.iter().any(|r| r["dst"] == pod_ip.as_str()),
            "a /32 route in bridge mode: {n1:?}"
        );
    }
    if backend == Backend::Static {
        let file: Value =
            serde_json::from_slice(&std::fs::read(format!("/run/{name}/static.json")).unwrap())
                .unwrap();
        assert_eq!(file["config"]["backend"], "static");
        assert_eq!(file["nodes"][1]["blocks"][0], "10.244.2.0/24");
        assert_eq!(blocks["n2"], ["10.244.2.0/24"]);
        assert!(st["store"].as_str().unwrap().starts_with("static"), "{st}");
    }
    eprintln!(
        "{test}: up {:.1}s, check {:.1}s ({} rows)",
        up_time.as_secs_f64(),
        check_time.as_secs_f64(),
        rows.len()
    );
    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    drop(guard);
}

/// One `#[test]` per row: name, lab tag, backend, store, segments, wiring.
macro_rules! matrix_tests {
    ($($name:ident: $tag:literal $backend:ident $store:ident $segments:literal $wiring:ident;)*) => {
        $(
            #[test]
            fn $name() {
                matrix($tag, Backend::$backend, StoreKind::$store, $segments, PodWiring::$wiring);
            }
        )*
    };
}

matrix_tests! {
    matrix_host_gw_embedded_1_segment: 'b' HostGw Embedded 1 Bridge;
    matrix_host_gw_embedded_2_segments: 'c' HostGw Embedded 2 Bridge;
    matrix_host_gw_etcd_1_segment: 'f' HostGw Etcd 1 Bridge;
    matrix_host_gw_etcd_2_segments: 'g' HostGw Etcd 2 Bridge;
    matrix_vxlan_embedded_1_segment: 'h' Vxlan Embedded 1 Bridge;
    matrix_vxlan_embedded_2_segments: 'i' Vxlan Embedded 2 Bridge;
    matrix_vxlan_etcd_1_segment: 'j' Vxlan Etcd 1 Bridge;
    matrix_vxlan_etcd_2_segments: 'k' Vxlan Etcd 2 Bridge;
    matrix_vxlan_direct_routing_embedded_2_segments: 'l' VxlanDirect Embedded 2 Bridge;
    matrix_static_1_segment: 'm' Static Static 1 Bridge;
    matrix_static_2_segments: 'n' Static Static 2 Bridge;
    // Pure-L3 pods (Calico's wiring) under every backend, on both stores. Bounded: 7 labs
    // of 2-3 nodes, in parallel with the rest (each ~15-25 s on an idle 2-core machine).
    matrix_l3_host_gw_embedded_1_segment: 'u' HostGw Embedded 1 L3;
    matrix_l3_host_gw_etcd_1_segment: 'v' HostGw Etcd 1 L3;
    matrix_l3_vxlan_embedded_1_segment: 'w' Vxlan Embedded 1 L3;
    matrix_l3_vxlan_etcd_2_segments: 'x' Vxlan Etcd 2 L3;
    matrix_l3_vxlan_direct_routing_embedded_2_segments: 'y' VxlanDirect Embedded 2 L3;
    matrix_l3_vxlan_direct_routing_etcd_2_segments: '1' VxlanDirect Etcd 2 L3;
    matrix_l3_static_2_segments: '2' Static Static 2 L3;
    // udp: its datapath processes (one per node) carry every row across nodes and
    // segments. Bounded like the others (~15-25 s each).
    matrix_udp_embedded_1_segment: 'z' Udp Embedded 1 Bridge;
    matrix_udp_etcd_2_segments: '7' Udp Etcd 2 Bridge;
    matrix_l3_udp_embedded_1_segment: '8' Udp Embedded 1 L3;
    matrix_l3_udp_embedded_2_segments: '9' Udp Embedded 2 L3;
    // Every row with partial inner checksums, across the router too.
    matrix_udp_partial_checksums_embedded_2_segments: 'p' UdpPartial Embedded 2 Bridge;
}

/// `--backend static` with `--store etcd` is refused with the fix; so is directRouting
/// without vxlan.
#[test]
fn contradictory_flags_are_refused() {
    let name = lab_name('q');
    let o = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--backend",
        "static",
        "--store",
        "etcd",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("needs --store static"),
        "{}",
        text(&o)
    );
    let o = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--backend",
        "host-gw",
        "--direct-routing",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("--direct-routing is an option of --backend vxlan"),
        "{}",
        text(&o)
    );
    assert!(!PathBuf::from("/run").join(&name).exists());
}

/// n4 joins and n3 leaves while n1-p1 pings n2-p1 every 10 ms and streams TCP to it (across
/// segments, through the tunnel): not one ping lost, the stream completes; n3's routes go
/// from n1 and n2, the routes between n1 and n2 stay exactly as they were, and every node
/// routes to n4.
#[test]
fn a_node_joins_and_another_leaves_under_traffic() {
    churn('s', "vxlan");
}

/// The same with udp: the joining node's datapath starts, the leaving node's stops, and
/// the others' datapaths get new tables under the stream (and lose nothing).
#[test]
fn a_node_joins_and_another_leaves_under_traffic_with_udp() {
    churn('t', "udp");
}

fn churn(tag: char, backend: &str) {
    twill_testkit::require_root(&format!(
        "a_node_joins_and_another_leaves_under_traffic {backend}"
    ));
    ensure_binaries();
    let name = lab_name(tag);
    let guard = LabGuard(name.clone());
    let ns = |n: &str| format!("{name}-{n}");
    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "3",
        "--pods-per-node",
        "1",
        "--segments",
        "2",
        "--backend",
        backend,
    ]);
    assert!(up.status.success(), "up failed:\n{}", text(&up));
    let st = status_json(&name);
    let before_blocks = blocks_by_node(&st);
    let target = st["nodes"][1]["pods"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let n1_before = twill_routes(&ns("n1"));
    let n2_before = twill_routes(&ns("n2"));
    let peer_routes = |routes: &[Value], peer: &str| -> Vec<Value> {
        routes
            .iter()
            .filter(|r| before_blocks[peer].iter().any(|b| r["dst"] == *b))
            .cloned()
            .collect()
    };
    assert!(!peer_routes(&n1_before, "n3").is_empty());

    // The check also warms the path: the first packets after `up` wait for ARP on every hop
    // (up to ~1 s here), which is not what this test measures.
    let check = twill(&["lab", "check", "--name", &name]);
    assert!(check.status.success(), "check before:\n{}", text(&check));
    // iperf3 server in n2-p1 (one client, then it exits), a 6 s stream paced at 50 Mbit/s (at
    // line rate it fills the queues and drops pings by itself), and 500 pings at 10 ms.
    let mut server = spawn_in(&ns("n2-p1"), &["iperf3", "-s", "-1", "-B", &target]);
    std::thread::sleep(Duration::from_millis(300));
    let client = spawn_in(
        &ns("n1-p1"),
        &["iperf3", "-c", &target, "-t", "6", "-b", "50M", "-J"],
    );
    let ping = spawn_in(
        &ns("n1-p1"),
        &[
            "ping", "-n", "-q", "-i", "0.01", "-c", "500", "-W", "1", &target,
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let add = twill(&["lab", "add-node", "--name", &name]);
    assert!(add.status.success(), "add-node failed:\n{}", text(&add));
    let joined = started.elapsed();
    let started = Instant::now();
    let remove = twill(&["lab", "remove-node", "--name", &name, "n3"]);
    assert!(
        remove.status.success(),
        "remove-node failed:\n{}",
        text(&remove)
    );
    let left = started.elapsed();

    let ping = ping.wait_with_output().unwrap();
    let ping_out = String::from_utf8_lossy(&ping.stdout).to_string();
    assert!(
        ping.status.success() && ping_out.contains("500 received"),
        "pings lost while nodes joined and left:\n{}",
        text(&ping)
    );
    let client = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        client.status.success(),
        "TCP stream broke:\n{}",
        text(&client)
    );
    let report: Value = serde_json::from_slice(&client.stdout).unwrap();
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(sent > 0 && received > 0, "{report:#}");

    // Delta only: n1 and n2 keep their routes to each other, as they were; n3's are gone,
    // n4's are there.
    let st = status_json(&name);
    let after_blocks = blocks_by_node(&st);
    assert!(!after_blocks.contains_key("n3"));
    let n1_after = twill_routes(&ns("n1"));
    let n2_after = twill_routes(&ns("n2"));
    assert_eq!(peer_routes(&n1_after, "n2"), peer_routes(&n1_before, "n2"));
    assert_eq!(peer_routes(&n2_after, "n1"), peer_routes(&n2_before, "n1"));
    for (node, routes) in [("n1", &n1_after), ("n2", &n2_after)] {
        assert!(
            peer_routes(routes, "n3").is_empty(),
            "{node} still routes to n3: {routes:?}"
        );
        for b in &after_blocks["n4"] {
            assert!(
                routes.iter().any(|r| r["dst"] == *b),
                "{node} has no route to n4's {b}: {routes:?}"
            );
        }
    }
    assert!(!PathBuf::from("/run/netns").join(ns("n3")).exists());
    assert!(!PathBuf::from("/run/netns").join(ns("n3-p1")).exists());
    let check = twill(&["lab", "check", "--name", &name]);
    assert!(
        check.status.success(),
        "check after join/leave:\n{}",
        text(&check)
    );
    eprintln!(
        "{backend}: join {:.1}s, leave {:.1}s; {} bytes streamed; {}",
        joined.as_secs_f64(),
        left.as_secs_f64(),
        received,
        ping_out
            .lines()
            .find(|l| l.contains("received"))
            .unwrap_or("")
    );
    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    drop(guard);
}
