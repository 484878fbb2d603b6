//! The cluster's resources as they live in the store (JSON values under `/twill/v1/`) and
//! as users write them for `twill apply -f` (YAML or JSON documents with `kind`,
//! `metadata.name` and `spec`, like calicoctl's).
//!
//! | key | resource | written by |
//! |---|---|---|
//! | `config` | [`NetworkConfig`] | `twill apply` |
//! | `nodes/<name>` | [`NodeStatus`] (bound to the agent's lease) | `twilld` |
//! | `nodeconfigs/<name>` | [`NodeSpec`] (overrides, e.g. the node IP) | `twill apply` (kind `Node`) |
//! | `blocks/<a.b.c.d>-<len>` | [`Block`] (bound to the holder's lease) | `twilld` |
//! | `allocations/<node>` | a list of [`Allocation`] (bound to the agent's lease) | `twilld` |
//! | `peers/<node>` | [`PeerView`]: what this node's probes see of every peer (bound to its lease) | `twilld` |
//! | `bgpconfig`, `bgppeers/<name>`, `routingstatus/<node>` | Calico mode's, see [`crate::bgp`] | `twill apply`, `twilld` |

pub use crate::backend::{BackendKind, BackendSpec, UdpOptions, VxlanOptions};
use crate::wiring::PodWiring;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

pub const KEY_CONFIG: &str = "config";
pub const PREFIX_NODES: &str = "nodes/";
pub const PREFIX_NODECONFIGS: &str = "nodeconfigs/";
pub const PREFIX_BLOCKS: &str = "blocks/";
pub const PREFIX_ALLOCATIONS: &str = "allocations/";
pub const PREFIX_PEERS: &str = "peers/";

/// The store key of a block: `blocks/10.244.1.0-24`.
pub fn block_key(cidr: Ipv4Net) -> String {
    format!("{PREFIX_BLOCKS}{}-{}", cidr.network(), cidr.prefix_len())
}

/// The block a `blocks/…` key names.
pub fn block_from_key(key: &str) -> Option<Ipv4Net> {
    let rest = key.rsplit_once(PREFIX_BLOCKS)?.1;
    let (addr, len) = rest.split_once('-')?;
    Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()
}

fn default_block_size() -> u8 {
    24
}
fn default_backend() -> BackendSpec {
    BackendSpec::None
}
fn is_bridge(w: &PodWiring) -> bool {
    *w == PodWiring::Bridge
}
fn default_mtu() -> u32 {
    1500
}
fn default_true() -> bool {
    true
}
fn default_lease_ttl() -> u64 {
    3600
}

/// The network config: the address space every node's blocks come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    /// All pod addresses, e.g. 10.244.0.0/16.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Net,
    /// Prefix length of one block: 24 (flannel's one subnet per node) or smaller blocks,
    /// e.g. 26 (Calico's), of which a node claims more as it fills.
    #[serde(default = "default_block_size")]
    pub block_size: u8,
    /// The first and last block that may be handed out (flannel's SubnetMin/SubnetMax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_min: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_max: Option<Ipv4Net>,
    /// Ranges never handed out to any node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reservations: Vec<Ipv4Net>,
    /// How packets cross nodes: `none`, `host-gw`, `vxlan` or `static` (the VXLAN mesh of
    /// a hand-written static file), as a name or `{type, vni, port, directRouting}`.
    #[serde(default = "default_backend")]
    pub backend: BackendSpec,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Masquerade pod traffic leaving the cluster CIDR.
    #[serde(default = "default_true")]
    pub masquerade: bool,
    /// How pods meet their node: `bridge` (the default) or `l3` (Calico's: a /32 route
    /// per pod, proxy ARP, no bridge). Handed to twill-cni through the hand-off.
    #[serde(default, skip_serializing_if = "is_bridge")]
    pub pod_wiring: PodWiring,
    /// How long a node's claims outlive its last renewal (flannel keeps leases for 24 h).
    #[serde(default = "default_lease_ttl", rename = "leaseTTLSeconds")]
    pub lease_ttl_seconds: u64,
}

/// A user's settings for one node (`kind: Node`): overrides what the agent would detect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// The node's IP, instead of autodetection (Calico's `spec.bgp.ipv4Address`). A CIDR
    /// ("192.0.2.11/24") or a bare address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// BGP settings of this node (its own AS, route reflection, router ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<crate::bgp::NodeBgp>,
    /// The node's labels (`metadata.labels` in a resource file, never `spec.labels`),
    /// matched by BGPPeer selectors.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What a running agent publishes about its node (bound to its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    /// The node IP other nodes use.
    pub address: Ipv4Addr,
    /// How the address was chosen ("first-found", "interface=eth.*", "override", …).
    pub autodetection: String,
    /// Why this address, in words (interface, rule matched).
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<Ipv4Net>,
    /// Seconds since the epoch when the agent started.
    #[serde(default)]
    pub started_at: u64,
    #[serde(default)]
    pub agent_version: String,
}

/// What one node's agent sees of its peers: it probes the address each peer advertises
/// (ICMP echo) and publishes the outcome, so a node IP no one can reach is caught (the
/// seed's `first-found` trap). Peers not probed yet are absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    /// The observing node's own address and the interface holding it (if any holds it).
    pub address: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Peer name → what the probes of its advertised address found. When `summary` is
    /// present the view is partial: only peers not reachable at their last probe are
    /// listed, and every peer absent was reachable (so the store holds O(problems) per
    /// node, not O(nodes)).
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, PeerReach>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<PeerSummary>,
}

/// The counts behind a partial [`PeerView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PeerSummary {
    /// Peers with a verdict.
    pub probed: u32,
    pub reachable: u32,
    /// Peers known but not probed yet (absent from `peers`, no verdict).
    #[serde(default)]
    pub unprobed: u32,
    /// Seconds since the epoch of the oldest verdict: every result is at least this fresh.
    pub oldest_checked: u64,
    /// The longest a peer waits for its probe, in seconds (peers / sample × interval).
    pub cover_seconds: u64,
}

/// One peer as seen from one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReach {
    /// The address probed (the peer's advertised node IP when probed).
    pub address: Ipv4Addr,
    pub reachable: bool,
    /// The last round-trip time, when the last probe was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_micros: Option<u64>,
    /// Seconds since the epoch when `reachable` took its current value.
    pub since: u64,
    /// Seconds since the epoch when the last probe ended (0: before this field existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub checked: u64,
    /// Probes unanswered in a row.
    #[serde(default)]
    pub failures: u32,
    /// Why the last probe failed (no reply, no route, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How this node's backend carries traffic to the peer ("host-gw direct", "vxlan
    /// tunnel", "host-gw unrouted: off segment", …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
}

/// A block of pod addresses held by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Block {
    pub cidr: Ipv4Net,
    pub node: String,
    /// Seconds since the epoch of the first claim.
    #[serde(default)]
    pub claimed_at: u64,
}

/// One address in use on a node, as its agent reports it from twill-cni's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub ip: Ipv4Addr,
    #[serde(rename = "containerID", default)]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_veth: String,
    /// False when the pod's host veth no longer exists on the node: the pod is gone but
    /// its address was never released (a leak `twill ipam check` reports).
    #[serde(default = "default_true")]
    pub present: bool,
}

/// The node-local hand-off from `twilld` to `twill-cni` (the role of flannel's
/// subnet.env), written atomically; `twill-cni` allocates from it with no network round
/// trip and keeps working while the agent restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandOff {
    pub node: String,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Net,
    pub blocks: Vec<Ipv4Net>,
    pub mtu: u32,
    pub ip_masq: bool,
    /// The network config's `podWiring`; a CNI config that names one wins.
    #[serde(default)]
    pub pod_wiring: PodWiring,
}

