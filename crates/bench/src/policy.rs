//! `twill-bench policy`: network policy's two benchmarks, each side by side in one run.
//!
//! (a) **A change at scale.** Two one-node labs at once (real twilld with `--policy true`,
//! an etcd member, twill-cni ADD for the node's 2 real pods), one holding 100 endpoints and
//! one 10,000, both with the same 1,000 NetworkPolicies ([`crate::policy_gen`]'s layout;
//! every endpoint but the 2 real pods is a store entry of a remote node that does not
//! run, as its agent would have published it). Rounds alternate small, large: each times
//! one policy change (policy 0, which selects the real pod `ns0/p0`, gets a new port) and
//! one pod joining a selected set (a new remote endpoint with `app=a1`, policy 0's peer).
//!
//! What is timed, all from the moment the benchmark calls etcd's put (one client, its
//! connection open, in a thread of its own inside the etcd member's namespace), on
//! CLOCK_MONOTONIC, which twilld's /metrics reports too:
//! - `put`: until etcd answered the put;
//! - `notified`: until the benchmark's own watch on the store got the event (the store
//!   committed and told its watchers);
//! - `twilld event`: until twilld's policy thread got it from its watch;
//! - `kernel`: until the kernel answered twilld's transaction (twilld's clock);
//! - `visible`: until the benchmark, polling the kernel over nfnetlink every
//!   [`POLL`] (GETSETELEM for the joining pod's address in policy 0's peer set; GETRULE of
//!   policy 0's chain for the new port), first sees it;
//! - twilld's own split of its part: `agent` (watch event to kernel answer), `compile`,
//!   `encode`, `apply` (the kernel).
//!
//! Goal: `visible` <= 5 ms both, the same at 100 and at 10,000.
//!
//! (b) **The dataplane cost.** Two one-node labs, bridge wiring, the same 2 real pods; one
//! holds the 1,000 policies (and 1,000 endpoints), the other none; iperf3 (`-C cubic`,
//! one stream) from `ns0/p10` to `ns0/p0` on TCP 1000, which policy 0 allows (the first
//! packet of each connection walks the policy chains, the rest hits `ct state
//! established`), client and server pinned to the same CPUs in both labs, pairs run A B
//! then B A alternately in one run, each pair's ratio A/B kept: the median and IQR of the
//! pair ratios, of throughput and of CPU seconds per Gbit (iperf3's own user+system, both
//! ends). Goal: >= 0.95x. `--policies 0` makes the same run an A/A control: both labs
//! without policies, so its spread is the machine's noise, not the dataplane's cost.
//!
//! In (a), the sizes alternate which goes first, after `--warmup` rounds that are not
//! counted, and etcd's own WAL fsync and backend commit means (its /metrics) over the
//! counted rounds are reported per lab, so a slow put can be told from a slow disk.
//!
//! Never a timed test: it reports figures and ratios, and fails only when something
//! breaks. Lab names are fixed (`twlbpsm`, `twlbplg`, `twlbpip`, `twlbpno`): after a
//! killed run, `twill-bench policy --cleanup` (or `twill lab down --name …`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use twill_api::policy::{namespace_key, Namespace, NetworkPolicySpec, PolicyType};
use twill_lab::plan::{BackendKind, PodIdentity, PodWiring, StoreKind};
use twill_lab::{LabSpec, LabState};
use twill_netlink::Netns;
use twill_nft::policy::{Element, ElementData, ElementTable, FAMILY_INET};
use twill_policy::cluster::Policy;
use twill_policy::compile::{compile_policy, np_chain, TABLE};
use twill_store::{Event, Store, PREFIX};

use crate::policy_gen as gen;

pub const LAB_SMALL: &str = "twlbpsm";
pub const LAB_LARGE: &str = "twlbplg";
pub const LAB_IPERF_POLICIES: &str = "twlbpip";
pub const LAB_IPERF_NONE: &str = "twlbpno";
const LABS: [&str; 4] = [LAB_SMALL, LAB_LARGE, LAB_IPERF_POLICIES, LAB_IPERF_NONE];

