//! Runs `twill-bench mesh` at smoke sizes, as root: a 3-node mesh (cold start and a fourth
//! node joining), 4 nodes with 1 route reflector, and the cost run with 2 feeding peers, one
//! round each of real BIRD and real `twill bgp serve`. Bounded: about 15 s (BIRD's Calico
//! settings wait ≥ 1 s before connecting; each run has a 20 s deadline). The figures must be
//! there and consistent, and nothing `twlbench*` may be left.

mod common;
use common::*;

use serde_json::Value;
use std::process::Command;

#[test]
fn mesh_smoke_run_reports_both_sides_and_leaves_nothing() {
    twill_testkit::require_root("mesh_smoke_run_reports_both_sides_and_leaves_nothing");
    let _lock = smoke_lock();
    assert!(
        twlbench_netns_and_dirs().is_empty(),
        "a previous run left {:?}: run twill-bench mesh --cleanup",
        twlbench_netns_and_dirs()
    );
    let twill = twill_testkit::workspace_bin("twill", "twill");
    let twilld = twill_testkit::workspace_bin("twilld", "twilld");
    let out = Command::new(BENCH)
        .args([
            "mesh",
            "--nodes",
            "3",
            "--rr-nodes",
            "4",
            "--reflectors",
            "1",
        ])
        .args([
            "--cost-peers",
            "2",
            "--idle-seconds",
            "0.5",
            "--rounds",
            "1",
        ])
        .args(["--timeout-seconds", "20", "-o", "json"])
        .args(["--implementations", "bird,speaker,twilld", "--twill"])
        .arg(&twill)
        .arg("--twilld")
        .arg(&twilld)
        .output()
        .expect("run twill-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left = twlbench_netns_and_dirs();
    assert!(out.status.success(), "twill-bench mesh failed: {stderr}");
    assert!(left.is_empty(), "left behind: {left:?}");
    let j: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    assert_eq!(j["failures"].as_array().unwrap().len(), 0, "{j:#}");
    for s in ["cold", "join", "reflectors"] {
        let bird = &j["scenarios"][s]["bird"];
        let speaker = &j["scenarios"][s]["speaker"];
        let twilld = &j["scenarios"][s]["twilld"];
        for side in [bird, speaker, twilld] {
            assert_eq!(side["ok"], 1, "{s}: {j:#}");
            let m = side["medianSeconds"].as_f64().unwrap();
            // A real convergence over TCP takes some time, and the deadline bounds it.
            assert!(m > 0.0 && m < 20.0, "{s}: {side}");
        }
        // In the mesh the last node started has the highest IP, so it opens all its
        // sessions, and BIRD with Calico's `connect delay time 1` (randomised down to 3/4 of
        // it) cannot do so sooner: a figure below that would mean the watch counted
        // something other than the learned routes.
        if s == "cold" {
            let m = bird["medianSeconds"].as_f64().unwrap();
            assert!(m >= 0.7, "{s}: {bird}");
        }
        for side in [speaker, twilld] {
            let ratio = side["ratioToBird"].as_f64().unwrap();
            let want =
                side["medianSeconds"].as_f64().unwrap() / bird["medianSeconds"].as_f64().unwrap();
            assert!((ratio - want).abs() < 1e-9, "{s}: {j:#}");
        }
    }
    for side in ["bird", "speaker", "twilld"] {
        let c = &j["cost"][side];
        assert_eq!(c["routes"], 200, "{side}: {c}");
        let rss = c["rssMb"].as_f64().unwrap();
        let peak = c["peakRssMb"].as_f64().unwrap();
        assert!((1.0..1024.0).contains(&rss) && peak >= rss, "{side}: {c}");
        let cores = std::thread::available_parallelism().unwrap().get() as f64;
        assert!(
            (0.0..=cores).contains(&c["idleCores"].as_f64().unwrap()),
            "{c}"
        );
        assert!(c["cpuSeconds"].as_f64().unwrap() >= 0.0, "{c}");
    }
    // Goals are Twill's only: one per scenario run, judged on its median.
    let goals = j["goals"].as_array().unwrap();
    assert_eq!(goals.len(), 6, "{goals:?}");
    for g in goals {
        let name = g["name"].as_str().unwrap();
        assert!(
            name.starts_with("speaker: ") || name.starts_with("twilld: "),
            "{g}"
        );
        assert_eq!(
            g["met"],
            g["value"].as_f64().unwrap() <= g["limit"].as_f64().unwrap()
        );
    }
}
