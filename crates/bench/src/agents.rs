//! `twill-bench agents`: one bench "node" namespace holding an etcd member and N real
//! `twilld` processes (each its own node to the store), then pods wired by `twill-cni`
//! against each agent's hand-off file, then an idle window. Removes everything it made
//! (agents and etcd by PID, namespaces, the scratch folder), on error and Ctrl-C too.
//! I/O edge driving the pure stats and agents_report.
//!
//! Everything runs inside the bench namespace: the main thread enters it first, so every
//! thread and child started later (etcd, agents, twill-cni) is there too. Its port space
//! is the bench's own, so fixed ports below the ephemeral range are free by construction.

use crate::agents_report::{
    check_addresses, mean_and_max, AddressCheck, AgentsConfig, AgentsFigures, Claims, Idle,
    IdleFigures, Pods,
};
use crate::cni::{catch_signals, check_interrupted};
use crate::daemon::{self, Daemon};
use crate::etcd;
use crate::netns::{self, PREFIX};
use crate::plugin::{container_id, exec_plugin};
use crate::procstat;
use crate::stats::{ms, summarize};
use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twill_api::resources::{Block, HandOff, NetworkConfig, KEY_CONFIG, PREFIX_BLOCKS};
use twill_netlink::Netns;
use twill_store::etcd::{EtcdConfig, EtcdStore};
use twill_store::{Store, PREFIX as STORE_PREFIX};

const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// Agent k (1-based) serves /healthz on 127.0.0.1:(AGENT_PORT_BASE + k).
const AGENT_PORT_BASE: u16 = 20000;
/// /16 in /24 blocks: 256 blocks; node IPs 192.0.2.1-250 on the bench's uplink.
pub const MAX_AGENTS: usize = 250;
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const BLOCK_SIZE: u8 = 24;
/// The CNI network name: twilld counts twill-cni's records of this network.
const CNI_NETWORK: &str = "twill";
/// How long all agents may take to claim before the run fails (the goal is 5 s).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Options {
    pub config: AgentsConfig,
    pub twilld: PathBuf,
    pub twill_cni: PathBuf,
    pub etcd: PathBuf,
}

/// Everything the run made; dropping it removes it all (best effort, errors on stderr).
struct Guard {
    root: Netns,
    agents: Vec<Daemon>,
    etcd: Option<Daemon>,
    namespaces: Vec<String>,
    scratch: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        daemon::stop_all(&mut self.agents, Duration::from_secs(3));
        if let Some(mut e) = self.etcd.take() {
            e.stop(Duration::from_secs(5));
        }
        if let Err(e) = netns::enter(&self.root) {
            say!("twill-bench: {e:#}");
        }
        // Deleting the bench namespace takes the bridges, veths and nft state along.
        if let Err(e) = netns::remove(&self.namespaces) {
            say!("twill-bench: cleanup: {e:#}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                say!(
                    "twill-bench: cleanup: cannot remove {}: {e}",
                    self.scratch.display()
                );
            }
        }
    }
}

fn progress(msg: &str) {
    say!("twill-bench: {msg}");
}

/// One agent's name, files and ports (k is 1-based).
struct AgentPlan {
    node: String,
    dir: PathBuf,
    handoff: PathBuf,
    ipam: PathBuf,
    bridge: String,
    node_ip: Ipv4Addr,
    port: u16,
}

impl AgentPlan {
    fn new(scratch: &Path, k: usize) -> AgentPlan {
        let dir = scratch.join(format!("a{k}"));
        AgentPlan {
            node: format!("{PREFIX}-n{k}"),
            handoff: dir.join("node.json"),
            ipam: dir.join("ipam"),
            dir,
            bridge: format!("twlb{k}"),
            node_ip: Ipv4Addr::new(192, 0, 2, k as u8),
            port: AGENT_PORT_BASE + k as u16,
        }
    }

