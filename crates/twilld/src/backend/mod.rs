//! Cross-host backends: how pods on one node reach pods on the others.
//!
//! # The seam
//! A backend is a [`Backend`]: a typed kind ([`BackendKind`], chosen by the network
//! config's [`BackendSpec`] through [`select`]) that declares
//! - its MTU overhead ([`Backend::mtu_overhead`]: the pod MTU is the uplink's less this,
//!   see [`pod_mtu`]),
//! - the devices it owns ([`Backend::devices`]; every device any backend may own is in
//!   [`DEVICES`]) and, through [`Backend::plan`], the routes it owns (see *Ownership*),
//! - a lifecycle the agent drives without knowing the kind:
//!   1. [`Backend::start`]: open its sockets, spawn its threads, arm its timers. It gets an
//!      [`Events`] sink; whatever its sockets and threads see comes back through it.
//!   2. [`Backend::plan`] (pure) on every change of this node or its peers, then the
//!      kernel is made to match (below), then [`Backend::sync`] hands the same inputs to
//!      its own state beyond the kernel's tables (a speaker's announcements, a userspace
//!      datapath's peer table, an ovsdb transaction).
//!   3. [`Backend::on_event`] for each message from its [`Events`] sink and each due timer
//!      ([`Backend::next_timer`]); answering [`Reaction::Reconcile`] gets a new pass, so
//!      routes a backend learns (BGP) reach the kernel with no change to the agent.
//!   4. [`Backend::stop`]: close sockets, join threads; routes and devices stay, so
//!      forwarding goes on and a restarted agent adopts them.
//!
//! [`Driver`] (pure: no socket, file or netlink) runs that lifecycle: it starts the
//! backend, delivers events and timers, and says when a pass is due and with which
//! [`Desired`] state. [`crate::routing::Routing`] wraps it with the netlink edge; the
//! agent's loop only calls `Routing::reconcile(&local, &peers)` when it wakes, and wakes by
//! `Routing::next_wake()` or when the waker it gave `Routing::set_waker` is called.
//! A BGP speaker (a TCP listener and sessions on its own thread, timers, learned routes in
//! its plan), a TUN datapath (a device in [`DEVICES`], its threads fed by `sync`) and an
//! OVS connection (a unix socket to ovsdb, monitor updates as events) all fit behind it.
//!
//! # Reconciling
//! Three steps, two of them pure:
//! 1. [`desired`] (pure): from this node ([`Local`]) and the others ([`Peer`]) to the
//!    kernel state it needs ([`Desired`]: the backend's [`Backend::plan`] plus what every
//!    backend needs, the blackholes of l3 pods) and the problems found on the way (a peer
//!    that host-gw cannot reach, a block claimed twice).
//! 2. [`diff`] (pure): desired against what the kernel holds ([`Observed`]) to the minimal
//!    list of [`Op`]s. What already matches is adopted as is, never torn down and rebuilt.
//! 3. [`exec::observe`] and [`exec::apply`] (the I/O edge): read the kernel, program the
//!    delta, go on after a failure and report each one.
//!
//! # Blackholes for l3 pods
//! With `podWiring: l3` there is no bridge, so no connected route covers a block: a packet
//! to one of its addresses that no pod holds yet would follow the default route (and loop
//! between nodes). So every block this node holds gets `blackhole BLOCK proto 0x54`, added
//! when the block is held and removed when it is released; a pod's own /32 route (more
//! specific) wins over it, and a later BGP speaker announces the block as one aggregate.
//! With `bridge` wiring the bridge's connected route covers the block: no blackhole.
//!
//! # Ownership
//! Twill only ever changes what it marks as its own.
//! - Routes carry rtm_protocol [`ROUTE_PROTOCOL`] (0x54, 'T'; `ip route show proto 84`).
//!   The kernel stores that byte verbatim and reports it in every dump, so after a restart
//!   the agent finds exactly its routes again with no state file; a same-looking route of
//!   another protocol is never deleted ([`twill_netlink::Handle::delete_route_exact`] has
//!   the kernel check the protocol and the route type too). A dedicated table would need a
//!   policy rule (one more object to own, one more lookup per packet); a dedicated metric
//!   is a preference, not an ownership mark, and collides with other software's metrics.
//! - Two Twill components install such routes: twill-cni (l3 wiring: a
//!   `/32 dev <host veth> scope link` per pod) and the backend. The backend owns (observes,
//!   replaces, deletes) only the main-table 0x54 routes that are blackholes, have a
//!   gateway, or leave through one of the backends' [`DEVICES`] ([`owned_by_backend`]).
//!   A pod route has none of these, so no reconcile ever removes one.
//! - Neighbour and FDB entries are only read and written on Twill's own VXLAN device
//!   ([`VXLAN_DEVICE`]); everything permanent there is Twill's.
//! - The udp backend's TUN ([`TUN_DEVICE`]) is created by its datapath process (a TUN
//!   comes from `/dev/net/tun`, not from netlink); the reconcile gives it its MTU, address
//!   and routes, brings it up ([`TunSpec`]), and deletes it when another backend took over.
//!   A device of that name that is not a TUN is left alone.

