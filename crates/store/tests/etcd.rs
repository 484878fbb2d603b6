//! `EtcdStore` against real etcd 3.4 processes on loopback (no root needed): the store
//! semantics, failures (etcd down at start, restarted under keep-alives, a cluster losing
//! its leader), racing claims, and TLS with client certificates.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twill_store::etcd::{EtcdConfig, EtcdStore};
use twill_store::{Event, LeaseId, Store, StoreError};
use twill_testkit::etcd::{EtcdCluster, EtcdMember, EtcdTls};

fn store_for(urls: Vec<String>) -> EtcdStore {
    let mut cfg = EtcdConfig::new(urls);
    cfg.timeout = Duration::from_secs(1);
    EtcdStore::connect(&cfg).expect("connect")
}

fn tls_config(urls: Vec<String>, tls: &EtcdTls) -> EtcdConfig {
    EtcdConfig {
        endpoints: urls,
        ca_file: Some(tls.ca_file.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
        timeout: Duration::from_secs(2),
    }
}

/// Retries `f` while it fails transiently, for at most `limit`; returns its value and
/// how long it took.
fn retry<T>(limit: Duration, mut f: impl FnMut() -> Result<T, StoreError>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return (v, start.elapsed()),
            Err(e) if e.is_transient() && start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("after {:?}: {e}", start.elapsed()),
        }
    }
}

fn next_event(w: &mut Box<dyn twill_store::Watch>) -> Event {
    w.next(Duration::from_secs(5))
        .expect("watch")
        .expect("an event within 5 s")
}

/// The store semantics, checked on any `EtcdStore` (plain or TLS). To be joined by the
/// shared conformance suite once it exists.
fn basics(s: &EtcdStore) {
    let p = "/twill/v1/basics/";
    assert_eq!(s.kind(), twill_store::StoreKind::Etcd);
    assert_eq!(s.get(&format!("{p}a")).unwrap(), None);
    let (_, rev0) = s.list(p).unwrap();
    let mut w = s.watch(p, rev0).unwrap();

    let r1 = s.put(&format!("{p}a"), b"one", None).unwrap();
    assert!(r1 > rev0);
    let kv = s.get(&format!("{p}a")).unwrap().unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.lease
        ),
        (&b"one"[..], r1, r1, None)
    );

    assert_eq!(
        s.create(&format!("{p}a"), b"two", None).unwrap(),
        None,
        "exists: not overwritten"
    );
    let r2 = s
        .create(&format!("{p}b"), &[0, 255, 10], None)
        .unwrap()
        .expect("created");
    assert!(r2 > r1);
    assert_eq!(
        s.get(&format!("{p}b")).unwrap().unwrap().value,
        vec![0, 255, 10],
        "binary values survive base64"
    );

    assert!(
        !s.update(&format!("{p}a"), r2, b"stale", None).unwrap(),
        "wrong revision"
    );
    assert!(s.update(&format!("{p}a"), r1, b"three", None).unwrap());
    let r3 = s.get(&format!("{p}a")).unwrap().unwrap().mod_revision;
    assert!(
        !s.update(&format!("{p}gone"), r3, b"x", None).unwrap(),
        "absent key"
    );

    // The prefix must not match keys that merely start alike.
    s.put("/twill/v1/basicsX", b"outside", None).unwrap();
    let (kvs, rev) = s.list(p).unwrap();
    assert_eq!(
        kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        [format!("{p}a"), format!("{p}b")]
    );
    assert!(rev >= r3);

    assert!(!s.delete_if(&format!("{p}b"), r1).unwrap());
    assert!(s.delete_if(&format!("{p}b"), r2).unwrap());
    assert!(s.delete(&format!("{p}a")).unwrap());
    assert!(!s.delete(&format!("{p}a")).unwrap());

    // Leases: bound keys vanish with the lease; keep-alive on a dead lease says so.
    let lease = s.grant(Duration::from_secs(10)).unwrap();
    assert!(s.keep_alive(lease).unwrap() >= Duration::from_secs(9));
    s.put(&format!("{p}leased"), b"l", Some(lease)).unwrap();
    assert_eq!(
        s.get(&format!("{p}leased")).unwrap().unwrap().lease,
        Some(lease)
    );
    s.revoke(lease).unwrap();
    assert_eq!(s.get(&format!("{p}leased")).unwrap(), None);
    assert!(matches!(s.keep_alive(lease), Err(StoreError::LeaseExpired(l)) if l == lease));
    assert!(matches!(
        s.put(&format!("{p}x"), b"x", Some(lease)),
        Err(StoreError::LeaseExpired(_))
    ));
    assert!(matches!(
        s.create(&format!("{p}x"), b"x", Some(LeaseId(12345))),
        Err(StoreError::LeaseExpired(_))
    ));

    // The watch saw every change under the prefix, in order, and nothing outside it.
    let mut seen = Vec::new();
    while let Some(ev) = w.next(Duration::from_millis(500)).unwrap() {
        seen.push(ev);
    }
    let summary: Vec<(char, String, i64)> = seen
        .iter()
        .map(|e| {
            (
                if matches!(e, Event::Put(_)) { 'P' } else { 'D' },
                e.key().trim_start_matches(p).to_string(),
                e.revision(),
            )
        })
        .collect();
    let keys: Vec<(char, &str)> = summary
        .iter()
        .map(|(k, key, _)| (*k, key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ('P', "a"),
            ('P', "b"),
            ('P', "a"),
            ('D', "b"),
            ('D', "a"),
            ('P', "leased"),
            ('D', "leased")
        ]
    );
    assert!(
        summary.windows(2).all(|w| w[0].2 < w[1].2),
        "revisions increase: {summary:?}"
    );
    assert_eq!(summary[0].2, r1);

    // Watching from an older revision replays history.
    let mut again = s.watch(p, rev0).unwrap();
    assert_eq!(next_event(&mut again).revision(), r1);
}

