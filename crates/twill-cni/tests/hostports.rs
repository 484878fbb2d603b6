//! Port mappings and masquerade with real TCP and UDP traffic: from outside the node, from
//! 127.0.0.1 on the node, hairpin from the pod itself and from a neighbour, and pod traffic
//! leaving the cluster through masquerade.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;
use twill_netlink::netns::{run_in, Netns};
use twill_testkit::TestNetns;

/// A TCP server inside `ns` that answers every connection with the peer address it saw.
fn peer_reporter(ns: &TestNetns, addr: &str) {
    let netns = Netns::open(ns.path()).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = run_in(&netns, move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(peer.as_bytes());
        }
    });
}

/// Connects from inside `ns` and returns what the server said (the peer it saw).
fn ask(ns: &TestNetns, addr: &str) -> Result<String, String> {
    let netns = Netns::open(ns.path()).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    run_in(&netns, move || {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .unwrap()
}

fn udp_echo(ns: &TestNetns, addr: &str) {
    let netns = Netns::open(ns.path()).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let sock = run_in(&netns, move || UdpSocket::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
}

fn udp_ask(ns: &TestNetns, to: &str) -> Result<String, String> {
    let netns = Netns::open(ns.path()).unwrap();
    let to: SocketAddr = to.parse().unwrap();
    run_in(&netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(b"twill", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .unwrap()
}

#[test]
fn host_ports_hairpin_and_masquerade_with_real_traffic() {
    twill_testkit::require_root("hostports");
    host_ports_hairpin_and_masquerade(Node::new("hp"), "");
}

#[test]
fn l3_host_ports_hairpin_and_masquerade_with_real_traffic() {
    twill_testkit::require_root("hostports_l3");
    host_ports_hairpin_and_masquerade(Node::wired("hpl3", "l3"), "l3");
}

/// One scenario for every wiring: the same traffic must work the same way.
fn host_ports_hairpin_and_masquerade(node: Node, tag: &str) {
    let out = TestNetns::new(&format!("hpout{tag}"));
    // The node's uplink: 192.0.2.11 <-> an outside host 192.0.2.100 that has no route to pods.
    node.uplink(&out);

    let (p1, p2, p3) = (
        TestNetns::new(&format!("hp1{tag}")),
        TestNetns::new(&format!("hp2{tag}")),
        TestNetns::new(&format!("hp3{tag}")),
    );
    let mut conf = node.conf();
    conf["runtimeConfig"] = json!({"portMappings": [
        {"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"},
        {"hostPort": 30053, "containerPort": 5353, "protocol": "udp"},
        {"hostPort": 30081, "containerPort": 8080, "protocol": "tcp", "hostIP": "192.0.2.11"},
    ]});
    let r1 = node.cni("ADD", "web", &p1.path(), "eth0", &conf);
    assert!(r1.ok, "{} {}", r1.stdout, r1.stderr);
    let r2 = node.add("client", &p2);
    let (ip1, ip2) = (pod_ip(&r1.json), pod_ip(&r2));
    peer_reporter(&p1, "0.0.0.0:8080");
    udp_echo(&p1, "0.0.0.0:5353");
    peer_reporter(&out, "192.0.2.100:9000");

    // Outside -> node address -> pod: DNAT, and the pod sees the real client.
    assert_eq!(ask(&out, "192.0.2.11:30080"), Ok("192.0.2.100".into()));
    assert_eq!(
        ask(&out, "192.0.2.11:30081"),
        Ok("192.0.2.100".into()),
        "hostIP mapping"
    );
    assert_eq!(
        udp_ask(&out, "192.0.2.11:30053"),
        Ok("twill".into()),
        "UDP mapping"
    );
    // From the node itself via 127.0.0.1.
    assert!(
        ask(&node.ns, "127.0.0.1:30080").is_ok(),
        "localhost -> host port"
    );
    // Hairpin: the pod reaches itself, and a neighbour reaches it, through the host port.
    assert!(ask(&p1, "192.0.2.11:30080").is_ok(), "hairpin to itself");
    assert!(
        ask(&p2, "192.0.2.11:30080").is_ok(),
        "neighbour via host port"
    );
    // Pod to pod: no NAT, the server sees the pod's own address.
    assert_eq!(ask(&p2, &format!("{ip1}:8080")), Ok(ip2.clone()));
    // Pod -> outside: masqueraded to the node's address.
    assert_eq!(ask(&p2, "192.0.2.100:9000"), Ok("192.0.2.11".into()));

    // A host port already taken: error 102, and the failed ADD leaves nothing behind.
    let before = (node.veths().len(), node.records().len());
    let mut taken = node.conf();
    taken["runtimeConfig"] = json!({"portMappings": [{"hostPort": 30080, "containerPort": 80}]});
    let r3 = node.cni("ADD", "clash", &p3.path(), "eth0", &taken);
    assert!(!r3.ok);
    assert_eq!(r3.json["code"], 102, "{}", r3.stdout);
    assert!(
        r3.json["msg"].as_str().unwrap().contains("30080"),
        "{}",
        r3.stdout
    );
    assert_eq!(
        (node.veths().len(), node.records().len()),
        before,
        "failed ADD rolled back"
    );

    // DEL removes exactly that container's mappings.
    node.del("web", &p1, Some(&r1.json));
    assert!(
        ask(&out, "192.0.2.11:30080").is_err(),
        "mapping gone after DEL"
    );
    assert_eq!(
        ask(&p2, "192.0.2.100:9000"),
        Ok("192.0.2.11".into()),
        "the other pod still masquerades"
    );
    node.del("client", &p2, None);
    node.assert_clean("after DEL");
}

#[test]
fn ip_masq_false_leaves_pod_source_untouched() {
    twill_testkit::require_root("nomasq");
    ip_masq_false(Node::new("nm"), "");
}

#[test]
fn l3_ip_masq_false_leaves_pod_source_untouched() {
    twill_testkit::require_root("nomasq_l3");
    ip_masq_false(Node::wired("nml3", "l3"), "l3");
}

fn ip_masq_false(node: Node, tag: &str) {
    let out = TestNetns::new(&format!("nmout{tag}"));
    node.uplink(&out);
    out.exec(&["ip", "route", "add", "10.244.0.0/16", "via", "192.0.2.11"]);
    let pod = TestNetns::new(&format!("nmp{tag}"));
    let mut conf = node.conf();
    conf["ipMasq"] = false.into();
    let r = node.cni("ADD", "nm", &pod.path(), "eth0", &conf);
    assert!(r.ok, "{}", r.stdout);
    peer_reporter(&out, "192.0.2.100:9000");
    assert_eq!(ask(&pod, "192.0.2.100:9000"), Ok(pod_ip(&r.json)));
    let d = node.cni("DEL", "nm", &pod.path(), "eth0", &conf);
    assert!(d.ok, "{}", d.stdout);
    node.assert_clean("after DEL");
}
