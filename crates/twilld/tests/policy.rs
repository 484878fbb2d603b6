//! Network policy end to end: twilld (`--policy true`) in a node namespace, a real embedded
//! store, pods in namespaces of their own wired by hand as twill-cni wires them (l3: a /32
//! with proxy ARP on the host veth; bridge: ports of a bridge holding the gateway), real
//! nft, and real TCP and UDP packets between them.
//!
//! Each case is bounded: probes time out after 300 ms, waits after 10 s.

mod common;

use common::{key, wait_for, AgentProc};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use twill_netlink::Netns;
use twill_store::embedded::EmbeddedStore;
use twill_store::Store;
use twill_testkit::{TempDir, TestNetns};

const PROBE: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wiring {
    L3,
    Bridge,
}

/// Runs `f` on a new thread inside `ns` (the thread's namespace only).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let n = Netns::open(&path).unwrap();
        // SAFETY: a valid namespace descriptor; only this thread moves.
        assert_eq!(
            unsafe { libc::setns(n.fd().as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

/// TCP (answers "ok") and UDP (echoes) servers on `ports` in `ns`, until dropped.
struct Servers {
    stop: Arc<AtomicBool>,
}

impl Servers {
    fn start(ns: &str, ports: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        for &port in ports {
            let (path, s1, s2) = (format!("/run/netns/{ns}"), stop.clone(), stop.clone());
            let p2 = path.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let tx2 = tx.clone();
            std::thread::spawn(move || {
                let n = Netns::open(&path).unwrap();
                unsafe { libc::setns(n.fd().as_raw_fd(), libc::CLONE_NEWNET) };
                let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                while !s1.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            let _ = c.write_all(b"ok");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
            std::thread::spawn(move || {
                let n = Netns::open(&p2).unwrap();
                unsafe { libc::setns(n.fd().as_raw_fd(), libc::CLONE_NEWNET) };
                let u = UdpSocket::bind(("0.0.0.0", port)).unwrap();
                u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                tx2.send(()).unwrap();
                let mut buf = [0u8; 64];
                while !s2.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..n], from);
                    }
                }
            });
            rx.recv().unwrap();
            rx.recv().unwrap();
        }
        Servers { stop }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn tcp(from: &str, to: Ipv4Addr, port: u16) -> bool {
    in_ns(from, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from((to, port)), PROBE) else {
            return false;
        };
        s.set_read_timeout(Some(PROBE)).unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).is_ok() && &b == b"ok"
    })
}

fn udp(from: &str, to: Ipv4Addr, port: u16) -> bool {
    in_ns(from, move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(PROBE)).unwrap();
        // Two tries: the first packet may wait for ARP.
        for _ in 0..2 {
            let _ = u.send_to(b"hi", (to, port));
            let mut b = [0u8; 8];
            if let Ok((2, _)) = u.recv_from(&mut b) {
                return true;
            }
        }
        false
    })
}

/// One pod: its namespace, address, host veth, name.
struct PodNs {
    ns: TestNetns,
    ip: Ipv4Addr,
    veth: String,
    name: String,
}

const NETWORK: &str = "twlpolicy";

/// A node namespace with an uplink (the node IP, a default route: l3's proxy ARP needs
/// one), its twilld, and pods x/a, x/b, y/c added by the real twill-cni.
struct Node {
    ns: TestNetns,
    _out: TestNetns,
    dir: TempDir,
    pods: Vec<PodNs>,
}

