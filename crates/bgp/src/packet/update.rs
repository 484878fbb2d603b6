//! UPDATE (RFC 4271 §4.3) with MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760), RFC 7606 error
//! handling, the AS4 merge (RFC 6793 §4.2.3), End-of-RIB (RFC 4724 §2) and the packing
//! encoders.
//!
//! ```text
//! +-----------------------------------------------------+
//! |   Withdrawn Routes Length (2 octets)                |
//! +-----------------------------------------------------+
//! |   Withdrawn Routes (variable)                       |
//! +-----------------------------------------------------+
//! |   Total Path Attribute Length (2 octets)            |
//! +-----------------------------------------------------+
//! |   Path Attributes (variable)                        |
//! +-----------------------------------------------------+
//! |   Network Layer Reachability Information (variable) |
//! +-----------------------------------------------------+
//!
//! A prefix in Withdrawn Routes and NLRI (and inside MP_REACH/MP_UNREACH):
//! +---------------------------+
//! |   Length (1 octet, bits)  |
//! +---------------------------+
//! |   Prefix (variable)       |   ceil(Length / 8) octets
//! +---------------------------+
//! ```
//!
//! # What RFC 7606 makes of each error (the decisions, in one place)
//!
//! | error | outcome | NOTIFICATION when reset |
//! |---|---|---|
//! | Withdrawn Routes Length or Total Path Attribute Length overruns the message | session reset (§3 b) | 3/1 |
//! | Withdrawn Routes or NLRI prefix length > 32, or a prefix overruns the field | session reset (§3 i, §5.3, §3 j) | 3/10 |
//! | attribute header or value overruns the attribute list | treat-as-withdraw, NLRI found by the Total Path Attribute Length (§4) | 3/1 |
//! | O/T flags of a known attribute wrong | treat-as-withdraw (§3 c) | 3/4 |
//! | unknown attribute with the Optional bit clear | session reset (RFC 4271 §6.3, not revised by RFC 7606; BIRD withdraws) | 3/2 with the attribute |
//! | ORIGIN, AS_PATH, NEXT_HOP, MED malformed | treat-as-withdraw (§7.1–§7.4) | 3/5, 3/6, 3/11, 3/8 |
//! | LOCAL_PREF, ORIGINATOR_ID, CLUSTER_LIST from an eBGP peer | attribute discard (§7.5, §7.9, §7.10) | – |
//! | LOCAL_PREF, ORIGINATOR_ID, CLUSTER_LIST malformed from an iBGP peer | treat-as-withdraw | 3/5, 3/9 |
//! | ATOMIC_AGGREGATE, AGGREGATOR malformed | attribute discard (§7.6, §7.7) | – |
//! | COMMUNITIES, LARGE_COMMUNITY, EXTENDED_COMMUNITIES malformed | treat-as-withdraw (§7.8, RFC 8092 §6, §7.14, §7.15) | 3/9 |
//! | AS4_PATH / AS4_AGGREGATOR malformed, or sent by a four-octet peer | attribute discard (RFC 6793 §6, §4.1) | – |
//! | an attribute twice | all but the first discarded (§3 g) | – |
//! | MP_REACH_NLRI or MP_UNREACH_NLRI twice | session reset (§3 g) | 3/1 |
//! | MP_REACH_NLRI / MP_UNREACH_NLRI malformed (flags, length, next hop length, NLRI) | session reset (§5.3, §7.11, RFC 4760 §7; Twill does not do "AFI/SAFI disable") | 3/9 |
//! | MP_REACH_NLRI / MP_UNREACH_NLRI for a family not negotiated | attribute discard: its routes are ignored (as BIRD; RFC 4760 §7 is about incorrect attributes, not unexpected families) | – |
//! | ORIGIN or AS_PATH missing with routes announced; NEXT_HOP missing with NLRI | treat-as-withdraw (§3 d) | 3/3 |
//! | path attributes but no reachable NLRI, and any error but attribute discard | session reset (§5.2) | that error's |
//! | several errors | the strongest action (§3 h) | the first error of that strength |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::attribute::{self, code, flag, Malformed};
use super::header;
use super::notification::subcode::update as sub;
use super::wire::{patch_u16, put_u16, Reader};
use super::{
    Aggregator, AsPath, AsSegment, AsSegmentKind, AttrError, Attrs, EncodeError, ErrorAction,
    Family, MessageType, MpReach, MpUnreach, Negotiated, Notification, Origin, RawAttr, Update,
    AS_TRANS, HEADER_LEN, MAX_MESSAGE_LEN,
};

impl Update {
    /// The End-of-RIB marker for `family` (RFC 4724 §2: "An UPDATE message with no reachable
    /// Network Layer Reachability Information (NLRI) and empty withdrawn NLRI is specified as
    /// the End-of-RIB marker ... For the IPv4 unicast address family, the End-of-RIB marker
    /// is an UPDATE message with the minimum length ... For any other address family, it is
    /// an UPDATE message that contains only the MP_UNREACH_NLRI attribute with no withdrawn
    /// routes for that <AFI, SAFI>.").
    pub fn end_of_rib(family: Family) -> Update {
        if family == Family::IPV4_UNICAST {
            Update::default()
        } else {
            Update {
                mp_unreach: Some(MpUnreach {
                    family,
                    withdrawn: Vec::new(),
                }),
                ..Update::default()
            }
        }
    }

    /// The family this UPDATE is the End-of-RIB marker of, if it is one.
    pub fn end_of_rib_family(&self) -> Option<Family> {
        if !self.withdrawn.is_empty()
            || !self.nlri.is_empty()
            || self.attrs.is_some()
            || self.mp_reach.is_some()
        {
            return None;
        }
        match &self.mp_unreach {
            None => Some(Family::IPV4_UNICAST),
            Some(u) if u.withdrawn.is_empty() => Some(u.family),
            Some(_) => None,
        }
    }

    /// RFC 4724 §2: whether this is an End-of-RIB marker (see [`Update::end_of_rib`]).
    pub fn is_end_of_rib(&self) -> bool {
        self.end_of_rib_family().is_some()
    }

    /// The strongest RFC 7606 action taken while decoding (§3 h), `None` for a clean UPDATE.
    pub fn worst_error(&self) -> Option<ErrorAction> {
        self.errors.iter().map(|e| e.action).max()
    }
}

// ===== prefixes =====

/// RFC 7606 §5.3: "The NLRI field or Withdrawn Routes field SHALL be considered "incorrect"
/// if either of the following is true: a) The length of any of the included NLRI is greater
/// than 32. b) When parsing NLRI fields, the length of the last NLRI found exceeds the amount
/// of unconsumed data remaining in the field." No allocation beyond `out`.
fn decode_v4(bytes: &[u8], out: &mut Vec<Ipv4Net>) -> Result<(), String> {
    // The shortest prefix is one octet; most are four (a /24).
    out.reserve(bytes.len() / 4);
    let mut r = Reader::new(bytes);
    while let Some((a, len)) = next_prefix::<4>(&mut r, "IPv4")? {
        // RFC 4271 §4.3: "the value of trailing bits is irrelevant": masked off here.
        let net = Ipv4Net::new(Ipv4Addr::from(a), len).map_err(|e| e.to_string())?;
        out.push(net.trunc());
    }
    Ok(())
}

