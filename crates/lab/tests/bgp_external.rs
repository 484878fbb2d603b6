//! External routers in Calico mode, through the real `twill lab`: BIRD 2 and FRR 8 in the
//! router namespace, in AS 64513, peering eBGP with TCP MD5 with every node (AS 64512) —
//! as the router outside one segment, and as the ToR between two. Each proves: every node's
//! session with the router Established (as the node publishes it, with the router's AS);
//! the router's kernel holds every pod block; the outside host reaches every pod by pod IP
//! with no NAT (`lab check`'s routed row); each node announces the router its own blocks
//! only; and the sessions are signed on the wire (a capture in the router namespace: with
//! the key tcpdump finds every BGP segment's MD5 valid, with another key invalid).
//! CI runs all four (BIRD and FRR, outside one segment and as the ToR of two), 5-10 s each
//! once the binaries are built; every wait is bounded (sessions 10 s, the restarted one
//! 20 s).
//! Needs root, bird2, frr and tcpdump.

mod bgp_util;
use bgp_util::*;

use std::process::{Command, Stdio};
use std::time::Duration;

/// The lab's key for every node↔router session (twill_lab::plan::ROUTER_MD5_KEY).
const KEY: &str = "twl-lab-md5";
const ROUTER_AS: u64 = 64513;

/// Two nodes on one segment, three across two.
fn nodes_count(segments: u8) -> String {
    if segments == 2 { "3" } else { "2" }.to_string()
}

