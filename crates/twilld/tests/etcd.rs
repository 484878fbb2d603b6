//! twilld as real processes against real etcd members on loopback (no root needed): 50
//! agents racing for blocks, etcd not up at start, a 3-member cluster losing its leader,
//! etcd stopped and restarted under a running agent, a lease revoked behind its back, and a
//! create that commits before its connection breaks.
//! Every check reads etcd back through the Store API.

mod common;
use common::*;
use ipnet::Ipv4Net;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twill_api::resources::{Block, HandOff};
use twill_store::etcd::{EtcdConfig, EtcdStore};
use twill_store::{Event, KeyValue, LeaseId, Store};
use twill_testkit::etcd::{EtcdCluster, EtcdMember};
use twill_testkit::TempDir;

fn client(urls: &[String]) -> EtcdStore {
    EtcdStore::connect(&EtcdConfig::new(urls.to_vec())).unwrap()
}

/// One node's files (hand-off, state, twill-cni data) and its agent.
struct Node {
    name: String,
    dir: PathBuf,
    port: u16,
    agent: AgentProc,
}

impl Node {
    fn start(root: &Path, name: &str, endpoints: &[String], port: u16) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let args: Vec<String> = [
            "--node-name",
            name,
            "--node-ip",
            "192.0.2.11",
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints.join(","),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--handoff-file",
            &p("node.json"),
            "--state-dir",
            &p("state"),
            "--cni-data-dir",
            &p("ipam"),
            "--poll-interval-seconds",
            "0.2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let agent = AgentProc::spawn(&[], &args, dir.join("twilld.log"));
        Node {
            name: name.into(),
            dir,
            port,
            agent,
        }
    }

    fn handoff(&self) -> Option<HandOff> {
        serde_json::from_slice(&std::fs::read(self.dir.join("node.json")).ok()?).ok()
    }

    fn ready(&self) -> bool {
        get(self.port, "/readyz").is_some_and(|r| r.0 == 200)
    }

    fn renewals(&self) -> f64 {
        metric(self.port, "twill_lease_renewals_total").unwrap_or(-1.0)
    }

    /// Waits until ready with one block in the hand-off; returns that block.
    fn wait_ready(&self, timeout: Duration) -> Ipv4Net {
        wait_for(&format!("{} ready", self.name), timeout, || {
            let h = self.handoff()?;
            (self.ready() && h.blocks.len() == 1).then_some(h.blocks[0])
        })
    }
}

fn node_kv(store: &dyn Store, name: &str) -> Option<KeyValue> {
    store.get(&key(&format!("nodes/{name}"))).unwrap()
}

fn block_kv(store: &dyn Store, b: Ipv4Net) -> Option<KeyValue> {
    store
        .get(&key(&format!("blocks/{}-{}", b.network(), b.prefix_len())))
        .unwrap()
}

fn blocks(store: &dyn Store) -> Vec<(Block, KeyValue)> {
    let (kvs, _) = store.list(&key("blocks/")).unwrap();
    kvs.into_iter()
        .map(|kv| (serde_json::from_slice(&kv.value).unwrap(), kv))
        .collect()
}

