//! The routing information bases: Adj-RIB-In per peer, the Loc-RIB with best path and the
//! multipath set, Adj-RIB-Out per peer, route reflection, graceful-restart stale handling and
//! policy. Pure: decoded UPDATEs and session events in, FIB changes and packed out-updates out.
//!
//! # API
//!
//! ```text
//! let mut rib = Rib::new(RibConfig::new(local_as, router_id));   // max_paths, cluster_id
//! rib.add_peer(PeerId(1), PeerConfig { remote_as, remote_addr, rr_client, next_hop_self,
//!                                      import, export })?;
//! rib.peer_up(PeerId(1), PeerSession::new(local_addr, peer_router_id, families))?
//! rib.apply(PeerId(1), &update)?            // one call per decoded UPDATE (batched)
//! rib.end_of_rib(PeerId(1), family)?        // RFC 4724: sweep what is still stale
//! rib.peer_down(PeerId(1), keep_stale)?     // Some(_): GR helper, routes kept stale
//! rib.stale_expired(PeerId(1))?             // the restart/stale timer ran out
//! rib.refresh(PeerId(1), family)?           // ROUTE-REFRESH: the whole Adj-RIB-Out again
//! rib.originate(prefix, attrs) / rib.withdraw_originated(prefix)
//! rib.originate_all(prefixes, attrs) / rib.withdraw_originated_all(prefixes)   // packed
//! rib.set_peer_config(PeerId(1), cfg)?     // new policy or role: Adj-RIB-Outs redone
//! rib.remove_peer(PeerId(1))?
//! rib.routes() / rib.route(prefix) / rib.fib() / rib.adj_rib_out(peer, family)
//! rib.peer_counts(peer) / rib.stats()       // for `twill bgp rib` and `neighbors`
//! ```
//!
//! Graceful restart, the helper's side (RFC 4724 §4.2), is split between the speaker and the
//! RIB: the speaker times the restart and stale timers and calls `stale_expired`, and calls
//! `end_of_rib` for each family whose End-of-RIB arrives. The per-family rules (only the
//! families the peer's capability listed are kept stale; at re-establishment a family
//! without its Forwarding State bit loses its stale routes at once) the RIB applies itself
//! when the session carries the peer's OPEN (`PeerSession::new(..).with_open(&open)`).
//!
//! Every call that can change routes returns [`RibChanges`]:
//!
//! - `fib`: one [`FibChange`] per prefix whose forwarding changed: the next hops of its
//!   multipath set when the best path is learned from a peer, empty to remove the route.
//!   A prefix whose best path is originated here is not forwarded by BGP: when a local
//!   route takes over from learned ones the FIB entry is removed, and originating a prefix
//!   nobody else announces changes nothing.
//! - `out`: per established peer an [`OutUpdate`], already packed: prefixes sharing one
//!   interned attribute set are in one group. The speaker sends `withdraw` first, then the
//!   `announce` groups in order (`packet::encode_withdraw` / `encode_announce`), then an
//!   End-of-RIB for each family in `end_of_rib` (set after the initial dump of `peer_up`).
//!   Within one change set a prefix appears at most once per peer, so the order only
//!   matters between messages, not for correctness.
//!
//! Errors ([`RibError`]) are only for calls that do not fit the peer table (an unknown peer,
//! an UPDATE from a peer that is not up); they change nothing.
//!
//! # What the RIB decides
//!
//! - Input (`apply`): withdrawals first, then announcements (RFC 7606 treat-as-withdraw has
//!   already turned bad announcements into withdrawals). Routes with a loop are handled as
//!   withdrawn: our AS in the AS_PATH of an eBGP route, our router ID as ORIGINATOR_ID, our
//!   cluster ID in CLUSTER_LIST; so are routes whose next hop is our own session address.
//!   LOCAL_PREF from an eBGP peer is ignored. Then import policy.
//! - Best path: `best::select`, RFC 4271 §9.1.2.2 in order with RFC 4456 §9, plus the
//!   multipath set (same neighbouring AS, equal through the eBGP/iBGP step, at most
//!   `max_paths`). Only the best path is advertised.
//! - Output: never back to the peer a route came from; iBGP split horizon unless
//!   reflecting (RFC 4456 §6); NO_ADVERTISE / NO_EXPORT (RFC 1997); export policy; RFC 8212
//!   default deny on eBGP without a policy; the attribute rules of RFC 4271 §5.1 (see
//!   `export`). Adj-RIB-Out is diffed: an unchanged advertisement is not sent again.
//! - Attributes are interned: every path and every Adj-RIB-Out entry holds an
//!   `Arc<Attrs>` from one table, so 100,000 prefixes sharing attributes share one copy.
//!
//! # Cost
//!
//! A prefix with one path is 24 bytes in a 16-shard hash table (its key, and the path: an
//! `Arc` to its attributes, the source, the marks), an Adj-RIB-Out entry 16. 100,000 IPv4
//! prefixes from one peer: 3.3 MB of heap (4.0 MB peak while loading), about 0.06 s of CPU
//! (`cargo run --release -p twill-bgp --example rib_100k`).

mod best;
mod table;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::packet::{
    Afi, Attrs, Capability, Community, Family, GracefulRestartFamily, Open, Safi, Update,
};
use crate::policy::{Policy, TermIndex};

use best::Candidate;
use table::{ShardKey, Table};

/// RFC 4271 §5.1.5 leaves the default to the operator; 100 is what every implementation
/// uses, and what a route without LOCAL_PREF is compared with.
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// A peer, numbered by the speaker. `u32::MAX` is reserved (it marks originated routes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

const LOCAL: u32 = u32::MAX;

/// The speaker-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RibConfig {
    pub local_as: u32,
    /// Our BGP Identifier.
    pub router_id: Ipv4Addr,
    /// RFC 4456 §7 CLUSTER_ID when reflecting; `None` = the router ID (the usual choice for
    /// a single reflector per cluster).
    pub cluster_id: Option<Ipv4Addr>,
    /// The most paths in one prefix's multipath set (1 = no ECMP).
    pub max_paths: usize,
    /// The networks this speaker reaches directly (its links' subnets), by which learned
    /// next hops are resolved. RFC 4271 §9.1.2.1: "If the NEXT_HOP attribute of a BGP route
    /// depicts an address that is not resolvable ... the route SHOULD be excluded from the
    /// Phase 2 decision function." Twill runs no IGP and resolves no next hop recursively:
    /// a next hop is resolvable when it is inside one of these. A family with no network
    /// here resolves every next hop (the default, empty: the kernel decides).
    pub next_hop_networks: Vec<IpNet>,
}

impl RibConfig {
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> RibConfig {
        RibConfig {
            local_as,
            router_id,
            cluster_id: None,
            max_paths: 1,
            next_hop_networks: Vec::new(),
        }
    }

    fn cluster_id(&self) -> Ipv4Addr {
        self.cluster_id.unwrap_or(self.router_id)
    }

    /// Whether a learned path's next hop is resolvable ([`RibConfig::next_hop_networks`]).
    fn resolvable(&self, attrs: &Attrs) -> bool {
        let Some(nh) = forward_next_hop(attrs) else {
            return true;
        };
        let mut same_family = self
            .next_hop_networks
            .iter()
            .filter(|n| {
                matches!(
                    (n, nh),
                    (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
                )
            })
            .peekable();
        same_family.peek().is_none() || same_family.any(|n| n.contains(&nh))
    }
}

/// One peer as configured: whether it is iBGP follows from the ASes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub remote_as: u32,
    /// The peer's address (the session's remote end): the last best-path tie-break.
    pub remote_addr: IpAddr,
    /// RFC 4456: an iBGP peer that is our route-reflection client. Having any client makes
    /// this speaker a reflector.
    pub rr_client: bool,
    /// Towards this iBGP peer, routes learned from eBGP get our session address as next hop.
    pub next_hop_self: bool,
    /// Towards this eBGP peer, routes learned from others keep their next hop (a third-party
    /// next hop, RFC 4271 §5.1.3 2)) instead of our session address.
    pub keep_original_next_hop: bool,
    /// Only the routes this speaker originates are sent to this peer, none it learned (what
    /// Calico's nodes send a router outside the cluster: their own blocks; a node passing
    /// on the others' routes would offer the router paths through itself, and loops).
    pub export_originated_only: bool,
    /// `None` on an eBGP peer accepts nothing (RFC 8212); on an iBGP peer, everything.
    pub import: Option<Policy>,
    /// `None` on an eBGP peer sends nothing (RFC 8212); on an iBGP peer, everything allowed.
    pub export: Option<Policy>,
}

