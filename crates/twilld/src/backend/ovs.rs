//! `ovs` (the Open vSwitch walk-through's GRE mesh, kept by the agent): an OVS
//! integration bridge [`BRIDGE`] with the host's internal port [`OVS_DEVICE`] (OpenFlow
//! port 1) and ONE flow-based tunnel port (`twl-gre` or `twl-vxlan`, OpenFlow port 10,
//! `options:remote_ip=flow`), plus two flows per remote block and one per remote node (see
//! [`twill_ovs::flows`]).
//!
//! Why one flow-based port and not a port per peer: a node joining or leaving changes
//! flows only (one atomic `ovs-ofctl --bundle`), never the database or ovs-vswitchd's port
//! set (with the netdev datapath, a port change reconfigures the datapath); the port count
//! stays 2 at any cluster size; and the flow per remote block also filters what comes in
//! (only a known peer, with a source in its own blocks).
//!
//! # Kernel state (the plan, pure)
//! One `proto 0x54` route per remote block: `BLOCK via 169.254.84.84 dev DEV onlink` (an
//! OVS flow answers ARP for that address), once `twl.ovs` exists. DEV is the pods' bridge
//! twl0 with bridge wiring, `twl.ovs` being one of its ports (the walk-through's `brctl
//! addif docker0 obr0`; twilld makes twl0 when no pod has yet), and `twl.ovs` itself with
//! l3 wiring (see [`twill_ovs::join`]). Pod MTU: the
//! uplink's less [`TunnelType::overhead`] (gre 38, vxlan 50); `twl.ovs` gets the same
//! (`mtu_request`), and a fixed MAC ([`super::vtep_mac`] of the node IP).
//!
//! # OVS state (sync, the I/O edge)
//! Each pass reads the database (one `ovs-vsctl list`), plans one transaction for what
//! differs ([`twill_ovs::db::plan`]), reads Twill's flows by cookie and applies the
//! difference as one bundle, brings `twl.ovs` up with offloads off (the userspace datapath
//! does not take TSO/GSO/checksum-offloaded packets from the kernel). What matches is left
//! alone, so a restarted twilld makes no change at all. With the netdev datapath, each
//! peer's next hop goes into ovs-vswitchd's tunnel neighbour cache from the host's
//! neighbours (`tnl/neigh/set`, see [`twill_ovs::neigh`]: otherwise OVS drops the first
//! packet to a peer that ARPed this node first). Everything is marked
//! (`external_ids:twill-owner=twilld`, cookie `0x5477…`); nothing else is touched.
//!
//! # Faults
//! A thread probes ovsdb-server's `db.sock` and both daemons' control sockets every
//! [`PROBE`], reading their PIDs from the sockets' names; a change (down, up, or another
//! PID: a restart shorter than one probe) is an event and a pass. While either is down the problem (with the
//! fix) is in /readyz; once back, everything is programmed again (ovs-vswitchd loses its
//! flows and the internal port's device when it dies). Missing or old tools: the error
//! names the package.

use super::{usable_peers, vtep_mac, Backend, BackendError, BackendKind, Desired, Event};
use super::{Events, Local, MetricsSource, Peer, Reaction, RouteEntry};
use crate::log;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twill_api::backend::{TunnelType, OVS_VXLAN_PORT};
use twill_api::wiring::PodWiring;
use twill_ovs::db::{self, BridgeWant, IfaceWant, PortWant, Snapshot};
use twill_ovs::flows::{self, FlowPeer, GATEWAY, HOST_PORT, TUNNEL_PORT};
use twill_ovs::join::{self, LinkState};
use twill_ovs::neigh;
use twill_ovs::tools::Tools;
use twill_ovs::Datapath;

