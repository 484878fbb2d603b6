//! The interop harness tested on its own: BIRD and FRR reach each other in namespaces the
//! test builds (eBGP and iBGP, with TCP MD5), their routes reach each other's kernels, and a
//! wrong MD5 password gets no session and is counted. Each case takes 2–5 s (hold 9,
//! keepalive 3, connect retry 1 s; BIRD's connect delay 0).

mod common;

use std::time::Duration;

use common::bird::Bird;
use common::frr::Frr;
use common::net::Lan;
use common::{kernel, wait};

const T: Duration = Duration::from_secs(20);

fn gate(test: &str) {
    twill_testkit::require_root(test);
    twill_testkit::require_program(test, "bird", "bird2");
    twill_testkit::require_program(test, "vtysh", "frr");
}

fn bird_conf(local_as: u32, peer_as: u32, password: &str) -> String {
    format!(
        r#"router id 192.0.2.1;
protocol device {{ }}
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}
protocol static pods {{ ipv4; route 10.244.1.0/24 blackhole; }}
protocol bgp peer_b {{
  local 192.0.2.1 as {local_as}; neighbor 192.0.2.2 as {peer_as};
  hold time 9; keepalive time 3; connect retry time 1; connect delay time 0;
  error wait time 1,2; debug {{ states, events }};
  password "{password}"; direct;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"#
    )
}

fn frr_conf(local_as: u32, peer_as: u32, password: &str) -> String {
    format!(
        r#"router bgp {local_as}
 bgp router-id 192.0.2.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 192.0.2.1 remote-as {peer_as}
 neighbor 192.0.2.1 password {password}
 neighbor 192.0.2.1 timers 3 9
 neighbor 192.0.2.1 timers connect 1
 address-family ipv4 unicast
  network 10.244.2.0/24
 exit-address-family
"#
    )
}

/// Both sessions up, each side's route in the other's kernel table.
fn session_and_routes(local_as: u32, peer_as: u32) {
    let lan = Lan::new("hbf", 2);
    let bird = Bird::start(&lan[0], &bird_conf(local_as, peer_as, "s3cr3t"));
    let frr = Frr::start(&lan[1], &frr_conf(peer_as, local_as, "s3cr3t"));
    let took = bird.wait_established("peer_b", T);
    frr.wait_established("192.0.2.1", T);
    eprintln!("BIRD AS{local_as} <-> FRR AS{peer_as}: Established after {took:?}");

    let (r, _) = wait::until("FRR's route in BIRD's kernel", T, || {
        kernel::route(lan[0].name(), "10.244.2.0/24")
            .ok_or_else(|| format!("{:?}", kernel::routes(lan[0].name(), false)))
    });
    assert_eq!(
        r.gateways,
        ["192.0.2.2"],
        "{r:?} {:?}",
        bird.routes_for("10.244.2.0/24")
    );
    assert_eq!(r.protocol, "bird");
    let (r, _) = wait::until("BIRD's route in FRR's kernel", T, || {
        kernel::route(lan[1].name(), "10.244.1.0/24")
            .ok_or_else(|| format!("{:?}", kernel::routes(lan[1].name(), false)))
    });
    assert_eq!(r.gateways, ["192.0.2.1"]);
    assert_eq!(r.protocol, "bgp");

    // The harness reads both daemons' tables too.
    let b = bird.routes_for("10.244.2.0/24");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].from, "peer_b");
    assert!(b[0].best);
    let path = if local_as == peer_as { "" } else { "65002" };
    assert_eq!(b[0].attr("BGP.as_path"), Some(path), "{b:?}");
    let f = frr.routes("ipv4");
    assert!(f.contains_key("10.244.1.0/24"), "{f:?}");
}

#[test]
fn bird_frr_ebgp_md5() {
    gate("bird_frr_ebgp_md5");
    session_and_routes(65001, 65002);
}

#[test]
fn bird_frr_ibgp_md5() {
    gate("bird_frr_ibgp_md5");
    session_and_routes(65002, 65002);
}

