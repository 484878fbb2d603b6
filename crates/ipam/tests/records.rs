//! The record directory against a real file system (a `twl…` temp dir), including 50
//! concurrent threads and 50 concurrent processes allocating at once.

use serde_json::json;
use std::collections::HashSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use twill_ipam::{AttachmentKey, Pool, Range, RecordDir, RecordError, Reservation};
use twill_testkit::TempDir;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn pool(subnet: &str) -> Pool {
    Pool::new(
        vec![Range::new(subnet.parse().unwrap(), None, None, None).unwrap()],
        vec![],
    )
    .unwrap()
}

fn key(c: &str) -> AttachmentKey {
    AttachmentKey::new(c, "eth0")
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn allocate_get_update_release() {
    let tmp = TempDir::new("ipam");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let pool = pool("10.244.1.0/24");
    let a = dir
        .allocate(&pool, &key("c1"), json!({"hostVeth": "twl1"}))
        .unwrap();
    assert_eq!(a.ip, ip("10.244.1.2"), "first address after the gateway");
    let b = dir.allocate(&pool, &key("c2"), json!(null)).unwrap();
    assert_eq!(b.ip, ip("10.244.1.3"));

    // On disk: the claim and the attachment are one inode holding the record JSON.
    let root = tmp.path.join("pods");
    use std::os::unix::fs::MetadataExt;
    let claim = fs::metadata(root.join("ips/10.244.1.2")).unwrap();
    assert_eq!(
        claim.ino(),
        fs::metadata(root.join("attachments/c1:eth0"))
            .unwrap()
            .ino()
    );
    assert_eq!(claim.nlink(), 2);
    let on_disk: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("attachments/c1:eth0")).unwrap()).unwrap();
    assert_eq!(
        on_disk,
        json!({"containerId": "c1", "ifname": "eth0", "ip": "10.244.1.2", "extra": {"hostVeth": "twl1"}})
    );
    assert_eq!(
        fs::read_to_string(root.join("last_reserved"))
            .unwrap()
            .trim(),
        "10.244.1.3"
    );

    assert_eq!(dir.get(&key("c1")).unwrap(), Some(a.clone()));
    assert_eq!(dir.get(&key("nope")).unwrap(), None);
    dir.update_extra(&key("c1"), json!({"ports": [80]}))
        .unwrap();
    assert_eq!(
        dir.get(&key("c1")).unwrap().unwrap().extra,
        json!({"ports": [80]})
    );
    let err = dir.update_extra(&key("nope"), json!(1)).unwrap_err();
    assert!(matches!(err, RecordError::NotFound { .. }), "{err}");

    assert_eq!(
        dir.list().unwrap().iter().map(|r| r.ip).collect::<Vec<_>>(),
        [a.ip, b.ip]
    );
    assert_eq!(dir.used().unwrap(), [a.ip, b.ip]);

    let released = dir.release(&key("c1")).unwrap().unwrap();
    assert_eq!(
        (released.ip, released.extra),
        (a.ip, json!({"ports": [80]}))
    );
    assert_eq!(
        dir.release(&key("c1")).unwrap(),
        None,
        "release is idempotent"
    );
    assert_eq!(dir.release(&key("never")).unwrap(), None);
    assert_eq!(dir.used().unwrap(), [b.ip]);

    // Round robin: the freed .2 is not reused next; .4 is.
    assert_eq!(
        dir.allocate(&pool, &key("c3"), json!(null)).unwrap().ip,
        ip("10.244.1.4")
    );
    // No temp files left behind by any of that.
    assert!(
        names_in(&root).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        names_in(&root)
    );
    assert!(names_in(&root.join("attachments"))
        .iter()
        .all(|n| !n.starts_with('.')));
}

#[test]
fn names_are_validated() {
    let tmp = TempDir::new("ipam");
    for bad in ["", "..", "a/b", "../x"] {
        assert!(
            matches!(
                RecordDir::open(&tmp.path, bad),
                Err(RecordError::InvalidName(_))
            ),
            "{bad}"
        );
    }
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let pool = pool("10.244.1.0/24");
    for k in [
        AttachmentKey::new("../etc", "eth0"),
        AttachmentKey::new("c1", "a/b"),
        AttachmentKey::new("c1", "a:b"),
        AttachmentKey::new("c:1", "eth0"),
        AttachmentKey::new("", "eth0"),
        AttachmentKey::new("c1", ""),
        AttachmentKey::new("x".repeat(251), "eth0"), // 256 bytes with ":eth0"
    ] {
        let err = dir.allocate(&pool, &k, json!(null)).unwrap_err();
        assert!(matches!(err, RecordError::InvalidName(_)), "{k:?}: {err}");
        assert!(matches!(dir.release(&k), Err(RecordError::InvalidName(_))));
    }
    assert!(dir.used().unwrap().is_empty(), "nothing was claimed");
}

