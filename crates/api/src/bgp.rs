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
//!
//! Also the pure helpers every part shares, so there is one definition of each rule:
//! [`Selector`] (Calico's label selectors: `Selector::parse`, `matches`), [`parse_community`],
//! [`parse_duration_secs`] (Calico's `maxRestartTime`), `validate()` on each resource
//! (errors name the field path, the value and the fix) and the accessors that apply the
//! defaults ([`BgpConfiguration::as_number`], [`BgpConfiguration::listen_port`], …).

use crate::resources::{invalid, Invalid};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Calico's default AS number for every node (a private 16-bit AS, RFC 6996).
pub const DEFAULT_AS: u32 = 64512;
/// The store key of the cluster's one BGP configuration.
pub const KEY_BGP_CONFIG: &str = "bgpconfig";
/// The only name a BGPConfiguration may have (Calico's cluster-wide `default`).
pub const BGP_CONFIG_NAME: &str = "default";
pub const PREFIX_BGP_PEERS: &str = "bgppeers/";
/// What each agent publishes about its BGP or RIP sessions.
pub const PREFIX_ROUTING_STATUS: &str = "routingstatus/";
/// BGP's port (RFC 4271), every node's listen port unless the configuration says otherwise.
pub const DEFAULT_LISTEN_PORT: u16 = 179;
/// The hold time offered unless configured (RFC 4271's suggested 90 s).
pub const DEFAULT_HOLD_TIME: u16 = 90;
/// Seconds between connect attempts unless configured.
pub const DEFAULT_CONNECT_RETRY: u32 = 5;
/// The graceful-restart time advertised unless configured (Calico's 120 s).
pub const DEFAULT_RESTART_TIME: u16 = 120;
/// The largest restart time the capability can carry (a 12-bit field, RFC 4724 §3).
pub const MAX_RESTART_TIME: u16 = 4095;
/// AS_TRANS (RFC 6793): the placeholder a 2-octet speaker sees for a 4-octet AS; never a
/// real AS.
pub const AS_TRANS: u32 = 23456;
/// The longest TCP MD5 key Linux takes (TCP_MD5SIG_MAXKEYLEN).
pub const MAX_PASSWORD_LEN: usize = 80;

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
/// secret never enters the store). Written `password: {value: KEY}` or
/// `password: {file: /PATH}` (a map with one of the two, in YAML as in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PasswordFields", into = "PasswordFields")]
pub enum Password {
    /// The key itself, stored in the store.
    Value(String),
    /// A file on every node the peering applies to, read by its agent.
    File(String),
}

/// How [`Password`] is written: a map with exactly one of `value` and `file` (serde_yaml
/// reads an enum only from a YAML tag, which no Calico user writes).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

impl TryFrom<PasswordFields> for Password {
    type Error = String;
    fn try_from(p: PasswordFields) -> Result<Self, String> {
        match (p.value, p.file) {
            (Some(v), None) => Ok(Password::Value(v)),
            (None, Some(f)) => Ok(Password::File(f)),
            _ => Err("give exactly one of value (the key, kept in the store) or file (a path read on each node)".into()),
        }
    }
}

impl From<Password> for PasswordFields {
    fn from(p: Password) -> Self {
        match p {
            Password::Value(v) => PasswordFields {
                value: Some(v),
                file: None,
            },
            Password::File(f) => PasswordFields {
                value: None,
                file: Some(f),
            },
        }
    }
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

// ---- accessors with the defaults ----

impl BgpConfiguration {
    /// The AS of every node without its own (default [`DEFAULT_AS`]).
    pub fn as_number(&self) -> u32 {
        self.as_number.unwrap_or(DEFAULT_AS)
    }
    /// The port every node listens on (default 179).
    pub fn listen_port(&self) -> u16 {
        self.listen_port.unwrap_or(DEFAULT_LISTEN_PORT)
    }
    /// The hold time offered, seconds (default 90; 0 means no keepalives at all).
    pub fn hold_time(&self) -> u16 {
        self.hold_time_seconds.unwrap_or(DEFAULT_HOLD_TIME)
    }
    /// Seconds between KEEPALIVEs: as configured, else a third of the hold time.
    pub fn keepalive_time(&self) -> u16 {
        self.keepalive_time_seconds
            .unwrap_or_else(|| self.hold_time() / 3)
    }
    /// Seconds between connect attempts (default 5).
    pub fn connect_retry(&self) -> u32 {
        self.connect_retry_seconds.unwrap_or(DEFAULT_CONNECT_RETRY)
    }
    /// The restart time advertised with graceful restart (default 120 s); `None` when
    /// graceful restart is off.
    pub fn restart_time(&self) -> Option<u16> {
        self.graceful_restart
            .then(|| self.restart_time_seconds.unwrap_or(DEFAULT_RESTART_TIME))
    }
    /// The communities for pod prefixes, as 32-bit values (RFC 1997), in the order given.
    pub fn community_values(&self) -> Result<Vec<u32>, Invalid> {
        self.communities
            .iter()
            .enumerate()
            .map(|(i, c)| {
                parse_community(c).map_err(|e| invalid(&format!("spec.communities[{i}]"), e))
            })
            .collect()
    }

    /// Checks every field; the error names it (`spec.asNumber`, …), the value and the fix.
    /// The name (`default`) is the resource file's to check ([`check_config_name`]).
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(a) = self.as_number {
            check_as_number("spec.asNumber", a)?;
        }
        if self.listen_port == Some(0) {
            return Err(invalid(
                "spec.listenPort",
                "0 is not a port; leave it out for BGP's 179, or give 1 to 65535",
            ));
        }
        if let Some(h) = self.hold_time_seconds {
            check_hold_time("spec.holdTimeSeconds", h)?;
        }
        if let Some(k) = self.keepalive_time_seconds {
            check_keepalive("spec.keepaliveTimeSeconds", k, self.hold_time())?;
        }
        if self.connect_retry_seconds == Some(0) {
            return Err(invalid(
                "spec.connectRetrySeconds",
                "0 would retry without pause; give at least 1 (default 5)",
            ));
        }
        if let Some(r) = self.restart_time_seconds {
            if r > MAX_RESTART_TIME {
                return Err(invalid(
                    "spec.restartTimeSeconds",
                    format!("{r} does not fit the graceful-restart capability (a 12-bit field): give at most {MAX_RESTART_TIME}"),
                ));
            }
        }
        self.community_values()?;
        Ok(())
    }
}

