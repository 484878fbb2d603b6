//! The backend seam's vocabulary: how packets cross nodes, as the network config's
//! `backend` names it. A kind is a type: [`BackendKind`] is the bare choice (for command
//! lines, labs, matrices), [`BackendSpec`] the choice with the options that belong to it.
//! Nothing matches on backend names outside this file.
//!
//! On the wire (the store's `config`, `twill apply` files) a backend is written exactly as
//! before the types existed: a bare name (`"vxlan"`) when it has no options, else an
//! object `{type, vni, port, directRouting}` (`{type: rip, updateSeconds, timeoutSeconds,
//! garbageSeconds}` for RIP, `{type: udp, port}` for udp). Reading refuses, naming the field:
//! - an unknown name (`spec.backend: "gre" is not a backend: use one of …`);
//! - an unknown field (`unknown field `colour`, expected one of …`);
//! - an option the kind does not take (`spec.backend.vni: vni is not an option of
//!   host-gw …`), so a config never carries settings that silently do nothing.

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// flannel's default VNI.
pub const DEFAULT_VNI: u32 = 1;
/// flannel's and the kernel's VXLAN port (not IANA's 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// flannel's udp backend port (`defaultPort` in flannel's `pkg/backend/udp`).
pub const DEFAULT_UDP_PORT: u16 = 8285;

/// Which backend, without its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum BackendKind {
    /// Nothing across nodes: a single node, or routing done by someone else.
    #[default]
    None,
    /// flannel's host-gw: a route per remote block via the remote node (one segment).
    HostGw,
    /// flannel's vxlan: one VXLAN device, a route, neighbour and FDB entry per peer.
    Vxlan,
    /// The VXLAN mesh of a hand-written static store file.
    Static,
    /// RIPv2 (RFC 2453) on the uplink segment: this node's blocks announced, the routes
    /// heard installed (the walk-through's "Quagga on every node", or an outside router).
    Rip,
    /// Calico's: an embedded BGP speaker, a node-to-node mesh, route reflectors and
    /// routers outside the cluster; every setting from the BGPConfiguration, BGPPeer and
    /// Node resources, none in the network config.
    Bgp,
    /// flannel's udp: a TUN device (`twl.tun`) and a userspace datapath that carries each
    /// pod packet, bare, in a UDP datagram to the node holding its destination.
    Udp,
    /// The Open vSwitch walk-through's mesh, kept by the agent: an OVS integration bridge
    /// (`twl-int`), one flow-based GRE or VXLAN port and per-peer flows.
    Ovs,
}

impl BackendKind {
    pub const ALL: [BackendKind; 8] = [
        BackendKind::None,
        BackendKind::HostGw,
        BackendKind::Vxlan,
        BackendKind::Static,
        BackendKind::Rip,
        BackendKind::Bgp,
        BackendKind::Udp,
        BackendKind::Ovs,
    ];

