//! One consistent picture of the cluster as the store holds it: the network config, the
//! nodes' status and overrides, the blocks and what each node reports in use. Read with a
//! single `list` of `/twill/v1/` (one revision), then everything else is pure.

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use twill_api::bgp::{BgpConfiguration, BgpPeer, KEY_BGP_CONFIG, PREFIX_BGP_PEERS};
use twill_api::policy::{
    Endpoint, GlobalNetworkPolicySpec, Namespace, NetworkPolicySpec, PodLabels, PREFIX_ENDPOINTS,
    PREFIX_GLOBAL_NETWORK_POLICIES, PREFIX_NAMESPACES, PREFIX_NETWORK_POLICIES, PREFIX_POD_LABELS,
};
use twill_api::resources::{
    block_from_key, Block, NetworkConfig, NodeSpec, NodeStatus, KEY_CONFIG, PREFIX_BLOCKS,
    PREFIX_NODECONFIGS, PREFIX_NODES,
};
use twill_store::{KeyValue, Revision, Store, StoreError, StoreKind, PREFIX};

/// Where each agent lists the addresses in use on its node (not leased: it outlives the
/// agent, so what a dead node held stays visible until `twill node remove`).
pub const PREFIX_ALLOCATIONS: &str = "allocations/";

pub use twill_api::resources::Allocation;

/// A `nodes/<name>` key: the agent's status.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusEntry {
    pub status: NodeStatus,
    /// Bound to a lease, i.e. kept alive by a running agent.
    pub leased: bool,
    /// When the agent last wrote it.
    pub mod_revision: Revision,
}

/// A `blocks/…` key. `cidr` is `None` when the key does not name a block; `block` is
/// `None` when the value cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockEntry {
    /// The key without the `/twill/v1/` prefix.
    pub key: String,
    pub cidr: Option<Ipv4Net>,
    pub block: Option<Block>,
    pub mod_revision: Revision,
    pub leased: bool,
}

impl BlockEntry {
    pub fn holder(&self) -> Option<&str> {
        self.block.as_ref().map(|b| b.node.as_str())
    }
}

/// A value under a known prefix that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterView {
    pub store_kind: StoreKind,
    pub revision: Revision,
    pub config: Option<NetworkConfig>,
    pub config_revision: Option<Revision>,
    pub statuses: BTreeMap<String, StatusEntry>,
    pub overrides: BTreeMap<String, NodeSpec>,
    pub blocks: Vec<BlockEntry>,
    pub allocations: BTreeMap<String, Vec<Allocation>>,
    /// The cluster's BGPConfiguration, when one is stored (else the defaults apply).
    pub bgp_config: Option<BgpConfiguration>,
    /// BGPPeer rules by name.
    pub bgp_peers: BTreeMap<String, BgpPeer>,
    /// NetworkPolicies by (namespace, name).
    pub network_policies: BTreeMap<(String, String), NetworkPolicySpec>,
    /// GlobalNetworkPolicies by name.
    pub global_network_policies: BTreeMap<String, GlobalNetworkPolicySpec>,
    /// Namespaces applied or labelled, by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods as their agents publish them, by (namespace, pod, node).
    pub endpoints: BTreeMap<(String, String, String), Endpoint>,
    /// Labels set with `twill label pod`, by (namespace, pod).
    pub pod_labels: BTreeMap<(String, String), PodLabels>,
    pub unreadable: Vec<Unreadable>,
}

/// `a/b` as its two parts, both non-empty and without more slashes.
fn two(rest: &str) -> Option<(String, String)> {
    let (a, b) = rest.split_once('/')?;
    (!a.is_empty() && !b.is_empty() && !b.contains('/')).then(|| (a.to_string(), b.to_string()))
}

