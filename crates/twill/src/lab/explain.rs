//! `twill lab explain SRC DST PORT/PROTO`: what `twill policy explain` says over the lab's
//! store, then a real probe between those lab pods on that port, and whether the
//! dataplane agrees with the model.
//!
//! The probe: a server on PORT/PROTO in the destination pod (a thread of this process
//! whose socket lives in the pod's namespace, answering with the pod's `ns/name`; if the
//! port is already served there, as while a test's servers run, that server answers),
//! then one connection or datagram from the source (a lab pod, or `host`: the destination
//! pod's node). A flow the model allows must be answered by the destination itself; one
//! it denies must get no answer. Policies reach the dataplane asynchronously, so a
//! disagreement is probed again, up to [`ATTEMPTS`] rounds ~1 s apart, before it is
//! reported. Exit status: 0 when they agree (or no probe could be made, said why), 1 when
//! they disagree.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use twill_api::cni::Protocol;
use twill_lab::netpol::PortProto;
use twill_lab::netpol_probe::{self, ModelPod, PROBE_TIMEOUT};
use twill_lab::probe::{self, Listener, ProbeError};
use twill_lab::{build, daemons, LabState};
use twill_policy::model::{evaluate, Decision, End};

use crate::policy_cmd::{self, Explained};

/// Probe rounds before a disagreement is reported (each bounded by [`PROBE_TIMEOUT`]).
pub const ATTEMPTS: u32 = 3;

/// What the probe saw.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeOutcome {
    /// None: no probe was made (`detail` says why).
    pub connected: Option<bool>,
    /// None when no probe was made.
    pub agrees: Option<bool>,
    pub attempts: u32,
    pub detail: String,
}

#[derive(Serialize)]
struct Report<'a> {
    model: Explained<'a>,
    probe: ProbeOutcome,
}

pub fn run(name: &str, src: &str, dst: &str, port: &str, json: bool) -> anyhow::Result<i32> {
    let state = build::load(name)?;
    let cluster = daemons::with_store(&state.plan, |s| {
        policy_cmd::load_cluster(s).map_err(|e| format!("{e:#}"))
    })
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("read lab {name}'s store"))?;
    let flow = policy_cmd::flow_for(&cluster, src, dst, port)?;
    let decision = evaluate(&cluster, &flow);
    let problems = policy_cmd::problems(&cluster);
    let outcome = probe_decision(&state, &decision);
    if json {
        let report = Report {
            model: Explained {
                decision: &decision,
                problems,
            },
            probe: outcome.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", policy_cmd::render(&cluster, &decision, &problems));
        println!("{}", render_probe(&decision, &outcome));
    }
    Ok(if outcome.agrees == Some(false) { 1 } else { 0 })
}

/// The probe line(s). Pure.
pub fn render_probe(d: &Decision, o: &ProbeOutcome) -> String {
    let model = if d.allowed { "allows" } else { "denies" };
    match (o.connected, o.agrees) {
        (Some(c), Some(agrees)) => format!(
            "probe: {} ({}); the model {model} it: {}",
            if c { "connected" } else { "no answer" },
            o.detail,
            if agrees {
                "the dataplane agrees".to_string()
            } else {
                format!(
                    "the dataplane DISAGREES (after {} probes; is twilld's policy table in place? \
                     `twill lab check` and the agents' logs say)",
                    o.attempts
                )
            }
        ),
        _ => format!("probe: none made: {}", o.detail),
    }
}

/// A lab pod by its store identity (`ns/name`), as a probe end.
fn lab_pod(state: &LabState, key: &str) -> Result<ModelPod, String> {
    let plan = &state.plan;
    let p = plan
        .pods()
        .find(|p| format!("{}/{}", p.k8s_namespace(&plan.name), p.k8s_name()) == key)
        .ok_or_else(|| {
            format!(
                "pod {key} is in the store but not one of lab {}'s pods",
                plan.name
            )
        })?;
    let ip = state
        .pod(&p.short)
        .and_then(|r| r.address)
        .ok_or_else(|| format!("lab pod {} ({key}) has no address", p.short))?;
    Ok(ModelPod {
        key: key.to_string(),
        netns: p.netns.clone(),
        ip,
    })
}