    /// The name used in configs and on command lines.
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::None => "none",
            BackendKind::HostGw => "host-gw",
            BackendKind::Vxlan => "vxlan",
            BackendKind::Static => "static",
            BackendKind::Rip => "rip",
            BackendKind::Bgp => "bgp",
            BackendKind::Udp => "udp",
            BackendKind::Ovs => "ovs",
        }
    }

    /// The option fields (as written in a config) this kind takes.
    pub const fn options(self) -> &'static [&'static str] {
        match self {
            BackendKind::None | BackendKind::HostGw | BackendKind::Bgp => &[],
            BackendKind::Vxlan | BackendKind::Static => VXLAN_FIELDS,
            BackendKind::Rip => RIP_FIELDS,
            BackendKind::Udp => UDP_FIELDS,
            BackendKind::Ovs => OVS_FIELDS,
        }
    }

    /// The spec of this kind with every option at its default.
    pub const fn spec(self) -> BackendSpec {
        match self {
            BackendKind::None => BackendSpec::None,
            BackendKind::HostGw => BackendSpec::HostGw,
            BackendKind::Vxlan => BackendSpec::Vxlan(VxlanOptions::DEFAULT),
            BackendKind::Static => BackendSpec::Static(VxlanOptions::DEFAULT),
            BackendKind::Rip => BackendSpec::Rip(RipOptions::DEFAULT),
            BackendKind::Bgp => BackendSpec::Bgp,
            BackendKind::Udp => BackendSpec::Udp(UdpOptions::DEFAULT),
            BackendKind::Ovs => BackendSpec::Ovs(OvsOptions::DEFAULT),
        }
    }

    /// Packets go between nodes (so the node forwards and probes its peers).
    pub const fn crosses_nodes(self) -> bool {
        !matches!(self, BackendKind::None)
    }

    /// The backend reads the cluster's BGP resources (`bgpconfig`, `bgppeers/`, every
    /// node's `nodeconfigs/`), so the agent lists and watches them.
    pub const fn uses_bgp_resources(self) -> bool {
        matches!(self, BackendKind::Bgp)
    }

    /// The backend keeps sessions with the other nodes (bgp): it hears of a node joining
    /// or leaving as soon as the agent's watch does, between passes, rather than at the
    /// agent's next round.
    pub const fn takes_peers_between_passes(self) -> bool {
        matches!(self, BackendKind::Bgp)
    }

    fn list() -> String {
        BackendKind::ALL.map(|k| k.name()).join(", ")
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is none of [`BackendKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a backend: use one of {names}", names = BackendKind::list())]
pub struct UnknownBackend(pub String);

impl FromStr for BackendKind {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

impl Serialize for BackendKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for BackendKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BackendKind, D::Error> {
        struct KindVisitor;
        impl Visitor<'_> for KindVisitor {
            type Value = BackendKind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a backend name ({})", BackendKind::list())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendKind, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(KindVisitor)
    }
}

/// The options of the VXLAN backends (`vxlan`, `static`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VxlanOptions {
    /// VXLAN network identifier ([`DEFAULT_VNI`] when unset, like flannel).
    pub vni: Option<u32>,
    /// VXLAN UDP port ([`DEFAULT_VXLAN_PORT`] when unset, like flannel and the kernel).
    pub port: Option<u16>,
    /// Calico's CrossSubnet, flannel's DirectRouting: direct routes to peers on the same
    /// segment, the tunnel only across segments.
    pub direct_routing: bool,
}

const VXLAN_FIELDS: &[&str] = &["vni", "port", "directRouting"];
const RIP_FIELDS: &[&str] = &["updateSeconds", "timeoutSeconds", "garbageSeconds"];
const UDP_FIELDS: &[&str] = &["port", "partialChecksums"];
const OVS_FIELDS: &[&str] = &["tunnelType"];
const ALL_FIELDS: &[&str] = &[
    "type",
    "tunnelType",
    "vni",
    "port",
    "directRouting",
    "updateSeconds",
    "timeoutSeconds",
    "garbageSeconds",
    "partialChecksums",
];

impl VxlanOptions {
    pub const DEFAULT: VxlanOptions = VxlanOptions {
        vni: None,
        port: None,
        direct_routing: false,
    };

    pub fn vni(&self) -> u32 {
        self.vni.unwrap_or(DEFAULT_VNI)
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_VXLAN_PORT)
    }

    pub fn is_default(&self) -> bool {
        *self == VxlanOptions::DEFAULT
    }

    /// The option fields out of range, as (field, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(vni) = self.vni {
            if vni == 0 || vni > MAX_VNI {
                return Err(("vni", format!("{vni} is out of range 1..={MAX_VNI}")));
            }
        }
        if self.port == Some(0) {
            return Err((
                "port",
                format!("0 is not a port: leave it out for {DEFAULT_VXLAN_PORT}"),
            ));
        }
        Ok(())
    }
}

/// The options of the `udp` backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UdpOptions {
    /// The UDP port every node's datapath listens on and sends to ([`DEFAULT_UDP_PORT`]
    /// when unset, like flannel).
    pub port: Option<u16>,
    /// Send the inner TCP/UDP checksums partial (the pseudo-header sum, as the TUN hands
    /// packets out) instead of whole: no pass over each payload on either side. Every Twill
    /// datapath takes them; flannel's does not, so this is for clusters whose every node
    /// runs Twill's udp backend (a flannel node in the mesh would drop what it gets).
    pub partial_checksums: bool,
}

impl UdpOptions {
    pub const DEFAULT: UdpOptions = UdpOptions {
        port: None,
        partial_checksums: false,
    };

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_UDP_PORT)
    }

    pub fn is_default(&self) -> bool {
        *self == UdpOptions::DEFAULT
    }

    /// The option fields out of range, as (field, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.port == Some(0) {
            return Err((
                "port",
                format!("0 is not a port: leave it out for {DEFAULT_UDP_PORT}"),
            ));
        }
        Ok(())
    }
}

/// The tunnel an `ovs` backend's integration bridge uses between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum TunnelType {
    /// GREv0 carrying Ethernet (transparent Ethernet bridging), the walk-through's.
    #[default]
    Gre,
    /// VXLAN on OVS's port, IANA's 4789.
    Vxlan,
}

/// OVS's VXLAN port (IANA's; the kernel backend's is [`DEFAULT_VXLAN_PORT`]).
pub const OVS_VXLAN_PORT: u16 = 4789;

impl TunnelType {
    pub const ALL: [TunnelType; 2] = [TunnelType::Gre, TunnelType::Vxlan];

    /// The name in configs, on command lines, and OVS's interface type.
    pub const fn name(self) -> &'static str {
        match self {
            TunnelType::Gre => "gre",
            TunnelType::Vxlan => "vxlan",
        }
    }

    /// Bytes added to every pod packet: outer IPv4 (20) + GRE (4) or UDP + VXLAN (16),
    /// + the inner Ethernet header (14) both carry.
    pub const fn overhead(self) -> u32 {
        match self {
            TunnelType::Gre => 38,
            TunnelType::Vxlan => 50,
        }
    }
}

impl fmt::Display for TunnelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not a [`TunnelType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a tunnel type: use gre or vxlan")]
pub struct UnknownTunnelType(pub String);

impl FromStr for TunnelType {
    type Err = UnknownTunnelType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TunnelType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTunnelType(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for TunnelType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TunnelType, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// The options of the `ovs` backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OvsOptions {
    pub tunnel_type: TunnelType,
}

impl OvsOptions {
    pub const DEFAULT: OvsOptions = OvsOptions {
        tunnel_type: TunnelType::Gre,
    };

    pub fn is_default(&self) -> bool {
        *self == OvsOptions::DEFAULT
    }
}

/// The options of the `rip` backend: RFC 2453's three timers (FRR's `timers basic UPDATE
/// TIMEOUT GARBAGE`), in whole seconds; unset means the RFC's 30, 180 and 120.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RipOptions {
    /// The periodic update interval.
    pub update_seconds: Option<u32>,
    /// A route not refreshed for this long is unreachable.
    pub timeout_seconds: Option<u32>,
    /// An unreachable route is advertised at metric 16 this long, then deleted.
    pub garbage_seconds: Option<u32>,
}

/// RFC 2453 §3.8's timers.
pub const DEFAULT_RIP_UPDATE_SECONDS: u32 = 30;
pub const DEFAULT_RIP_TIMEOUT_SECONDS: u32 = 180;
pub const DEFAULT_RIP_GARBAGE_SECONDS: u32 = 120;
/// The largest RIP timer taken (a day): anything longer is a typo.
pub const MAX_RIP_SECONDS: u32 = 86_400;

impl RipOptions {
    pub const DEFAULT: RipOptions = RipOptions {
        update_seconds: None,
        timeout_seconds: None,
        garbage_seconds: None,
    };

    pub fn update_seconds(&self) -> u32 {
        self.update_seconds.unwrap_or(DEFAULT_RIP_UPDATE_SECONDS)
    }

    pub fn timeout_seconds(&self) -> u32 {
        self.timeout_seconds.unwrap_or(DEFAULT_RIP_TIMEOUT_SECONDS)
    }

    pub fn garbage_seconds(&self) -> u32 {
        self.garbage_seconds.unwrap_or(DEFAULT_RIP_GARBAGE_SECONDS)
    }

    pub fn is_default(&self) -> bool {
        *self == RipOptions::DEFAULT
    }

    /// The first field set, by its config name.
    fn first_set(&self) -> Option<&'static str> {
        [
            ("updateSeconds", self.update_seconds.is_some()),
            ("timeoutSeconds", self.timeout_seconds.is_some()),
            ("garbageSeconds", self.garbage_seconds.is_some()),
        ]
        .into_iter()
        .find(|(_, on)| *on)
        .map(|(f, _)| f)
    }

    /// The option fields out of range, as (field, reason): each timer 1..=86400 s, and the
    /// timeout longer than the update interval (with defaults filled in).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, v) in [
            ("updateSeconds", self.update_seconds),
            ("timeoutSeconds", self.timeout_seconds),
            ("garbageSeconds", self.garbage_seconds),
        ] {
            if let Some(v) = v.filter(|v| !(1..=MAX_RIP_SECONDS).contains(v)) {
                return Err((field, format!("{v} is out of range 1..={MAX_RIP_SECONDS}")));
            }
        }
        let (update, timeout) = (self.update_seconds(), self.timeout_seconds());
        if timeout <= update {
            return Err((
                "timeoutSeconds",
                format!(
                    "{timeout} is not longer than updateSeconds {update}: every route would time out between two updates; RFC 2453 has 6 times the update interval"
                ),
            ));
        }
        Ok(())
    }
}

