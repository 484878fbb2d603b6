//! The agent's main loop: wait for the network config, pick the node IP, hold a lease,
//! claim blocks (the remembered ones first), keep the lease alive, grow when the blocks
//! fill, publish `nodes/<name>` and `allocations/<name>`, write the hand-off. Store errors
//! never end it: they are retried with backoff and shown by /readyz.

use crate::autodetect::{self, NodeIp};
use crate::claims::{self, Backoff, ReclaimAction};
use crate::config::{Config, StoreKind};
use crate::handoff::{self, FileError, HandOffWriter, Memory};
use crate::http::{self, Status};
use crate::log;
use crate::netinfo;
use crate::peers::{self, Prober, Publisher};
use crate::routing::{self, Routing};
use ipnet::Ipv4Net;
use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use twill_api::resources::{
    block_from_key, block_key, Block, HandOff, NetworkConfig, NodeSpec, NodeStatus, PeerView,
    KEY_CONFIG, PREFIX_BLOCKS, PREFIX_NODECONFIGS, PREFIX_NODES, PREFIX_PEERS,
};
use twill_ipam::blocks::BlockSpace;
use twill_ipam::records::{RecordDir, RecordError};
use twill_store::{LeaseId, Store, StoreConfig, StoreError, Watch, PREFIX};

/// Where `twilld` publishes a node's pod addresses (for `twill ipam check`).
pub const PREFIX_ALLOCATIONS: &str = "allocations/";

/// The longest the loop sleeps between checks (shutdown, watch events).
const MAX_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr} for /healthz, /readyz, /metrics: {source}; set listen to a free address:port")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A full store key.
pub fn key(rel: &str) -> String {
    format!("{PREFIX}{rel}")
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
        let listener = TcpListener::bind(config.listen).map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
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
                ("listen", &config.listen),
            ],
        );
        let mut backoff = Backoff::new();
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
            Runner::new(config, store, status, shutdown.clone()).run();
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
    let store = match cfg.store {
        StoreKind::Embedded => StoreConfig::Embedded {
            dir: cfg.store_dir.clone(),
        },
        StoreKind::Etcd => {
            let mut c = twill_store::etcd::EtcdConfig::new(cfg.etcd_endpoints.clone());
            c.ca_file = cfg.etcd_ca_file.clone();
            c.cert_file = cfg.etcd_cert_file.clone();
            c.key_file = cfg.etcd_key_file.clone();
            StoreConfig::Etcd(c)
        }
        StoreKind::Static => StoreConfig::Static {
            file: cfg.static_file.clone().ok_or_else(|| {
                StoreError::Config("store is static but staticFile is not set".into())
            })?,
        },
    };
    twill_store::open(&store).map(Arc::from)
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

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// What a step asks of the loop.
enum Next {
    /// All is well; check again after this long.
    Ready(Duration),
    /// Not ready, for this reason; try again after this long.
    NotReady(String, Duration),
}

struct Net {
    config: NetworkConfig,
    space: BlockSpace,
    routing: Routing,
}

struct Runner {
    cfg: Config,
    store: Arc<dyn Store>,
    status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
    started_at: u64,
    seed: u64,
    net: Option<Net>,
    /// The Node resource's override, as last read.
    spec: Option<NodeSpec>,
    watch: Option<Box<dyn Watch>>,
    redetect: bool,
    node_ip: Option<NodeIp>,
    lease: Option<LeaseId>,
    next_keepalive: Instant,
    /// Blocks held under `lease`, in claim order.
    held: Vec<Ipv4Net>,
    /// Blocks from the last run (state file, hand-off), tried first.
    remembered: Vec<Ipv4Net>,
    need_reclaim: bool,
    next_usage: Instant,
    exhausted_logged: bool,
    published_node: Option<(LeaseId, Vec<u8>)>,
    published_allocs: Option<(LeaseId, Vec<u8>)>,
    handoff: HandOffWriter,
    memory: Option<Vec<Ipv4Net>>,
    records: Option<RecordDir>,
    last_problem: Option<String>,
    /// Other nodes as last read, and whether the watch saw them change since.
    peers: Vec<crate::backend::Peer>,
    peers_dirty: bool,
    /// The uplink's MTU, as last read (for the pod MTU in the hand-off).
    uplink_mtu: Option<u32>,
    /// Probes every peer's node IP (started once a backend routes between nodes).
    prober: Option<Prober>,
    peers_published: Publisher,
}

