//! twilld as real processes on one embedded store in a `twl…` temp folder: races, restarts,
//! lease loss, expiry, growth, overrides and the HTTP pages. No root needed: every agent
//! gets a fixed nodeIP (autodetection against real interfaces is in netns.rs).

use ipnet::Ipv4Net;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use twill_api::resources::{Block, HandOff, NetworkConfig, NodeStatus};
use twill_ipam::pool::{Pool, Range};
use twill_ipam::records::{AttachmentKey, RecordDir};
use twill_store::embedded::EmbeddedStore;
use twill_store::{Store, PREFIX};
use twill_testkit::TempDir;

fn key(rel: &str) -> String {
    format!("{PREFIX}{rel}")
}

struct Cluster {
    dir: TempDir,
    store: EmbeddedStore,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let store = EmbeddedStore::open(&dir.path.join("store")).expect("open the embedded store");
        Cluster { dir, store }
    }

    fn apply(&self, cidr: &str, block_size: u8, ttl: u64, only: Option<&str>) {
        let c = NetworkConfig {
            cluster_cidr: cidr.parse().unwrap(),
            block_size,
            subnet_min: only.map(|b| b.parse().unwrap()),
            subnet_max: only.map(|b| b.parse().unwrap()),
            reservations: vec![],
            backend: twill_api::resources::BackendSpec::None,
            mtu: 1450,
            masquerade: true,
            pod_wiring: Default::default(),
            lease_ttl_seconds: ttl,
        };
        c.validate().unwrap();
        self.store
            .put(&key("config"), &serde_json::to_vec(&c).unwrap(), None)
            .unwrap();
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    fn handoff_path(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.json")
    }

    fn start(&self, name: &str, extra: &[&str]) -> Agent {
        self.start_on(name, "127.0.0.1:0", extra)
    }

    fn start_on(&self, name: &str, listen: &str, extra: &[&str]) -> Agent {
        let nd = self.node_dir(name);
        let log = std::fs::File::create(self.dir.path.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_twilld"));
        cmd.args([
            "--node-name",
            name,
            "--store",
            "embedded",
            "--listen",
            listen,
            "--node-ip",
            "192.0.2.11",
        ])
        .arg("--store-dir")
        .arg(self.dir.path.join("store"))
        .arg("--handoff-file")
        .arg(nd.join("node.json"))
        .arg("--state-dir")
        .arg(nd.join("state"))
        .arg("--cni-data-dir")
        .arg(nd.join("ipam"))
        .args(["--poll-interval-seconds", "0.2"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        Agent {
            child: Some(cmd.spawn().expect("start twilld")),
            log: self.dir.path.join(format!("{name}.log")),
        }
    }

    fn handoff(&self, name: &str) -> Option<HandOff> {
        serde_json::from_slice(&std::fs::read(self.handoff_path(name)).ok()?).ok()
    }

    fn blocks(&self) -> Vec<(Ipv4Net, Block, Option<twill_store::LeaseId>)> {
        let (kvs, _) = self.store.list(&key("blocks/")).unwrap();
        kvs.into_iter()
            .map(|kv| {
                let b: Block = serde_json::from_slice(&kv.value).unwrap();
                (b.cidr, b, kv.lease)
            })
            .collect()
    }

    fn node(&self, name: &str) -> Option<(NodeStatus, twill_store::LeaseId)> {
        let kv = self.store.get(&key(&format!("nodes/{name}"))).unwrap()?;
        Some((
            serde_json::from_slice(&kv.value).unwrap(),
            kv.lease.expect("bound to a lease"),
        ))
    }
}

/// A twilld process, killed (SIGKILL) if still running when dropped.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self) {
        let mut c = self.child.take().unwrap();
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let st = c.wait().unwrap();
        assert!(st.success(), "twilld exited with {st}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

#[test]
fn fifty_agents_at_once_hold_fifty_disjoint_blocks() {
    let c = Cluster::new("fifty");
    c.apply("10.244.0.0/16", 24, 60, None);
    let names: Vec<String> = (0..50).map(|i| format!("n{i}")).collect();
    let _agents: Vec<Agent> = names.iter().map(|n| c.start(n, &[])).collect();
    let handoffs: Vec<HandOff> = wait_for("50 hand-off files", Duration::from_secs(60), || {
        names
            .iter()
            .map(|n| c.handoff(n))
            .collect::<Option<Vec<_>>>()
    });
    let mut seen = HashSet::new();
    for (h, n) in handoffs.iter().zip(&names) {
        assert_eq!(&h.node, n);
        assert_eq!(h.blocks.len(), 1, "{n}: {:?}", h.blocks);
        assert!(
            seen.insert(h.blocks[0]),
            "{} handed to two nodes",
            h.blocks[0]
        );
        assert_eq!((h.mtu, h.ip_masq), (1450, true));
    }
    let blocks = c.blocks();
    assert_eq!(blocks.len(), 50);
    let a: Vec<Ipv4Net> = blocks.iter().map(|b| b.0).collect();
    for (i, x) in a.iter().enumerate() {
        for y in &a[i + 1..] {
            assert!(!x.contains(y) && !y.contains(x), "{x} overlaps {y}");
        }
    }
    for (cidr, b, lease) in &blocks {
        let h = &handoffs[names.iter().position(|n| *n == b.node).unwrap()];
        assert_eq!(
            h.blocks,
            [*cidr],
            "the store and {}'s hand-off agree",
            b.node
        );
        assert_eq!(
            Some(c.node(&b.node).unwrap().1),
            *lease,
            "block bound to its node's lease"
        );
    }
}

#[test]
fn a_killed_agent_restarts_with_the_same_blocks() {
    let c = Cluster::new("restart");
    c.apply("10.244.0.0/16", 26, 60, None);
    let mut a = c.start("n1", &[]);
    let first = wait_for("hand-off", Duration::from_secs(20), || c.handoff("n1"));
    let (_, lease1) = c.node("n1").unwrap();
    a.kill();
    // Other nodes arrive meanwhile and must not get n1's block (its lease still runs).
    let _b = c.start("n2", &[]);
    wait_for("n2's hand-off", Duration::from_secs(20), || c.handoff("n2"));
    let _a = c.start("n1", &[]);
    let lease2 = wait_for("n1 under a new lease", Duration::from_secs(20), || {
        c.node("n1").map(|(_, l)| l).filter(|l| *l != lease1)
    });
    let blocks = c.blocks();
    let mine: Vec<_> = blocks.iter().filter(|b| b.1.node == "n1").collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].0, first.blocks[0], "the same block after a restart");
    assert_eq!(mine[0].2, Some(lease2), "taken over under the new lease");
    // The hand-off was cut at start and lists the block again once it is confirmed.
    wait_for(
        "n1's hand-off to list its block again",
        Duration::from_secs(10),
        || c.handoff("n1").filter(|h| h.blocks == first.blocks),
    );

    // Without the state folder the hand-off file alone is enough to remember.
    drop(_a);
    std::fs::remove_dir_all(c.node_dir("n1").join("state")).unwrap();
    let _a = c.start("n1", &[]);
    wait_for("n1 under a third lease", Duration::from_secs(20), || {
        c.node("n1").filter(|(_, l)| *l != lease2 && *l != lease1)
    });
    let mine: Vec<Ipv4Net> = c
        .blocks()
        .iter()
        .filter(|b| b.1.node == "n1")
        .map(|b| b.0)
        .collect();
    assert_eq!(mine, first.blocks);
}

/// The storm on etcd found a block in two nodes' hand-offs for 40 s: a restarted agent
/// whose listen port another process had taken meanwhile exited before it cut its old
/// hand-off, so the file kept listing a block whose lease nobody renewed any more, and
/// another node took it. An agent that cannot start must still cut the hand-off first.
#[test]
fn an_agent_that_cannot_start_still_cuts_its_old_hand_off_first() {
    let c = Cluster::new("nolisten");
    c.apply("10.244.0.0/16", 26, 60, None);
    let mut a = c.start("n1", &[]);
    let first = wait_for("n1's hand-off", Duration::from_secs(20), || {
        c.handoff("n1").filter(|h| !h.blocks.is_empty())
    });
    a.kill();
    // Its port is taken while it is down (another process's listener or connection).
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut b = c.start_on("n1", &addr, &[]);
    let status = b.child.take().unwrap().wait().unwrap();
    assert!(
        !status.success(),
        "twilld cannot listen on {addr}: it exits"
    );
    let log = b.log();
    assert!(
        log.contains("cannot listen on") && log.contains(&addr),
        "{log}"
    );
    let h = c.handoff("n1").expect("the hand-off is cut, not removed");
    assert!(
        h.blocks.is_empty(),
        "the hand-off of an agent that never ran lists {:?} (was {:?}): nobody renews their lease\n{log}",
        h.blocks,
        first.blocks
    );
}

#[test]
fn a_revoked_lease_is_replaced_and_the_same_blocks_claimed_again() {
    let c = Cluster::new("revoke");
    c.apply("10.244.0.0/16", 24, 60, None);
    let a = c.start("n1", &[]);
    let first = wait_for("hand-off", Duration::from_secs(20), || c.handoff("n1"));
    let (_, lease) = c.node("n1").unwrap();
    c.store.revoke(lease).unwrap();
    assert!(c.blocks().is_empty(), "revoking deletes the block");
    // Keep-alive runs every TTL/3 = 20 s; a 60 s TTL keeps this test honest about that.
    let (status, lease2) = wait_for("n1 back under a new lease", Duration::from_secs(40), || {
        c.node("n1").filter(|(_, l)| *l != lease)
    });
    assert_eq!(status.blocks, first.blocks);
    let blocks = c.blocks();
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0].0, blocks[0].2), (first.blocks[0], Some(lease2)));
    assert!(a.log().contains("lease lost"), "{}", a.log());
}

