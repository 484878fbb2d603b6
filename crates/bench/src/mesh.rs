//! `twill-bench mesh`: BGP meshes of namespaces on one segment, the reference (BIRD 2 as
//! Calico configures it) and Twill side by side in one run, interleaved round by round.
//! Each node is a `twlbench<pid>m<i>` namespace with one veth on a bridge in
//! `twlbench<pid>msw`; every kernel is watched over netlink ([`crate::mesh_watch`]) and a
//! run ends when each holds every wanted route through the right gateway. Between runs the
//! daemons are stopped by PID and the kernels flushed (pod routes, learned neighbours), so
//! every run starts cold. Above 30 nodes each node holds permanent neighbour entries for all
//! the others (the shared ARP table's limit, RUNBOOK); no host sysctl is touched. Removes
//! everything it made, on error and Ctrl-C too. I/O edge driving mesh_conf and mesh_report.

use crate::cni::{catch_signals, check_interrupted};
use crate::daemon::{self, Daemon};
use crate::mesh_conf::{self as conf, format_mac, Implementation, MeshNode, Topology};
use crate::mesh_report::{
    parse_hwm_kb, Cost, CostRun, MeshConfig, MeshFigures, Scenario, TimedRun,
};
use crate::mesh_watch::{Want, Watcher};
use crate::netns::{self, PREFIX};
use crate::procstat;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twill_api::bgp::{BgpConfiguration, BgpPeer, KEY_BGP_CONFIG, PREFIX_BGP_PEERS};
use twill_api::resources::{NetworkConfig, NodeSpec, KEY_CONFIG, PREFIX_NODECONFIGS};
use twill_netlink::Netns;
use twill_store::embedded::EmbeddedStore;
use twill_store::{Store, PREFIX as STORE_PREFIX};

pub struct Options {
    pub config: MeshConfig,
    pub twill: PathBuf,
    pub twilld: PathBuf,
    pub bird: PathBuf,
    /// How long one run may take to converge before it counts as failed.
    pub timeout: Duration,
}

/// Set (to anything), the scratch folder stays after the run: each node's daemon log of
/// its last run, and `done.txt` of each cold start: per node, the seconds from the last
/// start until its kernel held every block, and the wall clock at the last start (to line
/// up with the logs' timestamps). For diagnosis; figures are unchanged.
pub const KEEP_ENV: &str = "TWILL_BENCH_KEEP";

/// Above this many nodes, neighbours are pre-loaded as permanent entries.
const PRELOAD_ABOVE: usize = 30;
const UPLINK: &str = "twlm0";
const BRIDGE: &str = "twlmbr";

/// The namespaces and daemons of a run; dropping it stops and removes everything.
struct Lab {
    root: Netns,
    switch: String,
    nodes: Vec<String>,
    scratch: PathBuf,
    daemons: Vec<(usize, Daemon)>,
    /// twilld runs: a fresh embedded store per run (counted), shared by its agents.
    runs: usize,
    store: Option<PathBuf>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_all();
        if let Err(e) = netns::enter(&self.root) {
            say!("twill-bench: {e:#}");
        }
        let mut all = self.nodes.clone();
        all.push(self.switch.clone());
        if let Err(e) = netns::remove(&all) {
            say!("twill-bench: cleanup: {e:#}");
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            say!(
                "twill-bench: {KEEP_ENV} set: {} kept (logs, done.txt)",
                self.scratch.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                say!("twill-bench: cleanup: {}: {e}", self.scratch.display());
            }
        }
    }
}