pub mod bgp;
pub mod driver;
pub mod exec;
pub mod host_gw;
pub mod none;
pub mod ovs;
pub mod rip;
pub mod static_mesh;
pub mod udp;
pub mod vxlan;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::Ipv4Net;
use twill_api::bgp::{BgpConfiguration, BgpPeer, RoutingStatus};
use twill_api::resources::NodeSpec;
use twill_api::wiring::PodWiring;
use twill_netlink::neigh::format_mac;

pub use bgp::Bgp;
pub use driver::Driver;
pub use exec::{apply, observe, Failure, Report};
pub use host_gw::HostGw;
pub use none::NoneBackend;
pub use ovs::Ovs;
pub use rip::Rip;
pub use static_mesh::StaticMesh;
pub use twill_api::backend::{BackendKind, BackendSpec, UdpOptions, VxlanOptions};
pub use twill_api::backend::{DEFAULT_UDP_PORT, DEFAULT_VNI, DEFAULT_VXLAN_PORT};
pub use udp::Udp;
pub use vxlan::Vxlan;

pub use twill_netlink::ROUTE_PROTOCOL;
/// The VXLAN device (flannel's flannel.1).
pub const VXLAN_DEVICE: &str = "twl.1";
/// The udp backend's TUN device (flannel's flannel0; `twl0` is the pod bridge).
pub const TUN_DEVICE: &str = "twl.tun";
/// Every device a backend may own. A 0x54 route through one of them is the backend's;
/// a backend that takes over deletes the ones it does not want.
pub const DEVICES: &[&str] = &[VXLAN_DEVICE, TUN_DEVICE, ovs::OVS_DEVICE];
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Outer IPv4 (20) + UDP (8) headers: the udp backend carries the bare inner IP packet.
pub const UDP_OVERHEAD: u32 = 28;

/// The other nodes, as one list shared by the agent's machine, its actions and the backend:
/// handing it on each round is a reference count, not a copy of every peer (at 1000 peers
/// the copies were most of an idle agent's CPU, in malloc and free).
pub type Peers = std::sync::Arc<[Peer]>;

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
    /// How pods meet this node (the network config's `podWiring`): with l3, every block
    /// held gets a blackhole route.
    pub pod_wiring: PodWiring,
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

/// The TUN device Twill wants (the udp backend's). Its datapath creates it; the reconcile
/// only sets what is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunSpec {
    pub name: String,
    /// The uplink's less [`UDP_OVERHEAD`], so an outer packet never exceeds the uplink.
    pub mtu: u32,
    /// The `.0/32` of this node's first block (as on the VXLAN device): the source of
    /// packets the node itself sends to other nodes' pods.
    pub address: Option<Ipv4Net>,
}