impl PeerConfig {
    /// A peer with no policy and no role beyond its AS.
    pub fn new(remote_as: u32, remote_addr: IpAddr) -> PeerConfig {
        PeerConfig {
            remote_as,
            remote_addr,
            rr_client: false,
            next_hop_self: false,
            keep_original_next_hop: false,
            export_originated_only: false,
            import: None,
            export: None,
        }
    }
}

/// What the speaker knows once a session is Established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSession {
    /// Our next hop for IPv4 routes sent on this session (our session address when it is
    /// IPv4). `None`: IPv4 routes that need our address are not sent.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Our next hop for IPv6 routes (our session address when it is IPv6, else an address
    /// the speaker picks).
    pub next_hop_v6: Option<Ipv6Addr>,
    /// The peer's BGP Identifier from its OPEN (a best-path tie-break).
    pub router_id: Ipv4Addr,
    /// The families negotiated (RFC 4760); routes of other families are not sent.
    pub families: Vec<Family>,
    /// What the peer's OPEN said about graceful restart. Known, the RIB applies RFC 4724
    /// §4.2's per-family rules itself at `peer_down` and `peer_up`.
    pub graceful_restart: PeerGracefulRestart,
}

/// The peer's graceful restart capability (RFC 4724 §3) as the RIB uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerGracefulRestart {
    /// The speaker did not say: it applies the per-family rules itself (module doc).
    Unknown,
    /// The OPEN had no graceful restart capability.
    NotAdvertised,
    /// The families the capability listed, each with its Forwarding State bit.
    Families(Vec<GracefulRestartFamily>),
}

impl PeerGracefulRestart {
    /// From the peer's OPEN.
    pub fn of(open: &Open) -> PeerGracefulRestart {
        open.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::GracefulRestart(gr) => {
                    Some(PeerGracefulRestart::Families(gr.families.clone()))
                }
                _ => None,
            })
            .unwrap_or(PeerGracefulRestart::NotAdvertised)
    }

    /// At session loss: whether the family's routes may be kept stale (`None`: the speaker
    /// decides). RFC 4724 §4.2: only "for all the address families that were previously
    /// received in the Graceful Restart Capability".
    fn keeps(&self, family: Family) -> Option<bool> {
        match self {
            PeerGracefulRestart::Unknown => None,
            PeerGracefulRestart::NotAdvertised => Some(false),
            PeerGracefulRestart::Families(fs) => Some(fs.iter().any(|f| f.family == family)),
        }
    }

    /// At re-establishment: whether the family's stale routes may stay until End-of-RIB.
    /// RFC 4724 §4.2: "if the "Forwarding State" bit for a specific address family is not
    /// set in the newly received Graceful Restart Capability, or if a specific address family
    /// is not included in the newly received Graceful Restart Capability, or if the Graceful
    /// Restart Capability is not received in the re-established session at all, then the
    /// Receiving Speaker MUST immediately remove all the stale routes from the peer that it is
    /// retaining for that address family."
    fn forwarding_kept(&self, family: Family) -> Option<bool> {
        match self {
            PeerGracefulRestart::Unknown => None,
            PeerGracefulRestart::NotAdvertised => Some(false),
            PeerGracefulRestart::Families(fs) => Some(
                fs.iter()
                    .any(|f| f.family == family && f.forwarding_preserved),
            ),
        }
    }
}

impl PeerSession {
    /// A session whose local address is `local_addr`: that is the next hop for its family.
    pub fn new(local_addr: IpAddr, router_id: Ipv4Addr, families: Vec<Family>) -> PeerSession {
        let (next_hop_v4, next_hop_v6) = match local_addr {
            IpAddr::V4(a) => (Some(a), None),
            IpAddr::V6(a) => (a.to_ipv4_mapped(), Some(a)),
        };
        PeerSession {
            next_hop_v4,
            next_hop_v6,
            router_id,
            families,
            graceful_restart: PeerGracefulRestart::Unknown,
        }
    }

    /// The same with what the peer's OPEN says about graceful restart, so the RIB applies
    /// RFC 4724 §4.2 per family.
    pub fn with_open(mut self, open: &Open) -> PeerSession {
        self.graceful_restart = PeerGracefulRestart::of(open);
        self
    }
}

/// A call that does not fit the peer table. Nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RibError {
    #[error("peer {0:?} is not in the RIB: add_peer it first")]
    UnknownPeer(PeerId),
    #[error("peer {0:?} is already in the RIB: remove_peer it first to change it")]
    DuplicatePeer(PeerId),
    #[error("peer id {0:?} is reserved for originated routes: number peers below u32::MAX")]
    ReservedPeerId(PeerId),
    #[error("peer {0:?} has no established session: call peer_up first")]
    PeerNotUp(PeerId),
    #[error(
        "peer {0:?}: its AS or address cannot change in place: remove_peer it and add_peer \
         the new one"
    )]
    IdentityChanged(PeerId),
}

/// A change to the kernel's forwarding table for one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FibChange {
    pub prefix: IpNet,
    /// The multipath set's next hops, sorted, no duplicates; empty = remove the route.
    pub next_hops: Vec<IpAddr>,
}

/// What to send one peer, packed by shared attributes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OutUpdate {
    pub withdraw: Vec<IpNet>,
    pub announce: Vec<(Arc<Attrs>, Vec<IpNet>)>,
    /// Send End-of-RIB (RFC 4724 §2) for these families after the rest.
    pub end_of_rib: Vec<Family>,
}

impl OutUpdate {
    pub fn is_empty(&self) -> bool {
        self.withdraw.is_empty() && self.announce.is_empty() && self.end_of_rib.is_empty()
    }
}

/// Everything one call changed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RibChanges {
    pub fib: Vec<FibChange>,
    /// One entry per peer with something to send, in peer order.
    pub out: Vec<(PeerId, OutUpdate)>,
}

impl RibChanges {
    pub fn is_empty(&self) -> bool {
        self.fib.is_empty() && self.out.is_empty()
    }
}

/// One path of a prefix as the RIB holds it (for `twill bgp rib`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathView {
    /// `None` for a route originated here.
    pub peer: Option<PeerId>,
    pub attrs: Arc<Attrs>,
    pub best: bool,
    /// In the multipath set (the best is too).
    pub multipath: bool,
    /// Kept by graceful restart after its peer went down (RFC 4724 §4.2).
    pub stale: bool,
}

/// A prefix and its paths, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteView {
    pub prefix: IpNet,
    pub paths: Vec<PathView>,
}

// ===== storage =====

/// A path's marks. An enum, not bit flags, so its unused values are a niche: `Paths` below
/// stores its tag there and stays 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Mark {
    Plain = 0,
    Selected = 1,
    Stale = 2,
    SelectedStale = 3,
}

impl Mark {
    fn new(selected: bool, stale: bool) -> Mark {
        match (selected, stale) {
            (false, false) => Mark::Plain,
            (true, false) => Mark::Selected,
            (false, true) => Mark::Stale,
            (true, true) => Mark::SelectedStale,
        }
    }
    fn selected(self) -> bool {
        matches!(self, Mark::Selected | Mark::SelectedStale)
    }
    fn stale(self) -> bool {
        matches!(self, Mark::Stale | Mark::SelectedStale)
    }
}

/// One path in the Loc-RIB: the Adj-RIB-In entry of its source (post import policy).
#[derive(Clone, Debug)]
struct Path {
    attrs: Arc<Attrs>,
    source: u32,
    /// Selected: in the multipath set (the best is the first path); stale: RFC 4724.
    mark: Mark,
}

impl Path {
    fn selected(&self) -> bool {
        self.mark.selected()
    }
    fn stale(&self) -> bool {
        self.mark.stale()
    }
    fn set_selected(&mut self, on: bool) {
        self.mark = Mark::new(on, self.stale());
    }
    fn set_stale(&mut self, on: bool) {
        self.mark = Mark::new(self.selected(), on);
    }
}

/// The paths of one prefix: one inline (the common case: 16 bytes, no allocation), or many.
/// Never empty: a prefix with no path is removed from its table. Selected paths come first,
/// best at index 0.
#[derive(Debug)]
enum Paths {
    One(Path),
    /// Boxed: a thin pointer keeps the enum at the size of one path (a `Vec` inline would
    /// make every prefix 8 bytes bigger; this case is the rare one).
    #[expect(clippy::box_collection, reason = "a thin pointer, for the enum's size")]
    Many(Box<Vec<Path>>),
}

