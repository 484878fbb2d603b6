//! The node's pods as endpoints in the store: `endpoints/<node>/<namespace>/<pod>`
//! ([`Endpoint`]), one per pod twill-cni has a record of, bound to the agent's lease so
//! they leave with DEL and GC (the record goes) and with the node (the lease goes). Pure:
//! records in, the desired key/values out ([`desired`]), and [`Publisher`], which turns
//! the difference between what is desired and what the store holds under the current
//! lease into one store operation at a time (the machine runs them, see
//! [`crate::machine`]).
//!
//! When an endpoint of this node is deleted because its pod went (DEL or GC removed the
//! record, or it was found stale at start), the pod's hand-set labels
//! (`podlabels/<namespace>/<pod>`, from `twill label pod`) are deleted after it, as
//! Kubernetes drops a deleted pod's labels with the pod, unless the pod is back on this
//! node meanwhile. Labels of pods on a node that goes away without a DEL (the lease
//! expires) are not collected.
//!
//! Once per lease the publisher first lists `endpoints/<node>/`: what it finds under
//! another lease (an earlier run's, still alive) or none is rewritten if still desired
//! and deleted if not, so a pod removed while the agent was down does not linger until
//! the old lease expires.
//!
//! A pod with two interfaces on the network (two records of one container) is one
//! endpoint holding both addresses; the interface, host veth and MAC are the first
//! interface's (by name).

pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use twill_api::cni::RecordExtra;
use twill_api::policy::{
    endpoint_key, pod_labels_key, Endpoint, DEFAULT_NAMESPACE, PREFIX_ENDPOINTS,
};
use twill_ipam::records::Record;
use twill_store::{Event, KeyValue, LeaseId, PREFIX};

/// Store keys (relative to `/twill/v1/`) and their JSON values.
pub type Desired = BTreeMap<String, Vec<u8>>;

/// `endpoints/<node>/`.
pub fn node_prefix(node: &str) -> String {
    format!("{PREFIX_ENDPOINTS}{node}/")
}

/// A record whose identity cannot make a store key ('/' in a name, or empty): left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub attachment: String,
    pub reason: String,
}

/// The endpoints `records` describe, by key; records that cannot be one are returned
/// apart with the reason.
pub fn endpoints(node: &str, records: &[Record]) -> (BTreeMap<String, Endpoint>, Vec<Skipped>) {
    let mut out: BTreeMap<String, Endpoint> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for r in sorted {
        let extra: RecordExtra = serde_json::from_value(r.extra.clone()).unwrap_or_default();
        let namespace = extra
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let pod = extra
            .pod
            .clone()
            .unwrap_or_else(|| r.key.container_id.clone());
        if let Some(bad) = [&namespace, &pod]
            .into_iter()
            .find(|n| n.is_empty() || n.contains('/'))
        {
            skipped.push(Skipped {
                attachment: r.key.to_string(),
                reason: format!(
                    "{bad:?} cannot be part of the key endpoints/{node}/<namespace>/<pod>"
                ),
            });
            continue;
        }
        let k = endpoint_key(node, &namespace, &pod);
        match out.get_mut(&k) {
            Some(e) => {
                if !e.ips.contains(&r.ip) {
                    e.ips.push(r.ip);
                    e.ips.sort();
                }
            }
            None => {
                out.insert(
                    k,
                    Endpoint {
                        namespace,
                        pod,
                        node: node.to_string(),
                        container_id: r.key.container_id.clone(),
                        ifname: r.key.ifname.clone(),
                        host_veth: extra.host_veth,
                        ips: vec![r.ip],
                        mac: extra.mac,
                        wiring: extra.wiring,
                        labels: extra.labels,
                        named_ports: extra.named_ports,
                    },
                );
            }
        }
    }
    (out, skipped)
}

/// [`endpoints`] as the key/values to publish.
pub fn desired(node: &str, records: &[Record]) -> (Desired, Vec<Skipped>) {
    let (eps, skipped) = endpoints(node, records);
    let d = eps
        .into_iter()
        .map(|(k, e)| (k, serde_json::to_vec(&e).expect("an endpoint serializes")))
        .collect();
    (d, skipped)
}

/// One store operation the publisher wants (keys relative to `/twill/v1/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// List `endpoints/<node>/` (once per lease).
    List(String),
    /// Put under the lease.
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete(String),
    /// Delete a gone pod's `podlabels/<namespace>/<pod>` (no lease: `twill label` wrote it).
    DropLabels(String),
}

