//! The speaker's configuration file (`twill bgp serve --config FILE`), YAML or JSON.
//!
//! Parsing and checking are pure ([`Config::parse`]); [`Config::load`] reads the file and
//! the `passwordFile`s it names. Every field is camelCase, unknown fields are refused by
//! name, and every error says what to change.
//!
//! ```yaml
//! routerId: 192.0.2.2
//! as: 65002
//! listen: { address: 0.0.0.0, port: 179 }     # the defaults
//! controlSocket: /run/twill/bgp.sock         # the default
//! gracefulRestart: { restartTime: 120 }      # absent: no graceful restart
//! kernel: { install: true, table: 254 }      # the defaults; install: false keeps out
//! maxPaths: 4                                # ECMP: up to 4 equal paths (default 1)
//! nextHopNetworks: [192.0.2.0/24]            # next hops resolvable: on-link (default all)
//! originate: [10.244.2.0/24]
//! peers:
//!   - address: 192.0.2.1                     # or 192.0.2.1:1790, [2001:db8::1]:179
//!     as: 65001
//!     password: s3cr3t                       # or passwordFile: /etc/twill/peer.key
//!     passive: false
//!     holdTime: 9                            # seconds; keepalive defaults to a third
//!     connectRetry: 2
//!     routeReflectorClient: false
//!     nextHopSelf: false
//!     keepOriginalNextHop: false             # eBGP: learned routes keep their next hop
//!     exportOriginatedOnly: false            # send only our own prefixes
//!     maxRestartTime: 60                     # GR helper: its stale routes 60 s at most
//!     import: accept                         # accept | reject | a list of terms
//!     export:
//!       - prefixes: ["10.244.0.0/16 ge 24 le 32"]
//!         communities: ["65000:1"]           # any of them
//!         addCommunities: ["65002:7"]
//!         action: accept                     # the default
//! ```
//! RFC 8212: an eBGP peer without `import` takes nothing, without `export` sends nothing;
//! an iBGP peer without them takes and sends everything.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// RFC 4271: BGP's well-known port.
pub const BGP_PORT: u16 = 179;
/// Where `twill bgp serve` listens for `twill bgp neighbors` and `twill bgp rib`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/twill/bgp.sock";

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Our AS number (four octets allowed).
    #[serde(rename = "as")]
    pub asn: u32,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Absent: no graceful restart (no capability, no helper role).
    #[serde(default)]
    pub graceful_restart: Option<GracefulRestart>,
    #[serde(default)]
    pub kernel: Kernel,
    /// The most equal paths one prefix is installed with (ECMP); 1: best path only.
    #[serde(default = "one")]
    pub max_paths: usize,
    /// RFC 4456 CLUSTER_ID when reflecting; default the router ID.
    #[serde(default)]
    pub cluster_id: Option<Ipv4Addr>,
    /// The networks this speaker reaches directly (its links' subnets). A learned route
    /// whose next hop is in none of them is unresolvable (RFC 4271 §9.1.2.1): it is kept but
    /// never chosen, so another path (a router's on this link) is. A family with no network
    /// listed resolves every next hop (the default: nothing listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_hop_networks: Vec<IpNet>,
    /// Prefixes this speaker announces itself.
    #[serde(default)]
    pub originate: Vec<IpNet>,
    #[serde(default)]
    pub peers: Vec<Peer>,
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listen {
    /// The address to listen on; 0.0.0.0 (the default) listens on every IPv4 address, ::
    /// on every address. A specific address is also the source of our connects.
    #[serde(default = "unspecified")]
    pub address: IpAddr,
    #[serde(default = "bgp_port")]
    pub port: u16,
    /// Do not listen at all (every peer is then connected to, none may be passive).
    #[serde(default)]
    pub disabled: bool,
}

