//! `twill-bench scale`: N real `twilld` processes, each in its own network namespace with
//! its own kernel routing table (backend host-gw), against a 3-member etcd on this machine,
//! all started at once. Measures the cold start (every block leased, every route in every
//! namespace), one etcd member SIGKILLed during it, one node joining (seen in every
//! namespace), then an idle window: etcd's request and write rates and db size, each
//! agent's CPU, RSS and probes per second. Removes everything it made (agents and etcd by
//! PID, namespaces, the scratch folder), on error and Ctrl-C too.
//!
//! Layout: an underlay namespace with a bridge (10.244.128.1/20) on which the etcd members
//! listen; node k at 10.244.128.(k+1) behind a veth, with permanent neighbour entries for
//! every other node (RUNBOOK: the neighbour table is machine-wide and capped; permanent
//! entries are not counted). Pods: 10.244.0.0/17 in /28 blocks (2048 blocks, one per agent
//! up to [`MAX_AGENTS`] and the joiner; there are no pods, so 16 addresses a block do).

use crate::cni::{catch_signals, check_interrupted};
use crate::daemon::{self, Daemon};
use crate::etcd;
use crate::netns;
use crate::procstat;
use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twill_api::resources::{Block, NodeStatus, KEY_CONFIG, PREFIX_BLOCKS, PREFIX_NODES};
use twill_netlink::{Handle, Netns};
use twill_store::etcd::{EtcdConfig, EtcdStore};
use twill_store::{Store, PREFIX as STORE_PREFIX};

/// Every namespace and folder of this bench starts with this (not `twlbench`, so that the
/// other benches' smoke tests, which insist on no `twlbench*` leftovers, are not disturbed
/// by a long scale run).
pub const PREFIX: &str = "twlsc";
const CLUSTER_CIDR: &str = "10.244.0.0/17";
/// 2^(28-17) = 2048 blocks. (It was /26, 512 blocks, which the doc called 2048: at 1000
/// agents 489 of them found "no free block" and the run never converged.)
const BLOCK_SIZE: u8 = 28;
/// Node k (1-based) is 10.244.128.(k+1); the underlay bridge is .1.
const UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 244, 128, 1);
const UNDERLAY_LEN: u8 = 20;
pub const MAX_AGENTS: usize = 2000;
const _: () = assert!(
    MAX_AGENTS < 1 << (BLOCK_SIZE - 17),
    "a block for every agent"
);
const AGENT_PORT: u16 = 9099;
/// etcd members: client and peer ports on the underlay address.
const MEMBERS: [(u16, u16); 3] = [(2379, 2380), (2479, 2480), (2579, 2580)];
/// The etcd members' nice value: above the agents, so that sharing 2 cores with N agents
/// does not cost the cluster its leader (see [`etcd::Cluster::nice`]).
const ETCD_NICE: i32 = -10;
/// How many nice steps below the bench the agents of the cold start run (etcd is above
/// both), so the bench's polls and etcd are not starved by 1000 agents.
const AGENT_NICE_BELOW: i32 = 5;
/// Where the members keep their data: tmpfs. On the shared disk their WAL's fdatasync took
/// up to 8.8 s at 1000 agents (every session's builds write there) and the cluster kept
/// losing its leader; a real cluster gives etcd a disk of its own.
const ETCD_TMPFS: &str = "/dev/shm";
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Options {
    pub agents: usize,
    pub idle_seconds: f64,
    /// Between the join and the idle window: the first peer views are written as the
    /// probes cover every peer (ceil(N/32) rounds) and refreshed 120-150 s later; a window
    /// that should show the steady state starts after that.
    pub settle_seconds: f64,
    /// Between the cold start's convergence and the join: a join measured at once meets a
    /// cluster still catching up (watches resuming, rounds backing off).
    pub join_after_seconds: f64,
    /// How long the cold start may take to converge.
    pub converge_timeout: Duration,
    pub twilld: PathBuf,
    pub etcd: PathBuf,
}

