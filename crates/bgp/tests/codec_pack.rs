//! Packing routes into UPDATEs (`encode_announce`, `encode_withdraw`), the AS4 merge and
//! split (RFC 6793 §4.2), and a 100,000-prefix stream decoded end to end.

mod codec_util;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use codec_util::*;
use ipnet::IpNet;
use twill_bgp::packet::{
    self, Aggregator, AsPath, AsSegment, AsSegmentKind, Attrs, Community, EncodeError, ErrorAction,
    Family, Message, Negotiated, Origin, Update, AS_TRANS, MAX_MESSAGE_LEN,
};

fn attrs() -> Attrs {
    let mut a = Attrs::local(Origin::Igp);
    a.as_path = AsPath::default().prepend(65030).prepend(4_200_000_001);
    a.next_hop = Some(Ipv4Addr::new(203, 0, 113, 1));
    a.med = Some(10);
    a.communities = vec![Community(0xfe06_0001)];
    a.mp_next_hop = vec!["2001:db8::1".parse().unwrap(), "fe80::1".parse().unwrap()];
    a
}

/// `n` distinct IPv4 prefixes of length `len` from 10.0.0.0 up.
fn v4s(n: usize, len: u8) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            let a = (10u32 << 24) + ((i as u32) << (32 - u32::from(len)));
            IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(a), len).unwrap())
        })
        .collect()
}

fn v6s(n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|i| net(&format!("2001:db8:{:x}:{:x}::/64", i / 65536, i % 65536)))
        .collect()
}

/// Frames and decodes a buffer of UPDATEs; returns them with each message's length.
fn split(buf: &[u8], neg: &Negotiated) -> Vec<(usize, Update)> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let len = packet::frame(rest).unwrap().expect("whole messages");
        let Message::Update(u) = packet::decode(&rest[..len], neg).unwrap() else {
            panic!("not an UPDATE")
        };
        assert!(u.errors.is_empty(), "{:?}", u.errors);
        out.push((len, *u));
        rest = &rest[len..];
    }
    out
}

fn announced(msgs: &[(usize, Update)]) -> Vec<IpNet> {
    let mut all = Vec::new();
    for (_, u) in msgs {
        all.extend(u.nlri.iter().map(|n| IpNet::V4(*n)));
        if let Some(r) = &u.mp_reach {
            all.extend(r.nlri.iter().copied());
        }
    }
    all
}

fn withdrawn(msgs: &[(usize, Update)]) -> Vec<IpNet> {
    let mut all = Vec::new();
    for (_, u) in msgs {
        all.extend(u.withdrawn.iter().map(|n| IpNet::V4(*n)));
        if let Some(r) = &u.mp_unreach {
            all.extend(r.withdrawn.iter().copied());
        }
    }
    all
}

/// Every message but the last is full: the next prefix (`next` octets) would not have fit.
fn full_but_last(msgs: &[(usize, Update)], next: usize) {
    for (len, _) in &msgs[..msgs.len() - 1] {
        assert!(*len <= MAX_MESSAGE_LEN);
        assert!(
            len + next > MAX_MESSAGE_LEN,
            "a {len}-octet UPDATE had room"
        );
    }
    assert!(msgs.last().unwrap().0 <= MAX_MESSAGE_LEN);
}

#[test]
fn announce_packs_ipv4_into_full_4096_octet_updates() {
    let neg = ebgp4();
    let prefixes = v4s(3000, 24);
    let mut out = Vec::new();
    let n = packet::encode_announce(&attrs(), &prefixes, &neg, &mut out).unwrap();
    let msgs = split(&out, &neg);
    assert_eq!(msgs.len(), n);
    // 4096 − 19 header − 4 length fields − the attributes, 4 octets a /24.
    let mut attr_block = Vec::new();
    packet::encode(
        &Message::Update(Box::new(Update {
            attrs: Some(attrs()),
            ..Update::default()
        })),
        &neg,
        &mut attr_block,
    )
    .unwrap();
    let per = (4096 - attr_block.len()) / 4;
    assert_eq!(n, 3000usize.div_ceil(per), "{per} per message");
    full_but_last(&msgs, 4);
    assert_eq!(announced(&msgs), prefixes);
    let mut want = attrs();
    want.mp_next_hop.clear();
    for (_, u) in &msgs {
        assert_eq!(u.attrs.as_ref(), Some(&want));
        assert!(u.mp_reach.is_none());
    }
}