#[test]
fn duplicate_add_fails_and_rolls_back_its_claim() {
    let tmp = TempDir::new("ipam");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let pool = pool("10.244.1.0/24");
    let first = dir.allocate(&pool, &key("c1"), json!(null)).unwrap();
    let err = dir.allocate(&pool, &key("c1"), json!(null)).unwrap_err();
    match &err {
        RecordError::AlreadyAllocated {
            container_id,
            ifname,
            ip,
            network,
        } => {
            assert_eq!(
                (
                    container_id.as_str(),
                    ifname.as_str(),
                    *ip,
                    network.as_str()
                ),
                ("c1", "eth0", first.ip, "pods")
            );
        }
        other => panic!("expected AlreadyAllocated, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("c1") && msg.contains("eth0") && msg.contains("10.244.1.2"),
        "{msg}"
    );
    assert_eq!(
        dir.used().unwrap(),
        [first.ip],
        "the duplicate's claim was rolled back"
    );
    // A second interface of the same container is a different attachment.
    let second = dir
        .allocate(&pool, &AttachmentKey::new("c1", "net1"), json!(null))
        .unwrap();
    assert_ne!(second.ip, first.ip);
}

#[test]
fn exhaustion_names_network_ranges_capacity_and_fix() {
    let tmp = TempDir::new("ipam");
    let dir = RecordDir::open(&tmp.path, "small").unwrap();
    let pool = Pool::new(
        vec![Range::new("10.244.7.0/29".parse().unwrap(), None, None, None).unwrap()],
        vec!["10.244.7.3-10.244.7.4".parse::<Reservation>().unwrap()],
    )
    .unwrap();
    assert_eq!(pool.capacity(), 3); // .2 .5 .6
    let got: Vec<Ipv4Addr> = (0..3)
        .map(|i| {
            dir.allocate(&pool, &key(&format!("c{i}")), json!(null))
                .unwrap()
                .ip
        })
        .collect();
    assert_eq!(got, [ip("10.244.7.2"), ip("10.244.7.5"), ip("10.244.7.6")]);
    let err = dir.allocate(&pool, &key("c9"), json!(null)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RecordError::Exhausted { capacity: 3, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("small")
            && msg.contains("10.244.7.0/29")
            && msg.contains("widen the range or remove unused pods"),
        "{msg}"
    );
    assert_eq!(dir.used().unwrap().len(), 3, "a failed ADD holds nothing");
    // Freeing one makes exactly that one available, wherever the hint points.
    dir.release(&key("c1")).unwrap().unwrap();
    assert_eq!(
        dir.allocate(&pool, &key("c9"), json!(null)).unwrap().ip,
        ip("10.244.7.5")
    );
}

#[test]
fn garbage_hint_and_foreign_addresses_are_harmless() {
    let tmp = TempDir::new("ipam");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let root = tmp.path.join("pods");
    let pool = pool("10.244.1.0/29");
    fs::write(root.join("last_reserved"), "not an address").unwrap();
    assert_eq!(
        dir.allocate(&pool, &key("c1"), json!(null)).unwrap().ip,
        ip("10.244.1.2")
    );
    fs::write(root.join("last_reserved"), "192.0.2.77\n").unwrap();
    assert_eq!(
        dir.allocate(&pool, &key("c2"), json!(null)).unwrap().ip,
        ip("10.244.1.3")
    );
    // An address held from an older, wider config: left alone, still counted as used.
    let old = RecordDir::open(&tmp.path, "pods").unwrap();
    old.allocate(&self::pool("10.244.9.0/24"), &key("old"), json!(null))
        .unwrap();
    assert!(dir.used().unwrap().contains(&ip("10.244.9.2")));
    assert_eq!(dir.gc(&[key("c1"), key("c2"), key("old")]).unwrap(), []);
    assert!(dir.used().unwrap().contains(&ip("10.244.9.2")));
}

#[test]
fn gc_releases_stale_attachments_and_orphans() {
    let tmp = TempDir::new("ipam");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let root = tmp.path.join("pods");
    let pool = pool("10.244.1.0/24");
    for c in ["c1", "c2", "c3"] {
        dir.allocate(&pool, &key(c), json!({"c": c})).unwrap();
    }
    // Crash leftovers: a claim whose record was never published, an empty claim (crash
    // between create and write), stray temp files, and a corrupt record of a dead pod
    // whose claim is still there.
    fs::write(
        root.join("ips/10.244.1.50"),
        r#"{"containerId":"dead","ifname":"eth0","ip":"10.244.1.50","extra":null}"#,
    )
    .unwrap();
    fs::write(root.join("ips/10.244.1.51"), "").unwrap();
    fs::write(root.join("attachments/.tmp-record-1-1"), "{").unwrap();
    fs::write(root.join(".tmp-hint-1-1"), "10.").unwrap();
    fs::write(root.join("attachments/bad:eth0"), "{ not json").unwrap();
    fs::write(
        root.join("ips/10.244.1.52"),
        r#"{"containerId":"bad","ifname":"eth0","ip":"10.244.1.52"}"#,
    )
    .unwrap();
    assert!(
        matches!(dir.list(), Err(RecordError::Corrupt { .. })),
        "list reports the corrupt record"
    );

    let released = dir.gc(&[key("c2"), key("unknown")]).unwrap();
    let released: Vec<(String, Ipv4Addr)> = released
        .into_iter()
        .map(|r| (r.key.container_id, r.ip))
        .collect();
    assert_eq!(
        released,
        [
            ("c1".to_string(), ip("10.244.1.2")),
            ("c3".to_string(), ip("10.244.1.4"))
        ]
    );
    assert_eq!(dir.used().unwrap(), [ip("10.244.1.3")]);
    assert_eq!(names_in(&root.join("attachments")), ["c2:eth0"]);
    assert_eq!(
        names_in(&root),
        ["attachments", "ips", "last_reserved", "lock"]
    );
    assert_eq!(
        dir.get(&key("c2")).unwrap().unwrap().extra,
        json!({"c": "c2"})
    );
    assert_eq!(dir.gc(&[key("c2")]).unwrap(), [], "gc is idempotent");
    assert_eq!(dir.gc(&[]).unwrap().len(), 1);
    assert!(dir.used().unwrap().is_empty() && dir.list().unwrap().is_empty());
}

#[test]
fn release_of_a_corrupt_record_still_frees_its_address() {
    let tmp = TempDir::new("ipam");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let root = tmp.path.join("pods");
    let pool = pool("10.244.1.0/24");
    let r = dir.allocate(&pool, &key("c1"), json!(null)).unwrap();
    // Only the attachment name is damaged (a new inode): DEL finds the address by scanning.
    fs::remove_file(root.join("attachments/c1:eth0")).unwrap();
    fs::write(root.join("attachments/c1:eth0"), "").unwrap();
    assert!(matches!(
        dir.get(&key("c1")),
        Err(RecordError::Corrupt { .. })
    ));
    assert_eq!(dir.release(&key("c1")).unwrap().map(|r| r.ip), Some(r.ip));
    assert!(dir.used().unwrap().is_empty());

    // The shared inode is damaged (e.g. power loss): DEL still succeeds, the address is an
    // orphan until GC.
    let r = dir.allocate(&pool, &key("c2"), json!(null)).unwrap();
    fs::write(root.join("attachments/c2:eth0"), "").unwrap();
    assert_eq!(dir.release(&key("c2")).unwrap(), None);
    assert_eq!(dir.release(&key("c2")).unwrap(), None);
    assert_eq!(dir.used().unwrap(), [r.ip]);
    assert_eq!(dir.gc(&[]).unwrap(), []);
    assert!(dir.used().unwrap().is_empty());
}

#[test]
fn release_leaves_an_address_that_names_another_attachment() {
    let tmp = TempDir::new("ipam");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let root = tmp.path.join("pods");
    let r = dir
        .allocate(&pool("10.244.1.0/24"), &key("c1"), json!(null))
        .unwrap();
    // The address file (a separate inode now) names another attachment.
    let claim = root.join(format!("ips/{}", r.ip));
    fs::remove_file(&claim).unwrap();
    fs::write(
        &claim,
        format!(r#"{{"containerId":"c2","ifname":"eth0","ip":"{}"}}"#, r.ip),
    )
    .unwrap();
    assert_eq!(dir.release(&key("c1")).unwrap().map(|r| r.ip), Some(r.ip));
    assert_eq!(
        dir.used().unwrap(),
        [r.ip],
        "another attachment's claim is not ours to free"
    );
}

/// xorshift64: deterministic, no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn randomized_allocate_release_respects_capacity() {
    let tmp = TempDir::new("ipam");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let pool = Pool::new(
        vec![
            Range::new("10.244.1.0/28".parse().unwrap(), None, None, None).unwrap(),
            Range::new("10.244.2.0/29".parse().unwrap(), None, None, None).unwrap(),
        ],
        vec!["10.244.1.8-10.244.1.9".parse().unwrap()],
    )
    .unwrap();
    let cap = pool.capacity() as usize;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut live: Vec<AttachmentKey> = Vec::new();
    let mut next_id = 0u32;
    let mut exhausted = 0;
    for step in 0..1500 {
        if rng.next() % 5 < 3 {
            next_id += 1;
            let k = key(&format!("p{next_id}"));
            match dir.allocate(&pool, &k, json!(null)) {
                Ok(r) => {
                    assert!(
                        pool.is_allocatable(r.ip),
                        "step {step}: {} is not allocatable",
                        r.ip
                    );
                    live.push(k);
                }
                Err(RecordError::Exhausted { .. }) => {
                    assert_eq!(
                        live.len(),
                        cap,
                        "step {step}: exhausted with free addresses"
                    );
                    exhausted += 1;
                }
                Err(e) => panic!("step {step}: {e}"),
            }
        } else if !live.is_empty() {
            let k = live.swap_remove((rng.next() % live.len() as u64) as usize);
            assert!(dir.release(&k).unwrap().is_some());
        }
        if step % 50 == 49 || live.len() == cap {
            let records = dir.list().unwrap();
            let ips: HashSet<Ipv4Addr> = records.iter().map(|r| r.ip).collect();
            assert_eq!(
                ips.len(),
                records.len(),
                "step {step}: an address is held twice"
            );
            assert_eq!(records.len(), live.len());
            assert_eq!(dir.used().unwrap().len(), live.len());
        }
    }
    assert!(exhausted > 0, "the sequence should reach exhaustion");
}

/// The pool every concurrency worker uses: a /24, 253 addresses for 50 pods.
fn shared_pool() -> Pool {
    pool("10.244.3.0/24")
}

fn assert_distinct_then_empty(dir: &RecordDir, n: usize) {
    let records = dir.list().unwrap();
    assert_eq!(records.len(), n);
    let ips: HashSet<Ipv4Addr> = records.iter().map(|r| r.ip).collect();
    assert_eq!(
        ips.len(),
        n,
        "two attachments got the same address: {records:?}"
    );
    assert_eq!(
        dir.used().unwrap().len(),
        n,
        "an address is held without a record"
    );
}

#[test]
fn fifty_threads_allocate_distinct_addresses() {
    let tmp = TempDir::new("ipam");
    RecordDir::open(&tmp.path, "pods").unwrap();
    let barrier = std::sync::Barrier::new(50);
    std::thread::scope(|s| {
        for i in 0..50 {
            let (path, barrier) = (&tmp.path, &barrier);
            s.spawn(move || {
                let dir = RecordDir::open(path, "pods").unwrap();
                let pool = shared_pool();
                barrier.wait();
                dir.allocate(&pool, &key(&format!("t{i}")), json!({"i": i}))
                    .unwrap();
            });
        }
    });
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    assert_distinct_then_empty(&dir, 50);
    std::thread::scope(|s| {
        for i in 0..50 {
            let (path, barrier) = (&tmp.path, &barrier);
            s.spawn(move || {
                let dir = RecordDir::open(path, "pods").unwrap();
                barrier.wait();
                assert!(dir.release(&key(&format!("t{i}"))).unwrap().is_some());
            });
        }
    });
    assert!(dir.list().unwrap().is_empty() && dir.used().unwrap().is_empty());
    assert!(names_in(&tmp.path.join("pods/attachments")).is_empty());
}

const WORKER_ENV: &str = "TWILL_IPAM_WORKER";

/// Not a test of its own: the body of one worker process of
/// `fifty_processes_allocate_distinct_addresses`, which re-runs this test binary with
/// `TWILL_IPAM_WORKER=<data dir>`, `TWILL_IPAM_WORKER_OP=allocate|release`,
/// `TWILL_IPAM_WORKER_ID=<n>`. Ignored, so a plain run reports it as such instead of a
/// pass that tested nothing; run by hand without the variable, it fails.
#[test]
#[ignore = "a worker process of fifty_processes_allocate_distinct_addresses, which runs it"]
fn ipam_worker_process() {
    let data_dir = std::env::var_os(WORKER_ENV).unwrap_or_else(|| {
        panic!("ipam_worker_process runs only as a worker: {WORKER_ENV} is not set")
    });
    let data_dir = Path::new(&data_dir);
    let op = std::env::var("TWILL_IPAM_WORKER_OP").unwrap();
    let id = std::env::var("TWILL_IPAM_WORKER_ID").unwrap();
    let dir = RecordDir::open(data_dir, "pods").unwrap();
    let pool = shared_pool();
    let k = key(&format!("proc{id}"));
    // Start together: the parent creates `go` once every worker is spawned.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data_dir.join("go").exists() {
        assert!(Instant::now() < deadline, "worker {id}: no go signal");
        std::thread::sleep(Duration::from_millis(1));
    }
    match op.as_str() {
        "allocate" => {
            dir.allocate(&pool, &k, json!({"pid": std::process::id()}))
                .unwrap();
        }
        "release" => assert!(dir.release(&k).unwrap().is_some()),
        other => panic!("unknown worker op {other}"),
    }
}

fn run_workers(data_dir: &Path, op: &str, n: usize) {
    let _ = fs::remove_file(data_dir.join("go"));
    let exe = std::env::current_exe().unwrap();
    let children: Vec<Child> = (0..n)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "ipam_worker_process",
                    "--exact",
                    "--ignored",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env(WORKER_ENV, data_dir)
                .env("TWILL_IPAM_WORKER_OP", op)
                .env("TWILL_IPAM_WORKER_ID", i.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    fs::write(data_dir.join("go"), "").unwrap();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{op} worker {i} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A harness that filtered the worker test out would also exit 0: make sure it ran.
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{op} worker {i} did not run"
        );
    }
}