/// As [`decode_v4`] for IPv6 (RFC 4760 §5, RFC 7606 §5.3 a: "an IPv6 NLRI has a length
/// greater than 128").
fn decode_v6(bytes: &[u8], out: &mut Vec<IpNet>) -> Result<(), String> {
    out.reserve(bytes.len() / 9);
    let mut r = Reader::new(bytes);
    while let Some((a, len)) = next_prefix::<16>(&mut r, "IPv6")? {
        let net = Ipv6Net::new(Ipv6Addr::from(a), len).map_err(|e| e.to_string())?;
        out.push(IpNet::V6(net.trunc()));
    }
    Ok(())
}

/// The next prefix of an NLRI field (RFC 4271 §4.3: a length in bits, then just the octets
/// it needs) as an `N`-octet address, zero-padded; `None` at the end of the field.
fn next_prefix<const N: usize>(
    r: &mut Reader<'_>,
    family: &str,
) -> Result<Option<([u8; N], u8)>, String> {
    let Some(len) = r.u8() else {
        return Ok(None);
    };
    if usize::from(len) > N * 8 {
        return Err(format!("{family} prefix length {len}"));
    }
    let n = usize::from(len).div_ceil(8);
    let Some(p) = r.take(n) else {
        return Err(format!("a /{len} needs {n} octets, {} left", r.remaining()));
    };
    let mut a = [0u8; N];
    if let Some(dst) = a.get_mut(..n) {
        dst.copy_from_slice(p);
    }
    Ok(Some((a, len)))
}

/// Appends one prefix in the NLRI encoding.
fn put_prefix(out: &mut Vec<u8>, net: &IpNet) {
    let len = net.prefix_len();
    let n = usize::from(len).div_ceil(8);
    out.push(len);
    match net {
        IpNet::V4(v4) => out.extend_from_slice(&v4.network().octets()[..n]),
        IpNet::V6(v6) => out.extend_from_slice(&v6.network().octets()[..n]),
    }
}

fn prefix_wire_len(net: &IpNet) -> usize {
    1 + usize::from(net.prefix_len()).div_ceil(8)
}

// ===== decoding =====

/// The attribute list of one UPDATE while it is walked.
#[derive(Default)]
struct Walk {
    origin: Option<Origin>,
    as_path: Option<AsPath>,
    next_hop: Option<Ipv4Addr>,
    med: Option<u32>,
    local_pref: Option<u32>,
    atomic_aggregate: bool,
    aggregator: Option<Aggregator>,
    communities: Vec<super::Community>,
    large_communities: Vec<super::LargeCommunity>,
    originator_id: Option<Ipv4Addr>,
    cluster_list: Vec<Ipv4Addr>,
    unknown: Vec<RawAttr>,
    as4_path: Option<AsPath>,
    as4_aggregator: Option<Aggregator>,
    mp_reach: Option<MpReach>,
    mp_unreach: Option<MpUnreach>,
    /// An MP_REACH_NLRI was present but discarded (a family not negotiated).
    mp_reach_ignored: bool,
    /// Type codes seen, for RFC 7606 §3 g.
    seen: [u64; 4],
    /// Any attribute other than MP_UNREACH_NLRI (RFC 7606 §5.2), or an unparsable list.
    other_than_unreach: bool,
    /// The list could not be walked to its end (RFC 7606 §4): attributes after the break are
    /// unknown, so none is reported missing.
    broken: bool,
    errors: Vec<AttrError>,
    /// The NOTIFICATION subcode and data of the first error stronger than attribute discard,
    /// in case RFC 7606 §5.2 turns the UPDATE into a session reset.
    first_withdraw: Option<(u8, Vec<u8>)>,
}

impl Walk {
    fn seen(&mut self, code: u8) -> bool {
        let (word, bit) = (usize::from(code / 64), code % 64);
        let Some(w) = self.seen.get_mut(word) else {
            return false;
        };
        let was = *w & (1 << bit) != 0;
        *w |= 1 << bit;
        was
    }

    fn was_seen(&self, code: u8) -> bool {
        let (word, bit) = (usize::from(code / 64), code % 64);
        self.seen.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Records one decision. `raw` is the whole attribute, a reset's NOTIFICATION data (RFC
    /// 4271 §6.3: "the Data field MUST contain the erroneous attribute (type, length, and
    /// value)").
    fn record(&mut self, code: u8, m: Malformed, raw: &[u8]) {
        if m.action > ErrorAction::AttributeDiscard && self.first_withdraw.is_none() {
            self.first_withdraw = Some((m.subcode, raw.to_vec()));
        }
        self.errors.push(AttrError {
            code,
            action: m.action,
            reason: m.reason,
        });
    }
}

/// A session reset for a malformed UPDATE.
fn reset(subcode: u8, data: Vec<u8>) -> Notification {
    Notification::update(subcode, data)
}

/// Decodes an UPDATE body (after the header) and applies RFC 7606 to it.
pub(crate) fn decode(body: &[u8], neg: &Negotiated) -> Result<Update, Notification> {
    let mut r = Reader::new(body);
    // RFC 7606 §3 b: "If the Withdrawn Routes Length or Total Attribute Length is too large
    // (i.e., if Withdrawn Routes Length + Total Attribute Length + 23 exceeds the message
    // Length), then the Error Subcode MUST be set to Malformed Attribute List."
    let list_err = || reset(sub::MALFORMED_ATTRIBUTE_LIST, Vec::new());
    let wlen = r.u16().ok_or_else(list_err)?;
    let withdrawn_bytes = r.take(usize::from(wlen)).ok_or_else(list_err)?;
    let tpal = r.u16().ok_or_else(list_err)?;
    let attr_bytes = r.take(usize::from(tpal)).ok_or_else(list_err)?;
    let nlri_bytes = r.rest();

    let mut update = Update::default();
    // RFC 7606 §3 i: "The Withdrawn Routes field MUST be checked for syntactic correctness in
    // the same manner as the NLRI field." §3 j: to use treat-as-withdraw "the entire NLRI
    // field and/or the MP_REACH_NLRI and MP_UNREACH_NLRI attributes need to be successfully
    // parsed ... If this is not possible, the procedures of [RFC4271] ... continue to apply,
    // meaning that the "session reset" approach ... MUST be followed." RFC 4271 §6.3: "If the
    // field is syntactically incorrect, then the Error Subcode MUST be set to Invalid Network
    // Field." (BIRD sends 3/10 too.)
    decode_v4(withdrawn_bytes, &mut update.withdrawn)
        .map_err(|_| reset(sub::INVALID_NETWORK_FIELD, Vec::new()))?;
    decode_v4(nlri_bytes, &mut update.nlri)
        .map_err(|_| reset(sub::INVALID_NETWORK_FIELD, Vec::new()))?;

    let mut w = Walk::default();
    walk_attributes(attr_bytes, neg, &mut w)?;

    let reach = !update.nlri.is_empty()
        || w.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty())
        || w.mp_reach_ignored;
    if reach {
        // RFC 7606 §3 d: "If any of the well-known mandatory attributes are not present in an
        // UPDATE message, then "treat-as-withdraw" MUST be used. (Note that [RFC4760]
        // reclassifies NEXT_HOP as what is effectively discretionary.)" NEXT_HOP is required
        // when there are IPv4 NLRI in the body (RFC 4271 §5.1.3).
        // (After a framing error the attributes past it are unknown, not missing.)
        let v4 = !update.nlri.is_empty();
        for c in [code::ORIGIN, code::AS_PATH, code::NEXT_HOP] {
            if !w.broken && (c != code::NEXT_HOP || v4) && !w.was_seen(c) {
                w.record(
                    c,
                    Malformed::withdraw(
                        sub::MISSING_WELL_KNOWN_ATTRIBUTE,
                        format!("missing mandatory {}", attribute::name(c)),
                    ),
                    &[c],
                );
            }
        }
    } else if w.other_than_unreach && w.first_withdraw.is_some() {
        // RFC 7606 §5.2: "if an UPDATE message is encountered that does contain path
        // attributes other than MP_UNREACH_NLRI and doesn't encode any reachable NLRI, we
        // cannot be confident that the NLRI have been successfully parsed as Section 3 (j)
        // requires. For this reason, if any path attribute errors are encountered in such an
        // UPDATE message and if any encountered error specifies an error handling approach
        // other than "attribute discard", then the "session reset" approach MUST be used."
        let (subcode, data) = w.first_withdraw.take().unwrap_or_default();
        return Err(reset(subcode, data));
    }