impl ClusterView {
    /// Reads the whole of `/twill/v1/` in one list (one revision).
    pub fn load(store: &dyn Store) -> Result<ClusterView, StoreError> {
        let (kvs, revision) = store.list(PREFIX)?;
        Ok(ClusterView::from_kvs(store.kind(), revision, &kvs))
    }

    /// Sorts listed keys into the view. Pure: unknown keys are ignored, unreadable values
    /// are kept in `unreadable` so `ipam check` can name them.
    pub fn from_kvs(store_kind: StoreKind, revision: Revision, kvs: &[KeyValue]) -> ClusterView {
        let mut v = ClusterView {
            store_kind,
            revision,
            ..ClusterView::default()
        };
        for kv in kvs {
            let Some(key) = kv.key.strip_prefix(PREFIX) else {
                continue;
            };
            let mut bad = |e: serde_json::Error| {
                v.unreadable.push(Unreadable {
                    key: key.to_string(),
                    reason: e.to_string(),
                })
            };
            if key == KEY_CONFIG {
                match serde_json::from_slice(&kv.value) {
                    Ok(c) => {
                        v.config = Some(c);
                        v.config_revision = Some(kv.mod_revision);
                    }
                    Err(e) => bad(e),
                }
            } else if let Some(name) = key.strip_prefix(PREFIX_NODES) {
                match serde_json::from_slice(&kv.value) {
                    Ok(status) => {
                        v.statuses.insert(
                            name.to_string(),
                            StatusEntry {
                                status,
                                leased: kv.lease.is_some(),
                                mod_revision: kv.mod_revision,
                            },
                        );
                    }
                    Err(e) => bad(e),
                }
            } else if let Some(name) = key.strip_prefix(PREFIX_NODECONFIGS) {
                match serde_json::from_slice(&kv.value) {
                    Ok(spec) => {
                        v.overrides.insert(name.to_string(), spec);
                    }
                    Err(e) => bad(e),
                }
            } else if key == KEY_BGP_CONFIG {
                match serde_json::from_slice(&kv.value) {
                    Ok(c) => v.bgp_config = Some(c),
                    Err(e) => bad(e),
                }
            } else if let Some(name) = key.strip_prefix(PREFIX_BGP_PEERS) {
                match serde_json::from_slice(&kv.value) {
                    Ok(p) => {
                        v.bgp_peers.insert(name.to_string(), p);
                    }
                    Err(e) => bad(e),
                }
            } else if let Some(rest) = key.strip_prefix(PREFIX_NETWORK_POLICIES) {
                match (two(rest), serde_json::from_slice(&kv.value)) {
                    (Some(k), Ok(p)) => {
                        v.network_policies.insert(k, p);
                    }
                    (None, _) => v.unreadable.push(Unreadable {
                        key: key.to_string(),
                        reason: "not networkpolicies/<namespace>/<name>".into(),
                    }),
                    (_, Err(e)) => bad(e),
                }
            } else if let Some(name) = key.strip_prefix(PREFIX_GLOBAL_NETWORK_POLICIES) {
                match serde_json::from_slice(&kv.value) {
                    Ok(p) => {
                        v.global_network_policies.insert(name.to_string(), p);
                    }
                    Err(e) => bad(e),
                }
            } else if let Some(name) = key.strip_prefix(PREFIX_NAMESPACES) {
                match serde_json::from_slice(&kv.value) {
                    Ok(n) => {
                        v.namespaces.insert(name.to_string(), n);
                    }
                    Err(e) => bad(e),
                }
            } else if let Some(rest) = key.strip_prefix(PREFIX_POD_LABELS) {
                match (two(rest), serde_json::from_slice(&kv.value)) {
                    (Some(k), Ok(l)) => {
                        v.pod_labels.insert(k, l);
                    }
                    (None, _) => v.unreadable.push(Unreadable {
                        key: key.to_string(),
                        reason: "not podlabels/<namespace>/<pod>".into(),
                    }),
                    (_, Err(e)) => bad(e),
                }
            } else if key.starts_with(PREFIX_ENDPOINTS) {
                match serde_json::from_slice::<Endpoint>(&kv.value) {
                    Ok(ep) => {
                        v.endpoints
                            .insert((ep.namespace.clone(), ep.pod.clone(), ep.node.clone()), ep);
                    }
                    Err(e) => bad(e),
                }
            } else if let Some(name) = key.strip_prefix(PREFIX_ALLOCATIONS) {
                match serde_json::from_slice(&kv.value) {
                    Ok(list) => {
                        v.allocations.insert(name.to_string(), list);
                    }
                    Err(e) => bad(e),
                }
            } else if key.starts_with(PREFIX_BLOCKS) {
                let block = match serde_json::from_slice::<Block>(&kv.value) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        bad(e);
                        None
                    }
                };
                v.blocks.push(BlockEntry {
                    key: key.to_string(),
                    cidr: block_from_key(key),
                    block,
                    mod_revision: kv.mod_revision,
                    leased: kv.lease.is_some(),
                });
            }
        }
        v
    }

    /// Whether the node's agent looks alive: its status key exists and (on stores with
    /// leases) is bound to one. The static store has no leases: its nodes are always live.
    pub fn is_live(&self, node: &str) -> bool {
        self.statuses
            .get(node)
            .is_some_and(|s| s.leased || self.store_kind == StoreKind::Static)
    }

    /// The parsed blocks held by `node`, in key order.
    pub fn blocks_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a BlockEntry> + 'a {
        self.blocks
            .iter()
            .filter(move |b| b.cidr.is_some() && b.holder() == Some(node))
    }

    /// Every node name the store mentions: status, override, block holder, allocations.
    pub fn node_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .statuses
            .keys()
            .chain(self.overrides.keys())
            .chain(self.allocations.keys())
            .cloned()
            .chain(
                self.blocks
                    .iter()
                    .filter_map(|b| b.holder().map(String::from)),
            )
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// How many of the node's reported addresses lie in `cidr`.
    pub fn used_in(&self, node: &str, cidr: Ipv4Net) -> u64 {
        self.allocations
            .get(node)
            .map(|l| l.iter().filter(|a| cidr.contains(&a.ip)).count() as u64)
            .unwrap_or(0)
    }
}