impl Runner {
    fn new(
        cfg: Config,
        store: Arc<dyn Store>,
        status: Arc<Status>,
        shutdown: Arc<AtomicBool>,
    ) -> Runner {
        let mut remembered = handoff::read_memory(&cfg.state_dir, &cfg.node_name);
        for b in handoff::read_handoff_blocks(&cfg.handoff_file, &cfg.node_name) {
            if !remembered.contains(&b) {
                remembered.push(b);
            }
        }
        if !remembered.is_empty() {
            let list: Vec<String> = remembered.iter().map(|b| b.to_string()).collect();
            log::info(
                "blocks remembered from the last run",
                &[("blocks", &list.join(","))],
            );
        }
        Runner {
            seed: claims::seed(&cfg.node_name),
            handoff: HandOffWriter::new(cfg.handoff_file.clone()),
            cfg,
            store,
            status,
            shutdown,
            started_at: now_secs(),
            net: None,
            spec: None,
            watch: None,
            redetect: true,
            node_ip: None,
            lease: None,
            next_keepalive: Instant::now(),
            held: Vec::new(),
            remembered,
            need_reclaim: false,
            next_usage: Instant::now(),
            exhausted_logged: false,
            published_node: None,
            published_allocs: None,
            memory: None,
            records: None,
            last_problem: None,
            peers: Vec::new(),
            peers_dirty: true,
            uplink_mtu: None,
            prober: None,
            peers_published: Publisher::default(),
        }
    }

    fn run(&mut self) {
        let mut backoff = Backoff::new();
        while !self.shutdown.load(Ordering::Relaxed) {
            self.status.update(|s| s.last_tick = Instant::now());
            let wait = match self.step() {
                Ok(Next::Ready(wait)) => {
                    backoff.reset();
                    if self.last_problem.take().is_some() {
                        log::info("node ready", &[("node", &self.cfg.node_name)]);
                    }
                    self.status.update(|s| {
                        s.not_ready = None;
                        s.store_up = true;
                    });
                    wait.min(MAX_WAIT)
                }
                Ok(Next::NotReady(why, wait)) => {
                    backoff.reset();
                    self.problem(&why, true);
                    wait.min(MAX_WAIT)
                }
                Err(StepError::Store(StoreError::LeaseExpired(id))) => {
                    self.lease_lost(id);
                    Duration::ZERO
                }
                Err(StepError::Store(e)) => {
                    let why = if e.is_transient() {
                        format!("store unreachable: {e}")
                    } else {
                        format!("store error: {e}")
                    };
                    self.status.update(|s| s.store_errors += 1);
                    self.problem(&why, false);
                    let delay = backoff.next_delay();
                    log::warn(
                        "store call failed; retrying",
                        &[
                            ("node", &self.cfg.node_name),
                            ("retryInMs", &delay.as_millis()),
                            ("error", &e),
                        ],
                    );
                    delay
                }
                Err(StepError::File(e)) => {
                    self.problem(&e.to_string(), true);
                    backoff.next_delay()
                }
            };
            // Not capped by MAX_WAIT on errors: the backoff must reach its 10 s ceiling
            // (shutdown and override events still wake the wait early).
            self.wait(wait);
        }
    }

    /// Logs a new problem once and shows it in /readyz.
    fn problem(&mut self, why: &str, store_up: bool) {
        if self.last_problem.as_deref() != Some(why) {
            log::warn(
                "not ready",
                &[("node", &self.cfg.node_name), ("reason", &why)],
            );
            self.last_problem = Some(why.to_string());
        }
        let why = why.to_string();
        self.status.update(|s| {
            s.not_ready = Some(why);
            s.store_up = store_up;
        });
    }