/// The host's internal port on Twill's bridge.
pub const OVS_DEVICE: &str = twill_ovs::HOST_DEVICE;
/// Twill's integration bridge.
pub const BRIDGE: &str = twill_ovs::INTEGRATION_BRIDGE;
/// The pod bridge `twl.ovs` joins with bridge wiring: the one twilld's hand-off gives
/// twill-cni (`bridge` in the conflist it writes).
pub const POD_BRIDGE: &str = twill_api::cni::netconf::DEFAULT_BRIDGE;
/// Where OVS keeps its sockets unless `--ovs-rundir` says otherwise.
pub const DEFAULT_RUNDIR: &str = "/var/run/openvswitch";
/// How often the daemons' sockets are probed.
pub const PROBE: Duration = Duration::from_millis(500);

/// The tunnel port's name for `t`.
pub fn tunnel_port(t: TunnelType) -> String {
    format!("twl-{}", t.name())
}

/// The `ovs` backend: see the module docs.
pub struct Ovs {
    pub tunnel: TunnelType,
    tools: Tools,
    events: Option<Events>,
    monitor: Option<Monitor>,
    version: Option<(u32, u32)>,
    /// How often the daemons are probed.
    probe: Duration,
    /// `twl.ovs` as the last pass left it (None: not made by ovs-vswitchd yet, so no
    /// route can use it).
    device: Option<LinkState>,
    /// The ovs-vswitchd the last pass saw (a new PID: it was restarted).
    vswitchd_pid: Option<u32>,
    /// From the last sync, shown in the next plan (so in /readyz).
    problems: Vec<String>,
    shared: Arc<Shared>,
}

/// Counters for /metrics.
#[derive(Default)]
pub struct Shared {
    transactions: AtomicU64,
    flow_changes: AtomicU64,
    vswitchd_restarts: AtomicU64,
    db_up: AtomicBool,
    vswitchd_up: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ovs::Shared")
    }
}

impl MetricsSource for Shared {
    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let up = |a: &AtomicBool| u8::from(a.load(Ordering::Relaxed));
        let _ = write!(
            out,
            "# HELP twill_ovs_transactions_total OVSDB transactions twilld made.\n\
             # TYPE twill_ovs_transactions_total counter\n\
             twill_ovs_transactions_total {}\n\
             # HELP twill_ovs_flow_changes_total Flows twilld added or deleted.\n\
             # TYPE twill_ovs_flow_changes_total counter\n\
             twill_ovs_flow_changes_total {}\n\
             # HELP twill_ovs_vswitchd_restarts_total Times a pass found ovs-vswitchd under another PID.\n\
             # TYPE twill_ovs_vswitchd_restarts_total counter\n\
             twill_ovs_vswitchd_restarts_total {}\n\
             # HELP twill_ovs_up Whether the OVS daemon answers on its socket.\n\
             # TYPE twill_ovs_up gauge\n\
             twill_ovs_up{{daemon=\"ovsdb-server\"}} {}\n\
             twill_ovs_up{{daemon=\"ovs-vswitchd\"}} {}\n",
            g(&self.transactions),
            g(&self.flow_changes),
            g(&self.vswitchd_restarts),
            up(&self.db_up),
            up(&self.vswitchd_up),
        );
    }
}

/// The daemons' liveness changed.
#[derive(Debug)]
struct Health;

/// Something the plan depends on changed in sync (the device, the problems).
#[derive(Debug)]
struct Changed;

impl Ovs {
    pub fn new(tunnel: TunnelType, rundir: &Path) -> Ovs {
        Ovs {
            tunnel,
            tools: Tools::new(rundir),
            events: None,
            monitor: None,
            version: None,
            probe: PROBE,
            device: None,
            vswitchd_pid: None,
            problems: Vec::new(),
            shared: Arc::default(),
        }
    }

    /// Runs every tool (ovs-vsctl, ovs-ofctl, ip, ethtool) as `prefix… tool …` (tests:
    /// `ip netns exec NS`, where the node's OVS and devices are).
    pub fn with_prefix(mut self, prefix: Vec<String>) -> Ovs {
        self.tools = self.tools.with_prefix(prefix);
        self
    }

    /// Probes the daemons every `every` instead of [`PROBE`] (tests: a restart shorter
    /// than one probe, which only its new PID shows).
    pub fn with_probe(mut self, every: Duration) -> Ovs {
        self.probe = every;
        self
    }

