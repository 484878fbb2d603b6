//! The cluster as policy sees it: a pure snapshot of the store's endpoints, pod labels,
//! namespaces, NetworkPolicies and GlobalNetworkPolicies (the keys of
//! [`twill_api::policy`]), kept up to date one watch event at a time.
//!
//! - **Built from the store.** [`Cluster::from_entries`] takes the key/value pairs a
//!   `list` returns under each of [`PREFIXES`]; [`Cluster::apply`] takes one watch
//!   event (`Some(value)` for a put, `None` for a delete), so twilld keeps one `Cluster`
//!   per node up to date per event and learns from the returned [`Change`] what moved.
//!   Keys are relative to `/twill/v1/` (`endpoints/n1/x/a`); a key as the store hands
//!   it, with `/twill/v1/` in front, is read the same way. Keys under other
//!   prefixes are ignored (`apply` returns `None`).
//! - **Never a panic on bad input.** An entry whose key has the wrong shape or whose value
//!   does not parse (JSON, a Calico selector or port of a global policy, an endpoint
//!   whose value names another pod than its key) is left out and reported in
//!   [`Cluster::problems`] (key and why); a later good put or a delete of that key clears
//!   its problem. Policies and namespaces must also pass the validation `twill apply`
//!   makes (`validate()` in [`twill_api::policy`]), so the model sees exactly what apply
//!   would accept. A left-out entry is as if absent (a bad policy selects nothing).
//! - **Endpoints** ([`Pod`]): one per `endpoints/<node>/<ns>/<pod>` key, with its
//!   effective labels ([`effective_pod_labels`]: the runtime's, overridden by
//!   `podlabels/<ns>/<pod>`) and the same plus [`CALICO_NAMESPACE_LABEL`] for Calico
//!   selectors. Lookups: [`Cluster::pod`] by namespace/name, [`Cluster::pod_by_ip`] by
//!   address, [`Cluster::pods`] all (sorted by namespace, name, node), and
//!   [`Pod::named_port`] / [`Pod::resolve_port`] for named ports.
//! - **Namespaces** ([`Cluster::namespace_labels`]): every namespace stored under
//!   `namespaces/` and every namespace a pod is in exists, with its labels as selectors
//!   see them ([`namespace_labels`]: stored ones plus `kubernetes.io/metadata.name`).
//! - **NetworkPolicies** ([`Policy`]) sorted by namespace then name;
//!   **GlobalNetworkPolicies** ([`GlobalPolicy`]) sorted by `(order, name)` (no order:
//!   after every ordered one) with every selector and port parsed.
//! - **Who selects a pod**: [`Cluster::policies_selecting`] (the namespaced policies of
//!   the pod's namespace whose `podSelector` selects it and whose types include that
//!   direction, by name) and [`Cluster::global_policies_selecting`] (the global ones
//!   whose `selector` and `namespaceSelector` select it and whose types include that
//!   direction, in evaluation order).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use twill_api::bgp::Selector;
use twill_api::cni::Protocol;
use twill_api::policy::{
    effective_pod_labels, namespace_labels, parse_calico_selector, Action, Endpoint, EntityRule,
    GlobalNetworkPolicySpec, GlobalRule, Namespace, NetworkPolicySpec, PodLabels, PolicyType,
    PortRef, RuleProtocol, CALICO_NAMESPACE_LABEL, PREFIX_ENDPOINTS,
    PREFIX_GLOBAL_NETWORK_POLICIES, PREFIX_NAMESPACES, PREFIX_NETWORK_POLICIES, PREFIX_POD_LABELS,
};

/// The store prefixes a [`Cluster`] is built from (list each, watch each).
pub const PREFIXES: [&str; 5] = [
    PREFIX_ENDPOINTS,
    PREFIX_POD_LABELS,
    PREFIX_NAMESPACES,
    PREFIX_NETWORK_POLICIES,
    PREFIX_GLOBAL_NETWORK_POLICIES,
];

/// The store's own prefix, stripped from keys that still carry it.
const STORE_PREFIX: &str = "/twill/v1/";

/// An entry left out of the cluster: its key (relative to `/twill/v1/`) and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub key: String,
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.why)
    }
}

