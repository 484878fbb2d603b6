//! Every malformed message of the scripted bad peer (tests/peer/bgp_peer.py) against
//! Twill, each on its own session (its own source address and Twill peer), all at once,
//! while a BIRD session of the same Twill carries routes: each case gets the RFC 7606 /
//! 4271 outcome the script names (treat-as-withdraw, attribute discard, ignore, or the
//! NOTIFICATION's code and subcode), Twill never exits, and the BIRD session never flaps.
//! (tests/peer_reference.rs records what BIRD does with the same messages.) About 5 s.

mod common;

use std::time::Duration;

use common::bird::Bird;
use common::conf::{self, bird_bgp, wait_kernel_route};
use common::net::{Lan, Node};
use common::pypeer::{cases, Outcome, PyPeer};
use common::twill::{peer, Twill};
use common::wait;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn local(i: usize) -> String {
    format!("192.0.2.{}", 101 + i)
}

fn prefix(i: usize) -> String {
    format!("10.244.{}.0/24", 100 + i)
}

#[test]
fn malformed_updates_get_their_rfc_outcome_and_other_sessions_stay_up() {
    let test = "malformed_updates_get_their_rfc_outcome_and_other_sessions_stay_up";
    twill_testkit::require_root(test);
    twill_testkit::require_program(test, "bird", "bird2");
    twill_testkit::require_program(test, "python3", "python3");
    let cases = cases();
    let lan = Lan::new("bad", 3); // 0: the scripted peers, 1: Twill, 2: BIRD
    let mut peers = Vec::new();
    for (i, _) in cases.iter().enumerate() {
        lan[0].exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", local(i)),
            "dev",
            &lan[0].ifname,
        ]);
        let mut p = peer(&local(i), 65030);
        p["passive"] = json!(true);
        p["import"] = json!("accept");
        p["export"] = json!("accept");
        peers.push(p);
    }
    // An observer (AS65031) that only listens: what Twill passes on, byte for byte.
    lan[0].exec(&["ip", "addr", "add", "192.0.2.100/24", "dev", &lan[0].ifname]);
    let mut po = peer("192.0.2.100", 65031);
    po["passive"] = json!(true);
    po["import"] = json!("reject");
    po["export"] = json!("accept");
    peers.push(po);
    let mut pb = peer("192.0.2.3", 65003);
    pb["import"] = json!("accept");
    pb["export"] = json!("accept");
    peers.push(pb);
    let mut twill = Twill::start(
        &lan[1],
        json!({"routerId": "192.0.2.2", "as": 65001, "peers": peers}),
    );
    let bird = Bird::start(
        &lan[2],
        &conf::bird(
            "192.0.2.3",
            &["10.244.3.0/24"],
            &bird_bgp("twill", "192.0.2.3", 65003, "192.0.2.2", 65001, ""),
        ),
    );
    twill.wait_established("192.0.2.3", T);
    wait_kernel_route(lan[1].name(), "10.244.3.0/24", &["192.0.2.3"], T);

    let (mut observer, _) = wait::until("the observer's session", T, || {
        PyPeer::connect(&lan[0], "192.0.2.100", "192.0.2.2", 65031)
    });
    let observed: Vec<Result<Outcome, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, (name, rfc, _))| {
                let (twill, bird, node) = (&twill, &bird, &lan[0]);
                s.spawn(move || run_case(twill, bird, node, i, name, rfc))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // The unknown optional transitive attribute reached the observer with Partial set
    // (RFC 4271 §5: "...the Partial bit ... MUST be set to 1" when passed on).
    let seen = observer.wait(1.0);
    let flags: Vec<u8> = seen["received"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["hex"].as_str())
        .filter_map(|h| attr_flags(&hex(h), 240))
        .collect();
    assert!(
        !flags.is_empty(),
        "attribute 240 never reached the observer: {seen}"
    );
    assert!(
        flags.iter().all(|f| f & 0xe0 == 0xe0),
        "attribute 240 passed on without optional+transitive+partial: flags {flags:x?}"
    );

    let mut wrong = Vec::new();
    for ((name, rfc, why), got) in cases.iter().zip(&observed) {
        eprintln!("{name:28} RFC {rfc:?} ({why}); Twill: {got:?}");
        if got.as_ref() != Ok(rfc) {
            wrong.push(format!("{name}: want {rfc:?}, got {got:?}"));
        }
    }
    twill.daemon.assert_running();
    let b = twill.neighbor("192.0.2.3").unwrap();
    assert_eq!(b["state"], "Established", "{b}");
    assert_eq!(b["flaps"], 0, "the BIRD session went down: {b}");
    assert!(bird
        .protocol_info("twill")
        .unwrap()
        .starts_with("Established"));
    wait_kernel_route(lan[1].name(), "10.244.3.0/24", &["192.0.2.3"], T);
    assert!(
        wrong.is_empty(),
        "outcomes other than the RFC's:\n{}",
        wrong.join("\n")
    );
}

