//! Twill speaker against Twill speaker, in namespaces: `twill bgp serve` processes on a
//! [`common::net::Lan`], read back through the kernel (`ip -j route`), `twill bgp
//! neighbors|rib -o json`, pings and the namespace's TCP MD5 counters. Each scenario is
//! bounded by its waits (a few seconds, short timers everywhere).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use twill_testkit::{try_sh, TempDir};

use common::kernel;
use common::net::{Lan, Node};
use common::twill::{twill_bin, Twill};
use common::wait;

/// Every speaker in these scenarios has exactly one peer.
trait OnePeer {
    /// Its one `neighbors` entry.
    fn only_neighbor(&self) -> Result<Value, String>;
    /// Waits (15 s at most) for its one session to be Established.
    fn wait_up(&self);
}

impl OnePeer for Twill {
    fn only_neighbor(&self) -> Result<Value, String> {
        Ok(self.try_query("neighbors")?["neighbors"][0].clone())
    }

    fn wait_up(&self) {
        let n = self.only_neighbor().unwrap();
        let peer = n["peer"].as_str().expect("a configured peer").to_owned();
        self.wait_established(&peer, Duration::from_secs(15));
    }
}

/// A peer entry with short timers.
fn peer(addr: &str, asn: u32) -> Value {
    json!({"address": addr, "as": asn, "holdTime": 9, "connectRetry": 1,
           "import": "accept", "export": "accept"})
}

fn speaker_cfg(node: &Node, asn: u32, originate: &[&str], peers: Vec<Value>) -> Value {
    json!({"routerId": node.v4.to_string(), "as": asn, "originate": originate, "peers": peers})
}

fn via(ns: &str, dst: &str) -> Option<Vec<String>> {
    kernel::route(ns, dst)
        .filter(|r| r.protocol == "bgp")
        .map(|r| r.gateways)
}

