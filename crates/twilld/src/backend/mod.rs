//! Cross-host backends: how pods on one node reach pods on the others.
//!
//! Three steps, two of them pure:
//! 1. [`Backend::plan`] (pure): from this node ([`Local`]) and the others ([`Peer`]) to the
//!    kernel state it needs ([`Desired`]) and the problems found on the way (a peer that
//!    host-gw cannot reach, a block claimed twice).
//! 2. [`diff`] (pure): desired against what the kernel holds ([`Observed`]) to the minimal
//!    list of [`Op`]s. What already matches is adopted as is, never torn down and rebuilt.
//! 3. [`exec::observe`] and [`exec::apply`] (the I/O edge): read the kernel, program the
//!    delta, go on after a failure and report each one.
//!
//! Ownership: Twill only ever changes what it marks as its own.
//! - Routes carry rtm_protocol [`ROUTE_PROTOCOL`] (0x54, 'T'; `ip route show proto 84`).
//!   The kernel stores that byte verbatim and reports it in every dump, so after a restart
//!   the agent finds exactly its routes again with no state file; a same-looking route of
//!   another protocol is never deleted ([`twill_netlink::Handle::delete_route_exact`] has
//!   the kernel check the protocol too). A dedicated table would need a policy rule (one
//!   more object to own, one more lookup per packet); a dedicated metric is a preference,
//!   not an ownership mark, and collides with other software's metrics.
//! - Neighbour and FDB entries are only read and written on Twill's own VXLAN device
//!   ([`VXLAN_DEVICE`]); everything permanent there is Twill's.

pub mod exec;
pub mod host_gw;
pub mod none;
pub mod vxlan;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use twill_netlink::neigh::format_mac;

pub use exec::{apply, observe, Failure, Report};
pub use host_gw::HostGw;
pub use none::NoneBackend;
pub use vxlan::Vxlan;

pub use twill_netlink::ROUTE_PROTOCOL;
/// The VXLAN device (flannel's flannel.1).
pub const VXLAN_DEVICE: &str = "twl.1";
/// flannel's default VNI.
pub const DEFAULT_VNI: u32 = 1;
/// flannel's and the kernel's VXLAN port (not IANA's 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Another node, as the store (or the static file) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Its node IP.
    pub address: Ipv4Addr,
    /// The pod blocks it holds.
    pub blocks: Vec<Ipv4Net>,
    /// The MAC of its VXLAN device, if it published one; else [`vtep_mac`] of its address.
    pub vtep_mac: Option<[u8; 6]>,
}

/// This node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    /// The node IP (the VXLAN source address).
    pub address: Ipv4Addr,
    /// The interface holding the node IP.
    pub uplink: String,
    /// The uplink's subnet: peers in it share this node's segment.
    pub uplink_cidr: Ipv4Net,
    pub blocks: Vec<Ipv4Net>,
    pub mtu_uplink: u32,
}

/// A route Twill wants: `dst via VIA dev DEV [onlink] proto 0x54`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
    pub dev: String,
    pub onlink: bool,
}

/// A permanent neighbour entry: `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighEntry {
    pub dev: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A VXLAN FDB entry: `bridge fdb replace MAC dev DEV dst DST self permanent`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbRow {
    pub dev: String,
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// The VXLAN device Twill wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// Outer source address: the node IP.
    pub local: Ipv4Addr,
    /// Outer packets leave through it.
    pub uplink: String,
    pub mtu: u32,
    /// Fixed, so peers' entries stay valid when the device is re-created.
    pub mac: [u8; 6],
    /// The `.0/32` of this node's first block (flannel gives flannel.1 the same), so
    /// packets the node itself sends through the tunnel have a source peers route back.
    pub address: Option<Ipv4Net>,
    /// Turn TX checksum offload off: only on kernels with the VXLAN checksum fault
    /// (see [`vxlan::checksum_offload_broken`]); elsewhere it costs TSO, most of the
    /// tunnel's throughput.
    pub disable_tx_checksum: bool,
}

