//! The embedded store's own guarantees: one consistent store across processes (the test
//! binary re-runs itself as workers), durability across restarts, a cut log tail, and
//! compactions followed by handles that stay open.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use twill_store::embedded::{EmbeddedStore, Options};
use twill_store::{Event, Store, StoreError};
use twill_testkit::TempDir;

const WORKER_ENV: &str = "TWILL_STORE_TEST_WORKER";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Not a test: the body of a worker process, run by the tests below with
/// `TWILL_STORE_TEST_WORKER=<mode> <dir> <id> <start-at-unix-ms>`. Ignored, so a plain run
/// reports it as such instead of a pass that tested nothing; without the variable it fails.
#[test]
#[ignore = "a worker process of the multi-process tests, which run it"]
fn worker_process() {
    let spec = std::env::var(WORKER_ENV).unwrap_or_else(|_| {
        panic!("worker_process runs only as a worker: {WORKER_ENV} is not set")
    });
    let parts: Vec<&str> = spec.split(' ').collect();
    let (mode, dir, id, start_at) = (parts[0], Path::new(parts[1]), parts[2], parts[3]);
    let store = EmbeddedStore::open(dir).unwrap();
    // Start together, so the processes really race.
    let start_at: u64 = start_at.parse().unwrap();
    std::thread::sleep(Duration::from_millis(start_at.saturating_sub(now_ms())));
    match mode {
        "race" => {
            for i in 0..50 {
                let key = format!("/twill/v1/race/k{i:02}");
                if store.create(&key, id.as_bytes(), None).unwrap().is_some() {
                    println!("CREATED {key}");
                }
            }
        }
        "claim" => {
            let first: usize = id.parse::<usize>().unwrap() * 37 % 100;
            for n in 0..100 {
                let key = format!("/twill/v1/pool/p{:03}", (first + n) % 100);
                if store.create(&key, id.as_bytes(), None).unwrap().is_some() {
                    println!("CLAIMED {key}");
                    return;
                }
            }
            panic!("agent {id} found the pool full");
        }
        "lease" => {
            let lease = store.grant(Duration::from_secs(1)).unwrap();
            store
                .put("/twill/v1/held", id.as_bytes(), Some(lease))
                .unwrap();
            println!("HELD");
        }
        other => panic!("unknown worker mode {other}"),
    }
}

