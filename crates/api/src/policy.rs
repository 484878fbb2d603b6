//! Network policy's vocabulary: pods as endpoints, namespaces with labels, Kubernetes'
//! `NetworkPolicy` and Calico's `GlobalNetworkPolicy`, as they live in the store (JSON
//! under `/twill/v1/`) and as users write them for `twill apply -f`.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `endpoints/<node>/<namespace>/<pod>` | [`Endpoint`] (bound to the node agent's lease) | `twilld`, from twill-cni's records |
//! | `podlabels/<namespace>/<pod>` | [`PodLabels`] (labels set by hand, over the runtime's) | `twill label pod` |
//! | `namespaces/<name>` | [`Namespace`] | `twill apply` (kind `Namespace`), `twill label ns` |
//! | `networkpolicies/<namespace>/<name>` | [`NetworkPolicySpec`] | `twill apply` (kind `NetworkPolicy`) |
//! | `globalnetworkpolicies/<name>` | [`GlobalNetworkPolicySpec`] | `twill apply` (kind `GlobalNetworkPolicy`) |
//!
//! Semantics (what the model in `twill-policy` evaluates and the dataplane compiles):
//! - **Global tier first.** Every [`GlobalNetworkPolicySpec`] whose `selector` (Calico
//!   syntax, over the pod's effective labels plus [`CALICO_NAMESPACE_LABEL`]) and
//!   `namespaceSelector` (over its namespace's labels) select the pod applies to it, in
//!   the direction(s) of its `types`; they are taken by ascending `order` (no order:
//!   after every ordered one), ties by name. Within a policy, rules in order. The first
//!   matching rule whose action is `Allow` or `Deny` decides; `Log` logs and goes on;
//!   `Pass` leaves the global tier and hands the decision to the namespaced policies. If
//!   at least one global policy applied to the pod in that direction and no rule decided
//!   or passed, the packet is denied (Calico's end-of-tier deny). If none applied, the
//!   tier is skipped.
//! - **Then Kubernetes' semantics.** A pod is open in a direction until a
//!   [`NetworkPolicySpec`] of its namespace selects it for that direction; then only
//!   what some rule of some selecting policy allows passes (allows add up; there is no
//!   deny). Replies to allowed traffic pass (conntrack established/related first).
//!   Traffic from the pod's own node (the host) to the pod is allowed.
//! - Ingress is judged at the destination pod, egress at the source pod: a flow between
//!   two pods passes when the source's egress and the destination's ingress both allow it.

use crate::bgp::{check_dns_name, check_labels, Selector};
use crate::cni::Protocol;
use crate::resources::Invalid;
use crate::wiring::PodWiring;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub const PREFIX_ENDPOINTS: &str = "endpoints/";
pub const PREFIX_POD_LABELS: &str = "podlabels/";
pub const PREFIX_NAMESPACES: &str = "namespaces/";
pub const PREFIX_NETWORK_POLICIES: &str = "networkpolicies/";
pub const PREFIX_GLOBAL_NETWORK_POLICIES: &str = "globalnetworkpolicies/";

/// Set on every namespace automatically, as Kubernetes does.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// What Calico selectors in a GlobalNetworkPolicy see as the pod's namespace (Calico's
/// own label for it), added to the pod's effective labels for them only.
pub const CALICO_NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// A pod with no namespace from its runtime (no `K8S_POD_NAMESPACE`) is in this one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `endpoints/<node>/<namespace>/<pod>`.
pub fn endpoint_key(node: &str, namespace: &str, pod: &str) -> String {
    format!("{PREFIX_ENDPOINTS}{node}/{namespace}/{pod}")
}
/// `podlabels/<namespace>/<pod>`.
pub fn pod_labels_key(namespace: &str, pod: &str) -> String {
    format!("{PREFIX_POD_LABELS}{namespace}/{pod}")
}
/// `namespaces/<name>`.
pub fn namespace_key(name: &str) -> String {
    format!("{PREFIX_NAMESPACES}{name}")
}
/// `networkpolicies/<namespace>/<name>`.
pub fn network_policy_key(namespace: &str, name: &str) -> String {
    format!("{PREFIX_NETWORK_POLICIES}{namespace}/{name}")
}
/// `globalnetworkpolicies/<name>`.
pub fn global_network_policy_key(name: &str) -> String {
    format!("{PREFIX_GLOBAL_NETWORK_POLICIES}{name}")
}

// ---- endpoints, pod labels, namespaces ----

