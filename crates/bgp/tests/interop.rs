//! Twill's speaker (`twill bgp serve`) against BIRD 2 and FRR 8.4 in namespaces: eBGP and
//! iBGP both ways with routes into both kernels and pings over them, TCP MD5 (a wrong key
//! gets no session and is counted), four-octet AS (with a two-octet peer), communities set
//! and matched by policy, and route refresh. Short timers everywhere (hold 9, keepalive 3,
//! connect retry 1 s, BIRD connect delay 0): each case takes 2–8 s.

mod common;

use std::time::Duration;

use common::bird::Bird;
use common::conf::{self, bird_bgp, wait_kernel_route};
use common::frr::Frr;
use common::net::Lan;
use common::twill::{count, peer, Twill};
use common::wait;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

fn gate(test: &str) {
    twill_testkit::require_root(test);
    twill_testkit::require_program(test, "bird", "bird2");
    twill_testkit::require_program(test, "vtysh", "frr");
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ref {
    Bird,
    Frr,
}

/// A reference daemon of either kind, so one scenario runs against both.
enum RefDaemon {
    Bird(Bird),
    Frr(Frr),
}

impl RefDaemon {
    /// Starts `kind` on node `at` as AS `asn`, peering with Twill at 192.0.2.1 AS
    /// `twill_as`, announcing 10.244.2.0/24 and installing what it learns.
    /// `extra`: inside BIRD's protocol, or under FRR's `router bgp` (after the neighbors).
    fn start(kind: Ref, lan: &Lan, at: usize, asn: u32, twill_as: u32, extra: &str) -> RefDaemon {
        let me = lan[at].v4.to_string();
        match kind {
            Ref::Bird => RefDaemon::Bird(Bird::start(
                &lan[at],
                &conf::bird(
                    &me,
                    &["10.244.2.0/24"],
                    &bird_bgp("twill", &me, asn, "192.0.2.1", twill_as, extra),
                ),
            )),
            Ref::Frr => RefDaemon::Frr(Frr::start(
                &lan[at],
                &conf::frr(
                    asn,
                    &me,
                    &["10.244.2.0/24"],
                    &[("192.0.2.1", twill_as, "")],
                    extra,
                ),
            )),
        }
    }

    fn wait_established(&self) -> Duration {
        match self {
            RefDaemon::Bird(b) => b.wait_established("twill", T),
            RefDaemon::Frr(f) => f.wait_established("192.0.2.1", T),
        }
    }

    /// The AS path it holds for `prefix`, as a string of ASes ("" for none).
    fn as_path(&self, prefix: &str) -> Option<String> {
        match self {
            RefDaemon::Bird(b) => b
                .routes_for(prefix)
                .first()
                .map(|r| r.attr("BGP.as_path").unwrap_or("").to_string()),
            RefDaemon::Frr(f) => f
                .routes("ipv4")
                .get(prefix)
                .and_then(|p| p[0]["path"].as_str().map(String::from)),
        }
    }
}

/// Twill in node 0 (AS `twill_as`) and `kind` in node 1 (AS `ref_as`): the session comes
/// up, each side's route reaches the other's kernel, and a ping between the two nodes'
/// "pod" addresses (10.244.1.1 and 10.244.2.1, on loopback) follows those routes.
fn session(kind: Ref, twill_as: u32, ref_as: u32) {
    let lan = Lan::new("ses", 2);
    lan[0].add_loopback_addr("10.244.1.1/32");
    lan[1].add_loopback_addr("10.244.2.1/32");
    let mut p = peer("192.0.2.2", ref_as);
    p["import"] = json!("accept");
    p["export"] = json!("accept");
    let twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": twill_as, "originate": ["10.244.1.0/24"], "peers": [p]}),
    );
    let r = RefDaemon::start(kind, &lan, 1, ref_as, twill_as, "");
    let took = twill.wait_established("192.0.2.2", T);
    r.wait_established();
    eprintln!("{kind:?} AS{ref_as} <-> Twill AS{twill_as}: Established after {took:?}");

    let t1 = wait_kernel_route(lan[0].name(), "10.244.2.0/24", &["192.0.2.2"], T);
    let t2 = wait_kernel_route(lan[1].name(), "10.244.1.0/24", &["192.0.2.1"], T);
    eprintln!("routes in the kernels: Twill's {t1:?}, {kind:?}'s {t2:?} after that");
    let expect_path = if twill_as == ref_as {
        String::new()
    } else {
        twill_as.to_string()
    };
    assert_eq!(r.as_path("10.244.1.0/24"), Some(expect_path));
    let paths = twill.paths("10.244.2.0/24");
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert_eq!(paths[0]["best"], true);
    assert_eq!(paths[0]["nextHop"], "192.0.2.2");
    assert!(
        lan[0].ping("10.244.1.1", "10.244.2.1"),
        "no ping over the BGP routes"
    );
    let n = twill.neighbor("192.0.2.2").unwrap();
    assert_eq!(n["flaps"], 0, "{n}");
    // FRR sends Twill's own route back over eBGP (AS path 65002 65001): AS loop, not taken.
    let own = twill.paths("10.244.1.0/24");
    assert!(
        own.iter().all(|p| p["peer"].is_null()),
        "Twill took its own route back: {own:?}"
    );
}

