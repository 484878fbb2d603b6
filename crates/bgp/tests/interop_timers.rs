//! Twill's session timers against real peers: the hold timer runs out on a peer that goes
//! silent (NOTIFICATION 4/0), connect retry reaches a passive BIRD that starts late, and
//! a simultaneous open with BIRD (both connect at once, RFC 4271 §6.8) ends in one session
//! that stays. Hold 3 and connect retry 1 s: about 5 s each.

mod common;

use std::time::{Duration, Instant};

use common::bird::Bird;
use common::conf::{self, bird_bgp};
use common::net::Lan;
use common::pypeer::PyPeer;
use common::twill::{peer, Twill};
use common::wait;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

#[test]
fn hold_timer_expires_on_a_silent_peer() {
    twill_testkit::require_root("hold_timer_expires_on_a_silent_peer");
    twill_testkit::require_program("hold_timer_expires_on_a_silent_peer", "python3", "python3");
    let lan = Lan::new("hold", 2);
    let mut p = peer("192.0.2.1", 65030);
    p["holdTime"] = json!(3);
    p["passive"] = json!(true);
    p["import"] = json!("accept");
    let twill = Twill::start(
        &lan[1],
        json!({"routerId": "192.0.2.2", "as": 65001, "peers": [p]}),
    );
    let (mut py, _) = wait::until("the scripted peer's session", T, || {
        PyPeer::connect_hold(&lan[0], "192.0.2.1", "192.0.2.2", 65030, 3)
    });
    assert_eq!(py.established["hold"], 3, "{}", py.established);
    py.command("silence");
    let silent = Instant::now();
    let answer = py.wait(6.0);
    let took = silent.elapsed();
    assert_eq!(
        PyPeer::notification(&answer).map(|(c, s, _)| (c, s)),
        Some((4, 0)),
        "no Hold Timer Expired: {answer}"
    );
    assert_eq!(answer["closed"], true, "{answer}");
    eprintln!("Hold Timer Expired {took:?} after the peer went silent (hold 3 s)");
    // The last KEEPALIVE went out up to a second before `silence`: 2–4 s.
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_secs(4),
        "{took:?}"
    );
    let n = twill.neighbor("192.0.2.1").unwrap();
    assert_ne!(n["state"], "Established", "{n}");
}

#[test]
fn connect_retry_reaches_a_passive_bird_that_starts_late() {
    twill_testkit::require_root("connect_retry_reaches_a_passive_bird_that_starts_late");
    twill_testkit::require_program(
        "connect_retry_reaches_a_passive_bird_that_starts_late",
        "bird",
        "bird2",
    );
    let lan = Lan::new("cret", 2);
    let mut p = peer("192.0.2.2", 65002);
    p["import"] = json!("accept");
    p["export"] = json!("accept");
    let twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "originate": ["10.244.1.0/24"], "peers": [p]}),
    );
    // Nobody listens yet: Twill's connects are refused, and it retries.
    std::thread::sleep(Duration::from_secs(3));
    let n = twill.neighbor("192.0.2.2").unwrap();
    assert_ne!(n["state"], "Established", "{n}");
    let started = Instant::now();
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
                "passive on;",
            ),
        ),
    );
    twill.wait_established("192.0.2.2", T);
    let took = started.elapsed();
    eprintln!("Established {took:?} after the passive BIRD started (connect retry 1 s)");
    assert!(
        took < Duration::from_secs(4),
        "connect retry 1 s, yet {took:?}"
    );
    bird.wait_established("twill", T);
}

#[test]
fn a_simultaneous_open_with_bird_ends_in_one_session_that_stays() {
    twill_testkit::require_root("a_simultaneous_open_with_bird_ends_in_one_session_that_stays");
    twill_testkit::require_program(
        "a_simultaneous_open_with_bird_ends_in_one_session_that_stays",
        "bird",
        "bird2",
    );
    let lan = Lan::new("coll", 2);
    // BIRD first, connecting at once (connect delay 0); Twill then connects too.
    let bird = Bird::start(
        &lan[1],
        &conf::bird(
            "192.0.2.2",
            &["10.244.2.0/24"],
            &bird_bgp("twill", "192.0.2.2", 65002, "192.0.2.1", 65001, ""),
        ),
    );
    let mut p = peer("192.0.2.2", 65002);
    p["import"] = json!("accept");
    p["export"] = json!("accept");
    let twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "originate": ["10.244.1.0/24"], "peers": [p]}),
    );
    twill.wait_established("192.0.2.2", T);
    bird.wait_established("twill", T);
    wait::holds_for("one session, no flap", Duration::from_secs(5), || {
        let n = twill.neighbor("192.0.2.2")?;
        let b = bird.protocol_info("twill")?;
        if n["state"] == "Established" && n["flaps"] == 0 && b.starts_with("Established") {
            Ok(())
        } else {
            Err(format!("Twill {n}, BIRD {b}"))
        }
    });
    let conns = lan[0].exec(&[
        "ss",
        "-Htn",
        "state",
        "established",
        "( sport = :179 or dport = :179 )",
    ]);
    let n = String::from_utf8_lossy(&conns.stdout).lines().count();
    assert_eq!(
        n,
        1,
        "BGP connections left open: {}",
        String::from_utf8_lossy(&conns.stdout)
    );
}
