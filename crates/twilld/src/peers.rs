//! Peers verify each node's IP: every agent sends an ICMP echo to the address each peer
//! advertises, every few seconds (at once when a peer appears or moves), and publishes what
//! it sees as `peers/<node>`. A node whose chosen IP no one can reach (the seed's
//! `first-found` trap) then shows up in `twill node status` instead of as silently missing
//! routes.
//!
//! Pure: [`PeerTable`] (per-peer state, what is due, replies and timeouts), [`targets`],
//! [`Publisher`] and the ICMP codec ([`echo_request`], [`parse_reply`]). I/O edge:
//! [`Prober`], one thread with one socket, asleep in `poll` between probes.

use crate::backend::Peer;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use twill_api::resources::{BackendSpec, PeerReach, PeerSummary, PeerView};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe waits for its reply.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Unanswered probes in a row before a peer that answered before is declared unreachable
/// (one lost packet is no outage). A peer never reached is unreachable at its first failure.
pub const FAILURES_TO_DOWN: u32 = 3;
/// RTTs and freshness change every probe; they are re-published at most this often (with
/// the lease's keep-alive, under one write per node per minute at steady state).
pub const RTT_REFRESH: Duration = Duration::from_secs(120);

/// Peers probed per interval besides the ones this node has traffic with: a rotating
/// random sample, so per-node probe traffic stays flat as the cluster grows. Every peer is
/// still probed at least once every `ceil(peers / SAMPLE)` intervals.
pub const SAMPLE: usize = 32;
/// At most this many peers count as "with traffic" (probed every interval); beyond it the
/// rest take their turn in the sample.
pub const ACTIVE_MAX: usize = 32;

/// Peers whose neighbour entry is looked up per interval, besides those that had traffic at
/// their last look: a rotation through all of them, so a peer's traffic is seen within
/// `ceil(peers / NEIGHBOUR_SAMPLE)` intervals, at a cost flat in the cluster's size. One
/// lookup is one hash lookup in the kernel; a dump of the table (how this was read before)
/// walks the kernel's whole neighbour table, which is one table for the machine: with 1000
/// lab nodes of 999 permanent entries each, 10^6 entries and 50 ms of kernel time a read,
/// 34% of the machine's CPU in `neigh_dump_info` during a 1000-agent cold start (perf,
/// session 29), and O(peers) per read on a real node too.
pub const NEIGHBOUR_SAMPLE: usize = 64;

/// Which peers' neighbour entries to look up at each interval. Pure.
#[derive(Debug, Default)]
pub struct NeighbourRotation {
    /// Where the next sample starts, in the peer list.
    next: usize,
}

impl NeighbourRotation {
    /// The addresses to look up now: every one in `active` (traffic at its last look) and
    /// the next [`NEIGHBOUR_SAMPLE`] of `peers` in turn. None with no more peers than
    /// [`SAMPLE`]: every peer is probed every interval anyway.
    pub fn next(&mut self, peers: &[Peer], active: &HashSet<Ipv4Addr>) -> Option<Vec<Ipv4Addr>> {
        if peers.len() <= SAMPLE {
            return None;
        }
        let start = self.next % peers.len();
        let take = NEIGHBOUR_SAMPLE.min(peers.len());
        self.next = (start + take) % peers.len();
        let mut look: BTreeSet<Ipv4Addr> = active.iter().copied().collect();
        look.extend(
            peers
                .iter()
                .cycle()
                .skip(start)
                .take(take)
                .map(|p| p.address),
        );
        Some(look.into_iter().collect())
    }
}

/// A peer to probe: its name, advertised address, and how the backend carries traffic to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub address: Ipv4Addr,
    pub backend: String,
    /// This node has traffic with it now (e.g. its neighbour entry is in use): probed
    /// every interval rather than in its turn.
    pub active: bool,
}

/// How this node's backend reaches a peer, in words for `twill node status`. Pure.
pub fn backend_mode(spec: &BackendSpec, uplink: Option<Ipv4Net>, peer: Ipv4Addr) -> String {
    let near = uplink.is_some_and(|c| c.contains(&peer));
    match (spec, near) {
        (BackendSpec::HostGw, true) => "host-gw direct".into(),
        (BackendSpec::HostGw, false) => "host-gw unrouted: off segment".into(),
        // The static mesh is a VXLAN mesh.
        (BackendSpec::Vxlan(_) | BackendSpec::Static(_), true) if spec.direct_routing() => {
            "vxlan direct (same segment)".into()
        }
        (BackendSpec::Vxlan(_) | BackendSpec::Static(_), _) => "vxlan tunnel".into(),
        (BackendSpec::Bgp, true) => "bgp direct".into(),
        (BackendSpec::Bgp, false) => "bgp routed (off segment)".into(),
        (BackendSpec::None, _) => "none".into(),
        (BackendSpec::Rip(_), true) => "rip (same segment)".into(),
        (BackendSpec::Rip(_), false) => {
            "rip: off segment, reached through a RIP router if any".into()
        }
        (BackendSpec::Udp(o), _) => format!("udp tunnel (userspace, port {})", o.port()),
        (BackendSpec::Ovs(o), _) => format!("ovs {} tunnel", o.tunnel_type),
    }
}