#[test]
fn fifty_agents_on_one_member_hold_fifty_disjoint_leased_blocks() {
    let etcd = EtcdMember::start("fifty");
    let urls = vec![etcd.client_url()];
    let store = client(&urls);
    store
        .put(
            &key("config"),
            &network_config("10.244.0.0/16", 24, 60, true),
            None,
        )
        .unwrap();
    // What an agent watches before it holds a block, on the real etcd: the other agents'
    // block claims must not reach it (their node records must).
    let (_, rev) = store.list(&key("")).unwrap();
    let mut watch = store
        .watch_range(&twilld::machine::agent_watch(&[]), rev)
        .unwrap();
    let dir = TempDir::new("etcdfifty");
    let ports = free_ports(50);
    let started = Instant::now();
    let nodes: Vec<Node> = (0..50)
        .map(|i| Node::start(&dir.path, &format!("n{i}"), &urls, ports[i]))
        .collect();
    let handoffs: Vec<HandOff> = wait_for("50 hand-off files", Duration::from_secs(60), || {
        nodes.iter().map(Node::handoff).collect::<Option<Vec<_>>>()
    });
    eprintln!(
        "50 agents held blocks on etcd after {:?}",
        started.elapsed()
    );

    let held = blocks(&store);
    assert_eq!(held.len(), 50, "one block per agent");
    let cidrs: Vec<Ipv4Net> = held.iter().map(|(b, _)| b.cidr).collect();
    for (i, x) in cidrs.iter().enumerate() {
        assert_eq!(x.prefix_len(), 24);
        for y in &cidrs[i + 1..] {
            assert!(!x.contains(y) && !y.contains(x), "{x} overlaps {y}");
        }
    }
    let mut owners = HashSet::new();
    for (b, kv) in &held {
        assert!(owners.insert(b.node.clone()), "{} holds two blocks", b.node);
        let node = node_kv(&store, &b.node).expect("node key published");
        assert!(kv.lease.is_some(), "{} is bound to a lease", b.cidr);
        assert_eq!(
            kv.lease, node.lease,
            "{}: block bound to its node's lease",
            b.node
        );
        let i: usize = b.node[1..].parse().unwrap();
        assert_eq!(handoffs[i].node, b.node);
        assert_eq!(
            handoffs[i].blocks,
            [b.cidr],
            "the store and {}'s hand-off agree",
            b.node
        );
    }
    let leases: HashSet<_> = held.iter().map(|(_, kv)| kv.lease).collect();
    assert_eq!(leases.len(), 50, "one lease per agent");

    let mut nodes_seen = HashSet::new();
    // Until quiet, or 10 s if the agents keep rewriting their records.
    let until = Instant::now() + Duration::from_secs(10);
    while let Some(ev) = watch
        .next(Duration::from_millis(500))
        .unwrap()
        .filter(|_| Instant::now() < until)
    {
        let rel = ev.key().strip_prefix(&key("")).unwrap().to_string();
        assert!(
            !rel.starts_with("blocks/"),
            "another agent's block claim reached an agent's watch: {rel}"
        );
        if let Some(n) = rel.strip_prefix("nodes/") {
            nodes_seen.insert(n.to_string());
        }
    }
    assert_eq!(nodes_seen.len(), 50, "every node record reaches the watch");
}

#[test]
fn etcd_not_up_at_start_is_retried_with_backoff_until_it_comes() {
    // A member that ran once (holding the network config), stopped before the agent starts
    // and started again on the same port and data later.
    let mut etcd = EtcdMember::start("late");
    let urls = vec![etcd.client_url()];
    let store = client(&urls);
    store
        .put(
            &key("config"),
            &network_config("10.244.0.0/16", 24, 60, true),
            None,
        )
        .unwrap();
    etcd.stop();
    let dir = TempDir::new("etcdlate");
    let node = Node::start(&dir.path, "n1", &urls, free_port());
    let started = Instant::now();

    let (code, why) = wait_for("readyz to blame the store", Duration::from_secs(10), || {
        get(node.port, "/readyz").filter(|(_, b)| b.contains("store unreachable"))
    });
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("etcd"), "names the store: {why}");
    assert!(why.contains(&urls[0]), "names the endpoint: {why}");
    assert_eq!(
        get(node.port, "/healthz").unwrap().0,
        200,
        "alive meanwhile"
    );

    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    assert!(
        node.handoff().is_none(),
        "nothing handed off without a store"
    );
    etcd.restart();
    assert!(
        etcd.wait_healthy(Duration::from_secs(10)),
        "{}",
        etcd.log_tail()
    );
    let restarted = Instant::now();
    let block = node.wait_ready(Duration::from_secs(20));
    eprintln!("ready {:?} after etcd came back", restarted.elapsed());
    let kv = block_kv(&store, block).expect("the block is in etcd");
    assert_eq!(kv.lease, node_kv(&store, "n1").unwrap().lease);

    // The retries were spaced by growing delays, and the log says so.
    let log = node.agent.log();
    let delays: Vec<Duration> = log
        .lines()
        .filter(|l| l.contains("retrying"))
        .filter_map(|l| {
            let v = l.split("retryInMs=").nth(1)?.split(' ').next()?;
            Some(Duration::from_millis(v.parse().ok()?))
        })
        .collect();
    assert!(delays.len() >= 3, "several retries logged:\n{log}");
    eprintln!("retry delays logged while etcd was down: {delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "growing delays {delays:?}:\n{log}"
    );
    assert!(log.contains("node ready"), "{log}");
}

