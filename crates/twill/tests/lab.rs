//! The real `twill` binary builds a one-node lab whose pods are wired by the real twill-cni,
//! proves it with `twill lab check`, inspects it, runs a command in it, and removes it; the
//! kernel must then hold nothing of it. Needs root.

mod common;
use common::*;

use std::path::PathBuf;
use std::process::{Command, Output};

fn ensure_plugin() -> PathBuf {
    ensure_binaries().0
}

fn assert_check_passes(name: &str) {
    let check = twill(&["lab", "check", "--name", name]);
    assert!(check.status.success(), "check failed:\n{}", text(&check));
}

fn agent_pids(st: &serde_json::Value) -> Vec<u64> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["agent"]["pid"].as_u64())
        .collect()
}

fn in_block(ip: &str, block: &str) -> bool {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let (net, len) = block.split_once('/').unwrap();
    let net: std::net::Ipv4Addr = net.parse().unwrap();
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[test]
fn lab_up_check_status_exec_down() {
    twill_testkit::require_root("lab_up_check_status_exec_down");
    let plugin = ensure_plugin();
    let name = lab_name('a');
    let guard = LabGuard(name.clone());
    let plugin_arg = plugin.to_str().unwrap();

    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--pods-per-node",
        "3",
        "--cni-bin",
        plugin_arg,
    ]);
    assert!(up.status.success(), "up failed:\n{}", text(&up));

    // A second `up` refuses and says how to fix it.
    let again = twill(&["lab", "up", "--name", &name, "--cni-bin", plugin_arg]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains(&format!(
            "lab {name} exists; run twill lab down --name {name}"
        )),
        "{err}"
    );

    let check = twill(&["lab", "check", "--name", &name]);
    assert!(check.status.success(), "check failed:\n{}", text(&check));
    let check_json = twill(&["lab", "check", "--name", &name, "-o", "json"]);
    assert!(
        check_json.status.success(),
        "check -o json failed:\n{}",
        text(&check_json)
    );
    let report: serde_json::Value = serde_json::from_slice(&check_json.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert!(report["passed"].as_bool().unwrap());
    // 3 pods: 2 pairs × 4, 3 pods × 4, 6 per node.
    assert_eq!(checks.len(), 26, "{report:#}");
    for name in [
        "pod→outside via masquerade",
        "hairpin to itself via host port",
        "outside→host port udp",
    ] {
        assert!(checks.iter().any(|c| c["name"] == name), "no {name} check");
    }

    let status = twill(&["lab", "status", "--name", &name, "-o", "json"]);
    assert!(status.status.success(), "status failed:\n{}", text(&status));
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let node = &st["nodes"][0];
    assert_eq!(node["name"], "n1");
    let block = node["blocks"][0].as_str().unwrap().to_string();
    assert!(
        block.starts_with("10.244.") && block.ends_with("/24"),
        "{node:#}"
    );
    let pods = node["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 3);
    let pod_ips: Vec<&str> = pods
        .iter()
        .map(|p| p["address"].as_str().unwrap())
        .collect();
    for ip in &pod_ips {
        assert!(in_block(ip, &block), "{ip} not in {block}");
    }
    // The addresses status reports are the kernel's: pod 2's eth0 holds its address.
    let ns_of = |ns: &str| {
        st["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["netns"] == ns)
            .unwrap()
            .clone()
    };
    let pod2 = ns_of(&format!("{name}-n1-p2"));
    let eth0 = pod2["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "eth0")
        .unwrap();
    assert!(
        eth0["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == &format!("{}/24", pod_ips[1])),
        "{pod2:#}"
    );
    let rt = ns_of(&format!("{name}-rt"));
    let rt_addrs: Vec<&serde_json::Value> = rt["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["addresses"].as_array().unwrap())
        .collect();
    assert!(
        rt_addrs.iter().any(|a| *a == "192.0.2.1/24")
            && rt_addrs.iter().any(|a| *a == "203.0.113.1/24"),
        "{rt:#}"
    );

    // exec runs inside the member and passes the exit code through.
    let exec = twill(&[
        "lab", "exec", "--name", &name, "n1-p3", "--", "ip", "-4", "-o", "addr", "show", "dev",
        "eth0",
    ]);
    assert!(exec.status.success(), "exec failed:\n{}", text(&exec));
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains(&format!("{}/24", pod_ips[2])),
        "{}",
        text(&exec)
    );
    let exit = twill(&[
        "lab", "exec", "--name", &name, "out", "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(exit.status.code(), Some(7), "{}", text(&exit));

    // Inside the lab, `twill` (this one, first on PATH) reads the lab's embedded store,
    // from a node and from a pod, with none of the caller's store settings.
    let status = Command::new(TWILL)
        .args([
            "lab", "exec", "--name", &name, "n1", "--", "twill", "node", "status",
        ])
        .env("TWILL_STORE_DIR", "/nonexistent/twl")
        .env("TWILL_ETCD_ENDPOINTS", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("n1"),
        "{}",
        text(&status)
    );
    let show = twill(&[
        "lab", "exec", "--name", &name, "n1-p1", "--", "twill", "ipam", "show",
    ]);
    assert!(show.status.success(), "{}", text(&show));
    assert!(
        String::from_utf8_lossy(&show.stdout).contains(&block),
        "{block}: {}",
        text(&show)
    );

    // With its only node gone, the lab has nothing to check: that is a failure.
    let rm = twill(&["lab", "remove-node", "--name", &name, "n1"]);
    assert!(rm.status.success(), "{}", text(&rm));
    let empty = twill(&["lab", "check", "--name", &name]);
    assert_eq!(empty.status.code(), Some(1), "{}", text(&empty));
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("no checks ran"),
        "{}",
        text(&empty)
    );

    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    assert_gone(&name, &[]);
    drop(guard);
}

#[test]
fn down_of_an_unknown_lab_is_a_no_op_and_bad_names_are_refused() {
    twill_testkit::require_root("down_of_an_unknown_lab_is_a_no_op_and_bad_names_are_refused");
    // `z` is not a hex digit: this name can never be a lab the other test made.
    let name = format!("twlz{:04x}", std::process::id() & 0xffff);
    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("nothing to remove"),
        "{}",
        text(&down)
    );
    let bad = twill(&["lab", "up", "--name", "mylab"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("must start with \"twl\""),
        "{}",
        text(&bad)
    );
}

/// Runs `twill ARGS` against lab `name`'s embedded store.
fn twill_embedded(name: &str, args: &[&str]) -> Output {
    let dir = format!("/run/{name}/store");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--store", "embedded", "--store-dir", &dir]);
    twill(&all)
}

/// Issue 3's lab on the embedded store: two agents autodetect their node IPs and claim
/// disjoint blocks, pods get addresses in their node's block, `twill get`/`ipam check` read
/// the same store, a leak planted on purpose is found, and `down` leaves nothing.
#[test]
fn lab_on_the_embedded_store_claims_blocks_and_finds_a_leak() {
    twill_testkit::require_root("lab_on_the_embedded_store_claims_blocks_and_finds_a_leak");
    let (plugin, _) = ensure_binaries();
    let name = lab_name('e');
    let guard = LabGuard(name.clone());
    let started = std::time::Instant::now();
    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "3",
        "--agent-poll-interval",
        "1",
    ]);
    assert!(up.status.success(), "up failed:\n{}", text(&up));
    eprintln!("lab up (embedded, 2x3): {:?}", started.elapsed());
    assert_check_passes(&name);

    // Status: each node's IP as its agent chose it (and why), its blocks, its readiness.
    let st = status_json(&name);
    let mut all_blocks = Vec::new();
    for (i, n) in st["nodes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(n["node_ip"], format!("192.0.2.{}", 11 + i), "{n:#}");
        assert!(
            n["ip_method"].as_str().unwrap().contains("interface"),
            "{n:#}"
        );
        assert!(!n["ip_reason"].as_str().unwrap().is_empty(), "{n:#}");
        assert_eq!(n["agent"]["ready"], true, "{n:#}");
        let blocks: Vec<String> = n["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect();
        assert!(!blocks.is_empty(), "{n:#}");
        for p in n["pods"].as_array().unwrap() {
            let ip = p["address"].as_str().unwrap();
            assert!(
                blocks.iter().any(|b| in_block(ip, b)),
                "{ip} not in {blocks:?}"
            );
        }
        all_blocks.extend(blocks);
    }
    let distinct: std::collections::HashSet<_> = all_blocks.iter().collect();
    assert_eq!(
        distinct.len(),
        all_blocks.len(),
        "blocks overlap: {all_blocks:?}"
    );
    let table = twill(&["lab", "status", "--name", &name]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("192.0.2.12"),
        "{}",
        text(&table)
    );

    // The resource commands read the same store.
    let nodes = twill_embedded(&name, &["get", "nodes"]);
    assert!(nodes.status.success(), "{}", text(&nodes));
    let out = String::from_utf8_lossy(&nodes.stdout);
    for want in ["n1", "n2", "192.0.2.11", "192.0.2.12"] {
        assert!(out.contains(want), "no {want}:\n{}", text(&nodes));
    }
    let ok = twill_embedded(&name, &["ipam", "check"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));

    // Plant a leak: a pod wired by twill-cni on n1 whose namespace is then deleted without
    // a DEL. Its host veth goes with it; n1's agent reports the address as not present.
    // At most 12 characters: `ipam check` shows container IDs shortened to 12, as docker does.
    let leak_ns = format!("{name}-lk");
    let leak_id = format!("{name}-lk");
    twill_testkit::sh(&["ip", "netns", "add", &leak_ns]);
    let conflist: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("/run/{name}/n1/10-twill.conflist")).unwrap(),
    )
    .unwrap();
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &format!("{name}-n1")])
        .arg(&plugin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &leak_id)
        .env("CNI_NETNS", format!("/run/netns/{leak_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let add = child.wait_with_output().unwrap();
    assert!(add.status.success(), "leak ADD failed:\n{}", text(&add));
    twill_testkit::sh(&["ip", "netns", "del", &leak_ns]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let leak = loop {
        let c = twill_embedded(&name, &["ipam", "check"]);
        if c.status.code() == Some(1) || std::time::Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(
        leak.status.code(),
        Some(1),
        "no leak found:\n{}",
        text(&leak)
    );
    let out = text(&leak);
    assert!(out.contains(&leak_id) && out.contains("leak"), "{out}");

    let pids = agent_pids(&st);
    assert_eq!(pids.len(), 2);
    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    assert_gone(&name, &pids);
    drop(guard);
}

/// The same lab on etcd: the lab starts one member on its own host on the underlay; the
/// agents and `twill get` (run inside a node, which reaches the underlay) use it.
#[test]
fn lab_on_etcd_runs_a_member_and_the_agents_use_it() {
    twill_testkit::require_root("lab_on_etcd_runs_a_member_and_the_agents_use_it");
    ensure_binaries();
    let name = lab_name('d');
    let guard = LabGuard(name.clone());
    let started = std::time::Instant::now();
    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--store",
        "etcd",
        "--nodes",
        "2",
        "--pods-per-node",
        "3",
        "--block-size",
        "26",
    ]);
    assert!(up.status.success(), "up failed:\n{}", text(&up));
    eprintln!("lab up (etcd, 2x3): {:?}", started.elapsed());
    assert_check_passes(&name);
    let st = status_json(&name);
    assert!(
        st["store"]
            .as_str()
            .unwrap()
            .starts_with("etcd http://192.0.2.2:2379"),
        "{st:#}"
    );
    let blocks = blocks_by_node(&st);
    for (node, b) in &blocks {
        assert!(
            !b.is_empty() && b.iter().all(|b| b.ends_with("/26")),
            "{node}: {b:?}"
        );
    }
    // Inside the lab, plain `twill` (this one, first on PATH) finds the lab's etcd.
    let get = twill(&[
        "lab", "exec", "--name", &name, "n2", "--", "twill", "get", "blocks",
    ]);
    assert!(get.status.success(), "{}", text(&get));
    let out = String::from_utf8_lossy(&get.stdout);
    for (node, bs) in &blocks {
        for b in bs {
            assert!(
                out.contains(b.as_str()) && out.contains(node.as_str()),
                "{b} of {node}:\n{out}"
            );
        }
    }
    let status = twill(&[
        "lab", "exec", "--name", &name, "n1", "--", "twill", "node", "status", "-o", "json",
    ]);
    assert!(status.status.success(), "{}", text(&status));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let text_of = report.to_string();
    assert!(
        text_of.contains("\"n1\"") && text_of.contains("\"n2\""),
        "{report:#}"
    );
    let mut pids = agent_pids(&st);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("/run/{name}/state.json")).unwrap()).unwrap();
    pids.push(state["etcd"]["pid"].as_u64().unwrap());
    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    assert_gone(&name, &pids);
    drop(guard);
}

/// Kill -9 a node's agent and restart it: the node keeps its blocks, and pods on the other
/// node answer pings from its pods all along: the pings cross both nodes' routes to each
/// other (the VXLAN device, its routes, neighbour and FDB entries on n1), so a restart that
/// flushed or broke n1's cross-node routing loses them. Nothing on the packet path waits
/// for the agent.
#[test]
fn an_agent_restart_keeps_blocks_and_connectivity() {
    twill_testkit::require_root("an_agent_restart_keeps_blocks_and_connectivity");
    ensure_binaries();
    let name = lab_name('r');
    let guard = LabGuard(name.clone());
    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--backend",
        "vxlan",
    ]);
    assert!(up.status.success(), "up failed:\n{}", text(&up));
    let before = status_json(&name);
    let blocks_before = blocks_by_node(&before);
    let handoff = format!("/run/{name}/n1/node.json");
    let handoff_before = std::fs::read_to_string(&handoff).unwrap();
    let pid = agent_pids(&before)[0];
    assert_eq!(before["nodes"][0]["name"], "n1", "{before:#}");
    let addr = |node: usize, pod: usize| {
        before["nodes"][node]["pods"][pod]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (n1_pod, n2_pod) = (addr(0, 1), addr(1, 0));
    // The pings leave n1: n2's block is not n1's.
    let n1_blocks = &blocks_before["n1"];
    assert!(
        !n1_blocks.iter().any(|b| in_block(&n2_pod, b)),
        "{n2_pod} is in n1's blocks {n1_blocks:?}"
    );

    // 30 pings, 0.2 s apart, n1-p2 -> n2-p1: before, during and after n1's restart.
    let ping = Command::new("ip")
        .args(["netns", "exec", &format!("{name}-n1-p2")])
        .args(["ping", "-c", "30", "-i", "0.2", "-W", "1", &n2_pod])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // And the other way, n2-p1 -> n1-p2, into n1's block through n1's tunnel end.
    let back = Command::new("ip")
        .args(["netns", "exec", &format!("{name}-n2-p1")])
        .args(["ping", "-c", "30", "-i", "0.2", "-W", "1", &n1_pod])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    twill_testkit::sh(&["kill", "-9", &pid.to_string()]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let restart_started = std::time::Instant::now();
    let restart = twill(&["lab", "restart-agent", "--name", &name, "n1"]);
    assert!(restart.status.success(), "{}", text(&restart));
    eprintln!("restart-agent until ready: {:?}", restart_started.elapsed());
    let back = back.wait_with_output().unwrap();
    assert!(
        back.status.success() && String::from_utf8_lossy(&back.stdout).contains(" 0% packet loss"),
        "pings n2-p1 -> n1-p2 lost during the restart:\n{}",
        text(&back)
    );
    let ping = ping.wait_with_output().unwrap();
    assert!(
        ping.status.success() && String::from_utf8_lossy(&ping.stdout).contains(" 0% packet loss"),
        "pings n1-p2 -> n2-p1 lost during the restart:\n{}",
        text(&ping)
    );

    let after = status_json(&name);
    assert_eq!(blocks_by_node(&after), blocks_before);
    assert_eq!(std::fs::read_to_string(&handoff).unwrap(), handoff_before);
    assert_ne!(agent_pids(&after)[0], pid);
    assert_eq!(after["nodes"][0]["agent"]["ready"], true, "{after:#}");
    assert_check_passes(&name);
    let pids = agent_pids(&after);
    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    assert_gone(&name, &pids);
    drop(guard);
}

/// SLOW (~75 s): etcd stopped for 60 s under a running lab. Pods keep connectivity
/// throughout, readyz names the store, and once etcd is back the agents renew their leases
/// and keep their blocks.
#[test]
fn slow_an_etcd_outage_of_60s_leaves_pods_and_claims_alone() {
    twill_testkit::require_root("slow_an_etcd_outage_of_60s_leaves_pods_and_claims_alone");
    ensure_binaries();
    let name = lab_name('o');
    let guard = LabGuard(name.clone());
    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--store",
        "etcd",
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
    ]);
    assert!(up.status.success(), "up failed:\n{}", text(&up));
    let before = status_json(&name);
    let blocks_before = blocks_by_node(&before);
    let renewals = |st: &serde_json::Value| -> Vec<u64> {
        st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["agent"]["lease_renewals"].as_u64().unwrap_or(0))
            .collect()
    };
    let renewals_before = renewals(&before);

    let stop = twill(&["lab", "store", "stop", "--name", &name]);
    assert!(stop.status.success(), "{}", text(&stop));
    let stopped_at = std::time::Instant::now();

    // The agents notice and say why in /readyz.
    let deadline = stopped_at + std::time::Duration::from_secs(20);
    loop {
        let st = status_json(&name);
        let reasons: Vec<String> = st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["agent"]["readyz"].as_str().unwrap_or("").to_string())
            .collect();
        if reasons.iter().all(|r| r.contains("store")) {
            assert!(st["nodes"][0]["agent"]["running"] == true, "{st:#}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz does not name the store: {reasons:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_check_passes(&name);
    std::thread::sleep(std::time::Duration::from_secs(58).saturating_sub(stopped_at.elapsed()));
    assert_check_passes(&name);
    std::thread::sleep(std::time::Duration::from_secs(60).saturating_sub(stopped_at.elapsed()));
    let start = twill(&["lab", "store", "start", "--name", &name]);
    assert!(start.status.success(), "{}", text(&start));
    eprintln!("etcd was down for {:?}", stopped_at.elapsed());

    let back = std::time::Instant::now();
    let deadline = back + std::time::Duration::from_secs(40);
    let after = loop {
        let st = status_json(&name);
        let ready = st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["agent"]["ready"] == true);
        let grew = renewals(&st)
            .iter()
            .zip(&renewals_before)
            .all(|(now, was)| now > was);
        if ready && grew {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agents did not renew after etcd came back: {st:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    eprintln!(
        "agents ready and renewed {:?} after etcd was back",
        back.elapsed()
    );
    assert_eq!(blocks_by_node(&after), blocks_before);
    assert_check_passes(&name);
    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    assert_gone(&name, &agent_pids(&after));
    drop(guard);
}

/// `lab demo` tells each wiring's story and proves it: bridge (docker0/cni0), and l3
/// (Calico's routing table: the node's block as a blackhole, a /32 per pod to its veth, no
/// bridge, the pod's gateway answered by proxy ARP); both pass their checks and leave
/// nothing behind.
#[test]
fn lab_demo_tells_the_bridge_and_the_l3_story() {
    twill_testkit::require_root("lab_demo_tells_the_bridge_and_the_l3_story");
    ensure_binaries();
    for (tag, wiring) in [('p', "bridge"), ('g', "l3")] {
        let name = lab_name(tag);
        let guard = LabGuard(name.clone());
        let demo = twill(&[
            "lab",
            "demo",
            "--name",
            &name,
            "--pod-wiring",
            wiring,
            "--pods-per-node",
            "2",
        ]);
        let out = String::from_utf8_lossy(&demo.stdout);
        assert!(
            demo.status.success(),
            "{wiring} demo failed:\n{}",
            text(&demo)
        );
        assert!(out.contains("0 unexpected"), "{out}");
        assert!(!out.contains("MISSING"), "{out}");
        if wiring == "l3" {
            for part in [
                "Calico's table, no bridge",
                "blackhole 10.244.",
                "the node's block, as a blackhole",
                "one /32 per pod, to its host veth",
                "169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee",
                "default via 169.254.1.1 dev eth0",
            ] {
                assert!(out.contains(part), "{part:?} missing:\n{out}");
            }
            assert!(!out.contains("docker0/cni0"), "{out}");
        } else {
            assert!(out.contains("the docker0/cni0 model"), "{out}");
            assert!(!out.contains("blackhole"), "{out}");
        }
        assert_gone(&name, &[]);
        drop(guard);
    }
}

/// `lab demo --backend bgp` tells Calico's story for real: the node-to-node mesh comes up
/// Established, the typical fault (first-found autodetection picks eth1) leaves the session
/// stuck with a warning that names the fix, the explicit address fixes it, every check passes
/// and nothing is left behind.
#[test]
fn lab_demo_tells_the_bgp_story_with_the_first_found_fault() {
    twill_testkit::require_root("lab_demo_tells_the_bgp_story_with_the_first_found_fault");
    ensure_binaries();
    let name = lab_name('b');
    let guard = LabGuard(name.clone());
    let demo = twill(&["lab", "demo", "--name", &name, "--backend", "bgp"]);
    let out = String::from_utf8_lossy(&demo.stdout);
    assert!(demo.status.success(), "bgp demo failed:\n{}", text(&demo));
    for part in [
        "== 1. Calico's model: every node is a router",
        "node-to-node mesh | up",
        "== 7. The typical fault: first-found picks the wrong interface",
        "n2 has node IP 203.0.113.200 (first-found",
        "is stuck in Active/Connect",
        "fix the wrong one with ipAutodetection",
        "== 8. The fix: set the node's address explicitly",
        "pod→pod tcp, other node, source kept",
        "0 unexpected",
        "(SIGTERM: each closes its sessions with a Cease)",
    ] {
        assert!(out.contains(part), "{part:?} missing:\n{out}");
    }
    assert!(!out.contains("MISSING"), "{out}");
    // The fix must come after the fault, and the mesh must be up again after the fix.
    let fault = out.find("is stuck in Active/Connect").unwrap();
    let fix = out.find("== 8. The fix").unwrap();
    assert!(fault < fix, "{out}");
    assert!(out[fix..].contains("node-to-node mesh | up"), "{out}");
    assert_gone(&name, &[]);
    drop(guard);
}