#[test]
fn two_speakers_with_md5_exchange_routes_into_the_kernel_and_cease_on_sigterm() {
    twill_testkit::require_root(
        "two_speakers_with_md5_exchange_routes_into_the_kernel_and_cease_on_sigterm",
    );
    let lan = Lan::new("spkx", 2);
    let (a, b) = (&lan[0], &lan[1]);
    a.add_loopback_addr("10.244.1.1/32");
    b.add_loopback_addr("10.244.2.1/32");
    let mut pa = peer("192.0.2.2", 65002);
    pa["password"] = json!("s3cr3t");
    let mut pb = peer("192.0.2.1", 65001);
    pb["password"] = json!("s3cr3t");
    let mut sa = Twill::start(a, speaker_cfg(a, 65001, &["10.244.1.0/24"], vec![pa]));
    let sb = Twill::start(b, speaker_cfg(b, 65002, &["10.244.2.0/24"], vec![pb]));
    sa.wait_up();
    wait::until(
        "both routes in both kernels",
        Duration::from_secs(10),
        || {
            let ok = via(a.name(), "10.244.2.0/24") == Some(vec!["192.0.2.2".into()])
                && via(b.name(), "10.244.1.0/24") == Some(vec!["192.0.2.1".into()]);
            ok.then_some(())
                .ok_or_else(|| format!("{:?}", kernel::routes(a.name(), false)))
        },
    );
    assert!(
        a.ping("10.244.1.1", "10.244.2.1"),
        "pod to pod over the learned routes"
    );
    let n = sb.only_neighbor().unwrap();
    assert_eq!(n["md5"], true);
    assert_eq!(n["kind"], "ebgp");
    assert_eq!(n["routerId"], "192.0.2.1");
    assert!(n["prefixesReceived"].as_u64() == Some(1), "{n}");
    let paths = sa.paths("10.244.2.0/24");
    assert_eq!(paths[0]["nextHop"], "192.0.2.2", "{paths:?}");
    assert_eq!(paths[0]["asPath"], "65002");
    assert_eq!(paths[0]["best"], true);
    // The session is really signed: a tcpdump-free check is that the MD5 option is on both
    // sockets; the wrong-key test shows the kernel drops what is not.

    // SIGTERM without graceful restart: Cease to the peer, our routes out of our kernel.
    sa.daemon.signal(libc::SIGTERM);
    assert!(sa
        .daemon
        .wait_exit(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    assert_eq!(kernel::count_protocol(a.name(), false, "bgp"), 0);
    wait::until("B drops the route on Cease", Duration::from_secs(5), || {
        via(b.name(), "10.244.1.0/24").map_or(Ok(()), |r| Err(format!("{r:?}")))
    });
    let n = sb.only_neighbor().unwrap();
    assert!(
        n["info"].as_str().unwrap().contains("6/2"),
        "administrative shutdown received: {n}"
    );
    assert!(!sa.socket.exists(), "control socket removed");
}

#[test]
fn a_wrong_md5_key_never_gets_a_session_and_is_counted() {
    twill_testkit::require_root("a_wrong_md5_key_never_gets_a_session_and_is_counted");
    let lan = Lan::new("spkm", 2);
    let (a, b) = (&lan[0], &lan[1]);
    let mut pa = peer("192.0.2.2", 65002);
    pa["password"] = json!("right");
    let mut pb = peer("192.0.2.1", 65001);
    pb["password"] = json!("wrong");
    let sa = Twill::start(a, speaker_cfg(a, 65001, &["10.244.1.0/24"], vec![pa]));
    let sb = Twill::start(b, speaker_cfg(b, 65002, &["10.244.2.0/24"], vec![pb]));
    wait::holds_for("no session", Duration::from_secs(4), || {
        for s in [&sa, &sb] {
            let n = s.only_neighbor()?;
            if n["state"] == "Established" || n["state"] == "OpenConfirm" {
                return Err(n.to_string());
            }
        }
        Ok(())
    });
    assert!(kernel::route(a.name(), "10.244.2.0/24").is_none());
    let drops = sa.try_query("neighbors").unwrap()["md5Counters"]["failure"]
        .as_u64()
        .unwrap()
        + sb.try_query("neighbors").unwrap()["md5Counters"]["failure"]
            .as_u64()
            .unwrap();
    assert!(drops > 0, "the kernel counted bad signatures");
    assert_eq!(
        drops,
        a.nstat("TcpExtTCPMD5Failure") + b.nstat("TcpExtTCPMD5Failure")
    );
}

#[test]
fn a_key_that_cannot_be_set_fails_the_peer_closed() {
    twill_testkit::require_root("a_key_that_cannot_be_set_fails_the_peer_closed");
    let lan = Lan::new("spkf", 2);
    let a = &lan[0];
    // An IPv6 peer's key cannot go on an IPv4 listener (EINVAL): that peer must not run.
    let mut p = peer("2001:db8::2", 65002);
    p["password"] = json!("s3cr3t");
    let s = Twill::start(a, speaker_cfg(a, 65001, &[], vec![p]));
    wait::holds_for("the peer stays down", Duration::from_secs(2), || {
        let n = s.only_neighbor()?;
        if n["state"] != "Idle" || n["failed"].is_null() {
            return Err(n.to_string());
        }
        Ok(())
    });
    let n = s.only_neighbor().unwrap();
    assert!(
        n["info"]
            .as_str()
            .unwrap()
            .contains("TCP MD5 key could not be set"),
        "{n}"
    );
    let (_, ss, _) = a.try_exec(&["ss", "-tn", "state", "syn-sent"]);
    assert!(!ss.contains("2001:db8::2"), "no connect was made: {ss}");
}

/// Graceful restart, restarting side: the speaker dies (SIGTERM with gracefulRestart, then
/// SIGKILL), its kernel routes stay; restarted, it adopts them with no moment without the
/// route, re-learns them, and sweeps the one nobody announces any more after End-of-RIB.
/// Helper side: the peer keeps our routes stale meanwhile.
#[test]
fn graceful_restart_adopts_the_kernel_routes_with_no_flap() {
    twill_testkit::require_root("graceful_restart_adopts_the_kernel_routes_with_no_flap");
    let lan = Lan::new("spkg", 2);
    let (a, b) = (&lan[0], &lan[1]);
    let gr = json!({"restartTime": 30});
    let mut ca = speaker_cfg(a, 65001, &["10.244.1.0/24"], vec![peer("192.0.2.2", 65002)]);
    ca["gracefulRestart"] = gr.clone();
    let mut cb = speaker_cfg(
        b,
        65002,
        &["10.244.2.0/24", "10.244.3.0/24"],
        vec![peer("192.0.2.1", 65001)],
    );
    cb["gracefulRestart"] = gr;
    let mut sa = Twill::start(a, ca);
    let sb = Twill::start(b, cb);
    wait::until("A has both routes", Duration::from_secs(10), || {
        (via(a.name(), "10.244.2.0/24").is_some() && via(a.name(), "10.244.3.0/24").is_some())
            .then_some(())
            .ok_or_else(|| format!("{:?}", kernel::routes(a.name(), false)))
    });
    // A route of a previous run that nobody announces: to be swept after End-of-RIB.
    a.exec(&[
        "ip",
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        "192.0.2.2",
        "proto",
        "bgp",
    ]);

    // Watch A's table the whole time: the two learned routes must never be absent.
    let stop = Arc::new(AtomicBool::new(false));
    let ns = a.name().to_owned();
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut dumps = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let routes = kernel::routes(&ns, false);
                for dst in ["10.244.2.0/24", "10.244.3.0/24"] {
                    if !routes.iter().any(|r| r.dst == dst && r.protocol == "bgp") {
                        return Err(format!("{dst} absent at dump {dumps}: {routes:?}"));
                    }
                }
                dumps += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(dumps)
        })
    };

    // Graceful stop: no NOTIFICATION, routes left; B keeps ours stale.
    sa.daemon.signal(libc::SIGTERM);
    assert!(sa.daemon.wait_exit(Duration::from_secs(5)).is_some());
    wait::until("B holds A's route stale", Duration::from_secs(5), || {
        let p = sb.paths("10.244.1.0/24");
        (p.first().is_some_and(|p| p["stale"] == true))
            .then_some(())
            .ok_or(format!("{p:?}"))
    });
    assert!(
        via(b.name(), "10.244.1.0/24").is_some(),
        "B still forwards to A"
    );
    let t = Instant::now();
    sa.restart();
    sa.wait_up();
    let n = sa.only_neighbor().unwrap();
    assert_eq!(n["endOfRib"], true, "{n}");
    wait::until(
        "the unannounced adopted route is swept",
        Duration::from_secs(5),
        || via(a.name(), "10.99.0.0/24").map_or(Ok(()), |r| Err(format!("{r:?}"))),
    );
    let k = &sa.try_query("neighbors").unwrap()["kernel"];
    assert_eq!(k["adopted"], 3, "{k}");
    assert_eq!(k["swept"], 1, "{k}");
    wait::until(
        "B's copy of A's route is fresh again",
        Duration::from_secs(5),
        || {
            let p = sb.paths("10.244.1.0/24");
            (p.first().is_some_and(|p| p["stale"] == false))
                .then_some(())
                .ok_or(format!("{p:?}"))
        },
    );

    // And a crash (SIGKILL) is the same to the kernel.
    sa.daemon.kill();
    std::thread::sleep(Duration::from_millis(200));
    sa.restart();
    sa.wait_up();
    stop.store(true, Ordering::Relaxed);
    let dumps = watcher.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert!(dumps > 10, "watched {dumps} dumps over {:?}", t.elapsed());

    // Both restart at once: each sees the other's R bit and does not wait for its
    // End-of-RIB (that would deadlock until the 30 s restart time).
    let mut sb = sb;
    sa.daemon.kill();
    sb.daemon.kill();
    std::thread::sleep(Duration::from_millis(200));
    sa.restart();
    sb.restart();
    let t = Instant::now();
    wait::until(
        "both fresh again after a double restart",
        Duration::from_secs(10),
        || {
            let (pa, pb) = (sa.paths("10.244.2.0/24"), sb.paths("10.244.1.0/24"));
            let fresh = |p: &[Value]| {
                p.first()
                    .is_some_and(|p| p["stale"] == false && p["peer"].is_string())
            };
            (fresh(&pa) && fresh(&pb))
                .then_some(())
                .ok_or(format!("{pa:?} {pb:?}"))
        },
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(via(a.name(), "10.244.2.0/24").is_some() && via(b.name(), "10.244.1.0/24").is_some());
}