    if !neg.four_octet_as {
        merge_as4(&mut w);
    }

    update.mp_reach = w.mp_reach.take();
    update.mp_unreach = w.mp_unreach.take();
    let withdraw = w.first_withdraw.is_some();
    // Attributes only matter with routes they apply to: an UPDATE that only withdraws (or
    // whose routes were all in a discarded MP_REACH_NLRI) carries none.
    let routes = !update.nlri.is_empty() || update.mp_reach.is_some();
    if routes && !withdraw {
        // Both are present: a missing one was recorded as treat-as-withdraw above.
        if let (Some(origin), Some(as_path)) = (w.origin, w.as_path.take()) {
            update.attrs = Some(Attrs {
                origin,
                as_path,
                next_hop: w.next_hop,
                med: w.med,
                local_pref: w.local_pref,
                atomic_aggregate: w.atomic_aggregate,
                aggregator: w.aggregator,
                communities: std::mem::take(&mut w.communities),
                large_communities: std::mem::take(&mut w.large_communities),
                originator_id: w.originator_id,
                cluster_list: std::mem::take(&mut w.cluster_list),
                mp_next_hop: Vec::new(),
                unknown: std::mem::take(&mut w.unknown),
            });
        }
    }
    if withdraw {
        // RFC 7606 §2: "treat-as-withdraw": "In this approach, the UPDATE message containing
        // the path attribute in question MUST be treated as though all contained routes had
        // been withdrawn just as if they had been listed in the WITHDRAWN ROUTES field (or in
        // the MP_UNREACH_NLRI attribute if appropriate) of the UPDATE message".
        treat_as_withdraw(&mut update);
    }
    update.errors = w.errors;
    Ok(update)
}

/// Moves every announced prefix to the withdrawn ones and drops the attributes.
fn treat_as_withdraw(u: &mut Update) {
    u.attrs = None;
    let mut nlri = std::mem::take(&mut u.nlri);
    u.withdrawn.append(&mut nlri);
    let Some(reach) = u.mp_reach.take() else {
        return;
    };
    let to_v4 = |nets: Vec<IpNet>, out: &mut Vec<Ipv4Net>| {
        out.extend(nets.into_iter().filter_map(|n| match n {
            IpNet::V4(v4) => Some(v4),
            IpNet::V6(_) => None,
        }))
    };
    match &mut u.mp_unreach {
        None => {
            u.mp_unreach = Some(MpUnreach {
                family: reach.family,
                withdrawn: reach.nlri,
            })
        }
        Some(un) if un.family == reach.family => un.withdrawn.extend(reach.nlri),
        // The UPDATE withdrew one family and announced the other (RFC 7606 §5.1 says to be
        // ready for it). IPv4 unicast can always go in Withdrawn Routes, which frees
        // `mp_unreach` for the other; only the two unicast families get this far.
        Some(_) if reach.family == Family::IPV4_UNICAST => to_v4(reach.nlri, &mut u.withdrawn),
        Some(un) => {
            let old = std::mem::replace(
                un,
                MpUnreach {
                    family: reach.family,
                    withdrawn: reach.nlri,
                },
            );
            to_v4(old.withdrawn, &mut u.withdrawn);
        }
    }
}

