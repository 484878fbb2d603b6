//! The agent's I/O loop around [`crate::machine::Machine`] (which decides everything: the
//! network config, the node IP, the lease, the blocks, growth, what to publish): it opens
//! the store, serves HTTP, and does what the machine asks against the real store, kernel
//! and files. Store errors never end it: they are retried with backoff and shown by /readyz.

use crate::autodetect::{self, NodeIp};
use crate::backend::RoutingInputs;
use crate::claims::{self, Backoff};
use crate::config::{Config, StoreKind};
use crate::endpoints;
use crate::handoff::{self, FileError, HandOffWriter, Memory};
use crate::http::{self, Status};
use crate::log;
use crate::machine::{
    Action, Input, Machine, Measured, Params, Report, StoreOp, StoreReply, MAX_WAIT,
};
use crate::netinfo;
use crate::peers::{self, Prober};
use crate::routing::Routing;
use ipnet::Ipv4Net;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use twill_api::bgp::{RoutingStatus, PREFIX_ROUTING_STATUS};
use twill_api::resources::{HandOff, NetworkConfig, NodeSpec, PeerView};
use twill_ipam::records::{RecordDir, RecordError};
use twill_store::{Event, Store, StoreError, Watch};

pub use crate::machine::key;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr} for /healthz, /readyz, /metrics: {source}; set listen to a free address:port")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Agent;

impl Agent {
    /// Runs until `shutdown` is set. Opens the store the config names (retrying until it
    /// can) and serves HTTP on `listen`.
    pub fn run(config: Config, shutdown: Arc<AtomicBool>) -> Result<(), AgentError> {
        Self::run_inner(config, None, shutdown)
    }