fn progress(msg: &str) {
    say!("twill-bench: {msg}");
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Lab {
    /// `count` nodes on one bridge.
    fn build(count: usize) -> Result<Lab> {
        let pid = std::process::id();
        let scratch = std::env::temp_dir().join(format!("{PREFIX}{pid}-mesh"));
        let switch = format!("{PREFIX}{pid}msw");
        let nodes: Vec<String> = (0..count).map(|i| format!("{PREFIX}{pid}m{i}")).collect();
        let lab = Lab {
            root: Netns::current()?,
            switch: switch.clone(),
            nodes: nodes.clone(),
            scratch: scratch.clone(),
            daemons: Vec::new(),
            runs: 0,
            store: None,
        };
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        let mut all = nodes.clone();
        all.push(switch.clone());
        netns::create(&all)?;
        let mut sw = vec![
            "link set lo up".to_string(),
            format!("link add {BRIDGE} type bridge"),
            format!("addr add {}/24 dev {BRIDGE}", conf::SWITCH_IP),
            format!("link set {BRIDGE} up"),
        ];
        for (i, ns) in nodes.iter().enumerate() {
            sw.push(format!(
                "link add twlp{i} type veth peer name {UPLINK} netns {ns}"
            ));
            sw.push(format!("link set twlp{i} master {BRIDGE} up"));
        }
        netns::batch_in(&switch, &sw)?;
        let plan: Vec<MeshNode> = (0..count).map(conf::node).collect();
        for (i, ns) in nodes.iter().enumerate() {
            let n = &plan[i];
            let mut lines = vec![
                "link set lo up".to_string(),
                format!("link set {UPLINK} address {}", format_mac(&n.mac)),
                format!("addr add {}/24 dev {UPLINK}", n.ip),
                format!("link set {UPLINK} up"),
            ];
            if count > PRELOAD_ABOVE {
                for o in plan.iter().filter(|o| o.index != i) {
                    lines.push(format!(
                        "neigh replace {} lladdr {} dev {UPLINK} nud permanent",
                        o.ip,
                        format_mac(&o.mac)
                    ));
                }
            }
            netns::batch_in(ns, &lines)?;
        }
        Ok(lab)
    }

    fn stop_all(&mut self) {
        let mut ds: Vec<Daemon> = self.daemons.drain(..).map(|(_, d)| d).collect();
        daemon::stop_all(&mut ds, Duration::from_secs(5));
    }

    /// Stops every daemon and empties the first `used` kernels of what a run left: pod
    /// routes (BIRD's `persist` and a graceful stop leave them) and learned neighbours.
    fn reset(&mut self, used: usize) -> Result<()> {
        self.stop_all();
        self.store = None;
        for i in 0..self.nodes.len() {
            let st = self.scratch.join(format!("m{i}")).join("state");
            if st.exists() {
                std::fs::remove_dir_all(&st)
                    .with_context(|| format!("cannot remove {}", st.display()))?;
            }
        }
        for ns in &self.nodes[..used] {
            netns::batch_in(
                ns,
                &[
                    "route flush root 10.244.0.0/16".to_string(),
                    format!("neigh flush dev {UPLINK}"),
                ],
            )?;
        }
        Ok(())
    }

    fn dir(&self, i: usize) -> Result<PathBuf> {
        let d = self.scratch.join(format!("m{i}"));
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        Ok(d)
    }

    fn spawn(&mut self, i: usize, what: &str, argv: &[&str], log: &Path) -> Result<()> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i]])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {what} in {}", self.nodes[i]))?;
        let d = Daemon::new(format!("{what} m{i}"), child, &self.scratch)?;
        self.daemons.push((i, d));
        Ok(())
    }

    /// BIRD on `config` in node `i`.
    fn start_bird(&mut self, o: &Options, i: usize, config: &str) -> Result<()> {
        let d = self.dir(i)?;
        let (cf, ctl, pid) = (d.join("bird.conf"), d.join("bird.ctl"), d.join("bird.pid"));
        std::fs::write(&cf, config)?;
        let bird = o.bird.to_string_lossy().into_owned();
        let argv = [
            bird.as_str(),
            "-f",
            "-c",
            &cf.to_string_lossy(),
            "-s",
            &ctl.to_string_lossy(),
            "-P",
            &pid.to_string_lossy(),
        ]
        .map(String::from);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.spawn(i, "bird", &argv, &d.join("bird.out"))
    }

    /// `twill bgp serve` on `config` in node `i`.
    fn start_speaker(&mut self, o: &Options, i: usize, config: &serde_json::Value) -> Result<()> {
        let d = self.dir(i)?;
        let cf = d.join("speaker.json");
        std::fs::write(&cf, serde_json::to_vec_pretty(config)?)?;
        let twill = o.twill.to_string_lossy().into_owned();
        let cfs = cf.to_string_lossy().into_owned();
        let store = d.join("store").to_string_lossy().into_owned();
        let argv = [
            twill.as_str(),
            "bgp",
            "serve",
            "--config",
            &cfs,
            "--store-dir",
            &store,
        ];
        self.spawn(i, "speaker", &argv, &d.join("speaker.out"))
    }

    /// A fresh embedded store for this run's agents, holding `backend: bgp` (l3 pods, /24
    /// blocks) and what `setup` adds (BGP resources, Node settings).
    fn twilld_store(&mut self, setup: impl FnOnce(&dyn Store) -> Result<()>) -> Result<()> {
        self.runs += 1;
        let dir = self.scratch.join(format!("store{}", self.runs));
        let store = EmbeddedStore::open(&dir).map_err(|e| {
            anyhow::anyhow!("cannot open the embedded store {}: {e}", dir.display())
        })?;
        let config: NetworkConfig = serde_json::from_value(serde_json::json!({
            "clusterCIDR": "10.244.0.0/16", "blockSize": 24, "backend": "bgp", "podWiring": "l3",
        }))
        .context("the network config with backend bgp (is twilld's bgp backend built in?)")?;
        put(&store, KEY_CONFIG, serde_json::to_value(&config)?)?;
        setup(&store)?;
        self.store = Some(dir);
        Ok(())
    }

    /// twilld (`backend: bgp`) as node `i`, on this run's store.
    fn start_twilld(&mut self, o: &Options, i: usize) -> Result<()> {
        let Some(store) = self.store.clone() else {
            bail!("no store for twilld: twilld_store first")
        };
        let d = self.dir(i)?;
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        let argv = [
            s(o.twilld.clone()),
            "--node-name".into(),
            format!("m{i}"),
            "--store".into(),
            "embedded".into(),
            "--store-dir".into(),
            s(store),
            "--node-ip".into(),
            conf::node(i).ip.to_string(),
            "--listen".into(),
            "127.0.0.1:9099".into(),
            "--handoff-file".into(),
            s(d.join("node.json")),
            "--state-dir".into(),
            s(d.join("state")),
            "--cni-data-dir".into(),
            s(d.join("ipam")),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.spawn(i, "twilld", &argv, &d.join("twilld.out"))
    }

    /// Node `i` of a `nodes`-node cluster under `topology`, run by `imp`.
    fn start_node(
        &mut self,
        o: &Options,
        imp: Implementation,
        topology: Topology,
        nodes: usize,
        i: usize,
    ) -> Result<()> {
        let n = conf::node(i);
        let sessions = conf::sessions(topology, nodes, i);
        let d = self.dir(i)?;
        match imp {
            Implementation::Bird => {
                let log = d.join("bird.log").to_string_lossy().into_owned();
                self.start_bird(o, i, &conf::bird_config(&n, &sessions, &log))
            }
            Implementation::Speaker => {
                let ctl = d.join("speaker.sock").to_string_lossy().into_owned();
                let c = conf::speaker_config(&n, &sessions, conf::is_reflector(topology, i), &ctl);
                self.start_speaker(o, i, &c)
            }
            Implementation::Twilld => self.start_twilld(o, i),
        }
    }

    /// An error naming the first daemon that exited, with the end of its output.
    fn check_alive(&mut self) -> Result<()> {
        for (i, d) in self.daemons.iter_mut() {
            if !d.is_running() {
                let dir = self.scratch.join(format!("m{i}"));
                let out = ["bird.out", "speaker.out", "bird.log", "twilld.out"]
                    .iter()
                    .map(|f| tail(&dir.join(f), 10))
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!("{} exited during the run:\n{out}", d.name);
            }
        }
        Ok(())
    }

    fn watch(&self, which: &[usize], wants: Vec<Want>) -> Result<Watcher> {
        let names: Vec<String> = which.iter().map(|&i| self.nodes[i].clone()).collect();
        Watcher::open(&names, wants)
    }

    fn wait(&mut self, w: &mut Watcher, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        w.wait_all(deadline, || {
            check_interrupted()?;
            self.check_alive()
        })
    }
}

