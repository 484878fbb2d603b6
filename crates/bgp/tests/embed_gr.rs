//! Graceful restart moves no kernel route, counted: `ip -o monitor route` runs in every
//! namespace while a Twill speaker (`twill bgp serve`) is SIGKILLed and started again, and
//! while an embedded speaker (twilld's way) stops gracefully and is spawned again. Their
//! peers are each other and BIRD; every route is re-learned with the same next hop. Not one
//! RTM_NEWROUTE or RTM_DELROUTE may appear in any of the three kernels: not on the helper
//! side (stale routes refreshed), not on the restarting side (adopted routes learned again).
//!
//! Bounded: restart time 30 s, but each restart is over in about a second (End-of-RIB);
//! the whole test takes a few seconds.

mod common;
mod embed_util;

use std::time::Duration;

use serde_json::json;
use twill_bgp::fsm::State;

use common::bird::Bird;
use common::conf::{self, bird_bgp};
use common::net::{Lan, Node};
use common::twill::Twill;
use common::wait;
use embed_util::{bgp_route, Embed, RouteMonitor, T};

fn gate(test: &str) {
    twill_testkit::require_root(test);
    twill_testkit::require_program(test, "bird", "bird2");
}

/// Node 0: `twill bgp serve`, AS 64512; node 1: the embedded speaker, AS 64512 (iBGP, as
/// a mesh); node 2: BIRD, AS 65003, peering with both. Graceful restart everywhere.
fn peer(address: &str, asn: u32) -> serde_json::Value {
    json!({"address": address, "as": asn, "holdTime": 9, "connectRetry": 1,
           "import": "accept", "export": "accept"})
}

/// BIRD gets only the node's own block (else it would hold each block from both Twills,
/// and which it prefers, and when, is BIRD's business).
fn to_bird(block: &str) -> serde_json::Value {
    let mut p = peer("192.0.2.3", 65003);
    p["export"] = json!([{"prefixes": [block]}]);
    p
}

fn twill_cfg(node: &Node, block: &str, peers: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"routerId": node.v4.to_string(), "as": 64512,
           "listen": {"address": node.v4.to_string()},
           "gracefulRestart": {"restartTime": 30}, "originate": [block], "peers": peers})
}

fn bird_cfg() -> String {
    let twill = |name: &str, addr: &str| {
        bird_bgp(
            name,
            "192.0.2.3",
            65003,
            addr,
            64512,
            "graceful restart on;",
        )
    };
    conf::bird(
        "192.0.2.3",
        &["10.244.3.0/24"],
        &(twill("a", "192.0.2.1") + &twill("b", "192.0.2.2")),
    )
}

/// Every kernel routes every other node's block (BIRD's kernel protocol included).
fn converged(lan: &Lan) -> Result<(), String> {
    bgp_route(lan[0].name(), "10.244.2.0/24", "192.0.2.2")?;
    bgp_route(lan[0].name(), "10.244.3.0/24", "192.0.2.3")?;
    bgp_route(lan[1].name(), "10.244.1.0/24", "192.0.2.1")?;
    bgp_route(lan[1].name(), "10.244.3.0/24", "192.0.2.3")?;
    for (p, gw) in [
        ("10.244.1.0/24", "192.0.2.1"),
        ("10.244.2.0/24", "192.0.2.2"),
    ] {
        match common::kernel::route(lan[2].name(), p) {
            Some(r) if r.gateways == [gw] => {}
            other => return Err(format!("{p} in BIRD's kernel: {other:?}")),
        }
    }
    Ok(())
}

/// The embedded speaker holds a fresh (not stale) path for `prefix`, and its restart, if
/// any, is over (nothing adopted left).
fn embed_fresh(e: &Embed, prefix: &str) -> Result<(), String> {
    let st = e.status();
    if st.adopted_pending > 0 {
        return Err(format!("{} adopted routes pending", st.adopted_pending));
    }
    let cli = common_rib(e);
    let fresh = cli
        .iter()
        .find(|r| r["prefix"] == prefix)
        .and_then(|r| r["paths"].as_array()?.first().cloned())
        .is_some_and(|p| p["stale"] == false);
    fresh
        .then_some(())
        .ok_or_else(|| format!("{prefix}: {cli:?}"))
}