#[test]
fn etcd_store_basics() {
    let m = EtcdMember::start("basics");
    let s = store_for(vec![m.client_url()]);
    basics(&s);
    let t0 = Instant::now();
    for _ in 0..200 {
        s.get("/twill/v1/none").unwrap();
    }
    eprintln!(
        "get latency, plain HTTP on loopback (reused connections): {:?}",
        t0.elapsed() / 200
    );
    let fresh = Instant::now();
    for _ in 0..50 {
        store_for(vec![m.client_url()])
            .get("/twill/v1/none")
            .unwrap();
    }
    eprintln!(
        "get latency on a new connection each time: {:?}",
        fresh.elapsed() / 50
    );
}

#[test]
fn lease_expiry_is_seen_by_watchers() {
    let m = EtcdMember::start("expiry");
    let s = store_for(vec![m.client_url()]);
    let lease = s.grant(Duration::from_secs(1)).unwrap();
    let rev = s.put("/twill/v1/nodes/n1", b"{}", Some(lease)).unwrap();
    let mut w = s.watch("/twill/v1/nodes/", rev).unwrap();
    let start = Instant::now();
    match w.next(Duration::from_secs(5)).unwrap() {
        Some(Event::Delete { key, mod_revision }) => {
            assert_eq!(key, "/twill/v1/nodes/n1");
            assert!(mod_revision > rev);
        }
        other => panic!("expected the expiry DELETE, got {other:?}"),
    }
    eprintln!(
        "lease of 1 s expired, watcher told after {:?}",
        start.elapsed()
    );
    assert!(matches!(
        s.keep_alive(lease),
        Err(StoreError::LeaseExpired(_))
    ));
}

#[test]
fn compacted_watch_start_is_reported() {
    let m = EtcdMember::start("compact");
    let s = store_for(vec![m.client_url()]);
    let first = s.put("/twill/v1/c/a", b"1", None).unwrap();
    let last = s.put("/twill/v1/c/a", b"2", None).unwrap();
    twill_testkit::sh(&[
        "etcdctl",
        "--endpoints",
        &m.client_url(),
        "compaction",
        &last.to_string(),
    ]);
    // etcd confirms the watch, then cancels it: the error comes from watch() or next().
    let err = match s.watch("/twill/v1/c/", first - 1) {
        Err(e) => e,
        Ok(mut w) => w
            .next(Duration::from_secs(5))
            .expect_err("a compacted watch ends"),
    };
    match err {
        StoreError::Compacted {
            requested,
            compacted,
        } => assert_eq!((requested, compacted), (first, last)),
        e => panic!("expected Compacted, got {e}"),
    }
    // From the compaction point on, it works.
    let mut w = s.watch("/twill/v1/c/", last).unwrap();
    s.put("/twill/v1/c/b", b"3", None).unwrap();
    assert_eq!(next_event(&mut w).key(), "/twill/v1/c/b");
}

