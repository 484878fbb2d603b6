//! `twill get` for network policy's kinds: NetworkPolicies, GlobalNetworkPolicies,
//! Namespaces and the pods' endpoints (read-only, published by twilld). Pure, over a
//! [`ClusterView`]; `resources.rs` dispatches here.

use crate::resources::{render_docs, Output};
use crate::table;
use crate::view::ClusterView;
use anyhow::bail;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use twill_api::policy::{
    effective_pod_labels, namespace_labels, Endpoint, GlobalNetworkPolicySpec, LabelSelector,
    Namespace, NetworkPolicySpec, PolicyType, SelectorOperator, DEFAULT_NAMESPACE,
};
use twill_api::policy::{NetworkPolicyPort, PortRef};
use twill_api::resources::{Resource, ResourceKind};

/// Kubernetes' apiVersion for NetworkPolicy, printed so the output pastes into kubectl too
/// (`twill apply` accepts any apiVersion).
pub const NETWORKING_API_VERSION: &str = "networking.k8s.io/v1";
/// Calico's apiVersion for GlobalNetworkPolicy.
pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";
/// Kubernetes' apiVersion for Namespace.
pub const CORE_API_VERSION: &str = "v1";

/// Which namespaces a namespaced kind is listed from (`-n NS`, `-A`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    One(String),
    All,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::One(DEFAULT_NAMESPACE.to_string())
    }
}

impl Scope {
    pub fn holds(&self, namespace: &str) -> bool {
        match self {
            Scope::One(n) => n == namespace,
            Scope::All => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Scope::One(n) => format!("in namespace {n}"),
            Scope::All => "in any namespace".into(),
        }
    }
}