    pub fn rundir(&self) -> &Path {
        self.tools.rundir()
    }

    /// `twl.ovs` now: None when it does not exist (or cannot be read).
    fn device_state(&self) -> Option<LinkState> {
        self.tools.link(OVS_DEVICE).ok().flatten()
    }

    /// Joins `twl.ovs` to the pod network ([`join::plan`]): with bridge wiring a port of
    /// [`POD_BRIDGE`] (made when missing), with l3 on its own. Returns (failures,
    /// problems).
    fn join_pod_network(&self, local: &Local, device: &LinkState) -> (Vec<String>, Vec<String>) {
        let (mut failures, mut problems) = (Vec::new(), Vec::new());
        let pod_bridge = pod_bridge(local);
        let bridge = match pod_bridge {
            Some(name) => match self.tools.link(name) {
                Ok(b) => b,
                Err(e) => {
                    failures.push(format!("ovs: cannot read the pods' bridge {name}: {e}"));
                    return (failures, problems);
                }
            },
            None => None,
        };
        let plan = join::plan(
            pod_bridge,
            device,
            bridge.as_ref(),
            self.pod_mtu(local),
            join::pod_bridge_mac(local.address),
        );
        problems.extend(plan.problem);
        for c in &plan.commands {
            match self.tools.run(c.tool, &c.args, None) {
                Ok(_) => log::info("ovs: programmed", &[("op", &c.to_string())]),
                Err(e) => {
                    failures.push(format!(
                        "ovs: cannot join {OVS_DEVICE} to the pod network: {e}"
                    ));
                    break;
                }
            }
        }
        (failures, problems)
    }

    /// Brings twl.ovs up with offloads off; returns what failed.
    fn prepare_device(&self, up: bool) -> Vec<String> {
        let mut failures = Vec::new();
        if !up {
            let args: Vec<String> = ["link", "set", "dev", OVS_DEVICE, "up"]
                .map(String::from)
                .into();
            match self.tools.run("ip", &args, None) {
                Ok(_) => log::info(
                    "ovs: programmed",
                    &[("op", &format!("ip {}", args.join(" ")))],
                ),
                Err(e) => failures.push(format!("ovs: cannot bring {OVS_DEVICE} up: {e}")),
            }
        }
        let shown = self
            .tools
            .run("ethtool", &["-k".into(), OVS_DEVICE.into()], None);
        let on = |text: &str, feature: &str| {
            text.lines()
                .any(|l| l.starts_with(feature) && l.contains(": on"))
        };
        match shown {
            Ok(k)
                if on(&k, "tcp-segmentation-offload")
                    || on(&k, "generic-segmentation-offload")
                    || on(&k, "tx-checksumming") =>
            {
                let args: Vec<String> = ["-K", OVS_DEVICE, "tso", "off", "gso", "off", "tx", "off"]
                    .map(String::from)
                    .into();
                match self.tools.run("ethtool", &args, None) {
                    Ok(_) => log::info(
                        "ovs: programmed",
                        &[("op", &format!("ethtool {}", args.join(" ")))],
                    ),
                    Err(e) => failures.push(format!(
                        "ovs: cannot turn offloads off on {OVS_DEVICE} (TCP through OVS's userspace datapath fails with them): {e}"
                    )),
                }
            }
            Ok(_) => {}
            Err(e) => failures.push(format!(
                "ovs: cannot read {OVS_DEVICE}'s offloads ({e}); install ethtool"
            )),
        }
        failures
    }

    /// The MTU of twl.ovs and of a pod bridge twilld makes: the uplink's less the tunnel.
    fn pod_mtu(&self, local: &Local) -> u32 {
        local.mtu_uplink.saturating_sub(self.tunnel.overhead())
    }

