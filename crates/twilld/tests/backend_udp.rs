//! Root-gated: the udp backend on two real "nodes" (namespaces on two segments joined by a
//! router, so the outer UDP crosses it), each running twilld's own datapath process
//! (`twilld datapath …` inside the node's namespace), driven through `Routing` as the agent
//! drives it. The proof: pods ping each other across nodes; the kernel state is read back;
//! the datapath outlives its Routing and is adopted (same pid); a killed datapath is
//! replaced; a node leaving takes its route and its table entry (its packets are then
//! dropped as from a stranger, counted); another backend taking over removes the TUN.
//! Bounded: every wait is ≤ 5 s, the whole test ~10 s.

use std::path::Path;
use std::time::{Duration, Instant};

use twill_api::resources::BackendSpec;
use twill_netlink::Netns;
use twill_testkit::{TempDir, TestNetns};
use twilld::backend::{udp, HostGw, Local, Peer, Udp, UdpOptions};
use twilld::routing::Routing;

struct Node {
    ns: TestNetns,
    pod: TestNetns,
    local: Local,
    state: TempDir,
}

/// Every datapath process started for `state` (its socket path is on its command line).
fn datapaths(state: &Path) -> Vec<u32> {
    let sock = state.join(udp::SOCKET).display().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if !zombie && args.contains(&&b"datapath"[..]) && args.contains(&sock.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// Stops the datapaths this test started (by their pids), failures included.
struct Cleanup(Vec<std::path::PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            for pid in datapaths(dir) {
                // SAFETY: kill(2) on a pid this test's datapath runs as.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn node(i: u8, underlay: &TestNetns, router: &TestNetns) -> Node {
    let ns = TestNetns::new(&format!("un{i}"));
    let (seg, gw) = if i == 1 {
        ("192.0.2", "192.0.2.1")
    } else {
        ("198.51.100", "198.51.100.1")
    };
    let (port, bridge) = (format!("p{i}"), format!("twlus{i}"));
    underlay.exec(&["ip", "link", "add", &bridge, "type", "bridge"]);
    underlay.exec(&["ip", "link", "set", &bridge, "up"]);
    underlay.exec(&[
        "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    underlay.exec(&["ip", "link", "set", &port, "master", &bridge, "up"]);
    let rport = format!("r{i}");
    underlay.exec(&[
        "ip",
        "link",
        "add",
        &rport,
        "type",
        "veth",
        "peer",
        "name",
        &format!("eth{i}"),
        "netns",
        &router.name,
    ]);
    underlay.exec(&["ip", "link", "set", &rport, "master", &bridge, "up"]);
    router.exec(&["ip", "link", "set", &format!("eth{i}"), "up"]);
    router.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{gw}/24"),
        "dev",
        &format!("eth{i}"),
    ]);
    let address = format!("{seg}.1{i}");
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    ns.exec(&["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
    ns.exec(&["ip", "route", "add", "default", "via", gw]);
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // The pod behind the node's bridge twl0 (10.244.i.1/24).
    let pod = TestNetns::new(&format!("upod{i}"));
    ns.exec(&["ip", "link", "add", "twl0", "type", "bridge"]);
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("10.244.{i}.1/24"),
        "dev",
        "twl0",
    ]);
    ns.exec(&["ip", "link", "set", "twl0", "up"]);
    ns.exec(&[
        "ip", "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    ns.exec(&["ip", "link", "set", "vpod", "master", "twl0", "up"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod.exec(&[
        "ip",
        "addr",
        "add",
        &format!("10.244.{i}.2/24"),
        "dev",
        "eth0",
    ]);
    pod.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &format!("10.244.{i}.1"),
    ]);
    Node {
        local: Local {
            name: format!("n{i}"),
            address: address.parse().unwrap(),
            uplink: "eth0".into(),
            uplink_cidr: format!("{seg}.0/24").parse().unwrap(),
            blocks: vec![format!("10.244.{i}.0/24").parse().unwrap()],
            mtu_uplink: 1500,
            pod_wiring: Default::default(),
        },
        ns,
        pod,
        state: TempDir::new("udpst"),
    }
}

fn peer_of(n: &Node) -> Peer {
    Peer {
        name: n.local.name.clone(),
        address: n.local.address,
        blocks: n.local.blocks.clone(),
        vtep_mac: None,
    }
}

/// A Routing for `n` as the agent makes it, its datapath run by twilld's binary in the
/// node's namespace.
fn routing(n: &Node) -> Routing {
    let twilld = env!("CARGO_BIN_EXE_twilld").to_string();
    let backend = Udp::new(&UdpOptions::DEFAULT, &n.state.path).with_program(vec![
        "ip".into(),
        "netns".into(),
        "exec".into(),
        n.ns.name.clone(),
        twilld,
    ]);
    Routing::with_backend(BackendSpec::Udp(Default::default()), Box::new(backend))
        .in_netns(Netns::open(n.ns.path()).unwrap())
        .with_state_dir(&n.state.path)
}

/// Passes until one has no failure and no problem (the first starts the datapath; its
/// event brings the pass that sets up the TUN it made).
fn converge(r: &mut Routing, n: &Node, peers: &[Peer]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(pass) = r.reconcile(&n.local, peers).unwrap() {
            if pass.failures.is_empty() && pass.problems.is_empty() {
                return;
            }
            last = Some(pass);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{}: no clean pass in 5 s: {last:?}", n.local.name);
}

fn ping(from: &Node, to: &Node) -> bool {
    let target = format!("10.244.{}.2", &to.local.name[1..]);
    (0..3).any(|_| {
        from.pod
            .try_exec(&["ping", "-c", "1", "-W", "1", &target])
            .0
    })
}

fn metrics(r: &Routing) -> String {
    let mut out = String::new();
    r.metrics().expect("udp has metrics").render(&mut out);
    out
}

fn value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{metrics}"))
}

#[test]
fn udp_nodes_carry_pods_outlive_the_agent_and_forget_a_node_that_left() {
    twill_testkit::require_root(
        "udp_nodes_carry_pods_outlive_the_agent_and_forget_a_node_that_left",
    );
    let underlay = TestNetns::new("uul");
    let router = TestNetns::new("urt");
    router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let n1 = node(1, &underlay, &router);
    let n2 = node(2, &underlay, &router);
    let _cleanup = Cleanup(vec![n1.state.path.clone(), n2.state.path.clone()]);
    let (mut r1, mut r2) = (routing(&n1), routing(&n2));
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    converge(&mut r2, &n2, &[peer_of(&n1)]);

    // The kernel side: the TUN with MTU uplink - 28 and the block's .0, a route into it.
    let link = n1.ns.exec(&["ip", "-d", "link", "show", "twl.tun"]);
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("mtu 1472") && link.contains("tun"), "{link}");
    let addr = n1.ns.exec(&["ip", "-4", "addr", "show", "dev", "twl.tun"]);
    assert!(String::from_utf8_lossy(&addr.stdout).contains("10.244.1.0/32"));
    let routes = n1.ns.exec(&["ip", "route", "show", "proto", "84"]);
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert_eq!(
        routes.trim(),
        "10.244.2.0/24 dev twl.tun scope link",
        "{routes}"
    );

    // Pods reach each other across the router, through both datapaths.
    assert!(ping(&n1, &n2), "pod 1 -> pod 2");
    assert!(ping(&n2, &n1), "pod 2 -> pod 1");
    let m = metrics(&r1);
    let tx = "twill_udp_packets_total{peer=\"n2\",address=\"198.51.100.12\",direction=\"tx\"}";
    let rx = "twill_udp_packets_total{peer=\"n2\",address=\"198.51.100.12\",direction=\"rx\"}";
    assert!(value(&m, tx) >= 1 && value(&m, rx) >= 1, "{m}");
    assert_eq!(value(&m, "twill_udp_datapath_up"), 1);

    // The agent goes (as with SIGKILL: nothing is said to the datapath), forwarding stays,
    // and the next agent adopts the same process.
    let pids = datapaths(&n1.state.path);
    assert_eq!(pids.len(), 1, "one datapath for n1: {pids:?}");
    drop(r1);
    assert!(ping(&n1, &n2), "forwarding while no agent runs");
    let mut r1 = routing(&n1);
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    assert_eq!(datapaths(&n1.state.path), pids, "adopted, not replaced");
    assert!(ping(&n1, &n2));

    // The datapath dies: the agent hears it at once and starts another with the dead one's
    // TUN queue and socket (the persistent TUN and its routes stayed).
    // SAFETY: kill(2) on the datapath this test's Routing started.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let (killed, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(5));
    let mut now = Vec::new();
    while Instant::now() < deadline {
        let _ = r1.reconcile(&n1.local, &[peer_of(&n2)]).unwrap();
        now = datapaths(&n1.state.path);
        if !now.is_empty() && now != pids {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("a new datapath {:?} after the kill", killed.elapsed());
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    assert!(
        now.len() == 1 && now != pids,
        "a new datapath: {now:?} (was {pids:?})"
    );
    // It got the dead one's TUN queues and sockets (the HelloAck dups the agent kept: one
    // of each per worker).
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", now[0])).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let inherited = args
        .iter()
        .position(|a| a == "--inherit-fds")
        .and_then(|i| args.get(i + 1));
    assert!(
        inherited.is_some_and(|l| {
            let n = l.split(',').filter(|f| f.parse::<i32>().is_ok()).count();
            n >= 2 && n % 2 == 0
        }),
        "started with --inherit-fds QUEUES,SOCKETS: {args:?}"
    );
    assert!(ping(&n1, &n2), "through the new datapath");

    // n2 leaves n1's view: its route goes, and so does its table entry: what n2's
    // datapath still sends is dropped as from a stranger.
    converge(&mut r1, &n1, &[]);
    let routes = n1.ns.exec(&["ip", "route", "show", "proto", "84"]);
    assert_eq!(String::from_utf8_lossy(&routes.stdout).trim(), "");
    let before = value(
        &metrics(&r1),
        "twill_udp_drops_total{reason=\"unknown_peer\"}",
    );
    assert!(!ping(&n2, &n1), "n1 forgot n2");
    let after = value(
        &metrics(&r1),
        "twill_udp_drops_total{reason=\"unknown_peer\"}",
    );
    assert!(after > before, "unknown_peer {before} -> {after}");

    // Another backend takes over: the datapath is told to stop and the TUN goes.
    drop(r1);
    let mut hg = Routing::with_backend(BackendSpec::HostGw, Box::new(HostGw))
        .in_netns(Netns::open(n1.ns.path()).unwrap())
        .with_state_dir(&n1.state.path);
    let pass = hg.reconcile(&n1.local, &[]).unwrap().unwrap();
    assert!(pass.failures.is_empty(), "{:?}", pass.failures);
    let (has_tun, _, _) = n1.ns.try_exec(&["ip", "link", "show", "twl.tun"]);
    assert!(!has_tun, "twl.tun is gone");
    assert!(
        datapaths(&n1.state.path).is_empty(),
        "n1's datapath stopped"
    );
    drop(r2);
    assert!(udp::shut_down(&n2.state.path), "n2's datapath answered");
}