/// What the agent has published and wants published.
#[derive(Debug, Clone, Default)]
pub struct Publisher {
    node: String,
    /// None until the records have been read once.
    desired: Option<Desired>,
    /// The lease `published` is under.
    lease: Option<LeaseId>,
    /// `endpoints/<node>/` listed under `lease`.
    listed: bool,
    /// What the store holds under `lease` as far as we know; an empty value stands for a
    /// key held otherwise (another lease, or none), which is always rewritten or removed.
    published: BTreeMap<String, Vec<u8>>,
    /// `podlabels/<namespace>/<pod>` of pods whose endpoint this publisher deleted.
    drop_labels: BTreeSet<String>,
}

impl Publisher {
    pub fn new(node: &str) -> Publisher {
        Publisher {
            node: node.to_string(),
            ..Publisher::default()
        }
    }

    /// What the records say now.
    pub fn set_desired(&mut self, d: Desired) {
        self.desired = Some(d);
    }

    pub fn desired(&self) -> Option<&Desired> {
        self.desired.as_ref()
    }

    /// The next operation under `lease`, if anything differs. A new lease starts over:
    /// the keys of the old one vanish with it (or linger under it until it expires).
    pub fn next(&mut self, lease: LeaseId) -> Option<Op> {
        if self.lease != Some(lease) {
            self.lease = Some(lease);
            self.listed = false;
            self.published.clear();
        }
        let desired = self.desired.as_ref()?;
        if !self.listed {
            return Some(Op::List(node_prefix(&self.node)));
        }
        if let Some((k, v)) = desired
            .iter()
            .find(|(k, v)| self.published.get(*k) != Some(*v))
        {
            return Some(Op::Put {
                key: k.clone(),
                value: v.clone(),
            });
        }
        if let Some(k) = self.published.keys().find(|k| !desired.contains_key(*k)) {
            return Some(Op::Delete(k.clone()));
        }
        // A pod back on this node keeps its labels.
        let back: Vec<String> = desired
            .keys()
            .filter_map(|k| self.labels_key(k))
            .filter(|l| self.drop_labels.contains(l))
            .collect();
        for l in back {
            self.drop_labels.remove(&l);
        }
        self.drop_labels.first().cloned().map(Op::DropLabels)
    }

    /// `podlabels/<namespace>/<pod>` of one of this node's endpoint keys.
    fn labels_key(&self, endpoint: &str) -> Option<String> {
        let rest = endpoint.strip_prefix(&node_prefix(&self.node))?;
        let (ns, pod) = rest.split_once('/')?;
        Some(pod_labels_key(ns, pod))
    }

    /// `op` (from [`Publisher::next`] under `lease`) succeeded; for a list, `listed` is
    /// what it found (full keys).
    pub fn done(&mut self, lease: LeaseId, op: &Op, listed: &[KeyValue]) {
        if self.lease != Some(lease) {
            return;
        }
        match op {
            Op::List(_) => {
                self.listed = true;
                self.published.clear();
                for kv in listed {
                    let Some(rel) = kv.key.strip_prefix(PREFIX) else {
                        continue;
                    };
                    let value = if kv.lease == Some(lease) {
                        kv.value.clone()
                    } else {
                        Vec::new()
                    };
                    self.published.insert(rel.to_string(), value);
                }
            }
            Op::Put { key, value } => {
                self.published.insert(key.clone(), value.clone());
            }
            Op::Delete(key) => {
                self.published.remove(key);
                if let Some(l) = self.labels_key(key) {
                    self.drop_labels.insert(l);
                }
            }
            Op::DropLabels(key) => {
                self.drop_labels.remove(key);
            }
        }
    }