    /// The bridge and ports this node wants.
    fn want(&self, local: &Local, datapath: Datapath) -> BridgeWant {
        let mut options = std::collections::BTreeMap::from([
            ("remote_ip".to_string(), "flow".to_string()),
            ("local_ip".to_string(), local.address.to_string()),
        ]);
        if self.tunnel == TunnelType::Vxlan {
            options.insert("dst_port".into(), OVS_VXLAN_PORT.to_string());
        }
        BridgeWant {
            name: BRIDGE.into(),
            datapath_type: datapath.db_name().into(),
            ports: vec![
                PortWant {
                    name: OVS_DEVICE.into(),
                    iface: IfaceWant {
                        kind: "internal".into(),
                        options: Default::default(),
                        ofport_request: HOST_PORT.into(),
                        mac: Some(flows::format_mac(&vtep_mac(local.address))),
                        mtu_request: Some(self.pod_mtu(local).into()),
                    },
                },
                PortWant {
                    name: tunnel_port(self.tunnel),
                    iface: IfaceWant {
                        kind: self.tunnel.name().into(),
                        options,
                        ofport_request: TUNNEL_PORT.into(),
                        mac: None,
                        mtu_request: None,
                    },
                },
            ],
        }
    }

    /// The whole OVS side of a pass: returns (failures, problems).
    fn program(&mut self, local: &Local, peers: &[Peer]) -> (Vec<String>, Vec<String>) {
        let mut failures = Vec::new();
        let mut problems = Vec::new();
        let rundir = self.rundir().display().to_string();
        if self.version.is_none() {
            match self.tools.version() {
                Ok(v) => {
                    log::info(
                        "ovs: Open vSwitch found",
                        &[("version", &format!("{}.{}", v.0, v.1))],
                    );
                    self.version = Some(v);
                }
                Err(e) => {
                    problems.push(e.to_string());
                    return (failures, problems);
                }
            }
        }
        let live = self.tools.liveness();
        let (db_up, vswitchd_up) = (live.db_up, live.vswitchd_pid.is_some());
        if let (Some(was), Some(now)) = (self.vswitchd_pid, live.vswitchd_pid) {
            if was != now {
                self.shared
                    .vswitchd_restarts
                    .fetch_add(1, Ordering::Relaxed);
                log::warn(
                    "ovs: ovs-vswitchd was restarted: programming its flows again",
                    &[("old_pid", &was), ("pid", &now)],
                );
            }
        }
        if live.vswitchd_pid.is_some() {
            self.vswitchd_pid = live.vswitchd_pid;
        }
        self.shared.db_up.store(db_up, Ordering::Relaxed);
        self.shared
            .vswitchd_up
            .store(vswitchd_up, Ordering::Relaxed);
        if !db_up {
            problems.push(format!(
                "ovs: ovsdb-server does not answer on {rundir}/db.sock: start it (OVS_RUNDIR={rundir} ovsdb-server --remote=punix:{rundir}/db.sock --detach …) or point --ovs-rundir at its run directory; Twill programs OVS again once it answers"
            ));
            return (failures, problems);
        }
        let snap = match self.tools.snapshot() {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("ovs: cannot read the database: {e}"));
                return (failures, problems);
            }
        };
        let datapath = Datapath::detect(Path::new(twill_ovs::MODULE_PATH).exists());
        if datapath == Datapath::Netdev {
            problems.extend(uplink_problem(local, &snap));
        }
        let plan = db::plan(&self.want(local, datapath), &snap);
        problems.extend(plan.problems.iter().cloned());
        if !plan.commands.is_empty() {
            let args = plan.args();
            match self.tools.vsctl(&args, vswitchd_up) {
                Ok(_) => {
                    self.shared.transactions.fetch_add(1, Ordering::Relaxed);
                    log::info(
                        "ovs: programmed",
                        &[("op", &format!("ovs-vsctl {}", args.join(" ")))],
                    );
                }
                Err(e) => failures.push(format!("ovs: {e}")),
            }
        }
        if !vswitchd_up {
            problems.push(format!(
                "ovs: ovs-vswitchd is not running (no live ovs-vswitchd.*.ctl in {rundir}): start it (OVS_RUNDIR={rundir} ovs-vswitchd unix:{rundir}/db.sock --detach …); its flows die with it and Twill programs them again once it is back"
            ));
            self.device = None;
            return (failures, problems);
        }
        if !plan.problems.is_empty() {
            // Not Twill's bridge: nothing more to do on it.
            return (failures, problems);
        }
        match self.device_state() {
            Some(device) => {
                failures.extend(self.prepare_device(device.up));
                let (f, p) = self.join_pod_network(local, &device);
                failures.extend(f);
                problems.extend(p);
                // As the join left it: the routes' device follows.
                self.device = self.device_state().or(Some(device));
            }
            None => {
                self.device = None;
                failures.push(format!(
                    "ovs: ovs-vswitchd has not made {OVS_DEVICE} yet (see its log in {rundir})"
                ));
            }
        }
        let mut sink = Vec::new();
        let flow_peers: Vec<FlowPeer> = usable_peers(local, peers, &mut sink)
            .into_iter()
            .map(|p| FlowPeer {
                address: p.address,
                blocks: p.blocks,
            })
            .collect();
        let want = flows::table(vtep_mac(local.address), &flow_peers);
        match self.tools.flow_cookies(BRIDGE) {
            Ok(have) => {
                let script = flows::script(&want, &have);
                if !script.is_empty() {
                    match self.tools.apply_flows(BRIDGE, &script) {
                        Ok(()) => {
                            let n = script.lines().count() as u64;
                            self.shared.flow_changes.fetch_add(n, Ordering::Relaxed);
                            log::info(
                                "ovs: programmed flows",
                                &[
                                    ("bridge", &BRIDGE),
                                    ("changes", &n),
                                    ("script", &script.trim()),
                                ],
                            );
                        }
                        Err(e) => failures.push(format!("ovs: flows: {e}")),
                    }
                }
            }
            Err(e) => failures.push(format!("ovs: cannot read the flows of {BRIDGE}: {e}")),
        }
        // The userspace datapath builds the outer header from its own neighbour cache and
        // drops a packet that misses it (twill_ovs::neigh): fill it from the host's.
        let uplink_bridge = snap.bridge_of_port(&local.uplink).map(|b| b.name.clone());
        if let (Datapath::Netdev, Some(bridge)) = (datapath, uplink_bridge) {
            let flux = self.arp_flux(&snap, &bridge);
            if flux.is_empty() {
                let addresses: Vec<Ipv4Addr> = flow_peers.iter().map(|p| p.address).collect();
                let (f, p) = self.prime_neighbours(&bridge, &addresses);
                failures.extend(f);
                problems.extend(p);
            }
            problems.extend(flux);
        }
        (failures, problems)
    }

    /// The kernel ports of `bridge` (the node IP's) that answer ARP for the node IP with
    /// their own MAC ([`neigh::arp_flux`]), as problems with the fix. While there is one,
    /// the cluster's nodes are taken to be set up alike, and the host's neighbours are not
    /// copied into OVS (they may hold a peer port's MAC).
    fn arp_flux(&self, snap: &Snapshot, bridge: &str) -> Vec<String> {
        snap.system_interfaces(bridge)
            .into_iter()
            .filter_map(|port| match self.tools.arp_ignore(&port) {
                Ok(v) if neigh::arp_flux(&v) => Some(format!(
                    "ovs: {port}, a port of {bridge}, answers ARP for this node's IP with its own MAC (arp_ignore 0), so peers may learn a MAC on which OVS takes no tunnel packets: sysctl -w net.ipv4.conf.{port}.arp_ignore=1 on every node"
                )),
                Ok(_) => None,
                Err(e) => Some(format!("ovs: cannot read arp_ignore of {port}: {e}")),
            })
            .collect()
    }

    /// Puts every peer's next hop into ovs-vswitchd's tunnel neighbour cache of `bridge`
    /// with the MAC the host's kernel has; a next hop the kernel has not resolved yet is
    /// asked for (NTF_USE) and looked at again for up to [`RESOLVE_WAIT`]. Returns
    /// (failures, problems); a next hop still unknown is both (the pass is retried soon).
    fn prime_neighbours(&self, bridge: &str, peers: &[Ipv4Addr]) -> (Vec<String>, Vec<String>) {
        let (mut failures, mut problems) = (Vec::new(), Vec::new());
        if peers.is_empty() {
            return (failures, problems);
        }
        let read = || -> Result<neigh::NeighPlan, twill_ovs::Error> {
            let routes = self.tools.kernel_routes()?;
            let kernel = self.tools.kernel_neighbours()?;
            let cache = self.tools.tunnel_neighbours()?;
            Ok(neigh::plan(bridge, peers, &routes, &kernel, &cache))
        };
        let mut plan = match read() {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!(
                    "ovs: cannot fill ovs-vswitchd's tunnel neighbour cache (the first packet to a peer may be dropped): {e}"
                ));
                return (failures, problems);
            }
        };
        if !plan.unresolved.is_empty() {
            for (_, hop, dev) in &plan.unresolved {
                if let Err(e) = self.tools.kernel_resolve(*hop, dev) {
                    failures.push(format!("ovs: cannot ask the kernel to resolve {hop}: {e}"));
                }
            }
            let started = Instant::now();
            while started.elapsed() < RESOLVE_WAIT {
                std::thread::sleep(RESOLVE_WAIT / 10);
                match read() {
                    Ok(p) => plan = p,
                    Err(_) => break,
                }
                if plan.unresolved.is_empty() {
                    break;
                }
            }
        }
        for (ip, mac) in &plan.set {
            match self.tools.set_tunnel_neighbour(bridge, *ip, mac) {
                Ok(()) => log::info(
                    "ovs: programmed",
                    &[(
                        "op",
                        &format!(
                            "ovs-appctl tnl/neigh/set {bridge} {ip} {}",
                            flows::format_mac(mac)
                        ),
                    )],
                ),
                Err(e) => failures.push(format!("ovs: tunnel neighbour {ip}: {e}")),
            }
        }
        for (peer, hop, dev) in &plan.unresolved {
            let what = if hop == peer {
                format!("peer {peer}")
            } else {
                format!("{hop}, the next hop to peer {peer},")
            };
            let text = format!(
                "ovs: {what} does not answer ARP on {dev}: OVS's userspace datapath drops tunnel packets to it until it does; is the peer up and on this network? (ip neigh show {hop}; ovs-appctl tnl/neigh/show)"
            );
            failures.push(text.clone());
            problems.push(text);
        }
        for peer in &plan.unrouted {
            problems.push(format!(
                "ovs: no route to peer {peer}: its tunnel packets cannot leave this node; add one (ip route get {peer})"
            ));
        }
        (failures, problems)
    }
}