/// What a backend that speaks a routing protocol needs beyond this node and its peers
/// (bgp): the cluster's routing resources and this node's pod addresses. The agent's
/// machine reads and watches the resources only for such backends
/// ([`BackendKind::uses_bgp_resources`]; else this is empty), and a change starts a pass
/// ([`Driver::set_inputs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingInputs {
    /// The network config's cluster CIDR (all pod addresses).
    pub cluster_cidr: Option<Ipv4Net>,
    /// `bgpconfig`; None: absent or unreadable (the defaults apply).
    pub bgp_config: Option<BgpConfiguration>,
    /// `bgppeers/<name>`, by name.
    pub bgp_peers: BTreeMap<String, BgpPeer>,
    /// `nodeconfigs/<name>` of every node, by name.
    pub node_specs: BTreeMap<String, NodeSpec>,
    /// The addresses twill-cni gave this node's pods (its records), sorted.
    pub pod_ips: Vec<Ipv4Addr>,
    /// Resources that could not be read, in words naming the fix.
    pub problems: Vec<String>,
}

/// The kernel state a backend needs on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: Vec<RouteEntry>,
    /// `blackhole DST proto 0x54`: the blocks of this node, with l3 pods.
    pub blackholes: Vec<Ipv4Net>,
    pub neighbours: Vec<NeighEntry>,
    pub fdb: Vec<FdbRow>,
    pub device: Option<VxlanSpec>,
    /// The TUN device (udp).
    pub tun: Option<TunSpec>,
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

/// The device under Twill's VXLAN (or TUN) name, as found.
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
    /// Main-table unicast routes marked [`ROUTE_PROTOCOL`] that the backend owns
    /// ([`owned_by_backend`]); twill-cni's pod routes are in neither list.
    pub routes: Vec<RouteEntry>,
    /// Main-table blackhole routes marked [`ROUTE_PROTOCOL`].
    pub blackholes: Vec<Ipv4Net>,
    /// Every other main-table route (to avoid fighting over a destination).
    pub foreign_routes: Vec<ForeignRoute>,
    /// Permanent neighbour entries on Twill's device.
    pub neighbours: Vec<NeighEntry>,
    /// Unicast FDB entries with a remote on Twill's device.
    pub fdb: Vec<FdbRow>,
    pub device: Option<ObservedDevice>,
    /// The link named [`TUN_DEVICE`], if any.
    pub tun: Option<ObservedDevice>,
}

/// One kernel change. [`diff`] emits them in a safe order: removals first, then the
/// device, then neighbour and FDB entries, routes last (an onlink route needs its device
/// up, and a route through the tunnel is useless before its neighbour and FDB entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DeleteRoute(RouteEntry),
    DeleteBlackhole(Ipv4Net),
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
    AddBlackhole(Ipv4Net),
    /// Same destination, new next hop: one atomic replace, no gap.
    ReplaceRoute {
        old: RouteEntry,
        new: RouteEntry,
    },
}

impl fmt::Display for RouteEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if !self.via.is_unspecified() {
            write!(f, " via {}", self.via)?;
        }
        write!(f, " dev {}", self.dev)?;
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
            Op::DeleteBlackhole(dst) => write!(f, "route del blackhole {dst}"),
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
            Op::AddBlackhole(dst) => write!(f, "route add blackhole {dst}"),
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

/// A way across hosts: see the module docs for the lifecycle the agent drives.
pub trait Backend: Send {
    fn kind(&self) -> BackendKind;

    /// The name in logs and status.
    fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Bytes of headers this backend adds to every pod packet crossing nodes.
    fn mtu_overhead(&self) -> u32 {
        0
    }

