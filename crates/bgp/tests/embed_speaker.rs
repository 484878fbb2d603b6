//! The embedded speaker (`twill_bgp::speaker::embed`), as twilld runs it: spawned in this
//! test process on a thread inside a node's namespace, driven with set_peers /
//! set_originated / status / stop against real BIRD daemons, read back through the
//! kernel (`ip -j route`, routes of protocol `bgp`), BIRD's view and log, and
//! `twill bgp neighbors --socket` on its control socket.
//!
//! Bounded: every wait has a deadline of a few seconds (short timers everywhere).

mod common;
mod embed_util;

use serde_json::json;
use twill_bgp::fsm::State;
use twill_bgp::packet::Community;
use twill_bgp::speaker::embed::{EmbedError, Notice};

use common::conf::wait_kernel_no_route;
use common::kernel;
use common::net::Lan;
use common::wait;
use embed_util::{bgp_route, bird_peer, peer, Embed, T};

fn gate(test: &str) {
    twill_testkit::require_root(test);
    twill_testkit::require_program(test, "bird", "bird2");
}

#[test]
fn embedded_speaker_adds_removes_peers_and_replaces_what_it_originates() {
    gate("embedded_speaker_adds_removes_peers_and_replaces_what_it_originates");
    let lan = Lan::new("twlemba", 3);
    let b1 = bird_peer(&lan[1], 65002, &["10.244.2.0/24"]);
    let b2 = bird_peer(&lan[2], 65003, &["10.244.3.0/24"]);
    let mut e = Embed::spawn(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "listen": {"address": "192.0.2.1"},
               "peers": [peer("192.0.2.2", 65002)]}),
    );
    e.wait_state("192.0.2.2", State::Established);
    wait::until("BIRD 1's route in the kernel, proto bgp", T, || {
        bgp_route(lan[0].name(), "10.244.2.0/24", "192.0.2.2")
    });

    // Originated prefixes carry their communities.
    let c = |s: &str| {
        let (a, v) = s.split_once(':').unwrap();
        Community((a.parse::<u32>().unwrap() << 16) | v.parse::<u32>().unwrap())
    };
    let block = "10.244.1.0/24".parse().unwrap();
    e.sp()
        .set_originated(vec![(block, vec![c("65001:100")])])
        .unwrap();
    let (r, _) = wait::until("BIRD 1 learns 10.244.1.0/24", T, || {
        b1.routes_for("10.244.1.0/24")
            .into_iter()
            .next()
            .ok_or_else(|| "not yet".to_string())
    });
    assert_eq!(r.attr("BGP.community"), Some("(65001,100)"), "{r:?}");

    // A second peer joins; the first session is not touched.
    let since = e.status().peers[0].since;
    // The first one gets a tag too: no reset for that either.
    let mut tagged = peer("192.0.2.2", 65002);
    tagged.tag = Some("node-to-node mesh".into());
    e.sp()
        .set_peers(vec![tagged, peer("192.0.2.3", 65003)])
        .unwrap();
    e.wait_state("192.0.2.3", State::Established);
    let cli = e.neighbors_cli();
    assert_eq!(cli["neighbors"][0]["tag"], "node-to-node mesh", "{cli}");
    wait::until("BIRD 2 learns BIRD 1's route and ours", T, || {
        let ok = !b2.routes_for("10.244.2.0/24").is_empty()
            && !b2.routes_for("10.244.1.0/24").is_empty();
        ok.then_some(()).ok_or_else(|| b2.cmd("show route"))
    });
    let st = e.status();
    let p1 = st
        .peers
        .iter()
        .find(|p| p.address.to_string() == "192.0.2.2");
    assert_eq!(
        p1.map(|p| (p.state, p.since)),
        Some((State::Established, since))
    );
    assert!(p1.unwrap().prefixes_received == 1 && p1.unwrap().prefixes_advertised == 2);

    // A bad list is refused whole, and nothing changes.
    let err = e
        .sp()
        .set_peers(vec![peer("192.0.2.2", 65002), peer("192.0.2.2", 65009)])
        .unwrap_err();
    assert!(
        matches!(err, EmbedError::Invalid(ref m) if m.contains("appears twice")),
        "{err}"
    );
    assert_eq!(e.status().peers.len(), 2);

    // Replacing the originated set sends only the difference: one UPDATE for the new
    // prefix, nothing for the unchanged one.
    let before = e.sent_updates("192.0.2.2");
    e.sp()
        .set_originated(vec![
            (block, vec![c("65001:100")]),
            ("10.244.11.0/24".parse().unwrap(), vec![]),
        ])
        .unwrap();
    wait::until("BIRD 1 learns 10.244.11.0/24", T, || {
        (!b1.routes_for("10.244.11.0/24").is_empty())
            .then_some(())
            .ok_or_else(|| b1.cmd("show route"))
    });
    assert_eq!(e.sent_updates("192.0.2.2"), before + 1);
    // Other communities on a prefix: announced again with them.
    e.sp()
        .set_originated(vec![(block, vec![c("65001:200")])])
        .unwrap();
    wait::until(
        "10.244.11.0/24 withdrawn, 10.244.1.0/24 re-tagged",
        T,
        || {
            let tagged = b1
                .routes_for("10.244.1.0/24")
                .first()
                .and_then(|r| r.attr("BGP.community").map(str::to_owned));
            (b1.routes_for("10.244.11.0/24").is_empty() && tagged.as_deref() == Some("(65001,200)"))
                .then_some(())
                .ok_or_else(|| b1.cmd("show route all"))
        },
    );

    // BIRD 1 leaves the list: Cease 6/3, its route leaves our kernel and BIRD 2.
    e.sp().set_peers(vec![peer("192.0.2.3", 65003)]).unwrap();
    wait::until("BIRD 1 hears Peer de-configured", T, || {
        let log = b1.log_text();
        log.to_lowercase()
            .contains("de-configured")
            .then_some(())
            .ok_or_else(|| common::bird::tail(&log, 5))
    });
    wait_kernel_no_route(lan[0].name(), "10.244.2.0/24", T);
    wait::until("BIRD 2 loses BIRD 1's route", T, || {
        b2.routes_for("10.244.2.0/24")
            .is_empty()
            .then_some(())
            .ok_or_else(|| b2.cmd("show route"))
    });
    let cli = e.neighbors_cli();
    let peers: Vec<&str> = cli["neighbors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["peer"].as_str().unwrap())
        .collect();
    assert_eq!(peers, ["192.0.2.3"], "{cli}");

    let heard = e.notices.lock().unwrap().clone();
    for want in ["192.0.2.2", "192.0.2.3"] {
        assert!(
            heard.iter().any(|n| matches!(n, Notice::Session { peer, state: State::Established } if peer.to_string() == want)),
            "no Established notice for {want}: {heard:?}"
        );
    }
    assert!(heard.contains(&Notice::Routes), "{heard:?}");

    // Not graceful: Cease 6/2 to the peer, our kernel routes removed, the socket gone.
    wait::until("BIRD 2's route in our kernel", T, || {
        bgp_route(lan[0].name(), "10.244.3.0/24", "192.0.2.3")
    });
    e.sp.take().unwrap().stop(false).unwrap();
    assert_eq!(kernel::count_protocol(lan[0].name(), false, "bgp"), 0);
    assert!(!e.socket.exists(), "control socket left behind");
    wait::until("BIRD 2 hears Administrative shutdown", T, || {
        let log = b2.log_text();
        log.to_lowercase()
            .contains("administrative shutdown")
            .then_some(())
            .ok_or_else(|| common::bird::tail(&log, 5))
    });
    let last = e.notices.lock().unwrap().last().cloned();
    assert_eq!(last, Some(Notice::Stopped { error: None }));
}

