//! Pure-L3 wiring (`"podWiring": "l3"`, Calico's) on real namespaces with real packets:
//! the shape of the result, what the kernel holds on both sides, pods reaching each other
//! through the host and the outside through masquerade, CHECK, DEL, GC, the node checks
//! ADD makes, and anti-spoofing with the kernel's drop counter.

mod common;
use common::*;
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use twill_netlink::netns::{run_in, Netns};
use twill_testkit::TestNetns;

fn text(ns: &TestNetns, args: &[&str]) -> String {
    String::from_utf8_lossy(&ns.exec(args).stdout).into_owned()
}

fn sysctl(ns: &TestNetns, key: &str) -> String {
    text(ns, &["sysctl", "-n", key]).trim().to_string()
}

#[test]
fn l3_add_check_del_gc_with_real_traffic() {
    twill_testkit::require_root("l3_add_check_del_gc");
    let node = Node::wired("l3", "l3");
    let out = TestNetns::new("l3out");
    node.uplink(&out);
    let (p1, p2) = (TestNetns::new("l3p1"), TestNetns::new("l3p2"));
    let r1 = node.add("c1", &p1);
    let r2 = node.add("c2", &p2);
    let (ip1, ip2) = (pod_ip(&r1), pod_ip(&r2));
    assert_ne!(ip1, ip2);

    // The result: host veth and pod side, no bridge; the address points at the pod side.
    let ifaces = r1["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 2, "{r1}");
    let veth1 = ifaces[0]["name"].as_str().unwrap().to_string();
    assert!(veth1.starts_with("twl") && veth1.len() == 15, "{r1}");
    assert_eq!(ifaces[0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert!(ifaces[0].get("sandbox").is_none_or(|s| s == ""), "{r1}");
    assert_eq!(ifaces[1]["name"], "eth0");
    assert_eq!(ifaces[1]["sandbox"], p1.path());
    assert_eq!(r1["ips"][0]["interface"], 1);
    assert_eq!(r1["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r1["ips"][0]["address"], format!("{ip1}/32"));
    assert_eq!(
        r1["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );

    // The pod: a /32, a link route to 169.254.1.1, the default route via it.
    let addrs = text(&p1, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip1}/32 ")), "{addrs}");
    let routes = text(&p1, &["ip", "-4", "route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );
    // The node: no bridge, the veth on no master, a /32 route with Twill's protocol.
    assert!(
        !node.links().contains(&"twl0".to_string()),
        "{:?}",
        node.links()
    );
    let link = text(&node.ns, &["ip", "-d", "link", "show", &veth1]);
    assert!(!link.contains("master"), "{link}");
    assert!(link.contains("link/ether ee:ee:ee:ee:ee:ee"), "{link}");
    let ours = node.twill_routes();
    assert!(
        ours.contains(&format!("{ip1} dev {veth1} scope link ")),
        "{ours:?}"
    );
    assert_eq!(ours.len(), 2, "{ours:?}");
    for (key, want) in [
        (format!("net.ipv4.conf.{veth1}.proxy_arp"), "1"),
        (format!("net.ipv4.neigh.{veth1}.proxy_delay"), "0"),
        (format!("net.ipv4.conf.{veth1}.forwarding"), "1"),
        (format!("net.ipv4.conf.{veth1}.rp_filter"), "1"),
        ("net.ipv4.ip_forward".to_string(), "1"),
    ] {
        assert_eq!(sysctl(&node.ns, &key), want, "{key}");
    }

    // Real packets: pod -> pod through the host, node -> pod, pod -> node, pod -> outside
    // (masqueraded: the outside has no route to pods).
    assert!(ping(&p1, &ip2), "pod to pod");
    assert!(ping(&node.ns, &ip1), "node to pod");
    assert!(ping(&p2, NODE_IP), "pod to node");
    assert!(ping(&p1, OUTSIDE_IP), "pod to outside");
    // Proxy ARP answered for 169.254.1.1 with the host veth's fixed MAC.
    let neigh = text(&p1, &["ip", "neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("lladdr ee:ee:ee:ee:ee:ee"), "{neigh}");

    // CHECK passes on a healthy pod, and fails once the node's /32 route is gone.
    let mut conf = node.conf();
    conf["prevResult"] = r1.clone();
    let r = node.cni("CHECK", "c1", &p1.path(), "eth0", &conf);
    assert!(r.ok, "CHECK: {}", r.stdout);
    node.ns.exec(&["ip", "route", "del", &ip1, "dev", &veth1]);
    let r = node.cni("CHECK", "c1", &p1.path(), "eth0", &conf);
    assert_eq!(r.json["code"], 104, "{}", r.stdout);
    assert!(
        r.json["msg"]
            .as_str()
            .unwrap()
            .contains(&format!("{ip1}/32")),
        "{}",
        r.stdout
    );
    // ... and when the pod lost its link route to 169.254.1.1.
    let mut conf2 = node.conf();
    conf2["prevResult"] = r2.clone();
    assert!(node.cni("CHECK", "c2", &p2.path(), "eth0", &conf2).ok);
    p2.exec(&["ip", "route", "flush", "dev", "eth0"]);
    let r = node.cni("CHECK", "c2", &p2.path(), "eth0", &conf2);
    assert_eq!(r.json["code"], 104, "{}", r.stdout);
    assert!(
        r.json["msg"].as_str().unwrap().contains("169.254.1.1"),
        "{}",
        r.stdout
    );

    // DEL removes the pod (and its route); a second DEL is fine.
    node.del("c1", &p1, Some(&r1));
    node.del("c1", &p1, Some(&r1));
    node.wait_reaped();
    assert!(!node.veths().contains(&veth1));
    assert_eq!(node.twill_routes().len(), 1, "{:?}", node.twill_routes());

    // GC with no valid attachment removes c2's veth, route and address.
    let mut gc = node.conf();
    gc["cni.dev/valid-attachments"] = json!([]);
    let r = node.cni_raw(
        "GC",
        &[("CNI_PATH", "/opt/cni/bin")],
        gc.to_string().as_bytes(),
    );
    assert!(r.ok, "GC: {} {}", r.stdout, r.stderr);
    node.assert_clean("after DEL and GC");
}

#[test]
fn l3_refuses_a_node_it_cannot_serve_and_leaves_nothing() {
    twill_testkit::require_root("l3_refuses_a_node");
    let node = Node::wired("l3bad", "l3");
    let pod = TestNetns::new("l3badp");
    // No route to 169.254.1.1: proxy ARP would never answer.
    let r = node.cni("ADD", "c1", &pod.path(), "eth0", &node.conf());
    assert!(!r.ok);
    assert_eq!(r.json["code"], 103, "{}", r.stdout);
    assert!(
        r.json["msg"]
            .as_str()
            .unwrap()
            .contains("no route to 169.254.1.1"),
        "{}",
        r.stdout
    );
    assert!(
        r.json["details"]
            .as_str()
            .unwrap()
            .contains("default route"),
        "{}",
        r.stdout
    );
    node.assert_clean("after a refused ADD");
    assert_eq!(link_names(&pod), ["lo"], "nothing in the pod");

    // Loose reverse-path filtering for all interfaces would defeat anti-spoofing.
    let out = TestNetns::new("l3badout");
    node.uplink(&out);
    node.ns
        .exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2"]);
    let r = node.cni("ADD", "c1", &pod.path(), "eth0", &node.conf());
    assert_eq!(r.json["code"], 103, "{}", r.stdout);
    assert!(
        r.json["msg"]
            .as_str()
            .unwrap()
            .contains("net.ipv4.conf.all.rp_filter is 2"),
        "{}",
        r.stdout
    );
    node.assert_clean("after a refused ADD");
    node.ns
        .exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);

    // A route via another gateway cannot work in l3: the config field is named.
    let mut conf = node.conf();
    conf["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]);
    let r = node.cni("ADD", "c1", &pod.path(), "eth0", &conf);
    assert_eq!(r.json["code"], 7, "{}", r.stdout);
    assert!(
        r.json["msg"]
            .as_str()
            .unwrap()
            .contains("ipam.routes[0].gw"),
        "{}",
        r.stdout
    );
    node.assert_clean("after a refused ADD");

    // The same node serves an l3 pod once it is fit.
    let ok = node.add("c1", &pod);
    assert!(ping(&node.ns, &pod_ip(&ok)));
    node.del("c1", &pod, Some(&ok));
    node.assert_clean("after DEL");
}

/// The TcpExt IPReversePathFilter counter of a namespace: packets the kernel dropped
/// because their source failed the reverse-path check.
fn rp_filter_drops(ns: &TestNetns) -> u64 {
    let out = text(ns, &["nstat", "-asz", "TcpExtIPReversePathFilter"]);
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("TcpExtIPReversePathFilter")).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no IPReversePathFilter counter in {out:?}"))
}

/// A UDP listener inside `ns`; returns what it received (sources) within `wait`.
fn listen(ns: &TestNetns, addr: &str) -> UdpSocket {
    let netns = Netns::open(ns.path()).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let s = run_in(&netns, move || UdpSocket::bind(addr))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn received(s: &UdpSocket) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

/// Sends one datagram from inside `ns`, bound to source `from`.
fn send_from(ns: &TestNetns, from: &str, to: &str, payload: &str) {
    let netns = Netns::open(ns.path()).unwrap();
    let (from, to): (SocketAddr, SocketAddr) =
        (format!("{from}:0").parse().unwrap(), to.parse().unwrap());
    let payload = payload.to_string();
    run_in(&netns, move || {
        let s = UdpSocket::bind(from).unwrap();
        s.send_to(payload.as_bytes(), to).unwrap();
    })
    .unwrap();
}

#[test]
fn l3_pods_cannot_send_from_an_address_not_their_own() {
    twill_testkit::require_root("l3_anti_spoofing");
    let node = Node::wired("l3sp", "l3");
    let out = TestNetns::new("l3spout");
    node.uplink(&out);
    let (p1, p2, p3) = (
        TestNetns::new("l3sp1"),
        TestNetns::new("l3sp2"),
        TestNetns::new("l3sp3"),
    );
    let r1 = node.add("c1", &p1);
    let r2 = node.add("c2", &p2);
    let r3 = node.add("c3", &p3);
    let (ip1, ip2, ip3) = (pod_ip(&r1), pod_ip(&r2), pod_ip(&r3));
    let to_pod = listen(&p2, &format!("{ip2}:9999"));
    let to_out = listen(&out, &format!("{OUTSIDE_IP}:9999"));

    // The pod's own address passes: the listeners work and the path is up.
    send_from(&p1, &ip1, &format!("{ip2}:9999"), "own");
    send_from(&p1, &ip1, &format!("{OUTSIDE_IP}:9999"), "own");
    assert_eq!(received(&to_pod), ["own"]);
    assert_eq!(received(&to_out), ["own"]);

    // Forged sources, added as second addresses inside the pod: a third pod's address, a
    // free one of the block, one outside the cluster.
    let forged = [ip3.as_str(), "10.244.1.200", "198.51.100.7"];
    for f in forged {
        p1.exec(&["ip", "addr", "add", &format!("{f}/32"), "dev", "eth0"]);
    }
    let before = rp_filter_drops(&node.ns);
    for f in forged {
        send_from(&p1, f, &format!("{ip2}:9999"), f);
        send_from(&p1, f, &format!("{OUTSIDE_IP}:9999"), f);
    }
    assert_eq!(
        received(&to_pod),
        Vec::<String>::new(),
        "forged reached the pod"
    );
    assert_eq!(
        received(&to_out),
        Vec::<String>::new(),
        "forged reached the outside"
    );
    let dropped = rp_filter_drops(&node.ns) - before;
    assert_eq!(
        dropped,
        2 * forged.len() as u64,
        "the kernel counted each drop"
    );

    // Still fine from its own address afterwards.
    send_from(&p1, &ip1, &format!("{ip2}:9999"), "own again");
    assert_eq!(received(&to_pod), ["own again"]);

    node.del("c1", &p1, Some(&r1));
    node.del("c2", &p2, Some(&r2));
    node.del("c3", &p3, Some(&r3));
    node.assert_clean("after DEL");
}
