//! The compiler kept up to date one store change at a time: [`Compiler`] holds the table
//! [`compile`] would build and, for each [`Change`], redoes only what it touches, then
//! hands the operations from the previous table ([`Compiler::take_ops`]), so a change at
//! 10,000 pods and 1,000 policies costs what changed, not the cluster's size:
//!
//! - a pod (endpoint, labels): its membership in each named set (one selector match per
//!   set) and, if it is on this node, its profiles and dispatch elements;
//! - a namespace's labels: the same for each pod of that namespace;
//! - a policy: its chains, the sets only it used or newly uses (one pass over the pods
//!   for a new set), and the profiles of this node's pods it selects now or did.
//!
//! Its table always equals [`compile`]'s for the same cluster (checked on generated
//! change sequences below).

use std::collections::{BTreeMap, BTreeSet};

use twill_api::policy::PolicyType;

use crate::cluster::{Change, Cluster, Pod};
use crate::compile::{
    compile_global, compile_policy, dispatch_iface, CompiledPolicy, DispatchKey, Elem, Profile,
    Ruleset, Set, SetDef, CHAIN_OPEN, COUNTER_UNKNOWN,
};
use crate::compile_diff::{diff, Op};

/// A policy's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PolicyKey {
    Np(String, String),
    Gnp(String),
}

/// An endpoint's identity: (namespace, pod, node).
type EpKey = (String, String, String);

/// A local endpoint's dispatch: its keys and its egress/ingress profiles.
#[derive(Debug, Clone, PartialEq)]
struct Local {
    keys: Vec<DispatchKey>,
    egress: Profile,
    ingress: Profile,
}

/// What changed since the last [`Compiler::take_ops`], with the old values.
#[derive(Debug, Default)]
struct Before {
    /// Set name → its elements before (None: it did not exist).
    sets: BTreeMap<String, Option<Set>>,
    chains: BTreeMap<String, Option<Vec<String>>>,
    counters: BTreeMap<String, bool>,
    from_pod: BTreeMap<DispatchKey, Option<String>>,
    to_pod: BTreeMap<DispatchKey, Option<String>>,
}

#[derive(Debug)]
pub struct Compiler {
    node: String,
    bridges: BTreeMap<String, String>,
    rs: Ruleset,
    policies: BTreeMap<PolicyKey, CompiledPolicy>,
    /// Set name → its definition and how many policies use it.
    defs: BTreeMap<String, (SetDef, usize)>,
    /// Set name → element → how many endpoints contribute it.
    members: BTreeMap<String, BTreeMap<Elem, u32>>,
    /// What each endpoint contributes: set name → elements.
    contrib: BTreeMap<EpKey, BTreeMap<String, Vec<Elem>>>,
    local: BTreeMap<EpKey, Local>,
    /// Profile entry chain → (profile, how many local endpoint directions use it).
    profiles: BTreeMap<String, (Profile, usize)>,
    before: Before,
}

fn ep_key(p: &Pod) -> EpKey {
    (
        p.namespace().to_string(),
        p.name().to_string(),
        p.node().to_string(),
    )
}

impl Compiler {
    /// The table for `cluster` on `node`, from scratch.
    pub fn new(cluster: &Cluster, node: &str, bridges: BTreeMap<String, String>) -> Compiler {
        let mut c = Compiler {
            node: node.to_string(),
            bridges,
            rs: Ruleset::default(),
            policies: BTreeMap::new(),
            defs: BTreeMap::new(),
            members: BTreeMap::new(),
            contrib: BTreeMap::new(),
            local: BTreeMap::new(),
            profiles: BTreeMap::new(),
            before: Before::default(),
        };
        c.rs.counters.insert(COUNTER_UNKNOWN.into());
        c.rs.chains.insert(CHAIN_OPEN.into(), Vec::new());
        for p in cluster.policies() {
            c.set_policy(
                cluster,
                PolicyKey::Np(p.namespace.clone(), p.name.clone()),
                Some(compile_policy(p)),
                false,
            );
        }
        for g in cluster.global_policies() {
            c.set_policy(
                cluster,
                PolicyKey::Gnp(g.name.clone()),
                Some(compile_global(g)),
                false,
            );
        }
        let keys: Vec<EpKey> = cluster.pods().map(ep_key).collect();
        for k in keys {
            c.endpoint(cluster, &k);
        }
        c.before = Before::default();
        c
    }

    /// The table as it is now.
    pub fn ruleset(&self) -> &Ruleset {
        &self.rs
    }