    fn lease_lost(&mut self, id: LeaseId) {
        log::warn(
            "lease lost; granting a new one and claiming the same blocks again",
            &[("node", &self.cfg.node_name), ("lease", &id.0)],
        );
        self.status.update(|s| s.lease_renewal_failures += 1);
        self.lease = None;
    }

    /// Sleeps up to `d`, waking early on an override change.
    fn wait(&mut self, d: Duration) {
        let Some(w) = self.watch.as_mut() else {
            sleep_unless(&self.shutdown, d);
            return;
        };
        let ours = key(&format!("{PREFIX_NODECONFIGS}{}", self.cfg.node_name));
        match w.next(d) {
            Ok(Some(ev)) => {
                if ev.key().starts_with(&key(PREFIX_NODES)) {
                    self.peers_dirty = true;
                }
                if ev.key() == ours {
                    self.redetect = true;
                    // Read it again with the next step.
                    self.watch = None;
                }
            }
            Ok(None) => {}
            Err(e) => {
                log::warn(
                    "watch of the node override ended; watching again",
                    &[("error", &e)],
                );
                self.watch = None;
                sleep_unless(&self.shutdown, d);
            }
        }
    }

    fn step(&mut self) -> Result<Next, StepError> {
        let now = Instant::now();
        // 1. The network config.
        if self.net.is_none() {
            let Some(kv) = self.store.get(&key(KEY_CONFIG))? else {
                return Ok(Next::NotReady(
                    "no network config in the store: run twill apply -f network.yaml".into(),
                    Duration::from_millis(500),
                ));
            };
            let config = match serde_json::from_slice::<NetworkConfig>(&kv.value)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
            {
                Ok(c) => c,
                Err(e) => {
                    return Ok(Next::NotReady(
                        format!("the network config in the store is invalid ({e}); fix it with twill apply -f network.yaml"),
                        Duration::from_secs(2),
                    ))
                }
            };
            log::info(
                "network config",
                &[
                    ("clusterCIDR", &config.cluster_cidr),
                    ("blockSize", &config.block_size),
                    ("leaseTTLSeconds", &config.lease_ttl_seconds),
                ],
            );
            let routing = match Routing::new(&config.backend) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Next::NotReady(
                        format!("the network config's backend is unusable: {e}; fix it with twill apply -f network.yaml"),
                        Duration::from_secs(2),
                    ))
                }
            };
            if config.backend.kind().crosses_nodes() {
                // Pods on other nodes are reached by forwarding through this one.
                if let Err(e) = twill_netlink::set_sysctl(None, "net.ipv4.ip_forward", "1") {
                    log::error("cannot turn on IPv4 forwarding", &[("error", &e)]);
                }
            }
            self.status
                .update(|s| s.backend = config.backend.to_string());
            self.net = Some(Net {
                space: BlockSpace::new(&config),
                config,
                routing,
            });
        }

        // 2. The node IP: override > nodeIP > autodetection.
        if self.watch.is_none() {
            let ours = key(&format!("{PREFIX_NODECONFIGS}{}", self.cfg.node_name));
            let (kvs, rev) = self.store.list(&ours)?;
            self.spec = match kvs.iter().find(|kv| kv.key == ours) {
                None => None,
                Some(kv) => match serde_json::from_slice::<NodeSpec>(&kv.value) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        log::error(
                            "the Node resource is unreadable; ignoring it",
                            &[("key", &ours), ("error", &e)],
                        );
                        None
                    }
                },
            };
            // One watch for the override and for the other nodes (the backend's peers).
            self.watch = Some(self.store.watch(PREFIX, rev)?);
            self.peers_dirty = true;
            self.redetect = true;
        }
        if self.redetect || self.node_ip.is_none() {
            match self.detect() {
                Ok(ip) => {
                    if self.node_ip.as_ref() != Some(&ip) {
                        // A fixed address no interface holds is likely a typo: say so louder.
                        let level = if ip.cidr.is_none() {
                            log::Level::Warn
                        } else {
                            log::Level::Info
                        };
                        log::event(
                            level,
                            "node IP",
                            &[
                                ("node", &self.cfg.node_name),
                                ("address", &ip.address),
                                ("interface", &ip.interface.clone().unwrap_or_default()),
                                ("method", &ip.method),
                                ("reason", &ip.reason),
                            ],
                        );
                        let m = (ip.address, ip.method.clone());
                        self.status.update(|s| s.node_ip = Some(m));
                        self.node_ip = Some(ip);
                    }
                    self.redetect = false;
                }
                Err(why) => return Ok(Next::NotReady(why, Duration::from_secs(2))),
            }
        }

        // 3. The lease.
        let ttl = Duration::from_secs(
            self.net
                .as_ref()
                .expect("set above")
                .config
                .lease_ttl_seconds,
        );
        let lease = match self.lease {
            Some(l) => l,
            None => {
                let l = self.store.grant(ttl)?;
                log::info(
                    "lease granted",
                    &[
                        ("node", &self.cfg.node_name),
                        ("lease", &l.0),
                        ("ttl", &format!("{}s", ttl.as_secs())),
                    ],
                );
                self.lease = Some(l);
                self.next_keepalive = now + ttl / 3;
                self.need_reclaim = true;
                l
            }
        };

        // 4'. A static store is the hand-written mesh of the seed's Open vSwitch days:
        // nothing to claim or publish, the node's blocks are whatever the file gives it.
        if self.store.kind() == "static" {
            return self.step_static(now);
        }

        // 4. The blocks held before (this run under an old lease, or the last run).
        if self.need_reclaim {
            let space = &self.net.as_ref().expect("set above").space;
            let mut candidates: Vec<Ipv4Net> = Vec::new();
            for b in self.held.iter().chain(self.remembered.iter()) {
                if candidates.contains(b) {
                    continue;
                }
                if space.is_usable(*b) {
                    candidates.push(*b);
                } else {
                    log::warn(
                        "a remembered block is not part of the address space any more; dropping it",
                        &[("block", b)],
                    );
                }
            }
            let mut got = Vec::new();
            for b in candidates {
                if self.reclaim(b, lease)? {
                    got.push(b);
                }
            }
            self.held = got;
            self.remembered.clear();
            self.need_reclaim = false;
            self.next_usage = now;
        }

        // 5. At least one block.
        if self.held.is_empty() {
            match self.claim_new(lease)? {
                Some(b) => self.held.push(b),
                None => {
                    let net = self.net.as_ref().expect("set above");
                    return Ok(Next::NotReady(
                        format!(
                            "no free block: all {} /{} blocks of {} are held by other nodes; widen clusterCIDR or retire nodes (twill node remove NAME)",
                            net.space.capacity(),
                            net.config.block_size,
                            net.config.cluster_cidr
                        ),
                        Duration::from_secs(2),
                    ));
                }
            }
        }

        // 6. Keep-alive.
        if now >= self.next_keepalive {
            match self.store.keep_alive(lease) {
                Ok(_) => {
                    self.status.update(|s| s.lease_renewals += 1);
                    self.next_keepalive = now + ttl / 3;
                }
                Err(e @ StoreError::LeaseExpired(_)) => return Err(e.into()),
                Err(e) => {
                    self.status.update(|s| s.lease_renewal_failures += 1);
                    return Err(e.into());
                }
            }
        }

        // 7. Usage: grow when free addresses run low; publish the allocations.
        if now >= self.next_usage {
            self.next_usage = now + self.cfg.poll_interval;
            self.measure_and_grow(lease)?;
        }

        // 8. Publish: node status, then routes to the other nodes, the hand-off, memory.
        self.publish_node(lease)?;
        self.route()?;
        self.probe_peers(lease)?;
        let h = self.handoff_now();
        if self.handoff.write(&h)? {
            let list: Vec<String> = self.held.iter().map(|b| b.to_string()).collect();
            log::info(
                "hand-off written",
                &[
                    ("file", &self.cfg.handoff_file.display()),
                    ("blocks", &list.join(",")),
                ],
            );
        }
        if self.memory.as_ref() != Some(&self.held) {
            handoff::write_memory(
                &self.cfg.state_dir,
                &Memory {
                    node: self.cfg.node_name.clone(),
                    blocks: self.held.clone(),
                },
            )?;
            self.memory = Some(self.held.clone());
        }
        let blocks = self.held.clone();
        self.status.update(|s| s.blocks = blocks);
        let next = self.next_keepalive.min(self.next_usage);
        // The backend's timers and retries (MAX_WAIT bounds the wait in any case).
        let next = next.min(self.net.as_ref().expect("set above").routing.next_wake());
        Ok(Next::Ready(next.saturating_duration_since(Instant::now())))
    }

    /// Steps 5-8 for the read-only static store: the blocks the file assigns to this node
    /// (re-read every poll interval, the store notices edits), the hand-off, no writes.
    fn step_static(&mut self, now: Instant) -> Result<Next, StepError> {
        let (kvs, _) = self.store.list(&key(PREFIX_BLOCKS))?;
        let mut mine: Vec<Ipv4Net> = kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Block>(&kv.value).ok())
            .filter(|b| b.node == self.cfg.node_name)
            .map(|b| b.cidr)
            .collect();
        mine.sort();
        if mine.is_empty() {
            return Ok(Next::NotReady(
                format!(
                    "the static file {} gives node {} no blocks: add them to its entry under \"nodes\"",
                    self.cfg.static_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    self.cfg.node_name
                ),
                self.cfg.poll_interval,
            ));
        }
        if mine != self.held {
            let list: Vec<String> = mine.iter().map(|b| b.to_string()).collect();
            log::info(
                "blocks from the static file",
                &[("node", &self.cfg.node_name), ("blocks", &list.join(","))],
            );
            self.held = mine;
        }
        self.route()?;
        let h = self.handoff_now();
        if self.handoff.write(&h)? {
            log::info(
                "hand-off written",
                &[("file", &self.cfg.handoff_file.display())],
            );
        }
        let blocks = self.held.clone();
        self.status.update(|s| s.blocks = blocks);
        let next = now + self.cfg.poll_interval;
        Ok(Next::Ready(next.saturating_duration_since(Instant::now())))
    }

    /// What twill-cni gets: the blocks, and the pod MTU this backend leaves room for.
    fn handoff_now(&self) -> HandOff {
        let net = self.net.as_ref().expect("set before");
        let uplink = self.uplink_mtu.unwrap_or(net.config.mtu);
        HandOff {
            node: self.cfg.node_name.clone(),
            cluster_cidr: net.config.cluster_cidr,
            blocks: self.held.clone(),
            mtu: net.routing.pod_mtu(uplink, net.config.mtu),
            ip_masq: net.config.masquerade,
            pod_wiring: net.config.pod_wiring,
        }
    }

    /// Programs the routes to the other nodes: only what changed since the last pass
    /// (or what drifted, every resync). Kernel errors are reported, never fatal.
    fn route(&mut self) -> Result<(), StoreError> {
        if self.peers_dirty {
            let (kvs, _) = self.store.list(&key(PREFIX_NODES))?;
            self.peers = routing::peers_from(&kvs, &self.cfg.node_name);
            self.peers_dirty = false;
        }
        let ip = self.node_ip.as_ref().expect("detected before");
        let (Some(uplink), Some(cidr)) = (ip.interface.clone(), ip.cidr) else {
            if self
                .net
                .as_ref()
                .is_some_and(|n| !n.config.backend.kind().crosses_nodes())
            {
                return Ok(());
            }
            let why = format!(
                "the node IP {} is on no interface of this node: the backend cannot tell which uplink to use; fix nodeIP or the Node resource",
                ip.address
            );
            self.status.update(|s| s.backend_problems = vec![why]);
            return Ok(());
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
            blocks: self.held.clone(),
            mtu_uplink: self.uplink_mtu.unwrap_or(1500),
            pod_wiring: self.net.as_ref().expect("set before").config.pod_wiring,
        };
        let net = self.net.as_mut().expect("set before");
        match net.routing.reconcile(&local, &self.peers) {
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
        Ok(())
    }

    /// Hands the peers to the prober and publishes what it sees as `peers/<node>`. Only
    /// when a backend routes between nodes: with `none` no traffic crosses them.
    fn probe_peers(&mut self, lease: LeaseId) -> Result<(), StoreError> {
        let Some(net) = self
            .net
            .as_ref()
            .filter(|n| n.config.backend.kind().crosses_nodes())
        else {
            return Ok(());
        };
        if self.prober.is_none() {
            match Prober::start(self.cfg.peer_probe_interval, self.shutdown.clone()) {
                Ok(p) => self.prober = Some(p),
                Err(e) => {
                    log::error("cannot start the peer prober", &[("error", &e)]);
                    return Ok(());
                }
            }
        }
        let prober = self.prober.as_ref().expect("started above");
        let ip = self.node_ip.as_ref().expect("detected before");
        prober.set_targets(&peers::targets(&self.peers, &net.config.backend, ip.cidr));
        let value = PeerView {
            address: Some(ip.address),
            interface: ip.interface.clone(),
            peers: prober.view(),
        };
        let now = Instant::now();
        if self.peers_published.due(lease.0, &value, now) {
            let bytes = serde_json::to_vec(&value).expect("a peer view serializes");
            let k = key(&format!("{PREFIX_PEERS}{}", self.cfg.node_name));
            self.store.put(&k, &bytes, Some(lease))?;
            self.peers_published.written(lease.0, &value, now);
        }
        self.status.update(|s| s.peers = value.peers);
        Ok(())
    }

    fn detect(&self) -> Result<NodeIp, String> {
        let interfaces = netinfo::interfaces(None)
            .map_err(|e| format!("cannot list this node's interfaces: {e}"))?;
        if let Some(spec) = &self.spec {
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

    fn block_value(&self, b: Ipv4Net, claimed_at: u64) -> Vec<u8> {
        serde_json::to_vec(&Block {
            cidr: b,
            node: self.cfg.node_name.clone(),
            claimed_at,
        })
        .expect("a block serializes")
    }

    /// Takes back block `b` held before; false if another node holds it now.
    fn reclaim(&self, b: Ipv4Net, lease: LeaseId) -> Result<bool, StoreError> {
        let k = key(&block_key(b));
        for _ in 0..5 {
            let current = self.store.get(&k)?;
            let parsed = current.as_ref().map(|kv| {
                (
                    serde_json::from_slice::<Block>(&kv.value).ok(),
                    kv.lease,
                    kv.mod_revision,
                )
            });
            let action = claims::reclaim_action(
                parsed.as_ref().map(|(b, l, _)| (b.as_ref(), *l)),
                &self.cfg.node_name,
                lease,
            );
            match action {
                ReclaimAction::Keep => return Ok(true),
                ReclaimAction::Create => {
                    if self
                        .store
                        .create(&k, &self.block_value(b, now_secs()), Some(lease))?
                        .is_some()
                    {
                        log::info(
                            "block claimed again",
                            &[("node", &self.cfg.node_name), ("block", &b)],
                        );
                        return Ok(true);
                    }
                }
                ReclaimAction::TakeOver { claimed_at } => {
                    let rev = parsed.map(|(_, _, r)| r).unwrap_or_default();
                    if self
                        .store
                        .update(&k, rev, &self.block_value(b, claimed_at), Some(lease))?
                    {
                        log::info(
                            "block taken over under the new lease",
                            &[("node", &self.cfg.node_name), ("block", &b)],
                        );
                        return Ok(true);
                    }
                }
                ReclaimAction::Lost { other } => {
                    log::error(
                        "a block this node held is now held by another node; not taking it back: pods of this node with addresses in it conflict with that node's pods, remove them",
                        &[("block", &b), ("node", &self.cfg.node_name), ("holder", &other)],
                    );
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    /// Claims a free block, trying them in the node's own order; None if none is free.
    fn claim_new(&mut self, lease: LeaseId) -> Result<Option<Ipv4Net>, StoreError> {
        let (kvs, _) = self.store.list(&key(PREFIX_BLOCKS))?;
        let taken: HashSet<Ipv4Net> = kvs
            .iter()
            .filter_map(|kv| block_from_key(&kv.key))
            .collect();
        let space = &self.net.as_ref().expect("config known").space;
        for (collisions, b) in space.free_from(&taken, self.seed).enumerate() {
            if self
                .store
                .create(
                    &key(&block_key(b)),
                    &self.block_value(b, now_secs()),
                    Some(lease),
                )?
                .is_some()
            {
                log::info(
                    "block claimed",
                    &[
                        ("node", &self.cfg.node_name),
                        ("block", &b),
                        ("collisions", &collisions),
                    ],
                );
                self.exhausted_logged = false;
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    fn measure_and_grow(&mut self, lease: LeaseId) -> Result<(), StoreError> {
        if self.records.is_none() {
            match RecordDir::open(&self.cfg.cni_data_dir, &self.cfg.cni_network) {
                Ok(r) => self.records = Some(r),
                Err(e) => {
                    log::warn(
                        "cannot open twill-cni's records; block usage unknown",
                        &[("error", &e)],
                    );
                    return Ok(());
                }
            }
        }
        let records = match self.records.as_ref().expect("opened").list() {
            Ok(r) => r,
            Err(e) => {
                log_records_error(&e);
                return Ok(());
            }
        };
        let ips: Vec<_> = records.iter().map(|r| r.ip).collect();
        let usage = claims::usage(&self.held, &ips);
        if usage.free < u64::from(self.cfg.min_free_addresses) {
            match self.claim_new(lease)? {
                Some(b) => {
                    log::info(
                        "free addresses ran low; claimed another block",
                        &[
                            ("node", &self.cfg.node_name),
                            ("free", &usage.free),
                            ("minFreeAddresses", &self.cfg.min_free_addresses),
                            ("block", &b),
                        ],
                    );
                    self.held.push(b);
                    // Measure again soon: one block may not be enough.
                    self.next_usage = Instant::now();
                }
                None if !self.exhausted_logged => {
                    log::warn(
                        "free addresses ran low but no block is free in the cluster",
                        &[("node", &self.cfg.node_name), ("free", &usage.free)],
                    );
                    self.exhausted_logged = true;
                }
                None => {}
            }
        }
        let usage = claims::usage(&self.held, &ips);
        self.status.update(|s| {
            s.used = usage.used;
            s.free = usage.free;
        });
        // The agent runs in the node's namespace, where the pods' host veths live.
        let links = std::cell::RefCell::new(twill_netlink::Handle::new().ok());
        let allocs = claims::allocations_json(&records, |veth| match links.borrow_mut().as_mut() {
            Some(h) => !matches!(h.link_by_name(veth), Ok(None)),
            None => true,
        });
        if self.published_allocs.as_ref() != Some(&(lease, allocs.clone())) {
            let k = key(&format!("{PREFIX_ALLOCATIONS}{}", self.cfg.node_name));
            self.store.put(&k, &allocs, Some(lease))?;
            self.published_allocs = Some((lease, allocs));
        }
        Ok(())
    }

    fn publish_node(&mut self, lease: LeaseId) -> Result<(), StoreError> {
        let ip = self.node_ip.as_ref().expect("detected before");
        let status = NodeStatus {
            name: self.cfg.node_name.clone(),
            address: ip.address,
            autodetection: ip.method.clone(),
            reason: ip.reason.clone(),
            blocks: self.held.clone(),
            started_at: self.started_at,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        };
        let bytes = serde_json::to_vec(&status).expect("a node status serializes");
        if self.published_node.as_ref() != Some(&(lease, bytes.clone())) {
            self.store.put(
                &key(&format!("{PREFIX_NODES}{}", self.cfg.node_name)),
                &bytes,
                Some(lease),
            )?;
            self.published_node = Some((lease, bytes));
        }
        Ok(())
    }
}

fn log_records_error(e: &RecordError) {
    log::warn(
        "cannot read twill-cni's records; block usage unknown",
        &[("error", e)],
    );
}