#[derive(clap::Args)]
pub struct Args {
    /// Rounds of (a); each times both labs, alternating which goes first.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Rounds of (a) run first and not counted (both labs, same order rule), so neither
    /// size is measured on a cold store, WAL or page cache.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// NetworkPolicies in place in every lab of (a), and in the policy lab of (b).
    #[arg(long, default_value_t = 1000)]
    pub policies: usize,
    /// Endpoints of the small lab (the reference).
    #[arg(long, default_value_t = 100)]
    pub small: usize,
    /// Endpoints of the large lab.
    #[arg(long, default_value_t = 10_000)]
    pub large: usize,
    /// iperf3 pairs in (b): one run per lab each, in A B then B A order alternately.
    #[arg(long, default_value_t = 12)]
    pub iperf_rounds: usize,
    #[arg(long, default_value_t = 3)]
    pub iperf_seconds: u32,
    /// CPUs iperf3's client and server are pinned to (`-A`), the same in both labs.
    #[arg(long, default_value = "1,0")]
    pub iperf_cpus: String,
    /// Skip (a).
    #[arg(long)]
    pub no_apply: bool,
    /// Skip (b).
    #[arg(long)]
    pub no_iperf: bool,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// twill-cni; default: next to this binary.
    #[arg(long)]
    pub twill_cni: Option<PathBuf>,
    /// twilld; default: next to this binary.
    #[arg(long)]
    pub twilld: Option<PathBuf>,
    /// Only take down the labs a killed run left.
    #[arg(long)]
    pub cleanup: bool,
}

fn log(msg: &str) {
    say!("twill-bench policy: {msg}");
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if args.cleanup {
        for name in LABS {
            twill_lab::down(name, &|_| {}).with_context(|| format!("lab down {name}"))?;
        }
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let bin = |flag: &Option<PathBuf>, name: &str| {
        flag.clone()
            .unwrap_or_else(|| exe.parent().unwrap_or(Path::new(".")).join(name))
    };
    let (cni, twilld) = (
        bin(&args.twill_cni, "twill-cni"),
        bin(&args.twilld, "twilld"),
    );
    let mut report = json!({"config": {
        "rounds": args.rounds, "warmup": args.warmup, "policies": args.policies, "small": args.small,
        "large": args.large, "iperfRounds": args.iperf_rounds,
        "iperfSeconds": args.iperf_seconds, "iperfCpus": args.iperf_cpus, "store": "etcd", "realPodsPerLab": gen::REAL_PODS.len(),
    }});
    if !args.no_apply {
        report["apply"] = apply_bench(&args, &cni, &twilld)?;
    }
    if !args.no_iperf {
        report["iperf"] = iperf_bench(&args, &cni, &twilld)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// How often the kernel is polled for a change (the resolution of `visible`).
pub const POLL: Duration = Duration::from_micros(100);

/// CLOCK_MONOTONIC in seconds, the clock twilld's `*_monotonic_seconds` metrics read.
fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

type Job = Box<dyn FnOnce(&dyn Store) + Send>;

/// A lab's store held open: one thread inside the etcd member's namespace with one client
/// (its connection kept, so a timed put is the put alone), and one watch on the store
/// whose events are stamped (CLOCK_MONOTONIC) as they arrive.
struct StoreClient {
    jobs: Option<Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Key → when the benchmark's watch got its events.
    seen: Arc<Mutex<Vec<(String, f64)>>>,
    stop: Arc<AtomicBool>,
}

impl StoreClient {
    fn open(plan: &twill_lab::plan::LabPlan) -> anyhow::Result<StoreClient> {
        let cfg = twill_lab::daemons::store_config(plan);
        let ns = match &plan.store.etcd {
            Some(e) => Some(Netns::open(format!("/run/netns/{}", e.netns))?),
            None => None,
        };
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            if let Some(ns) = &ns {
                // SAFETY: a valid netns descriptor; setns affects this thread only.
                if unsafe {
                    libc::setns(
                        std::os::fd::AsRawFd::as_raw_fd(&ns.fd()),
                        libc::CLONE_NEWNET,
                    )
                } != 0
                {
                    let _ = ready_tx.send(Err(format!(
                        "enter the etcd namespace: {}",
                        std::io::Error::last_os_error()
                    )));
                    return;
                }
            }
            let opened = twill_store::open(&cfg).and_then(|store| {
                let (_, rev) = store.list(PREFIX)?;
                let watch = store.watch(PREFIX, rev)?;
                Ok((store, watch))
            });
            let (store, mut watch) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let watcher = std::thread::spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match watch.next(Duration::from_millis(100)) {
                        Ok(Some(ev)) => {
                            let t = monotonic();
                            let key = match ev {
                                Event::Put(kv) => kv.key,
                                Event::Delete { key, .. } => key,
                            };
                            seen2.lock().unwrap().push((key, t));
                        }
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            });
            let _ = ready_tx.send(Ok(()));
            for job in rx {
                job(store.as_ref());
            }
            let _ = watcher.join();
        });
        ready
            .recv()
            .map_err(|_| anyhow!("the store thread of {} died", plan.name))?
            .map_err(|e| anyhow!("open {}'s store: {e}", plan.name))?;
        Ok(StoreClient {
            jobs: Some(jobs),
            thread: Some(thread),
            seen,
            stop,
        })
    }

    /// Runs `f` on the store thread; its answer comes on the receiver.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> T + Send + 'static,
    ) -> Receiver<T> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        let _ = self.jobs.as_ref().expect("open").send(job);
        rx
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, String> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.spawn(f)
            .recv()
            .map_err(|_| anyhow!("the store thread died"))?
            .map_err(|e| anyhow!(e))
    }

    fn put_all(&self, kvs: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        self.run(move |store| {
            for (k, v) in &kvs {
                store
                    .put(&format!("{PREFIX}{k}"), v, None)
                    .map_err(|e| format!("{k}: {e}"))?;
            }
            Ok(())
        })
    }

    /// One put, timed on the store thread: (its start, its end), CLOCK_MONOTONIC.
    fn timed_put(&self, key: String, value: Vec<u8>) -> Receiver<Result<(f64, f64), String>> {
        self.spawn(move |store| {
            let t0 = monotonic();
            store
                .put(&format!("{PREFIX}{key}"), &value, None)
                .map_err(|e| format!("{key}: {e}"))?;
            Ok((t0, monotonic()))
        })
    }

    fn delete(&self, key: &str) -> anyhow::Result<()> {
        let key = format!("{PREFIX}{key}");
        self.run(move |store| store.delete(&key).map(|_| ()).map_err(|e| e.to_string()))
    }

    /// When the benchmark's watch first got an event of `key` at or after `after`.
    fn notified(&self, key: &str, after: f64) -> Option<f64> {
        let key = format!("{PREFIX}{key}");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|(k, t)| k == &key && *t >= after)
            .map(|(_, t)| *t)
    }
}