    /// Local bridge-wired pods' bridges (host veth → bridge) were learned: the pods whose
    /// bridge is new are dispatched now.
    pub fn set_bridges(&mut self, cluster: &Cluster, bridges: BTreeMap<String, String>) {
        let changed: Vec<String> = bridges
            .iter()
            .filter(|(k, v)| self.bridges.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .chain(
                self.bridges
                    .keys()
                    .filter(|k| !bridges.contains_key(*k))
                    .cloned(),
            )
            .collect();
        self.bridges = bridges;
        if changed.is_empty() {
            return;
        }
        let eps: Vec<EpKey> = cluster
            .node_pods(&self.node)
            .filter(|p| changed.contains(&p.endpoint.host_veth))
            .map(ep_key)
            .collect();
        for k in eps {
            self.endpoint(cluster, &k);
        }
    }

    /// One change, after `cluster` applied it.
    pub fn update(&mut self, cluster: &Cluster, change: &Change) {
        match change {
            Change::Endpoint {
                node,
                namespace,
                pod,
            } => self.endpoint(cluster, &(namespace.clone(), pod.clone(), node.clone())),
            Change::PodLabels { namespace, pod } => {
                let mut keys: Vec<EpKey> =
                    cluster.pod_endpoints(namespace, pod).map(ep_key).collect();
                keys.extend(
                    self.contrib
                        .keys()
                        .filter(|k| &k.0 == namespace && &k.1 == pod)
                        .cloned(),
                );
                keys.sort();
                keys.dedup();
                for k in keys {
                    self.endpoint(cluster, &k);
                }
            }
            Change::Namespace(ns) => {
                let keys: Vec<EpKey> = self
                    .contrib
                    .keys()
                    .filter(|k| &k.0 == ns)
                    .cloned()
                    .collect();
                for k in keys {
                    self.endpoint(cluster, &k);
                }
            }
            Change::Policy { namespace, name } => {
                let compiled = cluster.policy(namespace, name).map(compile_policy);
                self.set_policy(
                    cluster,
                    PolicyKey::Np(namespace.clone(), name.clone()),
                    compiled,
                    true,
                );
            }
            Change::GlobalPolicy(name) => {
                let compiled = cluster.global_policy(name).map(compile_global);
                self.set_policy(cluster, PolicyKey::Gnp(name.clone()), compiled, true);
            }
            Change::BadKey(_) => {}
        }
    }

    /// The operations from the table at the last call (or [`Compiler::new`]) to now.
    pub fn take_ops(&mut self) -> Vec<Op> {
        let before = std::mem::take(&mut self.before);
        let mut old = Ruleset::default();
        let mut new = Ruleset::default();
        for (name, was) in before.sets {
            if let Some(s) = was {
                old.sets.insert(name.clone(), s);
            }
            if let Some(s) = self.rs.sets.get(&name) {
                new.sets.insert(name, s.clone());
            }
        }
        for (name, was) in before.chains {
            if let Some(r) = was {
                old.chains.insert(name.clone(), r);
            }
            if let Some(r) = self.rs.chains.get(&name) {
                new.chains.insert(name, r.clone());
            }
        }
        for (name, was) in before.counters {
            if was {
                old.counters.insert(name.clone());
            }
            if self.rs.counters.contains(&name) {
                new.counters.insert(name);
            }
        }
        for (k, was) in before.from_pod {
            if let Some(c) = was {
                old.from_pod.insert(k.clone(), c);
            }
            if let Some(c) = self.rs.from_pod.get(&k) {
                new.from_pod.insert(k, c.clone());
            }
        }
        for (k, was) in before.to_pod {
            if let Some(c) = was {
                old.to_pod.insert(k.clone(), c);
            }
            if let Some(c) = self.rs.to_pod.get(&k) {
                new.to_pod.insert(k, c.clone());
            }
        }
        diff(&old, &new)
    }

    // ---- touching (the old value is kept the first time) ----

    fn touch_set(&mut self, name: &str) {
        if !self.before.sets.contains_key(name) {
            let old = self.rs.sets.get(name).cloned();
            self.before.sets.insert(name.to_string(), old);
        }
    }
    fn touch_chain(&mut self, name: &str) {
        if !self.before.chains.contains_key(name) {
            let old = self.rs.chains.get(name).cloned();
            self.before.chains.insert(name.to_string(), old);
        }
    }
    fn touch_counter(&mut self, name: &str) {
        if !self.before.counters.contains_key(name) {
            let had = self.rs.counters.contains(name);
            self.before.counters.insert(name.to_string(), had);
        }
    }
    fn touch_dispatch(&mut self, egress: bool, key: &DispatchKey) {
        let (before, now) = if egress {
            (&mut self.before.from_pod, &self.rs.from_pod)
        } else {
            (&mut self.before.to_pod, &self.rs.to_pod)
        };
        if !before.contains_key(key) {
            before.insert(key.clone(), now.get(key).cloned());
        }
    }

    // ---- sets ----

    fn add_member(&mut self, set: &str, e: Elem) {
        let m = self.members.entry(set.to_string()).or_default();
        let n = m.entry(e.clone()).or_default();
        *n += 1;
        if *n == 1 {
            self.touch_set(set);
            if let Some(s) = self.rs.sets.get_mut(set) {
                s.elements.insert(e);
            }
        }
    }

    fn remove_member(&mut self, set: &str, e: &Elem) {
        let Some(m) = self.members.get_mut(set) else {
            return;
        };
        let Some(n) = m.get_mut(e) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            m.remove(e);
            self.touch_set(set);
            if let Some(s) = self.rs.sets.get_mut(set) {
                s.elements.remove(e);
            }
        }
    }

