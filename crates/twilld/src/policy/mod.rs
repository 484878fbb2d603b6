//! Network policy on this node (`policy: true`): a thread of its own lists and watches the
//! store's endpoints, pod labels, namespaces and policies ([`twill_policy::cluster`]),
//! compiles them into `table inet twill-policy` ([`twill_policy::compile`]) and applies
//! each change as one atomic transaction ([`dataplane`]).
//!
//! Its own watch, not the main loop's: an apply must never delay a lease renewal, and a
//! watch that ends is followed by a list and a diff against what the kernel holds, so no
//! event is lost in between.
//!
//! The table outlives twilld: a stop or crash leaves the pods judged by the last rules (a
//! restart must not open them), and the next start replaces the table in one transaction.
//! Only a twilld started with policy off removes it (then every pod is open, as asked).

pub mod dataplane;
pub mod log;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twill_policy::cluster::{Change, Cluster};
use twill_policy::compile::CounterOf;
use twill_policy::compile_diff::{diff, Op};
use twill_policy::compile_incr::Compiler;
use twill_store::{Event, KeyRange, Store, PREFIX};

use crate::log as logfmt;
use dataplane::Dataplane;

/// Listed once per watch: everything under the store's root (the cluster keeps the
/// policy prefixes only).
const ROOT: &str = PREFIX;

/// What the policy thread watches: one range from `endpoints/` to the end of
/// `podlabels/`. Sorted, it holds every kind a [`Cluster`] is built from
/// ([`twill_policy::cluster::PREFIXES`]: `endpoints/`, `globalnetworkpolicies/`,
/// `namespaces/`, `networkpolicies/`, `podlabels/`) and, in between, only `nodeconfigs/`,
/// `nodes/` and `peers/` (rare writes: peer views above 64 peers are problems only). What
/// nodes write most and policy never reads stays out: `allocations/` (every pod ADD),
/// `blocks/`, `routingstatus/` (every second of BGP churn), `bgpconfig`, `bgppeers/` and
/// `config`.
pub fn policy_watch() -> KeyRange {
    use twill_api::policy::{PREFIX_ENDPOINTS, PREFIX_POD_LABELS};
    KeyRange::Between {
        from: format!("{PREFIX}{PREFIX_ENDPOINTS}"),
        to: format!("{PREFIX}{}0", PREFIX_POD_LABELS.trim_end_matches('/')),
    }
}
/// How often drop counters are read and bridges of new pods looked up again.
const TICK: Duration = Duration::from_secs(1);
/// At most this many events are folded into one change.
const MAX_BATCH: usize = 10_000;

/// What /metrics shows of policy.
#[derive(Debug, Clone, Default)]
pub struct PolicyStatus {
    /// The table is loaded and follows the store.
    pub loaded: bool,
    pub applies: BTreeMap<&'static str, u64>,
    pub apply_failures: u64,
    /// The kernel's part of the last change (one transaction).
    pub last_apply: Duration,
    /// Compiling and diffing the last change.
    pub last_compile: Duration,
    /// Encoding the last change for the kernel.
    pub last_encode: Duration,
    /// From the store's watch handing this thread the (first) event of the last change a
    /// store event caused to the kernel's answer: the agent's whole part of it.
    pub last_event_to_kernel: Option<Duration>,
    /// When (CLOCK_MONOTONIC, seconds) the watch handed over that event and when the
    /// kernel answered: a benchmark on the same machine lines them up with its own clock.
    pub last_event_at: Option<f64>,
    pub last_applied_at: Option<f64>,
    pub last_ops: usize,
    pub rules: usize,
    pub chains: usize,
    pub sets: usize,
    pub elements: usize,
    pub local_pods: usize,
    pub problems: usize,
    /// Drop counters: (what it counts for) → packets.
    pub drops: BTreeMap<CounterOf, u64>,
    pub last_error: Option<String>,
}

/// Shared between the policy threads and the HTTP thread.
#[derive(Debug, Default)]
pub struct Shared {
    status: Mutex<PolicyStatus>,
    /// What Log rules logged (NFLOG), for `GET /policy/log`.
    pub log: Arc<log::Ring>,
}

