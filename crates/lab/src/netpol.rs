//! The upstream Kubernetes NetworkPolicy model (test/e2e/network/netpol), pure: namespaces
//! x, y and z (labelled `ns=x`, …), each with pods a, b and c (labelled `pod=a`, …), every
//! pod serving ports 80 and 81 over TCP and UDP (named `serve-80-tcp`, …), and the 9×9
//! reachability tables its cases expect and the lab observes: rows are the client (from),
//! columns the server (to), `.` connected, `X` blocked.
//!
//! A case builds its expectation as the upstream suite does ([`Reachability`]: start from
//! all-true or all-false, then `expect_all_ingress`, `expect_peer`, …), the lab's probes
//! fill an observed [`TruthTable`] ([`crate::netpol_probe`]), and [`Reachability::report`]
//! prints expected, observed and where they differ. A pod talking to itself never leaves
//! its namespace (loopback): every table allows it, as upstream's `AllowLoopback`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use twill_api::cni::Protocol;

use crate::plan::{BackendKind, LabSpec, NamedPort, PodIdentity, PodWiring};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The ports every model pod serves, over TCP and over UDP.
pub const PORTS: [u16; 2] = [80, 81];
/// Pod `a` carries `pod=a`.
pub const POD_LABEL: &str = "pod";
/// Namespace `x` carries `ns=x` (and `kubernetes.io/metadata.name=x`, set by Twill).
pub const NS_LABEL: &str = "ns";

/// A port and protocol a table is probed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortProto {
    pub port: u16,
    pub proto: Protocol,
}

impl PortProto {
    pub const fn tcp(port: u16) -> PortProto {
        PortProto {
            port,
            proto: Protocol::Tcp,
        }
    }

    pub const fn udp(port: u16) -> PortProto {
        PortProto {
            port,
            proto: Protocol::Udp,
        }
    }
}

impl std::fmt::Display for PortProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.proto.to_string().to_uppercase())
    }
}

/// The named port of `port`/`proto` every model pod has: `serve-80-tcp`.
pub fn port_name(pp: PortProto) -> String {
    format!("serve-{}-{}", pp.port, pp.proto)
}

/// The nine model pods in table order (x/a, x/b, x/c, y/a, …), with their labels and
/// named ports.
pub fn model_pods() -> Vec<PodIdentity> {
    let mut v = Vec::new();
    for ns in NAMESPACES {
        for pod in PODS {
            let named_ports = PORTS
                .iter()
                .flat_map(|&p| [PortProto::tcp(p), PortProto::udp(p)])
                .map(|pp| NamedPort {
                    name: port_name(pp),
                    port: pp.port,
                    protocol: pp.proto,
                })
                .collect();
            v.push(PodIdentity {
                namespace: ns.into(),
                name: pod.into(),
                labels: BTreeMap::from([(POD_LABEL.to_string(), pod.to_string())]),
                named_ports,
            });
        }
    }
    v
}

/// The model's namespaces and their labels (`ns=x`).
pub fn model_namespaces() -> BTreeMap<String, BTreeMap<String, String>> {
    NAMESPACES
        .iter()
        .map(|ns| {
            (
                ns.to_string(),
                BTreeMap::from([(NS_LABEL.to_string(), ns.to_string())]),
            )
        })
        .collect()
}

/// A lab holding the model: `nodes` nodes (pods spread over them in turn, so that pairs
/// cross nodes), VXLAN between them, the given pod wiring, the embedded store, network
/// policy on (`twilld --policy true`).
pub fn model_spec(name: &str, nodes: u16, wiring: PodWiring) -> LabSpec {
    LabSpec {
        name: name.into(),
        nodes,
        backend: BackendKind::Vxlan,
        pod_wiring: wiring,
        pods: model_pods(),
        namespaces: model_namespaces(),
        policy: true,
        ..LabSpec::default()
    }
}

/// A square table over `items` (`ns/pod`): `values[from][to]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruthTable {
    pub items: Vec<String>,
    values: Vec<Vec<bool>>,
}