/// A BGPConfiguration must be named `default` (the cluster has one, as in Calico).
pub fn check_config_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name == BGP_CONFIG_NAME {
        return Ok(());
    }
    Err(invalid(
        "metadata.name",
        format!("{name:?}: the cluster has one BGPConfiguration and it is named \"default\"; write `name: default`"),
    ))
}

fn check_as_number(field: &str, a: u32) -> Result<(), Invalid> {
    match a {
        0 => Err(invalid(
            field,
            "0 is not an AS number (1 to 4294967295; Calico's default is 64512)",
        )),
        AS_TRANS => Err(invalid(
            field,
            "23456 is AS_TRANS (RFC 6793), a placeholder and never a real AS; pick another (e.g. 64512)",
        )),
        _ => Ok(()),
    }
}

fn check_hold_time(field: &str, h: u16) -> Result<(), Invalid> {
    if (1..3).contains(&h) {
        return Err(invalid(
            field,
            format!("{h}: a hold time is 0 (no keepalives) or at least 3 seconds (RFC 4271)"),
        ));
    }
    Ok(())
}

fn check_keepalive(field: &str, k: u16, hold: u16) -> Result<(), Invalid> {
    if hold == 0 {
        if k != 0 {
            return Err(invalid(
                field,
                format!("{k}: with a hold time of 0 no KEEPALIVE is sent; leave keepaliveTimeSeconds out"),
            ));
        }
        return Ok(());
    }
    if k == 0 || k >= hold {
        return Err(invalid(
            field,
            format!(
                "{k} must be at least 1 and below the hold time {hold}, or the peer's hold timer expires (a third of it, {}, is the usual)",
                hold / 3
            ),
        ));
    }
    Ok(())
}

impl BgpPeer {
    /// `peerIP` as an address and, when written `IP:PORT`, the port.
    pub fn peer_address(&self) -> Result<Option<(IpAddr, Option<u16>)>, Invalid> {
        let Some(s) = &self.peer_ip else {
            return Ok(None);
        };
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Some((ip, None)));
        }
        match s.parse::<SocketAddr>() {
            Ok(sa) if sa.port() == 0 => Err(invalid(
                "spec.peerIP",
                format!("{s:?}: port 0 is not a port; leave the port out for 179"),
            )),
            Ok(sa) => Ok(Some((sa.ip(), Some(sa.port())))),
            Err(_) => Err(invalid(
                "spec.peerIP",
                format!("{s:?} is not IP or IP:PORT (e.g. 192.0.2.1, 192.0.2.1:1179, [2001:db8::1]:1179)"),
            )),
        }
    }

    /// `nodeSelector`, parsed.
    pub fn node_selector(&self) -> Result<Option<Selector>, Invalid> {
        parse_field("spec.nodeSelector", self.node_selector.as_deref())
    }

    /// `peerSelector`, parsed.
    pub fn peer_selector(&self) -> Result<Option<Selector>, Invalid> {
        parse_field("spec.peerSelector", self.peer_selector.as_deref())
    }

    /// `maxRestartTime` in whole seconds.
    pub fn max_restart_seconds(&self) -> Result<Option<u16>, Invalid> {
        let Some(s) = &self.max_restart_time else {
            return Ok(None);
        };
        let field = "spec.maxRestartTime";
        let secs = parse_duration_secs(s).map_err(|e| invalid(field, e))?;
        u16::try_from(secs)
            .ok()
            .filter(|s| *s <= MAX_RESTART_TIME)
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("{s:?} is {secs} s; no peer can ask for more than {MAX_RESTART_TIME} s (a 12-bit field), so give at most that"),
                )
            })
    }

    /// Whether this rule applies to the node `node` with `labels`: a global rule to every
    /// node, `node` to that one, `nodeSelector` to the nodes it matches. A rule that does
    /// not validate applies to none (`twill apply` refuses such rules; only a value
    /// written to the store by hand can be one).
    pub fn applies_to(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        match (&self.node, self.node_selector()) {
            (Some(n), Ok(None)) => n == node,
            (None, Ok(Some(sel))) => sel.matches(labels),
            (None, Ok(None)) => true,
            _ => false,
        }
    }

    /// Whether the rule names no node (`node`, `nodeSelector`): PEER TYPE "global".
    pub fn is_global(&self) -> bool {
        self.node.is_none() && self.node_selector.is_none()
    }

    /// Checks every field and how they combine; the error names the field, the value and
    /// the fix.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.node.is_some() && self.node_selector.is_some() {
            return Err(invalid(
                "spec.nodeSelector",
                "node and nodeSelector exclude each other: give node for one node, nodeSelector for the nodes it matches, neither for every node",
            ));
        }
        if let Some(n) = &self.node {
            check_dns_name("spec.node", n)?;
        }
        self.node_selector()?;
        let peer = self.peer_address()?;
        let peer_sel = self.peer_selector()?;
        match (&peer, &peer_sel) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "spec.peerSelector",
                    "peerIP and peerSelector exclude each other: peerIP names one router, peerSelector the cluster nodes to peer with (route reflectors); keep one",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "spec.peerIP",
                    "a BGPPeer needs whom to peer with: peerIP (with asNumber) for a router, or peerSelector for cluster nodes (route reflectors)",
                ))
            }
            _ => {}
        }
        match (self.as_number, &peer) {
            (None, Some(_)) => {
                return Err(invalid(
                    "spec.asNumber",
                    "required with peerIP: the router's AS (the same as the nodes' for iBGP, e.g. 64512)",
                ))
            }
            (Some(_), None) => {
                return Err(invalid(
                    "spec.asNumber",
                    "not allowed with peerSelector: each selected node's own AS is used (its Node spec.bgp.asNumber, else the cluster's); remove asNumber",
                ))
            }
            (Some(a), Some(_)) => check_as_number("spec.asNumber", a)?,
            (None, None) => {}
        }
        match &self.password {
            Some(Password::Value(v)) if v.is_empty() => {
                return Err(invalid(
                    "spec.password.value",
                    "empty: give the key, or remove password for no TCP MD5",
                ))
            }
            Some(Password::Value(v)) if v.len() > MAX_PASSWORD_LEN => {
                return Err(invalid(
                    "spec.password.value",
                    format!("{} bytes; a TCP MD5 key is at most {MAX_PASSWORD_LEN} bytes", v.len()),
                ))
            }
            Some(Password::File(f)) if !f.starts_with('/') => {
                return Err(invalid(
                    "spec.password.file",
                    format!("{f:?} is not an absolute path; every node reads it from its own file system, so write it from / (e.g. /etc/twill/bgp-password)"),
                ))
            }
            _ => {}
        }
        self.max_restart_seconds()?;
        Ok(())
    }
}