/// The kernel state a backend needs on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: Vec<RouteEntry>,
    pub neighbours: Vec<NeighEntry>,
    pub fdb: Vec<FdbRow>,
    pub device: Option<VxlanSpec>,
    /// Peers or blocks that cannot be served, in words that name the fix.
    pub problems: Vec<String>,
}

/// VXLAN settings of an existing device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVxlan {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub uplink: Option<String>,
    pub learning: bool,
}

/// The device under Twill's VXLAN name, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDevice {
    pub name: String,
    /// IFLA_INFO_KIND; anything but "vxlan" is not Twill's and is left alone.
    pub kind: Option<String>,
    pub vxlan: Option<ObservedVxlan>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    pub addresses: Vec<Ipv4Net>,
    pub tx_checksum: bool,
}

/// A route in the main table that is not Twill's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRoute {
    pub dst: Ipv4Net,
    pub metric: u32,
    pub protocol: u8,
}

/// What the kernel holds, as far as Twill is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Main-table routes marked [`ROUTE_PROTOCOL`].
    pub routes: Vec<RouteEntry>,
    /// Every other main-table route (to avoid fighting over a destination).
    pub foreign_routes: Vec<ForeignRoute>,
    /// Permanent neighbour entries on Twill's device.
    pub neighbours: Vec<NeighEntry>,
    /// Unicast FDB entries with a remote on Twill's device.
    pub fdb: Vec<FdbRow>,
    pub device: Option<ObservedDevice>,
}

/// One kernel change. [`diff`] emits them in a safe order: removals first, then the
/// device, then neighbour and FDB entries, routes last (an onlink route needs its device
/// up, and a route through the tunnel is useless before its neighbour and FDB entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DeleteRoute(RouteEntry),
    DeleteFdb(FdbRow),
    DeleteNeighbour(NeighEntry),
    /// The device has settings that cannot change in place (VNI, port, local, uplink).
    DeleteDevice(String),
    DeleteDeviceAddress {
        dev: String,
        net: Ipv4Net,
    },
    CreateDevice(VxlanSpec),
    SetMtu {
        dev: String,
        mtu: u32,
    },
    SetMac {
        dev: String,
        mac: [u8; 6],
    },
    DisableTxChecksum(String),
    AddDeviceAddress {
        dev: String,
        net: Ipv4Net,
    },
    SetUp(String),
    SetNeighbour(NeighEntry),
    SetFdb(FdbRow),
    AddRoute(RouteEntry),
    /// Same destination, new next hop: one atomic replace, no gap.
    ReplaceRoute {
        old: RouteEntry,
        new: RouteEntry,
    },
}

impl fmt::Display for RouteEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {} dev {}", self.dst, self.via, self.dev)?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

impl fmt::Display for Op {
    /// Reads like the `ip`/`bridge` command doing the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::DeleteRoute(r) => write!(f, "route del {r}"),
            Op::DeleteFdb(e) => write!(f, "fdb del {} dev {} dst {}", format_mac(&e.mac), e.dev, e.dst),
            Op::DeleteNeighbour(n) => write!(f, "neigh del {} dev {}", n.ip, n.dev),
            Op::DeleteDevice(d) => write!(f, "link del {d}"),
            Op::DeleteDeviceAddress { dev, net } => write!(f, "addr del {net} dev {dev}"),
            Op::CreateDevice(s) => write!(
                f,
                "link add {} type vxlan id {} local {} dev {} dstport {} nolearning mtu {} address {}",
                s.name, s.vni, s.local, s.uplink, s.port, s.mtu, format_mac(&s.mac)
            ),
            Op::SetMtu { dev, mtu } => write!(f, "link set {dev} mtu {mtu}"),
            Op::SetMac { dev, mac } => write!(f, "link set {dev} address {}", format_mac(mac)),
            Op::DisableTxChecksum(d) => write!(f, "ethtool -K {d} tx off"),
            Op::AddDeviceAddress { dev, net } => write!(f, "addr add {net} dev {dev}"),
            Op::SetUp(d) => write!(f, "link set {d} up"),
            Op::SetNeighbour(n) => write!(
                f,
                "neigh replace {} lladdr {} dev {} nud permanent",
                n.ip,
                format_mac(&n.mac),
                n.dev
            ),
            Op::SetFdb(e) => write!(
                f,
                "fdb replace {} dev {} dst {} self permanent",
                format_mac(&e.mac),
                e.dev,
                e.dst
            ),
            Op::AddRoute(r) => write!(f, "route add {r}"),
            Op::ReplaceRoute { new, .. } => write!(f, "route replace {new}"),
        }
    }
}