fn unspecified() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn bgp_port() -> u16 {
    BGP_PORT
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: unspecified(),
            port: BGP_PORT,
            disabled: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GracefulRestart {
    /// RFC 4724 §3 Restart Time we advertise: how long peers keep our routes after we go
    /// away (at most 4095 s). Also how long, after a restart, our adopted kernel routes wait
    /// for the peers' End-of-RIB before what was not re-learned is removed.
    #[serde(default = "default_restart_time")]
    pub restart_time: u16,
}

fn default_restart_time() -> u16 {
    120
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kernel {
    /// Put the best routes into the kernel (protocol 186, RTPROT_BGP: `ip route show proto
    /// bgp`).
    #[serde(default = "yes")]
    pub install: bool,
    /// The routing table (254: main).
    #[serde(default = "main_table")]
    pub table: u32,
}

fn main_table() -> u32 {
    254
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            install: true,
            table: main_table(),
        }
    }
}

/// One neighbour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Peer {
    /// `IP` or `IP:PORT` (`[IPv6]:PORT`); the port defaults to the listen port.
    pub address: PeerAddress,
    #[serde(rename = "as")]
    pub asn: u32,
    /// The RFC 2385 TCP MD5 key (at most 80 bytes).
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the key (trailing newline ignored), instead of `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Never connect: wait for the peer.
    #[serde(default)]
    pub passive: bool,
    /// The hold time we offer, seconds: 0 or at least 3 (default 90).
    #[serde(default)]
    pub hold_time: Option<u16>,
    /// Seconds between KEEPALIVEs (default a third of the negotiated hold time).
    #[serde(default)]
    pub keepalive: Option<u16>,
    /// Seconds between connect attempts (default 5).
    #[serde(default)]
    pub connect_retry: Option<u32>,
    /// The source address of our connects to this peer (default: the listen address if it
    /// is specific, else the kernel's choice).
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    /// RFC 4456: this iBGP peer is our route-reflection client.
    #[serde(default)]
    pub route_reflector_client: bool,
    /// Routes sent to this peer carry our session address as next hop.
    #[serde(default)]
    pub next_hop_self: bool,
    /// eBGP: routes learned from others keep their next hop when sent to this peer instead
    /// of getting our session address (Calico's `keepOriginalNextHop`; a third-party next
    /// hop, RFC 4271 §5.1.3). Our own prefixes always carry our address.
    #[serde(default)]
    pub keep_original_next_hop: bool,
    /// Send this peer only the prefixes this speaker originates, none it learned (Calico's
    /// nodes towards a router outside the cluster: their own blocks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub export_originated_only: bool,
    /// Graceful restart helper: keep this peer's stale routes at most this many seconds,
    /// whatever restart time it advertises (Calico's `maxRestartTime`).
    #[serde(default)]
    pub max_restart_time: Option<u16>,
    /// Free text for whoever configured the peer (twilld: the peer's type and node); shown
    /// in `neighbors`, never sent. Changing it does not reset the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default)]
    pub import: Option<PolicyConfig>,
    #[serde(default)]
    pub export: Option<PolicyConfig>,
}

/// A peer's address and optional port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl PeerAddress {
    pub fn socket_addr(&self, default_port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(default_port))
    }
}

impl FromStr for PeerAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerAddress { ip, port: None });
        }
        s.parse::<SocketAddr>()
            .map(|a| PeerAddress {
                ip: a.ip(),
                port: Some(a.port()),
            })
            .map_err(|_| {
                format!("peer address {s:?} is neither IP nor IP:PORT (write 192.0.2.1, 192.0.2.1:1790 or [2001:db8::1]:179)")
            })
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            None => write!(f, "{}", self.ip),
            Some(p) => write!(f, "{}", SocketAddr::new(self.ip, p)),
        }
    }
}

impl Serialize for PeerAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An import or export policy: `accept`, `reject`, or terms (the first that matches decides;
/// a route no term matches is rejected).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyConfig {
    Accept,
    Reject,
    Terms(Vec<TermConfig>),
}

impl Serialize for PolicyConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PolicyConfig::Accept => s.serialize_str("accept"),
            PolicyConfig::Reject => s.serialize_str("reject"),
            PolicyConfig::Terms(t) => t.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PolicyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PolicyConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`accept`, `reject` or a list of policy terms")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PolicyConfig, E> {
                match v {
                    "accept" => Ok(PolicyConfig::Accept),
                    "reject" => Ok(PolicyConfig::Reject),
                    other => Err(E::custom(format!(
                        "policy {other:?}: write `accept`, `reject` or a list of terms"
                    ))),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<PolicyConfig, A::Error> {
                Vec::<TermConfig>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(PolicyConfig::Terms)
            }
        }
        d.deserialize_any(V)
    }
}

/// One policy term: every match given must hold (none given: always), then the actions
/// apply and the action decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TermConfig {
    /// The prefix is inside one of these: `PREFIX`, `PREFIX ge N`, `PREFIX le N`,
    /// `PREFIX ge N le M` (prefix-list semantics).
    #[serde(default)]
    pub prefixes: Vec<PrefixEntry>,
    /// The route carries one of these communities (`AS:VALUE`, `no-export`, `no-advertise`).
    #[serde(default)]
    pub communities: Vec<CommunityValue>,
    /// The route carries one of these large communities (`GLOBAL:LOCAL1:LOCAL2`).
    #[serde(default)]
    pub large_communities: Vec<LargeCommunityValue>,
    #[serde(default)]
    pub action: Verdict,
    #[serde(default)]
    pub add_communities: Vec<CommunityValue>,
    #[serde(default)]
    pub remove_communities: Vec<CommunityValue>,
    #[serde(default)]
    pub add_large_communities: Vec<LargeCommunityValue>,
    #[serde(default)]
    pub set_local_pref: Option<u32>,
    #[serde(default)]
    pub set_med: Option<u32>,
    /// Export: our session address becomes the next hop.
    #[serde(default)]
    pub next_hop_self: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    #[default]
    Accept,
    Reject,
}

/// `10.244.0.0/16 ge 24 le 32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixEntry {
    pub prefix: IpNet,
    pub ge: Option<u8>,
    pub le: Option<u8>,
}