    /// The devices this backend creates and keeps (each one of [`DEVICES`]).
    fn devices(&self) -> &'static [&'static str] {
        &[]
    }

    /// Opens the backend's sockets, spawns its threads, arms its timers (from `now`, the
    /// driver's clock); what they see comes back through `events`. Called once, before
    /// the first [`Backend::plan`]; on an error the driver reports it and calls again on
    /// the next pass.
    fn start(&mut self, events: &Events, now: Instant) -> Result<(), BackendError> {
        let _ = (events, now);
        Ok(())
    }

    /// The kernel state this node needs for `peers`, with whatever the backend learned
    /// from its events (pure).
    fn plan(&self, local: &Local, peers: &[Peer]) -> Desired;

    /// After the kernel was made to match [`Backend::plan`]: the same inputs for the
    /// backend's own state beyond the kernel's tables. Returns what failed, in words.
    fn sync(&mut self, local: &Local, peers: &[Peer]) -> Vec<String> {
        let _ = (local, peers);
        Vec::new()
    }

    /// The other nodes changed (a watch event), between two passes: a backend whose sessions
    /// follow the peer list (bgp's) hands it on now instead of at the next pass, which
    /// still follows. `local` is the last pass's. Returns what failed, in words.
    fn peers_changed(&mut self, local: &Local, peers: &[Peer]) -> Vec<String> {
        let _ = (local, peers);
        Vec::new()
    }

    /// The routing resources and pod addresses changed (only backends that read them get
    /// any: see [`RoutingInputs`]); a pass follows.
    fn set_inputs(&mut self, inputs: &RoutingInputs) {
        let _ = inputs;
    }

    /// What this backend's routing sessions look like now, for `routingstatus/<node>`,
    /// /metrics and `twill node status`; None for backends without sessions.
    fn routing_status(&self) -> Option<RoutingStatus> {
        None
    }

    /// When [`Backend::on_event`] wants [`Event::Timer`] next.
    fn next_timer(&self) -> Option<Instant> {
        None
    }

    /// A message from the backend's own sockets or threads, or a due timer.
    fn on_event(&mut self, event: Event, now: Instant) -> Reaction {
        let _ = (event, now);
        Reaction::Idle
    }

    /// Series of its own for /metrics (udp: the datapath's per-peer counters), read at
    /// each scrape from the HTTP thread; None for backends without any.
    fn metrics(&self) -> Option<Arc<dyn MetricsSource>> {
        None
    }

    /// Closes sockets and joins threads. Routes and devices stay: forwarding goes on, and
    /// a restarted agent adopts them.
    fn stop(&mut self) {}
}

/// A backend's own /metrics series, rendered at scrape time (Prometheus text format).
pub trait MetricsSource: Send + Sync + fmt::Debug {
    fn render(&self, out: &mut String);
}

/// What reaches [`Backend::on_event`].
pub enum Event {
    /// [`Backend::next_timer`] is due.
    Timer,
    /// What the backend's own code sent through its [`Events`]; only it knows the type.
    Message(Box<dyn Any + Send>),
}

impl Event {
    /// The message, if it is a `T`.
    pub fn message<T: Any>(self) -> Option<T> {
        match self {
            Event::Message(m) => m.downcast::<T>().ok().map(|b| *b),
            Event::Timer => None,
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Timer => f.write_str("Timer"),
            Event::Message(_) => f.write_str("Message(..)"),
        }
    }
}

/// What an event asks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Reaction {
    /// Nothing the plan depends on changed.
    Idle,
    /// The plan may have changed (a route learned or lost): reconcile now.
    Reconcile,
}

