//! The BGP-4 wire vocabulary and its codec: messages, capabilities and path attributes as
//! types, and the pure functions that turn them into bytes and back.
//!
//! The data types every layer shares are defined here; the encoders and decoders live in the
//! submodules (one per message, [`attribute`] for path attributes). Decoding depends on what
//! the session negotiated (four-octet AS numbers, the address families, iBGP or eBGP), so it
//! takes a [`Negotiated`] value rather than guessing. Nothing here does I/O.
//!
//! The contract the speaker and the FSM use:
//! - [`frame`]`(buf)`: the length of the first complete message in a receive buffer,
//!   `None` while incomplete, or the header error as the NOTIFICATION to send (1/1, 1/2, 1/3).
//! - [`decode`]`(msg, &Negotiated)`: one whole message. `Err` is a session reset with that
//!   NOTIFICATION. A decoded UPDATE has RFC 7606 applied already: treat-as-withdraw moved its
//!   announced prefixes into `withdrawn` / `mp_unreach` and dropped `attrs`, attribute-discard
//!   removed the attribute, and each decision is in [`Update::errors`].
//! - [`encode`]`(&Message, &Negotiated, out)`: appends one message.
//! - [`encode_announce`] / [`encode_withdraw`]: pack routes into as many ≤ 4096-octet UPDATEs
//!   as needed, many prefixes per message.
//!
//! Every decoder is total: any input gives `Ok` or `Err`, never a panic (reads go through a
//! bounds-checked reader, lengths are widened before arithmetic). The fuzz targets rely on it.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

pub mod attribute;
pub mod header;
pub mod notification;
pub mod open;
pub mod refresh;
pub mod update;
mod wire;

pub use header::frame;
pub use notification::subcode;
pub use update::{encode_announce, encode_withdraw};

/// RFC 4271 §4.1: the marker, length and type that start every message.
pub const HEADER_LEN: usize = 19;
/// RFC 4271 §4.1: "The value of the Length field MUST always be at least 19 and no greater
/// than 4096". (RFC 8654 extended messages are not negotiated by Twill.)
pub const MAX_MESSAGE_LEN: usize = 4096;
/// RFC 4271 §4.2: BGP version 4.
pub const BGP_VERSION: u8 = 4;
/// RFC 6793 §9: the two-octet placeholder a four-octet AS number is sent as.
pub const AS_TRANS: u16 = 23456;

/// Address family identifier (IANA "Address Family Numbers").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Afi {
    Ipv4,
    Ipv6,
    /// Any other number: carried in capabilities and ROUTE-REFRESH, never routed.
    Other(u16),
}

/// Subsequent address family identifier (RFC 4760 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Safi {
    Unicast,
    Other(u8),
}

/// An AFI/SAFI pair as capabilities, MP_REACH/MP_UNREACH and ROUTE-REFRESH carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Family {
    pub afi: Afi,
    pub safi: Safi,
}

impl Family {
    pub const IPV4_UNICAST: Family = Family {
        afi: Afi::Ipv4,
        safi: Safi::Unicast,
    };
    pub const IPV6_UNICAST: Family = Family {
        afi: Afi::Ipv6,
        safi: Safi::Unicast,
    };
}

/// What the two ends of one session agreed in their OPENs. Decoding and encoding an UPDATE
/// depend on it (RFC 6793: AS numbers are two or four octets; RFC 4760: which families may
/// appear in MP_REACH/MP_UNREACH).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Both sides sent the four-octet AS capability (RFC 6793 §3).
    pub four_octet_as: bool,
    /// Families both sides announced with the multiprotocol capability. A session with no
    /// multiprotocol capability on either side carries IPv4 unicast only (RFC 4760 §8).
    pub families: Vec<Family>,
    /// Both OPENs name the same AS: an internal (iBGP) session. RFC 7606 §7.5, §7.9 and
    /// §7.10 treat LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST differently on each kind.
    pub ibgp: bool,
}

impl Default for Negotiated {
    /// Before OPENs are exchanged: what RFC 4271 alone allows (an eBGP session).
    fn default() -> Self {
        Negotiated {
            four_octet_as: false,
            families: vec![Family::IPV4_UNICAST],
            ibgp: false,
        }
    }
}

/// One BGP message (RFC 4271 §4, RFC 2918 for ROUTE-REFRESH).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    /// Boxed: an UPDATE is many times the size of every other message.
    Update(Box<Update>),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