fn node_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(UNDERLAY) + k as u32)
}

fn mac(k: usize) -> String {
    format!(
        "02:74:77:{:02x}:{:02x}:{:02x}",
        (k >> 16) & 0xff,
        (k >> 8) & 0xff,
        k & 0xff
    )
}

fn progress(msg: &str) {
    say!("twill-bench scale: {msg}");
}

/// Everything the run made; dropping it removes it all (best effort).
struct Guard {
    root: Netns,
    agents: Vec<Daemon>,
    etcd: Vec<Option<Daemon>>,
    namespaces: Vec<String>,
    scratch: PathBuf,
    /// The etcd members' data and logs, on tmpfs.
    etcd_scratch: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        daemon::stop_all(&mut self.agents, Duration::from_secs(5));
        for e in self.etcd.iter_mut().filter_map(Option::take) {
            let mut e = e;
            e.stop(Duration::from_secs(5));
        }
        if let Err(e) = netns::enter(&self.root) {
            say!("twill-bench: {e:#}");
        }
        if let Err(e) = netns::remove(&self.namespaces) {
            say!("twill-bench: cleanup: {e:#}");
        }
        if std::env::var_os(crate::mesh::KEEP_ENV).is_some() {
            say!(
                "twill-bench scale: {} set: {} and {} kept (agent and etcd logs, blocks.txt)",
                crate::mesh::KEEP_ENV,
                self.scratch.display(),
                self.etcd_scratch.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
        let _ = std::fs::remove_dir_all(&self.etcd_scratch);
    }
}

/// `blocks.txt` in the scratch folder: every block with its holder and lease, then the
/// nodes holding more than one, for reading after a run that did not converge.
fn write_holders(scratch: &Path, store: &dyn Store) {
    let text = match store.list(&format!("{STORE_PREFIX}{PREFIX_BLOCKS}")) {
        Err(e) => format!("listing blocks failed: {e}\n"),
        Ok((kvs, rev)) => {
            let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut t = format!("# at revision {rev:?}: key node lease created modified\n");
            for kv in &kvs {
                let node = serde_json::from_slice::<Block>(&kv.value)
                    .map(|b| b.node)
                    .unwrap_or_else(|_| "(unreadable)".into());
                t += &format!(
                    "{} {node} {:?} {:?} {:?}\n",
                    kv.key, kv.lease, kv.create_revision, kv.mod_revision
                );
                by_node.entry(node).or_default().push(kv.key.clone());
            }
            t += "# nodes holding more than one block\n";
            for (node, keys) in by_node.iter().filter(|(_, k)| k.len() > 1) {
                t += &format!("{node} {}\n", keys.join(" "));
            }
            t
        }
    };
    if let Err(e) = std::fs::write(scratch.join("blocks.txt"), text) {
        say!("twill-bench scale: cannot write blocks.txt: {e}");
    }
}

/// Stops what killed runs left (by the PIDs recorded in their folders) and removes every
/// `twlsc*` namespace and folder.
pub fn cleanup() -> Result<()> {
    let mut dirs = Vec::new();
    for root in [std::env::temp_dir(), PathBuf::from(ETCD_TMPFS)] {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(PREFIX) {
                dirs.push(e.path());
            }
        }
    }
    let stopped: usize = dirs.iter().map(|d| daemon::kill_recorded(d)).sum();
    let names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default();
    netns::remove(&names)?;
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    say!(
        "twill-bench scale: stopped {stopped} processes, removed {} namespaces and {} folders",
        names.len(),
        dirs.len()
    );
    Ok(())
}

/// A tiny HTTP GET (etcd's and twilld's /metrics, etcd's /health).
fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The sum of every series of `name` in a Prometheus text page.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The 3-member cluster on the underlay address, with timings that hold on 2 busy cores
/// (see [`etcd::Timings::LOADED`]).
fn etcd_cluster<'a>(exe: &'a Path, scratch: &'a Path) -> etcd::Cluster<'a> {
    etcd::Cluster {
        exe,
        scratch,
        token: "twlscale",
        members: MEMBERS
            .iter()
            .enumerate()
            .map(|(i, (c, p))| etcd::Member {
                name: format!("twls{i}"),
                client: (UNDERLAY, *c).into(),
                peer: (UNDERLAY, *p).into(),
            })
            .collect(),
        timings: etcd::Timings::LOADED,
        nice: Some(ETCD_NICE),
    }
}