#[test]
fn a_restarted_embedded_speaker_keeps_adopted_routes_until_its_peers_end_of_rib() {
    gate("a_restarted_embedded_speaker_keeps_adopted_routes_until_its_peers_end_of_rib");
    let lan = Lan::new("twlembr", 2);
    let _bird = embed_util::bird_peer_of(
        &lan[1],
        65002,
        65001,
        &["10.244.2.0/24"],
        "graceful restart on;",
    );
    // What a previous run left: BIRD's block, and one nobody announces any more.
    for p in ["10.244.2.0/24", "10.244.99.0/24"] {
        lan[0].exec(&["ip", "route", "add", p, "via", "192.0.2.2", "proto", "bgp"]);
    }
    let e = Embed::spawn_with(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "gracefulRestart": {"restartTime": 30}}),
        twill_testkit::TempDir::new("twlembr"),
        true,
    );
    // No peer yet (twilld has not read the store): nothing is swept.
    e.sp().set_peers(vec![]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(e.status().adopted_pending, 2);
    bgp_route(lan[0].name(), "10.244.99.0/24", "192.0.2.2").unwrap();
    // The peer comes, re-sends its block and End-of-RIB: the other route goes, the
    // re-learned one is not written again.
    e.sp().set_peers(vec![peer("192.0.2.2", 65002)]).unwrap();
    e.wait_state("192.0.2.2", State::Established);
    wait_kernel_no_route(lan[0].name(), "10.244.99.0/24", T);
    bgp_route(lan[0].name(), "10.244.2.0/24", "192.0.2.2").unwrap();
    let st = e.status();
    assert_eq!(
        (
            st.adopted_pending,
            st.kernel.adopted,
            st.kernel.swept,
            st.kernel.installed
        ),
        (0, 2, 1, 0),
        "{st:?}"
    );
}