/// A backend and the options that belong to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendSpec {
    #[default]
    None,
    HostGw,
    Vxlan(VxlanOptions),
    /// The static store's mesh is the VXLAN mesh, its peers written by hand.
    Static(VxlanOptions),
    Rip(RipOptions),
    Bgp,
    Udp(UdpOptions),
    Ovs(OvsOptions),
}

impl BackendSpec {
    pub const fn kind(&self) -> BackendKind {
        match self {
            BackendSpec::None => BackendKind::None,
            BackendSpec::HostGw => BackendKind::HostGw,
            BackendSpec::Vxlan(_) => BackendKind::Vxlan,
            BackendSpec::Static(_) => BackendKind::Static,
            BackendSpec::Rip(_) => BackendKind::Rip,
            BackendSpec::Bgp => BackendKind::Bgp,
            BackendSpec::Udp(_) => BackendKind::Udp,
            BackendSpec::Ovs(_) => BackendKind::Ovs,
        }
    }

    /// The VXLAN options, for the kinds that tunnel.
    pub const fn vxlan(&self) -> Option<&VxlanOptions> {
        match self {
            BackendSpec::Vxlan(o) | BackendSpec::Static(o) => Some(o),
            BackendSpec::None
            | BackendSpec::HostGw
            | BackendSpec::Rip(_)
            | BackendSpec::Bgp
            | BackendSpec::Udp(_)
            | BackendSpec::Ovs(_) => None,
        }
    }

