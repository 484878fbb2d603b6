//! Root-gated: peers verify each node's IP, and a SIGKILLed agent leaves forwarding alone.
//! Nodes are namespaces on an underlay bridge (in its own namespace), each running the real
//! twilld with `ip netns exec` against one embedded store in a temp dir; the real `twill`
//! binary reads the result. (a) every peer Reachable with an RTT; (b) the first-found
//! trap: flagged with exit 1, then fixed with a Node resource; (c) twilld SIGKILLed and
//! restarted under an iperf3 stream: the stream survives, the kernel state is identical.

mod common;

use common::{twill_bin, AgentProc};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use twill_api::resources::{BackendKind, NetworkConfig, NodeStatus};
use twill_netlink::{run_in, Netns};
use twill_store::embedded::EmbeddedStore;
use twill_store::{Store, PREFIX};
use twill_testkit::{TempDir, TestNetns};

const LISTEN_PORT: u16 = 9099;

/// Field order is drop order: agents stop before their namespaces go.
struct Cluster {
    agents: Vec<AgentProc>,
    pods: Vec<TestNetns>,
    nodes: Vec<TestNetns>,
    _underlay: TestNetns,
    store: EmbeddedStore,
    dir: TempDir,
}

/// Joins `ns` to `bridge` of the underlay with a veth whose inside end is `ifname`.
fn plug(underlay: &TestNetns, bridge: &str, port: &str, ns: &TestNetns, ifname: &str, cidr: &str) {
    underlay.exec(&[
        "ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", &ns.name,
    ]);
    underlay.exec(&["ip", "link", "set", port, "master", bridge, "up"]);
    ns.exec(&["ip", "link", "set", ifname, "up"]);
    ns.exec(&["ip", "addr", "add", cidr, "dev", ifname]);
}

/// `n` nodes on 192.0.2.0/24 (n<i> at 192.0.2.1<i>) with agents on `backend`. With `trap`,
/// n2 also has `eth1` 10.0.5.2/24, created before eth0 so first-found picks it, on a
/// segment of its own that no other node reaches.
fn cluster(tag: &str, n: usize, backend: BackendKind, trap: bool) -> Cluster {
    let underlay = TestNetns::new(&format!("{tag}ul"));
    for br in ["twlsa", "twlsx"] {
        underlay.exec(&["ip", "link", "add", br, "type", "bridge"]);
        underlay.exec(&["ip", "link", "set", br, "up"]);
    }
    let mut nodes = Vec::new();
    for i in 1..=n {
        let ns = TestNetns::new(&format!("{tag}n{i}"));
        if trap && i == 2 {
            plug(&underlay, "twlsx", "x2", &ns, "eth1", "10.0.5.2/24");
        }
        plug(
            &underlay,
            "twlsa",
            &format!("p{i}"),
            &ns,
            "eth0",
            &format!("192.0.2.1{i}/24"),
        );
        nodes.push(ns);
    }
    let dir = TempDir::new(tag);
    let store = EmbeddedStore::open(&dir.path.join("store")).unwrap();
    let config = NetworkConfig {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        block_size: 24,
        subnet_min: None,
        subnet_max: None,
        reservations: vec![],
        backend: backend.spec(),
        mtu: 1500,
        masquerade: false,
        pod_wiring: Default::default(),
        lease_ttl_seconds: 600,
    };
    store
        .put(
            &format!("{PREFIX}config"),
            &serde_json::to_vec(&config).unwrap(),
            None,
        )
        .unwrap();
    let mut c = Cluster {
        agents: Vec::new(),
        pods: Vec::new(),
        nodes,
        _underlay: underlay,
        store,
        dir,
    };
    for i in 0..n {
        let a = start_agent(&c, i);
        c.agents.push(a);
    }
    c
}