impl StoreClient {
    /// Stops the threads (the watch and the connection go with them).
    fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StoreClient {
    fn drop(&mut self) {
        self.close();
    }
}

/// A lab taken down however the benchmark ends.
struct Lab {
    store: StoreClient,
    state: LabState,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.store.close();
        if let Err(e) = twill_lab::down(&self.state.plan.name, &|_| {}) {
            log(&format!("lab down {}: {e}", self.state.plan.name));
        }
    }
}

/// twilld's policy figures from /metrics.
#[derive(Debug, Clone, Copy, Default)]
struct AgentFigures {
    apply: Option<f64>,
    compile: Option<f64>,
    encode: Option<f64>,
    event_to_kernel: Option<f64>,
    event_at: Option<f64>,
    applied_at: Option<f64>,
}

impl Lab {
    fn up(name: &str, wiring: PodWiring, cni: &Path, twilld: &Path) -> anyhow::Result<Lab> {
        let pods = gen::REAL_PODS
            .iter()
            .map(|&i| PodIdentity {
                namespace: gen::namespace(i),
                name: format!("p{i}"),
                labels: gen::labels(i),
                named_ports: Vec::new(),
            })
            .collect();
        let spec = LabSpec {
            name: name.into(),
            nodes: 1,
            store: StoreKind::Etcd,
            backend: BackendKind::None,
            pod_wiring: wiring,
            pods,
            policy: true,
            ..LabSpec::default()
        };
        let state =
            twill_lab::up(&spec, cni, twilld, &|_| {}).with_context(|| format!("lab up {name}"))?;
        let store = match StoreClient::open(&state.plan) {
            Ok(s) => s,
            Err(e) => {
                let _ = twill_lab::down(name, &|_| {});
                return Err(e);
            }
        };
        Ok(Lab { store, state })
    }

    fn node_ns(&self) -> &str {
        &self.state.plan.nodes[0].netns
    }

    /// A socket on the node's policy table, for polling.
    fn policy_table(&self) -> anyhow::Result<ElementTable> {
        let ns = Netns::open(format!("/run/netns/{}", self.node_ns()))?;
        Ok(ElementTable::new_in(&ns, FAMILY_INET, TABLE)?)
    }