impl Paths {
    fn as_slice(&self) -> &[Path] {
        match self {
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(v) => v.as_slice(),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Path] {
        match self {
            Paths::One(p) => std::slice::from_mut(p),
            Paths::Many(v) => v.as_mut_slice(),
        }
    }

    fn into_vec(self) -> Vec<Path> {
        match self {
            Paths::One(p) => vec![p],
            Paths::Many(v) => *v,
        }
    }

    fn from_vec(mut v: Vec<Path>) -> Option<Paths> {
        match v.len() {
            0 => None,
            1 => v.pop().map(Paths::One),
            _ => Some(Paths::Many(Box::new(v))),
        }
    }

    fn best(&self) -> Option<&Path> {
        self.as_slice().first().filter(|p| p.selected())
    }
}

/// The family-specific parts, so one generic body serves IPv4 and IPv6 unicast with compact
/// keys (5 and 17 bytes instead of `IpNet`'s 18).
trait Prefix: ShardKey + Ord + std::fmt::Debug + Into<IpNet> {
    const FAMILY: Family;
    fn table(rib: &mut Rib) -> (&mut Table<Self, Paths>, &mut Ctx);
    fn adj_out(peer: &mut PeerState) -> &mut Table<Self, Arc<Attrs>>;
    /// Point `attrs` at our address on `session`; false when there is none for the family.
    fn set_next_hop_self(attrs: &mut Attrs, session: &PeerSession) -> bool;
    /// Make a passed-on next hop fit to send: true when the family's next hop is there in
    /// the form the encoder writes it.
    fn sendable_next_hop(attrs: &mut Attrs) -> bool;
}

impl Prefix for Ipv4Net {
    const FAMILY: Family = Family::IPV4_UNICAST;
    fn table(rib: &mut Rib) -> (&mut Table<Self, Paths>, &mut Ctx) {
        (&mut rib.v4, &mut rib.ctx)
    }
    fn adj_out(peer: &mut PeerState) -> &mut Table<Self, Arc<Attrs>> {
        &mut peer.out_v4
    }
    fn set_next_hop_self(attrs: &mut Attrs, session: &PeerSession) -> bool {
        match session.next_hop_v4 {
            Some(a) => {
                attrs.next_hop = Some(a);
                attrs.mp_next_hop.clear();
                true
            }
            None => false,
        }
    }
    fn sendable_next_hop(attrs: &mut Attrs) -> bool {
        // RFC 4271 §5.1.3: IPv4 NLRI in the UPDATE body carry NEXT_HOP. (An IPv4 route with
        // an IPv6 next hop, RFC 8950, is not sent on.)
        attrs.next_hop.is_some()
    }
}

impl Prefix for Ipv6Net {
    const FAMILY: Family = Family::IPV6_UNICAST;
    fn table(rib: &mut Rib) -> (&mut Table<Self, Paths>, &mut Ctx) {
        (&mut rib.v6, &mut rib.ctx)
    }
    fn adj_out(peer: &mut PeerState) -> &mut Table<Self, Arc<Attrs>> {
        &mut peer.out_v6
    }
    fn set_next_hop_self(attrs: &mut Attrs, session: &PeerSession) -> bool {
        match session.next_hop_v6 {
            Some(a) => {
                attrs.next_hop = None;
                attrs.mp_next_hop = vec![IpAddr::V6(a)];
                true
            }
            None => false,
        }
    }
    fn sendable_next_hop(attrs: &mut Attrs) -> bool {
        // RFC 2545 §3: "The link-local address shall be included in the Next Hop field if
        // and only if the BGP speaker shares a common subnet with the entity identified by
        // the global IPv6 address carried in the Network Address of Next Hop field and the
        // peer the route is being advertised to." The RIB cannot know that of a next hop it
        // passes on, so only the global address goes.
        attrs.mp_next_hop.truncate(1);
        attrs.next_hop = None;
        matches!(attrs.mp_next_hop.first(), Some(IpAddr::V6(_)))
    }
}

/// The next hop a path forwards to: NEXT_HOP for IPv4, else the first MP_REACH next hop
/// (RFC 2545 §3: the global address comes first).
fn forward_next_hop(attrs: &Attrs) -> Option<IpAddr> {
    attrs
        .next_hop
        .map(IpAddr::V4)
        .or_else(|| attrs.mp_next_hop.first().copied())
}

struct PeerState {
    cfg: PeerConfig,
    ebgp: bool,
    session: Option<PeerSession>,
    /// The last BGP Identifier the peer had: its stale paths still need it for best path.
    router_id: Ipv4Addr,
    out_v4: Table<Ipv4Net, Arc<Attrs>>,
    out_v6: Table<Ipv6Net, Arc<Attrs>>,
}

/// One table of attribute sets: equal `Attrs` are one allocation.
#[derive(Default)]
struct Interner {
    set: HashSet<Arc<Attrs>>,
    /// Size after the last sweep: the next sweep runs when the set has doubled.
    swept_len: usize,
}

impl Interner {
    fn intern(&mut self, attrs: Attrs) -> Arc<Attrs> {
        if let Some(a) = self.set.get(&attrs) {
            return a.clone();
        }
        let a = Arc::new(attrs);
        self.set.insert(a.clone());
        a
    }

    /// Drop the sets nothing else holds. Amortised: only when the table doubled since the
    /// last sweep, or when asked (`force`, after a peer went away).
    fn sweep(&mut self, force: bool) {
        if force || self.set.len() > 2 * self.swept_len + 64 {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.swept_len = self.set.len();
        }
    }
}

/// Everything but the tables, so a table can be borrowed beside it.
struct Ctx {
    cfg: RibConfig,
    peers: BTreeMap<PeerId, PeerState>,
    interner: Interner,
    /// Whether any peer is a reflection client (then we reflect, RFC 4456 §6).
    reflector: bool,
}

/// The RIB. See the module doc for the API.
pub struct Rib {
    v4: Table<Ipv4Net, Paths>,
    v6: Table<Ipv6Net, Paths>,
    ctx: Ctx,
}

/// Where a path came from, as export and input rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceKind {
    Local,
    Ebgp,
    Ibgp { client: bool },
}

/// One call's working state: the outputs being built and the export cache. Both are keyed by
/// interned attribute pointers. A pointer names one attribute set for the whole call because
/// the interner keeps every set it handed out alive until its sweep, which runs only after
/// the batch is finished (`Rib::finish`): no address is freed and reused mid-call.
#[derive(Default)]
struct Batch {
    fib: Vec<FibChange>,
    out: BTreeMap<PeerId, OutAcc>,
    export_cache: ExportCache,
    /// The established peers, looked up once per call.
    targets: Option<Vec<PeerId>>,
}

/// (source attrs, source, target, export term, family is IPv6) -> what to send.
type ExportCache = HashMap<(usize, u32, PeerId, Option<TermIndex>, bool), Option<Arc<Attrs>>>;

#[derive(Default)]
struct OutAcc {
    update: OutUpdate,
    group: HashMap<usize, usize>,
}

impl OutAcc {
    fn announce(&mut self, attrs: &Arc<Attrs>, prefix: IpNet) {
        let key = Arc::as_ptr(attrs) as usize;
        let idx = *self.group.entry(key).or_insert_with(|| {
            self.update.announce.push((attrs.clone(), Vec::new()));
            self.update.announce.len() - 1
        });
        self.update.announce[idx].1.push(prefix);
    }
}

impl Batch {
    fn finish(self, sorted: bool) -> RibChanges {
        let out = self
            .out
            .into_iter()
            .filter_map(|(peer, acc)| {
                let mut u = acc.update;
                if sorted {
                    // Dumps walk hash tables: sort, so what is sent does not depend on them.
                    u.withdraw.sort_unstable();
                    for (_, prefixes) in &mut u.announce {
                        prefixes.sort_unstable();
                    }
                    u.announce.sort_by(|a, b| a.1.first().cmp(&b.1.first()));
                }
                (!u.is_empty()).then_some((peer, u))
            })
            .collect();
        RibChanges { fib: self.fib, out }
    }
}

/// What one input does to one prefix's paths.
#[derive(Clone)]
enum Edit {
    /// Replace (or add) the path from `source`, clearing its stale mark.
    Set(u32, Arc<Attrs>),
    /// Remove the path from `source`.
    Remove(u32),
    /// Remove the path from `source` if it is stale.
    RemoveStale(u32),
    /// Mark the path from `source` stale; one that is stale already is removed (a restart
    /// during a restart).
    MarkStale(u32),
}

impl Edit {
    fn source(&self) -> u32 {
        match self {
            Edit::Set(s, _) | Edit::Remove(s) | Edit::RemoveStale(s) | Edit::MarkStale(s) => *s,
        }
    }
}

impl Rib {
    pub fn new(cfg: RibConfig) -> Rib {
        Rib {
            v4: Table::default(),
            v6: Table::default(),
            ctx: Ctx {
                cfg,
                peers: BTreeMap::new(),
                interner: Interner::default(),
                reflector: false,
            },
        }
    }