#[test]
fn a_stopped_agent_s_claims_expire_and_another_node_takes_them() {
    let c = Cluster::new("expiry");
    // Exactly one usable block.
    c.apply("10.244.0.0/16", 24, 5, Some("10.244.7.0/24"));
    let mut a = c.start("n1", &[]);
    wait_for("n1's hand-off", Duration::from_secs(20), || c.handoff("n1"));
    let port = free_port();
    let _b = c.start_on("n2", &format!("127.0.0.1:{port}"), &[]);
    let (code, why) = wait_for(
        "n2 to say why it is not ready",
        Duration::from_secs(20),
        || get(port, "/readyz").filter(|(_, b)| b.contains("no free block")),
    );
    assert_eq!(code, 503);
    assert!(
        why.contains("all 1 /24 blocks of 10.244.0.0/16 are held"),
        "{why}"
    );
    let stopped = Instant::now();
    a.stop();
    assert!(a.log().contains("twilld stopped"), "{}", a.log());
    wait_for(
        "n1's node key and block to expire",
        Duration::from_secs(15),
        || (c.node("n1").is_none() && c.blocks().iter().all(|b| b.1.node != "n1")).then_some(()),
    );
    assert!(
        stopped.elapsed() >= Duration::from_secs(3),
        "not before the TTL"
    );
    let h = wait_for("n2 to take the block", Duration::from_secs(20), || {
        c.handoff("n2")
    });
    assert_eq!(
        h.blocks,
        ["10.244.7.0/24".parse::<Ipv4Net>().unwrap()],
        "{}",
        _b.log()
    );
    wait_for("n2 ready", Duration::from_secs(10), || {
        get(port, "/readyz").filter(|r| r.0 == 200)
    });
}

