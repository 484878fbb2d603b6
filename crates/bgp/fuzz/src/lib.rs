//! The checks behind the fuzz targets, one function per target (`fuzz_targets/<name>.rs`
//! calls `<name>` here). Each takes the raw fuzz input, builds what its decoder needs, and
//! panics when the codec breaks one of its promises:
//! - every decoder is total: any bytes give `Ok` or `Err`, never a panic or an overflow;
//! - `frame` and `decode` agree on where a message ends;
//! - a decoded UPDATE's RFC 7606 decisions are applied (treat-as-withdraw leaves nothing
//!   announced, a session reset is an `Err`, not a recorded error);
//! - whatever decodes re-encodes, and the bytes decode to the same value and encode to the
//!   same bytes again.
//!
//! This file is also compiled into `crates/bgp/tests/fuzz_corpus.rs` (by `#[path]`), which
//! replays every checked-in corpus file through the same function on stable Rust, so the
//! corpus guards against regressions in every `cargo nextest run`.
//!
//! What a corpus file of each target holds:
//! - `frame`: a receive buffer, any bytes (messages back to back, or garbage);
//! - `open`, `update`, `notification`, `route_refresh`: a message body, without the
//!   19-octet header: the check puts a valid header of the right type and length in front
//!   (cutting the body to 4096 - 19 octets), so the fuzzer spends its time on the body;
//! - `pack`: a selector octet (as for `roundtrip`; IPv6 unicast is always negotiated), a
//!   count octet (8 × that many synthetic prefixes are added, so the messages must split),
//!   then an UPDATE body whose attributes and prefixes are packed again;
//! - `roundtrip`: a selector octet (bit 0: four-octet AS numbers; bit 1: IPv6 unicast
//!   negotiated too; bit 2: iBGP), a type octet (taken modulo 5, plus 1: OPEN .. ROUTE-REFRESH), then the
//!   body.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_bgp::packet::attribute::flag;
use twill_bgp::packet::{
    self, Attrs, EncodeError, ErrorAction, ErrorCode, Family, Message, Negotiated, Update,
    HEADER_LEN, MAX_MESSAGE_LEN,
};

/// A target's check: takes the raw fuzz input, panics on a broken promise.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and corpus folder.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame", frame),
    ("open", open),
    ("update", update),
    ("notification", notification),
    ("route_refresh", route_refresh),
    ("roundtrip", roundtrip),
    ("pack", pack),
];

const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const ROUTE_REFRESH: u8 = 5;

