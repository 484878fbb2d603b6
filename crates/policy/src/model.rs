//! The reference evaluator: given a [`Cluster`] and one [`Flow`], whether the flow
//! passes and, for each direction judged, what decided it ([`evaluate`]). It is what
//! `twill policy explain` prints and the oracle the dataplane's tests compare against.
//!
//! The semantics are [`twill_api::policy`]'s, exactly:
//! - A flow between two pods passes when the **source pod's egress** and the
//!   **destination pod's ingress** both allow it. An end that is not a pod (an outside
//!   address, or the host) is not judged. Only the flow's first packet is judged:
//!   replies to an allowed flow pass (the dataplane accepts established/related first).
//! - **From the destination's own node** ([`Source::Host`]): allowed, whatever the
//!   policies (kubelet probes). **A pod to itself**: allowed (it never leaves the pod, no
//!   hook sees it; upstream's e2e suite ignores loopback for the same reason).
//! - **Global tier** (per direction, for the judged pod): the GlobalNetworkPolicies that
//!   select the pod and have that type, by `(order, name)`; in each, rules in order; the
//!   first matching `Allow` or `Deny` decides; a matching `Log` is listed in
//!   [`Verdict::logged`] and evaluation goes on; a matching `Pass` leaves the tier. If
//!   some applied and none decided or passed: denied (end of tier).
//! - **Namespaced tier**: no NetworkPolicy of the pod's namespace isolates it in that
//!   direction: open. Otherwise allowed iff some rule of some isolating policy allows
//!   the flow; [`Reason::AllowedBy`] lists every allowing rule (allows add up).
//! - A rule's peers: `ipBlock` matches any address in `cidr` not in `except`, pod
//!   addresses included; `podSelector` alone: pods of the policy's namespace;
//!   `namespaceSelector` alone: every pod of the matching namespaces; both in one peer:
//!   pods matching both (AND); several peers or rules: any (OR). No peers: anyone.
//! - A rule's ports: none: every port and protocol; a port of a protocol (default TCP);
//!   no number: every port of it; `port..=endPort`; a named port resolves on the
//!   **destination** pod (ingress: the judged pod; egress: the peer, which must be a pod).
//! - An egress-only policy does not isolate ingress (and vice versa): see
//!   [`NetworkPolicySpec::types`](twill_api::policy::NetworkPolicySpec::types).
//! - Global rules: `protocol` (none: any; ICMP matches no port flow), `source` and
//!   `destination` with `nets`, `notNets`, `selector`, `namespaceSelector` (these two
//!   need the end to be a known pod), `ports`, `notPorts` (named ports resolve on the pod
//!   at that end). A rule with source ports matches only a flow whose source port is
//!   given.
//!
//! An address that belongs to a known pod is that pod. A pod named but not in the
//! cluster is denied with [`Reason::UnknownPod`]: nothing to judge it by.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;
use twill_api::cni::Protocol;
use twill_api::policy::{
    Action, IpBlock, NetworkPolicyPeer, NetworkPolicyPort, PolicyType, PortRef, RuleProtocol,
};

use crate::cluster::{Cluster, Entity, ParsedRule, Pod, PodId, Policy, PortMatch};

/// Where a flow comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Pod(PodId),
    /// An address (a pod's address is that pod).
    Ip(Ipv4Addr),
    /// The destination pod's own node.
    Host,
}

/// Where a flow goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Pod(PodId),
    /// An address (a pod's address is that pod).
    Ip(Ipv4Addr),
}

/// A flow's first packet: from, to, protocol and destination port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    pub source: Source,
    pub destination: Destination,
    pub protocol: Protocol,
    pub port: u16,
    /// The source port, if known (only global rules with `source.ports` look at it).
    pub source_port: Option<u16>,
}

impl Flow {
    pub fn new(source: Source, destination: Destination, protocol: Protocol, port: u16) -> Flow {
        Flow {
            source,
            destination,
            protocol,
            port,
            source_port: None,
        }
    }

    /// A flow from pod `from` to pod `to` (each "ns/name").
    pub fn pods(from: &PodId, to: &PodId, protocol: Protocol, port: u16) -> Flow {
        Flow::new(
            Source::Pod(from.clone()),
            Destination::Pod(to.clone()),
            protocol,
            port,
        )
    }
}

/// One end of the flow as the model saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "kind"
)]
pub enum End {
    /// A pod of the cluster (`ip`: the address the flow uses, its first).
    Pod {
        pod: String,
        node: String,
        ip: Option<Ipv4Addr>,
    },
    /// Named, but not in the cluster.
    UnknownPod { pod: String },
    /// An address no pod holds.
    Outside { ip: Ipv4Addr },
    /// The destination's own node.
    Host,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Pod {
                pod, ip: Some(ip), ..
            } => write!(f, "pod {pod} ({ip})"),
            End::Pod { pod, .. } => write!(f, "pod {pod} (no address)"),
            End::UnknownPod { pod } => write!(f, "pod {pod} (not in the store)"),
            End::Outside { ip } => write!(f, "{ip} (outside: no pod holds it)"),
            End::Host => write!(f, "the destination's own node"),
        }
    }
}

