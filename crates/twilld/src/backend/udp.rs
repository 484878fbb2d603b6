//! `udp` (flannel's first backend, made fast): a TUN device ([`TUN_DEVICE`]) and a
//! userspace datapath (the `twill-datapath` crate) that reads each pod packet the kernel
//! routes into the TUN, finds the node holding its destination by longest-prefix match and
//! sends it, bare, in one UDP datagram to that node's port (8285 unless the network config
//! says `port`); the far datapath admits it only from a known peer with an inner source in
//! that peer's blocks and writes it into its own TUN.
//!
//! # Kernel state (the plan, pure)
//! - the TUN: MTU = uplink − [`UDP_OVERHEAD`] (outer IPv4 + UDP), so an outer datagram
//!   never exceeds the uplink and a DF packet too large for the tunnel gets "frag needed"
//!   from the kernel before it reaches the datapath; its address is the `.0/32` of this
//!   node's first block, as flannel gives flannel0 (the source of what the node itself
//!   sends to remote pods);
//! - one `proto 0x54` route per remote block, `dev twl.tun scope link` (no gateway: the
//!   datapath, not ARP, picks the node).
//!
//! The datapath creates the TUN (`/dev/net/tun`, persistent, multi-queue, vnet headers);
//! the reconcile only sets MTU, address, routes and up. Conflicting peers and blocks are
//! dropped as for every backend ([`usable_peers`]), so the kernel routes and the
//! datapath's peer table always agree.
//!
//! # The datapath process
//! It runs apart from twilld (`/proc/self/exe datapath --ctl <state-dir>/datapath.sock
//! --tun twl.tun --port P --bind <node IP>`, in its own session, no parent-death signal,
//! output to `<state-dir>/datapath.log`), so killing twilld, even with SIGKILL, does not stop
//! forwarding: the datapath goes on with its last peer table.
//! - [`Backend::sync`] (the node IP is known by then) connects to the socket; a datapath
//!   that answers `HelloAck` with this protocol, this TUN, and (its command line says) this
//!   port and node IP is adopted; one that does not fit is told to stop (its TUN stays) and a
//!   new one is started, waited for up to [`SPAWN_WAIT`]. Then the peer table goes to it,
//!   only when it changed ([`table`]).
//! - A thread waits on the datapath's pidfd: its exit is an event, and the next pass starts
//!   a new one with the dead one's TUN queues and receive sockets (`--inherit-fds`, the
//!   HelloAck dups twilld kept): the queues never detach, so packets wait in them instead of
//!   being dropped; if it will not start with them, a fresh one re-attaches to the
//!   persistent TUN by name (its routes stayed meanwhile).
//! - [`Backend::stop`] closes the connection and leaves the datapath running. When another
//!   backend takes over, the reconcile tells it to stop and remove the TUN ([`shut_down`]).
//! - /metrics: `twill_udp_packets_total{peer,address,direction}`, `twill_udp_bytes_total`,
//!   `twill_udp_peer_drops_total{peer,address}`, `twill_udp_drops_total{reason}`,
//!   `twill_udp_gso_fallbacks_total`, `twill_udp_datapath_up`, asked of the datapath at
//!   each scrape ([`render_metrics`]).

use super::vxlan::vtep_ip;
use super::{usable_peers, Backend, BackendError, BackendKind, Desired, Event, Events, Local};
use super::{
    MetricsSource, Peer, Reaction, RouteEntry, TunSpec, UdpOptions, TUN_DEVICE, UDP_OVERHEAD,
};
use crate::log;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twill_datapath::client::Client;
use twill_datapath::ctl::PROTO;
use twill_datapath::filter::Drop;
use twill_datapath::partial::Checksums;
use twill_datapath::stats::{PeerStats, Stats};
use twill_datapath::table::{LocalNode, Peer as DpPeer};