/// RFC 6793 §4.2.3: rebuilding the four-octet path and aggregator from an OLD speaker's
/// AS_PATH/AGGREGATOR and AS4_PATH/AS4_AGGREGATOR.
fn merge_as4(w: &mut Walk) {
    let as4_path = w.as4_path.take();
    let as4_agg = w.as4_aggregator.take();
    // "If the AGGREGATOR attribute contains an AS number other than AS_TRANS, then: the
    // AS4_AGGREGATOR attribute and the AS4_PATH attribute SHALL be ignored, the AGGREGATOR
    // attribute SHALL be taken as the information about the aggregating node, and the
    // AS_PATH attribute SHALL be taken as the AS path information."
    if let Some(agg) = w.aggregator {
        if agg.asn != u32::from(AS_TRANS) {
            if as4_path.is_some() || as4_agg.is_some() {
                let m = Malformed::discard(
                    sub::OPTIONAL_ATTRIBUTE_ERROR,
                    format!(
                        "AS4_PATH/AS4_AGGREGATOR ignored: AGGREGATOR has AS {} (RFC 6793 §4.2.3)",
                        agg.asn
                    ),
                );
                let c = if as4_path.is_some() {
                    code::AS4_PATH
                } else {
                    code::AS4_AGGREGATOR
                };
                w.record(c, m, &[]);
            }
            return;
        }
        // "Otherwise, the AGGREGATOR attribute SHALL be ignored and the AS4_AGGREGATOR
        // attribute SHALL be taken as the information about the aggregating node."
        if let Some(a4) = as4_agg {
            w.aggregator = Some(a4);
        }
    } else if as4_agg.is_some() {
        // AS4_AGGREGATOR stands in for AGGREGATOR's AS_TRANS; without one it describes no
        // aggregation this route has.
        let m = Malformed::discard(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            "AS4_AGGREGATOR without AGGREGATOR ignored (RFC 6793 §4.2.3)".into(),
        );
        w.record(code::AS4_AGGREGATOR, m, &[]);
    }
    let (Some(as4), Some(path)) = (as4_path, w.as_path.as_mut()) else {
        return;
    };
    // "In the case that the number of AS numbers in the AS_PATH attribute is smaller than the
    // number of AS numbers contained in the AS4_PATH attribute, the AS4_PATH attribute SHALL
    // be ignored, and the AS_PATH attribute SHALL be taken as the AS path information."
    let (have, want) = (path.path_len(), as4.path_len());
    if have < want {
        let m = Malformed::discard(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            format!("AS4_PATH of {want} ASes ignored: AS_PATH has only {have} (RFC 6793 §4.2.3)"),
        );
        w.record(code::AS4_PATH, m, &[]);
        return;
    }
    // "... the NEW BGP speaker ... MUST take the leading (number of AS numbers in AS_PATH
    // minus number in AS4_PATH) AS numbers of the AS_PATH attribute, and ... prepend them to
    // the AS4_PATH attribute" (an AS_SET counting as one AS).
    let mut keep = have - want;
    let mut merged: Vec<AsSegment> = Vec::new();
    for seg in &path.segments {
        if keep == 0 {
            break;
        }
        match seg.kind {
            AsSegmentKind::Set => {
                merged.push(seg.clone());
                keep -= 1;
            }
            AsSegmentKind::Sequence => {
                let n = keep.min(seg.asns.len());
                merged.push(AsSegment {
                    kind: AsSegmentKind::Sequence,
                    asns: seg.asns[..n].to_vec(),
                });
                keep -= n;
            }
        }
    }
    for seg in as4.segments {
        match merged.last_mut() {
            Some(last)
                if last.kind == AsSegmentKind::Sequence
                    && seg.kind == AsSegmentKind::Sequence
                    && last.asns.len() + seg.asns.len() <= 255 =>
            {
                last.asns.extend(seg.asns)
            }
            _ => merged.push(seg),
        }
    }
    path.segments = merged;
}

/// Walks the path attribute list (RFC 4271 §4.3, RFC 7606 §4), judging each attribute.
/// `Err` only for the session resets that cannot wait for the whole list (§3 g duplicate
/// MP_REACH/MP_UNREACH, §5.3 and §7.11 malformed MP_REACH/MP_UNREACH).
fn walk_attributes(bytes: &[u8], neg: &Negotiated, w: &mut Walk) -> Result<(), Notification> {
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        let start = r.rest();
        let flags = r.u8().unwrap_or(0);
        let code = r.u8();
        let len = match code {
            None => None,
            Some(_) if flags & flag::EXTENDED_LENGTH != 0 => r.u16().map(usize::from),
            Some(_) => r.u8().map(usize::from),
        };
        // RFC 7606 §4: "There are two error cases in which the Total Attribute Length value
        // can be in conflict with the enclosed path attributes ... the length of the last
        // encountered path attribute would cause the Total Attribute Length to be exceeded
        // ... fewer than three octets remain (or fewer than four octets, if the Attribute
        // Flags field has the Extended Length bit set) when beginning to parse the attribute.
        // ... In either of these cases, an error condition exists and the "treat-as-withdraw"
        // approach MUST be used ..., and the Total Attribute Length MUST be relied upon to
        // enable the beginning of the NLRI field to be located."
        let (Some(code), Some(len)) = (code, len) else {
            let at = bytes.len() - start.len();
            framing_error(
                w,
                format!("attribute header truncated at octet {at}"),
                start,
            );
            return Ok(());
        };
        let Some(value) = r.take(len) else {
            let at = bytes.len() - start.len();
            let m = format!(
                "{} (code {code}) length {len} overruns the attribute list at octet {at}",
                attribute::name(code)
            );
            framing_error(w, m, start);
            return Ok(());
        };
        let raw = start.get(..start.len() - r.remaining()).unwrap_or(start);
        if code != code::MP_UNREACH_NLRI {
            w.other_than_unreach = true;
        }
        // RFC 7606 §3 g: "If the MP_REACH_NLRI attribute or the MP_UNREACH_NLRI [RFC4760]
        // attribute appears more than once in the UPDATE message, then a NOTIFICATION message
        // MUST be sent with the Error Subcode "Malformed Attribute List". If any other
        // attribute (whether recognized or unrecognized) appears more than once in an UPDATE
        // message, then all the occurrences of the attribute other than the first one SHALL
        // be discarded and the UPDATE message will continue to be processed."
        if w.seen(code) {
            if code == code::MP_REACH_NLRI || code == code::MP_UNREACH_NLRI {
                return Err(reset(sub::MALFORMED_ATTRIBUTE_LIST, Vec::new()));
            }
            let m = Malformed::discard(
                sub::MALFORMED_ATTRIBUTE_LIST,
                format!(
                    "duplicate {} (code {code}) discarded",
                    attribute::name(code)
                ),
            );
            w.record(code, m, raw);
            continue;
        }
        if let Err(m) = one_attribute(flags, code, value, neg, w) {
            if m.action == ErrorAction::SessionReset {
                return Err(reset(m.subcode, raw.to_vec()));
            }
            w.record(code, m, raw);
        }
    }
    Ok(())
}

fn framing_error(w: &mut Walk, reason: String, rest: &[u8]) {
    w.other_than_unreach = true;
    w.broken = true;
    w.record(
        0,
        Malformed::withdraw(sub::MALFORMED_ATTRIBUTE_LIST, reason),
        rest,
    );
}