/// A rule of a policy: the policy's name (`ns/name` for a NetworkPolicy) and the rule's
/// index (0-based) in that direction's list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RuleRef {
    pub policy: String,
    pub rule: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}", self.policy, self.rule)
    }
}

/// What decided one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "kind"
)]
pub enum Reason {
    /// From the destination's own node: always allowed.
    FromOwnNode,
    /// A pod to itself never leaves it: allowed.
    ToItself,
    /// The judged pod is not in the cluster: denied.
    UnknownPod { pod: String },
    /// A global rule's `Allow` or `Deny`.
    GlobalRule {
        #[serde(flatten)]
        rule: RuleRef,
        action: Action,
    },
    /// Global policies applied, none decided or passed: denied.
    EndOfGlobalTier { applied: Vec<String> },
    /// No NetworkPolicy isolates the pod in this direction (and the global tier was
    /// skipped or passed): open.
    Open,
    /// Isolated by `selected_by`; these rules allow it (the first is the one named).
    AllowedBy {
        selected_by: Vec<String>,
        rules: Vec<RuleRef>,
    },
    /// Isolated by `selected_by`, and no rule of theirs allows it: denied.
    NoRuleAllows { selected_by: Vec<String> },
}

/// One direction, judged at one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub direction: PolicyType,
    /// The judged pod (`ns/name`).
    pub pod: String,
    pub allowed: bool,
    pub reason: Reason,
    /// The global policies that applied, in the order they were taken (up to the one
    /// that decided or passed).
    pub global_applied: Vec<String>,
    /// The `Log` rules that matched before the decision.
    pub logged: Vec<RuleRef>,
    /// The `Pass` rule that handed the decision to the namespaced policies, if any.
    pub passed: Option<RuleRef>,
}

/// The model's answer for one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub allowed: bool,
    pub source: End,
    pub destination: End,
    pub protocol: Protocol,
    pub port: u16,
    /// The source pod's egress (none: the source is not a pod, or the flow is a pod's to
    /// itself, judged in `ingress` alone).
    pub egress: Option<Verdict>,
    /// The destination pod's ingress (none: the destination is not a pod).
    pub ingress: Option<Verdict>,
}

impl Decision {
    /// Every `Log` rule the flow hit, egress first.
    pub fn logged(&self) -> impl Iterator<Item = &RuleRef> {
        self.egress
            .iter()
            .chain(self.ingress.iter())
            .flat_map(|v| v.logged.iter())
    }
}

/// One end, resolved against the cluster.
enum Resolved<'a> {
    Pod(&'a Pod),
    Unknown(PodId),
    Ip(Ipv4Addr),
    Host,
}

impl<'a> Resolved<'a> {
    fn pod(&self) -> Option<&'a Pod> {
        match self {
            Resolved::Pod(p) => Some(p),
            _ => None,
        }
    }
    fn addr(&self) -> Option<Ipv4Addr> {
        match self {
            Resolved::Pod(p) => p.ips().first().copied(),
            Resolved::Ip(ip) => Some(*ip),
            _ => None,
        }
    }
    fn end(&self) -> End {
        match self {
            Resolved::Pod(p) => End::Pod {
                pod: p.id().to_string(),
                node: p.node().to_string(),
                ip: p.ips().first().copied(),
            },
            Resolved::Unknown(id) => End::UnknownPod {
                pod: id.to_string(),
            },
            Resolved::Ip(ip) => End::Outside { ip: *ip },
            Resolved::Host => End::Host,
        }
    }
}

fn resolve_ip(cluster: &Cluster, ip: Ipv4Addr) -> Resolved<'_> {
    cluster
        .pod_by_ip(ip)
        .map(Resolved::Pod)
        .unwrap_or(Resolved::Ip(ip))
}

fn resolve_pod<'a>(cluster: &'a Cluster, id: &PodId) -> Resolved<'a> {
    cluster
        .pod(&id.namespace, &id.name)
        .map(Resolved::Pod)
        .unwrap_or_else(|| Resolved::Unknown(id.clone()))
}

/// The packet as a rule sees it, from the judged pod's side.
struct Packet<'a, 'b> {
    src: &'b Resolved<'a>,
    dst: &'b Resolved<'a>,
    protocol: Protocol,
    port: u16,
    source_port: Option<u16>,
}