/// The probe targets for the backend's peers; `active` are the addresses this node has
/// traffic with. Pure.
pub fn targets(
    peers: &[Peer],
    spec: &BackendSpec,
    uplink: Option<Ipv4Net>,
    active: &std::collections::HashSet<Ipv4Addr>,
) -> Vec<Target> {
    peers
        .iter()
        .map(|p| Target {
            name: p.name.clone(),
            address: p.address,
            backend: backend_mode(spec, uplink, p.address),
            active: active.contains(&p.address),
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Entry {
    address: Ipv4Addr,
    backend: String,
    active: bool,
    /// None until the first probe of this address ends.
    reachable: Option<bool>,
    rtt: Option<Duration>,
    failures: u32,
    since: u64,
    /// Seconds since the epoch when the last probe ended (answered or not).
    checked: u64,
    error: Option<String>,
    /// Probe at this instant out of turn (a new or moved peer); None: in its turn.
    probe_at: Option<Instant>,
    /// The probe in flight: its sequence number and when it left.
    pending: Option<(u16, Instant)>,
    /// The number of the last [`PeerTable::set_targets`] that listed this peer.
    marked: u64,
}

/// A probe to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub name: String,
    pub address: Ipv4Addr,
    pub seq: u16,
}

/// Every peer's probe state and the schedule: every interval a round probes the peers
/// with traffic, the failing ones (so that three misses take three intervals), and the
/// next [`SAMPLE`] of a random rotation through all others; a new or moved peer is probed
/// at once. Pure: times come in as arguments (`now` for scheduling, `wall` in seconds since
/// the epoch for `since` and `checked`); the rotation's randomness is seeded.
#[derive(Debug)]
pub struct PeerTable {
    entries: BTreeMap<String, Entry>,
    /// The probes in flight, by sequence number: the peer each went to. With this (and
    /// `out_of_turn`) a reply, a timeout and the next deadline cost what is in flight, not
    /// a walk of every peer: that walk, three times per packet, was 10% of a 1000-agent
    /// lab's CPU (perf: `PeerTable::expire`).
    in_flight: BTreeMap<u16, String>,
    /// The peers whose `probe_at` is set (new or moved: probed out of turn), by name.
    out_of_turn: BTreeSet<String>,
    /// The number of the last [`PeerTable::set_targets`] call.
    marking: u64,
    interval: Duration,
    timeout: Duration,
    sample: usize,
    next_seq: u16,
    next_round: Option<Instant>,
    /// The rest of the current rotation (names; gone ones are skipped).
    rotation: std::collections::VecDeque<String>,
    rng: u64,
    /// Probes sent, for /metrics (probes per second per node).
    sent: u64,
    /// Probes out of turn sent in the current round.
    burst: usize,
}

impl PeerTable {
    pub fn new(interval: Duration) -> PeerTable {
        PeerTable::with_sample(interval, SAMPLE, 0x9e37_79b9_7f4a_7c15)
    }

    /// `seed` varies the rotation between nodes (e.g. a hash of the node's name).
    pub fn with_sample(interval: Duration, sample: usize, seed: u64) -> PeerTable {
        PeerTable {
            entries: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            out_of_turn: BTreeSet::new(),
            marking: 0,
            interval,
            timeout: TIMEOUT.min(interval),
            sample: sample.max(1),
            next_seq: 1,
            next_round: None,
            rotation: Default::default(),
            rng: seed | 1,
            sent: 0,
            burst: 0,
        }
    }

    /// The longest a peer waits for its turn: `ceil(peers / sample)` intervals.
    pub fn cover_time(&self) -> Duration {
        let n = self.entries.len().max(1);
        self.interval * n.div_ceil(self.sample) as u32
    }

    /// Probes sent since start.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Takes the current peers: new ones (or ones whose address moved) start unknown and
    /// are probed at once; gone ones are dropped. True if a probe became due.
    /// Called every round with every peer, so it allocates only for what changed: entries
    /// listed are marked with this call's number and the unmarked ones swept (a set of all
    /// names, and a copy of every backend string, each round was 5% of a 1000-agent
    /// lab's CPU).
    pub fn set_targets(&mut self, targets: &[Target], now: Instant) -> bool {
        self.marking = self.marking.wrapping_add(1);
        let marking = self.marking;
        let mut due_now = false;
        let mut active = 0;
        for t in targets {
            // Only the first ACTIVE_MAX peers with traffic are probed every round.
            let is_active = t.active && active < ACTIVE_MAX;
            active += usize::from(is_active);
            match self.entries.get_mut(&t.name) {
                Some(e) if e.address == t.address => {
                    if e.backend != t.backend {
                        e.backend.clone_from(&t.backend);
                    }
                    e.active = is_active;
                    e.marked = marking;
                }
                _ => {
                    // A moved peer's probe in flight went to its old address.
                    if let Some((seq, _)) = self.entries.get(&t.name).and_then(|e| e.pending) {
                        self.in_flight.remove(&seq);
                    }
                    self.out_of_turn.insert(t.name.clone());
                    self.entries.insert(
                        t.name.clone(),
                        Entry {
                            marked: marking,
                            address: t.address,
                            backend: t.backend.clone(),
                            active: is_active,
                            reachable: None,
                            rtt: None,
                            failures: 0,
                            since: 0,
                            checked: 0,
                            error: None,
                            probe_at: Some(now),
                            pending: None,
                        },
                    );
                    due_now = true;
                }
            }
        }
        let listed = self.entries.len();
        self.entries.retain(|_, e| e.marked == marking);
        if self.entries.len() < listed {
            let entries = &self.entries;
            self.in_flight.retain(|_, name| entries.contains_key(name));
            self.out_of_turn.retain(|name| entries.contains_key(name));
        }
        due_now
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The names of the next round: peers with traffic, failing ones, and the sample.
    fn round(&mut self) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.active || e.failures > 0)
            .map(|(n, _)| n.clone())
            .collect();
        let mut taken = 0;
        let mut refilled = false;
        let mut seen = std::collections::HashSet::new();
        while taken < self.sample {
            let Some(name) = self.rotation.pop_front() else {
                if refilled || self.entries.is_empty() {
                    break;
                }
                // A new rotation: every peer once, in a fresh random order.
                let mut all: Vec<String> = self.entries.keys().cloned().collect();
                for i in (1..all.len()).rev() {
                    let j = (self.random() % (i as u64 + 1)) as usize;
                    all.swap(i, j);
                }
                self.rotation = all.into();
                refilled = true;
                continue;
            };
            let Some(e) = self.entries.get(&name) else {
                continue; // gone since
            };
            if e.active || e.failures > 0 || !seen.insert(name.clone()) {
                continue; // probed every round anyway, or already in this one
            }
            out.push(name);
            taken += 1;
        }
        out
    }

    /// The probes due at `now`; each is marked in flight.
    pub fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut names = Vec::new();
        if self.next_round.is_none_or(|at| at <= now) {
            self.next_round = Some(now + self.interval);
            self.burst = 0;
            names = self.round();
        }
        // New or moved peers out of turn, at most a sample's worth per round (a cold start
        // sees every peer as new: the rest get theirs in the next rounds).
        let room = self.sample.saturating_sub(self.burst);
        let out_of_turn: Vec<String> = self
            .out_of_turn
            .iter()
            .filter(|n| {
                let e = &self.entries[*n];
                e.probe_at.is_some_and(|at| at <= now) && e.pending.is_none() && !names.contains(n)
            })
            .take(room)
            .cloned()
            .collect();
        self.burst += out_of_turn.len();
        names.extend(out_of_turn);
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let Some(e) = self.entries.get_mut(&name) else {
                continue;
            };
            e.probe_at = None;
            self.out_of_turn.remove(&name);
            if e.pending.is_some() {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1).max(1);
            e.pending = Some((seq, now));
            // A sequence number comes round again only after 65535 probes, long after
            // the 1 s timeout has taken the last probe that had it out of `in_flight`.
            let address = e.address;
            self.in_flight.insert(seq, name.clone());
            self.sent += 1;
            out.push(Due { name, address, seq });
        }
        out
    }

    /// When something is next to do (a round, a probe out of turn, or one timing out).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.entries.is_empty() {
            return None;
        }
        let timeouts = self
            .in_flight
            .values()
            .filter_map(|n| self.entries[n].pending.map(|(_, sent)| sent + self.timeout));
        // Out of turn only while this round has room (else: the next round).
        let room = self.burst < self.sample;
        let out_of_turn = self
            .out_of_turn
            .iter()
            .filter(|_| room)
            .map(|n| &self.entries[n])
            .filter(|e| e.pending.is_none())
            .filter_map(|e| e.probe_at);
        timeouts.chain(out_of_turn).chain(self.next_round).min()
    }

    /// An echo reply from `from` with `seq`; ignored unless it answers a probe in flight.
    pub fn on_reply(&mut self, from: Ipv4Addr, seq: u16, now: Instant, wall: u64) {
        let Some(e) = self
            .in_flight
            .get(&seq)
            .and_then(|n| self.entries.get_mut(n))
            .filter(|e| e.address == from && e.pending.is_some_and(|(s, _)| s == seq))
        else {
            return;
        };
        let (_, sent) = e.pending.take().expect("checked");
        self.in_flight.remove(&seq);
        if e.reachable != Some(true) {
            e.since = wall;
        }
        e.reachable = Some(true);
        e.rtt = Some(now.saturating_duration_since(sent));
        e.failures = 0;
        e.checked = wall;
        e.error = None;
    }

    /// The probe `seq` to `name` failed at once (the kernel refused to send it).
    pub fn on_send_error(&mut self, name: &str, seq: u16, error: String, wall: u64) {
        if let Some(e) = self.entries.get_mut(name) {
            if e.pending.is_some_and(|(s, _)| s == seq) {
                e.pending = None;
                self.in_flight.remove(&seq);
                Self::fail(e, error, wall);
            }
        }
    }

    /// Probes in flight longer than the timeout count as failed.
    pub fn expire(&mut self, now: Instant, wall: u64) {
        let timeout = self.timeout;
        let entries = &mut self.entries;
        self.in_flight.retain(|seq, name| {
            let Some(e) = entries.get_mut(name) else {
                return false;
            };
            match e.pending {
                Some((s, sent)) if s == *seq => {
                    if now.saturating_duration_since(sent) < timeout {
                        return true;
                    }
                    e.pending = None;
                    Self::fail(
                        e,
                        format!("no reply within {}ms", timeout.as_millis()),
                        wall,
                    );
                    false
                }
                _ => false,
            }
        });
    }

    fn fail(e: &mut Entry, error: String, wall: u64) {
        e.failures = e.failures.saturating_add(1);
        e.rtt = None;
        e.checked = wall;
        e.error = Some(error);
        let down = match e.reachable {
            Some(true) => e.failures >= FAILURES_TO_DOWN,
            _ => true,
        };
        if down && e.reachable != Some(false) {
            e.reachable = Some(false);
            e.since = wall;
        }
    }

    /// What the probes found, per peer; peers with no verdict yet are left out.
    pub fn view(&self) -> BTreeMap<String, PeerReach> {
        self.entries
            .iter()
            .filter_map(|(name, e)| {
                Some((
                    name.clone(),
                    PeerReach {
                        address: e.address,
                        reachable: e.reachable?,
                        rtt_micros: e.rtt.map(|d| d.as_micros() as u64),
                        since: e.since,
                        checked: e.checked,
                        failures: e.failures,
                        error: e.error.clone(),
                        backend: e.backend.clone(),
                    },
                ))
            })
            .collect()
    }
}

