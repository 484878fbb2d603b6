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
use twill_policy::compile::POD_GROUP;
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

/// One pod: its namespace, address, host veth.
struct PodNs {
    ns: TestNetns,
    ip: Ipv4Addr,
    veth: String,
    name: String,
}

fn sh(args: &[&str]) {
    twill_testkit::sh(args);
}

/// A node namespace with pods x/a, x/b, y/c wired as `wiring`.
struct Node {
    ns: TestNetns,
    pods: Vec<PodNs>,
}

const BRIDGE: &str = "twlpolbr0";

impl Node {
    fn new(tag: &str, wiring: Wiring) -> Node {
        let ns = TestNetns::new(tag);
        let n = ns.name.clone();
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // The node's own address (host→pod traffic comes from it).
        sh(&["ip", "-n", &n, "addr", "add", "192.0.2.1/32", "dev", "lo"]);
        if wiring == Wiring::Bridge {
            sh(&["ip", "-n", &n, "link", "add", BRIDGE, "type", "bridge"]);
            sh(&[
                "ip",
                "-n",
                &n,
                "addr",
                "add",
                "10.244.1.1/24",
                "dev",
                BRIDGE,
            ]);
            sh(&[
                "ip",
                "-n",
                &n,
                "link",
                "set",
                BRIDGE,
                "up",
                "group",
                &POD_GROUP.to_string(),
            ]);
        }
        let mut pods = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let pns = TestNetns::new(&format!("{tag}{name}"));
            let p = pns.name.clone();
            let ip: Ipv4Addr = format!("10.244.1.{}", 10 + i).parse().unwrap();
            let veth = format!("twlpv{name}{i}");
            sh(&[
                "ip", "-n", &n, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &p,
            ]);
            sh(&[
                "ip",
                "-n",
                &n,
                "link",
                "set",
                &veth,
                "up",
                "group",
                &POD_GROUP.to_string(),
            ]);
            sh(&["ip", "-n", &p, "link", "set", "eth0", "up"]);
            match wiring {
                Wiring::L3 => {
                    sh(&[
                        "ip",
                        "-n",
                        &p,
                        "addr",
                        "add",
                        &format!("{ip}/32"),
                        "dev",
                        "eth0",
                    ]);
                    sh(&[
                        "ip",
                        "-n",
                        &p,
                        "route",
                        "add",
                        "169.254.1.1",
                        "dev",
                        "eth0",
                        "scope",
                        "link",
                    ]);
                    sh(&[
                        "ip",
                        "-n",
                        &p,
                        "route",
                        "add",
                        "default",
                        "via",
                        "169.254.1.1",
                        "dev",
                        "eth0",
                    ]);
                    sh(&[
                        "ip",
                        "-n",
                        &n,
                        "route",
                        "add",
                        &format!("{ip}/32"),
                        "dev",
                        &veth,
                    ]);
                    // What proxy ARP would answer for the gateway: the host veth's MAC.
                    let mac = std::fs::read_to_string(format!("/sys/class/net/{veth}/address"));
                    let mac = match mac {
                        Ok(m) => m,
                        Err(_) => {
                            let out = ns.exec(&["cat", &format!("/sys/class/net/{veth}/address")]);
                            String::from_utf8_lossy(&out.stdout).into_owned()
                        }
                    };
                    sh(&[
                        "ip",
                        "-n",
                        &p,
                        "neigh",
                        "add",
                        "169.254.1.1",
                        "lladdr",
                        mac.trim(),
                        "dev",
                        "eth0",
                        "nud",
                        "permanent",
                    ]);
                }
                Wiring::Bridge => {
                    sh(&["ip", "-n", &n, "link", "set", &veth, "master", BRIDGE]);
                    sh(&[
                        "ip",
                        "-n",
                        &p,
                        "addr",
                        "add",
                        &format!("{ip}/24"),
                        "dev",
                        "eth0",
                    ]);
                    sh(&[
                        "ip",
                        "-n",
                        &p,
                        "route",
                        "add",
                        "default",
                        "via",
                        "10.244.1.1",
                    ]);
                }
            }
            pods.push(PodNs {
                ns: pns,
                ip,
                veth,
                name: name.to_string(),
            });
        }
        Node { ns, pods }
    }

    fn pod(&self, name: &str) -> &PodNs {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }
}