#[test]
fn ebgp_with_bird() {
    gate("ebgp_with_bird");
    session(Ref::Bird, 65001, 65002);
}

#[test]
fn ibgp_with_bird() {
    gate("ibgp_with_bird");
    session(Ref::Bird, 65001, 65001);
}

#[test]
fn ebgp_with_frr() {
    gate("ebgp_with_frr");
    session(Ref::Frr, 65001, 65002);
}

#[test]
fn ibgp_with_frr() {
    gate("ibgp_with_frr");
    session(Ref::Frr, 65001, 65001);
}

fn md5_twill(lan: &Lan, password: &str) -> Twill {
    let mut p = peer("192.0.2.2", 65002);
    p["import"] = json!("accept");
    p["export"] = json!("accept");
    p["password"] = json!(password);
    Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "originate": ["10.244.1.0/24"], "peers": [p]}),
    )
}

#[test]
fn md5_with_bird_and_frr() {
    gate("md5_with_bird_and_frr");
    for kind in [Ref::Bird, Ref::Frr] {
        let lan = Lan::new("md5", 2);
        let twill = md5_twill(&lan, "s3cr3t");
        let extra = match kind {
            Ref::Bird => "password \"s3cr3t\";",
            Ref::Frr => " neighbor 192.0.2.1 password s3cr3t\n",
        };
        let r = RefDaemon::start(kind, &lan, 1, 65002, 65001, extra);
        twill.wait_established("192.0.2.2", T);
        r.wait_established();
        wait_kernel_route(lan[1].name(), "10.244.1.0/24", &["192.0.2.1"], T);
        assert_eq!(twill.neighbor("192.0.2.2").unwrap()["md5"], true);
    }
}

#[test]
fn md5_wrong_password_gets_no_session_and_is_counted() {
    gate("md5_wrong_password_gets_no_session_and_is_counted");
    let lan = Lan::new("md5x", 2);
    let twill = md5_twill(&lan, "right");
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
                "password \"wrong\";",
            ),
        ),
    );
    // Twill connects every second, BIRD too: 5 s is several attempts each way.
    wait::holds_for(
        "no session with a wrong MD5 key",
        Duration::from_secs(5),
        || {
            let t = twill.state("192.0.2.2")?;
            let b = bird.protocol_info("twill")?;
            if t != "Established" && !b.starts_with("Established") {
                Ok(())
            } else {
                Err(format!("Twill {t}, BIRD {b}"))
            }
        },
    );
    let all = twill.neighbors();
    let counters = if all["md5Counters"].is_null() {
        &all["md5_counters"]
    } else {
        &all["md5Counters"]
    };
    let counted = count(counters, "failure") + count(counters, "notFound");
    assert!(counted > 0, "Twill counted no MD5 failure: {counters}");
    assert!(common::kernel::route(lan[0].name(), "10.244.2.0/24").is_none());
    assert!(common::kernel::route(lan[1].name(), "10.244.1.0/24").is_none());
}

/// Twill with a four-octet AS (4200000001) and FRR with one (4200000002): both see the
/// other's AS in the paths.
#[test]
fn four_octet_as_with_frr() {
    gate("four_octet_as_with_frr");
    let lan = Lan::new("as4", 2);
    let mut p = peer("192.0.2.2", 4200000002);
    p["import"] = json!("accept");
    p["export"] = json!("accept");
    let twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 4200000001u32, "originate": ["10.244.1.0/24"], "peers": [p]}),
    );
    let frr = Frr::start(
        &lan[1],
        &conf::frr(
            4200000002,
            "192.0.2.2",
            &["10.244.2.0/24"],
            &[("192.0.2.1", 4200000001, "")],
            "",
        ),
    );
    twill.wait_established("192.0.2.2", T);
    wait_kernel_route(lan[1].name(), "10.244.1.0/24", &["192.0.2.1"], T);
    wait_kernel_route(lan[0].name(), "10.244.2.0/24", &["192.0.2.2"], T);
    let f = frr.routes("ipv4");
    assert_eq!(f["10.244.1.0/24"][0]["path"], "4200000001", "{f:?}");
    assert_eq!(twill.paths("10.244.2.0/24")[0]["asPath"], "4200000002");
}