/// The node (as a probe source) of the lab pod `key`.
fn lab_pod_node(state: &LabState, key: &str) -> Result<ModelPod, String> {
    let plan = &state.plan;
    let p = plan
        .pods()
        .find(|p| format!("{}/{}", p.k8s_namespace(&plan.name), p.k8s_name()) == key)
        .ok_or_else(|| format!("pod {key} is not one of lab {}'s pods", plan.name))?;
    let n = plan
        .node(p.node)
        .ok_or_else(|| format!("lab pod {} names node {} the lab has not", p.short, p.node))?;
    Ok(ModelPod {
        key: format!("node {}", n.short),
        netns: n.netns.clone(),
        ip: n.address.addr(),
    })
}

fn none(detail: impl Into<String>) -> ProbeOutcome {
    ProbeOutcome {
        connected: None,
        agrees: None,
        attempts: 0,
        detail: detail.into(),
    }
}

/// Probes the flow the model judged, if both ends are lab members.
fn probe_decision(state: &LabState, d: &Decision) -> ProbeOutcome {
    let pp = PortProto {
        port: d.port,
        proto: d.protocol,
    };
    if d.protocol == Protocol::Sctp {
        return none("the lab's probes speak TCP and UDP, not SCTP");
    }
    let to = match &d.destination {
        End::Pod { pod, .. } => match lab_pod(state, pod) {
            Ok(p) => p,
            Err(e) => return none(e),
        },
        other => {
            return none(format!(
                "the destination is {other}, not a lab pod: nothing to serve the probe"
            ))
        }
    };
    let from = match &d.source {
        End::Pod { pod, .. } => lab_pod(state, pod),
        End::Host => lab_pod_node(state, &to.key),
        other => return none(format!("the source is {other}, not a lab pod or node")),
    };
    let from = match from {
        Ok(p) => p,
        Err(e) => return none(e),
    };
    let _server = match serve(&to, pp) {
        Ok(s) => s,
        Err(e) => return none(format!("cannot serve {pp} in {}: {e}", to.key)),
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let start = Instant::now();
        let result = netpol_probe::probe(&from, &to, pp, PROBE_TIMEOUT);
        let ms = start.elapsed().as_millis();
        let connected = result.is_ok();
        let detail = match result {
            Ok(()) => format!("{} answered {pp} from {} in {ms} ms", to.key, from.key),
            Err(e) => format!("{} → {} {pp}: {e}", from.key, to.key),
        };
        let agrees = connected == d.allowed;
        if agrees || attempts >= ATTEMPTS {
            return ProbeOutcome {
                connected: Some(connected),
                agrees: Some(agrees),
                attempts,
                detail,
            };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A server for the probe in `to`, or none when the port is already served there (that
/// server answers).
fn serve(to: &ModelPod, pp: PortProto) -> Result<Option<Listener>, ProbeError> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, pp.port));
    let listener = match pp.proto {
        Protocol::Udp => probe::udp_listener(&to.netns, &to.key, addr),
        _ => probe::tcp_listener(&to.netns, &to.key, addr),
    };
    match listener {
        Ok(l) => Ok(Some(l)),
        Err(ProbeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_line_says_agreement_or_why_there_is_none() {
        use twill_policy::model::{Destination, Flow, Source};
        // An outside flow in an empty cluster: nothing judges it, allowed.
        let d = evaluate(
            &twill_policy::cluster::Cluster::new(),
            &Flow::new(
                Source::Ip("198.51.100.1".parse().unwrap()),
                Destination::Ip("198.51.100.2".parse().unwrap()),
                Protocol::Tcp,
                80,
            ),
        );
        let agree = ProbeOutcome {
            connected: Some(true),
            agrees: Some(true),
            attempts: 1,
            detail: "x/a answered".into(),
        };
        assert_eq!(
            render_probe(&d, &agree),
            "probe: connected (x/a answered); the model allows it: the dataplane agrees"
        );
        let disagree = ProbeOutcome {
            connected: Some(false),
            agrees: Some(false),
            attempts: 3,
            detail: "timed out".into(),
        };
        assert!(render_probe(&d, &disagree).contains("DISAGREES (after 3 probes"));
        assert_eq!(render_probe(&d, &none("why")), "probe: none made: why");
    }
}