/// What one [`Cluster::apply`] touched (so an incremental consumer knows what to redo).
/// It is returned for every key under [`PREFIXES`], even when the entry was bad (then it
/// is now absent) or the value did not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `endpoints/<node>/<namespace>/<pod>`.
    Endpoint {
        node: String,
        namespace: String,
        pod: String,
    },
    /// `podlabels/<namespace>/<pod>`: the labels of every endpoint of that pod changed.
    PodLabels { namespace: String, pod: String },
    /// `namespaces/<name>`.
    Namespace(String),
    /// `networkpolicies/<namespace>/<name>`.
    Policy { namespace: String, name: String },
    /// `globalnetworkpolicies/<name>`.
    GlobalPolicy(String),
    /// A key under one of [`PREFIXES`] of the wrong shape (reported in the problems;
    /// nothing else changed).
    BadKey(String),
}

/// A pod's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
}

impl PodId {
    pub fn new(namespace: &str, name: &str) -> PodId {
        PodId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One endpoint (a pod on a node) with the labels policies match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub endpoint: Endpoint,
    /// Effective labels: the runtime's, overridden by `twill label pod`'s.
    pub labels: BTreeMap<String, String>,
    /// `labels` plus [`CALICO_NAMESPACE_LABEL`]: what Calico selectors see.
    pub calico_labels: BTreeMap<String, String>,
}

impl Pod {
    fn new(endpoint: Endpoint, by_hand: Option<&PodLabels>) -> Pod {
        let labels = effective_pod_labels(&endpoint, by_hand);
        let mut calico_labels = labels.clone();
        calico_labels.insert(
            CALICO_NAMESPACE_LABEL.to_string(),
            endpoint.namespace.clone(),
        );
        Pod {
            endpoint,
            labels,
            calico_labels,
        }
    }

    pub fn id(&self) -> PodId {
        PodId::new(&self.endpoint.namespace, &self.endpoint.pod)
    }
    pub fn namespace(&self) -> &str {
        &self.endpoint.namespace
    }
    pub fn name(&self) -> &str {
        &self.endpoint.pod
    }
    pub fn node(&self) -> &str {
        &self.endpoint.node
    }
    pub fn ips(&self) -> &[Ipv4Addr] {
        &self.endpoint.ips
    }

    /// The number of the pod's container port named `name` for `protocol`, if it has one.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.endpoint
            .named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// A NetworkPolicy port on this pod: a number is itself, a name is this pod's
    /// container port of that name and protocol (none: it matches nothing here).
    pub fn resolve_port(&self, port: &PortRef, protocol: Protocol) -> Option<u16> {
        match port {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => self.named_port(name, protocol),
        }
    }
}

/// One NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub spec: NetworkPolicySpec,
    /// [`NetworkPolicySpec::types`], computed once.
    pub types: Vec<PolicyType>,
}

impl Policy {
    pub fn new(namespace: &str, name: &str, spec: NetworkPolicySpec) -> Policy {
        let types = spec.types();
        Policy {
            namespace: namespace.into(),
            name: name.into(),
            spec,
            types,
        }
    }

    /// Whether its `podSelector` selects `pod` (a pod of its namespace), whatever the
    /// direction.
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace() == self.namespace && self.spec.pod_selector.matches(&pod.labels)
    }

    /// Whether it isolates `pod` in `direction` (selects it and has that type).
    pub fn isolates(&self, pod: &Pod, direction: PolicyType) -> bool {
        self.types.contains(&direction) && self.selects(pod)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Calico rule's port: a number or range, or a named port (resolved on the pod at
/// that end of the rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortMatch {
    Range(u16, u16),
    Named(String),
}