/// A two-octet peer (BIRD with `enable as4 off`, AS65003) beside a four-octet one (FRR,
/// AS4200000002), Twill AS65001 in the middle. To BIRD, Twill must send FRR's route with
/// AS_TRANS in AS_PATH and the real path in AS4_PATH; from BIRD, it must merge AS4_PATH back
/// (BIRD's route carries 4200000009, prepended by its export filter), and pass the merged
/// path on to FRR. (BIRD 2.0.12 with as4 off cannot peer with a four-octet AS at all: it
/// reads the peer's AS4 capability anyway and answers 2/2 Bad Peer AS; hence Twill's
/// two-octet AS here.)
#[test]
fn a_two_octet_peer_gets_and_gives_as4_path() {
    gate("a_two_octet_peer_gets_and_gives_as4_path");
    let lan = Lan::new("as2", 3);
    let mut peers = Vec::new();
    for (a, asn) in [("192.0.2.2", 4200000002u32), ("192.0.2.3", 65003)] {
        let mut p = peer(a, asn);
        p["import"] = json!("accept");
        p["export"] = json!("accept");
        peers.push(p);
    }
    let twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "originate": ["10.244.1.0/24"], "peers": peers}),
    );
    let frr = Frr::start(
        &lan[1],
        &conf::frr(
            4200000002,
            "192.0.2.2",
            &["10.244.2.0/24"],
            &[("192.0.2.1", 65001, "")],
            "",
        ),
    );
    let bird = Bird::start(
        &lan[2],
        &conf::bird(
            "192.0.2.3",
            &["10.244.3.0/24"],
            &conf::bird_bgp_export(
                "twill",
                "192.0.2.3",
                65003,
                "192.0.2.1",
                65001,
                "enable as4 off;",
                "filter { if source != RTS_STATIC then reject; bgp_path.prepend(4200000009); accept; }",
            ),
        ),
    );
    twill.wait_established("192.0.2.2", T);
    twill.wait_established("192.0.2.3", T);
    bird.wait_established("twill", T);
    wait_kernel_route(lan[1].name(), "10.244.3.0/24", &["192.0.2.1"], T);
    wait_kernel_route(lan[2].name(), "10.244.2.0/24", &["192.0.2.1"], T);
    // BIRD rebuilt the four-octet path from Twill's AS4_PATH.
    let b = bird.routes_for("10.244.2.0/24");
    assert_eq!(b[0].attr("BGP.as_path"), Some("65001 4200000002"), "{b:?}");
    // Twill merged BIRD's AS4_PATH, and FRR sees the merged path.
    assert_eq!(
        twill.paths("10.244.3.0/24")[0]["asPath"],
        "65003 4200000009"
    );
    let f = frr.routes("ipv4");
    assert_eq!(
        f["10.244.3.0/24"][0]["path"], "65001 65003 4200000009",
        "{f:?}"
    );
    assert_eq!(f["10.244.1.0/24"][0]["path"], "65001", "{f:?}");
}

