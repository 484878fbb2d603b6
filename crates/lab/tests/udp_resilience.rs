//! The udp backend through the real `twill lab` (2 nodes on one segment, `backend: udp`,
//! bridge pods, the embedded store):
//! - an iperf3 stream from a pod on n1 to a pod on n2 across a SIGKILL of n1's twilld and
//!   its restart: the stream completes with no reset, n1's datapath is the same process
//!   before and after (adopted), and the longest gap in its 100 ms intervals is reported;
//! - MTU: the largest DF ping that fits the tunnel passes, one byte more gets "frag
//!   needed" back from the node (the pod's own MTU is raised to the uplink's for that, so
//!   the packet leaves the pod and the node's forward into twl.tun answers, not the pod's
//!   own EMSGSIZE).
//!
//! Bounded: each test ~10-15 s once built (the stream is 6 s), every wait has a deadline.
//! Needs root and iperf3. (The lab helpers are bgp_util's, shared by the lab's tests.)

#[path = "bgp_util/mod.rs"]
mod bgp_util;
use bgp_util::*;

use std::process::{Command, Stdio};
use std::time::Duration;

fn pod_ip(lab: &Lab, pod: &str) -> String {
    let st = lab.state();
    st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["short"] == pod)
        .and_then(|p| p["address"].as_str())
        .unwrap_or_else(|| panic!("no address for {pod} in {st}"))
        .to_string()
}

/// The pid of the datapath in `netns` (`twilld datapath --ctl … --tun …`).
fn datapath_pid(netns: &str) -> Option<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.contains(&&b"datapath"[..]) && args.contains(&&b"--ctl"[..])
        })
}

fn up(tag: char) -> Lab {
    require("iperf3");
    Lab::up(
        tag,
        &["--nodes", "2", "--pods-per-node", "1", "--backend", "udp"],
    )
}

/// The longest run of 100 ms intervals below 10% of the median rate, in seconds.
fn longest_gap(intervals: &[(f64, f64)]) -> f64 {
    let mut rates: Vec<f64> = intervals.iter().map(|(_, bps)| *bps).collect();
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    let (mut best, mut run) = (0.0f64, 0.0f64);
    for (secs, bps) in intervals {
        if *bps < median * 0.1 {
            run += secs;
            best = best.max(run);
        } else {
            run = 0.0;
        }
    }
    best
}

#[test]
fn udp_stream_survives_a_sigkilled_agent() {
    twill_testkit::require_root("udp_stream_survives_a_sigkilled_agent");
    let lab = up('k');
    lab.check_all_pass();
    let target = pod_ip(&lab, "n2-p1");
    let n1 = lab.ns("n1");
    let before = datapath_pid(&n1).expect("n1 runs a datapath");
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("n2-p1"),
            "iperf3",
            "-s",
            "-1",
            "-B",
            &target,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let client = Command::new("ip")
        .args(["netns", "exec", &lab.ns("n1-p1"), "iperf3", "-c", &target])
        .args(["-t", "6", "-i", "0.1", "-C", "cubic", "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = lab.agent_pid("n1");
    // SAFETY: kill(2) on the lab's own agent, its pid read from the lab's state just now.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    std::thread::sleep(Duration::from_millis(500));
    let r = twill(&["lab", "restart-agent", "--name", &lab.name, "n1"]);
    assert!(r.status.success(), "restart-agent: {}", text(&r));
    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "the stream broke: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let intervals: Vec<(f64, f64)> = report["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s = &i["sum"];
            (
                s["seconds"].as_f64().unwrap_or(0.0),
                s["bits_per_second"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let gap = longest_gap(&intervals);
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "udp across twilld SIGKILL + restart: {} intervals, longest gap {gap:.1} s, {received} bytes, {retransmits} retransmits",
        intervals.len()
    );
    assert!(received > 0 && intervals.len() >= 50, "{report:#}");
    // The restarted agent adopted the datapath: the same process forwarded throughout.
    assert_eq!(
        datapath_pid(&n1),
        Some(before),
        "n1's datapath was replaced"
    );
    lab.check_all_pass();
}

#[test]
fn udp_mtu_largest_df_passes_one_more_gets_frag_needed_from_the_node() {
    twill_testkit::require_root(
        "udp_mtu_largest_df_passes_one_more_gets_frag_needed_from_the_node",
    );
    let lab = up('m');
    let target = pod_ip(&lab, "n2-p1");
    let (pod, node) = (lab.ns("n1-p1"), lab.ns("n1"));
    let tun = ip_json(&node, &["link", "show", "dev", "twl.tun"]);
    assert_eq!(tun[0]["mtu"], 1472, "{tun}");
    let ping = |size: usize| {
        Command::new("ip")
            .args([
                "netns", "exec", &pod, "ping", "-n", "-c", "1", "-W", "2", "-M", "do",
            ])
            .args(["-s", &size.to_string(), &target])
            .output()
            .unwrap()
    };
    // 1444 + 8 (ICMP) + 20 (IP) = 1472: the tunnel's MTU.
    let fits = ping(1444);
    assert!(fits.status.success(), "largest DF ping: {}", text(&fits));
    // The pod's eth0 and its host veth up to the uplink's 1500, so one byte more leaves the
    // pod and meets twl.tun's MTU in the node's forward.
    let eth0 = ip_json(&pod, &["link", "show", "dev", "eth0"]);
    let peer = eth0[0]["link_index"].as_u64().expect("a veth's peer index");
    let links = ip_json(&node, &["link", "show"]);
    let host = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifindex"].as_u64() == Some(peer))
        .and_then(|l| l["ifname"].as_str())
        .unwrap_or_else(|| panic!("no link {peer} in {links}"))
        .to_string();
    for (ns, dev) in [(node.as_str(), host.as_str()), (pod.as_str(), "eth0")] {
        let o = Command::new("ip")
            .args(["-n", ns, "link", "set", "dev", dev, "mtu", "1500"])
            .output()
            .unwrap();
        assert!(o.status.success(), "mtu 1500 on {dev}: {}", text(&o));
    }
    let more = ping(1445);
    let said = text(&more);
    assert!(!more.status.success(), "1445 + 28 passed: {said}");
    assert!(
        said.contains("Frag needed") && said.contains("mtu = 1472"),
        "no frag-needed from the node: {said}"
    );
    eprintln!(
        "udp MTU: DF 1472 passes; 1473 gets: {}",
        said.lines().find(|l| l.contains("Frag")).unwrap_or("")
    );
}
