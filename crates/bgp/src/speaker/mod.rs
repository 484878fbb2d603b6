//! The speaker: the I/O edge around the pure layers, `twill bgp serve`.
//!
//! One thread runs an epoll loop ([`poll`]) over every peer's sockets, the BGP listener, the
//! control socket ([`control`]) and a signalfd; it drives one [`fsm::Session`] per peer and
//! the [`Rib`], decoding with [`packet::frame`]/[`packet::decode`] and writing the RIB's
//! packed out-updates with [`packet::encode_announce`]/[`packet::encode_withdraw`]. A
//! second thread ([`kernel`]) writes the kernel FIB in batches, so decoding and installs
//! overlap: the loop hands it a batch every [`FIB_BATCH`] changes and at the end of every
//! turn.
//!
//! - **TCP** ([`tcp`]): nonblocking, TCP_NODELAY, the configured port; RFC 2385 MD5 keys on
//!   the listener (per peer) and on each connecting socket before connect. A peer whose key
//!   cannot be set on the listener fails closed: it is never started and connections from
//!   it are refused (`twill bgp neighbors` shows why).
//! - **Start**: every non-passive peer is connected to at once (no connect delay). A refused
//!   connect, or one the peer closes before its OPEN (it does not know us yet), is retried
//!   after [`CONNECT_BACKOFF`] (the first 50 in a row, 5 s, then doubling up to the connect
//!   retry time), so a peer that starts a moment later is reached within 0.1 s.
//! - **Kernel routes** carry protocol [`kernel::RTPROT_BGP`] (186, `ip route show proto
//!   bgp`); 84 is twilld's own.
//! - **Graceful restart, restarting side**: at start the speaker finds its own kernel routes
//!   (protocol 186 in its table) and keeps them ([`kernel::Adopted`]); it advertises the
//!   capability with the R bit and, when it found routes, the F bit. Routes learned again
//!   with the same next hops are not written at all, others are replaced in place (never
//!   absent); once every peer has sent End-of-RIB, or the restart time has passed, the rest
//!   is deleted. Route selection is deferred meanwhile
//!   (RFC 4724 §4.1): nothing is announced until every peer has sent End-of-RIB or is
//!   restarting itself (R bit), then each gets its whole Adj-RIB-Out and End-of-RIB, so a
//!   restarted reflector never makes its clients sweep routes it has not re-learned yet.
//!   Only peers that come up are waited for (RFC 4724's selection deferral timer, bounded
//!   as FRR's `select-defer-time` and BIRD's `graceful restart wait` bound it): a peer whose
//!   session is not up within [`DEFER_UP_BOUND`] of its start, or whose connect failed (its
//!   node is down: refused, unreachable), is not, so a node in the store but down never
//!   holds a restarted node's announcements for the whole restart time.
//!   Without `gracefulRestart` the same adoption happens, with a 120 s limit, so a restart
//!   never flaps the kernel routes.
//! - **Graceful restart, helper side**: a session that goes down with `keep_stale` keeps the
//!   peer's routes stale for its restart time (at most the peer's `maxRestartTime`);
//!   End-of-RIB from the peer or the timer sweeps them (the RIB decides what goes). A route
//!   the peer sends again with the same next hop changes nothing in the kernel.
//! - **Embedded** ([`embed`]): the same loop on a thread of another program (twilld), with
//!   no signalfd, an optional control socket, and commands (peers, originated prefixes,
//!   status, stop) over a channel that wakes the loop through the eventfd.
//! - **SIGTERM / SIGINT**: with `gracefulRestart`, the speaker closes its connections
//!   without a NOTIFICATION (peers then keep our routes for the restart time, RFC 4724) and
//!   leaves its kernel routes: a restart moves no packet. Without it, every session gets
//!   Cease 6/2 (administrative shutdown) and the speaker deletes the kernel routes it
//!   installed. Either way it finishes queued kernel writes and removes its control socket.

pub mod control;
pub mod embed;
pub mod kernel;
pub mod poll;
pub mod tcp;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use crate::config::{self, Config, PolicyConfig};
use crate::fsm::{self, ConnId, Direction, Input, Output, Session, SessionConfig, State};
use crate::packet::{self, subcode, Community, Family, Message, Negotiated, Origin, Update};
use crate::policy::{Action, Match, Policy, PrefixMatch, Term, Verdict};
use crate::rib::{FibChange, PeerConfig, PeerId, PeerSession, Rib, RibChanges, RibConfig};
use control::{Neighbor, NeighborsReply, PeerKind, RibPath, RibRoute};
use embed::{Command, Notice, Notify, PeerStatus, Status};
use kernel::{Adopted, KernelWriter};
use poll::{Interest, Poller, Signals, Waker};

/// FIB changes handed to the kernel writer at once, mid-turn, so installs start while the
/// rest of a large feed is still being decoded.
pub const FIB_BATCH: usize = 2048;
/// The most bytes read from one connection per loop turn (fairness between peers).
const READ_PER_TURN: usize = 1 << 20;
/// Reads go into chunks of this size.
const READ_CHUNK: usize = 64 << 10;
/// How long adopted routes wait for End-of-RIB without `gracefulRestart`.
const ADOPT_HOLD: Duration = Duration::from_secs(120);
/// Prefixes encoded at a time into one peer's write buffer.
const WRITE_CHUNK: usize = 1024;
/// Bytes queued for a peer that are written at once, mid-dump.
const WRITE_SOON: usize = 64 << 10;
/// How soon a refused connect (or one the peer closed before its OPEN) is tried again, for
/// the first [`fsm::QUICK_RETRIES`] in a row: a mesh node that starts a moment after its
/// peers is reached within this, not a connect retry time later.
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// Deferred route selection (graceful restart, restarting side) waits for a peer whose
/// session is not up at most this long after the peer was started, and not at all once a
/// connect to it failed. A peer that is up (or in its OPEN exchange) is waited for until
/// its End-of-RIB or the restart time.
pub const DEFER_UP_BOUND: Duration = Duration::from_secs(5);
/// The most a shutdown waits for Cease NOTIFICATIONs to be written.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

const TOKEN_LISTENER: u64 = 1;
const TOKEN_CONTROL: u64 = 2;
const TOKEN_WAKER: u64 = 3;
const TOKEN_SIGNALS: u64 = 4;
/// Connections and control clients get tokens from here up.
const TOKEN_FIRST: u64 = 16;