    pub fn config(&self) -> &RibConfig {
        &self.ctx.cfg
    }

    /// Add a peer (not yet up). iBGP when `remote_as` is our AS.
    pub fn add_peer(&mut self, id: PeerId, cfg: PeerConfig) -> Result<(), RibError> {
        if id.0 == LOCAL {
            return Err(RibError::ReservedPeerId(id));
        }
        if self.ctx.peers.contains_key(&id) {
            return Err(RibError::DuplicatePeer(id));
        }
        let ebgp = cfg.remote_as != self.ctx.cfg.local_as;
        let router_id = match cfg.remote_addr {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        self.ctx.peers.insert(
            id,
            PeerState {
                cfg,
                ebgp,
                session: None,
                router_id,
                out_v4: Table::default(),
                out_v6: Table::default(),
            },
        );
        self.ctx.reflector = self.ctx.peers.values().any(|p| !p.ebgp && p.cfg.rr_client);
        Ok(())
    }

    /// Remove a peer: its routes are withdrawn (stale ones too) and it is forgotten.
    pub fn remove_peer(&mut self, id: PeerId) -> Result<RibChanges, RibError> {
        // Down first: it is sent nothing, and everyone else hears its routes go.
        let changes = self.peer_down(id, None)?;
        self.ctx.peers.remove(&id);
        self.ctx.reflector = self.ctx.peers.values().any(|p| !p.ebgp && p.cfg.rr_client);
        self.ctx.interner.sweep(true);
        Ok(changes)
    }

    /// Change a peer's policies and role (reflection client, next hop self). Every peer's
    /// Adj-RIB-Out is brought in line at once (the role of a peer also decides what others
    /// get of its routes). A new import policy applies to routes received from now on: ask
    /// the peer for a ROUTE-REFRESH (RFC 2918) to run it over what it has. The AS and address
    /// cannot change here: that is another peer (`remove_peer`, `add_peer`).
    pub fn set_peer_config(&mut self, id: PeerId, cfg: PeerConfig) -> Result<RibChanges, RibError> {
        let peer = self
            .ctx
            .peers
            .get_mut(&id)
            .ok_or(RibError::UnknownPeer(id))?;
        if peer.cfg.remote_as != cfg.remote_as || peer.cfg.remote_addr != cfg.remote_addr {
            return Err(RibError::IdentityChanged(id));
        }
        peer.cfg = cfg;
        self.ctx.reflector = self.ctx.peers.values().any(|p| !p.ebgp && p.cfg.rr_client);
        let mut batch = Batch::default();
        readvertise_all::<Ipv4Net>(self, &mut batch);
        readvertise_all::<Ipv6Net>(self, &mut batch);
        Ok(self.finish(batch, false))
    }

    /// What the RIB holds of and for one peer (for `twill bgp neighbors`).
    pub fn peer_counts(&self, id: PeerId) -> Option<PeerCounts> {
        self.all_peer_counts().remove(&id)
    }

    /// [`Rib::peer_counts`] of every peer, in one walk of the Loc-RIB: a status of all
    /// peers costs O(paths + peers), not O(paths x peers) (a route reflector with 100
    /// clients asked once per session change).
    pub fn all_peer_counts(&self) -> BTreeMap<PeerId, PeerCounts> {
        let mut all: BTreeMap<PeerId, PeerCounts> = self
            .ctx
            .peers
            .iter()
            .map(|(id, peer)| {
                let c = PeerCounts {
                    accepted: 0,
                    stale: 0,
                    best: 0,
                    advertised: peer.out_v4.len() + peer.out_v6.len(),
                };
                (*id, c)
            })
            .collect();
        let paths = self
            .v4
            .values()
            .chain(self.v6.values())
            .flat_map(|p| p.as_slice().iter().enumerate());
        for (i, p) in paths {
            if let Some(c) = all.get_mut(&PeerId(p.source)) {
                c.accepted += 1;
                c.stale += usize::from(p.stale());
                c.best += usize::from(i == 0 && p.selected());
            }
        }
        all
    }

    /// The session with `id` is Established: send it our whole Adj-RIB-Out for its families,
    /// then End-of-RIB for each (RFC 4724 §2: also useful to peers that do not restart).
    pub fn peer_up(&mut self, id: PeerId, session: PeerSession) -> Result<RibChanges, RibError> {
        let peer = self
            .ctx
            .peers
            .get_mut(&id)
            .ok_or(RibError::UnknownPeer(id))?;
        peer.router_id = session.router_id;
        // Not up while its stale routes are swept: what it is to have comes in the dump.
        peer.session = None;
        peer.out_v4.reset();
        peer.out_v6.reset();
        let families = session.families.clone();
        let mut batch = Batch::default();
        let sweep = Edit::RemoveStale(id.0);
        if session
            .graceful_restart
            .forwarding_kept(Family::IPV4_UNICAST)
            == Some(false)
        {
            edit_all::<Ipv4Net>(self, &sweep, &mut batch);
        }
        if session
            .graceful_restart
            .forwarding_kept(Family::IPV6_UNICAST)
            == Some(false)
        {
            edit_all::<Ipv6Net>(self, &sweep, &mut batch);
        }
        if let Some(peer) = self.ctx.peers.get_mut(&id) {
            peer.session = Some(session);
        }
        if families.contains(&Family::IPV4_UNICAST) {
            dump::<Ipv4Net>(self, id, &mut batch);
        }
        if families.contains(&Family::IPV6_UNICAST) {
            dump::<Ipv6Net>(self, id, &mut batch);
        }
        let eor: Vec<Family> = families
            .into_iter()
            .filter(|f| *f == Family::IPV4_UNICAST || *f == Family::IPV6_UNICAST)
            .collect();
        batch.out.entry(id).or_default().update.end_of_rib = eor;
        Ok(self.finish(batch, true))
    }

    /// The session with `id` went down. With `keep_stale` (RFC 4724 §4.2 helper: the peer
    /// announced graceful restart and is expected back), its routes stay in use, marked
    /// stale, until it replaces them, sends End-of-RIB, or the speaker's timer calls
    /// [`Rib::stale_expired`] (the duration is the speaker's to time). Without it, every
    /// route from the peer is withdrawn.
    pub fn peer_down(
        &mut self,
        id: PeerId,
        keep_stale: Option<Duration>,
    ) -> Result<RibChanges, RibError> {
        let peer = self
            .ctx
            .peers
            .get_mut(&id)
            .ok_or(RibError::UnknownPeer(id))?;
        let gr = peer
            .session
            .take()
            .map_or(PeerGracefulRestart::Unknown, |s| s.graceful_restart);
        // The session is gone, and with it what the peer had from us.
        peer.out_v4.reset();
        peer.out_v6.reset();
        let mut batch = Batch::default();
        let edit = match keep_stale {
            // RFC 4724 §4.2: the Receiving Speaker "MUST retain the routes received from the
            // peer for all the address families that were previously received in the
            // Graceful Restart Capability and MUST mark them as stale routing information."
            // And: "To deal with possible consecutive restarts, a route (from the peer)
            // previously marked as stale MUST be deleted." (MarkStale does both.)
            Some(_) => Edit::MarkStale(id.0),
            None => Edit::Remove(id.0),
        };
        let for_family = |f: Family| match (&edit, gr.keeps(f)) {
            (Edit::MarkStale(s), Some(false)) => Edit::Remove(*s),
            (e, _) => e.clone(),
        };
        edit_all::<Ipv4Net>(self, &for_family(Family::IPV4_UNICAST), &mut batch);
        edit_all::<Ipv6Net>(self, &for_family(Family::IPV6_UNICAST), &mut batch);
        let changes = self.finish(batch, false);
        self.ctx.interner.sweep(keep_stale.is_none());
        Ok(changes)
    }

    /// One decoded UPDATE from `id`: withdrawals, then announcements.
    pub fn apply(&mut self, id: PeerId, update: &Update) -> Result<RibChanges, RibError> {
        let peer = self.ctx.peers.get(&id).ok_or(RibError::UnknownPeer(id))?;
        if peer.session.is_none() {
            return Err(RibError::PeerNotUp(id));
        }
        let mut batch = Batch::default();
        let src = id.0;

        // RFC 4271 §4.3: "A BGP speaker SHOULD treat an UPDATE message of this form [the same
        // prefix in WITHDRAWN ROUTES and NLRI] as though the WITHDRAWN ROUTES do not contain
        // the address prefix." Skipped here, not withdrawn and re-added, so neither the FIB
        // nor a peer sees the prefix flap.
        let announced_too: HashSet<IpNet> =
            if update.withdrawn.is_empty() && update.mp_unreach.is_none() {
                HashSet::new()
            } else {
                let v4 = update.nlri.iter().map(|n| IpNet::V4(n.trunc()));
                let mp = update
                    .mp_reach
                    .iter()
                    .flat_map(|m| m.nlri.iter().map(|n| n.trunc()));
                v4.chain(mp).collect()
            };
        for n in &update.withdrawn {
            if !announced_too.contains(&IpNet::V4(n.trunc())) {
                change::<Ipv4Net>(self, n.trunc(), Edit::Remove(src), &mut batch);
            }
        }
        if let Some(mp) = &update.mp_unreach {
            for n in mp
                .withdrawn
                .iter()
                .filter(|n| !announced_too.contains(&n.trunc()))
            {
                withdraw_any(self, *n, mp.family, src, &mut batch);
            }
        }

        let attrs = update.attrs.as_ref();
        let mut announced: Vec<(IpNet, Option<Arc<Attrs>>)> = Vec::new();
        if let Some(base) = attrs.and_then(|a| self.ctx.accept_input(id, a)) {
            if !update.nlri.is_empty() {
                let variant = (base.next_hop.is_some()).then(|| {
                    let mut a = base.clone();
                    a.mp_next_hop.clear();
                    a
                });
                // An IPv4 prefix in both the NLRI field and an IPv4 MP_REACH_NLRI: the MP_REACH
                // one is taken, once, so what the peers are sent has one answer per prefix.
                let in_mp: HashSet<IpNet> = match &update.mp_reach {
                    Some(mp) if mp.family == Family::IPV4_UNICAST => {
                        mp.nlri.iter().map(|n| n.trunc()).collect()
                    }
                    _ => HashSet::new(),
                };
                self.import(
                    id,
                    variant,
                    update
                        .nlri
                        .iter()
                        .map(|n| IpNet::V4(n.trunc()))
                        .filter(|n| !in_mp.contains(n)),
                    &mut announced,
                );
            }
            if let Some(mp) = &update.mp_reach {
                if mp.family.safi == Safi::Unicast && !matches!(mp.family.afi, Afi::Other(_)) {
                    let mut a = base.clone();
                    let variant = match mp.next_hops.first() {
                        // RFC 4760 §3 for IPv4 NLRI with an IPv4 next hop: the same as NEXT_HOP.
                        Some(IpAddr::V4(nh)) if mp.family.afi == Afi::Ipv4 => {
                            a.next_hop = Some(*nh);
                            a.mp_next_hop.clear();
                            Some(a)
                        }
                        Some(_) => {
                            a.next_hop = None;
                            a.mp_next_hop = mp.next_hops.clone();
                            Some(a)
                        }
                        None => None,
                    };
                    let fam = mp.family;
                    self.import(
                        id,
                        variant,
                        mp.nlri
                            .iter()
                            .filter(|n| family_of(**n) == fam)
                            .map(|n| n.trunc()),
                        &mut announced,
                    );
                }
            }
        } else {
            // No usable attributes (absent, or a loop): every announced prefix is withdrawn
            // from this peer (RFC 4271 §9.1.2: a looped route is excluded; RFC 7606's
            // treat-as-withdraw has already moved malformed ones to the withdrawals).
            announced.extend(update.nlri.iter().map(|n| (IpNet::V4(n.trunc()), None)));
            if let Some(mp) = &update.mp_reach {
                announced.extend(mp.nlri.iter().map(|n| (n.trunc(), None)));
            }
        }
        for (prefix, attrs) in announced {
            let edit = match attrs {
                Some(a) => Edit::Set(src, a),
                None => Edit::Remove(src),
            };
            match prefix {
                IpNet::V4(n) => change::<Ipv4Net>(self, n, edit, &mut batch),
                IpNet::V6(n) => change::<Ipv6Net>(self, n, edit, &mut batch),
            }
        }
        Ok(self.finish(batch, false))
    }

    /// Import policy over the prefixes announced with one attribute variant: each gets its
    /// interned attributes, or `None` when rejected. One policy evaluation and one interning
    /// per term that accepts, not per prefix, unless the policy looks at prefixes.
    fn import(
        &mut self,
        id: PeerId,
        variant: Option<Attrs>,
        prefixes: impl Iterator<Item = IpNet>,
        out: &mut Vec<(IpNet, Option<Arc<Attrs>>)>,
    ) {
        let Some(variant) = variant else {
            // No next hop for these NLRI: they cannot be used.
            out.extend(prefixes.map(|p| (p, None)));
            return;
        };
        let peer = &self.ctx.peers[&id];
        // RFC 4271 §6.3: the NEXT_HOP "MUST NOT be the IP address of the receiving speaker"
        // and "If the NEXT_HOP attribute is semantically incorrect, the error SHOULD be
        // logged, and the route SHOULD be ignored." (§5.1.3: "A BGP speaker SHALL NOT install
        // a route with itself as the next hop.") Our addresses are our sessions' ends.
        if let Some(nh) = forward_next_hop(&variant) {
            let ours = self
                .ctx
                .peers
                .values()
                .filter_map(|p| p.session.as_ref())
                .any(|s| match nh {
                    IpAddr::V4(a) => s.next_hop_v4 == Some(a),
                    IpAddr::V6(a) => s.next_hop_v6 == Some(a),
                });
            if ours {
                out.extend(prefixes.map(|p| (p, None)));
                return;
            }
        }
        let policy = peer.cfg.import.as_ref();
        // RFC 8212 §3: "Routes contained in an Adj-RIB-In associated with an EBGP peer SHALL
        // NOT be considered eligible in the Decision Process if no explicit Import Policy has
        // been applied."
        if policy.is_none() && peer.ebgp {
            out.extend(prefixes.map(|p| (p, None)));
            return;
        }
        let mut by_term: HashMap<TermIndex, Arc<Attrs>> = HashMap::new();
        let plain = self.ctx.interner.intern(variant.clone());
        let per_prefix = policy.is_some_and(Policy::depends_on_prefix);
        let mut fixed: Option<Option<TermIndex>> = None;
        for prefix in prefixes {
            let attrs = match policy {
                None => Some(plain.clone()),
                Some(p) => {
                    let term = match fixed {
                        Some(t) if !per_prefix => t,
                        _ => {
                            let t = p.evaluate(prefix, &variant);
                            fixed = Some(t);
                            t
                        }
                    };
                    term.map(|t| {
                        by_term
                            .entry(t)
                            .or_insert_with(|| {
                                let mut a = variant.clone();
                                // Next hop self has no meaning on import: ignored.
                                p.apply(t, &mut a);
                                self.ctx.interner.intern(a)
                            })
                            .clone()
                    })
                }
            };
            out.push((prefix, attrs));
        }
    }

    /// Announce `prefix` ourselves with `attrs` (its next hop is set per peer: our session
    /// address). Replaces an earlier origination of the prefix.
    pub fn originate(&mut self, prefix: IpNet, attrs: Attrs) -> RibChanges {
        self.originate_all([prefix], attrs)
    }

    /// Announce many prefixes with one set of attributes in one call: one change set, so
    /// what goes to each peer is packed (one call per prefix would be one UPDATE each).
    pub fn originate_all(
        &mut self,
        prefixes: impl IntoIterator<Item = IpNet>,
        attrs: Attrs,
    ) -> RibChanges {
        let a = self.ctx.interner.intern(attrs);
        let mut batch = Batch::default();
        for prefix in prefixes {
            let edit = Edit::Set(LOCAL, a.clone());
            match prefix.trunc() {
                IpNet::V4(n) => change::<Ipv4Net>(self, n, edit, &mut batch),
                IpNet::V6(n) => change::<Ipv6Net>(self, n, edit, &mut batch),
            }
        }
        drop(a);
        self.finish(batch, false)
    }

    /// Stop announcing `prefix` ourselves.
    pub fn withdraw_originated(&mut self, prefix: IpNet) -> RibChanges {
        self.withdraw_originated_all([prefix])
    }

    /// Stop announcing many prefixes in one call (one packed change set).
    pub fn withdraw_originated_all(
        &mut self,
        prefixes: impl IntoIterator<Item = IpNet>,
    ) -> RibChanges {
        let mut batch = Batch::default();
        for prefix in prefixes {
            match prefix.trunc() {
                IpNet::V4(n) => change::<Ipv4Net>(self, n, Edit::Remove(LOCAL), &mut batch),
                IpNet::V6(n) => change::<Ipv6Net>(self, n, Edit::Remove(LOCAL), &mut batch),
            }
        }
        self.finish(batch, false)
    }

    /// RFC 4724 §4.2: "Once the End-of-RIB marker for an address family is received from the
    /// peer, it MUST immediately remove any routes from the peer that are still marked as
    /// stale for that address family."
    pub fn end_of_rib(&mut self, id: PeerId, family: Family) -> Result<RibChanges, RibError> {
        if !self.ctx.peers.contains_key(&id) {
            return Err(RibError::UnknownPeer(id));
        }
        let mut batch = Batch::default();
        let edit = Edit::RemoveStale(id.0);
        if family == Family::IPV4_UNICAST {
            edit_all::<Ipv4Net>(self, &edit, &mut batch);
        } else if family == Family::IPV6_UNICAST {
            edit_all::<Ipv6Net>(self, &edit, &mut batch);
        }
        Ok(self.finish(batch, false))
    }

    /// RFC 4724 §4.2: when the restart time (or the stale timer) runs out, "the Receiving
    /// Speaker MUST delete all the stale routes from the peer that it is retaining".
    pub fn stale_expired(&mut self, id: PeerId) -> Result<RibChanges, RibError> {
        if !self.ctx.peers.contains_key(&id) {
            return Err(RibError::UnknownPeer(id));
        }
        let mut batch = Batch::default();
        let edit = Edit::RemoveStale(id.0);
        edit_all::<Ipv4Net>(self, &edit, &mut batch);
        edit_all::<Ipv6Net>(self, &edit, &mut batch);
        let changes = self.finish(batch, false);
        self.ctx.interner.sweep(true);
        Ok(changes)
    }

    /// RFC 2918 §4: on a ROUTE-REFRESH the speaker "advertises to the peer the Adj-RIB-Out of
    /// the local speaker for the AFI/SAFI". The whole of it, unchanged entries included.
    pub fn refresh(&mut self, id: PeerId, family: Family) -> Result<RibChanges, RibError> {
        let peer = self
            .ctx
            .peers
            .get_mut(&id)
            .ok_or(RibError::UnknownPeer(id))?;
        if peer.session.is_none() {
            return Err(RibError::PeerNotUp(id));
        }
        let mut acc = OutAcc::default();
        if family == Family::IPV4_UNICAST {
            for (p, a) in peer.out_v4.iter() {
                acc.announce(a, IpNet::V4(*p));
            }
        } else if family == Family::IPV6_UNICAST {
            for (p, a) in peer.out_v6.iter() {
                acc.announce(a, IpNet::V6(*p));
            }
        }
        let mut batch = Batch::default();
        batch.out.insert(id, acc);
        Ok(batch.finish(true))
    }

    /// Every prefix with its paths, best first, in prefix order (IPv4 then IPv6).
    pub fn routes(&self) -> Vec<RouteView> {
        let mut v: Vec<RouteView> = self
            .v4
            .iter()
            .map(|(p, paths)| self.view(IpNet::V4(*p), paths))
            .chain(
                self.v6
                    .iter()
                    .map(|(p, paths)| self.view(IpNet::V6(*p), paths)),
            )
            .collect();
        v.sort_by_key(|r| r.prefix);
        v
    }

    /// One prefix's paths, best first.
    pub fn route(&self, prefix: IpNet) -> Option<RouteView> {
        match prefix.trunc() {
            IpNet::V4(n) => self.v4.get(&n).map(|p| self.view(prefix, p)),
            IpNet::V6(n) => self.v6.get(&n).map(|p| self.view(prefix, p)),
        }
    }

    /// What the FIB should hold now, as changes from an empty table (for adopting the
    /// kernel's routes at start and for checks): one entry per forwarded prefix.
    pub fn fib(&self) -> Vec<FibChange> {
        let mut v: Vec<FibChange> = self
            .v4
            .iter()
            .map(|(p, paths)| (IpNet::V4(*p), fib_of(paths.as_slice())))
            .chain(
                self.v6
                    .iter()
                    .map(|(p, paths)| (IpNet::V6(*p), fib_of(paths.as_slice()))),
            )
            .filter(|(_, nh)| !nh.is_empty())
            .map(|(prefix, next_hops)| FibChange { prefix, next_hops })
            .collect();
        v.sort_by_key(|c| c.prefix);
        v
    }

    /// What a peer was last sent (its Adj-RIB-Out) for one family, in prefix order.
    pub fn adj_rib_out(&self, id: PeerId, family: Family) -> Vec<(IpNet, Arc<Attrs>)> {
        let Some(peer) = self.ctx.peers.get(&id) else {
            return Vec::new();
        };
        let mut v: Vec<(IpNet, Arc<Attrs>)> = if family == Family::IPV4_UNICAST {
            peer.out_v4
                .iter()
                .map(|(p, a)| (IpNet::V4(*p), a.clone()))
                .collect()
        } else if family == Family::IPV6_UNICAST {
            peer.out_v6
                .iter()
                .map(|(p, a)| (IpNet::V6(*p), a.clone()))
                .collect()
        } else {
            Vec::new()
        };
        v.sort_by_key(|(p, _)| *p);
        v
    }

    /// Counts for status output: prefixes in the Loc-RIB, paths, interned attribute sets.
    pub fn stats(&self) -> RibStats {
        RibStats {
            prefixes: self.v4.len() + self.v6.len(),
            paths: self.v4.values().map(|p| p.as_slice().len()).sum::<usize>()
                + self.v6.values().map(|p| p.as_slice().len()).sum::<usize>(),
            attr_sets: self.ctx.interner.set.len(),
            heap_bytes: self.heap_size(),
        }
    }

    /// An estimate of the heap the RIB holds: hash tables by capacity (buckets, one control
    /// byte each, at the std `HashMap`'s 7/8 load), path vectors, and each attribute set
    /// with its vectors. Allocator overhead is not counted.
    pub fn heap_size(&self) -> usize {
        fn table<K: ShardKey, V>(m: &Table<K, V>) -> usize {
            m.heap_bytes()
        }
        fn many<K: ShardKey>(m: &Table<K, Paths>) -> usize {
            m.values()
                .map(|p| match p {
                    Paths::One(_) => 0,
                    Paths::Many(v) => {
                        std::mem::size_of::<Vec<Path>>()
                            + v.capacity() * std::mem::size_of::<Path>()
                    }
                })
                .sum()
        }
        let attrs: usize = self
            .ctx
            .interner
            .set
            .iter()
            .map(|a| {
                // The Arc's two counters, the value, and what its vectors point to.
                16 + std::mem::size_of::<Attrs>()
                    + a.as_path
                        .segments
                        .iter()
                        .map(|s| std::mem::size_of_val(s) + s.asns.capacity() * 4)
                        .sum::<usize>()
                    + a.mp_next_hop.capacity() * std::mem::size_of::<IpAddr>()
                    + a.communities.capacity() * 4
                    + a.large_communities.capacity() * 12
                    + a.cluster_list.capacity() * 4
                    + a.unknown
                        .iter()
                        .map(|u| 32 + u.value.capacity())
                        .sum::<usize>()
            })
            .sum();
        let peers: usize = self
            .ctx
            .peers
            .values()
            .map(|p| table(&p.out_v4) + table(&p.out_v6))
            .sum();
        table(&self.v4)
            + table(&self.v6)
            + many(&self.v4)
            + many(&self.v6)
            + self.ctx.interner.set.capacity() * 9
            + attrs
            + peers
    }

    fn view(&self, prefix: IpNet, paths: &Paths) -> RouteView {
        RouteView {
            prefix,
            paths: paths
                .as_slice()
                .iter()
                .enumerate()
                .map(|(i, p)| PathView {
                    peer: (p.source != LOCAL).then_some(PeerId(p.source)),
                    attrs: p.attrs.clone(),
                    best: i == 0 && p.selected(),
                    multipath: p.selected(),
                    stale: p.stale(),
                })
                .collect(),
        }
    }

    fn finish(&mut self, batch: Batch, sorted: bool) -> RibChanges {
        let changes = batch.finish(sorted);
        self.ctx.interner.sweep(false);
        changes
    }
}

/// One peer's share of the RIB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCounts {
    /// Its routes in the Loc-RIB (accepted by import policy), stale ones included.
    pub accepted: usize,
    /// Of those, kept by graceful restart and not yet sent again.
    pub stale: usize,
    /// Of those, the best path of their prefix.
    pub best: usize,
    /// Prefixes in its Adj-RIB-Out (what it has from us).
    pub advertised: usize,
}