impl PortMatch {
    /// `80`, `"80"`, `"80:90"` or a name (Calico's syntax).
    pub fn parse(port: &PortRef) -> Result<PortMatch, String> {
        let text = match port {
            PortRef::Number(n) => return Ok(PortMatch::Range(*n, *n)),
            PortRef::Name(s) => s.trim(),
        };
        let num = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| format!("port {text:?}: {s:?} is not a port number (0-65535)"))
        };
        if let Some((a, b)) = text.split_once(':') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("port range {text:?} ends before it starts"));
            }
            return Ok(PortMatch::Range(a, b));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
            let n = num(text)?;
            return Ok(PortMatch::Range(n, n));
        }
        let ok = !text.is_empty()
            && text.len() <= 15
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && text.bytes().any(|b| b.is_ascii_lowercase());
        if !ok {
            return Err(format!(
                "port {text:?} is neither a number, a range \"a:b\" nor a port name"
            ));
        }
        Ok(PortMatch::Named(text.to_string()))
    }

    /// Whether `port` matches, with named ports resolved on `pod` (none: a named port
    /// matches nothing).
    pub fn matches(&self, port: u16, protocol: Protocol, pod: Option<&Pod>) -> bool {
        match self {
            PortMatch::Range(a, b) => (*a..=*b).contains(&port),
            PortMatch::Named(name) => pod.and_then(|p| p.named_port(name, protocol)) == Some(port),
        }
    }
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMatch::Range(a, b) if a == b => write!(f, "{a}"),
            PortMatch::Range(a, b) => write!(f, "{a}:{b}"),
            PortMatch::Named(n) => f.write_str(n),
        }
    }
}

/// One end of a global rule, parsed (`None`: that field was empty, anything matches).
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub nets: Vec<Ipv4Net>,
    pub not_nets: Vec<Ipv4Net>,
    pub selector: Option<Selector>,
    pub namespace_selector: Option<Selector>,
    pub ports: Vec<PortMatch>,
    pub not_ports: Vec<PortMatch>,
}

impl Entity {
    fn parse(field: &str, e: &EntityRule) -> Result<Entity, String> {
        let sel = |name: &str, text: &str| -> Result<Option<Selector>, String> {
            if text.trim().is_empty() {
                return Ok(None);
            }
            parse_calico_selector(&format!("{field}.{name}"), text)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        let ports = |name: &str, list: &[PortRef]| -> Result<Vec<PortMatch>, String> {
            list.iter()
                .map(|p| PortMatch::parse(p).map_err(|why| format!("{field}.{name}: {why}")))
                .collect()
        };
        Ok(Entity {
            nets: e.nets.clone(),
            not_nets: e.not_nets.clone(),
            selector: sel("selector", &e.selector)?,
            namespace_selector: sel("namespaceSelector", &e.namespace_selector)?,
            ports: ports("ports", &e.ports)?,
            not_ports: ports("notPorts", &e.not_ports)?,
        })
    }
}

/// One global rule with both ends parsed (`rule` is the rule as written).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRule {
    pub rule: GlobalRule,
    pub source: Entity,
    pub destination: Entity,
}

impl ParsedRule {
    pub fn action(&self) -> Action {
        self.rule.action
    }
    pub fn protocol(&self) -> Option<RuleProtocol> {
        self.rule.protocol
    }
}

/// One GlobalNetworkPolicy with its selectors, rules and ports parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalPolicy {
    pub name: String,
    pub spec: GlobalNetworkPolicySpec,
    /// [`GlobalNetworkPolicySpec::types`], computed once.
    pub types: Vec<PolicyType>,
    pub selector: Selector,
    pub namespace_selector: Selector,
    pub ingress: Vec<ParsedRule>,
    pub egress: Vec<ParsedRule>,
}