impl FromStr for PrefixEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("prefix entry {s:?}: write PREFIX, PREFIX ge N, PREFIX le N or PREFIX ge N le M (e.g. \"10.244.0.0/16 ge 24\")")
        };
        let mut words = s.split_whitespace();
        let prefix: IpNet = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let (mut ge, mut le) = (None, None);
        while let Some(w) = words.next() {
            let n: u8 = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            match w {
                "ge" if ge.is_none() => ge = Some(n),
                "le" if le.is_none() => le = Some(n),
                _ => return Err(bad()),
            }
        }
        let (len, max) = (prefix.prefix_len(), prefix.max_prefix_len());
        let lo = ge.unwrap_or(len);
        let hi = le.unwrap_or(if ge.is_some() { max } else { len });
        if !(len <= lo && lo <= hi && hi <= max) {
            return Err(format!(
                "prefix entry {s:?}: want {len} <= ge <= le <= {max}; fix the bounds"
            ));
        }
        Ok(PrefixEntry { prefix, ge, le })
    }
}

impl fmt::Display for PrefixEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.prefix)?;
        if let Some(ge) = self.ge {
            write!(f, " ge {ge}")?;
        }
        if let Some(le) = self.le {
            write!(f, " le {le}")?;
        }
        Ok(())
    }
}

/// A standard community as text: `AS:VALUE` (each 0..=65535), `no-export`, `no-advertise`,
/// `no-export-subconfed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommunityValue(pub u32);

impl FromStr for CommunityValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no-export" => return Ok(CommunityValue(0xFFFF_FF01)),
            "no-advertise" => return Ok(CommunityValue(0xFFFF_FF02)),
            "no-export-subconfed" => return Ok(CommunityValue(0xFFFF_FF03)),
            _ => {}
        }
        let bad = || {
            format!("community {s:?}: write AS:VALUE with both 0..65535 (e.g. 65000:100) or no-export / no-advertise")
        };
        let (a, v) = s.split_once(':').ok_or_else(bad)?;
        let a: u16 = a.parse().map_err(|_| bad())?;
        let v: u16 = v.parse().map_err(|_| bad())?;
        Ok(CommunityValue((u32::from(a) << 16) | u32::from(v)))
    }
}