/// Called when a backend sends an event, to wake the agent's loop.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The sink a backend's sockets, threads and callbacks send their events into. Cheap to
/// clone; usable from any thread.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Box<dyn Any + Send>>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl Events {
    pub(crate) fn channel() -> (Events, mpsc::Receiver<Box<dyn Any + Send>>) {
        let (tx, rx) = mpsc::channel();
        (
            Events {
                tx,
                waker: Arc::new(Mutex::new(None)),
            },
            rx,
        )
    }

    /// Queues `message` for the backend's [`Backend::on_event`] and wakes the agent.
    /// False when the agent is gone (the backend's threads should end).
    pub fn send<T: Any + Send>(&self, message: T) -> bool {
        if self.tx.send(Box::new(message)).is_err() {
            return false;
        }
        let waker = self.waker.lock().map(|w| w.clone()).unwrap_or(None);
        if let Some(wake) = waker {
            wake();
        }
        true
    }

    pub(crate) fn set_waker(&self, waker: Waker) {
        if let Ok(mut w) = self.waker.lock() {
            *w = Some(waker);
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// An option out of range (the network config's validation catches it first).
    #[error("backend.{field}: {reason}; fix it with twill apply -f network.yaml")]
    Invalid { field: &'static str, reason: String },
    /// A backend could not start (a socket, a thread, a device).
    #[error("backend {kind} cannot start: {reason}")]
    Start { kind: BackendKind, reason: String },
}

/// The backend the network config names. `disable_tx_checksum`: this kernel has the
/// VXLAN checksum-offload fault (the caller asks uname); `state_dir`: twilld's, where a
/// backend with a daemon of its own keeps its files (bgp: the speaker's control socket).
pub fn select(
    spec: &BackendSpec,
    disable_tx_checksum: bool,
    state_dir: &Path,
) -> Result<Box<dyn Backend>, BackendError> {
    select_in(
        spec,
        disable_tx_checksum,
        state_dir,
        Path::new(ovs::DEFAULT_RUNDIR),
    )
}

/// [`select`], with OVS's run directory (`--ovs-rundir`: its `db.sock` and control
/// sockets) for the ovs backend.
pub fn select_in(
    spec: &BackendSpec,
    disable_tx_checksum: bool,
    state_dir: &Path,
    ovs_rundir: &Path,
) -> Result<Box<dyn Backend>, BackendError> {
    spec.check()
        .map_err(|(field, reason)| BackendError::Invalid { field, reason })?;
    let vxlan = |o: &VxlanOptions| Vxlan {
        device: VXLAN_DEVICE.into(),
        vni: o.vni(),
        port: o.port(),
        direct_routing: o.direct_routing,
        disable_tx_checksum,
    };
    Ok(match spec {
        BackendSpec::None => Box::new(NoneBackend),
        BackendSpec::HostGw => Box::new(HostGw),
        BackendSpec::Vxlan(o) => Box::new(vxlan(o)),
        BackendSpec::Static(o) => Box::new(StaticMesh(vxlan(o))),
        BackendSpec::Rip(o) => Box::new(Rip::new(o)),
        BackendSpec::Bgp => Box::new(Bgp::new(state_dir)),
        BackendSpec::Udp(o) => Box::new(Udp::new(o, state_dir)),
        BackendSpec::Ovs(o) => Box::new(Ovs::new(o.tunnel_type, ovs_rundir)),
    })
}

/// The pod MTU the hand-off gives twill-cni: the uplink's, less `backend`'s headers, and
/// never above what the network config asks for.
pub fn pod_mtu(backend: &dyn Backend, uplink_mtu: u32, config_mtu: u32) -> u32 {
    uplink_mtu
        .saturating_sub(backend.mtu_overhead())
        .min(config_mtu)
}

/// The kernel state of this node: `backend`'s plan, plus the blackholes of its blocks
/// when pods are wired l3 (pure).
pub fn desired(backend: &dyn Backend, local: &Local, peers: &[Peer]) -> Desired {
    let mut desired = backend.plan(local, peers);
    desired.blackholes.extend(blackholes(local));
    desired
}

/// `blackhole BLOCK` for every block this node holds, with l3 pods; none with a bridge
/// (its connected route covers the block).
pub fn blackholes(local: &Local) -> Vec<Ipv4Net> {
    match local.pod_wiring {
        PodWiring::L3 => {
            let mut b: Vec<Ipv4Net> = local.blocks.iter().map(|b| b.trunc()).collect();
            b.sort();
            b.dedup();
            b
        }
        PodWiring::Bridge => Vec::new(),
    }
}

/// Whether a main-table route marked [`ROUTE_PROTOCOL`] is the backend's to manage: a
/// blackhole, a route with a gateway, or one through a backend device ([`DEVICES`]).
/// twill-cni's l3 pod routes (`/32 dev <veth> scope link`, no gateway) are not.
pub fn owned_by_backend(blackhole: bool, gateway: Option<Ipv4Addr>, dev: &str) -> bool {
    blackhole || gateway.is_some_and(|g| !g.is_unspecified()) || DEVICES.contains(&dev)
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
    let this_node = format!("this node ({})", local.name);
    let mut taken = TakenBlocks::default();
    for b in &local.blocks {
        taken.insert(*b, &this_node);
    }
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
            if let Some(holder) = taken.overlapping(*block) {
                problems.push(format!(
                    "{} claims block {block}, which overlaps a block of {holder}: not routed; free one of them",
                    peer.name
                ));
                continue;
            }
            taken.insert(*block, &peer.name);
            blocks.push(*block);
        }
        out.push(Peer {
            blocks,
            ..peer.clone()
        });
    }
    out
}