/// Counts for status output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RibStats {
    pub prefixes: usize,
    pub paths: usize,
    pub attr_sets: usize,
    pub heap_bytes: usize,
}

/// The unicast family a prefix belongs to.
fn family_of(n: IpNet) -> Family {
    match n {
        IpNet::V4(_) => Family::IPV4_UNICAST,
        IpNet::V6(_) => Family::IPV6_UNICAST,
    }
}

fn withdraw_any(rib: &mut Rib, n: IpNet, family: Family, src: u32, batch: &mut Batch) {
    if family_of(n) != family {
        return;
    }
    match n.trunc() {
        IpNet::V4(n) => change::<Ipv4Net>(rib, n, Edit::Remove(src), batch),
        IpNet::V6(n) => change::<Ipv6Net>(rib, n, Edit::Remove(src), batch),
    }
}

impl Ctx {
    fn kind(&self, source: u32) -> SourceKind {
        if source == LOCAL {
            return SourceKind::Local;
        }
        match self.peers.get(&PeerId(source)) {
            Some(p) if p.ebgp => SourceKind::Ebgp,
            Some(p) => SourceKind::Ibgp {
                client: p.cfg.rr_client,
            },
            None => SourceKind::Ebgp,
        }
    }

    /// Input checks and rewrites for one UPDATE's attributes; `None` when its routes must
    /// not be used.
    fn accept_input(&self, id: PeerId, attrs: &Attrs) -> Option<Attrs> {
        let peer = &self.peers[&id];
        // RFC 4271 §9.1.2: "If the AS_PATH attribute of a BGP route contains an AS loop, the
        // BGP route should be excluded from the Phase 2 decision function. AS loop detection
        // is done by scanning the full AS path (as specified in the AS_PATH attribute), and
        // checking that the autonomous system number of the local system does not appear in
        // the AS path."
        if peer.ebgp && attrs.as_path.contains(self.cfg.local_as) {
            return None;
        }
        // RFC 4456 §8: "A router that recognizes the ORIGINATOR_ID attribute SHOULD ignore a
        // route received with its BGP Identifier as the ORIGINATOR_ID."
        if attrs.originator_id == Some(self.cfg.router_id) {
            return None;
        }
        // RFC 4456 §8: "If the local CLUSTER_ID is found in the CLUSTER_LIST, the
        // advertisement received SHOULD be ignored."
        if attrs.cluster_list.contains(&self.cfg.cluster_id()) {
            return None;
        }
        let mut a = attrs.clone();
        if peer.ebgp {
            // RFC 4271 §5.1.5: "If it is contained in an UPDATE message that is received
            // from an external peer, then this attribute MUST be ignored by the receiving
            // speaker, except in the case of BGP Confederations".
            a.local_pref = None;
        }
        a.mp_next_hop.clear();
        Some(a)
    }

