//! ADD / CHECK / DEL on real namespaces, with real packets.

mod common;
use common::*;
use twill_testkit::TestNetns;

#[test]
fn add_wires_a_pod_that_reaches_its_gateway_and_neighbour() {
    twill_testkit::require_root("add_wires_a_pod");
    let node = Node::new("adddel");
    let (p1, p2) = (TestNetns::new("p1"), TestNetns::new("p2"));
    let r1 = node.add("c1", &p1);
    let r2 = node.add("c2", &p2);

    // Spec-exact shape: bridge, host veth, pod interface; the address points at the pod's.
    assert_eq!(r1["cniVersion"], "1.1.0");
    assert_eq!(r1["interfaces"][0]["name"], "twl0");
    assert_eq!(r1["interfaces"][2]["name"], "eth0");
    assert_eq!(r1["interfaces"][2]["sandbox"], p1.path());
    assert_eq!(r1["ips"][0]["interface"], 2);
    assert_eq!(r1["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(r1["routes"][0]["dst"], "0.0.0.0/0");
    let (ip1, ip2) = (pod_ip(&r1), pod_ip(&r2));
    assert_ne!(ip1, ip2);

    // The kernel agrees with the result.
    let out = p1.exec(&["ip", "-j", "addr", "show", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&ip1), "{text}");
    let routes = String::from_utf8_lossy(&p1.exec(&["ip", "route"]).stdout).into_owned();
    assert!(routes.contains("default via 10.244.1.1"), "{routes}");
    let host_veth = r1["interfaces"][1]["name"].as_str().unwrap();
    let link = String::from_utf8_lossy(
        &node
            .ns
            .exec(&["ip", "-d", "link", "show", host_veth])
            .stdout,
    )
    .into_owned();
    assert!(link.contains("master twl0"), "{link}");
    assert!(link.contains("hairpin on"), "{link}");

    // Real packets: pod -> gateway, pod -> pod, node -> pod.
    assert!(ping(&p1, "10.244.1.1"));
    assert!(ping(&p1, &ip2));
    assert!(ping(&node.ns, &ip2));

    // CHECK passes on a healthy pod, fails once its route is gone.
    let mut conf = node.conf();
    conf["prevResult"] = r1.clone();
    let r = node.cni("CHECK", "c1", &p1.path(), "eth0", &conf);
    assert!(r.ok, "CHECK: {}", r.stdout);
    p1.exec(&["ip", "route", "del", "default"]);
    let r = node.cni("CHECK", "c1", &p1.path(), "eth0", &conf);
    assert!(!r.ok);
    assert_eq!(r.json["code"], 104, "{}", r.stdout);
    assert!(
        r.json["msg"].as_str().unwrap().contains("route 0.0.0.0/0"),
        "{}",
        r.stdout
    );

    // DEL removes everything; a second DEL is fine (idempotent).
    node.del("c1", &p1, Some(&r1));
    node.del("c1", &p1, Some(&r1));
    // The gateway's MAC must not move when a port leaves the bridge: the other pods'
    // ARP entries for it would go stale and their traffic stall.
    let bridge_mac = |n: &Node| {
        let out = n.ns.exec(&["ip", "-j", "link", "show", "twl0"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    };
    assert_eq!(
        bridge_mac(&node),
        r2["interfaces"][0]["mac"].as_str().unwrap()
    );
    assert!(
        ping(&p2, "10.244.1.1"),
        "the remaining pod still reaches its gateway"
    );
    node.del("c2", &p2, None);
    node.assert_clean("after DEL");
    assert!(!ping(&node.ns, &ip2));
}

#[test]
fn chained_after_a_previous_plugin_appends_to_prev_result() {
    twill_testkit::require_root("chained");
    let node = Node::new("chain");
    let pod = TestNetns::new("pc");
    let mut conf = node.conf();
    conf["prevResult"] = serde_json::json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "lo", "sandbox": pod.path()}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
    });
    let r = node.cni("ADD", "cc", &pod.path(), "eth0", &conf);
    assert!(r.ok, "{}", r.stdout);
    assert_eq!(r.json["interfaces"][0]["name"], "lo");
    assert_eq!(r.json["interfaces"][3]["name"], "eth0");
    assert_eq!(r.json["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(r.json["ips"][1]["interface"], 3);
    node.del("cc", &pod, Some(&r.json));
    node.assert_clean("after chained DEL");
}

#[test]
fn older_cni_versions_get_their_result_shape() {
    twill_testkit::require_root("versions");
    let node = Node::new("ver");
    for (i, v) in ["0.3.1", "0.4.0", "1.0.0"].iter().enumerate() {
        let pod = TestNetns::new("pv");
        let mut conf = node.conf();
        conf["cniVersion"] = (*v).into();
        let cid = format!("v{i}");
        let r = node.cni("ADD", &cid, &pod.path(), "eth0", &conf);
        assert!(r.ok, "{v}: {}", r.stdout);
        assert_eq!(r.json["cniVersion"], *v);
        assert_eq!(
            r.json["ips"][0].get("version").is_some(),
            *v != "1.0.0",
            "{v}: {}",
            r.stdout
        );
        let d = node.cni("DEL", &cid, &pod.path(), "eth0", &conf);
        assert!(d.ok, "{}", d.stdout);
    }
    node.assert_clean("after version DELs");
}

#[test]
fn version_status_and_gc() {
    twill_testkit::require_root("status_gc");
    let node = Node::new("gc");
    let v = node.cni_raw("VERSION", &[], b"{\"cniVersion\":\"1.0.0\"}");
    assert!(v.ok);
    assert!(v.json["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "1.1.0"));

    let s = node.cni_raw("STATUS", &[], node.conf().to_string().as_bytes());
    assert!(s.ok, "STATUS: {}", s.stdout);

    let (a, b) = (TestNetns::new("ga"), TestNetns::new("gb"));
    node.add("keep", &a);
    node.add("gone", &b);
    let mut conf = node.conf();
    conf["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "keep", "ifname": "eth0"}]);
    let g = node.cni_raw("GC", &[], conf.to_string().as_bytes());
    assert!(g.ok, "GC: {}", g.stdout);
    assert_eq!(node.records().len(), 1, "GC kept only the valid attachment");
    assert_eq!(node.veths().len(), 1, "GC removed the stale veth");
    node.del("keep", &a, None);
    node.assert_clean("after GC and DEL");
}

#[test]
fn del_cuts_the_pod_off_at_once_and_a_re_add_right_after_works() {
    twill_testkit::require_root("readd");
    let node = Node::new("readd");
    let (p1, p2) = (TestNetns::new("ra1"), TestNetns::new("ra2"));
    let r1 = node.add("c1", &p1);
    node.add("c2", &p2);
    let ip1 = pod_ip(&r1);
    assert!(ping(&p2, &ip1));
    node.del("c1", &p1, Some(&r1));
    // When DEL returns the pod is unreachable, even if its veth still awaits the reaper.
    assert!(!ping(&p2, &ip1), "pod still reachable after DEL");
    // The runtime may ADD the same attachment again at once (same names): it works.
    let again = node.add("c1", &p1);
    assert!(ping(&p2, &pod_ip(&again)), "re-ADDed pod reachable");
    node.del("c1", &p1, Some(&again));
    node.del("c2", &p2, None);
    node.assert_clean("after DELs");
}