fn external(tag: char, daemon: &str, segments: u8) {
    twill_testkit::require_root(&format!("external {daemon} {segments}"));
    require(if daemon == "bird" { "bird" } else { "bgpd" });
    require("tcpdump");
    let nodes = nodes_count(segments);
    let segs = segments.to_string();
    let lab = Lab::up(
        tag,
        &[
            "--nodes",
            &nodes,
            "--pods-per-node",
            "1",
            "--segments",
            &segs,
            "--backend",
            "bgp",
            "--external-router",
            daemon,
        ],
    );
    let rows = lab.check_all_pass();
    let routed: Vec<_> = rows
        .iter()
        .filter(|r| r["name"] == "outside→pod ip, routed, no NAT")
        .collect();
    assert_eq!(routed.len().to_string(), nodes, "{rows:#?}");
    for r in &routed {
        assert_eq!(r["expected"], "pass", "{r}");
        assert!(
            r["detail"]
                .as_str()
                .unwrap()
                .contains("saw source 203.0.113.10"),
            "{r}"
        );
    }

    let blocks = lab.blocks();
    let have = route_dsts(&lab.ns("rt"), &[]);
    for (node, bs) in &blocks {
        for b in bs {
            assert!(
                have.contains(b),
                "{daemon} put no route to {b} of {node} in the router's kernel: {have:?}"
            );
        }
    }
    // Sessions as the nodes publish them (at most once a second, so a session that came up
    // a moment ago may not show yet): wait, bounded (10 s), until every node's session
    // with the router is Established and has exchanged routes.
    wait_for(
        "every node Established with the router, routes exchanged",
        Duration::from_secs(10),
        || {
            let st = lab.node_status("n1");
            let nodes = st["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.len().to_string() != nodes_count(segments) {
                return Err(format!("{} nodes: {st:#}", nodes.len()));
            }
            for n in &nodes {
                let name = n["name"].as_str().unwrap_or_default();
                let peers = n["routing"]["peers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let to_router: Vec<_> = peers.iter().filter(|p| p["asn"] == ROUTER_AS).collect();
                let [r] = to_router[..] else {
                    return Err(format!("{name}'s sessions with the router: {n:#}"));
                };
                if r["state"] != "Established" || r["peerType"] == "nodeMesh" {
                    return Err(format!("{name}: {r}"));
                }
                // A node announces its own blocks to the router, nothing else (Calico's
                // export to routers outside the cluster).
                let own = blocks.get(name).map_or(0, Vec::len) as u64;
                if r["prefixesAdvertised"].as_u64() != Some(own) || own == 0 {
                    return Err(format!("{name} should announce its {own} block(s): {r}"));
                }
                // Across segments the ToR is how the other segment's blocks arrive; on
                // one segment it sends back the other nodes' blocks too.
                if r["prefixesReceived"].as_u64().unwrap_or(0) == 0 {
                    return Err(format!("{name} learned nothing from the router: {r}"));
                }
            }
            Ok(())
        },
    );

    // MD5 on the wire: a fresh session (n1's agent restarted) captured in the router's
    // namespace, then read back by tcpdump twice: with the lab's key every BGP segment's
    // RFC 2385 signature is valid, with another key the same segments are invalid (so the
    // signatures are really there and really checked).
    let dir = twill_testkit::TempDir::new("md5");
    let pcap = dir.path.join("bgp.pcap");
    let mut dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("rt"),
            "tcpdump",
            "-U",
            "-n",
            "-i",
            "any",
            "-w",
        ])
        .arg(&pcap)
        .args(["tcp port 179 and (host 192.0.2.1 or host 198.51.100.1)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "tcpdump to start",
        Duration::from_secs(5),
        || match std::fs::metadata(&pcap) {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    );
    let restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = twill(&["lab", "restart-agent", "--name", &lab.name, "n1"]);
    assert!(r.status.success(), "restart-agent: {}", text(&r));
    wait_for(
        "n1 Established with the router again (a new session)",
        Duration::from_secs(20),
        || {
            let st = lab.node_status("n1");
            let n1 = st["nodes"]
                .as_array()
                .and_then(|ns| ns.iter().find(|n| n["name"] == "n1"))
                .cloned()
                .unwrap_or_default();
            let ok = n1["routing"]["peers"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["asn"] == ROUTER_AS
                        && p["state"] == "Established"
                        && p["since"].as_u64().unwrap_or(0) >= restarted_at
                })
            });
            if ok {
                Ok(())
            } else {
                Err(n1.to_string())
            }
        },
    );
    let read = |key: &str| {
        let o = Command::new("tcpdump")
            .args(["-n", "-v", "-r"])
            .arg(&pcap)
            .args(["-M", key])
            .output()
            .unwrap();
        assert!(o.status.success(), "tcpdump -r: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // tcpdump prints a segment's RFC 2385 option as `md5 valid`, `md5  (invalid)` or (no
    // key) `md5 can't check`; the capture holds only the router's own sessions, so every
    // segment (SYNs included) must carry one.
    let segments = |out: &str| out.lines().filter(|l| l.contains(": Flags [")).count();
    // `since` has a resolution of one second, so the old session can pass the wait above
    // when it came up in the second of the restart: wait (bounded, 20 s) for the new
    // session's handshake and OPENs in the capture itself (-U writes every packet).
    wait_for(
        "the new session's segments in the capture",
        Duration::from_secs(20),
        || {
            // Not `read`: a packet being written may end the file short, which is no error.
            let o = Command::new("tcpdump")
                .args(["-n", "-r"])
                .arg(&pcap)
                .output()
                .map_err(|e| e.to_string())?;
            match segments(&String::from_utf8_lossy(&o.stdout)) {
                n if n >= 4 => Ok(()),
                n => Err(format!("{n} segment(s) so far")),
            }
        },
    );
    let _ = dump.kill();
    let _ = dump.wait();
    let seen = read(KEY);
    let (all, valid) = (segments(&seen), seen.matches("md5 valid").count());
    assert!(
        valid >= 4,
        "tcpdump saw too few signed BGP segments ({valid}):\n{seen}"
    );
    assert_eq!(
        valid, all,
        "a segment of a router session without a good signature:\n{seen}"
    );
    let wrong = read("not-the-lab-key");
    assert_eq!(
        (
            wrong.matches("md5  (invalid)").count(),
            wrong.matches("md5 valid").count()
        ),
        (valid, 0),
        "with another key the same segments must fail:\n{wrong}"
    );
}

#[test]
fn bird_outside_one_segment() {
    external('x', "bird", 1);
}

#[test]
fn frr_as_the_tor_of_two_segments() {
    external('y', "frr", 2);
}

#[test]
fn frr_outside_one_segment() {
    external('z', "frr", 1);
}

#[test]
fn bird_as_the_tor_of_two_segments() {
    external('w', "bird", 2);
}