/// The message type octet (RFC 4271 §4.1, RFC 2918 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Open = 1,
    Update = 2,
    Notification = 3,
    Keepalive = 4,
    RouteRefresh = 5,
}

impl Message {
    /// Its type octet (RFC 4271 §4.1), e.g. for RFC 6608's FSM error data.
    pub fn kind(&self) -> MessageType {
        match self {
            Message::Open(_) => MessageType::Open,
            Message::Update(_) => MessageType::Update,
            Message::Notification(_) => MessageType::Notification,
            Message::Keepalive => MessageType::Keepalive,
            Message::RouteRefresh(_) => MessageType::RouteRefresh,
        }
    }
}

/// RFC 4271 §4.2 OPEN, with its optional parameters decoded as capabilities (RFC 5492).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The two-octet "My Autonomous System" field: [`AS_TRANS`] when the real AS needs four
    /// octets (then [`Capability::FourOctetAs`] carries it).
    pub my_as: u16,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The sender's AS: the four-octet capability's when present (RFC 6793 §3), else `my_as`.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }
}

/// A capability advertised in OPEN (RFC 5492 §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// RFC 4760 §8, code 1.
    Multiprotocol(Family),
    /// RFC 2918 §2, code 2.
    RouteRefresh,
    /// RFC 4724 §3, code 64.
    GracefulRestart(GracefulRestart),
    /// RFC 6793 §3, code 65.
    FourOctetAs(u32),
    /// Any capability Twill does not act on, kept so it can be logged and re-encoded.
    Unknown { code: u8, value: Vec<u8> },
}

/// The graceful restart capability (RFC 4724 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// "Restart State" (R) bit: the sender has restarted.
    pub restarting: bool,
    /// Seconds the sender needs to come back; 12 bits on the wire.
    pub restart_time: u16,
    pub families: Vec<GracefulRestartFamily>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracefulRestartFamily {
    pub family: Family,
    /// "Forwarding State" (F) bit: forwarding for this family was kept across the restart.
    pub forwarding_preserved: bool,
}

/// RFC 4271 §4.3 UPDATE, with RFC 4760's MP_REACH_NLRI / MP_UNREACH_NLRI pulled out of the
/// attribute list because they carry routes, not route properties.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Update {
    /// IPv4 "Withdrawn Routes".
    pub withdrawn: Vec<Ipv4Net>,
    /// The path attributes, `None` when the message carries none (a pure withdrawal, or an
    /// End-of-RIB marker).
    pub attrs: Option<Attrs>,
    /// IPv4 "Network Layer Reachability Information".
    pub nlri: Vec<Ipv4Net>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// What RFC 7606 made of the attributes when this UPDATE was decoded; empty for an UPDATE
    /// built locally. Not encoded.
    pub errors: Vec<AttrError>,
}

/// RFC 4760 §3 MP_REACH_NLRI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpReach {
    pub family: Family,
    /// One next hop, or for IPv6 a global and a link-local one (RFC 2545 §3).
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<IpNet>,
}

/// RFC 4760 §4 MP_UNREACH_NLRI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<IpNet>,
}

/// The path attributes of a route (RFC 4271 §5 and the RFCs named per field), minus
/// MP_REACH/MP_UNREACH. A RIB shares one `Attrs` among every prefix announced with it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attrs {
    /// ORIGIN, well-known mandatory.
    pub origin: Origin,
    /// AS_PATH, well-known mandatory. Always held with four-octet AS numbers: for a
    /// two-octet peer the decoder merges AS4_PATH in (RFC 6793 §4.2.3) and the encoder
    /// splits it back out.
    pub as_path: AsPath,
    /// NEXT_HOP: mandatory for IPv4 NLRI in the UPDATE body; absent when routes only come in
    /// MP_REACH (which has its own next hop).
    pub next_hop: Option<Ipv4Addr>,
    /// The next hop(s) of the MP_REACH_NLRI these attributes travel with, for non-IPv4
    /// routes (RFC 4760 §3; for IPv6 a global and optionally a link-local address, RFC 2545
    /// §3). A decoded UPDATE leaves this empty (its [`MpReach::next_hops`] has them); the RIB
    /// copies them in when it stores a route, so a path's next hop is one of its shared
    /// attributes, and `encode_announce` writes MP_REACH's next hop from here for IPv6 NLRI.
    pub mp_next_hop: Vec<IpAddr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only, RFC 4271 §5.1.5).
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    /// AGGREGATOR, held with a four-octet AS (merged from AS4_AGGREGATOR for two-octet peers).
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES (RFC 1997), in received order.
    pub communities: Vec<Community>,
    /// LARGE_COMMUNITY (RFC 8092), in received order.
    pub large_communities: Vec<LargeCommunity>,
    /// ORIGINATOR_ID (RFC 4456 §8).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456 §8), nearest reflector first.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Attributes Twill does not know, passed on when optional transitive (RFC 4271 §5:
    /// with the Partial bit set).
    pub unknown: Vec<RawAttr>,
}