impl Shared {
    pub fn status(&self) -> PolicyStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn update(&self, f: impl FnOnce(&mut PolicyStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Pure: the policy lines of /metrics.
pub fn render_metrics(s: &PolicyStatus) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "twill_policy_loaded",
        "gauge",
        "1 once the policy table is loaded and follows the store.",
        one(u8::from(s.loaded).to_string()),
    );
    metric(
        "twill_policy_apply_seconds",
        "gauge",
        "How long the kernel took to apply the last change (one transaction).",
        one(format!("{:.6}", s.last_apply.as_secs_f64())),
    );
    metric(
        "twill_policy_compile_seconds",
        "gauge",
        "How long compiling and diffing the last change took.",
        one(format!("{:.6}", s.last_compile.as_secs_f64())),
    );
    metric(
        "twill_policy_encode_seconds",
        "gauge",
        "How long encoding the last change for the kernel took.",
        one(format!("{:.6}", s.last_encode.as_secs_f64())),
    );
    let opt = |v: Option<f64>| one(v.map_or("NaN".into(), |x| format!("{x:.6}")));
    metric(
        "twill_policy_event_to_kernel_seconds",
        "gauge",
        "From the store's watch handing over the last change's first event to the kernel's answer (twilld's whole part).",
        opt(s.last_event_to_kernel.map(|d| d.as_secs_f64())),
    );
    metric(
        "twill_policy_last_event_monotonic_seconds",
        "gauge",
        "CLOCK_MONOTONIC when the store's watch handed over the last change's first event.",
        opt(s.last_event_at),
    );
    metric(
        "twill_policy_last_applied_monotonic_seconds",
        "gauge",
        "CLOCK_MONOTONIC when the kernel answered the last change.",
        opt(s.last_applied_at),
    );
    metric(
        "twill_policy_last_apply_operations",
        "gauge",
        "Operations in the last change.",
        one(s.last_ops.to_string()),
    );
    metric(
        "twill_policy_applies_total",
        "counter",
        "Changes applied, by path (netlink: elements only; nft: chains and rules).",
        ["netlink", "nft"]
            .iter()
            .map(|p| {
                (
                    format!("{{path=\"{p}\"}}"),
                    s.applies.get(p).copied().unwrap_or(0).to_string(),
                )
            })
            .collect(),
    );
    metric(
        "twill_policy_apply_failures_total",
        "counter",
        "Changes the kernel refused (the table is then reloaded whole).",
        one(s.apply_failures.to_string()),
    );
    metric(
        "twill_policy_rules",
        "gauge",
        "Rules in the policy table's regular chains.",
        one(s.rules.to_string()),
    );
    metric(
        "twill_policy_chains",
        "gauge",
        "Regular chains in the policy table.",
        one(s.chains.to_string()),
    );
    metric(
        "twill_policy_sets",
        "gauge",
        "Named address and named-port sets.",
        one(s.sets.to_string()),
    );
    metric(
        "twill_policy_set_elements",
        "gauge",
        "Elements in the sets and dispatch maps.",
        one(s.elements.to_string()),
    );
    metric(
        "twill_policy_local_pods",
        "gauge",
        "This node's pods in the dispatch maps (addresses).",
        one(s.local_pods.to_string()),
    );
    metric(
        "twill_policy_store_problems",
        "gauge",
        "Store entries left out of the policy view (bad keys or values).",
        one(s.problems.to_string()),
    );
    metric(
        "twill_policy_drops_total",
        "counter",
        "Packets dropped, by the policy that dropped them (kind NetworkPolicy or GlobalNetworkPolicy; unknown-interface: a pod interface not in the dispatch map).",
        s.drops
            .iter()
            .map(|(c, n)| {
                let labels = match c {
                    CounterOf::NetworkPolicy { namespace, name } => format!(
                        "{{policy=\"{namespace}/{name}\",kind=\"NetworkPolicy\"}}"
                    ),
                    CounterOf::GlobalNetworkPolicy(name) => {
                        format!("{{policy=\"{name}\",kind=\"GlobalNetworkPolicy\"}}")
                    }
                    CounterOf::UnknownInterface => {
                        "{policy=\"\",kind=\"unknown-interface\"}".to_string()
                    }
                };
                (labels, n.to_string())
            })
            .collect(),
    );
    out
}

/// CLOCK_MONOTONIC in seconds (the clock `Instant` reads; the same for every process of
/// the machine, whatever its network namespace).
pub fn monotonic_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// When a change's first event came from the watch: `Instant` and CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy)]
struct Received {
    at: Instant,
    monotonic: f64,
}

impl Received {
    fn now() -> Received {
        Received {
            at: Instant::now(),
            monotonic: monotonic_seconds(),
        }
    }
}

/// Starts the policy thread (policy on).
pub fn start(
    store: Arc<dyn Store>,
    node: String,
    shutdown: Arc<AtomicBool>,
) -> (Arc<Shared>, std::thread::JoinHandle<()>) {
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let nflog = log::start(shared.log.clone(), shutdown.clone());
    let handle = std::thread::Builder::new()
        .name("twilld-policy".into())
        .spawn(move || {
            Runner::new(store, node, s, shutdown).run();
            let _ = nflog.join();
        })
        .expect("spawn the policy thread");
    (shared, handle)
}

/// Policy off: removes the table a run with policy on left, so every pod is open.
pub fn clear() {
    match dataplane::remove_table() {
        Ok(true) => logfmt::info(
            "policy is off: removed table inet twill-policy (every pod is open)",
            &[],
        ),
        Ok(false) => {}
        Err(e) => logfmt::error(
            "policy is off but table inet twill-policy cannot be removed; remove it with `nft delete table inet twill-policy`",
            &[("error", &e)],
        ),
    }
}

/// The bridge each local bridge-wired pod's host veth is a port of (the kernel's word).
fn lookup_bridges(cluster: &Cluster, node: &str, known: &mut BTreeMap<String, String>) {
    use twill_api::wiring::PodWiring;
    let wanted: Vec<String> = cluster
        .node_pods(node)
        .filter(|p| p.endpoint.wiring == PodWiring::Bridge)
        .map(|p| p.endpoint.host_veth.clone())
        .filter(|v| !known.contains_key(v))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let Ok(mut h) = twill_netlink::Handle::new() else {
        return;
    };
    for veth in wanted {
        let master = h
            .link_by_name(&veth)
            .ok()
            .flatten()
            .and_then(|l| l.master)
            .and_then(|m| h.link_by_index(m).ok().flatten());
        if let Some(m) = master {
            known.insert(veth, m.name);
        }
    }
}

struct Runner {
    store: Arc<dyn Store>,
    node: String,
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
    /// The table as the store says it should be, kept per change.
    compiler: Option<Compiler>,
    /// The kernel holds the compiler's table (false: unknown, the next apply loads it
    /// whole).
    in_kernel: bool,
    bridges: BTreeMap<String, String>,
    dataplane: Option<Dataplane>,
}

impl Runner {
    fn new(
        store: Arc<dyn Store>,
        node: String,
        shared: Arc<Shared>,
        shutdown: Arc<AtomicBool>,
    ) -> Runner {
        Runner {
            store,
            node,
            shared,
            shutdown,
            compiler: None,
            in_kernel: false,
            bridges: BTreeMap::new(),
            dataplane: None,
        }
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    fn run(&mut self) {
        // Bridged pod traffic reaches the inet forward hook only through br_netfilter.
        if std::path::Path::new("/proc/sys/net/bridge").exists() {
            if let Err(e) =
                twill_netlink::ensure_sysctl(None, "net.bridge.bridge-nf-call-iptables", "1")
            {
                logfmt::error(
                    "cannot turn on net.bridge.bridge-nf-call-iptables: bridged pods are not judged by policy",
                    &[("error", &e)],
                );
            }
        } else {
            logfmt::warn(
                "br_netfilter is not loaded (no /proc/sys/net/bridge): bridged pods are not judged by policy; modprobe br_netfilter",
                &[],
            );
        }
        let mut backoff = crate::claims::Backoff::new();
        while !self.stopping() {
            match self.follow() {
                Ok(()) => break,
                Err(why) => {
                    logfmt::warn("policy: store watch ended; listing again", &[("why", &why)]);
                    let end = Instant::now() + backoff.next_delay();
                    while !self.stopping() && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }

    /// One list then its watch, until shutdown (Ok) or the store fails (Err).
    fn follow(&mut self) -> Result<(), String> {
        let (kvs, rev) = self.store.list(ROOT).map_err(|e| e.to_string())?;
        let mut cluster =
            Cluster::from_entries(kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())));
        let start = Instant::now();
        lookup_bridges(&cluster, &self.node, &mut self.bridges);
        let new = Compiler::new(&cluster, &self.node, self.bridges.clone());
        // After a watch that ended, the kernel holds the old compiler's table: the diff.
        let ops = match (self.compiler.take(), self.in_kernel) {
            (Some(old), true) => Some(diff(old.ruleset(), new.ruleset())),
            _ => None,
        };
        self.compiler = Some(new);
        self.apply(&cluster, ops, start.elapsed(), None);
        let mut watch = self
            .store
            .watch_range(&policy_watch(), rev)
            .map_err(|e| e.to_string())?;
        let mut last_tick = Instant::now();
        while !self.stopping() {
            let first = watch.next(TICK).map_err(|e| e.to_string())?;
            let received = first.is_some().then(Received::now);
            // The compiler's own time only (not the store's events being read and parsed).
            let mut compiling = Duration::ZERO;
            let mut changed = false;
            let mut next = first;
            let mut n = 0;
            while let Some(ev) = next {
                let change = match &ev {
                    Event::Put(kv) => cluster.apply(&kv.key, Some(&kv.value)),
                    Event::Delete { key, .. } => cluster.apply(key, None),
                };
                if let Some(change) = change {
                    let start = Instant::now();
                    // A local pod new to us: its bridge (remote pods need none).
                    if let Change::Endpoint { node, .. } = &change {
                        if node == &self.node {
                            let before = self.bridges.len();
                            lookup_bridges(&cluster, &self.node, &mut self.bridges);
                            if self.bridges.len() != before {
                                let c = self.compiler.as_mut().expect("made above");
                                c.set_bridges(&cluster, self.bridges.clone());
                            }
                        }
                    }
                    self.compiler
                        .as_mut()
                        .expect("made above")
                        .update(&cluster, &change);
                    compiling += start.elapsed();
                    changed = true;
                }
                n += 1;
                if n >= MAX_BATCH {
                    break;
                }
                next = watch.next(Duration::ZERO).map_err(|e| e.to_string())?;
            }
            if changed {
                let start = Instant::now();
                let ops = self.compiler.as_mut().expect("made above").take_ops();
                compiling += start.elapsed();
                self.apply(&cluster, Some(ops), compiling, received);
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick(&cluster);
            }
        }
        Ok(())
    }

    /// Every second: drop counters; pods whose bridge was not known yet; a table that
    /// could not be loaded is tried again.
    fn tick(&mut self, cluster: &Cluster) {
        let before = self.bridges.len();
        lookup_bridges(cluster, &self.node, &mut self.bridges);
        if self.bridges.len() != before {
            let start = Instant::now();
            let c = self.compiler.as_mut().expect("made in follow");
            c.set_bridges(cluster, self.bridges.clone());
            let ops = c.take_ops();
            self.apply(cluster, Some(ops), start.elapsed(), None);
        } else if !self.in_kernel {
            self.apply(cluster, None, Duration::ZERO, None);
        }
        if let Some(dp) = self.dataplane.as_mut() {
            if let Ok(c) = dp.counters() {
                let drops = c
                    .into_iter()
                    .filter_map(|(n, p)| CounterOf::parse(&n).map(|c| (c, p)))
                    .collect();
                self.shared.update(|s| s.drops = drops);
            }
        }
    }

    /// Brings the kernel to the compiler's table: `ops` from what it holds, or (None, or
    /// when the kernel refuses them) the whole table in one transaction.
    /// `received`: when the store's event that caused it came (None for a load or tick).
    fn apply(
        &mut self,
        cluster: &Cluster,
        ops: Option<Vec<Op>>,
        compiled: Duration,
        received: Option<Received>,
    ) {
        if self.dataplane.is_none() {
            match Dataplane::open() {
                Ok(d) => self.dataplane = Some(d),
                Err(e) => {
                    logfmt::error("policy: cannot open nfnetlink", &[("error", &e)]);
                    self.shared.update(|s| s.last_error = Some(e.to_string()));
                    return;
                }
            }
        }
        let ops = if self.in_kernel { ops } else { None };
        if ops.as_ref().is_some_and(Vec::is_empty) {
            return;
        }
        let rs = self.compiler.as_ref().expect("made in follow").ruleset();
        let dp = self.dataplane.as_mut().expect("opened above");
        let mut result = match &ops {
            Some(ops) => dp.apply(ops),
            None => dp.load(rs),
        };
        if let (Err(e), Some(_)) = (&result, &ops) {
            logfmt::warn(
                "policy: the kernel refused a change; loading the whole table",
                &[("error", e)],
            );
            self.shared.update(|s| s.apply_failures += 1);
            result = dp.load(rs);
        }
        let (done, done_mono) = (Instant::now(), monotonic_seconds());
        match result {
            Ok(a) => {
                self.in_kernel = true;
                let local = rs.to_pod.len();
                let (rules, chains, sets, elements) = (
                    rs.rule_count(),
                    rs.chains.len(),
                    rs.sets.len(),
                    rs.element_count(),
                );
                self.shared.update(|s| {
                    s.loaded = true;
                    *s.applies.entry(a.path.name()).or_default() += 1;
                    s.last_apply = a.took;
                    s.last_compile = compiled;
                    s.last_encode = a.encode;
                    if let Some(r) = received {
                        s.last_event_to_kernel = Some(done - r.at);
                        s.last_event_at = Some(r.monotonic);
                        s.last_applied_at = Some(done_mono);
                    }
                    s.last_ops = a.ops;
                    s.rules = rules;
                    s.chains = chains;
                    s.sets = sets;
                    s.elements = elements;
                    s.local_pods = local;
                    s.problems = cluster.problems().count();
                    s.last_error = None;
                });
                if ops.is_none() {
                    logfmt::info(
                        "policy table loaded",
                        &[
                            ("rules", &rules),
                            ("sets", &sets),
                            ("localPods", &local),
                            ("took", &format!("{:?}", a.took)),
                        ],
                    );
                }
            }
            Err(e) => {
                logfmt::error(
                    "policy: cannot load table inet twill-policy; pods keep the rules they had (retried every second)",
                    &[("error", &e)],
                );
                self.shared.update(|s| {
                    s.apply_failures += 1;
                    s.last_error = Some(e.to_string());
                });
                self.in_kernel = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::policy::{
        endpoint_key, global_network_policy_key, namespace_key, network_policy_key, pod_labels_key,
    };

    #[test]
    fn policy_watches_what_the_cluster_reads_and_not_what_nodes_churn() {
        let r = policy_watch();
        let key = |rel: &str| format!("{PREFIX}{rel}");
        for p in twill_policy::cluster::PREFIXES {
            assert!(r.contains(&key(&format!("{p}x"))), "{p} is needed");
        }
        for rel in [
            endpoint_key("n1", "default", "p"),
            pod_labels_key("default", "p"),
            pod_labels_key("zzz", "zzz"),
            namespace_key("x"),
            network_policy_key("x", "deny"),
            global_network_policy_key("g"),
        ] {
            assert!(r.contains(&key(&rel)), "{rel} is needed");
        }
        for rel in [
            "allocations/n1",
            "blocks/10.244.1.0-24",
            "routingstatus/n1",
            "bgpconfig",
            "bgppeers/tor",
            "config",
            "podlabels0",
            "endpoints",
        ] {
            assert!(!r.contains(&key(rel)), "{rel} is not");
        }
    }
}