    /// The ovs options, for `ovs`.
    pub const fn ovs(&self) -> Option<&OvsOptions> {
        match self {
            BackendSpec::Ovs(o) => Some(o),
            _ => None,
        }
    }

    /// The udp options, for `udp`.
    pub const fn udp(&self) -> Option<&UdpOptions> {
        match self {
            BackendSpec::Udp(o) => Some(o),
            _ => None,
        }
    }

    /// The RIP options, for `rip`.
    pub const fn rip(&self) -> Option<&RipOptions> {
        match self {
            BackendSpec::Rip(o) => Some(o),
            _ => None,
        }
    }

    /// Direct routes to peers on this node's segment (host-gw always, vxlan with
    /// `directRouting`).
    pub fn direct_routing(&self) -> bool {
        self.vxlan().is_some_and(|o| o.direct_routing)
    }

    /// A spec of `kind` with `options`; `None` options mean the defaults. Fails, naming the
    /// first field, when the kind does not take an option that is set (udp takes only
    /// `port`).
    pub fn with_options(
        kind: BackendKind,
        options: Option<VxlanOptions>,
    ) -> Result<BackendSpec, NotAnOption> {
        let options = options.unwrap_or_default();
        match kind {
            BackendKind::None
            | BackendKind::HostGw
            | BackendKind::Rip
            | BackendKind::Bgp
            | BackendKind::Ovs => {
                let set = [
                    ("vni", options.vni.is_some()),
                    ("port", options.port.is_some()),
                    ("directRouting", options.direct_routing),
                ];
                match set.into_iter().find(|(_, on)| *on) {
                    Some((field, _)) => Err(NotAnOption { kind, field }),
                    None => Ok(kind.spec()),
                }
            }
            BackendKind::Vxlan => Ok(BackendSpec::Vxlan(options)),
            BackendKind::Static => Ok(BackendSpec::Static(options)),
            BackendKind::Udp => {
                let set = [
                    ("vni", options.vni.is_some()),
                    ("directRouting", options.direct_routing),
                ];
                match set.into_iter().find(|(_, on)| *on) {
                    Some((field, _)) => Err(NotAnOption { kind, field }),
                    None => Ok(BackendSpec::Udp(UdpOptions {
                        port: options.port,
                        partial_checksums: false,
                    })),
                }
            }
        }
    }

    /// Out-of-range options, as (field under `backend`, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(o) = self.rip() {
            return o.check();
        }
        if let Some(o) = self.udp() {
            return o.check();
        }
        self.vxlan().map_or(Ok(()), VxlanOptions::check)
    }
}

impl From<BackendKind> for BackendSpec {
    fn from(kind: BackendKind) -> BackendSpec {
        kind.spec()
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().name())?;
        if self.direct_routing() {
            f.write_str(" (directRouting)")?;
        }
        Ok(())
    }
}

/// An option set on a kind that does not take it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is not an option of backend {kind}: {}", NotAnOption::hint(self.field))]
pub struct NotAnOption {
    pub kind: BackendKind,
    pub field: &'static str,
}

impl NotAnOption {
    fn hint(field: &str) -> &'static str {
        if OVS_FIELDS.contains(&field) {
            "only ovs takes tunnelType; remove it, or use type ovs"
        } else if RIP_FIELDS.contains(&field) {
            "only rip takes updateSeconds, timeoutSeconds and garbageSeconds; remove it, or use type rip"
        } else if field == "partialChecksums" {
            "only udp takes partialChecksums; remove it, or use type udp"
        } else if UDP_FIELDS.contains(&field) {
            "only vxlan, static and udp take port; remove it, or use one of those types"
        } else {
            "only vxlan and static take vni, port and directRouting; remove it, or use type vxlan"
        }
    }
}

