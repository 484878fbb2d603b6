//! Route reflection (RFC 4456) with Twill in both roles: the reflector for a BIRD and an
//! FRR client, and a client of a BIRD reflector. Reflected routes keep their next hop and
//! carry ORIGINATOR_ID and CLUSTER_LIST; they reach the kernels. About 3–5 s each.

mod common;

use std::time::Duration;

use common::bird::Bird;
use common::conf::{self, bird_bgp, bird_bgp_export, wait_kernel_route};
use common::frr::Frr;
use common::net::Lan;
use common::twill::{peer, Twill};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn gate(test: &str) {
    twill_testkit::require_root(test);
    twill_testkit::require_program(test, "bird", "bird2");
    twill_testkit::require_program(test, "vtysh", "frr");
}

/// FRR's ORIGINATOR_ID and CLUSTER_LIST of its best path for `prefix`.
fn frr_rr_attrs(frr: &Frr, prefix: &str) -> (String, Vec<String>) {
    let p = frr.paths(prefix);
    let best = p
        .iter()
        .find(|p| p["bestpath"]["overall"] == true)
        .unwrap_or(&p[0]);
    let list = best["clusterList"]["list"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|c| c.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    (
        best["originatorId"].as_str().unwrap_or("").to_string(),
        list,
    )
}

#[test]
fn twill_reflects_between_bird_and_frr_clients() {
    gate("twill_reflects_between_bird_and_frr_clients");
    let lan = Lan::new("rrs", 3);
    let mut peers = Vec::new();
    for a in ["192.0.2.2", "192.0.2.3"] {
        let mut p = peer(a, 65001);
        p["routeReflectorClient"] = json!(true);
        peers.push(p);
    }
    let twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "originate": ["10.244.1.0/24"], "peers": peers}),
    );
    let bird = Bird::start(
        &lan[1],
        &conf::bird(
            "192.0.2.2",
            &["10.244.2.0/24"],
            &bird_bgp("twill", "192.0.2.2", 65001, "192.0.2.1", 65001, ""),
        ),
    );
    let frr = Frr::start(
        &lan[2],
        &conf::frr(
            65001,
            "192.0.2.3",
            &["10.244.3.0/24"],
            &[("192.0.2.1", 65001, "")],
            "",
        ),
    );
    twill.wait_established("192.0.2.2", T);
    twill.wait_established("192.0.2.3", T);

    // FRR's route, reflected to BIRD: next hop FRR, originator FRR, cluster Twill.
    let took = wait_kernel_route(lan[1].name(), "10.244.3.0/24", &["192.0.2.3"], T);
    eprintln!("FRR's route reflected into BIRD's kernel after {took:?}");
    let r = &bird.routes_for("10.244.3.0/24")[0];
    assert_eq!(r.attr("BGP.originator_id"), Some("192.0.2.3"), "{r:?}");
    assert_eq!(r.attr("BGP.cluster_list"), Some("192.0.2.1"), "{r:?}");
    assert_eq!(r.attr("BGP.next_hop"), Some("192.0.2.3"), "{r:?}");
    // BIRD's route, reflected to FRR.
    wait_kernel_route(lan[2].name(), "10.244.2.0/24", &["192.0.2.2"], T);
    assert_eq!(
        frr_rr_attrs(&frr, "10.244.2.0/24"),
        ("192.0.2.2".to_string(), vec!["192.0.2.1".to_string()])
    );
    // Twill's own route reaches both, not reflected (no ORIGINATOR_ID).
    wait_kernel_route(lan[1].name(), "10.244.1.0/24", &["192.0.2.1"], T);
    wait_kernel_route(lan[2].name(), "10.244.1.0/24", &["192.0.2.1"], T);
    assert_eq!(
        bird.routes_for("10.244.1.0/24")[0].attr("BGP.originator_id"),
        None
    );
    // And Twill itself routes to both clients.
    wait_kernel_route(lan[0].name(), "10.244.2.0/24", &["192.0.2.2"], T);
    wait_kernel_route(lan[0].name(), "10.244.3.0/24", &["192.0.2.3"], T);
    for a in ["192.0.2.2", "192.0.2.3"] {
        assert_eq!(twill.neighbor(a).unwrap()["kind"], "ibgp-rr-client");
    }
}

#[test]
fn twill_as_a_client_of_a_bird_reflector() {
    gate("twill_as_a_client_of_a_bird_reflector");
    let lan = Lan::new("rrc", 3);
    let rr = |name: &str, client: &str| {
        bird_bgp_export(
            name,
            "192.0.2.1",
            65001,
            client,
            65001,
            "rr client; rr cluster id 192.0.2.1;",
            "all",
        )
    };
    let bird = Bird::start(
        &lan[0],
        &conf::bird(
            "192.0.2.1",
            &["10.244.1.0/24"],
            &(rr("twill", "192.0.2.2") + &rr("frr", "192.0.2.3")),
        ),
    );
    let twill = Twill::start(
        &lan[1],
        json!({"routerId": "192.0.2.2", "as": 65001, "originate": ["10.244.2.0/24"], "peers": [peer("192.0.2.1", 65001)]}),
    );
    let frr = Frr::start(
        &lan[2],
        &conf::frr(
            65001,
            "192.0.2.3",
            &["10.244.3.0/24"],
            &[("192.0.2.1", 65001, "")],
            "",
        ),
    );
    twill.wait_established("192.0.2.1", T);
    bird.wait_established("frr", T);

    // FRR's route via the reflector: Twill installs it with FRR as the next hop.
    let took = wait_kernel_route(lan[1].name(), "10.244.3.0/24", &["192.0.2.3"], T);
    eprintln!("FRR's route, reflected by BIRD, in Twill's kernel after {took:?}");
    let p = twill.paths("10.244.3.0/24");
    assert_eq!(p[0]["nextHop"], "192.0.2.3", "{p:?}");
    assert_eq!(p[0]["peer"], "192.0.2.1", "{p:?}");
    wait_kernel_route(lan[1].name(), "10.244.1.0/24", &["192.0.2.1"], T);
    // Twill's route via the reflector to FRR: originator Twill, cluster BIRD.
    wait_kernel_route(lan[2].name(), "10.244.2.0/24", &["192.0.2.2"], T);
    assert_eq!(
        frr_rr_attrs(&frr, "10.244.2.0/24"),
        ("192.0.2.2".to_string(), vec!["192.0.2.1".to_string()])
    );
    assert_eq!(twill.neighbor("192.0.2.1").unwrap()["kind"], "ibgp");
}