/// Graceful restart, helper side: A (restart time 30 s) peers with B, which advertises
/// `b_restart` s and is SIGKILLed; A keeps B's route stale in its kernel, then sweeps it
/// within `sweep_within` and not before 2 s. `to_b` holds A's extra peer fields. Returns
/// A's log.
fn helper_holds_then_sweeps(
    tag: &str,
    to_b: Value,
    b_restart: u16,
    sweep_within: Duration,
) -> String {
    let lan = Lan::new(tag, 2);
    let (a, b) = (&lan[0], &lan[1]);
    let mut pa = peer("192.0.2.2", 65002);
    pa.as_object_mut()
        .unwrap()
        .extend(to_b.as_object().unwrap().clone());
    let mut ca = speaker_cfg(a, 65001, &[], vec![pa]);
    ca["gracefulRestart"] = json!({"restartTime": 30});
    let mut cb = speaker_cfg(b, 65002, &["10.244.2.0/24"], vec![peer("192.0.2.1", 65001)]);
    cb["gracefulRestart"] = json!({"restartTime": b_restart});
    let sa = Twill::start(a, ca);
    let mut sb = Twill::start(b, cb);
    wait::until("A has B's route", Duration::from_secs(10), || {
        via(a.name(), "10.244.2.0/24")
            .map(drop)
            .ok_or_else(|| "none".to_string())
    });
    sb.daemon.kill();
    let t = Instant::now();
    wait::until("A holds it stale", Duration::from_secs(5), || {
        let p = sa.paths("10.244.2.0/24");
        (p.first().is_some_and(|p| p["stale"] == true))
            .then_some(())
            .ok_or(format!("{p:?}"))
    });
    assert!(via(a.name(), "10.244.2.0/24").is_some(), "still forwarding");
    wait::until("swept after the restart time", sweep_within, || {
        via(a.name(), "10.244.2.0/24").map_or(Ok(()), |r| Err(format!("{r:?}")))
    });
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "not before its restart time: {:?}",
        t.elapsed()
    );
    sa.log_text()
}