/// What to do, and what cannot be done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub problems: Vec<String>,
}

/// A way across hosts.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// The kernel state this node needs for `peers` (pure).
    fn plan(&self, local: &Local, peers: &[Peer]) -> Desired;
}

/// Backend settings from the network config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendOptions {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    /// Calico's CrossSubnet: direct routes to peers on this node's segment.
    pub direct_routing: bool,
    /// This kernel has the VXLAN checksum-offload fault (the caller asks uname).
    pub disable_tx_checksum: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("unknown backend {0:?}: choose one of none, host-gw, vxlan, static")]
    Unknown(String),
    #[error("vxlan VNI {0} is out of range: use 1 to 16777215")]
    BadVni(u32),
    #[error("vxlan port 0 is not a port: leave it out for 8472")]
    BadPort,
}

/// The backend the network config names.
pub fn select(name: &str, options: &BackendOptions) -> Result<Box<dyn Backend>, BackendError> {
    match name {
        "none" => Ok(Box::new(NoneBackend)),
        "host-gw" => Ok(Box::new(HostGw)),
        // The static store's mesh is the VXLAN mesh, its peers written by hand.
        "vxlan" | "static" => {
            let vni = options.vni.unwrap_or(DEFAULT_VNI);
            if vni == 0 || vni > 0x00ff_ffff {
                return Err(BackendError::BadVni(vni));
            }
            if options.port == Some(0) {
                return Err(BackendError::BadPort);
            }
            Ok(Box::new(Vxlan {
                device: VXLAN_DEVICE.into(),
                vni,
                port: options.port.unwrap_or(DEFAULT_VXLAN_PORT),
                direct_routing: options.direct_routing,
                disable_tx_checksum: options.disable_tx_checksum,
            }))
        }
        other => Err(BackendError::Unknown(other.to_owned())),
    }
}

/// The MAC of a node's VXLAN device, derived from its node IP: locally administered,
/// unicast, `0a:54:` + the four address bytes. Stable across restarts and re-creations,
/// and computable by peers that never saw it published (the static store).
pub fn vtep_mac(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x0a, 0x54, a, b, c, d]
}

/// The peers and blocks a backend may route to: sorted by name, without this node, with
/// every conflict turned into a problem (a peer using this node's IP; a block this node or
/// an earlier peer holds). Blocks in conflict are dropped, never routed twice.
pub(crate) fn usable_peers(local: &Local, peers: &[Peer], problems: &mut Vec<String>) -> Vec<Peer> {
    let mut sorted: Vec<&Peer> = peers.iter().filter(|p| p.name != local.name).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut taken: Vec<(Ipv4Net, String)> = local
        .blocks
        .iter()
        .map(|b| (*b, format!("this node ({})", local.name)))
        .collect();
    let mut out = Vec::new();
    for peer in sorted {
        if peer.address == local.address {
            problems.push(format!(
                "{} advertises {}, this node's own IP: its blocks are not routed; fix the node IP of one of them",
                peer.name, peer.address
            ));
            continue;
        }
        let mut blocks = Vec::new();
        for block in &peer.blocks {
            if let Some((_, holder)) = taken
                .iter()
                .find(|(t, _)| t.contains(block) || block.contains(t))
            {
                problems.push(format!(
                    "{} claims block {block}, which overlaps a block of {holder}: not routed; free one of them",
                    peer.name
                ));
                continue;
            }
            taken.push((*block, peer.name.clone()));
            blocks.push(*block);
        }
        out.push(Peer {
            blocks,
            ..peer.clone()
        });
    }
    out
}

