//! Path attributes (RFC 4271 §4.3, §5 and the RFCs named at each): one decoder and one
//! encoder per attribute, and the RFC 7606 verdict on each malformed value.
//!
//! Every attribute starts with this header (RFC 4271 §4.3):
//!
//! ```text
//!  0                   1
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Attr. Flags  |Attr. Type Code|   then 1 octet of length, or 2 with Extended Length
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  O T P E 0 0 0 0   (Optional, Transitive, Partial, Extended Length)
//! ```
//!
//! The attribute list as a whole (framing, duplicates, missing attributes, which errors win)
//! is walked in [`super::update`]; this module judges one attribute value at a time.

use std::net::Ipv4Addr;

use super::notification::subcode::update as sub;
use super::wire::{put_u16, put_u32, Reader};
use super::{
    Aggregator, AsPath, AsSegment, AsSegmentKind, Attrs, Community, EncodeError, ErrorAction,
    LargeCommunity, Negotiated, Origin, AS_TRANS,
};

/// Attribute type codes (IANA "BGP Path Attributes").
pub mod code {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    /// RFC 1997.
    pub const COMMUNITIES: u8 = 8;
    /// RFC 4456 §8.
    pub const ORIGINATOR_ID: u8 = 9;
    /// RFC 4456 §8.
    pub const CLUSTER_LIST: u8 = 10;
    /// RFC 4760 §3.
    pub const MP_REACH_NLRI: u8 = 14;
    /// RFC 4760 §4.
    pub const MP_UNREACH_NLRI: u8 = 15;
    /// RFC 4360, passed on as an unknown attribute; only its length is checked (RFC 7606 §7.14).
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    /// RFC 6793 §3.
    pub const AS4_PATH: u8 = 17;
    /// RFC 6793 §3.
    pub const AS4_AGGREGATOR: u8 = 18;
    /// RFC 5701, passed on as an unknown attribute; only its length is checked (RFC 7606 §7.15).
    pub const IPV6_EXTENDED_COMMUNITIES: u8 = 25;
    /// RFC 8092.
    pub const LARGE_COMMUNITY: u8 = 32;
}

/// Attribute flag bits (RFC 4271 §4.3).
pub mod flag {
    /// "the high-order bit (bit 0) ... defines whether the attribute is optional (if set to 1)
    /// or well-known (if set to 0)."
    pub const OPTIONAL: u8 = 0x80;
    /// "The second high-order bit (bit 1) ... defines whether an optional attribute is
    /// transitive (if set to 1) or non-transitive (if set to 0)."
    pub const TRANSITIVE: u8 = 0x40;
    /// "The third high-order bit (bit 2) ... defines whether the information contained in
    /// the optional transitive attribute is partial (if set to 1) or complete".
    pub const PARTIAL: u8 = 0x20;
    /// "The fourth high-order bit (bit 3) ... defines whether the Attribute Length is one
    /// octet (if set to 0) or two octets (if set to 1)."
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// The Optional and Transitive bits each known attribute must carry (the RFCs defining them;
/// RFC 7606 §3 c checks only these two bits).
pub(crate) fn expected_flags(code: u8) -> Option<u8> {
    use flag::*;
    Some(match code {
        code::ORIGIN
        | code::AS_PATH
        | code::NEXT_HOP
        | code::LOCAL_PREF
        | code::ATOMIC_AGGREGATE => TRANSITIVE,
        code::MULTI_EXIT_DISC
        | code::ORIGINATOR_ID
        | code::CLUSTER_LIST
        | code::MP_REACH_NLRI
        | code::MP_UNREACH_NLRI => OPTIONAL,
        code::AGGREGATOR
        | code::COMMUNITIES
        | code::AS4_PATH
        | code::AS4_AGGREGATOR
        | code::LARGE_COMMUNITY => OPTIONAL | TRANSITIVE,
        _ => return None,
    })
}

/// A short name for logs and [`super::AttrError::reason`].
pub fn name(code: u8) -> &'static str {
    match code {
        code::ORIGIN => "ORIGIN",
        code::AS_PATH => "AS_PATH",
        code::NEXT_HOP => "NEXT_HOP",
        code::MULTI_EXIT_DISC => "MULTI_EXIT_DISC",
        code::LOCAL_PREF => "LOCAL_PREF",
        code::ATOMIC_AGGREGATE => "ATOMIC_AGGREGATE",
        code::AGGREGATOR => "AGGREGATOR",
        code::COMMUNITIES => "COMMUNITIES",
        code::ORIGINATOR_ID => "ORIGINATOR_ID",
        code::CLUSTER_LIST => "CLUSTER_LIST",
        code::MP_REACH_NLRI => "MP_REACH_NLRI",
        code::MP_UNREACH_NLRI => "MP_UNREACH_NLRI",
        code::EXTENDED_COMMUNITIES => "EXTENDED_COMMUNITIES",
        code::AS4_PATH => "AS4_PATH",
        code::AS4_AGGREGATOR => "AS4_AGGREGATOR",
        code::IPV6_EXTENDED_COMMUNITIES => "IPV6_EXTENDED_COMMUNITIES",
        code::LARGE_COMMUNITY => "LARGE_COMMUNITY",
        _ => "unknown attribute",
    }
}