/// Judges and stores one attribute. `Err` is the RFC 7606 verdict on a malformed one.
fn one_attribute(
    flags: u8,
    code: u8,
    v: &[u8],
    neg: &Negotiated,
    w: &mut Walk,
) -> Result<(), Malformed> {
    let name = attribute::name(code);
    // RFC 7606 §7.5: "if the LOCAL_PREF attribute is received from an external neighbor, it
    // SHALL be discarded using the approach of "attribute discard""; §7.9 and §7.10 say the
    // same of ORIGINATOR_ID and CLUSTER_LIST.
    if !neg.ibgp
        && matches!(
            code,
            code::LOCAL_PREF | code::ORIGINATOR_ID | code::CLUSTER_LIST
        )
    {
        return Err(Malformed::discard(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            format!("{name} from an external peer discarded"),
        ));
    }
    let ot = flags & (flag::OPTIONAL | flag::TRANSITIVE);
    if let Some(want) = attribute::expected_flags(code) {
        if ot != want {
            let reason = format!("{name} flags {flags:#04x}, want O/T {want:#04x}");
            // RFC 7606 §5.3: MP_REACH/MP_UNREACH are incorrect if "c) The attribute flags of
            // the attribute are inconsistent with those specified in [RFC4760]."
            if code == code::MP_REACH_NLRI || code == code::MP_UNREACH_NLRI {
                return Err(Malformed::reset(sub::OPTIONAL_ATTRIBUTE_ERROR, reason));
            }
            // RFC 7606 §3 c: "If the value of either the Optional or Transitive bits in the
            // Attribute Flags is in conflict with their specified values, then the attribute
            // MUST be treated as malformed and the "treat-as-withdraw" approach used, unless
            // the specification for the attribute mandates different handling for incorrect
            // Attribute Flags."
            return Err(Malformed::withdraw(sub::ATTRIBUTE_FLAGS_ERROR, reason));
        }
    }
    let len_err = |want: &str| {
        Malformed::withdraw(
            sub::ATTRIBUTE_LENGTH_ERROR,
            format!("{name} length {}, want {want}", v.len()),
        )
    };
    let opt_err = |want: &str| {
        Malformed::withdraw(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            format!("{name} length {}, want {want}", v.len()),
        )
    };
    let asn_len = if neg.four_octet_as { 4 } else { 2 };
    match code {
        code::ORIGIN => w.origin = Some(attribute::decode_origin(v)?),
        // RFC 7606 §7.2: "An UPDATE message with a malformed AS_PATH attribute SHALL be
        // handled using the approach of "treat-as-withdraw"."
        code::AS_PATH => {
            let path = attribute::decode_as_path(v, asn_len, false).map_err(|e| {
                Malformed::withdraw(sub::MALFORMED_AS_PATH, format!("AS_PATH: {e}"))
            })?;
            w.as_path = Some(path);
        }
        code::NEXT_HOP => w.next_hop = Some(attribute::decode_next_hop(v)?),
        // RFC 7606 §7.4: "The attribute is considered malformed if its length is not 4
        // [RFC4271]. An UPDATE message with a malformed MULTI_EXIT_DISC attribute SHALL be
        // handled using the approach of "treat-as-withdraw"."
        code::MULTI_EXIT_DISC => {
            w.med = Some(attribute::decode_u32(v).ok_or_else(|| len_err("4"))?)
        }
        // RFC 7606 §7.5: "if received from an internal neighbor, it SHALL be considered
        // malformed if its length is not equal to 4. If malformed, the UPDATE message SHALL be
        // handled using the approach of "treat-as-withdraw"."
        code::LOCAL_PREF => {
            w.local_pref = Some(attribute::decode_u32(v).ok_or_else(|| len_err("4"))?)
        }
        code::ATOMIC_AGGREGATE => {
            // RFC 7606 §7.6: "The attribute SHALL be considered malformed if its length is
            // not 0 [RFC4271]. An UPDATE message with a malformed ATOMIC_AGGREGATE attribute
            // SHALL be handled using the approach of "attribute discard"."
            if !v.is_empty() {
                return Err(Malformed::discard(
                    sub::ATTRIBUTE_LENGTH_ERROR,
                    format!("{name} length {}, want 0", v.len()),
                ));
            }
            w.atomic_aggregate = true;
        }
        code::AGGREGATOR => {
            // RFC 7606 §7.7: "The error conditions specified in [RFC4271] for the attribute
            // are revised as follows: The AGGREGATOR attribute SHALL be considered malformed
            // if any of the following applies: o Its length is not 6 (when the 4-octet AS
            // number capability is not advertised to or not received from the peer ...). o
            // Its length is not 8 (when the 4-octet AS number capability is both advertised
            // to and received from the peer). An UPDATE message with a malformed AGGREGATOR
            // attribute SHALL be handled using the approach of "attribute discard"."
            let agg = attribute::decode_aggregator(v, asn_len).ok_or_else(|| {
                Malformed::discard(
                    sub::ATTRIBUTE_LENGTH_ERROR,
                    format!("{name} length {}, want {}", v.len(), asn_len + 4),
                )
            })?;
            // RFC 7607 §2: "An UPDATE message that contains the AS number of zero in the ...
            // AGGREGATOR attribute MUST be considered as malformed and be handled by the
            // procedures specified in [RFC7606]" (attribute discard, §7.7).
            if agg.asn == 0 {
                return Err(Malformed::discard(
                    sub::OPTIONAL_ATTRIBUTE_ERROR,
                    format!("{name} with AS 0 (RFC 7607)"),
                ));
            }
            w.aggregator = Some(agg);
        }
        code::COMMUNITIES => {
            // RFC 7606 §7.8: "The error handling of [RFC1997] is revised as follows: The
            // Community attribute SHALL be considered malformed if its length is not a
            // non-zero multiple of 4. An UPDATE message with a malformed Community attribute
            // SHALL be handled using the approach of "treat-as-withdraw"."
            if !attribute::is_list_of(v, 4) {
                return Err(opt_err("a non-zero multiple of 4"));
            }
            w.communities = attribute::decode_communities(v);
        }
        code::ORIGINATOR_ID => {
            // RFC 7606 §7.9: "if received from an internal neighbor, it SHALL be considered
            // malformed if its length is not equal to 4. If malformed, the UPDATE message
            // SHALL be handled using the approach of "treat-as-withdraw"."
            let id = attribute::decode_u32(v).ok_or_else(|| opt_err("4"))?;
            w.originator_id = Some(Ipv4Addr::from(id));
        }
        code::CLUSTER_LIST => {
            // RFC 7606 §7.10: "if received from an internal neighbor, it SHALL be considered
            // malformed if its length is not a non-zero multiple of 4. If malformed, the
            // UPDATE message SHALL be handled using the approach of "treat-as-withdraw"."
            if !attribute::is_list_of(v, 4) {
                return Err(opt_err("a non-zero multiple of 4"));
            }
            w.cluster_list = attribute::decode_cluster_list(v);
        }
        code::MP_REACH_NLRI => decode_mp_reach(v, neg, w)?,
        code::MP_UNREACH_NLRI => decode_mp_unreach(v, neg, w)?,
        code::AS4_PATH | code::AS4_AGGREGATOR if neg.four_octet_as => {
            // RFC 6793 §4.1: "A NEW BGP speaker MUST NOT send the AS4_PATH or AS4_AGGREGATOR
            // ... to a NEW speaker"; one that arrives anyway is not used (the AS_PATH already
            // has four-octet AS numbers) and is discarded.
            return Err(Malformed::discard(
                sub::OPTIONAL_ATTRIBUTE_ERROR,
                format!("{name} from a four-octet AS peer discarded"),
            ));
        }
        code::AS4_PATH => {
            // RFC 6793 §6: "the AS4_PATH attribute ... SHALL be considered malformed if: - the
            // attribute length is not a multiple of two or is too small (i.e., less than 6)
            // for the attribute to carry at least one AS number, or - the path segment length
            // in the attribute is either zero or is inconsistent with the attribute length,
            // or - the path segment type in the attribute is not one of the types defined
            // ... A NEW BGP speaker that receives a malformed AS4_AGGREGATOR or AS4_PATH
            // attribute in an UPDATE message from an OLD BGP speaker MUST discard the
            // attribute and continue processing the UPDATE message."
            if !v.len().is_multiple_of(2) || v.len() < 6 {
                return Err(Malformed::discard(
                    sub::OPTIONAL_ATTRIBUTE_ERROR,
                    format!("{name} length {}", v.len()),
                ));
            }
            let p = attribute::decode_as_path(v, 4, true).map_err(|e| {
                Malformed::discard(sub::OPTIONAL_ATTRIBUTE_ERROR, format!("{name}: {e}"))
            })?;
            w.as4_path = Some(p);
        }
        code::AS4_AGGREGATOR => {
            // RFC 6793 §6: "The AS4_AGGREGATOR attribute in an UPDATE message SHALL be
            // considered malformed if the attribute length is not 8." Discarded as above.
            let agg = attribute::decode_aggregator(v, 4)
                .filter(|a| a.asn != 0)
                .ok_or_else(|| {
                    Malformed::discard(
                        sub::OPTIONAL_ATTRIBUTE_ERROR,
                        format!("{name} length {} or AS 0", v.len()),
                    )
                })?;
            w.as4_aggregator = Some(agg);
        }
        code::LARGE_COMMUNITY => {
            // RFC 8092 §6: "A BGP UPDATE message with a malformed Large Communities attribute
            // SHALL be handled using the approach of "treat-as-withdraw" ... A Large
            // Communities attribute SHALL be considered malformed if the length of the Large
            // Communities Attribute value, expressed in octets, is not a non-zero multiple of
            // 12."
            if !attribute::is_list_of(v, 12) {
                return Err(opt_err("a non-zero multiple of 12"));
            }
            w.large_communities = attribute::decode_large_communities(v);
        }
        _ => unknown_attribute(flags, code, v, w)?,
    }
    Ok(())
}

