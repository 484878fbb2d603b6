//! The agent as a sans-IO state machine, the way [`crate::peers::PeerTable`] is: it never
//! touches a socket, a file or the clock. Inputs are store replies and watch events, the
//! results of node IP detection, block usage and file writes, and the time (an [`Instant`]
//! handed in). Outputs are [`Action`]s: store requests, "use this network config", "detect
//! the node IP", "measure usage", "reconcile the backend", "probe the peers", "write the
//! hand-off / memory", log lines, status reports, and "sleep until".
//!
//! The I/O loop around it ([`crate::agent`]) is thin: it asks [`Machine::poll`] what to do,
//! does it against the real store and kernel, and feeds the reply back with
//! [`Machine::handle`]. An action that needs a reply ([`Action::needs_reply`]) must be
//! answered before the next poll.
//!
//! One pass ("round") does, in order: read the network config; read the node override and
//! watch the store; detect the node IP; hold a lease and keep it alive (first, so a node
//! waiting for a free block keeps its lease too); take back the blocks held before
//! (remembered, or held in this node's name in the store: adopted); claim one if none;
//! measure usage and grow when free addresses run low, publish the
//! allocations; publish the node; read the peers, reconcile the backend, probe and publish
//! the peer view; write the hand-off and memory. Store errors end a round: it is retried with
//! backoff and /readyz says why.
//!
//! Safety rule of the hand-off (checked before every action): it never lists a block the
//! node does not hold under a lease it knows to be alive. At start it is cut to nothing until
//! the blocks are confirmed (twill-cni answers "try again", code 11, meanwhile); a block
//! lost (lease expired, revoked, deleted or taken over in the store) leaves it at once; a
//! watch opened again (after it ended, or to follow a new block) is followed by a fresh
//! read of the blocks, since its blocks' part starts later than the last one ended (only
//! the other nodes' records resume from their last event, and are read afresh where etcd
//! compacted that away); and when the lease may have run out while the store was
//! unreachable, it lists nothing until a keep-alive or a new lease says again.

use crate::autodetect::NodeIp;
use crate::backend::{Peers, RoutingInputs};
use crate::claims::{self, Backoff, CreateOutcome, Jitter, ReclaimAction};
use crate::endpoints::{self, Desired};
use crate::log::Level;
use crate::peers::Publisher;
use crate::routing;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use twill_api::bgp::{
    BgpConfiguration, BgpPeer, RoutingStatus, KEY_BGP_CONFIG, PREFIX_BGP_PEERS,
    PREFIX_ROUTING_STATUS,
};
use twill_api::resources::{
    block_from_key, block_key, Block, NetworkConfig, NodeSpec, NodeStatus, PeerReach, PeerView,
    KEY_CONFIG, PREFIX_ALLOCATIONS, PREFIX_BLOCKS, PREFIX_NODECONFIGS, PREFIX_NODES, PREFIX_PEERS,
};
use twill_ipam::blocks::BlockSpace;
use twill_store::{Event, KeyRange, KeyValue, LeaseId, Revision, StoreError, PREFIX};

/// The longest the machine sleeps between rounds (watch events wake it earlier).
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// `routingstatus/<node>` is written at most this often (session changes come in bursts).
pub const ROUTING_STATUS_GAP: Duration = Duration::from_secs(1);

/// What the agent watches, on one stream: `bgpconfig` and `bgppeers/`; `config` to the end
/// of `nodes/` (`config`, `endpoints/`, the policy kinds, `nodeconfigs/`, `nodes/`); and
/// only its own blocks, one key each. The kinds every node rewrites for others to read
/// (`allocations/`, `peers/`, `podlabels/`, `routingstatus/`) and the other nodes' blocks
/// (sorted between `bgppeers/` and `config`) never reach it: at a cold start of N nodes the
/// N block claims would otherwise reach N watchers each. Routes need no block events: each
/// node's `nodes/` record carries its blocks.
pub fn agent_watch(own: &[Ipv4Net]) -> KeyRange {
    let mut parts = vec![
        KeyRange::Between {
            from: key(KEY_BGP_CONFIG),
            to: key(PREFIX_BLOCKS),
        },
        KeyRange::Between {
            from: key(KEY_CONFIG),
            to: format!("{}0", key(PREFIX_NODES).trim_end_matches('/')),
        },
    ];
    for b in own {
        let k = key(&block_key(*b));
        // [k, k + NUL): the one key (etcd's range_end for a single key is key + 1 byte).
        let to = format!("{k}\0");
        parts.push(KeyRange::Between { from: k, to });
    }
    KeyRange::AnyOf(parts)
}

/// A full store key.
pub fn key(rel: &str) -> String {
    format!("{PREFIX}{rel}")
}

/// A request to the store, as [`twill_store::Store`]'s methods take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    Get(String),
    List(String),
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Create {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Update {
        key: String,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    DeleteIf {
        key: String,
        expected: Revision,
    },
    /// Reply: [`StoreReply::Done`].
    Delete(String),
    Grant(Duration),
    KeepAlive(LeaseId),
    /// Start watching `range` after `after`; the loop keeps the stream and feeds its
    /// events back as [`Input::Watch`]. `after`: one revision per part of `range`
    /// ([`KeyRange::parts`]), as [`twill_store::Store::watch_range_from`] takes them.
    Watch {
        range: KeyRange,
        after: Vec<Revision>,
    },
}

/// The store's answer to a [`StoreOp`], one variant per method's return type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReply {
    Value(Option<KeyValue>),
    List(Vec<KeyValue>, Revision),
    Revision(Revision),
    Created(Option<Revision>),
    Done(bool),
    Lease(LeaseId),
    Ttl(Duration),
    Watching,
}

/// One log line: the loop writes it with [`crate::log::event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub msg: &'static str,
    pub fields: Vec<(&'static str, String)>,
}

/// A change to what /readyz and /metrics show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Ready,
    NotReady { reason: String, store_up: bool },
    StoreError,
    LeaseRenewed,
    LeaseRenewalFailed,
    NodeIp(Ipv4Addr, String),
    Blocks(Vec<Ipv4Net>),
    Usage { used: u64, free: u64 },
    Peers(BTreeMap<String, PeerReach>),
}

/// What the machine asks of the loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Store(StoreOp),
    /// A (new) network config was read: set the backend up for it. Reply: [`Input::Backend`].
    UseConfig(Box<NetworkConfig>),
    /// Pick the node IP (the override, if any, wins). Reply: [`Input::NodeIp`].
    DetectNodeIp(Option<NodeSpec>),
    /// Read twill-cni's records. Reply: [`Input::Usage`].
    MeasureUsage,
    /// Read twill-cni's records for the endpoints only (they changed). Reply:
    /// [`Input::Endpoints`].
    ReadEndpoints,
    /// Program the routes to the peers for this node's blocks; `inputs` are the routing
    /// resources, for the backends that read them (else empty). Reply:
    /// [`Input::Reconciled`].
    Reconcile {
        node_ip: NodeIp,
        blocks: Vec<Ipv4Net>,
        peers: Peers,
        inputs: Box<RoutingInputs>,
    },
    /// Point the prober at the peers and tell what it sees. Reply: [`Input::PeerView`].
    ProbePeers {
        node_ip: NodeIp,
        peers: Peers,
    },
    /// The other nodes changed (watch events) before the round's pass: hand them to the
    /// backend now ([`crate::routing::Routing::peers_changed`]), for the backends that
    /// take them between passes (bgp: a reflector peers with a client that just joined
    /// without waiting for the round). The pass still follows. No reply.
    Peers(Peers),
    /// Write the hand-off with exactly these blocks. Reply: [`Input::Written`].
    WriteHandOff(Vec<Ipv4Net>),
    /// Write the memory of the blocks. Reply: [`Input::Written`].
    WriteMemory(Vec<Ipv4Net>),
    Log(LogLine),
    Report(Report),
    /// Nothing to do before this instant; wake earlier on a watch event.
    Sleep(Instant),
}

impl Action {
    /// Whether [`Machine::handle`] must get the answer before the next poll.
    pub fn needs_reply(&self) -> bool {
        !matches!(
            self,
            Action::Log(_) | Action::Report(_) | Action::Peers(_) | Action::Sleep(_)
        )
    }
}

/// What twill-cni's records say: the addresses taken, and the `allocations/<node>` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    pub ips: Vec<Ipv4Addr>,
    pub allocations: Vec<u8>,
    /// The `endpoints/<node>/…` the records describe ([`endpoints::desired`]).
    pub endpoints: Desired,
}

/// What the loop feeds back.
#[derive(Debug)]
pub enum Input {
    Store(Result<StoreReply, StoreError>),
    /// The backend for the config of [`Action::UseConfig`]: set up, or why not.
    Backend(Result<(), String>),
    NodeIp(Result<NodeIp, String>),
    /// None: the records cannot be read now (usage unknown, logged by the loop).
    Usage(Option<Measured>),
    /// The endpoints the records describe; None: unreadable now (logged by the loop).
    Endpoints(Option<Desired>),
    /// twill-cni's records changed (a pod was added or removed): publish its endpoint now.
    RecordsChanged,
    /// None: no backend routes between nodes, or the prober could not start.
    PeerView(Option<PeerView>),
    /// A file write: done, or why not (the error names the file and the fix).
    Written(Result<(), String>),
    Watch(Event),
    WatchEnded(StoreError),
    /// The backend has an event or a timer due: reconcile it now.
    BackendDue,
    /// The pass of [`Action::Reconcile`] ran: what the backend's routing sessions look like
    /// now (None: it runs none), for `routingstatus/<node>`.
    Reconciled(Option<RoutingStatus>),
}

/// What does not change while the agent runs.
#[derive(Debug, Clone)]
pub struct Params {
    pub node: String,
    /// The read-only static store: blocks come from its file; nothing is claimed or published.
    pub static_store: bool,
    pub min_free_addresses: u32,
    pub poll_interval: Duration,
    /// Blocks from the last run (memory, then the old hand-off), tried first.
    pub remembered: Vec<Ipv4Net>,
    /// What the hand-off file lists now (it is cut to the confirmed blocks at once).
    pub handed_off: Vec<Ipv4Net>,
    /// Wall clock at start, in seconds since the epoch (the blocks' `claimedAt`).
    pub started_at: u64,
    pub version: String,
    /// The static store's file, for the reason when it gives this node nothing.
    pub static_file: Option<String>,
}

/// The request a reply is for.
#[derive(Debug)]
enum Pending {
    Config,
    Override,
    /// `resumed`: after the revisions the last watch reached, not after a fresh read.
    Watch {
        resumed: bool,
    },
    Backend(Box<NetworkConfig>),
    Detect,
    Grant {
        asked: Instant,
        ttl: Duration,
    },
    KeepAlive {
        asked: Instant,
        ttl: Duration,
    },
    ReclaimList,
    Reclaim(ReclaimStep),
    Release(Ipv4Net),
    ClaimList,
    ClaimCreate(Ipv4Net),
    ClaimCheck(Ipv4Net),
    Usage,
    Allocations(Vec<u8>),
    Node(Vec<u8>),
    Peers,
    BgpConfig,
    BgpPeers,
    NodeSpecs,
    Reconcile,
    RoutingPut(RoutingStatus),
    PeerView,
    PeerPut(PeerView),
    EndpointsRead,
    Endpoint(LeaseId, endpoints::Op),
    HandOff(Vec<Ipv4Net>),
    /// The write at once of [`Machine::sync_handoff`], outside the round.
    HandOffCut(Vec<Ipv4Net>),
    Memory(Vec<Ipv4Net>),
    StaticList,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReclaimStep {
    Get,
    Create,
    Update,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Config,
    Override,
    Detect,
    Lease,
    Static,
    KeepAlive,
    Reclaim,
    Claim,
    Usage,
    Node,
    Peers,
    Resources,
    Reconcile,
    Probe,
    HandOff,
    Memory,
    Done,
}

/// Why a block is a candidate of the reclaim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Held or remembered (the memory file, the hand-off).
    Known,
    /// Found in the store in this node's name, not remembered: adopted.
    Adopted,
    /// This node's create of it lost its answer (see [`Machine::unanswered`]): held if
    /// that create committed, or claimed now by creating it again; quietly dropped if
    /// another node holds it.
    Unanswered,
}

/// A block to take back: why it is a candidate, and what the store said of it last.
#[derive(Debug, Clone)]
struct Candidate {
    block: Ipv4Net,
    origin: Origin,
    kv: Option<KeyValue>,
    /// `kv` is what the store held when listed or read; false: read the key first.
    read: bool,
    attempts: u32,
}

#[derive(Debug, Default)]
struct Reclaiming {
    /// Blocks in this node's name outside the address space, to delete first.
    releases: Vec<(Ipv4Net, Revision)>,
    queue: VecDeque<Candidate>,
    got: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The node holds nothing: without a block it is not ready.
    First,
    /// Free addresses ran low (`free` left).
    Grow { free: u64 },
}

#[derive(Debug)]
struct Claiming {
    purpose: Purpose,
    taken: Option<HashSet<Ipv4Net>>,
    collisions: usize,
}

/// How a round ended.
enum End {
    Ready(Instant),
    NotReady(String, Duration),
    Store(StoreError),
    File(String),
}

pub struct Machine {
    p: Params,
    seed: u64,
    backoff: Backoff,
    last_problem: Option<String>,
    out: VecDeque<Action>,
    /// The next request, returned by poll once the queued logs and reports are out.
    follow: Option<(Pending, Action)>,
    pending: Option<Pending>,
    start: Instant,
    /// The round in progress; None while asleep until `wake`.
    stage: Option<Stage>,
    wake: Instant,
    net: Option<(NetworkConfig, BlockSpace)>,
    spec: Option<NodeSpec>,
    watching: bool,
    /// The watch's parts and the last revision each delivered (its start, until an
    /// event). A watch that ended resumes from them (see [`Machine::open_watch`]), so the
    /// other nodes' records are not read again (at 1000 nodes a fresh read lists every
    /// node's record). None: the next watch starts from a fresh read.
    watch_seen: Option<Vec<(KeyRange, Revision)>>,
    /// The blocks the current watch follows (held and remembered when it was opened); a
    /// block held outside them makes the next stage open the watch again with it.
    watched_blocks: Vec<Ipv4Net>,
    redetect: bool,
    node_ip: Option<NodeIp>,
    lease: Option<LeaseId>,
    /// The lease is surely alive until then: the time its last grant or keep-alive was
    /// asked, plus its TTL.
    lease_until: Instant,
    next_keepalive: Instant,
    /// Spreads keep-alives (each at 3/4 to 1 of TTL/3 after the last) so agents started
    /// together do not renew in step.
    jitter: Jitter,
    /// Blocks confirmed under `lease`, in claim order.
    held: Vec<Ipv4Net>,
    remembered: Vec<Ipv4Net>,
    need_reclaim: bool,
    reclaiming: Option<Reclaiming>,
    /// The blocks the reclaim listed in this round, for the first claim to use as its
    /// list: a fresh node would otherwise list all of `blocks/` twice in a row, the read
    /// that dominates etcd's work in a cold start (docs/scale.md). A block taken since is
    /// found by the claim's create, which fails and marks it taken.
    blocks_listed: Option<HashSet<Ipv4Net>>,
    /// The lease under which the reclaim last listed all of `blocks/` (to adopt blocks
    /// held in this node's name that it does not remember). Under the same lease no new
    /// block can appear in its name, so a reclaim after a watch opens again reads only the
    /// node's own blocks, one get each, instead of listing every block (which each watch
    /// break of a 1000-node cold start cost every agent).
    scanned_under: Option<LeaseId>,
    /// Blocks whose claim lost its answer: the create, or the read-back after "already
    /// exists", failed with the store unreachable. The create may have committed, or may
    /// still commit (etcd applies a request after the client gave up on it), so each is a
    /// candidate of the next reclaim, which creates it again (a second create of the same
    /// key is idempotent: "already exists", and the read-back finds it ours). Claiming a
    /// fresh block instead would leave the node holding two; and neither a list nor a get
    /// settles it, since the late commit can land after either.
    unanswered: Vec<Ipv4Net>,
    claiming: Option<Claiming>,
    next_usage: Instant,
    /// Before then a round hands the prober nothing ([`Stage::Probe`]).
    next_probe: Instant,
    exhausted_logged: bool,
    lease_doubt_logged: bool,
    measured: Option<Measured>,
    published_node: Option<(LeaseId, Vec<u8>)>,
    published_allocs: Option<(LeaseId, Vec<u8>)>,
    /// What the hand-off file lists (as far as this run knows).
    handed_off: Vec<Ipv4Net>,
    /// After a failed cut of the hand-off, the next try waits until then.
    cut_retry: Instant,
    memory: Option<Vec<Ipv4Net>>,
    peers: Peers,
    /// The other nodes, listed once per watch and kept by its events; None: to be listed
    /// (a new watch, or the last one ended and events may be lost).
    nodes: Option<routing::NodeMap>,
    /// `peers` is behind `nodes`.
    peers_dirty: bool,
    /// A watch event changed `nodes` since the last [`Action::Peers`] (only for backends
    /// that take peers between passes).
    peers_news: bool,
    /// A change that wants a round came during one (see [`Machine::takes_mid_round`]): the
    /// next round starts as soon as this one ends.
    again: bool,
    peers_published: Publisher,
    /// The routing resources, read while the backend uses them.
    inputs: RoutingInputs,
    /// A BGP resource changed in the store since it was read.
    resources_dirty: bool,
    /// The last `routingstatus/<node>` written (under which lease, and when).
    routing_published: Option<(LeaseId, RoutingStatus, Instant)>,
    /// A changed status waits for [`ROUTING_STATUS_GAP`]: the round to write it is due then.
    routing_due: Option<Instant>,
    /// This node's `endpoints/<node>/…`: kept outside the rounds (see
    /// [`Machine::sync_endpoints`]).
    endpoints: endpoints::Publisher,
    /// The records changed since they were last read for the endpoints.
    records_changed: bool,
    /// After a failed endpoint write, the next waits until then.
    endpoints_retry: Instant,
    endpoints_backoff: Backoff,
}