impl NodeBgp {
    /// Checks the node's own BGP settings (`spec.bgp.…`).
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(a) = self.as_number {
            check_as_number("spec.bgp.asNumber", a)?;
        }
        if self.router_id == Some(Ipv4Addr::UNSPECIFIED) {
            return Err(invalid(
                "spec.bgp.routerID",
                "0.0.0.0 is not a router ID (RFC 6286); give a nonzero address, or leave it out for the node IP",
            ));
        }
        if self.route_reflector_cluster_id == Some(Ipv4Addr::UNSPECIFIED) {
            return Err(invalid(
                "spec.bgp.routeReflectorClusterID",
                "0.0.0.0 is not a cluster ID; give a nonzero one, such as 244.0.0.1 (Calico's example)",
            ));
        }
        Ok(())
    }
}

fn parse_field(field: &str, text: Option<&str>) -> Result<Option<Selector>, Invalid> {
    text.map(|t| Selector::parse(t).map_err(|e| invalid(field, e)))
        .transpose()
}

/// A resource name as Calico and Kubernetes take them (a DNS-1123 subdomain): lower-case
/// letters, digits, `-` and `.`, each dot-separated label 1 to 63 characters starting and
/// ending with a letter or digit, 253 at most in all.
pub fn check_dns_name(field: &str, name: &str) -> Result<(), Invalid> {
    let bad = |why: String| {
        Err(invalid(
            field,
            format!("{name:?} is not a valid name: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty; give one (e.g. rack1-tor)".into());
    }
    if name.len() > 253 {
        return bad(format!("{} characters, at most 253", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each part between dots is 1 to 63 characters".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return bad(format!(
                "{c:?} is not allowed; use lower-case letters, digits, '-' and '.'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("it must start and end with a letter or digit".into());
        }
    }
    Ok(())
}

/// Kubernetes' label syntax, which selectors match: a key `[prefix/]name` (name 1 to 63
/// of letters, digits, `-`, `_`, `.`, alphanumeric at both ends; prefix a DNS name) and a
/// value of at most 63 such characters (may be empty).
pub fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    for (k, v) in labels {
        let f = format!("{field}.{k}");
        check_label_key(&f, k)?;
        check_label_value(&f, v)?;
    }
    Ok(())
}

/// One part of a label: at most 63 letters, digits, `-`, `_`, `.`, alphanumeric at both
/// ends (may be empty).
fn label_part_ok(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

/// A label key (see [`check_labels`]); the error names `field`.
pub fn check_label_key(field: &str, k: &str) -> Result<(), Invalid> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        check_dns_name(field, p).map_err(|e| {
            invalid(
                field,
                format!("the key's prefix (before '/'): {}", e.reason),
            )
        })?;
    }
    if name.is_empty() || !label_part_ok(name) {
        return Err(invalid(
            field,
            format!("{k:?} is not a label key: 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, optionally after a DNS prefix and '/' (e.g. rack or example.com/rack)"),
        ));
    }
    Ok(())
}

/// A label value (see [`check_labels`]); the error names `field`.
pub fn check_label_value(field: &str, v: &str) -> Result<(), Invalid> {
    if !label_part_ok(v) {
        return Err(invalid(
            field,
            format!("{v:?} is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
        ));
    }
    Ok(())
}

// ---- communities and durations ----

/// A standard community (RFC 1997) as its 32-bit value: `AS:VALUE` with both 0..=65535,
/// or the well-known `no-export`, `no-advertise`, `no-export-subconfed`.
pub fn parse_community(s: &str) -> Result<u32, String> {
    match s {
        "no-export" => return Ok(0xFFFF_FF01),
        "no-advertise" => return Ok(0xFFFF_FF02),
        "no-export-subconfed" => return Ok(0xFFFF_FF03),
        _ => {}
    }
    let bad = |why: &str| {
        format!("{s:?} is not a community: {why}; write AS:VALUE with both 0 to 65535 (e.g. 64512:100), or no-export / no-advertise")
    };
    let parts: Vec<&str> = s.split(':').collect();
    match parts[..] {
        [a, v] => {
            let num = |p: &str| -> Result<u32, String> {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(&format!("{p:?} is not a number")));
                }
                p.parse::<u16>()
                    .map(u32::from)
                    .map_err(|_| bad(&format!("{p} is above 65535")))
            };
            Ok((num(a)? << 16) | num(v)?)
        }
        [_, _, _] => Err(bad(
            "three parts make a large community (RFC 8092), which is not supported here",
        )),
        _ => Err(bad("no ':' between AS and VALUE")),
    }
}

/// A community value as `AS:VALUE`.
pub fn format_community(c: u32) -> String {
    format!("{}:{}", c >> 16, c & 0xffff)
}

/// A duration in Calico's (Go's) syntax, as whole seconds: `120s`, `2m`, `1m30s`, `1.5m`,
/// `1h`, `2500ms500ms`; `0` alone is zero. A total that is not whole seconds is refused.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let bad = |why: String| format!("{s:?} is not a duration: {why}; write e.g. 120s, 2m or 1m30s");
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let mut millis: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = |r: &str| r.bytes().take_while(u8::is_ascii_digit).count();
        let at = rest;
        let whole_len = digits(rest);
        let (whole, mut frac) = (&rest[..whole_len], "");
        rest = &rest[whole_len..];
        if let Some(r) = rest.strip_prefix('.') {
            let n = digits(r);
            frac = &r[..n];
            rest = &r[n..];
        }
        if whole.is_empty() && frac.is_empty() {
            return Err(bad(format!("a number is expected at {at:?}")));
        }
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: u64 = match unit {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1000,
            "ms" => 1,
            "" => {
                return Err(bad(format!(
                    "{whole}{} has no unit (s, m, h or ms)",
                    if frac.is_empty() {
                        String::new()
                    } else {
                        format!(".{frac}")
                    }
                )))
            }
            u => return Err(bad(format!("unknown unit {u:?} (s, m, h or ms)"))),
        };
        let too_large = || bad("too large".into());
        let w: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        // The fraction, to a millisecond: digits past the ninth cannot matter here.
        let frac = &frac[..frac.len().min(9)];
        let f: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| too_large())?
        };
        let part = w
            .checked_mul(scale)
            .and_then(|v| v.checked_add(f * scale / 10u64.pow(frac.len() as u32)))
            .ok_or_else(too_large)?;
        millis = millis.checked_add(part).ok_or_else(too_large)?;
    }
    if !millis.is_multiple_of(1000) {
        return Err(bad(format!("{millis} ms is not a whole number of seconds")));
    }
    Ok(millis / 1000)
}