/// Smallest MTU IPv4 allows on a link.
const MIN_MTU: u32 = 68;
/// The datapath's control socket, in twilld's state dir.
pub const SOCKET: &str = twill_datapath::client::SOCKET_NAME;
/// The datapath's stdout and stderr, in twilld's state dir.
pub const LOG: &str = "datapath.log";
/// How long a new datapath may take to answer on its socket.
pub const SPAWN_WAIT: Duration = Duration::from_secs(2);
/// How long a connect to a running datapath may take (the client retries while the
/// socket is missing, so this is also what a node without a datapath waits at start).
const CONNECT_WAIT: Duration = Duration::from_millis(200);

/// The udp backend: see the module docs.
pub struct Udp {
    /// The TUN's name ([`TUN_DEVICE`]).
    pub device: String,
    /// The UDP port every node's datapath listens on.
    pub port: u16,
    /// How the inner checksums sent to every peer are left (`partialChecksums`).
    pub checksums: Checksums,
    state_dir: PathBuf,
    /// What runs `datapath ARGS…`: `/proc/self/exe` (twilld itself), or a wrapper.
    program: Vec<String>,
    events: Option<Events>,
    shared: Arc<Shared>,
    /// The datapath this backend talks to.
    running: Option<Running>,
    /// The last table the datapath acknowledged.
    sent: Option<(LocalNode, Vec<DpPeer>)>,
    generation: u64,
    /// A dead datapath's TUN queues and receive sockets (its HelloAck dups), handed to the
    /// next one with `--inherit-fds`: the queues never detach, so what the kernel routed
    /// into them meanwhile waits there instead of being dropped.
    kept: Vec<OwnedFd>,
}

/// The connection's side the HTTP thread reads /metrics through.
#[derive(Default)]
pub struct Shared {
    client: Mutex<Option<Client>>,
    names: Mutex<BTreeMap<Ipv4Addr, String>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("udp::Shared")
    }
}

