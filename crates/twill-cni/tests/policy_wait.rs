//! No early packet: ADD puts the pod's interfaces in the pod interface group and, when the
//! node's policy table exists, waits (bounded) for the pod's dispatch entries; a timeout
//! fails the ADD with the cause and the fix, and leaves nothing behind.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use twill_policy::compile::{Ruleset, POD_GROUP};
use twill_policy::compile_diff::full_script;
use twill_testkit::TestNetns;

/// The interface group of `link` in the node.
fn group(node: &Node, link: &str) -> u64 {
    let out = node
        .ns
        .exec(&["ip", "-j", "-d", "link", "show", "dev", link]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    match &v[0]["group"] {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap(),
        other => panic!("no group for {link}: {other}"),
    }
}

fn load_empty_policy_table(node: &Node) {
    let script = full_script(&Ruleset::default());
    let path = node.data.path.join("policy.nft");
    std::fs::write(&path, script).unwrap();
    node.ns.exec(&["nft", "-f", path.to_str().unwrap()]);
}

#[test]
fn without_a_policy_table_add_marks_the_pod_interfaces_and_does_not_wait() {
    twill_testkit::require_root("policy_wait_without_table");
    for wiring in ["bridge", "l3"] {
        let node = Node::wired(&format!("pw{wiring}"), wiring);
        let out = TestNetns::new(&format!("pwo{wiring}"));
        node.uplink(&out);
        let pod = TestNetns::new(&format!("pwp{wiring}"));
        let start = Instant::now();
        let r = node.add("c1", &pod);
        assert!(start.elapsed() < Duration::from_secs(5));
        let veth = r["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["name"].as_str())
            .find(|n| n.starts_with("twl") && n.len() == 15)
            .unwrap()
            .to_string();
        assert_eq!(
            group(&node, &veth),
            u64::from(POD_GROUP),
            "{wiring}: host veth"
        );
        if wiring == "bridge" {
            assert_eq!(group(&node, "twl0"), u64::from(POD_GROUP), "the bridge");
        }
        node.del("c1", &pod, Some(&r));
        node.assert_clean(wiring);
    }
}

#[test]
fn with_a_policy_table_and_no_twilld_add_times_out_and_undoes_everything() {
    twill_testkit::require_root("policy_wait_times_out");
    for wiring in ["bridge", "l3"] {
        let node = Node::wired(&format!("pt{wiring}"), wiring);
        let out = TestNetns::new(&format!("pto{wiring}"));
        node.uplink(&out);
        load_empty_policy_table(&node);
        let pod = TestNetns::new(&format!("ptp{wiring}"));
        let mut conf = node.conf();
        conf["policyWaitSeconds"] = 1.into();
        let start = Instant::now();
        let r = node.cni("ADD", "c1", &pod.path(), "eth0", &conf);
        let took = start.elapsed();
        assert!(!r.ok, "{wiring}: ADD must fail: {}", r.stdout);
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(6),
            "{took:?}"
        );
        let msg = r.json["msg"].as_str().unwrap_or_default();
        let details = r.json["details"].as_str().unwrap_or_default();
        assert!(
            msg.contains("table inet twill-policy") && msg.contains("dispatch"),
            "{}",
            r.stdout
        );
        assert!(
            details.contains("--policy true") && details.contains("policyWaitSeconds"),
            "{}",
            r.stdout
        );
        assert_eq!(r.json["code"], 11, "try again later: {}", r.stdout);
        node.assert_clean(&format!("{wiring}: after the failed ADD"));
        let (ok, links, _) = pod.try_exec(&["ip", "-o", "link", "show", "eth0"]);
        assert!(!ok, "{wiring}: the pod's interface is gone: {links}");
    }
}
