//! An agent storm: more nodes than blocks, agents SIGKILLed and restarted at random for
//! 30 s (some killed while claiming, some down past their 5 s lease, some replaced with an
//! empty state folder and no hand-off), on the embedded store and on a 3-member etcd that
//! loses its leader twice. A sampler checks throughout, for every running agent:
//! - no block is in two nodes' hand-offs;
//! - no block in a hand-off is held by another node in the store.
//!
//! At the end every agent is running and recovered (ready with the blocks the store gives
//! it, or waiting for a free block when all are held), and `twill ipam check` is clean.
//!
//! A killed agent's hand-off is frozen with it and not sampled: in the field its node's pods
//! are down with it (the fault is a node down past its lease), and a restarted agent cuts the
//! file to no block before it even opens the store. It is sampled again once that cut is
//! written, or [`CUT_GRACE`] after the start whatever the file says.
//!
//! Bounded (it runs in CI): 30 s of storm (on etcd the leader is lost at 10 s and 20 s) plus
//! at most 40 s of recovery per store.

mod common;
use common::*;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use twill_api::resources::{Block, HandOff, NetworkConfig, NodeStatus};
use twill_store::{Store, PREFIX};
use twill_testkit::etcd::EtcdCluster;
use twill_testkit::TempDir;

const NODES: usize = 8;
/// 10.244.1.0/24 … 10.244.6.0/24.
const BLOCKS: usize = 6;
const TTL: u64 = 5;
const STORM: Duration = Duration::from_secs(30);
const RECOVERY: Duration = Duration::from_secs(40);
/// A restarted agent must have cut its old hand-off by then (it does so before it even
/// opens the store); until then its file is not judged.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// xorshift64*: the run's seed is printed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

fn config() -> Vec<u8> {
    let c = NetworkConfig {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        block_size: 24,
        subnet_min: Some("10.244.1.0/24".parse().unwrap()),
        subnet_max: Some("10.244.6.0/24".parse().unwrap()),
        reservations: vec![],
        backend: Default::default(),
        mtu: 1450,
        masquerade: true,
        pod_wiring: Default::default(),
        lease_ttl_seconds: TTL,
    };
    c.validate().unwrap();
    serde_json::to_vec(&c).unwrap()
}

/// How the agents reach the store (flags), and a client for the test.
struct StoreSetup {
    flags: Vec<String>,
    client: Box<dyn Store>,
}

struct Slot {
    name: String,
    dir: PathBuf,
    agent: Option<AgentProc>,
    /// When the running agent was started.
    started: SystemTime,
    /// Down until then (past its lease), when not running.
    down_until: Option<Instant>,
    /// The running (or last) agent's generation: its log is `twilld.<generation>.log`.
    generation: usize,
}

impl Slot {
    fn handoff_path(&self) -> PathBuf {
        self.dir.join("node.json")
    }

    fn start(&mut self, store_flags: &[String], generation: usize) {
        let p = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
        let mut args: Vec<String> = [
            "--node-name",
            &self.name,
            "--node-ip",
            "192.0.2.11",
            // Port 0, read back from the log: a fixed port can be taken by another
            // process while the agent is down, and then it cannot start at all.
            "--listen",
            "127.0.0.1:0",
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
        args.extend(store_flags.iter().cloned());
        self.started = SystemTime::now();
        self.generation = generation;
        self.agent = Some(AgentProc::spawn(
            &[],
            &args,
            self.dir.join(format!("twilld.{generation}.log")),
        ));
        self.down_until = None;
    }

    fn kill(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
    }

    /// What the hand-off lists, if the sampler may judge it now (see the module docs).
    fn sampled_handoff(&self) -> Option<Vec<Ipv4Net>> {
        self.agent.as_ref()?;
        let path = self.handoff_path();
        let meta = std::fs::metadata(&path).ok()?;
        let h: HandOff = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        if h.blocks.is_empty() {
            return None;
        }
        let cut = meta.modified().ok()? >= self.started;
        let late = self.started.elapsed().unwrap_or_default() >= CUT_GRACE;
        (cut || late).then_some(h.blocks)
    }

    /// An agent that exited by itself (no fault kills it but the test): it must never,
    /// whatever the store does; its frozen hand-off would hand out a block it no longer
    /// renews. The violation, once (the agent is reaped).
    fn exited(&mut self) -> Option<String> {
        let status = self.agent.as_mut()?.child.as_mut()?.try_wait().ok()??;
        self.agent = None;
        Some(format!(
            "{} (generation {}) exited by itself: {status}",
            self.name, self.generation
        ))
    }

    /// The running agent's HTTP port, once it has logged it.
    fn port(&self) -> Option<u16> {
        let log = self.agent.as_ref()?.log();
        let line = log
            .lines()
            .find(|l| l.contains("msg=\"twilld starting\""))?;
        let addr = line.split(' ').find_map(|f| f.strip_prefix("listen="))?;
        addr.rsplit_once(':')?.1.parse().ok()
    }

    fn handoff(&self) -> Vec<Ipv4Net> {
        std::fs::read(self.handoff_path())
            .ok()
            .and_then(|b| serde_json::from_slice::<HandOff>(&b).ok())
            .map(|h| h.blocks)
            .unwrap_or_default()
    }
}

/// Kills every agent and stops the sampler when the test ends, failures included.
struct Guard(Arc<Mutex<Vec<Slot>>>, Arc<AtomicBool>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.1.store(true, Ordering::Relaxed);
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for s in slots.iter_mut() {
            s.kill();
        }
    }
}