/// What RFC 7606 makes of one malformed attribute: the action, the RFC 4271 §6.3 subcode a
/// NOTIFICATION would carry if the UPDATE ends in a session reset, and why.
#[derive(Debug)]
pub(crate) struct Malformed {
    pub action: ErrorAction,
    pub subcode: u8,
    pub reason: String,
}

impl Malformed {
    pub(crate) fn withdraw(subcode: u8, reason: String) -> Malformed {
        Malformed {
            action: ErrorAction::TreatAsWithdraw,
            subcode,
            reason,
        }
    }

    pub(crate) fn discard(subcode: u8, reason: String) -> Malformed {
        Malformed {
            action: ErrorAction::AttributeDiscard,
            subcode,
            reason,
        }
    }

    pub(crate) fn reset(subcode: u8, reason: String) -> Malformed {
        Malformed {
            action: ErrorAction::SessionReset,
            subcode,
            reason,
        }
    }
}

impl Origin {
    pub fn from_u8(v: u8) -> Option<Origin> {
        Some(match v {
            0 => Origin::Igp,
            1 => Origin::Egp,
            2 => Origin::Incomplete,
            _ => return None,
        })
    }
}

// ORIGIN (RFC 4271 §4.3 a, §5.1.1), type 1, well-known mandatory:
//
// +-+-+-+-+-+-+-+-+
// |    ORIGIN     |   0 IGP, 1 EGP, 2 INCOMPLETE
// +-+-+-+-+-+-+-+-+
pub(crate) fn decode_origin(v: &[u8]) -> Result<Origin, Malformed> {
    // RFC 7606 §7.1: "The attribute is considered malformed if its length is not 1 or if it
    // has an undefined value [RFC4271]. An UPDATE message with a malformed ORIGIN attribute
    // SHALL be handled using the approach of "treat-as-withdraw"."
    match v {
        [o] => Origin::from_u8(*o).ok_or_else(|| {
            Malformed::withdraw(sub::INVALID_ORIGIN_ATTRIBUTE, format!("ORIGIN value {o}"))
        }),
        _ => Err(Malformed::withdraw(
            sub::ATTRIBUTE_LENGTH_ERROR,
            format!("ORIGIN length {}, want 1", v.len()),
        )),
    }
}

// AS_PATH (RFC 4271 §4.3 b) and AS4_PATH (RFC 6793 §3): a sequence of segments
//
// +-----------------+------------------+--------------------------------+
// | segment type    | segment length   | segment value: that many ASNs, |
// | (1 octet)       | (1 octet, ASNs)  | 2 or 4 octets each             |
// +-----------------+------------------+--------------------------------+
//
// types 1 AS_SET, 2 AS_SEQUENCE; RFC 5065 adds 3 AS_CONFED_SEQUENCE and 4 AS_CONFED_SET.