impl fmt::Display for CommunityValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xffff)
    }
}

/// A large community as text: `GLOBAL:LOCAL1:LOCAL2`, each a u32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargeCommunityValue(pub u32, pub u32, pub u32);

impl FromStr for LargeCommunityValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "large community {s:?}: write GLOBAL:LOCAL1:LOCAL2, three numbers (e.g. 65000:1:2)"
            )
        };
        let parts: Vec<u32> = s
            .split(':')
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [g, l1, l2] => Ok(LargeCommunityValue(g, l1, l2)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for LargeCommunityValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.0, self.1, self.2)
    }
}

macro_rules! text_serde {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
text_serde!(PrefixEntry, CommunityValue, LargeCommunityValue);

/// A configuration that cannot be used, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The file format, from the file name (`.json`) or else YAML (which also reads JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

impl Config {
    /// Reads and checks the file at `path`, and the password files it names (their keys
    /// end up in `password`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Config::parse(&text, Format::of(path), path)?;
        read_password_files(&mut cfg.peers).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// Parses and checks `text`; `path` only names the file in errors. Pure.
    pub fn parse(text: &str, format: Format, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
            Format::Yaml => serde_yaml_ng::from_str(text).map_err(|e| e.to_string()),
        }
        .map_err(|message| ConfigError::Syntax {
            path: path.to_owned(),
            message,
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// The checks beyond the syntax (what [`Config::parse`] runs; for a configuration built
    /// in code, e.g. by twilld for the embedded speaker). The error says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.asn == 0 {
            return Err("as: 0 is reserved (RFC 7607); set this speaker's AS number".into());
        }
        if self.router_id.is_unspecified() {
            return Err("routerId: 0.0.0.0 is not a BGP identifier; set a non-zero IPv4 address, usually the node's".into());
        }
        if self.max_paths == 0 {
            return Err(
                "maxPaths: 0 would install nothing; use 1 (best path only) or more for ECMP".into(),
            );
        }
        if let Some(gr) = &self.graceful_restart {
            if gr.restart_time > 4095 {
                return Err(format!(
                    "gracefulRestart.restartTime: {} does not fit the capability's 12 bits; use at most 4095",
                    gr.restart_time
                ));
            }
        }
        for p in &self.originate {
            if p.trunc() != *p {
                return Err(format!(
                    "originate: {p} has host bits set; write {} instead",
                    p.trunc()
                ));
            }
        }
        let mut seen = HashSet::new();
        for peer in &self.peers {
            let who = &peer.address;
            if !seen.insert(peer.address.ip) {
                return Err(format!(
                    "peers: {} appears twice; give each neighbour one entry",
                    peer.address.ip
                ));
            }
            if peer.asn == 0 {
                return Err(format!(
                    "peer {who}: as 0 is reserved; set the peer's AS number"
                ));
            }
            if peer.address.ip.is_unspecified() {
                return Err(format!(
                    "peer {who}: not a neighbour address; give the peer's address"
                ));
            }
            if peer.password.is_some() && peer.password_file.is_some() {
                return Err(format!(
                    "peer {who}: both password and passwordFile given; keep one"
                ));
            }
            if let Some(key) = &peer.password {
                check_key(who, key)?;
            }
            if let Some(h) = peer.hold_time {
                if h == 1 || h == 2 {
                    return Err(format!(
                        "peer {who}: holdTime {h}: must be 0 or at least 3 seconds (RFC 4271 §4.2)"
                    ));
                }
            }
            if let (Some(k), Some(h)) = (peer.keepalive, peer.hold_time) {
                if h != 0 && k > h / 3 {
                    return Err(format!(
                        "peer {who}: keepalive {k} is more than a third of holdTime {h}; use at most {}",
                        h / 3
                    ));
                }
            }
            if peer.connect_retry == Some(0) {
                return Err(format!(
                    "peer {who}: connectRetry 0; give a positive number of seconds"
                ));
            }
            if peer.passive && self.listen.disabled {
                return Err(format!(
                    "peer {who}: passive, but listen.disabled is set: nobody would connect; drop one"
                ));
            }
            if peer.route_reflector_client && peer.asn != self.asn {
                return Err(format!(
                    "peer {who}: routeReflectorClient on an eBGP peer (AS {} is not ours, {}); reflection is for iBGP peers only",
                    peer.asn, self.asn
                ));
            }
        }
        Ok(())
    }

    /// The port we connect to for `peer`: its own, else the listen port.
    pub fn peer_socket(&self, peer: &Peer) -> SocketAddr {
        peer.address.socket_addr(self.listen.port)
    }

    /// The source address for connects to `peer`.
    pub fn local_address(&self, peer: &Peer) -> Option<IpAddr> {
        peer.local_address.or_else(|| {
            (!self.listen.address.is_unspecified()
                && self.listen.address.is_ipv4() == peer.address.ip.is_ipv4())
            .then_some(self.listen.address)
        })
    }
}

impl Peer {
    /// Seconds between connects.
    pub fn connect_retry(&self) -> Duration {
        Duration::from_secs(u64::from(self.connect_retry.unwrap_or(5)))
    }
}

/// Reads each peer's `passwordFile` into its `password` (trailing newline dropped).
pub fn read_password_files(peers: &mut [Peer]) -> Result<(), String> {
    for peer in peers {
        if let Some(file) = &peer.password_file {
            let key = std::fs::read_to_string(file).map_err(|e| {
                format!(
                    "peer {}: cannot read passwordFile {}: {e} (fix the path or its permissions)",
                    peer.address,
                    file.display()
                )
            })?;
            let key = key.trim_end_matches(['\n', '\r']).to_owned();
            check_key(&peer.address, &key)?;
            peer.password = Some(key);
        }
    }
    Ok(())
}

fn check_key(who: &PeerAddress, key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!(
            "peer {who}: empty password; remove it for no TCP MD5, or give the key"
        ));
    }
    if key.len() > crate::speaker::tcp::MD5_MAX_KEY_LEN {
        return Err(format!(
            "peer {who}: password of {} bytes; TCP MD5 keys are at most {} bytes",
            key.len(),
            crate::speaker::tcp::MD5_MAX_KEY_LEN
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Format::Yaml, Path::new("bgp.yaml")).map_err(|e| e.to_string())
    }

    const FULL: &str = r#"
routerId: 192.0.2.2
as: 65002
listen: { address: 192.0.2.2, port: 1790 }
controlSocket: /tmp/twlbgp.sock
gracefulRestart: { restartTime: 90 }
kernel: { install: false, table: 100 }
maxPaths: 4
originate: [10.244.2.0/24]
peers:
  - address: 192.0.2.1
    as: 65001
    password: s3cr3t
    holdTime: 9
    keepalive: 3
    connectRetry: 2
    keepOriginalNextHop: true
    maxRestartTime: 60
    tag: global
    import: accept
    export:
      - prefixes: ["10.244.0.0/16 ge 24 le 32"]
        communities: ["65000:1", no-export]
        addCommunities: ["65002:7"]
        largeCommunities: ["65000:1:2"]
        setMed: 10
      - action: reject
  - address: "[2001:db8::1]:179"
    as: 65002
    passive: true
    routeReflectorClient: true
    nextHopSelf: true
"#;

    #[test]
    fn full_file_parses() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.asn, 65002);
        assert_eq!(c.listen.port, 1790);
        assert_eq!(c.graceful_restart.as_ref().unwrap().restart_time, 90);
        assert!(!c.kernel.install);
        assert_eq!(c.peers.len(), 2);
        let p = &c.peers[0];
        assert_eq!(p.password.as_deref(), Some("s3cr3t"));
        assert!(p.keep_original_next_hop);
        assert_eq!(p.max_restart_time, Some(60));
        assert_eq!(p.tag.as_deref(), Some("global"));
        assert!(!c.peers[1].keep_original_next_hop && c.peers[1].max_restart_time.is_none());
        assert_eq!(p.import, Some(PolicyConfig::Accept));
        let Some(PolicyConfig::Terms(terms)) = &p.export else {
            panic!("{:?}", p.export)
        };
        assert_eq!(terms.len(), 2);
        assert_eq!(
            terms[0].prefixes[0].to_string(),
            "10.244.0.0/16 ge 24 le 32"
        );
        assert_eq!(terms[0].communities[1], CommunityValue(0xFFFF_FF01));
        assert_eq!(terms[1].action, Verdict::Reject);
        assert_eq!(c.peer_socket(p), "192.0.2.1:1790".parse().unwrap());
        assert_eq!(c.local_address(p), Some("192.0.2.2".parse().unwrap()));
        let q = &c.peers[1];
        assert_eq!(c.peer_socket(q), "[2001:db8::1]:179".parse().unwrap());
        assert_eq!(c.local_address(q), None, "no IPv4 source for an IPv6 peer");
        // JSON too, and what serialises parses back the same.
        let json = serde_json::to_string(&c).unwrap();
        let back = Config::parse(&json, Format::Json, Path::new("bgp.json")).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn defaults() {
        let c = parse("routerId: 192.0.2.2\nas: 65002\n").unwrap();
        assert_eq!(c.listen, Listen::default());
        assert_eq!(c.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert!(c.graceful_restart.is_none());
        assert_eq!(c.kernel, Kernel::default());
        assert_eq!(c.max_paths, 1);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        for (text, field) in [
            ("routerId: 192.0.2.2\nas: 1\nrouterID: 1.1.1.1\n", "routerID"),
            (
                "routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, pasword: x}]\n",
                "pasword",
            ),
            (
                "routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, export: [{prefix: [10.0.0.0/8]}]}]\n",
                "prefix",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(&format!("unknown field `{field}`")), "{e}");
            assert!(e.starts_with("bgp.yaml: "), "{e}");
        }
    }

    #[test]
    fn bad_values_say_the_cause_and_the_fix() {
        for (text, want) in [
            ("routerId: 0.0.0.0\nas: 1\n", "routerId: 0.0.0.0"),
            ("routerId: 192.0.2.2\nas: 0\n", "as: 0 is reserved"),
            ("routerId: 192.0.2.2\nas: 1\noriginate: [10.244.2.1/24]\n", "write 10.244.2.0/24"),
            ("routerId: 192.0.2.2\nas: 1\ngracefulRestart: {restartTime: 5000}\n", "at most 4095"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1:x, as: 2}]\n", "neither IP nor IP:PORT"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2}, {address: 192.0.2.1, as: 3}]\n", "appears twice"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, password: a, passwordFile: /x}]\n", "keep one"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, holdTime: 2}]\n", "at least 3 seconds"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, holdTime: 9, keepalive: 5}]\n", "at most 3"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, import: maybe}]\n", "write `accept`, `reject`"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, import: [{prefixes: [\"10.0.0.0/8 ge 4\"]}]}]\n", "fix the bounds"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, import: [{communities: [\"70000:1\"]}]}]\n", "AS:VALUE"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, routeReflectorClient: true}]\n", "iBGP peers only"),
            ("routerId: 192.0.2.2\nas: 1\npeers: [{address: 192.0.2.1, as: 2, password: \"\"}]\n", "empty password"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let long = format!(
            "routerId: 192.0.2.2\nas: 1\npeers: [{{address: 192.0.2.1, as: 2, password: {}}}]\n",
            "k".repeat(81)
        );
        assert!(parse(&long).unwrap_err().contains("at most 80 bytes"));
    }
}