#[test]
fn fifty_processes_allocate_distinct_addresses() {
    if std::env::var_os(WORKER_ENV).is_some() {
        return;
    }
    let tmp = TempDir::new("ipam");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    run_workers(&tmp.path, "allocate", 50);
    assert_distinct_then_empty(&dir, 50);
    let pids: HashSet<u64> = dir
        .list()
        .unwrap()
        .iter()
        .map(|r| r.extra["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 50, "each record came from its own process");
    run_workers(&tmp.path, "release", 50);
    assert!(dir.list().unwrap().is_empty() && dir.used().unwrap().is_empty());
    assert!(names_in(&tmp.path.join("pods/attachments")).is_empty());
}

/// What an ADD killed part-way leaves, each state followed by its DEL (release), with no
/// GC: the attachment's record exists before any address is claimed, so release always
/// finds what the ADD took, and never frees another attachment's address.
#[test]
fn release_after_an_allocate_killed_part_way_frees_what_it_took() {
    let tmp = TempDir::new("ipamkill");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let root = tmp.path.join("pods");
    let pool = pool("10.244.1.0/24");
    let other = dir.allocate(&pool, &key("other"), json!(null)).unwrap();

    // Killed after the intent, before any claim: the record names no address ...
    fs::write(
        root.join("attachments/k1:eth0"),
        r#"{"containerId":"k1","ifname":"eth0","ip":"0.0.0.0","extra":null}   "#,
    )
    .unwrap();
    // ... or a candidate another attachment holds (its claim lost the race).
    fs::write(
        root.join("attachments/k2:eth0"),
        format!(
            r#"{{"containerId":"k2","ifname":"eth0","ip":"{}","extra":null}}"#,
            other.ip
        ),
    )
    .unwrap();
    // They hold nothing, so listing leaves them out (twilld counts used addresses so).
    let listed: Vec<String> = dir
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.key.container_id)
        .collect();
    assert_eq!(listed, ["other"]);
    for k in ["k1", "k2"] {
        dir.release(&key(k)).unwrap();
    }
    assert_eq!(
        dir.used().unwrap(),
        [other.ip],
        "the other pod keeps its address"
    );
    assert_eq!(names_in(&root.join("attachments")), ["other:eth0"]);

    // A complete allocation is released in full; nothing temporary is left.
    let a = dir.allocate(&pool, &key("k3"), json!(null)).unwrap();
    assert!(dir.used().unwrap().contains(&a.ip));
    dir.release(&key("k3")).unwrap();
    assert_eq!(dir.used().unwrap(), [other.ip]);
    assert!(
        names_in(&root).iter().all(|n| !n.starts_with(".tmp")),
        "{:?}",
        names_in(&root)
    );
}

/// An ADD of an attachment whose earlier ADD was killed before claiming an address (and
/// got no DEL) replaces that record, which holds nothing; a complete one stays refused.
#[test]
fn an_add_replaces_the_record_of_an_add_killed_before_its_claim() {
    let tmp = TempDir::new("ipamredo");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let root = tmp.path.join("pods");
    let pool = pool("10.244.1.0/24");
    let other = dir.allocate(&pool, &key("other"), json!(null)).unwrap();
    for stale in ["0.0.0.0".to_string(), other.ip.to_string()] {
        fs::write(
            root.join("attachments/k1:eth0"),
            format!(r#"{{"containerId":"k1","ifname":"eth0","ip":"{stale}","extra":null}}"#),
        )
        .unwrap();
        let r = dir
            .allocate(&pool, &key("k1"), json!({"again": true}))
            .unwrap();
        assert_ne!(r.ip, other.ip);
        assert_eq!(dir.get(&key("k1")).unwrap(), Some(r.clone()));
        assert_eq!(dir.used().unwrap().len(), 2, "{stale}");
        dir.release(&key("k1")).unwrap();
        assert_eq!(
            dir.used().unwrap(),
            [other.ip],
            "the other pod keeps its address"
        );
    }
}

/// A duplicate ADD fails before claiming anything, and leaves the first record alone.
#[test]
fn a_duplicate_allocation_claims_nothing() {
    let tmp = TempDir::new("ipamdup");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let pool = pool("10.244.1.0/24");
    let first = dir.allocate(&pool, &key("c1"), json!({"n": 1})).unwrap();
    let err = dir
        .allocate(&pool, &key("c1"), json!({"n": 2}))
        .unwrap_err();
    match err {
        RecordError::AlreadyAllocated { ip: held, .. } => assert_eq!(held, first.ip),
        other => panic!("expected AlreadyAllocated, got {other:?}"),
    }
    assert_eq!(dir.used().unwrap(), [first.ip]);
    assert_eq!(dir.get(&key("c1")).unwrap().unwrap().extra, json!({"n": 1}));
}

/// Temporary files of a writer that died are removed by the next ADD; those of a live
/// writer (or of a writer in another pid namespace, until they are an hour old) are not.
#[test]
fn the_next_allocation_sweeps_temporary_files_of_dead_writers_only() {
    use std::os::unix::fs::MetadataExt;
    let tmp = TempDir::new("ipamsweep");
    let dir = RecordDir::open(&tmp.path, "pods").unwrap();
    let root = tmp.path.join("pods");
    let pool = pool("10.244.1.0/24");
    let pidns = fs::metadata("/proc/self/ns/pid").unwrap().ino();
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let dead_tmp = format!(".tmp-record-{pidns}-{dead_pid}-0");
    let live_tmp = format!(".tmp-record-{pidns}-{}-0", std::process::id());
    let foreign_tmp = format!(".tmp-record-{}-{dead_pid}-0", pidns + 1);
    for name in [&dead_tmp, &live_tmp, &foreign_tmp] {
        fs::write(root.join(name), "{").unwrap();
    }
    dir.allocate(&pool, &key("c1"), json!(null)).unwrap();
    let left = names_in(&root);
    assert!(!left.contains(&dead_tmp), "{left:?}");
    assert!(left.contains(&live_tmp), "{left:?}");
    assert!(left.contains(&foreign_tmp), "{left:?}");
    // Hours old: stale whoever wrote it.
    let old = fs::File::options()
        .write(true)
        .open(root.join(&foreign_tmp))
        .unwrap();
    old.set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    dir.allocate(&pool, &key("c2"), json!(null)).unwrap();
    assert!(!names_in(&root).contains(&foreign_tmp));
    assert!(names_in(&root).contains(&live_tmp));
}