    /// Redoes one endpoint: its set memberships and, on this node, its dispatch.
    fn endpoint(&mut self, cluster: &Cluster, key: &EpKey) {
        let (ns, pod, node) = key;
        let now = cluster.endpoint(node, ns, pod);
        let mut contrib: BTreeMap<String, Vec<Elem>> = BTreeMap::new();
        if let Some(p) = now {
            for (name, (def, _)) in &self.defs {
                let e = def.elements_of(cluster, p);
                if !e.is_empty() {
                    contrib.insert(name.clone(), e);
                }
            }
        }
        let old = self.contrib.remove(key).unwrap_or_default();
        if old != contrib {
            for (set, elems) in &contrib {
                for e in elems {
                    self.add_member(set, e.clone());
                }
            }
            for (set, elems) in &old {
                for e in elems {
                    self.remove_member(set, e);
                }
            }
        }
        if !contrib.is_empty() {
            self.contrib.insert(key.clone(), contrib);
        } else if now.is_some() {
            self.contrib.insert(key.clone(), BTreeMap::new());
        }
        if node == &self.node {
            self.redo_local(cluster, key);
        }
    }

    /// Recomputes a local endpoint's profiles and dispatch elements.
    fn redo_local(&mut self, cluster: &Cluster, key: &EpKey) {
        let (ns, pod, node) = key;
        let want = cluster.endpoint(node, ns, pod).and_then(|p| {
            let iface = dispatch_iface(&p.endpoint, &self.bridges)?;
            Some(Local {
                keys: p.ips().iter().map(|ip| (iface.clone(), *ip)).collect(),
                egress: Profile::of(cluster, p, PolicyType::Egress),
                ingress: Profile::of(cluster, p, PolicyType::Ingress),
            })
        });
        let old = self.local.get(key).cloned();
        if old == want {
            return;
        }
        if let Some(w) = &want {
            self.use_profile(&w.egress);
            self.use_profile(&w.ingress);
            for k in &w.keys {
                for (egress, prof) in [(true, &w.egress), (false, &w.ingress)] {
                    self.touch_dispatch(egress, k);
                    let map = if egress {
                        &mut self.rs.from_pod
                    } else {
                        &mut self.rs.to_pod
                    };
                    map.insert(k.clone(), prof.chain());
                }
            }
        }
        if let Some(o) = &old {
            for k in &o.keys {
                if want.as_ref().is_some_and(|w| w.keys.contains(k)) {
                    continue;
                }
                for egress in [true, false] {
                    self.touch_dispatch(egress, k);
                    let map = if egress {
                        &mut self.rs.from_pod
                    } else {
                        &mut self.rs.to_pod
                    };
                    map.remove(k);
                }
            }
            self.drop_profile(&o.egress);
            self.drop_profile(&o.ingress);
        }
        match want {
            Some(w) => self.local.insert(key.clone(), w),
            None => self.local.remove(key),
        };
    }

    fn use_profile(&mut self, p: &Profile) {
        let entry = p.chain();
        if entry == CHAIN_OPEN {
            return;
        }
        if let Some((_, n)) = self.profiles.get_mut(&entry) {
            *n += 1;
            return;
        }
        for (name, rules) in p.chains() {
            self.touch_chain(&name);
            self.rs.chains.insert(name, rules);
        }
        self.profiles.insert(entry, (p.clone(), 1));
    }

