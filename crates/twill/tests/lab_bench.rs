//! `twill lab bench` on real two-node labs (host-gw; vxlan with --compare-host-gw): every
//! variant carries traffic, the JSON holds every variant and ratio, and no twin namespace
//! (`<lab>-tw*`) nor iperf3 server is left behind. Needs root and iperf3.

mod common;
use common::*;

use std::process::Command;

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// iperf3 processes whose namespace is one of the lab's (by `ip netns pids`).
fn iperf3_in_lab(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for ns in netns_with_prefix(&format!("{name}-")) {
        let out = Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "iperf3" {
                found.push(format!("{pid} in {ns}"));
            }
        }
    }
    found
}

fn bench_lab(tag: char, backend: &str, extra: &[&str], variants: &[&str], ratios: usize) {
    twill_testkit::require_root("lab_bench");
    twill_testkit::require_program("lab_bench", "iperf3", "iperf3");
    ensure_binaries();
    let name = lab_name(tag);
    let _guard = LabGuard(name.clone());
    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--backend",
        backend,
    ]);
    assert!(up.status.success(), "lab up failed:\n{}", text(&up));

    let mut args = vec![
        "lab",
        "bench",
        "--name",
        &name,
        "--seconds",
        "1",
        "--rounds",
        "1",
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = twill(&args);
    assert!(out.status.success(), "bench failed:\n{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench -o json is not JSON ({e}):\n{}", text(&out)));
    assert_eq!(report["backend"], backend, "{report:#}");
    let got: Vec<&str> = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["variant"].as_str().unwrap())
        .collect();
    assert_eq!(got, variants, "{report:#}");
    for v in report["variants"].as_array().unwrap() {
        let runs = v["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{v:#}");
        assert!(v["medianGbps"].as_f64().unwrap() > 0.0, "{v:#}");
        assert!(v["medianSenderCpu"].as_f64().unwrap() > 0.0, "{v:#}");
        assert_eq!(runs[0]["congestion"], "cubic", "{v:#}");
    }
    let r = report["ratios"].as_array().unwrap();
    assert_eq!(r.len(), ratios, "{report:#}");
    assert!(r.iter().all(|x| x["value"].as_f64().unwrap() > 0.0));
    // The twin built for the lab's backend copies what the agents programmed: the bench
    // read both back and found nothing that differs.
    assert_eq!(report["differences"], serde_json::json!([]), "{report:#}");
    // Everything the bench made is gone: twin namespaces, iperf3 servers.
    let left = netns_with_prefix(&format!("{name}-tw"));
    assert!(left.is_empty(), "twin namespaces left: {left:?}");
    let servers = iperf3_in_lab(&name);
    assert!(servers.is_empty(), "iperf3 left running: {servers:?}");
}

#[test]
fn bench_a_host_gw_lab_against_its_underlay_and_twin() {
    bench_lab('g', "host-gw", &[], &["underlay", "twill", "twin"], 3);
}

#[test]
fn bench_a_vxlan_lab_against_its_twin_and_a_host_gw_twin() {
    bench_lab(
        'x',
        "vxlan",
        &["--compare-host-gw"],
        &["underlay", "twill", "twin", "twin-host-gw"],
        5,
    );
}

#[test]
fn bench_refuses_a_one_node_lab_and_leaves_nothing() {
    twill_testkit::require_root("lab_bench");
    ensure_binaries();
    let name = lab_name('o');
    let _guard = LabGuard(name.clone());
    let up = twill(&["lab", "up", "--name", &name, "--nodes", "1"]);
    assert!(up.status.success(), "lab up failed:\n{}", text(&up));
    let out = twill(&["lab", "bench", "--name", &name, "--seconds", "1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs 2 or more"),
        "{}",
        text(&out)
    );
    assert!(netns_with_prefix(&format!("{name}-tw")).is_empty());
}