/// The minimal operations turning `observed` into `desired`. Twill's VXLAN device, found
/// while the backend wants none (host-gw after vxlan), is removed with its entries.
pub fn diff(desired: &Desired, observed: &Observed) -> Plan {
    let mut plan = Plan {
        ops: Vec::new(),
        problems: desired.problems.clone(),
    };
    let mut removals = Vec::new();
    let mut device_ops = Vec::new();

    // The device first: it decides which observed entries survive.
    let foreign_device = observed
        .device
        .as_ref()
        .filter(|d| d.kind.as_deref() != Some("vxlan"));
    if let Some(d) = foreign_device {
        plan.problems.push(format!(
            "link {} exists but is a {} device, not Twill's VXLAN device: left alone, no tunnel; delete it",
            d.name,
            d.kind.as_deref().unwrap_or("plain")
        ));
    }
    let mut device_gone = false;
    match (&desired.device, observed.device.as_ref()) {
        (_, Some(_)) if foreign_device.is_some() => {}
        (None, Some(d)) => {
            removals.push(Op::DeleteDevice(d.name.clone()));
            device_gone = true;
        }
        (None, None) => {}
        (Some(spec), None) => device_ops.extend(create_device(spec)),
        (Some(spec), Some(d)) => {
            let wanted = ObservedVxlan {
                vni: spec.vni,
                port: spec.port,
                local: Some(spec.local),
                uplink: Some(spec.uplink.clone()),
                learning: false,
            };
            if d.vxlan.as_ref() != Some(&wanted) {
                removals.push(Op::DeleteDevice(d.name.clone()));
                device_gone = true;
                device_ops.extend(create_device(spec));
            } else {
                device_ops.extend(adjust_device(spec, d));
            }
        }
    }
    let usable_device = |dev: &str| match &foreign_device {
        Some(d) => d.name != dev,
        None => true,
    };
    let survives =
        |dev: &str| !(device_gone && observed.device.as_ref().is_some_and(|d| d.name == dev));

    // Routes, keyed by destination.
    let have: BTreeMap<Ipv4Net, Vec<&RouteEntry>> = observed
        .routes
        .iter()
        .filter(|r| survives(&r.dev))
        .fold(BTreeMap::new(), |mut m, r| {
            m.entry(r.dst).or_default().push(r);
            m
        });
    let want: BTreeMap<Ipv4Net, &RouteEntry> = desired
        .routes
        .iter()
        .filter(|r| usable_device(&r.dev))
        .map(|r| (r.dst, r))
        .collect();
    let mut route_adds = Vec::new();
    for (dst, old) in &have {
        match want.get(dst) {
            Some(new) if old.iter().any(|o| o == new) => {
                removals.extend(
                    old.iter()
                        .filter(|o| o != &new)
                        .map(|o| Op::DeleteRoute((*o).clone())),
                );
            }
            Some(new) => {
                route_adds.push(Op::ReplaceRoute {
                    old: old[0].clone(),
                    new: (*new).clone(),
                });
                removals.extend(old[1..].iter().map(|o| Op::DeleteRoute((*o).clone())));
            }
            None => removals.extend(old.iter().map(|o| Op::DeleteRoute((*o).clone()))),
        }
    }
    for (dst, new) in &want {
        if have.contains_key(dst) {
            continue;
        }
        if let Some(f) = observed
            .foreign_routes
            .iter()
            .find(|f| f.dst == *dst && f.metric == 0)
        {
            plan.problems.push(format!(
                "a route to {dst} already exists, installed by protocol {} (not Twill): left alone, so {new} is not installed; remove that route",
                f.protocol
            ));
            continue;
        }
        route_adds.push(Op::AddRoute((*new).clone()));
    }

    // Neighbours by (dev, ip); FDB rows by (dev, mac).
    let have_neigh: BTreeMap<(&str, Ipv4Addr), &NeighEntry> = observed
        .neighbours
        .iter()
        .filter(|n| survives(&n.dev))
        .map(|n| ((n.dev.as_str(), n.ip), n))
        .collect();
    let want_neigh: BTreeSet<&NeighEntry> = desired
        .neighbours
        .iter()
        .filter(|n| usable_device(&n.dev))
        .collect();
    let mut entry_adds = Vec::new();
    for (key, n) in &have_neigh {
        if !want_neigh.iter().any(|w| (w.dev.as_str(), w.ip) == *key) {
            removals.push(Op::DeleteNeighbour((*n).clone()));
        }
    }
    let have_fdb: BTreeMap<(&str, [u8; 6]), &FdbRow> = observed
        .fdb
        .iter()
        .filter(|e| survives(&e.dev))
        .map(|e| ((e.dev.as_str(), e.mac), e))
        .collect();
    let want_fdb: BTreeSet<&FdbRow> = desired
        .fdb
        .iter()
        .filter(|e| usable_device(&e.dev))
        .collect();
    for (key, e) in &have_fdb {
        if !want_fdb.iter().any(|w| (w.dev.as_str(), w.mac) == *key) {
            removals.push(Op::DeleteFdb((*e).clone()));
        }
    }
    for n in want_neigh {
        if have_neigh.get(&(n.dev.as_str(), n.ip)) != Some(&n) {
            entry_adds.push(Op::SetNeighbour(n.clone()));
        }
    }
    for e in want_fdb {
        if have_fdb.get(&(e.dev.as_str(), e.mac)) != Some(&e) {
            entry_adds.push(Op::SetFdb(e.clone()));
        }
    }

    removals.sort_by_key(removal_rank);
    plan.ops.extend(removals);
    plan.ops.extend(device_ops);
    plan.ops.extend(entry_adds);
    plan.ops.extend(route_adds);
    plan
}