    fn drop_profile(&mut self, p: &Profile) {
        let entry = p.chain();
        let Some((_, n)) = self.profiles.get_mut(&entry) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.profiles.remove(&entry);
        for (name, _) in p.chains() {
            self.touch_chain(&name);
            self.rs.chains.remove(&name);
        }
    }

    // ---- policies ----

    /// Puts (or, with `None`, removes) one policy's compiled form; with `redo`, the local
    /// pods whose profiles may change are redone.
    fn set_policy(
        &mut self,
        cluster: &Cluster,
        key: PolicyKey,
        compiled: Option<CompiledPolicy>,
        redo: bool,
    ) {
        let old = self.policies.remove(&key);
        if old == compiled {
            if let Some(c) = compiled {
                self.policies.insert(key.clone(), c);
            }
            // The policy's text is the same; its order among global policies may not be.
            if redo {
                self.redo_selected(cluster, &key);
            }
            return;
        }
        // New sets first (filled from every pod), then chains and counter, then what the
        // old form used and the new one does not.
        if let Some(c) = &compiled {
            let mut seen = BTreeSet::new();
            for d in &c.sets {
                let name = d.name();
                if !seen.insert(name.clone()) {
                    continue;
                }
                if let Some((_, n)) = self.defs.get_mut(&name) {
                    *n += 1;
                    continue;
                }
                self.defs.insert(name.clone(), (d.clone(), 1));
                self.touch_set(&name);
                self.rs.sets.insert(
                    name.clone(),
                    Set {
                        kind: d.kind(),
                        elements: BTreeSet::new(),
                    },
                );
                let mut added = Vec::new();
                for p in cluster.pods() {
                    let e = d.elements_of(cluster, p);
                    if !e.is_empty() {
                        added.push((ep_key(p), e));
                    }
                }
                for (k, elems) in added {
                    for e in &elems {
                        self.add_member(&name, e.clone());
                    }
                    self.contrib
                        .entry(k)
                        .or_default()
                        .insert(name.clone(), elems);
                }
            }
            for (name, rules) in &c.chains {
                self.touch_chain(name);
                self.rs.chains.insert(name.clone(), rules.clone());
            }
            self.touch_counter(&c.counter);
            self.rs.counters.insert(c.counter.clone());
        }
        if let Some(o) = &old {
            for name in o.chains.keys() {
                if compiled
                    .as_ref()
                    .is_some_and(|c| c.chains.contains_key(name))
                {
                    continue;
                }
                self.touch_chain(name);
                self.rs.chains.remove(name);
            }
            if compiled.as_ref().is_none_or(|c| c.counter != o.counter) {
                self.touch_counter(&o.counter);
                self.rs.counters.remove(&o.counter);
            }
            let mut seen = BTreeSet::new();
            for d in &o.sets {
                let name = d.name();
                if !seen.insert(name.clone()) {
                    continue;
                }
                let gone = match self.defs.get_mut(&name) {
                    Some((_, n)) => {
                        *n -= 1;
                        *n == 0
                    }
                    None => false,
                };
                if gone {
                    self.defs.remove(&name);
                    self.members.remove(&name);
                    self.touch_set(&name);
                    self.rs.sets.remove(&name);
                    for c in self.contrib.values_mut() {
                        c.remove(&name);
                    }
                }
            }
        }
        if let Some(c) = compiled {
            self.policies.insert(key.clone(), c);
        }
        if redo {
            self.redo_selected(cluster, &key);
        }
    }

