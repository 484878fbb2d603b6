//! Graceful restart (RFC 4724) both ways.
//! - Twill SIGKILLed: BIRD and FRR (helpers) keep its routes for its restart time, and pings
//!   between the namespaces, which ride those routes, never stop: while Twill is dead, when
//!   it comes back and adopts its kernel routes, and after.
//! - A BIRD peer SIGKILLed: Twill (helper) keeps BIRD's routes stale; BIRD restarted with
//!   `-R` re-sends one of its two routes and End-of-RIB, and Twill sweeps the other; a BIRD
//!   that stays dead has its routes swept when its restart time runs out.
//!
//! Bounded: restart times of 6–30 s, each test 10–20 s.

mod common;

use std::time::{Duration, Instant};

use common::bird::Bird;
use common::conf::{self, bird_bgp, wait_kernel_no_route, wait_kernel_route};
use common::frr::Frr;
use common::kernel;
use common::net::Lan;
use common::twill::{peer, Twill};
use common::wait;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn gate(test: &str) {
    twill_testkit::require_root(test);
    twill_testkit::require_program(test, "bird", "bird2");
    twill_testkit::require_program(test, "vtysh", "frr");
}

fn has_route(ns: &str, prefix: &str, gw: &str) -> Result<(), String> {
    match kernel::route(ns, prefix) {
        Some(r) if r.gateways == [gw] => Ok(()),
        other => Err(format!("{prefix} in {ns}: {other:?}")),
    }
}

#[test]
fn twill_killed_peers_keep_its_routes_and_traffic_flows() {
    gate("twill_killed_peers_keep_its_routes_and_traffic_flows");
    let lan = Lan::new("grt", 3);
    for (i, a) in ["10.244.1.1/32", "10.244.2.1/32", "10.244.3.1/32"]
        .iter()
        .enumerate()
    {
        lan[i].add_loopback_addr(a);
    }
    let mut peers = Vec::new();
    for (a, asn) in [("192.0.2.2", 65002u32), ("192.0.2.3", 65003)] {
        let mut p = peer(a, asn);
        p["import"] = json!("accept");
        p["export"] = json!("accept");
        peers.push(p);
    }
    let mut twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "originate": ["10.244.1.0/24"],
               "gracefulRestart": {"restartTime": 30}, "peers": peers}),
    );
    let bird = Bird::start(
        &lan[1],
        &conf::bird(
            "192.0.2.2",
            &["10.244.2.0/24"],
            &bird_bgp(
                "twill",
                "192.0.2.2",
                65002,
                "192.0.2.1",
                65001,
                "graceful restart on;",
            ),
        ),
    );
    let frr = Frr::start(
        &lan[2],
        &conf::frr(
            65003,
            "192.0.2.3",
            &["10.244.3.0/24"],
            &[("192.0.2.1", 65001, "")],
            " bgp graceful-restart\n",
        ),
    );
    twill.wait_established("192.0.2.2", T);
    twill.wait_established("192.0.2.3", T);
    for (i, gw) in [(1, "192.0.2.1"), (2, "192.0.2.1")] {
        wait_kernel_route(lan[i].name(), "10.244.1.0/24", &[gw], T);
    }
    wait_kernel_route(lan[0].name(), "10.244.2.0/24", &["192.0.2.2"], T);
    wait_kernel_route(lan[0].name(), "10.244.3.0/24", &["192.0.2.3"], T);
    // FRR and BIRD know Twill restarts gracefully (its OPEN's capability).
    let n = frr.neighbor("192.0.2.1");
    assert!(n.to_string().contains("gracefulRestart"), "{n}");

    // 12 s of pings from both peers to Twill's node, over the BGP routes, through it all.
    let pings = [
        lan[1].pinger("10.244.2.1", "10.244.1.1", 12),
        lan[2].pinger("10.244.3.1", "10.244.1.1", 12),
    ];
    std::thread::sleep(Duration::from_secs(1));
    twill.kill();
    let killed = Instant::now();
    // Dead for 4 s: the helpers keep its route (stale) and the kernels keep theirs.
    wait::holds_for(
        "the peers keep Twill's route while it is down",
        Duration::from_secs(4),
        || {
            has_route(lan[1].name(), "10.244.1.0/24", "192.0.2.1")?;
            has_route(lan[2].name(), "10.244.1.0/24", "192.0.2.1")?;
            has_route(lan[0].name(), "10.244.2.0/24", "192.0.2.2")
        },
    );
    let b = bird.protocol_info("twill").unwrap();
    assert!(
        !b.starts_with("Established"),
        "BIRD still thinks the session is up: {b}"
    );
    twill.restart();
    twill.wait_established("192.0.2.2", T);
    twill.wait_established("192.0.2.3", T);
    eprintln!(
        "sessions back {:?} after the kill (4 s of it dead)",
        killed.elapsed()
    );
    // Its routes come back in the peers' view (no longer stale) and stay in every kernel.
    wait::holds_for(
        "every route stays after the restart",
        Duration::from_secs(3),
        || {
            has_route(lan[1].name(), "10.244.1.0/24", "192.0.2.1")?;
            has_route(lan[2].name(), "10.244.1.0/24", "192.0.2.1")?;
            has_route(lan[0].name(), "10.244.2.0/24", "192.0.2.2")?;
            has_route(lan[0].name(), "10.244.3.0/24", "192.0.2.3")
        },
    );
    let k = &twill.neighbors()["kernel"];
    assert!(
        k["adopted"].as_u64().unwrap_or(0) >= 2,
        "the restarted Twill adopted nothing: {k}"
    );
    for (i, p) in pings.into_iter().enumerate() {
        let (sent, got) = p.finish();
        eprintln!("pings from node {}: {got}/{sent} answered", i + 1);
        assert!(sent >= 40, "only {sent} pings sent");
        assert_eq!(
            got,
            sent,
            "pings from node {} were lost across Twill's restart",
            i + 1
        );
    }
}

