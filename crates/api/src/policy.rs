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

/// The directions a policy governs: the ones it names (sorted, once each) or, when it
/// names none, Ingress plus Egress if it has egress rules (Kubernetes' and Calico's
/// default alike).
fn effective_types(named: &[PolicyType], has_egress_rules: bool) -> Vec<PolicyType> {
    let mut t = named.to_vec();
    if t.is_empty() {
        t.push(PolicyType::Ingress);
        if has_egress_rules {
            t.push(PolicyType::Egress);
        }
    }
    t.sort();
    t.dedup();
    t
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
        effective_types(&self.policy_types, !self.egress.is_empty())
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

/// A port by number or by a container port's name (Kubernetes' IntOrString). Read from
/// a number (0..=65535, else an error saying so) or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number (1 to 65535) or a port name")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<PortRef, E> {
                u16::try_from(n).map(PortRef::Number).map_err(|_| {
                    E::custom(format!("{n} is not a port: use 1 to 65535, or a port name"))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<PortRef, E> {
                u64::try_from(n)
                    .map_err(|_| {
                        E::custom(format!("{n} is not a port: use 1 to 65535, or a port name"))
                    })
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PortRef, E> {
                Ok(PortRef::Name(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
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
        effective_types(&self.types, !self.egress.is_empty())
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

// ---- validation: every bad field named by its path, with the fix ----

/// A namespace's name: a DNS label (1 to 63 lower-case letters, digits and '-', starting
/// and ending with a letter or digit; no dots), as Kubernetes.
pub fn check_namespace_name(field: &str, name: &str) -> Result<(), Invalid> {
    check_dns_name(field, name)?;
    if name.contains('.') || name.len() > 63 {
        return Err(crate::resources::invalid(
            field,
            format!("{name:?} is not a valid namespace name: a namespace is a DNS label, 1 to 63 lower-case letters, digits and '-' with no '.'"),
        ));
    }
    Ok(())
}

/// A port name as Kubernetes takes them (an IANA_SVC_NAME): 1 to 15 lower-case letters,
/// digits and '-', at least one letter, starting and ending with a letter or digit, no
/// "--".
pub fn check_port_name(field: &str, name: &str) -> Result<(), Invalid> {
    let why = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > 15 {
        Some(format!("{} characters, at most 15", name.len()))
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        Some(format!(
            "{c:?} is not allowed (lower-case letters, digits and '-')"
        ))
    } else if !name.chars().any(|c| c.is_ascii_lowercase()) {
        Some("it needs at least one letter (for a port number, write it without quotes)".into())
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("it must start and end with a letter or digit".into())
    } else if name.contains("--") {
        Some("\"--\" is not allowed".into())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(crate::resources::invalid(
            field,
            format!("{name:?} is not a port name: {why}; a named port is 1 to 15 lower-case letters, digits and '-' (e.g. http, serve-80-tcp), or give the number"),
        )),
    }
}

fn bad(field: impl AsRef<str>, reason: impl Into<String>) -> Invalid {
    crate::resources::invalid(field.as_ref(), reason)
}

/// A CIDR of a rule: no host bits (the fix named).
fn check_net(field: &str, net: &Ipv4Net) -> Result<(), Invalid> {
    if net.trunc() != *net {
        return Err(bad(
            field,
            format!("{net} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(())
}

fn check_types(field: &str, types: &[PolicyType]) -> Result<(), Invalid> {
    for (i, t) in types.iter().enumerate() {
        if types[..i].contains(t) {
            return Err(bad(
                format!("{field}[{i}]"),
                format!("{t:?} is listed twice; list each of Ingress and Egress at most once"),
            ));
        }
    }
    Ok(())
}

impl LabelSelector {
    /// Kubernetes' rules: keys and values are label keys and values; `In` and `NotIn`
    /// need values, `Exists` and `DoesNotExist` take none. `field` is the selector's path.
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        check_labels(&format!("{field}.matchLabels"), &self.match_labels)?;
        for (i, r) in self.match_expressions.iter().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            crate::bgp::check_label_key(&format!("{f}.key"), &r.key)?;
            match r.operator {
                SelectorOperator::In | SelectorOperator::NotIn if r.values.is_empty() => {
                    return Err(bad(
                        format!("{f}.values"),
                        format!("operator {:?} needs values; list at least one (or use Exists/DoesNotExist)", r.operator),
                    ))
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist
                    if !r.values.is_empty() =>
                {
                    return Err(bad(
                        format!("{f}.values"),
                        format!("operator {:?} takes no values; remove them (or use In/NotIn)", r.operator),
                    ))
                }
                _ => {}
            }
            for (j, v) in r.values.iter().enumerate() {
                crate::bgp::check_label_value(&format!("{f}.values[{j}]"), v)?;
            }
        }
        Ok(())
    }
}

impl NetworkPolicyPeer {
    /// `field` is the peer's path (`spec.ingress[0].from[1]`).
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        let selectors = self.pod_selector.is_some() || self.namespace_selector.is_some();
        match (&self.ip_block, selectors) {
            (None, false) => {
                return Err(bad(
                    field,
                    "a peer needs podSelector and/or namespaceSelector, or ipBlock; give one (an empty podSelector: {} is every pod of the namespace)",
                ))
            }
            (Some(_), true) => {
                return Err(bad(
                    format!("{field}.ipBlock"),
                    "ipBlock excludes podSelector and namespaceSelector in one peer; put it in a peer of its own (a separate list item)",
                ))
            }
            _ => {}
        }
        if let Some(s) = &self.pod_selector {
            s.validate(&format!("{field}.podSelector"))?;
        }
        if let Some(s) = &self.namespace_selector {
            s.validate(&format!("{field}.namespaceSelector"))?;
        }
        if let Some(b) = &self.ip_block {
            let f = format!("{field}.ipBlock");
            check_net(&format!("{f}.cidr"), &b.cidr)?;
            for (i, e) in b.except.iter().enumerate() {
                let fe = format!("{f}.except[{i}]");
                check_net(&fe, e)?;
                if !(b.cidr.contains(e) && e.prefix_len() > b.cidr.prefix_len()) {
                    return Err(bad(
                        fe,
                        format!("{e} is not strictly inside cidr {}; except lists parts of the cidr, each smaller than it", b.cidr),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl NetworkPolicyPort {
    /// Kubernetes' rules: a port number 1..=65535 or a port name; `endPort` only with a
    /// numeric `port`, and at least it. `field` is the port's path.
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        match &self.port {
            Some(PortRef::Number(0)) => return Err(bad(
                format!("{field}.port"),
                "0 is not a port: use 1 to 65535, a port name, or leave port out for every port",
            )),
            Some(PortRef::Name(n)) => check_port_name(&format!("{field}.port"), n)?,
            _ => {}
        }
        if let Some(end) = self.end_port {
            let fe = format!("{field}.endPort");
            match &self.port {
                None => {
                    return Err(bad(
                        fe,
                        "endPort needs a port to start from; add port (a number)",
                    ))
                }
                Some(PortRef::Name(n)) => {
                    return Err(bad(
                        fe,
                        format!("endPort needs a numeric port, not the named port {n:?}; give port as a number or remove endPort"),
                    ))
                }
                Some(PortRef::Number(p)) if end < *p => {
                    return Err(bad(
                        fe,
                        format!("{end} is below port {p}; endPort must be at least port"),
                    ))
                }
                Some(PortRef::Number(_)) => {}
            }
        }
        Ok(())
    }
}

impl NetworkPolicySpec {
    /// Kubernetes' validation of a NetworkPolicy's spec; paths start at `spec.`.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.pod_selector.validate("spec.podSelector")?;
        check_types("spec.policyTypes", &self.policy_types)?;
        let rules = self
            .ingress
            .iter()
            .map(|r| (&r.from, &r.ports))
            .enumerate()
            .map(|(i, r)| (format!("spec.ingress[{i}]"), "from", r))
            .chain(
                self.egress
                    .iter()
                    .map(|r| (&r.to, &r.ports))
                    .enumerate()
                    .map(|(i, r)| (format!("spec.egress[{i}]"), "to", r)),
            );
        for (f, peers_name, (peers, ports)) in rules {
            for (j, p) in peers.iter().enumerate() {
                p.validate(&format!("{f}.{peers_name}[{j}]"))?;
            }
            for (j, p) in ports.iter().enumerate() {
                p.validate(&format!("{f}.ports[{j}]"))?;
            }
        }
        Ok(())
    }
}

impl Namespace {
    /// The name is a DNS label and the labels are valid; `kubernetes.io/metadata.name`
    /// may only say the namespace's own name (it is set automatically).
    pub fn validate(&self, name: &str) -> Result<(), Invalid> {
        check_namespace_name("metadata.name", name)?;
        check_labels("metadata.labels", &self.labels)?;
        if let Some(v) = self.labels.get(NAMESPACE_NAME_LABEL) {
            if v != name {
                return Err(bad(
                    format!("metadata.labels.{NAMESPACE_NAME_LABEL}"),
                    format!("{v:?} is not the namespace's name {name:?}: this label is set automatically to the name; remove it"),
                ));
            }
        }
        Ok(())
    }
}

/// A Calico port spec: a number, `"a:b"` with a <= b, or a port name.
fn check_calico_port(field: &str, p: &PortRef) -> Result<(), Invalid> {
    match p {
        PortRef::Number(0) => Err(bad(field, "0 is not a port: use 1 to 65535")),
        PortRef::Number(_) => Ok(()),
        PortRef::Name(s) => match s.split_once(':') {
            Some((a, b)) => {
                let num = |x: &str| x.trim().parse::<u16>().ok().filter(|n| *n > 0);
                match (num(a), num(b)) {
                    (Some(a), Some(b)) if a <= b => Ok(()),
                    (Some(a), Some(b)) => Err(bad(
                        field,
                        format!("{s:?}: the range starts after it ends; write \"{b}:{a}\""),
                    )),
                    _ => Err(bad(
                        field,
                        format!("{s:?} is not a port range: write \"first:last\" with ports 1 to 65535 (e.g. \"8080:8090\")"),
                    )),
                }
            }
            None => check_port_name(field, s),
        },
    }
}

impl EntityRule {
    /// `field` is the end's path (`spec.ingress[0].source`); `proto_ok` whether the rule's
    /// protocol carries ports.
    pub fn validate(&self, field: &str, proto_ok: bool) -> Result<(), Invalid> {
        for (name, nets) in [("nets", &self.nets), ("notNets", &self.not_nets)] {
            for (i, n) in nets.iter().enumerate() {
                check_net(&format!("{field}.{name}[{i}]"), n)?;
            }
        }
        parse_calico_selector(&format!("{field}.selector"), &self.selector)?;
        parse_calico_selector(
            &format!("{field}.namespaceSelector"),
            &self.namespace_selector,
        )?;
        for (name, ports) in [("ports", &self.ports), ("notPorts", &self.not_ports)] {
            if !ports.is_empty() && !proto_ok {
                return Err(bad(
                    format!("{field}.{name}"),
                    "ports need the rule's protocol to be TCP, UDP or SCTP; add protocol: TCP (or UDP, SCTP)",
                ));
            }
            for (i, p) in ports.iter().enumerate() {
                check_calico_port(&format!("{field}.{name}[{i}]"), p)?;
            }
        }
        Ok(())
    }

    /// Ports written as strings of digits ("80") are numbers, as Calico reads them.
    pub fn normalize(&mut self) {
        for p in self.ports.iter_mut().chain(self.not_ports.iter_mut()) {
            if let PortRef::Name(s) = p {
                if let Ok(n) = s.trim().parse::<u16>() {
                    *p = PortRef::Number(n);
                }
            }
        }
    }
}

impl GlobalNetworkPolicySpec {
    /// Calico's validation: selectors parse (the error says at which column), order is a
    /// finite number, rules' nets, selectors and ports hold; paths start at `spec.`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(o) = self.order {
            if !o.is_finite() {
                return Err(bad(
                    "spec.order",
                    format!("{o} is not a finite number; give a number (lower goes first) or leave order out (last)"),
                ));
            }
        }
        self.selector()?;
        self.namespace_selector()?;
        check_types("spec.types", &self.types)?;
        for (dir, rules) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            for (i, r) in rules.iter().enumerate() {
                let f = format!("spec.{dir}[{i}]");
                let ports_ok = matches!(r.protocol, Some(RuleProtocol::Ports(_)));
                r.source.validate(&format!("{f}.source"), ports_ok)?;
                r.destination
                    .validate(&format!("{f}.destination"), ports_ok)?;
            }
        }
        Ok(())
    }

    /// See [`EntityRule::normalize`].
    pub fn normalize(&mut self) {
        for r in self.ingress.iter_mut().chain(self.egress.iter_mut()) {
            r.source.normalize();
            r.destination.normalize();
        }
    }
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