/// The blocks of other nodes one namespace's kernel has a route to (via that node).
fn routes_in(h: &mut Handle, cluster: Ipv4Net) -> usize {
    h.routes(254)
        .map(|rs| {
            rs.iter()
                .filter(|r| r.gateway.is_some() && cluster.contains(&r.dst.network()))
                .count()
        })
        .unwrap_or(0)
}

/// Per node: the blocks of every other node its kernel has a route to.
fn routes_seen(handles: &mut [Handle], cluster: Ipv4Net) -> Vec<usize> {
    handles.iter_mut().map(|h| routes_in(h, cluster)).collect()
}

/// Drops from `waiting` (indices into `handles`) every namespace that has `want` routes
/// now, so a poll reads only the tables not there yet (at 1000 nodes a read of every table
/// is a million routes; the bench must not load the machine it measures).
fn still_waiting(handles: &mut [Handle], waiting: &mut Vec<usize>, cluster: Ipv4Net, want: usize) {
    waiting.retain(|i| routes_in(&mut handles[*i], cluster) < want);
}

/// Drops namespaces with `want` routes from the front of `waiting`, up to the first without:
/// one table read per poll while the cluster converges (a read of every waiting table each
/// 100 ms was 10% of the machine's CPU in the 1000-agent profile). Converged, i.e.
/// `waiting` empty, is still exact: the last namespace is read when all before it are done.
fn still_waiting_front(
    handles: &mut [Handle],
    waiting: &mut Vec<usize>,
    cluster: Ipv4Net,
    want: usize,
) {
    let done = waiting
        .iter()
        .take_while(|i| routes_in(&mut handles[**i], cluster) >= want)
        .count();
    waiting.drain(..done);
}

/// Drops from `waiting` every namespace whose kernel sends `block` via `gateway` now. One
/// `ip route get` per namespace, not a dump: a poll of 1000 waiting namespaces reads 1000
/// routes, not a million (run f's join check took 60 s, its agents' routes 8.8 s).
fn still_without(
    handles: &mut [Handle],
    waiting: &mut Vec<usize>,
    block: Ipv4Net,
    gateway: Ipv4Addr,
) {
    let probe = block.hosts().next().unwrap_or(block.network());
    waiting.retain(|i| {
        handles[*i]
            .route_to(probe)
            .ok()
            .flatten()
            .and_then(|r| r.gateway)
            != Some(gateway)
    });
}

fn blocks(store: &dyn Store) -> Result<Vec<Block>> {
    let (kvs, _) = store
        .list(&format!("{STORE_PREFIX}{PREFIX_BLOCKS}"))
        .context("listing blocks")?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Block>(&kv.value).ok())
        .collect())
}

/// Blocks overlapping another, and nodes holding none or more than one.
fn conflicts(blocks: &[Block]) -> usize {
    let mut sorted: Vec<&Block> = blocks.iter().collect();
    sorted.sort_by_key(|b| (b.cidr.network(), b.cidr.prefix_len()));
    sorted
        .windows(2)
        .filter(|w| w[1].cidr.network() <= w[0].cidr.broadcast())
        .count()
}

/// The kind of a store key: its first segment after the prefix (`peers`, `nodes`, ...).
fn kind_of(key: &str) -> &str {
    let rel = key.strip_prefix(STORE_PREFIX).unwrap_or(key);
    rel.split('/').next().unwrap_or(rel)
}