const AS_CONFED_SEQUENCE: u8 = 3;
const AS_CONFED_SET: u8 = 4;

/// Decodes AS_PATH segments with `asn_len`-octet AS numbers, or says why they are malformed.
/// `as4` selects AS4_PATH's rules: confederation segments are skipped rather than refused.
pub(crate) fn decode_as_path(v: &[u8], asn_len: usize, as4: bool) -> Result<AsPath, String> {
    let mut r = Reader::new(v);
    let mut segments = Vec::new();
    while !r.is_empty() {
        // RFC 7606 §7.2: a segment is malformed if "There is an underrun where after the last
        // successfully parsed segment there is only a single octet remaining (that is, there
        // is not enough unconsumed data to provide even an empty segment header)."
        let (Some(ty), Some(n)) = (r.u8(), r.u8()) else {
            return Err(format!(
                "segment header truncated at octet {}",
                v.len() - r.remaining() - 1
            ));
        };
        // RFC 7606 §7.2: "It has a Path Segment Length field of zero."
        if n == 0 {
            return Err("segment of length 0".into());
        }
        let want = usize::from(n) * asn_len;
        // RFC 7606 §7.2: "There is an overrun where the Path Segment Length field of the last
        // segment encountered would cause the Attribute Length to be exceeded."
        let Some(asns) = r.take(want) else {
            return Err(format!(
                "segment of {n} ASes needs {want} octets, {} left",
                r.remaining()
            ));
        };
        let kind = match ty {
            1 => AsSegmentKind::Set,
            2 => AsSegmentKind::Sequence,
            // RFC 6793 §4.2.3 counts confederation segments in AS4_PATH as zero ASes; Twill
            // is in no confederation and drops them.
            AS_CONFED_SEQUENCE | AS_CONFED_SET if as4 => continue,
            // RFC 5065 §5.3: a speaker outside the sender's confederation must not receive
            // confederation segments; Twill is in none, so they are a malformed path.
            AS_CONFED_SEQUENCE | AS_CONFED_SET => {
                return Err(format!(
                    "confederation segment (type {ty}) from outside a confederation"
                ))
            }
            // RFC 7606 §7.2: "An AS_PATH is considered malformed if an unrecognized segment
            // type is encountered".
            _ => return Err(format!("unknown segment type {ty}")),
        };
        let mut list = Vec::with_capacity(usize::from(n));
        let mut ar = Reader::new(asns);
        while !ar.is_empty() {
            let asn = if asn_len == 4 {
                ar.u32()
            } else {
                ar.u16().map(u32::from)
            };
            let Some(asn) = asn else { break };
            // RFC 7607 §2: "An UPDATE message that contains the AS number of zero in the
            // AS_PATH attribute MUST be considered as malformed and be handled by the
            // procedures specified in [RFC7606]."
            if asn == 0 {
                return Err("AS 0 in the path (RFC 7607)".into());
            }
            list.push(asn);
        }
        segments.push(AsSegment { kind, asns: list });
    }
    Ok(AsPath { segments })
}

/// Appends AS_PATH segments with four- or two-octet AS numbers; with two, an AS over 65535
/// is written as AS_TRANS (RFC 6793 §4.2.2). A segment longer than 255 ASes is split.
pub(crate) fn encode_as_path(path: &AsPath, four: bool, out: &mut Vec<u8>) {
    for seg in &path.segments {
        for chunk in seg.asns.chunks(255) {
            out.push(seg.kind as u8);
            out.push(chunk.len() as u8);
            for &asn in chunk {
                if four {
                    put_u32(out, asn);
                } else {
                    put_u16(out, u16::try_from(asn).unwrap_or(AS_TRANS));
                }
            }
        }
    }
}

/// RFC 6793 §4.2.2: whether a path needs AS4_PATH beside it for a two-octet peer.
pub(crate) fn needs_as4(path: &AsPath) -> bool {
    path.segments
        .iter()
        .any(|s| s.asns.iter().any(|&a| a > u32::from(u16::MAX)))
}