    /// A store event: a key of ours changed by someone else (deleted, or written under
    /// another lease or with another value) is forgotten, so [`Publisher::next`] puts it
    /// back (or removes it). True if the event was about this node's endpoints.
    pub fn on_event(&mut self, ev: &Event) -> bool {
        let Some(rel) = ev.key().strip_prefix(PREFIX) else {
            return false;
        };
        if !rel.starts_with(&node_prefix(&self.node)) {
            return false;
        }
        match ev {
            Event::Put(kv) => {
                let ours = kv.lease.is_some() && kv.lease == self.lease;
                if !(ours && self.published.get(rel) == Some(&kv.value)) {
                    // Someone else's write (or an older one of ours overtaken by the
                    // next): take it as unknown.
                    self.published.insert(rel.to_string(), Vec::new());
                }
            }
            Event::Delete { .. } => {
                self.published.remove(rel);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::Ipv4Addr;
    use twill_api::wiring::PodWiring;
    use twill_ipam::records::AttachmentKey;

    fn record(cid: &str, ifname: &str, ip: [u8; 4], extra: serde_json::Value) -> Record {
        Record {
            key: AttachmentKey::new(cid, ifname),
            ip: Ipv4Addr::from(ip),
            extra,
        }
    }

    #[test]
    fn records_become_endpoints_with_identity_labels_ports_and_mac() {
        let recs = vec![
            record(
                "c1",
                "eth0",
                [10, 244, 1, 5],
                json!({"hostVeth":"twl1","wiring":"l3","namespace":"x","pod":"a",
                       "labels":{"pod":"a"},"namedPorts":[{"name":"serve-80-tcp","port":80,"protocol":"TCP"}],
                       "mac":"02:00:00:00:00:01"}),
            ),
            // An old record: no identity.
            record("c2", "eth0", [10, 244, 1, 6], json!({"hostVeth":"twl2"})),
        ];
        let (eps, skipped) = endpoints("n1", &recs);
        assert!(skipped.is_empty());
        let a = &eps["endpoints/n1/x/a"];
        assert_eq!((a.node.as_str(), a.host_veth.as_str()), ("n1", "twl1"));
        assert_eq!(a.ips, vec![Ipv4Addr::new(10, 244, 1, 5)]);
        assert_eq!(a.wiring, PodWiring::L3);
        assert_eq!(a.labels.get("pod").map(String::as_str), Some("a"));
        assert_eq!(a.named_ports[0].port, 80);
        assert_eq!(a.mac.as_deref(), Some("02:00:00:00:00:01"));
        let old = &eps["endpoints/n1/default/c2"];
        assert_eq!((old.pod.as_str(), old.wiring), ("c2", PodWiring::Bridge));
    }

    #[test]
    fn two_interfaces_of_one_pod_are_one_endpoint_and_bad_names_are_skipped() {
        let id = json!({"hostVeth":"twl1","namespace":"x","pod":"a"});
        let recs = vec![
            record("c1", "net1", [10, 244, 1, 9], id.clone()),
            record("c1", "eth0", [10, 244, 1, 5], id),
            record(
                "c3",
                "eth0",
                [10, 244, 1, 7],
                json!({"hostVeth":"t","pod":"a/b"}),
            ),
        ];
        let (eps, skipped) = endpoints("n1", &recs);
        assert_eq!(eps.len(), 1);
        let a = &eps["endpoints/n1/x/a"];
        assert_eq!(a.ifname, "eth0");
        assert_eq!(
            a.ips,
            vec![Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 9)]
        );
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].reason.contains("a/b"), "{skipped:?}");
    }

    fn kv(rel: &str, value: &[u8], lease: Option<LeaseId>) -> KeyValue {
        KeyValue {
            key: format!("{PREFIX}{rel}"),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease,
        }
    }