    /// What to send `target` for a prefix whose best path is `best` (`None`: nothing).
    fn export<P: Prefix>(
        &mut self,
        cache: &mut ExportCache,
        prefix: P,
        best: Option<&Path>,
        target: PeerId,
    ) -> Option<Arc<Attrs>> {
        let best = best?;
        // Never back to the peer the route came from.
        if best.source == target.0 {
            return None;
        }
        let src_kind = self.kind(best.source);
        let peer = self.peers.get(&target)?;
        if peer.cfg.export_originated_only && src_kind != SourceKind::Local {
            return None;
        }
        let session = peer.session.as_ref()?;
        if !session.families.contains(&P::FAMILY) {
            return None;
        }
        let attrs = &best.attrs;
        // RFC 1997: NO_ADVERTISE: "All routes received carrying a communities attribute
        // containing this value MUST NOT be advertised to other BGP peers."
        if attrs.communities.contains(&Community::NO_ADVERTISE) {
            return None;
        }
        // RFC 1997: NO_EXPORT: "... MUST NOT be advertised outside a BGP confederation
        // boundary" (Twill has no confederations: outside our AS).
        if peer.ebgp && attrs.communities.contains(&Community::NO_EXPORT) {
            return None;
        }
        if !peer.ebgp {
            match src_kind {
                // RFC 4271 §9.2: "When a BGP speaker receives an UPDATE message from an
                // internal peer, the receiving BGP speaker SHALL NOT re-distribute the
                // routing information contained in that UPDATE message to other internal
                // peers (unless the speaker acts as a BGP Route Reflector [RFC2796])."
                // RFC 4456 §6: "2) A route from a Client peer: Reflect to all the Non-Client
                // peers and also to the Client peers."
                SourceKind::Ibgp { client: true } => {}
                // RFC 4456 §6: "1) A route from a Non-Client IBGP peer: Reflect to all the
                // Clients."
                SourceKind::Ibgp { client: false } => {
                    if !(self.reflector && peer.cfg.rr_client) {
                        return None;
                    }
                }
                // RFC 4456 §6: "3) Route from an EBGP peer: Send to all the Client and
                // Non-Client Peers." And our own routes likewise.
                SourceKind::Ebgp | SourceKind::Local => {}
            }
        }
        let term = match &peer.cfg.export {
            // RFC 8212 §3: "Routes SHALL NOT be added to an Adj-RIB-Out associated with an
            // EBGP peer if no explicit Export Policy has been applied."
            None if peer.ebgp => return None,
            None => None,
            Some(p) => Some(p.evaluate(prefix.into(), attrs)?),
        };
        let key = (
            Arc::as_ptr(attrs) as usize,
            best.source,
            target,
            term,
            P::FAMILY == Family::IPV6_UNICAST,
        );
        if let Some(hit) = cache.get(&key) {
            return hit.clone();
        }
        let result = self.export_attrs::<P>(attrs, best.source, src_kind, target, term);
        cache.insert(key, result.clone());
        result
    }