/// Where `twilld` writes the hand-off by default, and `twill-cni` reads it.
pub const DEFAULT_HANDOFF_FILE: &str = "/run/twill/node.json";

/// A config, spec or file that does not hold up: the field, the reason and, for files,
/// the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {reason}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct Invalid {
    pub field: String,
    pub reason: String,
    pub line: Option<usize>,
}

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
        line: None,
    }
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let c = self.cluster_cidr;
        if c.trunc() != c {
            return Err(invalid(
                "clusterCIDR",
                format!("{c} has host bits set; did you mean {}?", c.trunc()),
            ));
        }
        if !(8..=28).contains(&c.prefix_len()) {
            return Err(invalid(
                "clusterCIDR",
                format!("{c}: the prefix must be /8 to /28"),
            ));
        }
        if self.block_size <= c.prefix_len() || self.block_size > 30 {
            return Err(invalid(
                "blockSize",
                format!(
                    "{} must be longer than the cluster prefix /{} and at most 30",
                    self.block_size,
                    c.prefix_len()
                ),
            ));
        }
        for (field, b) in [
            ("subnetMin", self.subnet_min),
            ("subnetMax", self.subnet_max),
        ] {
            if let Some(b) = b {
                if b.prefix_len() != self.block_size || b.trunc() != b || !c.contains(&b) {
                    return Err(invalid(
                        field,
                        format!("{b} must be a /{} block inside {c}", self.block_size),
                    ));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (self.subnet_min, self.subnet_max) {
            if lo.network() > hi.network() {
                return Err(invalid(
                    "subnetMin",
                    format!("{lo} comes after subnetMax {hi}"),
                ));
            }
        }
        for (i, r) in self.reservations.iter().enumerate() {
            if !c.contains(r) {
                return Err(invalid(
                    &format!("reservations[{i}]"),
                    format!("{r} is outside clusterCIDR {c}"),
                ));
            }
        }
        if let Err((field, reason)) = self.backend.check() {
            return Err(invalid(&format!("backend.{field}"), reason));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(invalid(
                "mtu",
                format!("{} is out of range 68..=65535", self.mtu),
            ));
        }
        if self.lease_ttl_seconds < 5 {
            return Err(invalid("leaseTTLSeconds", "must be at least 5 seconds"));
        }
        Ok(())
    }
}

impl NodeSpec {
    /// The override address, if any.
    pub fn address(&self) -> Result<Option<Ipv4Addr>, Invalid> {
        match &self.ipv4_address {
            None => Ok(None),
            Some(s) => {
                let addr = s.split('/').next().unwrap_or("");
                let ok_len = s
                    .split('/')
                    .nth(1)
                    .is_none_or(|l| l.parse::<u8>().is_ok_and(|l| l <= 32));
                match addr.parse() {
                    Ok(a) if ok_len => Ok(Some(a)),
                    _ => Err(invalid(
                        "spec.ipv4Address",
                        format!("{s:?} is not an IPv4 address or CIDR"),
                    )),
                }
            }
        }
    }

    /// Checks every field: the address, `spec.bgp` and the labels (`metadata.labels`).
    pub fn validate(&self) -> Result<(), Invalid> {
        self.address()?;
        if let Some(b) = &self.bgp {
            b.validate()?;
        }
        crate::bgp::check_labels("metadata.labels", &self.labels)
    }
}

/// The `kind` of a document in a resource file (what `twill get` prints, `twill apply`
/// reads). Nothing matches on these names outside this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    NetworkConfig,
    Node,
    Block,
    /// The cluster's BGP settings (one, named `default`).
    BgpConfiguration,
    /// One BGP peering rule.
    BgpPeer,
    /// Kubernetes' NetworkPolicy (networking.k8s.io/v1), namespaced.
    NetworkPolicy,
    /// Calico's GlobalNetworkPolicy (projectcalico.org/v3): cluster-wide, ordered.
    GlobalNetworkPolicy,
    /// A namespace and its labels (what namespaceSelectors match).
    Namespace,
    /// A pod's endpoint as `twill get endpoints` prints it (Calico's name). twilld
    /// publishes endpoints; applying one writes nothing and only confirms the store holds
    /// it as it is (so what `get` prints applies again).
    WorkloadEndpoint,
    /// Several resources in one document, as `twill get -o json` prints them.
    List,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 10] = [
        ResourceKind::NetworkConfig,
        ResourceKind::Node,
        ResourceKind::Block,
        ResourceKind::BgpConfiguration,
        ResourceKind::BgpPeer,
        ResourceKind::NetworkPolicy,
        ResourceKind::GlobalNetworkPolicy,
        ResourceKind::Namespace,
        ResourceKind::WorkloadEndpoint,
        ResourceKind::List,
    ];

    /// The name written as `kind:`.
    pub const fn name(self) -> &'static str {
        match self {
            ResourceKind::NetworkConfig => "NetworkConfig",
            ResourceKind::Node => "Node",
            ResourceKind::Block => "Block",
            ResourceKind::BgpConfiguration => "BGPConfiguration",
            ResourceKind::BgpPeer => "BGPPeer",
            ResourceKind::NetworkPolicy => "NetworkPolicy",
            ResourceKind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            ResourceKind::Namespace => "Namespace",
            ResourceKind::WorkloadEndpoint => "WorkloadEndpoint",
            ResourceKind::List => "List",
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ResourceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The name is none of [`ResourceKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Twill resource; use {names}", names = ResourceKind::choices())]
pub struct UnknownResource(pub String);

impl ResourceKind {
    /// "NetworkConfig, Node, Block, …, Namespace or List".
    fn choices() -> String {
        let names = ResourceKind::ALL.map(ResourceKind::name);
        let (last, rest) = names.split_last().expect("kinds exist");
        format!("{} or {last}", rest.join(", "))
    }
}

impl std::str::FromStr for ResourceKind {
    type Err = UnknownResource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownResource(s.to_string()))
    }
}

/// One document of a resource file.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    NetworkConfig(NetworkConfig),
    Node {
        name: String,
        spec: NodeSpec,
    },
    /// A block as `twill get blocks` prints it. Agents claim blocks; applying one writes
    /// nothing and only confirms the store holds it for that node (so what `get` prints
    /// applies again).
    Block {
        spec: Block,
    },
    /// The cluster's BGP settings (`bgpconfig`).
    BgpConfiguration(crate::bgp::BgpConfiguration),
    /// A BGP peering rule (`bgppeers/<name>`).
    BgpPeer {
        name: String,
        spec: crate::bgp::BgpPeer,
    },
    /// `networkpolicies/<namespace>/<name>`.
    NetworkPolicy {
        namespace: String,
        name: String,
        spec: crate::policy::NetworkPolicySpec,
    },
    /// `globalnetworkpolicies/<name>`.
    GlobalNetworkPolicy {
        name: String,
        spec: crate::policy::GlobalNetworkPolicySpec,
    },
    /// `namespaces/<name>` (its labels, without the automatic
    /// `kubernetes.io/metadata.name`).
    Namespace {
        name: String,
        spec: crate::policy::Namespace,
    },
    /// An endpoint as printed (read-only: confirmed, never written).
    WorkloadEndpoint {
        spec: crate::policy::Endpoint,
    },
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::NetworkConfig(_) => ResourceKind::NetworkConfig,
            Resource::Node { .. } => ResourceKind::Node,
            Resource::Block { .. } => ResourceKind::Block,
            Resource::BgpConfiguration(_) => ResourceKind::BgpConfiguration,
            Resource::BgpPeer { .. } => ResourceKind::BgpPeer,
            Resource::NetworkPolicy { .. } => ResourceKind::NetworkPolicy,
            Resource::GlobalNetworkPolicy { .. } => ResourceKind::GlobalNetworkPolicy,
            Resource::Namespace { .. } => ResourceKind::Namespace,
            Resource::WorkloadEndpoint { .. } => ResourceKind::WorkloadEndpoint,
        }
    }

    /// The store key (under `/twill/v1/`) and the JSON value `twill apply` writes.
    pub fn to_store(&self) -> (String, Vec<u8>) {
        match self {
            Resource::NetworkConfig(c) => (
                KEY_CONFIG.into(),
                serde_json::to_vec(c).expect("serializes"),
            ),
            Resource::Node { name, spec } => (
                format!("{PREFIX_NODECONFIGS}{name}"),
                serde_json::to_vec(spec).expect("serializes"),
            ),
            Resource::Block { spec } => (
                block_key(spec.cidr),
                serde_json::to_vec(spec).expect("serializes"),
            ),
            Resource::BgpConfiguration(c) => (
                crate::bgp::KEY_BGP_CONFIG.into(),
                serde_json::to_vec(c).expect("serializes"),
            ),
            Resource::BgpPeer { name, spec } => (
                format!("{}{name}", crate::bgp::PREFIX_BGP_PEERS),
                serde_json::to_vec(spec).expect("serializes"),
            ),
            Resource::NetworkPolicy {
                namespace,
                name,
                spec,
            } => (
                crate::policy::network_policy_key(namespace, name),
                serde_json::to_vec(spec).expect("serializes"),
            ),
            Resource::GlobalNetworkPolicy { name, spec } => (
                crate::policy::global_network_policy_key(name),
                // validate() refused a non-finite order, the one thing JSON cannot hold.
                serde_json::to_vec(spec).expect("serializes"),
            ),
            Resource::Namespace { name, spec } => (
                crate::policy::namespace_key(name),
                serde_json::to_vec(spec).expect("serializes"),
            ),
            Resource::WorkloadEndpoint { spec } => (
                crate::policy::endpoint_key(&spec.node, &spec.namespace, &spec.pod),
                serde_json::to_vec(spec).expect("serializes"),
            ),
        }
    }
}

#[cfg(feature = "yaml")]
/// Only the kind, to pick the typed document below.
#[derive(Deserialize)]
struct KindOnly {
    kind: String,
}

#[cfg(feature = "yaml")]
/// One typed document; parsed straight from the text so errors carry path and line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document<T> {
    #[serde(rename = "apiVersion", default)]
    _api_version: Option<String>,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    metadata: Metadata,
    spec: T,
    /// What `twill get -o yaml` prints for live objects: read-only, ignored on apply, so
    /// its output can be applied back.
    #[serde(default, rename = "status")]
    _status: Option<serde_yaml_ng::Value>,
}

#[cfg(feature = "yaml")]
/// A misspelt field is refused (`namepsace: x` would put a policy in `default`); the
/// fields Kubernetes and Calico fill in on live objects are accepted and ignored, so what
/// `kubectl get -o yaml` prints applies.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Metadata {
    #[serde(default)]
    name: String,
    /// Only Node and Namespace resources carry labels (what selectors match).
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    /// Only NetworkPolicy resources are namespaced.
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default, rename = "annotations")]
    _annotations: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "uid")]
    _uid: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "generation")]
    _generation: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "managedFields")]
    _managed_fields: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "selfLink")]
    _self_link: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "finalizers")]
    _finalizers: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "ownerReferences")]
    _owner_references: Option<serde_yaml_ng::Value>,
}

#[cfg(feature = "yaml")]
impl Metadata {
    /// Refuses labels on a kind that has none, rather than dropping them unseen.
    fn no_labels(&self, kind: ResourceKind) -> Result<(), Invalid> {
        match &self.labels {
            Some(l) if !l.is_empty() => Err(invalid(
                "metadata.labels",
                format!("a {kind} carries no labels here (selectors match the labels of Node, Namespace and pods); remove them"),
            )),
            _ => Ok(()),
        }?;
        self.no_namespace(kind)
    }

    /// Refuses a namespace on a cluster-wide kind.
    fn no_namespace(&self, kind: ResourceKind) -> Result<(), Invalid> {
        match &self.namespace {
            Some(n) => Err(invalid(
                "metadata.namespace",
                format!("a {kind} is cluster-wide, not in a namespace (here {n:?}); remove metadata.namespace"),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "yaml")]
/// A Namespace document, Kubernetes' way: metadata only (`spec` and `status`, as
/// `kubectl get ns -o yaml` prints them, are accepted and ignored).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceDocument {
    #[serde(rename = "apiVersion", default)]
    _api_version: Option<String>,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default, rename = "spec")]
    _spec: Option<NamespaceSpec>,
    #[serde(default, rename = "status")]
    _status: Option<serde_yaml_ng::Value>,
}

#[cfg(feature = "yaml")]
/// Kubernetes' Namespace spec holds only finalizers, which mean nothing here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceSpec {
    #[serde(default, rename = "finalizers")]
    _finalizers: Vec<String>,
}

#[cfg(feature = "yaml")]
/// `kind: List`: its items are documents of their own.
#[derive(Deserialize)]
struct ListDocument {
    #[serde(default)]
    items: Vec<serde_yaml_ng::Value>,
}

#[cfg(feature = "yaml")]
/// Parses a resource file (YAML, which includes JSON; several documents separated by
/// `---`, or a `kind: List` of items as `twill get -o json` prints them). Every error
/// names the field, the reason and the line. Nothing is applied unless the whole file is
/// valid: that is the caller's job, this is pure.
pub fn parse_resources(text: &str) -> Result<Vec<Resource>, Invalid> {
    let mut out = Vec::new();
    // Line numbers: serde_yaml_ng locates syntax and type errors; for semantic errors we
    // find the field's line in the text.
    for doc in split_documents(text) {
        let (body, first_line) = doc;
        if body.trim().is_empty() {
            continue;
        }
        let at = |mut e: Invalid| {
            if e.line.is_none() {
                // The field's own line; for a field that is missing, its parent's
                // (`spec:` for a missing `spec.asNumber`); else the document's first.
                e.line = locate(body, &e.field)
                    .or_else(|| {
                        e.field
                            .rsplit('.')
                            .map(|seg| seg.split('[').next().unwrap_or(seg))
                            .find_map(|seg| find_line(body, seg))
                    })
                    .map(|l| l + first_line - 1)
                    .or(Some(first_line));
            }
            e
        };
        let kind: KindOnly =
            serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
        let kind: ResourceKind = kind
            .kind
            .parse()
            .map_err(|e: UnknownResource| at(invalid("kind", e.to_string())))?;
        let res = match kind {
            ResourceKind::List => {
                let list: ListDocument =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                for (i, item) in list.items.iter().enumerate() {
                    // Each item as a document of its own; its errors point at the list's line.
                    let text = serde_yaml_ng::to_string(item).expect("a parsed value serializes");
                    let items = parse_resources(&text).map_err(|mut e| {
                        e.field = format!("items[{i}].{}", e.field);
                        e.line = Some(first_line);
                        e
                    })?;
                    out.extend(items);
                }
                continue;
            }
            ResourceKind::NetworkConfig => {
                let d: Document<NetworkConfig> =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                d.metadata.no_labels(kind).map_err(at)?;
                d.spec.validate().map_err(|mut e| {
                    e.field = format!("spec.{}", e.field);
                    at(e)
                })?;
                Resource::NetworkConfig(d.spec)
            }
            ResourceKind::Node => {
                let mut d: Document<NodeSpec> =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                d.metadata.no_namespace(kind).map_err(at)?;
                let name = d.metadata.name;
                crate::names::validate_network_name(&name)
                    .map_err(|e| at(invalid("metadata.name", e.to_string())))?;
                if !d.spec.labels.is_empty() {
                    return Err(at(invalid(
                        "spec.labels",
                        "a Node's labels go in metadata.labels (as in Kubernetes and Calico); move them there",
                    )));
                }
                d.spec.labels = d.metadata.labels.unwrap_or_default();
                d.spec.validate().map_err(at)?;
                Resource::Node { name, spec: d.spec }
            }
            ResourceKind::Block => {
                let d: Document<Block> =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                d.metadata.no_labels(kind).map_err(at)?;
                let key = block_key(d.spec.cidr);
                let name = key.trim_start_matches(PREFIX_BLOCKS);
                if !d.metadata.name.is_empty() && d.metadata.name != name {
                    return Err(at(invalid(
                        "metadata.name",
                        format!(
                            "{:?} is not the name of block {} (that is {name:?})",
                            d.metadata.name, d.spec.cidr
                        ),
                    )));
                }
                Resource::Block { spec: d.spec }
            }
            ResourceKind::BgpConfiguration => {
                let d: Document<crate::bgp::BgpConfiguration> =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                d.metadata.no_labels(kind).map_err(at)?;
                crate::bgp::check_config_name(&d.metadata.name).map_err(at)?;
                d.spec.validate().map_err(at)?;
                Resource::BgpConfiguration(d.spec)
            }
            ResourceKind::BgpPeer => {
                let d: Document<crate::bgp::BgpPeer> =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                d.metadata.no_labels(kind).map_err(at)?;
                let name = d.metadata.name;
                crate::bgp::check_dns_name("metadata.name", &name).map_err(at)?;
                d.spec.validate().map_err(at)?;
                Resource::BgpPeer { name, spec: d.spec }
            }
            ResourceKind::NetworkPolicy => {
                let mut d: Document<crate::policy::NetworkPolicySpec> =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                let namespace = d
                    .metadata
                    .namespace
                    .take()
                    .unwrap_or_else(|| crate::policy::DEFAULT_NAMESPACE.to_string());
                let meta = d.metadata;
                meta.no_labels(kind).map_err(at)?;
                crate::policy::check_namespace_name("metadata.namespace", &namespace)
                    .map_err(at)?;
                crate::bgp::check_dns_name("metadata.name", &meta.name).map_err(at)?;
                d.spec.validate().map_err(at)?;
                Resource::NetworkPolicy {
                    namespace,
                    name: meta.name,
                    spec: d.spec,
                }
            }
            ResourceKind::GlobalNetworkPolicy => {
                let mut d: Document<crate::policy::GlobalNetworkPolicySpec> =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                d.metadata.no_labels(kind).map_err(at)?;
                crate::bgp::check_dns_name("metadata.name", &d.metadata.name).map_err(at)?;
                d.spec.normalize();
                d.spec.validate().map_err(at)?;
                Resource::GlobalNetworkPolicy {
                    name: d.metadata.name,
                    spec: d.spec,
                }
            }
            ResourceKind::Namespace => {
                let d: NamespaceDocument =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                d.metadata.no_namespace(kind).map_err(at)?;
                let name = d.metadata.name;
                let mut spec = crate::policy::Namespace {
                    labels: d.metadata.labels.unwrap_or_default(),
                };
                spec.validate(&name).map_err(at)?;
                // Set automatically, never stored.
                spec.labels.remove(crate::policy::NAMESPACE_NAME_LABEL);
                Resource::Namespace { name, spec }
            }
            ResourceKind::WorkloadEndpoint => {
                let d: Document<crate::policy::Endpoint> =
                    serde_yaml_ng::from_str(body).map_err(|e| at(yaml_error(&e, first_line)))?;
                // metadata says which pod; the spec must say the same.
                for (field, meta, spec) in [
                    ("metadata.name", Some(&d.metadata.name), &d.spec.pod),
                    (
                        "metadata.namespace",
                        d.metadata.namespace.as_ref(),
                        &d.spec.namespace,
                    ),
                ] {
                    if let Some(m) = meta.filter(|m| !m.is_empty() && *m != spec) {
                        return Err(at(invalid(
                            field,
                            format!("{m:?} is not the endpoint's pod/namespace {spec:?} in spec; endpoints are read-only, as `twill get endpoints -o yaml` prints them"),
                        )));
                    }
                }
                Resource::WorkloadEndpoint { spec: d.spec }
            }
        };
        out.push(res);
    }
    if out.is_empty() {
        return Err(Invalid {
            field: "(file)".into(),
            reason: "no resource in the file".into(),
            line: None,
        });
    }
    Ok(out)
}

#[cfg(feature = "yaml")]
/// Splits on `---` lines; yields each document with the line number it starts at.
fn split_documents(text: &str) -> Vec<(&str, usize)> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" {
            docs.push((&text[start..offset], start_line));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((&text[start..], start_line));
    docs
}

#[cfg(feature = "yaml")]
/// The line (1-based) of a field path such as `spec.ingress[1].from[0].ipBlock.cidr` in a
/// block-style YAML document: each key searched after the previous one, deeper than it,
/// and `[i]` as the i-th `- ` item under it. `None` when its first key is not found (the
/// caller falls back to a plain search); else the deepest part found.
fn locate(body: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = body.lines().collect();
    let skip = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
    let mut found: Option<usize> = None;
    // Where the next key is searched: from this line on, inside this parent (None: the
    // whole document).
    let mut from = 0usize;
    let mut parent: Option<Parent> = None;
    let segs: Vec<&str> = path.split('.').collect();
    for (n, seg) in segs.iter().enumerate() {
        let (key, indices) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (*seg, ""),
        };
        let search = |key: &str| {
            for (i, l) in lines.iter().enumerate().skip(from) {
                if skip(l) {
                    continue;
                }
                if i > from && parent.is_some_and(|p| !p.holds(l)) {
                    break;
                }
                let (col, text) = key_at(l);
                if parent.is_none_or(|p| col > p.col) && is_key(text, key) {
                    return Some((i, col));
                }
            }
            None
        };
        let Some((line, col)) = search(key) else {
            // A label key with dots (kubernetes.io/metadata.name) is the rest of the path.
            let rest = segs[n..].join(".");
            return search(&rest).map(|(l, _)| l).or(found).map(|l| l + 1);
        };
        found = Some(line);
        let mut at = Parent { col, item: false };
        from = line;
        for idx in indices
            .split(['[', ']'])
            .filter_map(|s| s.parse::<usize>().ok())
        {
            // The idx-th "- " item under the key (or item) at `from`.
            let mut n = 0;
            let mut item = None;
            let mut item_col = None;
            for (i, l) in lines.iter().enumerate().skip(from + 1) {
                if skip(l) {
                    continue;
                }
                if !at.holds(l) {
                    break;
                }
                let c = indent(l);
                if l.trim_start().starts_with('-') && item_col.is_none_or(|ic| ic == c) {
                    item_col = Some(c);
                    if n == idx {
                        item = Some((i, c));
                        break;
                    }
                    n += 1;
                }
            }
            let Some((i, c)) = item else {
                return found.map(|l| l + 1);
            };
            found = Some(i);
            from = i;
            at = Parent { col: c, item: true };
        }
        parent = Some(at);
    }
    found.map(|l| l + 1)
}

#[cfg(feature = "yaml")]
fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

#[cfg(feature = "yaml")]
/// A line's first key and its column, after any `- ` item markers.
fn key_at(l: &str) -> (usize, &str) {
    let mut col = indent(l);
    let mut rest = l.trim_start();
    while let Some(r) = rest.strip_prefix("- ") {
        col += 2 + indent(r);
        rest = r.trim_start();
    }
    (col, rest)
}

#[cfg(feature = "yaml")]
fn is_key(text: &str, key: &str) -> bool {
    let t = text.trim_start_matches(['"', '\'']);
    t.starts_with(key)
        && t[key.len()..]
            .trim_start_matches(['"', '\''])
            .trim_start()
            .starts_with(':')
}

#[cfg(feature = "yaml")]
/// A key (at the column of its name) or a list item (at the column of its `-`) whose
/// contents are searched.
#[derive(Clone, Copy)]
struct Parent {
    col: usize,
    item: bool,
}

#[cfg(feature = "yaml")]
impl Parent {
    /// Whether a later line is still inside it: deeper; for a key, also its list items
    /// written at its own column.
    fn holds(self, l: &str) -> bool {
        let c = indent(l);
        c > self.col || (!self.item && c == self.col && l.trim_start().starts_with('-'))
    }
}

#[cfg(feature = "yaml")]
fn find_line(body: &str, key: &str) -> Option<usize> {
    body.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches('"');
            t.starts_with(key)
                && t[key.len()..]
                    .trim_start_matches('"')
                    .trim_start()
                    .starts_with(':')
        })
        .map(|i| i + 1)
}

#[cfg(feature = "yaml")]
fn yaml_error(e: &serde_yaml_ng::Error, first_line: usize) -> Invalid {
    let msg = e.to_string();
    // serde_yaml_ng: "spec.blockSize: invalid type: string \"x\", expected u8 at line 3 column 14"
    let (field, reason) = match msg.split_once(": ") {
        Some((f, r)) if !f.contains(' ') => (f.to_string(), r.to_string()),
        _ => (String::new(), msg.clone()),
    };
    let reason = reason
        .split(" at line ")
        .next()
        .unwrap_or(&reason)
        .to_string();
    // serde's words for Rust types, in the user's.
    let reason = reason
        .replace("expected u16", "expected a number from 0 to 65535")
        .replace("expected f64", "expected a number")
        .replace(
            "invalid IP address syntax",
            "not an IPv4 address or CIDR (a.b.c.d or a.b.c.d/len; Twill's pod network is IPv4 only)",
        );
    // Untagged enums say only that nothing matched, at the rule; say what does, at the
    // field (its line found by the caller).
    if reason.contains("untagged enum RuleProtocol") {
        return Invalid {
            field: format!("{field}.protocol"),
            reason: "not a protocol: use TCP, UDP, SCTP or ICMP (or leave protocol out for any)"
                .into(),
            line: None,
        };
    }
    Invalid {
        field,
        reason,
        line: e.location().map(|l| l.line() + first_line - 1),
    }
}

#[cfg(all(test, feature = "yaml"))]
mod tests {
    use super::*;

    #[test]
    fn block_keys_round_trip() {
        let b: Ipv4Net = "10.244.3.64/26".parse().unwrap();
        assert_eq!(block_key(b), "blocks/10.244.3.64-26");
        assert_eq!(
            block_from_key(&format!("/twill/v1/{}", block_key(b))),
            Some(b)
        );
        assert_eq!(block_from_key("blocks/garbage"), None);
    }

    #[test]
    fn parses_a_multi_document_file() {
        let text = "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  blockSize: 26\n---\nkind: Node\nmetadata:\n  name: n1\nspec:\n  ipv4Address: 192.0.2.11/24\n";
        let r = parse_resources(text).unwrap();
        assert_eq!(r.len(), 2);
        let Resource::NetworkConfig(c) = &r[0] else {
            panic!()
        };
        assert_eq!(c.block_size, 26);
        assert_eq!(c.lease_ttl_seconds, 3600);
        let Resource::Node { name, spec } = &r[1] else {
            panic!()
        };
        assert_eq!(name, "n1");
        assert_eq!(spec.address().unwrap(), Some("192.0.2.11".parse().unwrap()));
        assert_eq!(r[1].to_store().0, "nodeconfigs/n1");
    }

    #[test]
    fn backends_as_names_or_objects() {
        let text = "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  backend:\n    type: vxlan\n    vni: 4096\n    directRouting: true\n";
        let r = parse_resources(text).unwrap();
        let Resource::NetworkConfig(c) = &r[0] else {
            panic!()
        };
        assert_eq!(
            c.backend,
            BackendSpec::Vxlan(VxlanOptions {
                vni: Some(4096),
                port: None,
                direct_routing: true
            })
        );
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json["backend"]["type"], "vxlan");
        let plain: NetworkConfig =
            serde_json::from_str(r#"{"clusterCIDR":"10.244.0.0/16","backend":"host-gw"}"#).unwrap();
        assert_eq!(plain.backend, BackendSpec::HostGw);
        assert_eq!(serde_json::to_value(&plain).unwrap()["backend"], "host-gw");
        let e = parse_resources(
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  backend: gre\n",
        )
        .unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("spec.backend", Some(4)), "{e}");
        // An option of another kind: the error's path ends in the option.
        let e = parse_resources(
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  backend:\n    type: host-gw\n    vni: 5\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("spec.backend.vni", Some(6)),
            "{e}"
        );
        assert!(e.reason.contains("not an option of backend host-gw"), "{e}");
        let e = parse_resources(
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  backend:\n    type: vxlan\n    colour: blue\n",
        )
        .unwrap_err();
        assert!(e.field.starts_with("spec.backend"), "{e}");
        assert!(e.reason.contains("unknown field `colour`"), "{e}");
        let e = parse_resources(
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  backend:\n    type: vxlan\n    vni: 0\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("spec.backend.vni", Some(6)),
            "{e}"
        );
    }

    #[test]
    fn json_documents_work_too() {
        let r =
            parse_resources(r#"{"kind":"NetworkConfig","spec":{"clusterCIDR":"10.244.0.0/16"}}"#)
                .unwrap();
        assert_eq!(r[0].kind(), ResourceKind::NetworkConfig);
    }

    #[test]
    fn every_resource_kind_is_read_by_its_name_and_others_are_refused_naming_all() {
        for k in ResourceKind::ALL {
            assert_eq!(k.name().parse::<ResourceKind>(), Ok(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        let e = err("kind: Pod\nspec: {}\n");
        assert_eq!(e.field, "kind");
        assert_eq!(
            e.reason,
            "\"Pod\" is not a Twill resource; use NetworkConfig, Node, Block, BGPConfiguration, BGPPeer, NetworkPolicy, GlobalNetworkPolicy, Namespace, WorkloadEndpoint or List"
        );
    }

    fn err(text: &str) -> Invalid {
        parse_resources(text).unwrap_err()
    }

    #[test]
    fn errors_name_field_reason_and_line() {
        let e = err("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  blockSize: 12\n");
        assert_eq!(
            (e.field.as_str(), e.line),
            ("spec.blockSize", Some(4)),
            "{e}"
        );
        let e = err("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/33\n");
        assert_eq!(e.line, Some(3), "{e}");
        let e = err("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  blockSize: big\n");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.to_string().contains("blockSize"), "{e}");
        let e = err("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  colour: blue\n");
        assert!(e.to_string().contains("colour"), "{e}");
        let e = err("kind: Pod\nspec: {}\n");
        assert_eq!((e.field.as_str(), e.line), ("kind", Some(1)));
        let e = err("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n---\nkind: Node\nmetadata:\n  name: n1\nspec:\n  ipv4Address: 300.1.1.1\n");
        assert_eq!(
            (e.field.as_str(), e.line),
            ("spec.ipv4Address", Some(9)),
            "{e}"
        );
        let e = err("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  subnetMin: 10.244.0.0/24\n  blockSize: 26\n");
        assert_eq!(e.field, "spec.subnetMin");
        let e = err("kind: NetworkConfig\nspec: [\n");
        assert!(e.line.is_some(), "{e}");
        let e = err("\n\n");
        assert!(e.to_string().contains("no resource"));
    }

    const CALICO_FILE: &str = "\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: false
  asNumber: 64512
  communities: [\"64512:100\"]
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  nodeSelector: rack == 'rack-1'
  peerIP: 192.0.2.1
  asNumber: 64567
  password:
    file: /etc/twill/bgp-password
  maxRestartTime: 2m
---
kind: BGPPeer
metadata:
  name: peer-with-route-reflectors
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
---
kind: Node
metadata:
  name: n1
  labels:
    route-reflector: 'true'
    rack: rack-1
spec:
  bgp:
    asNumber: 64512
    routeReflectorClusterID: 244.0.0.1
";

    #[test]
    fn calico_mode_resources_parse_into_their_store_keys() {
        let r = parse_resources(CALICO_FILE).unwrap();
        let kinds: Vec<ResourceKind> = r.iter().map(Resource::kind).collect();
        assert_eq!(
            kinds,
            [
                ResourceKind::BgpConfiguration,
                ResourceKind::BgpPeer,
                ResourceKind::BgpPeer,
                ResourceKind::Node
            ]
        );
        let Resource::BgpConfiguration(c) = &r[0] else {
            panic!()
        };
        assert!(!c.node_to_node_mesh_enabled && c.graceful_restart);
        assert_eq!(c.community_values().unwrap(), [(64512 << 16) | 100]);
        assert_eq!(r[0].to_store().0, "bgpconfig");
        let Resource::BgpPeer { name, spec } = &r[1] else {
            panic!()
        };
        assert_eq!(name, "rack1-tor");
        assert_eq!(
            spec.password,
            Some(crate::bgp::Password::File("/etc/twill/bgp-password".into()))
        );
        assert_eq!(spec.max_restart_seconds(), Ok(Some(120)));
        assert_eq!(r[1].to_store().0, "bgppeers/rack1-tor");
        let Resource::Node { spec, .. } = &r[3] else {
            panic!()
        };
        assert_eq!(spec.labels["route-reflector"], "true");
        assert_eq!(spec.labels["rack"], "rack-1");
        let bgp = spec.bgp.as_ref().unwrap();
        assert_eq!(
            bgp.route_reflector_cluster_id,
            Some("244.0.0.1".parse().unwrap())
        );
        // The store value keeps the labels with the spec, and reads back the same.
        let (key, value) = r[3].to_store();
        assert_eq!(key, "nodeconfigs/n1");
        let back: NodeSpec = serde_json::from_slice(&value).unwrap();
        assert_eq!(&back, spec);
        // The stored values of the BGP kinds read back too.
        let back: crate::bgp::BgpConfiguration =
            serde_json::from_slice(&r[0].to_store().1).unwrap();
        assert_eq!(&back, c);
    }

    #[test]
    fn bad_calico_mode_documents_name_field_and_line() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "kind: BGPConfiguration\nmetadata: {name: default}\nspec:\n  asNumber: 0\n",
                "spec.asNumber",
                4,
                "0 is not an AS number",
            ),
            (
                "kind: BGPConfiguration\nmetadata:\n  name: prod\nspec: {}\n",
                "metadata.name",
                3,
                "name: default",
            ),
            (
                "kind: BGPConfiguration\nspec:\n  holdTimeSeconds: 9\n  keepaliveTimeSeconds: 9\n",
                "spec.keepaliveTimeSeconds",
                4,
                "below the hold time 9",
            ),
            (
                "kind: BGPConfiguration\nspec:\n  meshEnabled: false\n",
                "spec",
                3,
                "unknown field `meshEnabled`",
            ),
            (
                "kind: BGPConfiguration\nspec:\n  listenPort: 70000\n",
                "spec.listenPort",
                3,
                "invalid value",
            ),
            (
                "kind: BGPPeer\nmetadata: {name: tor}\nspec:\n  peerIP: 192.0.2.1\n",
                "spec.asNumber",
                3,
                "required with peerIP",
            ),
            (
                "kind: BGPPeer\nspec:\n  peerIP: 192.0.2.1\n  asNumber: 65000\n",
                "metadata.name",
                1,
                "it is empty",
            ),
            (
                "kind: BGPPeer\nmetadata:\n  name: Rack_1\nspec:\n  peerIP: 192.0.2.1\n  asNumber: 65000\n",
                "metadata.name",
                3,
                "is not a valid name",
            ),
            (
                "kind: BGPPeer\nmetadata: {name: tor}\nspec:\n  asNumber: 65000\n  peerIP: 192.0.2.1\n  nodeSelector: rack == rack-1\n",
                "spec.nodeSelector",
                6,
                "at column 9",
            ),
            (
                "kind: BGPPeer\nmetadata: {name: tor}\nspec:\n  peerIP: 192.0.2.1\n  asNumber: 65000\n  password:\n    value: \"\"\n",
                "spec.password.value",
                7,
                "empty",
            ),
            (
                "kind: BGPPeer\nmetadata: {name: tor}\nspec:\n  peerIP: 192.0.2.1\n  asNumber: 65000\n  password:\n    secretKeyRef: {name: x, key: y}\n",
                "spec.password",
                7,
                "unknown field `secretKeyRef`",
            ),
            (
                "kind: Node\nmetadata:\n  name: n1\n  labels:\n    rack: -r1\nspec: {}\n",
                "metadata.labels.rack",
                5,
                "not a label value",
            ),
            (
                "kind: Node\nmetadata:\n  name: n1\nspec:\n  labels:\n    rack: r1\n",
                "spec.labels",
                5,
                "go in metadata.labels",
            ),
            (
                "kind: Node\nmetadata:\n  name: n1\nspec:\n  bgp:\n    asNumber: 23456\n",
                "spec.bgp.asNumber",
                6,
                "AS_TRANS",
            ),
            (
                "kind: BGPPeer\nmetadata:\n  name: tor\n  labels: {a: b}\nspec:\n  peerIP: 192.0.2.1\n  asNumber: 65000\n",
                "metadata.labels",
                4,
                "carries no labels",
            ),
        ];
        for (text, field, line, why) in cases {
            let e = err(text);
            assert_eq!(
                (e.field.as_str(), e.line),
                (*field, Some(*line)),
                "{text}: {e}"
            );
            assert!(e.reason.contains(why), "{text}: {e}");
        }
        // A later document's error has its line in the file.
        let e = err(&format!("{CALICO_FILE}---\nkind: BGPPeer\nmetadata: {{name: x}}\nspec:\n  peerSelector: has(rr\n"));
        assert_eq!(e.field, "spec.peerSelector");
        assert_eq!(e.line, Some(CALICO_FILE.lines().count() + 5), "{e}");
    }

    /// Network policy's kinds as users paste them from Kubernetes and Calico.
    pub const POLICY_FILE: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-b-to-a
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes:
  - Ingress
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - key: pod
          operator: In
          values: [b]
      namespaceSelector:
        matchLabels:
          ns: y
    - ipBlock:
        cidr: 10.244.0.0/16
        except: [10.244.1.0/24]
    ports:
    - protocol: TCP
      port: 80
      endPort: 81
    - protocol: UDP
      port: serve-81-udp
---
kind: NetworkPolicy
metadata:
  name: deny-all
spec:
  podSelector: {}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: deny-db
spec:
  order: 10
  selector: role == 'db'
  namespaceSelector: has(env)
  types: [Ingress]
  ingress:
  - action: Log
  - action: Deny
    protocol: TCP
    source:
      selector: role != 'app'
      nets: [10.244.0.0/16]
    destination:
      ports: [5432, \"6000:6010\", \"7000\", postgres]
  - action: Pass
---
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels:
    kubernetes.io/metadata.name: x
    ns: x
spec:
  finalizers: [kubernetes]
status:
  phase: Active
";

    #[test]
    fn network_policy_kinds_parse_into_their_store_keys() {
        use crate::policy::*;
        let r = parse_resources(POLICY_FILE).unwrap();
        let keys: Vec<String> = r.iter().map(|r| r.to_store().0).collect();
        assert_eq!(
            keys,
            [
                "networkpolicies/x/allow-b-to-a",
                "networkpolicies/default/deny-all",
                "globalnetworkpolicies/deny-db",
                "namespaces/x"
            ]
        );
        let Resource::NetworkPolicy { spec, .. } = &r[0] else {
            panic!()
        };
        let rule = &spec.ingress[0];
        assert_eq!(rule.from.len(), 2);
        assert_eq!(
            rule.from[1].ip_block.as_ref().unwrap().except,
            ["10.244.1.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(rule.ports[0].end_port, Some(81));
        assert_eq!(
            rule.ports[1].port,
            Some(PortRef::Name("serve-81-udp".into()))
        );
        let Resource::GlobalNetworkPolicy { spec, .. } = &r[2] else {
            panic!()
        };
        assert_eq!(spec.order, Some(10.0));
        // "7000" is a number, as Calico reads it.
        assert_eq!(
            spec.ingress[1].destination.ports,
            [
                PortRef::Number(5432),
                PortRef::Name("6000:6010".into()),
                PortRef::Number(7000),
                PortRef::Name("postgres".into())
            ]
        );
        // The automatic label is not stored.
        let Resource::Namespace { spec, .. } = &r[3] else {
            panic!()
        };
        assert_eq!(spec.labels.len(), 1);
        // What is stored reads back as the same spec.
        for res in &r {
            let (_, v) = res.to_store();
            match res {
                Resource::NetworkPolicy { spec, .. } => {
                    assert_eq!(
                        &serde_json::from_slice::<NetworkPolicySpec>(&v).unwrap(),
                        spec
                    )
                }
                Resource::GlobalNetworkPolicy { spec, .. } => assert_eq!(
                    &serde_json::from_slice::<GlobalNetworkPolicySpec>(&v).unwrap(),
                    spec
                ),
                Resource::Namespace { spec, .. } => {
                    assert_eq!(&serde_json::from_slice::<Namespace>(&v).unwrap(), spec)
                }
                _ => unreachable!(),
            }
        }
    }

    /// A NetworkPolicy with `rule` as its only ingress rule (at line 6).
    fn netpol(rule: &str) -> String {
        format!("kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress:\n{rule}")
    }

    /// A GlobalNetworkPolicy with `rule` as its only ingress rule (at line 6).
    fn gnp(rule: &str) -> String {
        format!("kind: GlobalNetworkPolicy\nmetadata: {{name: g}}\nspec:\n  selector: all()\n  ingress:\n{rule}")
    }

    #[test]
    fn bad_policy_documents_name_field_line_and_fix() {
        let cases: Vec<(String, &str, usize, &str)> = vec![
            (
                netpol("  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n"),
                "spec.ingress[0].from[0].ipBlock",
                7,
                "ipBlock excludes podSelector and namespaceSelector",
            ),
            (
                netpol("  - from:\n    - {}\n"),
                "spec.ingress[0].from[0]",
                7,
                "a peer needs podSelector",
            ),
            (
                netpol("  - from:\n    - podSelector: {}\n    - ipBlock:\n        cidr: 10.0.0.0/8\n        except:\n        - 10.0.0.0/8\n"),
                "spec.ingress[0].from[1].ipBlock.except[0]",
                11,
                "not strictly inside cidr 10.0.0.0/8",
            ),
            (
                netpol("  - from:\n    - ipBlock:\n        cidr: 10.0.0.0/8\n        except: [192.0.2.0/24]\n"),
                "spec.ingress[0].from[0].ipBlock.except[0]",
                9,
                "not strictly inside",
            ),
            (
                netpol("  - from:\n    - ipBlock:\n        cidr: 10.1.2.3/8\n"),
                "spec.ingress[0].from[0].ipBlock.cidr",
                8,
                "did you mean 10.0.0.0/8?",
            ),
            (
                netpol("  - ports:\n    - port: 80\n    - port: http\n      endPort: 90\n"),
                "spec.ingress[0].ports[1].endPort",
                9,
                "endPort needs a numeric port",
            ),
            (
                netpol("  - ports:\n    - endPort: 90\n"),
                "spec.ingress[0].ports[0].endPort",
                7,
                "add port",
            ),
            (
                netpol("  - ports:\n    - port: 90\n      endPort: 80\n"),
                "spec.ingress[0].ports[0].endPort",
                8,
                "80 is below port 90",
            ),
            (
                netpol("  - ports:\n    - port: 0\n"),
                "spec.ingress[0].ports[0].port",
                7,
                "0 is not a port",
            ),
            (
                netpol("  - ports:\n    - port: 70000\n"),
                "spec.ingress[0].ports[0].port",
                7,
                "70000 is not a port",
            ),
            (
                netpol("  - ports:\n    - protocol: ICMP\n"),
                "spec.ingress[0].ports[0].protocol",
                7,
                "unknown variant `ICMP`",
            ),
            (
                netpol("  - ports:\n    - port: serve-http-tcp-80\n"),
                "spec.ingress[0].ports[0].port",
                7,
                "at most 15",
            ),
            (
                netpol("  - ports:\n    - port: \"8080\"\n"),
                "spec.ingress[0].ports[0].port",
                7,
                "at least one letter",
            ),
            (
                netpol("  - ports:\n    - port: web--1\n"),
                "spec.ingress[0].ports[0].port",
                7,
                "\"--\" is not allowed",
            ),
            (
                netpol("  - ports:\n    - port: Web\n"),
                "spec.ingress[0].ports[0].port",
                7,
                "'W' is not allowed",
            ),
            (
                netpol("  - ports:\n    - port: web-\n"),
                "spec.ingress[0].ports[0].port",
                7,
                "start and end with a letter or digit",
            ),
            (
                netpol("  - from:\n    - podSelector:\n        matchExpressions:\n        - {key: pod, operator: In}\n"),
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
                9,
                "operator In needs values",
            ),
            (
                netpol("  - from:\n    - namespaceSelector:\n        matchExpressions:\n        - key: ns\n          operator: Exists\n          values: [x]\n"),
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
                11,
                "takes no values",
            ),
            (
                netpol("  - from:\n    - podSelector:\n        matchLabels:\n          pod: -a\n"),
                "spec.ingress[0].from[0].podSelector.matchLabels.pod",
                9,
                "not a label value",
            ),
            (
                netpol("  - from:\n    - podSelector:\n        matchExpressions:\n        - {key: 'a b', operator: Exists}\n"),
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].key",
                9,
                "not a label key",
            ),
            (
                netpol("  - from:\n    - podSelector:\n        matchExpressions:\n        - {key: a, operator: Has}\n"),
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
                9,
                "unknown variant `Has`",
            ),
            (
                netpol("  - from:\n    - podSelector: {}\n      colour: blue\n"),
                "spec.ingress[0].from[0]",
                8,
                "unknown field `colour`",
            ),
            (
                "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Ingress]\n".into(),
                "spec.policyTypes[1]",
                5,
                "listed twice",
            ),
            (
                "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  policyTypes: [ingress]\n".into(),
                "spec.policyTypes[0]",
                4,
                "unknown variant `ingress`",
            ),
            (
                "kind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: X_1\nspec: {}\n".into(),
                "metadata.namespace",
                4,
                "not a valid name",
            ),
            (
                "kind: NetworkPolicy\nmetadata:\n  namespace: x\nspec: {}\n".into(),
                "metadata.name",
                2,
                "it is empty",
            ),
            (
                gnp("  - action: Allow\n    destination:\n      ports: [80]\n"),
                "spec.ingress[0].destination.ports",
                8,
                "add protocol: TCP",
            ),
            (
                gnp("  - action: Allow\n    protocol: ICMP\n    source:\n      notPorts: [80]\n"),
                "spec.ingress[0].source.notPorts",
                9,
                "add protocol: TCP",
            ),
            (
                gnp("  - action: Allow\n    protocol: UDP\n    destination:\n      ports: ['90:80']\n"),
                "spec.ingress[0].destination.ports[0]",
                9,
                "write \"80:90\"",
            ),
            (
                gnp("  - action: Allow\n    protocol: UDP\n    destination:\n      ports: ['80:x']\n"),
                "spec.ingress[0].destination.ports[0]",
                9,
                "not a port range",
            ),
            (
                gnp("  - action: Allow\n    source:\n      selector: role == db\n"),
                "spec.ingress[0].source.selector",
                8,
                "at column 9",
            ),
            (
                gnp("  - action: Allow\n    destination:\n      nets: [10.244.1.1/24]\n"),
                "spec.ingress[0].destination.nets[0]",
                8,
                "did you mean 10.244.1.0/24?",
            ),
            (
                gnp("  - action: Reject\n"),
                "spec.ingress[0].action",
                6,
                "unknown variant `Reject`",
            ),
            (
                gnp("  - action: Allow\n    protocol: GRE\n"),
                "spec.ingress[0].protocol",
                7,
                "use TCP, UDP, SCTP or ICMP",
            ),
            (
                "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  order: .nan\n".into(),
                "spec.order",
                4,
                "not a finite number",
            ),
            (
                "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: has(role\n".into(),
                "spec.selector",
                4,
                "at column",
            ),
            (
                "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  namespaceSelector: env = 'x'\n".into(),
                "spec.namespaceSelector",
                4,
                "'=' alone",
            ),
            (
                "kind: GlobalNetworkPolicy\nmetadata:\n  name: g\n  namespace: x\nspec: {}\n".into(),
                "metadata.namespace",
                4,
                "cluster-wide",
            ),
            (
                "kind: Namespace\nmetadata:\n  name: a.b\n".into(),
                "metadata.name",
                3,
                "a DNS label",
            ),
            (
                "kind: Namespace\nmetadata:\n  name: x\n  labels:\n    kubernetes.io/metadata.name: y\n".into(),
                "metadata.labels.kubernetes.io/metadata.name",
                5,
                "set automatically",
            ),
            (
                "kind: Namespace\nmetadata:\n  name: x\n  labels:\n    env: 'a b'\n".into(),
                "metadata.labels.env",
                5,
                "not a label value",
            ),
            (
                netpol("  - from:\n    - ipBlock: {cidr: 'fd00::/8'}\n"),
                "spec.ingress[0].from[0].ipBlock.cidr",
                7,
                "not an IPv4 address or CIDR",
            ),
            (
                netpol("  - ports:\n    - port: 80\n      endPort: 70000\n"),
                "spec.ingress[0].ports[0].endPort",
                8,
                "expected a number from 0 to 65535",
            ),
            (
                "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  order: high\n".into(),
                "spec.order",
                4,
                "expected a number",
            ),
            (
                "kind: NetworkPolicy\nmetadata:\n  name: p\n  namepsace: x\nspec: {}\n".into(),
                "metadata",
                4,
                "unknown field `namepsace`",
            ),
            (
                "kind: Namespace\nmetadata:\n  name: x\nspec:\n  labels: {a: b}\n".into(),
                "spec",
                5,
                "unknown field `labels`",
            ),
        ];
        for (text, field, line, why) in &cases {
            let e = err(text);
            assert_eq!(
                (e.field.as_str(), e.line),
                (*field, Some(*line)),
                "{text}: {e}"
            );
            assert!(e.reason.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn what_kubectl_prints_of_live_objects_applies() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: |\n      {}\n  creationTimestamp: \"2024-05-01T10:00:00Z\"\n  generation: 1\n  name: deny\n  namespace: x\n  resourceVersion: \"123\"\n  uid: 0b5d5f1e-0000-4000-8000-000000000000\nspec:\n  podSelector: {}\n  policyTypes:\n  - Ingress\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  creationTimestamp: \"2024-05-01T10:00:00Z\"\n  labels:\n    kubernetes.io/metadata.name: x\n  name: x\n  resourceVersion: \"7\"\n  uid: 1b5d5f1e-0000-4000-8000-000000000000\nspec:\n  finalizers:\n  - kubernetes\nstatus:\n  phase: Active\n";
        let r = parse_resources(text).unwrap();
        assert_eq!(r[0].to_store().0, "networkpolicies/x/deny");
        assert_eq!(
            r[1],
            Resource::Namespace {
                name: "x".into(),
                spec: crate::policy::Namespace::default()
            }
        );
    }

    #[test]
    fn every_cut_or_dropped_line_of_a_policy_file_is_parsed_or_refused_with_a_line() {
        // No panic on any prefix of the file or the file without any one line; every
        // refusal names a line inside the text.
        let lines: Vec<&str> = POLICY_FILE.lines().collect();
        let mut texts: Vec<String> = (0..POLICY_FILE.len())
            .filter(|i| POLICY_FILE.is_char_boundary(*i))
            .map(|i| POLICY_FILE[..i].to_string())
            .collect();
        for skip in 0..lines.len() {
            let mut t: Vec<&str> = lines.clone();
            t.remove(skip);
            texts.push(t.join("\n"));
        }
        for t in &texts {
            if let Err(e) = parse_resources(t) {
                if e.field != "(file)" {
                    let line = e.line.unwrap_or_else(|| panic!("{t}: {e}: no line"));
                    assert!(
                        line >= 1 && line <= t.lines().count().max(1) + 1,
                        "{t}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn paths_are_located_in_nested_lists() {
        let body = "spec:\n  ingress:\n  - from:\n    - podSelector: {}\n  - from:\n    - podSelector: {}\n    - ipBlock:\n        cidr: x\n    ports:\n    - port: 1\n";
        assert_eq!(
            locate(body, "spec.ingress[1].from[1].ipBlock.cidr"),
            Some(8)
        );
        assert_eq!(locate(body, "spec.ingress[1].ports[0].port"), Some(10));
        assert_eq!(locate(body, "spec.ingress[0].ports"), Some(3));
        assert_eq!(locate(body, "spec.ingress[1]"), Some(5));
        assert_eq!(locate(body, "status"), None);
    }

    #[test]
    fn host_bits_are_refused_with_the_fix() {
        let c = NetworkConfig {
            cluster_cidr: "10.244.1.0/16".parse().unwrap(),
            block_size: 24,
            subnet_min: None,
            subnet_max: None,
            reservations: vec![],
            backend: BackendSpec::None,
            mtu: 1500,
            masquerade: true,
            pod_wiring: Default::default(),
            lease_ttl_seconds: 60,
        };
        assert!(c.validate().unwrap_err().reason.contains("10.244.0.0/16"));
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