fn start_agent(c: &Cluster, i: usize) -> AgentProc {
    let name = format!("n{}", i + 1);
    let d = c.dir.path.join(&name);
    let path = |p: &str| d.join(p).display().to_string();
    let args: Vec<String> = [
        "--node-name",
        &name,
        "--store",
        "embedded",
        "--store-dir",
        &c.dir.path.join("store").display().to_string(),
        "--handoff-file",
        &path("node.json"),
        "--state-dir",
        &path("state"),
        "--cni-data-dir",
        &path("ipam"),
        "--listen",
        &format!("127.0.0.1:{LISTEN_PORT}"),
        "--peer-probe-interval-seconds",
        "0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    std::fs::create_dir_all(&d).unwrap();
    AgentProc::spawn(
        &["ip", "netns", "exec", &c.nodes[i].name],
        &args,
        c.dir.path.join(format!("{name}.log")),
    )
}

impl Cluster {
    /// GET on the agent of node `i` (it listens on the node's own loopback).
    fn get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let ns = Netns::open(self.nodes[i].path()).unwrap();
        run_in(&ns, || common::get(LISTEN_PORT, path)).unwrap()
    }

    fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let (_, text) = self.get(i, "/metrics")?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
    }

    fn wait_ready(&self, i: usize) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(self.get(i, "/readyz"), Some((200, _))) {
                return;
            }
            assert!(
                Instant::now() < end,
                "n{} never got ready: {:?}\n{}",
                i + 1,
                self.get(i, "/readyz"),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(&self, node: &str) -> Option<NodeStatus> {
        let kv = self.store.get(&format!("{PREFIX}nodes/{node}")).unwrap()?;
        serde_json::from_slice(&kv.value).ok()
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("--- {}\n{}", a.log.display(), a.log()))
            .collect()
    }

    fn twill(&self, args: &[&str]) -> Output {
        Command::new(twill_bin())
            .args(["--store", "embedded", "--store-dir"])
            .arg(self.dir.path.join("store"))
            .args(args)
            .output()
            .expect("run twill")
    }

    /// `twill node status -o json`: (exit code, report).
    fn node_status(&self) -> (i32, Value, String) {
        let o = self.twill(&["node", "status", "-o", "json"]);
        let json = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        (o.status.code().unwrap_or(-1), json, text(&o))
    }

    /// Waits until `twill node status` says `want` (up to 30 s); returns what it said.
    fn wait_status(&self, what: &str, want: impl Fn(i32, &Value) -> bool) -> (i32, Value) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, json, out) = self.node_status();
            if want(code, &json) {
                return (code, json);
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; last:\n{out}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
/// Every peer of every node in the report is in `state`.
fn all_peers(json: &Value, state: &str) -> bool {
    json["nodes"].as_array().is_some_and(|nodes| {
        nodes.iter().all(|n| {
            n["peers"]
                .as_array()
                .is_some_and(|ps| !ps.is_empty() && ps.iter().all(|p| p["state"] == state))
        })
    })
}

#[test]
fn every_peer_is_reachable_with_a_round_trip_time() {
    twill_testkit::require_root("every_peer_is_reachable_with_a_round_trip_time");
    let started = Instant::now();
    let c = cluster("pra", 3, BackendKind::HostGw, false);
    let (code, json) = c.wait_status("every peer Reachable", |code, j| {
        j["nodes"].as_array().is_some_and(|n| n.len() == 3)
            && all_peers(j, "Reachable")
            && code == 0
    });
    assert_eq!(code, 0);
    assert!(json["warnings"].as_array().unwrap().is_empty(), "{json}");
    for node in json["nodes"].as_array().unwrap() {
        assert_eq!(node["peers"].as_array().unwrap().len(), 2, "{node}");
        for p in node["peers"].as_array().unwrap() {
            assert!(p["rttMicros"].as_u64().is_some(), "no RTT: {p}");
            assert!(
                p["checked"].as_u64().is_some_and(|c| c > 0),
                "no freshness: {p}"
            );
            assert_eq!(p["backend"], "host-gw direct", "{p}");
        }
    }
    let table = c.twill(&["node", "status"]);
    let out = String::from_utf8_lossy(&table.stdout).into_owned();
    println!("{out}");
    assert!(table.status.success(), "{}", text(&table));
    assert!(
        out.contains("Node n1: 192.0.2.11 (first-found on eth0)")
            && out.contains("CHECKED")
            && out.contains("s ago"),
        "{out}"
    );
    let one = c.twill(&["node", "status", "--node", "n2", "-o", "wide"]);
    let one_out = String::from_utf8_lossy(&one.stdout).into_owned();
    assert!(
        one.status.success() && one_out.contains("Node n2") && !one_out.contains("Node n1"),
        "{}",
        text(&one)
    );
    let probes = c.metric(0, "twill_peer_probes_total").unwrap_or(0.0);
    assert!(probes >= 2.0, "n1 sent {probes} probes to its 2 peers");
    // The agent's own view, in Prometheus form.
    let reachable = c
        .get(0, "/metrics")
        .unwrap()
        .1
        .lines()
        .filter(|l| l.starts_with("twill_peer_reachable{"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert_eq!(
        reachable,
        [
            "twill_peer_reachable{peer=\"n2\",address=\"192.0.2.12\"} 1",
            "twill_peer_reachable{peer=\"n3\",address=\"192.0.2.13\"} 1"
        ]
    );
    println!("(a) took {:?}", started.elapsed());
}

#[test]
fn the_first_found_trap_is_flagged_then_fixed_by_a_node_resource() {
    twill_testkit::require_root("the_first_found_trap_is_flagged_then_fixed_by_a_node_resource");
    let started = Instant::now();
    let c = cluster("prb", 3, BackendKind::HostGw, true);
    let warning = "WARNING: n2 advertises 10.0.5.2 (first-found on eth1) but n1 and n3 cannot reach it: its autodetection probably picked the wrong interface; set ipAutodetection (e.g. interface=eth0 or can-reach=192.0.2.11) or apply a Node resource with spec.ipv4Address";
    let (code, _) = c.wait_status("n2 flagged", |_, j| {
        j["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w == warning))
    });
    assert_eq!(code, 1, "an unreachable node makes the command fail");
    let st = c.status("n2").unwrap();
    assert_eq!(
        (st.address.to_string(), st.autodetection.as_str()),
        ("10.0.5.2".into(), "first-found")
    );
    let table = c.twill(&["node", "status"]);
    let out = String::from_utf8_lossy(&table.stdout).into_owned();
    println!("{out}");
    assert_eq!(table.status.code(), Some(1));
    assert!(out.contains(warning), "{out}");
    assert!(out.contains("Unreachable since"), "{out}");
    // host-gw cannot route to it either: n1 says so in /readyz.
    let (_, ready) = c.get(0, "/readyz").unwrap();
    assert!(
        ready.contains("n2 (10.0.5.2) is not on this node's segment"),
        "{ready}"
    );

    // The fix: pin n2's address with a Node resource.
    let file = c.dir.path.join("n2.yaml");
    std::fs::write(
        &file,
        "kind: Node\nmetadata:\n  name: n2\nspec:\n  ipv4Address: 192.0.2.12/24\n",
    )
    .unwrap();
    let applied = c.twill(&["apply", "-f", &file.display().to_string()]);
    assert!(applied.status.success(), "{}", text(&applied));
    let (code, json) = c.wait_status("n2 reachable at 192.0.2.12", |code, j| {
        code == 0
            && all_peers(j, "Reachable")
            && j["nodes"][1]["address"] == "192.0.2.12"
            && j["warnings"].as_array().is_some_and(|w| w.is_empty())
    });
    assert_eq!(
        (code, &json["nodes"][1]["autodetection"]),
        (0, &"override".into())
    );
    let fixed = c.twill(&["node", "status"]);
    println!("{}", String::from_utf8_lossy(&fixed.stdout));
    assert!(fixed.status.success(), "{}", text(&fixed));

    // And n1 now routes n2's block through the right address.
    let block = c.status("n2").unwrap().blocks[0].to_string();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let routes: Value = serde_json::from_slice(
            &c.nodes[0]
                .exec(&["ip", "-j", "-4", "route", "show", "proto", "84"])
                .stdout,
        )
        .unwrap();
        let found = routes.as_array().unwrap().iter().any(|r| {
            r["dst"] == block.as_str() && r["gateway"] == "192.0.2.12" && r["dev"] == "eth0"
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < end,
            "no route to {block} via 192.0.2.12 in n1: {routes}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("(b) took {:?}", started.elapsed());
}

/// The kernel state twilld programs in a node, as `ip`/`bridge` print it.
fn snapshot(ns: &TestNetns) -> Vec<Value> {
    [
        &["ip", "-j", "route", "show", "proto", "84"][..],
        &["ip", "-j", "neigh", "show", "dev", "twl.1"],
        &["bridge", "-j", "fdb", "show", "dev", "twl.1"],
        &["ip", "-d", "-j", "link", "show", "twl.1"],
    ]
    .iter()
    .map(|args| serde_json::from_slice(&ns.exec(args).stdout).unwrap())
    .collect()
}

/// A pod behind node `i`'s bridge `twl0`, at .2 of the node's block.
fn add_pod(c: &mut Cluster, i: usize) -> String {
    let block = c.status(&format!("n{}", i + 1)).unwrap().blocks[0];
    let base = u32::from(block.network());
    let (gw, ip) = (
        std::net::Ipv4Addr::from(base + 1),
        std::net::Ipv4Addr::from(base + 2),
    );
    let node = &c.nodes[i];
    let pod = TestNetns::new(&format!("prcpod{}", i + 1));
    node.exec(&["ip", "link", "add", "twl0", "type", "bridge"]);
    node.exec(&["ip", "addr", "add", &format!("{gw}/24"), "dev", "twl0"]);
    node.exec(&["ip", "link", "set", "twl0", "up"]);
    node.exec(&[
        "ip", "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    node.exec(&["ip", "link", "set", "vpod", "master", "twl0", "up"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    pod.exec(&["ip", "route", "add", "default", "via", &gw.to_string()]);
    c.pods.push(pod);
    ip.to_string()
}

#[test]
fn a_sigkilled_agent_restarts_under_an_iperf3_stream_and_changes_nothing() {
    twill_testkit::require_root(
        "a_sigkilled_agent_restarts_under_an_iperf3_stream_and_changes_nothing",
    );
    let started = Instant::now();
    let mut c = cluster("prc", 2, BackendKind::Vxlan, false);
    c.wait_ready(0);
    c.wait_ready(1);
    add_pod(&mut c, 0);
    let server_ip = add_pod(&mut c, 1);
    let end = Instant::now() + Duration::from_secs(20);
    while !c.pods[0]
        .try_exec(&["ping", "-c", "1", "-W", "1", &server_ip])
        .0
    {
        assert!(
            Instant::now() < end,
            "pod 1 never reached pod 2 over vxlan\n{}",
            c.logs()
        );
    }

    let mut server = Command::new("ip")
        .args(["netns", "exec", &c.pods[1].name, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&c.pods[1].exec(&["ss", "-ltnH"]).stdout).contains(":5201") {
        assert!(Instant::now() < end, "iperf3 -s never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = Command::new("ip")
        .args(["netns", "exec", &c.pods[0].name, "iperf3", "-c", &server_ip])
        .args(["-t", "8", "-C", "cubic", "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    std::thread::sleep(Duration::from_secs(2));
    c.agents[0].kill();
    let killed_at = Instant::now();
    let before = snapshot(&c.nodes[0]);
    c.agents[0] = start_agent(&c, 0);
    c.wait_ready(0);
    let restarted_in = killed_at.elapsed();
    let after = snapshot(&c.nodes[0]);
    let changes = c.metric(0, "twill_backend_changes_total");

    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3 printed no JSON ({e}):\n{}", text(&out)));
    assert!(out.status.success(), "iperf3 failed:\n{}", text(&out));
    assert!(result.get("error").is_none(), "iperf3: {}", result["error"]);
    let sent = result["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0);
    let received = result["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(sent > 0.0 && received > 0.0, "{}", result["end"]);

    assert_eq!(before, after, "the restart changed the kernel's state");
    assert_eq!(
        before[0].as_array().unwrap().len(),
        1,
        "one route: {}",
        before[0]
    );
    assert!(
        !before[2].as_array().unwrap().is_empty(),
        "the FDB entry: {}",
        before[2]
    );
    assert_eq!(
        before[3][0]["ifindex"], after[3][0]["ifindex"],
        "the device was not recreated"
    );
    assert_eq!(
        changes,
        Some(0.0),
        "the restarted agent must adopt, not program"
    );
    println!(
        "(c) took {:?}; agent back in {restarted_in:?}; iperf3 {:.2} Gbit/s, {} retransmits",
        started.elapsed(),
        result["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9,
        result["end"]["sum_sent"]["retransmits"]
    );
}