#[test]
fn a_three_member_cluster_losing_its_leader_keeps_the_agent_s_lease_and_block() {
    let mut etcd = EtcdCluster::start(3);
    let urls = etcd.client_urls();
    let store = client(&urls);
    store
        .put(
            &key("config"),
            &network_config("10.244.0.0/16", 24, 6, true),
            None,
        )
        .unwrap();
    // The agent talks to the leader first, so killing it takes the agent's endpoint away.
    let first = etcd.wait_leader(Duration::from_secs(5)).expect("a leader");
    let mut agent_urls = urls.clone();
    agent_urls.rotate_left(first);
    let dir = TempDir::new("etcdleader");
    let node = Node::start(&dir.path, "n1", &agent_urls, free_port());
    let block = node.wait_ready(Duration::from_secs(20));
    let before = block_kv(&store, block).unwrap();
    let lease = before.lease.expect("leased");

    let leader = etcd.wait_leader(Duration::from_secs(5)).expect("a leader");
    // Watch the block key on a member that survives: a DELETE would show here.
    let follower = (leader + 1) % 3;
    let watcher = client(&urls[follower..=follower]);
    let mut watch = watcher.watch(&key("blocks/"), before.mod_revision).unwrap();
    // Keep-alives every TTL/3 = 2 s: let two pass so the counter has a base.
    std::thread::sleep(Duration::from_millis(2500));
    let renewals_before = node.renewals();
    assert!(renewals_before >= 1.0, "renewing before the fault");

    assert_eq!(leader, first, "the leader the agent talks to");
    etcd.kill(leader);
    let killed = Instant::now();
    // For 10 s (over a TTL and a half): the block key stays, with the same lease and
    // creation, whenever etcd answers; readyz is back to 200 within a few seconds.
    let mut answered = 0;
    let mut last_not_ready: Option<Duration> = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if let Ok(kv) = store.get(&before.key) {
            let kv = kv.unwrap_or_else(|| {
                panic!(
                    "block key gone {:?} after the leader died",
                    killed.elapsed()
                )
            });
            assert_eq!(
                (kv.lease, kv.create_revision),
                (Some(lease), before.create_revision)
            );
            answered += 1;
        }
        if !node.ready() {
            last_not_ready = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered > 50, "etcd answered {answered} reads");
    if let Some(t) = last_not_ready {
        assert!(t < Duration::from_secs(5), "readyz 503 until {t:?}");
    }
    assert!(node.ready());
    eprintln!("leader killed: agent last not ready at {last_not_ready:?}");
    let renewals_after = node.renewals();
    assert!(
        renewals_after >= renewals_before + 3.0,
        "renewals went on: {renewals_before} then {renewals_after}"
    );
    assert_eq!(etcd.leader_index().map(|i| i != leader), Some(true));
    let mut events = Vec::new();
    while let Ok(Some(ev)) = watch.next(Duration::from_millis(200)) {
        events.push(ev);
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Delete { key, .. } if *key == before.key)),
        "the block key was deleted: {events:?}"
    );
    assert_eq!(node.handoff().unwrap().blocks, [block]);
    let log = node.agent.log();
    assert!(!log.contains("lease lost"), "{log}");
}