impl TruthTable {
    pub fn new(items: Vec<String>, value: bool) -> TruthTable {
        let n = items.len();
        TruthTable {
            items,
            values: vec![vec![value; n]; n],
        }
    }

    fn index(&self, item: &str) -> usize {
        self.items
            .iter()
            .position(|i| i == item)
            .unwrap_or_else(|| panic!("{item} is not in the table ({:?})", self.items))
    }

    pub fn get(&self, from: &str, to: &str) -> bool {
        self.values[self.index(from)][self.index(to)]
    }

    pub fn set(&mut self, from: &str, to: &str, value: bool) {
        let (f, t) = (self.index(from), self.index(to));
        self.values[f][t] = value;
    }

    pub fn set_by_index(&mut self, from: usize, to: usize, value: bool) {
        self.values[from][to] = value;
    }

    pub fn get_by_index(&self, from: usize, to: usize) -> bool {
        self.values[from][to]
    }

    /// A table that is true where `self` and `other` agree.
    pub fn compare(&self, other: &TruthTable) -> TruthTable {
        assert_eq!(self.items, other.items, "tables over different pods");
        let mut t = self.clone();
        for (f, row) in t.values.iter_mut().enumerate() {
            for (to, v) in row.iter_mut().enumerate() {
                *v = self.values[f][to] == other.values[f][to];
            }
        }
        t
    }

    /// `(from, to, self's value)` where `self` and `other` differ.
    pub fn differences(&self, other: &TruthTable) -> Vec<(String, String, bool)> {
        let mut v = Vec::new();
        for (f, from) in self.items.iter().enumerate() {
            for (t, to) in self.items.iter().enumerate() {
                if self.values[f][t] != other.values[f][t] {
                    v.push((from.clone(), to.clone(), self.values[f][t]));
                }
            }
        }
        v
    }

    /// Upstream's layout: a header `-` and the columns, then one row per client; `.` for
    /// true, `X` for false.
    pub fn render(&self) -> String {
        self.render_marks(".", "X")
    }

    fn render_marks(&self, yes: &str, no: &str) -> String {
        let w = self.items.iter().map(String::len).max().unwrap_or(1).max(1);
        let mut s = String::new();
        let mut line = format!("{:w$}", "-");
        for to in &self.items {
            let _ = write!(line, " {to:w$}");
        }
        s.push_str(line.trim_end());
        s.push('\n');
        for (f, from) in self.items.iter().enumerate() {
            let mut line = format!("{from:w$}");
            for t in 0..self.items.len() {
                let mark = if self.values[f][t] { yes } else { no };
                let _ = write!(line, " {mark:w$}");
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }

    /// Parses [`TruthTable::render`]'s layout (whitespace-separated; `.` true, `X`
    /// false), so cases can write a table out literally. Pure.
    pub fn parse(text: &str) -> Result<TruthTable, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let header: Vec<&str> = lines
            .next()
            .ok_or("an empty table")?
            .split_whitespace()
            .collect();
        if header.first() != Some(&"-") {
            return Err(format!("the header must start with '-': {header:?}"));
        }
        let items: Vec<String> = header[1..].iter().map(|s| s.to_string()).collect();
        let mut t = TruthTable::new(items.clone(), false);
        let mut rows = 0;
        for line in lines {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let from = *cells.first().ok_or("an empty row")?;
            let f = items
                .iter()
                .position(|i| i == from)
                .ok_or_else(|| format!("row {from} is not a column"))?;
            if f != rows {
                return Err(format!("row {from} out of order"));
            }
            if cells.len() != items.len() + 1 {
                return Err(format!("row {from} has {} cells", cells.len() - 1));
            }
            for (to, c) in cells[1..].iter().enumerate() {
                let v = match *c {
                    "." => true,
                    "X" | "x" => false,
                    other => return Err(format!("row {from}: cell {other:?} is not . or X")),
                };
                t.set_by_index(f, to, v);
            }
            rows += 1;
        }
        if rows != items.len() {
            return Err(format!("{rows} rows for {} columns", items.len()));
        }
        Ok(t)
    }
}

/// The model's table items in order: x/a, x/b, …, z/c.
pub fn model_items() -> Vec<String> {
    model_pods().iter().map(PodIdentity::key).collect()
}

/// Selects model pods as upstream's `Peer{Namespace, Pod}` does: a missing part matches
/// any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer<'a> {
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
}