/// A member that takes the connection but never answers (a stopped process, SIGSTOP, or
/// one too loaded to read): the error says the client timed out, not "Resource
/// temporarily unavailable (os error 11)" (the EAGAIN of a socket read timeout).
#[test]
fn a_member_that_never_answers_is_named_as_a_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let mut cfg = EtcdConfig::new(vec![url.clone()]);
    cfg.timeout = Duration::from_millis(300);
    let s = EtcdStore::connect(&cfg).expect("connect");
    let started = Instant::now();
    let err = s.put("/twill/v1/silent", b"x", None).unwrap_err();
    assert!(err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "{url}: no answer within 0.3 s (the client's timeout)"
        )),
        "{text}"
    );
    assert!(!text.contains("os error 11"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// An overloaded member (here stopped with SIGSTOP: it takes connections, never answers)
/// makes each call wait twice as long as the last, up to 8 times the timeout, and the
/// error says how long it waited; the first answer brings the wait back to the timeout.
#[test]
fn the_client_waits_longer_while_every_member_is_silent_and_not_once_one_answers() {
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &self.0.to_string()])
                .status();
        }
    }
    let m = EtcdMember::start("patience");
    let mut cfg = EtcdConfig::new(vec![m.client_url()]);
    cfg.timeout = Duration::from_millis(100);
    let s = EtcdStore::connect(&cfg).expect("connect");
    retry(Duration::from_secs(10), || s.put("/twill/v1/p", b"1", None));
    assert_eq!(s.patience(), Duration::from_millis(100));
    let pid = m.pid().expect("etcd runs");
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let resume = Resume(pid);
    // Every thread stopped (on a loaded machine the group stop takes a while to reach
    // threads waiting for a CPU): state T in each task's stat.
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            .all(|st| {
                st.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all_stopped() {
        assert!(Instant::now() < deadline, "etcd (pid {pid}) did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    for (waited, next) in [(0.1, 200), (0.2, 400), (0.4, 800), (0.8, 800)] {
        let err = s.get("/twill/v1/p").unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("no answer within {waited:.1} s")),
            "{err}"
        );
        assert_eq!(s.patience(), Duration::from_millis(next));
    }
    drop(resume);
    let (kv, _) = retry(Duration::from_secs(10), || s.get("/twill/v1/p"));
    assert_eq!(kv.unwrap().value, b"1");
    assert_eq!(s.patience(), Duration::from_millis(100));
}

/// A member without a leader answers at once ("no leader"), but that is no answer to
/// the request: with the other member silent the wait still grows.
#[test]
fn an_answer_without_a_leader_does_not_cut_the_wait() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = EtcdCluster::start(2);
    c.wait_leader(Duration::from_secs(10)).expect("a leader");
    c.kill(1);
    let mut cfg = EtcdConfig::new(vec![
        format!("http://{}", silent.local_addr().unwrap()),
        c.members[0].client_url(),
    ]);
    cfg.timeout = Duration::from_millis(100);
    let s = EtcdStore::connect(&cfg).expect("connect");
    // The survivor loses its leader within the election timeout.
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        match s.get("/twill/v1/p") {
            Err(e) if e.to_string().contains("no leader") => break e,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("the survivor kept answering: {other:?}"),
        }
    };
    assert!(err.is_transient(), "{err}");
    let before = s.patience();
    assert!(s
        .get("/twill/v1/p")
        .unwrap_err()
        .to_string()
        .contains("no leader"));
    assert_eq!(s.patience(), (before * 2).min(Duration::from_millis(800)));
}

#[test]
fn etcd_down_at_connect_then_up() {
    let mut m = EtcdMember::start("late");
    m.stop();
    // connect() does not need etcd; calls fail transiently until it is back.
    let s = store_for(vec![m.client_url()]);
    let err = s.put("/twill/v1/late", b"x", None).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(&err, StoreError::Unavailable { endpoint, .. } if endpoint == &m.client_url()),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("refused"), "names the cause: {text}");
    assert!(
        text.contains("no etcd endpoint answered") && text.contains("check that etcd runs"),
        "says what failed and what to check: {text}"
    );
    let err = s.watch("/twill/v1/", 0).err().expect("no watch while down");
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(&err, StoreError::Unavailable { endpoint, reason }
            if endpoint == &m.client_url() && reason.starts_with("cannot open a watch (")
                && reason.contains("check that etcd runs")),
        "{err}"
    );
    m.restart();
    let (_, took) = retry(Duration::from_secs(10), || {
        s.put("/twill/v1/late", b"x", None)
    });
    eprintln!("first successful put {took:?} after restarting etcd");
    assert_eq!(s.get("/twill/v1/late").unwrap().unwrap().value, b"x");
}