#[test]
fn announce_packs_mixed_lengths_and_ipv6_through_mp_reach() {
    let neg = ebgp4();
    let mut prefixes = v4s(1000, 32);
    prefixes.extend(v4s(200, 8));
    prefixes.extend(v6s(1500));
    let mut out = Vec::new();
    packet::encode_announce(&attrs(), &prefixes, &neg, &mut out).unwrap();
    let msgs = split(&out, &neg);
    assert_eq!(announced(&msgs), prefixes);
    let (v4msgs, v6msgs): (Vec<_>, Vec<_>) =
        msgs.into_iter().partition(|(_, u)| u.mp_reach.is_none());
    for (_, u) in &v6msgs {
        let r = u.mp_reach.as_ref().unwrap();
        assert_eq!(r.family, Family::IPV6_UNICAST);
        assert_eq!(r.next_hops, attrs().mp_next_hop);
        // RFC 4760 §3: no NEXT_HOP with MP_REACH_NLRI only.
        assert_eq!(u.attrs.as_ref().unwrap().next_hop, None);
        assert!(u.nlri.is_empty());
    }
    full_but_last(&v6msgs, 9);
    assert!(v4msgs.len() >= 2);
}

#[test]
fn withdraw_packs_both_families() {
    let neg = ebgp4();
    let mut prefixes = v4s(5000, 24);
    prefixes.extend(v6s(2000));
    let mut out = Vec::new();
    let n = packet::encode_withdraw(&prefixes, &neg, &mut out).unwrap();
    let msgs = split(&out, &neg);
    assert_eq!(msgs.len(), n);
    assert_eq!(withdrawn(&msgs), prefixes);
    for (_, u) in &msgs {
        assert_eq!(u.attrs, None);
        assert!(!u.is_end_of_rib());
    }
    let v4: Vec<_> = msgs
        .iter()
        .filter(|(_, u)| u.mp_unreach.is_none())
        .cloned()
        .collect();
    let v6: Vec<_> = msgs
        .iter()
        .filter(|(_, u)| u.mp_unreach.is_some())
        .cloned()
        .collect();
    full_but_last(&v4, 4);
    full_but_last(&v6, 9);
    // (4096 − 23) / 4 /24s per message.
    assert_eq!(v4.len(), 5000usize.div_ceil(1018));
}

#[test]
fn nothing_to_pack_writes_nothing() {
    let mut out = Vec::new();
    assert_eq!(
        packet::encode_announce(&attrs(), &[], &ebgp4(), &mut out),
        Ok(0)
    );
    assert_eq!(packet::encode_withdraw(&[], &ebgp4(), &mut out), Ok(0));
    assert!(out.is_empty());
}

#[test]
fn packing_errors_name_the_cause_and_write_nothing() {
    let mut out = vec![9];
    let mut a = attrs();
    a.next_hop = None;
    assert_eq!(
        packet::encode_announce(&a, &v4s(1, 24), &ebgp4(), &mut out),
        Err(EncodeError::MissingNextHop {
            family: Family::IPV4_UNICAST
        })
    );
    let mut a = attrs();
    a.mp_next_hop.clear();
    let mixed = [v4s(10, 24), v6s(1)].concat();
    assert_eq!(
        packet::encode_announce(&a, &mixed, &ebgp4(), &mut out),
        Err(EncodeError::MissingNextHop {
            family: Family::IPV6_UNICAST
        })
    );
    assert_eq!(
        packet::encode_announce(&attrs(), &mixed, &ebgp2(), &mut out),
        Err(EncodeError::FamilyNotNegotiated {
            family: Family::IPV6_UNICAST
        })
    );
    assert_eq!(
        packet::encode_withdraw(&mixed, &ebgp2(), &mut out),
        Err(EncodeError::FamilyNotNegotiated {
            family: Family::IPV6_UNICAST
        })
    );
    let mut a = attrs();
    a.as_path = AsPath {
        segments: vec![AsSegment {
            kind: AsSegmentKind::Sequence,
            asns: (1..=1100).collect(),
        }],
    };
    let e = packet::encode_announce(&a, &v4s(1, 24), &ebgp4(), &mut out).unwrap_err();
    assert!(matches!(e, EncodeError::AttributesTooLong { .. }), "{e}");
    assert!(e.to_string().contains("shorten the AS path"));
    assert_eq!(out, [9]);
}