/// One pod on one node, as its agent publishes it from twill-cni's record of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// The pod's interface on the node side (what the dataplane dispatches on).
    pub host_veth: String,
    pub ips: Vec<Ipv4Addr>,
    /// The pod's own MAC (the container side of the veth), "aa:bb:…".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub wiring: PodWiring,
    /// The labels its runtime gave it (CNI_ARGS or runtimeConfig); see
    /// [`effective_pod_labels`] for the ones policies match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its containers' named ports, which NetworkPolicy ports may name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

/// A container port with a name (Kubernetes' `containerPort` with `name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// Labels set by hand with `twill label pod NS/NAME k=v`; they win over the runtime's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodLabels {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A namespace's labels (kind `Namespace`); [`NAMESPACE_NAME_LABEL`] is added by
/// [`namespace_labels`], never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The labels policies match on a pod: its runtime's, overridden by `twill label pod`'s.
pub fn effective_pod_labels(
    endpoint: &Endpoint,
    by_hand: Option<&PodLabels>,
) -> BTreeMap<String, String> {
    let mut labels = endpoint.labels.clone();
    if let Some(h) = by_hand {
        labels.extend(h.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    labels
}

/// A namespace's labels as selectors see them: the stored ones (none if the namespace
/// was never applied or labelled) plus `kubernetes.io/metadata.name: <name>`.
pub fn namespace_labels(name: &str, stored: Option<&Namespace>) -> BTreeMap<String, String> {
    let mut labels = stored.map(|n| n.labels.clone()).unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    labels
}

// ---- Kubernetes NetworkPolicy (networking.k8s.io/v1) ----

/// Which direction a policy governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// Kubernetes' label selector: every `matchLabels` pair and every expression must hold;
/// an empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` are selected (Kubernetes' semantics: `NotIn` and `DoesNotExist`
    /// also hold for a missing key).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.operator {
                    SelectorOperator::In => v.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::NotIn => !v.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::Exists => v.is_some(),
                    SelectorOperator::DoesNotExist => v.is_none(),
                }
            })
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

/// `spec` of a `NetworkPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to (empty: all of them).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Empty: `[Ingress]`, plus `Egress` if `egress` has rules (Kubernetes' default);
    /// see [`NetworkPolicySpec::types`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<PolicyType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

impl NetworkPolicySpec {
    /// The directions this policy isolates the selected pods in.
    pub fn types(&self) -> Vec<PolicyType> {
        if !self.policy_types.is_empty() {
            let mut t = self.policy_types.clone();
            t.sort();
            t.dedup();
            return t;
        }
        let mut t = vec![PolicyType::Ingress];
        if !self.egress.is_empty() {
            t.push(PolicyType::Egress);
        }
        t
    }
}

/// One ingress rule: traffic from any of `from` (empty: from anywhere) to any of `ports`
/// (empty: every port) is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// One egress rule: traffic to any of `to` (empty: anywhere) on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// Exactly one of `ipBlock` or (`podSelector` and/or `namespaceSelector`):
/// - `podSelector` alone: those pods of the policy's own namespace;
/// - `namespaceSelector` alone: every pod of those namespaces;
/// - both: those pods of those namespaces;
/// - `ipBlock`: those addresses (pod addresses included), minus `except`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: Ipv4Net,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Ipv4Net>,
}

/// A port (or range `port..=endPort`) of a protocol (default TCP); no port: every port
/// of that protocol. A named port matches the destination pod's [`NamedPort`] of that
/// name and protocol (egress: the destination pod's, whoever it is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl NetworkPolicyPort {
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or(Protocol::Tcp)
    }
}

/// A port by number or by a container port's name (Kubernetes' IntOrString).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

// ---- Calico GlobalNetworkPolicy (projectcalico.org/v3) ----

/// What a rule does with the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    /// Log the packet (`twill policy log`) and go on to the next rule.
    Log,
    /// Leave the global tier: the namespaced policies decide.
    Pass,
}

/// `spec` of a `GlobalNetworkPolicy` (cluster-wide, ordered).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalNetworkPolicySpec {
    /// Lower first; none: after every ordered policy. Ties go by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Calico selector over pods' effective labels (plus [`CALICO_NAMESPACE_LABEL`]);
    /// empty: `all()`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Calico selector over the pod's namespace's labels; empty: every namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// Empty: `[Ingress]`, plus `Egress` if `egress` has rules (as Calico).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<GlobalRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<GlobalRule>,
}

