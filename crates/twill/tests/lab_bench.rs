//! `twill lab bench` on real two-node labs (host-gw; vxlan with --compare-host-gw): every
//! variant carries traffic, the JSON holds every variant and ratio, and no twin namespace
//! (`<lab>-tw*`) nor iperf3 server is left behind. And the udp bench's flannel-style
//! baseline (`twill lab udp-baseline`) between two namespaces. Needs root and iperf3.

mod common;
use common::*;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twill_testkit::TestNetns;

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

/// A process this test started, killed by its PID when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two namespaces on a veth, a TUN in each with flannel's layout (the block's .0 as a /32,
/// MTU 1472, a route to the other block into the TUN), and the baseline in each: ping and a
/// 2 s iperf3 cross it, and the datagrams on the veth are bare IPv4 in UDP to port 8285.
#[test]
fn the_flannel_style_baseline_carries_ping_and_iperf3_between_two_netns() {
    twill_testkit::require_root("lab_bench");
    twill_testkit::require_program("lab_bench", "iperf3", "iperf3");
    let ns = [TestNetns::new("ub1"), TestNetns::new("ub2")];
    let n = |k: usize| ns[k].name.as_str();
    twill_testkit::sh(&[
        "ip",
        "-n",
        n(0),
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        n(1),
    ]);
    let node_ip = ["192.0.2.201", "192.0.2.202"];
    let block = ["10.244.1.0/24", "10.244.2.0/24"];
    let tun_ip = ["10.244.1.0", "10.244.2.0"];
    for k in 0..2 {
        let sh = |a: &[&str]| {
            let mut full = vec!["ip", "-n", n(k)];
            full.extend_from_slice(a);
            twill_testkit::sh(&full);
        };
        sh(&["addr", "add", &format!("{}/24", node_ip[k]), "dev", "eth0"]);
        sh(&["link", "set", "eth0", "up"]);
        sh(&["tuntap", "add", "dev", "twl.tun", "mode", "tun"]);
        sh(&["link", "set", "twl.tun", "mtu", "1472", "up"]);
        sh(&[
            "addr",
            "add",
            &format!("{}/32", tun_ip[k]),
            "dev",
            "twl.tun",
        ]);
        sh(&["route", "add", block[1 - k], "dev", "twl.tun"]);
    }
    // Bad input first: refused with the usage, nothing started.
    let bad = twill(&["lab", "udp-baseline", "--tun", "twl.tun", "--port", "8285"]);
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no --route"),
        "{}",
        text(&bad)
    );
    let mut procs = Vec::new();
    for k in 0..2 {
        let child = Command::new("ip")
            .args(["netns", "exec", n(k), TWILL, "lab", "udp-baseline"])
            .args(["--tun", "twl.tun", "--port", "8285", "--bind", node_ip[k]])
            .args(["--tun-ip", tun_ip[k], "--route"])
            .arg(format!("{}={}", block[1 - k], node_ip[1 - k]))
            .stdin(Stdio::null())
            .spawn()
            .expect("start twill lab udp-baseline");
        procs.push(Started(child));
    }
    // Ready once the socket is bound in both.
    let start = Instant::now();
    while !(0..2).all(|k| {
        let (_, out, _) = ns[k].try_exec(&["ss", "-Hlun", "sport", "=", ":8285"]);
        !out.trim().is_empty()
    }) {
        for p in &mut procs {
            assert!(p.0.try_wait().unwrap().is_none(), "udp-baseline exited");
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "udp-baseline never bound :8285"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, out, err) = ns[0].try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", tun_ip[1]]);
    assert!(ok, "ping across the baseline failed:\n{out}{err}");
    // Each side decremented the TTL once more than the kernels did: 64 - 2 (the baseline
    // on each side) = 62 on the reply.
    assert!(out.contains("ttl=62"), "{out}");
    // A datagram on the wire, captured during the iperf3 run: UDP to 8285 whose payload is
    // the bare inner IPv4 packet (flannel's wire).
    let mut cap = Started(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                n(1),
                "tcpdump",
                "-c",
                "1",
                "-nli",
                "eth0",
                "-x",
            ])
            .args(["udp", "dst", "port", "8285", "and", "greater", "1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tcpdump"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut server = Started(
        Command::new("ip")
            .args(["netns", "exec", n(1), "iperf3", "-s", "-1", "-B", tun_ip[1]])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start iperf3 -s"),
    );
    let start = Instant::now();
    loop {
        let (_, out, _) = ns[1].try_exec(&["ss", "-Hltn", "sport", "=", ":5201"]);
        if !out.trim().is_empty() {
            break;
        }
        assert!(server.0.try_wait().unwrap().is_none(), "iperf3 -s exited");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "iperf3 -s not listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, out, err) =
        ns[0].try_exec(&["iperf3", "-c", tun_ip[1], "-t", "2", "-C", "cubic", "-J"]);
    assert!(ok, "iperf3 across the baseline failed:\n{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 -J");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(bps > 0.0, "{v:#}");
    // Bounded: tcpdump -c 1 has long had its packet; kill it if it has not exited.
    let start = Instant::now();
    while cap.0.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = cap.0.kill();
    let mut dump = String::new();
    std::io::Read::read_to_string(&mut cap.0.stdout.take().unwrap(), &mut dump).unwrap();
    let bytes: Vec<u8> = dump
        .lines()
        .filter_map(|l| l.trim().split_once(":  "))
        .flat_map(|(_, hex)| {
            hex.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .flat_map(|w| {
            (0..w.len() / 2)
                .map(|i| u8::from_str_radix(&w[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(bytes.len() >= 48, "no datagram captured:\n{dump}");
    assert_eq!(bytes[9], 17, "outer protocol UDP:\n{dump}");
    assert_eq!(&bytes[22..24], &8285u16.to_be_bytes(), "{dump}");
    assert_eq!(bytes[28], 0x45, "the payload is an IPv4 header:\n{dump}");
    assert_eq!(
        &bytes[28 + 16..28 + 20],
        &[10, 244, 2, 0],
        "inner dst:\n{dump}"
    );
    drop(server);
    drop(procs);
}

/// `twill lab bench --udp`, bounded (1 s runs, 1 round, -P 1 and -P 4: about 20 s): the
/// report has every variant at both stream counts, each moved bytes and was charged CPU,
/// the ratios are there, and the twins, their datapaths, the iperf3 servers and the control
/// sockets are gone after. No figure is checked: performance is the bench's to report.
#[test]
fn bench_udp_reports_every_variant_and_leaves_nothing() {
    twill_testkit::require_root("lab_bench");
    twill_testkit::require_program("lab_bench", "iperf3", "iperf3");
    ensure_binaries();
    let name = lab_name('u');
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
        "vxlan",
    ]);
    assert!(up.status.success(), "lab up failed:\n{}", text(&up));
    let out = twill(&[
        "lab",
        "bench",
        "--name",
        &name,
        "--udp",
        "--seconds",
        "1",
        "--rounds",
        "1",
        "--streams",
        "1,4",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "bench --udp failed:\n{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench -o json is not JSON ({e}):\n{}", text(&out)));
    let got: Vec<(u64, &str)> = report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["streams"].as_u64().unwrap(),
                f["variant"].as_str().unwrap(),
            )
        })
        .collect();
    let variants = ["twill-twin", "vxlan", "baseline"];
    let want: Vec<(u64, &str)> = [1, 4]
        .iter()
        .flat_map(|p| variants.iter().map(move |v| (*p, *v)))
        .collect();
    assert_eq!(got, want, "{report:#}");
    for f in report["figures"].as_array().unwrap() {
        let runs = f["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{f:#}");
        assert!(
            runs[0]["gbit"].as_f64().unwrap() > 0.0,
            "moved nothing: {f:#}"
        );
        assert!(runs[0]["cpuSeconds"].as_f64().unwrap() > 0.0, "{f:#}");
        assert_eq!(runs[0]["iperf"]["congestion"], "cubic", "{f:#}");
    }
    let ratios = report["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 8, "{report:#}");
    assert!(
        ratios.iter().all(|x| x["value"].as_f64().unwrap() > 0.0),
        "{report:#}"
    );
    let goals: Vec<f64> = ratios.iter().filter_map(|x| x["goal"].as_f64()).collect();
    assert_eq!(goals, [0.8, 3.0], "{report:#}");
    // Two datapaths per userspace twin, pinned to CPU 0 (node 1) and CPU 1 (node 2).
    let dps = report["datapaths"].as_array().unwrap();
    let placed: Vec<(&str, u64, u64)> = dps
        .iter()
        .map(|d| {
            (
                d["variant"].as_str().unwrap(),
                d["node"].as_u64().unwrap(),
                d["cpu"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            ("twill-twin", 1, 0),
            ("twill-twin", 2, 1),
            ("baseline", 1, 0),
            ("baseline", 2, 1)
        ],
        "{report:#}"
    );
    // Everything the bench made is gone.
    for d in dps {
        let pid = d["pid"].as_u64().unwrap();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "datapath {pid} still running"
        );
    }
    let left = netns_with_prefix(&format!("{name}-tw"));
    assert!(left.is_empty(), "twin namespaces left: {left:?}");
    let servers = iperf3_in_lab(&name);
    assert!(servers.is_empty(), "iperf3 left running: {servers:?}");
    assert!(!std::env::temp_dir().join(format!("{name}-twd")).exists());
}
