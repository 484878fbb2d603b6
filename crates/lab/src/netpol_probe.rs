//! The NetworkPolicy model's live side ([`crate::netpol`] is the pure one): servers on
//! ports 80 and 81 over TCP and UDP in every model pod, and the probe matrix, from every
//! pod to every pod on one port/protocol, all probes in parallel, each bounded by a short
//! timeout. The servers are threads of the calling process whose sockets were made inside
//! the pod's namespace ([`crate::probe`]): they start in microseconds (no process per
//! pod) and answer every connection or datagram with `<ns/pod> <peer>`, so a probe knows
//! which pod answered.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use twill_api::cni::Protocol;

use crate::netpol::{model_items, PortProto, Reachability, TruthTable, PORTS};
use crate::probe::{self, Listener, ProbeError};
use crate::state::LabState;

/// How long one probe waits for its answer: long enough for a loaded 2-core machine,
/// short enough that a table with blocked cells takes about a second (all in parallel).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// A model pod as the lab made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPod {
    /// `x/a`.
    pub key: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// The model pods of a running lab in table order (x/a … z/c); an error names the ones
/// missing (not a model lab, or a pod without an address).
pub fn model_pods(state: &LabState) -> Result<Vec<ModelPod>, String> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for key in model_items() {
        let found = state
            .plan
            .pods()
            .find(|p| p.identity.as_ref().is_some_and(|i| i.key() == key));
        let rec = found.and_then(|p| state.pod(&p.short));
        match (found, rec.and_then(|r| r.address)) {
            (Some(p), Some(ip)) => out.push(ModelPod {
                key,
                netns: p.netns.clone(),
                ip,
            }),
            _ => missing.push(key),
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "lab {} has no running model pod {} (make it with netpol::model_spec)",
            state.plan.name,
            missing.join(", ")
        ))
    }
}

/// The servers of every model pod; they stop when this is dropped.
pub struct Servers {
    pub listeners: Vec<Listener>,
}

/// Starts ports 80 and 81, TCP and UDP, on every address of every pod.
pub fn start_servers(pods: &[ModelPod]) -> Result<Servers, ProbeError> {
    let mut listeners = Vec::new();
    for p in pods {
        for port in PORTS {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            listeners.push(probe::tcp_listener(&p.netns, &p.key, addr)?);
            listeners.push(probe::udp_listener(&p.netns, &p.key, addr)?);
        }
    }
    Ok(Servers { listeners })
}

/// One probe from `from` to `to` on `pp`: Ok when `to` itself answered.
pub fn probe(
    from: &ModelPod,
    to: &ModelPod,
    pp: PortProto,
    timeout: Duration,
) -> Result<(), String> {
    let dst = SocketAddr::from((to.ip, pp.port));
    let reply = match pp.proto {
        Protocol::Tcp => probe::tcp_ask(&from.netns, dst, timeout),
        Protocol::Udp => probe::udp_ask(&from.netns, dst, timeout),
        Protocol::Sctp => return Err("the lab's probes speak TCP and UDP, not SCTP".into()),
    }
    .map_err(|e| e.to_string())?;
    if reply.responder == to.key {
        Ok(())
    } else {
        Err(format!(
            "{} answered instead of {} ({dst})",
            reply.responder, to.key
        ))
    }
}

/// Probes every pair on `pp`, all in parallel. Returns the observed table and, per
/// blocked pair, why (`x/a → y/b: …`).
pub fn probe_table(
    pods: &[ModelPod],
    pp: PortProto,
    timeout: Duration,
) -> (TruthTable, Vec<String>) {
    let items: Vec<String> = pods.iter().map(|p| p.key.clone()).collect();
    let mut table = TruthTable::new(items, false);
    let mut why = Vec::new();
    let results: Vec<(usize, usize, Result<(), String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .flat_map(|(f, from)| pods.iter().enumerate().map(move |(t, to)| (f, from, t, to)))
            .map(|(f, from, t, to)| scope.spawn(move || (f, t, probe(from, to, pp, timeout))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a probe thread does not panic"))
            .collect()
    });
    for (f, t, r) in results {
        match r {
            Ok(()) => table.set_by_index(f, t, true),
            Err(e) => why.push(format!("{} → {}: {e}", pods[f].key, pods[t].key)),
        }
    }
    (table, why)
}

/// The outcome of [`wait_for_table`].
#[derive(Clone, Debug)]
pub struct Verdict {
    pub observed: TruthTable,
    /// Probe rounds done.
    pub rounds: u32,
    pub elapsed: Duration,
    /// Expected, observed and the comparison when they never agreed.
    pub failure: Option<String>,
}

/// Probes `pp` until the observed table is `expected` (policies apply asynchronously) or
/// `deadline` passes, as the upstream suite polls; the rounds are bounded by `deadline`
/// plus one probe timeout.
pub fn wait_for_table(
    pods: &[ModelPod],
    pp: PortProto,
    expected: &Reachability,
    deadline: Duration,
) -> Verdict {
    let start = Instant::now();
    let mut rounds = 0;
    loop {
        let (observed, why) = probe_table(pods, pp, PROBE_TIMEOUT);
        rounds += 1;
        let failure = expected.report(pp, &observed);
        if failure.is_none() || start.elapsed() >= deadline {
            let failure = failure.map(|f| {
                format!(
                    "{f}after {rounds} rounds in {:.1}s; blocked because: {}",
                    start.elapsed().as_secs_f64(),
                    if why.is_empty() {
                        "nothing was blocked".to_string()
                    } else {
                        why.join("; ")
                    }
                )
            });
            return Verdict {
                observed,
                rounds,
                elapsed: start.elapsed(),
                failure,
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// [`wait_for_table`] on several ports/protocols at once (in parallel); the failures
/// joined, or None when every table matched.
pub fn check_tables(
    pods: &[ModelPod],
    cases: &[(PortProto, &Reachability)],
    deadline: Duration,
) -> Option<String> {
    let verdicts: Vec<Verdict> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(pp, r)| scope.spawn(move || wait_for_table(pods, *pp, r, deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a table thread does not panic"))
            .collect()
    });
    let failures: Vec<String> = verdicts.into_iter().filter_map(|v| v.failure).collect();
    (!failures.is_empty()).then(|| failures.join("\n"))
}
