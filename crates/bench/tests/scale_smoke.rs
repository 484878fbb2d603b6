//! Runs `twill-bench scale` at a small N, as root: 24 real twilld, each in its own network
//! namespace and kernel routing table (host-gw), against a real 3-member etcd that loses a
//! member (SIGKILL) during the cold start; then one node joins. The figures must say: every
//! node holds exactly one block, no two overlap, every namespace routes to every other
//! node's block, the joining node is routed to from all of them, nothing was lost with the
//! member; and the run leaves none of its namespaces, folders (in /tmp and, etcd's data,
//! /dev/shm) or processes.

mod common;
use common::*;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

const AGENTS: u64 = 24;

/// This run's namespaces, temp folders and processes (all named `twlsc<pid>-…`).
fn left_by(pid: u32) -> Vec<String> {
    let tag = format!("twlsc{pid}-");
    let mut left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    // Its scratch folder, and etcd's data on tmpfs.
    for root in [std::env::temp_dir(), "/dev/shm".into()] {
        left.extend(
            std::fs::read_dir(root)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.path().to_string_lossy().into_owned()),
        );
    }
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.contains(&tag) {
            left.push(format!(
                "process {}: {cmdline}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    left.retain(|n| n.contains(&tag));
    left
}

#[test]
fn scale_run_small_holds_disjoint_blocks_routes_all_survives_a_member_kill_and_cleans_up() {
    twill_testkit::require_root(
        "scale_run_small_holds_disjoint_blocks_routes_all_survives_a_member_kill_and_cleans_up",
    );
    if !Path::new("/usr/bin/etcd").is_file() {
        panic!("/usr/bin/etcd is missing: apt-get install etcd-server");
    }
    let child = Command::new(BENCH)
        .args(["scale", "--agents", &AGENTS.to_string()])
        .args(["--idle-seconds", "2", "--twilld"])
        .arg(sibling("twilld"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run twill-bench scale");
    let pid = child.id();
    let out = child
        .wait_with_output()
        .expect("wait for twill-bench scale");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left = left_by(pid);
    assert!(out.status.success(), "twill-bench scale failed: {stderr}");
    assert!(left.is_empty(), "left behind: {left:?}");
    let j: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    assert_eq!(j["agents"], AGENTS);
    let cold = &j["coldStart"];
    // One block each, none overlapping another.
    assert_eq!(cold["blocks"], AGENTS, "{cold}");
    assert_eq!(cold["nodesWithOneBlock"], AGENTS, "{cold}");
    assert_eq!(cold["conflicts"], 0, "{cold}");
    // Every namespace's kernel routes to every other node's block.
    assert_eq!(cold["minRoutesPerNode"], AGENTS - 1, "{cold}");
    // The member was killed while the claims were under way (half the nodes held one).
    let killed = &cold["memberKilledAt"];
    let held = killed["blocksHeld"].as_u64().expect("a member was killed");
    assert!(held * 2 >= AGENTS && held <= AGENTS, "{killed}");
    let (leased, converged) = (
        cold["leasedSeconds"].as_f64().unwrap(),
        cold["convergedSeconds"].as_f64().unwrap(),
    );
    assert!(killed["seconds"].as_f64().unwrap() <= leased && leased <= converged);

    // The join: its block published, then routed to from all.
    let join = &j["join"];
    let (jl, js) = (
        join["blockPublishedSeconds"].as_f64().unwrap(),
        join["seenByAllSeconds"].as_f64().unwrap(),
    );
    assert!(0.0 < jl && jl <= js, "{join}");

    // Nothing lost with the member: at the end every node (the joiner too) still holds a
    // block, every namespace routes to all the others, and every agent still runs.
    let end = &j["end"];
    assert_eq!(end["nodesWithoutBlock"], 0, "{end}");
    assert_eq!(end["minRoutesPerNode"], AGENTS, "{end}");
    assert_eq!(end["agentsRunning"], AGENTS + 1, "{end}");

    // The idle figures are measured, not left out.
    let idle = &j["idle"];
    assert!(idle["seconds"].as_f64().unwrap() >= 2.0, "{idle}");
    assert!(idle["agentRssMbMax"].as_f64().unwrap() > 1.0, "{idle}");
    assert!(
        idle["probesPerSecondPerNode"].as_f64().unwrap() > 0.0,
        "{idle}"
    );
    assert!(idle["etcdDbBytes"].as_f64().unwrap() > 0.0, "{idle}");
}

/// A reader of its progress that goes away (`| head -1`, a closed terminal) does not stop
/// the run half-way: it finishes, prints its figures and removes everything it made. Each
/// progress line used to panic on the broken pipe and leave the namespaces behind.
#[test]
fn a_run_whose_progress_reader_goes_away_still_finishes_and_cleans_up() {
    twill_testkit::require_root(
        "a_run_whose_progress_reader_goes_away_still_finishes_and_cleans_up",
    );
    let mut child = Command::new(BENCH)
        .args(["scale", "--agents", "3", "--idle-seconds", "1"])
        .args(["--join-after-seconds", "0", "--twilld"])
        .arg(sibling("twilld"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run twill-bench scale");
    let pid = child.id();
    // The read end closed before the first line: every write to stderr fails (EPIPE).
    drop(child.stderr.take());
    let out = child
        .wait_with_output()
        .expect("wait for twill-bench scale");
    let left = left_by(pid);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(out.status.success(), "exit {:?}", out.status);
    let j: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(j["agents"], 3);
}
