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

/// One latency summary: n samples, ordered statistics, all positive.
fn check_stats(what: &str, s: &Value, n: u64) {
    assert_eq!(s["n"], n, "{what}: {s}");
    let f = |k: &str| s[k].as_f64().unwrap();
    let ordered = [f("min"), f("p50"), f("p90"), f("p99"), f("max")];
    assert!(
        ordered[0] > 0.0 && ordered.windows(2).all(|w| w[0] <= w[1]),
        "{what}: min <= p50 <= p90 <= p99 <= max fails: {s}"
    );
    assert!(
        f("min") <= f("mean") && f("mean") <= f("max"),
        "{what}: {s}"
    );
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn check_figures(j: &Value, mappings: bool) {
    assert_eq!(j["config"]["mappings"], mappings);
    for plugin in ["l3", "bridge", "ref"] {
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
            check_stats(&format!("{plugin} {path}"), &p[scenario][op], n);
        }
        // The wall time of the concurrent calls covers the slowest of them.
        for op in ["add", "del"] {
            let wall = p["concurrent"][format!("{op}WallMs")].as_f64().unwrap();
            let max = p["concurrent"][op]["max"].as_f64().unwrap();
            assert!(
                wall >= max,
                "{plugin} concurrent {op}: wall {wall} < slowest {max}"
            );
        }
        assert_eq!(p["fill"]["buckets"][0]["to"], 20, "{plugin}: {}", p["fill"]);
        // CPU time of the plugin's processes, per call.
        for (scenario, op, wall, n) in [
            ("sequential", "addCpu", "add", 5),
            ("sequential", "delCpu", "del", 5),
            ("fill", "addCpu", "add", 20),
        ] {
            let cpu = &p[scenario][op];
            check_stats(&format!("{plugin} {scenario} {op}"), cpu, n);
            if plugin != "ref" {
                // twill-cni is one thread and its DEL's reaper is not waited for: every
                // call's CPU time is within its wall time, so each percentile is too.
                for k in ["min", "p50", "p90", "p99", "max"] {
                    let (c, w) = (
                        cpu[k].as_f64().unwrap(),
                        p[scenario][wall][k].as_f64().unwrap(),
                    );
                    assert!(c <= w, "{plugin} {scenario}: cpu {k} {c} > wall {k} {w}");
                }
            }
        }
        assert_eq!(
            p["fill"]["cpuBuckets"][0]["to"], 20,
            "{plugin}: {}",
            p["fill"]
        );
    }
    // Each ratio is a wiring's figure over the reference's, from the same run.
    let fig = |plugin: &str, path: &[&str]| {
        path.iter()
            .fold(&j[plugin], |v, k| &v[*k])
            .as_f64()
            .unwrap_or_else(|| panic!("{plugin} {path:?} missing"))
    };
    let ratios: [(&str, &[&str]); 6] = [
        ("sequentialAddP50", &["sequential", "add", "p50"]),
        ("sequentialDelP50", &["sequential", "del", "p50"]),
        ("concurrentAddP50", &["concurrent", "add", "p50"]),
        ("concurrentAddWall", &["concurrent", "addWallMs"]),
        ("fillAddP50", &["fill", "add", "p50"]),
        ("fillAddP99", &["fill", "add", "p99"]),
    ];
    for wiring in ["l3", "bridge"] {
        for (name, path) in ratios {
            let r = j["ratio"][wiring][name].as_f64().unwrap();
            let want = fig(wiring, path) / fig("ref", path);
            assert!(
                close(r, want),
                "ratio {wiring} {name} is {r}, {wiring}/ref is {want}"
            );
        }
    }
    // Each goal is judged on its value against its limit; four per wiring, l3's first.
    let goals = j["goals"].as_array().unwrap();
    assert_eq!(goals.len(), 8);
    for g in goals {
        let (value, limit) = (g["value"].as_f64().unwrap(), g["limit"].as_f64().unwrap());
        assert!(value > 0.0, "{g}");
        assert_eq!(g["met"], value <= limit, "{g}");
    }
    for (w, wiring) in ["l3", "bridge"].iter().enumerate() {
        let limits = if *wiring == "l3" {
            [0.25, 0.1]
        } else {
            [0.3, 0.2]
        };
        for (i, name) in ["sequentialAddP50", "sequentialDelP50"].iter().enumerate() {
            let g = &goals[4 * w + i];
            assert!(
                g["goal"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{wiring}: ")),
                "{g}"
            );
            assert!(
                close(
                    g["value"].as_f64().unwrap(),
                    j["ratio"][*wiring][*name].as_f64().unwrap()
                ),
                "goal {g} is not ratio {wiring} {name}"
            );
            assert_eq!(g["limit"], limits[i], "{g}");
        }
        let tail = &goals[4 * w + 2];
        let want = fig(wiring, &["fill", "add", "p99"]) / fig(wiring, &["fill", "add", "p50"]);
        assert!(close(tail["value"].as_f64().unwrap(), want), "{tail}");
    }
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
    for bridge in ["twl0", "twlref0", "twlbup0"] {
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