fn bird_gr(statics: &[&str]) -> String {
    conf::bird(
        "192.0.2.2",
        statics,
        &bird_bgp(
            "twill",
            "192.0.2.2",
            65002,
            "192.0.2.1",
            65001,
            "graceful restart on; graceful restart time 6;",
        ),
    )
}

fn twill_helper(lan: &Lan) -> Twill {
    let mut p = peer("192.0.2.2", 65002);
    p["import"] = json!("accept");
    p["export"] = json!("accept");
    Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "originate": ["10.244.1.0/24"],
               "gracefulRestart": {"restartTime": 30}, "peers": [p]}),
    )
}

fn stale(twill: &Twill, prefix: &str) -> Result<bool, String> {
    let p = twill.paths(prefix);
    p.first()
        .map(|p| p["stale"] == true)
        .ok_or_else(|| format!("no path for {prefix}"))
}

#[test]
fn bird_killed_twill_keeps_its_routes_stale_then_sweeps_after_end_of_rib() {
    gate("bird_killed_twill_keeps_its_routes_stale_then_sweeps_after_end_of_rib");
    let lan = Lan::new("grb", 2);
    let twill = twill_helper(&lan);
    let mut bird = Bird::start(&lan[1], &bird_gr(&["10.244.2.0/24", "10.244.22.0/24"]));
    twill.wait_established("192.0.2.2", T);
    wait_kernel_route(lan[0].name(), "10.244.2.0/24", &["192.0.2.2"], T);
    wait_kernel_route(lan[0].name(), "10.244.22.0/24", &["192.0.2.2"], T);

    bird.kill();
    let (n, _) = wait::until(
        "Twill holding BIRD's routes stale",
        Duration::from_secs(5),
        || {
            let n = twill.neighbor("192.0.2.2")?;
            if n["state"] != "Established" && n["staleSecondsLeft"].as_u64().is_some() {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        },
    );
    assert!(
        n["staleSecondsLeft"].as_u64().unwrap() <= 6,
        "BIRD asked for 6 s: {n}"
    );
    assert_eq!(stale(&twill, "10.244.2.0/24"), Ok(true));
    assert_eq!(stale(&twill, "10.244.22.0/24"), Ok(true));
    has_route(lan[0].name(), "10.244.22.0/24", "192.0.2.2").unwrap();

    // BIRD comes back (restart recovery: R and F bits) with one of the two routes.
    bird.restart(&lan[1], &bird_gr(&["10.244.2.0/24"]), &["-R"]);
    twill.wait_established("192.0.2.2", T);
    let took = wait_kernel_no_route(lan[0].name(), "10.244.22.0/24", T);
    eprintln!("the route BIRD did not re-send was swept {took:?} after the session came back");
    wait::until("10.244.2.0/24 fresh again", T, || {
        match stale(&twill, "10.244.2.0/24") {
            Ok(false) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    has_route(lan[0].name(), "10.244.2.0/24", "192.0.2.2").unwrap();
    assert!(twill.paths("10.244.22.0/24").is_empty());
    assert_eq!(twill.neighbor("192.0.2.2").unwrap()["endOfRib"], true);
}

#[test]
fn bird_killed_and_gone_twill_sweeps_when_its_restart_time_runs_out() {
    gate("bird_killed_and_gone_twill_sweeps_when_its_restart_time_runs_out");
    let lan = Lan::new("grs", 2);
    let twill = twill_helper(&lan);
    let mut bird = Bird::start(&lan[1], &bird_gr(&["10.244.2.0/24"]));
    twill.wait_established("192.0.2.2", T);
    wait_kernel_route(lan[0].name(), "10.244.2.0/24", &["192.0.2.2"], T);
    bird.kill();
    let killed = Instant::now();
    // Kept for BIRD's restart time (6 s), less a little for the kill to be noticed...
    wait::holds_for(
        "Twill keeps BIRD's route for its restart time",
        Duration::from_secs(5),
        || has_route(lan[0].name(), "10.244.2.0/24", "192.0.2.2"),
    );
    // ...then swept.
    wait_kernel_no_route(lan[0].name(), "10.244.2.0/24", Duration::from_secs(10));
    let gone = killed.elapsed();
    eprintln!("BIRD's route swept {gone:?} after BIRD was killed (restart time 6 s)");
    assert!(
        gone >= Duration::from_secs(5),
        "swept after {gone:?}, before the restart time"
    );
    assert!(twill.paths("10.244.2.0/24").is_empty());
}
