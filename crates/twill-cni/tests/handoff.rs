//! twill-cni reads the node's blocks from twilld's hand-off file when the config names no
//! subnet: several blocks, the cluster CIDR, MTU and masquerade setting from the agent.

mod common;
use common::*;
use serde_json::json;
use twill_testkit::TestNetns;

fn conf(node: &Node, handoff: &std::path::Path) -> serde_json::Value {
    let mut c = node.conf();
    c.as_object_mut().unwrap().remove("clusterCIDR");
    c["ipam"] =
        json!({"type": "twill", "handoffFile": handoff, "dataDir": node.data.path.join("ipam")});
    c
}

#[test]
fn pods_get_addresses_from_the_agents_blocks() {
    twill_testkit::require_root("handoff");
    let node = Node::new("ho");
    let file = node.data.path.join("node.json");
    let c = conf(&node, &file);
    let pod = TestNetns::new("hop");

    // No hand-off yet: try again later (11), naming the file, and nothing is left behind.
    let r = node.cni("ADD", "early", &pod.path(), "eth0", &c);
    assert_eq!(r.json["code"], 11, "{}", r.stdout);
    assert!(
        r.json["msg"].as_str().unwrap().contains("node.json"),
        "{}",
        r.stdout
    );
    node.assert_clean("after ADD without hand-off");

    // Two /30 blocks: one address each (the first is the gateway).
    std::fs::write(
        &file,
        json!({"node": "n1", "clusterCIDR": "10.244.0.0/16", "blocks": ["10.244.7.0/30", "10.244.9.0/30"], "mtu": 1400, "ipMasq": true}).to_string(),
    )
    .unwrap();
    let pods: Vec<TestNetns> = (0..3).map(|_| TestNetns::new("hop")).collect();
    let a = node.cni("ADD", "a", &pods[0].path(), "eth0", &c);
    let b = node.cni("ADD", "b", &pods[1].path(), "eth0", &c);
    assert!(a.ok && b.ok, "{} {}", a.stdout, b.stdout);
    let mut ips = vec![pod_ip(&a.json), pod_ip(&b.json)];
    ips.sort();
    assert_eq!(ips, ["10.244.7.2", "10.244.9.2"]);
    assert_eq!(
        a.json["interfaces"][2]["mtu"], 1400,
        "MTU from the hand-off"
    );
    // Each pod reaches its own block's gateway and the other pod across blocks.
    assert!(ping(&pods[0], &pod_ip(&b.json)));
    assert!(ping(&pods[1], &pod_ip(&a.json)));

    // Blocks full: try again later, since twilld claims another block.
    let full = node.cni("ADD", "c", &pods[2].path(), "eth0", &c);
    assert_eq!(full.json["code"], 11, "{}", full.stdout);
    assert!(
        full.json["details"]
            .as_str()
            .unwrap_or("")
            .contains("twilld"),
        "{}",
        full.stdout
    );

    for (cid, p) in [("a", &pods[0]), ("b", &pods[1])] {
        let d = node.cni("DEL", cid, &p.path(), "eth0", &c);
        assert!(d.ok, "{}", d.stdout);
    }
    node.assert_clean("after DEL");
}

#[test]
fn pod_wiring_comes_from_the_hand_off_unless_the_config_names_one() {
    twill_testkit::require_root("handoff_wiring");
    let node = Node::new("how");
    let out = TestNetns::new("howout");
    node.uplink(&out);
    let file = node.data.path.join("node.json");
    std::fs::write(
        &file,
        json!({"node": "n1", "clusterCIDR": "10.244.0.0/16", "blocks": ["10.244.7.0/30", "10.244.9.0/30"],
               "mtu": 1400, "ipMasq": true, "podWiring": "l3"})
        .to_string(),
    )
    .unwrap();
    let c = conf(&node, &file);
    assert!(c.get("podWiring").is_none());
    let pods: Vec<TestNetns> = (0..3).map(|_| TestNetns::new("howp")).collect();

    // No podWiring in the config: the hand-off's l3, in both blocks.
    let a = node.cni("ADD", "a", &pods[0].path(), "eth0", &c);
    let b = node.cni("ADD", "b", &pods[1].path(), "eth0", &c);
    assert!(a.ok && b.ok, "{} {}", a.stdout, b.stdout);
    for r in [&a, &b] {
        assert_eq!(
            r.json["interfaces"].as_array().unwrap().len(),
            2,
            "{}",
            r.stdout
        );
        assert_eq!(r.json["ips"][0]["gateway"], "169.254.1.1");
        assert!(r.json["ips"][0]["address"]
            .as_str()
            .unwrap()
            .ends_with("/32"));
        assert_eq!(
            r.json["interfaces"][1]["mtu"], 1400,
            "MTU from the hand-off"
        );
    }
    assert!(
        ping(&pods[0], &pod_ip(&b.json)),
        "across blocks, through the host"
    );
    assert!(ping(&pods[1], OUTSIDE_IP), "masqueraded out");
    // CHECK knows the pod was wired l3 although its config does not say so.
    let mut check = c.clone();
    check["prevResult"] = a.json.clone();
    let r = node.cni("CHECK", "a", &pods[0].path(), "eth0", &check);
    assert!(r.ok, "CHECK: {}", r.stdout);

    // A config that names the wiring wins over the hand-off.
    let mut bridged = c.clone();
    bridged["podWiring"] = json!("bridge");
    let d = node.cni("DEL", "b", &pods[1].path(), "eth0", &c);
    assert!(d.ok, "{}", d.stdout);
    let r = node.cni("ADD", "c", &pods[2].path(), "eth0", &bridged);
    assert!(r.ok, "{}", r.stdout);
    assert_eq!(r.json["interfaces"][0]["name"], "twl0", "{}", r.stdout);
    assert_eq!(r.json["interfaces"][2]["name"], "eth0");

    for (cid, p, conf) in [("a", &pods[0], &c), ("c", &pods[2], &bridged)] {
        let d = node.cni("DEL", cid, &p.path(), "eth0", conf);
        assert!(d.ok, "{}", d.stdout);
    }
    node.assert_clean("after DEL");
}