    /// Like [`Agent::run`] with a store opened by the caller (tests share one handle).
    pub fn run_with_store(
        config: Config,
        store: Arc<dyn Store>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<(), AgentError> {
        Self::run_inner(config, Some(store), shutdown)
    }

    fn run_inner(
        config: Config,
        store: Option<Arc<dyn Store>>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<(), AgentError> {
        // First of all, before anything that can fail (the listen port may be taken, the
        // store unreachable): an agent that exits here must not leave a hand-off listing
        // blocks whose lease nobody renews, for twill-cni to keep handing out after another
        // node has taken them.
        let leftovers = Leftovers::take(&config);
        let listener = TcpListener::bind(config.listen).map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
        let bound = listener.local_addr().unwrap_or(config.listen);
        let status = Arc::new(Status::new(&config.node_name));
        let server = {
            let (status, shutdown) = (status.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("twilld-http".into())
                .spawn(move || http::serve(listener, status, shutdown))
                .expect("spawn the HTTP thread")
        };
        log::info(
            "twilld starting",
            &[
                ("node", &config.node_name),
                ("version", &env!("CARGO_PKG_VERSION")),
                ("store", &format!("{:?}", config.store).to_lowercase()),
                // The address bound (a port 0 asked for is the one the kernel gave).
                ("listen", &bound),
            ],
        );
        let mut backoff = Backoff::seeded(crate::claims::seed(&config.node_name));
        let store = match store {
            Some(s) => Some(s),
            None => loop {
                if shutdown.load(Ordering::Relaxed) {
                    break None;
                }
                status.update(|s| s.last_tick = Instant::now());
                match open_store(&config) {
                    Ok(s) => break Some(s),
                    Err(e) => {
                        let why = format!("store unreachable: {e}");
                        log::warn("cannot open the store; retrying", &[("error", &e)]);
                        status.update(|s| {
                            s.not_ready = Some(why);
                            s.store_up = false;
                            s.store_errors += 1;
                        });
                        sleep_unless(&shutdown, backoff.next_delay());
                    }
                }
            },
        };
        if let Some(store) = store {
            // Network policy runs on a thread of its own (see crate::policy).
            let policy = if config.policy {
                let (shared, thread) =
                    crate::policy::start(store.clone(), config.node_name.clone(), shutdown.clone());
                status.update(|s| s.policy = Some(shared));
                Some(thread)
            } else {
                crate::policy::clear();
                None
            };
            Runner::new(config, store, status, shutdown.clone(), leftovers).run();
            if let Some(t) = policy {
                let _ = t.join();
            }
        }
        let _ = server.join();
        log::info(
            "twilld stopped; its lease is kept so a restart gets the same blocks",
            &[],
        );
        Ok(())
    }
}

/// Opens the store the config names (the same choices as `twill_store::open`).
fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, StoreError> {
    twill_store::open(&cfg.store_config()?).map(Arc::from)
}

fn sleep_unless(shutdown: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Net {
    config: NetworkConfig,
    routing: Routing,
}

/// The shortest time between two wakes of the loop by the backend's timer alone.
const BACKEND_GAP: Duration = Duration::from_millis(50);

/// Why the loop's wait ended early.
enum Wake {
    /// From the watch thread of that generation: an event, or why the watch ended.
    Store(u64, Result<Event, StoreError>),
    /// The backend has news (its sockets, threads or timers).
    Backend,
    /// twill-cni's records changed (inotify).
    Records,
    /// [`wake_for_shutdown`]: the shutdown flag may be set.
    Shutdown,
}

/// The loops of this process's agents, by id, for [`wake_for_shutdown`].
static SHUTDOWN_WAKERS: Mutex<Vec<(u64, Sender<Wake>)>> = Mutex::new(Vec::new());
static NEXT_WAKER: AtomicU64 = AtomicU64::new(0);

/// Wakes every agent loop of this process now, so one whose shutdown flag was just set
/// stops at once instead of at the end of its wait (up to [`MAX_WAIT`]): twilld's signal
/// thread calls it after SIGTERM, and BGP peers get their Cease within milliseconds.
pub fn wake_for_shutdown() {
    let wakers = SHUTDOWN_WAKERS.lock().unwrap_or_else(|e| e.into_inner());
    for (_, tx) in wakers.iter() {
        let _ = tx.send(Wake::Shutdown);
    }
}

/// What the last run left on this node, taken in hand before the store is opened (which
/// can take long: etcd may be down): temporary files of killed writes are removed, the
/// blocks it remembers are read, and the old hand-off is cut to no block at once. The blocks
/// it lists may have gone to another node while this one was down; twill-cni answers "try
/// again" until the machine has confirmed them under a live lease.
struct Leftovers {
    remembered: Vec<Ipv4Net>,
    /// What the hand-off file still lists (nothing, unless the cut failed).
    handed_off: Vec<Ipv4Net>,
}

impl Leftovers {
    fn take(cfg: &Config) -> Leftovers {
        for f in handoff::remove_stale_temporaries(&cfg.handoff_file)
            .into_iter()
            .chain(handoff::remove_stale_temporaries(&handoff::memory_path(
                &cfg.state_dir,
            )))
        {
            log::info(
                "removed a temporary file left by a write that was killed",
                &[("file", &f.display())],
            );
        }
        let mut handed_off = handoff::read_handoff_blocks(&cfg.handoff_file, &cfg.node_name);
        let mut remembered = handoff::read_memory(&cfg.state_dir, &cfg.node_name);
        for b in &handed_off {
            if !remembered.contains(b) {
                remembered.push(*b);
            }
        }
        match handoff::restrict_handoff(&cfg.handoff_file, &[]) {
            Ok(true) => {
                let list: Vec<String> = handed_off.iter().map(|b| b.to_string()).collect();
                log::info(
                    "hand-off cut to no block until this node's blocks are confirmed in the store",
                    &[
                        ("file", &cfg.handoff_file.display()),
                        ("was", &list.join(",")),
                    ],
                );
                handed_off.clear();
            }
            Ok(false) => {}
            // The machine tries again once it runs.
            Err(e) => log::error("cannot cut the old hand-off", &[("error", &e)]),
        }
        Leftovers {
            remembered,
            handed_off,
        }
    }
}

/// The I/O loop around [`Machine`]: it does what the machine asks against the real store,
/// kernel and files, and feeds the answers back.
struct Runner {
    cfg: Config,
    store: Arc<dyn Store>,
    status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
    machine: Machine,
    net: Option<Net>,
    /// What wakes the loop early: store events (from the watch's thread) and the backend.
    wake_tx: Sender<Wake>,
    wake_rx: Receiver<Wake>,
    /// Wakes taken off `wake_rx` in the middle of a round that must wait for its end (see
    /// [`Machine::takes_mid_round`]), in their order; handed in before anything newer.
    held_back: std::collections::VecDeque<Input>,
    /// The current watch; a thread of an older one stops and its events are dropped.
    watch_gen: Arc<AtomicU64>,
    watch_thread: Option<std::thread::JoinHandle<()>>,
    /// The backend has been reconciled (its timers count from then on), and when its timer
    /// last woke the loop.
    reconciled: bool,
    backend_woke: Instant,
    handoff: HandOffWriter,
    records: Option<RecordDir>,
    /// The uplink's MTU, as last read (for the pod MTU in the hand-off).
    uplink_mtu: Option<u32>,
    /// Probes every peer's node IP (started once a backend routes between nodes).
    prober: Option<Prober>,
    /// The peers this node has traffic with: probed every interval, the rest in turn.
    active_peers: ActivePeers,
    /// What the prober's targets were last made of: the peers, the uplink's subnet, and
    /// the addresses with traffic.
    probed: Option<(
        crate::backend::Peers,
        Option<Ipv4Net>,
        std::collections::HashSet<std::net::Ipv4Addr>,
    )>,
    /// Set by the records' inotify thread when it wakes the loop, cleared when the loop
    /// takes the wake: one wake for a burst of changes.
    records_wake: Arc<AtomicBool>,
    records_watch: Option<std::thread::JoinHandle<()>>,
    /// Records already said to be unpublishable (said once, not on every read).
    unpublishable: std::collections::BTreeSet<String>,
    /// Its entry in [`SHUTDOWN_WAKERS`].
    waker_id: u64,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let mut wakers = SHUTDOWN_WAKERS.lock().unwrap_or_else(|e| e.into_inner());
        wakers.retain(|(id, _)| *id != self.waker_id);
    }
}

impl Runner {
    fn new(
        cfg: Config,
        store: Arc<dyn Store>,
        status: Arc<Status>,
        shutdown: Arc<AtomicBool>,
        leftovers: Leftovers,
    ) -> Runner {
        let Leftovers {
            remembered,
            handed_off,
        } = leftovers;
        let machine = Machine::new(
            Params {
                node: cfg.node_name.clone(),
                static_store: store.kind() == StoreKind::Static,
                min_free_addresses: cfg.min_free_addresses,
                poll_interval: cfg.poll_interval,
                remembered,
                handed_off,
                started_at: now_secs(),
                version: env!("CARGO_PKG_VERSION").into(),
                static_file: cfg.static_file.as_ref().map(|p| p.display().to_string()),
            },
            Instant::now(),
        );
        let (wake_tx, wake_rx) = mpsc::channel();
        let waker_id = NEXT_WAKER.fetch_add(1, Ordering::Relaxed);
        SHUTDOWN_WAKERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((waker_id, wake_tx.clone()));
        Runner {
            waker_id,
            handoff: HandOffWriter::new(cfg.handoff_file.clone()),
            cfg,
            store,
            status,
            shutdown,
            machine,
            net: None,
            wake_tx,
            wake_rx,
            held_back: Default::default(),
            watch_gen: Arc::new(AtomicU64::new(0)),
            watch_thread: None,
            reconciled: false,
            backend_woke: Instant::now(),
            records: None,
            uplink_mtu: None,
            prober: None,
            active_peers: ActivePeers::default(),
            probed: None,
            records_wake: Arc::new(AtomicBool::new(false)),
            records_watch: None,
            unpublishable: Default::default(),
        }
    }

    fn run(&mut self) {
        while !self.shutdown.load(Ordering::Relaxed) {
            self.status.update(|s| s.last_tick = Instant::now());
            let action = self.machine.poll(Instant::now());
            let slept = matches!(action, Action::Sleep(_));
            if let Some(input) = self.execute(action) {
                self.machine.handle(Instant::now(), input);
            }
            if slept {
                // Everything else already queued goes in before the next round, so a burst
                // of watch events (a cold start: one per node) costs one round, not one
                // round each.
                while let Some(input) = self.queued() {
                    self.machine.handle(Instant::now(), input);
                }
            } else {
                self.mid_round();
            }
        }
        self.stop_routing();
        self.watch_gen.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.watch_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.records_watch.take() {
            let _ = t.join();
        }
    }

    /// A clean stop: the backend first (BGP peers get their Cease now, not after the threads
    /// have been joined), then this node's `routingstatus/<node>`, which would otherwise
    /// stay until the lease expires (exiting keeps the lease).
    fn stop_routing(&mut self) {
        let Some(net) = self.net.as_mut() else {
            return;
        };
        let published = net.routing.routing_status().is_some();
        net.routing.stop();
        if !published || self.store.kind() == StoreKind::Static {
            return;
        }
        let k = key(&format!("{PREFIX_ROUTING_STATUS}{}", self.cfg.node_name));
        if let Err(e) = self.store.delete(&k) {
            log::error(
                "cannot remove this node's routing status; it goes with the lease",
                &[("key", &k), ("error", &e)],
            );
        }
    }

    /// Runs `w` on a thread of its own that forwards its events to the loop, so the loop
    /// can wait for the store and the backend at once.
    fn start_watch(&mut self, mut w: Box<dyn Watch>) {
        let gen = self.watch_gen.fetch_add(1, Ordering::Relaxed) + 1;
        let (current, shutdown, tx) = (
            self.watch_gen.clone(),
            self.shutdown.clone(),
            self.wake_tx.clone(),
        );
        let old = self.watch_thread.replace(
            std::thread::Builder::new()
                .name("twilld-watch".into())
                .spawn(move || {
                    while current.load(Ordering::Relaxed) == gen
                        && !shutdown.load(Ordering::Relaxed)
                    {
                        let msg = match w.next(MAX_WAIT) {
                            Ok(None) => continue,
                            Ok(Some(ev)) => Ok(ev),
                            Err(e) => Err(e),
                        };
                        let ended = msg.is_err();
                        if tx.send(Wake::Store(gen, msg)).is_err() || ended {
                            break;
                        }
                    }
                })
                .expect("spawn the watch thread"),
        );
        // Superseded: it stops within MAX_WAIT; not waited for here.
        drop(old);
    }

    /// Does one action; the answer, if the machine wants one.
    fn execute(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Store(op) => Some(self.store_op(op)),
            Action::UseConfig(c) => Some(Input::Backend(self.use_config(*c))),
            Action::DetectNodeIp(spec) => Some(Input::NodeIp(self.detect(spec.as_ref()))),
            Action::MeasureUsage => Some(Input::Usage(self.measure())),
            Action::ReadEndpoints => Some(Input::Endpoints(self.read_endpoints())),
            Action::Reconcile {
                node_ip,
                blocks,
                peers,
                inputs,
            } => Some(Input::Reconciled(
                self.route(&node_ip, blocks, &peers, *inputs),
            )),
            Action::ProbePeers { node_ip, peers } => {
                Some(Input::PeerView(self.probe_peers(&node_ip, peers)))
            }
            Action::Peers(peers) => {
                if let Some(net) = self.net.as_mut() {
                    net.routing.peers_changed(&peers);
                }
                None
            }
            Action::WriteHandOff(blocks) => Some(Input::Written(
                self.write_handoff(blocks).map_err(|e| e.to_string()),
            )),
            Action::WriteMemory(blocks) => Some(Input::Written(
                handoff::write_memory(
                    &self.cfg.state_dir,
                    &Memory {
                        node: self.cfg.node_name.clone(),
                        blocks,
                    },
                )
                .map_err(|e| e.to_string()),
            )),
            Action::Log(line) => {
                let f: Vec<(&str, &dyn std::fmt::Display)> = line
                    .fields
                    .iter()
                    .map(|(k, v)| (*k, v as &dyn std::fmt::Display))
                    .collect();
                log::event(line.level, line.msg, &f);
                None
            }
            Action::Report(r) => {
                self.report(r);
                None
            }
            Action::Sleep(until) => self.wait(until),
        }
    }

    fn report(&self, r: Report) {
        self.status.update(|s| match r {
            Report::Ready => {
                s.not_ready = None;
                s.store_up = true;
            }
            Report::NotReady { reason, store_up } => {
                s.not_ready = Some(reason);
                s.store_up = store_up;
            }
            Report::StoreError => s.store_errors += 1,
            Report::LeaseRenewed => s.lease_renewals += 1,
            Report::LeaseRenewalFailed => s.lease_renewal_failures += 1,
            Report::NodeIp(a, m) => s.node_ip = Some((a, m)),
            Report::Blocks(b) => s.blocks = b,
            Report::Usage { used, free } => {
                s.used = used;
                s.free = free;
            }
            Report::Peers(p) => s.peers = p,
        });
    }

    fn store_op(&mut self, op: StoreOp) -> Input {
        if let StoreOp::Watch { range, after } = &op {
            let r = self.store.watch_range_from(range, after).map(|w| {
                self.start_watch(w);
                StoreReply::Watching
            });
            return Input::Store(r);
        }
        let s = &self.store;
        let r = match op {
            StoreOp::Get(k) => s.get(&k).map(StoreReply::Value),
            StoreOp::List(p) => s.list(&p).map(|(kvs, rev)| StoreReply::List(kvs, rev)),
            StoreOp::Put { key, value, lease } => {
                s.put(&key, &value, lease).map(StoreReply::Revision)
            }
            StoreOp::Create { key, value, lease } => {
                s.create(&key, &value, lease).map(StoreReply::Created)
            }
            StoreOp::Update {
                key,
                expected,
                value,
                lease,
            } => s
                .update(&key, expected, &value, lease)
                .map(StoreReply::Done),
            StoreOp::DeleteIf { key, expected } => {
                s.delete_if(&key, expected).map(StoreReply::Done)
            }
            StoreOp::Delete(key) => s.delete(&key).map(StoreReply::Done),
            StoreOp::Grant(ttl) => s.grant(ttl).map(StoreReply::Lease),
            StoreOp::KeepAlive(l) => s.keep_alive(l).map(StoreReply::Ttl),
            StoreOp::Watch { .. } => unreachable!("handled above"),
        };
        Input::Store(r)
    }

    /// Sleeps until `until` or the backend's next timer (at most [`MAX_WAIT`] per call, so
    /// shutdown is seen), waking early on a store event or a backend event.
    fn wait(&mut self, until: Instant) -> Option<Input> {
        // Never more often than every BACKEND_GAP on its timer alone: a backend whose timer
        // stays in the past must not spin the loop.
        let backend_due = self
            .net
            .as_ref()
            .filter(|_| self.reconciled)
            .map(|n| n.routing.next_wake().max(self.backend_woke + BACKEND_GAP));
        if let Some(input) = self.held_back.pop_front() {
            return Some(input);
        }
        let deadline = backend_due.map_or(until, |b| b.min(until));
        let d = deadline
            .saturating_duration_since(Instant::now())
            .min(MAX_WAIT);
        match self.wake_rx.recv_timeout(d) {
            Ok(w) => self.input_of(w),
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                backend_due.filter(|b| now >= *b)?;
                self.backend_woke = now;
                Some(Input::BackendDue)
            }
            Err(RecvTimeoutError::Disconnected) => unreachable!("the loop holds a sender"),
        }
    }

    /// What a wake means to the machine (None: nothing, e.g. an old watch's event).
    fn input_of(&self, w: Wake) -> Option<Input> {
        match w {
            Wake::Store(gen, msg) if gen == self.watch_gen.load(Ordering::Relaxed) => {
                Some(match msg {
                    Ok(ev) => Input::Watch(ev),
                    Err(e) => Input::WatchEnded(e),
                })
            }
            Wake::Store(..) | Wake::Shutdown => None,
            Wake::Backend => Some(Input::BackendDue),
            Wake::Records => {
                self.records_wake.store(false, Ordering::SeqCst);
                Some(Input::RecordsChanged)
            }
        }
    }

    /// Between two actions of a round: the node events already queued go in now (the
    /// machine then hands the backend the new peers before the round's pass: a reflector
    /// peers with a joining client while its own round still waits on the store); any
    /// other wake is held back, in order, for the round's end.
    fn mid_round(&mut self) {
        while let Ok(w) = self.wake_rx.try_recv() {
            let Some(input) = self.input_of(w) else {
                continue;
            };
            match input {
                // Never ahead of an older event of the same key held back.
                Input::Watch(ev)
                    if self.machine.takes_mid_round(&ev)
                        && !self
                            .held_back
                            .iter()
                            .any(|h| matches!(h, Input::Watch(old) if old.key() == ev.key())) =>
                {
                    self.machine.handle(Instant::now(), Input::Watch(ev))
                }
                other => self.held_back.push_back(other),
            }
        }
    }

    /// The next wake already queued, without waiting (None: the queue is empty).
    fn queued(&mut self) -> Option<Input> {
        if let Some(input) = self.held_back.pop_front() {
            return Some(input);
        }
        loop {
            let w = self.wake_rx.try_recv().ok()?;
            if let Some(input) = self.input_of(w) {
                return Some(input);
            }
        }
    }

    fn use_config(&mut self, config: NetworkConfig) -> Result<(), String> {
        let routing = Routing::new_in(&config.backend, &self.cfg.state_dir, &self.cfg.ovs_rundir)
            .map_err(|e| e.to_string())?;
        // The backend's own sockets, threads and timers wake the loop.
        let tx = self.wake_tx.clone();
        routing.set_waker(Arc::new(move || {
            let _ = tx.send(Wake::Backend);
        }));
        if config.backend.kind().crosses_nodes() {
            // Pods on other nodes are reached by forwarding through this one.
            if let Err(e) = twill_netlink::set_sysctl(None, "net.ipv4.ip_forward", "1") {
                log::error("cannot turn on IPv4 forwarding", &[("error", &e)]);
            }
        }
        let metrics = routing.metrics();
        self.status.update(|s| {
            s.backend = config.backend.to_string();
            s.backend_metrics = metrics;
        });
        self.net = Some(Net { config, routing });
        // The targets name how the backend reaches each peer: made again for this one.
        self.probed = None;
        Ok(())
    }

    /// The hand-off with exactly `blocks`. Before the network config is known, the old
    /// file (if any) is only cut to them.
    fn write_handoff(&mut self, blocks: Vec<Ipv4Net>) -> Result<(), FileError> {
        let Some(net) = self.net.as_ref() else {
            return handoff::restrict_handoff(&self.cfg.handoff_file, &blocks).map(drop);
        };
        let uplink = self.uplink_mtu.unwrap_or(net.config.mtu);
        let h = HandOff {
            node: self.cfg.node_name.clone(),
            cluster_cidr: net.config.cluster_cidr,
            blocks,
            mtu: net.routing.pod_mtu(uplink, net.config.mtu),
            ip_masq: net.config.masquerade,
            pod_wiring: net.config.pod_wiring,
        };
        if self.handoff.write(&h)? {
            let list: Vec<String> = h.blocks.iter().map(|b| b.to_string()).collect();
            log::info(
                "hand-off written",
                &[
                    ("file", &self.cfg.handoff_file.display()),
                    ("blocks", &list.join(",")),
                ],
            );
        }
        Ok(())
    }

    /// Programs the routes to the other nodes: only what changed since the last pass
    /// (or what drifted, every resync). Kernel errors are reported, never fatal. Returns
    /// the backend's routing sessions, if it runs any.
    fn route(
        &mut self,
        ip: &NodeIp,
        blocks: Vec<Ipv4Net>,
        peers: &[crate::backend::Peer],
        inputs: RoutingInputs,
    ) -> Option<RoutingStatus> {
        let (Some(uplink), Some(cidr)) = (ip.interface.clone(), ip.cidr) else {
            if self
                .net
                .as_ref()
                .is_some_and(|n| !n.config.backend.kind().crosses_nodes())
            {
                return None;
            }
            let why = format!(
                "the node IP {} is on no interface of this node: the backend cannot tell which uplink to use; fix nodeIP or the Node resource",
                ip.address
            );
            self.status.update(|s| s.backend_problems = vec![why]);
            return None;
        };
        if self.uplink_mtu.is_none() {
            self.uplink_mtu = twill_netlink::Handle::new()
                .ok()
                .and_then(|mut h| h.link_by_name(&uplink).ok().flatten())
                .map(|l| l.mtu);
        }
        let local = crate::backend::Local {
            name: self.cfg.node_name.clone(),
            address: ip.address,
            uplink,
            uplink_cidr: cidr.trunc(),
            blocks,
            mtu_uplink: self.uplink_mtu.unwrap_or(1500),
            pod_wiring: self.net.as_ref().expect("set before").config.pod_wiring,
        };
        let net = self.net.as_mut().expect("set before");
        self.reconciled = true;
        net.routing.set_inputs(inputs);
        match net.routing.reconcile(&local, peers) {
            Ok(Some(pass)) => {
                let problems = net.routing.problems().to_vec();
                self.status.update(|s| {
                    s.backend_changes += pass.changes as u64;
                    s.backend_failures += pass.failures.len() as u64;
                    s.backend_problems = problems;
                });
            }
            Ok(None) => {}
            Err(e) => {
                log::error("cannot read the kernel's routing state", &[("error", &e)]);
                self.status.update(|s| s.backend_failures += 1);
            }
        }
        let routing = net.routing.routing_status();
        self.status.update(|s| s.routing = routing.clone());
        routing
    }

    /// Hands the peers to the prober and tells what it sees. Only when a backend routes
    /// between nodes: with `none` no traffic crosses them.
    fn probe_peers(&mut self, ip: &NodeIp, peers: crate::backend::Peers) -> Option<PeerView> {
        let net = self
            .net
            .as_ref()
            .filter(|n| n.config.backend.kind().crosses_nodes())?;
        if self.prober.is_none() {
            let seed = crate::claims::seed(&self.cfg.node_name);
            match Prober::start(self.cfg.peer_probe_interval, seed, self.shutdown.clone()) {
                Ok(p) => self.prober = Some(p),
                Err(e) => {
                    log::error("cannot start the peer prober", &[("error", &e)]);
                    return None;
                }
            }
        }
        match self
            .active_peers
            .rotation
            .next(&peers, &self.active_peers.addresses)
        {
            Some(look) => {
                let uplink = ip.interface.as_deref();
                self.active_peers.addresses = neighbours_in_use(uplink, &look);
            }
            None => self.active_peers.addresses.clear(),
        }
        let prober = self.prober.as_ref().expect("started above");
        // The same peers (the very list: the machine shares one until they change), uplink
        // and traffic as last time: the prober has these targets already.
        let handed = (peers, ip.cidr, self.active_peers.addresses.clone());
        let same = self.probed.as_ref().is_some_and(|(p, cidr, active)| {
            Arc::ptr_eq(p, &handed.0) && *cidr == handed.1 && *active == handed.2
        });
        if !same {
            prober.set_targets(&peers::targets(
                &handed.0,
                &net.config.backend,
                ip.cidr,
                &self.active_peers.addresses,
            ));
            self.probed = Some(handed);
        }
        let sent = prober.sent();
        self.status.update(|s| s.peer_probes = sent);
        Some(prober.view(Some(ip.address), ip.interface.clone()))
    }

    fn detect(&self, spec: Option<&NodeSpec>) -> Result<NodeIp, String> {
        let interfaces = netinfo::interfaces(None)
            .map_err(|e| format!("cannot list this node's interfaces: {e}"))?;
        if let Some(spec) = spec {
            match spec.address() {
                Ok(Some(a)) => return Ok(autodetect::fixed(a, "override", &interfaces)),
                Ok(None) => {}
                Err(e) => log::error(
                    "the Node resource's address is invalid; ignoring it",
                    &[("error", &e)],
                ),
            }
        }
        if let Some(a) = self.cfg.node_ip {
            return Ok(autodetect::fixed(a, "nodeIP", &interfaces));
        }
        let route = match &self.cfg.ip_autodetection {
            autodetect::Method::CanReach(dst) => netinfo::route_get(None, *dst)
                .map_err(|e| format!("cannot ask the kernel for a route to {dst}: {e}"))?,
            _ => None,
        };
        autodetect::detect(&self.cfg.ip_autodetection, &interfaces, route.as_ref())
            .map_err(|e| e.to_string())
    }

    /// twill-cni's records, opened (and their folders made) on first use, when the
    /// inotify watch on them starts too.
    fn records(&mut self) -> Option<&RecordDir> {
        if self.records.is_none() {
            match RecordDir::open(&self.cfg.cni_data_dir, &self.cfg.cni_network) {
                Ok(r) => {
                    self.watch_records(&r);
                    self.records = Some(r);
                }
                Err(e) => {
                    log::warn(
                        "cannot open twill-cni's records; block usage unknown",
                        &[("error", &e)],
                    );
                    return None;
                }
            }
        }
        self.records.as_ref()
    }

    /// Wakes the loop at once when a record comes or goes (else it would see it only on
    /// the next poll tick).
    fn watch_records(&mut self, r: &RecordDir) {
        let dirs = vec![r.path().join("attachments"), r.path().join("ips")];
        let (flag, tx) = (self.records_wake.clone(), self.wake_tx.clone());
        let started = endpoints::watch::start(dirs, self.shutdown.clone(), move || {
            if !flag.swap(true, Ordering::SeqCst) {
                let _ = tx.send(Wake::Records);
            }
        });
        match started {
            Ok(t) => self.records_watch = Some(t),
            Err(e) => log::warn(
                "cannot watch twill-cni's records; pods' endpoints follow them on the poll tick only",
                &[("error", &e)],
            ),
        }
    }

    /// The endpoints twill-cni's records describe.
    fn read_endpoints(&mut self) -> Option<endpoints::Desired> {
        let node = self.cfg.node_name.clone();
        let records = match self.records()?.list() {
            Ok(r) => r,
            Err(e) => {
                log_records_error(&e);
                return None;
            }
        };
        Some(self.desired_endpoints(&node, &records))
    }

    /// [`endpoints::desired`], saying once which records cannot be endpoints.
    fn desired_endpoints(
        &mut self,
        node: &str,
        records: &[twill_ipam::records::Record],
    ) -> endpoints::Desired {
        let (d, skipped) = endpoints::desired(node, records);
        let now: std::collections::BTreeSet<String> =
            skipped.iter().map(|s| s.attachment.clone()).collect();
        for s in skipped {
            if !self.unpublishable.contains(&s.attachment) {
                log::warn(
                    "a pod's record cannot be published as an endpoint; left out",
                    &[("attachment", &s.attachment), ("reason", &s.reason)],
                );
            }
        }
        self.unpublishable = now;
        d
    }

    /// Reads twill-cni's records: the addresses taken and the allocations document.
    fn measure(&mut self) -> Option<Measured> {
        let records = match self.records()?.list() {
            Ok(r) => r,
            Err(e) => {
                log_records_error(&e);
                return None;
            }
        };
        // The agent runs in the node's namespace, where the pods' host veths live.
        let links = std::cell::RefCell::new(twill_netlink::Handle::new().ok());
        let allocations =
            claims::allocations_json(&records, |veth| match links.borrow_mut().as_mut() {
                Some(h) => !matches!(h.link_by_name(veth), Ok(None)),
                None => true,
            });
        let node = self.cfg.node_name.clone();
        Some(Measured {
            ips: records.iter().map(|r| r.ip).collect(),
            allocations,
            endpoints: self.desired_endpoints(&node, &records),
        })
    }
}

/// The peers' addresses whose neighbour entries carry traffic (as last looked up), and
/// which to look up next ([`peers::NeighbourRotation`]).
#[derive(Default)]
struct ActivePeers {
    rotation: peers::NeighbourRotation,
    addresses: std::collections::HashSet<std::net::Ipv4Addr>,
}

fn log_records_error(e: &RecordError) {
    log::warn(
        "cannot read twill-cni's records; block usage unknown",
        &[("error", e)],
    );
}

/// Of `addresses`, those whose neighbour entry on `uplink` carries traffic now (REACHABLE,
/// DELAY or PROBE: the kernel saw them confirmed or in use within its reachable time),
/// each looked up alone; none if the uplink or the entries cannot be read. Permanent
/// entries say nothing about traffic and are left out.
fn neighbours_in_use(
    uplink: Option<&str>,
    addresses: &[std::net::Ipv4Addr],
) -> std::collections::HashSet<std::net::Ipv4Addr> {
    const IN_USE: u16 = 0x02 | 0x08 | 0x10; // NUD_REACHABLE | NUD_DELAY | NUD_PROBE
    let Some(uplink) = uplink else {
        return Default::default();
    };
    let Ok(mut h) = twill_netlink::Handle::new() else {
        return Default::default();
    };
    let Ok(Some(link)) = h.link_by_name(uplink) else {
        return Default::default();
    };
    addresses
        .iter()
        .copied()
        .filter(|ip| {
            h.neighbour(link.index, *ip)
                .ok()
                .flatten()
                .is_some_and(|n| n.state & IN_USE != 0)
        })
        .collect()
}
