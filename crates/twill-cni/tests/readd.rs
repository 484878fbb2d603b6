//! A runtime may ADD an attachment again right after its DEL (same container ID and
//! interface, so the same host veth name) while the DEL's detached reaper is still
//! deleting the old veth: the reaper must delete the old veth only, never the new one.
//!
//! Bounded: ROUNDS rounds of DEL + ADD, each followed by a short wait for the reaper.

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;
use twill_testkit::{require_root, TestNetns};

const ROUNDS: usize = 15;

#[test]
fn the_reaper_of_a_del_never_deletes_the_veth_of_the_next_add() {
    require_root("the_reaper_of_a_del_never_deletes_the_veth_of_the_next_add");
    let node = Node::new("readd");
    let pod = TestNetns::new("readdp");
    let mut result = node.add("c1", &pod);
    for round in 0..ROUNDS {
        node.del("c1", &pod, Some(&result));
        // Again at once: the old veth may still await its reaper.
        result = node.add("c1", &pod);
        // The reaper runs within milliseconds of its DEL: give it ample time to act on
        // whichever veth it would delete (a bounded wait, not a timing assertion).
        std::thread::sleep(Duration::from_millis(60));
        let veth = result["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let out = node.ns.exec(&["ip", "-j", "link", "show"]);
        let links: Value = serde_json::from_slice(&out.stdout).unwrap();
        let alive = links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ifname"] == veth.as_str());
        assert!(
            alive,
            "round {round}: the new ADD's veth {veth} was deleted"
        );
        let (up, _, _) = pod.try_exec(&["ip", "link", "show", "eth0"]);
        assert!(up, "round {round}: the pod lost its eth0");
    }
    node.del("c1", &pod, Some(&result));
    node.assert_clean("after the last DEL");
}