impl Attrs {
    /// The attributes of a route this speaker originates itself.
    pub fn local(origin: Origin) -> Attrs {
        Attrs {
            origin,
            as_path: AsPath::default(),
            next_hop: None,
            mp_next_hop: Vec::new(),
            med: None,
            local_pref: None,
            atomic_aggregate: false,
            aggregator: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
            unknown: Vec::new(),
        }
    }
}

/// ORIGIN values (RFC 4271 §5.1.1); the order is the best-path preference (lower wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// AS_PATH (RFC 4271 §4.3, §5.1.2), with four-octet AS numbers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// RFC 4271 §9.1.2.2 a): "an AS_SET counts as 1, no matter how many ASes are in the set".
    pub fn path_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                AsSegmentKind::Sequence => s.asns.len(),
                AsSegmentKind::Set => 1,
            })
            .sum()
    }

    /// The neighbouring AS a route was learned from: the first AS of a leading AS_SEQUENCE
    /// (RFC 4271 §9.1.2.2 c, used to decide whether two MEDs compare).
    pub fn neighbour_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(AsSegment {
                kind: AsSegmentKind::Sequence,
                asns,
            }) => asns.first().copied(),
            _ => None,
        }
    }

    /// Whether `asn` appears anywhere (RFC 4271 §9.1.2: loop detection).
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// The path with `asn` put in front, as a speaker does when sending to an external peer
    /// (RFC 4271 §5.1.2 b).
    pub fn prepend(&self, asn: u32) -> AsPath {
        let mut segments = self.segments.clone();
        match segments.first_mut() {
            Some(s) if s.kind == AsSegmentKind::Sequence && s.asns.len() < 255 => {
                s.asns.insert(0, asn)
            }
            _ => segments.insert(
                0,
                AsSegment {
                    kind: AsSegmentKind::Sequence,
                    asns: vec![asn],
                },
            ),
        }
        AsPath { segments }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AsSegment {
    pub kind: AsSegmentKind,
    pub asns: Vec<u32>,
}

/// AS_PATH segment types (RFC 4271 §4.3: 1 AS_SET, 2 AS_SEQUENCE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AsSegmentKind {
    Set = 1,
    Sequence = 2,
}

/// AGGREGATOR (RFC 4271 §5.1.7), with a four-octet AS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Aggregator {
    pub asn: u32,
    pub address: Ipv4Addr,
}

/// A standard community (RFC 1997): two octets of AS, two of value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

impl Community {
    /// RFC 1997: well-known NO_EXPORT.
    pub const NO_EXPORT: Community = Community(0xFFFF_FF01);
    /// RFC 1997: well-known NO_ADVERTISE.
    pub const NO_ADVERTISE: Community = Community(0xFFFF_FF02);
}

/// A large community (RFC 8092): global administrator and two local data parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    pub global: u32,
    pub local1: u32,
    pub local2: u32,
}

/// An attribute kept as it arrived: flags, type code and value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawAttr {
    pub flags: u8,
    pub code: u8,
    pub value: Vec<u8>,
}

/// What RFC 7606 decided about one malformed attribute of a received UPDATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrError {
    /// The attribute type code (0 when the attribute list itself was malformed).
    pub code: u8,
    pub action: ErrorAction,
    /// Human-readable cause for logs and `twill bgp neighbors`, e.g. "ORIGIN length 2, want 1".
    pub reason: String,
}

/// RFC 7606 §2 error handling approaches, weakest first. An UPDATE's overall outcome is the
/// strongest action among its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorAction {
    /// "Attribute discard": the attribute is dropped, the routes stay.
    AttributeDiscard,
    /// "Treat-as-withdraw": every route the UPDATE announced is handled as withdrawn.
    TreatAsWithdraw,
    /// "Session reset" (via NOTIFICATION): only where the RFC requires it.
    SessionReset,
}