// ===== AS4 (RFC 6793 §4.2) =====

/// An UPDATE from an OLD speaker: two-octet AS_PATH segments, then extra attributes.
fn old_update(as_path: &[u8], extra: &[u8]) -> Update {
    let attrs = [
        origin(0),
        attr(0x40, 2, as_path),
        next_hop([203, 0, 113, 1]),
        extra.to_vec(),
    ]
    .concat();
    decode_update(&update(&[], &attrs, &["10.244.30.0/24"]), &ebgp2()).unwrap()
}

fn seg2(ty: u8, asns: &[u16]) -> Vec<u8> {
    let mut v = vec![ty, asns.len() as u8];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    v
}

fn seg4(ty: u8, asns: &[u32]) -> Vec<u8> {
    let mut v = vec![ty, asns.len() as u8];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    v
}

fn seq(asns: &[u32]) -> AsSegment {
    AsSegment {
        kind: AsSegmentKind::Sequence,
        asns: asns.to_vec(),
    }
}

fn set(asns: &[u32]) -> AsSegment {
    AsSegment {
        kind: AsSegmentKind::Set,
        asns: asns.to_vec(),
    }
}

const T: u16 = AS_TRANS;
const BIG1: u32 = 4_200_000_001;
const BIG2: u32 = 4_200_000_002;

fn agg(asn: u32) -> Aggregator {
    Aggregator {
        asn,
        address: Ipv4Addr::new(192, 0, 2, 9),
    }
}

fn agg_attr(code: u8, asn: &[u8]) -> Vec<u8> {
    attr(0xc0, code, &[asn, &[192, 0, 2, 9]].concat())
}

#[test]
fn as4_path_is_merged_behind_the_leading_two_octet_ases() {
    let u = old_update(
        &seg2(2, &[65001, T, T]),
        &attr(0xc0, 17, &seg4(2, &[BIG1, BIG2])),
    );
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    assert_eq!(
        u.attrs.unwrap().as_path.segments,
        vec![seq(&[65001, BIG1, BIG2])]
    );
}

#[test]
fn as4_path_longer_than_as_path_is_ignored() {
    let u = old_update(&seg2(2, &[T]), &attr(0xc0, 17, &seg4(2, &[BIG1, BIG2])));
    let e = &u.errors[..];
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].code, e[0].action),
        (17, ErrorAction::AttributeDiscard)
    );
    assert_eq!(
        u.attrs.unwrap().as_path.segments,
        vec![seq(&[u32::from(T)])]
    );
}

#[test]
fn an_aggregator_that_is_not_as_trans_makes_both_as4_attributes_ignored() {
    let u = old_update(
        &seg2(2, &[65001, T]),
        &[
            agg_attr(7, &65001u16.to_be_bytes()),
            agg_attr(18, &BIG1.to_be_bytes()),
            attr(0xc0, 17, &seg4(2, &[BIG2])),
        ]
        .concat(),
    );
    assert_eq!(u.errors.len(), 1);
    let a = u.attrs.unwrap();
    assert_eq!(a.aggregator, Some(agg(65001)));
    assert_eq!(a.as_path.segments, vec![seq(&[65001, u32::from(T)])]);
}

#[test]
fn as4_aggregator_without_aggregator_is_ignored() {
    let u = old_update(&seg2(2, &[65001]), &agg_attr(18, &BIG1.to_be_bytes()));
    assert_eq!(u.errors.len(), 1);
    assert_eq!(
        (u.errors[0].code, u.errors[0].action),
        (18, ErrorAction::AttributeDiscard)
    );
    assert_eq!(u.attrs.unwrap().aggregator, None);
}

