//! Runs the real benchmark at smoke sizes, as root: both plugins must report figures, and
//! nothing `twlbench*` (namespaces, scratch folders) or in the root namespace may be left.
//! One test function on purpose: the leak check looks for every `twlbench*` name, so the
//! runs must not overlap.

mod common;
use common::*;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use twill_testkit::{sh, try_sh};

fn twill_cni() -> PathBuf {
    let p = Path::new(BENCH).parent().unwrap().join("twill-cni");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p twill-cni)",
        p.display()
    );
    p
}

fn bench(extra: &[&str]) -> Value {
    let cni = twill_cni();
    let out = Command::new(BENCH)
        .args([
            "cni",
            "--pairs",
            "5",
            "--concurrent",
            "5",
            "--fill",
            "20",
            "-o",
            "json",
            "--twill-cni",
        ])
        .arg(&cni)
        .args(extra)
        .output()
        .expect("run twill-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "twill-bench {extra:?} failed: {stderr}"
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn check_figures(j: &Value, mappings: bool) {
    assert_eq!(j["config"]["mappings"], mappings);
    for plugin in ["twill", "ref"] {
        let p = &j[plugin];
        for (path, n) in [
            ("sequential/add", 5),
            ("sequential/del", 5),
            ("concurrent/add", 5),
            ("concurrent/del", 5),
            ("fill/add", 20),
            ("fill/del", 20),
        ] {
            let (scenario, op) = path.split_once('/').unwrap();
            let s = &p[scenario][op];
            assert_eq!(s["n"], n, "{plugin} {path}: {s}");
            let p50 = s["p50"].as_f64().unwrap();
            assert!(
                p50 > 0.0 && p50 <= s["p99"].as_f64().unwrap(),
                "{plugin} {path}: {s}"
            );
        }
        assert!(p["concurrent"]["addWallMs"].as_f64().unwrap() > 0.0);
        assert_eq!(p["fill"]["buckets"][0]["to"], 20, "{plugin}: {}", p["fill"]);
    }
    assert!(j["ratio"]["sequentialAddP50"].as_f64().unwrap() > 0.0);
    assert_eq!(j["goals"].as_array().unwrap().len(), 4);
}

#[test]
fn smoke_runs_leave_nothing_behind() {
    twill_testkit::require_root("smoke_runs_leave_nothing_behind");
    let _lock = smoke_lock();
    assert!(
        twlbench_netns_and_dirs().is_empty(),
        "a previous run left {:?}: run twill-bench cni --cleanup",
        twlbench_netns_and_dirs()
    );
    check_figures(&bench(&[]), false);
    assert!(
        twlbench_netns_and_dirs().is_empty(),
        "left behind: {:?}",
        twlbench_netns_and_dirs()
    );
    check_figures(&bench(&["--mappings"]), true);
    assert!(
        twlbench_netns_and_dirs().is_empty(),
        "left behind: {:?}",
        twlbench_netns_and_dirs()
    );
    // The plugins ran in the bench's node namespaces, never in the root one.
    for bridge in ["twl0", "twlref0"] {
        let (exists, _, _) = try_sh(&["ip", "link", "show", "dev", bridge]);
        assert!(!exists, "bridge {bridge} appeared in the root namespace");
    }

    // --cleanup removes what a killed run would leave.
    let stale = format!("twlbench{}-stale", std::process::id());
    sh(&["ip", "netns", "add", &stale]);
    let dir = std::env::temp_dir().join(&stale);
    std::fs::create_dir_all(dir.join("host-local")).unwrap();
    let out = Command::new(BENCH)
        .args(["cni", "--cleanup"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = twlbench_netns_and_dirs();
    if !left.is_empty() {
        let _ = try_sh(&["ip", "netns", "del", &stale]);
        let _ = std::fs::remove_dir_all(&dir);
        panic!("--cleanup left {left:?}");
    }
}