impl MetricsSource for Shared {
    fn render(&self, out: &mut String) {
        let stats = lock(&self.client).as_ref().and_then(|c| c.stats().ok());
        let names = lock(&self.names).clone();
        render_metrics(stats.as_ref(), &names, out);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A datapath process, adopted or started.
struct Running {
    pid: u32,
    bind: Ipv4Addr,
    /// Its HelloAck dups (TUN queues, then receive sockets), kept for a successor.
    fds: Vec<OwnedFd>,
    /// Set when this backend started it (so it reaps it).
    child: Option<Child>,
    watcher: Watcher,
}

/// A datapath started: its connection, pid, HelloAck fds and process.
type Started4 = (Client, u32, Vec<OwnedFd>, Option<Child>);

/// The datapath with pid `pid` exited (its pidfd became readable).
#[derive(Debug)]
struct Exited {
    pid: u32,
}

/// A datapath was adopted or started: a pass sets up the TUN it made.
#[derive(Debug)]
struct Connected;

impl Udp {
    pub fn new(options: &UdpOptions, state_dir: &Path) -> Udp {
        Udp {
            device: TUN_DEVICE.into(),
            port: options.port(),
            checksums: if options.partial_checksums {
                Checksums::Partial
            } else {
                Checksums::Full
            },
            state_dir: state_dir.to_owned(),
            program: vec!["/proc/self/exe".into()],
            events: None,
            shared: Arc::default(),
            running: None,
            sent: None,
            generation: 0,
            kept: Vec::new(),
        }
    }

    /// Runs the datapath as `program… datapath ARGS…` instead of `/proc/self/exe
    /// datapath ARGS…` (tests: twilld's binary, inside a namespace by `ip netns exec`).
    pub fn with_program(mut self, program: Vec<String>) -> Udp {
        self.program = program;
        self
    }

    fn socket(&self) -> PathBuf {
        self.state_dir.join(SOCKET)
    }

    /// The running datapath, adopted if it answers and fits, else a new one.
    fn ensure(&mut self, local: &Local) -> Result<(), String> {
        if let Some(r) = &self.running {
            if r.bind == local.address {
                return Ok(());
            }
            // The node IP moved: the outer source must follow it.
            log::info(
                "udp: the node IP changed; restarting the datapath",
                &[("was", &r.bind), ("now", &local.address)],
            );
            self.replace_running();
        }
        let events = self.events.clone().ok_or("udp: not started")?;
        let (client, pid, fds, child) = match self.adopt(local) {
            Some((client, pid, fds)) => (client, pid, fds, None),
            None => self.spawn_keeping(local)?,
        };
        *lock(&self.shared.client) = Some(client);
        self.sent = None;
        self.running = Some(Running {
            pid,
            bind: local.address,
            fds,
            child,
            watcher: Watcher::start(pid, events.clone()),
        });
        events.send(Connected);
        Ok(())
    }

    /// A datapath already on the socket that speaks this protocol, on this TUN, port and
    /// node IP. One that does not fit is shut down (its TUN stays for the next one).
    fn adopt(&mut self, local: &Local) -> Option<(Client, u32, Vec<OwnedFd>)> {
        let (client, hello, fds) = Client::connect(&self.socket(), CONNECT_WAIT).ok()?;
        let started = std::fs::read(format!("/proc/{}/cmdline", hello.pid))
            .map(|c| Started::parse(&c))
            .unwrap_or_default();
        let fits = hello.proto == PROTO
            && hello.tun == self.device
            && started.port == Some(self.port)
            && started.bind == Some(local.address);
        if fits {
            log::info(
                "udp: adopted the running datapath",
                &[("pid", &hello.pid), ("generation", &hello.generation)],
            );
            self.generation = self.generation.max(hello.generation);
            // Someone else's fds of the same queues are no use now.
            self.kept.clear();
            return Some((client, hello.pid, fds));
        }
        log::warn(
            "udp: the running datapath does not fit this config; replacing it",
            &[
                ("pid", &hello.pid),
                ("proto", &hello.proto),
                ("tun", &hello.tun),
                ("started", &format!("{started:?}")),
            ],
        );
        drop(fds);
        let _ = client.shutdown(false);
        wait_gone(hello.pid, SPAWN_WAIT);
        None
    }

    /// [`Udp::spawn`], handing it the kept fds of the datapath that died; if that one will
    /// not come up, a fresh one without them (it re-attaches to the TUN by name).
    fn spawn_keeping(&mut self, local: &Local) -> Result<Started4, String> {
        let kept = std::mem::take(&mut self.kept);
        if kept.is_empty() {
            return self.spawn(local, &[]);
        }
        match self.spawn(local, &kept) {
            Ok(s) => Ok(s),
            Err(e) => {
                log::warn(
                    "udp: the datapath would not start with the dead one's fds; starting a fresh one",
                    &[("error", &e)],
                );
                drop(kept);
                self.spawn(local, &[])
            }
        }
    }

    /// Starts `program datapath …`: its own session (a SIGKILL of twilld or of its
    /// process group leaves it running), no parent-death signal, output to [`LOG`]; with
    /// `inherit` (a dead datapath's HelloAck fds, in their order) as `--inherit-fds`.
    fn spawn(&mut self, local: &Local, inherit: &[OwnedFd]) -> Result<Started4, String> {
        let fail = |what: String| format!("udp: cannot start the datapath: {what}");
        let log_path = self.state_dir.join(LOG);
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| fail(format!("{}: {e}", log_path.display())))
        };
        let (out, err) = (open()?, open()?);
        let socket = self.socket();
        // Nobody answered on it: a stale socket of a datapath that died.
        let _ = std::fs::remove_file(&socket);
        let (program, lead) = self
            .program
            .split_first()
            .ok_or_else(|| fail("no program".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(lead)
            .arg("datapath")
            .args(datapath_args(
                &socket,
                &self.device,
                self.port,
                local.address,
            ))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let raw: Vec<i32> = inherit.iter().map(|f| f.as_raw_fd()).collect();
        if !raw.is_empty() {
            let list: Vec<String> = raw.iter().map(i32::to_string).collect();
            cmd.arg("--inherit-fds").arg(list.join(","));
        }
        // SAFETY: setsid(2) and fcntl(2) are async-signal-safe, the only calls between
        // fork and exec; `raw` was built before the fork. Clearing FD_CLOEXEC in the child
        // only lets the inherited fds (same numbers) through the exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for &fd in &raw {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| fail(format!("{program}: {e}")))?;
        let deadline = Instant::now() + SPAWN_WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(format!(
                    "it exited at once ({status}); see {}: {}",
                    log_path.display(),
                    tail(&log_path)
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok((client, hello, fds)) = Client::connect(&socket, left.min(CONNECT_WAIT)) {
                log::info(
                    "udp: started the datapath",
                    &[
                        ("pid", &hello.pid),
                        ("inherited_fds", &inherit.len()),
                        ("log", &log_path.display()),
                    ],
                );
                return Ok((client, hello.pid, fds, Some(child)));
            }
            if Instant::now() >= deadline {
                // Ours, by its pid: gone before the next try.
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "it did not answer on {} within {SPAWN_WAIT:?}; see {}: {}",
                    socket.display(),
                    log_path.display(),
                    tail(&log_path)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the running datapath to go (its TUN stays) and forgets it.
    fn replace_running(&mut self) {
        if let Some(c) = lock(&self.shared.client).take() {
            let _ = c.shutdown(false);
        }
        let pid = self.running.as_ref().map(|r| r.pid);
        self.lost();
        if let Some(pid) = pid {
            wait_gone(pid, SPAWN_WAIT);
        }
    }

    /// The connection is over: forget it, reap the process if it was ours.
    fn lost(&mut self) {
        *lock(&self.shared.client) = None;
        if let Some(mut r) = self.running.take() {
            r.watcher.stop();
            if let Some(c) = r.child.as_mut() {
                let _ = c.try_wait();
            }
        }
        self.sent = None;
    }
}

impl Backend for Udp {
    fn kind(&self) -> BackendKind {
        BackendKind::Udp
    }

    fn mtu_overhead(&self) -> u32 {
        UDP_OVERHEAD
    }

    fn devices(&self) -> &'static [&'static str] {
        &[TUN_DEVICE]
    }

    fn start(&mut self, events: &Events, _now: Instant) -> Result<(), BackendError> {
        // The datapath binds to the node IP, which the first pass brings: it is adopted or
        // started in sync.
        self.events = Some(events.clone());
        Ok(())
    }

    fn plan(&self, local: &Local, peers: &[Peer]) -> Desired {
        plan(local, peers, &self.device)
    }

    fn sync(&mut self, local: &Local, peers: &[Peer]) -> Vec<String> {
        *lock(&self.shared.names) = peer_names(peers);
        if let Err(e) = self.ensure(local) {
            return vec![e];
        }
        let want = table(local, peers, self.port, self.checksums);
        if self.sent.as_ref() == Some(&want) {
            return Vec::new();
        }
        let generation = self.generation + 1;
        let result = match lock(&self.shared.client).as_ref() {
            Some(c) => c.table(generation, want.0.clone(), want.1.clone()),
            None => return vec!["udp: no datapath connection".into()],
        };
        match result {
            Ok(_) => {
                self.generation = generation;
                self.sent = Some(want);
                Vec::new()
            }
            Err(e) => {
                let pid = self.running.as_ref().map_or(0, |r| r.pid);
                log::error(
                    "udp: the datapath refused the peer table",
                    &[("pid", &pid), ("error", &e)],
                );
                self.lost();
                vec![format!("udp: peer table generation {generation}: {e}")]
            }
        }
    }

    fn on_event(&mut self, event: Event, _now: Instant) -> Reaction {
        let Event::Message(m) = event else {
            return Reaction::Idle;
        };
        if m.is::<Connected>() {
            return Reaction::Reconcile;
        }
        let Ok(exited) = m.downcast::<Exited>() else {
            return Reaction::Idle;
        };
        if self.running.as_ref().is_some_and(|r| r.pid == exited.pid) {
            log::warn(
                "udp: the datapath exited; starting a new one with its TUN queues and sockets (the TUN and its routes stayed)",
                &[
                    ("pid", &exited.pid),
                    ("log", &self.state_dir.join(LOG).display()),
                ],
            );
            if let Some(r) = self.running.as_mut() {
                self.kept = std::mem::take(&mut r.fds);
            }
            self.lost();
            return Reaction::Reconcile;
        }
        Reaction::Idle
    }

    fn metrics(&self) -> Option<Arc<dyn MetricsSource>> {
        Some(self.shared.clone())
    }

    /// Closes the connection; the datapath goes on forwarding with its last table, and a
    /// restarted twilld adopts it.
    fn stop(&mut self) {
        *lock(&self.shared.client) = None;
        if let Some(mut r) = self.running.take() {
            r.watcher.stop();
        }
        self.kept.clear();
        self.sent = None;
        self.events = None;
    }
}

/// Another backend took over: asks a datapath on `state_dir`'s socket to stop and remove
/// its TUN, and waits for it to go. False when none answered.
pub fn shut_down(state_dir: &Path) -> bool {
    let Ok((client, hello, fds)) = Client::connect(&state_dir.join(SOCKET), CONNECT_WAIT) else {
        return false;
    };
    drop(fds);
    let _ = client.shutdown(true);
    wait_gone(hello.pid, SPAWN_WAIT);
    true
}

/// Waits up to `limit` for process `pid` to be gone (a zombie counts as gone).
fn wait_gone(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return;
        };
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last lines of the datapath's log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// A thread waiting on the datapath's pidfd: its exit is an [`Exited`] event at once.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    fn start(pid: u32, events: Events) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("twilld-udp-watch".into())
            .spawn(move || {
                // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
                let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
                if raw < 0 {
                    // ESRCH: gone already.
                    events.send(Exited { pid });
                    return;
                }
                // SAFETY: a fresh fd this thread owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
                while !flag.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one pollfd, valid for the call.
                    if unsafe { libc::poll(&mut p, 1, 200) } > 0 {
                        events.send(Exited { pid });
                        return;
                    }
                }
            })
            .ok();
        Watcher { stop, thread }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::ops::Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The TUN's settings and one route per remote block into it.
pub fn plan(local: &Local, peers: &[Peer], device: &str) -> Desired {
    let mut desired = Desired::default();
    let mtu = local.mtu_uplink.saturating_sub(UDP_OVERHEAD);
    if mtu < MIN_MTU {
        desired.problems.push(format!(
            "udp: uplink {} has MTU {}, too small to carry pod packets in UDP ({UDP_OVERHEAD} bytes of headers); raise it",
            local.uplink, local.mtu_uplink
        ));
    }
    desired.tun = Some(TunSpec {
        name: device.to_owned(),
        mtu: mtu.max(MIN_MTU),
        address: vtep_ip(&local.blocks).map(Ipv4Net::from),
    });
    for peer in usable_peers(local, peers, &mut desired.problems) {
        desired
            .routes
            .extend(peer.blocks.iter().map(|block| RouteEntry {
                dst: *block,
                via: Ipv4Addr::UNSPECIFIED,
                dev: device.to_owned(),
                onlink: false,
            }));
    }
    desired
}

/// The datapath's peer table for this node and `peers` (pure): the same peers and blocks
/// the routes go to ([`usable_peers`]: conflicts dropped), each at `port` with `checksums`. Two nodes with
/// one node IP are one peer holding both their blocks (the routes send both there).
pub fn table(
    local: &Local,
    peers: &[Peer],
    port: u16,
    checksums: Checksums,
) -> (LocalNode, Vec<DpPeer>) {
    let mut problems = Vec::new();
    let mut out: Vec<DpPeer> = Vec::new();
    for peer in usable_peers(local, peers, &mut problems) {
        let blocks = peer.blocks.iter().map(Ipv4Net::trunc);
        match out.iter_mut().find(|p| p.node_ip == peer.address) {
            Some(p) => p.blocks.extend(blocks),
            None => out.push(DpPeer {
                node_ip: peer.address,
                port,
                blocks: blocks.collect(),
                checksums,
            }),
        }
    }
    let local = LocalNode {
        node_ip: local.address,
        blocks: local.blocks.iter().map(Ipv4Net::trunc).collect(),
    };
    (local, out)
}

/// Node IP → node name, for the `peer` label (pure): peers under their names, the rest
/// (a node that left, whose counters the datapath keeps) under their address.
pub fn peer_names(peers: &[Peer]) -> BTreeMap<Ipv4Addr, String> {
    let mut names = BTreeMap::new();
    for p in peers {
        names.entry(p.address).or_insert_with(|| p.name.clone());
    }
    names
}

/// The datapath as /metrics shows it (pure). `stats`: None when it does not answer.
pub fn render_metrics(stats: Option<&Stats>, names: &BTreeMap<Ipv4Addr, String>, out: &mut String) {
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    metric(
        "twill_udp_datapath_up",
        "gauge",
        "1 if the udp backend's datapath process answers on its control socket.",
        &[(String::new(), u64::from(stats.is_some()))],
    );
    let Some(stats) = stats else {
        return;
    };
    let mut peers: Vec<&PeerStats> = stats.peers.iter().collect();
    peers.sort_by_key(|p| p.node_ip);
    let peer = |p: &PeerStats| {
        let name = names
            .get(&p.node_ip)
            .cloned()
            .unwrap_or_else(|| p.node_ip.to_string());
        format!("peer=\"{}\",address=\"{}\"", label(&name), p.node_ip)
    };
    let both = |rx: fn(&PeerStats) -> u64, tx: fn(&PeerStats) -> u64| {
        let mut lines = Vec::new();
        for p in &peers {
            lines.push((format!("{{{},direction=\"rx\"}}", peer(p)), rx(p)));
            lines.push((format!("{{{},direction=\"tx\"}}", peer(p)), tx(p)));
        }
        lines
    };
    metric(
        "twill_udp_packets_total",
        "counter",
        "Pod packets the datapath carried from (rx) and to (tx) each peer node.",
        &both(|p| p.rx_packets, |p| p.tx_packets),
    );
    metric(
        "twill_udp_bytes_total",
        "counter",
        "Bytes of pod packets (inner IP packets) carried from (rx) and to (tx) each peer node.",
        &both(|p| p.rx_bytes, |p| p.tx_bytes),
    );
    metric(
        "twill_udp_peer_drops_total",
        "counter",
        "Packets from or to each peer node the datapath dropped (the reasons are in twill_udp_drops_total).",
        &peers
            .iter()
            .map(|p| (format!("{{{}}}", peer(p)), p.drops))
            .collect::<Vec<_>>(),
    );
    metric(
        "twill_udp_drops_total",
        "counter",
        "Packets the datapath dropped, by reason (a stranger, a spoofed inner source, garbage, no route).",
        &Drop::ALL
            .iter()
            .map(|d| {
                (
                    format!("{{reason=\"{}\"}}", d.name()),
                    stats.drop_count(*d),
                )
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "twill_udp_gso_fallbacks_total",
        "counter",
        "GSO sends the kernel refused, sent again one datagram per packet.",
        &[(String::new(), stats.gso_fallbacks)],
    );
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What a running datapath was started with, read from its command line (`/proc/PID/cmdline`,
/// NUL-separated; pure): whether it fits this backend decides adopt or replace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Started {
    pub tun: Option<String>,
    pub port: Option<u16>,
    pub bind: Option<Ipv4Addr>,
}

impl Started {
    pub fn parse(cmdline: &[u8]) -> Started {
        let args: Vec<&str> = cmdline
            .split(|b| *b == 0)
            .filter_map(|a| std::str::from_utf8(a).ok())
            .collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| *a == flag)
                .and_then(|i| args.get(i + 1))
                .copied()
        };
        Started {
            tun: value("--tun").map(str::to_owned),
            port: value("--port").and_then(|p| p.parse().ok()),
            bind: value("--bind").and_then(|b| b.parse().ok()),
        }
    }
}

/// The datapath's arguments (after the program and its `datapath` subcommand; pure).
pub fn datapath_args(ctl: &Path, tun: &str, port: u16, bind: Ipv4Addr) -> Vec<String> {
    vec![
        "--ctl".into(),
        ctl.display().to_string(),
        "--tun".into(),
        tun.into(),
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        bind.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn local() -> Local {
        Local {
            name: "n1".into(),
            address: "192.0.2.11".parse().unwrap(),
            uplink: "eth0".into(),
            uplink_cidr: net("192.0.2.0/24"),
            blocks: vec![net("10.244.1.0/24")],
            mtu_uplink: 1500,
            pod_wiring: Default::default(),
        }
    }

    fn peer(name: &str, ip: &str, blocks: &[&str]) -> Peer {
        Peer {
            name: name.into(),
            address: ip.parse().unwrap(),
            blocks: blocks.iter().map(|b| net(b)).collect(),
            vtep_mac: None,
        }
    }

    #[test]
    fn partial_checksums_go_to_every_peer_and_nowhere_without_the_option() {
        let peers = vec![
            peer("n2", "192.0.2.12", &["10.244.2.0/24"]),
            peer("n3", "198.51.100.13", &["10.244.3.0/24"]),
        ];
        for (checksums, want) in [
            (Checksums::Partial, Checksums::Partial),
            (Checksums::Full, Checksums::Full),
        ] {
            let (_, t) = table(&local(), &peers, 8285, checksums);
            assert_eq!(t.len(), 2);
            assert!(t.iter().all(|p| p.checksums == want), "{t:?}");
        }
        let on = UdpOptions {
            partial_checksums: true,
            ..UdpOptions::DEFAULT
        };
        assert_eq!(
            Udp::new(&on, Path::new("/nonexistent")).checksums,
            Checksums::Partial
        );
        assert_eq!(
            Udp::new(&UdpOptions::DEFAULT, Path::new("/nonexistent")).checksums,
            Checksums::Full
        );
    }

    #[test]
    fn the_table_holds_what_the_routes_hold() {
        let peers = vec![
            peer("n3", "198.51.100.13", &["10.244.3.0/24"]),
            peer("n2", "192.0.2.12", &["10.244.2.0/24"]),
            // Same node IP as n2 (a renamed node not yet gone): one peer, both blocks.
            peer("n2b", "192.0.2.12", &["10.244.22.0/24"]),
            // Overlaps this node: dropped, as its route is.
            peer("n4", "192.0.2.14", &["10.244.1.128/25", "10.244.4.0/24"]),
            peer("n1", "192.0.2.11", &["10.244.1.0/24"]),
        ];
        let (me, table) = table(&local(), &peers, 8285, Checksums::Full);
        assert_eq!(
            me,
            LocalNode {
                node_ip: "192.0.2.11".parse().unwrap(),
                blocks: vec![net("10.244.1.0/24")],
            }
        );
        let dp = |ip: &str, blocks: &[&str]| DpPeer {
            node_ip: ip.parse().unwrap(),
            port: 8285,
            blocks: blocks.iter().map(|b| net(b)).collect(),
            checksums: Checksums::Full,
        };
        assert_eq!(
            table,
            vec![
                dp("192.0.2.12", &["10.244.2.0/24", "10.244.22.0/24"]),
                dp("198.51.100.13", &["10.244.3.0/24"]),
                dp("192.0.2.14", &["10.244.4.0/24"]),
            ]
        );
        // The datapath takes it as it is.
        twill_datapath::table::PeerTable::new(1, me, table).unwrap();
        let names = peer_names(&peers);
        assert_eq!(names[&"192.0.2.12".parse::<Ipv4Addr>().unwrap()], "n2");
    }

    #[test]
    fn metrics_name_peers_and_every_drop_reason() {
        let mut out = String::new();
        render_metrics(None, &BTreeMap::new(), &mut out);
        assert!(out.ends_with("twill_udp_datapath_up 0\n"), "{out}");
        let n2: Ipv4Addr = "192.0.2.12".parse().unwrap();
        let gone: Ipv4Addr = "192.0.2.99".parse().unwrap();
        let stats = Stats {
            peers: vec![
                PeerStats {
                    rx_packets: 5,
                    rx_bytes: 500,
                    tx_packets: 7,
                    tx_bytes: 700,
                    drops: 1,
                    ..PeerStats::new(n2)
                },
                PeerStats::new(gone),
            ],
            drops: vec![(Drop::SpoofedInner, 1), (Drop::UnknownPeer, 3)],
            gso_fallbacks: 2,
        };
        let names = BTreeMap::from([(n2, "n\"2".to_string())]);
        let mut out = String::new();
        render_metrics(Some(&stats), &names, &mut out);
        for line in [
            "twill_udp_datapath_up 1\n",
            "twill_udp_packets_total{peer=\"n\\\"2\",address=\"192.0.2.12\",direction=\"rx\"} 5\n",
            "twill_udp_packets_total{peer=\"n\\\"2\",address=\"192.0.2.12\",direction=\"tx\"} 7\n",
            "twill_udp_bytes_total{peer=\"n\\\"2\",address=\"192.0.2.12\",direction=\"tx\"} 700\n",
            "twill_udp_packets_total{peer=\"192.0.2.99\",address=\"192.0.2.99\",direction=\"rx\"} 0\n",
            "twill_udp_peer_drops_total{peer=\"n\\\"2\",address=\"192.0.2.12\"} 1\n",
            "twill_udp_drops_total{reason=\"unknown_peer\"} 3\n",
            "twill_udp_drops_total{reason=\"spoofed_inner\"} 1\n",
            "twill_udp_drops_total{reason=\"short\"} 0\n",
            "twill_udp_gso_fallbacks_total 2\n",
            "# TYPE twill_udp_drops_total counter\n",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
        assert_eq!(
            out.matches("twill_udp_drops_total{").count(),
            Drop::ALL.len()
        );
    }

    #[test]
    fn a_running_datapath_is_read_by_its_command_line() {
        let args = datapath_args(
            Path::new("/run/twl/datapath.sock"),
            "twl.tun",
            8285,
            "192.0.2.11".parse().unwrap(),
        );
        let mut cmdline = b"/proc/self/exe\0datapath\0".to_vec();
        for a in &args {
            cmdline.extend_from_slice(a.as_bytes());
            cmdline.push(0);
        }
        assert_eq!(
            Started::parse(&cmdline),
            Started {
                tun: Some("twl.tun".into()),
                port: Some(8285),
                bind: Some("192.0.2.11".parse().unwrap()),
            }
        );
        assert_eq!(
            Started::parse(b"twilld\0datapath\0--port\0"),
            Started::default()
        );
        assert_eq!(Started::parse(b"x\0--port\0nope\0"), Started::default());
    }
}