    /// `pods` endpoints (the real ones included) and `policies` policies, plus the
    /// namespaces; the remote addresses avoid the node's own blocks.
    fn populate(&self, pods: usize, policies: usize) -> anyhow::Result<Vec<Ipv4Addr>> {
        let blocks: Vec<ipnet::Ipv4Net> = twill_lab::daemons::read_nodes(&self.state.plan)
            .map_err(|e| anyhow!(e))?
            .into_values()
            .flat_map(|n| n.blocks)
            .collect();
        let mut ips = gen::addresses(self.state.plan.cluster_cidr, &blocks, pods + 100);
        let spare = ips.split_off(pods);
        let mut kvs: Vec<(String, Vec<u8>)> = (0..gen::NAMESPACES)
            .map(|n| {
                let name = gen::namespace(n);
                let ns = Namespace {
                    labels: [("ns".to_string(), name.clone())].into(),
                };
                (namespace_key(&name), serde_json::to_vec(&ns).unwrap())
            })
            .collect();
        for (k, ep) in gen::remote_endpoints(pods, &ips) {
            kvs.push((k, serde_json::to_vec(&ep)?));
        }
        for k in 0..policies {
            let (key, spec) = gen::policy(k, None);
            kvs.push((key, serde_json::to_vec(&spec)?));
        }
        self.store.put_all(kvs)?;
        Ok(spare)
    }

    fn metrics(&self) -> AgentFigures {
        let page = twill_lab::daemons::http_get(
            self.node_ns(),
            twill_lab::daemons::agent_addr(),
            "/metrics",
        )
        .map(|(_, b)| b)
        .unwrap_or_default();
        let m = |name: &str| twill_lab::daemons::metric(&page, name).filter(|x| x.is_finite());
        AgentFigures {
            apply: m("twill_policy_apply_seconds"),
            compile: m("twill_policy_compile_seconds"),
            encode: m("twill_policy_encode_seconds"),
            event_to_kernel: m("twill_policy_event_to_kernel_seconds"),
            event_at: m("twill_policy_last_event_monotonic_seconds"),
            applied_at: m("twill_policy_last_applied_monotonic_seconds"),
        }
    }

    /// etcd's own cumulative disk figures, from its /metrics in its namespace.
    fn etcd_disk(&self) -> anyhow::Result<EtcdDisk> {
        let e = self
            .state
            .plan
            .store
            .etcd
            .as_ref()
            .ok_or_else(|| anyhow!("{} has no etcd member", self.state.plan.name))?;
        let addr: std::net::SocketAddr = e
            .client_url
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("etcd client url {}", e.client_url))?;
        let (_, page) = twill_lab::daemons::http_get(&e.netns, addr, "/metrics")
            .map_err(|e| anyhow!("etcd /metrics: {e}"))?;
        let m = |name: &str| {
            twill_lab::daemons::metric(&page, name)
                .ok_or_else(|| anyhow!("etcd /metrics has no {name}"))
        };
        Ok(EtcdDisk {
            fsync_seconds: m("etcd_disk_wal_fsync_duration_seconds_sum")?,
            fsyncs: m("etcd_disk_wal_fsync_duration_seconds_count")?,
            commit_seconds: m("etcd_disk_backend_commit_duration_seconds_sum")?,
            commits: m("etcd_disk_backend_commit_duration_seconds_count")?,
        })
    }

    /// Waits until twilld has applied nothing new for `quiet` (it is done), at most
    /// `limit`; false if it was still busy.
    fn settle(&self, quiet: Duration, limit: Duration) -> bool {
        let start = Instant::now();
        let mut last = (self.metrics().applied_at, Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.metrics().applied_at;
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
        }
    }
}

/// etcd's WAL fsyncs and backend commits, cumulative (its `*_duration_seconds` sums and
/// counts).
#[derive(Debug, Clone, Copy, Default)]
struct EtcdDisk {
    fsync_seconds: f64,
    fsyncs: f64,
    commit_seconds: f64,
    commits: f64,
}

impl EtcdDisk {
    /// What happened between `before` and `self`: counts and mean milliseconds.
    fn since(&self, before: &EtcdDisk) -> Value {
        let n = self.fsyncs - before.fsyncs;
        let c = self.commits - before.commits;
        json!({
            "walFsyncs": n,
            "walFsyncMeanMs": (self.fsync_seconds - before.fsync_seconds) * 1000.0 / n,
            "backendCommits": c,
            "backendCommitMeanMs": (self.commit_seconds - before.commit_seconds) * 1000.0 / c,
        })
    }
}