fn endpoint(pod: &PodNs, ns: &str, wiring: Wiring) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "namespace": ns, "pod": pod.name, "node": "n1", "containerID": format!("c{}", pod.name),
        "ifname": "eth0", "hostVeth": pod.veth, "ips": [pod.ip],
        "wiring": if wiring == Wiring::L3 { "l3" } else { "bridge" },
        "labels": {"pod": pod.name},
        "namedPorts": [{"name": "serve-80", "port": 80, "protocol": "TCP"}],
    }))
    .unwrap()
}

/// GET `path` from the agent listening on 127.0.0.1:`port` inside `ns`.
fn get_in(ns: &str, port: u16, path: &'static str) -> Option<String> {
    in_ns(ns, move || common::get(port, path).map(|(_, b)| b))
}

fn metric_in(ns: &str, port: u16, line_start: &'static str) -> Option<f64> {
    let page = get_in(ns, port, "/metrics")?;
    page.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn policy_end_to_end(wiring: Wiring) {
    let tag = if wiring == Wiring::L3 { "pol3" } else { "polb" };
    let node = Node::new(tag, wiring);
    let n = node.ns.name.clone();
    let dir = TempDir::new(tag);
    let store = EmbeddedStore::open(&dir.path.join("store")).unwrap();
    store
        .put(
            &key("config"),
            &common::network_config("10.244.0.0/16", 24, 60, false),
            None,
        )
        .unwrap();
    let (a, b, c) = (node.pod("a"), node.pod("b"), node.pod("c"));
    store
        .put(&key("endpoints/n1/x/a"), &endpoint(a, "x", wiring), None)
        .unwrap();
    store
        .put(&key("endpoints/n1/x/b"), &endpoint(b, "x", wiring), None)
        .unwrap();
    store
        .put(&key("endpoints/n1/y/c"), &endpoint(c, "y", wiring), None)
        .unwrap();
    let _servers: Vec<Servers> = node
        .pods
        .iter()
        .map(|p| Servers::start(&p.ns.name, &[80, 81]))
        .collect();
    let port = 9199;
    let d = |s: &str| dir.path.join(s).display().to_string();
    let args: Vec<String> = [
        "--node-name",
        "n1",
        "--store-dir",
        &d("store"),
        "--handoff-file",
        &d("node.json"),
        "--state-dir",
        &d("state"),
        "--cni-data-dir",
        &d("ipam"),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--node-ip",
        "10.244.1.1",
        "--policy",
        "true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = AgentProc::spawn(
        &["ip", "netns", "exec", &n],
        &args,
        dir.path.join("twilld.log"),
    );
    wait_for("the policy table", WAIT, || {
        metric_in(&n, port, "twill_policy_loaded ").filter(|v| *v == 1.0)
    });
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
    let nft_applies = || metric_in(&n, port, "twill_policy_applies_total{path=\"nft\"}").unwrap();
    let before = nft_applies();
    store.delete(&key("globalnetworkpolicies/log-b")).unwrap();
    wait_for("log-b removed", WAIT, || {
        (nft_applies() > before).then_some(())
    });

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

    // A pod interface whose pod is not in the dispatch map passes nothing.
    store.delete(&key("endpoints/n1/x/b")).unwrap();
    wait_for("b unknown, dropped", WAIT, || {
        (!tcp(&an, b.ip, 80)).then_some(())
    });
    assert!(metric_in(
        &n,
        port,
        "twill_policy_drops_total{policy=\"\",kind=\"unknown-interface\"}"
    )
    .is_some());

    // A stop leaves the table (pods stay judged); a start with policy off removes it.
    agent.kill();
    assert!(!tcp(&an, b.ip, 80), "still dropped after twilld stopped");
    let off: Vec<String> = args[..args.len() - 1]
        .iter()
        .cloned()
        .chain(["false".to_string()])
        .collect();
    let _agent2 = AgentProc::spawn(
        &["ip", "netns", "exec", &n],
        &off,
        dir.path.join("twilld2.log"),
    );
    wait_for("policy off opens", WAIT, || {
        tcp(&an, b.ip, 80).then_some(())
    });
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
