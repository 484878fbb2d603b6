//! A runtime may ADD an attachment again right after its DEL (same container ID and
//! interface, so the same host veth name) while the DEL's detached reaper is still
//! deleting the old veth: the reaper must delete the old veth only, never the new one.
//!
//! A runtime may also ADD a new container ID in the same pod namespace right after the old
//! one's DEL: the pod's eth0 may still be the old veth's, awaiting its reaper, and the ADD
//! must replace it, but never an eth0 that is not such a leftover.
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

#[test]
fn a_new_container_in_the_pod_of_a_deleted_one_gets_eth0_at_once() {
    require_root("a_new_container_in_the_pod_of_a_deleted_one_gets_eth0_at_once");
    for wiring in ["bridge", "l3"] {
        let node = Node::wired(&format!("readdn{wiring}"), wiring);
        let pod = TestNetns::new(&format!("readdnp{wiring}"));
        // l3 pods' proxy ARP needs the node to route their gateway somewhere.
        let outside = TestNetns::new(&format!("readdno{wiring}"));
        node.uplink(&outside);
        let mut result = node.add("c0", &pod);
        for round in 1..=ROUNDS {
            node.del(&format!("c{}", round - 1), &pod, Some(&result));
            // At once, with a new container ID: the old eth0 may still await its reaper.
            result = node.add(&format!("c{round}"), &pod);
            assert!(
                ping(&node.ns, &pod_ip(&result)),
                "{wiring}, round {round}: the new eth0 does not answer"
            );
        }
        node.del(&format!("c{ROUNDS}"), &pod, Some(&result));
        node.wait_reaped();
        node.assert_clean(&format!("{wiring}: after the last DEL"));
    }
}

#[test]
fn a_leftover_of_del_is_replaced_and_an_eth0_of_someone_else_is_refused() {
    require_root("a_leftover_of_del_is_replaced_and_an_eth0_of_someone_else_is_refused");
    let node = Node::new("readdl");
    let pod = TestNetns::new("readdlp");
    // What DEL leaves for its reaper, made by hand so the window cannot close first: a
    // veth whose host end has twill-cni's name shape and is down.
    let veth = |host: &str| {
        twill_testkit::sh(&[
            "ip",
            "-n",
            &node.ns.name,
            "link",
            "add",
            host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.name,
        ])
    };
    veth("twl00000000dead");
    let result = node.add("c1", &pod);
    assert!(
        !node.links().iter().any(|l| l == "twl00000000dead"),
        "the leftover veth is still there: {:?}",
        node.links()
    );
    assert!(
        ping(&node.ns, &pod_ip(&result)),
        "the new eth0 does not answer"
    );
    node.del("c1", &pod, Some(&result));
    node.wait_reaped();
    node.assert_clean("after DEL of the pod that replaced a leftover");

    // An eth0 whose peer is not named like a pod veth is the operator's: refused, kept.
    veth("twlop0");
    let r = node.cni("ADD", "c2", &pod.path(), "eth0", &node.conf());
    assert!(
        !r.ok,
        "ADD over someone else's eth0 succeeded: {}",
        r.stdout
    );
    assert_eq!(r.json["code"], 103, "{}", r.stdout);
    assert!(
        r.json["msg"]
            .as_str()
            .unwrap()
            .contains("eth0 already exists"),
        "{}",
        r.stdout
    );
    assert!(
        node.links().iter().any(|l| l == "twlop0"),
        "the operator's veth was deleted"
    );
    twill_testkit::sh(&["ip", "-n", &node.ns.name, "link", "del", "twlop0"]);
    node.assert_clean("after a refused ADD");
}