/// `twill bgp rib -o json --socket` of the embedded speaker: its routes.
fn common_rib(e: &Embed) -> Vec<serde_json::Value> {
    let bin = common::twill::twill_bin();
    let (ok, out, err) = twill_testkit::try_sh(&[
        bin.to_str().unwrap(),
        "bgp",
        "rib",
        "-o",
        "json",
        "--socket",
        e.socket.to_str().unwrap(),
    ]);
    assert!(ok, "twill bgp rib: {err}{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["routes"].as_array().cloned().unwrap_or_default()
}

#[test]
fn restarts_move_no_kernel_route_anywhere() {
    gate("restarts_move_no_kernel_route_anywhere");
    let lan = Lan::new("twlembg", 3);
    let bird = Bird::start(&lan[2], &bird_cfg());
    let mut serve = Twill::start(
        &lan[0],
        twill_cfg(
            &lan[0],
            "10.244.1.0/24",
            vec![peer("192.0.2.2", 64512), to_bird("10.244.1.0/24")],
        ),
    );
    let embed_cfg = twill_cfg(
        &lan[1],
        "10.244.2.0/24",
        vec![peer("192.0.2.1", 64512), to_bird("10.244.2.0/24")],
    );
    let e = Embed::spawn(&lan[1], embed_cfg.clone());
    wait::until("every block in every kernel", T, || converged(&lan));

    let monitors: Vec<RouteMonitor> = (0..3).map(|i| RouteMonitor::start(&lan[i])).collect();

    // 1. `twill bgp serve` SIGKILLed: the embedded speaker and BIRD keep its route stale.
    serve.kill();
    e.wait_state("192.0.2.1", State::Active);
    wait::until("BIRD sees the session to the killed Twill go", T, || {
        let i = bird.protocol_info("a")?;
        (!i.starts_with("Established")).then_some(()).ok_or(i)
    });
    serve.restart();
    serve.wait_established("192.0.2.2", T);
    serve.wait_established("192.0.2.3", T);
    e.wait_state("192.0.2.1", State::Established);
    wait::until("the restarted speaker's restart is over", T, || {
        let n = serve.neighbors();
        let k = &n["kernel"];
        (n["adoptedPending"] == 0 && k["adopted"].as_u64() == Some(2))
            .then_some(())
            .ok_or_else(|| n.to_string())
    });
    wait::until("its route fresh again at the embedded helper", T, || {
        embed_fresh(&e, "10.244.1.0/24")
    });
    let k = serve.neighbors()["kernel"].clone();
    assert_eq!(k["installed"], 0, "adopted routes were written again: {k}");

    // 2. The embedded speaker stops gracefully and is spawned again (twilld restarted).
    let dir = e.stop(true);
    wait::until("BIRD sees the embedded speaker's session go", T, || {
        let i = bird.protocol_info("b")?;
        (!i.starts_with("Established")).then_some(()).ok_or(i)
    });
    let e = Embed::spawn_with(&lan[1], embed_cfg, dir, true);
    e.wait_state("192.0.2.1", State::Established);
    e.wait_state("192.0.2.3", State::Established);
    wait::until("the embedded speaker's restart is over", T, || {
        let st = e.status();
        (st.adopted_pending == 0 && st.kernel.adopted == 2)
            .then_some(())
            .ok_or_else(|| format!("{st:?}"))
    });
    wait::until("its route fresh again at the serve helper", T, || {
        let p = serve.paths("10.244.2.0/24");
        p.first()
            .is_some_and(|p| p["stale"] == false)
            .then_some(())
            .ok_or_else(|| format!("{p:?}"))
    });
    assert_eq!(
        e.status().kernel.installed,
        0,
        "adopted routes were written again"
    );
    // Let anything late (a sweep, BIRD's kernel scan) happen before the counts close.
    std::thread::sleep(Duration::from_millis(1500));
    converged(&lan).unwrap();

    for (i, m) in monitors.into_iter().enumerate() {
        let changes = m.finish();
        assert!(
            changes.is_empty(),
            "node {i}'s kernel saw {} route changes across the restarts:\n{}",
            changes.len(),
            changes.join("\n")
        );
    }
    drop(e);
}

/// A restarted speaker whose configured peers include nodes that are down (one whose
/// namespace refuses the connect, one address nobody has) announces as soon as the peer
/// that is up has sent End-of-RIB: its deferred route selection (RFC 4724 §4.1) does not
/// wait the whole restart time (120 s here) for sessions that never come up. The helper's
/// stale path turns fresh only when the restarted speaker sends its Adj-RIB-Out and
/// End-of-RIB, so that is what is waited for, within 15 s.
#[test]
fn a_restarted_speaker_does_not_wait_for_down_peers() {
    gate("a_restarted_speaker_does_not_wait_for_down_peers");
    let lan = Lan::new("twlembd", 3);
    let mut helper_cfg = twill_cfg(&lan[0], "10.244.1.0/24", vec![peer("192.0.2.2", 64512)]);
    helper_cfg["gracefulRestart"]["restartTime"] = json!(120);
    let helper = Twill::start(&lan[0], helper_cfg);
    // 192.0.2.3: node 2's namespace, where nothing listens (refused); 192.0.2.50: no host.
    let mut cfg = twill_cfg(
        &lan[1],
        "10.244.2.0/24",
        vec![
            peer("192.0.2.1", 64512),
            peer("192.0.2.3", 64512),
            peer("192.0.2.50", 64512),
        ],
    );
    cfg["gracefulRestart"]["restartTime"] = json!(120);
    let e = Embed::spawn(&lan[1], cfg.clone());
    wait::until("the two speakers' blocks in each other's kernel", T, || {
        bgp_route(lan[0].name(), "10.244.2.0/24", "192.0.2.2")?;
        bgp_route(lan[1].name(), "10.244.1.0/24", "192.0.2.1")
    });

    let dir = e.stop(true);
    wait::until(
        "the helper keeps the stopped speaker's route stale",
        T,
        || {
            let p = helper.paths("10.244.2.0/24");
            p.first()
                .is_some_and(|p| p["stale"] == true)
                .then_some(())
                .ok_or_else(|| format!("{p:?}"))
        },
    );
    let e = Embed::spawn_with(&lan[1], cfg, dir, true);
    e.wait_state("192.0.2.1", State::Established);
    wait::until(
        "the restarted speaker's route fresh at the helper (announced, End-of-RIB sent)",
        T,
        || {
            let p = helper.paths("10.244.2.0/24");
            p.first()
                .is_some_and(|p| p["stale"] == false)
                .then_some(())
                .ok_or_else(|| format!("{p:?}"))
        },
    );
    let st = e.status();
    for down in ["192.0.2.3", "192.0.2.50"] {
        let p = st.peers.iter().find(|p| p.address.ip.to_string() == down);
        assert!(
            p.is_some_and(|p| p.state != State::Established),
            "{down} should be down: {p:?}"
        );
    }
    bgp_route(lan[0].name(), "10.244.2.0/24", "192.0.2.2").unwrap();
    drop(e);
}