/// How many addresses of a block pods may get: host-local's defaults, as twill-cni uses
/// them (network, gateway and broadcast excluded).
pub fn block_capacity(cidr: Ipv4Net) -> u64 {
    twill_ipam::pool::Range::new(cidr, None, None, None)
        .ok()
        .and_then(|r| twill_ipam::pool::Pool::new(vec![r], vec![]).ok())
        .map(|p| u64::from(p.capacity()))
        .unwrap_or(0)
}

#[cfg(test)]
pub mod fixtures {
    //! Hand-made store contents for the pure tests.
    use super::*;
    use twill_store::LeaseId;

    pub fn kv(key: &str, value: serde_json::Value, rev: Revision, leased: bool) -> KeyValue {
        KeyValue {
            key: format!("{PREFIX}{key}"),
            value: serde_json::to_vec(&value).unwrap(),
            create_revision: rev,
            mod_revision: rev,
            lease: leased.then_some(LeaseId(7)),
        }
    }

    pub fn config(cidr: &str, size: u8) -> serde_json::Value {
        serde_json::json!({"clusterCIDR": cidr, "blockSize": size})
    }

    pub fn status(name: &str, addr: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "address": addr, "autodetection": "first-found",
            "reason": "eth0 is the first usable interface", "startedAt": 1000, "agentVersion": "0.1.0"})
    }

    pub fn block(cidr: &str, node: &str) -> (String, serde_json::Value) {
        let net: Ipv4Net = cidr.parse().unwrap();
        (
            twill_api::resources::block_key(net),
            serde_json::json!({"cidr": cidr, "node": node, "claimedAt": 1000}),
        )
    }

    pub fn alloc(ip: &str, container: &str, present: bool) -> serde_json::Value {
        serde_json::json!({"ip": ip, "containerID": container, "ifname": "eth0",
            "hostVeth": format!("veth{container}"), "present": present})
    }

    /// n1 (live, 10.244.1.0/24, two pods), n2 (live, 10.244.2.0/24, one pod).
    pub fn clean() -> Vec<KeyValue> {
        let (b1, v1) = block("10.244.1.0/24", "n1");
        let (b2, v2) = block("10.244.2.0/24", "n2");
        vec![
            kv("config", config("10.244.0.0/16", 24), 1, false),
            kv("nodes/n1", status("n1", "192.0.2.11"), 2, true),
            kv("nodes/n2", status("n2", "192.0.2.12"), 3, true),
            kv(&b1, v1, 4, true),
            kv(&b2, v2, 5, true),
            kv(
                "allocations/n1",
                serde_json::json!([
                    alloc("10.244.1.2", "a", true),
                    alloc("10.244.1.3", "b", true)
                ]),
                6,
                false,
            ),
            kv(
                "allocations/n2",
                serde_json::json!([alloc("10.244.2.2", "c", true)]),
                7,
                false,
            ),
        ]
    }

    pub fn view(kvs: &[KeyValue]) -> ClusterView {
        ClusterView::from_kvs(StoreKind::Embedded, 100, kvs)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn sorts_keys_into_the_view() {
        let mut kvs = clean();
        kvs.push(kv(
            "nodeconfigs/n3",
            serde_json::json!({"ipv4Address": "192.0.2.13"}),
            8,
            false,
        ));
        kvs.push(kv("nodes/bad", serde_json::json!({"name": 1}), 9, true));
        kvs.push(kv(
            "bgpconfig",
            serde_json::json!({"asNumber": 65001}),
            10,
            false,
        ));
        kvs.push(kv(
            "bgppeers/tor",
            serde_json::json!({"peerIP": "192.0.2.1", "asNumber": 65000}),
            11,
            false,
        ));
        kvs.push(kv(
            "bgppeers/bad",
            serde_json::json!({"peerIP": 7}),
            12,
            false,
        ));
        let v = view(&kvs);
        assert_eq!(v.bgp_config.as_ref().unwrap().as_number(), 65001);
        assert_eq!(v.bgp_peers["tor"].as_number, Some(65000));
        assert_eq!(v.bgp_peers.len(), 1);
        assert_eq!(v.config.as_ref().unwrap().block_size, 24);
        assert_eq!(v.config_revision, Some(1));
        assert_eq!(v.statuses.len(), 2);
        assert!(v.is_live("n1") && !v.is_live("n3"));
        assert_eq!(v.blocks.len(), 2);
        assert_eq!(v.blocks_of("n1").count(), 1);
        assert_eq!(v.used_in("n1", "10.244.1.0/24".parse().unwrap()), 2);
        assert_eq!(v.node_names(), ["n1", "n2", "n3"]);
        assert_eq!(v.unreadable.len(), 2);
        assert_eq!(v.unreadable[0].key, "nodes/bad");
        assert_eq!(v.unreadable[1].key, "bgppeers/bad");
    }

    #[test]
    fn a_node_without_a_lease_is_live_only_on_the_static_store() {
        let kvs = [kv("nodes/n1", status("n1", "192.0.2.11"), 2, false)];
        for kind in StoreKind::ALL {
            let v = ClusterView::from_kvs(kind, 2, &kvs);
            assert_eq!(v.is_live("n1"), kind == StoreKind::Static, "{kind}");
        }
    }

    #[test]
    fn block_capacity_matches_host_local() {
        assert_eq!(block_capacity("10.244.1.0/24".parse().unwrap()), 253);
        assert_eq!(block_capacity("10.244.1.0/26".parse().unwrap()), 61);
    }
}