/// How long a pass waits for the kernel to resolve a next hop it asked for (a LAN answers
/// in well under a millisecond, a loaded host in tens).
const RESOLVE_WAIT: Duration = Duration::from_millis(200);

/// The pod bridge `twl.ovs` joins: [`POD_BRIDGE`] with bridge wiring, none with l3.
fn pod_bridge(local: &Local) -> Option<&'static str> {
    match local.pod_wiring {
        PodWiring::Bridge => Some(POD_BRIDGE),
        PodWiring::L3 => None,
    }
}

/// With the netdev datapath, OVS routes and sends the outer packets itself: the node IP
/// must be on an OVS bridge's internal port of that datapath.
fn uplink_problem(local: &Local, snap: &Snapshot) -> Option<String> {
    let on_ovs = snap
        .interface(&local.uplink)
        .is_some_and(|i| i.kind == "internal")
        && snap
            .bridge_of_port(&local.uplink)
            .is_some_and(|b| b.datapath_type == "netdev");
    if on_ovs {
        return None;
    }
    let (ip, dev, len) = (local.address, &local.uplink, local.uplink_cidr.prefix_len());
    Some(format!(
        "ovs: with the netdev (userspace) datapath OVS sends the tunnel packets itself, out of an OVS bridge holding the node IP, but {ip} is on {dev}, not on an OVS netdev bridge: move it (ovs-vsctl add-br br-phy -- set bridge br-phy datapath_type=netdev; ovs-vsctl add-port br-phy {dev}; ip addr del {ip}/{len} dev {dev}; ip addr add {ip}/{len} dev br-phy; ip link set br-phy up; ethtool -K br-phy tso off gso off tx off; sysctl -w net.ipv4.conf.{dev}.arp_ignore=1)"
    ))
}