/// Export policy sets a community and a large community (BIRD and FRR see them); import
/// policy matches on a community (only the tagged one of BIRD's two routes is taken).
#[test]
fn communities_set_and_matched() {
    gate("communities_set_and_matched");
    let lan = Lan::new("com", 3);
    let mut pb = peer("192.0.2.2", 65002);
    pb["import"] = json!([{"communities": ["65002:1"], "action": "accept"}]);
    pb["export"] = json!([{"addCommunities": ["65001:100"], "addLargeCommunities": ["65001:7:8"]}]);
    let mut pf = peer("192.0.2.3", 65003);
    pf["import"] = json!("accept");
    pf["export"] =
        json!([{"prefixes": ["10.244.0.0/16 ge 24 le 24"], "addCommunities": ["65001:300"]}]);
    let twill = Twill::start(
        &lan[0],
        json!({"routerId": "192.0.2.1", "as": 65001, "originate": ["10.244.1.0/24"], "peers": [pb, pf]}),
    );
    let bird = Bird::start(
        &lan[1],
        &format!(
            "router id 192.0.2.2;\nprotocol device {{ }}\n\
             protocol static st {{ ipv4; route 10.244.2.0/24 blackhole {{ bgp_community.add((65002,1)); }}; route 10.244.12.0/24 blackhole; }}\n\
             protocol bgp twill {{ local 192.0.2.2 as 65002; neighbor 192.0.2.1 as 65001; {}\n  \
             ipv4 {{ import all; export where source = RTS_STATIC; }}; }}\n",
            conf::BIRD_TIMERS
        ),
    );
    let frr = Frr::start(
        &lan[2],
        &conf::frr(65003, "192.0.2.3", &[], &[("192.0.2.1", 65001, "")], ""),
    );
    twill.wait_established("192.0.2.2", T);
    twill.wait_established("192.0.2.3", T);
    let (r, _) = wait::until("Twill's route in BIRD with the communities", T, || {
        bird.routes_for("10.244.1.0/24")
            .into_iter()
            .next()
            .filter(|r| r.attr("BGP.large_community").is_some())
            .ok_or_else(|| "not yet".to_string())
    });
    assert_eq!(r.attr("BGP.community"), Some("(65001,100)"), "{r:?}");
    assert_eq!(
        r.attr("BGP.large_community"),
        Some("(65001, 7, 8)"),
        "{r:?}"
    );
    // Only the tagged route passed Twill's import policy; it went on to FRR with its own
    // community plus the one FRR's export term adds.
    wait_kernel_route(lan[2].name(), "10.244.2.0/24", &["192.0.2.1"], T);
    let p = frr.paths("10.244.2.0/24");
    let mut c: Vec<&str> = p[0]["community"]["string"]
        .as_str()
        .unwrap_or("")
        .split(' ')
        .collect();
    c.sort();
    assert_eq!(c, ["65001:300", "65002:1"], "{p:?}");
    let p = frr.paths("10.244.1.0/24");
    assert_eq!(p[0]["community"]["string"], "65001:300", "{p:?}");
    wait::holds_for(
        "the untagged route stays out",
        Duration::from_secs(1),
        || {
            if twill.paths("10.244.12.0/24").is_empty() {
                Ok(())
            } else {
                Err("Twill took 10.244.12.0/24, which no import term matches".into())
            }
        },
    );
    let tagged = twill.paths("10.244.2.0/24");
    assert_eq!(tagged[0]["communities"], json!(["65002:1"]), "{tagged:?}");
    assert!(common::kernel::route(lan[0].name(), "10.244.12.0/24").is_none());
}

/// BIRD (`reload in`) and FRR (`clear bgp … soft in`) ask Twill for its routes again:
/// Twill counts the ROUTE-REFRESH and sends them; nothing flaps.
#[test]
fn route_refresh_from_bird_and_frr() {
    gate("route_refresh_from_bird_and_frr");
    let lan = Lan::new("rr", 3);
    let mut peers = Vec::new();
    for (a, asn) in [("192.0.2.2", 65002u32), ("192.0.2.3", 65003)] {
        let mut p = peer(a, asn);
        p["import"] = json!("accept");
        p["export"] = json!("accept");
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
            &bird_bgp("twill", "192.0.2.2", 65002, "192.0.2.1", 65001, ""),
        ),
    );
    let frr = Frr::start(
        &lan[2],
        &conf::frr(
            65003,
            "192.0.2.3",
            &["10.244.3.0/24"],
            &[("192.0.2.1", 65001, "")],
            "",
        ),
    );
    twill.wait_established("192.0.2.2", T);
    twill.wait_established("192.0.2.3", T);
    wait_kernel_route(lan[1].name(), "10.244.1.0/24", &["192.0.2.1"], T);
    wait_kernel_route(lan[2].name(), "10.244.1.0/24", &["192.0.2.1"], T);
    let before: Vec<Value> = ["192.0.2.2", "192.0.2.3"]
        .iter()
        .map(|p| twill.neighbor(p).unwrap())
        .collect();

    bird.cmd("reload in twill");
    frr.vtysh(&["clear bgp 192.0.2.1 soft in"]);
    for (i, p) in ["192.0.2.2", "192.0.2.3"].iter().enumerate() {
        let (after, took) = wait::until(&format!("{p}'s ROUTE-REFRESH answered"), T, || {
            let n = twill.neighbor(p)?;
            let asked = count(&n["received"], "routeRefresh")
                > count(&before[i]["received"], "routeRefresh");
            let sent = count(&n["sent"], "update") > count(&before[i]["sent"], "update");
            if asked && sent {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        });
        assert_eq!(after["flaps"], 0, "{after}");
        eprintln!("{p}: refresh answered after {took:?}");
    }
    assert!(bird.routes_for("10.244.1.0/24").len() == 1);
    assert!(frr.routes("ipv4").contains_key("10.244.1.0/24"));
    assert!(bird
        .protocol_info("twill")
        .unwrap()
        .starts_with("Established"));
}