/// Judges `flow` in `cluster`; see the module doc.
pub fn evaluate(cluster: &Cluster, flow: &Flow) -> Decision {
    let src = match &flow.source {
        Source::Pod(id) => resolve_pod(cluster, id),
        Source::Ip(ip) => resolve_ip(cluster, *ip),
        Source::Host => Resolved::Host,
    };
    let dst = match &flow.destination {
        Destination::Pod(id) => resolve_pod(cluster, id),
        Destination::Ip(ip) => resolve_ip(cluster, *ip),
    };
    let pkt = Packet {
        src: &src,
        dst: &dst,
        protocol: flow.protocol,
        port: flow.port,
        source_port: flow.source_port,
    };
    let to_itself =
        matches!((&src, &dst), (Resolved::Pod(a), Resolved::Pod(b)) if a.id() == b.id());
    let egress = match &src {
        _ if to_itself => None,
        Resolved::Pod(p) => Some(judge(cluster, p, PolicyType::Egress, &pkt)),
        Resolved::Unknown(id) => Some(unknown(id, PolicyType::Egress)),
        Resolved::Ip(_) | Resolved::Host => None,
    };
    let ingress = match &dst {
        Resolved::Pod(p) if to_itself => Some(fixed(p, Reason::ToItself)),
        Resolved::Pod(p) if matches!(src, Resolved::Host) => Some(fixed(p, Reason::FromOwnNode)),
        Resolved::Pod(p) => Some(judge(cluster, p, PolicyType::Ingress, &pkt)),
        Resolved::Unknown(id) => Some(unknown(id, PolicyType::Ingress)),
        Resolved::Ip(_) | Resolved::Host => None,
    };
    Decision {
        allowed: egress.iter().chain(ingress.iter()).all(|v| v.allowed),
        source: src.end(),
        destination: dst.end(),
        protocol: flow.protocol,
        port: flow.port,
        egress,
        ingress,
    }
}

fn fixed(pod: &Pod, reason: Reason) -> Verdict {
    Verdict {
        direction: PolicyType::Ingress,
        pod: pod.id().to_string(),
        allowed: true,
        reason,
        global_applied: Vec::new(),
        logged: Vec::new(),
        passed: None,
    }
}

fn unknown(id: &PodId, direction: PolicyType) -> Verdict {
    Verdict {
        direction,
        pod: id.to_string(),
        allowed: false,
        reason: Reason::UnknownPod {
            pod: id.to_string(),
        },
        global_applied: Vec::new(),
        logged: Vec::new(),
        passed: None,
    }
}

/// One direction at `pod`: the global tier, then the namespaced one.
fn judge(cluster: &Cluster, pod: &Pod, direction: PolicyType, pkt: &Packet) -> Verdict {
    let mut v = Verdict {
        direction,
        pod: pod.id().to_string(),
        allowed: false,
        reason: Reason::Open,
        global_applied: Vec::new(),
        logged: Vec::new(),
        passed: None,
    };
    for g in cluster.global_policies_selecting(pod, direction) {
        v.global_applied.push(g.name.clone());
        for (i, rule) in g.rules(direction).iter().enumerate() {
            if !global_rule_matches(cluster, rule, pkt) {
                continue;
            }
            let at = RuleRef {
                policy: g.name.clone(),
                rule: i,
            };
            match rule.action() {
                Action::Log => v.logged.push(at),
                Action::Pass => {
                    v.passed = Some(at);
                    break;
                }
                action @ (Action::Allow | Action::Deny) => {
                    v.allowed = action == Action::Allow;
                    v.reason = Reason::GlobalRule { rule: at, action };
                    return v;
                }
            }
        }
        if v.passed.is_some() {
            break;
        }
    }
    if !v.global_applied.is_empty() && v.passed.is_none() {
        v.reason = Reason::EndOfGlobalTier {
            applied: v.global_applied.clone(),
        };
        return v;
    }
    let selecting: Vec<&Policy> = cluster.policies_selecting(pod, direction).collect();
    if selecting.is_empty() {
        v.allowed = true;
        v.reason = Reason::Open;
        return v;
    }
    let rules: Vec<RuleRef> = selecting
        .iter()
        .flat_map(|p| allowing_rules(cluster, p, direction, pkt))
        .collect();
    let selected_by = selecting.iter().map(|p| p.to_string()).collect();
    v.allowed = !rules.is_empty();
    v.reason = if rules.is_empty() {
        Reason::NoRuleAllows { selected_by }
    } else {
        Reason::AllowedBy { selected_by, rules }
    };
    v
}