#[test]
fn etcd_stopped_for_less_than_the_ttl_keeps_the_agent_s_block_and_lease() {
    let mut etcd = EtcdMember::start("pause");
    let urls = vec![etcd.client_url()];
    let store = client(&urls);
    // Keep-alives every 5 s; etcd is down for about 8 s.
    store
        .put(
            &key("config"),
            &network_config("10.244.0.0/16", 24, 15, true),
            None,
        )
        .unwrap();
    let dir = TempDir::new("etcdpause");
    let node = Node::start(&dir.path, "n1", &urls, free_port());
    let block = node.wait_ready(Duration::from_secs(20));
    let before = block_kv(&store, block).unwrap();

    let stopped = Instant::now();
    etcd.stop();
    eprintln!("etcd exited {:?} after SIGTERM", stopped.elapsed());
    let renewals_down = node.renewals();
    let errors_down = metric(node.port, "twill_store_errors_total").unwrap();
    std::thread::sleep(Duration::from_secs(8).saturating_sub(stopped.elapsed()));
    assert!(
        metric(node.port, "twill_store_errors_total").unwrap() > errors_down,
        "the agent kept trying while etcd was down"
    );
    assert_eq!(node.renewals(), renewals_down, "nothing renewed meanwhile");
    let (code, why) = get(node.port, "/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(why.contains("store unreachable"), "{why}");

    etcd.restart();
    assert!(
        etcd.wait_healthy(Duration::from_secs(10)),
        "{}",
        etcd.log_tail()
    );
    eprintln!("etcd back {:?} after it was stopped", stopped.elapsed());
    wait_for("renewals to resume", Duration::from_secs(15), || {
        (node.renewals() > renewals_down && node.ready()).then_some(())
    });
    let after = block_kv(&store, block).expect("the block survived");
    assert_eq!(
        (after.lease, after.create_revision),
        (before.lease, before.create_revision),
        "same block, same lease, never recreated"
    );
    assert_eq!(node_kv(&store, "n1").unwrap().lease, before.lease);
    assert_eq!(blocks(&store).len(), 1);
    assert_eq!(node.handoff().unwrap().blocks, [block]);
    assert!(!node.agent.log().contains("lease lost"));
}

#[test]
fn a_revoked_lease_on_etcd_gets_the_same_block_under_a_new_lease() {
    let etcd = EtcdMember::start("revoke");
    let urls = vec![etcd.client_url()];
    let store = client(&urls);
    store
        .put(
            &key("config"),
            &network_config("10.244.0.0/16", 24, 6, true),
            None,
        )
        .unwrap();
    let dir = TempDir::new("etcdrevoke");
    let node = Node::start(&dir.path, "n1", &urls, free_port());
    let block = node.wait_ready(Duration::from_secs(20));
    let old = block_kv(&store, block).unwrap().lease.unwrap();
    store.revoke(old).unwrap();
    assert!(block_kv(&store, block).is_none(), "revoking deleted it");
    let revoked = Instant::now();
    let new: LeaseId = wait_for("the block back", Duration::from_secs(10), || {
        block_kv(&store, block)?.lease.filter(|l| *l != old)
    });
    eprintln!(
        "block claimed again {:?} after the revoke",
        revoked.elapsed()
    );
    // The node key follows in the same step, just after the blocks.
    wait_for(
        "the node key under the new lease",
        Duration::from_secs(5),
        || (node_kv(&store, "n1")?.lease == Some(new)).then_some(()),
    );
    let held = blocks(&store);
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].0.cidr, held[0].0.node.as_str()), (block, "n1"));
    // The hand-off was cut at the loss and is written again after the claim; the agent
    // stays ready throughout, so readiness alone does not say the new hand-off is there.
    wait_for(
        "ready again with the block handed off",
        Duration::from_secs(5),
        || (node.ready() && node.handoff()?.blocks == [block]).then_some(()),
    );
    assert!(node.agent.log().contains("lease lost"));
}