    /// Runs the publisher against a map standing for the store, as the machine would.
    fn drain(
        p: &mut Publisher,
        lease: LeaseId,
        store: &mut BTreeMap<String, (Vec<u8>, Option<LeaseId>)>,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        while let Some(op) = p.next(lease) {
            assert!(ops.len() < 100, "no progress: {ops:?}");
            let listed: Vec<KeyValue> = match &op {
                Op::List(prefix) => store
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix.as_str()))
                    .map(|(k, (v, l))| kv(k, v, *l))
                    .collect(),
                Op::Put { key, value } => {
                    store.insert(key.clone(), (value.clone(), Some(lease)));
                    vec![]
                }
                Op::Delete(key) | Op::DropLabels(key) => {
                    store.remove(key);
                    vec![]
                }
            };
            p.done(lease, &op, &listed);
            ops.push(op);
        }
        ops
    }

    fn d(pairs: &[(&str, &str)]) -> Desired {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn publishes_changes_only_and_removes_what_went() {
        let l = LeaseId(7);
        let mut store = BTreeMap::new();
        let mut p = Publisher::new("n1");
        assert_eq!(p.next(l), None, "nothing before the records are read");
        p.set_desired(d(&[("endpoints/n1/x/a", "A"), ("endpoints/n1/x/b", "B")]));
        let ops = drain(&mut p, l, &mut store);
        assert_eq!(ops.len(), 3, "list, then two puts: {ops:?}");
        assert_eq!(drain(&mut p, l, &mut store), vec![], "nothing twice");
        p.set_desired(d(&[("endpoints/n1/x/a", "A2")]));
        let ops = drain(&mut p, l, &mut store);
        assert_eq!(
            ops,
            vec![
                Op::Put {
                    key: "endpoints/n1/x/a".into(),
                    value: b"A2".to_vec()
                },
                Op::Delete("endpoints/n1/x/b".into()),
                Op::DropLabels("podlabels/x/b".into()),
            ]
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_gone_pods_hand_set_labels_go_after_it_unless_it_is_back() {
        let l = LeaseId(7);
        let mut store = BTreeMap::new();
        let labels = |store: &mut BTreeMap<String, (Vec<u8>, Option<LeaseId>)>, pod: &str| {
            store.insert(format!("podlabels/x/{pod}"), (b"{}".to_vec(), None));
        };
        let mut p = Publisher::new("n1");
        p.set_desired(d(&[("endpoints/n1/x/a", "A"), ("endpoints/n1/x/b", "B")]));
        drain(&mut p, l, &mut store);
        labels(&mut store, "a");
        labels(&mut store, "b");
        labels(&mut store, "elsewhere");
        // b goes (DEL): its endpoint, then its labels; a's and another pod's stay.
        p.set_desired(d(&[("endpoints/n1/x/a", "A")]));
        let ops = drain(&mut p, l, &mut store);
        assert_eq!(
            ops,
            vec![
                Op::Delete("endpoints/n1/x/b".into()),
                Op::DropLabels("podlabels/x/b".into())
            ]
        );
        assert!(store.contains_key("podlabels/x/a") && store.contains_key("podlabels/x/elsewhere"));
        assert!(!store.contains_key("podlabels/x/b"));
        // a goes and comes back before its labels were dropped: they stay.
        p.set_desired(BTreeMap::new());
        let op = p.next(l).unwrap();
        assert_eq!(op, Op::Delete("endpoints/n1/x/a".into()));
        p.done(l, &op, &[]);
        store.remove("endpoints/n1/x/a");
        p.set_desired(d(&[("endpoints/n1/x/a", "A")]));
        let ops = drain(&mut p, l, &mut store);
        assert!(matches!(&ops[..], [Op::Put { .. }]), "{ops:?}");
        assert!(store.contains_key("podlabels/x/a"));
        assert_eq!(p.next(l), None);
    }

    #[test]
    fn at_start_stale_keys_of_this_node_go_and_live_ones_move_to_the_new_lease() {
        let (old, new) = (LeaseId(1), LeaseId(2));
        let mut store = BTreeMap::new();
        store.insert(
            "endpoints/n1/x/gone".to_string(),
            (b"G".to_vec(), Some(old)),
        );
        store.insert("endpoints/n1/x/a".to_string(), (b"A".to_vec(), Some(old)));
        store.insert("endpoints/n2/x/other".to_string(), (b"O".to_vec(), None));
        let mut p = Publisher::new("n1");
        p.set_desired(d(&[("endpoints/n1/x/a", "A")]));
        drain(&mut p, new, &mut store);
        assert_eq!(store["endpoints/n1/x/a"], (b"A".to_vec(), Some(new)));
        assert!(!store.contains_key("endpoints/n1/x/gone"));
        assert!(
            store.contains_key("endpoints/n2/x/other"),
            "another node's stays"
        );
        // A new lease: everything is written again under it.
        let ops = drain(&mut p, LeaseId(3), &mut store);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert_eq!(store["endpoints/n1/x/a"].1, Some(LeaseId(3)));
    }

    #[test]
    fn a_key_deleted_or_overwritten_by_someone_else_is_put_back() {
        let l = LeaseId(7);
        let mut store = BTreeMap::new();
        let mut p = Publisher::new("n1");
        p.set_desired(d(&[("endpoints/n1/x/a", "A")]));
        drain(&mut p, l, &mut store);
        // Our own write echoed back: nothing to do.
        assert!(p.on_event(&Event::Put(kv("endpoints/n1/x/a", b"A", Some(l)))));
        assert_eq!(p.next(l), None);
        assert!(p.on_event(&Event::Delete {
            key: format!("{PREFIX}endpoints/n1/x/a"),
            mod_revision: 9
        }));
        assert!(matches!(p.next(l), Some(Op::Put { .. })));
        drain(&mut p, l, &mut store);
        p.on_event(&Event::Put(kv("endpoints/n1/x/zzz", b"Z", None)));
        assert_eq!(p.next(l), Some(Op::Delete("endpoints/n1/x/zzz".into())));
        assert!(!p.on_event(&Event::Put(kv("endpoints/n2/x/a", b"A", None))));
    }
}