#[test]
fn a_node_claims_another_block_when_free_addresses_run_low() {
    let c = Cluster::new("grow");
    c.apply("10.244.0.0/16", 26, 60, None);
    let port = free_port();
    let _a = c.start_on(
        "n1",
        &format!("127.0.0.1:{port}"),
        &["--min-free-addresses", "8"],
    );
    // What the agent measured last: (used, free) addresses in its blocks.
    let measured = || {
        let (_, text) = get(port, "/metrics")?;
        let m = parse_metrics(&text);
        let v = |n: &str| m.iter().find(|(k, _)| k == n).map(|(_, v)| *v as u64);
        Some((
            v("twill_block_addresses{state=\"used\"}")?,
            v("twill_block_addresses{state=\"free\"}")?,
        ))
    };
    let h = wait_for("hand-off", Duration::from_secs(20), || c.handoff("n1"));
    assert_eq!(h.blocks.len(), 1);
    let block = h.blocks[0];
    // Fill the block the way twill-cni would, until 7 of its 61 addresses are free.
    let records = RecordDir::open(&c.node_dir("n1").join("ipam"), "twill").unwrap();
    let pool = Pool::new(vec![Range::new(block, None, None, None).unwrap()], vec![]).unwrap();
    for i in 0..53 {
        records
            .allocate(
                &pool,
                &AttachmentKey::new(format!("c{i}"), "eth0"),
                serde_json::Value::Null,
            )
            .unwrap();
    }
    // Wait until the agent has measured the 53 (no fixed sleep): 8 free is enough, so it
    // must not have grown when it reports them.
    wait_for(
        "the agent to measure 53 used, 8 free",
        Duration::from_secs(10),
        || (measured()? == (53, 8)).then_some(()),
    );
    assert_eq!(c.handoff("n1").unwrap().blocks.len(), 1, "8 free is enough");
    assert_eq!(
        c.blocks().iter().filter(|b| b.1.node == "n1").count(),
        1,
        "and no second block claimed"
    );
    records
        .allocate(
            &pool,
            &AttachmentKey::new("c53", "eth0"),
            serde_json::Value::Null,
        )
        .unwrap();
    let h = wait_for("a second block", Duration::from_secs(10), || {
        c.handoff("n1").filter(|h| h.blocks.len() == 2)
    });
    assert_eq!(h.blocks[0], block, "the first block stays first");
    assert_eq!(h.blocks[1].prefix_len(), 26);
    wait_for(
        "the agent to count both blocks",
        Duration::from_secs(10),
        || (measured()? == (54, 7 + 61)).then_some(()),
    );
    let mine: Vec<_> = c
        .blocks()
        .into_iter()
        .filter(|b| b.1.node == "n1")
        .collect();
    assert_eq!(mine.len(), 2);
    // The allocations are published for `twill ipam check`.
    let allocs = wait_for("allocations", Duration::from_secs(10), || {
        let kv = c.store.get(&key("allocations/n1")).unwrap()?;
        let v: Vec<serde_json::Value> = serde_json::from_slice(&kv.value).unwrap();
        (v.len() == 54).then_some(v)
    });
    assert!(allocs.iter().all(|a| a["ifname"] == "eth0"
        && block.contains(&a["ip"].as_str().unwrap().parse::<Ipv4Addr>().unwrap())));
}

fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad metrics line {l:?}"));
            (
                name.to_string(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

#[test]
fn http_pages_report_readiness_health_and_metrics_and_overrides_apply() {
    let c = Cluster::new("http");
    let port = free_port();
    let _a = c.start_on(
        "n1",
        &format!("127.0.0.1:{port}"),
        &["--log-format", "json"],
    );
    let (code, body) = wait_for("readyz without config", Duration::from_secs(10), || {
        get(port, "/readyz").filter(|(_, b)| b.contains("network config"))
    });
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            "no network config in the store: run twill apply -f network.yaml\n"
        )
    );
    assert_eq!(get(port, "/healthz").unwrap(), (200, "ok\n".into()));
    c.apply("10.244.0.0/16", 24, 60, None);
    wait_for("ready", Duration::from_secs(10), || {
        get(port, "/readyz").filter(|r| r.0 == 200)
    });
    assert_eq!(get(port, "/readyz").unwrap().1, "ready\n");
    let (code, text) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let m = parse_metrics(&text);
    let val = |n: &str| {
        m.iter()
            .find(|(k, _)| k == n)
            .unwrap_or_else(|| panic!("{n} missing:\n{text}"))
            .1
    };
    assert_eq!(val("twill_store_up"), 1.0);
    assert_eq!(val("twill_blocks_held"), 1.0);
    assert_eq!(val("twill_block_addresses{state=\"free\"}"), 253.0);
    assert_eq!(val("twill_block_addresses{state=\"used\"}"), 0.0);
    assert_eq!(
        val("twill_node_info{node=\"n1\",address=\"192.0.2.11\",method=\"nodeIP\"}"),
        1.0
    );
    assert!(val("process_resident_memory_bytes") > 0.0);
    val("twill_lease_renewals_total");
    val("twill_lease_renewal_failures_total");
    val("twill_store_errors_total");
    val("process_cpu_seconds_total");
    assert_eq!(get(port, "/nope").unwrap().0, 404);

    // A Node resource overrides the node IP and the agent publishes it.
    let (st, _) = c.node("n1").unwrap();
    assert_eq!(
        (st.address, st.autodetection.as_str()),
        ("192.0.2.11".parse().unwrap(), "nodeIP")
    );
    c.store
        .put(
            &key("nodeconfigs/n1"),
            br#"{"ipv4Address":"198.51.100.7/24"}"#,
            None,
        )
        .unwrap();
    let st = wait_for("the override", Duration::from_secs(10), || {
        c.node("n1")
            .map(|n| n.0)
            .filter(|s| s.autodetection == "override")
    });
    assert_eq!(st.address, "198.51.100.7".parse::<Ipv4Addr>().unwrap());
    assert!(st.reason.contains("Node resource"), "{}", st.reason);
    // Another node's override is not ours.
    c.store
        .put(
            &key("nodeconfigs/n10"),
            br#"{"ipv4Address":"203.0.113.1"}"#,
            None,
        )
        .unwrap();
    c.store.delete(&key("nodeconfigs/n1")).unwrap();
    let st = wait_for("the override removed", Duration::from_secs(10), || {
        c.node("n1")
            .map(|n| n.0)
            .filter(|s| s.autodetection == "nodeIP")
    });
    assert_eq!(st.address, "192.0.2.11".parse::<Ipv4Addr>().unwrap());
    // JSON logs, one object per line.
    let log = _a.log();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string());
    }
    assert!(log.contains("\"msg\":\"node IP\""), "{log}");
    let _ = _a.pid();
}

