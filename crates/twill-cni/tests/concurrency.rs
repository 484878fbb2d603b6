//! Many twill-cni processes at once, as a runtime starting or stopping a burst of pods runs
//! them: every ADD gets its own address, veth and nft entry, every DEL removes exactly its
//! own, and nothing is lost or left behind when they race.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Barrier;
use twill_testkit::TestNetns;

const GATEWAY: &str = "10.244.1.1";

/// Pod namespaces, made in parallel (each `ip netns add` takes a few ms).
fn pods(n: usize, tag: &str) -> Vec<TestNetns> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n).map(|_| s.spawn(|| TestNetns::new(tag))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// One plugin run per job, all released together by a barrier; replies in job order.
fn race(node: &Node, jobs: &[(&str, String, &TestNetns, Value)]) -> Vec<Reply> {
    let start = Barrier::new(jobs.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(command, cid, pod, conf)| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    node.cni(command, cid, &pod.path(), "eth0", conf)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn masq_elements(node: &Node) -> BTreeSet<String> {
    node.nft_elements()
        .into_iter()
        .filter(|e| e.starts_with("masq_pods"))
        .collect()
}

/// Every pod answers: each reaches `first_hop` (the gateway, or in l3, where no interface
/// holds 169.254.1.1, the node), and the first reaches all the others.
fn assert_reachable(pods: &[&TestNetns], ips: &[String], first_hop: &str) {
    for (pod, ip) in pods.iter().zip(ips) {
        assert!(ping(pod, first_hop), "pod {ip} cannot ping {first_hop}");
    }
    for ip in &ips[1..] {
        assert!(ping(pods[0], ip), "pod {} cannot ping pod {ip}", ips[0]);
    }
}

#[test]
fn fifty_adds_at_once_then_fifty_dels_at_once() {
    twill_testkit::require_root("concurrent_add_del");
    fifty_at_once(Node::new("cc"), "");
}

#[test]
fn l3_fifty_adds_at_once_then_fifty_dels_at_once() {
    twill_testkit::require_root("concurrent_add_del_l3");
    fifty_at_once(Node::wired("ccl3", "l3"), "l3");
}

/// 50 ADDs released together, then 50 DELs; for either wiring.
fn fifty_at_once(node: Node, tag: &str) {
    const N: usize = 50;
    let l3 = node.wiring == Some("l3");
    let out = TestNetns::new(&format!("ccout{tag}"));
    node.uplink(&out);
    let pods = pods(N, &format!("ccp{tag}"));
    let conf = node.conf();

    let adds: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| ("ADD", format!("c{i}"), p, conf.clone()))
        .collect();
    let replies = race(&node, &adds);
    let failed: Vec<_> = replies
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.ok)
        .map(|(i, r)| format!("c{i}: {}", r.stdout))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {N} ADDs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    let ips: Vec<String> = replies.iter().map(|r| pod_ip(&r.json)).collect();
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), N, "addresses handed out twice: {ips:?}");
    if l3 {
        assert!(
            !node.links().contains(&"twl0".to_string()),
            "l3 makes no bridge"
        );
        // One /32 route per pod, to that pod's own host veth.
        let routes = node.twill_routes();
        assert_eq!(routes.len(), N, "{routes:?}");
        for (ip, r) in ips.iter().zip(&replies) {
            let veth = r.json["interfaces"][0]["name"].as_str().unwrap();
            let want = format!("{ip} dev {veth} scope link ");
            assert!(routes.contains(&want), "{want:?} missing: {routes:?}");
        }
    } else {
        assert_eq!(
            node.bridge_ports().len(),
            N,
            "veths on the bridge: {:?}",
            node.bridge_ports()
        );
        assert_eq!(
            node.bridge_addrs(),
            [format!("{GATEWAY}/24")],
            "the gateway was added once"
        );
    }
    assert_eq!(
        node.veths().len(),
        N,
        "veths in the node: {:?}",
        node.veths()
    );
    assert_eq!(
        node.records().len(),
        N,
        "IPAM records: {:?}",
        node.records()
    );
    let masq = masq_elements(&node);
    assert_eq!(masq.len(), N, "one masquerade element per pod: {masq:?}");
    for ip in &ips {
        assert!(
            masq.iter().any(|e| e.contains(&format!("\"{ip}\""))),
            "{ip} is not masqueraded: {masq:?}"
        );
    }
    // The result matches the kernel in every pod.
    let prefix = if l3 { 32 } else { 24 };
    for (pod, ip) in pods.iter().zip(&ips) {
        let (_, out, _) = pod.try_exec(&["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(
            out.contains(&format!("inet {ip}/{prefix}")),
            "pod {}: {out}",
            pod.name
        );
    }
    let first_hop = if l3 { NODE_IP } else { GATEWAY };
    assert_reachable(&pods.iter().collect::<Vec<_>>(), &ips, first_hop);

    let dels: Vec<_> = pods
        .iter()
        .zip(&replies)
        .enumerate()
        .map(|(i, (p, r))| {
            let mut c = conf.clone();
            c["prevResult"] = r.json.clone();
            ("DEL", format!("c{i}"), p, c)
        })
        .collect();
    let replies = race(&node, &dels);
    let failed: Vec<_> = replies
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.ok)
        .map(|(i, r)| format!("c{i}: {}", r.stdout))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {N} DELs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    node.assert_clean("after 50 parallel DELs");
    node.wait_reaped();
    assert!(
        node.twill_routes().is_empty(),
        "routes left: {:?}",
        node.twill_routes()
    );
    assert!(
        node.bridge_ports().is_empty(),
        "bridge ports left: {:?}",
        node.bridge_ports()
    );
    for pod in &pods {
        assert_eq!(
            link_names(pod),
            ["lo"],
            "pod {} keeps an interface",
            pod.name
        );
    }
}