// NEXT_HOP (RFC 4271 §4.3 c, §5.1.3), type 3, well-known mandatory with IPv4 NLRI:
//
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                    Next hop (IPv4 address)                    |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
pub(crate) fn decode_next_hop(v: &[u8]) -> Result<Ipv4Addr, Malformed> {
    // RFC 7606 §7.3: "The attribute is considered malformed if its length is not 4
    // [RFC4271]. An UPDATE message with a malformed NEXT_HOP attribute SHALL be handled
    // using the approach of "treat-as-withdraw"."
    let Ok(octets) = <[u8; 4]>::try_from(v) else {
        return Err(Malformed::withdraw(
            sub::ATTRIBUTE_LENGTH_ERROR,
            format!("NEXT_HOP length {}, want 4", v.len()),
        ));
    };
    let nh = Ipv4Addr::from(octets);
    // RFC 4271 §6.3: "If the NEXT_HOP attribute field is syntactically incorrect, then the
    // Error Subcode MUST be set to Invalid NEXT_HOP Attribute. ... Syntactic correctness
    // means that the NEXT_HOP attribute represents a valid IP host address." RFC 7606 §7.3
    // makes that treat-as-withdraw. (Whether it is one of our own addresses, the other half
    // of §6.3, is the speaker's check: it knows the addresses.)
    if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
        return Err(Malformed::withdraw(
            sub::INVALID_NEXT_HOP_ATTRIBUTE,
            format!("NEXT_HOP {nh} is not a host address"),
        ));
    }
    Ok(nh)
}

// MULTI_EXIT_DISC (type 4, optional non-transitive), LOCAL_PREF (type 5, well-known) and
// ORIGINATOR_ID (type 9, RFC 4456 §8, optional non-transitive) are one four-octet value:
//
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |        MED / LOCAL_PREF (unsigned) / ORIGINATOR_ID (router ID)|
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

/// A four-octet value (MULTI_EXIT_DISC, LOCAL_PREF, ORIGINATOR_ID).
pub(crate) fn decode_u32(v: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(v).ok().map(u32::from_be_bytes)
}

/// Whether `v` is a non-zero multiple of `unit` octets: the RFC 7606 §7.8/§7.10/§7.14/§7.15 and
/// RFC 8092 §6 rule for list attributes.
pub(crate) fn is_list_of(v: &[u8], unit: usize) -> bool {
    !v.is_empty() && v.len().is_multiple_of(unit)
}

// AGGREGATOR (RFC 4271 §4.3 g, type 7, optional transitive; RFC 6793 §3) and AS4_AGGREGATOR
// (type 18, always four octets of AS):
//
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |  Aggregating AS (2 octets; 4 between NEW speakers and in AS4_) |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |              BGP Identifier of the aggregating router          |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
pub(crate) fn decode_aggregator(v: &[u8], asn_len: usize) -> Option<Aggregator> {
    let mut r = Reader::new(v);
    let asn = if asn_len == 4 {
        r.u32()?
    } else {
        u32::from(r.u16()?)
    };
    let address = r.ipv4()?;
    r.is_empty().then_some(Aggregator { asn, address })
}

fn encode_aggregator(agg: &Aggregator, four: bool, out: &mut Vec<u8>) {
    if four {
        put_u32(out, agg.asn);
    } else {
        put_u16(out, u16::try_from(agg.asn).unwrap_or(AS_TRANS));
    }
    out.extend_from_slice(&agg.address.octets());
}

/// Writes an attribute header with a two-octet length placeholder; [`end`] fills it in and
/// drops back to one octet when the value fits (RFC 4271 §4.3: the Extended Length bit "MAY
/// be used only if the length of the attribute value is greater than 255 octets" is not
/// required, but one octet is what every peer expects for short values).
pub(crate) fn begin(out: &mut Vec<u8>, flags: u8, code: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[flags | flag::EXTENDED_LENGTH, code, 0, 0]);
    at
}