fn put(store: &dyn Store, key: &str, v: serde_json::Value) -> Result<()> {
    store
        .put(
            &format!("{STORE_PREFIX}{key}"),
            &serde_json::to_vec(&v)?,
            None,
        )
        .map_err(|e| anyhow::anyhow!("cannot write {key} to the store: {e}"))?;
    Ok(())
}

/// The store of a twilld run under `topology`: nothing for the mesh (BGP's defaults: iBGP
/// full mesh in AS 64512, graceful restart); for reflectors, Calico's recipe: the mesh off,
/// the first K nodes with a cluster ID and the label `route-reflector`, and one BGPPeer
/// making every node peer with the nodes so labelled.
fn twilld_topology(store: &dyn Store, topology: Topology) -> Result<()> {
    let Topology::Reflectors(k) = topology else {
        return Ok(());
    };
    let off: BgpConfiguration =
        serde_json::from_value(serde_json::json!({"nodeToNodeMeshEnabled": false}))?;
    put(store, KEY_BGP_CONFIG, serde_json::to_value(&off)?)?;
    for i in 0..k {
        let spec: NodeSpec = serde_json::from_value(serde_json::json!({
            "bgp": {"routeReflectorClusterID": conf::CLUSTER_ID.to_string()},
            "labels": {"route-reflector": "true"},
        }))?;
        put(
            store,
            &format!("{PREFIX_NODECONFIGS}m{i}"),
            serde_json::to_value(&spec)?,
        )?;
    }
    let peer: BgpPeer = serde_json::from_value(serde_json::json!({
        "nodeSelector": "all()", "peerSelector": "has(route-reflector)",
    }))?;
    put(
        store,
        &format!("{PREFIX_BGP_PEERS}peer-with-reflectors"),
        serde_json::to_value(&peer)?,
    )
}