impl Serialize for BackendSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(o) = self.rip().filter(|o| !o.is_default()) {
            let set = [
                ("updateSeconds", o.update_seconds),
                ("timeoutSeconds", o.timeout_seconds),
                ("garbageSeconds", o.garbage_seconds),
            ];
            let len = 1 + set.iter().filter(|(_, v)| v.is_some()).count();
            let mut m = s.serialize_map(Some(len))?;
            m.serialize_entry("type", self.kind().name())?;
            for (field, v) in set {
                if let Some(v) = v {
                    m.serialize_entry(field, &v)?;
                }
            }
            return m.end();
        }
        if let Some(o) = self.ovs().filter(|o| !o.is_default()) {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry("type", self.kind().name())?;
            m.serialize_entry("tunnelType", o.tunnel_type.name())?;
            return m.end();
        }
        if let Some(o) = self.udp().filter(|o| !o.is_default()) {
            let len = 1 + usize::from(o.port.is_some()) + usize::from(o.partial_checksums);
            let mut m = s.serialize_map(Some(len))?;
            m.serialize_entry("type", self.kind().name())?;
            if let Some(port) = o.port {
                m.serialize_entry("port", &port)?;
            }
            if o.partial_checksums {
                m.serialize_entry("partialChecksums", &true)?;
            }
            return m.end();
        }
        let options = match self.vxlan() {
            Some(o) if !o.is_default() => o,
            _ => return s.serialize_str(self.kind().name()),
        };
        let len = 1
            + usize::from(options.vni.is_some())
            + usize::from(options.port.is_some())
            + usize::from(options.direct_routing);
        let mut m = s.serialize_map(Some(len))?;
        m.serialize_entry("type", self.kind().name())?;
        if let Some(vni) = options.vni {
            m.serialize_entry("vni", &vni)?;
        }
        if let Some(port) = options.port {
            m.serialize_entry("port", &port)?;
        }
        if options.direct_routing {
            m.serialize_entry("directRouting", &true)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for BackendSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BackendSpec, D::Error> {
        d.deserialize_any(SpecVisitor)
    }
}

struct SpecVisitor;

impl<'de> Visitor<'de> for SpecVisitor {
    type Value = BackendSpec;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a backend name ({}) or {{type, vni, port, directRouting}} or {{type, updateSeconds, timeoutSeconds, garbageSeconds}} or {{type: udp, port, partialChecksums}} or {{type: ovs, tunnelType}}",
            BackendKind::list()
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendSpec, E> {
        v.parse::<BackendKind>()
            .map(BackendKind::spec)
            .map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BackendSpec, A::Error> {
        let mut kind: Option<BackendKind> = None;
        let mut options = VxlanOptions::default();
        let mut rip = RipOptions::default();
        let mut tunnel: Option<TunnelType> = None;
        let mut partial_checksums: Option<bool> = None;
        let mut seen: Vec<&'static str> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let Some(field) = ALL_FIELDS.iter().copied().find(|f| *f == key) else {
                return Err(de::Error::unknown_field(&key, ALL_FIELDS));
            };
            if seen.contains(&field) {
                return Err(de::Error::duplicate_field(field));
            }
            seen.push(field);
            // An option the kind named so far does not take: refused inside its value, so
            // the error's path ends in the option (`spec.backend.vni`).
            if let Some(k) = kind.filter(|k| field != "type" && !k.options().contains(&field)) {
                map.next_value_seed(Refuse(NotAnOption { kind: k, field }))?;
                continue;
            }
            match field {
                "type" => kind = Some(map.next_value()?),
                "tunnelType" => tunnel = Some(map.next_value()?),
                "vni" => options.vni = Some(map.next_value()?),
                "port" => options.port = Some(map.next_value()?),
                "updateSeconds" => rip.update_seconds = Some(map.next_value()?),
                "timeoutSeconds" => rip.timeout_seconds = Some(map.next_value()?),
                "garbageSeconds" => rip.garbage_seconds = Some(map.next_value()?),
                "partialChecksums" => partial_checksums = Some(map.next_value()?),
                _ => options.direct_routing = map.next_value()?,
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
        // Options written before `type`.
        match BackendSpec::with_options(kind, Some(options)).map_err(de::Error::custom)? {
            BackendSpec::Ovs(_) => match rip.first_set() {
                Some(field) => Err(de::Error::custom(NotAnOption { kind, field })),
                None => Ok(BackendSpec::Ovs(OvsOptions {
                    tunnel_type: tunnel.unwrap_or_default(),
                })),
            },
            _ if tunnel.is_some() => Err(de::Error::custom(NotAnOption {
                kind,
                field: "tunnelType",
            })),
            BackendSpec::Udp(o) => match rip.first_set() {
                Some(field) => Err(de::Error::custom(NotAnOption { kind, field })),
                None => Ok(BackendSpec::Udp(UdpOptions {
                    partial_checksums: partial_checksums.unwrap_or(false),
                    ..o
                })),
            },
            _ if partial_checksums.is_some() => Err(de::Error::custom(NotAnOption {
                kind,
                field: "partialChecksums",
            })),
            BackendSpec::Rip(_) => Ok(BackendSpec::Rip(rip)),
            spec => match rip.first_set() {
                Some(field) => Err(de::Error::custom(NotAnOption { kind, field })),
                None => Ok(spec),
            },
        }
    }
}

/// Fails on any value with the error it carries.
struct Refuse(NotAnOption);

impl<'de> DeserializeSeed<'de> for Refuse {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // Through the deserializer, so it attaches the value's path and position.
        d.deserialize_any(self)
    }
}