/// Protocols as Kubernetes and Calico write them (`TCP`, not the store's `tcp`), so the
/// output pastes into kubectl and calicoctl; `twill apply` reads both.
fn capital_protocols(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if k == "protocol" => *s = s.to_uppercase(),
                    _ => capital_protocols(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(capital_protocols),
        _ => {}
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A label selector as kubectl prints one: `pod=a,tier in (db,web),!legacy`; `<none>`
/// for the empty selector (which selects every pod).
pub fn selector_text(s: &LabelSelector) -> String {
    if s.is_empty() {
        return "<none>".into();
    }
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in &s.match_expressions {
        parts.push(match r.operator {
            SelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
            SelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
            SelectorOperator::Exists => r.key.clone(),
            SelectorOperator::DoesNotExist => format!("!{}", r.key),
        });
    }
    parts.join(",")
}

fn types_text(types: &[PolicyType]) -> String {
    types
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

// ---- NetworkPolicy ----

pub fn network_policy_resource(namespace: &str, name: &str, spec: &NetworkPolicySpec) -> Value {
    let mut spec = json!(spec);
    capital_protocols(&mut spec);
    json!({
        "apiVersion": NETWORKING_API_VERSION,
        "kind": ResourceKind::NetworkPolicy,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// Others than those listed, in words, for a note when a listing is empty.
fn elsewhere(count: usize, what: &str) -> Option<String> {
    (count > 0).then(|| format!("{count} {what} in other namespaces; -A lists them"))
}

pub fn get_network_policies(
    view: &ClusterView,
    name: Option<&str>,
    scope: &Scope,
    output: Output,
) -> anyhow::Result<(String, Option<String>)> {
    let mut list: Vec<(&(String, String), &NetworkPolicySpec)> = view
        .network_policies
        .iter()
        .filter(|((ns, _), _)| scope.holds(ns))
        .collect();
    if let Some(n) = name {
        list.retain(|((_, m), _)| m == n);
        if list.is_empty() {
            bail!(
                "networkpolicy {n:?} not found {} (`twill get networkpolicies -A` lists them all)",
                scope.describe()
            );
        }
    }
    let note = if list.is_empty() {
        elsewhere(view.network_policies.len(), "NetworkPolicies")
    } else {
        None
    };
    let wide = output == Output::Wide;
    let text = match output {
        Output::Table | Output::Wide => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|((ns, n), p)| {
                    let mut row = vec![
                        ns.clone(),
                        n.clone(),
                        selector_text(&p.pod_selector),
                        types_text(&p.types()),
                    ];
                    if wide {
                        row.push(p.ingress.len().to_string());
                        row.push(p.egress.len().to_string());
                    }
                    row
                })
                .collect();
            let mut header = vec!["NAMESPACE", "NAME", "POD-SELECTOR", "TYPES"];
            if wide {
                header.extend(["INGRESS-RULES", "EGRESS-RULES"]);
            }
            table::render(&header, &rows)
        }
        _ => render_docs(
            list.iter()
                .map(|((ns, n), p)| network_policy_resource(ns, n, p))
                .collect(),
            name.is_some(),
            output,
        )?,
    };
    Ok((text, note))
}

// ---- GlobalNetworkPolicy ----

pub fn global_network_policy_resource(name: &str, spec: &GlobalNetworkPolicySpec) -> Value {
    let mut spec = json!(spec);
    capital_protocols(&mut spec);
    json!({
        "apiVersion": CALICO_API_VERSION,
        "kind": ResourceKind::GlobalNetworkPolicy,
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// In the order they are evaluated: by `order` (none last), then by name.
pub fn global_policies_in_order(view: &ClusterView) -> Vec<(&String, &GlobalNetworkPolicySpec)> {
    let mut list: Vec<_> = view.global_network_policies.iter().collect();
    list.sort_by(|(an, a), (bn, b)| {
        let key = |o: Option<f64>| (o.is_none(), o.unwrap_or(0.0));
        let (ka, kb) = (key(a.order), key(b.order));
        ka.0.cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then_with(|| an.cmp(bn))
    });
    list
}

pub fn get_global_network_policies(
    view: &ClusterView,
    name: Option<&str>,
    output: Output,
) -> anyhow::Result<String> {
    let mut list = global_policies_in_order(view);
    if let Some(n) = name {
        list.retain(|(m, _)| *m == n);
        if list.is_empty() {
            bail!("globalnetworkpolicy {n:?} not found (`twill get globalnetworkpolicies` lists them)");
        }
    }
    let wide = output == Output::Wide;
    Ok(match output {
        Output::Table | Output::Wide => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|(n, p)| {
                    let mut row = vec![
                        n.to_string(),
                        p.order.map_or("-".into(), |o| o.to_string()),
                        if p.selector.trim().is_empty() {
                            "all()".into()
                        } else {
                            p.selector.clone()
                        },
                        types_text(&p.types()),
                    ];
                    if wide {
                        row.push(or_dash(&p.namespace_selector));
                        row.push(p.ingress.len().to_string());
                        row.push(p.egress.len().to_string());
                    }
                    row
                })
                .collect();
            let mut header = vec!["NAME", "ORDER", "SELECTOR", "TYPES"];
            if wide {
                header.extend(["NAMESPACE-SELECTOR", "INGRESS-RULES", "EGRESS-RULES"]);
            }
            table::render(&header, &rows)
        }
        _ => render_docs(
            list.iter()
                .map(|(n, p)| global_network_policy_resource(n, p))
                .collect(),
            name.is_some(),
            output,
        )?,
    })
}

// ---- Namespace ----

/// Every namespace the store knows of: applied or labelled ones, and those its pods,
/// hand-set pod labels and policies are in (which exist with only their automatic label).
pub fn namespace_names(view: &ClusterView) -> BTreeSet<String> {
    view.namespaces
        .keys()
        .cloned()
        .chain(view.endpoints.keys().map(|(ns, _, _)| ns.clone()))
        .chain(view.pod_labels.keys().map(|(ns, _)| ns.clone()))
        .chain(view.network_policies.keys().map(|(ns, _)| ns.clone()))
        .collect()
}

pub fn namespace_resource(name: &str, stored: Option<&Namespace>) -> Value {
    json!({
        "apiVersion": CORE_API_VERSION,
        "kind": ResourceKind::Namespace,
        "metadata": {"name": name, "labels": namespace_labels(name, stored)},
    })
}

pub fn get_namespaces(
    view: &ClusterView,
    name: Option<&str>,
    output: Output,
) -> anyhow::Result<String> {
    let mut names: Vec<String> = namespace_names(view).into_iter().collect();
    if let Some(n) = name {
        names.retain(|m| m == n);
        if names.is_empty() {
            bail!("namespace {n:?} not found: no Namespace applied, and no pod or policy in it (`twill get namespaces` lists them)");
        }
    }
    let wide = output == Output::Wide;
    Ok(match output {
        Output::Table | Output::Wide => {
            let rows: Vec<Vec<String>> = names
                .iter()
                .map(|n| {
                    let pods = view.endpoints.keys().filter(|(ns, _, _)| ns == n).count();
                    let policies = view
                        .network_policies
                        .keys()
                        .filter(|(ns, _)| ns == n)
                        .count();
                    let mut row = vec![n.clone(), pods.to_string(), policies.to_string()];
                    let stored = view.namespaces.get(n);
                    if wide {
                        row.push(if stored.is_some() { "yes" } else { "no" }.into());
                    }
                    row.push(labels_text(&namespace_labels(n, stored)));
                    row
                })
                .collect();
            let header: &[&str] = if wide {
                &["NAME", "PODS", "POLICIES", "APPLIED", "LABELS"]
            } else {
                &["NAME", "PODS", "POLICIES", "LABELS"]
            };
            table::render(header, &rows)
        }
        _ => render_docs(
            names
                .iter()
                .map(|n| namespace_resource(n, view.namespaces.get(n)))
                .collect(),
            name.is_some(),
            output,
        )?,
    })
}

// ---- endpoints (read-only) ----

/// What `-o yaml|json` prints of an endpoint: read-only (twilld publishes it; `twill
/// label pod` changes the labels), with the labels policies match in `status`.
pub fn endpoint_resource(view: &ClusterView, ep: &Endpoint) -> Value {
    let by_hand = view.pod_labels.get(&(ep.namespace.clone(), ep.pod.clone()));
    let mut spec = json!(ep);
    capital_protocols(&mut spec);
    json!({
        "apiVersion": CALICO_API_VERSION,
        "kind": ResourceKind::WorkloadEndpoint,
        "metadata": {"name": ep.pod, "namespace": ep.namespace},
        "spec": spec,
        "status": {
            "labels": effective_pod_labels(ep, by_hand),
            "labelsByHand": by_hand.map(|l| l.labels.clone()).unwrap_or_default(),
        },
    })
}

pub fn get_endpoints(
    view: &ClusterView,
    name: Option<&str>,
    scope: &Scope,
    output: Output,
) -> anyhow::Result<(String, Option<String>)> {
    let mut list: Vec<&Endpoint> = view
        .endpoints
        .values()
        .filter(|e| scope.holds(&e.namespace))
        .collect();
    if let Some(n) = name {
        list.retain(|e| e.pod == n);
        if list.is_empty() {
            bail!(
                "no endpoint of pod {n:?} {} (`twill get endpoints -A` lists every pod's)",
                scope.describe()
            );
        }
    }
    let note = if list.is_empty() {
        elsewhere(view.endpoints.len(), "endpoints")
    } else {
        None
    };
    let wide = output == Output::Wide;
    let text = match output {
        Output::Table | Output::Wide => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|e| {
                    let by_hand = view.pod_labels.get(&(e.namespace.clone(), e.pod.clone()));
                    let mut row = vec![
                        e.namespace.clone(),
                        e.pod.clone(),
                        e.node.clone(),
                        e.ips
                            .iter()
                            .map(|i| i.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        e.host_veth.clone(),
                        labels_text(&effective_pod_labels(e, by_hand)),
                    ];
                    if wide {
                        row.push(e.ifname.clone());
                        row.push(e.mac.clone().unwrap_or_else(|| "-".into()));
                        row.push(e.wiring.name().to_string());
                        row.push(if e.named_ports.is_empty() {
                            "-".into()
                        } else {
                            e.named_ports
                                .iter()
                                .map(|p| format!("{}={}/{}", p.name, p.port, p.protocol))
                                .collect::<Vec<_>>()
                                .join(",")
                        });
                        row.push(e.container_id.clone());
                    }
                    row
                })
                .collect();
            let mut header = vec!["NAMESPACE", "POD", "NODE", "IPS", "INTERFACE", "LABELS"];
            if wide {
                header.extend(["IFNAME", "MAC", "WIRING", "NAMED-PORTS", "CONTAINER"]);
            }
            table::render(&header, &rows)
        }
        _ => render_docs(
            list.iter().map(|e| endpoint_resource(view, e)).collect(),
            name.is_some(),
            output,
        )?,
    };
    Ok((text, note))
}

// ---- apply notes ----

/// What an applied set of policies does that is likely not meant, in words (not errors):
/// rules of a direction its types leave out (ignored), and named ports no pod declares
/// (when pods are known: they match nothing yet). Pure.
pub fn policy_notes(view: &ClusterView, resources: &[Resource]) -> Vec<String> {
    let mut notes = Vec::new();
    let ignored = |what: &str, types: &[PolicyType], ingress: usize, egress: usize, field: &str| {
        [(PolicyType::Ingress, ingress, "ingress"), (PolicyType::Egress, egress, "egress")]
            .into_iter()
            .filter(|(t, n, _)| *n > 0 && !types.contains(t))
            .map(|(t, _, rules)| {
                format!(
                    "{what}: its {rules} rules are ignored, {field} [{}] does not list {t:?}; add {t:?} to {field}, or remove the rules",
                    types_text(types)
                )
            })
            .collect::<Vec<_>>()
    };
    let declared: std::collections::HashSet<(String, twill_api::cni::Protocol)> = view
        .endpoints
        .values()
        .flat_map(|e| e.named_ports.iter().map(|p| (p.name.clone(), p.protocol)))
        .collect();
    for r in resources {
        match r {
            Resource::NetworkPolicy {
                namespace,
                name,
                spec,
            } => {
                let what = format!("networkpolicy/{namespace}/{name}");
                notes.extend(ignored(
                    &what,
                    &spec.types(),
                    spec.ingress.len(),
                    spec.egress.len(),
                    "policyTypes",
                ));
                let ports: Vec<&NetworkPolicyPort> = spec
                    .ingress
                    .iter()
                    .flat_map(|r| &r.ports)
                    .chain(spec.egress.iter().flat_map(|r| &r.ports))
                    .collect();
                let mut missing = BTreeSet::new();
                for p in ports {
                    if let Some(PortRef::Name(n)) = &p.port {
                        if !declared.contains(&(n.clone(), p.protocol())) {
                            missing.insert(format!("{n}/{}", p.protocol()));
                        }
                    }
                }
                if !view.endpoints.is_empty() && !missing.is_empty() {
                    notes.push(format!(
                        "{what}: no pod declares the named port{} {}, so {} nothing yet; name the container ports (runtimeConfig.namedPorts) or use numbers",
                        if missing.len() > 1 { "s" } else { "" },
                        missing.into_iter().collect::<Vec<_>>().join(", "),
                        "it matches"
                    ));
                }
            }
            Resource::GlobalNetworkPolicy { name, spec } => notes.extend(ignored(
                &format!("globalnetworkpolicy/{name}"),
                &spec.types(),
                spec.ingress.len(),
                spec.egress.len(),
                "types",
            )),
            _ => {}
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::{kv, view};
    use twill_api::resources::parse_resources;

    fn ep(ns: &str, pod: &str, named: serde_json::Value) -> twill_store::KeyValue {
        kv(
            &format!("endpoints/n1/{ns}/{pod}"),
            json!({"namespace": ns, "pod": pod, "node": "n1", "containerID": "c", "ifname": "eth0",
                "hostVeth": "veth1", "ips": ["10.244.1.2"], "wiring": "bridge",
                "labels": {"pod": pod}, "namedPorts": named}),
            1,
            true,
        )
    }

    #[test]
    fn notes_name_ignored_rules_and_undeclared_named_ports() {
        let v = view(&[ep(
            "x",
            "a",
            json!([{"name": "http", "port": 80, "protocol": "tcp"}]),
        )]);
        let r = parse_resources(
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  policyTypes: [Egress]\n  ingress:\n  - ports:\n    - port: http\n    - {port: http, protocol: UDP}\n    - port: dns\n---\n\
             kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  types: [Ingress]\n  egress:\n  - action: Deny\n",
        )
        .unwrap();
        assert_eq!(
            policy_notes(&v, &r),
            [
                "networkpolicy/x/p: its ingress rules are ignored, policyTypes [Egress] does not list Ingress; add Ingress to policyTypes, or remove the rules",
                "networkpolicy/x/p: no pod declares the named ports dns/tcp, http/udp, so it matches nothing yet; name the container ports (runtimeConfig.namedPorts) or use numbers",
                "globalnetworkpolicy/g: its egress rules are ignored, types [Ingress] does not list Egress; add Egress to types, or remove the rules",
            ]
        );
        // Default types take the rules given; with no pod known, ports are not judged.
        let r = parse_resources(
            "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress:\n  - ports: [{port: dns}]\n  egress:\n  - {}\n",
        )
        .unwrap();
        assert!(policy_notes(&view(&[]), &r).is_empty());
    }

    #[test]
    fn selectors_print_as_kubectl() {
        let s: LabelSelector = serde_json::from_value(json!({"matchLabels": {"pod": "a"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db", "web"]},
                {"key": "legacy", "operator": "DoesNotExist"}, {"key": "env", "operator": "Exists"},
                {"key": "x", "operator": "NotIn", "values": ["1"]}]}))
        .unwrap();
        assert_eq!(
            selector_text(&s),
            "pod=a,tier in (db,web),!legacy,env,x notin (1)"
        );
        assert_eq!(selector_text(&LabelSelector::default()), "<none>");
    }
}