/// Node `i` wants a /24 through every node of `from` but itself (that node's block).
fn want_blocks(i: usize, from: impl IntoIterator<Item = usize>) -> Want {
    Want {
        prefix_len: 24,
        per_gateway: from
            .into_iter()
            .filter(|&j| j != i)
            .map(|j| (conf::node(j).ip, 1))
            .collect(),
    }
}

/// All `nodes` started one after the other; seconds from the last start to the last
/// kernel holding every block.
fn cold(
    lab: &mut Lab,
    o: &Options,
    imp: Implementation,
    topology: Topology,
    nodes: usize,
) -> Result<f64> {
    lab.reset(nodes)?;
    let which: Vec<usize> = (0..nodes).collect();
    let mut w = lab.watch(
        &which,
        which.iter().map(|&i| want_blocks(i, 0..nodes)).collect(),
    )?;
    if imp == Implementation::Twilld {
        lab.twilld_store(|s| twilld_topology(s, topology))?;
    }
    for i in 0..nodes {
        lab.start_node(o, imp, topology, nodes, i)?;
    }
    let t0 = Instant::now();
    let wall0 = std::time::SystemTime::now();
    let done = lab.wait(&mut w, o.timeout)?;
    if std::env::var_os(KEEP_ENV).is_some() {
        let epoch = wall0
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut text = format!("# {imp:?} {topology:?} last start at {epoch:.3}\n");
        for (i, t) in w.done_times().iter().enumerate() {
            let s = t.map_or(-1.0, |t| t.saturating_duration_since(t0).as_secs_f64());
            text.push_str(&format!("m{i} {s:.3}\n"));
        }
        let f = lab.scratch.join("done.txt");
        let mut old = std::fs::read_to_string(&f).unwrap_or_default();
        old.push_str(&text);
        std::fs::write(&f, old).with_context(|| format!("cannot write {}", f.display()))?;
    }
    Ok(done.saturating_duration_since(t0).as_secs_f64())
}

/// A converged mesh of `nodes` (whose configurations already name the joiner, as Calico's
/// would once confd rewrote them), then node `nodes` starts: seconds until every kernel
/// routes to its block and it to all theirs.
fn join(lab: &mut Lab, o: &Options, imp: Implementation, nodes: usize) -> Result<f64> {
    let all = nodes + 1;
    lab.reset(all)?;
    let old: Vec<usize> = (0..nodes).collect();
    let mut w = lab.watch(
        &old,
        old.iter().map(|&i| want_blocks(i, 0..nodes)).collect(),
    )?;
    if imp == Implementation::Twilld {
        lab.twilld_store(|_| Ok(()))?;
    }
    for i in 0..nodes {
        lab.start_node(o, imp, Topology::Mesh, all, i)?;
    }
    lab.wait(&mut w, o.timeout)
        .context("the mesh did not converge before the join")?;
    let which: Vec<usize> = (0..all).collect();
    let wants = which
        .iter()
        .map(|&i| {
            if i == nodes {
                want_blocks(i, 0..nodes)
            } else {
                want_blocks(i, [nodes])
            }
        })
        .collect();
    let mut w = lab.watch(&which, wants)?;
    lab.start_node(o, imp, Topology::Mesh, all, nodes)?;
    let t0 = Instant::now();
    let done = lab.wait(&mut w, o.timeout)?;
    Ok(done.saturating_duration_since(t0).as_secs_f64())
}