/// A TCP proxy in front of one etcd member that, `armed` times, lets a request whose bytes
/// contain every one of `needles` through to etcd and then breaks the connection instead of passing the
/// answer back: the write commits, the client sees a connection error. Threads only; they
/// end with the test process.
struct CommitThenBreak {
    port: u16,
    armed: Arc<AtomicUsize>,
    broken: Arc<AtomicUsize>,
}

impl CommitThenBreak {
    fn start(upstream: &str, needles: Vec<Vec<u8>>) -> CommitThenBreak {
        let upstream: std::net::SocketAddr =
            upstream.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(AtomicUsize::new(0));
        let (a, b) = (armed.clone(), broken.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let doomed = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (d, armed, needles) = (doomed.clone(), a.clone(), needles.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let hit = needles.iter().all(|needle| {
                            buf[..n]
                                .windows(needle.len())
                                .any(|w| w == needle.as_slice())
                        });
                        if hit
                            && armed
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| {
                                    x.checked_sub(1)
                                })
                                .is_ok()
                        {
                            d.store(true, Ordering::SeqCst);
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out, broken) = (server, client, b.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if doomed.load(Ordering::SeqCst) {
                            // etcd has answered (the write is committed): drop the answer.
                            broken.fetch_add(1, Ordering::SeqCst);
                            let _ = c_out.shutdown(Shutdown::Both);
                            let _ = s_in.shutdown(Shutdown::Both);
                            return;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Write);
                });
            }
        });
        CommitThenBreak {
            port,
            armed,
            broken,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The etcd client retries a call on the next endpoint after a connection error, so a
/// create whose first attempt committed answers "already exists". The agent reads the
/// block back and keeps it when it is its own (this node, this lease) instead of claiming
/// another and stranding the first.
#[test]
fn a_create_that_committed_before_a_connection_error_is_kept_not_stranded() {
    let etcd = EtcdMember::start("commitbreak");
    let direct = etcd.client_url();
    // A transaction on a block key (block keys start with these 15 bytes, which encode to
    // 20 base64 characters exactly).
    let needles = vec![
        b"POST /v3/kv/txn".to_vec(),
        twill_store::etcd::base64::encode(b"/twill/v1/block").into_bytes(),
    ];
    let proxy = CommitThenBreak::start(&direct, needles);
    let urls = vec![proxy.url(), direct.clone()];
    let store = client(std::slice::from_ref(&direct));

    // The hazard itself, at the store level.
    let flaky = client(&urls);
    proxy.armed.store(1, Ordering::SeqCst);
    let k = key("blocks/10.244.99.0-24");
    assert_eq!(
        flaky.create(&k, b"{}", None).unwrap(),
        None,
        "the retry answers \"already exists\""
    );
    assert_eq!(
        proxy.broken.load(Ordering::SeqCst),
        1,
        "the fault was injected"
    );
    assert_eq!(
        store.get(&k).unwrap().unwrap().value,
        b"{}",
        "yet it committed"
    );
    store.delete(&k).unwrap();

    // The agent through the same proxy: its first block create commits, then breaks.
    store
        .put(
            &key("config"),
            &network_config("10.244.0.0/16", 24, 60, true),
            None,
        )
        .unwrap();
    proxy.armed.store(1, Ordering::SeqCst);
    let dir = TempDir::new("etcdcommitbreak");
    let node = Node::start(&dir.path, "n1", &urls, free_port());
    let block = node.wait_ready(Duration::from_secs(20));
    assert_eq!(
        proxy.broken.load(Ordering::SeqCst),
        2,
        "the agent's create broke too"
    );
    let held = blocks(&store);
    assert_eq!(
        held.iter().map(|(b, _)| b.cidr).collect::<Vec<_>>(),
        [block],
        "one block, the one handed off: nothing stranded"
    );
    assert_eq!(held[0].1.lease, node_kv(&store, "n1").unwrap().lease);
    assert!(
        node.agent.log().contains("the retry found it ours"),
        "{}",
        node.agent.log()
    );
}