fn removal_rank(op: &Op) -> u8 {
    match op {
        Op::DeleteRoute(_) => 0,
        Op::DeleteFdb(_) => 1,
        Op::DeleteNeighbour(_) => 2,
        _ => 3,
    }
}

fn create_device(spec: &VxlanSpec) -> Vec<Op> {
    let mut ops = vec![Op::CreateDevice(spec.clone())];
    if spec.disable_tx_checksum {
        ops.push(Op::DisableTxChecksum(spec.name.clone()));
    }
    if let Some(net) = spec.address {
        ops.push(Op::AddDeviceAddress {
            dev: spec.name.clone(),
            net,
        });
    }
    ops.push(Op::SetUp(spec.name.clone()));
    ops
}

fn adjust_device(spec: &VxlanSpec, d: &ObservedDevice) -> Vec<Op> {
    let dev = || spec.name.clone();
    let mut ops = Vec::new();
    for net in &d.addresses {
        if spec.address != Some(*net) {
            ops.push(Op::DeleteDeviceAddress {
                dev: dev(),
                net: *net,
            });
        }
    }
    if d.mtu != spec.mtu {
        ops.push(Op::SetMtu {
            dev: dev(),
            mtu: spec.mtu,
        });
    }
    if d.mac != Some(spec.mac) {
        ops.push(Op::SetMac {
            dev: dev(),
            mac: spec.mac,
        });
    }
    if spec.disable_tx_checksum && d.tx_checksum {
        ops.push(Op::DisableTxChecksum(dev()));
    }
    if let Some(net) = spec.address.filter(|n| !d.addresses.contains(n)) {
        ops.push(Op::AddDeviceAddress { dev: dev(), net });
    }
    if !d.up {
        ops.push(Op::SetUp(dev()));
    }
    ops
}

#[cfg(test)]
mod tests;