/// The rules of `policy` (which isolates the judged pod) that allow `pkt`.
fn allowing_rules(
    cluster: &Cluster,
    policy: &Policy,
    direction: PolicyType,
    pkt: &Packet,
) -> Vec<RuleRef> {
    let spec = &policy.spec;
    let (peer_end, dst_pod) = match direction {
        PolicyType::Ingress => (pkt.src, pkt.dst.pod()),
        PolicyType::Egress => (pkt.dst, pkt.dst.pod()),
    };
    let rules: Vec<(&[NetworkPolicyPeer], &[NetworkPolicyPort])> = match direction {
        PolicyType::Ingress => spec
            .ingress
            .iter()
            .map(|r| (&r.from[..], &r.ports[..]))
            .collect(),
        PolicyType::Egress => spec
            .egress
            .iter()
            .map(|r| (&r.to[..], &r.ports[..]))
            .collect(),
    };
    rules
        .into_iter()
        .enumerate()
        .filter(|(_, (peers, ports))| {
            (peers.is_empty()
                || peers
                    .iter()
                    .any(|p| peer_matches(cluster, policy, p, peer_end)))
                && (ports.is_empty()
                    || ports
                        .iter()
                        .any(|p| port_matches(p, pkt.protocol, pkt.port, dst_pod)))
        })
        .map(|(i, _)| RuleRef {
            policy: policy.to_string(),
            rule: i,
        })
        .collect()
}

/// Whether one NetworkPolicy peer matches the other end of the flow.
fn peer_matches(
    cluster: &Cluster,
    policy: &Policy,
    peer: &NetworkPolicyPeer,
    end: &Resolved,
) -> bool {
    if let Some(block) = &peer.ip_block {
        return end.addr().is_some_and(|a| ip_block_matches(block, a));
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return false;
    }
    let Some(pod) = end.pod() else { return false };
    let ns_ok = match &peer.namespace_selector {
        Some(sel) => cluster
            .known_namespace_labels(pod.namespace())
            .is_some_and(|l| sel.matches(l)),
        None => pod.namespace() == policy.namespace,
    };
    ns_ok
        && peer
            .pod_selector
            .as_ref()
            .is_none_or(|sel| sel.matches(&pod.labels))
}

/// `cidr` holds `addr` and no `except` does.
pub fn ip_block_matches(block: &IpBlock, addr: Ipv4Addr) -> bool {
    block.cidr.contains(&addr) && !block.except.iter().any(|e| e.contains(&addr))
}

/// Whether a NetworkPolicy port matches; named ports resolve on `dst_pod`.
pub fn port_matches(
    p: &NetworkPolicyPort,
    protocol: Protocol,
    port: u16,
    dst_pod: Option<&Pod>,
) -> bool {
    if p.protocol() != protocol {
        return false;
    }
    match &p.port {
        None => true,
        Some(PortRef::Number(n)) => match p.end_port {
            Some(end) => (*n..=end).contains(&port),
            None => *n == port,
        },
        Some(PortRef::Name(name)) => {
            dst_pod.and_then(|d| d.named_port(name, protocol)) == Some(port)
        }
    }
}

fn global_rule_matches(cluster: &Cluster, rule: &ParsedRule, pkt: &Packet) -> bool {
    let (source, destination) = (&rule.source, &rule.destination);
    let proto_ok = match rule.protocol() {
        None => true,
        Some(RuleProtocol::Ports(p)) => p == pkt.protocol,
        Some(RuleProtocol::Other(_)) => false,
    };
    proto_ok
        && entity_matches(cluster, source, pkt.src, pkt.source_port, pkt.protocol)
        && entity_matches(cluster, destination, pkt.dst, Some(pkt.port), pkt.protocol)
}

/// Whether one end of a global rule matches that end of the packet (`port`: that end's
/// port, if known).
fn entity_matches(
    cluster: &Cluster,
    e: &Entity,
    end: &Resolved,
    port: Option<u16>,
    protocol: Protocol,
) -> bool {
    let pod = end.pod();
    if !e.nets.is_empty()
        && !end
            .addr()
            .is_some_and(|a| e.nets.iter().any(|n| n.contains(&a)))
    {
        return false;
    }
    if end
        .addr()
        .is_some_and(|a| e.not_nets.iter().any(|n| n.contains(&a)))
    {
        return false;
    }
    if let Some(sel) = &e.selector {
        if !pod.is_some_and(|p| sel.matches(&p.calico_labels)) {
            return false;
        }
    }
    if let Some(sel) = &e.namespace_selector {
        let ns = pod.and_then(|p| cluster.known_namespace_labels(p.namespace()));
        if !ns.is_some_and(|l| sel.matches(l)) {
            return false;
        }
    }
    let hit = |m: &PortMatch| port.is_some_and(|n| m.matches(n, protocol, pod));
    (e.ports.is_empty() || e.ports.iter().any(hit)) && !e.not_ports.iter().any(hit)
}

#[cfg(test)]
mod tests;