/// Node 0 runs `imp` with `peers` feeder BIRDs (nodes 1..=peers) connecting to it, each
/// announcing its share of the routes: time and CPU until all are in node 0's kernel, then
/// its CPU over an idle window and its memory.
fn cost(lab: &mut Lab, o: &Options, imp: Implementation, peers: usize) -> Result<Cost> {
    lab.reset(peers + 1)?;
    let center = conf::node(0);
    let feeders: Vec<MeshNode> = (1..=peers).map(conf::node).collect();
    let ips: Vec<_> = feeders.iter().map(|f| f.ip).collect();
    let want = Want {
        prefix_len: 30,
        per_gateway: ips
            .iter()
            .map(|ip| (*ip, conf::FEED_ROUTES_PER_PEER))
            .collect(),
    };
    let routes = peers * conf::FEED_ROUTES_PER_PEER;
    let mut w = lab.watch(&[0], vec![want])?;
    let d = lab.dir(0)?;
    match imp {
        Implementation::Bird => {
            let log = d.join("bird.log").to_string_lossy().into_owned();
            lab.start_bird(o, 0, &conf::cost_bird_config(&center, &ips, &log))?
        }
        Implementation::Speaker => {
            let ctl = d.join("speaker.sock").to_string_lossy().into_owned();
            lab.start_speaker(o, 0, &conf::cost_speaker_config(&center, &ips, &ctl))?
        }
        Implementation::Twilld => {
            // The mesh off, one global BGPPeer per feeder.
            lab.twilld_store(|s| {
                let off: BgpConfiguration =
                    serde_json::from_value(serde_json::json!({"nodeToNodeMeshEnabled": false}))?;
                put(s, KEY_BGP_CONFIG, serde_json::to_value(&off)?)?;
                for (k, ip) in ips.iter().enumerate() {
                    let p: BgpPeer = serde_json::from_value(serde_json::json!({
                        "peerIP": ip.to_string(), "asNumber": conf::MESH_AS,
                    }))?;
                    put(
                        s,
                        &format!("{PREFIX_BGP_PEERS}feeder{k}"),
                        serde_json::to_value(&p)?,
                    )?;
                }
                Ok(())
            })?;
            lab.start_twilld(o, 0)?
        }
    }
    let t0 = Instant::now();
    let pid = lab.daemons.last().expect("just started").1.pid();
    for (k, f) in feeders.iter().enumerate() {
        let fd = lab.dir(f.index)?;
        let log = fd.join("bird.log").to_string_lossy().into_owned();
        let c = conf::feeder_config(f, center.ip, &conf::feed_prefixes(k), &log);
        lab.start_bird(o, f.index, &c)?;
    }
    let done = lab.wait(&mut w, o.timeout)?;
    let at_done = procstat::sample(pid)?;
    let idle = Duration::from_secs_f64(o.config.idle_seconds);
    let end_wait = Instant::now() + idle;
    while Instant::now() < end_wait {
        check_interrupted()?;
        lab.check_alive()?;
        std::thread::sleep(Duration::from_millis(100).min(end_wait - Instant::now()));
    }
    let end = procstat::sample(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = parse_hwm_kb(&status).unwrap_or(0) as f64 / 1024.0;
    Ok(Cost {
        routes,
        converge_seconds: done.saturating_duration_since(t0).as_secs_f64(),
        cpu_seconds: at_done.cpu_seconds,
        idle_cores: procstat::cores(&at_done, &end),
        rss_mb: end.rss_mb,
        peak_rss_mb: hwm,
    })
}

fn check(o: &Options) -> Result<()> {
    let c = &o.config;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("twill-bench mesh builds network namespaces: run it as root");
    }
    if c.nodes < 2 || c.nodes + 1 > conf::MAX_NODES {
        bail!("--nodes {}: between 2 and {}", c.nodes, conf::MAX_NODES - 1);
    }
    if c.rr_nodes > conf::MAX_NODES || (c.rr_nodes > 0 && c.rr_nodes <= c.reflectors) {
        bail!(
            "--rr-nodes {}: 0 (skip) or more than --reflectors {} and at most {}",
            c.rr_nodes,
            c.reflectors,
            conf::MAX_NODES
        );
    }
    if c.rr_nodes > 0 && c.reflectors == 0 {
        bail!("--reflectors must be at least 1 for the route-reflector run");
    }
    if c.cost_peers > 0
        && (c.cost_peers + 1 > conf::MAX_NODES || c.cost_peers * conf::FEED_ROUTES_PER_PEER > 16384)
    {
        bail!(
            "--cost-peers {}: at most 163 (the /30s of 10.244.0.0/16)",
            c.cost_peers
        );
    }
    if c.rounds == 0 || c.implementations.is_empty() {
        bail!("--rounds and --implementations must not be empty");
    }
    if !(c.idle_seconds >= 0.0 && c.idle_seconds.is_finite()) {
        bail!("--idle-seconds must be 0 or more");
    }
    if c.implementations.contains(&Implementation::Twilld) && !o.twilld.is_file() {
        bail!(
            "{} is missing: cargo build --release -p twilld, or pass --twilld",
            o.twilld.display()
        );
    }
    if c.implementations.contains(&Implementation::Speaker) && !o.twill.is_file() {
        bail!(
            "{} is missing: cargo build --release -p twill, or pass --twill",
            o.twill.display()
        );
    }
    let (ok, _) = (Command::new(&o.bird).arg("--version").output(), ());
    if ok.is_err() {
        bail!(
            "cannot run {} (apt-get install bird2, or pass --bird)",
            o.bird.display()
        );
    }
    Ok(())
}