/// An attribute Twill does not interpret.
fn unknown_attribute(flags: u8, code: u8, v: &[u8], w: &mut Walk) -> Result<(), Malformed> {
    if flags & flag::OPTIONAL == 0 {
        // RFC 4271 §6.3: "If any of the well-known mandatory attributes are not recognized,
        // then the Error Subcode MUST be set to Unrecognized Well-known Attribute. The Data
        // field MUST contain the unrecognized attribute (type, length, and value)." RFC 7606
        // does not revise this case (its §3 c is about attributes whose flags are specified),
        // so it stays a session reset. BIRD treats it as withdraw instead ("Unknown
        // attribute (code 99) - conflicting flags (40)"); the RFC does not allow that here.
        return Err(Malformed::reset(
            sub::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
            format!("unknown attribute {code} with well-known flags {flags:#04x}"),
        ));
    }
    if flags & flag::TRANSITIVE == 0 {
        // RFC 4271 §5: "If an optional non-transitive attribute is unrecognized, it is
        // quietly ignored."
        return Ok(());
    }
    // Attributes passed on without being interpreted still get their length checked where
    // RFC 7606 defines one.
    let unit = match code {
        // RFC 7606 §7.14: "The error handling of [RFC4360] is revised by specifying that any
        // extended community attribute SHALL be considered malformed if its length is not a
        // non-zero multiple of 8. An UPDATE message with a malformed extended community
        // attribute SHALL be handled using the approach of "treat-as-withdraw"."
        code::EXTENDED_COMMUNITIES => Some(8),
        // RFC 7606 §7.15: the same for the IPv6 Address Specific Extended Community with 20.
        code::IPV6_EXTENDED_COMMUNITIES => Some(20),
        _ => None,
    };
    if let Some(unit) = unit {
        if !attribute::is_list_of(v, unit) {
            return Err(Malformed::withdraw(
                sub::OPTIONAL_ATTRIBUTE_ERROR,
                format!(
                    "{} length {}, want a non-zero multiple of {unit}",
                    attribute::name(code),
                    v.len()
                ),
            ));
        }
    }
    // RFC 4271 §5: "If an optional transitive attribute is unrecognized, the Partial bit in
    // the attribute flags octet is set to 1, and the attribute is retained for propagation
    // to other BGP speakers." The bit is set when it is encoded.
    w.unknown.push(RawAttr {
        flags: flags & !flag::EXTENDED_LENGTH,
        code,
        value: v.to_vec(),
    });
    Ok(())
}

/// A family the codec decodes, negotiated on this session; else `None` and the attribute is
/// discarded (see the table in the module doc).
fn usable_family(family: Family, neg: &Negotiated) -> bool {
    (family == Family::IPV4_UNICAST || family == Family::IPV6_UNICAST) && neg.has_family(family)
}

// MP_REACH_NLRI (RFC 4760 §3):
//
// +---------------------------------------------------------+
// | Address Family Identifier (2 octets)                    |
// +---------------------------------------------------------+
// | Subsequent Address Family Identifier (1 octet)          |
// +---------------------------------------------------------+
// | Length of Next Hop Network Address (1 octet)            |
// +---------------------------------------------------------+
// | Network Address of Next Hop (variable)                  |
// +---------------------------------------------------------+
// | Reserved (1 octet)                                      |
// +---------------------------------------------------------+
// | Network Layer Reachability Information (variable)       |
// +---------------------------------------------------------+
fn decode_mp_reach(v: &[u8], neg: &Negotiated, w: &mut Walk) -> Result<(), Malformed> {
    // RFC 4760 §7: "If a BGP speaker receives from a neighbor an UPDATE message that contains
    // the MP_REACH_NLRI or MP_UNREACH_NLRI attribute, and the speaker determines that the
    // attribute is incorrect, ... In addition, the speaker may terminate the BGP session
    // ... The session SHOULD be terminated with the Notification message code/subcode
    // indicating "UPDATE Message Error"/"Optional Attribute Error"." Twill terminates: RFC
    // 7606 §7.11 allows "session reset" or "AFI/SAFI disable", and a reset is the one that
    // leaves no half-trusted routes behind.
    let bad = |why: String| {
        Malformed::reset(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            format!("MP_REACH_NLRI {why}"),
        )
    };
    let mut r = Reader::new(v);
    // RFC 7606 §5.3 d: "the length of the MP_REACH_NLRI attribute is less than 5".
    let (Some(afi), Some(safi), Some(nh_len)) = (r.u16(), r.u8(), r.u8()) else {
        return Err(bad(format!("length {}, want at least 5", v.len())));
    };
    let family = Family::new(afi, safi);
    let Some(nh) = r.take(usize::from(nh_len)) else {
        return Err(bad(format!(
            "next hop length {nh_len} overruns the attribute"
        )));
    };
    if !usable_family(family, neg) {
        w.mp_reach_ignored = true;
        return Err(Malformed::discard(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            format!("MP_REACH_NLRI for {family}, not negotiated: its routes are ignored"),
        ));
    }
    // RFC 7606 §7.11: "If the Length of Next Hop Network Address field of the MP_REACH
    // attribute is inconsistent with that which was expected, the attribute is considered
    // malformed. Since the next hop precedes the NLRI field in the attribute, in this case it
    // will not be possible to reliably locate the NLRI; thus, the "session reset" or
    // "AFI/SAFI disable" approach MUST be used."
    let mut nr = Reader::new(nh);
    let next_hops: Vec<IpAddr> = match (family.afi, nh_len) {
        (super::Afi::Ipv4, 4) => nr.ipv4().map(IpAddr::V4).into_iter().collect(),
        // RFC 2545 §3: "the Length of Next Hop Network Address field ... shall be set to 16 or
        // 32": a global address, then optionally a link-local one.
        (super::Afi::Ipv6, 16 | 32) => std::iter::from_fn(|| nr.ipv6().map(IpAddr::V6)).collect(),
        _ => return Err(bad(format!("next hop length {nh_len} for {family}"))),
    };
    // RFC 4760 §3: "Reserved: A 1 octet field that MUST be set to 0, and SHOULD be ignored
    // upon receipt." Its absence is §5.3 d's short attribute.
    if r.u8().is_none() {
        return Err(bad("ends before its reserved octet".into()));
    }
    let mut nlri = Vec::new();
    decode_mp_nlri(family, r.rest(), &mut nlri).map_err(bad)?;
    w.mp_reach = Some(MpReach {
        family,
        next_hops,
        nlri,
    });
    Ok(())
}

