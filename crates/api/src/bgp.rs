//! Calico mode's resources: how nodes speak BGP to each other and to routers outside the
//! cluster ([`BgpConfiguration`], [`BgpPeer`]), and what each node's agent publishes about
//! its routing sessions ([`RoutingStatus`], for `twill node status`). Shaped after
//! calicoctl's `BGPConfiguration` and `BGPPeer`, so a Calico user's files read the same.
//!
//! | key (under `/twill/v1/`) | value | written by |
//! |---|---|---|
//! | [`KEY_BGP_CONFIG`] | [`BgpConfiguration`] (one per cluster, named `default`) | `twill apply` |
//! | [`PREFIX_BGP_PEERS`]`<name>` | [`BgpPeer`] | `twill apply` |
//! | [`PREFIX_ROUTING_STATUS`]`<node>` | [`RoutingStatus`] (bound to the agent's lease) | `twilld` |

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Calico's default AS number for every node (a private 16-bit AS, RFC 6996).
pub const DEFAULT_AS: u32 = 64512;
/// The store key of the cluster's one BGP configuration.
pub const KEY_BGP_CONFIG: &str = "bgpconfig";
/// The only name a BGPConfiguration may have (Calico's cluster-wide `default`).
pub const BGP_CONFIG_NAME: &str = "default";
pub const PREFIX_BGP_PEERS: &str = "bgppeers/";
/// What each agent publishes about its BGP or RIP sessions.
pub const PREFIX_ROUTING_STATUS: &str = "routingstatus/";

fn yes() -> bool {
    true
}

/// How a node's BGP router ID is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RouterIdMode {
    /// The node IP (Calico's default).
    #[default]
    #[serde(rename = "nodeIP")]
    NodeIp,
    /// A 32-bit hash of the node name (Calico's `CALICO_ROUTER_ID=hash`), for nodes whose
    /// IPs are not unique (IPv6-only or NATed nodes).
    #[serde(rename = "hash")]
    Hash,
}

/// The cluster's BGP settings (`kind: BGPConfiguration`, `metadata.name: default`). Every
/// field is optional; absent, the values below apply. Absent altogether, the `bgp`
/// backend runs an iBGP full mesh in AS [`DEFAULT_AS`] on port 179 with graceful restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpConfiguration {
    /// Every node peers with every other (iBGP full mesh). Off: nodes peer only as the
    /// BGPPeers say (route reflectors, ToR routers).
    #[serde(default = "yes")]
    pub node_to_node_mesh_enabled: bool,
    /// The AS of every node without its own (`Node.spec.bgp.asNumber`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// The TCP port every node listens on and mesh peers connect to (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Hold time offered on every session, seconds (0, or 3 and up; default 90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time_seconds: Option<u16>,
    /// Seconds between KEEPALIVEs (default a third of the hold time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time_seconds: Option<u16>,
    /// Seconds between connect attempts (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_retry_seconds: Option<u32>,
    /// Graceful restart (RFC 4724): on by default, so restarting twilld moves no route.
    #[serde(default = "yes")]
    pub graceful_restart: bool,
    /// The restart time this node advertises: how long peers keep its routes after its
    /// agent dies (default 120 s, at most 4095).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_time_seconds: Option<u16>,
    /// Communities (`"AS:VALUE"`, RFC 1997) attached to every pod prefix a node announces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    #[serde(default, rename = "routerIDMode")]
    pub router_id_mode: RouterIdMode,
}

impl Default for BgpConfiguration {
    fn default() -> Self {
        BgpConfiguration {
            node_to_node_mesh_enabled: true,
            as_number: None,
            listen_port: None,
            hold_time_seconds: None,
            keepalive_time_seconds: None,
            connect_retry_seconds: None,
            graceful_restart: true,
            restart_time_seconds: None,
            communities: Vec::new(),
            router_id_mode: RouterIdMode::NodeIp,
        }
    }
}

/// A TCP MD5 (RFC 2385) key: kept in the store, or read from a file on each node (so the
/// secret never enters the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Password {
    /// The key itself, stored in the store.
    Value(String),
    /// A file on every node the peering applies to, read by its agent.
    File(String),
}

/// One BGP peering rule (`kind: BGPPeer`), as calicoctl's:
/// - which nodes it applies to: `node` (one node, "node specific"), `nodeSelector`
///   (nodes whose labels match), or neither (every node, "global");
/// - whom they peer with: `peerIP` (a router outside the cluster, with `asNumber`) or
///   `peerSelector` (the nodes whose labels match: route reflectors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A label selector in Calico's syntax (`all()`, `has(k)`, `k == 'v'`, `k != 'v'`,
    /// `!`, `&&`, `||`, parentheses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// `IP` or `IP:PORT`.
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// The peer's AS (required with `peerIP`; with `peerSelector` each selected node's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
    /// eBGP: announce routes with the next hop they were learned with, not this node's
    /// address (Calico's `keepOriginalNextHop`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_original_next_hop: bool,
    /// The longest this node keeps the peer's routes after the peer goes away without a
    /// word (graceful restart helper), whatever restart time the peer asks for; Calico's
    /// duration syntax (`"120s"`, `"2m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<String>,
}

/// This node's own BGP settings, in its Node resource (`spec.bgp`), as Calico's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeBgp {
    /// This node's AS, instead of the cluster's (an AS per node, e.g. one per rack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Makes this node a route reflector with this cluster ID (RFC 4456).
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// An explicit router ID.
    #[serde(default, rename = "routerID", skip_serializing_if = "Option::is_none")]
    pub router_id: Option<Ipv4Addr>,
}

/// Which routing protocol a [`RoutingStatus`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingProtocol {
    Bgp,
    Rip,
}

/// Why a session exists: the PEER TYPE column of `calicoctl node status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerType {
    /// The node-to-node mesh.
    NodeMesh,
    /// A BGPPeer with neither `node` nor `nodeSelector`.
    Global,
    /// A BGPPeer with `node` or `nodeSelector`.
    NodeSpecific,
    /// A session to or from a route reflector (`peerSelector` peers).
    RouteReflector,
    /// A RIP neighbour heard on the segment.
    RipNeighbor,
}

impl PeerType {
    /// As calicoctl prints it.
    pub const fn label(self) -> &'static str {
        match self {
            PeerType::NodeMesh => "node-to-node mesh",
            PeerType::Global => "global",
            PeerType::NodeSpecific => "node specific",
            PeerType::RouteReflector => "route reflector",
            PeerType::RipNeighbor => "rip neighbor",
        }
    }
}

/// One session as the node's agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingPeerStatus {
    /// `IP` or `IP:PORT` when the port is not the protocol's.
    pub address: String,
    /// The node at the other end, when it is one of the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub peer_type: PeerType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// The session state as the protocol names it (BGP: Idle, Connect, Active, OpenSent,
    /// OpenConfirm, Established; RIP: up, timeout).
    pub state: String,
    /// Seconds since the epoch when the state began.
    pub since: u64,
    /// The last error or reason, in words ("Connection refused", "Hold timer expired").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub info: String,
    pub prefixes_received: u64,
    pub prefixes_advertised: u64,
}

/// What an agent publishes about its routing sessions (`routingstatus/<node>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingStatus {
    pub protocol: RoutingProtocol,
    #[serde(default, rename = "routerID", skip_serializing_if = "Option::is_none")]
    pub router_id: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// This node reflects routes with this cluster ID.
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    pub peers: Vec<RoutingPeerStatus>,
}