fn fields(list: &[(&'static str, &dyn std::fmt::Display)]) -> Vec<(&'static str, String)> {
    list.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn join(blocks: &[Ipv4Net]) -> String {
    blocks
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_block(kv: &KeyValue) -> Option<Block> {
    serde_json::from_slice::<Block>(&kv.value).ok()
}

impl Machine {
    pub fn new(p: Params, now: Instant) -> Machine {
        let mut m = Machine {
            seed: claims::seed(&p.node),
            backoff: Backoff::seeded(claims::seed(&p.node)),
            last_problem: None,
            out: VecDeque::new(),
            follow: None,
            pending: None,
            start: now,
            stage: None,
            wake: now,
            net: None,
            spec: None,
            watching: false,
            watch_seen: None,
            watched_blocks: Vec::new(),
            redetect: true,
            node_ip: None,
            lease: None,
            lease_until: now,
            next_keepalive: now,
            held: Vec::new(),
            remembered: p.remembered.clone(),
            need_reclaim: false,
            reclaiming: None,
            blocks_listed: None,
            scanned_under: None,
            unanswered: Vec::new(),
            claiming: None,
            next_usage: now,
            next_probe: now,
            exhausted_logged: false,
            lease_doubt_logged: false,
            measured: None,
            published_node: None,
            published_allocs: None,
            handed_off: p.handed_off.clone(),
            cut_retry: now,
            memory: None,
            peers: Peers::default(),
            nodes: None,
            peers_dirty: true,
            peers_news: false,
            again: false,
            peers_published: Publisher::spread(claims::seed(&p.node)),
            inputs: RoutingInputs::default(),
            resources_dirty: true,
            routing_published: None,
            routing_due: None,
            endpoints: endpoints::Publisher::new(&p.node),
            records_changed: true,
            endpoints_retry: now,
            endpoints_backoff: Backoff::seeded(claims::seed(&p.node) ^ 0xe9),
            jitter: Jitter::new(claims::seed(&p.node) ^ 0x1ea5e),
            p,
        };
        if !m.remembered.is_empty() {
            let list = join(&m.remembered);
            m.log(
                Level::Info,
                "blocks remembered from the last run",
                fields(&[("blocks", &list)]),
            );
        }
        m
    }

    /// The blocks held now, confirmed under a live lease.
    pub fn held(&self) -> &[Ipv4Net] {
        &self.held
    }

    /// The blocks the hand-off may list at `now`: the held ones while the lease is surely
    /// alive, else none.
    pub fn confirmed(&self, now: Instant) -> Vec<Ipv4Net> {
        if self.p.static_store || (self.lease.is_some() && now < self.lease_until) {
            self.held.clone()
        } else {
            Vec::new()
        }
    }

    pub fn lease(&self) -> Option<LeaseId> {
        self.lease
    }

    /// The claim in progress ended with `b` created for this node: by this create, or
    /// (`note`) by an earlier attempt whose reply was lost.
    fn claim_won(&mut self, b: Ipv4Net, note: Option<&'static str>, now: Instant) {
        let c = self.claiming.take().expect("claiming");
        let mut logged = fields(&[
            ("node", &self.p.node),
            ("block", &b),
            ("collisions", &c.collisions),
        ]);
        logged.extend(note.map(|n| ("note", n.to_string())));
        self.log(Level::Info, "block claimed", logged);
        self.exhausted_logged = false;
        self.claimed(c.purpose, Some(b), now);
    }

    fn log(&mut self, level: Level, msg: &'static str, fields: Vec<(&'static str, String)>) {
        self.out
            .push_back(Action::Log(LogLine { level, msg, fields }));
    }

    fn report(&mut self, r: Report) {
        self.out.push_back(Action::Report(r));
    }

    /// Asks the loop something (after the queued logs and reports).
    fn ask(&mut self, pending: Pending, action: Action) {
        debug_assert!(action.needs_reply());
        debug_assert!(self.follow.is_none());
        self.follow = Some((pending, action));
    }

    fn store(&mut self, pending: Pending, op: StoreOp) {
        self.ask(pending, Action::Store(op))
    }

    /// What to do next at `now`.
    pub fn poll(&mut self, now: Instant) -> Action {
        assert!(
            self.pending.is_none(),
            "poll before the reply to the last action"
        );
        loop {
            if let Some(a) = self.out.pop_front() {
                return a;
            }
            if std::mem::take(&mut self.peers_news) {
                if let Some(nodes) = &self.nodes {
                    self.peers = nodes.peers();
                    self.peers_dirty = false;
                    return Action::Peers(self.peers.clone());
                }
            }
            if let Some((p, a)) = self.follow.take() {
                self.pending = Some(p);
                return a;
            }
            if self.sync_handoff(now) {
                continue;
            }
            if self.sync_endpoints(now) {
                continue;
            }
            let Some(stage) = self.stage else {
                if now < self.wake {
                    // Wake when the lease may run out, to cut the hand-off then (the
                    // backoff while the store is down can be longer).
                    let cut_due = (self.lease.is_some() && !self.handed_off.is_empty())
                        .then_some(self.lease_until)
                        .filter(|t| *t > now);
                    let wake = cut_due.map_or(self.wake, |t| t.min(self.wake));
                    // A failed endpoint write is retried then.
                    let wake = Some(self.endpoints_retry)
                        .filter(|t| *t > now)
                        .map_or(wake, |t| t.min(wake));
                    return Action::Sleep(wake);
                }
                self.stage = Some(Stage::Config);
                continue;
            };
            self.advance(stage, now);
        }
    }

    /// The safety rule: cut the hand-off at once when it lists a block not confirmed now.
    fn sync_handoff(&mut self, now: Instant) -> bool {
        let ok = self.confirmed(now);
        if self.handed_off.iter().all(|b| ok.contains(b)) || now < self.cut_retry {
            return false;
        }
        if self.lease.is_some() && now >= self.lease_until && !self.lease_doubt_logged {
            self.lease_doubt_logged = true;
            let held = join(&self.held);
            self.log(
                Level::Warn,
                "the lease may have expired while the store did not answer: the hand-off lists no block until the store confirms it",
                fields(&[("node", &self.p.node), ("blocks", &held)]),
            );
        }
        let dropped: Vec<Ipv4Net> = self
            .handed_off
            .iter()
            .filter(|b| !ok.contains(b))
            .copied()
            .collect();
        let list = join(&dropped);
        self.log(
            Level::Info,
            "hand-off cut to the blocks this node holds under its lease",
            fields(&[("node", &self.p.node), ("removed", &list)]),
        );
        self.ask(Pending::HandOffCut(ok.clone()), Action::WriteHandOff(ok));
        true
    }

    /// The endpoints follow the records at once, between any two steps of a round or
    /// while asleep: read the records when they changed, then write what differs, one
    /// store call at a time, under the lease (none while there is no lease).
    fn sync_endpoints(&mut self, now: Instant) -> bool {
        if self.p.static_store || now < self.endpoints_retry {
            return false;
        }
        let Some(lease) = self.lease else {
            return false;
        };
        if self.records_changed {
            self.records_changed = false;
            self.ask(Pending::EndpointsRead, Action::ReadEndpoints);
            return true;
        }
        let Some(op) = self.endpoints.next(lease) else {
            return false;
        };
        let store_op = match &op {
            endpoints::Op::List(prefix) => StoreOp::List(key(prefix)),
            endpoints::Op::Put { key: k, value } => StoreOp::Put {
                key: key(k),
                value: value.clone(),
                lease: Some(lease),
            },
            endpoints::Op::Delete(k) | endpoints::Op::DropLabels(k) => StoreOp::Delete(key(k)),
        };
        self.store(Pending::Endpoint(lease, op), store_op);
        true
    }

    /// The answer to a step of [`Machine::sync_endpoints`]. A store error does not end
    /// the round: the write is retried with its own backoff (a lost lease is handled as
    /// everywhere).
    fn endpoints_reply(&mut self, now: Instant, pending: Pending, input: Input) {
        match (pending, input) {
            (Pending::EndpointsRead, Input::Endpoints(d)) => {
                if let Some(d) = d {
                    self.endpoints.set_desired(d);
                }
            }
            (Pending::Endpoint(lease, op), Input::Store(Ok(reply))) => {
                let listed = match reply {
                    StoreReply::List(kvs, _) => kvs,
                    _ => Vec::new(),
                };
                self.endpoints.done(lease, &op, &listed);
                self.endpoints_backoff.reset();
            }
            (Pending::Endpoint(..), Input::Store(Err(e @ StoreError::LeaseExpired(_)))) => {
                self.end(now, End::Store(e))
            }
            (Pending::Endpoint(_, op), Input::Store(Err(e))) => {
                self.report(Report::StoreError);
                let delay = self.endpoints_backoff.next_delay();
                self.endpoints_retry = now + delay;
                let what = match &op {
                    endpoints::Op::List(k)
                    | endpoints::Op::Delete(k)
                    | endpoints::Op::DropLabels(k) => k.clone(),
                    endpoints::Op::Put { key, .. } => key.clone(),
                };
                self.log(
                    Level::Warn,
                    "cannot write a pod's endpoint to the store; retrying",
                    fields(&[
                        ("key", &what),
                        ("retryInMs", &delay.as_millis()),
                        ("error", &e),
                    ]),
                );
            }
            (p, i) => panic!("unexpected reply {i:?} to {p:?}"),
        }
    }

    fn next_stage(&mut self, s: Stage) {
        self.stage = Some(s);
    }

    /// Runs stage `s`: it asks something of the loop (see [`Machine::ask`]), moves on to
    /// another stage, or ends the round.
    fn advance(&mut self, s: Stage, now: Instant) {
        match s {
            Stage::Config => {
                if self.net.is_some() {
                    self.next_stage(Stage::Override);
                    return;
                }
                self.store(Pending::Config, StoreOp::Get(key(KEY_CONFIG)))
            }
            Stage::Override => {
                if self.watching {
                    self.next_stage(Stage::Detect);
                    return;
                }
                if self.watch_seen.is_some() {
                    return self.open_watch(true, 0);
                }
                let ours = key(&format!("{PREFIX_NODECONFIGS}{}", self.p.node));
                self.store(Pending::Override, StoreOp::List(ours))
            }
            Stage::Detect => {
                if !self.redetect && self.node_ip.is_some() {
                    self.next_stage(Stage::Lease);
                    return;
                }
                let spec = self.spec.clone();
                self.ask(Pending::Detect, Action::DetectNodeIp(spec))
            }
            Stage::Lease => {
                let next = if self.p.static_store {
                    Stage::Static
                } else {
                    Stage::KeepAlive
                };
                if self.lease.is_some() {
                    self.next_stage(next);
                    return;
                }
                let ttl = self.ttl();
                self.store(Pending::Grant { asked: now, ttl }, StoreOp::Grant(ttl))
            }
            Stage::Static => self.store(Pending::StaticList, StoreOp::List(key(PREFIX_BLOCKS))),
            Stage::Reclaim => self.reclaim_next(now),
            Stage::Claim => {
                if self.claiming.is_none() {
                    if !self.held.is_empty() {
                        self.next_stage(Stage::Usage);
                        return;
                    }
                    self.claiming = Some(Claiming {
                        purpose: Purpose::First,
                        taken: self.blocks_listed.take(),
                        collisions: 0,
                    });
                }
                self.claim_next(now)
            }
            Stage::KeepAlive => {
                if now < self.next_keepalive {
                    self.next_stage(Stage::Reclaim);
                    return;
                }
                let lease = self.lease.expect("held by now");
                let ttl = self.ttl();
                self.store(
                    Pending::KeepAlive { asked: now, ttl },
                    StoreOp::KeepAlive(lease),
                )
            }
            Stage::Usage => {
                if self.claiming.is_some() {
                    return self.claim_next(now);
                }
                if self.watching && self.held.iter().any(|b| !self.watched_blocks.contains(b)) {
                    // A block claimed (or adopted) after the watch opened is outside it: open
                    // it again with the block, so that its loss is seen at once. It resumes
                    // (see `open_watch`): the nodes' part goes on from its last event, and
                    // the blocks are read again once the new watch is confirmed.
                    self.watching = false;
                    self.next_stage(Stage::Override);
                    return;
                }
                if let Some(m) = self.measured.take() {
                    return self.after_growth(m);
                }
                if now < self.next_usage {
                    self.next_stage(Stage::Node);
                    return;
                }
                self.next_usage = now + self.p.poll_interval;
                self.ask(Pending::Usage, Action::MeasureUsage)
            }
            Stage::HandOff => {
                let blocks = self.confirmed(now);
                self.ask(
                    Pending::HandOff(blocks.clone()),
                    Action::WriteHandOff(blocks),
                )
            }
            Stage::Memory => {
                if self.p.static_store || self.memory.as_ref() == Some(&self.held) {
                    self.next_stage(Stage::Done);
                    return;
                }
                let blocks = self.held.clone();
                self.ask(Pending::Memory(blocks.clone()), Action::WriteMemory(blocks))
            }
            Stage::Node => {
                let lease = self.lease.expect("held by now");
                let ip = self.node_ip.as_ref().expect("detected before");
                let status = NodeStatus {
                    name: self.p.node.clone(),
                    address: ip.address,
                    autodetection: ip.method.clone(),
                    reason: ip.reason.clone(),
                    blocks: self.held.clone(),
                    started_at: self.p.started_at,
                    agent_version: self.p.version.clone(),
                };
                let bytes = serde_json::to_vec(&status).expect("a node status serializes");
                if self.published_node.as_ref() == Some(&(lease, bytes.clone())) {
                    self.next_stage(Stage::Peers);
                    return;
                }
                let k = key(&format!("{PREFIX_NODES}{}", self.p.node));
                self.store(
                    Pending::Node(bytes.clone()),
                    StoreOp::Put {
                        key: k,
                        value: bytes,
                        lease: Some(lease),
                    },
                )
            }
            Stage::Peers => {
                let Some(nodes) = self.nodes.as_ref() else {
                    return self.store(Pending::Peers, StoreOp::List(key(PREFIX_NODES)));
                };
                if self.peers_dirty {
                    self.peers = nodes.peers();
                    self.peers_dirty = false;
                }
                self.next_stage(Stage::Resources);
            }
            Stage::Resources => {
                if !self.resources_dirty || !self.uses_bgp_resources() {
                    self.next_stage(Stage::Reconcile);
                    return;
                }
                self.store(Pending::BgpConfig, StoreOp::Get(key(KEY_BGP_CONFIG)))
            }
            Stage::Reconcile => {
                let mut inputs = if self.uses_bgp_resources() {
                    self.inputs.clone()
                } else {
                    RoutingInputs::default()
                };
                inputs.cluster_cidr = self.net.as_ref().map(|(c, _)| c.cluster_cidr);
                self.ask(
                    Pending::Reconcile,
                    Action::Reconcile {
                        node_ip: self.node_ip.clone().expect("detected before"),
                        blocks: self.held.clone(),
                        peers: self.peers.clone(),
                        inputs: Box::new(inputs),
                    },
                );
            }
            Stage::Probe => {
                // The prober keeps its own time; a round that a peer's change brought within
                // half a poll of the last hand-over leaves it to the next periodic round. At
                // 1000 peers the hand-over (targets, the view of every peer) was most of what
                // a round cost, and a node joining brings 1000 agents a round at once.
                if now < self.next_probe {
                    self.next_stage(Stage::HandOff);
                    return;
                }
                self.next_probe = now + self.p.poll_interval / 2;
                let node_ip = self.node_ip.clone().expect("detected before");
                let peers = self.peers.clone();
                self.ask(Pending::PeerView, Action::ProbePeers { node_ip, peers })
            }
            Stage::Done => {
                let blocks = self.held.clone();
                self.report(Report::Blocks(blocks));
                let next = if self.p.static_store {
                    now + self.p.poll_interval
                } else {
                    self.next_keepalive.min(self.next_usage)
                };
                let next = self.routing_due.map_or(next, |due| next.min(due));
                self.end(now, End::Ready(next));
            }
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.net.as_ref().expect("config known").0.lease_ttl_seconds)
    }

    fn space(&self) -> &BlockSpace {
        &self.net.as_ref().expect("config known").1
    }

    fn block_value(&self, b: Ipv4Net, claimed_at: u64) -> Vec<u8> {
        serde_json::to_vec(&Block {
            cidr: b,
            node: self.p.node.clone(),
            claimed_at,
        })
        .expect("a block serializes")
    }

    /// Reclaim: list the blocks (to find those held in this node's name), then take each
    /// candidate back in turn.
    fn reclaim_next(&mut self, now: Instant) {
        if !self.need_reclaim {
            self.next_stage(Stage::Claim);
            return;
        }
        if self.reclaiming.is_none() {
            self.reclaiming = self.reclaim_by_gets();
        }
        let Some(r) = self.reclaiming.as_mut() else {
            return self.store(Pending::ReclaimList, StoreOp::List(key(PREFIX_BLOCKS)));
        };
        if let Some((b, rev)) = r.releases.pop() {
            self.log(
                Level::Warn,
                "a block held in this node's name is outside the address space (the network config changed); releasing it, since no pod can be given an address in it",
                fields(&[("node", &self.p.node), ("block", &b)]),
            );
            return self.store(
                Pending::Release(b),
                StoreOp::DeleteIf {
                    key: key(&block_key(b)),
                    expected: rev,
                },
            );
        }
        let Some(c) = r.queue.front().cloned() else {
            let r = self.reclaiming.take().expect("checked");
            self.held = r.got;
            self.remembered.clear();
            self.unanswered.clear();
            self.need_reclaim = false;
            self.next_usage = now;
            self.next_stage(Stage::Claim);
            return;
        };
        let lease = self.lease.expect("held by now");
        let k = key(&block_key(c.block));
        if !c.read {
            return self.store(Pending::Reclaim(ReclaimStep::Get), StoreOp::Get(k));
        }
        let parsed = c.kv.as_ref().map(|kv| (parse_block(kv), kv.lease));
        let action = claims::reclaim_action(
            parsed.as_ref().map(|(b, l)| (b.as_ref(), *l)),
            &self.p.node,
            lease,
        );
        match action {
            ReclaimAction::Keep => {
                self.reclaim_done(true);
            }
            ReclaimAction::Create => {
                let v = self.block_value(c.block, self.claim_time(now));
                self.store(
                    Pending::Reclaim(ReclaimStep::Create),
                    StoreOp::Create {
                        key: k,
                        value: v,
                        lease: Some(lease),
                    },
                )
            }
            ReclaimAction::TakeOver { claimed_at } => {
                if c.origin == Origin::Adopted && c.attempts == 0 {
                    self.log(
                        Level::Info,
                        "a block held in this node's name but not remembered (a node replaced under the same name, or killed before its hand-off was written); adopting it: pods may hold addresses in it, and the node needs a block anyway",
                        fields(&[("node", &self.p.node), ("block", &c.block)]),
                    );
                }
                let rev = c.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or_default();
                let v = self.block_value(c.block, claimed_at);
                self.store(
                    Pending::Reclaim(ReclaimStep::Update),
                    StoreOp::Update {
                        key: k,
                        expected: rev,
                        value: v,
                        lease: Some(lease),
                    },
                )
            }
            ReclaimAction::Lost { other } if c.origin == Origin::Unanswered => {
                self.log(
                    Level::Info,
                    "a claim whose answer was lost found the block held by another node; claiming another",
                    fields(&[("block", &c.block), ("node", &self.p.node), ("holder", &other)]),
                );
                self.reclaim_done(false);
            }
            ReclaimAction::Lost { other } => {
                self.log(
                    Level::Error,
                    "a block this node held is now held by another node; not taking it back: pods of this node with addresses in it conflict with that node's pods, remove them",
                    fields(&[("block", &c.block), ("node", &self.p.node), ("holder", &other)]),
                );
                self.reclaim_done(false);
            }
        }
    }

    /// The front candidate is settled.
    fn reclaim_done(&mut self, got: bool) {
        let r = self.reclaiming.as_mut().expect("reclaiming");
        let c = r.queue.pop_front().expect("a candidate");
        if got {
            r.got.push(c.block);
        }
    }

    /// The front candidate changed under us: read it again (at most 5 tries).
    fn reclaim_retry(&mut self) {
        let r = self.reclaiming.as_mut().expect("reclaiming");
        let c = r.queue.front_mut().expect("a candidate");
        c.attempts += 1;
        if c.attempts >= 5 {
            self.reclaim_done(false);
            return;
        }
        let k = key(&block_key(c.block));
        self.store(Pending::Reclaim(ReclaimStep::Get), StoreOp::Get(k))
    }

    /// The reclaim's candidates without a list, when one was already taken under this
    /// lease ([`Machine::scanned_under`]): the held and remembered blocks, each to be read.
    /// `None` (list instead) when there is no such list or a block left the address space
    /// (the list's path releases its key).
    fn reclaim_by_gets(&self) -> Option<Reclaiming> {
        if self.lease.is_none() || self.scanned_under != self.lease {
            return None;
        }
        let mut r = Reclaiming::default();
        for (b, origin) in self.known_then_unanswered() {
            if !self.space().is_usable(b) {
                return None;
            }
            if r.queue.iter().any(|c| c.block == b) {
                continue;
            }
            r.queue.push_back(Candidate {
                block: b,
                origin,
                kv: None,
                read: false,
                attempts: 0,
            });
        }
        Some(r)
    }

    /// The reclaim's candidates in order: held, remembered, then those whose claim lost
    /// its answer (duplicates included: the callers skip them).
    fn known_then_unanswered(&self) -> Vec<(Ipv4Net, Origin)> {
        let known = self.held.iter().chain(self.remembered.iter());
        known
            .map(|b| (*b, Origin::Known))
            .chain(self.unanswered.iter().map(|b| (*b, Origin::Unanswered)))
            .collect()
    }

    fn reclaim_listed(&mut self, kvs: Vec<KeyValue>) {
        self.scanned_under = self.lease;
        self.blocks_listed = Some(
            kvs.iter()
                .filter_map(|kv| block_from_key(&kv.key))
                .collect(),
        );
        let mut mine: Vec<(Ipv4Net, KeyValue)> = kvs
            .into_iter()
            .filter_map(|kv| {
                let b = parse_block(&kv)?;
                (b.node == self.p.node && block_from_key(&kv.key) == Some(b.cidr))
                    .then_some((b.cidr, kv))
            })
            .collect();
        mine.sort_by_key(|(b, _)| *b);
        let mut r = Reclaiming::default();
        let mut seen: Vec<Ipv4Net> = Vec::new();
        for (b, origin) in self.known_then_unanswered() {
            if seen.contains(&b) {
                continue;
            }
            seen.push(b);
            if !self.space().is_usable(b) {
                if origin == Origin::Known && !mine.iter().any(|(m, _)| *m == b) {
                    self.log(
                        Level::Warn,
                        "a remembered block is not part of the address space any more; dropping it",
                        fields(&[("block", &b)]),
                    );
                }
                continue;
            }
            let kv = mine.iter().find(|(m, _)| *m == b).map(|(_, kv)| kv.clone());
            r.queue.push_back(Candidate {
                block: b,
                origin,
                kv,
                read: true,
                attempts: 0,
            });
        }
        for (b, kv) in &mine {
            if seen.contains(b) {
                continue;
            }
            if !self.space().is_usable(*b) {
                // Outside the address space: it can never be handed off, so free its key.
                r.releases.push((*b, kv.mod_revision));
                continue;
            }
            r.queue.push_back(Candidate {
                block: *b,
                origin: Origin::Adopted,
                kv: Some(kv.clone()),
                read: true,
                attempts: 0,
            });
        }
        self.reclaiming = Some(r);
    }

    fn claim_next(&mut self, now: Instant) {
        let c = self.claiming.as_ref().expect("claiming");
        let Some(taken) = c.taken.as_ref() else {
            return self.store(Pending::ClaimList, StoreOp::List(key(PREFIX_BLOCKS)));
        };
        let Some(b) = self.space().free_from(taken, self.seed).next() else {
            let c = self.claiming.take().expect("claiming");
            return self.claimed(c.purpose, None, now);
        };
        let lease = self.lease.expect("held by now");
        let value = self.block_value(b, self.claim_time(now));
        self.store(
            Pending::ClaimCreate(b),
            StoreOp::Create {
                key: key(&block_key(b)),
                value,
                lease: Some(lease),
            },
        )
    }

    /// The wall clock at `now`, in seconds (derived from the start: the machine reads no clock).
    fn claim_time(&self, now: Instant) -> u64 {
        self.p.started_at + now.saturating_duration_since(self.start).as_secs()
    }

    /// The claim ended: with block `got`, or none free.
    fn claimed(&mut self, purpose: Purpose, got: Option<Ipv4Net>, now: Instant) {
        match (purpose, got) {
            (Purpose::First, Some(b)) => {
                self.held.push(b);
                self.next_stage(Stage::Usage);
            }
            (Purpose::First, None) => {
                let (c, space) = self.net.as_ref().expect("config known");
                let why = format!(
                    "no free block: all {} /{} blocks of {} are held by other nodes; widen clusterCIDR or retire nodes (twill node remove NAME)",
                    space.capacity(),
                    c.block_size,
                    c.cluster_cidr
                );
                self.end(now, End::NotReady(why, Duration::from_secs(2)));
            }
            (Purpose::Grow { free }, Some(b)) => {
                let min = self.p.min_free_addresses;
                self.log(
                    Level::Info,
                    "free addresses ran low; claimed another block",
                    fields(&[
                        ("node", &self.p.node),
                        ("free", &free),
                        ("minFreeAddresses", &min),
                        ("block", &b),
                    ]),
                );
                self.held.push(b);
                // Measure again soon: one block may not be enough.
                self.next_usage = now;
            }
            (Purpose::Grow { free }, None) => {
                if !self.exhausted_logged {
                    self.log(
                        Level::Warn,
                        "free addresses ran low but no block is free in the cluster",
                        fields(&[("node", &self.p.node), ("free", &free)]),
                    );
                    self.exhausted_logged = true;
                }
            }
        }
    }

    /// Usage measured (and the growth, if any, done): report it, publish the allocations.
    fn after_growth(&mut self, m: Measured) {
        let usage = claims::usage(&self.held, &m.ips);
        self.report(Report::Usage {
            used: usage.used,
            free: usage.free,
        });
        let lease = self.lease.expect("held by now");
        if self.published_allocs.as_ref() == Some(&(lease, m.allocations.clone())) {
            self.next_stage(Stage::Node);
            return;
        }
        let k = key(&format!("{PREFIX_ALLOCATIONS}{}", self.p.node));
        self.store(
            Pending::Allocations(m.allocations.clone()),
            StoreOp::Put {
                key: k,
                value: m.allocations,
                lease: Some(lease),
            },
        )
    }

    /// A round ends: what run()'s match on the step's result did.
    fn end(&mut self, now: Instant, e: End) {
        self.stage = None;
        self.reclaiming = None;
        self.blocks_listed = None;
        self.claiming = None;
        self.measured = None;
        let again = std::mem::take(&mut self.again);
        self.wake = match e {
            End::Ready(next) => {
                self.backoff.reset();
                let next = if again { now } else { next };
                if self.last_problem.take().is_some() {
                    let node = self.p.node.clone();
                    self.log(Level::Info, "node ready", fields(&[("node", &node)]));
                }
                self.report(Report::Ready);
                next.min(now + MAX_WAIT)
            }
            End::NotReady(why, wait) => {
                self.backoff.reset();
                self.problem(&why, true);
                now + wait.min(MAX_WAIT)
            }
            End::Store(StoreError::LeaseExpired(id)) => {
                self.lease_lost(id);
                now
            }
            End::Store(e) => {
                let why = if e.is_transient() {
                    format!("store unreachable: {e}")
                } else {
                    format!("store error: {e}")
                };
                self.report(Report::StoreError);
                self.problem(&why, false);
                let delay = self.backoff.next_delay();
                let node = self.p.node.clone();
                self.log(
                    Level::Warn,
                    "store call failed; retrying",
                    fields(&[
                        ("node", &node),
                        ("retryInMs", &delay.as_millis()),
                        ("error", &e),
                    ]),
                );
                // Not capped by MAX_WAIT: the backoff must reach its 10 s ceiling (watch
                // events still wake the loop early).
                now + delay
            }
            End::File(why) => {
                self.problem(&why, true);
                now + self.backoff.next_delay()
            }
        };
    }

    /// Logs a new problem once and shows it in /readyz.
    fn problem(&mut self, why: &str, store_up: bool) {
        if self.last_problem.as_deref() != Some(why) {
            let node = self.p.node.clone();
            self.log(
                Level::Warn,
                "not ready",
                fields(&[("node", &node), ("reason", &why)]),
            );
            self.last_problem = Some(why.to_string());
        }
        self.report(Report::NotReady {
            reason: why.to_string(),
            store_up,
        });
    }

    fn lease_lost(&mut self, id: LeaseId) {
        let node = self.p.node.clone();
        self.log(
            Level::Warn,
            "lease lost; granting a new one and claiming the same blocks again",
            fields(&[("node", &node), ("lease", &id.0)]),
        );
        self.report(Report::LeaseRenewalFailed);
        self.lease = None;
    }

    /// Feeds the answer to the last action, or a watch event.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Watch(ev) => return self.on_event(now, ev),
            Input::BackendDue => {
                self.wake_now(now);
                return;
            }
            Input::RecordsChanged => {
                self.records_changed = true;
                return;
            }
            Input::WatchEnded(e) => {
                // A store that went away (etcd without a leader, a member restarted) keeps
                // its history: the next watch resumes where this one ended. Anything else
                // (its history compacted away) is read afresh.
                let resumes = e.is_transient() && self.watch_seen.is_some();
                self.log(
                    Level::Warn,
                    if resumes {
                        "the store watch ended; resuming it from its last event"
                    } else {
                        "the store watch ended; reading the store again and watching from there"
                    },
                    fields(&[("error", &e)]),
                );
                self.watching = false;
                if !resumes {
                    self.watch_seen = None;
                    self.nodes = None;
                }
                return;
            }
            _ => {}
        }
        let pending = self.pending.take().expect("a reply without a request");
        if matches!(pending, Pending::EndpointsRead | Pending::Endpoint(..)) {
            return self.endpoints_reply(now, pending, input);
        }
        if let Pending::HandOffCut(blocks) = pending {
            match input {
                Input::Written(Ok(())) => self.handed_off = blocks,
                Input::Written(Err(why)) => {
                    self.cut_retry = now + self.backoff.next_delay();
                    self.problem(&why, true);
                }
                other => panic!("unexpected reply {other:?} to a hand-off write"),
            }
            return;
        }
        let reply = match input {
            Input::Store(Err(e)) => {
                if matches!(pending, Pending::Watch { resumed: true }) && !e.is_transient() {
                    // Compacted past a part's last event: the next round reads afresh.
                    self.watch_seen = None;
                    self.nodes = None;
                }
                if let (Pending::ClaimCreate(b) | Pending::ClaimCheck(b), true) =
                    (&pending, e.is_transient())
                {
                    if !self.unanswered.contains(b) {
                        self.unanswered.push(*b);
                    }
                    // The next round starts with a reclaim, which settles it.
                    self.need_reclaim = true;
                }
                if matches!(pending, Pending::KeepAlive { .. })
                    && !matches!(e, StoreError::LeaseExpired(_))
                {
                    self.report(Report::LeaseRenewalFailed);
                }
                self.end(now, End::Store(e));
                return;
            }
            Input::Store(Ok(r)) => Some(r),
            other => {
                self.other_reply(now, pending, other);
                return;
            }
        };
        let reply = reply.expect("store reply");
        self.store_reply(now, pending, reply);
    }

    fn other_reply(&mut self, now: Instant, pending: Pending, input: Input) {
        match (pending, input) {
            (Pending::Backend(c), Input::Backend(Ok(()))) => {
                let space = BlockSpace::new(&c);
                self.net = Some((*c, space));
                self.next_stage(Stage::Override);
            }
            (Pending::Backend(_), Input::Backend(Err(e))) => self.end(
                now,
                End::NotReady(
                    format!("the network config's backend is unusable: {e}; fix it with twill apply -f network.yaml"),
                    Duration::from_secs(2),
                ),
            ),
            (Pending::Detect, Input::NodeIp(Ok(ip))) => {
                if self.node_ip.as_ref() != Some(&ip) {
                    // A fixed address no interface holds is likely a typo: say so louder.
                    let level = if ip.cidr.is_none() {
                        Level::Warn
                    } else {
                        Level::Info
                    };
                    let node = self.p.node.clone();
                    self.log(
                        level,
                        "node IP",
                        fields(&[
                            ("node", &node),
                            ("address", &ip.address),
                            ("interface", &ip.interface.clone().unwrap_or_default()),
                            ("method", &ip.method),
                            ("reason", &ip.reason),
                        ]),
                    );
                    self.report(Report::NodeIp(ip.address, ip.method.clone()));
                    self.node_ip = Some(ip);
                }
                self.redetect = false;
                self.next_stage(Stage::Lease);
            }
            (Pending::Detect, Input::NodeIp(Err(why))) => {
                self.end(now, End::NotReady(why, Duration::from_secs(2)))
            }
            (Pending::Usage, Input::Usage(None)) => self.next_stage(Stage::Node),
            (Pending::Usage, Input::Usage(Some(m))) => {
                self.endpoints.set_desired(m.endpoints.clone());
                let mut ips = m.ips.clone();
                ips.sort();
                ips.dedup();
                self.inputs.pod_ips = ips;
                let usage = claims::usage(&self.held, &m.ips);
                if usage.free < u64::from(self.p.min_free_addresses) {
                    self.claiming = Some(Claiming {
                        purpose: Purpose::Grow { free: usage.free },
                        taken: None,
                        collisions: 0,
                    });
                }
                self.measured = Some(m);
            }
            (Pending::Reconcile, Input::Reconciled(status)) => {
                self.next_stage(if self.p.static_store {
                    Stage::HandOff
                } else {
                    Stage::Probe
                });
                if let Some(status) = status {
                    self.publish_routing(now, status);
                }
            }
            (Pending::PeerView, Input::PeerView(None)) => self.next_stage(Stage::HandOff),
            (Pending::PeerView, Input::PeerView(Some(full))) => {
                let lease = self.lease.expect("held by now");
                let view = crate::peers::for_store(&full);
                // Moved, not copied: the status takes the whole view.
                self.report(Report::Peers(full.peers));
                if self.peers_published.due(lease.0, &view, now) {
                    let bytes = serde_json::to_vec(&view).expect("a peer view serializes");
                    let k = key(&format!("{PREFIX_PEERS}{}", self.p.node));
                    self.store(
                        Pending::PeerPut(view),
                        StoreOp::Put {
                            key: k,
                            value: bytes,
                            lease: Some(lease),
                        },
                    );
                } else {
                    self.next_stage(Stage::HandOff);
                }
            }
            (Pending::HandOff(blocks), Input::Written(r)) => match r {
                Ok(()) => {
                    self.handed_off = blocks;
                    self.next_stage(Stage::Memory);
                }
                Err(why) => self.end(now, End::File(why)),
            },
            (Pending::Memory(blocks), Input::Written(r)) => match r {
                Ok(()) => {
                    self.memory = Some(blocks);
                    self.next_stage(Stage::Done);
                }
                Err(why) => self.end(now, End::File(why)),
            },
            (p, i) => panic!("unexpected reply {i:?} to {p:?}"),
        }
    }

    fn store_reply(&mut self, now: Instant, pending: Pending, reply: StoreReply) {
        match (pending, reply) {
            (Pending::Config, StoreReply::Value(None)) => self.end(
                now,
                End::NotReady(
                    "no network config in the store: run twill apply -f network.yaml".into(),
                    Duration::from_millis(500),
                ),
            ),
            (Pending::Config, StoreReply::Value(Some(kv))) => {
                let config = match serde_json::from_slice::<NetworkConfig>(&kv.value)
                    .map_err(|e| e.to_string())
                    .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
                {
                    Ok(c) => c,
                    Err(e) => {
                        return self.end(
                            now,
                            End::NotReady(
                                format!("the network config in the store is invalid ({e}); fix it with twill apply -f network.yaml"),
                                Duration::from_secs(2),
                            ),
                        )
                    }
                };
                self.log(
                    Level::Info,
                    "network config",
                    fields(&[
                        ("clusterCIDR", &config.cluster_cidr),
                        ("blockSize", &config.block_size),
                        ("leaseTTLSeconds", &config.lease_ttl_seconds),
                    ]),
                );
                let c = Box::new(config);
                self.ask(Pending::Backend(c.clone()), Action::UseConfig(c));
            }
            (Pending::Override, StoreReply::List(kvs, rev)) => {
                let ours = key(&format!("{PREFIX_NODECONFIGS}{}", self.p.node));
                let spec = kvs.iter().find(|kv| kv.key == ours).cloned();
                self.spec = spec.and_then(|kv| self.parse_spec(&kv));
                self.watch_seen = None;
                self.open_watch(false, rev);
            }
            (Pending::Watch { resumed: true }, StoreReply::Watching) => {
                // The nodes' part goes on from its last event: the node map is as the
                // events left it, and those missed come now. The other parts start later
                // than they ended (see `open_watch`): what they follow is read again, as
                // for a fresh watch, but that is a few keys.
                self.watching = true;
                self.resources_dirty = true;
                self.need_reclaim = true;
                self.next_stage(Stage::Detect);
            }
            (Pending::Watch { resumed: false }, StoreReply::Watching) => {
                self.watching = true;
                // A watch opened again starts from a fresh read, not from its last event:
                // what changed in between is never delivered. So everything the events
                // keep is read again: the nodes (listed once, at this watch's revision),
                // the routing resources, and this node's blocks (the round re-reads them
                // under its lease and drops those taken).
                self.nodes = None;
                self.resources_dirty = true;
                self.need_reclaim = true;
                self.redetect = true;
                self.next_stage(Stage::Detect);
            }
            (Pending::Grant { asked, ttl }, StoreReply::Lease(l)) => {
                let node = self.p.node.clone();
                self.log(
                    Level::Info,
                    "lease granted",
                    fields(&[
                        ("node", &node),
                        ("lease", &l.0),
                        ("ttl", &format!("{}s", ttl.as_secs())),
                    ]),
                );
                self.lease = Some(l);
                self.lease_until = asked + ttl;
                self.lease_doubt_logged = false;
                self.next_keepalive = now + self.jitter.within(ttl / 3, 0.75);
                self.need_reclaim = true;
                self.next_stage(if self.p.static_store {
                    Stage::Static
                } else {
                    Stage::KeepAlive
                });
            }
            (Pending::KeepAlive { asked, ttl }, StoreReply::Ttl(_)) => {
                self.report(Report::LeaseRenewed);
                self.next_keepalive = now + self.jitter.within(ttl / 3, 0.75);
                self.lease_until = asked + ttl;
                self.lease_doubt_logged = false;
                self.next_stage(Stage::Reclaim);
            }
            (Pending::ReclaimList, StoreReply::List(kvs, _)) => {
                self.reclaim_listed(kvs);
            }
            (Pending::Release(b), StoreReply::Done(deleted)) => {
                if deleted {
                    self.log(
                        Level::Info,
                        "block released",
                        fields(&[("node", &self.p.node), ("block", &b)]),
                    );
                }
            }
            (Pending::Reclaim(step), reply) => {
                let (block, origin) = self
                    .reclaiming
                    .as_ref()
                    .and_then(|r| r.queue.front())
                    .map(|c| (c.block, c.origin))
                    .expect("a candidate");
                let node = self.p.node.clone();
                match (step, reply) {
                    (ReclaimStep::Get, StoreReply::Value(kv)) => {
                        let r = self.reclaiming.as_mut().expect("reclaiming");
                        let c = r.queue.front_mut().expect("a candidate");
                        c.kv = kv;
                        c.read = true;
                    }
                    (ReclaimStep::Create, StoreReply::Created(Some(_))) => {
                        let msg = match origin {
                            Origin::Unanswered => "block claimed (by creating it again: the first create's answer was lost, and it had not committed)",
                            Origin::Known | Origin::Adopted => "block claimed again",
                        };
                        self.log(
                            Level::Info,
                            msg,
                            fields(&[("node", &node), ("block", &block)]),
                        );
                        self.reclaim_done(true);
                    }
                    (ReclaimStep::Update, StoreReply::Done(true)) => {
                        self.log(
                            Level::Info,
                            "block taken over under the new lease",
                            fields(&[("node", &node), ("block", &block)]),
                        );
                        self.reclaim_done(true);
                    }
                    // It changed meanwhile (or an earlier attempt of this very write
                    // committed before a connection error): read it again and decide.
                    (ReclaimStep::Create, StoreReply::Created(None))
                    | (ReclaimStep::Update, StoreReply::Done(false)) => {
                        self.reclaim_retry();
                    }
                    (s, r) => panic!("unexpected reply {r:?} to reclaim {s:?}"),
                }
            }
            (Pending::ClaimList, StoreReply::List(kvs, _)) => {
                let taken = kvs
                    .iter()
                    .filter_map(|kv| block_from_key(&kv.key))
                    .collect();
                self.claiming.as_mut().expect("claiming").taken = Some(taken);
            }
            (Pending::ClaimCreate(b), StoreReply::Created(Some(_))) => {
                self.claim_won(b, None, now);
            }
            (Pending::ClaimCreate(b), StoreReply::Created(None)) => {
                // "Already exists": someone else's, or this create's own first attempt.
                self.store(Pending::ClaimCheck(b), StoreOp::Get(key(&block_key(b))));
            }
            (Pending::ClaimCheck(b), StoreReply::Value(kv)) => {
                let lease = self.lease.expect("held by now");
                let parsed = kv.as_ref().map(|kv| (parse_block(kv), kv.lease));
                let outcome = claims::create_outcome(
                    parsed.as_ref().map(|(b, l)| (b.as_ref(), *l)),
                    &self.p.node,
                    lease,
                );
                let c = self.claiming.as_mut().expect("claiming");
                match outcome {
                    CreateOutcome::Mine => self.claim_won(
                        b,
                        Some("the create had committed before a connection error; the retry found it ours"),
                        now,
                    ),
                    CreateOutcome::Taken => {
                        c.collisions += 1;
                        c.taken.as_mut().expect("listed").insert(b);
                    }
                }
            }
            (Pending::Allocations(bytes), StoreReply::Revision(_)) => {
                let lease = self.lease.expect("held by now");
                self.published_allocs = Some((lease, bytes));
                self.next_stage(Stage::Node);
            }
            (Pending::Node(bytes), StoreReply::Revision(_)) => {
                let lease = self.lease.expect("held by now");
                self.published_node = Some((lease, bytes));
                self.next_stage(Stage::Peers);
            }
            (Pending::Peers, StoreReply::List(kvs, rev)) => {
                let nodes = routing::NodeMap::listed(&kvs, rev, &self.p.node);
                self.peers = nodes.peers();
                self.nodes = Some(nodes);
                self.peers_dirty = false;
                self.next_stage(Stage::Resources);
            }
            (Pending::BgpConfig, StoreReply::Value(kv)) => {
                // Read from scratch: what a failed round read stays out.
                self.resources_dirty = false;
                self.inputs.problems.clear();
                self.inputs.bgp_config = kv.and_then(|kv| {
                    self.parse_resource::<BgpConfiguration>(&kv, "BGPConfiguration")
                });
                self.store(Pending::BgpPeers, StoreOp::List(key(PREFIX_BGP_PEERS)))
            }
            (Pending::BgpPeers, StoreReply::List(kvs, _)) => {
                self.inputs.bgp_peers =
                    self.parse_all::<BgpPeer>(&kvs, PREFIX_BGP_PEERS, "BGPPeer");
                self.store(Pending::NodeSpecs, StoreOp::List(key(PREFIX_NODECONFIGS)))
            }
            (Pending::NodeSpecs, StoreReply::List(kvs, _)) => {
                self.inputs.node_specs =
                    self.parse_all::<NodeSpec>(&kvs, PREFIX_NODECONFIGS, "Node");
                self.next_stage(Stage::Reconcile);
            }
            (Pending::RoutingPut(status), StoreReply::Revision(_)) => {
                let lease = self.lease.expect("held by now");
                self.routing_published = Some((lease, status, now));
            }
            (Pending::PeerPut(view), StoreReply::Revision(_)) => {
                let lease = self.lease.expect("held by now");
                self.peers_published.written(lease.0, &view, now);
                self.next_stage(Stage::HandOff);
            }
            (Pending::StaticList, StoreReply::List(kvs, _)) => {
                let mut mine: Vec<Ipv4Net> = kvs
                    .iter()
                    .filter_map(parse_block)
                    .filter(|b| b.node == self.p.node)
                    .map(|b| b.cidr)
                    .collect();
                mine.sort();
                if mine.is_empty() {
                    let why = format!(
                        "the static file {} gives node {} no blocks: add them to its entry under \"nodes\"",
                        self.p.static_file.as_deref().unwrap_or_default(),
                        self.p.node
                    );
                    return self.end(now, End::NotReady(why, self.p.poll_interval));
                }
                if mine != self.held {
                    let node = self.p.node.clone();
                    let list = join(&mine);
                    self.log(
                        Level::Info,
                        "blocks from the static file",
                        fields(&[("node", &node), ("blocks", &list)]),
                    );
                    self.held = mine;
                }
                self.next_stage(Stage::Peers);
            }
            (p, r) => panic!("unexpected store reply {r:?} to {p:?}"),
        }
    }

    /// One watch for the override, the other nodes (the backend's peers), this node's
    /// blocks and endpoints, and the BGP resources; every part after `base`, the revision
    /// of a fresh read. `resumed`: the part of `config` to `nodes/` (the other nodes'
    /// records, costly to read again) from the last revision it delivered
    /// ([`Machine::watch_seen`]); the others (the BGP resources, this node's blocks: a few
    /// keys, read again when the watch is confirmed) from the newest revision any part
    /// delivered. A part that never had an event would otherwise start where the first
    /// watch did, and etcd would scan all the history since to catch it up.
    fn open_watch(&mut self, resumed: bool, base: Revision) {
        let mut own = self.held.clone();
        own.extend(self.remembered.iter().filter(|b| !self.held.contains(b)));
        self.watched_blocks = own.clone();
        let range = agent_watch(&own);
        let newest = self.watch_seen.iter().flatten().map(|(_, r)| *r).max();
        let config = key(KEY_CONFIG);
        let seen: Vec<(KeyRange, Revision)> = range
            .parts()
            .into_iter()
            .map(|part| {
                let own_last = self
                    .watch_seen
                    .iter()
                    .flatten()
                    .find(|(p, _)| p == part)
                    .map(|(_, r)| *r);
                let from = match (resumed, part.contains(&config)) {
                    (false, _) => base,
                    (true, true) => own_last.or(newest).unwrap_or(base),
                    (true, false) => newest.unwrap_or(base),
                };
                (part.clone(), from)
            })
            .collect();
        let after = seen.iter().map(|(_, r)| *r).collect();
        self.watch_seen = Some(seen);
        self.store(Pending::Watch { resumed }, StoreOp::Watch { range, after });
    }

    /// Whether `ev` is new: a resumed watch may deliver again what a part has already
    /// delivered (a store that keeps one order for all parts starts each from the oldest).
    fn watch_news(&mut self, ev: &Event) -> bool {
        let Some(seen) = self.watch_seen.as_mut() else {
            return true;
        };
        let Some((_, last)) = seen.iter_mut().find(|(p, _)| p.contains(ev.key())) else {
            return true;
        };
        if ev.revision() <= *last {
            return false;
        }
        *last = ev.revision();
        true
    }

    fn uses_bgp_resources(&self) -> bool {
        self.net
            .as_ref()
            .is_some_and(|(c, _)| c.backend.kind().uses_bgp_resources())
    }

    /// One routing resource; unreadable, it is left out and said in the backend's problems.
    fn parse_resource<T: serde::de::DeserializeOwned>(
        &mut self,
        kv: &KeyValue,
        kind: &str,
    ) -> Option<T> {
        match serde_json::from_slice::<T>(&kv.value) {
            Ok(v) => Some(v),
            Err(e) => {
                let rel = kv.key.strip_prefix(PREFIX).unwrap_or(&kv.key).to_string();
                let why = format!(
                    "the {kind} at {rel} is unreadable ({e}): left out; fix it with twill apply -f"
                );
                if !self.inputs.problems.contains(&why) {
                    self.log(
                        Level::Error,
                        "a routing resource is unreadable; ignoring it",
                        fields(&[("key", &rel), ("error", &e)]),
                    );
                    self.inputs.problems.push(why);
                }
                None
            }
        }
    }

    /// Every resource under `prefix`, by name.
    fn parse_all<T: serde::de::DeserializeOwned>(
        &mut self,
        kvs: &[KeyValue],
        prefix: &str,
        kind: &str,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        for kv in kvs {
            let Some(name) = kv.key.rsplit_once(prefix).map(|(_, n)| n.to_string()) else {
                continue;
            };
            if name.is_empty() || name.contains('/') {
                continue;
            }
            if let Some(v) = self.parse_resource::<T>(kv, kind) {
                out.insert(name, v);
            }
        }
        out
    }

    /// Writes `routingstatus/<node>` when it changed, at most every [`ROUTING_STATUS_GAP`]
    /// (a change within it is written by a round due when the gap ends).
    fn publish_routing(&mut self, now: Instant, status: RoutingStatus) {
        let Some(lease) = self.lease.filter(|_| !self.p.static_store) else {
            return;
        };
        let last = self.routing_published.as_ref();
        if last.is_some_and(|(l, s, _)| *l == lease && *s == status) {
            self.routing_due = None;
            return;
        }
        if let Some((_, _, at)) = last.filter(|(l, _, _)| *l == lease) {
            let due = *at + ROUTING_STATUS_GAP;
            if now < due {
                self.routing_due = Some(due);
                return;
            }
        }
        self.routing_due = None;
        let bytes = serde_json::to_vec(&status).expect("a routing status serializes");
        let k = key(&format!("{PREFIX_ROUTING_STATUS}{}", self.p.node));
        self.store(
            Pending::RoutingPut(status),
            StoreOp::Put {
                key: k,
                value: bytes,
                lease: Some(lease),
            },
        );
    }

    fn parse_spec(&mut self, kv: &KeyValue) -> Option<NodeSpec> {
        match serde_json::from_slice::<NodeSpec>(&kv.value) {
            Ok(s) => Some(s),
            Err(e) => {
                let k = kv.key.clone();
                self.log(
                    Level::Error,
                    "the Node resource is unreadable; ignoring it",
                    fields(&[("key", &k), ("error", &e)]),
                );
                None
            }
        }
    }

    /// A change in the store: the override, a peer, or one of this node's blocks.
    fn on_event(&mut self, now: Instant, ev: Event) {
        if !self.watch_news(&ev) {
            return;
        }
        if self.endpoints.on_event(&ev) {
            return;
        }
        let k = ev.key().to_string();
        let Some(rel) = k.strip_prefix(PREFIX) else {
            return;
        };
        if rel == KEY_BGP_CONFIG
            || rel.starts_with(PREFIX_BGP_PEERS)
            || rel.starts_with(PREFIX_NODECONFIGS)
        {
            self.resources_dirty = true;
            if self.uses_bgp_resources() {
                self.wake_now(now);
            }
        }
        if rel == format!("{PREFIX_NODECONFIGS}{}", self.p.node) {
            self.spec = match &ev {
                Event::Put(kv) => self.parse_spec(kv),
                Event::Delete { .. } => None,
            };
            self.redetect = true;
            self.wake_now(now);
        } else if let Some(name) = rel.strip_prefix(PREFIX_NODES) {
            if name == self.p.node {
                return;
            }
            // Kept from the event itself; before the first list, that list has it.
            let changed = self.nodes.as_mut().is_none_or(|m| m.apply(&ev));
            if changed {
                self.peers_dirty = true;
                self.peers_news = self.nodes.is_some() && self.takes_peers_between_passes();
                self.wake_now(now);
            }
        } else if let Some(b) = block_from_key(rel).filter(|b| self.held.contains(b)) {
            let still_ours = match &ev {
                Event::Put(kv) => {
                    parse_block(kv).is_some_and(|v| v.node == self.p.node) && kv.lease == self.lease
                }
                Event::Delete { .. } => false,
            };
            if still_ours || self.p.static_store {
                return;
            }
            let node = self.p.node.clone();
            self.log(
                Level::Warn,
                "a block this node held was deleted or taken in the store; dropping it from the hand-off at once, and claiming it again if it is free",
                fields(&[("node", &node), ("block", &b)]),
            );
            self.held.retain(|h| *h != b);
            if !self.remembered.contains(&b) {
                self.remembered.push(b);
            }
            self.need_reclaim = true;
            self.wake_now(now);
        }
    }

    fn wake_now(&mut self, now: Instant) {
        if self.stage.is_none() {
            self.wake = self.wake.min(now);
        } else {
            self.again = true;
        }
    }

    fn takes_peers_between_passes(&self) -> bool {
        self.net
            .as_ref()
            .is_some_and(|(c, _)| c.backend.kind().takes_peers_between_passes())
    }

    /// Whether the loop may hand in this watch event in the middle of a round, between two
    /// of its actions, instead of waiting for the round's end: another node's key, with a
    /// backend that takes peers between passes. Such an event only updates the node map;
    /// the next poll hands the backend the new peers ([`Action::Peers`]) and another round
    /// follows this one. Every other event waits for the round's end, as before.
    pub fn takes_mid_round(&self, ev: &Event) -> bool {
        self.takes_peers_between_passes()
            && self.nodes.is_some()
            && ev
                .key()
                .strip_prefix(PREFIX)
                .and_then(|rel| rel.strip_prefix(PREFIX_NODES))
                .is_some_and(|name| name != self.p.node && !name.is_empty() && !name.contains('/'))
    }
}

#[cfg(test)]
mod tests {
    //! The machine driven by hand: no process and no sleep. Store requests run against a
    //! real embedded store in a `twl…` temp folder (or fail, when the test says the store
    //! is down); time is an `Instant` the test moves forward.

    use super::*;
    use twill_store::embedded::EmbeddedStore;
    use twill_store::{Store, Watch};
    use twill_testkit::TempDir;

    type Hook = Box<dyn FnMut(&StoreOp, &EmbeddedStore) -> Option<Result<StoreReply, StoreError>>>;

    struct Node {
        m: Machine,
        /// What the hand-off file lists, as the machine wrote it.
        handoff: Vec<Ipv4Net>,
        /// Every hand-off written, in order.
        handoffs: Vec<Vec<Ipv4Net>>,
        memory: Vec<Ipv4Net>,
        used: Vec<Ipv4Addr>,
        logs: Vec<LogLine>,
        reports: Vec<Report>,
        store_calls: usize,
        watch: Option<Box<dyn Watch>>,
        down: bool,
        hook: Option<Hook>,
        /// The routing inputs of every Reconcile asked, in order.
        reconciles: Vec<RoutingInputs>,
        /// What twill-cni's records describe as endpoints (read by the machine).
        endpoints: Desired,
        /// What the backend answers to a Reconcile.
        routing: Option<RoutingStatus>,
        /// What the machine asked of the loop, in order: `reconcile [peers]`,
        /// `peers [peers]` ([`Action::Peers`]), `store` (any store call), `sleep`.
        trace: Vec<String>,
        /// Watch events seen mid-round that must wait for the round's end, as the loop
        /// holds them back.
        held_back: VecDeque<Event>,
    }

    struct World {
        _dir: TempDir,
        store: EmbeddedStore,
        now: Instant,
    }

    fn net(n: &str) -> Ipv4Net {
        n.parse().unwrap()
    }

    impl World {
        /// `cidr` cut into /`size` blocks, leases of `ttl` s; `only` limits it to one block.
        fn new(tag: &str, cidr: &str, size: u8, ttl: u64, only: Option<&str>) -> World {
            let dir = TempDir::new(tag);
            let store = EmbeddedStore::open(&dir.path.join("store")).unwrap();
            let c = NetworkConfig {
                cluster_cidr: cidr.parse().unwrap(),
                block_size: size,
                subnet_min: only.map(|b| b.parse().unwrap()),
                subnet_max: only.map(|b| b.parse().unwrap()),
                reservations: vec![],
                backend: twill_api::resources::BackendSpec::None,
                mtu: 1450,
                masquerade: true,
                pod_wiring: Default::default(),
                lease_ttl_seconds: ttl,
            };
            c.validate().unwrap();
            store
                .put(&key(KEY_CONFIG), &serde_json::to_vec(&c).unwrap(), None)
                .unwrap();
            World {
                _dir: dir,
                store,
                now: Instant::now(),
            }
        }

        fn node(&self, name: &str, remembered: &[Ipv4Net], handed_off: &[Ipv4Net]) -> Node {
            let p = Params {
                node: name.into(),
                static_store: false,
                min_free_addresses: 8,
                poll_interval: Duration::from_secs(5),
                remembered: remembered.to_vec(),
                handed_off: handed_off.to_vec(),
                started_at: 1_700_000_000,
                version: "test".into(),
                static_file: None,
            };
            Node {
                m: Machine::new(p, self.now),
                handoff: handed_off.to_vec(),
                handoffs: Vec::new(),
                memory: Vec::new(),
                used: Vec::new(),
                logs: Vec::new(),
                reports: Vec::new(),
                store_calls: 0,
                watch: None,
                down: false,
                hook: None,
                reconciles: Vec::new(),
                routing: None,
                endpoints: Desired::new(),
                trace: Vec::new(),
                held_back: VecDeque::new(),
            }
        }

        /// The stored network config with `backend` instead.
        fn set_backend(&self, backend: twill_api::resources::BackendSpec) {
            let kv = self.store.get(&key(KEY_CONFIG)).unwrap().unwrap();
            let mut c: NetworkConfig = serde_json::from_slice(&kv.value).unwrap();
            c.backend = backend;
            self.store
                .put(&key(KEY_CONFIG), &serde_json::to_vec(&c).unwrap(), None)
                .unwrap();
        }

        fn put(&self, rel: &str, value: &[u8]) {
            self.store.put(&key(rel), value, None).unwrap();
        }

        /// Runs `n` until it sleeps (watch events seen meanwhile are fed in as the loop
        /// does: between a round's actions those [`Machine::takes_mid_round`] takes, the
        /// rest at its end); the wake time.
        fn run(&self, n: &mut Node) -> Instant {
            let names = |peers: &[crate::backend::Peer]| {
                peers
                    .iter()
                    .map(|p| p.name.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            for _ in 0..10_000 {
                let a = n.m.poll(self.now);
                let mid_round = !matches!(a, Action::Sleep(_));
                let input = match a {
                    Action::Sleep(until) => {
                        n.trace.push("sleep".into());
                        let ev = n.held_back.pop_front().or_else(|| {
                            n.watch
                                .as_mut()
                                .and_then(|w| w.next(Duration::ZERO).ok().flatten())
                        });
                        match ev {
                            Some(ev) => Input::Watch(ev),
                            None => return until,
                        }
                    }
                    Action::Store(op) => {
                        n.store_calls += 1;
                        n.trace.push("store".into());
                        let r = Input::Store(self.exec(n, op));
                        n.m.handle(self.now, r);
                        self.mid_round(n);
                        continue;
                    }
                    Action::Peers(peers) => {
                        n.trace.push(format!("peers {}", names(&peers)));
                        continue;
                    }
                    Action::UseConfig(_) => Input::Backend(Ok(())),
                    Action::DetectNodeIp(_) => Input::NodeIp(Ok(NodeIp {
                        address: "192.0.2.11".parse().unwrap(),
                        cidr: None,
                        interface: None,
                        method: "nodeIP".into(),
                        reason: "set by nodeIP".into(),
                    })),
                    Action::MeasureUsage => Input::Usage(Some(Measured {
                        ips: n.used.clone(),
                        allocations: serde_json::to_vec(&n.used).unwrap(),
                        endpoints: n.endpoints.clone(),
                    })),
                    Action::ReadEndpoints => Input::Endpoints(Some(n.endpoints.clone())),
                    Action::Reconcile { inputs, peers, .. } => {
                        n.trace.push(format!("reconcile {}", names(&peers)));
                        n.reconciles.push(*inputs);
                        Input::Reconciled(n.routing.clone())
                    }
                    Action::ProbePeers { peers, .. } => {
                        n.trace.push(format!("probe {}", names(&peers)));
                        Input::PeerView(None)
                    }
                    Action::WriteHandOff(b) => {
                        n.handoff = b.clone();
                        n.handoffs.push(b);
                        Input::Written(Ok(()))
                    }
                    Action::WriteMemory(b) => {
                        n.memory = b;
                        Input::Written(Ok(()))
                    }
                    Action::Log(l) => {
                        n.logs.push(l);
                        continue;
                    }
                    Action::Report(r) => {
                        n.reports.push(r);
                        continue;
                    }
                };
                n.m.handle(self.now, input);
                if mid_round {
                    self.mid_round(n);
                }
            }
            panic!("the machine never slept");
        }

        /// The loop's [`crate::agent`] `mid_round`: the events the watch has now go in if
        /// the machine takes them mid-round (and none of their key is held back), else
        /// wait.
        fn mid_round(&self, n: &mut Node) {
            while let Some(ev) = n
                .watch
                .as_mut()
                .and_then(|w| w.next(Duration::ZERO).ok().flatten())
            {
                let behind = n.held_back.iter().any(|h| h.key() == ev.key());
                if n.m.takes_mid_round(&ev) && !behind {
                    n.m.handle(self.now, Input::Watch(ev));
                } else {
                    n.held_back.push_back(ev);
                }
            }
        }

        fn exec(&self, n: &mut Node, op: StoreOp) -> Result<StoreReply, StoreError> {
            if let Some(h) = n.hook.as_mut() {
                if let Some(r) = h(&op, &self.store) {
                    return r;
                }
            }
            if n.down {
                return Err(StoreError::Unavailable {
                    endpoint: "test".into(),
                    reason: "connection refused".into(),
                });
            }
            exec(&self.store, op, &mut n.watch)
        }

        /// Every block in the store: (block, holder, lease).
        fn blocks(&self) -> Vec<(Ipv4Net, String, Option<LeaseId>)> {
            let (kvs, _) = self.store.list(&key(PREFIX_BLOCKS)).unwrap();
            kvs.iter()
                .map(|kv| {
                    let b = parse_block(kv).unwrap();
                    (b.cidr, b.node, kv.lease)
                })
                .collect()
        }

        fn held_by(&self, node: &str) -> Vec<Ipv4Net> {
            self.blocks()
                .into_iter()
                .filter(|b| b.1 == node)
                .map(|b| b.0)
                .collect()
        }
    }

    fn exec(
        s: &EmbeddedStore,
        op: StoreOp,
        watch: &mut Option<Box<dyn Watch>>,
    ) -> Result<StoreReply, StoreError> {
        Ok(match op {
            StoreOp::Get(k) => StoreReply::Value(s.get(&k)?),
            StoreOp::List(p) => {
                let (kvs, rev) = s.list(&p)?;
                StoreReply::List(kvs, rev)
            }
            StoreOp::Put { key, value, lease } => StoreReply::Revision(s.put(&key, &value, lease)?),
            StoreOp::Create { key, value, lease } => {
                StoreReply::Created(s.create(&key, &value, lease)?)
            }
            StoreOp::Update {
                key,
                expected,
                value,
                lease,
            } => StoreReply::Done(s.update(&key, expected, &value, lease)?),
            StoreOp::DeleteIf { key, expected } => StoreReply::Done(s.delete_if(&key, expected)?),
            StoreOp::Delete(key) => StoreReply::Done(s.delete(&key)?),
            StoreOp::Grant(ttl) => StoreReply::Lease(s.grant(ttl)?),
            StoreOp::KeepAlive(l) => StoreReply::Ttl(s.keep_alive(l)?),
            StoreOp::Watch { range, after } => {
                *watch = Some(s.watch_range_from(&range, &after)?);
                StoreReply::Watching
            }
        })
    }

    impl Node {
        fn said(&self, msg: &str) -> bool {
            self.logs.iter().any(|l| l.msg.contains(msg))
        }

        fn not_ready(&self) -> Option<(String, bool)> {
            self.reports
                .iter()
                .rev()
                .find_map(|r| match r {
                    Report::NotReady { reason, store_up } => Some((reason.clone(), *store_up)),
                    Report::Ready => Some((String::new(), true)),
                    _ => None,
                })
                .filter(|(r, _)| !r.is_empty())
        }

        fn ready(&self) -> bool {
            matches!(
                self.reports
                    .iter()
                    .rev()
                    .find(|r| matches!(r, Report::Ready | Report::NotReady { .. })),
                Some(Report::Ready)
            )
        }
    }

    /// What the etcd client answers when no member answered in time.
    fn unreachable(reason: &str) -> StoreError {
        StoreError::Unavailable {
            endpoint: "http://192.0.2.1:2379".into(),
            reason: reason.into(),
        }
    }

    /// A `nodes/<name>` record at 192.0.2.`last` holding 10.244.`last`.0/`len`.
    fn node_record(name: &str, last: u8, len: u8) -> Vec<u8> {
        serde_json::to_vec(&NodeStatus {
            name: name.into(),
            address: Ipv4Addr::new(192, 0, 2, last),
            autodetection: "nodeIP".into(),
            reason: "set".into(),
            blocks: vec![net(&format!("10.244.{last}.0/{len}"))],
            started_at: 1,
            agent_version: "test".into(),
        })
        .unwrap()
    }

    fn endpoint_keys(w: &World) -> Vec<(String, Vec<u8>, Option<LeaseId>)> {
        w.store
            .list(&key("endpoints/"))
            .unwrap()
            .0
            .into_iter()
            .map(|kv| {
                (
                    kv.key.strip_prefix(PREFIX).unwrap().to_string(),
                    kv.value,
                    kv.lease,
                )
            })
            .collect()
    }

    #[test]
    fn the_agent_watches_what_it_reads_and_not_what_others_publish() {
        let r = agent_watch(&[net("10.244.1.0/24")]);
        for rel in [
            KEY_BGP_CONFIG,
            "bgppeers/tor",
            "blocks/10.244.1.0-24",
            KEY_CONFIG,
            "endpoints/n1/default/p",
            "nodeconfigs/n1",
            "nodes/n1",
            "nodes/zz",
        ] {
            assert!(r.contains(&key(rel)), "{rel} is needed");
        }
        for rel in [
            "allocations/n1",
            "blocks/10.244.2.0-24",
            "blocks/10.244.1.0-25",
            "peers/n1",
            "podlabels/default/p",
            "routingstatus/n1",
            "nodes0",
        ] {
            assert!(!r.contains(&key(rel)), "{rel} is not");
        }
    }

    #[test]
    fn endpoints_follow_the_records_at_once_under_the_lease_and_retry_with_backoff() {
        let mut w = World::new("mendp", "10.244.0.0/16", 26, 60, None);
        // A stale one from an earlier run, and another node's.
        w.put("endpoints/n1/x/old", b"{}");
        w.put("endpoints/n2/x/b", b"{}");
        let mut n = w.node("n1", &[], &[]);
        n.endpoints.insert("endpoints/n1/x/a".into(), b"A".to_vec());
        w.run(&mut n);
        let lease = n.m.lease();
        assert_eq!(
            endpoint_keys(&w),
            vec![
                ("endpoints/n1/x/a".to_string(), b"A".to_vec(), lease),
                ("endpoints/n2/x/b".to_string(), b"{}".to_vec(), None),
            ],
            "published under the lease; the stale one of this node removed"
        );
        // Records change while the machine sleeps: written at once, no round needed.
        w.put("podlabels/x/a", br#"{"labels":{"k":"v"}}"#);
        let calls = n.store_calls;
        n.endpoints.clear();
        n.endpoints.insert("endpoints/n1/y/c".into(), b"C".to_vec());
        n.m.handle(w.now, Input::RecordsChanged);
        w.run(&mut n);
        assert_eq!(
            n.store_calls,
            calls + 3,
            "one put, one delete, the gone pod's labels"
        );
        assert_eq!(endpoint_keys(&w)[0].0, "endpoints/n1/y/c");
        assert_eq!(w.store.get(&key("podlabels/x/a")).unwrap(), None);
        // The store down: no spinning, a retry after the backoff.
        n.down = true;
        n.endpoints.insert("endpoints/n1/y/d".into(), b"D".to_vec());
        n.m.handle(w.now, Input::RecordsChanged);
        let wake = w.run(&mut n);
        assert!(n.said("cannot write a pod's endpoint"), "{:?}", n.logs);
        assert!(wake > w.now, "sleeps until the retry");
        n.down = false;
        w.now += Duration::from_secs(1);
        w.run(&mut n);
        assert_eq!(endpoint_keys(&w).len(), 3, "{:?}", endpoint_keys(&w));
        // Deleted behind its back: put back on the watch event.
        w.store.delete(&key("endpoints/n1/y/d")).unwrap();
        w.run(&mut n);
        assert!(endpoint_keys(&w)
            .iter()
            .any(|(k, _, l)| k == "endpoints/n1/y/d" && *l == lease));
    }

    #[test]
    fn peers_come_from_one_list_per_watch_and_then_from_the_watch_s_events() {
        let mut w = World::new("mpeers", "10.244.0.0/16", 26, 60, None);
        let status = |n: &str, last: u8| node_record(n, last, 26);
        w.put("nodes/n2", &status("n2", 12));
        let mut n = w.node("n1", &[], &[]);
        let lists = std::rc::Rc::new(std::cell::Cell::new(0));
        let counted = lists.clone();
        n.hook = Some(Box::new(move |op, _| {
            if *op == StoreOp::List(key(PREFIX_NODES)) {
                counted.set(counted.get() + 1);
            }
            None
        }));
        let names = |n: &Node| n.m.peers.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        w.run(&mut n);
        assert!(n.ready(), "{:?}", n.reports);
        assert_eq!((lists.get(), names(&n)), (1, vec!["n2".to_string()]));
        // Nodes join, move and leave: every agent learns it from the events, and nodes/
        // is never read again (at 1000 nodes each re-list was a ~300 KB read per event).
        for (k, last) in [("n3", 13), ("n4", 14), ("n5", 15)] {
            w.put(&format!("nodes/{k}"), &status(k, last));
        }
        w.run(&mut n);
        assert_eq!(names(&n), ["n2", "n3", "n4", "n5"]);
        w.put("nodes/n3", &status("n3", 33));
        w.store.delete(&key("nodes/n4")).unwrap();
        w.put("nodes/n5", b"garbage");
        w.run(&mut n);
        assert_eq!(names(&n), ["n2", "n3"]);
        assert_eq!(n.m.peers[1].address, Ipv4Addr::new(192, 0, 2, 33));
        assert_eq!(lists.get(), 1, "no re-list on a node event");
        let last = n.reconciles.len();
        // This node's own key changes no peer, and wakes no round.
        w.put("nodes/n1", &status("n1", 99));
        w.run(&mut n);
        assert_eq!(n.reconciles.len(), last);
        // A watch that ended may have lost events: the next watch lists once, with the
        // revision, and misses nothing put in between.
        n.m.handle(
            w.now,
            Input::WatchEnded(StoreError::Compacted {
                requested: 1,
                compacted: 2,
            }),
        );
        n.watch = None;
        w.put("nodes/n6", &status("n6", 16));
        w.now += MAX_WAIT;
        w.run(&mut n);
        assert_eq!(lists.get(), 2);
        assert_eq!(names(&n), ["n2", "n3", "n6"]);
        w.put("nodes/n7", &status("n7", 17));
        w.run(&mut n);
        assert_eq!((lists.get(), names(&n).len()), (2, 4));
    }

    #[test]
    fn a_watch_that_broke_resumes_the_nodes_from_their_last_event_and_lists_nothing() {
        let w = World::new("mresume", "10.244.0.0/16", 24, 60, Some("10.244.7.0/24"));
        let status = |n: &str, last: u8| node_record(n, last, 24);
        w.put("nodes/n2", &status("n2", 12));
        let mut n = w.node("n1", &[], &[]);
        let ops = std::rc::Rc::new(std::cell::RefCell::new(None::<Vec<StoreOp>>));
        let recorded = ops.clone();
        n.hook = Some(Box::new(move |op, _| {
            if let Some(v) = recorded.borrow_mut().as_mut() {
                v.push(op.clone());
            }
            None
        }));
        let mut w = w;
        w.run(&mut n);
        let b = net("10.244.7.0/24");
        assert_eq!(n.handoff, [b]);
        // The block deleted in the store: seen on its event, and claimed again.
        assert!(w.store.delete(&key(&block_key(b))).unwrap());
        w.run(&mut n);
        let lost = |n: &Node| {
            n.logs
                .iter()
                .filter(|l| l.msg.starts_with("a block this node held was deleted"))
                .count()
        };
        assert_eq!((lost(&n), &n.handoff[..]), (1, &[b][..]));
        // The watch breaks (etcd lost its leader); meanwhile a node joins and one leaves.
        *ops.borrow_mut() = Some(Vec::new());
        n.m.handle(
            w.now,
            Input::WatchEnded(unreachable("watch stream error: etcdserver: no leader")),
        );
        n.watch = None;
        w.put("nodes/n4", &status("n4", 14));
        w.store.delete(&key("nodes/n2")).unwrap();
        w.now += MAX_WAIT;
        w.run(&mut n);
        let names: Vec<String> = n.m.peers.iter().map(|p| p.name.clone()).collect();
        assert!(n.said("resuming it from its last event"));
        assert_eq!(names, ["n4"], "the events missed while it was down came");
        let ops = ops.borrow().clone().unwrap();
        let reads: Vec<&StoreOp> = ops
            .iter()
            .filter(|op| matches!(op, StoreOp::List(_) | StoreOp::Get(_)))
            .collect();
        // No list (not the nodes, not the override, not the blocks): only the node's own
        // block, whose part started later than it ended, is read again.
        assert_eq!(reads, [&StoreOp::Get(key(&block_key(b)))]);
        let watches: Vec<(&KeyRange, &Vec<Revision>)> = ops
            .iter()
            .filter_map(|op| match op {
                StoreOp::Watch { range, after } => Some((range, after)),
                _ => None,
            })
            .collect();
        assert_eq!(watches.len(), 1);
        let (range, after) = watches[0];
        let nodes_part = range
            .parts()
            .iter()
            .position(|p| p.contains(&key("nodes/n9")))
            .unwrap();
        let newest = *after.iter().max().unwrap();
        assert!(
            after[nodes_part] < newest,
            "the nodes from their own last event: {after:?}"
        );
        for (i, r) in after.iter().enumerate().filter(|(i, _)| *i != nodes_part) {
            assert_eq!(*r, newest, "part {i} from the newest revision: {after:?}");
        }
        // This store starts every part from the oldest: the block's deletion came again,
        // and was known, so nothing was dropped from the hand-off.
        assert_eq!((lost(&n), &n.handoff[..]), (1, &[b][..]));
        assert!(n.ready());
    }

    #[test]
    fn a_resumed_watch_compacted_away_reads_the_store_again() {
        let w = World::new("mrecompact", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        let lists = std::rc::Rc::new(std::cell::Cell::new(0));
        let counted = lists.clone();
        let mut refused = false;
        n.hook = Some(Box::new(move |op, _| match op {
            StoreOp::List(p) if *p == key(PREFIX_NODES) => {
                counted.set(counted.get() + 1);
                None
            }
            // The resumed watch: its first part's revision was compacted away.
            StoreOp::Watch { after, .. } if counted.get() == 1 && !refused => {
                refused = true;
                Some(Err(StoreError::Compacted {
                    requested: after[0] + 1,
                    compacted: after[0] + 5,
                }))
            }
            _ => None,
        }));
        let mut w = w;
        w.run(&mut n);
        assert_eq!(lists.get(), 1);
        n.m.handle(w.now, Input::WatchEnded(unreachable("watch stream broke")));
        n.watch = None;
        w.now += MAX_WAIT;
        w.now = w.run(&mut n);
        assert!(!n.ready(), "the refused resume ends the round");
        w.run(&mut n);
        assert_eq!(lists.get(), 2, "the next round reads the nodes again");
        assert!(n.ready());
    }

    #[test]
    fn start_claims_a_block_hands_it_off_remembers_and_publishes_it() {
        let w = World::new("mstart", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        let wake = w.run(&mut n);
        assert!(n.ready(), "{:?}", n.reports);
        let held = w.held_by("n1");
        assert_eq!(held.len(), 1);
        assert_eq!(n.m.held(), held);
        assert_eq!(n.handoff, held);
        assert_eq!(n.memory, held);
        assert!(n.said("lease granted") && n.said("block claimed"));
        let lease = n.m.lease().unwrap();
        assert_eq!(w.blocks()[0].2, Some(lease), "bound to the node's lease");
        let node = w.store.get(&key("nodes/n1")).unwrap().unwrap();
        let st: NodeStatus = serde_json::from_slice(&node.value).unwrap();
        assert_eq!((st.blocks, node.lease), (held.clone(), Some(lease)));
        assert!(w.store.get(&key("allocations/n1")).unwrap().is_some());
        assert!(wake <= w.now + MAX_WAIT);
        // Idle: the next round asks the store nothing (keep-alive and usage not due).
        let calls = n.store_calls;
        let mut w = w;
        w.now = wake;
        w.run(&mut n);
        assert_eq!(n.store_calls, calls, "an idle round is free");
        assert_eq!(
            n.handoffs.len(),
            2,
            "the hand-off is offered again (unchanged)"
        );
    }

    #[test]
    fn the_old_hand_off_is_cut_before_anything_else_and_a_restart_gets_the_same_blocks() {
        let w = World::new("msame", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        let first = n.handoff.clone();
        let lease1 = n.m.lease().unwrap();
        // Killed: its lease still runs. Restarted with its memory and old hand-off.
        let mut n = w.node("n1", &first, &first);
        let a = n.m.poll(w.now);
        let a = match a {
            Action::Log(_) => {
                // "blocks remembered", then the cut.
                let b = n.m.poll(w.now);
                match b {
                    Action::Log(l) => assert_eq!(
                        l.msg,
                        "hand-off cut to the blocks this node holds under its lease"
                    ),
                    other => panic!("{other:?}"),
                }
                n.m.poll(w.now)
            }
            other => other,
        };
        assert_eq!(
            a,
            Action::WriteHandOff(vec![]),
            "no store call before the cut"
        );
        n.m.handle(w.now, Input::Written(Ok(())));
        n.handoff.clear();
        n.handoffs.push(vec![]);
        w.run(&mut n);
        assert_eq!(n.handoffs, [vec![], first.clone()]);
        let lease2 = n.m.lease().unwrap();
        assert_ne!(lease1, lease2);
        assert_eq!(w.blocks(), [(first[0], "n1".to_string(), Some(lease2))]);
        assert!(n.said("block taken over under the new lease"));
    }

    #[test]
    fn a_lost_lease_empties_the_hand_off_at_once_then_the_same_blocks_come_back() {
        let mut w = World::new("mlost", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        let first = n.handoff.clone();
        let lease1 = n.m.lease().unwrap();
        w.store.revoke(lease1).unwrap();
        // The keep-alive (due at TTL/3) finds it gone.
        w.now += Duration::from_secs(21);
        n.watch = None; // seen by the keep-alive, not by the watch
        n.handoffs.clear();
        w.run(&mut n);
        assert!(n.said("lease lost"), "{:?}", n.logs);
        assert_eq!(n.handoffs[0], Vec::<Ipv4Net>::new(), "cut at once");
        assert_eq!(n.handoff, first, "then the same block again");
        let lease2 = n.m.lease().unwrap();
        assert_ne!(lease2, lease1);
        assert_eq!(w.blocks(), [(first[0], "n1".to_string(), Some(lease2))]);
        assert!(n.said("block claimed again"));
    }

    #[test]
    fn a_block_deleted_in_the_store_leaves_the_hand_off_on_the_watch_event() {
        let w = World::new("mdel", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        let first = n.handoff.clone();
        let lease = n.m.lease().unwrap();
        // Revoked: the watch sees the block's DELETE before any keep-alive.
        w.store.revoke(lease).unwrap();
        n.handoffs.clear();
        w.run(&mut n);
        assert!(n.said("deleted or taken in the store"), "{:?}", n.logs);
        assert_eq!(n.handoffs[0], Vec::<Ipv4Net>::new());
        assert_eq!(n.handoff, first);
        assert_ne!(n.m.lease(), Some(lease));
    }

    #[test]
    fn low_free_addresses_grow_the_node_by_a_block() {
        let mut w = World::new("mgrow", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        let a = n.handoff[0];
        let hosts: Vec<Ipv4Addr> = a.hosts().skip(1).collect(); // .1 is the gateway
                                                                // 61 usable: 53 taken leaves 8 = minFreeAddresses, enough.
        n.used = hosts[..53].to_vec();
        w.now += Duration::from_secs(5);
        w.run(&mut n);
        assert_eq!(n.handoff, [a], "8 free is enough");
        assert!(n.reports.contains(&Report::Usage { used: 53, free: 8 }));
        n.used = hosts[..54].to_vec();
        w.now += Duration::from_secs(5);
        w.run(&mut n);
        assert_eq!(n.handoff.len(), 2, "{:?}", n.logs);
        assert_eq!(n.handoff[0], a, "the first block stays first");
        assert_eq!(w.held_by("n1").len(), 2);
        assert!(n.said("free addresses ran low; claimed another block"));
        assert!(n.reports.contains(&Report::Usage { used: 54, free: 68 }));
        assert_eq!(n.memory, n.handoff);
    }

    #[test]
    fn with_no_free_block_the_node_is_not_ready_until_one_expires() {
        let w = World::new("mfull", "10.244.0.0/16", 24, 60, Some("10.244.7.0/24"));
        let mut n1 = w.node("n1", &[], &[]);
        w.run(&mut n1);
        assert_eq!(n1.handoff, [net("10.244.7.0/24")]);
        let mut n2 = w.node("n2", &[], &[]);
        w.run(&mut n2);
        let (why, store_up) = n2.not_ready().unwrap();
        assert!(
            why.contains("all 1 /24 blocks of 10.244.0.0/16 are held"),
            "{why}"
        );
        assert!(store_up);
        assert!(n2.handoff.is_empty());
        // n1's lease ends (it was down past its TTL): n2 takes the block.
        w.store.revoke(n1.m.lease().unwrap()).unwrap();
        let mut w = w;
        w.now += Duration::from_secs(2);
        w.run(&mut n2);
        assert_eq!(n2.handoff, [net("10.244.7.0/24")]);
        assert!(n2.ready());
    }

    #[test]
    fn a_node_back_after_its_block_was_taken_hands_off_nothing() {
        // The duplicate-address fault: n1 down past its lease, n2 took its block.
        let w = World::new("mdup", "10.244.0.0/16", 24, 60, Some("10.244.7.0/24"));
        let mut n1 = w.node("n1", &[], &[]);
        w.run(&mut n1);
        let b = n1.handoff.clone();
        w.store.revoke(n1.m.lease().unwrap()).unwrap();
        let mut n2 = w.node("n2", &[], &[]);
        w.run(&mut n2);
        assert_eq!(n2.handoff, b);
        let mut n1 = w.node("n1", &b, &b);
        w.run(&mut n1);
        assert_eq!(
            n1.handoffs,
            [Vec::<Ipv4Net>::new()],
            "cut, never listed again"
        );
        assert!(n1.said("now held by another node"), "{:?}", n1.logs);
        let (why, _) = n1.not_ready().unwrap();
        assert!(why.contains("no free block"), "{why}");
        assert_eq!(w.held_by("n2"), b);
    }

    #[test]
    fn a_block_taken_while_the_watch_was_down_leaves_the_hand_off_when_it_watches_again() {
        // A watch ends (its etcd member was killed, or its start was compacted) and is
        // opened again from the revision of a fresh read: the changes between its last
        // event and that read are never delivered. One of them took this node's block.
        let mut w = World::new("mgap", "10.244.0.0/16", 24, 60, Some("10.244.7.0/24"));
        let mut n1 = w.node("n1", &[], &[]);
        w.run(&mut n1);
        let b = net("10.244.7.0/24");
        assert_eq!(n1.handoff, [b]);
        n1.watch = None;
        n1.m.handle(
            w.now,
            Input::WatchEnded(unreachable("etcd closed the watch stream")),
        );
        // Meanwhile the block was freed and n2 took it.
        let k = key(&block_key(b));
        assert!(w.store.delete(&k).unwrap());
        let n2_lease = w.store.grant(Duration::from_secs(60)).unwrap();
        let taken = serde_json::to_vec(&Block {
            cidr: b,
            node: "n2".into(),
            claimed_at: 1_700_000_001,
        })
        .unwrap();
        w.store.create(&k, &taken, Some(n2_lease)).unwrap().unwrap();
        // The next round watches again, from now: the change is behind it. It reads its
        // own block with a get, not by listing every block (it listed them once already
        // under this lease); the claim that follows, with nothing held, lists them.
        let ops = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = ops.clone();
        n1.hook = Some(Box::new(move |op, _| {
            match op {
                StoreOp::List(p) if *p == key(PREFIX_BLOCKS) => seen.borrow_mut().push("list"),
                StoreOp::Get(p) if p.contains(PREFIX_BLOCKS) => seen.borrow_mut().push("get"),
                _ => {}
            }
            None
        }));
        w.now += MAX_WAIT;
        w.run(&mut n1);
        assert_eq!(ops.borrow()[..2], ["get", "list"]);
        assert!(
            n1.handoff.is_empty(),
            "a block held by n2 is still in n1's hand-off: {:?}",
            n1.handoffs
        );
        assert!(n1.said("now held by another node"), "{:?}", n1.logs);
        assert!(n1
            .not_ready()
            .is_some_and(|(why, _)| why.contains("no free block")));
        assert_eq!(w.held_by("n2"), [b]);
        assert!(w.held_by("n1").is_empty());
    }

    #[test]
    fn the_store_down_backs_off_reports_why_and_past_the_ttl_cuts_the_hand_off() {
        let mut w = World::new("mdown", "10.244.0.0/16", 26, 9, None);
        let mut n = w.node("n1", &[], &[]);
        let granted = w.now;
        w.run(&mut n);
        let first = n.handoff.clone();
        n.down = true;
        n.watch = None;
        let mut waits = Vec::new();
        // The keep-alive is due after TTL/3 = 3 s; from then on every call fails.
        w.now += Duration::from_secs(3);
        for _ in 0..4 {
            let wake = w.run(&mut n);
            waits.push((wake - w.now).as_millis());
            w.now = wake;
        }
        for (w, c) in waits.iter().zip([100, 200, 400, 800]) {
            assert!(
                (c / 2..=c).contains(w),
                "exponential backoff with jitter: {waits:?}"
            );
        }
        // Longer backoffs still wake the machine when the lease may run out.
        w.now = granted + Duration::from_millis(8900);
        let wake = w.run(&mut n);
        assert_eq!(
            wake,
            granted + Duration::from_secs(9),
            "woken at the lease's end"
        );
        assert_eq!(n.handoff, first, "not before");
        let (why, store_up) = n.not_ready().unwrap();
        assert!(why.starts_with("store unreachable:"), "{why}");
        assert!(!store_up);
        assert!(n.reports.contains(&Report::StoreError));
        assert!(n.reports.contains(&Report::LeaseRenewalFailed));
        assert_eq!(n.handoff, first, "within the TTL the blocks are still ours");
        // Past the TTL since the grant: the lease may be gone, the block with it.
        w.now = granted + Duration::from_secs(9);
        w.run(&mut n);
        assert!(n.handoff.is_empty(), "{:?}", n.handoffs);
        assert!(n.said("the lease may have expired"));
        // The store answers again, and the lease was alive after all: the block is back.
        n.down = false;
        w.now += Duration::from_secs(10);
        w.run(&mut n);
        assert_eq!(n.handoff, first);
        assert!(n.ready());
    }

    #[test]
    fn the_store_down_at_start_is_retried_and_reported() {
        let w = World::new("mstartdown", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        n.down = true;
        let wake = w.run(&mut n);
        assert!((Claims::FIRST / 2..=Claims::FIRST).contains(&(wake - w.now)));
        let (why, store_up) = n.not_ready().unwrap();
        assert!(
            why.contains("store unreachable") && why.contains("connection refused"),
            "{why}"
        );
        assert!(!store_up);
        assert!(n.said("store call failed; retrying"));
        n.down = false;
        let mut w = w;
        w.now = wake;
        w.run(&mut n);
        assert!(n.ready());
        assert!(n.said("node ready"));
    }

    use claims::Backoff as Claims;

    #[test]
    fn blocks_held_in_the_node_s_name_but_not_handed_off_are_adopted() {
        let w = World::new("madopt", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        let a = n.handoff[0];
        // A second block claimed, then killed before the hand-off and memory were written.
        let lease = n.m.lease().unwrap();
        let b = net("10.244.200.0/26");
        let v = serde_json::to_vec(&Block {
            cidr: b,
            node: "n1".into(),
            claimed_at: 1,
        })
        .unwrap();
        assert!(w
            .store
            .create(&key(&block_key(b)), &v, Some(lease))
            .unwrap()
            .is_some());
        let mut n = w.node("n1", &[a], &[a]);
        w.run(&mut n);
        assert_eq!(n.handoff, [a, b], "the stranded block is handed off");
        assert!(n.said("adopting it"));
        let lease2 = n.m.lease().unwrap();
        assert!(w.blocks().iter().all(|x| x.2 == Some(lease2)));
        // Replaced under the same name with an empty state folder: both adopted.
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        let mut got = n.handoff.clone();
        got.sort();
        assert_eq!(got, [a, b]);
        assert_eq!(w.held_by("n1").len(), 2, "nothing new claimed");
    }

    #[test]
    fn a_block_in_the_node_s_name_outside_the_address_space_is_released() {
        let w = World::new("mrelease", "10.244.0.0/16", 26, 60, None);
        let lease = w.store.grant(Duration::from_secs(60)).unwrap();
        let b = net("10.99.0.0/26");
        let v = serde_json::to_vec(&Block {
            cidr: b,
            node: "n1".into(),
            claimed_at: 1,
        })
        .unwrap();
        w.store
            .create(&key(&block_key(b)), &v, Some(lease))
            .unwrap();
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        assert!(n.said("block released"), "{:?}", n.logs);
        assert!(!w.held_by("n1").contains(&b));
        assert_eq!(n.handoff.len(), 1);
    }

    #[test]
    fn a_create_that_committed_before_a_connection_error_is_recognised_as_ours() {
        let w = World::new("mretry", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        // What the etcd client does when the first endpoint commits the create and the
        // connection breaks before the answer: it retries on the next endpoint, which
        // answers "already exists".
        let mut first = true;
        n.hook = Some(Box::new(move |op, s| match op {
            StoreOp::Create { key, value, lease } if first => {
                first = false;
                assert!(s.create(key, value, *lease).unwrap().is_some());
                Some(Ok(StoreReply::Created(None)))
            }
            _ => None,
        }));
        w.run(&mut n);
        let held = w.held_by("n1");
        assert_eq!(held.len(), 1, "no second block claimed: {:?}", w.blocks());
        assert_eq!(n.handoff, held);
        assert!(n.said("block claimed"));
        assert!(n.ready());
    }

    #[test]
    fn a_create_that_timed_out_and_committed_late_is_retried_not_doubled() {
        let w = World::new("mlate", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        // What a loaded etcd does: the client gives up on the create (unreachable), but the
        // server applies it later: here after the next round has read the key (absent) and
        // just before that round creates it again. Neither a list nor a get settles such a
        // create; only the create again does.
        let mut late: Option<StoreOp> = None;
        let mut failed = false;
        let trace = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = trace.clone();
        n.hook = Some(Box::new(move |op, s| {
            if let StoreOp::Get(k) | StoreOp::Create { key: k, .. } = op {
                if k.contains(PREFIX_BLOCKS) {
                    let what = if matches!(op, StoreOp::Get(_)) {
                        "get"
                    } else {
                        "create"
                    };
                    seen.borrow_mut().push(what);
                }
            }
            if let (Some(StoreOp::Create { key, value, lease }), StoreOp::Create { .. }) =
                (&late, op)
            {
                assert!(s.create(key, value, *lease).unwrap().is_some());
                late = None;
            }
            match op {
                StoreOp::Create { .. } if !failed => {
                    failed = true;
                    late = Some(op.clone());
                    Some(Err(unreachable("timed out")))
                }
                _ => None,
            }
        }));
        let mut w = w;
        w.now = w.run(&mut n);
        assert!(!n.ready(), "the failed create ends the round");
        w.run(&mut n);
        let held = w.held_by("n1");
        assert_eq!(held.len(), 1, "no second block claimed: {:?}", w.blocks());
        assert_eq!(n.handoff, held);
        assert!(n.ready());
        // The claim's create (lost), then the reclaim: a get (absent), the create again
        // ("already exists": the late commit) and the get that finds it ours.
        assert_eq!(trace.borrow()[..4], ["create", "get", "create", "get"]);
    }

    #[test]
    fn a_claim_whose_read_back_failed_is_settled_by_the_next_reclaim_not_doubled() {
        let w = World::new("mreadback", "10.244.0.0/16", 26, 60, None);
        let mut n = w.node("n1", &[], &[]);
        // The create committed but answered "already exists" (the client's retry on the
        // next endpoint), and the read-back that would have found it ours timed out. The
        // next round's list of blocks shows it taken, by whom it does not say: a claim
        // from that list alone would take a second block.
        let (mut created, mut read_failed) = (false, false);
        n.hook = Some(Box::new(move |op, s| match op {
            StoreOp::Create { key, value, lease } if !created => {
                created = true;
                assert!(s.create(key, value, *lease).unwrap().is_some());
                Some(Ok(StoreReply::Created(None)))
            }
            StoreOp::Get(k) if created && !read_failed && k.contains(PREFIX_BLOCKS) => {
                read_failed = true;
                Some(Err(unreachable("timed out")))
            }
            _ => None,
        }));
        let mut w = w;
        w.now = w.run(&mut n);
        assert!(!n.ready(), "the failed read-back ends the round");
        w.run(&mut n);
        let held = w.held_by("n1");
        assert_eq!(held.len(), 1, "no second block claimed: {:?}", w.blocks());
        assert_eq!(n.handoff, held);
        assert!(n.ready());
    }

    #[test]
    fn a_fresh_node_lists_blocks_once_for_its_reclaim_and_its_claim() {
        let w = World::new("monelist", "10.244.0.0/16", 26, 60, None);
        let mut n1 = w.node("n1", &[], &[]);
        w.run(&mut n1);
        let mut n2 = w.node("n2", &[], &[]);
        // Lists of blocks/ before the claim's create, and in all (the watch opened again
        // with the new block re-reads it with a get, not a list).
        let lists = std::rc::Rc::new(std::cell::Cell::new((0, None)));
        let counted = lists.clone();
        n2.hook = Some(Box::new(move |op, _| {
            let (all, before) = counted.get();
            match op {
                StoreOp::List(p) if *p == key(PREFIX_BLOCKS) => counted.set((all + 1, before)),
                StoreOp::Create { key: k, .. } if k.contains(PREFIX_BLOCKS) && before.is_none() => {
                    counted.set((all, Some(all)))
                }
                _ => {}
            }
            None
        }));
        w.run(&mut n2);
        assert!(n2.ready(), "{:?}", n2.reports);
        assert_eq!(lists.get(), (1, Some(1)));
        assert_eq!(n2.handoff.len(), 1);
        assert_ne!(n2.handoff, n1.handoff);
    }

    #[test]
    fn a_block_taken_by_another_node_is_not_mistaken_for_ours() {
        let w = World::new("mtaken", "10.244.0.0/16", 26, 60, None);
        let mut n1 = w.node("n1", &[], &[]);
        w.run(&mut n1);
        let taken = n1.handoff[0];
        let mut n2 = w.node("n2", &[], &[]);
        // n2's list (the reclaim's, which its claim reuses) is from before n1's claim: its
        // first create collides.
        let mut lists = 0;
        n2.hook = Some(Box::new(move |op, s| match op {
            StoreOp::List(p) if p.ends_with(PREFIX_BLOCKS) && lists < 2 => {
                lists += 1;
                let (mut kvs, rev) = s.list(p).unwrap();
                kvs.clear();
                Some(Ok(StoreReply::List(kvs, rev)))
            }
            _ => None,
        }));
        // Same seed as n1 so the first try is n1's block.
        n2.m.seed = n1.m.seed;
        w.run(&mut n2);
        assert_eq!(n2.handoff.len(), 1);
        assert_ne!(n2.handoff[0], taken);
        assert!(n2
            .logs
            .iter()
            .any(|l| l.msg == "block claimed" && l.fields.contains(&("collisions", "1".into()))));
    }

    fn routing_status(state: &str) -> RoutingStatus {
        use twill_api::bgp::{PeerType, RoutingPeerStatus, RoutingProtocol};
        RoutingStatus {
            protocol: RoutingProtocol::Bgp,
            router_id: Some("192.0.2.11".parse().unwrap()),
            asn: Some(64512),
            route_reflector_cluster_id: None,
            peers: vec![RoutingPeerStatus {
                address: "192.0.2.12".into(),
                node: Some("n2".into()),
                peer_type: PeerType::NodeMesh,
                asn: Some(64512),
                state: state.into(),
                since: 1,
                info: String::new(),
                prefixes_received: 1,
                prefixes_advertised: 1,
            }],
        }
    }

    #[test]
    fn with_bgp_a_node_joining_mid_round_reaches_the_backend_at_once_and_another_round_follows() {
        let w = World::new("mbgpjoin", "10.244.0.0/16", 26, 60, None);
        w.set_backend(twill_api::resources::BackendSpec::Bgp);
        let status = |n: &str, last: u8| node_record(n, last, 26);
        w.put("nodes/n2", &status("n2", 12));
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        assert!(n.ready(), "{:?}", n.reports);
        // Asleep: a node joining is handed to the backend before the round it wakes.
        n.trace.clear();
        w.put("nodes/n3", &status("n3", 13));
        w.run(&mut n);
        assert_eq!(n.trace[..2], ["sleep", "peers n2,n3"], "{:?}", n.trace);
        assert!(
            n.trace.contains(&"reconcile n2,n3".to_string()),
            "{:?}",
            n.trace
        );
        // Mid-round: n4 joins while the round waits on the store (here its write of the
        // routing status, after the pass). The backend gets n4 at once, between that
        // store call and the round's next step, not at the next round's pass; that next
        // round follows at once (nothing else would wake it) and reconciles n4 too.
        n.routing = Some(routing_status("Established"));
        let payload = status("n4", 14);
        n.hook = Some(Box::new(move |op, store| {
            if let StoreOp::Put { key: k, .. } = op {
                if k.contains(PREFIX_ROUTING_STATUS) {
                    store.put(&key("nodes/n4"), &payload, None).unwrap();
                }
            }
            None
        }));
        w.put("nodes/n5", &status("n5", 15));
        n.trace.clear();
        w.run(&mut n);
        let at = |what: &str| n.trace.iter().position(|t| t == what);
        let (first_pass, early, second_pass) = (
            at("reconcile n2,n3,n5").expect("the pass for n5"),
            at("peers n2,n3,n4,n5").expect("n4 handed on by itself"),
            at("reconcile n2,n3,n4,n5").expect("a pass for n4"),
        );
        assert!(first_pass < early && early < second_pass, "{:?}", n.trace);
        assert_eq!(n.trace[early - 1], "store", "{:?}", n.trace);
        assert!(
            !n.trace[first_pass..second_pass].contains(&"sleep".to_string()),
            "the round for n4 waited: {:?}",
            n.trace
        );
        // The event was taken once: no round of its own after that.
        let passes = n
            .trace
            .iter()
            .filter(|t| t.starts_with("reconcile"))
            .count();
        assert_eq!(passes, 2, "{:?}", n.trace);
    }

    #[test]
    fn a_round_a_peer_change_brings_soon_after_the_last_leaves_the_prober_to_the_next() {
        let mut w = World::new("mprobegap", "10.244.0.0/16", 26, 60, None);
        let status = |n: &str, last: u8| node_record(n, last, 26);
        w.put("nodes/n2", &status("n2", 12));
        let mut n = w.node("n1", &[], &[]);
        let probes = |n: &Node| {
            n.trace
                .iter()
                .filter(|t| t.starts_with("probe"))
                .cloned()
                .collect::<Vec<_>>()
        };
        w.run(&mut n);
        assert_eq!(probes(&n), ["probe n2"]);
        // A node joins at once: its route goes in now, the prober waits.
        w.put("nodes/n3", &status("n3", 13));
        w.run(&mut n);
        assert!(
            n.trace.iter().any(|t| t == "reconcile n2,n3"),
            "{:?}",
            n.trace
        );
        assert_eq!(probes(&n), ["probe n2"]);
        // The next periodic round hands the prober the new peer.
        w.now += Duration::from_secs(5);
        w.run(&mut n);
        assert_eq!(probes(&n), ["probe n2", "probe n2,n3"]);
    }

    #[test]
    fn with_other_backends_node_events_wait_for_the_round_s_end() {
        let w = World::new("mhostgw", "10.244.0.0/16", 26, 60, None);
        w.set_backend(twill_api::resources::BackendSpec::HostGw);
        let ev = Event::Put(KeyValue {
            key: key("nodes/n2"),
            value: b"{}".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: None,
        });
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        assert!(!n.m.takes_mid_round(&ev));
        assert!(
            !n.trace.iter().any(|t| t.starts_with("peers")),
            "{:?}",
            n.trace
        );
    }

    #[test]
    fn a_bgp_backend_is_fed_the_bgp_resources_and_every_change_wakes_it() {
        let mut w = World::new("mbgpfeed", "10.244.0.0/16", 26, 60, None);
        w.set_backend(twill_api::resources::BackendSpec::Bgp);
        w.put(
            KEY_BGP_CONFIG,
            br#"{"nodeToNodeMeshEnabled":false,"asNumber":65010}"#,
        );
        w.put(
            &format!("{PREFIX_BGP_PEERS}tor"),
            br#"{"peerIP":"192.0.2.1","asNumber":65100}"#,
        );
        w.put(&format!("{PREFIX_BGP_PEERS}broken"), b"{\"peerIP\": 7}");
        w.put(
            &format!("{PREFIX_NODECONFIGS}n2"),
            br#"{"bgp":{"asNumber":65002},"labels":{"rack":"a"}}"#,
        );
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        let got = n.reconciles.last().unwrap().clone();
        assert_eq!(got.cluster_cidr, Some(net("10.244.0.0/16")));
        let cfg = got.bgp_config.as_ref().unwrap();
        assert!(!cfg.node_to_node_mesh_enabled);
        assert_eq!(cfg.as_number, Some(65010));
        assert_eq!(got.bgp_peers.keys().collect::<Vec<_>>(), ["tor"]);
        assert_eq!(got.bgp_peers["tor"].as_number, Some(65100));
        assert_eq!(
            got.node_specs["n2"].bgp.as_ref().unwrap().as_number,
            Some(65002)
        );
        assert_eq!(got.node_specs["n2"].labels["rack"], "a");
        assert_eq!(got.problems.len(), 1, "{:?}", got.problems);
        assert!(got.problems[0].contains("the BGPPeer at bgppeers/broken is unreadable"));
        assert!(n.said("a routing resource is unreadable"));
        // Idle: nothing read again.
        let calls = n.store_calls;
        w.now += Duration::from_secs(1);
        w.run(&mut n);
        assert_eq!(n.store_calls, calls, "an idle round is free");
        // A change to any of them wakes the machine and is read.
        w.put(
            &format!("{PREFIX_BGP_PEERS}broken"),
            br#"{"peerIP":"192.0.2.2","asNumber":65101}"#,
        );
        w.store.delete(&key(KEY_BGP_CONFIG)).unwrap();
        w.put(
            &format!("{PREFIX_NODECONFIGS}n3"),
            br#"{"labels":{"rr":""}}"#,
        );
        let before = n.reconciles.len();
        w.run(&mut n);
        assert!(n.reconciles.len() > before);
        let got = n.reconciles.last().unwrap();
        assert_eq!(got.bgp_config, None);
        assert_eq!(got.bgp_peers.len(), 2);
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        assert!(got.node_specs.contains_key("n3"));
        // twill-cni's records reach it too.
        n.used = vec!["10.244.9.9".parse().unwrap(), "10.244.9.3".parse().unwrap()];
        w.now += Duration::from_secs(6);
        w.run(&mut n);
        assert_eq!(
            n.reconciles.last().unwrap().pod_ips,
            [
                "10.244.9.3".parse::<Ipv4Addr>().unwrap(),
                "10.244.9.9".parse().unwrap()
            ]
        );
    }

    #[test]
    fn other_backends_read_no_bgp_resource() {
        let w = World::new("mbgpnone", "10.244.0.0/16", 26, 60, None);
        w.put(KEY_BGP_CONFIG, br#"{"asNumber":65010}"#);
        let mut n = w.node("n1", &[], &[]);
        w.run(&mut n);
        let got = n.reconciles.last().unwrap();
        assert_eq!(got.bgp_config, None);
        assert!(got.node_specs.is_empty() && got.bgp_peers.is_empty());
        let calls = n.store_calls;
        w.put(
            &format!("{PREFIX_BGP_PEERS}x"),
            br#"{"peerIP":"192.0.2.1","asNumber":1}"#,
        );
        let mut w = w;
        w.now += Duration::from_millis(100);
        w.run(&mut n);
        assert_eq!(n.store_calls, calls, "a BGPPeer changes nothing for them");
    }

    #[test]
    fn the_routing_status_is_published_under_the_lease_on_change_at_most_once_a_second() {
        let mut w = World::new("mbgpstat", "10.244.0.0/16", 26, 60, None);
        w.set_backend(twill_api::resources::BackendSpec::Bgp);
        let mut n = w.node("n1", &[], &[]);
        n.routing = Some(routing_status("Active"));
        w.run(&mut n);
        let k = key(&format!("{PREFIX_ROUTING_STATUS}n1"));
        let read = |w: &World| {
            let kv = w.store.get(&k).unwrap().unwrap();
            (
                serde_json::from_slice::<RoutingStatus>(&kv.value).unwrap(),
                kv.lease,
                kv.mod_revision,
            )
        };
        let (st, lease, rev) = read(&w);
        assert_eq!(st, routing_status("Active"));
        assert_eq!(lease, n.m.lease(), "bound to the agent's lease");
        // Unchanged: not written again.
        let t0 = w.now;
        w.now += Duration::from_millis(100);
        n.m.handle(w.now, Input::BackendDue);
        w.run(&mut n);
        assert_eq!(read(&w).2, rev);
        // Changed within the second after the write: the write waits for the second's end,
        // and the machine is due then.
        n.routing = Some(routing_status("Established"));
        w.now += Duration::from_millis(100);
        n.m.handle(w.now, Input::BackendDue);
        let wake = w.run(&mut n);
        assert_eq!(read(&w).2, rev, "rate-limited");
        assert_eq!(wake, t0 + ROUTING_STATUS_GAP);
        w.now = wake;
        w.run(&mut n);
        let (st, _, rev2) = read(&w);
        assert!(rev2 > rev);
        assert_eq!(st.peers[0].state, "Established");
    }
}
