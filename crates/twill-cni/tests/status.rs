//! STATUS (CNI 1.1) answers code 50 "plugin not available" whenever an ADD could not
//! succeed now, and succeeds again once the cause is gone: each case checks both, so a
//! STATUS that always fails passes none of them, and one that always succeeds fails all.

mod common;
use common::*;
use serde_json::{json, Value};
use twill_testkit::{require_root, TestNetns};

/// STATUS with `conf`; the reply.
fn status(node: &Node, conf: &Value) -> Reply {
    node.cni_raw("STATUS", &[], conf.to_string().as_bytes())
}

/// STATUS with PATH set to `path`.
fn status_with_path(node: &Node, conf: &Value, path: &str) -> Reply {
    node.run_plugin(
        &[("CNI_COMMAND", Some("STATUS")), ("PATH", Some(path))],
        conf.to_string().as_bytes(),
    )
}

fn assert_unavailable(r: &Reply, needle: &str, context: &str) {
    assert!(!r.ok, "{context}: STATUS succeeded: {}", r.stdout);
    assert_eq!(r.json["code"], 50, "{context}: {}", r.stdout);
    let msg = r.json["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(needle),
        "{context}: the message should name {needle:?}: {}",
        r.stdout
    );
}

fn assert_available(r: &Reply, context: &str) {
    assert!(r.ok, "{context}: STATUS failed: {}", r.stdout);
    assert!(r.stdout.trim().is_empty(), "{context}: {}", r.stdout);
}

fn handoff_conf(node: &Node, file: &std::path::Path) -> Value {
    let mut c = node.conf();
    c.as_object_mut().unwrap().remove("clusterCIDR");
    c["ipam"] =
        json!({"type": "twill", "handoffFile": file, "dataDir": node.data.path.join("ipam")});
    c
}

fn write_handoff(file: &std::path::Path, blocks: &[&str]) {
    std::fs::write(
        file,
        json!({"node": "n1", "clusterCIDR": "10.244.0.0/16", "blocks": blocks, "mtu": 1450, "ipMasq": true})
            .to_string(),
    )
    .unwrap();
}

#[test]
fn status_is_not_available_without_a_hand_off_or_its_blocks() {
    require_root("status_is_not_available_without_a_hand_off_or_its_blocks");
    let node = Node::new("stho");
    let file = node.data.path.join("node.json");
    let c = handoff_conf(&node, &file);

    assert_unavailable(&status(&node, &c), "node.json", "no hand-off file yet");
    write_handoff(&file, &[]);
    assert_unavailable(&status(&node, &c), "no blocks", "a hand-off with no blocks");
    write_handoff(&file, &["10.244.7.0/26"]);
    assert_available(&status(&node, &c), "a hand-off with a block");
}

#[test]
fn status_is_not_available_when_every_address_is_taken() {
    require_root("status_is_not_available_when_every_address_is_taken");
    let node = Node::new("stfull");
    let mut c = node.conf();
    c["ipam"]["subnet"] = json!("10.244.1.0/29");
    c["ipam"]["rangeStart"] = json!("10.244.1.2");
    c["ipam"]["rangeEnd"] = json!("10.244.1.3");
    let pods = [TestNetns::new("stfa"), TestNetns::new("stfb")];
    assert_available(&status(&node, &c), "an empty range");
    let mut results = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let r = node.cni("ADD", &format!("f{i}"), &pod.path(), "eth0", &c);
        assert!(r.ok, "ADD {i}: {}", r.stdout);
        results.push(r.json);
    }
    assert_unavailable(&status(&node, &c), "in use", "both addresses taken");
    let d = node.cni("DEL", "f0", &pods[0].path(), "eth0", &c);
    assert!(d.ok, "{}", d.stdout);
    assert_available(&status(&node, &c), "one address free again");
    let d = node.cni("DEL", "f1", &pods[1].path(), "eth0", &c);
    assert!(d.ok, "{}", d.stdout);
    node.assert_clean("after the DELs");
}

#[test]
fn status_is_not_available_when_the_data_dir_is_unusable() {
    require_root("status_is_not_available_when_the_data_dir_is_unusable");
    let node = Node::new("stdata");
    // A regular file where the data dir should be: no directory can be made in it.
    let blocker = node.data.path.join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let mut c = node.conf();
    c["ipam"]["dataDir"] = json!(blocker.join("ipam"));
    assert_unavailable(&status(&node, &c), "data dir", "data dir under a file");
    std::fs::remove_file(&blocker).unwrap();
    assert_available(&status(&node, &c), "data dir usable again");
}

#[test]
fn status_is_not_available_when_nft_is_not_on_path_and_add_agrees() {
    require_root("status_is_not_available_when_nft_is_not_on_path_and_add_agrees");
    let node = Node::new("stnft");
    let c = node.conf();
    // A PATH with everything but nft: a directory holding only `ip`.
    let bin = node.data.path.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink("/usr/bin/ip", bin.join("ip"))
        .or_else(|_| std::os::unix::fs::symlink("/sbin/ip", bin.join("ip")))
        .unwrap();
    let path = bin.display().to_string();
    assert_unavailable(
        &status_with_path(&node, &c, &path),
        "nft",
        "nft not on PATH",
    );
    // What STATUS promised: the ADD fails the same way, and leaves nothing behind.
    let pod = TestNetns::new("stnftp");
    let r = node.run_plugin(
        &[
            ("CNI_COMMAND", Some("ADD")),
            ("PATH", Some(&path)),
            ("CNI_CONTAINERID", Some("n1")),
            ("CNI_NETNS", Some(&pod.path())),
            ("CNI_IFNAME", Some("eth0")),
        ],
        c.to_string().as_bytes(),
    );
    assert!(!r.ok, "ADD without nft succeeded: {}", r.stdout);
    assert!(
        r.json["msg"].as_str().unwrap_or_default().contains("nft"),
        "{}",
        r.stdout
    );
    node.assert_clean("after the ADD without nft");
    assert_available(
        &status_with_path(&node, &c, &format!("{path}:/usr/sbin:/usr/bin:/sbin:/bin")),
        "nft on PATH again",
    );
}
