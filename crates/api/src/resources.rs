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

pub use crate::backend::{BackendKind, BackendSpec, VxlanOptions};
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
    /// Peer name → what the probes of its advertised address found.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, PeerReach>,
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
    /// Several resources in one document, as `twill get -o json` prints them.
    List,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 6] = [
        ResourceKind::NetworkConfig,
        ResourceKind::Node,
        ResourceKind::Block,
        ResourceKind::BgpConfiguration,
        ResourceKind::BgpPeer,
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
    /// "NetworkConfig, Node, Block, BGPConfiguration, BGPPeer or List".
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
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::NetworkConfig(_) => ResourceKind::NetworkConfig,
            Resource::Node { .. } => ResourceKind::Node,
            Resource::Block { .. } => ResourceKind::Block,
            Resource::BgpConfiguration(_) => ResourceKind::BgpConfiguration,
            Resource::BgpPeer { .. } => ResourceKind::BgpPeer,
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
#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    name: String,
    /// Only Node resources carry labels (what BGPPeer selectors match).
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

#[cfg(feature = "yaml")]
impl Metadata {
    /// Refuses labels on a kind that has none, rather than dropping them unseen.
    fn no_labels(&self, kind: ResourceKind) -> Result<(), Invalid> {
        match &self.labels {
            Some(l) if !l.is_empty() => Err(invalid(
                "metadata.labels",
                format!("a {kind} carries no labels here (BGPPeer selectors match the labels of Node resources); remove them"),
            )),
            _ => Ok(()),
        }
    }
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
                e.line = e
                    .field
                    .rsplit('.')
                    .map(|seg| seg.split('[').next().unwrap_or(seg))
                    .find_map(|seg| find_line(body, seg))
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
            "\"Pod\" is not a Twill resource; use NetworkConfig, Node, Block, BGPConfiguration, BGPPeer or List"
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