impl<'a> Peer<'a> {
    pub const ANY: Peer<'static> = Peer {
        namespace: None,
        pod: None,
    };

    pub fn ns(namespace: &'a str) -> Peer<'a> {
        Peer {
            namespace: Some(namespace),
            pod: None,
        }
    }

    pub fn pod(namespace: &'a str, pod: &'a str) -> Peer<'a> {
        Peer {
            namespace: Some(namespace),
            pod: Some(pod),
        }
    }

    /// Pod `pod` of any namespace.
    pub fn named(pod: &'a str) -> Peer<'a> {
        Peer {
            namespace: None,
            pod: Some(pod),
        }
    }

    pub fn matches(&self, item: &str) -> bool {
        let (ns, pod) = item.split_once('/').unwrap_or((item, ""));
        self.namespace.is_none_or(|n| n == ns) && self.pod.is_none_or(|p| p == pod)
    }
}

/// What a case expects, built the upstream way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    pub expected: TruthTable,
}

impl Reachability {
    /// Every pair `value` (loopback always connected).
    pub fn new(value: bool) -> Reachability {
        let mut r = Reachability {
            expected: TruthTable::new(model_items(), value),
        };
        r.allow_loopback();
        r
    }

    /// A table written out literally ([`TruthTable::parse`]).
    pub fn table(text: &str) -> Reachability {
        Reachability {
            expected: TruthTable::parse(text).unwrap_or_else(|e| panic!("bad table: {e}")),
        }
    }

    pub fn allow_loopback(&mut self) {
        for i in 0..self.expected.items.len() {
            self.expected.set_by_index(i, i, true);
        }
    }

    /// Every pair from a pod `from` matches to a pod `to` matches: `value` (loopback kept).
    pub fn expect_peer(&mut self, from: Peer, to: Peer, value: bool) -> &mut Self {
        let items = self.expected.items.clone();
        for (f, fi) in items.iter().enumerate() {
            for (t, ti) in items.iter().enumerate() {
                if f != t && from.matches(fi) && to.matches(ti) {
                    self.expected.set_by_index(f, t, value);
                }
            }
        }
        self
    }

    /// Everything into `to` (`ns/pod`).
    pub fn expect_all_ingress(&mut self, to: Peer, value: bool) -> &mut Self {
        self.expect_peer(Peer::ANY, to, value)
    }

    /// Everything out of `from`.
    pub fn expect_all_egress(&mut self, from: Peer, value: bool) -> &mut Self {
        self.expect_peer(from, Peer::ANY, value)
    }

    pub fn expect(&mut self, from: &str, to: &str, value: bool) -> &mut Self {
        if from != to {
            self.expected.set(from, to, value);
        }
        self
    }

    /// Expected, observed and the comparison, for a failure message; None when they agree.
    pub fn report(&self, pp: PortProto, observed: &TruthTable) -> Option<String> {
        let diffs = self.expected.differences(observed);
        if diffs.is_empty() {
            return None;
        }
        let list: Vec<String> = diffs
            .iter()
            .map(|(f, t, want)| {
                format!(
                    "{f} → {t}: expected {}, observed {}",
                    word(*want),
                    word(!want)
                )
            })
            .collect();
        Some(format!(
            "{pp}: {} of {} pairs differ ({})\nexpected:\n{}observed:\n{}comparison (. as expected, X differs):\n{}",
            diffs.len(),
            self.expected.items.len().pow(2),
            list.join("; "),
            self.expected.render(),
            observed.render(),
            self.expected.compare(observed).render()
        ))
    }
}