/// Views of up to this many peers are published whole; larger ones list only the peers not
/// reachable, with a [`PeerSummary`] (the store then holds O(problems) per node).
pub const FULL_VIEW_MAX: usize = 64;

/// The counts of a view: `known` peers, `cover` the longest a peer waits for its probe.
/// Pure.
pub fn summarize(
    peers: &BTreeMap<String, PeerReach>,
    known: usize,
    cover: Duration,
) -> PeerSummary {
    PeerSummary {
        probed: peers.len() as u32,
        reachable: peers.values().filter(|p| p.reachable).count() as u32,
        unprobed: known.saturating_sub(peers.len()) as u32,
        oldest_checked: peers.values().map(|p| p.checked).min().unwrap_or(0),
        cover_seconds: cover.as_secs(),
    }
}

/// What goes into the store for this node's `view` (which carries its summary): the whole
/// view up to [`FULL_VIEW_MAX`] peers, else only the peers not reachable. Pure.
pub fn for_store(view: &PeerView) -> PeerView {
    let known = view
        .summary
        .as_ref()
        .map_or(view.peers.len(), |s| (s.probed + s.unprobed) as usize);
    if known <= FULL_VIEW_MAX {
        return PeerView {
            summary: None,
            ..view.clone()
        };
    }
    PeerView {
        address: view.address,
        interface: view.interface.clone(),
        peers: view
            .peers
            .iter()
            .filter(|(_, p)| !p.reachable)
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect(),
        summary: view.summary.clone(),
    }
}