impl GlobalNetworkPolicySpec {
    pub fn types(&self) -> Vec<PolicyType> {
        if !self.types.is_empty() {
            let mut t = self.types.clone();
            t.sort();
            t.dedup();
            return t;
        }
        let mut t = vec![PolicyType::Ingress];
        if !self.egress.is_empty() {
            t.push(PolicyType::Egress);
        }
        t
    }

    /// The parsed `selector` (`all()` when empty).
    pub fn selector(&self) -> Result<Selector, Invalid> {
        parse_calico_selector("spec.selector", &self.selector)
    }

    /// The parsed `namespaceSelector` (`all()` when empty).
    pub fn namespace_selector(&self) -> Result<Selector, Invalid> {
        parse_calico_selector("spec.namespaceSelector", &self.namespace_selector)
    }
}

/// One Calico rule: `action` for packets of `protocol` (none: any) from `source` to
/// `destination`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalRule {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<RuleProtocol>,
    #[serde(default, skip_serializing_if = "EntityRule::is_any")]
    pub source: EntityRule,
    #[serde(default, skip_serializing_if = "EntityRule::is_any")]
    pub destination: EntityRule,
}

/// A rule's protocol: a port-carrying one, or ICMP (Calico's `ICMP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RuleProtocol {
    Ports(Protocol),
    Other(OtherProtocol),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OtherProtocol {
    #[serde(rename = "ICMP", alias = "icmp")]
    Icmp,
}

/// One end of a Calico rule; every field given must hold (empty: anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<Ipv4Net>,
    /// Calico selector over pods (this end is a pod whose labels match).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Calico selector over namespaces (this end is a pod in a matching namespace).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// Ports: a number, a range `"80:90"`, or a named port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<PortRef>,
}

impl EntityRule {
    pub fn is_any(&self) -> bool {
        *self == EntityRule::default()
    }
}

/// A Calico selector field, `all()` when empty; the error names the field.
pub fn parse_calico_selector(field: &str, text: &str) -> Result<Selector, Invalid> {
    if text.trim().is_empty() {
        return Ok(Selector::All);
    }
    Selector::parse(text).map_err(|reason| crate::resources::invalid(field, reason))
}

/// Checks a pod's or namespace's name (a DNS label, as Kubernetes).
pub fn check_object_name(field: &str, name: &str) -> Result<(), Invalid> {
    check_dns_name(field, name)
}

/// Checks labels set on a pod or namespace.
pub fn check_object_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    check_labels(field, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_follows_kubernetes() {
        let sel: LabelSelector = serde_json::from_str(
            r#"{"matchLabels":{"pod":"a"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["db"]}]}"#,
        )
        .unwrap();
        assert!(sel.matches(&labels(&[("pod", "a")])));
        assert!(sel.matches(&labels(&[("pod", "a"), ("tier", "web")])));
        assert!(!sel.matches(&labels(&[("pod", "a"), ("tier", "db")])));
        assert!(!sel.matches(&labels(&[("pod", "b")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn policy_types_default_as_kubernetes() {
        let p: NetworkPolicySpec = serde_json::from_str(r#"{"podSelector":{}}"#).unwrap();
        assert_eq!(p.types(), vec![PolicyType::Ingress]);
        let p: NetworkPolicySpec =
            serde_json::from_str(r#"{"podSelector":{},"egress":[{}]}"#).unwrap();
        assert_eq!(p.types(), vec![PolicyType::Ingress, PolicyType::Egress]);
    }

    #[test]
    fn ports_by_number_or_name_and_protocols_in_capitals() {
        let p: NetworkPolicyPort =
            serde_json::from_str(r#"{"protocol":"UDP","port":"serve-81-udp"}"#).unwrap();
        assert_eq!(p.protocol(), Protocol::Udp);
        assert_eq!(p.port, Some(PortRef::Name("serve-81-udp".into())));
        let p: NetworkPolicyPort = serde_json::from_str(r#"{"port":80,"endPort":90}"#).unwrap();
        assert_eq!(p.protocol(), Protocol::Tcp);
        assert_eq!(p.port, Some(PortRef::Number(80)));
        let r: GlobalRule = serde_json::from_str(r#"{"action":"Deny","protocol":"ICMP"}"#).unwrap();
        assert_eq!(r.protocol, Some(RuleProtocol::Other(OtherProtocol::Icmp)));
    }

    #[test]
    fn namespaces_always_carry_their_name() {
        let l = namespace_labels("x", None);
        assert_eq!(l.get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("x"));
    }
}