/// Why the speaker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Tcp(#[from] tcp::TcpError),
    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },
    #[error("kernel routes: {0}")]
    Netlink(#[from] twill_netlink::Error),
    #[error("peer {peer}: {message}")]
    Peer { peer: String, message: String },
    #[error("BGP configuration: {message}")]
    Config { message: String },
    #[error("control socket {path}: another speaker answers there; stop it, or give this one another controlSocket")]
    ControlInUse { path: PathBuf },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SpeakerError {
    let what = what.into();
    move |cause| SpeakerError::Io { what, cause }
}

struct Peer {
    cfg: config::Peer,
    id: PeerId,
    addr: SocketAddr,
    local: Option<IpAddr>,
    key: Option<Vec<u8>>,
    kind: PeerKind,
    session: Session,
    /// The peer cannot run (fail closed), and why.
    failed: Option<String>,
    /// The token of the connect in flight.
    connecting: Option<u64>,
    last_connect_error: Option<String>,
    /// Graceful restart helper: the peer's stale routes go at this time.
    stale_until: Option<Instant>,
    /// End-of-RIB (any family) since the session came up.
    end_of_rib: bool,
    /// End-of-RIB seen since the speaker started (for sweeping adopted routes).
    end_of_rib_once: bool,
    prefixes_received: u64,
    /// The state last reported to the embedder's callback.
    reported: State,
    /// When the session was last started (the deferral's [`DEFER_UP_BOUND`] counts from it).
    started_at: Instant,
}

impl Peer {
    /// Whether deferred route selection still waits for this peer's End-of-RIB at `now`:
    /// it is up or in its OPEN exchange, or it was started less than [`DEFER_UP_BOUND`] ago
    /// and no connect to it has failed. A peer restarting itself (R bit) is not waited for
    /// (it waits for ours), nor one that sent End-of-RIB.
    fn deferral_waits(&self, now: Instant) -> bool {
        if self.failed.is_some() || self.end_of_rib_once {
            return false;
        }
        if let Some(e) = self.session.established() {
            return !e.peer_restarted();
        }
        match self.session.state() {
            State::OpenSent | State::OpenConfirm => true,
            _ => self.last_connect_error.is_none() && now < self.started_at + DEFER_UP_BOUND,
        }
    }
}

struct Conn {
    peer: usize,
    stream: TcpStream,
    /// An outgoing connect not finished yet.
    connecting: bool,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Close once `wbuf` is written.
    closing: bool,
    writable_interest: bool,
    negotiated: Negotiated,
    established: bool,
}

/// How a speaker is run: on its own (`twill bgp serve`: signals, a control socket) or
/// embedded in another program ([`embed`]).
pub(crate) struct Setup {
    /// Block SIGTERM/SIGINT/SIGHUP and stop on them (main thread, before other threads).
    pub signals: bool,
    /// Answer on the config's `controlSocket`.
    pub control: bool,
    /// We ran before and kept forwarding, even if no route of ours is in the kernel (the
    /// R and F bits of graceful restart).
    pub restarted: bool,
    pub commands: Option<mpsc::Receiver<Command>>,
    pub notify: Option<Notify>,
}

/// A running speaker. [`Speaker::new`] opens everything (sockets, kernel writer, adopted
/// routes); [`Speaker::run`] loops until SIGTERM/SIGINT (or, embedded, until told to stop).
pub struct Speaker {
    cfg: Config,
    poller: Poller,
    listener: Option<TcpListener>,
    control: Option<(UnixListener, PathBuf)>,
    clients: HashMap<u64, control::Client>,
    signals: Option<Signals>,
    commands: Option<mpsc::Receiver<Command>>,
    notify: Option<Notify>,
    /// Something the embedder's callback hears of changed this turn (routes or sessions).
    routes_changed: bool,
    waker: Arc<Waker>,
    kernel: Option<KernelWriter>,
    adopted: Adopted,
    adopt_deadline: Option<Instant>,
    rib: Rib,
    peers: Vec<Peer>,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    fib_pending: Vec<FibChange>,
    /// Batches the writer had no room for yet; while any wait, peers are not read.
    fib_queue: VecDeque<Vec<FibChange>>,
    work: VecDeque<(usize, Output)>,
    /// Restarting with graceful restart: out-updates are held back (RFC 4724 §4.1 defers
    /// route selection until the peers' End-of-RIB), then sent whole.
    deferring: bool,
    /// We restarted (found our kernel routes, or were told so): new sessions carry the R
    /// and F bits until the restart is over.
    restarted: bool,
    next_peer_id: u32,
    /// What we announce ourselves, with the communities of each prefix.
    originated: HashMap<IpNet, Vec<Community>>,
    stopping: bool,
    /// How to stop: graceful (no NOTIFICATION, kernel routes left) or not.
    graceful_stop: bool,
    /// One instant and the wall clock then: status times as wall-clock times, stable
    /// from one call to the next.
    epoch: (Instant, SystemTime),
}

impl Speaker {
    /// Opens the sockets and the kernel writer and adopts the kernel routes of a previous
    /// run. Must run on the process's main thread before any other thread starts (it
    /// blocks SIGTERM/SIGINT/SIGHUP for the signalfd).
    pub fn new(cfg: Config) -> Result<Speaker, SpeakerError> {
        Speaker::open(
            cfg,
            Setup {
                signals: true,
                control: true,
                restarted: false,
                commands: None,
                notify: None,
            },
        )
    }

    pub(crate) fn open(cfg: Config, setup: Setup) -> Result<Speaker, SpeakerError> {
        let signals = if setup.signals {
            Some(Signals::block().map_err(io_err("block SIGTERM/SIGINT for the signalfd"))?)
        } else {
            None
        };
        let poller = Poller::new().map_err(io_err("create the epoll instance"))?;
        let waker = Arc::new(Waker::new().map_err(io_err("create the eventfd"))?);
        let now = Instant::now();

        let (kernel, adopted) = if cfg.kernel.install {
            let adopted = Adopted::read(cfg.kernel.table)?;
            let writer = KernelWriter::start(cfg.kernel.table, waker.clone())?;
            writer.note_adopted(adopted.len() as u64, 0);
            (Some(writer), adopted)
        } else {
            (None, Adopted::default())
        };
        let restarted = !adopted.is_empty() || setup.restarted;
        // A restart (our routes were found): wait for the peers' End-of-RIB before sweeping
        // them, and with graceful restart defer what we announce till then too.
        let adopt_deadline = restarted.then(|| {
            now + cfg
                .graceful_restart
                .as_ref()
                .map(|g| Duration::from_secs(u64::from(g.restart_time)))
                .unwrap_or(ADOPT_HOLD)
        });

        let mut rib_cfg = RibConfig::new(cfg.asn, cfg.router_id);
        rib_cfg.max_paths = cfg.max_paths;
        rib_cfg.cluster_id = cfg.cluster_id;
        rib_cfg.next_hop_networks = cfg.next_hop_networks.clone();
        let rib = Rib::new(rib_cfg);

        let listener = if cfg.listen.disabled {
            None
        } else {
            let addr = SocketAddr::new(cfg.listen.address, cfg.listen.port);
            let l = tcp::listen(addr, &[])?;
            poller
                .add(l.as_raw_fd(), TOKEN_LISTENER, Interest::Read)
                .map_err(io_err("watch the listening socket"))?;
            Some(l)
        };

        let control = if setup.control {
            let path = cfg.control_socket.clone();
            let control = bind_control(&path)?;
            control
                .set_nonblocking(true)
                .map_err(io_err("make the control socket nonblocking"))?;
            poller
                .add(control.as_raw_fd(), TOKEN_CONTROL, Interest::Read)
                .map_err(io_err("watch the control socket"))?;
            Some((control, path))
        } else {
            None
        };
        poller
            .add(waker.raw(), TOKEN_WAKER, Interest::Read)
            .map_err(io_err("watch the eventfd"))?;
        if let Some(signals) = &signals {
            poller
                .add(signals.raw(), TOKEN_SIGNALS, Interest::Read)
                .map_err(io_err("watch the signalfd"))?;
        }

        let cfg_graceful = cfg.graceful_restart.is_some();
        let peers_cfg = cfg.peers.clone();
        let mut sp = Speaker {
            cfg,
            poller,
            listener,
            control,
            clients: HashMap::new(),
            signals,
            commands: setup.commands,
            notify: setup.notify,
            routes_changed: false,
            waker,
            kernel,
            adopted,
            adopt_deadline,
            rib,
            peers: Vec::new(),
            conns: HashMap::new(),
            next_token: TOKEN_FIRST,
            fib_pending: Vec::new(),
            fib_queue: VecDeque::new(),
            work: VecDeque::new(),
            deferring: restarted && cfg_graceful,
            restarted,
            next_peer_id: 0,
            originated: HashMap::new(),
            stopping: false,
            graceful_stop: cfg_graceful,
            epoch: (now, SystemTime::now()),
        };
        for p in &peers_cfg {
            sp.add_peer(p, now)?;
        }
        let originate: Vec<(IpNet, Vec<Community>)> = std::mem::take(&mut sp.cfg.originate)
            .into_iter()
            .map(|p| (p, Vec::new()))
            .collect();
        sp.set_originated(originate, now);
        // The configured list stays what the file said, for `neighbors` and set_peers.
        Ok(sp)
    }

    /// Adds one configured peer (not started): its session, its RIB entry, its MD5 key on
    /// the listener (a key that cannot be set fails the peer closed).
    fn add_peer(&mut self, p: &config::Peer, now: Instant) -> Result<usize, SpeakerError> {
        let id = PeerId(self.next_peer_id);
        let who = p.address.to_string();
        let restarting = self.restarted && self.adopt_deadline.is_some();
        let sc = session_config(&self.cfg, p, restarting);
        let session = Session::new(sc, now).map_err(|e| SpeakerError::Peer {
            peer: who.clone(),
            message: e.to_string(),
        })?;
        self.rib
            .add_peer(id, peer_config(p, &who)?)
            .map_err(|e| SpeakerError::Peer {
                peer: who.clone(),
                message: e.to_string(),
            })?;
        self.next_peer_id += 1;
        let kind = if p.asn != self.cfg.asn {
            PeerKind::Ebgp
        } else if p.route_reflector_client {
            PeerKind::IbgpRrClient
        } else {
            PeerKind::Ibgp
        };
        let mut peer = Peer {
            cfg: p.clone(),
            id,
            addr: self.cfg.peer_socket(p),
            local: self.cfg.local_address(p),
            key: p.password.as_ref().map(|k| k.as_bytes().to_vec()),
            kind,
            session,
            failed: None,
            connecting: None,
            last_connect_error: None,
            stale_until: None,
            end_of_rib: false,
            end_of_rib_once: false,
            prefixes_received: 0,
            reported: State::Idle,
            started_at: now,
        };
        if let (Some(l), Some(key)) = (&self.listener, &peer.key) {
            if let Err(e) = tcp::set_md5(l.as_raw_fd(), self.listen_family(), peer.addr.ip(), key) {
                // Fail closed: an unkeyed listener would take this peer's unsigned SYN.
                peer.failed = Some(format!(
                    "TCP MD5 key could not be set on the listening socket ({e}); the peer is not started (is the peer's address family the listen address's?)"
                ));
            }
        }
        self.peers.push(peer);
        Ok(self.peers.len() - 1)
    }

    fn listen_family(&self) -> libc::c_int {
        if self.cfg.listen.address.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        }
    }

    /// Starts peer `i`'s session (it connects at once unless passive).
    fn start_peer(&mut self, i: usize, now: Instant) {
        if self.peers[i].failed.is_none() {
            self.peers[i].started_at = now;
            let out = self.peers[i].session.handle(Input::Start, now);
            self.queue(i, out);
        }
    }

    /// Ends peer `i`'s session with Cease `cease` (its routes withdrawn everywhere), takes
    /// its key off the listener and forgets it.
    fn remove_peer(&mut self, i: usize, cease: u8, now: Instant) {
        let out = self.peers[i].session.handle(Input::StopWith(cease), now);
        self.queue(i, out);
        self.drain(now);
        // What is left of its connections (the NOTIFICATION is written if the socket takes
        // it; a connect in flight is dropped).
        let tokens: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer == i)
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            self.flush_conn(t);
            self.drop_conn(t);
        }
        let p = &self.peers[i];
        let (id, addr) = (p.id, p.addr);
        if let (Some(l), Some(_)) = (&self.listener, &p.key) {
            // A zero-length key deletes the peer's key (tcp_md5_do_del).
            let _ = tcp::set_md5(l.as_raw_fd(), self.listen_family(), addr.ip(), &[]);
        }
        log(format_args!("peer {addr}: removed from the configuration"));
        let r = self.rib.remove_peer(id);
        self.rib_changes(r, "peer removal", addr, now);
        self.peers.remove(i);
        for c in self.conns.values_mut() {
            if c.peer > i {
                c.peer -= 1;
            }
        }
        self.routes_changed = true;
    }

    /// The embedder's new peer list: peers not in it are removed (Cease 6/3), new ones
    /// added and started, changed ones reset (Cease 6/6, then added again); unchanged ones
    /// (a new `tag` or `maxRestartTime` only) keep their sessions.
    fn set_peers(&mut self, peers: Vec<config::Peer>, now: Instant) {
        let wanted: HashMap<IpAddr, &config::Peer> =
            peers.iter().map(|p| (p.address.ip, p)).collect();
        let mut i = self.peers.len();
        while i > 0 {
            i -= 1;
            let ip = self.peers[i].cfg.address.ip;
            match wanted.get(&ip) {
                None => self.remove_peer(i, subcode::cease::PEER_DECONFIGURED, now),
                Some(w) if !same_session(&self.peers[i].cfg, w) => {
                    self.remove_peer(i, subcode::cease::OTHER_CONFIGURATION_CHANGE, now)
                }
                Some(w) => {
                    let p = &mut self.peers[i];
                    p.cfg.tag = w.tag.clone();
                    p.cfg.max_restart_time = w.max_restart_time;
                    if let (Some(until), Some(cap)) = (p.stale_until, w.max_restart_time) {
                        p.stale_until = Some(until.min(now + Duration::from_secs(cap.into())));
                    }
                }
            }
        }
        for p in &peers {
            if self.peers.iter().any(|q| q.cfg.address.ip == p.address.ip) {
                continue;
            }
            match self.add_peer(p, now) {
                Ok(i) => {
                    log(format_args!("peer {}: added", self.peers[i].addr));
                    self.start_peer(i, now);
                }
                Err(e) => log(format_args!("peer {}: not added: {e}", p.address)),
            }
        }
        self.cfg.peers = peers;
        self.drain(now);
        self.maybe_finish_restart(false, now);
    }

    /// What we announce ourselves becomes `want`: prefixes no longer in it are withdrawn,
    /// new ones (or ones with other communities) announced; the rest is not sent again.
    fn set_originated(&mut self, want: Vec<(IpNet, Vec<Community>)>, now: Instant) {
        let mut want: HashMap<IpNet, Vec<Community>> = want
            .into_iter()
            .map(|(p, mut c)| {
                c.sort_unstable();
                c.dedup();
                (p.trunc(), c)
            })
            .collect();
        let gone: Vec<IpNet> = self
            .originated
            .keys()
            .filter(|p| !want.contains_key(p))
            .copied()
            .collect();
        if !gone.is_empty() {
            let ch = self.rib.withdraw_originated_all(gone);
            self.apply_changes(ch, now);
        }
        // New or changed, grouped by communities: one packed change set per group.
        let mut groups: HashMap<Vec<Community>, Vec<IpNet>> = HashMap::new();
        for (p, c) in &want {
            if self.originated.get(p) != Some(c) {
                groups.entry(c.clone()).or_default().push(*p);
            }
        }
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort();
        for (communities, mut prefixes) in groups {
            prefixes.sort_unstable();
            let mut attrs = packet::Attrs::local(Origin::Igp);
            attrs.communities = communities;
            let ch = self.rib.originate_all(prefixes, attrs);
            self.apply_changes(ch, now);
        }
        self.originated = std::mem::take(&mut want);
        self.drain(now);
    }

    fn index_of(&self, id: PeerId) -> Option<usize> {
        self.peers.iter().position(|p| p.id == id)
    }

    /// Runs until SIGTERM or SIGINT (embedded: until [`Command::Stop`], or the embedder
    /// is gone), then shuts down as the module documentation says.
    pub fn run(mut self) -> Result<(), SpeakerError> {
        let r = self.run_loop();
        self.shutdown(self.graceful_stop);
        let stopped = r.as_ref().err().map(|e| e.to_string());
        self.tell(Notice::Stopped { error: stopped });
        r
    }

    fn run_loop(&mut self) -> Result<(), SpeakerError> {
        let now = Instant::now();
        for i in 0..self.peers.len() {
            self.start_peer(i, now);
        }
        self.drain(now);
        // Commands sent before the loop ran are waiting (their wake-ups too, but be sure).
        self.commands(now);
        self.report();
        while !self.stopping {
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            let events = self
                .poller
                .wait(timeout.map(|t| t.min(Duration::from_secs(1))))
                .map_err(io_err("wait for events"))?;
            for ev in events {
                let now = Instant::now();
                match ev.token {
                    TOKEN_LISTENER => self.accept(now),
                    TOKEN_CONTROL => self.accept_control(),
                    TOKEN_WAKER => {
                        self.waker.drain();
                        self.pump_fib();
                        self.commands(now);
                    }
                    TOKEN_SIGNALS => {
                        if self.signals.as_ref().is_some_and(|s| !s.take().is_empty()) {
                            self.stopping = true;
                        }
                    }
                    t if self.clients.contains_key(&t) => self.control_event(t),
                    t => self.conn_event(t, ev.readable || ev.closed, ev.writable, now),
                }
                self.drain(now);
            }
            let now = Instant::now();
            self.timers(now);
            self.drain(now);
            self.flush_fib();
            self.report();
        }
        Ok(())
    }

    /// Carries out what the embedder asked ([`embed::Embedded`]).
    fn commands(&mut self, now: Instant) {
        loop {
            let Some(rx) = &self.commands else { return };
            let cmd = match rx.try_recv() {
                Ok(c) => c,
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    // The embedder is gone without a word: stop as a drop does.
                    self.commands = None;
                    self.stopping = true;
                    self.graceful_stop = false;
                    return;
                }
            };
            match cmd {
                Command::SetPeers(peers) => self.set_peers(peers, now),
                Command::SetOriginated(o) => self.set_originated(o, now),
                Command::Status(reply) => {
                    let _ = reply.send(self.status());
                }
                Command::Neighbors(reply) => {
                    let _ = reply.send(self.neighbors());
                }
                Command::Stop { graceful } => {
                    self.stopping = true;
                    self.graceful_stop = graceful;
                    return;
                }
            }
            self.drain(now);
        }
    }

    /// Tells the embedder's callback what changed since the last turn: each session that
    /// changed state, and whether routes changed (kernel or advertised).
    fn report(&mut self) {
        if self.notify.is_none() {
            self.routes_changed = false;
            return;
        }
        let mut notices = Vec::new();
        for p in &mut self.peers {
            let st = p.session.state();
            if st != p.reported {
                p.reported = st;
                notices.push(Notice::Session {
                    peer: p.cfg.address,
                    state: st,
                });
            }
        }
        if std::mem::take(&mut self.routes_changed) {
            notices.push(Notice::Routes);
        }
        for n in notices {
            self.tell(n);
        }
    }

    fn tell(&self, n: Notice) {
        if let Some(f) = &self.notify {
            f(n);
        }
    }

    /// The embedder's view of every peer ([`embed::Embedded::status`]).
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let (t0, wall0) = self.epoch;
        let wall = |t: Instant| {
            if t >= t0 {
                wall0 + (t - t0)
            } else {
                wall0.checked_sub(t0 - t).unwrap_or(wall0)
            }
        };
        let counts = self.rib.all_peer_counts();
        let peers = self
            .peers
            .iter()
            .map(|p| {
                let st = p.session.status();
                let counts = counts.get(&p.id);
                let last_error = if let Some(f) = &p.failed {
                    Some(f.clone())
                } else if let Some((_, reason)) = &st.last_error {
                    Some(reason.to_string())
                } else {
                    p.last_connect_error.clone()
                };
                PeerStatus {
                    address: p.cfg.address,
                    asn: p.cfg.asn,
                    kind: p.kind,
                    tag: p.cfg.tag.clone(),
                    state: st.state,
                    since: wall(st.since),
                    info: self.info(p, &st),
                    last_error,
                    failed: p.failed.is_some(),
                    router_id: st.established.as_ref().map(|e| e.open.router_id),
                    prefixes_received: counts.map_or(0, |c| c.accepted as u64),
                    prefixes_advertised: counts.map_or(0, |c| c.advertised as u64),
                    stale_seconds_left: p
                        .stale_until
                        .map(|d| d.saturating_duration_since(now).as_secs()),
                    end_of_rib: p.end_of_rib,
                }
            })
            .collect();
        Status {
            router_id: self.cfg.router_id,
            asn: self.cfg.asn,
            peers,
            kernel: self.kernel.as_ref().map(|k| k.stats()).unwrap_or_default(),
            adopted_pending: self.adopted.len() as u64,
        }
    }

    /// The INFO column: why the peer is not up, or how it is doing.
    fn info(&self, p: &Peer, st: &fsm::Status) -> String {
        if let Some(f) = &p.failed {
            f.clone()
        } else if st.state == State::Established {
            format!(
                "{} prefixes received{}",
                p.prefixes_received,
                if p.end_of_rib { ", End-of-RIB" } else { "" }
            )
        } else if let Some((_, reason)) = &st.last_error {
            reason.to_string()
        } else if let Some(e) = &p.last_connect_error {
            e.clone()
        } else if p.cfg.passive {
            "waiting for the peer to connect (passive)".into()
        } else {
            "connecting".into()
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        // Deferring: when the next peer not up stops being waited for.
        let now = Instant::now();
        let defer = self
            .peers
            .iter()
            .filter(|_| self.deferring)
            .filter(|p| p.session.state() != State::Established)
            .map(|p| p.started_at + DEFER_UP_BOUND)
            .filter(|t| *t > now)
            .min();
        self.peers
            .iter()
            .flat_map(|p| [p.session.next_deadline(), p.stale_until])
            .chain([self.adopt_deadline, defer])
            .flatten()
            .min()
    }

    fn queue(&mut self, peer: usize, outs: Vec<Output>) {
        self.work.extend(outs.into_iter().map(|o| (peer, o)));
    }

    /// Carries out queued FSM outputs (which may queue more).
    fn drain(&mut self, now: Instant) {
        while let Some((i, out)) = self.work.pop_front() {
            self.output(i, out, now);
        }
    }

    fn output(&mut self, i: usize, out: Output, now: Instant) {
        match out {
            Output::Connect => self.connect(i, now),
            Output::CancelConnect => {
                if let Some(old) = self.peers[i].connecting.take() {
                    self.drop_conn(old);
                }
            }
            Output::Send(id, msg) => {
                if let Some(c) = self.conns.get_mut(&id.0) {
                    // An encode error is a bug in what we built (the FSM's messages are
                    // always encodable, and an UPDATE never comes this way): say so.
                    if let Err(e) = packet::encode(&msg, &c.negotiated, &mut c.wbuf) {
                        log(format_args!("peer {}: not sent: {e}", self.peers[i].addr));
                    }
                }
                self.flush_conn(id.0);
            }
            Output::Close(id) => {
                if let Some(c) = self.conns.get_mut(&id.0) {
                    c.closing = true;
                }
                self.flush_conn(id.0);
            }
            Output::Established(info) => {
                let Some(c) = self.conns.get_mut(&info.conn.0) else {
                    return;
                };
                c.negotiated = info.negotiated.clone();
                c.established = true;
                let local = c
                    .stream
                    .local_addr()
                    .map(|a| a.ip())
                    .unwrap_or_else(|_| tcp::unspecified_like(self.peers[i].addr.ip()));
                let local = canonical(local);
                let p = &mut self.peers[i];
                p.end_of_rib = false;
                p.stale_until = None;
                p.prefixes_received = 0;
                let session =
                    PeerSession::new(local, info.open.router_id, info.negotiated.families.clone())
                        .with_open(&info.open);
                let addr = p.addr;
                log(format_args!(
                    "peer {addr}: Established (AS {}, router id {}, hold {} s)",
                    info.open.asn(),
                    info.open.router_id,
                    info.hold_time
                ));
                let r = self.rib.peer_up(p.id, session);
                self.rib_changes(r, "session up", addr, now);
                if self.deferring {
                    self.maybe_finish_restart(false, now);
                }
            }
            Output::Routes(update) => self.routes(i, &update, now),
            Output::RefreshRequested(family) => {
                let r = self.rib.refresh(self.peers[i].id, family);
                self.rib_changes(r, "route refresh", self.peers[i].addr, now);
            }
            Output::Down {
                keep_stale, reason, ..
            } => {
                let p = &mut self.peers[i];
                p.end_of_rib = false;
                // Helper side: the peer's restart time, capped by our maxRestartTime.
                let keep_stale = keep_stale.map(|d| match p.cfg.max_restart_time {
                    Some(cap) => d.min(Duration::from_secs(cap.into())),
                    None => d,
                });
                p.stale_until = keep_stale.map(|d| now + d);
                let (id, addr) = (p.id, p.addr);
                match keep_stale {
                    Some(d) => log(format_args!(
                        "peer {addr}: down ({reason}); its routes kept stale for {} s (graceful restart)",
                        d.as_secs()
                    )),
                    None => log(format_args!("peer {addr}: down ({reason}); its routes withdrawn")),
                }
                let r = self.rib.peer_down(id, keep_stale);
                self.rib_changes(r, "session down", addr, now);
            }
        }
    }

    fn routes(&mut self, i: usize, update: &Update, now: Instant) {
        let id = self.peers[i].id;
        if let Some(family) = update.end_of_rib_family() {
            let p = &mut self.peers[i];
            p.end_of_rib = true;
            p.end_of_rib_once = true;
            p.stale_until = None;
            let r = self.rib.end_of_rib(id, family);
            self.rib_changes(r, "End-of-RIB", self.peers[i].addr, now);
            self.maybe_finish_restart(false, now);
            return;
        }
        self.peers[i].prefixes_received +=
            (update.nlri.len() + update.mp_reach.as_ref().map_or(0, |m| m.nlri.len())) as u64;
        let r = self.rib.apply(id, update);
        self.rib_changes(r, "UPDATE", self.peers[i].addr, now);
    }

    /// Applies what the RIB decided, or logs why it refused: a refusal is a bug in how the
    /// speaker drives the RIB, never the peer's fault, so the session carries on.
    fn rib_changes(
        &mut self,
        r: Result<RibChanges, crate::rib::RibError>,
        what: &str,
        addr: SocketAddr,
        now: Instant,
    ) {
        match r {
            Ok(ch) => self.apply_changes(ch, now),
            Err(e) => log(format_args!("peer {addr}: the RIB refused the {what}: {e}")),
        }
    }

    /// The RIB's decisions: kernel changes to the writer, out-updates encoded to the peers.
    fn apply_changes(&mut self, ch: RibChanges, now: Instant) {
        let RibChanges { mut fib, out } = ch;
        if !fib.is_empty() || !out.is_empty() {
            self.routes_changed = true;
        }
        if !fib.is_empty() && self.kernel.is_some() {
            self.adopted.learned(&mut fib);
            if self.fib_pending.is_empty() && fib.len() >= FIB_BATCH {
                self.push_fib(fib);
            } else {
                self.fib_pending.extend(fib);
                if self.fib_pending.len() >= FIB_BATCH {
                    self.flush_fib();
                }
            }
        }
        for (peer_id, upd) in out {
            if self.deferring {
                // Sent whole when the restart is over (maybe_finish_restart).
                break;
            }
            let Some(i) = self.index_of(peer_id) else {
                continue;
            };
            let Some(token) = self
                .conns
                .iter()
                .find(|(_, c)| c.peer == i && c.established)
                .map(|(t, _)| *t)
            else {
                continue;
            };
            self.send_update(i, token, &upd, now);
        }
    }

    /// Encodes one peer's out-update onto its connection, writing as it goes: a large
    /// dump's first UPDATEs are on the wire while the rest is being encoded, instead of
    /// after all of it.
    fn send_update(&mut self, i: usize, token: u64, upd: &crate::rib::OutUpdate, now: Instant) {
        let addr = self.peers[i].addr;
        let mut n = 0usize;
        let mut pieces: Vec<(Option<&Arc<packet::Attrs>>, &[IpNet])> = upd
            .withdraw
            .chunks(WRITE_CHUNK)
            .map(|c| (None, c))
            .collect();
        for (attrs, prefixes) in &upd.announce {
            pieces.extend(prefixes.chunks(WRITE_CHUNK).map(|c| (Some(attrs), c)));
        }
        for (attrs, prefixes) in pieces {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            let r = match attrs {
                None => packet::encode_withdraw(prefixes, &c.negotiated, &mut c.wbuf),
                Some(a) => packet::encode_announce(a, prefixes, &c.negotiated, &mut c.wbuf),
            };
            match r {
                Ok(k) => n += k,
                Err(e) => log(format_args!(
                    "peer {addr}: {} {} not sent: {e}",
                    prefixes.len(),
                    if attrs.is_some() {
                        "routes"
                    } else {
                        "withdrawals"
                    }
                )),
            }
            if c.wbuf.len() - c.wpos >= WRITE_SOON {
                self.flush_conn(token);
            }
        }
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        for family in &upd.end_of_rib {
            if packet::encode(
                &Message::Update(Box::new(Update::end_of_rib(*family))),
                &c.negotiated,
                &mut c.wbuf,
            )
            .is_ok()
            {
                n += 1;
            }
        }
        if n > 0 {
            let outs = self.peers[i]
                .session
                .handle(Input::UpdatesSent(n as u64), now);
            self.queue(i, outs);
            self.flush_conn(token);
        }
    }

    fn flush_fib(&mut self) {
        if self.fib_pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.fib_pending);
        self.push_fib(batch);
    }

    /// Hands a batch to the kernel writer, or queues it (in order) when the writer is full;
    /// a first queued batch pauses reading from the peers.
    fn push_fib(&mut self, batch: Vec<FibChange>) {
        if batch.is_empty() {
            return;
        }
        let Some(k) = &mut self.kernel else { return };
        if !self.fib_queue.is_empty() {
            self.fib_queue.push_back(batch);
            return;
        }
        if let Err(batch) = k.try_send(batch) {
            self.fib_queue.push_back(batch);
            self.rearm_all();
        }
    }

    /// The writer finished a batch: give it what waits, and read again once all is given.
    fn pump_fib(&mut self) {
        let Some(k) = &mut self.kernel else { return };
        if self.fib_queue.is_empty() {
            return;
        }
        while let Some(batch) = self.fib_queue.pop_front() {
            if let Err(batch) = k.try_send(batch) {
                self.fib_queue.push_front(batch);
                return;
            }
        }
        self.rearm_all();
    }

    /// Reading from peers is paused while kernel batches wait for the writer.
    fn reading_paused(&self) -> bool {
        !self.fib_queue.is_empty()
    }

    /// Sets every peer connection's epoll interest from its state.
    fn rearm_all(&mut self) {
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for t in tokens {
            self.rearm(t);
        }
    }

    fn rearm(&self, token: u64) {
        let Some(c) = self.conns.get(&token) else {
            return;
        };
        let interest = match (c.connecting, self.reading_paused(), c.writable_interest) {
            (true, _, _) => Interest::Write,
            (false, false, false) => Interest::Read,
            (false, false, true) => Interest::ReadWrite,
            (false, true, true) => Interest::Write,
            (false, true, false) => Interest::Nothing,
        };
        let _ = self.poller.modify(c.stream.as_raw_fd(), token, interest);
    }

    /// The end of a restart (RFC 4724 §4.1). The adopted routes not learned again are
    /// deleted once every peer that can run has sent End-of-RIB, or `force` (the restart
    /// time is over). Deferred route selection ends sooner: once every such peer has sent
    /// End-of-RIB or is itself restarting (its R bit: it waits for ours, and waiting for
    /// each other would deadlock till the timer); then every established peer gets its
    /// whole Adj-RIB-Out and End-of-RIB.
    fn maybe_finish_restart(&mut self, force: bool, now: Instant) {
        let runnable = || self.peers.iter().filter(|p| p.failed.is_none());
        // No peer (yet: an embedder may give them later) is no End-of-RIB from all of
        // them: the adopted routes wait for the restart time rather than go at once.
        let any = runnable().next().is_some();
        let all_eor = any && runnable().all(|p| p.end_of_rib_once);
        let all_ready = any && !runnable().any(|p| p.deferral_waits(now));
        if self.adopt_deadline.is_some() && (force || all_eor) {
            self.adopt_deadline = None;
            let gone = self.adopted.sweep();
            if let Some(k) = &mut self.kernel {
                k.note_adopted(0, gone.len() as u64);
            }
            self.flush_fib();
            self.push_fib(gone);
        }
        if !(self.deferring && (force || all_ready || self.adopt_deadline.is_none())) {
            return;
        }
        if std::mem::take(&mut self.deferring) {
            let not_up: Vec<String> = self
                .peers
                .iter()
                .filter(|p| p.failed.is_none() && !p.end_of_rib_once)
                .filter(|p| p.session.established().is_none())
                .map(|p| p.addr.to_string())
                .collect();
            if !not_up.is_empty() {
                log(format_args!(
                    "graceful restart: announcing now; not waiting for {} peer(s) not up: {}",
                    not_up.len(),
                    not_up.join(", ")
                ));
            }
            for i in 0..self.peers.len() {
                let Some(families) = self.peers[i]
                    .session
                    .established()
                    .map(|e| e.negotiated.families.clone())
                else {
                    continue;
                };
                let id = self.peers[i].id;
                for family in families {
                    let refreshed = self.rib.refresh(id, family);
                    if let Err(e) = &refreshed {
                        log(format_args!(
                            "peer {}: the RIB refused the end-of-restart dump: {e}",
                            self.peers[i].addr
                        ));
                    }
                    if let Ok(mut ch) = refreshed {
                        match ch.out.iter_mut().find(|(p, _)| *p == id) {
                            Some((_, upd)) => upd.end_of_rib.push(family),
                            None => ch.out.push((
                                id,
                                crate::rib::OutUpdate {
                                    end_of_rib: vec![family],
                                    ..Default::default()
                                },
                            )),
                        }
                        self.apply_changes(ch, now);
                    }
                }
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            if self.peers[i]
                .session
                .next_deadline()
                .is_some_and(|d| d <= now)
            {
                let out = self.peers[i].session.handle(Input::Tick, now);
                self.queue(i, out);
            }
            if self.peers[i].stale_until.is_some_and(|d| d <= now) {
                self.peers[i].stale_until = None;
                let addr = self.peers[i].addr;
                log(format_args!(
                    "peer {addr}: restart time over without its End-of-RIB; its stale routes removed"
                ));
                let r = self.rib.stale_expired(self.peers[i].id);
                self.rib_changes(r, "stale sweep", addr, now);
            }
        }
        if self.adopt_deadline.is_some_and(|d| d <= now) {
            self.maybe_finish_restart(true, now);
        } else if self.deferring {
            // A peer's bound passed or its connect failed: it may be the last one waited for.
            self.maybe_finish_restart(false, now);
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn connect(&mut self, i: usize, now: Instant) {
        if let Some(old) = self.peers[i].connecting.take() {
            self.drop_conn(old);
        }
        let p = &self.peers[i];
        match tcp::connect(p.addr, p.local, p.key.as_deref()) {
            Ok(stream) => {
                let token = self.token();
                if self
                    .poller
                    .add(stream.as_raw_fd(), token, Interest::Write)
                    .is_err()
                {
                    let out = self.peers[i].session.handle(Input::ConnectFailed, now);
                    self.queue(i, out);
                    return;
                }
                self.conns.insert(token, Conn::new(i, stream, true));
                self.peers[i].connecting = Some(token);
            }
            Err(e) => {
                self.peers[i].last_connect_error = Some(e.to_string());
                let out = self.peers[i].session.handle(Input::ConnectFailed, now);
                self.queue(i, out);
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(l) = &self.listener else { return };
            let (stream, from) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNABORTED and friends: that connection is gone, others may follow;
                // EMFILE: nothing to do but try again on the next readiness.
                Err(_) => return,
            };
            let ip = canonical(from.ip());
            let Some(i) = self.peers.iter().position(|p| canonical(p.addr.ip()) == ip) else {
                continue; // not a configured neighbour: dropped, closed
            };
            if self.peers[i].failed.is_some() || tcp::accepted(&stream).is_err() {
                continue;
            }
            let token = self.token();
            if self
                .poller
                .add(stream.as_raw_fd(), token, Interest::Read)
                .is_err()
            {
                continue;
            }
            self.conns.insert(token, Conn::new(i, stream, false));
            let out = self.peers[i]
                .session
                .handle(Input::Connected(ConnId(token), Direction::Incoming), now);
            self.queue(i, out);
        }
    }

    fn conn_event(&mut self, token: u64, readable: bool, writable: bool, now: Instant) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let i = c.peer;
        if c.connecting {
            if !(writable || readable) {
                return;
            }
            c.connecting = false;
            self.peers[i].connecting = None;
            match tcp::finish_connect(&c.stream) {
                Ok(()) => {
                    self.rearm(token);
                    self.peers[i].last_connect_error = None;
                    let out = self.peers[i]
                        .session
                        .handle(Input::Connected(ConnId(token), Direction::Outgoing), now);
                    self.queue(i, out);
                }
                Err(e) => {
                    self.peers[i].last_connect_error =
                        Some(format!("connect to {}: {e}", self.peers[i].addr));
                    self.drop_conn(token);
                    let out = self.peers[i].session.handle(Input::ConnectFailed, now);
                    self.queue(i, out);
                }
            }
            return;
        }
        if writable {
            self.flush_conn(token);
        }
        if readable {
            self.read_conn(token, now);
        }
    }

    /// Reads a chunk at a time and processes it before reading on (so the buffer stays
    /// about a chunk, and kernel batches start early), up to [`READ_PER_TURN`].
    fn read_conn(&mut self, token: u64, now: Instant) {
        let mut total = 0;
        let mut eof = false;
        while total < READ_PER_TURN && !eof && !self.reading_paused() {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            let len = c.rbuf.len();
            c.rbuf.resize(len + READ_CHUNK, 0);
            match c.stream.read(&mut c.rbuf[len..]) {
                Ok(0) => {
                    c.rbuf.truncate(len);
                    eof = true;
                }
                Ok(n) => {
                    c.rbuf.truncate(len + n);
                    total += n;
                }
                Err(e) => {
                    c.rbuf.truncate(len);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => eof = true,
                    }
                }
            }
            self.process_input(token);
            // A long turn must not hold back anyone's keepalives.
            let now = Instant::now();
            self.timers(now);
            self.drain(now);
        }
        if eof && self.conns.contains_key(&token) {
            let i = self.conns[&token].peer;
            self.drop_conn(token);
            let out = self.peers[i]
                .session
                .handle(Input::Closed(ConnId(token)), now);
            self.queue(i, out);
        }
    }

    /// Frames, decodes and hands to the FSM every whole message read so far; the FSM's
    /// outputs are carried out after each message (an OPEN decides how UPDATEs decode).
    fn process_input(&mut self, token: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            if c.closing {
                return;
            }
            let i = c.peer;
            let buf = &c.rbuf[c.rpos..];
            let input = match packet::frame(buf) {
                Ok(None) => break,
                Ok(Some(len)) => {
                    let msg = packet::decode(&buf[..len], &c.negotiated);
                    c.rpos += len;
                    match msg {
                        Ok(m) => Input::Received(ConnId(token), m),
                        Err(n) => Input::DecodeError(ConnId(token), n),
                    }
                }
                Err(n) => {
                    c.rpos = c.rbuf.len();
                    Input::DecodeError(ConnId(token), n)
                }
            };
            // Time moves on while a large feed is decoded: the FSM's timers fire on time.
            let now = Instant::now();
            let out = self.peers[i].session.handle(input, now);
            self.queue(i, out);
            self.drain(now);
        }
        if let Some(c) = self.conns.get_mut(&token) {
            if c.rpos == c.rbuf.len() {
                c.rbuf.clear();
                c.rpos = 0;
                if c.rbuf.capacity() > 4 * READ_CHUNK {
                    c.rbuf.shrink_to(READ_CHUNK);
                }
            } else if c.rpos > 0 {
                // Keep only the partial message (at most 4 KiB) at the front.
                c.rbuf.drain(..c.rpos);
                c.rpos = 0;
            }
        }
    }

    /// Writes what is queued for `token`; watches for writability while some is left;
    /// closes the connection once drained if asked to.
    fn flush_conn(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.connecting {
            return;
        }
        let mut failed = false;
        while c.wpos < c.wbuf.len() {
            match c.stream.write(&c.wbuf[c.wpos..]) {
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
            if c.wbuf.capacity() > 1 << 20 {
                c.wbuf.shrink_to(64 << 10);
            }
        }
        let pending = c.wpos < c.wbuf.len();
        if (c.closing && !pending) || failed {
            // A write error surfaces as EOF or an error on the next read; closing here
            // (closing asked for, or the peer is gone) is all that is left to do.
            let i = c.peer;
            let asked = c.closing;
            self.drop_conn(token);
            if !asked {
                let out = self.peers[i]
                    .session
                    .handle(Input::Closed(ConnId(token)), Instant::now());
                self.queue(i, out);
            }
            return;
        }
        if pending != c.writable_interest {
            c.writable_interest = pending;
            self.rearm(token);
        }
    }

    fn drop_conn(&mut self, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            self.poller.delete(c.stream.as_raw_fd());
            if self.peers[c.peer].connecting == Some(token) {
                self.peers[c.peer].connecting = None;
            }
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn accept_control(&mut self) {
        loop {
            let Some((control, _)) = &self.control else {
                return;
            };
            match control.accept() {
                Ok((s, _)) => {
                    if s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.token();
                    if self
                        .poller
                        .add(s.as_raw_fd(), token, Interest::Read)
                        .is_ok()
                    {
                        self.clients.insert(token, control::Client::new(s));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn control_event(&mut self, token: u64) {
        let Some(c) = self.clients.get_mut(&token) else {
            return;
        };
        if !c.answered {
            match c.read() {
                Ok(None) => return,
                Ok(Some(req)) => {
                    let reply = req.and_then(|r| self.reply(r));
                    let c = self.clients.get_mut(&token).expect("client still there");
                    c.answer(reply);
                    let _ = self
                        .poller
                        .modify(c.stream.as_raw_fd(), token, Interest::Write);
                }
                Err(_) => {
                    self.drop_client(token);
                    return;
                }
            }
        }
        let c = self.clients.get_mut(&token).expect("client still there");
        match c.flush() {
            Ok(false) => {}
            Ok(true) | Err(_) => self.drop_client(token),
        }
    }

    fn drop_client(&mut self, token: u64) {
        if let Some(c) = self.clients.remove(&token) {
            self.poller.delete(c.stream.as_raw_fd());
        }
    }

    /// The reply's JSON, written straight to bytes (a 100,000-route RIB as a
    /// `serde_json::Value` tree would take a hundred megabytes).
    fn reply(&self, req: control::Request) -> Result<Vec<u8>, String> {
        match req {
            control::Request::Neighbors => serde_json::to_vec(&self.neighbors()),
            control::Request::Rib => self.rib_json(),
        }
        .map_err(|e| e.to_string())
    }

    /// What `twill bgp neighbors` shows.
    pub fn neighbors(&self) -> NeighborsReply {
        let now = Instant::now();
        let neighbors = self
            .peers
            .iter()
            .map(|p| {
                let st = p.session.status();
                let established = st.established.as_ref();
                let info = self.info(p, &st);
                Neighbor {
                    peer: p.cfg.address.to_string(),
                    asn: p.cfg.asn,
                    kind: p.kind,
                    state: st.state.to_string(),
                    since_seconds: now.saturating_duration_since(st.since).as_secs(),
                    info,
                    md5: p.key.is_some(),
                    failed: p.failed.clone(),
                    router_id: established.map(|e| e.open.router_id.to_string()),
                    prefixes_received: p.prefixes_received,
                    received: counts(&st.received),
                    sent: counts(&st.sent),
                    flaps: st.flaps,
                    stale_seconds_left: p
                        .stale_until
                        .map(|d| d.saturating_duration_since(now).as_secs()),
                    end_of_rib: p.end_of_rib,
                    tag: p.cfg.tag.clone(),
                }
            })
            .collect();
        NeighborsReply {
            router_id: self.cfg.router_id.to_string(),
            asn: self.cfg.asn,
            neighbors,
            md5_counters: tcp::Md5Counters::read(),
            kernel: self.kernel.as_ref().map(|k| k.stats()).unwrap_or_default(),
            adopted_pending: self.adopted.len() as u64,
        }
    }

    /// What `twill bgp rib` shows, as the JSON of a [`RibReply`]. Written one route at a
    /// time: the whole reply as values first would cost several times the text.
    pub fn rib_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(b"{\"routes\":[");
        for (n, r) in self.rib.routes().into_iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &self.rib_route(&r))?;
        }
        out.extend_from_slice(b"],\"kernel\":");
        let kernel = self.kernel.as_ref().map(|k| k.stats()).unwrap_or_default();
        serde_json::to_writer(&mut out, &kernel)?;
        out.push(b'}');
        Ok(out)
    }

    fn rib_route(&self, r: &crate::rib::RouteView) -> RibRoute {
        RibRoute {
            prefix: r.prefix,
            paths: r
                .paths
                .iter()
                .map(|p| {
                    let a = &p.attrs;
                    RibPath {
                        peer: p
                            .peer
                            .and_then(|id| self.index_of(id))
                            .map(|i| self.peers[i].cfg.address.to_string()),
                        next_hop: a
                            .next_hop
                            .map(IpAddr::V4)
                            .filter(|_| r.prefix.addr().is_ipv4())
                            .or_else(|| a.mp_next_hop.first().copied()),
                        as_path: as_path_text(&a.as_path),
                        origin: format!("{:?}", a.origin).to_lowercase(),
                        local_pref: a.local_pref,
                        med: a.med,
                        communities: a
                            .communities
                            .iter()
                            .map(|c| config::CommunityValue(c.0).to_string())
                            .collect(),
                        large_communities: a
                            .large_communities
                            .iter()
                            .map(|c| format!("{}:{}:{}", c.global, c.local1, c.local2))
                            .collect(),
                        best: p.best,
                        multipath: p.multipath,
                        stale: p.stale,
                    }
                })
                .collect(),
        }
    }

    fn shutdown(&mut self, graceful: bool) {
        // What waits for the writer goes first, in order (blocking is fine now).
        if let Some(k) = &mut self.kernel {
            for batch in self.fib_queue.drain(..) {
                k.send(batch);
            }
            k.send(std::mem::take(&mut self.fib_pending));
        }
        if !graceful {
            let now = Instant::now();
            for i in 0..self.peers.len() {
                let out = self.peers[i].session.handle(Input::Stop, now);
                // Only what goes on the wire: the RIB and kernel are handled below.
                for o in out {
                    if matches!(o, Output::Send(..) | Output::Close(_)) {
                        self.output(i, o, now);
                    }
                }
            }
            // Wait (a little) only for connections with a NOTIFICATION still to write.
            let deadline = Instant::now() + SHUTDOWN_FLUSH;
            loop {
                let tokens: Vec<u64> = self.conns.keys().copied().collect();
                for t in tokens {
                    self.flush_conn(t);
                    if self
                        .conns
                        .get(&t)
                        .is_some_and(|c| c.connecting || c.wpos == c.wbuf.len())
                    {
                        self.drop_conn(t);
                    }
                }
                if self.conns.is_empty() || Instant::now() >= deadline {
                    break;
                }
                let _ = self.poller.wait(Some(Duration::from_millis(20)));
            }
            // Our routes out of the kernel: what the RIB installed and what was adopted.
            let mut gone: Vec<FibChange> = self
                .rib
                .fib()
                .into_iter()
                .map(|c| FibChange {
                    prefix: c.prefix,
                    next_hops: Vec::new(),
                })
                .collect();
            gone.extend(self.adopted.sweep());
            if let Some(k) = &mut self.kernel {
                k.send(gone);
            }
        }
        if let Some(k) = &mut self.kernel {
            k.flush();
        }
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for t in tokens {
            self.drop_conn(t);
        }
        if let Some((_, path)) = &self.control {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Conn {
    fn new(peer: usize, stream: TcpStream, connecting: bool) -> Conn {
        Conn {
            peer,
            stream,
            connecting,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            closing: false,
            writable_interest: false,
            negotiated: Negotiated::default(),
            established: false,
        }
    }
}

/// An IPv4 peer seen through an IPv6 socket as ::ffff:a.b.c.d is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn counts(c: &fsm::MessageCounts) -> control::MessageCounts {
    control::MessageCounts {
        open: c.open,
        update: c.update,
        notification: c.notification,
        keepalive: c.keepalive,
        route_refresh: c.route_refresh,
    }
}

fn as_path_text(p: &packet::AsPath) -> String {
    p.segments
        .iter()
        .map(|s| {
            let asns: Vec<String> = s.asns.iter().map(u32::to_string).collect();
            match s.kind {
                packet::AsSegmentKind::Sequence => asns.join(" "),
                packet::AsSegmentKind::Set => format!("{{{}}}", asns.join(",")),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The session settings for one configured peer. `restarted`: we found our routes in the
/// kernel, so (with graceful restart) we announce the R and F bits.
pub fn session_config(cfg: &Config, p: &config::Peer, restarted: bool) -> SessionConfig {
    let mut sc = SessionConfig::new(cfg.asn, p.asn, cfg.router_id);
    sc.passive = p.passive;
    sc.families = vec![if p.address.ip.is_ipv4() {
        Family::IPV4_UNICAST
    } else {
        Family::IPV6_UNICAST
    }];
    if let Some(h) = p.hold_time {
        sc.hold_time = h;
    }
    sc.keepalive = p.keepalive;
    sc.connect_retry = p.connect_retry();
    sc.connect_backoff = Some(CONNECT_BACKOFF);
    // Reconnect soon after an error: BIRD's 60 s default is long for a mesh of nodes; the
    // backoff still doubles for errors in a row.
    sc.error_wait.min = p.connect_retry().min(sc.error_wait.max);
    sc.graceful_restart = cfg
        .graceful_restart
        .as_ref()
        .map(|g| fsm::GracefulRestartConfig {
            restart_time: g.restart_time,
            restarting: restarted,
            forwarding_preserved: restarted,
        });
    sc
}

/// Whether the session with a peer configured as `a` may go on as `b`: everything but the
/// `tag` and `maxRestartTime` (neither is on the wire nor in the RIB) is the same.
fn same_session(a: &config::Peer, b: &config::Peer) -> bool {
    let strip = |p: &config::Peer| config::Peer {
        tag: None,
        max_restart_time: None,
        ..p.clone()
    };
    strip(a) == strip(b)
}

/// The RIB's view of one configured peer (roles and policies).
pub fn peer_config(p: &config::Peer, who: &str) -> Result<PeerConfig, SpeakerError> {
    let mut pc = PeerConfig::new(p.asn, p.address.ip);
    pc.rr_client = p.route_reflector_client;
    pc.next_hop_self = p.next_hop_self;
    pc.keep_original_next_hop = p.keep_original_next_hop;
    pc.export_originated_only = p.export_originated_only;
    pc.import = p.import.as_ref().map(|x| policy(x, who)).transpose()?;
    pc.export = p.export.as_ref().map(|x| policy(x, who)).transpose()?;
    Ok(pc)
}

/// A configured policy as the RIB's [`Policy`].
pub fn policy(p: &PolicyConfig, who: &str) -> Result<Policy, SpeakerError> {
    Ok(match p {
        PolicyConfig::Accept => Policy::accept_all(),
        PolicyConfig::Reject => Policy { terms: Vec::new() },
        PolicyConfig::Terms(terms) => Policy {
            terms: terms
                .iter()
                .map(|t| {
                    let mut matches = Vec::new();
                    if !t.prefixes.is_empty() {
                        let list = t
                            .prefixes
                            .iter()
                            .map(|e| PrefixMatch::new(e.prefix, e.ge, e.le))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| SpeakerError::Peer {
                                peer: who.to_owned(),
                                message: e.to_string(),
                            })?;
                        matches.push(Match::Prefix(list));
                    }
                    if !t.communities.is_empty() {
                        matches.push(Match::Community(
                            t.communities
                                .iter()
                                .map(|c| packet::Community(c.0))
                                .collect(),
                        ));
                    }
                    if !t.large_communities.is_empty() {
                        matches.push(Match::LargeCommunity(
                            t.large_communities.iter().map(large).collect(),
                        ));
                    }
                    let mut actions = Vec::new();
                    actions.extend(
                        t.add_communities
                            .iter()
                            .map(|c| Action::AddCommunity(packet::Community(c.0))),
                    );
                    actions.extend(
                        t.remove_communities
                            .iter()
                            .map(|c| Action::RemoveCommunity(packet::Community(c.0))),
                    );
                    actions.extend(
                        t.add_large_communities
                            .iter()
                            .map(|c| Action::AddLargeCommunity(large(c))),
                    );
                    if let Some(v) = t.set_local_pref {
                        actions.push(Action::SetLocalPref(v));
                    }
                    if let Some(v) = t.set_med {
                        actions.push(Action::SetMed(v));
                    }
                    if t.next_hop_self {
                        actions.push(Action::NextHopSelf);
                    }
                    Ok(Term {
                        matches,
                        actions,
                        verdict: match t.action {
                            config::Verdict::Accept => Verdict::Accept,
                            config::Verdict::Reject => Verdict::Reject,
                        },
                    })
                })
                .collect::<Result<_, SpeakerError>>()?,
        },
    })
}

fn large(c: &config::LargeCommunityValue) -> packet::LargeCommunity {
    packet::LargeCommunity {
        global: c.0,
        local1: c.1,
        local2: c.2,
    }
}

/// Binds the control socket at `path`, replacing a stale socket file (one nobody answers
/// on) but never a live speaker's.
fn bind_control(path: &std::path::Path) -> Result<UnixListener, SpeakerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!(
            "create the directory of the control socket {}",
            path.display()
        )))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SpeakerError::ControlInUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io_err(format!(
                "remove the stale control socket {}",
                path.display()
            )))?;
            UnixListener::bind(path).map_err(io_err(format!(
                "bind the control socket {}",
                path.display()
            )))
        }
        Err(e) => Err(io_err(format!(
            "bind the control socket {}",
            path.display()
        ))(e)),
    }
}

/// `twill bgp serve`: loads nothing itself; runs `cfg` until SIGTERM/SIGINT.
pub fn serve(cfg: Config) -> Result<(), SpeakerError> {
    Speaker::new(cfg)?.run()
}

/// One line on stderr per event an operator needs to see (sessions going up and down, routes
/// kept or swept, anything refused), with the wall-clock time.
fn log(event: std::fmt::Arguments<'_>) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "{}.{:03} twill-bgp: {event}",
        t.as_secs(),
        t.subsec_millis()
    );
}