#[test]
fn bad_config_is_refused_with_the_line() {
    let dir = TempDir::new("badcfg");
    let f = dir.path.join("twilld.yaml");
    std::fs::write(&f, "nodeName: n1\nipAutodetection: interface=eth(\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_twilld"))
        .arg("--config")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("twilld.yaml line 2: ipAutodetection: interface=eth(: not a valid regex"),
        "{err}"
    );
}

#[test]
fn an_unreachable_store_is_retried_and_reported() {
    let dir = TempDir::new("unreach");
    let port = free_port();
    let dead = free_port();
    let log = std::fs::File::create(dir.path.join("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_twilld"))
        .args([
            "--node-name",
            "n1",
            "--node-ip",
            "192.0.2.11",
            "--store",
            "etcd",
        ])
        .args(["--etcd-endpoints", &format!("http://127.0.0.1:{dead}")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--handoff-file")
        .arg(dir.path.join("node.json"))
        .arg("--state-dir")
        .arg(dir.path.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let a = Agent {
        child: Some(child),
        log: dir.path.join("log"),
    };
    let (code, why) = wait_for("readyz to blame the store", Duration::from_secs(10), || {
        get(port, "/readyz").filter(|(_, b)| b.starts_with("store unreachable"))
    });
    assert_eq!(code, 503, "{why}");
    assert!(why.contains(&dead.to_string()), "{why}");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        get(port, "/healthz").unwrap().0,
        200,
        "alive while retrying"
    );
    let (_, text) = get(port, "/metrics").unwrap();
    let m = parse_metrics(&text);
    let errors = m
        .iter()
        .find(|(k, _)| k == "twill_store_errors_total")
        .unwrap()
        .1;
    assert!(errors >= 2.0, "retried: {text}");
    assert!(m.contains(&("twill_store_up".into(), 0.0)));
    assert!(!dir.path.join("node.json").exists(), "nothing handed off");
    drop(a);
}

#[test]
fn agents_run_as_threads_and_stop_on_shutdown() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let c = Cluster::new("threads");
    c.apply("10.244.0.0/16", 24, 60, None);
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&c.dir.path.join("store")).unwrap());
    let shutdown = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..5)
        .map(|i| {
            let name = format!("t{i}");
            let nd = c.node_dir(&name);
            let args: Vec<String> = [
                "--node-name",
                &name,
                "--node-ip",
                "192.0.2.11",
                "--listen",
                "127.0.0.1:0",
                "--handoff-file",
                nd.join("node.json").to_str().unwrap(),
                "--state-dir",
                nd.join("state").to_str().unwrap(),
                "--cni-data-dir",
                nd.join("ipam").to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let twilld::config::Command::Run(config) =
                twilld::config::parse(&args, &Default::default(), |_| Ok(String::new()), "h")
                    .unwrap()
            else {
                panic!()
            };
            let (store, shutdown) = (store.clone(), shutdown.clone());
            std::thread::spawn(move || twilld::Agent::run_with_store(*config, store, shutdown))
        })
        .collect();
    wait_for("5 blocks", Duration::from_secs(20), || {
        (c.blocks().len() == 5).then_some(())
    });
    let held: HashSet<Ipv4Net> = c.blocks().iter().map(|b| b.0).collect();
    assert_eq!(held.len(), 5);
    shutdown.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(c.blocks().len(), 5, "leases are not revoked on shutdown");
}