/// Polls `probe` every [`POLL`] until it holds: CLOCK_MONOTONIC then, or None after
/// `limit`.
fn poll_until(
    et: &mut ElementTable,
    limit: Duration,
    mut probe: impl FnMut(&mut ElementTable) -> anyhow::Result<bool>,
) -> anyhow::Result<Option<f64>> {
    let start = Instant::now();
    loop {
        if probe(et)? {
            return Ok(Some(monotonic()));
        }
        if start.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// What the benchmark polls for.
#[derive(Clone)]
enum Probe {
    /// `chain` has a rule comparing with `port`.
    Port { chain: String, port: u16 },
    /// `set` holds `ip`.
    Member { set: String, ip: Ipv4Addr },
}

impl Probe {
    fn holds(&self, et: &mut ElementTable) -> anyhow::Result<bool> {
        Ok(match self {
            Probe::Port { chain, port } => et
                .chain_cmp_values(chain)?
                .iter()
                .flatten()
                .any(|v| v[..] == port.to_be_bytes()),
            Probe::Member { set, ip } => et.has(
                set,
                &Element {
                    key: ip.octets().to_vec(),
                    data: ElementData::None,
                },
            )?,
        })
    }
}

/// Milliseconds from `t0` to `t`, when both are known and `t` is not before `t0`.
fn since(t0: f64, t: Option<f64>) -> Option<f64> {
    t.filter(|t| *t >= t0).map(|t| (t - t0) * 1000.0)
}

/// One timed change: the put of `key`, polled for with `probe` (see the module doc).
fn timed(
    lab: &Lab,
    et: &mut ElementTable,
    probe: &Probe,
    key: &str,
    value: Vec<u8>,
) -> anyhow::Result<Value> {
    if probe.holds(et)? {
        bail!(
            "{}: the change is in the kernel before it was written",
            lab.state.plan.name
        );
    }
    let put = lab.store.timed_put(key.to_string(), value);
    let seen = poll_until(et, Duration::from_secs(10), |et| probe.holds(et))?;
    let (t0, t_put) = put
        .recv()
        .map_err(|_| anyhow!("the store thread died"))?
        .map_err(|e| anyhow!(e))?;
    // twilld's figures of this change (an older change's event came before t0).
    std::thread::sleep(Duration::from_millis(150));
    let a = lab.metrics();
    let fresh = a.event_at.is_some_and(|t| t >= t0);
    let ms = |x: Option<f64>| x.filter(|_| fresh).map(|s| s * 1000.0);
    Ok(json!({
        "putMs": (t_put - t0) * 1000.0,
        "notifiedMs": since(t0, lab.store.notified(key, t0)),
        "agentEventMs": since(t0, a.event_at),
        "kernelMs": since(t0, a.applied_at.filter(|_| fresh)),
        "visibleMs": since(t0, seen),
        "agentMs": ms(a.event_to_kernel),
        "compileMs": ms(a.compile),
        "encodeMs": ms(a.encode),
        "applyMs": ms(a.apply),
    }))
}

/// The fields of a round, in the order of the table.
const FIELDS: [&str; 9] = [
    "visibleMs",
    "putMs",
    "notifiedMs",
    "agentEventMs",
    "kernelMs",
    "agentMs",
    "compileMs",
    "encodeMs",
    "applyMs",
];

fn apply_bench(args: &Args, cni: &Path, twilld: &Path) -> anyhow::Result<Value> {
    log("(a) building the small and large labs");
    let small = Lab::up(LAB_SMALL, PodWiring::Bridge, cni, twilld)?;
    let large = Lab::up(LAB_LARGE, PodWiring::Bridge, cni, twilld)?;
    let mut spares = Vec::new();
    for (lab, pods) in [(&small, args.small), (&large, args.large)] {
        let t = Instant::now();
        spares.push(lab.populate(pods, args.policies)?);
        let settled = lab.settle(Duration::from_secs(2), Duration::from_secs(300));
        log(&format!(
            "(a) {}: {pods} endpoints and {} policies in the store, agent settled after {:.1}s{}",
            lab.state.plan.name,
            args.policies,
            t.elapsed().as_secs_f64(),
            if settled { "" } else { " (still busy)" }
        ));
    }
    // Policy 0's chain and its peer set, named as the compiler names them.
    let (_, spec0) = gen::policy(0, None);
    let spec0: NetworkPolicySpec = serde_json::from_value(spec0)?;
    let policy0 = Policy::new(&gen::namespace(0), "p0", spec0);
    let chain = np_chain(PolicyType::Ingress, &policy0);
    let peer_set = compile_policy(&policy0)
        .sets
        .first()
        .map(|d| d.name())
        .ok_or_else(|| anyhow!("policy 0 has no peer set"))?;
    // Sleeps of POLL, not the default 50 µs of slack on top.
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
    let mut tables = [small.policy_table()?, large.policy_table()?];
    let mut samples: Vec<Vec<(Value, Value)>> = vec![Vec::new(), Vec::new()];
    let labs = [&small, &large];
    let mut disk_before = [EtcdDisk::default(); 2];
    for round in 0..args.warmup + args.rounds {
        if round == args.warmup {
            for (s, lab) in labs.iter().enumerate() {
                disk_before[s] = lab.etcd_disk()?;
            }
        }
        // Which size goes first alternates, so neither always follows the other.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for s in order {
            let lab = labs[s];
            let et = &mut tables[s];
            lab.settle(Duration::from_millis(300), Duration::from_secs(30));
            let port = gen::marker_port(round);
            let (k, spec) = gen::policy(0, Some(port));
            let probe = Probe::Port {
                chain: chain.clone(),
                port,
            };
            let change = timed(lab, et, &probe, &k, serde_json::to_vec(&spec)?)?;
            lab.settle(Duration::from_millis(300), Duration::from_secs(30));
            let ip = spares[s][round % spares[s].len()];
            let mut ep = gen::remote_endpoint(100_000 + round, "rmjoin", ip).1;
            ep.namespace = "ns0".into();
            ep.labels = gen::joining_labels();
            let key = twill_api::policy::endpoint_key("rmjoin", "ns0", &ep.pod);
            let probe = Probe::Member {
                set: peer_set.clone(),
                ip,
            };
            let join = timed(lab, et, &probe, &key, serde_json::to_vec(&ep)?)?;
            lab.store.delete(&key)?;
            let gone = poll_until(et, Duration::from_secs(10), |et| Ok(!probe.holds(et)?))?;
            if gone.is_none() {
                bail!(
                    "{}: the joined pod {ip} stayed in {peer_set} after its delete",
                    lab.state.plan.name
                );
            }
            if round >= args.warmup {
                samples[s].push((change, join));
            } else {
                log(&format!(
                    "(a) warm-up {}: {} put {:.2} ms, visible {} ms",
                    round + 1,
                    lab.state.plan.name,
                    change["putMs"].as_f64().unwrap_or(f64::NAN),
                    f(&change["visibleMs"])
                ));
            }
        }
        if round >= args.warmup {
            log(&format!(
                "(a) round {} of {} done",
                round + 1 - args.warmup,
                args.rounds
            ));
        }
    }
    let mut disk = Vec::new();
    for (s, lab) in labs.iter().enumerate() {
        disk.push(lab.etcd_disk()?.since(&disk_before[s]));
    }
    let summarize = |v: &[(Value, Value)], pick: fn(&(Value, Value)) -> &Value, field: &str| {
        let xs: Vec<f64> = v.iter().filter_map(|p| pick(p)[field].as_f64()).collect();
        json!({"median": gen::median(&xs), "n": xs.len(), "missed": v.len() - xs.len(),
               "max": xs.iter().cloned().fold(f64::NAN, f64::max)})
    };
    let side = |v: &[(Value, Value)], pods: usize| {
        let mut o = json!({"endpoints": pods});
        for (name, pick) in [
            (
                "policyChange",
                (|p: &(Value, Value)| &p.0) as fn(&(Value, Value)) -> &Value,
            ),
            ("podJoin", |p: &(Value, Value)| &p.1),
        ] {
            let mut f = json!({});
            for field in FIELDS {
                f[field] = summarize(v, pick, field);
            }
            o[name] = f;
        }
        o
    };
    let (mut s, mut l) = (side(&samples[0], args.small), side(&samples[1], args.large));
    s["etcdDisk"] = disk[0].clone();
    l["etcdDisk"] = disk[1].clone();
    let ratio = |what: &str| {
        l[what]["visibleMs"]["median"].as_f64().unwrap_or(f64::NAN)
            / s[what]["visibleMs"]["median"].as_f64().unwrap_or(f64::NAN)
    };
    let ratios = json!({"policyChange": ratio("policyChange"), "podJoin": ratio("podJoin")});
    Ok(json!({"small": s, "large": l, "ratioLargeToSmall": ratios,
              "pollMicros": POLL.as_micros() as u64,
              "rounds": samples.iter().map(|v| v.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()).collect::<Vec<_>>()}))
}

fn pod(lab: &Lab, i: usize) -> anyhow::Result<(String, Ipv4Addr)> {
    let short = format!("{}-p{i}", gen::namespace(i));
    let p = lab
        .state
        .plan
        .pods()
        .find(|p| p.short == short)
        .ok_or_else(|| anyhow!("no pod {short}"))?;
    let ip = lab
        .state
        .pod(&short)
        .and_then(|r| r.address)
        .ok_or_else(|| anyhow!("pod {short} has no address"))?;
    Ok((p.netns.clone(), ip))
}

/// iperf3's client and server CPUs from `--iperf-cpus C,S`.
fn iperf_cpus(arg: &str) -> anyhow::Result<(usize, usize)> {
    let bad = || anyhow!("--iperf-cpus {arg:?}: give the client's and the server's CPU, as 1,0");
    let (c, s) = arg.split_once(',').ok_or_else(bad)?;
    Ok((
        c.trim().parse().map_err(|_| bad())?,
        s.trim().parse().map_err(|_| bad())?,
    ))
}

/// One iperf3 run: its throughput, and the CPU its client and server used per Gbit
/// (iperf3's own user+system shares of wall time, both ends, over Gbit/s): the figure that
/// other load on the machine moves least, since the packet path (nftables included) runs
/// in the sending and receiving processes' system time.
#[derive(Debug, Clone, Copy)]
struct IperfRun {
    gbps: f64,
    cpu_s_per_gbit: f64,
}

/// One iperf3 run in `lab` from pod 10 to pod 0 on policy 0's port, client and server
/// pinned to `cpus`.
fn iperf(lab: &Lab, seconds: u32, cpus: (usize, usize)) -> anyhow::Result<IperfRun> {
    let (srv_ns, srv_ip) = pod(lab, 0)?;
    let (cli_ns, _) = pod(lab, 10)?;
    let port = gen::policy_port(0).to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", &srv_ns, "iperf3", "-s", "-1", "-p", &port])
        .args(["-A", &cpus.1.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run iperf3 (apt-get install iperf3)")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns", "exec", &cli_ns, "iperf3", "-J", "-C", "cubic", "-c",
        ])
        .arg(srv_ip.to_string())
        .args(["-p", &port, "-t", &seconds.to_string()])
        .args(["-A", &cpus.0.to_string()])
        .output()
        .context("run iperf3 -c")?;
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow!(
            "iperf3 -J output: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3 in {}: {err}", lab.state.plan.name);
    }
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| anyhow!("iperf3 gave no throughput: {v}"))?;
    let cpu = &v["end"]["cpu_utilization_percent"];
    let (host, remote) = match (cpu["host_total"].as_f64(), cpu["remote_total"].as_f64()) {
        (Some(h), Some(r)) => (h, r),
        _ => bail!("iperf3 gave no cpu_utilization_percent: {cpu}"),
    };
    Ok(IperfRun {
        gbps,
        cpu_s_per_gbit: (host + remote) / 100.0 / gbps,
    })
}