/// Graceful restart, helper side: the peer is SIGKILLed; its routes stay (stale) in our
/// kernel for its restart time, then go.
#[test]
fn helper_keeps_a_dead_peers_routes_for_its_restart_time_then_sweeps() {
    twill_testkit::require_root(
        "helper_keeps_a_dead_peers_routes_for_its_restart_time_then_sweeps",
    );
    let log = helper_holds_then_sweeps("spkh", json!({}), 3, Duration::from_secs(10));
    // The operator's account of it, in order: up, down with the stale hold, the sweep.
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("{what:?} not in the speaker's log:\n{log}"))
    };
    let up = at("peer 192.0.2.2:179: Established (AS 65002, router id 192.0.2.2");
    let down = at("its routes kept stale for 3 s (graceful restart)");
    let swept = at("peer 192.0.2.2:179: restart time over without its End-of-RIB");
    assert!(up < down && down < swept, "{log}");
}

/// Graceful restart, helper side, with our cap: the peer advertises 30 s, our peer entry
/// says `maxRestartTime: 3`, so its routes stay stale 3 s and are swept long before 30.
#[test]
fn max_restart_time_caps_the_restart_time_a_dead_peer_advertised() {
    twill_testkit::require_root("max_restart_time_caps_the_restart_time_a_dead_peer_advertised");
    // Well before B's own 30 s: only the cap can end it this soon.
    let log = helper_holds_then_sweeps(
        "spkm",
        json!({"maxRestartTime": 3}),
        30,
        Duration::from_secs(12),
    );
    assert!(
        log.contains("its routes kept stale for 3 s (graceful restart)"),
        "the capped time is what the operator reads:\n{log}"
    );
}

