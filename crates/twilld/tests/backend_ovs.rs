//! Root-gated: the ovs backend against real Open vSwitch 3.1 (ovsdb-server and
//! ovs-vswitchd with the userspace `netdev` datapath, started inside each node's
//! namespace as RUNBOOK shows), driven through `Routing` as the agent drives it. Nodes
//! share one underlay bridge; each node's IP is on its `br-phy` (the node's set-up, not
//! Twill's). The proof: pods ping and talk TCP across nodes over GRE (seen on the wire
//! with tcpdump) and VXLAN; a node joining adds only its flows, leaving removes only them;
//! a foreign port and a foreign flow on Twill's bridge survive; dropping the Routing (twilld
//! gone) leaves traffic flowing and a new one makes 0 OVS changes (same port uuids, no
//! transaction, no flow change); ovs-vswitchd restarted within one probe is seen (by its
//! PID) and reprogrammed; a node's own packets (node IP source) reach remote pods;
//! ovs-vswitchd and ovsdb-server dying show in the problems
//! (so in /readyz) and everything is programmed again once they are back; missing tools
//! name the package. Bounded: every wait ≤ 5 s; ~15 s for the GRE test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use twill_api::backend::{OvsOptions, TunnelType};
use twill_api::resources::BackendSpec;
use twill_netlink::Netns;
use twill_testkit::{require_program, require_root, unique_name, TestNetns};
use twilld::backend::{Local, Ovs, Peer};
use twilld::routing::{Pass, Routing};

/// One node's OVS daemons, stopped by their pids (vswitchd first) and their directory
/// removed on drop, failures included.
struct Daemons {
    dir: PathBuf,
    ns: String,
}