/// Completes the attribute started at `at`; `compact` chooses the one-octet length when the
/// value fits. `Err` when the value is over 65535 octets.
pub(crate) fn end(out: &mut Vec<u8>, at: usize, compact: bool) -> Result<(), EncodeError> {
    let len = out.len() - at - 4;
    if compact && len <= 255 {
        out[at] &= !flag::EXTENDED_LENGTH;
        out[at + 2] = len as u8;
        out.remove(at + 3);
        return Ok(());
    }
    let len16 = u16::try_from(len).map_err(|_| EncodeError::AttributesTooLong { len })?;
    out[at + 2..at + 4].copy_from_slice(&len16.to_be_bytes());
    Ok(())
}

/// Appends the path attributes of `attrs` except MP_REACH/MP_UNREACH, in ascending type code
/// (RFC 4271 §5: "The sender of an UPDATE message SHOULD order path attributes within the
/// UPDATE message in ascending order of attribute type."). NEXT_HOP only when `next_hop`
/// (RFC 4760 §3: "An UPDATE message that carries no NLRI, other than the one encoded in the
/// MP_REACH_NLRI attribute, SHOULD NOT carry the NEXT_HOP attribute.").
pub(crate) fn encode_attrs(
    attrs: &Attrs,
    negotiated: &Negotiated,
    next_hop: bool,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    use flag::*;
    let four = negotiated.four_octet_as;
    // Unknown attributes go in among the known ones by code.
    let mut unknown: Vec<&super::RawAttr> = attrs.unknown.iter().collect();
    unknown.sort_by_key(|a| a.code);
    let mut unknown = unknown.into_iter().peekable();
    let mut flush = |below: u16, out: &mut Vec<u8>| -> Result<(), EncodeError> {
        while let Some(a) = unknown.next_if(|a| u16::from(a.code) < below) {
            // RFC 4271 §5: "If an optional transitive attribute is unrecognized, the Partial
            // bit in the attribute flags octet is set to 1, and the attribute is retained for
            // propagation to other BGP speakers."
            let at = begin(out, (a.flags & !EXTENDED_LENGTH) | PARTIAL, a.code);
            out.extend_from_slice(&a.value);
            end(out, at, true)?;
        }
        Ok(())
    };
    macro_rules! attr {
        ($flags:expr, $code:expr, |$o:ident| $body:expr) => {{
            flush(u16::from($code), out)?;
            let at = begin(out, $flags, $code);
            {
                let $o: &mut Vec<u8> = out;
                $body;
            }
            end(out, at, true)?;
        }};
    }
    attr!(TRANSITIVE, code::ORIGIN, |o| o.push(attrs.origin as u8));
    attr!(TRANSITIVE, code::AS_PATH, |o| encode_as_path(
        &attrs.as_path,
        four,
        o
    ));
    if let (true, Some(nh)) = (next_hop, attrs.next_hop) {
        attr!(TRANSITIVE, code::NEXT_HOP, |o| o
            .extend_from_slice(&nh.octets()));
    }
    if let Some(med) = attrs.med {
        attr!(OPTIONAL, code::MULTI_EXIT_DISC, |o| put_u32(o, med));
    }
    if let Some(lp) = attrs.local_pref {
        attr!(TRANSITIVE, code::LOCAL_PREF, |o| put_u32(o, lp));
    }
    if attrs.atomic_aggregate {
        attr!(TRANSITIVE, code::ATOMIC_AGGREGATE, |_o| {});
    }
    // To a two-octet peer the aggregator goes in AS4_AGGREGATOR (below) when its AS needs four
    // octets, and also whenever AS4_PATH goes out: RFC 6793 §4.2.3 has a NEW receiver ignore
    // AS4_PATH when AGGREGATOR holds any AS but AS_TRANS, which would lose the path's
    // four-octet ASes (and with them loop detection).
    let as4_aggregator = !four
        && attrs
            .aggregator
            .is_some_and(|a| a.asn > u32::from(u16::MAX) || needs_as4(&attrs.as_path));
    if let Some(agg) = &attrs.aggregator {
        let sent = match as4_aggregator {
            true => Aggregator {
                asn: u32::from(AS_TRANS),
                ..*agg
            },
            false => *agg,
        };
        attr!(OPTIONAL | TRANSITIVE, code::AGGREGATOR, |o| {
            encode_aggregator(&sent, four, o)
        });
    }
    if !attrs.communities.is_empty() {
        attr!(OPTIONAL | TRANSITIVE, code::COMMUNITIES, |o| {
            for c in &attrs.communities {
                put_u32(o, c.0);
            }
        });
    }
    if let Some(id) = attrs.originator_id {
        attr!(OPTIONAL, code::ORIGINATOR_ID, |o| o
            .extend_from_slice(&id.octets()));
    }
    if !attrs.cluster_list.is_empty() {
        attr!(OPTIONAL, code::CLUSTER_LIST, |o| {
            for id in &attrs.cluster_list {
                o.extend_from_slice(&id.octets());
            }
        });
    }
    if !four {
        // RFC 6793 §4.2.2: "Whenever the AS path information contains an AS number that is
        // non-mappable to a two-octet AS number ..., the NEW BGP speaker MUST send the
        // AS4_PATH attribute along with the existing AS_PATH attribute, and the AS4_PATH
        // attribute MUST carry the AS path information in the four-octet AS number format."
        if needs_as4(&attrs.as_path) {
            attr!(OPTIONAL | TRANSITIVE, code::AS4_PATH, |o| encode_as_path(
                &attrs.as_path,
                true,
                o
            ));
        }
        // RFC 6793 §4.2.2: "if the AGGREGATOR attribute is to be sent and the AS number of
        // the aggregating router is non-mappable ..., then the NEW BGP speaker MUST use
        // AS_TRANS ... in the AGGREGATOR attribute, and MUST send the AS4_AGGREGATOR
        // attribute with the four-octet AS number".
        if let Some(agg) = attrs.aggregator.filter(|_| as4_aggregator) {
            attr!(OPTIONAL | TRANSITIVE, code::AS4_AGGREGATOR, |o| {
                encode_aggregator(&agg, true, o)
            });
        }
    }
    if !attrs.large_communities.is_empty() {
        attr!(OPTIONAL | TRANSITIVE, code::LARGE_COMMUNITY, |o| {
            for c in &attrs.large_communities {
                put_u32(o, c.global);
                put_u32(o, c.local1);
                put_u32(o, c.local2);
            }
        });
    }
    flush(256, out)
}