/// Decides when `peers/<node>` is written: at once when a verdict, address, error, backend
/// or count changes; for RTTs and freshness alone at most every [`RTT_REFRESH`] (a store
/// write costs every watcher of peers/). Pure.
#[derive(Debug, Default)]
pub struct Publisher {
    /// (the lease written under, the view without RTTs, the full view, when written)
    last: Option<(i64, PeerView, PeerView, Instant)>,
    /// Added to [`RTT_REFRESH`]: up to as long again, per node, so refreshes do not come in
    /// step. (It was up to 30 s: after 1000 agents started at once, a 30 s window caught
    /// most of them refreshing, 2 writes per node per minute against an average of 0.44.)
    spread: Duration,
}

impl Publisher {
    /// A publisher whose refreshes are offset by up to [`RTT_REFRESH`], from `seed` (the
    /// node's name).
    pub fn spread(seed: u64) -> Publisher {
        Publisher {
            last: None,
            spread: Duration::from_millis(seed % RTT_REFRESH.as_millis() as u64),
        }
    }

    /// Whether `view` should be written now under `lease`.
    pub fn due(&self, lease: i64, view: &PeerView, now: Instant) -> bool {
        let Some((l, sig, full, at)) = &self.last else {
            return true;
        };
        if *l != lease || *sig != signature(view) {
            return true;
        }
        full != view && now.saturating_duration_since(*at) >= RTT_REFRESH + self.spread
    }

    pub fn written(&mut self, lease: i64, view: &PeerView, now: Instant) {
        self.last = Some((lease, signature(view), view.clone(), now));
    }
}