    /// Redoes the local endpoints a policy may select (its namespace's for a
    /// NetworkPolicy, every local one for a global policy): this node's pods only, from
    /// the cluster's index by node, never a walk over every pod.
    fn redo_selected(&mut self, cluster: &Cluster, key: &PolicyKey) {
        let wanted = |k: &EpKey| match key {
            PolicyKey::Np(ns, _) => &k.0 == ns,
            PolicyKey::Gnp(_) => true,
        };
        let keys: BTreeSet<EpKey> = cluster
            .node_pods(&self.node)
            .map(ep_key)
            .chain(self.local.keys().cloned())
            .filter(|k| wanted(k))
            .collect();
        for k in keys {
            self.redo_local(cluster, &k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn endpoint(node: &str, ns: &str, pod: &str, ip: u8, label: &str, bridge: bool) -> String {
        serde_json::json!({
            "namespace": ns, "pod": pod, "node": node, "containerID": pod, "ifname": "eth0",
            "hostVeth": format!("twl{ns}{pod}"), "ips": [format!("10.244.0.{ip}")],
            "wiring": if bridge { "bridge" } else { "l3" }, "labels": {"app": label},
            "namedPorts": [{"name": "web", "port": 8000 + u16::from(ip), "protocol": "TCP"}],
        })
        .to_string()
    }

    /// One random put or delete of the store.
    fn random_change(r: &mut Rng) -> (String, Option<String>) {
        let ns = ["x", "y"][r.below(2)];
        let labels = ["a", "b", "c"];
        match r.below(6) {
            0 | 1 => {
                let i = r.below(6);
                let pod = format!("p{i}");
                let node = ["n1", "n2"][r.below(2)];
                let key = format!("endpoints/{node}/{ns}/{pod}");
                if r.below(4) == 0 {
                    return (key, None);
                }
                // One address per pod (IPAM's promise); a pod on two nodes keeps it.
                let ip = 2 + i as u8 + if ns == "x" { 0 } else { 6 };
                (
                    key,
                    Some(endpoint(
                        node,
                        ns,
                        &pod,
                        ip,
                        labels[r.below(3)],
                        r.below(2) == 0,
                    )),
                )
            }
            2 => (
                format!("podlabels/{ns}/p{}", r.below(6)),
                (r.below(3) > 0)
                    .then(|| format!(r#"{{"labels":{{"app":"{}"}}}}"#, labels[r.below(3)])),
            ),
            3 => (
                format!("namespaces/{ns}"),
                Some(format!(
                    r#"{{"labels":{{"team":"{}"}}}}"#,
                    ["t1", "t2"][r.below(2)]
                )),
            ),
            4 => {
                let key = format!("networkpolicies/{ns}/np{}", r.below(3));
                if r.below(4) == 0 {
                    return (key, None);
                }
                let sel = labels[r.below(3)];
                let peer = match r.below(3) {
                    0 => format!(
                        r#"{{"podSelector":{{"matchLabels":{{"app":"{}"}}}}}}"#,
                        labels[r.below(3)]
                    ),
                    1 => r#"{"namespaceSelector":{"matchLabels":{"team":"t1"}}}"#.to_string(),
                    _ => r#"{"ipBlock":{"cidr":"10.244.0.0/28","except":["10.244.0.3/32"]}}"#
                        .to_string(),
                };
                (
                    key,
                    Some(format!(
                        r#"{{"podSelector":{{"matchLabels":{{"app":"{sel}"}}}},"policyTypes":["Ingress","Egress"],"ingress":[{{"from":[{peer}],"ports":[{{"port":"web"}},{{"port":80}}]}}],"egress":[{{"to":[{peer}]}}]}}"#
                    )),
                )
            }
            _ => {
                let key = format!("globalnetworkpolicies/g{}", r.below(3));
                if r.below(4) == 0 {
                    return (key, None);
                }
                (
                    key,
                    Some(format!(
                        r#"{{"order":{},"selector":"app == '{}'","ingress":[{{"action":"{}","source":{{"selector":"app == '{}'"}}}},{{"action":"Log"}}],"egress":[{{"action":"Pass"}}],"types":["Ingress","Egress"]}}"#,
                        r.below(3),
                        labels[r.below(3)],
                        ["Allow", "Deny", "Pass"][r.below(3)],
                        labels[r.below(3)]
                    )),
                )
            }
        }
    }

    fn bridges_of(c: &Cluster) -> BTreeMap<String, String> {
        c.pods()
            .filter(|p| {
                p.node() == "n1" && p.endpoint.wiring == twill_api::wiring::PodWiring::Bridge
            })
            .map(|p| (p.endpoint.host_veth.clone(), "br0".to_string()))
            .collect()
    }

    #[test]
    fn the_incremental_table_equals_a_fresh_compile_after_every_change() {
        for seed in 1..=40u64 {
            let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut cluster = Cluster::new();
            let mut inc = Compiler::new(&cluster, "n1", BTreeMap::new());
            let mut kernel = inc.ruleset().clone();
            for step in 0..120 {
                let (key, value) = random_change(&mut r);
                let Some(change) = cluster.apply(&key, value.as_deref().map(str::as_bytes)) else {
                    continue;
                };
                inc.update(&cluster, &change);
                inc.set_bridges(&cluster, bridges_of(&cluster));
                let ops = inc.take_ops();
                let full = compile(&cluster, "n1", &bridges_of(&cluster));
                assert_eq!(
                    inc.ruleset(),
                    &full,
                    "seed {seed} step {step}: {key} = {value:?}"
                );
                // What the kernel would hold after the operations is the same table.
                kernel = crate::compile_diff::tests_apply(&kernel, &ops);
                assert_eq!(kernel, full, "seed {seed} step {step}: ops {ops:#?}");
            }
        }
    }
}
