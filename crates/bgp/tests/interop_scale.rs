//! A 100,000-route table both ways: BIRD announces 100,000 /27s to Twill, which puts every
//! one into its kernel and removes them all when BIRD goes; then Twill announces 100,000 to
//! BIRD. Timings are printed, not asserted (the benchmark, scripts/bench-bgp.sh, compares
//! them with BIRD and FRR); each phase is bounded at 120 s, about 10 s in all here.
//!
//! Hold time 60 here, not the suite's 9: a debug build under the whole suite's load has
//! spent more than 9 s on the 100,000 routes without sending a KEEPALIVE (BIRD then sent
//! Hold Timer Expired and the session flapped); the release build takes well under 1 s.

mod common;

use std::time::{Duration, Instant};

use common::bird::Bird;
use common::conf::{self, bird_bgp};
use common::net::Lan;
use common::twill::{peer, Twill};
use common::wait;
use serde_json::json;

const N: usize = 100_000;
const BOUND: Duration = Duration::from_secs(120);
const HOLD: u16 = 60;
/// BIRD's options after the suite's timers (the later one wins).
const BIRD_HOLD: &str = "hold time 60; keepalive time 20;";

/// N /27s carved from 10.0.0.0/8, as the feed benchmark makes them.
fn prefixes() -> Vec<String> {
    (0..N)
        .map(|i| format!("10.{}.{}.{}/27", i / 2048, (i / 8) % 256, (i % 8) * 32))
        .collect()
}

/// Twill's routes in `ns`'s table main (protocol bgp, 186), counted from `ip route` text.
fn twill_routes(ns: &str) -> usize {
    let out = twill_testkit::sh(&[
        "ip", "-4", "-n", ns, "route", "show", "table", "main", "proto", "bgp",
    ]);
    out.stdout.iter().filter(|&&b| b == b'\n').count()
}

#[test]
fn a_100k_route_table_both_ways() {
    twill_testkit::require_root("a_100k_route_table_both_ways");
    twill_testkit::require_program("a_100k_route_table_both_ways", "bird", "bird2");
    let all = prefixes();
    let lan = Lan::new("big", 2);
    let mut p = peer("192.0.2.2", 65002);
    p["holdTime"] = json!(HOLD);
    p["import"] = json!("accept");
    p["export"] = json!("accept");
    let twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "peers": [p]}),
    );
    let statics: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    let mut bird = Bird::start(
        &lan[1],
        &conf::bird(
            "192.0.2.2",
            &statics,
            &bird_bgp("twill", "192.0.2.2", 65002, "192.0.2.1", 65001, BIRD_HOLD),
        ),
    );
    let start = Instant::now();
    twill.wait_established("192.0.2.2", Duration::from_secs(30));
    let est = start.elapsed();
    let (_, took) = wait::until("100,000 routes in Twill's kernel", BOUND, || {
        let n = twill_routes(lan[0].name());
        if n >= N {
            Ok(())
        } else {
            Err(format!("{n} of {N}"))
        }
    });
    eprintln!("BIRD -> Twill: {N} routes in Twill's kernel {took:?} after Established ({est:?} after BIRD started)");
    let n = twill.neighbor("192.0.2.2").unwrap();
    assert_eq!(n["prefixesReceived"], N);
    eprintln!("BIRD packed them into {} UPDATEs", n["received"]["update"]);
    assert_eq!(twill.neighbors()["kernel"]["refused"], 0);

    bird.stop();
    let (_, took) = wait::until(
        "BIRD's 100,000 routes gone from Twill's kernel",
        BOUND,
        || {
            let n = twill_routes(lan[0].name());
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} left"))
            }
        },
    );
    eprintln!("BIRD stopped: all {N} removed from Twill's kernel in {took:?}");
    drop(twill);

    // The other way: Twill originates N, BIRD takes them all.
    let lan = Lan::new("big", 2);
    let mut p = peer("192.0.2.2", 65002);
    p["holdTime"] = json!(HOLD);
    p["import"] = json!("reject");
    p["export"] = json!("accept");
    let twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "originate": all, "kernel": {"install": false}, "peers": [p]}),
    );
    let bird = Bird::start(
        &lan[1],
        &conf::bird(
            "192.0.2.2",
            &[],
            &bird_bgp("twill", "192.0.2.2", 65002, "192.0.2.1", 65001, BIRD_HOLD),
        ),
    );
    twill.wait_established("192.0.2.2", Duration::from_secs(30));
    let (_, took) = wait::until("100,000 of Twill's routes in BIRD", BOUND, || {
        let n = bird.route_count("protocol twill");
        if n >= N {
            Ok(())
        } else {
            Err(format!("{n} of {N}"))
        }
    });
    eprintln!(
        "Twill -> BIRD: {N} routes in BIRD {took:?} after Established, in {} UPDATEs",
        twill.neighbor("192.0.2.2").unwrap()["sent"]["update"]
    );
    let r = &bird.routes_for(&all[N - 1])[0];
    assert_eq!(r.attr("BGP.as_path"), Some("65001"), "{r:?}");
}