impl Backend for Ovs {
    fn kind(&self) -> BackendKind {
        BackendKind::Ovs
    }

    fn mtu_overhead(&self) -> u32 {
        self.tunnel.overhead()
    }

    fn devices(&self) -> &'static [&'static str] {
        &[OVS_DEVICE]
    }

    fn start(&mut self, events: &Events, _now: Instant) -> Result<(), BackendError> {
        self.events = Some(events.clone());
        // What is already there (a restart): routes through it are kept from the first pass.
        self.device = self.device_state();
        self.monitor = Some(
            Monitor::start(self.tools.clone(), events.clone(), self.probe).map_err(|e| {
                BackendError::Start {
                    kind: BackendKind::Ovs,
                    reason: format!("cannot start the OVS probe thread: {e}"),
                }
            })?,
        );
        Ok(())
    }

    fn plan(&self, local: &Local, peers: &[Peer]) -> Desired {
        let mut desired = Desired::default();
        let usable = usable_peers(local, peers, &mut desired.problems);
        desired.problems.extend(self.problems.iter().cloned());
        let Some(device) = &self.device else {
            return desired;
        };
        let dev = join::route_device(pod_bridge(local), device);
        for p in usable {
            for b in &p.blocks {
                desired.routes.push(RouteEntry {
                    dst: b.trunc(),
                    via: GATEWAY,
                    dev: dev.into(),
                    onlink: true,
                });
            }
        }
        desired
    }

    fn sync(&mut self, local: &Local, peers: &[Peer]) -> Vec<String> {
        let device = self.device.clone();
        let (failures, problems) = self.program(local, peers);
        if problems != self.problems || device != self.device {
            self.problems = problems;
            if let Some(e) = &self.events {
                e.send(Changed);
            }
        }
        failures
    }

    fn on_event(&mut self, event: Event, _now: Instant) -> Reaction {
        match event {
            Event::Message(m) if m.is::<Health>() || m.is::<Changed>() => Reaction::Reconcile,
            _ => Reaction::Idle,
        }
    }

    fn metrics(&self) -> Option<Arc<dyn MetricsSource>> {
        Some(self.shared.clone())
    }

    fn stop(&mut self) {
        if let Some(mut m) = self.monitor.take() {
            m.stop();
        }
        self.events = None;
    }
}