fn iperf_bench(args: &Args, cni: &Path, twilld: &Path) -> anyhow::Result<Value> {
    log("(b) building the labs with and without policies");
    let with = Lab::up(LAB_IPERF_POLICIES, PodWiring::Bridge, cni, twilld)?;
    let none = Lab::up(LAB_IPERF_NONE, PodWiring::Bridge, cni, twilld)?;
    with.populate(args.policies, args.policies)?;
    with.settle(Duration::from_secs(2), Duration::from_secs(300));
    let cpus = iperf_cpus(&args.iperf_cpus)?;
    let (mut a, mut b): (Vec<IperfRun>, Vec<IperfRun>) = (Vec::new(), Vec::new());
    for r in 0..args.iperf_rounds {
        // A B, then B A: neither lab always runs first (or just after the other).
        if r % 2 == 0 {
            a.push(iperf(&with, args.iperf_seconds, cpus)?);
            b.push(iperf(&none, args.iperf_seconds, cpus)?);
        } else {
            b.push(iperf(&none, args.iperf_seconds, cpus)?);
            a.push(iperf(&with, args.iperf_seconds, cpus)?);
        }
        log(&format!(
            "(b) pair {}: {:.2} vs {:.2} Gbit/s ({:.3}x), CPU {:.3} vs {:.3} s/Gbit",
            r + 1,
            a[r].gbps,
            b[r].gbps,
            a[r].gbps / b[r].gbps,
            a[r].cpu_s_per_gbit,
            b[r].cpu_s_per_gbit,
        ));
    }
    // CPU per Gbit, none over with: like the throughput ratio, below 1 means a cost.
    let cpu_pairs: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| y.cpu_s_per_gbit / x.cpu_s_per_gbit)
        .collect();
    let (c1, cmed, c3) = gen::quartiles(&cpu_pairs);
    let (a, b): (Vec<f64>, Vec<f64>) = (
        a.iter().map(|x| x.gbps).collect(),
        b.iter().map(|x| x.gbps).collect(),
    );
    let pairs: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
    let (ma, mb) = (gen::median(&a), gen::median(&b));
    let (q1, med, q3) = gen::quartiles(&pairs);
    let (a1, _, a3) = gen::quartiles(&a);
    let (b1, _, b3) = gen::quartiles(&b);
    Ok(json!({
        "withPolicies": {"gbps": a, "median": ma, "q1": a1, "q3": a3, "policies": args.policies},
        "none": {"gbps": b, "median": mb, "q1": b1, "q3": b3},
        "pairRatios": pairs,
        "ratio": med,
        "ratioQ1": q1,
        "ratioQ3": q3,
        "ratioLow": pairs.iter().cloned().fold(f64::NAN, f64::min),
        "ratioHigh": pairs.iter().cloned().fold(f64::NAN, f64::max),
        "ratioOfMedians": ma / mb,
        "cpuPairRatios": cpu_pairs,
        "cpuRatio": cmed,
        "cpuRatioQ1": c1,
        "cpuRatioQ3": c3,
    }))
}