/// What the model ([`twill_policy::model::evaluate`]) says for every pair of `items`
/// (`ns/pod`) on `pp`, as a table; the cross-check of a case's written-out expectation.
pub fn model_table(
    cluster: &twill_policy::cluster::Cluster,
    items: &[String],
    pp: PortProto,
) -> TruthTable {
    use twill_policy::cluster::PodId;
    use twill_policy::model::{evaluate, Flow};
    let id = |item: &str| {
        let (ns, pod) = item.split_once('/').unwrap_or((item, ""));
        PodId::new(ns, pod)
    };
    let mut t = TruthTable::new(items.to_vec(), false);
    for (f, from) in items.iter().enumerate() {
        for (to_i, to) in items.iter().enumerate() {
            let d = evaluate(cluster, &Flow::pods(&id(from), &id(to), pp.proto, pp.port));
            t.set_by_index(f, to_i, d.allowed);
        }
    }
    t
}

fn word(connected: bool) -> &'static str {
    if connected {
        "connected"
    } else {
        "blocked"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_upstreams() {
        let pods = model_pods();
        assert_eq!(pods.len(), 9);
        assert_eq!(pods[0].key(), "x/a");
        assert_eq!(pods[8].key(), "z/c");
        assert_eq!(pods[4].labels, BTreeMap::from([("pod".into(), "b".into())]));
        let names: Vec<&str> = pods[0]
            .named_ports
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "serve-80-tcp",
                "serve-80-udp",
                "serve-81-tcp",
                "serve-81-udp"
            ]
        );
        assert_eq!(model_namespaces()["y"]["ns"], "y");
        let spec = model_spec("twlnp", 2, PodWiring::L3);
        let plan = crate::plan::plan(&spec).unwrap();
        // Spread in turn: x/a on n1, x/b on n2, x/c on n1, …
        let on = |node: u16| -> Vec<String> {
            plan.nodes[node as usize - 1]
                .pods
                .iter()
                .map(|p| p.short.clone())
                .collect()
        };
        assert_eq!(on(1), ["x-a", "x-c", "y-b", "z-a", "z-c"]);
        assert_eq!(on(2), ["x-b", "y-a", "y-c", "z-b"]);
        let p = plan.pods().find(|p| p.short == "y-c").unwrap();
        assert_eq!(p.netns, "twlnp-y-c");
        assert_eq!(p.k8s_namespace("twlnp"), "y");
        assert_eq!(p.k8s_name(), "c");
        assert_eq!(plan.target_netns("y-c").unwrap(), "twlnp-y-c");
        assert_eq!(plan.namespaces.len(), 3);
    }

    #[test]
    fn tables_render_parse_and_compare() {
        let mut r = Reachability::new(true);
        r.expect_all_ingress(Peer::pod("x", "a"), false);
        let text = r.expected.render();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "-   x/a x/b x/c y/a y/b y/c z/a z/b z/c"
        );
        assert_eq!(
            lines.next().unwrap(),
            "x/a .   .   .   .   .   .   .   .   ."
        );
        assert_eq!(
            lines.next().unwrap(),
            "x/b X   .   .   .   .   .   .   .   ."
        );
        assert_eq!(TruthTable::parse(&text).unwrap(), r.expected);
        let same = Reachability::table(
            "
            -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
            x/a .   .   .   .   .   .   .   .   .
            x/b X   .   .   .   .   .   .   .   .
            x/c X   .   .   .   .   .   .   .   .
            y/a X   .   .   .   .   .   .   .   .
            y/b X   .   .   .   .   .   .   .   .
            y/c X   .   .   .   .   .   .   .   .
            z/a X   .   .   .   .   .   .   .   .
            z/b X   .   .   .   .   .   .   .   .
            z/c X   .   .   .   .   .   .   .   .
            ",
        );
        assert_eq!(same, r);

        let observed = Reachability::new(true).expected;
        let rep = r.report(PortProto::tcp(80), &observed).unwrap();
        assert!(rep.starts_with("80/TCP: 8 of 81 pairs differ"), "{rep}");
        assert!(
            rep.contains("x/b → x/a: expected blocked, observed connected"),
            "{rep}"
        );
        assert!(rep.contains("comparison"), "{rep}");
        assert_eq!(r.report(PortProto::udp(81), &r.expected.clone()), None);
        assert_eq!(PortProto::udp(81).to_string(), "81/UDP");

        for bad in [
            "",
            "x/a .",
            "- x/a\nx/a ?",
            "- x/a x/b\nx/a . .",
            "- x/a\nx/b .",
        ] {
            assert!(TruthTable::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn peers_select_like_upstream() {
        let mut r = Reachability::new(false);
        r.expect_peer(Peer::ns("x"), Peer::named("a"), true);
        let t = &r.expected;
        assert!(t.get("x/b", "y/a") && t.get("x/c", "z/a") && t.get("x/a", "x/a"));
        assert!(!t.get("y/b", "x/a") && !t.get("x/b", "x/c"));
        // Loopback stays connected whatever a case says.
        r.expect_all_egress(Peer::ANY, false);
        assert!(r.expected.get("z/c", "z/c"));
        r.expect("x/a", "x/a", false);
        assert!(r.expected.get("x/a", "x/a"));
    }

    /// The model's cluster of the nine pods (two nodes, addresses 10.244.<node>.<k>).
    fn cluster() -> twill_policy::cluster::Cluster {
        use twill_api::policy::{endpoint_key, namespace_key, Endpoint, Namespace};
        let mut c = twill_policy::cluster::Cluster::new();
        for (k, id) in model_pods().into_iter().enumerate() {
            let node = format!("n{}", k % 2 + 1);
            let ep = Endpoint {
                namespace: id.namespace.clone(),
                pod: id.name.clone(),
                node: node.clone(),
                container_id: id.short(),
                ifname: "eth0".into(),
                host_veth: format!("veth{k}"),
                ips: vec![std::net::Ipv4Addr::new(
                    10,
                    244,
                    k as u8 % 2 + 1,
                    k as u8 + 2,
                )],
                mac: None,
                wiring: PodWiring::Bridge,
                labels: id.labels.clone(),
                named_ports: id.named_ports.clone(),
            };
            c.put(&endpoint_key(&node, &id.namespace, &id.name), &ep);
        }
        for (ns, labels) in model_namespaces() {
            c.put(&namespace_key(&ns), &Namespace { labels });
        }
        c
    }

    #[test]
    fn the_reference_model_agrees_with_written_tables() {
        use twill_api::policy::{network_policy_key, NetworkPolicySpec, PolicyType};
        let mut c = cluster();
        assert_eq!(c.problems().count(), 0);
        let items = model_items();
        assert_eq!(
            model_table(&c, &items, PortProto::tcp(80)),
            Reachability::new(true).expected
        );
        // Default deny ingress in x.
        let deny: NetworkPolicySpec = serde_json::from_value(serde_json::json!({
            "podSelector": {}, "policyTypes": ["Ingress"]
        }))
        .unwrap();
        assert_eq!(deny.types(), [PolicyType::Ingress]);
        c.put(&network_policy_key("x", "deny"), &deny);
        let mut want = Reachability::new(true);
        want.expect_all_ingress(Peer::ns("x"), false);
        for pp in [PortProto::tcp(80), PortProto::udp(81)] {
            assert_eq!(model_table(&c, &items, pp), want.expected, "{pp}");
        }
    }

    #[test]
    fn identities_are_checked() {
        let mut spec = model_spec("twlnp", 2, PodWiring::Bridge);
        spec.pods.push(spec.pods[0].clone());
        let e = crate::plan::plan(&spec).unwrap_err().to_string();
        assert!(e.contains("x/a") && e.contains("twice"), "{e}");
        let mut spec = model_spec("twlnp", 2, PodWiring::Bridge);
        spec.pods[0].namespace = "n1".into();
        let e = crate::plan::plan(&spec).unwrap_err().to_string();
        assert!(e.contains("reads as a node"), "{e}");
        spec.pods[0].namespace = "X".into();
        let e = crate::plan::plan(&spec).unwrap_err().to_string();
        assert!(e.contains("a-z"), "{e}");
        let mut spec = model_spec("twlnp", 2, PodWiring::Bridge);
        spec.store = crate::plan::StoreKind::Static;
        spec.backend = BackendKind::Static;
        assert_eq!(
            crate::plan::plan(&spec).unwrap_err(),
            crate::plan::PlanError::IdentitiesNeedStore
        );
    }
}