#[test]
fn adds_racing_dels_of_other_pods() {
    twill_testkit::require_root("concurrent_mixed");
    const N: usize = 25;
    let node = Node::new("cm");
    let old = pods(N, "cmo");
    let new = pods(N, "cmn");
    let conf = node.conf();

    // The pods that will go, added beforehand (also in parallel).
    let first: Vec<_> = old
        .iter()
        .enumerate()
        .map(|(i, p)| ("ADD", format!("old{i}"), p, conf.clone()))
        .collect();
    let old_results = race(&node, &first);
    assert!(
        old_results.iter().all(|r| r.ok),
        "setting up: {:?}",
        old_results.iter().map(|r| &r.stdout).collect::<Vec<_>>()
    );
    let old_ips: BTreeSet<String> = old_results.iter().map(|r| pod_ip(&r.json)).collect();
    assert_eq!(old_ips.len(), N);

    // 25 ADDs of new pods and 25 DELs of the old ones, released together.
    let mut jobs: Vec<_> = new
        .iter()
        .enumerate()
        .map(|(i, p)| ("ADD", format!("new{i}"), p, conf.clone()))
        .collect();
    for (i, (p, r)) in old.iter().zip(&old_results).enumerate() {
        let mut c = conf.clone();
        c["prevResult"] = r.json.clone();
        jobs.push(("DEL", format!("old{i}"), p, c));
    }
    let replies = race(&node, &jobs);
    let failed: Vec<_> = jobs
        .iter()
        .zip(&replies)
        .filter(|(_, r)| !r.ok)
        .map(|((c, id, _, _), r)| format!("{c} {id}: {}", r.stdout))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} runs failed:\n{}",
        failed.len(),
        jobs.len(),
        failed.join("\n")
    );

    node.wait_reaped();
    let new_ips: Vec<String> = replies[..N].iter().map(|r| pod_ip(&r.json)).collect();
    let distinct: BTreeSet<_> = new_ips.iter().cloned().collect();
    assert_eq!(distinct.len(), N, "addresses handed out twice: {new_ips:?}");
    assert_eq!(
        node.bridge_ports().len(),
        N,
        "only the new pods' veths remain: {:?}",
        node.bridge_ports()
    );
    assert_eq!(node.veths().len(), N);
    assert_eq!(
        node.records().len(),
        N,
        "only the new pods' records remain: {:?}",
        node.records()
    );
    let masq: BTreeSet<String> = masq_elements(&node)
        .iter()
        .filter_map(|e| e.split('"').nth(1).map(str::to_string))
        .collect();
    assert_eq!(masq, distinct, "masquerade holds exactly the new pods");
    for pod in &old {
        assert_eq!(
            link_names(pod),
            ["lo"],
            "old pod {} keeps an interface",
            pod.name
        );
    }
    assert_reachable(&new.iter().collect::<Vec<_>>(), &new_ips, GATEWAY);
    // An old address that was not reused is gone from the network.
    if let Some(gone) = old_ips.iter().find(|ip| !distinct.contains(*ip)) {
        assert!(!ping(&node.ns, gone), "{gone} still answers after DEL");
    }

    let dels: Vec<_> = new
        .iter()
        .enumerate()
        .map(|(i, p)| ("DEL", format!("new{i}"), p, conf.clone()))
        .collect();
    assert!(race(&node, &dels).iter().all(|r| r.ok));
    node.assert_clean("after the mixed race");
    assert!(
        node.bridge_ports().is_empty(),
        "bridge ports left: {:?}",
        node.bridge_ports()
    );
}