/// RFC 4271 §4.5 NOTIFICATION.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: ErrorCode,
    pub subcode: u8,
    pub data: Vec<u8>,
}

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 2918 / 7313 for 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MessageHeader,
    OpenMessage,
    UpdateMessage,
    HoldTimerExpired,
    FsmError,
    Cease,
    RouteRefresh,
    Other(u8),
}

/// RFC 2918 §3 ROUTE-REFRESH (the reserved octet is RFC 7313's message subtype; 0 here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRefresh {
    pub family: Family,
}

/// Why a message could not be encoded. Only messages built wrongly get here: every message
/// Twill builds itself fits, and [`encode_announce`] splits routes to fit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "the message would be {len} octets, over BGP's limit of 4096 (RFC 4271 §4.1): \
         send fewer routes per UPDATE (encode_announce and encode_withdraw split them)"
    )]
    TooLong { len: usize },
    #[error(
        "the path attributes alone take {len} octets, so no prefix fits in a 4096-octet \
         UPDATE: shorten the AS path or the communities"
    )]
    AttributesTooLong { len: usize },
    #[error(
        "the OPEN's optional parameters would be {len} octets, over the 255 its length \
         field holds: announce fewer capabilities"
    )]
    OptionalParametersTooLong { len: usize },
    #[error(
        "capability {code} would carry {len} octets, over the 253 a capability parameter \
         holds: announce fewer families in it"
    )]
    CapabilityTooLong { code: u8, len: usize },
    #[error(
        "routes of {family} need a next hop of their family (RFC 4760 §3, RFC 2545 §3): \
         NEXT_HOP for IPv4, Attrs::mp_next_hop (MpReach::next_hops) with an IPv6 global and \
         optionally a link-local address for IPv6"
    )]
    MissingNextHop { family: Family },
    #[error(
        "routes of {family} cannot be sent on this session: the peer did not negotiate the \
         family (RFC 4760 §8); announce it on both sides or filter these routes out"
    )]
    FamilyNotNegotiated { family: Family },
}

/// Decodes one whole message, header included, as [`frame`] delimited it. `Err` is the
/// NOTIFICATION to send before closing the session.
pub fn decode(msg: &[u8], negotiated: &Negotiated) -> Result<Message, Notification> {
    let Some(head) = msg.get(..HEADER_LEN) else {
        return Err(Notification::header(
            subcode::header::BAD_MESSAGE_LENGTH,
            header::length_data(msg.len()),
        ));
    };
    let (len, kind) = header::check(head)?;
    // The header's length is the message's: anything else is a framing bug or a forged
    // length (RFC 4271 §6.1 "Bad Message Length").
    if len != msg.len() {
        return Err(Notification::header(
            subcode::header::BAD_MESSAGE_LENGTH,
            header::length_data(len),
        ));
    }
    let body = msg.get(HEADER_LEN..).unwrap_or_default();
    Ok(match kind {
        MessageType::Open => Message::Open(open::decode(body)?),
        MessageType::Update => Message::Update(Box::new(update::decode(body, negotiated)?)),
        MessageType::Notification => Message::Notification(notification::decode(body)?),
        // The header check made its length exactly 19.
        MessageType::Keepalive => Message::Keepalive,
        MessageType::RouteRefresh => Message::RouteRefresh(refresh::decode(msg)?),
    })
}

/// Appends one message to `out`. On error `out` is left as it was.
pub fn encode(
    msg: &Message,
    negotiated: &Negotiated,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let kind = match msg {
        Message::Open(_) => MessageType::Open,
        Message::Update(_) => MessageType::Update,
        Message::Notification(_) => MessageType::Notification,
        Message::Keepalive => MessageType::Keepalive,
        Message::RouteRefresh(_) => MessageType::RouteRefresh,
    };
    let at = header::start(out, kind);
    let body = match msg {
        Message::Open(o) => open::encode(o, out),
        Message::Update(u) => update::encode(u, negotiated, out),
        Message::Notification(n) => {
            notification::encode(n, out);
            Ok(())
        }
        Message::Keepalive => Ok(()),
        Message::RouteRefresh(rr) => {
            refresh::encode(rr, out);
            Ok(())
        }
    };
    let done =
        body.and_then(|()| header::finish(out, at).map_err(|len| EncodeError::TooLong { len }));
    if done.is_err() {
        out.truncate(at);
    }
    done
}