/// Probes the daemons every [`PROBE`]; a change of either (down, up, or another PID) is a
/// [`Health`] event.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    fn start(tools: Tools, events: Events, every: Duration) -> std::io::Result<Monitor> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("twilld-ovs-probe".into())
            .spawn(move || {
                // By PID, not only up/down: a daemon killed and started again within one
                // probe is a change too (its flows and twl.ovs died with it).
                let mut last = tools.liveness();
                while !flag.load(Ordering::Relaxed) {
                    sleep_unless(&flag, every);
                    let now = tools.liveness();
                    if now != last {
                        let pid = |p: Option<u32>| p.map_or("-".to_string(), |p| p.to_string());
                        log::warn(
                            "ovs: daemon state changed",
                            &[
                                ("ovsdb_server_up", &now.db_up),
                                ("ovsdb_server_pid", &pid(now.db_pid)),
                                ("ovs_vswitchd_pid", &pid(now.vswitchd_pid)),
                            ],
                        );
                        last = now;
                        if !events.send(Health) {
                            return;
                        }
                    }
                }
            })?;
        Ok(Monitor {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps `d`, in steps of at most 100 ms so a stop is seen soon.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The run directory `--ovs-rundir` names (for [`super::select`]).
pub fn rundir_or_default(dir: Option<&Path>) -> PathBuf {
    dir.map_or_else(|| PathBuf::from(DEFAULT_RUNDIR), Path::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::wiring::PodWiring;

    fn local() -> Local {
        Local {
            name: "n1".into(),
            address: "192.0.2.11".parse().unwrap(),
            uplink: "br-phy".into(),
            uplink_cidr: "192.0.2.0/24".parse().unwrap(),
            blocks: vec!["10.244.1.0/24".parse().unwrap()],
            mtu_uplink: 1500,
            pod_wiring: PodWiring::L3,
        }
    }

    fn peer(name: &str, ip: &str, block: &str) -> Peer {
        Peer {
            name: name.into(),
            address: ip.parse().unwrap(),
            blocks: vec![block.parse().unwrap()],
            vtep_mac: None,
        }
    }

    #[test]
    fn routes_go_into_twl_ovs_once_it_exists_and_problems_show() {
        let mut o = Ovs::new(TunnelType::Gre, Path::new("/nonexistent"));
        let peers = [
            peer("n2", "192.0.2.12", "10.244.2.0/24"),
            peer("n3", "192.0.2.11", "10.244.3.0/24"),
        ];
        let d = o.plan(&local(), &peers);
        assert!(d.routes.is_empty());
        assert_eq!(
            d.problems.len(),
            1,
            "n3 uses this node's IP: {:?}",
            d.problems
        );
        o.device = Some(LinkState {
            up: true,
            master: None,
            kind: Some("tun".into()),
        });
        o.problems = vec!["ovs: ovs-vswitchd is not running".into()];
        let d = o.plan(&local(), &peers);
        assert_eq!(
            d.routes,
            [RouteEntry {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: GATEWAY,
                dev: OVS_DEVICE.into(),
                onlink: true
            }]
        );
        assert_eq!(d.problems.len(), 2);
        // Bridge wiring, twl.ovs a port of twl0: the routes go via the pods' bridge.
        let bridged = Local {
            pod_wiring: PodWiring::Bridge,
            ..local()
        };
        assert_eq!(
            o.plan(&bridged, &peers).routes[0].dev,
            "twl.ovs",
            "not joined yet"
        );
        o.device.as_mut().unwrap().master = Some("twl0".into());
        assert_eq!(o.plan(&bridged, &peers).routes[0].dev, "twl0");
        assert_eq!(o.plan(&local(), &peers).routes[0].dev, "twl.ovs", "l3");
        assert_eq!(o.mtu_overhead(), 38);
        assert_eq!(
            Ovs::new(TunnelType::Vxlan, Path::new("/x")).mtu_overhead(),
            50
        );
    }

    #[test]
    fn the_bridge_wanted_has_the_host_port_and_one_flow_based_tunnel() {
        let o = Ovs::new(TunnelType::Vxlan, Path::new("/x"));
        let w = o.want(&local(), Datapath::Netdev);
        assert_eq!(w.name, "twl-int");
        assert_eq!(w.datapath_type, "netdev");
        let names: Vec<&str> = w.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["twl.ovs", "twl-vxlan"]);
        assert!(names.iter().all(|n| n.len() <= 15));
        assert_eq!(w.ports[0].iface.mtu_request, Some(1450));
        assert_eq!(w.ports[0].iface.mac.as_deref(), Some("0a:54:c0:00:02:0b"));
        let opts = &w.ports[1].iface.options;
        assert_eq!(opts["remote_ip"], "flow");
        assert_eq!(opts["local_ip"], "192.0.2.11");
        assert_eq!(opts["dst_port"], "4789");
    }

    #[test]
    fn the_uplink_must_be_an_ovs_netdev_bridge_with_the_netdev_datapath() {
        let p = uplink_problem(&local(), &Snapshot::default()).unwrap();
        assert!(
            p.contains("192.0.2.11 is on br-phy, not on an OVS netdev bridge"),
            "{p}"
        );
        assert!(p.contains("ovs-vsctl add-port br-phy br-phy") || p.contains("add-port br-phy"));
    }
}