/// A view without what changes on every probe (RTTs, when checked).
fn signature(view: &PeerView) -> PeerView {
    let mut v = view.clone();
    for p in v.peers.values_mut() {
        p.rtt_micros = None;
        p.checked = 0;
    }
    // The counts too: a partial view lists every peer not reachable, so a verdict that
    // changes changes the list; the counts alone change every round while the probes first
    // cover 1000 new peers (32 a round: 160 s of a write per round per node, 2 writes per
    // node per minute in a 30 s window after a 1000-agent cold start).
    if let Some(s) = &mut v.summary {
        *s = PeerSummary::default();
    }
    v
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// Marks Twill's probes among whatever else a raw socket sees.
const PAYLOAD: &[u8; 8] = b"twillpr1";

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request (header + payload). Pure.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![ICMP_ECHO_REQUEST, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// The sequence number of an echo reply to one of our probes, or None. `with_ip_header`:
/// a raw socket gets the IPv4 header too; a datagram socket gets the ICMP message only, its
/// identifier rewritten by the kernel (which already delivers only our replies). Pure.
pub fn parse_reply(buf: &[u8], with_ip_header: bool, id: u16) -> Option<u16> {
    let icmp = if with_ip_header {
        let ihl = usize::from(buf.first()? & 0x0f) * 4;
        if buf.get(9) != Some(&1) {
            return None;
        }
        buf.get(ihl..)?
    } else {
        buf
    };
    if icmp.len() < 8 + PAYLOAD.len() || icmp[0] != ICMP_ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    if with_ip_header && u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    if &icmp[8..8 + PAYLOAD.len()] != PAYLOAD {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn wall_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `ICMP_FILTER`, the raw ICMP socket option of include/uapi/linux/icmp.h (level
/// `SOL_RAW`): a mask of the ICMP types the socket does not receive.
const ICMP_FILTER: libc::c_int = 1;

/// A raw ICMP socket gets a copy of every ICMP packet the namespace receives: the echo
/// requests of every peer probing this node too, each a wake-up of the prober for nothing
/// (twice the packets of its own replies at steady state). Only echo replies are let in.
fn keep_only_echo_replies(fd: &OwnedFd) -> io::Result<()> {
    let mask: u32 = !(1 << ICMP_ECHO_REPLY);
    // SAFETY: mask is a valid u32 for the length given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_RAW,
            ICMP_FILTER,
            (&mask as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One ICMP socket: raw (the agent runs as root) or, failing that, an unprivileged ping
/// socket (net.ipv4.ping_group_range).
struct IcmpSocket {
    fd: OwnedFd,
    raw: bool,
    id: u16,
}

impl IcmpSocket {
    fn open() -> io::Result<IcmpSocket> {
        let mut last = None;
        for (kind, raw) in [(libc::SOCK_RAW, true), (libc::SOCK_DGRAM, false)] {
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_ICMP,
                )
            };
            if fd < 0 {
                last = Some(io::Error::last_os_error());
                continue;
            }
            // SAFETY: fd is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if raw {
                if let Err(e) = keep_only_echo_replies(&fd) {
                    crate::log::warn(
                        "the raw ICMP socket cannot filter (ICMP_FILTER): the prober wakes for every ICMP packet, peers' probes of this node too",
                        &[("error", &e)],
                    );
                }
            }
            // Several agents may share a namespace (tests): the id keeps their replies apart.
            static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
            let id = (std::process::id() as u16)
                .wrapping_mul(31)
                .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
            return Ok(IcmpSocket { fd, raw, id });
        }
        Err(last.unwrap_or_else(|| io::Error::other("no ICMP socket")))
    }

    fn send(&self, to: Ipv4Addr, seq: u16) -> io::Result<()> {
        let packet = echo_request(self.id, seq);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(to).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: packet and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram: (source, payload), or None when nothing is waiting.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(Ipv4Addr, usize)>> {
        // SAFETY: zeroed sockaddr_in is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: buf and addr are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some((
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            n as usize,
        )))
    }
}

/// The probing thread and the state it shares with the agent's loop.
pub struct Prober {
    table: Arc<Mutex<PeerTable>>,
    /// Wakes the thread when a probe becomes due at once (a peer appeared or moved).
    wake: UnixDatagram,
    /// Why probing cannot run, if it cannot (no ICMP socket).
    problem: Arc<Mutex<Option<String>>>,
}

impl Prober {
    /// Starts the thread; it ends when `shutdown` is set.
    /// `seed` varies the rotation between nodes (a hash of the node's name).
    pub fn start(interval: Duration, seed: u64, shutdown: Arc<AtomicBool>) -> io::Result<Prober> {
        let table = Arc::new(Mutex::new(PeerTable::with_sample(interval, SAMPLE, seed)));
        let problem = Arc::new(Mutex::new(None));
        let (wake, wakee) = UnixDatagram::pair()?;
        wakee.set_nonblocking(true)?;
        {
            let (table, problem) = (table.clone(), problem.clone());
            std::thread::Builder::new()
                .name("twilld-peers".into())
                .spawn(move || run(table, wakee, problem, interval, shutdown))?;
        }
        Ok(Prober {
            table,
            wake,
            problem,
        })
    }

    pub fn set_targets(&self, targets: &[Target]) {
        let due = lock(&self.table).set_targets(targets, Instant::now());
        if due {
            let _ = self.wake.send(&[1]);
        }
    }

    /// What the probes found, with the summary of the whole table.
    pub fn view(&self, address: Option<Ipv4Addr>, interface: Option<String>) -> PeerView {
        let t = lock(&self.table);
        let peers = t.view();
        let summary = summarize(&peers, t.entries.len(), t.cover_time());
        PeerView {
            address,
            interface,
            peers,
            summary: Some(summary),
        }
    }

    /// Probes sent since start.
    pub fn sent(&self) -> u64 {
        lock(&self.table).sent()
    }

    pub fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The longest the thread sleeps, so it notices shutdown.
const MAX_SLEEP: Duration = Duration::from_secs(1);

fn run(
    table: Arc<Mutex<PeerTable>>,
    wakee: UnixDatagram,
    problem: Arc<Mutex<Option<String>>>,
    interval: Duration,
    shutdown: Arc<AtomicBool>,
) {
    let mut socket: Option<IcmpSocket> = None;
    let mut next_open = Instant::now();
    let mut buf = [0u8; 1500];
    while !shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        if socket.is_none() && now >= next_open {
            match IcmpSocket::open() {
                Ok(s) => {
                    *lock(&problem) = None;
                    socket = Some(s);
                }
                Err(e) => {
                    let why = format!(
                        "cannot open an ICMP socket to probe peers ({e}): run twilld as root, or allow ping sockets with sysctl net.ipv4.ping_group_range"
                    );
                    if lock(&problem).as_deref() != Some(why.as_str()) {
                        crate::log::warn("peer probing is off", &[("error", &why)]);
                        *lock(&problem) = Some(why);
                    }
                    next_open = now + interval;
                }
            }
        }
        let mut wait = MAX_SLEEP;
        if let Some(s) = &socket {
            let due = {
                let mut t = lock(&table);
                t.expire(now, wall_now());
                t.due(now)
            };
            for d in due {
                if let Err(e) = s.send(d.address, d.seq) {
                    lock(&table).on_send_error(&d.name, d.seq, e.to_string(), wall_now());
                }
            }
            if let Some(at) = lock(&table).next_deadline() {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
        }
        // Sleep until a reply, a wake-up or the next deadline; never spin.
        let mut fds = vec![libc::pollfd {
            fd: wakee.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(s) = &socket {
            fds.push(libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // Round up so a deadline 0.3 ms away does not become a 0 ms busy poll.
        let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: fds is a valid array of fds.len() pollfd.
        let _ = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if fds[0].revents != 0 {
            let mut b = [0u8; 16];
            while wakee.recv(&mut b).is_ok() {}
        }
        if let Some(s) = &socket {
            loop {
                match s.recv(&mut buf) {
                    Ok(Some((from, n))) => {
                        if let Some(seq) = parse_reply(&buf[..n], s.raw, s.id) {
                            lock(&table).on_reply(from, seq, Instant::now(), wall_now());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        crate::log::warn(
                            "the ICMP socket failed; opening a new one",
                            &[("error", &e)],
                        );
                        socket = None;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn many_peers(n: usize) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer {
                name: format!("n{i}"),
                address: Ipv4Addr::from(0xc000_0200 + i as u32),
                blocks: vec![],
                vtep_mac: None,
            })
            .collect()
    }

    #[test]
    fn neighbour_lookups_rotate_through_every_peer_at_a_bounded_cost() {
        let mut r = NeighbourRotation::default();
        let none = HashSet::new();
        // Few peers: all probed every interval, nothing looked up.
        assert_eq!(r.next(&many_peers(SAMPLE), &none), None);
        let peers = many_peers(1000);
        let rounds = 1000usize.div_ceil(NEIGHBOUR_SAMPLE);
        let mut seen = HashSet::new();
        for _ in 0..rounds {
            let look = r.next(&peers, &none).unwrap();
            assert_eq!(look.len(), NEIGHBOUR_SAMPLE);
            seen.extend(look);
        }
        assert_eq!(
            seen.len(),
            1000,
            "every peer within ceil(1000/64) intervals"
        );
        // The peers with traffic are looked up every interval, besides the sample.
        let active: HashSet<Ipv4Addr> = peers[..5].iter().map(|p| p.address).collect();
        for _ in 0..3 {
            let look = r.next(&peers, &active).unwrap();
            assert!(active.iter().all(|a| look.contains(a)));
            assert!(look.len() <= NEIGHBOUR_SAMPLE + active.len());
        }
        // A list that shrank under the rotation's position: it goes on from its start.
        assert_eq!(r.next(&peers[..40], &none).unwrap().len(), 40);
    }

    fn t(name: &str, addr: &str) -> Target {
        Target {
            name: name.into(),
            address: addr.parse().unwrap(),
            backend: "host-gw direct".into(),
            active: false,
        }
    }

    fn many(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| {
                let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i as u32);
                t(&format!("n{i:04}"), &a.to_string())
            })
            .collect()
    }

    /// Answers every probe in `due` at `now`.
    fn answer(table: &mut PeerTable, due: &[Due], now: Instant, wall: u64) {
        for d in due {
            table.on_reply(d.address, d.seq, now, wall);
        }
    }

    /// The raw socket takes echo replies only: the echo requests of a peer probing this
    /// node reach every raw ICMP socket of the namespace, and an unfiltered one reads them
    /// all. Root: two namespaces of its own joined by a veth; the other one pings this one
    /// while this one probes it.
    #[test]
    fn the_raw_probe_socket_receives_echo_replies_and_nothing_else() {
        let name = "the_raw_probe_socket_receives_echo_replies_and_nothing_else";
        twill_testkit::require_root(name);
        let (a, b) = (
            twill_testkit::TestNetns::new("icfa"),
            twill_testkit::TestNetns::new("icfb"),
        );
        let veth = twill_testkit::unique_name("icf", 15);
        a.exec(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &b.name,
        ]);
        a.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", &veth]);
        a.exec(&["ip", "link", "set", &veth, "up"]);
        b.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"]);
        b.exec(&["ip", "link", "set", "eth0", "up"]);
        let netns = twill_netlink::Netns::open(a.path()).unwrap();
        let s = twill_netlink::netns::run_in(&netns, || IcmpSocket::open().unwrap()).unwrap();
        assert!(s.raw, "root opens a raw socket");
        // B's echo requests arrive while A's own probes are answered.
        let (ok, out, err) = b.try_exec(&["ping", "-c", "5", "-i", "0.05", "-W", "1", "192.0.2.1"]);
        assert!(ok, "ping from B: {out}{err}");
        for seq in 1..=3 {
            s.send(Ipv4Addr::new(192, 0, 2, 2), seq).unwrap();
        }
        let (mut types, mut ours) = (Vec::new(), 0);
        let mut buf = [0u8; 1500];
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until && ours < 3 {
            match s.recv(&mut buf).unwrap() {
                Some((_, n)) => {
                    let ihl = usize::from(buf[0] & 0x0f) * 4;
                    types.push(buf[ihl]);
                    ours += usize::from(parse_reply(&buf[..n], true, s.id).is_some());
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert_eq!(ours, 3, "replies to A's probes; ICMP types read: {types:?}");
        assert_eq!(types, vec![0; 3], "ICMP types read, in order");
    }

    /// The index of probes in flight follows every way a probe ends: a reply, a timeout,
    /// the peer leaving, the peer moving (a reply from the old address then counts for
    /// nothing). The deadline is then the next round's alone.
    #[test]
    fn probes_in_flight_leave_the_index_however_they_end() {
        let start = Instant::now();
        let interval = Duration::from_secs(5);
        let mut table = PeerTable::with_sample(interval, SAMPLE, 3);
        table.set_targets(&many(4), start);
        let due = table.due(start);
        assert_eq!(due.len(), 4);
        assert_eq!(table.in_flight.len(), 4);
        assert!(table.out_of_turn.is_empty());
        assert_eq!(table.next_deadline(), Some(start + TIMEOUT));
        // n0000 answers; n0001 leaves; n0002 moves; n0003 times out.
        table.on_reply(due[0].address, due[0].seq, start, 1);
        let mut moved = many(4);
        moved.remove(1);
        moved[1].address = "10.9.9.9".parse().unwrap();
        table.set_targets(&moved, start);
        assert_eq!(table.in_flight.len(), 1, "{:?}", table.in_flight);
        assert_eq!(table.out_of_turn.len(), 1, "the moved peer is due again");
        table.on_reply(due[2].address, due[2].seq, start, 1);
        assert!(
            !table.view().contains_key("n0002"),
            "a reply from the old address"
        );
        table.expire(start + TIMEOUT, 2);
        assert!(table.in_flight.is_empty());
        assert!(!table.view()["n0003"].reachable);
        assert!(table.view()["n0000"].reachable);
        // The moved peer is probed out of turn, in this round's room.
        let again = table.due(start + TIMEOUT);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].address, "10.9.9.9".parse::<Ipv4Addr>().unwrap());
        table.on_reply(again[0].address, again[0].seq, start + TIMEOUT, 2);
        assert!(table.in_flight.is_empty() && table.out_of_turn.is_empty());
        assert_eq!(table.next_deadline(), Some(start + interval));
    }

    #[test]
    fn each_round_probes_a_bounded_sample_and_every_peer_is_covered_in_its_turn() {
        for n in [10usize, 100, 1000] {
            let start = Instant::now();
            let interval = Duration::from_secs(5);
            let mut table = PeerTable::with_sample(interval, SAMPLE, 42);
            table.set_targets(&many(n), start);
            // New peers: probed out of turn, at most a sample's worth per round on top
            // of the round's own sample (a cold start does not flood).
            let first = table.due(start);
            assert_eq!(first.len(), n.min(2 * SAMPLE), "n={n}");
            answer(&mut table, &first, start, 1);
            let rounds = n.div_ceil(SAMPLE);
            assert_eq!(table.cover_time(), interval * rounds as u32);
            let mut r0 = 0;
            while table.view().len() < n {
                r0 += 1;
                let now = start + interval * r0;
                let due = table.due(now);
                assert!(due.len() <= 2 * SAMPLE, "n={n}: {} in a round", due.len());
                answer(&mut table, &due, now, 1);
            }
            assert!(
                r0 as usize <= rounds,
                "n={n}: every peer has a verdict within {r0} rounds"
            );
            let start = start + interval * r0;
            let mut last_probe: BTreeMap<String, usize> = BTreeMap::new();
            let mut gaps = Vec::new();
            for r in 1..=3 * rounds {
                let now = start + interval * r as u32;
                let due = table.due(now);
                assert!(
                    due.len() <= SAMPLE,
                    "n={n}: {} probes in a round",
                    due.len()
                );
                assert_eq!(due.len(), SAMPLE.min(n), "n={n}: the sample is used");
                for d in &due {
                    if let Some(prev) = last_probe.insert(d.name.clone(), r) {
                        gaps.push(r - prev);
                    }
                }
                answer(&mut table, &due, now, 1 + r as u64);
                assert!(table.due(now).is_empty(), "nothing more this round");
            }
            assert_eq!(last_probe.len(), n, "n={n}: every peer probed");
            // A rotation visits every peer once; the gap between two visits is at most two
            // rotations' worth of rounds (last of one, first of the next).
            assert!(gaps.iter().all(|g| *g <= 2 * rounds), "n={n}: {gaps:?}");
            let v = table.view();
            let oldest = v.values().map(|p| p.checked).min().unwrap();
            assert!(
                oldest as usize >= 1 + 3 * rounds - 2 * rounds,
                "n={n}: oldest {oldest}"
            );
            assert!(table.sent() as usize <= n + (3 + 1) * rounds * 2 * SAMPLE.min(n));
        }
    }

    #[test]
    fn peers_with_traffic_and_failing_peers_are_probed_every_round() {
        let start = Instant::now();
        let interval = Duration::from_secs(5);
        let mut table = PeerTable::with_sample(interval, 4, 7);
        let mut targets = many(100);
        for t in targets.iter_mut().take(ACTIVE_MAX + 10) {
            t.active = true;
        }
        table.set_targets(&targets, start);
        // Until every peer has a verdict: one fails (no reply), the rest answer.
        let mut start = start;
        loop {
            let due = table.due(start);
            let rest: Vec<Due> = due.into_iter().filter(|d| d.name != "n0099").collect();
            answer(&mut table, &rest, start, 1);
            table.expire(start + TIMEOUT, 1);
            if table.view().len() == 100 {
                break;
            }
            start += interval;
        }
        for r in 1..=5u32 {
            let now = start + interval * r;
            let due = table.due(now);
            let names: Vec<&str> = due.iter().map(|d| d.name.as_str()).collect();
            // ACTIVE_MAX with traffic + the failing one + the sample of 4.
            assert_eq!(due.len(), ACTIVE_MAX + 1 + 4, "round {r}: {names:?}");
            assert!(names.contains(&"n0000") && names.contains(&"n0099"));
            answer(
                &mut table,
                &due.iter()
                    .filter(|d| d.name != "n0099")
                    .cloned()
                    .collect::<Vec<_>>(),
                now,
                10,
            );
            table.expire(now + TIMEOUT, 10 + u64::from(r));
        }
        assert!(!table.view()["n0099"].reachable);
    }

    #[test]
    fn large_views_are_stored_as_problems_and_counts() {
        let reach = |ok: bool, checked: u64| PeerReach {
            address: "10.1.0.1".parse().unwrap(),
            reachable: ok,
            rtt_micros: ok.then_some(80),
            since: 1,
            checked,
            failures: u32::from(!ok),
            error: (!ok).then(|| "no reply within 1000ms".into()),
            backend: "host-gw direct".into(),
        };
        let view = |n: usize| {
            let peers: BTreeMap<String, PeerReach> = (0..n)
                .map(|i| (format!("n{i}"), reach(i != 3, 100 + i as u64)))
                .collect();
            let summary = summarize(&peers, n + 2, Duration::from_secs(160));
            PeerView {
                address: Some("192.0.2.11".parse().unwrap()),
                interface: None,
                peers,
                summary: Some(summary),
            }
        };
        let small = for_store(&view(FULL_VIEW_MAX - 2));
        assert_eq!(small.peers.len(), FULL_VIEW_MAX - 2);
        assert!(
            small.summary.is_none(),
            "small views are stored whole, as before"
        );
        let big = view(999);
        let stored = for_store(&big);
        assert_eq!(stored.peers.keys().collect::<Vec<_>>(), ["n3"]);
        let s = stored.summary.clone().unwrap();
        assert_eq!(
            (
                s.probed,
                s.reachable,
                s.unprobed,
                s.oldest_checked,
                s.cover_seconds
            ),
            (999, 998, 2, 100, 160)
        );
        let full = serde_json::to_vec(&big).unwrap().len();
        let small_bytes = serde_json::to_vec(&stored).unwrap().len();
        assert!(small_bytes * 100 < full, "{small_bytes} vs {full} bytes");
        // Fresher results alone do not make a write due before the refresh.
        let now = Instant::now();
        let mut p = Publisher::default();
        p.written(1, &stored, now);
        let mut fresher = big.clone();
        for r in fresher.peers.values_mut() {
            r.checked += 5;
        }
        fresher.summary = Some(summarize(&fresher.peers, 1001, Duration::from_secs(160)));
        let fresher = for_store(&fresher);
        assert!(!p.due(1, &fresher, now + Duration::from_secs(60)));
        assert!(p.due(1, &fresher, now + RTT_REFRESH));
        // A verdict change is due at once.
        let mut down = big.clone();
        down.peers.insert("n7".into(), reach(false, 200));
        down.summary = Some(summarize(&down.peers, 1001, Duration::from_secs(160)));
        assert!(p.due(1, &for_store(&down), now));
    }

    #[test]
    fn a_new_peer_is_probed_at_once_then_every_interval() {
        let start = Instant::now();
        let mut table = PeerTable::new(Duration::from_secs(5));
        assert!(table.set_targets(&[t("n2", "192.0.2.12")], start));
        let due = table.due(start);
        assert_eq!(due.len(), 1);
        assert!(table.due(start).is_empty(), "one probe in flight at a time");
        assert_eq!(table.next_deadline(), Some(start + TIMEOUT));
        assert!(table.view().is_empty(), "no verdict yet");
        table.on_reply(
            "192.0.2.12".parse().unwrap(),
            due[0].seq,
            start + Duration::from_micros(250),
            100,
        );
        let v = table.view();
        assert!(v["n2"].reachable);
        assert_eq!((v["n2"].rtt_micros, v["n2"].since), (Some(250), 100));
        assert_eq!(table.next_deadline(), Some(start + Duration::from_secs(5)));
        assert!(
            !table.set_targets(&[t("n2", "192.0.2.12")], start),
            "unchanged"
        );
    }

    #[test]
    fn reachable_goes_down_after_three_misses_never_reached_at_the_first() {
        let mut now = Instant::now();
        let mut table = PeerTable::new(Duration::from_secs(5));
        table.set_targets(&[t("n2", "192.0.2.12"), t("n3", "10.0.5.3")], now);
        let due = table.due(now);
        table.on_reply("192.0.2.12".parse().unwrap(), due[0].seq, now, 1);
        table.on_send_error("n3", due[1].seq, "Network is unreachable".into(), 1);
        let v = table.view();
        assert!(!v["n3"].reachable);
        assert_eq!(v["n3"].error.as_deref(), Some("Network is unreachable"));
        for i in 1..=3 {
            now += Duration::from_secs(5);
            assert_eq!(table.due(now).len(), 2);
            now += TIMEOUT;
            table.expire(now, 10 + i);
            let v = table.view();
            assert_eq!(v["n2"].failures, i as u32);
            assert_eq!(v["n2"].reachable, i < 3, "after {i} misses");
        }
        let v = table.view();
        assert_eq!((v["n2"].since, v["n3"].since), (13, 1));
        assert_eq!(v["n2"].error.as_deref(), Some("no reply within 1000ms"));
    }

    #[test]
    fn a_moved_peer_starts_over_and_a_stale_reply_is_ignored() {
        let now = Instant::now();
        let mut table = PeerTable::new(Duration::from_secs(5));
        table.set_targets(&[t("n2", "10.0.5.2")], now);
        let old = table.due(now)[0].seq;
        assert!(table.set_targets(&[t("n2", "192.0.2.12")], now));
        table.on_reply("10.0.5.2".parse().unwrap(), old, now, 1);
        assert!(table.view().is_empty());
        let seq = table.due(now)[0].seq;
        table.on_reply("192.0.2.12".parse().unwrap(), seq, now, 2);
        assert_eq!(
            table.view()["n2"].address,
            "192.0.2.12".parse::<Ipv4Addr>().unwrap()
        );
        table.set_targets(&[], now);
        assert!(table.view().is_empty() && table.next_deadline().is_none());
    }

    #[test]
    fn counts_alone_are_published_rarely_and_a_verdict_at_once() {
        let now = Instant::now();
        let mut p = Publisher::default();
        let summary = |probed, unprobed| PeerSummary {
            probed,
            reachable: probed,
            unprobed,
            oldest_checked: 1,
            cover_seconds: 160,
        };
        let mut view = PeerView {
            address: Some("192.0.2.11".parse().unwrap()),
            interface: Some("eth0".into()),
            peers: BTreeMap::new(),
            summary: Some(summary(32, 968)),
        };
        p.written(7, &view, now);
        // The probes cover more peers, all reachable: not at once, at the refresh.
        view.summary = Some(summary(64, 936));
        assert!(!p.due(7, &view, now + Duration::from_secs(5)));
        assert!(p.due(7, &view, now + RTT_REFRESH));
        // A peer not reachable is listed: at once.
        view.peers.insert(
            "n9".into(),
            PeerReach {
                address: "192.0.2.19".parse().unwrap(),
                reachable: false,
                rtt_micros: None,
                since: 1,
                checked: 1,
                failures: 3,
                error: None,
                backend: String::new(),
            },
        );
        assert!(p.due(7, &view, now + Duration::from_secs(5)));
    }

    #[test]
    fn rtt_alone_is_published_rarely() {
        let now = Instant::now();
        let mut p = Publisher::default();
        let mut view = PeerView {
            address: Some("192.0.2.11".parse().unwrap()),
            interface: Some("eth0".into()),
            peers: BTreeMap::new(),
            summary: None,
        };
        let reach = |rtt| PeerReach {
            address: "192.0.2.12".parse().unwrap(),
            reachable: true,
            rtt_micros: Some(rtt),
            since: 1,
            checked: 0,
            failures: 0,
            error: None,
            backend: String::new(),
        };
        view.peers.insert("n2".to_string(), reach(100));
        assert!(p.due(7, &view, now));
        p.written(7, &view, now);
        assert!(!p.due(7, &view, now + RTT_REFRESH));
        view.peers.insert("n2".to_string(), reach(120));
        assert!(!p.due(7, &view, now + Duration::from_secs(5)));
        assert!(p.due(7, &view, now + RTT_REFRESH));
        assert!(p.due(8, &view, now), "a new lease");
        let mut moved = view.clone();
        moved.interface = Some("eth1".into());
        assert!(p.due(7, &moved, now), "this node's own address moved");
        let mut down = reach(0);
        down.reachable = false;
        view.peers.insert("n2".to_string(), down);
        assert!(p.due(7, &view, now));
    }

    #[test]
    fn echo_codec_round_trips() {
        let req = echo_request(0x1234, 7);
        assert_eq!(checksum(&req), 0, "a valid checksum sums to zero");
        let mut reply = req.clone();
        reply[0] = ICMP_ECHO_REPLY;
        assert_eq!(parse_reply(&reply, false, 0), Some(7));
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 12, 192, 0, 2, 11,
        ];
        ip.extend_from_slice(&reply);
        assert_eq!(parse_reply(&ip, true, 0x1234), Some(7));
        assert_eq!(parse_reply(&ip, true, 0x9999), None, "another prober's");
        let mut req_ip = ip.clone();
        req_ip[20] = ICMP_ECHO_REQUEST;
        assert_eq!(parse_reply(&req_ip, true, 0x1234), None, "a request");
        assert_eq!(parse_reply(&ip[..24], true, 0x1234), None, "truncated");
    }

    #[test]
    fn backend_modes_read_plainly() {
        let uplink = Some("192.0.2.0/24".parse().unwrap());
        let near: Ipv4Addr = "192.0.2.12".parse().unwrap();
        let far: Ipv4Addr = "198.51.100.13".parse().unwrap();
        assert_eq!(
            backend_mode(&BackendSpec::HostGw, uplink, near),
            "host-gw direct"
        );
        assert_eq!(
            backend_mode(&BackendSpec::HostGw, uplink, far),
            "host-gw unrouted: off segment"
        );
        let dr = BackendSpec::Vxlan(twill_api::resources::VxlanOptions {
            direct_routing: true,
            ..Default::default()
        });
        assert_eq!(
            backend_mode(&dr, uplink, near),
            "vxlan direct (same segment)"
        );
        assert_eq!(backend_mode(&dr, uplink, far), "vxlan tunnel");
        assert_eq!(
            backend_mode(&BackendSpec::Vxlan(Default::default()), uplink, near),
            "vxlan tunnel"
        );
        assert_eq!(
            backend_mode(&BackendSpec::Static(Default::default()), uplink, near),
            "vxlan tunnel"
        );
        assert_eq!(
            backend_mode(&BackendSpec::Udp(Default::default()), uplink, far),
            "udp tunnel (userspace, port 8285)"
        );
    }
}
