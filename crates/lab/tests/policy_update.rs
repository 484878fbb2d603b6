//! Policies changing under traffic, in the lab's upstream model (x, y, z × a, b, c on 2
//! nodes): while a client in x/b connects to x/a:80 every 50 ms, a policy isolating x/a
//! is applied (x/c only), updated (x/b only) and deleted with `twill delete`; each step's
//! full table is checked, and the client's own record must show exactly open → blocked →
//! open (no flapping back). Then a pod joins a selected set with `twill label pod` and
//! leaves it again.
//!
//! Bound: one lab (~5-20 s to build), 5 tables with blocked cells (~1 s of probes each)
//! plus the all-open checks: under ~1 min. Needs root.

mod policy_util;
use policy_util::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use twill_lab::netpol::{Peer, PortProto, Reachability};
use twill_lab::netpol_probe;
use twill_lab::plan::PodWiring;

const TCP80: PortProto = PortProto::tcp(80);

fn np(ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}---\n"
    )
}

fn only_from(pod: &str) -> String {
    np(
        "x",
        "a-ingress",
        &format!("podSelector: {{matchLabels: {{pod: a}}}}\ningress:\n- from:\n  - podSelector: {{matchLabels: {{pod: {pod}}}}}"),
    )
}

/// Runs of equal outcomes, collapsed: [true, true, false, true] → [true, false, true].
fn phases(record: &[(Duration, bool)]) -> Vec<bool> {
    let mut v: Vec<bool> = Vec::new();
    for &(_, ok) in record {
        if v.last() != Some(&ok) {
            v.push(ok);
        }
    }
    v
}

fn updated_then_deleted_under_traffic(lab: &PolicyLab) {
    let stop = AtomicBool::new(false);
    let record: Mutex<Vec<(Duration, bool)>> = Mutex::new(Vec::new());
    let (from, to) = (lab.pod("x/b").clone(), lab.pod("x/a").clone());
    std::thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let ok = netpol_probe::probe(&from, &to, TCP80, Duration::from_millis(500)).is_ok();
                record.lock().unwrap().push((start.elapsed(), ok));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let steps = || -> Result<(), String> {
            std::thread::sleep(Duration::from_millis(300));
            lab.apply(&only_from("c"));
            let mut r = Reachability::new(true);
            r.expect_all_ingress(Peer::pod("x", "a"), false)
                .expect("x/c", "x/a", true);
            lab.expect("x/a open to x/c only", &[(TCP80, &r)]);
            lab.apply(&only_from("b"));
            let mut r = Reachability::new(true);
            r.expect_all_ingress(Peer::pod("x", "a"), false)
                .expect("x/b", "x/a", true);
            lab.expect("updated: x/a open to x/b only", &[(TCP80, &r)]);
            let out = lab.twill(&["delete", "networkpolicy", "a-ingress", "-n", "x"]);
            if !out.status.success() {
                return Err(format!("twill delete: {}", text(&out)));
            }
            lab.expect("deleted: all open", &[(TCP80, &Reachability::new(true))]);
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(steps));
        stop.store(true, Ordering::Relaxed);
        match r {
            Ok(r) => r.unwrap(),
            Err(e) => std::panic::resume_unwind(e),
        }
    });
    let record = record.into_inner().unwrap();
    assert!(record.len() > 20, "{} probes only", record.len());
    assert_eq!(
        phases(&record),
        [true, false, true],
        "x/b → x/a under traffic went: {record:?}"
    );
    assert!(lab.store_list("networkpolicies/").is_empty());
}

fn pod_joins_a_selected_set(lab: &PolicyLab) {
    lab.apply(&np(
        "x",
        "a-from-friends",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchLabels: {role: friend}}",
    ));
    let mut alone = Reachability::new(true);
    alone.expect_all_ingress(Peer::pod("x", "a"), false);
    lab.expect("nobody is a friend", &[(TCP80, &alone)]);
    let out = lab.twill(&["label", "pod", "x/c", "role=friend"]);
    assert!(out.status.success(), "twill label: {}", text(&out));
    let mut joined = alone.clone();
    joined.expect("x/c", "x/a", true);
    lab.expect("x/c joined the friends", &[(TCP80, &joined)]);
    let out = lab.twill(&["label", "pod", "x/c", "role-"]);
    assert!(out.status.success(), "twill label: {}", text(&out));
    lab.expect("x/c left the friends", &[(TCP80, &alone)]);
}

#[test]
fn policies_change_under_traffic() {
    twill_testkit::require_root("policies_change_under_traffic");
    let lab = PolicyLab::up('u', PodWiring::Bridge);
    lab.run(&[
        (
            "updated then deleted under traffic",
            updated_then_deleted_under_traffic,
        ),
        ("a pod joins a selected set", pod_joins_a_selected_set),
    ]);
}