impl Node {
    fn new(tag: &str) -> Node {
        let ns = TestNetns::new(tag);
        let n = ns.name.clone();
        let out = TestNetns::new(&format!("{tag}o"));
        twill_testkit::sh(&[
            "ip", "link", "add", "uplink", "netns", &n, "type", "veth", "peer", "name", "eth0",
            "netns", &out.name,
        ]);
        ns.exec(&["ip", "addr", "add", "192.0.2.11/24", "dev", "uplink"]);
        ns.exec(&["ip", "link", "set", "uplink", "up"]);
        out.exec(&["ip", "addr", "add", "192.0.2.100/24", "dev", "eth0"]);
        out.exec(&["ip", "link", "set", "eth0", "up"]);
        ns.exec(&["ip", "route", "add", "default", "via", "192.0.2.100"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        Node {
            ns,
            _out: out,
            dir: TempDir::new(tag),
            pods: Vec::new(),
        }
    }

    fn p(&self, f: &str) -> String {
        self.dir.path.join(f).to_string_lossy().into_owned()
    }

    /// twill-cni `command` for pod `ns/name` (CNI_ARGS and runtimeConfig as a runtime
    /// gives them): (ok, JSON printed).
    fn cni(
        &self,
        command: &str,
        pod: &TestNetns,
        ns: &str,
        name: &str,
    ) -> (bool, serde_json::Value) {
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": NETWORK, "type": "twill-cni", "bridge": "twlpolbr0",
            "ipMasq": false,
            "ipam": {"handoffFile": self.p("node.json"), "dataDir": self.p("ipam")},
            "runtimeConfig": {"labels": {"pod": name},
                "namedPorts": [{"name": "serve-80", "port": 80, "protocol": "TCP"}]},
        });
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(twill_testkit::workspace_bin("twill-cni", "twill-cni"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("c{ns}{name}"))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes());
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            serde_json::from_slice(&out.stdout).unwrap_or_default(),
        )
    }

    /// Adds `ns/name`; ADD returns once twilld has the pod in its dispatch maps.
    fn add(&mut self, tag: &str, ns: &str, name: &str, log: &dyn Fn() -> String) {
        let pod = TestNetns::new(&format!("{tag}{name}"));
        let (ok, r) = self.cni("ADD", &pod, ns, name);
        assert!(ok, "ADD {ns}/{name}: {r}\n{}", log());
        let ip = r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let veth = r["interfaces"][0]["name"].as_str().unwrap().to_string();
        for map in ["from_pod", "to_pod"] {
            let (_, listed, _) =
                self.ns
                    .try_exec(&["nft", "list", "map", "inet", "twill-policy", map]);
            assert!(
                listed.contains(&format!(" . {ip} :")),
                "{ns}/{name} in {map} when ADD returns: {listed}"
            );
        }
        self.pods.push(PodNs {
            ns: pod,
            ip,
            veth,
            name: name.to_string(),
        });
    }

    fn pod(&self, name: &str) -> &PodNs {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }
}

/// GET `path` from the agent listening on 127.0.0.1:`port` inside `ns`.
fn get_in(ns: &str, port: u16, path: &'static str) -> Option<String> {
    in_ns(ns, move || common::get(port, path).map(|(_, b)| b))
}