#[test]
fn keep_alive_loop_survives_etcd_restart() {
    let mut m = EtcdMember::start("restart");
    let s = Arc::new(store_for(vec![m.client_url()]));
    let lease = s.grant(Duration::from_secs(6)).unwrap();
    s.put("/twill/v1/nodes/me", b"{}", Some(lease)).unwrap();
    let mut w = s.watch("/twill/v1/nodes/", 0).unwrap();
    assert_eq!(next_event(&mut w).key(), "/twill/v1/nodes/me");

    // The agent's loop: renew every 300 ms, record what happened.
    let log: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = {
        let (s, log, stop) = (s.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = s.keep_alive(lease);
                if let Err(e) = &r {
                    assert!(
                        e.is_transient(),
                        "only transient errors while etcd restarts: {e}"
                    );
                }
                log.lock().unwrap().push((Instant::now(), r.is_ok()));
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let down = Instant::now();
    m.stop();
    // The open watch ends with an error: the caller lists and watches again.
    let err = w
        .next(Duration::from_secs(5))
        .expect_err("the watch breaks when etcd stops");
    assert!(err.is_transient(), "{err}");
    std::thread::sleep(Duration::from_secs(1));
    m.restart();
    assert!(m.wait_healthy(Duration::from_secs(10)));
    let up = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    renewer.join().unwrap();

    let log = log.lock().unwrap();
    assert!(
        log.iter().any(|(t, ok)| !ok && *t > down && *t < up),
        "renewals failed while etcd was down"
    );
    let resumed = log
        .iter()
        .find(|(t, ok)| *ok && *t > up)
        .expect("renewals resumed after the restart");
    eprintln!(
        "etcd down for {:?}; keep-alive ok again {:?} after health",
        up - down,
        resumed.0.saturating_duration_since(up)
    );
    assert!(log.iter().filter(|(t, _)| *t > up).all(|(_, ok)| *ok));
    let kv = s
        .get("/twill/v1/nodes/me")
        .unwrap()
        .expect("the leased key outlived the restart");
    assert_eq!(kv.lease, Some(lease));
}

#[test]
fn cluster_survives_leader_kill() {
    let mut c = EtcdCluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10)).expect("a leader");
    // The leader first in the list: the client must move off it when it dies.
    let mut urls = c.client_urls();
    urls.rotate_left(leader);
    let s = store_for(urls);
    let lease = s.grant(Duration::from_secs(10)).unwrap();
    s.put("/twill/v1/nodes/a", b"1", Some(lease)).unwrap();

    let t0 = Instant::now();
    let latency = {
        let n = 200;
        for i in 0..n {
            s.put("/twill/v1/lat", format!("{i}").as_bytes(), None)
                .unwrap();
        }
        t0.elapsed() / n
    };
    eprintln!("put latency on a 3-member loopback cluster: {latency:?} (keep-alive connections)");

    c.kill(leader);
    let (_, put_after) = retry(Duration::from_secs(5), || {
        s.put("/twill/v1/nodes/b", b"2", Some(lease))
    });
    let (ttl, ka_after) = retry(Duration::from_secs(5), || s.keep_alive(lease));
    assert!(ttl >= Duration::from_secs(9));
    let new_leader = c.wait_leader(Duration::from_secs(5)).expect("a new leader");
    assert_ne!(new_leader, leader);
    eprintln!(
        "leader SIGKILLed: put ok after {put_after:?}, keep-alive after a further {ka_after:?}"
    );
    assert!(s.current_endpoint() != c.members[leader].client_url());
    let (kvs, _) = s.list("/twill/v1/nodes/").unwrap();
    assert_eq!(kvs.len(), 2);
    assert!(s.has_leader().unwrap());

    // The old leader comes back as a follower and serves reads again.
    c.restart(leader);
    assert!(c.members[leader].wait_healthy(Duration::from_secs(10)));
    let back = store_for(vec![c.members[leader].client_url()]);
    let (kv, _) = retry(Duration::from_secs(5), || back.get("/twill/v1/nodes/b"));
    assert_eq!(kv.unwrap().value, b"2");
}