fn f(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))
}

fn render(r: &Value) -> String {
    let mut s = String::new();
    if let Some(a) = r.get("apply") {
        s.push_str(&format!(
            "(a) ms from the start of etcd's put, median of {} rounds (after {} warm-up, sizes alternating first), {} policies, kernel polled every {} us (goal: visible <= 5 ms)\n",
            r["config"]["rounds"], r["config"]["warmup"], r["config"]["policies"], a["pollMicros"]
        ));
        s.push_str(
            "                      endpoints  visible  put-ok  notified  twilld-event  kernel | twilld: event->kernel  compile  encode  apply\n",
        );
        for what in ["policyChange", "podJoin"] {
            for side in ["small", "large"] {
                let x = &a[side][what];
                let m = |f: &str| self::f(&x[f]["median"]);
                s.push_str(&format!(
                    "{what:<14} {side:<6} {:>9}  {:>7}  {:>6}  {:>8}  {:>12}  {:>6} | {:>21}  {:>7}  {:>6}  {:>5}\n",
                    a[side]["endpoints"],
                    m("visibleMs"),
                    m("putMs"),
                    m("notifiedMs"),
                    m("agentEventMs"),
                    m("kernelMs"),
                    m("agentMs"),
                    m("compileMs"),
                    m("encodeMs"),
                    m("applyMs"),
                ));
            }
        }
        for side in ["small", "large"] {
            let d = &a[side]["etcdDisk"];
            s.push_str(&format!(
                "etcd of the {side} lab over the counted rounds: {} WAL fsyncs, mean {} ms; {} backend commits, mean {} ms\n",
                d["walFsyncs"], f(&d["walFsyncMeanMs"]), d["backendCommits"], f(&d["backendCommitMeanMs"]),
            ));
        }
        s.push_str(&format!(
            "ratio large/small (visible): policy change {}, pod join {}\n",
            f(&a["ratioLargeToSmall"]["policyChange"]),
            f(&a["ratioLargeToSmall"]["podJoin"])
        ));
    }
    if let Some(b) = r.get("iperf") {
        s.push_str(&format!(
            "(b) iperf3 -C cubic, {} pairs (A B / B A) of {} s, pinned {}: {} policies {} Gbit/s (IQR {}-{}) vs none {} ({}-{}) (medians); per-pair ratio median {}, IQR {}-{} (lowest {}, highest {}) (goal >= 0.95)\n",
            r["config"]["iperfRounds"],
            r["config"]["iperfSeconds"],
            r["config"]["iperfCpus"],
            b["withPolicies"]["policies"],
            f(&b["withPolicies"]["median"]),
            f(&b["withPolicies"]["q1"]),
            f(&b["withPolicies"]["q3"]),
            f(&b["none"]["median"]),
            f(&b["none"]["q1"]),
            f(&b["none"]["q3"]),
            self::f3(&b["ratio"]),
            self::f3(&b["ratioQ1"]),
            self::f3(&b["ratioQ3"]),
            self::f3(&b["ratioLow"]),
            self::f3(&b["ratioHigh"]),
        ));
        s.push_str(&format!(
            "    CPU per Gbit (client+server), none/with per pair: median {}, IQR {}-{}\n",
            self::f3(&b["cpuRatio"]),
            self::f3(&b["cpuRatioQ1"]),
            self::f3(&b["cpuRatioQ3"]),
        ));
    }
    s
}

fn f3(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}