/// A whole message: marker, length, `kind`, then `body` (cut to fit 4096 octets).
pub fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let body = &body[..body.len().min(MAX_MESSAGE_LEN - HEADER_LEN)];
    let len = u16::try_from(HEADER_LEN + body.len()).expect("at most 4096");
    let mut m = Vec::with_capacity(HEADER_LEN + body.len());
    m.extend_from_slice(&[0xff; 16]);
    m.extend_from_slice(&len.to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// The session a selector octet names (see the module doc).
pub fn session(selector: u8) -> Negotiated {
    let mut n = Negotiated {
        four_octet_as: selector & 1 != 0,
        ..Negotiated::default()
    };
    if selector & 2 != 0 {
        n.families.push(Family::IPV6_UNICAST);
    }
    // RFC 7606 §7.5, §7.9, §7.10 judge LOCAL_PREF, ORIGINATOR_ID, CLUSTER_LIST by session kind.
    n.ibgp = selector & 4 != 0;
    n
}

/// The sessions every UPDATE is decoded under: two- and four-octet AS numbers, eBGP and
/// iBGP, all with IPv4 and IPv6 unicast.
fn sessions() -> [Negotiated; 4] {
    [
        session(0b010),
        session(0b011),
        session(0b110),
        session(0b111),
    ]
}

/// A receive buffer, framed and decoded message by message as the speaker does.
pub fn frame(data: &[u8]) {
    // decode() must be total on any bytes, not only on what frame() delimited.
    for n in sessions() {
        let _ = packet::decode(data, &n);
    }
    let mut buf = data;
    loop {
        match packet::frame(buf) {
            Ok(Some(len)) => {
                assert!(
                    (HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) && len <= buf.len(),
                    "frame() gave length {len} for a {}-octet buffer",
                    buf.len()
                );
                // Where a message ends depends on its own octets only.
                assert_eq!(packet::frame(&buf[..len]), Ok(Some(len)));
                for n in sessions() {
                    let _ = packet::decode(&buf[..len], &n);
                }
                buf = &buf[len..];
            }
            Ok(None) => {
                assert!(
                    buf.len() < MAX_MESSAGE_LEN,
                    "frame() wants more than {} octets, over the 4096 a message may have",
                    buf.len()
                );
                break;
            }
            Err(n) => {
                assert_eq!(n.code, ErrorCode::MessageHeader, "a framing error: {n:?}");
                break;
            }
        }
    }
}

/// An OPEN body; what a decoded OPEN negotiates with itself and with a plain RFC 4271 peer.
pub fn open(body: &[u8]) {
    let msg = message(OPEN, body);
    let Ok(m) = packet::decode(&msg, &Negotiated::default()) else {
        return;
    };
    let Message::Open(open) = m else {
        panic!("an OPEN decoded as {m:?}");
    };
    let _ = open.asn();
    let both = Negotiated::new(&open, &open);
    let mut plain = open.clone();
    plain.capabilities.clear();
    let with_plain = Negotiated::new(&plain, &open);
    // RFC 4760 §8 / RFC 4271: a side without multiprotocol capabilities carries IPv4 only.
    assert!(
        with_plain
            .families
            .iter()
            .all(|f| *f == Family::IPV4_UNICAST),
        "{with_plain:?}"
    );
    assert!(!with_plain.four_octet_as);
    assert_eq!(both, Negotiated::new(&open, &open));
}

/// An UPDATE body, decoded under two- and four-octet AS numbers, eBGP and iBGP.
pub fn update(body: &[u8]) {
    let msg = message(UPDATE, body);
    for n in sessions() {
        match packet::decode(&msg, &n) {
            Ok(Message::Update(u)) => check_update(&u),
            Ok(m) => panic!("an UPDATE decoded as {m:?}"),
            Err(_) => {}
        }
    }
}

/// RFC 7606 decisions, as the decoder promises to have applied them.
fn check_update(u: &Update) {
    assert!(
        u.errors
            .iter()
            .all(|e| e.action != ErrorAction::SessionReset),
        "a session reset is decode()'s Err, not an Update::errors entry: {:?}",
        u.errors
    );
    if u.errors
        .iter()
        .any(|e| e.action == ErrorAction::TreatAsWithdraw)
    {
        assert!(
            u.attrs.is_none() && u.nlri.is_empty() && u.mp_reach.is_none(),
            "treat-as-withdraw left routes announced: {u:?}"
        );
    }
    let announces = !u.nlri.is_empty() || u.mp_reach.as_ref().is_some_and(|r| !r.nlri.is_empty());
    if announces {
        // RFC 7606 §3 d: a missing well-known mandatory attribute is treat-as-withdraw.
        let Some(attrs) = &u.attrs else {
            panic!("routes announced without attributes: {u:?}");
        };
        if !u.nlri.is_empty() {
            assert!(
                attrs.next_hop.is_some(),
                "IPv4 NLRI announced without NEXT_HOP: {u:?}"
            );
        }
    }
}

pub fn notification(body: &[u8]) {
    let msg = message(NOTIFICATION, body);
    match packet::decode(&msg, &Negotiated::default()) {
        Ok(Message::Notification(_)) | Err(_) => {}
        Ok(m) => panic!("a NOTIFICATION decoded as {m:?}"),
    }
}

pub fn route_refresh(body: &[u8]) {
    let msg = message(ROUTE_REFRESH, body);
    match packet::decode(&msg, &Negotiated::default()) {
        Ok(Message::RouteRefresh(_)) | Err(_) => {}
        Ok(m) => panic!("a ROUTE-REFRESH decoded as {m:?}"),
    }
}

/// decode → encode → decode gives the same value, and encoding it again the same bytes.
pub fn roundtrip(data: &[u8]) {
    let [selector, kind, body @ ..] = data else {
        return;
    };
    let n = session(*selector);
    let msg = message(1 + kind % 5, body);
    let Ok(first) = packet::decode(&msg, &n) else {
        return;
    };
    let mut bytes = Vec::new();
    match packet::encode(&first, &n, &mut bytes) {
        Ok(()) => {}
        // Twill may write what a peer sent longer than it came (AS4_PATH added for a
        // two-octet peer, extended lengths), so near 4096 octets it may no longer fit.
        Err(EncodeError::TooLong { .. }) if msg.len() > MAX_MESSAGE_LEN / 2 => return,
        Err(e) => panic!("{first:?}\ndecoded from {msg:02x?}\ndoes not encode again: {e}"),
    }
    assert_eq!(
        packet::frame(&bytes),
        Ok(Some(bytes.len())),
        "re-encoded {first:?} as {bytes:02x?}"
    );
    let second = match packet::decode(&bytes, &n) {
        Ok(m) => m,
        Err(e) => panic!("{first:?}\nre-encoded as {bytes:02x?}\ndoes not decode: {e:?}"),
    };
    let expected = as_sent(first);
    assert_eq!(
        expected, second,
        "decoded from {msg:02x?}, re-encoded as {bytes:02x?}"
    );
    let mut again = Vec::new();
    packet::encode(&second, &n, &mut again).expect("it encoded once");
    assert_eq!(
        bytes, again,
        "encoding {second:?} twice gave different bytes"
    );
}

/// A decoded message as the encoder sends it on, which is what decoding its bytes gives.
fn as_sent(m: Message) -> Message {
    let Message::Update(mut u) = m else {
        return m;
    };
    // What RFC 7606 decided is not encoded: the re-encoded UPDATE is already clean.
    u.errors.clear();
    if let Some(attrs) = &mut u.attrs {
        as_sent_attrs(attrs);
    }
    Message::Update(u)
}

/// RFC 4271 §5: an unrecognised optional transitive attribute is passed on with the Partial
/// bit set; the encoder writes unknown attributes in code order, with the extended-length
/// bit only when the value needs it.
fn as_sent_attrs(attrs: &mut Attrs) {
    for a in &mut attrs.unknown {
        a.flags = (a.flags & !flag::EXTENDED_LENGTH) | flag::PARTIAL;
        if a.value.len() > 255 {
            a.flags |= flag::EXTENDED_LENGTH;
        }
    }
    attrs.unknown.sort_by_key(|a| a.code);
}

/// Octets a prefix takes in NLRI, Withdrawn Routes or MP_(UN)REACH (RFC 4271 §4.3).
fn prefix_wire_len(p: &IpNet) -> usize {
    1 + usize::from(p.prefix_len()).div_ceil(8)
}

/// The messages of a buffer the packing encoders wrote, each framed and decoded.
fn decoded_messages(mut out: &[u8], n: &Negotiated) -> Vec<(usize, Update)> {
    let mut msgs = Vec::new();
    while !out.is_empty() {
        let len = match packet::frame(out) {
            Ok(Some(len)) => len,
            other => panic!("packed output does not frame: {other:?} at {out:02x?}"),
        };
        match packet::decode(&out[..len], n) {
            Ok(Message::Update(u)) => msgs.push((len, *u)),
            other => panic!("a packed UPDATE decodes as {other:?}: {:02x?}", &out[..len]),
        }
        out = &out[len..];
    }
    msgs
}

/// A message that is not the last of its family is full: the next family's prefix would
/// not have fit in it.
fn assert_full(sizes_and_firsts: &[(usize, Option<IpNet>)]) {
    for pair in sizes_and_firsts.windows(2) {
        let [(len, Some(this)), (_, Some(next))] = pair else {
            continue;
        };
        if matches!(this, IpNet::V4(_)) != matches!(next, IpNet::V4(_)) {
            continue; // the last IPv4 message, then the first IPv6 one
        }
        assert!(
            len + prefix_wire_len(next) > MAX_MESSAGE_LEN,
            "a {len}-octet UPDATE was closed though {next} fitted"
        );
    }
}

/// `encode_announce` and `encode_withdraw` on what an UPDATE decoded to: every prefix comes
/// back once, in order, in ≤ 4096-octet messages that are full but for the last of each
/// family, with the same attributes and no RFC 7606 complaint.
pub fn pack(data: &[u8]) {
    let [selector, extra, body @ ..] = data else {
        return;
    };
    let n = session(selector | 0b10);
    let Ok(Message::Update(u)) = packet::decode(&message(UPDATE, body), &n) else {
        return;
    };
    let Some(mut attrs) = u.attrs.clone() else {
        return;
    };
    let mut prefixes: Vec<IpNet> = u.nlri.iter().map(|&p| IpNet::V4(p)).collect();
    if let Some(r) = &u.mp_reach {
        prefixes.extend(&r.nlri);
        // As the RIB stores a route: MP_REACH's next hop among the shared attributes.
        attrs.mp_next_hop = r.next_hops.clone();
    }
    for i in 0..u32::from(*extra) * 8 {
        prefixes.push(match i % 2 {
            0 => Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | i << 8), 24)
                .expect("/24")
                .into(),
            _ => Ipv6Net::new(
                Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i) << 64),
                64,
            )
            .expect("/64")
            .into(),
        });
    }
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
        prefixes.iter().partition(|p| matches!(p, IpNet::V4(_)));
    let in_order: Vec<IpNet> = v4.iter().chain(&v6).copied().collect();

    let mut out = Vec::new();
    let count = match packet::encode_announce(&attrs, &prefixes, &n, &mut out) {
        Ok(count) => count,
        // Attributes without the next hop a family needs (IPv4 NLRI and no NEXT_HOP, IPv6
        // without MP_REACH's), or, from a message near 4096 octets, too long to leave room.
        Err(EncodeError::MissingNextHop { .. }) => return,
        Err(EncodeError::AttributesTooLong { .. }) if body.len() > MAX_MESSAGE_LEN / 2 => return,
        Err(e) => panic!("{e}: announcing {prefixes:?} with {attrs:?}"),
    };
    let msgs = decoded_messages(&out, &n);
    assert_eq!(msgs.len(), count, "encode_announce's count");
    let mut want = attrs.clone();
    as_sent_attrs(&mut want);
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    for (len, m) in &msgs {
        assert!(m.errors.is_empty(), "packed UPDATE with errors: {m:?}");
        assert!(m.withdrawn.is_empty() && m.mp_unreach.is_none(), "{m:?}");
        let mut want = want.clone();
        if m.nlri.is_empty() {
            // IPv6 goes in MP_REACH, with its next hop there and no NEXT_HOP.
            let r = m
                .mp_reach
                .as_ref()
                .expect("an UPDATE with no NLRI carries MP_REACH");
            assert_eq!(r.next_hops, attrs.mp_next_hop);
            want.next_hop = None;
        } else {
            assert!(
                m.mp_reach.is_none(),
                "IPv4 and IPv6 in one packed UPDATE: {m:?}"
            );
        }
        want.mp_next_hop.clear();
        assert_eq!(m.attrs.as_ref(), Some(&want));
        let mine: Vec<IpNet> = m
            .nlri
            .iter()
            .map(|&p| IpNet::V4(p))
            .chain(m.mp_reach.iter().flat_map(|r| r.nlri.iter().copied()))
            .collect();
        sizes.push((*len, mine.first().copied()));
        got.extend(mine);
    }
    assert_eq!(got, in_order, "announced prefixes");
    assert_full(&sizes);

    let mut out = Vec::new();
    let count = packet::encode_withdraw(&prefixes, &n, &mut out)
        .unwrap_or_else(|e| panic!("{e}: withdrawing {prefixes:?}"));
    let msgs = decoded_messages(&out, &n);
    assert_eq!(msgs.len(), count, "encode_withdraw's count");
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    for (len, m) in &msgs {
        assert!(
            m.errors.is_empty() && m.nlri.is_empty() && m.mp_reach.is_none(),
            "{m:?}"
        );
        let mine: Vec<IpNet> = m
            .withdrawn
            .iter()
            .map(|&p| IpNet::V4(p))
            .chain(
                m.mp_unreach
                    .iter()
                    .flat_map(|r| r.withdrawn.iter().copied()),
            )
            .collect();
        sizes.push((*len, mine.first().copied()));
        got.extend(mine);
    }
    assert_eq!(got, in_order, "withdrawn prefixes");
    assert_full(&sizes);
}