    fn export_attrs<P: Prefix>(
        &mut self,
        attrs: &Attrs,
        source: u32,
        src_kind: SourceKind,
        target: PeerId,
        term: Option<TermIndex>,
    ) -> Option<Arc<Attrs>> {
        let peer = &self.peers[&target];
        let session = peer.session.as_ref()?;
        let mut a = attrs.clone();
        let mut next_hop_self = false;
        if peer.ebgp {
            // RFC 4271 §5.1.2 b): "When a given BGP speaker advertises the route to an
            // external peer, the advertising speaker updates the AS_PATH attribute" by
            // prepending its own AS number.
            a.as_path = a.as_path.prepend(self.cfg.local_as);
            // RFC 4271 §5.1.5: "A BGP speaker MUST NOT include this attribute in UPDATE
            // messages it sends to external peers".
            a.local_pref = None;
            // RFC 4271 §5.1.4: "The MULTI_EXIT_DISC attribute received from a neighboring AS
            // MUST NOT be propagated to other neighboring ASes." Ours (originated here, or
            // set by the export policy below) may be sent.
            if src_kind != SourceKind::Local {
                a.med = None;
            }
            // RFC 4456 §8: ORIGINATOR_ID and CLUSTER_LIST are for within the AS (both are
            // optional non-transitive).
            a.originator_id = None;
            a.cluster_list.clear();
            // RFC 4271 §5.1.3 2): to an external peer the next hop is our address on the
            // session, unless the peer is to keep the route's own next hop (a third-party
            // next hop: Calico's keepOriginalNextHop, for a ToR that routes to the node
            // that owns the block). Our own routes always carry our address.
            next_hop_self = !(peer.cfg.keep_original_next_hop && src_kind != SourceKind::Local);
        } else {
            // RFC 4271 §5.1.5: "LOCAL_PREF is a well-known attribute that SHALL be included in
            // all UPDATE messages that a given BGP speaker sends to other internal peers."
            a.local_pref = Some(attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
            match src_kind {
                // RFC 4271 §5.1.3 1): a route originated here gets our address.
                SourceKind::Local => next_hop_self = true,
                // RFC 4271 §5.1.3: next hop unchanged towards iBGP unless configured.
                SourceKind::Ebgp => next_hop_self = peer.cfg.next_hop_self,
                SourceKind::Ibgp { .. } => {
                    // RFC 4456 §8: ORIGINATOR_ID "will be created by an RR in reflecting a
                    // route ... A BGP speaker SHOULD NOT create an ORIGINATOR_ID attribute
                    // if one already exists."
                    if a.originator_id.is_none() {
                        a.originator_id = self.peers.get(&PeerId(source)).map(|p| p.router_id);
                    }
                    // RFC 4456 §8: "When an RR reflects a route, it MUST prepend the local
                    // CLUSTER_ID to the CLUSTER_LIST."
                    a.cluster_list.insert(0, self.cfg.cluster_id());
                    // RFC 4456 §10: a reflector does not change the next hop of reflected
                    // routes (only an explicit export action below does).
                }
            }
        }
        if let (Some(t), Some(policy)) = (term, &peer.cfg.export) {
            let med_before = a.med;
            next_hop_self |= policy.apply(t, &mut a);
            if peer.ebgp {
                a.local_pref = None;
                if !policy.sets_med(t) {
                    a.med = med_before;
                }
            }
        }
        if (src_kind == SourceKind::Local || next_hop_self)
            && !P::set_next_hop_self(&mut a, session)
        {
            return None;
        }
        if !P::sendable_next_hop(&mut a) {
            return None;
        }
        Some(self.interner.intern(a))
    }

    fn candidate(&self, p: &Path) -> Candidate {
        let a = &p.attrs;
        let (ebgp, router_id, peer_addr) = match self.peers.get(&PeerId(p.source)) {
            Some(peer) => (peer.ebgp, peer.router_id, peer.cfg.remote_addr),
            None => (false, self.cfg.router_id, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        };
        Candidate {
            local: p.source == LOCAL,
            local_pref: a.local_pref,
            as_path_len: a.as_path.path_len(),
            origin: a.origin,
            med: a.med,
            neighbour_as: a.as_path.neighbour_as(),
            ebgp,
            router_id: a.originator_id.unwrap_or(router_id),
            cluster_list_len: a.cluster_list.len(),
            peer_addr,
            source: p.source,
            resolvable: p.source == LOCAL || self.cfg.resolvable(a),
        }
    }
}

/// The next hops a prefix forwards by: its multipath set's when the best path is learned.
fn fib_of(paths: &[Path]) -> Vec<IpAddr> {
    match paths.first() {
        Some(b) if b.selected() && b.source != LOCAL => {}
        _ => return Vec::new(),
    }
    let mut v: Vec<IpAddr> = paths
        .iter()
        .take_while(|p| p.selected())
        .filter_map(|p| forward_next_hop(&p.attrs))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Re-run the decision process on `paths`: order them selected first (best at 0) and mark.
fn reselect(ctx: &Ctx, mut paths: Vec<Path>) -> Option<Paths> {
    if paths.len() == 1 {
        let p = &paths[0];
        let on = p.source == LOCAL || ctx.cfg.resolvable(&p.attrs);
        paths[0].set_selected(on);
        return Paths::from_vec(paths);
    }
    let cands: Vec<Candidate> = paths.iter().map(|p| ctx.candidate(p)).collect();
    let sel = best::select(&cands, ctx.cfg.max_paths);
    let mut ordered = Vec::with_capacity(paths.len());
    let mut rest = Vec::new();
    let mut taken = vec![false; paths.len()];
    for &i in &sel {
        taken[i] = true;
    }
    let mut slots: Vec<Option<Path>> = paths.into_iter().map(Some).collect();
    for &i in &sel {
        if let Some(mut p) = slots[i].take() {
            p.set_selected(true);
            ordered.push(p);
        }
    }
    for (i, slot) in slots.into_iter().enumerate() {
        if let Some(mut p) = slot {
            if !taken[i] {
                p.set_selected(false);
                rest.push(p);
            }
        }
    }
    ordered.extend(rest);
    Paths::from_vec(ordered)
}

/// Apply one edit to one prefix and record what changes in the FIB and towards each peer.
fn change<P: Prefix>(rib: &mut Rib, prefix: P, edit: Edit, batch: &mut Batch) {
    let (table, ctx) = P::table(rib);
    let source = edit.source();
    // Edits that leave the decision alone are done in place.
    if let Some(paths) = table.get_mut(&prefix) {
        let present = paths.as_mut_slice().iter_mut().find(|p| p.source == source);
        match (&edit, present) {
            // An unchanged re-announcement (the same interned attributes) changes nothing but
            // the mark: RFC 4724 §4.2, a route the restarted peer sends again is not stale.
            (Edit::Set(_, a), Some(p)) if Arc::ptr_eq(&p.attrs, a) => {
                p.set_stale(false);
                return;
            }
            (Edit::Set(..), _) => {}
            (_, None) => return,
            (Edit::RemoveStale(_), Some(p)) if !p.stale() => return,
            (Edit::MarkStale(_), Some(p)) if !p.stale() => {
                p.set_stale(true);
                return;
            }
            _ => {}
        }
    } else if !matches!(edit, Edit::Set(..)) {
        return;
    }

    let (old_best, old_fib, mut paths) = match table.remove(&prefix) {
        Some(old) => {
            let b = old
                .best()
                .map(|p| (p.source, Arc::as_ptr(&p.attrs) as usize));
            let f = fib_of(old.as_slice());
            (b, f, old.into_vec())
        }
        None => (None, Vec::new(), Vec::new()),
    };
    match edit {
        Edit::Set(s, a) => match paths.iter_mut().find(|p| p.source == s) {
            Some(p) => {
                p.attrs = a;
                p.set_stale(false);
            }
            None => paths.push(Path {
                attrs: a,
                source: s,
                mark: Mark::Plain,
            }),
        },
        // MarkStale gets here for a path that was stale already: deleted.
        Edit::Remove(s) | Edit::RemoveStale(s) | Edit::MarkStale(s) => {
            paths.retain(|p| p.source != s)
        }
    }
    let new = reselect(ctx, paths);
    let new_fib = new
        .as_ref()
        .map(|p| fib_of(p.as_slice()))
        .unwrap_or_default();
    if new_fib != old_fib {
        batch.fib.push(FibChange {
            prefix: prefix.into(),
            next_hops: new_fib,
        });
    }
    let best = new.as_ref().and_then(Paths::best);
    let new_best = best.map(|p| (p.source, Arc::as_ptr(&p.attrs) as usize));
    // Only the best path is advertised: when it is the same, no peer hears anything.
    if new_best != old_best {
        advertise(ctx, batch, prefix, best);
    }
    if let Some(p) = new {
        table.insert(prefix, p);
    }
}

/// Bring every established peer's Adj-RIB-Out for `prefix` in line with its best path:
/// announce what changed, withdraw what may no longer be sent, and nothing else.
fn advertise<P: Prefix>(ctx: &mut Ctx, batch: &mut Batch, prefix: P, best: Option<&Path>) {
    let targets = batch.targets.get_or_insert_with(|| {
        ctx.peers
            .iter()
            .filter(|(_, p)| p.session.is_some())
            .map(|(id, _)| *id)
            .collect()
    });
    for &target in targets.iter() {
        let want = ctx.export(&mut batch.export_cache, prefix, best, target);
        let Some(peer) = ctx.peers.get_mut(&target) else {
            continue;
        };
        let out = P::adj_out(peer);
        match want {
            // Adj-RIB-Out is diffed: what the peer already has is not sent again.
            Some(a) => {
                if !out.get(&prefix).is_some_and(|old| Arc::ptr_eq(old, &a)) {
                    out.insert(prefix, a.clone());
                    batch
                        .out
                        .entry(target)
                        .or_default()
                        .announce(&a, prefix.into());
                }
            }
            None => {
                if out.remove(&prefix).is_some() {
                    batch
                        .out
                        .entry(target)
                        .or_default()
                        .update
                        .withdraw
                        .push(prefix.into());
                }
            }
        }
    }
}

/// Re-run export for every prefix of a family (after a peer's configuration changed).
fn readvertise_all<P: Prefix>(rib: &mut Rib, batch: &mut Batch) {
    let (table, ctx) = P::table(rib);
    let mut prefixes: Vec<P> = table.iter().map(|(k, _)| *k).collect();
    prefixes.sort_unstable();
    for prefix in prefixes {
        let best = table.get(&prefix).and_then(Paths::best);
        advertise(ctx, batch, prefix, best);
    }
}

/// Apply `edit` (for one source) to every prefix of a family.
fn edit_all<P: Prefix>(rib: &mut Rib, edit: &Edit, batch: &mut Batch) {
    let (table, _) = P::table(rib);
    let source = edit.source();
    let mut prefixes: Vec<P> = table
        .iter()
        .filter(|(_, paths)| {
            paths
                .as_slice()
                .iter()
                .any(|p| p.source == source && (!matches!(edit, Edit::RemoveStale(_)) || p.stale()))
        })
        .map(|(k, _)| *k)
        .collect();
    // In prefix order, so what is sent does not depend on the hash table.
    prefixes.sort_unstable();
    for prefix in prefixes {
        change::<P>(rib, prefix, edit.clone(), batch);
    }
}

/// Send `target` the export of every best path in a family (a new session's initial dump).
fn dump<P: Prefix>(rib: &mut Rib, target: PeerId, batch: &mut Batch) {
    let (table, ctx) = P::table(rib);
    let acc = batch.out.entry(target).or_default();
    for (prefix, paths) in table.iter() {
        if let Some(a) = ctx.export(&mut batch.export_cache, *prefix, paths.best(), target) {
            if let Some(peer) = ctx.peers.get_mut(&target) {
                P::adj_out(peer).insert(*prefix, a.clone());
            }
            acc.announce(&a, (*prefix).into());
        }
    }
}

// The layout the memory figures rest on: one path per prefix costs 16 bytes beside its key.
const _: () = assert!(std::mem::size_of::<Paths>() == 16);

#[cfg(test)]
mod tests;