/// The static store: the node's blocks come from a hand-written file, nothing is claimed
/// or published, and an edit of the file reaches the hand-off.
#[test]
fn a_static_file_gives_the_node_its_blocks_and_edits_follow() {
    let dir = TempDir::new("static");
    let file = dir.path.join("mesh.json");
    let mesh = |n1_blocks: &str| {
        format!(
            r#"{{"config": {{"clusterCIDR": "10.244.0.0/16", "blockSize": 24, "backend": "static"}},
 "nodes": [{{"name": "n1", "address": "192.0.2.11", "blocks": [{n1_blocks}]}},
           {{"name": "n2", "address": "192.0.2.12", "blocks": ["10.244.2.0/24"]}},
           {{"name": "n3", "address": "192.0.2.13", "blocks": []}}]}}"#
        )
    };
    std::fs::write(&file, mesh(r#""10.244.1.0/24""#)).unwrap();
    let start = |name: &str, port: u16| {
        let nd = dir.path.join(name);
        let log = std::fs::File::create(dir.path.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_twilld"))
            .args([
                "--node-name",
                name,
                "--store",
                "static",
                "--node-ip",
                "192.0.2.11",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--static-file")
            .arg(&file)
            .arg("--handoff-file")
            .arg(nd.join("node.json"))
            .arg("--state-dir")
            .arg(nd.join("state"))
            .arg("--cni-data-dir")
            .arg(nd.join("ipam"))
            .args(["--poll-interval-seconds", "0.2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            log: dir.path.join(format!("{name}.log")),
        }
    };
    let handoff = |name: &str| -> Option<HandOff> {
        serde_json::from_slice(&std::fs::read(dir.path.join(name).join("node.json")).ok()?).ok()
    };
    let (p1, p3) = (free_port(), free_port());
    let a1 = start("n1", p1);
    let a3 = start("n3", p3);
    let h = wait_for("n1's hand-off", Duration::from_secs(10), || handoff("n1"));
    assert_eq!(h.blocks, vec!["10.244.1.0/24".parse::<Ipv4Net>().unwrap()]);
    assert_eq!(h.cluster_cidr, "10.244.0.0/16".parse::<Ipv4Net>().unwrap());
    wait_for("n1 ready", Duration::from_secs(10), || {
        get(p1, "/readyz").filter(|(c, _)| *c == 200)
    });
    // A node the file gives no blocks is not ready, and says where to fix it.
    let (code, body) = wait_for(
        "n3 to say why it is not ready",
        Duration::from_secs(10),
        || get(p3, "/readyz").filter(|(c, b)| *c == 503 && b.trim() != "starting"),
    );
    assert_eq!(code, 503);
    assert!(body.contains("mesh.json") && body.contains("n3"), "{body}");
    // Edit the file: the hand-off follows, with no restart.
    std::fs::write(&file, mesh(r#""10.244.1.0/24", "10.244.9.0/24""#)).unwrap();
    wait_for("the second block", Duration::from_secs(10), || {
        handoff("n1").filter(|h| h.blocks.len() == 2)
    });
    assert!(!a1.log().contains("level=error"), "{}", a1.log());
    drop(a3);
}