/// Blocks already given out in [`usable_peers`], by network address. Those after this
/// node's own never overlap, so the one that could contain a block is the last starting at
/// or below it: an overlap check is two ordered lookups, not a scan (a scan made each pass
/// quadratic: 1000 peers, 5 * 10^5 comparisons, 4% of the machine in a 1000-agent lab).
#[derive(Default)]
struct TakenBlocks<'a> {
    by_start: BTreeMap<u32, (Ipv4Net, &'a str)>,
}

impl<'a> TakenBlocks<'a> {
    fn insert(&mut self, block: Ipv4Net, holder: &'a str) {
        self.by_start
            .insert(u32::from(block.network()), (block, holder));
    }

    /// The holder of a taken block that contains `block` or lies inside it.
    fn overlapping(&self, block: Ipv4Net) -> Option<&'a str> {
        let (start, end) = (u32::from(block.network()), u32::from(block.broadcast()));
        let inside = self.by_start.range(start..=end).next();
        let around = self
            .by_start
            .range(..start)
            .next_back()
            .filter(|(_, (t, _))| t.contains(&block.network()));
        inside.or(around).map(|(_, (_, holder))| *holder)
    }
}

/// A link under one of Twill's device names that is not of the kind Twill makes (`kind`, as
/// the kernel reports it): someone else's, so it is left alone and the problem says so.
fn foreign_link<'a>(
    observed: Option<&'a ObservedDevice>,
    kind: &str,
    what: &str,
    problems: &mut Vec<String>,
) -> Option<&'a ObservedDevice> {
    let d = observed.filter(|d| d.kind.as_deref() != Some(kind))?;
    problems.push(format!(
        "link {} exists but is a {} device, not {what}; delete it",
        d.name,
        d.kind.as_deref().unwrap_or("plain")
    ));
    Some(d)
}