/// Every block in the store: block → holder. None if the store does not answer now.
fn held(store: &dyn Store) -> Option<BTreeMap<Ipv4Net, String>> {
    let (kvs, _) = store.list(&format!("{PREFIX}blocks/")).ok()?;
    Some(
        kvs.iter()
            .filter_map(|kv| serde_json::from_slice::<Block>(&kv.value).ok())
            .map(|b| (b.cidr, b.node))
            .collect(),
    )
}

/// One sample of the two invariants; the violations found.
fn sample(slots: &[Slot], store: &dyn Store) -> Option<Vec<String>> {
    let handoffs: Vec<(String, Vec<Ipv4Net>)> = slots
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.sampled_handoff()?)))
        .collect();
    let holders = held(store)?;
    let mut bad = Vec::new();
    let mut seen: HashMap<Ipv4Net, &str> = HashMap::new();
    for (node, blocks) in &handoffs {
        for b in blocks {
            if let Some(other) = seen.insert(*b, node) {
                bad.push(format!("{b} is in the hand-offs of {other} and {node}"));
            }
            if let Some(h) = holders.get(b).filter(|h| *h != node) {
                bad.push(format!("{b} is in {node}'s hand-off but held by {h}"));
            }
        }
    }
    Some(bad)
}
/// On a failure: the agents' logs (every generation) of the nodes the first violation
/// names, and the store's view, so that one CI failure is enough to find the cause.
fn dump_logs(slots: &[Slot], violation: &str) {
    for s in slots {
        let named = violation
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == s.name);
        if !named {
            continue;
        }
        let mut logs: Vec<(usize, PathBuf)> = std::fs::read_dir(&s.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let gen = name
                    .strip_prefix("twilld.")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some((gen, e.path()))
            })
            .collect();
        logs.sort();
        for (gen, path) in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            eprintln!("==== {} generation {gen} ({})", s.name, path.display());
            for line in text.lines().filter(|l| !l.contains("level=debug")) {
                eprintln!("{line}");
            }
        }
    }
}