#[test]
fn as_trans_aggregator_takes_as4_aggregator() {
    let u = old_update(
        &seg2(2, &[65001, T]),
        &[
            agg_attr(7, &T.to_be_bytes()),
            agg_attr(18, &BIG1.to_be_bytes()),
            attr(0xc0, 17, &seg4(2, &[BIG1])),
        ]
        .concat(),
    );
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    let a = u.attrs.unwrap();
    assert_eq!(a.aggregator, Some(agg(BIG1)));
    assert_eq!(a.as_path.segments, vec![seq(&[65001, BIG1])]);
}

#[test]
fn as_sets_count_as_one_and_as4_confederation_segments_are_dropped() {
    let u = old_update(
        &[seg2(1, &[64512, 64513]), seg2(2, &[T, 65002])].concat(),
        &attr(
            0xc0,
            17,
            &[seg4(3, &[65100]), seg4(2, &[BIG1, 65002])].concat(),
        ),
    );
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    assert_eq!(
        u.attrs.unwrap().as_path.segments,
        vec![set(&[64512, 64513]), seq(&[BIG1, 65002])]
    );
}

#[test]
fn as4_split_for_an_old_peer_covers_sets_and_long_paths() {
    let mut a = attrs();
    a.as_path = AsPath {
        segments: vec![seq(&(1..=300).collect::<Vec<_>>()), set(&[64512, BIG1])],
    };
    a.aggregator = Some(agg(BIG2));
    let m = Message::Update(Box::new(Update {
        attrs: Some(a.clone()),
        nlri: vec![net4("10.244.30.0/24")],
        ..Update::default()
    }));
    let bytes = encoded(&m, &ebgp2());
    let u = decode_update(&bytes, &ebgp2()).unwrap();
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    let got = u.attrs.unwrap();
    // 300 ASes go out as a 255 and a 45 segment, and come back merged.
    assert_eq!(got.as_path.path_len(), 301);
    assert_eq!(
        got.as_path
            .segments
            .iter()
            .flat_map(|s| s.asns.clone())
            .collect::<Vec<_>>(),
        a.as_path
            .segments
            .iter()
            .flat_map(|s| s.asns.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(got.as_path.segments.last(), Some(&set(&[64512, BIG1])));
    assert_eq!(got.aggregator, Some(agg(BIG2)));
    // The AS_PATH as sent holds AS_TRANS for the big ones.
    assert!(bytes
        .windows(6)
        .any(|w| w == [1, 2, 0xfc, 0x00, 0x5b, 0xa0]));
}

// ===== 100,000 prefixes =====

/// The receive path the speaker runs, over a BIRD-sized table: 100,000 /24s packed as a
/// feeder packs them, framed and decoded. It reports the time (release: `cargo run --release
/// -p twill-bgp --example decode_100k` is the figure to quote); it asserts only correctness.
#[test]
fn a_100k_prefix_stream_decodes_completely() {
    let neg = ebgp4();
    let prefixes: Vec<IpNet> = (0..100_000u32)
        .map(|i| IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from((10 << 24) + (i << 8)), 24).unwrap()))
        .collect();
    let mut stream = Vec::new();
    let messages = packet::encode_announce(&attrs(), &prefixes, &neg, &mut stream).unwrap();
    let start = Instant::now();
    let mut rest = &stream[..];
    let mut got = 0;
    let mut first: Option<IpAddr> = None;
    while let Some(len) = packet::frame(rest).unwrap() {
        let Message::Update(u) = packet::decode(&rest[..len], &neg).unwrap() else {
            panic!()
        };
        first.get_or_insert(IpAddr::V4(u.nlri[0].addr()));
        got += u.nlri.len();
        rest = &rest[len..];
    }
    let took = start.elapsed();
    eprintln!(
        "decoded {got} prefixes in {messages} UPDATEs ({} octets) in {took:?} (this build's profile)",
        stream.len()
    );
    assert_eq!(got, 100_000);
    assert!(rest.is_empty());
    assert_eq!(first, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0))));
}