impl GlobalPolicy {
    /// Parses every selector and port; the error names the field.
    pub fn new(name: &str, spec: GlobalNetworkPolicySpec) -> Result<GlobalPolicy, String> {
        if spec.order.is_some_and(|o| !o.is_finite()) {
            return Err("spec.order: must be a finite number".into());
        }
        let selector = spec.selector().map_err(|e| e.to_string())?;
        let namespace_selector = spec.namespace_selector().map_err(|e| e.to_string())?;
        let rules = |dir: &str, rules: &[GlobalRule]| -> Result<Vec<ParsedRule>, String> {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Ok(ParsedRule {
                        rule: r.clone(),
                        source: Entity::parse(&format!("spec.{dir}[{i}].source"), &r.source)?,
                        destination: Entity::parse(
                            &format!("spec.{dir}[{i}].destination"),
                            &r.destination,
                        )?,
                    })
                })
                .collect()
        };
        Ok(GlobalPolicy {
            name: name.into(),
            types: spec.types(),
            selector,
            namespace_selector,
            ingress: rules("ingress", &spec.ingress)?,
            egress: rules("egress", &spec.egress)?,
            spec,
        })
    }

    /// Whether it applies to `pod` (in a namespace with `ns_labels`), whatever the
    /// direction.
    pub fn selects(&self, pod: &Pod, ns_labels: &BTreeMap<String, String>) -> bool {
        self.selector.matches(&pod.calico_labels) && self.namespace_selector.matches(ns_labels)
    }

    /// The rules of one direction.
    pub fn rules(&self, direction: PolicyType) -> &[ParsedRule] {
        match direction {
            PolicyType::Ingress => &self.ingress,
            PolicyType::Egress => &self.egress,
        }
    }

    /// Evaluation order: ascending `order` (none last), then name.
    pub fn eval_cmp(&self, other: &GlobalPolicy) -> Ordering {
        let key = |p: &GlobalPolicy| (p.spec.order.is_none(), p.spec.order.unwrap_or(0.0));
        let (a, b) = (key(self), key(other));
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then_with(|| self.name.cmp(&other.name))
    }
}

/// A namespace: its stored object (if any) and how many endpoints are in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamespaceEntry {
    stored: Option<Namespace>,
    endpoints: usize,
    labels: BTreeMap<String, String>,
}