/// Runs `n` workers at once; returns, per worker, what follows `tag` on its output lines
/// (libtest may print its own words before ours on the same line).
fn run_workers(mode: &str, dir: &Path, n: usize, tag: &str) -> Vec<Vec<String>> {
    let start_at = now_ms() + 300 + 20 * n as u64;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..n)
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "worker_process",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    WORKER_ENV,
                    format!("{mode} {} {id} {start_at}", dir.display()),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "worker failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
                .lines()
                .filter_map(|l| l.split_once(tag).map(|(_, k)| k.trim().to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn eight_processes_racing_create_each_key_is_created_once() {
    let dir = TempDir::new("race");
    let per_worker = run_workers("race", &dir.path, 8, "CREATED");
    let mut creator: BTreeMap<String, usize> = BTreeMap::new();
    for (id, keys) in per_worker.iter().enumerate() {
        for k in keys {
            assert!(creator.insert(k.clone(), id).is_none(), "{k} created twice");
        }
    }
    assert_eq!(creator.len(), 50, "every key created by someone");
    let winners: Vec<usize> = per_worker.iter().map(Vec::len).collect();
    eprintln!("keys created per process: {winners:?}");
    let store = EmbeddedStore::open(&dir.path).unwrap();
    let (kvs, rev) = store.list("/twill/v1/race/").unwrap();
    assert_eq!(kvs.len(), 50);
    for kv in &kvs {
        assert_eq!(
            kv.value,
            creator[&kv.key].to_string().as_bytes(),
            "{}",
            kv.key
        );
    }
    // One global revision: 50 creates, revisions 1..=50, each used once.
    assert_eq!(rev, 50);
    let revs: BTreeSet<i64> = kvs.iter().map(|kv| kv.create_revision).collect();
    assert_eq!(revs, (1..=50).collect());
}

#[test]
fn fifty_agents_claim_disjoint_keys_from_a_pool() {
    let dir = TempDir::new("claim");
    let claims: Vec<String> = run_workers("claim", &dir.path, 50, "CLAIMED")
        .into_iter()
        .map(|mut c| {
            assert_eq!(c.len(), 1, "each agent claims one key");
            c.remove(0)
        })
        .collect();
    let distinct: BTreeSet<&String> = claims.iter().collect();
    assert_eq!(distinct.len(), 50, "claims overlap: {claims:?}");
    let store = EmbeddedStore::open(&dir.path).unwrap();
    let (kvs, _) = store.list("/twill/v1/pool/").unwrap();
    assert_eq!(kvs.len(), 50);
    for (id, key) in claims.iter().enumerate() {
        assert_eq!(
            store.get(key).unwrap().unwrap().value,
            id.to_string().as_bytes()
        );
    }
}

#[test]
fn a_dead_processs_lease_expires() {
    let dir = TempDir::new("deadlease");
    let store = EmbeddedStore::open(&dir.path).unwrap();
    let mut w = store.watch("/twill/v1/", 0).unwrap();
    run_workers("lease", &dir.path, 1, "HELD");
    let put = w
        .next(Duration::from_secs(5))
        .unwrap()
        .expect("the worker's put");
    assert_eq!(put.key(), "/twill/v1/held");
    // The worker is gone; the watch alone drives the expiry.
    let del = w.next(Duration::from_secs(5)).unwrap().expect("the expiry");
    assert_eq!(
        del,
        Event::Delete {
            key: "/twill/v1/held".into(),
            mod_revision: put.revision() + 1
        }
    );
}

#[test]
fn data_revision_and_lease_expiry_survive_restarts() {
    let dir = TempDir::new("durable");
    let (rev, lease) = {
        let a = EmbeddedStore::open(&dir.path).unwrap();
        let b = EmbeddedStore::open(&dir.path).unwrap();
        a.put("/twill/v1/config", b"{\"c\":1}", None).unwrap();
        b.create("/twill/v1/nodes/n1", b"n1", None).unwrap();
        let lease = a.grant(Duration::from_secs(1)).unwrap();
        let rev = b
            .put("/twill/v1/blocks/10.244.1.0-24", b"n1", Some(lease))
            .unwrap();
        (rev, lease)
    };
    {
        let a = EmbeddedStore::open(&dir.path).unwrap();
        assert_eq!(a.revision().unwrap(), rev);
        assert_eq!(
            a.get("/twill/v1/config").unwrap().unwrap().value,
            b"{\"c\":1}"
        );
        let kv = a.get("/twill/v1/blocks/10.244.1.0-24").unwrap().unwrap();
        assert_eq!((kv.mod_revision, kv.lease), (rev, Some(lease)));
    }
    // Nobody has it open while the lease runs out.
    std::thread::sleep(Duration::from_millis(1300));
    let a = EmbeddedStore::open(&dir.path).unwrap();
    assert_eq!(a.get("/twill/v1/blocks/10.244.1.0-24").unwrap(), None);
    assert_eq!(a.revision().unwrap(), rev + 1, "expiry is one revision");
    assert!(matches!(
        a.keep_alive(lease),
        Err(StoreError::LeaseExpired(_))
    ));
    let mut w = a.watch("/twill/v1/blocks/", rev).unwrap();
    let e = w.next(Duration::from_secs(1)).unwrap().unwrap();
    assert!(matches!(e, Event::Delete { mod_revision, .. } if mod_revision == rev + 1));
    // New leases do not reuse the expired one's id.
    assert_ne!(a.grant(Duration::from_secs(5)).unwrap(), lease);
}

#[test]
fn a_cut_log_tail_is_tolerated() {
    let dir = TempDir::new("cut");
    let log = dir.path.join("log.jsonl");
    let r1 = {
        let a = EmbeddedStore::open(&dir.path).unwrap();
        let r1 = a.put("/twill/v1/a", b"kept", None).unwrap();
        a.put("/twill/v1/b", b"cut off by the crash", None).unwrap();
        r1
    };
    // A crash mid-append: the last line loses its end.
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 12)
        .unwrap();
    let a = EmbeddedStore::open(&dir.path).unwrap();
    assert_eq!(a.revision().unwrap(), r1);
    assert_eq!(a.get("/twill/v1/a").unwrap().unwrap().value, b"kept");
    assert_eq!(a.get("/twill/v1/b").unwrap(), None);
    // The next write cuts the remnant off and carries on.
    assert_eq!(a.put("/twill/v1/c", b"after", None).unwrap(), r1 + 1);
    drop(a);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is whole");
    }
    let b = EmbeddedStore::open(&dir.path).unwrap();
    let (kvs, rev) = b.list("/twill/v1/").unwrap();
    assert_eq!(
        kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["/twill/v1/a", "/twill/v1/c"]
    );
    assert_eq!(rev, r1 + 1);
}