/// One case on its own session: announce a valid route, send the case, observe. Err: the
/// observation went wrong in another way (the message says how). `expect` only sets how
/// long to wait for what should happen (5 s for a NOTIFICATION or a withdrawal, so a busy
/// machine does not turn a late one into another outcome); what is seen decides.
fn run_case(
    twill: &Twill,
    bird: &Bird,
    node: &Node,
    i: usize,
    name: &str,
    expect: &Outcome,
) -> Result<Outcome, String> {
    let me = local(i);
    let (mut peer, _) = wait::try_until(T, || PyPeer::connect(node, &me, "192.0.2.2", 65030))?;
    peer.announce(&prefix(i));
    let has_route = || {
        twill
            .paths(&prefix(i))
            .iter()
            .any(|p| p["peer"] == me.as_str())
    };
    wait::try_until(Duration::from_secs(5), || {
        if has_route() {
            Ok(())
        } else {
            Err(format!("{name}: the valid route never reached Twill"))
        }
    })?;
    peer.case(name, &prefix(i));
    let answer = peer.wait(if matches!(expect, Outcome::Notify(..)) {
        5.0
    } else {
        1.5
    });
    if let Some((c, s, _)) = PyPeer::notification(&answer) {
        if answer["closed"] != true {
            return Err(format!(
                "NOTIFICATION {c}/{s} but the session stayed open: {answer}"
            ));
        }
        return Ok(Outcome::Notify(c, s));
    }
    if answer["closed"] == true {
        return Err(format!("closed without a NOTIFICATION: {answer}"));
    }
    let n = twill.neighbor(&me)?;
    if n["state"] != "Established" {
        return Err(format!("no NOTIFICATION, yet the session is down: {n}"));
    }
    if *expect == Outcome::Withdraw {
        let _ = wait::try_until(Duration::from_secs(5), || {
            if has_route() {
                Err(String::new())
            } else {
                Ok(())
            }
        });
    }
    if !has_route() {
        return Ok(Outcome::Withdraw);
    }
    if name == "unknown-optional-transitive" {
        // Passed on to BIRD too (BIRD shows no Partial bit: the observer checks that).
        let (r, _) = wait::try_until(Duration::from_secs(5), || {
            bird.routes_for(&prefix(i))
                .into_iter()
                .next()
                .ok_or_else(|| "not in BIRD".to_string())
        })?;
        if r.attr("BGP.f0 [t]").is_none() {
            return Err(format!(
                "attribute 240 not passed on to BIRD: {:?}",
                r.attrs
            ));
        }
    }
    Ok(Outcome::Kept)
}

fn hex(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The flags of path attribute `code` in an UPDATE's body (after the 19-byte header).
fn attr_flags(body: &[u8], code: u8) -> Option<u8> {
    let wl = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let at = 2 + wl;
    let al = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]) as usize;
    let attrs = body.get(at + 2..at + 2 + al)?;
    let mut i = 0;
    while i + 2 < attrs.len() {
        let (flags, c) = (attrs[i], attrs[i + 1]);
        let (len, hdr) = if flags & 0x10 != 0 {
            (
                u16::from_be_bytes([attrs[i + 2], *attrs.get(i + 3)?]) as usize,
                4,
            )
        } else {
            (attrs[i + 2] as usize, 3)
        };
        if c == code {
            return Some(flags);
        }
        i += hdr + len;
    }
    None
}