pub fn run(o: &Options) -> Result<MeshFigures> {
    check(o)?;
    let c = o.config.clone();
    catch_signals();
    let count = [
        c.nodes + usize::from(c.join),
        c.rr_nodes,
        if c.cost_peers > 0 {
            c.cost_peers + 1
        } else {
            0
        },
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    progress(&format!("building {count} node namespaces on one bridge"));
    let mut lab = Lab::build(count)?;
    let mut figures = MeshFigures {
        config: c.clone(),
        timed: Vec::new(),
        costs: Vec::new(),
    };
    for s in Scenario::ALL.into_iter().filter(|s| c.runs(*s)) {
        for round in 0..c.rounds {
            for &imp in &c.implementations {
                check_interrupted()?;
                let outcome = match s {
                    Scenario::Cold => cold(&mut lab, o, imp, Topology::Mesh, c.nodes),
                    Scenario::Join => join(&mut lab, o, imp, c.nodes),
                    Scenario::Reflectors => cold(
                        &mut lab,
                        o,
                        imp,
                        Topology::Reflectors(c.reflectors),
                        c.rr_nodes,
                    ),
                };
                check_interrupted()?;
                let outcome = outcome.map_err(|e| format!("{e:#}"));
                progress(&format!(
                    "{} round {}/{} {}: {}",
                    s.key(),
                    round + 1,
                    c.rounds,
                    imp.name(),
                    match &outcome {
                        Ok(v) => format!("{v:.3} s"),
                        Err(e) => format!("FAILED: {e}"),
                    }
                ));
                figures.timed.push(TimedRun {
                    scenario: s,
                    implementation: imp,
                    round,
                    outcome,
                });
            }
        }
    }
    if c.cost_peers > 0 {
        for round in 0..c.rounds {
            for &imp in &c.implementations {
                check_interrupted()?;
                let outcome = cost(&mut lab, o, imp, c.cost_peers);
                check_interrupted()?;
                let outcome = outcome.map_err(|e| format!("{e:#}"));
                progress(&format!(
                    "cost round {}/{} {}: {}",
                    round + 1,
                    c.rounds,
                    imp.name(),
                    match &outcome {
                        Ok(v) => format!(
                            "{} routes in {:.3} s, CPU {:.2} s, idle {:.4} cores, RSS {:.1} MB (peak {:.1})",
                            v.routes, v.converge_seconds, v.cpu_seconds, v.idle_cores, v.rss_mb, v.peak_rss_mb
                        ),
                        Err(e) => format!("FAILED: {e}"),
                    }
                ));
                figures.costs.push(CostRun {
                    implementation: imp,
                    round,
                    outcome,
                });
            }
        }
    }
    lab.reset(0)?;
    Ok(figures)
}