// MP_UNREACH_NLRI (RFC 4760 §4):
//
// +---------------------------------------------------------+
// | Address Family Identifier (2 octets)                    |
// +---------------------------------------------------------+
// | Subsequent Address Family Identifier (1 octet)          |
// +---------------------------------------------------------+
// | Withdrawn Routes (variable)                             |
// +---------------------------------------------------------+
fn decode_mp_unreach(v: &[u8], neg: &Negotiated, w: &mut Walk) -> Result<(), Malformed> {
    let bad = |why: String| {
        Malformed::reset(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            format!("MP_UNREACH_NLRI {why}"),
        )
    };
    let mut r = Reader::new(v);
    // RFC 7606 §5.3 d: "The length of the MP_UNREACH_NLRI attribute is less than 3".
    let (Some(afi), Some(safi)) = (r.u16(), r.u8()) else {
        return Err(bad(format!("length {}, want at least 3", v.len())));
    };
    let family = Family::new(afi, safi);
    if !usable_family(family, neg) {
        return Err(Malformed::discard(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            format!("MP_UNREACH_NLRI for {family}, not negotiated: ignored"),
        ));
    }
    let mut withdrawn = Vec::new();
    decode_mp_nlri(family, r.rest(), &mut withdrawn).map_err(bad)?;
    w.mp_unreach = Some(MpUnreach { family, withdrawn });
    Ok(())
}

fn decode_mp_nlri(family: Family, bytes: &[u8], out: &mut Vec<IpNet>) -> Result<(), String> {
    if family.afi == super::Afi::Ipv6 {
        return decode_v6(bytes, out);
    }
    let mut v4 = Vec::new();
    decode_v4(bytes, &mut v4)?;
    out.extend(v4.into_iter().map(IpNet::V4));
    Ok(())
}

// ===== encoding =====

/// Whether `next_hops` is what MP_REACH_NLRI of `family` carries: one IPv4 address, or an
/// IPv6 global address and optionally a link-local one (RFC 2545 §3). Anything else would
/// make the peer reset the session (RFC 7606 §7.11).
fn next_hops_fit(family: Family, next_hops: &[IpAddr]) -> bool {
    match family.afi {
        super::Afi::Ipv4 => matches!(next_hops, [IpAddr::V4(_)]),
        super::Afi::Ipv6 => matches!(next_hops, [IpAddr::V6(_)] | [IpAddr::V6(_), IpAddr::V6(_)]),
        super::Afi::Other(_) => false,
    }
}