#[test]
fn open_handles_follow_automatic_compactions() {
    let dir = TempDir::new("compact");
    let opts = Options {
        compact_after_records: 20,
        keep_revisions: 5,
        ..Options::default()
    };
    let a = EmbeddedStore::open_with(&dir.path, opts).unwrap();
    let b = EmbeddedStore::open_with(&dir.path, opts).unwrap();
    let mut follower = b.watch("/twill/v1/", 0).unwrap();
    let lease = a.grant(Duration::from_secs(60)).unwrap();
    for i in 0..100 {
        let h = if i % 2 == 0 { &a } else { &b };
        h.put(
            &format!("/twill/v1/k{}", i % 7),
            i.to_string().as_bytes(),
            None,
        )
        .unwrap();
        if i % 10 == 0 {
            h.keep_alive(lease).unwrap();
        }
        // The follower reads as it goes, as a live agent would.
        assert_eq!(
            follower
                .next(Duration::from_secs(2))
                .unwrap()
                .unwrap()
                .revision(),
            i + 1
        );
    }
    let size = std::fs::metadata(dir.path.join("log.jsonl")).unwrap().len();
    assert!(size < 8_000, "the log was not compacted: {size} bytes");
    for h in [&a, &b] {
        let (kvs, rev) = h.list("/twill/v1/").unwrap();
        assert_eq!((kvs.len(), rev), (7, 100));
        assert_eq!(h.get("/twill/v1/k1").unwrap().unwrap().value, b"99");
        assert!(matches!(
            h.watch("/twill/v1/", 10),
            Err(StoreError::Compacted { .. })
        ));
        assert_eq!(
            h.watch("/twill/v1/", 97)
                .unwrap()
                .next(Duration::ZERO)
                .unwrap()
                .unwrap()
                .revision(),
            98
        );
        h.keep_alive(lease).unwrap();
    }
    let c = EmbeddedStore::open_with(&dir.path, opts).unwrap();
    assert_eq!(c.list("/twill/v1/").unwrap().1, 100);
    assert_eq!(
        c.watch("/twill/v1/", 97)
            .unwrap()
            .next(Duration::ZERO)
            .unwrap()
            .unwrap()
            .revision(),
        98
    );
}

#[test]
fn many_threads_share_one_handle() {
    let dir = TempDir::new("threads");
    let store = EmbeddedStore::open(&dir.path).unwrap();
    let created: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..20)
                        .filter(|i| {
                            store
                                .create(&format!("/twill/v1/t{i}"), b"x", None)
                                .unwrap()
                                .is_some()
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(created, 20);
    assert_eq!(store.revision().unwrap(), 20);
}

#[test]
fn a_watcher_sees_every_revision_once_while_another_handle_compacts() {
    let dir = TempDir::new("compactrace");
    let opts = Options {
        compact_after_records: 20,
        keep_revisions: 1_000,
        ..Options::default()
    };
    let a = EmbeddedStore::open_with(&dir.path, opts).unwrap();
    let b = EmbeddedStore::open_with(&dir.path, opts).unwrap();
    let mut w = b.watch("/twill/v1/", 0).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..500 {
                a.put(&format!("/twill/v1/k{}", i % 13), b"v", None)
                    .unwrap();
            }
        });
        for rev in 1..=500 {
            let e = w
                .next(Duration::from_secs(5))
                .unwrap()
                .expect("the next revision");
            assert_eq!(e.revision(), rev);
        }
    });
    assert_eq!(w.next(Duration::from_millis(100)).unwrap(), None);
}

#[test]
fn open_existing_never_creates_a_store() {
    let tmp = TempDir::new("storeexist");
    let dir = tmp.path.join("store");
    // No folder: refused, and still no folder.
    let e = EmbeddedStore::open_existing(&dir).err().expect("refused");
    assert!(
        matches!(&e, StoreError::Missing { path, reason } if path == &dir.display().to_string()
            && reason.contains("does not exist")),
        "{e}"
    );
    assert!(!dir.exists(), "open_existing created {}", dir.display());
    // An empty folder: refused, and left empty.
    std::fs::create_dir(&dir).unwrap();
    let e = twill_store::open_existing(&twill_store::StoreConfig::Embedded { dir: dir.clone() })
        .err()
        .expect("refused");
    assert!(e.to_string().contains("holds no log.jsonl"), "{e}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "files appeared"
    );
    // A real store opens, and sees what was written.
    EmbeddedStore::open(&dir)
        .unwrap()
        .put("/twill/v1/x", b"1", None)
        .unwrap();
    let s = EmbeddedStore::open_existing(&dir).unwrap();
    assert_eq!(s.get("/twill/v1/x").unwrap().unwrap().value, b"1");
}