macro_rules! refuse {
    ($($name:ident: $t:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $t) -> Result<(), E> {
            Err(E::custom(&self.0))
        })*
    };
}

impl<'de> Visitor<'de> for Refuse {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "no {}", self.0.field)
    }

    refuse!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(&self.0))
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(&self.0))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(&self.0))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<BackendSpec, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn ovs_takes_tunnel_type_only() {
        assert_eq!(
            spec("\"ovs\"").unwrap(),
            BackendSpec::Ovs(OvsOptions::DEFAULT)
        );
        let vx = BackendSpec::Ovs(OvsOptions {
            tunnel_type: TunnelType::Vxlan,
        });
        assert_eq!(spec(r#"{"type":"ovs","tunnelType":"vxlan"}"#).unwrap(), vx);
        assert_eq!(spec(r#"{"tunnelType":"vxlan","type":"ovs"}"#).unwrap(), vx);
        assert_eq!(
            serde_json::to_string(&vx).unwrap(),
            r#"{"type":"ovs","tunnelType":"vxlan"}"#
        );
        assert_eq!(
            serde_json::to_string(&BackendSpec::Ovs(OvsOptions::DEFAULT)).unwrap(),
            r#""ovs""#
        );
        let e = spec(r#"{"type":"ovs","tunnelType":"ipip"}"#).unwrap_err();
        assert!(
            e.contains("\"ipip\" is not a tunnel type: use gre or vxlan"),
            "{e}"
        );
        let e = spec(r#"{"type":"ovs","vni":3}"#).unwrap_err();
        assert!(e.contains("vni is not an option of backend ovs"), "{e}");
        let e = spec(r#"{"type":"vxlan","tunnelType":"gre"}"#).unwrap_err();
        assert!(
            e.contains("tunnelType is not an option of backend vxlan: only ovs takes tunnelType"),
            "{e}"
        );
        let e = spec(r#"{"tunnelType":"gre","type":"rip"}"#).unwrap_err();
        assert!(
            e.contains("tunnelType is not an option of backend rip"),
            "{e}"
        );
        assert_eq!(TunnelType::Gre.overhead(), 38);
        assert_eq!("vxlan".parse::<TunnelType>().unwrap(), TunnelType::Vxlan);
    }

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for k in BackendKind::ALL {
            assert_eq!(k.name().parse::<BackendKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<BackendKind>(&json).unwrap(), k);
            // A spec with default options is written as the bare name, as always.
            assert_eq!(serde_json::to_string(&k.spec()).unwrap(), json);
            assert_eq!(spec(&json).unwrap(), k.spec());
            assert_eq!(k.spec().kind(), k);
        }
        assert_eq!(BackendSpec::default(), BackendSpec::None);
        assert_eq!(
            "gre".parse::<BackendKind>().unwrap_err().to_string(),
            "\"gre\" is not a backend: use one of none, host-gw, vxlan, static, rip, bgp, udp, ovs"
        );
    }

    #[test]
    fn options_are_an_object_and_round_trip() {
        let s = spec(r#"{"type":"vxlan","vni":4096,"port":4789,"directRouting":true}"#).unwrap();
        assert_eq!(
            s,
            BackendSpec::Vxlan(VxlanOptions {
                vni: Some(4096),
                port: Some(4789),
                direct_routing: true
            })
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"type":"vxlan","vni":4096,"port":4789,"directRouting":true}"#
        );
        assert_eq!(s.to_string(), "vxlan (directRouting)");
        let st = spec(r#"{"type":"static","vni":7}"#).unwrap();
        assert_eq!(st.vxlan().unwrap().vni(), 7);
        assert_eq!(st.vxlan().unwrap().port(), DEFAULT_VXLAN_PORT);
        assert_eq!(
            serde_json::to_string(&st).unwrap(),
            r#"{"type":"static","vni":7}"#
        );
        // An object with no options is still written as the bare name.
        assert_eq!(
            serde_json::to_string(&spec(r#"{"type":"host-gw"}"#).unwrap()).unwrap(),
            r#""host-gw""#
        );
    }

    #[test]
    fn options_that_do_not_belong_are_refused_by_name() {
        for (json, field) in [
            (r#"{"type":"host-gw","vni":5}"#, "vni"),
            (r#"{"vni":5,"type":"host-gw"}"#, "vni"),
            (r#"{"type":"none","directRouting":true}"#, "directRouting"),
            (r#"{"port":1,"type":"none"}"#, "port"),
        ] {
            let e = spec(json).unwrap_err();
            assert!(
                e.starts_with(&format!("{field} is not an option of backend ")),
                "{json}: {e}"
            );
        }
        let e = spec(r#"{"type":"vxlan","colour":"blue"}"#).unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(e.contains("directRouting"), "{e}");
        let e = spec(r#"{"vni":5}"#).unwrap_err();
        assert!(e.contains("missing field `type`"), "{e}");
        let e = spec(r#"{"type":"gre"}"#).unwrap_err();
        assert!(e.contains("\"gre\" is not a backend"), "{e}");
        let e = spec(r#""gre""#).unwrap_err();
        assert!(e.contains("\"gre\" is not a backend"), "{e}");
        let e = spec(r#"{"type":"vxlan","vni":"x"}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = spec(r#"{"type":"vxlan","vni":1,"vni":2}"#).unwrap_err();
        assert!(e.contains("duplicate field `vni`"), "{e}");
        let e = spec("7").unwrap_err();
        assert!(e.contains("a backend name"), "{e}");
    }

    #[test]
    fn rip_timers_are_an_object_round_trip_and_are_checked() {
        let s = spec(r#"{"type":"rip","updateSeconds":5,"timeoutSeconds":15,"garbageSeconds":10}"#)
            .unwrap();
        let o = RipOptions {
            update_seconds: Some(5),
            timeout_seconds: Some(15),
            garbage_seconds: Some(10),
        };
        assert_eq!(s, BackendSpec::Rip(o));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"type":"rip","updateSeconds":5,"timeoutSeconds":15,"garbageSeconds":10}"#
        );
        assert!(s.check().is_ok());
        let part = spec(r#"{"timeoutSeconds":60,"type":"rip"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&part).unwrap(),
            r#"{"type":"rip","timeoutSeconds":60}"#
        );
        assert_eq!(part.rip().unwrap().update_seconds(), 30);
        assert_eq!(part.rip().unwrap().garbage_seconds(), 120);
        assert_eq!(
            spec(r#""rip""#).unwrap(),
            BackendSpec::Rip(RipOptions::DEFAULT)
        );
        assert_eq!(
            serde_json::to_string(&spec(r#"{"type":"rip"}"#).unwrap()).unwrap(),
            r#""rip""#
        );
        for (json, field) in [
            (r#"{"type":"rip","updateSeconds":0}"#, "updateSeconds"),
            (r#"{"type":"rip","garbageSeconds":86401}"#, "garbageSeconds"),
            (
                r#"{"type":"rip","updateSeconds":30,"timeoutSeconds":30}"#,
                "timeoutSeconds",
            ),
            (r#"{"type":"rip","updateSeconds":200}"#, "timeoutSeconds"),
        ] {
            assert_eq!(spec(json).unwrap().check().unwrap_err().0, field, "{json}");
        }
        // Options of other kinds, either way round, named.
        for (json, field) in [
            (r#"{"type":"rip","vni":5}"#, "vni"),
            (r#"{"vni":5,"type":"rip"}"#, "vni"),
            (r#"{"type":"vxlan","updateSeconds":5}"#, "updateSeconds"),
            (r#"{"garbageSeconds":5,"type":"host-gw"}"#, "garbageSeconds"),
        ] {
            let e = spec(json).unwrap_err();
            assert!(
                e.starts_with(&format!("{field} is not an option of backend ")),
                "{json}: {e}"
            );
        }
        let e = spec(r#"{"type":"vxlan","updateSeconds":5}"#).unwrap_err();
        assert!(e.contains("only rip takes"), "{e}");
        let e = spec(r#"{"type":"rip","updateSeconds":"5s"}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn udp_takes_a_port_and_partial_checksums_and_round_trips() {
        assert_eq!(
            spec(r#""udp""#).unwrap(),
            BackendSpec::Udp(UdpOptions::DEFAULT)
        );
        assert_eq!(UdpOptions::DEFAULT.port(), DEFAULT_UDP_PORT);
        assert_eq!(DEFAULT_UDP_PORT, 8285);
        let s = spec(r#"{"type":"udp","port":9000}"#).unwrap();
        assert_eq!(
            s,
            BackendSpec::Udp(UdpOptions {
                port: Some(9000),
                partial_checksums: false
            })
        );
        assert_eq!(s.udp().unwrap().port(), 9000);
        assert_eq!(s.kind(), BackendKind::Udp);
        assert!(s.vxlan().is_none() && s.rip().is_none() && !s.direct_routing());
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"type":"udp","port":9000}"#
        );
        // The port before the type, too; no options is the bare name.
        assert_eq!(spec(r#"{"port":9000,"type":"udp"}"#).unwrap(), s);
        assert_eq!(
            serde_json::to_string(&spec(r#"{"type":"udp"}"#).unwrap()).unwrap(),
            r#""udp""#
        );
        assert!(s.check().is_ok());
        // Port 0 is refused by name, like vxlan's.
        let zero = spec(r#"{"type":"udp","port":0}"#).unwrap();
        let (field, reason) = zero.check().unwrap_err();
        assert_eq!(field, "port");
        assert!(reason.contains("leave it out for 8285"), "{reason}");
        let e = spec(r#"{"type":"udp","port":70000}"#).unwrap_err();
        assert!(e.contains("invalid value"), "{e}");
        // partialChecksums: udp's alone, either way round, and it round-trips.
        let p = spec(r#"{"partialChecksums":true,"type":"udp","port":9000}"#).unwrap();
        assert!(p.udp().unwrap().partial_checksums);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"type":"udp","port":9000,"partialChecksums":true}"#
        );
        assert_eq!(spec(&json).unwrap(), p);
        for json in [
            r#"{"type":"vxlan","partialChecksums":true}"#,
            r#"{"partialChecksums":true,"type":"vxlan"}"#,
        ] {
            let e = spec(json).unwrap_err();
            assert!(e.contains("only udp takes partialChecksums"), "{json}: {e}");
        }
        // The options of other kinds, either way round, named.
        for (json, field) in [
            (r#"{"type":"udp","vni":5}"#, "vni"),
            (r#"{"vni":5,"type":"udp"}"#, "vni"),
            (r#"{"type":"udp","directRouting":true}"#, "directRouting"),
            (r#"{"directRouting":true,"type":"udp"}"#, "directRouting"),
            (r#"{"type":"udp","updateSeconds":5}"#, "updateSeconds"),
            (r#"{"updateSeconds":5,"type":"udp"}"#, "updateSeconds"),
        ] {
            let e = spec(json).unwrap_err();
            assert!(
                e.starts_with(&format!("{field} is not an option of backend udp")),
                "{json}: {e}"
            );
        }
        // A port on a kind without one names the kinds that take it.
        let e = spec(r#"{"type":"host-gw","port":1}"#).unwrap_err();
        assert!(e.contains("only vxlan, static and udp take port"), "{e}");
        let o = VxlanOptions {
            port: Some(9),
            ..Default::default()
        };
        assert_eq!(
            BackendSpec::with_options(BackendKind::Udp, Some(o)).unwrap(),
            BackendSpec::Udp(UdpOptions {
                port: Some(9),
                partial_checksums: false
            })
        );
        let vni = VxlanOptions {
            vni: Some(9),
            ..Default::default()
        };
        assert_eq!(
            BackendSpec::with_options(BackendKind::Udp, Some(vni)).unwrap_err(),
            NotAnOption {
                kind: BackendKind::Udp,
                field: "vni"
            }
        );
    }

    #[test]
    fn with_options_names_the_first_stray_field() {
        let o = VxlanOptions {
            port: Some(9),
            ..Default::default()
        };
        assert_eq!(
            BackendSpec::with_options(BackendKind::HostGw, Some(o)).unwrap_err(),
            NotAnOption {
                kind: BackendKind::HostGw,
                field: "port"
            }
        );
        assert_eq!(
            BackendSpec::with_options(BackendKind::Static, Some(o)).unwrap(),
            BackendSpec::Static(o)
        );
        assert_eq!(
            BackendSpec::with_options(BackendKind::Vxlan, None).unwrap(),
            BackendKind::Vxlan.spec()
        );
    }

    #[test]
    fn ranges_are_checked() {
        let bad = |o: VxlanOptions| BackendSpec::Vxlan(o).check().unwrap_err().0;
        assert_eq!(
            bad(VxlanOptions {
                vni: Some(0),
                ..Default::default()
            }),
            "vni"
        );
        assert_eq!(
            bad(VxlanOptions {
                vni: Some(MAX_VNI + 1),
                ..Default::default()
            }),
            "vni"
        );
        assert_eq!(
            bad(VxlanOptions {
                port: Some(0),
                ..Default::default()
            }),
            "port"
        );
        assert!(BackendSpec::HostGw.check().is_ok());
    }
}