// ---- selectors ----

/// A label selector in Calico's syntax, parsed: `all()`, `has(k)`, `k == 'v'`, `k != 'v'`,
/// `k in {'a', 'b'}`, `k not in {…}`, `k contains 's'`, `k starts with 's'`,
/// `k ends with 's'`, `!`, `&&`, `||` and parentheses (`!` binds tightest, then `&&`).
/// As in Calico, `!=` and `not in` also match nodes without the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

impl Selector {
    /// Parses `text`; the error says at which column (1-based) and what was expected there.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let tokens = lex(text).map_err(|(col, why)| format!("{text:?}: at column {col}: {why}"))?;
        if tokens.is_empty() {
            return Err(format!(
                "{text:?}: an empty selector selects nothing; write all() for every node"
            ));
        }
        let mut p = Parser {
            tokens: &tokens,
            at: 0,
            end: text.chars().count() + 1,
        };
        let sel = p
            .or()
            .and_then(|s| match p.peek() {
                None => Ok(s),
                Some(t) => Err((t.col, format!("unexpected {}", t.tok.describe()))),
            })
            .map_err(|(col, why)| format!("{text:?}: at column {col}: {why}"))?;
        Ok(sel)
    }

    /// Whether a node with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &String| labels.get(k);
        match self {
            Selector::All => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => get(k) == Some(v),
            Selector::Ne(k, v) => get(k) != Some(v),
            Selector::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Selector::NotIn(k, set) => !get(k).is_some_and(|v| set.contains(v)),
            Selector::Contains(k, s) => get(k).is_some_and(|v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => get(k).is_some_and(|v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => get(k).is_some_and(|v| v.ends_with(s.as_str())),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(a, b) => a.matches(labels) && b.matches(labels),
            Selector::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

fn quote(s: &str) -> String {
    if s.contains('\'') {
        format!("\"{s}\"")
    } else {
        format!("'{s}'")
    }
}

impl fmt::Display for Selector {
    /// The canonical text, which parses back to the same selector (fully parenthesised
    /// where `&&` and `||` nest).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &BTreeSet<String>| s.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ");
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, s) => write!(f, "{k} in {{{}}}", set(s)),
            Selector::NotIn(k, s) => write!(f, "{k} not in {{{}}}", set(s)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(s) => match **s {
                Selector::And(..) | Selector::Or(..) => write!(f, "!({s})"),
                _ => write!(f, "!{s}"),
            },
            Selector::And(a, b) => write!(f, "({a} && {b})"),
            Selector::Or(a, b) => write!(f, "({a} || {b})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    EqEq,
    NotEq,
    Bang,
    AndAnd,
    OrOr,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("{s:?}"),
            Tok::Str(s) => format!("the string {}", quote(s)),
            Tok::EqEq => "'=='".into(),
            Tok::NotEq => "'!='".into(),
            Tok::Bang => "'!'".into(),
            Tok::AndAnd => "'&&'".into(),
            Tok::OrOr => "'||'".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::Comma => "','".into(),
        }
    }
}

struct Token {
    tok: Tok,
    /// 1-based column (in characters) where it starts.
    col: usize,
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./-".contains(c)
}

fn lex(text: &str) -> Result<Vec<Token>, (usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let next = chars.get(i + 1).copied();
        let (tok, len) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('=', Some('=')) => (Tok::EqEq, 2),
            ('!', Some('=')) => (Tok::NotEq, 2),
            ('&', Some('&')) => (Tok::AndAnd, 2),
            ('|', Some('|')) => (Tok::OrOr, 2),
            ('=', _) => return Err((col, "'=' alone is not an operator; write '=='".into())),
            ('&', _) => return Err((col, "'&' alone is not an operator; write '&&'".into())),
            ('|', _) => return Err((col, "'|' alone is not an operator; write '||'".into())),
            ('!', _) => (Tok::Bang, 1),
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            ('{', _) => (Tok::LBrace, 1),
            ('}', _) => (Tok::RBrace, 1),
            (',', _) => (Tok::Comma, 1),
            (q @ ('\'' | '"'), _) => {
                let Some(end) = chars[i + 1..].iter().position(|&d| d == q) else {
                    return Err((col, format!("the string opened here has no closing {q}")));
                };
                let s: String = chars[i + 1..i + 1 + end].iter().collect();
                (Tok::Str(s), end + 2)
            }
            (c, _) if is_ident_char(c) => {
                let n = chars[i..].iter().take_while(|&&d| is_ident_char(d)).count();
                (Tok::Ident(chars[i..i + n].iter().collect()), n)
            }
            (c, _) => {
                return Err((
                    col,
                    format!("{c:?} is not part of a selector (label keys are letters, digits, '_', '.', '/' and '-'; values are quoted)"),
                ))
            }
        };
        out.push(Token { tok, col });
        i += len;
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    /// The column just past the text, for "found the end" errors.
    end: usize,
}

type PResult<T> = Result<T, (usize, String)>;

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn peek_tok(&self) -> Option<&Tok> {
        self.peek().map(|t| &t.tok)
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.at);
        self.at += 1;
        t
    }

    /// The column of the next token, or of the end.
    fn col(&self) -> usize {
        self.peek().map_or(self.end, |t| t.col)
    }

    fn found(&self) -> String {
        self.peek()
            .map_or("the end of the selector".into(), |t| t.tok.describe())
    }

    fn expect(&mut self, want: Tok, what: &str) -> PResult<()> {
        if self.peek_tok() == Some(&want) {
            self.at += 1;
            Ok(())
        } else {
            Err((
                self.col(),
                format!("expected {what}, found {}", self.found()),
            ))
        }
    }

    fn or(&mut self) -> PResult<Selector> {
        let mut left = self.and()?;
        while self.peek_tok() == Some(&Tok::OrOr) {
            self.at += 1;
            let right = self.and()?;
            left = Selector::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> PResult<Selector> {
        let mut left = self.unary()?;
        while self.peek_tok() == Some(&Tok::AndAnd) {
            self.at += 1;
            let right = self.unary()?;
            left = Selector::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn string(&mut self, after: &str) -> PResult<String> {
        match self.peek_tok() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            _ => Err((
                self.col(),
                format!(
                    "expected a quoted value ('…' or \"…\") after {after}, found {}",
                    self.found()
                ),
            )),
        }
    }

    fn keyword(&mut self, word: &str, after: &str) -> PResult<()> {
        match self.peek_tok() {
            Some(Tok::Ident(w)) if w == word => {
                self.at += 1;
                Ok(())
            }
            _ => Err((
                self.col(),
                format!("expected {word:?} after {after}, found {}", self.found()),
            )),
        }
    }

    fn set(&mut self, after: &str) -> PResult<BTreeSet<String>> {
        self.expect(Tok::LBrace, &format!("'{{' after {after}"))?;
        let mut set = BTreeSet::new();
        if self.peek_tok() == Some(&Tok::RBrace) {
            self.at += 1;
            return Ok(set);
        }
        loop {
            set.insert(self.string("'{' or ','")?);
            match self.peek_tok() {
                Some(Tok::Comma) => self.at += 1,
                Some(Tok::RBrace) => {
                    self.at += 1;
                    return Ok(set);
                }
                _ => {
                    return Err((
                        self.col(),
                        format!("expected ',' or '}}' in the set, found {}", self.found()),
                    ))
                }
            }
        }
    }

    fn unary(&mut self) -> PResult<Selector> {
        let col = self.col();
        let Some(t) = self.next() else {
            return Err((
                col,
                "expected a term (all(), has(key), key == 'value', '!' or '('), found the end of the selector".into(),
            ));
        };
        match t.tok.clone() {
            Tok::Bang => Ok(Selector::Not(Box::new(self.unary()?))),
            Tok::LParen => {
                let inner = self.or()?;
                self.expect(
                    Tok::RParen,
                    &format!("')' to close the '(' at column {col}"),
                )?;
                Ok(inner)
            }
            Tok::Ident(w) if w == "all" && self.peek_tok() == Some(&Tok::LParen) => {
                self.at += 1;
                self.expect(Tok::RParen, "')' after all(")?;
                Ok(Selector::All)
            }
            Tok::Ident(w) if w == "has" && self.peek_tok() == Some(&Tok::LParen) => {
                self.at += 1;
                let key = match self.peek_tok() {
                    Some(Tok::Ident(k)) => k.clone(),
                    _ => {
                        return Err((
                            self.col(),
                            format!("expected a label key in has(…), found {}", self.found()),
                        ))
                    }
                };
                self.at += 1;
                self.expect(Tok::RParen, "')' after has(key")?;
                Ok(Selector::Has(key))
            }
            Tok::Ident(key) => self.comparison(key),
            other => Err((
                col,
                format!(
                    "expected a term (all(), has(key), key == 'value', '!' or '('), found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn comparison(&mut self, key: String) -> PResult<Selector> {
        let col = self.col();
        let op = self.next().map(|t| t.tok.clone());
        Ok(match op {
            Some(Tok::EqEq) => Selector::Eq(key, self.string("'=='")?),
            Some(Tok::NotEq) => Selector::Ne(key, self.string("'!='")?),
            Some(Tok::Ident(w)) if w == "in" => Selector::In(key, self.set("in")?),
            Some(Tok::Ident(w)) if w == "not" => {
                self.keyword("in", "not")?;
                Selector::NotIn(key, self.set("not in")?)
            }
            Some(Tok::Ident(w)) if w == "contains" => {
                Selector::Contains(key, self.string("contains")?)
            }
            Some(Tok::Ident(w)) if w == "starts" => {
                self.keyword("with", "starts")?;
                Selector::StartsWith(key, self.string("starts with")?)
            }
            Some(Tok::Ident(w)) if w == "ends" => {
                self.keyword("with", "ends")?;
                Selector::EndsWith(key, self.string("ends with")?)
            }
            other => {
                let found = other.map_or("the end of the selector".into(), |t| t.describe());
                return Err((
                    col,
                    format!("expected an operator after the label key {key:?} (==, !=, in, not in, contains, starts with, ends with), found {found}"),
                ));
            }
        })
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

    fn sel(text: &str) -> Selector {
        Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn selectors_match_as_calico_does() {
        let rr = labels(&[("route-reflector", "true"), ("rack", "r1")]);
        let plain = labels(&[("rack", "r2")]);
        let none = labels(&[]);
        let cases: &[(&str, [bool; 3])] = &[
            ("all()", [true, true, true]),
            ("has(route-reflector)", [true, false, false]),
            ("!has(route-reflector)", [false, true, true]),
            ("rack == 'r1'", [true, false, false]),
            ("rack == \"r2\"", [false, true, false]),
            // != and not in also select nodes without the label.
            ("rack != 'r1'", [false, true, true]),
            ("rack in {'r1', 'r2'}", [true, true, false]),
            ("rack in {}", [false, false, false]),
            ("rack not in {'r1'}", [false, true, true]),
            ("rack contains '1'", [true, false, false]),
            ("rack starts with 'r'", [true, true, false]),
            ("rack ends with '2'", [false, true, false]),
            ("has(rack) && rack != 'r1'", [false, true, false]),
            ("rack == 'r1' || rack == 'r2'", [true, true, false]),
            // && binds tighter than ||, ! tighter than both.
            (
                "has(route-reflector) || has(rack) && rack == 'r9'",
                [true, false, false],
            ),
            (
                "(has(route-reflector) || has(rack)) && rack == 'r9'",
                [false, false, false],
            ),
            ("!has(rack) || rack == 'r2'", [false, true, true]),
            ("!(has(rack) && rack == 'r1')", [false, true, true]),
            ("!!has(rack)", [true, true, false]),
            (
                "  route-reflector=='true'&&rack=='r1'  ",
                [true, false, false],
            ),
            // A label key may be prefixed, and `has`/`all` are keys when not called.
            ("has == 'x' || all == 'y'", [false, false, false]),
        ];
        for (text, want) in cases {
            let s = sel(text);
            let got = [s.matches(&rr), s.matches(&plain), s.matches(&none)];
            assert_eq!(got, *want, "{text} parsed as {s:?}");
            // The canonical text parses back to the same selector.
            assert_eq!(sel(&s.to_string()), s, "{text} printed as {s}");
        }
        let s = sel("example.com/rack == 'r1'");
        assert!(s.matches(&labels(&[("example.com/rack", "r1")])));
        assert!(!s.matches(&labels(&[("rack", "r1")])));
        // A quote inside a value: the other quote kind.
        let s = sel("name == \"o'brien\"");
        assert!(s.matches(&labels(&[("name", "o'brien")])));
        assert_eq!(sel(&s.to_string()), s);
    }

    #[test]
    fn bad_selectors_point_at_the_column() {
        let cases: &[(&str, &str)] = &[
            ("", "empty selector"),
            ("   ", "empty selector"),
            (
                "has(rack",
                "at column 9: expected ')' after has(key, found the end",
            ),
            (
                "has()",
                "at column 5: expected a label key in has(…), found ')'",
            ),
            ("rack = 'r1'", "at column 6: '=' alone"),
            ("rack == r1", "at column 9: expected a quoted value"),
            (
                "rack == 'r1",
                "at column 9: the string opened here has no closing '",
            ),
            (
                "rack",
                "at column 5: expected an operator after the label key \"rack\"",
            ),
            ("rack ~ 'x'", "at column 6: '~' is not part of a selector"),
            ("has(a) &", "at column 8: '&' alone"),
            ("has(a) && ", "at column 11: expected a term"),
            (
                "(has(a)",
                "at column 8: expected ')' to close the '(' at column 1",
            ),
            ("has(a))", "at column 7: unexpected ')'"),
            ("has(a) has(b)", "at column 8: unexpected \"has\""),
            ("rack in 'r1'", "at column 9: expected '{' after in"),
            (
                "rack in {'a' 'b'}",
                "at column 14: expected ',' or '}' in the set",
            ),
            ("rack not {'a'}", "at column 10: expected \"in\" after not"),
            (
                "rack starts 'a'",
                "at column 13: expected \"with\" after starts",
            ),
            ("all(x)", "at column 5: expected ')' after all("),
            ("== 'a'", "at column 1: expected a term"),
            ("|| has(a)", "at column 1: expected a term"),
        ];
        for (text, want) in cases {
            let e = Selector::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with(&format!("{text:?}")), "{text:?}: {e}");
        }
    }

    #[test]
    fn every_short_input_parses_or_is_refused_with_a_column_and_round_trips() {
        // Every string of up to 4 tokens' worth of characters over the grammar's symbols:
        // no panic; an error names a column inside (or just past) the text; a selector
        // prints back to itself.
        let alphabet = [
            "a", "(", ")", "{", "}", "!", "==", "&&", "||", ",", "'x'", " ", "has", "in", "all",
            "not", "=",
        ];
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for i in &inputs {
                for a in alphabet {
                    next.push(format!("{i}{a}"));
                }
            }
            inputs.extend(next.clone());
            inputs = {
                let mut v = inputs;
                v.sort();
                v.dedup();
                v
            };
        }
        let mut parsed = 0;
        for text in &inputs {
            match Selector::parse(text) {
                Ok(sel) => {
                    parsed += 1;
                    assert_eq!(
                        Selector::parse(&sel.to_string()).as_ref(),
                        Ok(&sel),
                        "{text:?}"
                    );
                }
                Err(e) if text.trim().is_empty() => assert!(e.contains("empty selector"), "{e}"),
                Err(e) => {
                    let col: usize = e
                        .split("at column ")
                        .nth(1)
                        .and_then(|r| r.split(':').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("{text:?}: no column in {e}"));
                    assert!(
                        (1..=text.chars().count() + 1).contains(&col),
                        "{text:?}: {e}"
                    );
                }
            }
        }
        assert!(parsed > 50, "only {parsed} of {} parsed", inputs.len());
    }

    #[test]
    fn communities_are_as_value_pairs() {
        assert_eq!(parse_community("64512:100"), Ok((64512 << 16) | 100));
        assert_eq!(parse_community("0:0"), Ok(0));
        assert_eq!(parse_community("65535:65535"), Ok(u32::MAX));
        assert_eq!(parse_community("no-export"), Ok(0xFFFF_FF01));
        assert_eq!(parse_community("no-advertise"), Ok(0xFFFF_FF02));
        assert_eq!(parse_community("no-export-subconfed"), Ok(0xFFFF_FF03));
        assert_eq!(format_community((64512 << 16) | 100), "64512:100");
        for (bad, why) in [
            ("65536:1", "65536 is above 65535"),
            ("1:65536", "65536 is above 65535"),
            ("100", "no ':'"),
            ("a:1", "\"a\" is not a number"),
            (":1", "\"\" is not a number"),
            ("-1:1", "\"-1\" is not a number"),
            ("+1:1", "\"+1\" is not a number"),
            ("1:2:3", "large community"),
            ("", "no ':'"),
        ] {
            let e = parse_community(bad).unwrap_err();
            assert!(e.contains(why) && e.contains("AS:VALUE"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_in_calicos_syntax() {
        for (text, secs) in [
            ("120s", 120),
            ("2m", 120),
            ("1m30s", 90),
            ("1h", 3600),
            ("1h1m1s", 3661),
            ("1500ms1500ms", 3),
            ("0", 0),
            ("0s", 0),
            ("1.5m", 90),
            (".5m", 30),
            ("0.25s3.75s", 4),
        ] {
            assert_eq!(parse_duration_secs(text), Ok(secs), "{text}");
        }
        for (bad, why) in [
            ("120", "has no unit"),
            ("", "empty"),
            ("2x", "unknown unit \"x\""),
            ("1.5.m", "1.5 has no unit"),
            ("1s.", "a number is expected at \".\""),
            (".s", "a number is expected at \".s\""),
            ("1.5", "1.5 has no unit"),
            ("-1s", "a number is expected"),
            ("1500ms", "not a whole number of seconds"),
            ("99999999999999999999s", "too large"),
            ("s", "a number is expected"),
        ] {
            let e = parse_duration_secs(bad).unwrap_err();
            assert!(e.contains(why) && e.contains("120s"), "{bad}: {e}");
        }
    }

    #[test]
    fn configuration_defaults_are_calicos() {
        let c = BgpConfiguration::default();
        assert!(c.node_to_node_mesh_enabled && c.graceful_restart);
        assert_eq!(c.as_number(), 64512);
        assert_eq!(c.listen_port(), 179);
        assert_eq!(c.hold_time(), 90);
        assert_eq!(c.keepalive_time(), 30);
        assert_eq!(c.connect_retry(), 5);
        assert_eq!(c.restart_time(), Some(120));
        assert_eq!(c.community_values(), Ok(vec![]));
        assert_eq!(c.validate(), Ok(()));
        // An empty document means the same.
        let empty: BgpConfiguration = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, c);
        let set = BgpConfiguration {
            as_number: Some(65001),
            listen_port: Some(1179),
            hold_time_seconds: Some(9),
            connect_retry_seconds: Some(2),
            restart_time_seconds: Some(300),
            communities: vec!["65001:1".into(), "no-export".into()],
            ..c.clone()
        };
        assert_eq!(
            (
                set.as_number(),
                set.listen_port(),
                set.hold_time(),
                set.keepalive_time()
            ),
            (65001, 1179, 9, 3)
        );
        assert_eq!((set.connect_retry(), set.restart_time()), (2, Some(300)));
        assert_eq!(
            set.community_values(),
            Ok(vec![(65001 << 16) | 1, 0xFFFF_FF01])
        );
        let off = BgpConfiguration {
            graceful_restart: false,
            hold_time_seconds: Some(0),
            ..c
        };
        assert_eq!((off.restart_time(), off.keepalive_time()), (None, 0));
    }

    fn config_err(edit: impl FnOnce(&mut BgpConfiguration)) -> Invalid {
        let mut c = BgpConfiguration::default();
        edit(&mut c);
        c.validate().expect_err("refused")
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let cases: Vec<(Invalid, &str, &str)> = vec![
            (
                config_err(|c| c.as_number = Some(0)),
                "spec.asNumber",
                "0 is not an AS number",
            ),
            (
                config_err(|c| c.as_number = Some(23456)),
                "spec.asNumber",
                "AS_TRANS",
            ),
            (
                config_err(|c| c.listen_port = Some(0)),
                "spec.listenPort",
                "0 is not a port",
            ),
            (
                config_err(|c| c.hold_time_seconds = Some(1)),
                "spec.holdTimeSeconds",
                "at least 3",
            ),
            (
                config_err(|c| c.hold_time_seconds = Some(2)),
                "spec.holdTimeSeconds",
                "at least 3",
            ),
            (
                config_err(|c| c.keepalive_time_seconds = Some(90)),
                "spec.keepaliveTimeSeconds",
                "below the hold time 90",
            ),
            (
                config_err(|c| c.keepalive_time_seconds = Some(0)),
                "spec.keepaliveTimeSeconds",
                "at least 1",
            ),
            (
                config_err(|c| {
                    c.hold_time_seconds = Some(9);
                    c.keepalive_time_seconds = Some(10)
                }),
                "spec.keepaliveTimeSeconds",
                "below the hold time 9",
            ),
            (
                config_err(|c| {
                    c.hold_time_seconds = Some(0);
                    c.keepalive_time_seconds = Some(3)
                }),
                "spec.keepaliveTimeSeconds",
                "no KEEPALIVE is sent",
            ),
            (
                config_err(|c| c.connect_retry_seconds = Some(0)),
                "spec.connectRetrySeconds",
                "at least 1",
            ),
            (
                config_err(|c| c.restart_time_seconds = Some(4096)),
                "spec.restartTimeSeconds",
                "at most 4095",
            ),
            (
                config_err(|c| c.communities = vec!["1:1".into(), "1:70000".into()]),
                "spec.communities[1]",
                "70000 is above 65535",
            ),
        ];
        for (e, field, why) in cases {
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(why), "{field}: {e}");
        }
        // The edges that are fine.
        for ok in [
            BgpConfiguration {
                as_number: Some(1),
                hold_time_seconds: Some(0),
                keepalive_time_seconds: Some(0),
                restart_time_seconds: Some(4095),
                ..Default::default()
            },
            BgpConfiguration {
                as_number: Some(u32::MAX),
                hold_time_seconds: Some(3),
                keepalive_time_seconds: Some(1),
                listen_port: Some(65535),
                restart_time_seconds: Some(0),
                ..Default::default()
            },
        ] {
            assert_eq!(ok.validate(), Ok(()), "{ok:?}");
        }
        assert_eq!(check_config_name("default"), Ok(()));
        assert_eq!(check_config_name(""), Ok(()));
        let e = check_config_name("prod").unwrap_err();
        assert_eq!(e.field, "metadata.name");
        assert!(e.reason.contains("name: default"), "{e}");
    }

    fn router() -> BgpPeer {
        BgpPeer {
            peer_ip: Some("192.0.2.1".into()),
            as_number: Some(65000),
            ..Default::default()
        }
    }

    fn rr() -> BgpPeer {
        BgpPeer {
            node_selector: Some("!has(route-reflector)".into()),
            peer_selector: Some("has(route-reflector)".into()),
            ..Default::default()
        }
    }

    #[test]
    fn good_peers_and_their_accessors() {
        let p = router();
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(
            p.peer_address(),
            Ok(Some(("192.0.2.1".parse().unwrap(), None)))
        );
        assert!(p.is_global());
        let p = BgpPeer {
            peer_ip: Some("192.0.2.1:1179".into()),
            node: Some("n1".into()),
            password: Some(Password::Value("s3cr3t".into())),
            max_restart_time: Some("2m".into()),
            keep_original_next_hop: true,
            ..router()
        };
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(
            p.peer_address(),
            Ok(Some(("192.0.2.1".parse().unwrap(), Some(1179))))
        );
        assert_eq!(p.max_restart_seconds(), Ok(Some(120)));
        assert!(!p.is_global());
        let v6 = BgpPeer {
            peer_ip: Some("[2001:db8::1]:1179".into()),
            ..router()
        };
        assert_eq!(v6.peer_address().unwrap().unwrap().1, Some(1179));
        let p = rr();
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.peer_address(), Ok(None));
        assert_eq!(
            p.peer_selector(),
            Ok(Some(Selector::Has("route-reflector".into())))
        );
        assert_eq!(p.max_restart_seconds(), Ok(None));
        let file = BgpPeer {
            password: Some(Password::File("/etc/twill/bgp-password".into())),
            ..router()
        };
        assert_eq!(file.validate(), Ok(()));
        let key80 = BgpPeer {
            password: Some(Password::Value("k".repeat(80))),
            ..router()
        };
        assert_eq!(key80.validate(), Ok(()));
    }

    #[test]
    fn passwords_are_a_map_of_value_or_file() {
        let v = serde_json::to_value(Password::Value("k".into())).unwrap();
        assert_eq!(v, serde_json::json!({"value": "k"}));
        let f: Password = serde_json::from_value(serde_json::json!({"file": "/p"})).unwrap();
        assert_eq!(f, Password::File("/p".into()));
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"value": "k", "file": "/p"}),
        ] {
            let e = serde_json::from_value::<Password>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("exactly one of value"), "{e}");
        }
        let e = serde_json::from_value::<Password>(serde_json::json!({"secretKeyRef": {}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `secretKeyRef`"), "{e}");
    }

    #[test]
    fn peers_apply_to_the_nodes_they_name() {
        let rrl = labels(&[("route-reflector", "true")]);
        let none = labels(&[]);
        assert!(router().applies_to("n1", &none) && router().applies_to("n2", &rrl));
        let one = BgpPeer {
            node: Some("n1".into()),
            ..router()
        };
        assert!(one.applies_to("n1", &none) && !one.applies_to("n2", &none));
        assert!(rr().applies_to("n1", &none) && !rr().applies_to("n2", &rrl));
        // A rule that does not validate applies to nobody.
        let broken = BgpPeer {
            node_selector: Some("has(".into()),
            ..router()
        };
        assert!(!broken.applies_to("n1", &none));
        let both = BgpPeer {
            node: Some("n1".into()),
            node_selector: Some("all()".into()),
            ..router()
        };
        assert!(!both.applies_to("n1", &none));
    }

    #[test]
    fn bad_peers_name_the_field() {
        let cases: Vec<(BgpPeer, &str, &str)> = vec![
            (BgpPeer::default(), "spec.peerIP", "needs whom to peer with"),
            (
                BgpPeer {
                    peer_selector: Some("all()".into()),
                    ..router()
                },
                "spec.peerSelector",
                "exclude each other",
            ),
            (
                BgpPeer {
                    node: Some("n1".into()),
                    node_selector: Some("all()".into()),
                    ..router()
                },
                "spec.nodeSelector",
                "node and nodeSelector exclude each other",
            ),
            (
                BgpPeer {
                    as_number: None,
                    ..router()
                },
                "spec.asNumber",
                "required with peerIP",
            ),
            (
                BgpPeer {
                    as_number: Some(64512),
                    ..rr()
                },
                "spec.asNumber",
                "not allowed with peerSelector",
            ),
            (
                BgpPeer {
                    as_number: Some(0),
                    ..router()
                },
                "spec.asNumber",
                "0 is not an AS number",
            ),
            (
                BgpPeer {
                    as_number: Some(23456),
                    ..router()
                },
                "spec.asNumber",
                "AS_TRANS",
            ),
            (
                BgpPeer {
                    peer_ip: Some("192.0.2.300".into()),
                    ..router()
                },
                "spec.peerIP",
                "is not IP or IP:PORT",
            ),
            (
                BgpPeer {
                    peer_ip: Some("192.0.2.1:0".into()),
                    ..router()
                },
                "spec.peerIP",
                "port 0",
            ),
            (
                BgpPeer {
                    peer_ip: Some("router.example.com".into()),
                    ..router()
                },
                "spec.peerIP",
                "is not IP or IP:PORT",
            ),
            (
                BgpPeer {
                    password: Some(Password::Value("k".repeat(81))),
                    ..router()
                },
                "spec.password.value",
                "81 bytes",
            ),
            (
                BgpPeer {
                    password: Some(Password::Value(String::new())),
                    ..router()
                },
                "spec.password.value",
                "empty",
            ),
            (
                BgpPeer {
                    password: Some(Password::File("secrets/bgp".into())),
                    ..router()
                },
                "spec.password.file",
                "not an absolute path",
            ),
            (
                BgpPeer {
                    node_selector: Some("rack = 'r1'".into()),
                    ..router()
                },
                "spec.nodeSelector",
                "at column 6",
            ),
            (
                BgpPeer {
                    peer_selector: Some("has(rr".into()),
                    ..BgpPeer::default()
                },
                "spec.peerSelector",
                "at column 7",
            ),
            (
                BgpPeer {
                    max_restart_time: Some("120".into()),
                    ..router()
                },
                "spec.maxRestartTime",
                "has no unit",
            ),
            (
                BgpPeer {
                    max_restart_time: Some("2h".into()),
                    ..router()
                },
                "spec.maxRestartTime",
                "more than 4095 s",
            ),
            (
                BgpPeer {
                    node: Some("Node_1".into()),
                    ..router()
                },
                "spec.node",
                "not a valid name",
            ),
        ];
        for (p, field, why) in cases {
            let e = p.validate().expect_err(field);
            assert_eq!(e.field, field, "{p:?}: {e}");
            assert!(e.reason.contains(why), "{field}: {e}");
        }
    }

    #[test]
    fn node_bgp_settings_are_checked() {
        assert_eq!(NodeBgp::default().validate(), Ok(()));
        let ok = NodeBgp {
            as_number: Some(65010),
            route_reflector_cluster_id: Some("244.0.0.1".parse().unwrap()),
            router_id: Some("192.0.2.11".parse().unwrap()),
        };
        assert_eq!(ok.validate(), Ok(()));
        for (n, field) in [
            (
                NodeBgp {
                    as_number: Some(0),
                    ..Default::default()
                },
                "spec.bgp.asNumber",
            ),
            (
                NodeBgp {
                    router_id: Some(Ipv4Addr::UNSPECIFIED),
                    ..Default::default()
                },
                "spec.bgp.routerID",
            ),
            (
                NodeBgp {
                    route_reflector_cluster_id: Some(Ipv4Addr::UNSPECIFIED),
                    ..Default::default()
                },
                "spec.bgp.routeReflectorClusterID",
            ),
        ] {
            assert_eq!(n.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn names_and_labels_follow_kubernetes() {
        for ok in ["a", "rack1-tor", "peer.192-0-2-1", &"a".repeat(63)] {
            assert_eq!(check_dns_name("metadata.name", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a_b",
            "-a",
            "a-",
            "a..b",
            "a/b",
            &"a".repeat(64),
            &format!("{}.a", "a.".repeat(126)),
        ] {
            let e = check_dns_name("metadata.name", bad).unwrap_err();
            assert!(e.reason.contains("is not a valid name"), "{bad}: {e}");
        }
        let good = labels(&[
            ("route-reflector", "true"),
            ("example.com/rack", "r1"),
            ("empty", ""),
            ("a.b_c-d", "X_y.z-1"),
        ]);
        assert_eq!(check_labels("metadata.labels", &good), Ok(()));
        for (k, v, why) in [
            ("", "x", "not a label key"),
            ("-a", "x", "not a label key"),
            ("a b", "x", "not a label key"),
            ("Ex.com/a", "x", "prefix"),
            ("a", "-x", "not a label value"),
            ("a", &"v".repeat(64), "not a label value"),
            ("a", "x y", "not a label value"),
        ] {
            let e = check_labels("metadata.labels", &labels(&[(k, v)])).unwrap_err();
            assert_eq!(e.field, format!("metadata.labels.{k}"));
            assert!(e.reason.contains(why), "{k}={v}: {e}");
        }
    }
}