#[test]
fn config_errors_name_the_field_and_leave_nothing() {
    let dir = TempDir::new("spkc");
    let sock = dir.path.join("bgp.sock");
    let cfg = dir.path.join("bgp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "routerId: 192.0.2.1\nas: 65001\ncontrolSocket: {}\npeers:\n  - address: 192.0.2.2\n    as: 65002\n    holdtime: 9\n",
            sock.display()
        ),
    )
    .unwrap();
    let bin = twill_bin();
    let (ok, _, err) = try_sh(&[
        bin.to_str().unwrap(),
        "bgp",
        "serve",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("unknown field `holdtime`"), "{err}");
    assert!(err.contains("holdTime"), "names the right one: {err}");
    assert!(!sock.exists());
    let (ok, _, err) = try_sh(&[
        bin.to_str().unwrap(),
        "bgp",
        "serve",
        "--config",
        "/nonexistent/bgp.yaml",
    ]);
    assert!(!ok);
    assert!(err.contains("cannot read /nonexistent/bgp.yaml"), "{err}");
    let (ok, _, err) = try_sh(&[
        bin.to_str().unwrap(),
        "bgp",
        "neighbors",
        "--socket",
        sock.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("is `twill bgp serve` running?"), "{err}");
}

/// ECMP: two routers of one neighbouring AS announce the same prefix; with maxPaths 2 the
/// kernel gets one multipath route through both, and when one goes it narrows to the other
/// in place (replace, never absent).
#[test]
fn equal_paths_become_one_multipath_kernel_route() {
    twill_testkit::require_root("equal_paths_become_one_multipath_kernel_route");
    let lan = Lan::new("spke", 3);
    let (a, b, c) = (&lan[0], &lan[1], &lan[2]);
    let mut ca = speaker_cfg(
        a,
        65001,
        &[],
        vec![peer("192.0.2.2", 65002), peer("192.0.2.3", 65002)],
    );
    ca["maxPaths"] = json!(2);
    let sa = Twill::start(a, ca);
    let _sb = Twill::start(
        b,
        speaker_cfg(b, 65002, &["10.244.9.0/24"], vec![peer("192.0.2.1", 65001)]),
    );
    let mut sc = Twill::start(
        c,
        speaker_cfg(c, 65002, &["10.244.9.0/24"], vec![peer("192.0.2.1", 65001)]),
    );
    wait::until("a two-way multipath route", Duration::from_secs(15), || {
        let mut gw = via(a.name(), "10.244.9.0/24").unwrap_or_default();
        gw.sort();
        (gw == ["192.0.2.2", "192.0.2.3"])
            .then_some(())
            .ok_or(format!("{gw:?}"))
    });
    let paths = sa.paths("10.244.9.0/24");
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(
        paths
            .iter()
            .all(|p| p["best"] == true || p["multipath"] == true),
        "{paths:?}"
    );
    sc.daemon.signal(libc::SIGTERM);
    assert!(sc.daemon.wait_exit(Duration::from_secs(5)).is_some());
    wait::until("narrowed to B", Duration::from_secs(10), || {
        let gw = via(a.name(), "10.244.9.0/24").unwrap_or_default();
        (gw == ["192.0.2.2"]).then_some(()).ok_or(format!("{gw:?}"))
    });
}