// COMMUNITIES (RFC 1997, type 8, optional transitive): a list of
//
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |          AS (2 octets)        |         Value (2 octets)      |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

/// Decodes a COMMUNITIES value already checked by [`is_list_of`].
pub(crate) fn decode_communities(v: &[u8]) -> Vec<Community> {
    v.chunks_exact(4)
        .map(|c| Community(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

// LARGE_COMMUNITY (RFC 8092 §3, type 32, optional transitive): a list of
//
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                      Global Administrator                     |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                       Local Data Part 1                       |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                       Local Data Part 2                       |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

/// Decodes a LARGE_COMMUNITY value already checked by [`is_list_of`].
pub(crate) fn decode_large_communities(v: &[u8]) -> Vec<LargeCommunity> {
    v.chunks_exact(12)
        .filter_map(|c| {
            let mut r = Reader::new(c);
            Some(LargeCommunity {
                global: r.u32()?,
                local1: r.u32()?,
                local2: r.u32()?,
            })
        })
        .collect()
}

// CLUSTER_LIST (RFC 4456 §8, type 10, optional non-transitive): a list of
//
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                    CLUSTER_ID (4 octets)                      |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// (ATOMIC_AGGREGATE, type 6, well-known discretionary, has no value at all.)

/// Decodes a CLUSTER_LIST value already checked by [`is_list_of`].
pub(crate) fn decode_cluster_list(v: &[u8]) -> Vec<Ipv4Addr> {
    v.chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect()
}