/// The pure snapshot; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// By (namespace, pod, node).
    endpoints: BTreeMap<(String, String, String), Pod>,
    by_ip: BTreeMap<Ipv4Addr, BTreeSet<(String, String, String)>>,
    /// Node → its endpoints' keys: a node's own pods without a walk over the cluster.
    by_node: BTreeMap<String, BTreeSet<(String, String, String)>>,
    pod_labels: BTreeMap<PodId, PodLabels>,
    namespaces: BTreeMap<String, NamespaceEntry>,
    policies: BTreeMap<(String, String), Policy>,
    /// By name; `globals_ordered` holds the names in evaluation order.
    globals: BTreeMap<String, GlobalPolicy>,
    globals_ordered: Vec<String>,
    problems: BTreeMap<String, Problem>,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::default()
    }

    /// The cluster from the entries a store `list` gave under [`PREFIXES`] (in any
    /// order; other keys are ignored).
    pub fn from_entries<'a, I, K, V>(entries: I) -> Cluster
    where
        I: IntoIterator<Item = (&'a K, &'a V)>,
        K: AsRef<str> + ?Sized + 'a,
        V: AsRef<[u8]> + ?Sized + 'a,
    {
        let mut c = Cluster::new();
        for (k, v) in entries {
            c.apply(k.as_ref(), Some(v.as_ref()));
        }
        c
    }

    /// One watch event: `Some(value)` for a put, `None` for a delete. Returns what it
    /// touched, or `None` for a key outside [`PREFIXES`]. A bad entry is removed (as if
    /// deleted) and reported in [`Cluster::problems`].
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Option<Change> {
        let rel = key.strip_prefix(STORE_PREFIX).unwrap_or(key);
        let (change, result) = if let Some(rest) = rel.strip_prefix(PREFIX_ENDPOINTS) {
            let parts = split_key(rest, 3);
            let Some([node, ns, pod]) = parts.as_deref() else {
                return Some(self.bad_key(rel, "endpoints/<node>/<namespace>/<pod>"));
            };
            let change = Change::Endpoint {
                node: node.clone(),
                namespace: ns.clone(),
                pod: pod.clone(),
            };
            (change, self.apply_endpoint(node, ns, pod, value))
        } else if let Some(rest) = rel.strip_prefix(PREFIX_POD_LABELS) {
            let parts = split_key(rest, 2);
            let Some([ns, pod]) = parts.as_deref() else {
                return Some(self.bad_key(rel, "podlabels/<namespace>/<pod>"));
            };
            let change = Change::PodLabels {
                namespace: ns.clone(),
                pod: pod.clone(),
            };
            (change, self.apply_pod_labels(ns, pod, value))
        } else if let Some(rest) = rel.strip_prefix(PREFIX_NAMESPACES) {
            let parts = split_key(rest, 1);
            let Some([name]) = parts.as_deref() else {
                return Some(self.bad_key(rel, "namespaces/<name>"));
            };
            (
                Change::Namespace(name.clone()),
                self.apply_namespace(name, value),
            )
        } else if let Some(rest) = rel.strip_prefix(PREFIX_NETWORK_POLICIES) {
            let parts = split_key(rest, 2);
            let Some([ns, name]) = parts.as_deref() else {
                return Some(self.bad_key(rel, "networkpolicies/<namespace>/<name>"));
            };
            let change = Change::Policy {
                namespace: ns.clone(),
                name: name.clone(),
            };
            (change, self.apply_policy(ns, name, value))
        } else if let Some(rest) = rel.strip_prefix(PREFIX_GLOBAL_NETWORK_POLICIES) {
            let parts = split_key(rest, 1);
            let Some([name]) = parts.as_deref() else {
                return Some(self.bad_key(rel, "globalnetworkpolicies/<name>"));
            };
            (
                Change::GlobalPolicy(name.clone()),
                self.apply_global(name, value),
            )
        } else {
            return None;
        };
        match result {
            Ok(()) => {
                self.problems.remove(rel);
            }
            Err(why) => {
                self.problems.insert(
                    rel.to_string(),
                    Problem {
                        key: rel.to_string(),
                        why: format!("{why}: left out"),
                    },
                );
            }
        }
        Some(change)
    }

    /// [`Cluster::apply`] of a put with a typed value (as the store would hold it in
    /// JSON), for tests and tools that build a cluster by hand.
    pub fn put<T: serde::Serialize>(&mut self, key: &str, value: &T) -> Option<Change> {
        let bytes = serde_json::to_vec(value).expect("policy types serialize to JSON");
        self.apply(key, Some(&bytes))
    }

    fn bad_key(&mut self, rel: &str, shape: &str) -> Change {
        let why = format!("a key of this kind has the shape {shape}: left out");
        self.problems.insert(
            rel.to_string(),
            Problem {
                key: rel.to_string(),
                why,
            },
        );
        Change::BadKey(rel.to_string())
    }

    fn apply_endpoint(
        &mut self,
        node: &str,
        ns: &str,
        pod: &str,
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let id = (ns.to_string(), pod.to_string(), node.to_string());
        self.remove_endpoint(&id);
        let Some(value) = value else { return Ok(()) };
        let ep: Endpoint = parse_json(value, "Endpoint")?;
        if (ep.node.as_str(), ep.namespace.as_str(), ep.pod.as_str()) != (node, ns, pod) {
            return Err(format!(
                "its value is the endpoint of pod {}/{} on node {}, not the one its key names",
                ep.namespace, ep.pod, ep.node
            ));
        }
        let p = Pod::new(ep, self.pod_labels.get(&PodId::new(ns, pod)));
        for ip in p.ips() {
            self.by_ip.entry(*ip).or_default().insert(id.clone());
        }
        self.namespace_entry(ns).endpoints += 1;
        self.by_node
            .entry(node.to_string())
            .or_default()
            .insert(id.clone());
        self.endpoints.insert(id, p);
        Ok(())
    }

    fn remove_endpoint(&mut self, id: &(String, String, String)) {
        let Some(old) = self.endpoints.remove(id) else {
            return;
        };
        if let Some(set) = self.by_node.get_mut(&id.2) {
            set.remove(id);
            if set.is_empty() {
                self.by_node.remove(&id.2);
            }
        }
        for ip in old.ips() {
            if let Some(set) = self.by_ip.get_mut(ip) {
                set.remove(id);
                if set.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
        if let Some(e) = self.namespaces.get_mut(&id.0) {
            e.endpoints -= 1;
            if e.endpoints == 0 && e.stored.is_none() {
                self.namespaces.remove(&id.0);
            }
        }
    }

    fn namespace_entry(&mut self, name: &str) -> &mut NamespaceEntry {
        self.namespaces
            .entry(name.to_string())
            .or_insert_with(|| NamespaceEntry {
                stored: None,
                endpoints: 0,
                labels: namespace_labels(name, None),
            })
    }

    fn apply_pod_labels(
        &mut self,
        ns: &str,
        pod: &str,
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let id = PodId::new(ns, pod);
        let parsed = value.map(|v| parse_json::<PodLabels>(v, "PodLabels"));
        let result = match parsed {
            Some(Ok(l)) => {
                self.pod_labels.insert(id.clone(), l);
                Ok(())
            }
            Some(Err(why)) => {
                self.pod_labels.remove(&id);
                Err(why)
            }
            None => {
                self.pod_labels.remove(&id);
                Ok(())
            }
        };
        let by_hand = self.pod_labels.get(&id).cloned();
        let range = (ns.to_string(), pod.to_string(), String::new())..;
        for (k, p) in self.endpoints.range_mut(range) {
            if k.0 != ns || k.1 != pod {
                break;
            }
            *p = Pod::new(p.endpoint.clone(), by_hand.as_ref());
        }
        result
    }

    fn apply_namespace(&mut self, name: &str, value: Option<&[u8]>) -> Result<(), String> {
        let parsed = value.map(|v| {
            parse_json::<Namespace>(v, "Namespace")
                .and_then(|n| n.validate(name).map(|()| n).map_err(refused))
        });
        let (stored, result) = match parsed {
            Some(Ok(n)) => (Some(n), Ok(())),
            Some(Err(why)) => (None, Err(why)),
            None => (None, Ok(())),
        };
        let e = self.namespace_entry(name);
        e.labels = namespace_labels(name, stored.as_ref());
        e.stored = stored;
        if e.stored.is_none() && e.endpoints == 0 {
            self.namespaces.remove(name);
        }
        result
    }

    fn apply_policy(&mut self, ns: &str, name: &str, value: Option<&[u8]>) -> Result<(), String> {
        let id = (ns.to_string(), name.to_string());
        self.policies.remove(&id);
        let Some(value) = value else { return Ok(()) };
        let spec: NetworkPolicySpec = parse_json(value, "NetworkPolicy spec")?;
        spec.validate().map_err(refused)?;
        self.policies.insert(id, Policy::new(ns, name, spec));
        Ok(())
    }

    fn apply_global(&mut self, name: &str, value: Option<&[u8]>) -> Result<(), String> {
        self.globals.remove(name);
        let result = match value {
            None => Ok(()),
            Some(v) => parse_json::<GlobalNetworkPolicySpec>(v, "GlobalNetworkPolicy spec")
                .and_then(|mut spec| {
                    spec.normalize();
                    spec.validate().map_err(refused)?;
                    GlobalPolicy::new(name, spec)
                })
                .map(|g| {
                    self.globals.insert(name.to_string(), g);
                }),
        };
        let mut names: Vec<&GlobalPolicy> = self.globals.values().collect();
        names.sort_by(|a, b| a.eval_cmp(b));
        self.globals_ordered = names.into_iter().map(|g| g.name.clone()).collect();
        result
    }

    // ---- lookups ----

    /// Every entry left out, by key.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values()
    }

    /// Every endpoint, sorted by namespace, pod, node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.endpoints.values()
    }

    /// The endpoints of one node, sorted by namespace, pod (an index: no walk over the
    /// cluster).
    pub fn node_pods<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.endpoints.get(id))
    }

    /// The pod `namespace/name` (if it is on several nodes at once, as briefly while it
    /// moves, the first by node name).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pod_endpoints(namespace, name).next()
    }

    /// Every endpoint of the pod `namespace/name` (one per node it is on).
    pub fn pod_endpoints(&self, namespace: &str, name: &str) -> impl Iterator<Item = &Pod> + '_ {
        let (ns, pod) = (namespace.to_string(), name.to_string());
        self.endpoints
            .range((ns.clone(), pod.clone(), String::new())..)
            .take_while(move |(k, _)| k.0 == ns && k.1 == pod)
            .map(|(_, p)| p)
    }

    /// The endpoint holding `ip` (if two claim it, as briefly while an address is reused,
    /// the first by namespace, pod, node).
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.by_ip
            .get(&ip)
            .and_then(|s| s.iter().next())
            .and_then(|id| self.endpoints.get(id))
    }

    /// The endpoint of the pod on `node` (the key `endpoints/<node>/<ns>/<pod>`).
    pub fn endpoint(&self, node: &str, namespace: &str, pod: &str) -> Option<&Pod> {
        self.endpoints
            .get(&(namespace.to_string(), pod.to_string(), node.to_string()))
    }

    /// The labels `podlabels/<ns>/<pod>` sets by hand, if any.
    pub fn pod_labels_by_hand(&self, namespace: &str, pod: &str) -> Option<&PodLabels> {
        self.pod_labels.get(&PodId::new(namespace, pod))
    }

    /// Every namespace (stored or holding an endpoint) with its labels, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &BTreeMap<String, String>)> {
        self.namespaces.iter().map(|(n, e)| (n.as_str(), &e.labels))
    }

    /// A namespace's labels as selectors see them (with `kubernetes.io/metadata.name`);
    /// a namespace neither stored nor holding a pod gets just that label.
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(name)
            .map(|e| e.labels.clone())
            .unwrap_or_else(|| namespace_labels(name, None))
    }

    /// The labels of a namespace that is stored or holds an endpoint (so every pod's
    /// namespace), without a copy; `None` for any other.
    pub fn known_namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(name).map(|e| &e.labels)
    }

    /// Whether the namespace is stored or holds an endpoint.
    pub fn has_namespace(&self, name: &str) -> bool {
        self.namespaces.contains_key(name)
    }

    /// Every NetworkPolicy, sorted by namespace then name.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    /// The NetworkPolicies of one namespace, by name.
    pub fn namespace_policies(&self, namespace: &str) -> impl Iterator<Item = &Policy> + '_ {
        let ns = namespace.to_string();
        self.policies
            .range((ns.clone(), String::new())..)
            .take_while(move |(k, _)| k.0 == ns)
            .map(|(_, p)| p)
    }

    pub fn policy(&self, namespace: &str, name: &str) -> Option<&Policy> {
        self.policies
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Every GlobalNetworkPolicy in evaluation order (`(order, name)`, no order last).
    pub fn global_policies(&self) -> impl Iterator<Item = &GlobalPolicy> {
        self.globals_ordered
            .iter()
            .filter_map(|n| self.globals.get(n))
    }

    pub fn global_policy(&self, name: &str) -> Option<&GlobalPolicy> {
        self.globals.get(name)
    }

    /// The NetworkPolicies that isolate `pod` in `direction` (of its namespace, its
    /// `podSelector` selects the pod, its types include the direction), by name.
    pub fn policies_selecting<'a>(
        &'a self,
        pod: &'a Pod,
        direction: PolicyType,
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        self.namespace_policies(pod.namespace())
            .filter(move |p| p.isolates(pod, direction))
    }

    /// The GlobalNetworkPolicies that apply to `pod` in `direction`, in evaluation order.
    pub fn global_policies_selecting<'a>(
        &'a self,
        pod: &'a Pod,
        direction: PolicyType,
    ) -> impl Iterator<Item = &'a GlobalPolicy> + 'a {
        self.global_policies().filter(move |g| {
            g.types.contains(&direction)
                && self
                    .known_namespace_labels(pod.namespace())
                    .is_some_and(|ns| g.selects(pod, ns))
        })
    }
}

/// `rest` split on '/' into exactly `n` non-empty parts.
fn split_key(rest: &str, n: usize) -> Option<Vec<String>> {
    let parts: Vec<String> = rest.split('/').map(str::to_string).collect();
    (parts.len() == n && parts.iter().all(|p| !p.is_empty())).then_some(parts)
}

/// A value `twill apply` would have refused (written by other means), and why.
fn refused(e: twill_api::resources::Invalid) -> String {
    format!("twill apply would refuse it: {e}")
}

fn parse_json<T: serde::de::DeserializeOwned>(value: &[u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| format!("not a readable {what} ({e})"))
}

#[cfg(test)]
mod tests;