impl Daemons {
    fn pid(&self, daemon: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.join(format!("{daemon}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn alive(&self, daemon: &str) -> bool {
        // SAFETY: signal 0 only checks the pid.
        self.pid(daemon)
            .is_some_and(|p| unsafe { libc::kill(p, 0) } == 0)
    }

    fn kill(&self, daemon: &str) {
        if let Some(pid) = self.pid(daemon) {
            // SAFETY: kill(2) on the pid this test's daemon wrote.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let d = self.dir.display().to_string();
        ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"]
            .iter()
            .map(|k| (k.to_string(), d.clone()))
            .collect()
    }

    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .envs(self.env())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start_db(&self) {
        let d = self.dir.display();
        self.run(&[
            "ovsdb-server",
            &format!("{d}/conf.db"),
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--pidfile={d}/ovsdb-server.pid"),
            "--detach",
            &format!("--log-file={d}/ovsdb-server.log"),
        ]);
    }

    fn start_vswitchd(&self) {
        let d = self.dir.display();
        self.run(&[
            "ovs-vswitchd",
            &format!("unix:{d}/db.sock"),
            &format!("--pidfile={d}/ovs-vswitchd.pid"),
            "--detach",
            &format!("--log-file={d}/ovs-vswitchd.log"),
        ]);
    }

    fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}/db.sock", self.dir.display());
        let mut a = vec!["ovs-vsctl", &db, "--timeout=5"];
        a.extend_from_slice(args);
        self.run(&a)
    }

    fn ofctl(&self, args: &[&str]) -> String {
        let mut a = vec!["ovs-ofctl", "--timeout=5"];
        a.extend_from_slice(args);
        self.run(&a)
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        self.kill("ovs-vswitchd");
        self.kill("ovsdb-server");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Node {
    // Dropped first: the daemons, then the namespaces.
    ovs: Daemons,
    pod: TestNetns,
    ns: TestNetns,
    local: Local,
}

/// A node on `underlay`'s bridge: OVS running, `br-phy` holding eth0 and 192.0.2.1i, a pod
/// 10.244.i.2 behind the node's bridge twl0.
fn node(i: u8, underlay: &TestNetns, bridge: &str) -> Node {
    let ns = TestNetns::new(&format!("ovn{i}"));
    let port = unique_name(&format!("ou{i}"), 15);
    underlay.exec(&[
        "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    underlay.exec(&["ip", "link", "set", &port, "master", bridge, "up"]);
    let dir = std::env::temp_dir().join(unique_name(&format!("ovs{i}"), 40));
    std::fs::create_dir_all(&dir).unwrap();
    let ovs = Daemons {
        dir: dir.clone(),
        ns: ns.name.clone(),
    };
    ovs.run(&[
        "ovsdb-tool",
        "create",
        &format!("{}/conf.db", dir.display()),
        "/usr/share/openvswitch/vswitch.ovsschema",
    ]);
    ovs.start_db();
    ovs.vsctl(&["--no-wait", "init"]);
    ovs.start_vswitchd();
    // The node's set-up: its IP on an OVS netdev bridge (br-phy), the uplink a port of it.
    ovs.vsctl(&[
        "add-br",
        "br-phy",
        "--",
        "set",
        "bridge",
        "br-phy",
        "datapath_type=netdev",
    ]);
    ovs.vsctl(&["add-port", "br-phy", "eth0"]);
    // eth0 (OVS's now) must not answer ARP for the node IP with its own MAC.
    ns.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.arp_ignore=1"]);
    let address = format!("192.0.2.1{i}");
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{address}/24"),
        "dev",
        "br-phy",
    ]);
    ns.exec(&["ip", "link", "set", "br-phy", "up"]);
    ns.exec(&[
        "ethtool", "-K", "br-phy", "tso", "off", "gso", "off", "tx", "off",
    ]);
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let pod = TestNetns::new(&format!("ovp{i}"));
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
    pod.exec(&["ip", "link", "set", "eth0", "up", "mtu", "1462"]);
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
            uplink: "br-phy".into(),
            uplink_cidr: "192.0.2.0/24".parse().unwrap(),
            blocks: vec![format!("10.244.{i}.0/24").parse().unwrap()],
            mtu_uplink: 1500,
            pod_wiring: Default::default(),
        },
        ovs,
        pod,
        ns,
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

fn routing(n: &Node, tunnel: TunnelType) -> Routing {
    routing_probing(n, tunnel, twilld::backend::ovs::PROBE)
}

fn routing_probing(n: &Node, tunnel: TunnelType, probe: Duration) -> Routing {
    let backend = Ovs::new(tunnel, &n.ovs.dir)
        .with_probe(probe)
        .with_prefix(vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            n.ns.name.clone(),
        ]);
    Routing::with_backend(
        BackendSpec::Ovs(OvsOptions {
            tunnel_type: tunnel,
        }),
        Box::new(backend),
    )
    .in_netns(Netns::open(n.ns.path()).unwrap())
}

/// Passes until one is clean and no further pass is asked for (the backend's events
/// processed); returns the passes seen.
fn converge(r: &mut Routing, n: &Node, peers: &[Peer]) -> Vec<Pass> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut passes = Vec::new();
    let mut quiet = 0;
    while Instant::now() < deadline {
        match r.reconcile(&n.local, peers).unwrap() {
            Some(pass) => {
                quiet = 0;
                passes.push(pass);
            }
            None => quiet += 1,
        }
        let clean = passes
            .last()
            .is_some_and(|p| p.failures.is_empty() && p.problems.is_empty());
        if clean && quiet >= 3 {
            return passes;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{}: no clean, quiet pass in 5 s: {:?}",
        n.local.name,
        passes.last()
    );
}

/// Passes until one has a problem containing `text`.
fn wait_problem(r: &mut Routing, n: &Node, peers: &[Peer], text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(pass) = r.reconcile(&n.local, peers).unwrap() {
            if let Some(p) = pass.problems.iter().find(|p| p.contains(text)) {
                return p.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{}: no problem {text:?} within 5 s: {:?}",
        n.local.name,
        r.problems()
    );
}

/// From `from`'s node namespace, its node IP as source, to `to`'s pod.
fn node_ping(from: &Node, to: &Node) -> bool {
    let target = format!("10.244.{}.2", &to.local.name[1..]);
    let src = from.local.address.to_string();
    (0..4).any(|_| {
        from.ns
            .try_exec(&["ping", "-c", "1", "-W", "1", "-I", &src, &target])
            .0
    })
}

fn ping(from: &Node, to: &Node) -> bool {
    let target = format!("10.244.{}.2", &to.local.name[1..]);
    (0..4).any(|_| {
        from.pod
            .try_exec(&["ping", "-c", "1", "-W", "1", &target])
            .0
    })
}

/// 2 MB over TCP from `from`'s pod to `to`'s (iperf3, bounded).
fn tcp(from: &Node, to: &Node, port: u16) {
    let port = port.to_string();
    let server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &to.pod.name,
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Reap(server);
    let target = format!("10.244.{}.2", &to.local.name[1..]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, out, err) = from.pod.try_exec(&[
            "timeout",
            "5",
            "iperf3",
            "-c",
            &target,
            "-p",
            &port,
            "-n",
            "2M",
            "--connect-timeout",
            "1000",
        ]);
        if ok {
            assert!(out.contains("receiver"), "{out}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "TCP {target}:{port} failed: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(r: &Routing, series: &str) -> u64 {
    let mut out = String::new();
    r.metrics().expect("ovs has metrics").render(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{out}"))
}

/// Port name → uuid, for every port.
fn port_uuids(n: &Node) -> Vec<(String, String)> {
    let out = n.ovs.vsctl(&[
        "--format=csv",
        "--no-headings",
        "--columns=name,_uuid",
        "list",
        "Port",
    ]);
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(','))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

fn flows(n: &Node) -> String {
    n.ovs.ofctl(&["dump-flows", "--no-stats", "twl-int"])
}

fn twill_flows(n: &Node) -> Vec<String> {
    let mut v: Vec<String> = flows(n)
        .lines()
        .filter(|l| l.contains("cookie=0x5477"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn routes(n: &Node) -> String {
    String::from_utf8_lossy(&n.ns.exec(&["ip", "route", "show", "proto", "84"]).stdout).into_owned()
}

/// GRE (or VXLAN) packets on the underlay while the pods ping.
fn on_the_wire(underlay: &TestNetns, bridge: &str, filter: &str, from: &Node, to: &Node) -> String {
    let cap = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &underlay.name,
            "timeout",
            "4",
            "tcpdump",
            "-nn",
            "-l",
            "-c",
            "2",
            "-i",
            bridge,
            filter,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(ping(from, to));
    let out = cap.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn underlay() -> (TestNetns, String) {
    let ul = TestNetns::new("ovul");
    let br = unique_name("ovbr", 15);
    ul.exec(&["ip", "link", "add", &br, "type", "bridge"]);
    ul.exec(&["ip", "link", "set", &br, "up"]);
    (ul, br)
}

fn require() {
    require_root("backend_ovs");
    require_program("backend_ovs", "ovs-vswitchd", "openvswitch-switch");
    require_program("backend_ovs", "tcpdump", "tcpdump");
    require_program("backend_ovs", "iperf3", "iperf3");
}

#[test]
fn gre_mesh_carries_pods_follows_churn_survives_restarts_and_daemon_deaths() {
    require();
    let (ul, br) = underlay();
    let (n1, n2, n3) = (node(1, &ul, &br), node(2, &ul, &br), node(3, &ul, &br));
    let gre = TunnelType::Gre;
    let (mut r1, mut r2) = (routing(&n1, gre), routing(&n2, gre));
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    converge(&mut r2, &n2, &[peer_of(&n1)]);

    // The kernel side (bridge wiring): twl.ovs, its MTU the uplink's - 38, a port of the
    // pods' bridge twl0 with the gateway's MAC pinned on it, and a route per remote block
    // into twl0.
    assert!(
        routes(&n1).contains("10.244.2.0/24 via 169.254.84.84 dev twl0 onlink"),
        "{}",
        routes(&n1)
    );
    let link = String::from_utf8_lossy(&n1.ns.exec(&["ip", "link", "show", "twl.ovs"]).stdout)
        .into_owned();
    assert!(link.contains("mtu 1462") && link.contains(",UP"), "{link}");
    assert!(link.contains("master twl0"), "{link}");
    let fdb = String::from_utf8_lossy(
        &n1.ns
            .exec(&["bridge", "fdb", "show", "dev", "twl.ovs"])
            .stdout,
    )
    .into_owned();
    assert!(
        fdb.contains("0a:54:a9:fe:54:54 master twl0 static"),
        "{fdb}"
    );
    assert_eq!(r1.pod_mtu(1500, 1500), 1462);
    // Pods across nodes: ping, TCP, and GREv0 on the wire between the node IPs.
    assert!(ping(&n1, &n2) && ping(&n2, &n1));
    // A node's own packets (its node IP as source) reach a pod on the other node (the
    // answer comes back over the underlay), both ways.
    assert!(node_ping(&n1, &n2) && node_ping(&n2, &n1));
    tcp(&n1, &n2, 15201);
    let wire = on_the_wire(&ul, &br, "ip proto 47", &n1, &n2);
    assert!(
        wire.contains("192.0.2.11 > 192.0.2.12: GREv0")
            || wire.contains("192.0.2.12 > 192.0.2.11: GREv0"),
        "no GRE between the node IPs on the wire:\n{wire}"
    );

    // A foreign port and a foreign flow on Twill's bridge.
    n1.ovs.vsctl(&[
        "add-port",
        "twl-int",
        "twlfx",
        "--",
        "set",
        "interface",
        "twlfx",
        "type=internal",
    ]);
    n1.ovs.ofctl(&[
        "add-flow",
        "twl-int",
        "cookie=0x1,priority=1,ip,nw_dst=203.0.113.0/24,actions=drop",
    ]);
    let before_ports = port_uuids(&n1);
    let before_flows = twill_flows(&n1);
    // ARP, into the tunnel, and in from n2's block and from n2's node IP.
    assert_eq!(before_flows.len(), 4, "{before_flows:?}");

    // n3 joins: on n1 only its three flows and its route appear; ports are untouched.
    let mut r3 = routing(&n3, gre);
    let all = [peer_of(&n1), peer_of(&n2), peer_of(&n3)];
    let tx = metric(&r1, "twill_ovs_transactions_total");
    converge(&mut r1, &n1, &all[1..]);
    converge(&mut r2, &n2, &[peer_of(&n1), peer_of(&n3)]);
    converge(&mut r3, &n3, &all[..2]);
    let after = twill_flows(&n1);
    let added: Vec<&String> = after.iter().filter(|f| !before_flows.contains(f)).collect();
    assert_eq!(added.len(), 3, "{after:?}");
    assert!(
        added
            .iter()
            .all(|f| f.contains("192.0.2.13") || f.contains("0xc000020d")),
        "{added:?}"
    );
    assert!(before_flows.iter().all(|f| after.contains(f)));
    assert_eq!(port_uuids(&n1), before_ports, "a join changed ports");
    assert_eq!(
        metric(&r1, "twill_ovs_transactions_total"),
        tx,
        "a join made an OVSDB transaction"
    );
    assert!(ping(&n1, &n3) && ping(&n3, &n2));
    // The foreign port and flow survived.
    assert!(
        flows(&n1).contains("cookie=0x1,") && flows(&n1).contains("nw_dst=203.0.113.0/24"),
        "{}",
        flows(&n1)
    );
    assert!(n1.ovs.vsctl(&["list-ports", "twl-int"]).contains("twlfx"));

    // n3 leaves: exactly its flows and route go.
    converge(&mut r1, &n1, &all[1..2]);
    assert_eq!(twill_flows(&n1), before_flows);
    assert!(!routes(&n1).contains("10.244.3.0/24"), "{}", routes(&n1));
    assert!(flows(&n1).contains("cookie=0x1,"));
    assert!(n1.ovs.vsctl(&["list-ports", "twl-int"]).contains("twlfx"));
    drop(r3);

    // twilld gone (its Routing dropped): OVS goes on forwarding.
    drop(r1);
    assert!(ping(&n1, &n2));
    // A restarted twilld adopts everything: no transaction, no flow change, same uuids.
    let mut r1 = routing(&n1, gre);
    let passes = converge(&mut r1, &n1, &[peer_of(&n2)]);
    assert!(
        passes.iter().all(|p| p.changes == 0),
        "kernel changes after restart: {passes:?}"
    );
    assert_eq!(metric(&r1, "twill_ovs_transactions_total"), 0);
    assert_eq!(metric(&r1, "twill_ovs_flow_changes_total"), 0);
    assert_eq!(port_uuids(&n1), before_ports);
    assert_eq!(twill_flows(&n1), before_flows);

    // ovs-vswitchd killed and started again at once, after twilld's restart. Its restart
    // (~2 s here) must fall between two probes, so this twilld probes every 6 s: most
    // often no probe sees it down, and only its new PID shows the restart. Its flows and
    // the routes through the new twl.ovs must be back well before the 30 s resync.
    drop(r1);
    let mut r1 = routing_probing(&n1, gre, Duration::from_secs(6));
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    let old_pid = n1.ovs.pid("ovs-vswitchd").unwrap();
    let quick = Instant::now();
    n1.ovs.kill("ovs-vswitchd");
    n1.ovs.start_vswitchd();
    let down = quick.elapsed();
    assert_ne!(n1.ovs.pid("ovs-vswitchd"), Some(old_pid));
    let back = loop {
        let _ = r1.reconcile(&n1.local, &[peer_of(&n2)]).unwrap();
        if twill_flows(&n1) == before_flows && node_ping(&n1, &n2) && ping(&n1, &n2) {
            break quick.elapsed();
        }
        assert!(
            quick.elapsed() < Duration::from_secs(15),
            "flows not back 15 s after a quick vswitchd restart (down {down:?}): {:?}",
            twill_flows(&n1)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("quick vswitchd restart: down {down:?}, pods talk again after {back:?}");
    assert_eq!(metric(&r1, "twill_ovs_vswitchd_restarts_total"), 1);
    assert_eq!(port_uuids(&n1), before_ports);
    drop(r1);
    let mut r1 = routing(&n1, gre);
    converge(&mut r1, &n1, &[peer_of(&n2)]);

    // ovs-vswitchd dies: the problem names it and the fix; back, everything is programmed
    // again (its flows died with it) and pods talk again.
    n1.ovs.kill("ovs-vswitchd");
    let p = wait_problem(&mut r1, &n1, &[peer_of(&n2)], "ovs-vswitchd is not running");
    assert!(p.contains("start it (OVS_RUNDIR="), "{p}");
    assert!(
        !n1.pod
            .try_exec(&["ping", "-c", "1", "-W", "1", "10.244.2.2"])
            .0
    );
    n1.ovs.start_vswitchd();
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    assert_eq!(twill_flows(&n1), before_flows);
    // ovs-vswitchd made twl.ovs again: joined to twl0 again.
    assert!(routes(&n1).contains("10.244.2.0/24 via 169.254.84.84 dev twl0 onlink"));
    assert!(ping(&n1, &n2));
    tcp(&n2, &n1, 15202);
    assert!(node_ping(&n2, &n1));

    // ovsdb-server dies: the problem names the fix (ovs-vswitchd stops running its bridges
    // without its database: OVS's own behaviour); back, nothing needs changing.
    n1.ovs.kill("ovsdb-server");
    let p = wait_problem(
        &mut r1,
        &n1,
        &[peer_of(&n2)],
        "ovsdb-server does not answer",
    );
    assert!(p.contains("--ovs-rundir"), "{p}");
    n1.ovs.start_db();
    let tx = metric(&r1, "twill_ovs_transactions_total");
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    assert_eq!(metric(&r1, "twill_ovs_transactions_total"), tx);
    assert!(ping(&n1, &n2));
    assert!(n1.ovs.alive("ovs-vswitchd") && n1.ovs.alive("ovsdb-server"));
}

/// ovs-vswitchd's tunnel neighbour cache (`tnl/neigh/show`): (IP, MAC) of br-phy's live
/// entries.
fn tunnel_neighbours(n: &Node) -> Vec<(String, String)> {
    let shown = n
        .ovs
        .run(&["ovs-appctl", "-t", "ovs-vswitchd", "tnl/neigh/show"]);
    twill_ovs::neigh::parse_cache(&shown)
        .into_iter()
        .filter(|e| e.bridge == "br-phy" && !e.stale)
        .map(|e| (e.ip.to_string(), twill_ovs::flows::format_mac(&e.mac)))
        .collect()
}

fn mac_of(n: &Node, dev: &str) -> String {
    let path = format!("/sys/class/net/{dev}/address");
    String::from_utf8_lossy(&n.ns.exec(&["cat", &path]).stdout)
        .trim()
        .to_string()
}

/// The userspace datapath drops a tunnel packet whose next hop it has no MAC for (and ARPs);
/// it learns only from ARP replies it sees. The agent copies the host's neighbour into its
/// cache, so before any pod traffic each node's OVS knows the other, and the very first
/// packet each way (one ping, no retry) gets through. A peer that does not answer ARP is a
/// problem naming it and the command to look.
#[test]
fn the_first_packet_to_a_peer_gets_through_because_ovs_already_knows_its_next_hop() {
    require();
    let (ul, br) = underlay();
    let (n1, n2) = (node(1, &ul, &br), node(2, &ul, &br));
    let gre = TunnelType::Gre;
    let (mut r1, mut r2) = (routing(&n1, gre), routing(&n2, gre));
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    converge(&mut r2, &n2, &[peer_of(&n1)]);
    for (from, to) in [(&n1, &n2), (&n2, &n1)] {
        let want = (to.local.address.to_string(), mac_of(to, "br-phy"));
        let have = tunnel_neighbours(from);
        assert!(
            have.contains(&want),
            "{}'s OVS lacks {want:?} before any traffic: {have:?}",
            from.local.name
        );
    }
    for (from, to) in [(&n1, &n2), (&n2, &n1)] {
        let target = format!("10.244.{}.2", &to.local.name[1..]);
        let (ok, out, _) = from.pod.try_exec(&["ping", "-c", "1", "-W", "2", &target]);
        assert!(ok, "{} → {target}, first packet: {out}", from.local.name);
    }
    // A peer nobody answers ARP for: named, with where to look.
    let ghost = Peer {
        name: "n9".into(),
        address: "192.0.2.19".parse().unwrap(),
        blocks: vec!["10.244.9.0/24".parse().unwrap()],
        vtep_mac: None,
    };
    let p = wait_problem(
        &mut r1,
        &n1,
        &[peer_of(&n2), ghost],
        "peer 192.0.2.19 does not answer ARP on br-phy",
    );
    assert!(p.contains("ip neigh show 192.0.2.19"), "{p}");
    // The others stay as they were.
    assert!(tunnel_neighbours(&n1).contains(&(n2.local.address.to_string(), mac_of(&n2, "br-phy"))));
}

#[test]
fn vxlan_mesh_carries_pods_and_a_tunnel_type_switch_replaces_only_the_tunnel_port() {
    require();
    let (ul, br) = underlay();
    let (n1, n2) = (node(1, &ul, &br), node(2, &ul, &br));
    let vx = TunnelType::Vxlan;
    let (mut r1, mut r2) = (routing(&n1, vx), routing(&n2, vx));
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    converge(&mut r2, &n2, &[peer_of(&n1)]);
    assert_eq!(r1.pod_mtu(1500, 1500), 1450);
    assert!(ping(&n1, &n2));
    tcp(&n2, &n1, 15203);
    let wire = on_the_wire(&ul, &br, "udp port 4789", &n1, &n2);
    assert!(wire.contains("VXLAN"), "no VXLAN on the wire:\n{wire}");
    let host_port = port_uuids(&n1).into_iter().find(|(n, _)| n == "twl.ovs");

    // Switching n1 to GRE (as a new network config would): the VXLAN port goes, a GRE port
    // comes, the host port stays.
    drop(r1);
    let mut r1 = routing(&n1, TunnelType::Gre);
    converge(&mut r1, &n1, &[peer_of(&n2)]);
    let ports = n1.ovs.vsctl(&["list-ports", "twl-int"]);
    assert!(
        ports.contains("twl-gre") && !ports.contains("twl-vxlan"),
        "{ports}"
    );
    assert_eq!(
        port_uuids(&n1).into_iter().find(|(n, _)| n == "twl.ovs"),
        host_port
    );
    assert_eq!(metric(&r1, "twill_ovs_transactions_total"), 1);
}

#[test]
fn missing_open_vswitch_is_a_problem_naming_the_package() {
    require_root("backend_ovs");
    let ns = TestNetns::new("ovmiss");
    let dir = twill_testkit::TempDir::new("ovsmiss");
    let backend = Ovs::new(TunnelType::Gre, &dir.path)
        .with_prefix(vec!["env".into(), "PATH=/nonexistent".into()]);
    let mut r = Routing::with_backend(BackendSpec::Ovs(OvsOptions::default()), Box::new(backend))
        .in_netns(Netns::open(ns.path()).unwrap());
    let local = Local {
        name: "n1".into(),
        address: "192.0.2.11".parse().unwrap(),
        uplink: "lo".into(),
        uplink_cidr: "192.0.2.0/24".parse().unwrap(),
        blocks: vec!["10.244.1.0/24".parse().unwrap()],
        mtu_uplink: 1500,
        pod_wiring: Default::default(),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pass) = r.reconcile(&local, &[]).unwrap() {
            if let Some(p) = pass.problems.iter().find(|p| p.contains("not installed")) {
                assert!(
                    p.contains("ovs-vsctl") && p.contains("apt-get install openvswitch-switch"),
                    "{p}"
                );
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no problem naming the package: {:?}",
            r.problems()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