/// Runs the storm; `chaos_store` is called about once a second with the time since the
/// start (the etcd variant kills its leader from there).
fn storm(tag: &str, setup: StoreSetup, mut chaos_store: impl FnMut(Duration)) {
    let dir = TempDir::new(tag);
    setup.client.put(&key("config"), &config(), None).unwrap();
    let seed = std::env::var("TWL_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("storm {tag}: seed {seed} (TWL_STORM_SEED={seed} replays the choices)");
    let mut rng = Rng(seed);
    let slots: Vec<Slot> = (0..NODES)
        .map(|i| {
            let d = dir.path.join(format!("n{i}"));
            std::fs::create_dir_all(&d).unwrap();
            Slot {
                name: format!("n{i}"),
                dir: d,
                agent: None,
                started: SystemTime::now(),
                down_until: None,
                generation: 0,
            }
        })
        .collect();
    let slots = Arc::new(Mutex::new(slots));
    let mut generation = 0;
    for s in slots.lock().unwrap().iter_mut() {
        generation += 1;
        s.start(&setup.flags, generation);
    }

    // The sampler: as often as it can, for the whole storm and recovery.
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = Guard(slots.clone(), stop.clone());
    let client: Arc<dyn Store> = Arc::from(setup.client);
    let sampler = {
        let (slots, stop, client) = (slots.clone(), stop.clone(), client.clone());
        std::thread::spawn(move || {
            let (mut samples, mut unanswered, mut violations) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                // Holding the lock: no agent is killed or started while it reads.
                let mut slots = slots.lock().unwrap();
                violations.extend(slots.iter_mut().filter_map(Slot::exited));
                let got = sample(&slots, client.as_ref());
                drop(slots);
                match got {
                    Some(bad) => {
                        samples += 1;
                        violations.extend(bad);
                    }
                    None => unanswered += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (samples, unanswered, violations)
        })
    };

    let (mut restarts, mut mid_claim, mut past_lease, mut replaced) = (0, 0, 0, 0);
    let start = Instant::now();
    let mut next_chaos = start;
    let mut last_store_chaos = Duration::ZERO;
    while start.elapsed() < STORM {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        if start.elapsed() >= last_store_chaos + Duration::from_secs(1) {
            last_store_chaos = start.elapsed();
            chaos_store(last_store_chaos);
        }
        let mut slots = slots.lock().unwrap();
        // Agents down past their lease come back; those killed mid-claim are killed.
        for s in slots.iter_mut() {
            if s.down_until.is_some_and(|t| now >= t) {
                if s.agent.is_some() {
                    // Killed a moment after its start (while claiming), then started for good.
                    s.kill();
                }
                generation += 1;
                s.start(&setup.flags, generation);
            }
        }
        if now < next_chaos {
            continue;
        }
        next_chaos = now + rng.millis(150, 500);
        let i = rng.below(NODES as u64) as usize;
        let s = &mut slots[i];
        if s.agent.is_none() || s.down_until.is_some() {
            continue;
        }
        s.kill();
        match rng.below(10) {
            // Down past its lease: another node may take its block meanwhile.
            0 | 1 => {
                past_lease += 1;
                s.down_until = Some(now + Duration::from_secs(TTL) + rng.millis(500, 3000));
            }
            // Replaced under the same name: empty state folder, no hand-off.
            2 | 3 => {
                replaced += 1;
                let _ = std::fs::remove_dir_all(s.dir.join("state"));
                let _ = std::fs::remove_file(s.handoff_path());
                generation += 1;
                s.start(&setup.flags, generation);
            }
            // Started, killed again while it starts and claims (see above).
            4 | 5 => {
                mid_claim += 1;
                generation += 1;
                s.start(&setup.flags, generation);
                s.down_until = Some(now + rng.millis(3, 120));
            }
            _ => {
                restarts += 1;
                generation += 1;
                s.start(&setup.flags, generation);
            }
        }
    }
    eprintln!(
        "storm {tag}: {restarts} restarts, {mid_claim} killed while claiming, {past_lease} down past the lease, {replaced} replaced with empty state"
    );
    for s in slots.lock().unwrap().iter_mut() {
        if s.agent.is_none() || s.down_until.is_some() {
            s.kill();
            generation += 1;
            s.start(&setup.flags, generation);
        }
    }

    // Recovery: every agent up, every block held by a running agent and handed off by it
    // alone, the others waiting for a free block.
    let recovered = Instant::now();
    let settle = || {
        let slots = slots.lock().unwrap();
        let holders = held(client.as_ref())?;
        if holders.len() != BLOCKS {
            return None;
        }
        let mut report = Vec::new();
        for s in slots.iter() {
            let (code, body) = get(s.port()?, "/readyz")?;
            let mut mine: Vec<Ipv4Net> = holders
                .iter()
                .filter(|(_, h)| **h == s.name)
                .map(|(b, _)| *b)
                .collect();
            mine.sort();
            let mut handed = s.handoff();
            handed.sort();
            let ok = if mine.is_empty() {
                code == 503 && body.contains("no free block") && handed.is_empty()
            } else {
                let kv = client.get(&key(&format!("nodes/{}", s.name))).ok()??;
                let status: NodeStatus = serde_json::from_slice(&kv.value).ok()?;
                let mut published = status.blocks.clone();
                published.sort();
                code == 200 && handed == mine && published == mine
            };
            if !ok {
                return None;
            }
            report.push((s.name.clone(), mine));
        }
        Some(report)
    };
    let settled = loop {
        if let Some(r) = settle() {
            break Some(r);
        }
        if recovered.elapsed() > RECOVERY {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "storm {tag}: recovered after {:?}: {settled:?}",
        recovered.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let (samples, unanswered, violations) = sampler.join().unwrap();
    eprintln!("storm {tag}: {samples} samples ({unanswered} while the store did not answer)");
    if !violations.is_empty() {
        dump_logs(&slots.lock().unwrap(), &violations[0]);
    }
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    assert!(samples > 1000, "the sampler ran: {samples} samples");
    if settled.is_none() {
        let slots = slots.lock().unwrap();
        let state: Vec<_> = slots
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.handoff(),
                    s.port().and_then(|p| get(p, "/readyz")),
                )
            })
            .collect();
        panic!(
            "not every agent recovered within {RECOVERY:?}: blocks {:?}, nodes {state:?}",
            held(client.as_ref())
        );
    }
    assert!(
        restarts > 0 && mid_claim > 0 && past_lease > 0 && replaced > 0,
        "every kind of fault happened"
    );

    // `twill ipam check` against the same store (the build of twill, if this run did not
    // build it, timed apart: it is not the check's).
    let built = Instant::now();
    let twill = twill_bin();
    let checked = Instant::now();
    let out = Command::new(twill)
        .args(["ipam", "check"])
        .args(&setup.flags)
        .output()
        .unwrap();
    eprintln!(
        "storm {tag}: twill built in {:?}, ipam check took {:?}",
        checked - built,
        checked.elapsed()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("ok:"),
        "ipam check: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in slots.lock().unwrap().iter_mut() {
        s.kill();
    }
}

#[test]
fn storm_on_the_embedded_store() {
    let dir = TempDir::new("stormstore");
    let store_dir = dir.path.join("store");
    let client = twill_store::embedded::EmbeddedStore::open(&store_dir).unwrap();
    let setup = StoreSetup {
        flags: vec![
            "--store".into(),
            "embedded".into(),
            "--store-dir".into(),
            store_dir.to_string_lossy().into_owned(),
        ],
        client: Box::new(client),
    };
    storm("stormemb", setup, |_| {});
}

// In one full CI run of 2026-12-02 (seed 1796183183516936521) this found n4 handing off
// 10.244.4.0/24 for 40 s while n7 held it; the same seed passed alone. The cause that fits
// every symptom: a restarted agent whose fixed listen port another test had taken meanwhile
// exited before it cut its old hand-off. The hand-off is now cut first of all
// (agent.rs: an_agent_that_cannot_start_still_cuts_its_old_hand_off_first), agents here
// listen on port 0, and an agent that exits by itself is a violation. The watch's restart
// gap, the other way a taken block could go unnoticed, is closed too (machine.rs:
// a_block_taken_while_the_watch_was_down_leaves_the_hand_off_when_it_watches_again).
#[test]
fn storm_on_a_three_member_etcd_that_loses_its_leader() {
    let cluster = Mutex::new(EtcdCluster::start(3));
    let urls = cluster.lock().unwrap().client_urls();
    let client =
        twill_store::etcd::EtcdStore::connect(&twill_store::etcd::EtcdConfig::new(urls.clone()))
            .unwrap();
    let setup = StoreSetup {
        flags: vec![
            "--store".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            urls.join(","),
        ],
        client: Box::new(client),
    };
    // At 10 s and 20 s the leader is SIGKILLed; it is restarted 3 s later.
    let mut killed: Option<(usize, Duration)> = None;
    let mut kills = 0;
    storm("stormetcd", setup, |t| {
        let mut c = cluster.lock().unwrap();
        if let Some((i, at)) = killed {
            if t >= at + Duration::from_secs(3) {
                c.restart(i);
                killed = None;
            }
        } else if (t >= Duration::from_secs(10) && kills == 0)
            || (t >= Duration::from_secs(20) && kills == 1)
        {
            if let Some(i) = c.leader_index() {
                eprintln!("storm: killing etcd leader {i} at {t:?}");
                c.kill(i);
                killed = Some((i, t));
                kills += 1;
            }
        }
    });
    assert_eq!(kills, 2, "the leader was lost twice");
}