/// What the kernel holds once every one of `ops` was done to `observed`, when that is
/// known exactly: for routes and blackholes, the only ops of a pass that only peers' blocks
/// changed. None when `ops` touch anything else (devices, neighbour and FDB entries): the
/// next pass reads the kernel again. Lets a pass driven by a change diff against the state
/// the last pass left instead of dumping the routing table: at 1000 peers every change
/// pass dumped 1000 routes, in each of 1000 lab namespaces during a cold start. Pure.
pub fn after(mut observed: Observed, ops: &[Op]) -> Option<Observed> {
    fn remove<T: PartialEq>(list: &mut Vec<T>, x: &T) {
        if let Some(i) = list.iter().position(|y| y == x) {
            list.swap_remove(i);
        }
    }
    for op in ops {
        match op {
            Op::AddRoute(r) => observed.routes.push(r.clone()),
            Op::DeleteRoute(r) => remove(&mut observed.routes, r),
            Op::ReplaceRoute { old, new } => {
                remove(&mut observed.routes, old);
                observed.routes.push(new.clone());
            }
            Op::AddBlackhole(b) => observed.blackholes.push(*b),
            Op::DeleteBlackhole(b) => remove(&mut observed.blackholes, b),
            _ => return None,
        }
    }
    Some(observed)
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
    let foreign_device = foreign_link(
        observed.device.as_ref(),
        "vxlan",
        "Twill's VXLAN device: left alone, no tunnel",
        &mut plan.problems,
    );
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
    // The TUN (udp): its datapath creates it, the reconcile sets it or, when no backend
    // wants it any more, deletes it (its routes go with it).
    let foreign_tun = foreign_link(
        observed.tun.as_ref(),
        "tun",
        "Twill's TUN: left alone, no udp datapath",
        &mut plan.problems,
    );
    let mut tun_gone = false;
    let mut tun_missing = None;
    match (&desired.tun, observed.tun.as_ref()) {
        (_, Some(_)) if foreign_tun.is_some() => {}
        (None, Some(d)) => {
            removals.push(Op::DeleteDevice(d.name.clone()));
            tun_gone = true;
        }
        (None, None) => {}
        (Some(spec), None) => {
            plan.problems.push(format!(
                "link {} does not exist: the udp datapath creates it (see datapath.log in twilld's state dir); the routes through it wait for it",
                spec.name
            ));
            tun_missing = Some(spec.name.as_str());
        }
        (Some(spec), Some(d)) => device_ops.extend(adjust_tun(spec, d)),
    }
    let usable_device = |dev: &str| {
        foreign_device.is_none_or(|d| d.name != dev)
            && foreign_tun.is_none_or(|d| d.name != dev)
            && tun_missing != Some(dev)
    };
    let survives = |dev: &str| {
        !((device_gone && observed.device.as_ref().is_some_and(|d| d.name == dev))
            || (tun_gone && observed.tun.as_ref().is_some_and(|d| d.name == dev)))
    };

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

    // Blackholes, by destination: a released block's goes, a new block's comes. They
    // are removed before routes are added, so a block moving between this node and a
    // peer never meets its old route.
    let have_bh: BTreeSet<Ipv4Net> = observed.blackholes.iter().copied().collect();
    let want_bh: BTreeSet<Ipv4Net> = desired.blackholes.iter().copied().collect();
    removals.extend(
        have_bh
            .difference(&want_bh)
            .map(|d| Op::DeleteBlackhole(*d)),
    );
    for dst in want_bh.difference(&have_bh) {
        if let Some(f) = observed
            .foreign_routes
            .iter()
            .find(|f| f.dst == *dst && f.metric == 0)
        {
            plan.problems.push(format!(
                "a route to {dst} already exists, installed by protocol {} (not Twill): left alone, so blackhole {dst} is not installed and addresses of the block no pod holds are not dropped; remove that route",
                f.protocol
            ));
            continue;
        }
        route_adds.push(Op::AddBlackhole(*dst));
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
        Op::DeleteRoute(_) | Op::DeleteBlackhole(_) => 0,
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

/// MTU, address and up for the TUN its datapath made.
fn adjust_tun(spec: &TunSpec, d: &ObservedDevice) -> Vec<Op> {
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
    if let Some(net) = spec.address.filter(|n| !d.addresses.contains(n)) {
        ops.push(Op::AddDeviceAddress { dev: dev(), net });
    }
    if !d.up {
        ops.push(Op::SetUp(dev()));
    }
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