#[test]
fn racing_claims_are_disjoint() {
    let m = EtcdMember::start("race");
    let s = Arc::new(store_for(vec![m.client_url()]));
    let blocks: Vec<String> = (0..100)
        .map(|i| format!("/twill/v1/blocks/10.244.{i}.0-24"))
        .collect();
    let blocks = Arc::new(blocks);
    let start = Instant::now();
    let threads: Vec<_> = (0..50)
        .map(|t| {
            let (s, blocks) = (s.clone(), blocks.clone());
            std::thread::spawn(move || {
                // Everyone starts at the same few blocks, to collide as much as possible.
                for (tries, key) in blocks.iter().enumerate() {
                    if s.create(key, format!("node{t}").as_bytes(), None)
                        .unwrap()
                        .is_some()
                    {
                        return (key.clone(), tries + 1);
                    }
                }
                panic!("node{t} found no free block");
            })
        })
        .collect();
    let claims: Vec<(String, usize)> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    let took = start.elapsed();
    let keys: BTreeSet<&String> = claims.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 50, "every claim distinct");
    let (kvs, _) = s.list("/twill/v1/blocks/").unwrap();
    assert_eq!(kvs.len(), 50);
    for kv in &kvs {
        let holder = claims
            .iter()
            .position(|(k, _)| *k == kv.key)
            .expect("stored key was claimed");
        assert_eq!(
            kv.value,
            format!("node{holder}").as_bytes(),
            "the winner's value is stored"
        );
    }
    let attempts: usize = claims.iter().map(|(_, n)| n).sum();
    eprintln!("50 racing claimers: {attempts} create txns in {took:?}");
}

#[test]
fn tls_with_client_certificates() {
    let tls = EtcdTls::generate();
    let m = EtcdMember::start_tls("tls", &tls);
    let s = EtcdStore::connect(&tls_config(vec![m.client_url()], &tls)).unwrap();
    basics(&s);

    let t0 = Instant::now();
    for _ in 0..100 {
        s.get("/twill/v1/none").unwrap();
    }
    eprintln!(
        "get latency over TLS (reused connections): {:?}",
        t0.elapsed() / 100
    );

    // Without a client certificate, etcd refuses us.
    let mut no_cert = tls_config(vec![m.client_url()], &tls);
    no_cert.cert_file = None;
    no_cert.key_file = None;
    let err = EtcdStore::connect(&no_cert)
        .unwrap()
        .get("/twill/v1/x")
        .unwrap_err();
    eprintln!("without a client certificate: {err}");
    assert!(matches!(err, StoreError::Config(_)), "{err}");

    // A server certificate from another CA is not trusted.
    let other = EtcdTls::generate();
    let mut wrong_ca = tls_config(vec![m.client_url()], &tls);
    wrong_ca.ca_file = Some(other.ca_file.clone());
    let err = EtcdStore::connect(&wrong_ca)
        .unwrap()
        .get("/twill/v1/x")
        .unwrap_err();
    eprintln!("with the wrong CA: {err}");
    assert!(
        matches!(err, StoreError::Config(_)) && err.to_string().contains("certificate"),
        "{err}"
    );

    // https without a CA is a configuration error, named as such.
    let mut no_ca = tls_config(vec![m.client_url()], &tls);
    no_ca.ca_file = None;
    assert!(matches!(
        EtcdStore::connect(&no_ca),
        Err(StoreError::Config(_))
    ));
}

#[test]
fn tls_cluster_fails_over() {
    let tls = EtcdTls::generate();
    let mut c = EtcdCluster::start_tls(3, &tls);
    let s = EtcdStore::connect(&tls_config(c.client_urls(), &tls)).unwrap();
    s.put("/twill/v1/config", b"{}", None).unwrap();
    c.kill(0);
    let (kv, took) = retry(Duration::from_secs(5), || s.get("/twill/v1/config"));
    assert!(kv.is_some());
    eprintln!("TLS cluster, member 0 SIGKILLed: get ok after {took:?}");
}