fn metric_in(ns: &str, port: u16, line_start: &str) -> Option<f64> {
    let page = get_in(ns, port, "/metrics")?;
    page.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn policy_end_to_end(wiring: Wiring) {
    let tag = if wiring == Wiring::L3 { "pol3" } else { "polb" };
    let mut node = Node::new(tag);
    let n = node.ns.name.clone();
    let store = EmbeddedStore::open(&node.dir.path.join("store")).unwrap();
    let config = twill_api::resources::NetworkConfig {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        block_size: 24,
        subnet_min: None,
        subnet_max: None,
        reservations: vec![],
        backend: twill_api::resources::BackendSpec::None,
        mtu: 1500,
        masquerade: false,
        pod_wiring: match wiring {
            Wiring::L3 => twill_api::wiring::PodWiring::L3,
            Wiring::Bridge => twill_api::wiring::PodWiring::Bridge,
        },
        lease_ttl_seconds: 60,
    };
    store
        .put(&key("config"), &serde_json::to_vec(&config).unwrap(), None)
        .unwrap();
    let port = 9199;
    let args: Vec<String> = [
        "--node-name",
        "n1",
        "--store-dir",
        &node.p("store"),
        "--handoff-file",
        &node.p("node.json"),
        "--state-dir",
        &node.p("state"),
        "--cni-data-dir",
        &node.p("ipam"),
        "--cni-network",
        NETWORK,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--node-ip",
        "192.0.2.11",
        "--policy",
        "true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = AgentProc::spawn(
        &["ip", "netns", "exec", &n],
        &args,
        node.dir.path.join("twilld.log"),
    );
    wait_for("the hand-off and the policy table", WAIT, || {
        let h: serde_json::Value =
            serde_json::from_slice(&std::fs::read(node.dir.path.join("node.json")).ok()?).ok()?;
        let loaded = metric_in(&n, port, "twill_policy_loaded ").filter(|v| *v == 1.0);
        (h["blocks"].as_array().is_some_and(|b| !b.is_empty()) && loaded.is_some()).then_some(())
    });
    {
        let log = || agent.log();
        for (ns, name) in [("x", "a"), ("x", "b"), ("y", "c")] {
            node.add(tag, ns, name, &log);
        }
    }
    let _servers: Vec<Servers> = node
        .pods
        .iter()
        .map(|p| Servers::start(&p.ns.name, &[80, 81]))
        .collect();
    let (a, b, c) = (node.pod("a"), node.pod("b"), node.pod("c"));
    let (an, cn) = (a.ns.name.clone(), c.ns.name.clone());
    // Open: nothing selects anyone.
    assert!(tcp(&an, b.ip, 80), "a→b tcp open\n{}", agent.log());
    assert!(udp(&an, b.ip, 80), "a→b udp open");

    // Default deny ingress in x: b (and a) closed to everyone but the node itself.
    store
        .put(
            &key("networkpolicies/x/deny"),
            br#"{"podSelector":{}}"#,
            None,
        )
        .unwrap();
    wait_for("a→b closed", WAIT, || (!tcp(&an, b.ip, 80)).then_some(()));
    assert!(!udp(&an, b.ip, 80), "udp closed too");
    assert!(!tcp(&cn, b.ip, 81), "from another namespace too");
    assert!(
        tcp(&cn, a.ip, 80) == tcp(&cn, b.ip, 80),
        "a and b both closed"
    );
    // The node's own traffic passes.
    let bip = b.ip;
    assert!(
        in_ns(&n, move || TcpStream::connect_timeout(
            &(bip, 80).into(),
            PROBE
        )
        .is_ok()),
        "host→pod"
    );
    // Egress of x is not isolated: b→c (in y) passes, and its replies come back.
    let bn = b.ns.name.clone();
    assert!(tcp(&bn, c.ip, 80), "b→c egress open, replies pass");
    let drops = wait_for("the drop counter", WAIT, || {
        metric_in(&n, port, "twill_policy_drops_total{policy=\"x/deny\"").filter(|v| *v > 0.0)
    });
    assert!(drops >= 1.0);

    // An allow from pod a on port 80 (by name) and UDP 81: only those open.
    store
        .put(
            &key("networkpolicies/x/allow-a"),
            br#"{"podSelector":{"matchLabels":{"pod":"b"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod":"a"}}}],"ports":[{"port":"serve-80"},{"protocol":"UDP","port":81}]}]}"#,
            None,
        )
        .unwrap();
    wait_for("a→b:80 allowed", WAIT, || {
        tcp(&an, b.ip, 80).then_some(())
    });
    assert!(udp(&an, b.ip, 81), "a→b udp 81 allowed");
    assert!(!udp(&an, b.ip, 80), "a→b udp 80 still denied");
    assert!(!tcp(&an, b.ip, 81), "a→b tcp 81 still denied");
    assert!(!tcp(&cn, b.ip, 80), "c is not pod a of x");

    // Egress deny on b: b's replies to a still pass (established first), b→c is cut.
    store
        .put(
            &key("networkpolicies/x/b-egress"),
            br#"{"podSelector":{"matchLabels":{"pod":"b"}},"policyTypes":["Egress"]}"#,
            None,
        )
        .unwrap();
    wait_for("b→c cut", WAIT, || (!tcp(&bn, c.ip, 80)).then_some(()));
    assert!(tcp(&an, b.ip, 80), "replies of b pass its egress deny");

    // A global Deny before the namespaced allow wins; Pass hands back to it.
    store
        .put(&key("globalnetworkpolicies/deny-a"), br#"{"order":1,"selector":"pod == 'b'","ingress":[{"action":"Deny","source":{"selector":"pod == 'a'"}}]}"#, None)
        .unwrap();
    wait_for("global deny", WAIT, || (!tcp(&an, b.ip, 80)).then_some(()));
    store
        .put(&key("globalnetworkpolicies/deny-a"), br#"{"order":1,"selector":"pod == 'b'","ingress":[{"action":"Pass","source":{"selector":"pod == 'a'"}}]}"#, None)
        .unwrap();
    wait_for("pass", WAIT, || tcp(&an, b.ip, 80).then_some(()));

    // Log: a global rule logs b's TCP ingress and goes on; twill policy log shows it.
    store
        .put(&key("globalnetworkpolicies/log-b"), br#"{"order":0,"selector":"pod == 'b'","ingress":[{"action":"Log","protocol":"TCP"},{"action":"Pass"}]}"#, None)
        .unwrap();
    let log = wait_for("a log line", WAIT, || {
        let _ = tcp(&an, b.ip, 80);
        get_in(&n, port, "/policy/log").filter(|l| l.contains("in log-b rule 0"))
    });
    assert!(
        log.contains(&format!("\"src\":\"{}\"", a.ip)) && log.contains("\"dport\":80"),
        "{log}"
    );
    let twill = common::twill_bin();
    let out = node.ns.exec(&[
        twill.to_str().unwrap(),
        "policy",
        "log",
        "--agent",
        &format!("127.0.0.1:{port}"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("in log-b rule 0  tcp {}:", a.ip))
            && text.contains(&format!("-> {}:80", b.ip)),
        "{text}"
    );
    // Removing a policy (chains, rules, a counter) is one nfnetlink batch too: no nft.
    let nft_applies =
        || metric_in(&n, port, "twill_policy_applies_total{path=\"nft\"}").unwrap_or(0.0);
    let nl_applies =
        || metric_in(&n, port, "twill_policy_applies_total{path=\"netlink\"}").unwrap();
    let (before, before_nl) = (nft_applies(), nl_applies());
    store.delete(&key("globalnetworkpolicies/log-b")).unwrap();
    wait_for("log-b removed", WAIT, || {
        (nl_applies() > before_nl).then_some(())
    });
    assert_eq!(nft_applies(), before, "a policy change went through nft -f");
    let listed = node
        .ns
        .exec(&["nft", "list", "table", "inet", "twill-policy"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("log-b"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );

    // A relabelled pod leaves the allowed set (an element change only).
    let applies_nl = metric_in(&n, port, "twill_policy_applies_total{path=\"netlink\"}").unwrap();
    store
        .put(&key("podlabels/x/a"), br#"{"labels":{"pod":"z"}}"#, None)
        .unwrap();
    wait_for("a relabelled, denied", WAIT, || {
        (!tcp(&an, b.ip, 80)).then_some(())
    });
    assert!(
        metric_in(&n, port, "twill_policy_applies_total{path=\"netlink\"}").unwrap() > applies_nl
    );
    // That change's timing: the watch's event to the kernel's answer, on CLOCK_MONOTONIC
    // too (what twill-bench policy lines up with the put).
    let m = |name: &str| metric_in(&n, port, &format!("{name} ")).unwrap();
    let (event_at, applied_at) = (
        m("twill_policy_last_event_monotonic_seconds"),
        m("twill_policy_last_applied_monotonic_seconds"),
    );
    let to_kernel = m("twill_policy_event_to_kernel_seconds");
    assert!(
        to_kernel > 0.0
            && applied_at >= event_at
            && (applied_at - event_at - to_kernel).abs() < 0.01,
        "event {event_at} applied {applied_at} event-to-kernel {to_kernel}"
    );
    assert!(m("twill_policy_encode_seconds") >= 0.0);
    store.delete(&key("podlabels/x/a")).unwrap();
    wait_for("a back", WAIT, || tcp(&an, b.ip, 80).then_some(()));

    // Deleting the policies reopens.
    for k in [
        "networkpolicies/x/deny",
        "networkpolicies/x/allow-a",
        "networkpolicies/x/b-egress",
        "globalnetworkpolicies/deny-a",
    ] {
        store.delete(&key(k)).unwrap();
    }
    wait_for("reopened", WAIT, || {
        (tcp(&an, b.ip, 81) && udp(&cn, b.ip, 80) && tcp(&bn, c.ip, 80)).then_some(())
    });

    // A stop leaves the table: pods stay judged (a restart must not open them).
    agent.kill();
    store
        .put(
            &key("networkpolicies/x/deny"),
            br#"{"podSelector":{}}"#,
            None,
        )
        .unwrap();
    assert!(tcp(&an, b.ip, 80), "the stopped agent changed nothing");
    // A pod interface whose pod is not in the dispatch map passes nothing.
    let iface = match wiring {
        Wiring::L3 => b.veth.clone(),
        Wiring::Bridge => "twlpolbr0".to_string(),
    };
    node.ns.exec(&[
        "nft",
        "delete",
        "element",
        "inet",
        "twill-policy",
        "to_pod",
        &format!("{{ \"{iface}\" . {} }}", b.ip),
    ]);
    assert!(!tcp(&an, b.ip, 80), "b unknown: dropped");
    let counter = node.ns.exec(&[
        "nft",
        "list",
        "counter",
        "inet",
        "twill-policy",
        "drop/unknown",
    ]);
    let counter = String::from_utf8_lossy(&counter.stdout).into_owned();
    assert!(!counter.contains("packets 0 "), "{counter}");

    // A start with policy off removes the table: every pod open.
    let off: Vec<String> = args[..args.len() - 1]
        .iter()
        .cloned()
        .chain(["false".to_string()])
        .collect();
    let _agent2 = AgentProc::spawn(
        &["ip", "netns", "exec", &n],
        &off,
        node.dir.path.join("twilld2.log"),
    );
    wait_for("policy off opens", WAIT, || {
        tcp(&an, b.ip, 80).then_some(())
    });
    let (_, tables, _) = node.ns.try_exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("twill-policy"), "{tables}");
    drop(_servers);
    for p in &node.pods {
        let ns = if p.name == "c" { "y" } else { "x" };
        assert!(node.cni("DEL", &p.ns, ns, &p.name).0, "DEL {}", p.name);
    }
}

#[test]
fn policy_in_l3_wiring() {
    twill_testkit::require_root("policy_in_l3_wiring");
    policy_end_to_end(Wiring::L3);
}

#[test]
fn policy_in_bridge_wiring() {
    twill_testkit::require_root("policy_in_bridge_wiring");
    policy_end_to_end(Wiring::Bridge);
}