    fn command(&self, twilld: &Path, etcd_url: &str) -> Result<Command> {
        let log = std::fs::File::create(self.dir.join("twilld.log"))
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let mut c = Command::new(twilld);
        c.args(["--node-name", &self.node])
            .args(["--store", "etcd", "--etcd-endpoints", etcd_url])
            .args(["--node-ip", &self.node_ip.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--handoff-file")
            .arg(&self.handoff)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--cni-data-dir")
            .arg(&self.ipam)
            .args(["--cni-network", CNI_NETWORK])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        Ok(c)
    }

    /// twill-cni's config: this agent's hand-off file, bridge and record folder.
    fn cni_conf(&self, prev: Option<&Value>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": CNI_NETWORK,
            "type": "twill-cni",
            "bridge": self.bridge,
            "ipam": {"type": "twill", "handoffFile": self.handoff, "dataDir": self.ipam},
        });
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("twilld.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

pub fn run(opts: &Options) -> Result<AgentsFigures> {
    let c = opts.config;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("twill-bench agents builds network namespaces: run it as root");
    }
    if c.agents == 0 || c.agents > MAX_AGENTS {
        bail!(
            "--agents {}: between 1 and {MAX_AGENTS} (the /16 has 256 /24 blocks)",
            c.agents
        );
    }
    if c.pods > c.agents * 250 {
        bail!(
            "--pods {}: at most 250 per agent (one /24 block each)",
            c.pods
        );
    }
    if !(c.idle_minutes >= 0.0 && c.idle_minutes.is_finite()) {
        bail!("--idle-minutes must be 0 or more");
    }
    for (exe, hint) in [
        (
            &opts.twilld,
            "cargo build --release -p twilld, or pass --twilld",
        ),
        (
            &opts.twill_cni,
            "cargo build --release -p twill-cni, or pass --twill-cni",
        ),
        (&opts.etcd, "apt-get install etcd-server, or pass --etcd"),
    ] {
        if !exe.is_file() {
            bail!("{} is missing: {hint}", exe.display());
        }
    }
    catch_signals();
    let pid = std::process::id();
    let scratch = std::env::temp_dir().join(format!("{PREFIX}{pid}-agents"));
    let mut guard = Guard {
        root: Netns::current()?,
        agents: Vec::new(),
        etcd: None,
        namespaces: Vec::new(),
        scratch: scratch.clone(),
    };
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;

    // The bench node: lo for etcd and the agents' HTTP, an uplink holding the node IPs.
    let node_ns = format!("{PREFIX}{pid}-agents");
    guard.namespaces.push(node_ns.clone());
    netns::create(std::slice::from_ref(&node_ns))?;
    let mut lines = vec![
        "link set lo up".to_string(),
        "link add twlup0 type veth peer name twlup1".to_string(),
    ];
    lines.extend((1..=c.agents).map(|k| format!("addr add 192.0.2.{k}/24 dev twlup0")));
    lines.extend(["link set twlup0 up".into(), "link set twlup1 up".into()]);
    netns::batch_in(&node_ns, &lines)?;
    netns::enter(&Netns::open(netns::path_of(&node_ns))?)?;

    progress("starting etcd");
    // One member: no peer to miss heartbeats from, so the quick timings hold.
    let cluster = etcd::Cluster {
        exe: &opts.etcd,
        scratch: &scratch,
        token: "twlbench",
        members: vec![etcd::Member {
            name: "twlbench".into(),
            client: (Ipv4Addr::LOCALHOST, ETCD_CLIENT_PORT).into(),
            peer: (Ipv4Addr::LOCALHOST, ETCD_PEER_PORT).into(),
        }],
        timings: etcd::Timings::QUICK,
        nice: None,
    };
    guard.etcd = etcd::start(&cluster)?.pop();
    let etcd_url = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
    let store = Arc::new(EtcdStore::connect(&EtcdConfig::new(
        vec![etcd_url.clone()],
    ))?);
    put_network_config(store.as_ref())?;
    check_interrupted()?;

    let plans: Vec<AgentPlan> = (1..=c.agents)
        .map(|k| AgentPlan::new(&scratch, k))
        .collect();
    let mut commands = Vec::new();
    for p in &plans {
        std::fs::create_dir_all(&p.ipam)
            .with_context(|| format!("cannot create {}", p.ipam.display()))?;
        commands.push(p.command(&opts.twilld, &etcd_url)?);
    }

    progress(&format!("1/3: starting {} agents at once", c.agents));
    let claims = claim_phase(&mut guard, &plans, commands, store.as_ref(), &scratch)?;

    progress(&format!(
        "2/3: {} pod ADDs across the agents, then DELs",
        c.pods
    ));
    let pod_names: Vec<String> = (0..c.pods).map(|i| format!("{PREFIX}{pid}-p{i}")).collect();
    // Recorded before creating, so a half-made pool is removed too.
    guard.namespaces.extend(pod_names.iter().cloned());
    netns::create(&pod_names)?;
    let pods = pod_phase(
        &plans,
        &pod_names,
        &opts.twill_cni,
        store.as_ref(),
        c.parallel,
    )?;
    netns::remove(&pod_names)?;
    guard.namespaces.truncate(1);
    ensure_alive(&mut guard, &plans)?;

    let seconds = c.idle_minutes * 60.0;
    progress(&format!(
        "3/3: idle for {seconds:.1} s, sampling CPU and RSS of every agent and etcd"
    ));
    let idle = idle_phase(&mut guard, &plans, seconds)?;

    drop(guard);
    Ok(AgentsFigures {
        config: c,
        claims,
        pods,
        idle,
    })
}

fn put_network_config(store: &dyn Store) -> Result<()> {
    let config: NetworkConfig =
        serde_json::from_value(json!({"clusterCIDR": CLUSTER_CIDR, "blockSize": BLOCK_SIZE}))
            .context("building the network config")?;
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("the bench's network config is invalid: {e}"))?;
    store
        .put(
            &format!("{STORE_PREFIX}{KEY_CONFIG}"),
            &serde_json::to_vec(&config)?,
            None,
        )
        .context("writing the network config to etcd")?;
    Ok(())
}

/// Every block in the store: holder → blocks.
fn blocks_by_node(store: &dyn Store) -> Result<HashMap<String, Vec<Ipv4Net>>> {
    let (kvs, _) = store
        .list(&format!("{STORE_PREFIX}{PREFIX_BLOCKS}"))
        .context("listing blocks in etcd")?;
    let mut map: HashMap<String, Vec<Ipv4Net>> = HashMap::new();
    for kv in kvs {
        if let Ok(b) = serde_json::from_slice::<Block>(&kv.value) {
            map.entry(b.node).or_default().push(b.cidr);
        }
    }
    Ok(map)
}

fn ensure_alive(guard: &mut Guard, plans: &[AgentPlan]) -> Result<()> {
    for (a, p) in guard.agents.iter_mut().zip(plans) {
        if !a.is_running() {
            bail!(
                "twilld {} exited; its log ends with:\n{}",
                p.node,
                p.log_tail()
            );
        }
    }
    Ok(())
}

fn claim_phase(
    guard: &mut Guard,
    plans: &[AgentPlan],
    commands: Vec<Command>,
    store: &dyn Store,
    scratch: &Path,
) -> Result<Claims> {
    let mut spawned_at = Vec::with_capacity(plans.len());
    let t0 = Instant::now();
    for (mut cmd, p) in commands.into_iter().zip(plans) {
        let at = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start twilld for {}", p.node))?;
        spawned_at.push(at);
        guard
            .agents
            .push(Daemon::new(p.node.clone(), child, scratch)?);
    }
    let spawn_wall = t0.elapsed();

    // Poll the store until every node holds a block; note when each first did.
    let index: HashMap<&str, usize> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| (p.node.as_str(), i))
        .collect();
    let mut claimed_at: Vec<Option<Instant>> = vec![None; plans.len()];
    let mut left = plans.len();
    let mut polls = 0u64;
    while left > 0 {
        check_interrupted()?;
        let map = blocks_by_node(store)?;
        let now = Instant::now();
        for node in map.keys() {
            if let Some(&i) = index.get(node.as_str()) {
                if claimed_at[i].is_none() {
                    claimed_at[i] = Some(now);
                    left -= 1;
                }
            }
        }
        if left == 0 {
            break;
        }
        polls += 1;
        // Checking every process costs little, but not at every 5 ms poll.
        if polls.is_multiple_of(20) {
            ensure_alive(guard, plans)?;
        }
        if t0.elapsed() > CLAIM_TIMEOUT {
            let waiting = plans
                .iter()
                .zip(&claimed_at)
                .find(|(_, c)| c.is_none())
                .map(|(p, _)| p)
                .expect("some agent is still waiting");
            bail!(
                "{left} agents hold no block after {} s, e.g. {}; its log ends with:\n{}",
                CLAIM_TIMEOUT.as_secs(),
                waiting.node,
                waiting.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let last_claim = claimed_at.iter().flatten().max().copied().unwrap_or(t0);
    let time_to_block: Vec<Duration> = claimed_at
        .iter()
        .zip(&spawned_at)
        .map(|(c, s)| c.expect("all claimed").duration_since(*s))
        .collect();
    let blocks = blocks_by_node(store)?.values().map(Vec::len).sum();

    // The hand-off files twill-cni reads: written right after the claim.
    let mut written = vec![false; plans.len()];
    while written.iter().any(|w| !w) {
        check_interrupted()?;
        for (w, p) in written.iter_mut().zip(plans) {
            if !*w {
                *w = read_handoff(&p.handoff).is_some_and(|h| !h.blocks.is_empty());
            }
        }
        if t0.elapsed() > CLAIM_TIMEOUT {
            let p = plans
                .iter()
                .zip(&written)
                .find(|(_, w)| !**w)
                .map(|(p, _)| p)
                .expect("some hand-off is missing");
            bail!(
                "no hand-off file with a block at {} after {} s; the agent's log ends with:\n{}",
                p.handoff.display(),
                CLAIM_TIMEOUT.as_secs(),
                p.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let all_handoff = t0.elapsed();
    Ok(Claims {
        spawn_wall_ms: ms(spawn_wall),
        all_claimed_ms: ms(last_claim.duration_since(t0)),
        all_handoff_ms: ms(all_handoff),
        time_to_block: summarize(&time_to_block),
        blocks,
    })
}

fn read_handoff(path: &Path) -> Option<HandOff> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// One attached pod: what DEL needs and what the checks read.
struct Attached {
    pod: usize,
    container_id: String,
    result: Value,
    address: Ipv4Addr,
}

fn first_address(result: &Value) -> Option<Ipv4Addr> {
    let a = result["ips"][0]["address"].as_str()?;
    a.split('/').next()?.parse().ok()
}

/// Runs `op` on every item, `parallel` at a time (each worker takes every n-th item in
/// order); returns each op's result in item order and the wall time.
fn spread<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    op: impl Fn(&T) -> Result<R> + Sync,
) -> Result<(Vec<R>, Duration)> {
    let parallel = parallel.clamp(1, items.len().max(1));
    let start = Instant::now();
    let per_worker: Vec<Result<Vec<(usize, R)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..parallel)
            .map(|w| {
                let op = &op;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate().skip(w).step_by(parallel) {
                        check_interrupted()?;
                        out.push((i, op(item)?));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a benchmark thread panicked")))
            })
            .collect()
    });
    let wall = start.elapsed();
    let mut all = Vec::with_capacity(items.len());
    for r in per_worker {
        all.extend(r?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok((all.into_iter().map(|(_, r)| r).collect(), wall))
}

fn pod_phase(
    plans: &[AgentPlan],
    pod_names: &[String],
    twill_cni: &Path,
    store: &dyn Store,
    parallel: usize,
) -> Result<Pods> {
    let cni_path = twill_cni.parent().unwrap_or(Path::new("/"));
    let agent_of = |pod: usize| &plans[pod % plans.len()];
    let indices: Vec<usize> = (0..pod_names.len()).collect();
    let (added, add_wall) = spread(&indices, parallel, |&i| {
        let plan = agent_of(i);
        let id = container_id();
        let netns = netns::path_of(&pod_names[i]);
        let start = Instant::now();
        let result = exec_plugin(
            twill_cni,
            cni_path,
            "ADD",
            &netns,
            &id,
            &plan.cni_conf(None),
        )?
        .context("twill-cni ADD printed no result")?;
        let took = start.elapsed();
        let address = first_address(&result)
            .with_context(|| format!("twill-cni ADD gave pod {i} no IPv4 address: {result}"))?;
        Ok((
            took,
            Attached {
                pod: i,
                container_id: id,
                result,
                address,
            },
        ))
    })?;
    let (add_lat, attached): (Vec<Duration>, Vec<Attached>) = added.into_iter().unzip();

    let blocks = blocks_by_node(store)?;
    let owned: Vec<(String, Ipv4Addr)> = attached
        .iter()
        .map(|a| (agent_of(a.pod).node.clone(), a.address))
        .collect();
    let check: AddressCheck = check_addresses(&owned, &blocks);

    let (del_lat, del_wall) = spread(&attached, parallel, |a| {
        let plan = agent_of(a.pod);
        let netns = netns::path_of(&pod_names[a.pod]);
        let start = Instant::now();
        exec_plugin(
            twill_cni,
            cni_path,
            "DEL",
            &netns,
            &a.container_id,
            &plan.cni_conf(Some(&a.result)),
        )?;
        Ok(start.elapsed())
    })?;
    Ok(Pods {
        add: summarize(&add_lat),
        add_total_ms: ms(add_wall),
        del: summarize(&del_lat),
        del_total_ms: ms(del_wall),
        check,
    })
}

fn idle_phase(guard: &mut Guard, plans: &[AgentPlan], seconds: f64) -> Result<IdleFigures> {
    let etcd_pid = guard
        .etcd
        .as_ref()
        .map(Daemon::pid)
        .context("etcd is not running")?;
    let pids: Vec<u32> = guard.agents.iter().map(Daemon::pid).collect();
    let sample_all =
        || -> Result<Vec<procstat::Sample>> { pids.iter().map(|p| procstat::sample(*p)).collect() };
    let start = sample_all()?;
    let etcd_start = procstat::sample(etcd_pid)?;
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(200)));
    }
    ensure_alive(guard, plans)?;
    let stop = sample_all()?;
    let etcd_stop = procstat::sample(etcd_pid)?;
    let each: Vec<Idle> = start
        .iter()
        .zip(&stop)
        .map(|(a, b)| Idle {
            cores: procstat::cores(a, b),
            rss_mb: b.rss_mb,
        })
        .collect();
    let (mean, max) = mean_and_max(&each);
    Ok(IdleFigures {
        seconds: stop[0].at.duration_since(start[0].at).as_secs_f64(),
        one_node: plans[0].node.clone(),
        one: each[0],
        mean,
        max,
        etcd: Idle {
            cores: procstat::cores(&etcd_start, &etcd_stop),
            rss_mb: etcd_stop.rss_mb,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_distinct_per_agent() {
        let a = AgentPlan::new(Path::new("/tmp/x"), 1);
        let b = AgentPlan::new(Path::new("/tmp/x"), 250);
        assert_ne!(a.node, b.node);
        assert_eq!(b.bridge, "twlb250");
        assert_eq!(b.node_ip, Ipv4Addr::new(192, 0, 2, 250));
        assert_eq!((a.port, b.port), (20001, 20250));
        let conf = b.cni_conf(None);
        assert_eq!(conf["ipam"]["handoffFile"], "/tmp/x/a250/node.json");
        assert_eq!(conf["bridge"], "twlb250");
        assert!(conf.get("prevResult").is_none());
        assert!(
            conf["ipam"].get("subnet").is_none(),
            "blocks come from the hand-off"
        );
    }

    #[test]
    fn spread_keeps_item_order() {
        let items: Vec<usize> = (0..10).collect();
        let (out, _) = spread(&items, 3, |i| Ok(i * 2)).unwrap();
        assert_eq!(out, (0..10).map(|i| i * 2).collect::<Vec<_>>());
        let (out, _) = spread(&[] as &[usize], 4, |i| Ok(*i)).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn address_from_a_cni_result() {
        let r = json!({"ips": [{"address": "10.244.7.3/24", "gateway": "10.244.7.1"}]});
        assert_eq!(first_address(&r), Some(Ipv4Addr::new(10, 244, 7, 3)));
        assert_eq!(first_address(&json!({})), None);
    }
}