fn encode_mp_reach_head(out: &mut Vec<u8>, family: Family, next_hops: &[IpAddr]) {
    put_u16(out, family.afi.to_u16());
    out.push(family.safi.to_u8());
    let at = out.len();
    out.push(0);
    for nh in next_hops {
        match nh {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    out[at] = (out.len() - at - 1).min(255) as u8;
    // Reserved.
    out.push(0);
}

/// Appends an UPDATE body exactly as given (the caller keeps it under 4096 octets; see
/// [`encode_announce`] to pack routes). MP_UNREACH_NLRI and MP_REACH_NLRI come first (RFC
/// 7606 §5.1: "The MP_REACH_NLRI or MP_UNREACH_NLRI attribute (if present) SHALL be encoded
/// as the very first path attribute in an UPDATE message.").
pub(crate) fn encode(u: &Update, neg: &Negotiated, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let wlen_at = out.len();
    put_u16(out, 0);
    for p in &u.withdrawn {
        put_prefix(out, &IpNet::V4(*p));
    }
    let wlen = out.len() - wlen_at - 2;
    patch_u16(
        out,
        wlen_at,
        u16::try_from(wlen).map_err(|_| EncodeError::TooLong { len: wlen })?,
    );
    let tpal_at = out.len();
    put_u16(out, 0);
    if let Some(un) = &u.mp_unreach {
        let at = attribute::begin(out, flag::OPTIONAL, code::MP_UNREACH_NLRI);
        put_u16(out, un.family.afi.to_u16());
        out.push(un.family.safi.to_u8());
        for p in &un.withdrawn {
            put_prefix(out, p);
        }
        // Extended length as BIRD writes it, one octet for the End-of-RIB marker as BIRD
        // writes that.
        attribute::end(out, at, un.withdrawn.is_empty())?;
    }
    if let Some(reach) = &u.mp_reach {
        if !next_hops_fit(reach.family, &reach.next_hops) {
            return Err(EncodeError::MissingNextHop {
                family: reach.family,
            });
        }
        let at = attribute::begin(out, flag::OPTIONAL, code::MP_REACH_NLRI);
        encode_mp_reach_head(out, reach.family, &reach.next_hops);
        for p in &reach.nlri {
            put_prefix(out, p);
        }
        attribute::end(out, at, false)?;
    }
    if let Some(attrs) = &u.attrs {
        attribute::encode_attrs(attrs, neg, true, out)?;
    }
    let tpal = out.len() - tpal_at - 2;
    patch_u16(
        out,
        tpal_at,
        u16::try_from(tpal).map_err(|_| EncodeError::TooLong { len: tpal })?,
    );
    for p in &u.nlri {
        put_prefix(out, &IpNet::V4(*p));
    }
    Ok(())
}

/// Room for the body of one UPDATE.
const BODY_ROOM: usize = MAX_MESSAGE_LEN - HEADER_LEN;

/// Writes UPDATEs announcing `prefixes` with `attrs`, as many ≤ 4096-octet messages as
/// needed with as many prefixes in each as fit. IPv4 unicast goes in the NLRI field with
/// NEXT_HOP from `attrs.next_hop`; IPv6 unicast in MP_REACH_NLRI with `attrs.mp_next_hop`.
/// Returns how many messages it wrote; on error `out` is left as it was.
pub fn encode_announce(
    attrs: &Attrs,
    prefixes: &[IpNet],
    neg: &Negotiated,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let start = out.len();
    let r = announce(attrs, prefixes, neg, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn check_family(family: Family, neg: &Negotiated) -> Result<(), EncodeError> {
    if neg.has_family(family) {
        Ok(())
    } else {
        Err(EncodeError::FamilyNotNegotiated { family })
    }
}

fn announce(
    attrs: &Attrs,
    prefixes: &[IpNet],
    neg: &Negotiated,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let (v4, v6): (Vec<&IpNet>, Vec<&IpNet>) =
        prefixes.iter().partition(|p| matches!(p, IpNet::V4(_)));
    let mut messages = 0;
    if !v4.is_empty() {
        check_family(Family::IPV4_UNICAST, neg)?;
        if attrs.next_hop.is_none() {
            return Err(EncodeError::MissingNextHop {
                family: Family::IPV4_UNICAST,
            });
        }
        let mut block = Vec::new();
        attribute::encode_attrs(attrs, neg, true, &mut block)?;
        // Withdrawn Routes Length, Total Path Attribute Length, the attributes.
        let fixed = 4 + block.len();
        let room = BODY_ROOM.checked_sub(fixed).filter(|&r| r >= 5);
        let room = room.ok_or(EncodeError::AttributesTooLong { len: block.len() })?;
        let mut rest = v4.as_slice();
        while !rest.is_empty() {
            let at = header::start(out, MessageType::Update);
            put_u16(out, 0);
            put_u16(out, block.len() as u16);
            out.extend_from_slice(&block);
            rest = fill(out, rest, room);
            header::finish(out, at).map_err(|len| EncodeError::TooLong { len })?;
            messages += 1;
        }
    }
    if !v6.is_empty() {
        let family = Family::IPV6_UNICAST;
        check_family(family, neg)?;
        let nhs = &attrs.mp_next_hop;
        if !next_hops_fit(family, nhs) {
            return Err(EncodeError::MissingNextHop { family });
        }
        let mut block = Vec::new();
        attribute::encode_attrs(attrs, neg, false, &mut block)?;
        let mut head = Vec::new();
        encode_mp_reach_head(&mut head, family, nhs);
        // Both lengths, the MP_REACH_NLRI header (4 octets, extended length) and its fixed
        // part, the other attributes.
        let fixed = 4 + 4 + head.len() + block.len();
        let room = BODY_ROOM.checked_sub(fixed).filter(|&r| r >= 17);
        let room = room.ok_or(EncodeError::AttributesTooLong { len: block.len() })?;
        let mut rest = v6.as_slice();
        while !rest.is_empty() {
            let at = header::start(out, MessageType::Update);
            put_u16(out, 0);
            let tpal_at = out.len();
            put_u16(out, 0);
            let attr_at = out.len();
            out.extend_from_slice(&[
                flag::OPTIONAL | flag::EXTENDED_LENGTH,
                code::MP_REACH_NLRI,
                0,
                0,
            ]);
            out.extend_from_slice(&head);
            rest = fill(out, rest, room);
            let mp_len = out.len() - attr_at - 4;
            patch_u16(out, attr_at + 2, mp_len as u16);
            out.extend_from_slice(&block);
            let tpal = out.len() - tpal_at - 2;
            patch_u16(out, tpal_at, tpal as u16);
            header::finish(out, at).map_err(|len| EncodeError::TooLong { len })?;
            messages += 1;
        }
    }
    Ok(messages)
}

/// Appends prefixes from `rest` while they fit in `room` octets; returns the ones left.
fn fill<'a>(out: &mut Vec<u8>, rest: &'a [&'a IpNet], room: usize) -> &'a [&'a IpNet] {
    let mut used = 0;
    let mut n = 0;
    for p in rest {
        let l = prefix_wire_len(p);
        if used + l > room {
            break;
        }
        put_prefix(out, p);
        used += l;
        n += 1;
    }
    rest.get(n..).unwrap_or_default()
}

/// Writes UPDATEs withdrawing `prefixes`: IPv4 unicast in Withdrawn Routes, IPv6 unicast in
/// MP_UNREACH_NLRI, as many ≤ 4096-octet messages as needed. Returns how many; on error `out`
/// is left as it was.
pub fn encode_withdraw(
    prefixes: &[IpNet],
    neg: &Negotiated,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let start = out.len();
    let r = withdraw(prefixes, neg, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn withdraw(prefixes: &[IpNet], neg: &Negotiated, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let (v4, v6): (Vec<&IpNet>, Vec<&IpNet>) =
        prefixes.iter().partition(|p| matches!(p, IpNet::V4(_)));
    let mut messages = 0;
    if !v4.is_empty() {
        check_family(Family::IPV4_UNICAST, neg)?;
        let mut rest = v4.as_slice();
        while !rest.is_empty() {
            let at = header::start(out, MessageType::Update);
            let wlen_at = out.len();
            put_u16(out, 0);
            rest = fill(out, rest, BODY_ROOM - 4);
            let wlen = out.len() - wlen_at - 2;
            patch_u16(out, wlen_at, wlen as u16);
            put_u16(out, 0);
            header::finish(out, at).map_err(|len| EncodeError::TooLong { len })?;
            messages += 1;
        }
    }
    if !v6.is_empty() {
        let family = Family::IPV6_UNICAST;
        check_family(family, neg)?;
        let mut rest = v6.as_slice();
        while !rest.is_empty() {
            let at = header::start(out, MessageType::Update);
            put_u16(out, 0);
            let tpal_at = out.len();
            put_u16(out, 0);
            let attr_at = out.len();
            out.extend_from_slice(&[
                flag::OPTIONAL | flag::EXTENDED_LENGTH,
                code::MP_UNREACH_NLRI,
                0,
                0,
            ]);
            put_u16(out, family.afi.to_u16());
            out.push(family.safi.to_u8());
            // Both lengths, the attribute header, AFI and SAFI.
            rest = fill(out, rest, BODY_ROOM - 4 - 4 - 3);
            let mp_len = out.len() - attr_at - 4;
            patch_u16(out, attr_at + 2, mp_len as u16);
            let tpal = out.len() - tpal_at - 2;
            patch_u16(out, tpal_at, tpal as u16);
            header::finish(out, at).map_err(|len| EncodeError::TooLong { len })?;
            messages += 1;
        }
    }
    Ok(messages)
}