#[test]
fn wrong_md5_password_gets_no_session_and_is_counted() {
    gate("wrong_md5_password_gets_no_session_and_is_counted");
    let lan = Lan::new("hmd", 2);
    let bird = Bird::start(&lan[0], &bird_conf(65001, 65002, "right"));
    let frr = Frr::start(&lan[1], &frr_conf(65002, 65001, "wrong"));
    // Both sides try every second; 4 s is several attempts each way.
    wait::holds_for(
        "no session with a wrong MD5 key",
        Duration::from_secs(4),
        || match (bird.protocol_info("peer_b"), frr.peer_state("192.0.2.1")) {
            (Ok(b), Ok(f)) if !b.starts_with("Established") && f != "Established" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let failures = lan[0].nstat("TcpExtTCPMD5Failure") + lan[1].nstat("TcpExtTCPMD5Failure");
    assert!(failures > 0, "the kernel counted no MD5 failure");
    assert!(kernel::route(lan[0].name(), "10.244.2.0/24").is_none());
}

#[test]
fn a_failing_test_leaves_nothing_behind() {
    gate("a_failing_test_leaves_nothing_behind");
    let mut seen = (Vec::new(), Vec::new(), Vec::new()); // namespaces, PIDs, directories
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lan = Lan::new("hlk", 3);
        let bird = Bird::start(&lan[0], &bird_conf(65001, 65002, "x"));
        let frr = Frr::start(&lan[1], &frr_conf(65002, 65001, "x"));
        seen.0 = lan.nodes.iter().map(|n| n.name().to_string()).collect();
        seen.0.push(lan.switch_ns().unwrap().to_string());
        seen.1 = vec![bird.daemon.pid(), frr.zebra.pid(), frr.bgpd.pid()];
        seen.2 = vec![bird.dir.path.clone(), frr.dir.path.clone()];
        panic!("deliberate failure mid-test");
    }));
    assert!(failed.is_err());
    assert_eq!(seen.0.len(), 4);
    for ns in &seen.0 {
        assert!(
            !std::path::Path::new(&format!("/run/netns/{ns}")).exists(),
            "{ns} left behind"
        );
    }
    for pid in &seen.1 {
        assert_ne!(unsafe { libc::kill(*pid, 0) }, 0, "pid {pid} still runs");
    }
    for dir in &seen.2 {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// The harness's restart, kill and ping pieces on the reference pair: BIRD SIGKILLed with
/// graceful restart on, FRR (helper) keeps its route stale, and pings riding the routes
/// keep flowing while BIRD is down; BIRD comes back with `-R`. (Not asserted, seen here:
/// after BIRD's recovery it drops FRR's route from its own kernel for about 1 s, then puts
/// it back.) About 8 s.
#[test]
fn bird_killed_frr_keeps_its_routes_with_graceful_restart() {
    gate("bird_killed_frr_keeps_its_routes_with_graceful_restart");
    let lan = Lan::new("hgr", 2);
    lan[0].add_loopback_addr("10.244.1.1/32");
    lan[1].add_loopback_addr("10.244.2.1/32");
    let bconf = r#"router id 192.0.2.1;
protocol device { }
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; graceful restart; }
protocol static pods { ipv4; route 10.244.1.0/24 blackhole; }
protocol bgp peer_b {
  local 192.0.2.1 as 65001; neighbor 192.0.2.2 as 65002; direct;
  hold time 9; keepalive time 3; connect retry time 1; connect delay time 0;
  error wait time 1,2; debug { states, events };
  graceful restart on; graceful restart time 20;
  ipv4 { import all; export where source = RTS_STATIC; };
}
"#;
    let mut bird = Bird::start(&lan[0], bconf);
    let fconf = frr_conf(65002, 65001, "x").replace(" neighbor 192.0.2.1 password x\n", "");
    let fconf = fconf.replace(
        " no bgp network import-check\n",
        " no bgp network import-check\n bgp graceful-restart\n",
    );
    let frr = Frr::start(&lan[1], &fconf);
    frr.wait_established("192.0.2.1", T);
    let has = |i: usize, p: &str, gw: &str| match kernel::route(lan[i].name(), p) {
        Some(r) if r.gateways == [gw] => Ok(()),
        other => Err(format!("{p} in node {i}: {other:?}")),
    };
    wait::until("both routes in both kernels", T, || {
        has(0, "10.244.2.0/24", "192.0.2.2")?;
        has(1, "10.244.1.0/24", "192.0.2.1")
    });
    bird.kill();
    let ping = lan[1].pinger("10.244.2.1", "10.244.1.1", 3);
    wait::holds_for(
        "FRR keeps BIRD's route while BIRD is down",
        Duration::from_secs(3),
        || has(1, "10.244.1.0/24", "192.0.2.1"),
    );
    let (sent, got) = ping.finish();
    eprintln!("pings while BIRD was down: {got}/{sent}");
    assert!(sent >= 10, "{sent}");
    assert_eq!(got, sent, "pings lost while BIRD was down");
    let n = frr.neighbor("192.0.2.1");
    assert_ne!(n["bgpState"], "Established", "{n}");
    bird.restart(&lan[0], bconf, &["-R"]);
    bird.wait_established("peer_b", T);
    frr.wait_established("192.0.2.1", T);
    wait::until("both routes back in both kernels", T, || {
        has(0, "10.244.2.0/24", "192.0.2.2")?;
        has(1, "10.244.1.0/24", "192.0.2.1")
    });
}