fn etcd_metrics(alive: &[bool]) -> BTreeMap<&'static str, f64> {
    let mut m = BTreeMap::new();
    for (i, (c, _)) in MEMBERS.iter().enumerate() {
        if !alive[i] {
            continue;
        }
        let Ok(text) = http_get(UNDERLAY, *c, "/metrics") else {
            continue;
        };
        for (k, name) in [
            ("grpc_requests", "grpc_server_handled_total"),
            ("puts", "etcd_mvcc_put_total"),
            ("txns", "etcd_mvcc_txn_total"),
            ("deletes", "etcd_mvcc_delete_total"),
            ("proposals", "etcd_server_proposals_committed_total"),
            ("db_bytes", "etcd_mvcc_db_total_size_in_bytes"),
            ("db_in_use_bytes", "etcd_mvcc_db_total_size_in_use_in_bytes"),
        ] {
            let v = metric_sum(&text, name);
            // Requests are per member (each serves its clients); sizes and proposals the max.
            let e = m.entry(k).or_insert(0.0);
            if k == "grpc_requests" {
                *e += v;
            } else {
                *e = f64::max(*e, v);
            }
        }
    }
    m
}

pub fn run(o: &Options) -> Result<Value> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("twill-bench scale builds network namespaces: run it as root");
    }
    if o.agents < 2 || o.agents > MAX_AGENTS {
        bail!("--agents {}: between 2 and {MAX_AGENTS}", o.agents);
    }
    for exe in [&o.twilld, &o.etcd] {
        if !exe.is_file() {
            bail!(
                "{} is missing (cargo build --release -p twilld; apt-get install etcd-server)",
                exe.display()
            );
        }
    }
    catch_signals();
    let n = o.agents;
    let pid = std::process::id();
    let scratch = std::env::temp_dir().join(format!("{PREFIX}{pid}-scale"));
    std::fs::create_dir_all(&scratch)?;
    let etcd_scratch = Path::new(ETCD_TMPFS).join(format!("{PREFIX}{pid}-etcd"));
    std::fs::create_dir_all(&etcd_scratch).with_context(|| {
        format!(
            "cannot create {} (etcd's data, on tmpfs)",
            etcd_scratch.display()
        )
    })?;
    let mut guard = Guard {
        root: Netns::current()?,
        agents: Vec::new(),
        etcd: Vec::new(),
        namespaces: Vec::new(),
        scratch: scratch.clone(),
        etcd_scratch: etcd_scratch.clone(),
    };
    let under = format!("{PREFIX}{pid}-u");
    // n + 1: the node that joins at the end.
    let names: Vec<String> = (1..=n + 1).map(|k| format!("{PREFIX}{pid}-n{k}")).collect();
    guard.namespaces.push(under.clone());
    guard.namespaces.extend(names.iter().cloned());
    progress(&format!("building {} namespaces", n + 2));
    let t_build = Instant::now();
    netns::create(&guard.namespaces.clone())?;
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("link add twlbr address {} type bridge", mac(0)),
        format!("addr add {UNDERLAY}/{UNDERLAY_LEN} dev twlbr"),
        "link set twlbr up".into(),
    ];
    for (k, name) in names.iter().enumerate().map(|(i, s)| (i + 1, s)) {
        lines.push(format!(
            "link add twlv{k} type veth peer name eth0 netns {name}"
        ));
        lines.push(format!("link set twlv{k} master twlbr up"));
    }
    netns::batch_in(&under, &lines)?;
    for (k, name) in names.iter().enumerate().map(|(i, s)| (i + 1, s)) {
        let mut l = vec![
            "link set lo up".to_string(),
            format!("link set eth0 address {}", mac(k)),
            format!("addr add {}/{UNDERLAY_LEN} dev eth0", node_ip(k)),
            "link set eth0 up".into(),
            format!(
                "neigh replace {UNDERLAY} lladdr {} dev eth0 nud permanent",
                mac(0)
            ),
        ];
        for j in (1..=n + 1).filter(|j| *j != k) {
            l.push(format!(
                "neigh replace {} lladdr {} dev eth0 nud permanent",
                node_ip(j),
                mac(j)
            ));
        }
        netns::batch_in(name, &l)?;
        check_interrupted()?;
    }
    let build_s = t_build.elapsed().as_secs_f64();
    netns::enter(&Netns::open(netns::path_of(&under))?)?;

    progress("starting a 3-member etcd (heartbeat 100 ms, election timeout 1 s)");
    let members = etcd_cluster(&o.etcd, &etcd_scratch);
    guard.etcd = etcd::start(&members)?.into_iter().map(Some).collect();
    let endpoints = members.client_urls();
    // The bench's own reads: a longer timeout than the agents' 2 s, so that a loaded
    // cluster answering slowly is measured, not mistaken for no blocks.
    let store = EtcdStore::connect(&EtcdConfig {
        timeout: Duration::from_secs(10),
        ..EtcdConfig::new(endpoints.clone())
    })?;
    store.put(
        &format!("{STORE_PREFIX}{KEY_CONFIG}"),
        &serde_json::to_vec(
            &json!({"clusterCIDR": CLUSTER_CIDR, "blockSize": BLOCK_SIZE,
            "backend": "host-gw"}),
        )?,
        None,
    )?;
    let cluster: Ipv4Net = CLUSTER_CIDR.parse()?;
    let mut handles: Vec<Handle> = names
        .iter()
        .map(|name| Handle::new_in(&Netns::open(netns::path_of(name))?).map_err(Into::into))
        .collect::<Result<_>>()?;
    let etcd_url = endpoints.join(",");
    // The start gate: every agent's `sh` waits on this FIFO until all are spawned, so the
    // cold start is all agents at once, as on a cluster of real nodes, and its clock does
    // not count the harness forking 1000 processes on 2 cores (57-75 s in session 28, most
    // of it behind the agents already running).
    let gate = scratch.join("gate");
    let gate_c = std::ffi::CString::new(gate.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path; mkfifo has no other preconditions.
    if unsafe { libc::mkfifo(gate_c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot make the start gate {}", gate.display()));
    }
    // `below`: nice steps below the bench.
    let command = |k: usize, below: i32| -> Result<Command> {
        let dir = scratch.join(format!("a{k}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("twilld.log"))?;
        // Entered with setns(2) between fork and exec, not through `ip netns exec` (a mount
        // namespace and a /sys remount each: under load 120 starting 1000 took ~250 s).
        // twilld reads its namespace through netlink and /proc/sys/net, which follow the
        // process's network namespace.
        let ns = std::fs::File::open(netns::path_of(&names[k - 1]))
            .with_context(|| format!("cannot open namespace {}", names[k - 1]))?;
        // Through `sh`, which waits at the gate (opening the FIFO blocks until the bench
        // opens its other end) and then becomes twilld (`exec`: the PID stays).
        let mut c = Command::new("/bin/sh");
        c.args(["-c", r#": < "$1" && shift && exec "$@""#, "sh"])
            .arg(&gate)
            .arg(&o.twilld);
        // SAFETY: between fork and exec only setns(2) runs, an async-signal-safe system
        // call on a descriptor the child inherited (closed at exec: O_CLOEXEC).
        unsafe {
            c.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // At worst (already at 19) they stay at the bench's.
                libc::nice(below);
                Ok(())
            });
        }
        c.args(["--node-name", &format!("twln{k}")])
            .args(["--store", "etcd", "--etcd-endpoints", &etcd_url])
            .args(["--node-ip", &node_ip(k).to_string()])
            .args(["--listen", &format!("{}:{AGENT_PORT}", node_ip(k))])
            .arg("--handoff-file")
            .arg(dir.join("node.json"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--cni-data-dir")
            .arg(dir.join("ipam"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        Ok(c)
    };

    progress(&format!(
        "cold start: {n} agents at once; one etcd member SIGKILLed when half hold a block"
    ));
    let t_spawn = Instant::now();
    for k in 1..=n {
        let child = command(k, AGENT_NICE_BELOW)?
            .spawn()
            .context("cannot start twilld")?;
        guard
            .agents
            .push(Daemon::new(format!("twln{k}"), child, &scratch)?);
    }
    let spawned_s = t_spawn.elapsed().as_secs_f64();
    progress(&format!(
        "{n} agents spawned in {spawned_s:.1} s, waiting at the gate; opening it"
    ));
    // Opening the FIFO for writing wakes every reader blocked in its open (and the joiner's
    // later open finds it still open). Kept open to the end of the run.
    let t0 = Instant::now();
    let _gate_open = std::fs::OpenOptions::new()
        .write(true)
        .open(&gate)
        .with_context(|| format!("cannot open the start gate {}", gate.display()))?;
    let mut killed: Option<(usize, f64)> = None;
    let mut alive = [true; 3];
    let mut leased_s = None;
    let converged_s;
    let mut waiting: Vec<usize> = (0..n).collect();
    let mut next_note = t0 + Duration::from_secs(10);
    loop {
        check_interrupted()?;
        let now = t0.elapsed().as_secs_f64();
        let note_due = Instant::now() >= next_note;
        if leased_s.is_some() && !note_due {
            // Leased: only the routes are polled; the blocks are listed for the notes (a
            // list of every block every 100 ms is load on the etcd being measured).
            still_waiting_front(&mut handles, &mut waiting, cluster, n - 1);
            if waiting.is_empty() {
                converged_s = t0.elapsed().as_secs_f64();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let listed = blocks(&store);
        let list_error = listed
            .as_ref()
            .err()
            .map(|e| format!(" (listing failed: {e:#})"));
        let b = listed.unwrap_or_default();
        if Instant::now() > t0 + o.converge_timeout {
            let seen = routes_seen(&mut handles[..n], cluster);
            write_holders(&scratch, &store);
            bail!(
                "not converged in {:?}: {} of {n} blocks leased (all at {leased_s:?} s), {} of {n} namespaces with every route, the fewest routes {:?}, the agents spawned in {spawned_s:.1} s before the gate opened; logs in {}",
                o.converge_timeout,
                b.len(),
                seen.iter().filter(|s| **s >= n - 1).count(),
                seen.iter().min(),
                scratch.display()
            );
        }
        if note_due {
            next_note += Duration::from_secs(10);
            if leased_s.is_some() {
                still_waiting(&mut handles, &mut waiting, cluster, n - 1);
            }
            progress(&format!(
                "{now:.0} s: {} of {n} blocks leased, {} of {n} namespaces with every route{}",
                b.len(),
                if leased_s.is_some() {
                    n - waiting.len()
                } else {
                    0
                },
                list_error.as_deref().unwrap_or("")
            ));
        }
        if killed.is_none() && b.len() * 2 >= n {
            // Member 1: a follower or the leader, whichever it is (the client fails over).
            if let Some(e) = guard.etcd[1].as_mut() {
                e.signal(libc::SIGKILL);
            }
            alive[1] = false;
            killed = Some((b.len(), now));
        }
        if leased_s.is_none() && b.len() >= n {
            leased_s = Some(now);
        }
        if leased_s.is_some() {
            still_waiting_front(&mut handles, &mut waiting, cluster, n - 1);
            if waiting.is_empty() {
                converged_s = t0.elapsed().as_secs_f64();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let last_routes = routes_seen(&mut handles[..n], cluster);
    let b = blocks(&store)?;
    let holders: HashMap<&str, usize> = b.iter().fold(HashMap::new(), |mut m, x| {
        *m.entry(x.node.as_str()).or_default() += 1;
        m
    });
    let conflicts = conflicts(&b);
    progress(&format!(
        "converged in {:.1} s ({} blocks, {} conflicts); a node joins in {:.0} s",
        converged_s,
        b.len(),
        conflicts,
        o.join_after_seconds
    ));
    let join_at = Instant::now() + Duration::from_secs_f64(o.join_after_seconds);
    while Instant::now() < join_at {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(200));
    }

    // Join: node n+1; time until every other namespace routes to its block.
    let tj = Instant::now();
    // The joiner at the bench's priority: it stands for a machine of its own, where its
    // agent starts at once; here it would start behind 1000 agents sharing 2 cores (run b
    // of session 29: 3.4 s from spawn to its first log line). The agents that must see it
    // stay where they are.
    let child = command(n + 1, 0)?.spawn()?;
    guard
        .agents
        .push(Daemon::new(format!("twln{}", n + 1), child, &scratch)?);
    let mut join_leased = None;
    let mut waiting: Vec<usize> = (0..n).collect();
    let join_s = loop {
        check_interrupted()?;
        if tj.elapsed() > JOIN_TIMEOUT {
            bail!("the joining node was not seen by all within {JOIN_TIMEOUT:?}");
        }
        if join_leased.is_none() {
            // The joiner's node record, which names its block once claimed: one key, where a
            // list of every block (10 pages at 1000 nodes) took the bench up to 2 s.
            let record = format!("{STORE_PREFIX}{PREFIX_NODES}twln{}", n + 1);
            let published = store
                .get(&record)?
                .and_then(|kv| serde_json::from_slice::<NodeStatus>(&kv.value).ok())
                .and_then(|s| s.blocks.first().copied());
            if let Some(block) = published {
                join_leased = Some((tj.elapsed().as_secs_f64(), block));
            }
        }
        if let Some((_, block)) = join_leased {
            still_without(&mut handles, &mut waiting, block, node_ip(n + 1));
            if waiting.is_empty() {
                break tj.elapsed().as_secs_f64();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    progress(&format!(
        "join seen by all in {join_s:.2} s (its block in its node record after {:.2} s)",
        join_leased.map_or(f64::NAN, |(s, _)| s)
    ));

    // Idle: settle, then the measured window.
    progress(&format!("settling for {:.0} s", o.settle_seconds));
    let settled = Instant::now() + Duration::from_secs_f64(o.settle_seconds);
    while Instant::now() < settled {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    progress(&format!(
        "idle for {:.0} s: etcd rates, writes by kind, agents' CPU, RSS and probes",
        o.idle_seconds
    ));
    // Every write in the window, by kind, from a watch of the whole prefix.
    let (_, rev) = store.list(&format!("{STORE_PREFIX}{KEY_CONFIG}"))?;
    let mut watch = store.watch(STORE_PREFIX, rev)?;
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let pids: Vec<u32> = guard.agents.iter().map(Daemon::pid).collect();
    let probes = |k: usize| -> f64 {
        http_get(node_ip(k), AGENT_PORT, "/metrics")
            .map(|t| metric_sum(&t, "twill_peer_probes_total"))
            .unwrap_or(f64::NAN)
    };
    let sample_ks: Vec<usize> = (1..=n + 1).step_by((n / 20).max(1)).collect();
    let p0: Vec<f64> = sample_ks.iter().map(|k| probes(*k)).collect();
    let e0 = etcd_metrics(&alive);
    let s0: Vec<procstat::Sample> = pids
        .iter()
        .map(|p| procstat::sample(*p))
        .collect::<Result<_>>()?;
    let t_idle = Instant::now();
    let end = t_idle + Duration::from_secs_f64(o.idle_seconds);
    while Instant::now() < end {
        check_interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if let Some(ev) = watch.next(left.min(Duration::from_millis(200)))? {
            *by_kind.entry(kind_of(ev.key()).to_string()).or_default() += 1;
        }
    }
    drop(watch);
    let s1: Vec<procstat::Sample> = pids
        .iter()
        .map(|p| procstat::sample(*p))
        .collect::<Result<_>>()?;
    let e1 = etcd_metrics(&alive);
    let p1: Vec<f64> = sample_ks.iter().map(|k| probes(*k)).collect();
    let idle = t_idle.elapsed().as_secs_f64();
    let cores: Vec<f64> = s0
        .iter()
        .zip(&s1)
        .map(|(a, b)| procstat::cores(a, b))
        .collect();
    let rss: Vec<f64> = s1.iter().map(|s| s.rss_mb).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max);
    let probe_rates: Vec<f64> = p0.iter().zip(&p1).map(|(a, b)| (b - a) / idle).collect();
    let rate = |k: &str| (e1.get(k).unwrap_or(&0.0) - e0.get(k).unwrap_or(&0.0)) / idle;
    let writes = rate("puts") + rate("txns") + rate("deletes");
    let nodes = (n + 1) as f64;
    let final_blocks = blocks(&store)?;
    let lost = (1..=n + 1)
        .filter(|k| !final_blocks.iter().any(|b| b.node == format!("twln{k}")))
        .count();
    let all_routes = routes_seen(&mut handles, cluster);
    let running = guard
        .agents
        .iter_mut()
        .map(|a| a.is_running())
        .filter(|r| *r)
        .count();
    Ok(json!({
        "agents": n,
        "mode": "processes, one network namespace and kernel routing table each (backend host-gw)",
        "etcd": "3 members, heartbeat 100 ms, election timeout 1000 ms, nice -10; member twls1 SIGKILLed during the cold start",
        "setupSeconds": build_s,
        "coldStart": {
            "spawnedBeforeGateSeconds": spawned_s,
            "leasedSeconds": leased_s,
            "convergedSeconds": converged_s,
            "memberKilledAt": killed.map(|(b, t)| json!({"blocksHeld": b, "seconds": t})),
            "blocks": b.len(),
            "nodesWithOneBlock": holders.values().filter(|c| **c == 1).count(),
            "conflicts": conflicts,
            "minRoutesPerNode": last_routes.iter().min(),
        },
        "join": {"afterSeconds": o.join_after_seconds, "blockPublishedSeconds": join_leased.map(|(s, _)| s), "seenByAllSeconds": join_s},
        "idle": {
            "seconds": idle,
            "agentCoresMean": mean(&cores),
            "agentCoresMax": max(&cores),
            "agentRssMbMean": mean(&rss),
            "agentRssMbMax": max(&rss),
            "probesPerSecondPerNode": mean(&probe_rates),
            "etcdRequestsPerSecond": rate("grpc_requests"),
            "etcdWritesPerSecond": writes,
            "etcdWritesPerNodePerMinute": writes * 60.0 / nodes,
            "settleSeconds": o.settle_seconds,
            "writesSeenByKind": by_kind,
            "writesSeenPerNodePerMinute": by_kind.values().sum::<u64>() as f64 * 60.0 / idle / nodes,
            "etcdProposalsPerSecond": rate("proposals"),
            "etcdDbBytes": e1.get("db_bytes"),
            "etcdDbInUseBytes": e1.get("db_in_use_bytes"),
        },
        "end": {
            "nodesWithoutBlock": lost,
            "minRoutesPerNode": all_routes.iter().min(),
            "agentsRunning": running,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_series_of_one_name_only() {
        let text =
            "# HELP x\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3.5\nx_total_other 9\nx_total 1\n";
        assert_eq!(metric_sum(text, "x_total"), 6.5);
    }

    #[test]
    fn overlapping_blocks_are_conflicts() {
        let b = |c: &str| Block {
            cidr: c.parse().unwrap(),
            node: "n".into(),
            claimed_at: 0,
        };
        assert_eq!(conflicts(&[b("10.244.0.0/26"), b("10.244.0.64/26")]), 0);
        assert_eq!(conflicts(&[b("10.244.0.0/24"), b("10.244.0.64/26")]), 1);
        assert_eq!(node_ip(1), Ipv4Addr::new(10, 244, 128, 2));
        assert_eq!(node_ip(1000), Ipv4Addr::new(10, 244, 131, 233));
        assert_eq!(mac(1000), "02:74:77:00:03:e8");
        assert_eq!(kind_of(&format!("{STORE_PREFIX}peers/twln1")), "peers");
        assert_eq!(kind_of(&format!("{STORE_PREFIX}config")), "config");
    }
}
