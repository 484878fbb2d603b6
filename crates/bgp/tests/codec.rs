//! The codec's messages, capabilities and attributes: framing, header errors, OPEN errors,
//! round trips, exact bytes against hand-built vectors, End-of-RIB.

mod codec_util;

use std::net::{IpAddr, Ipv4Addr};

use codec_util::*;
use twill_bgp::packet::{
    self, subcode, Afi, Aggregator, AsPath, AsSegment, AsSegmentKind, Attrs, Capability, Community,
    ErrorCode, Family, GracefulRestart, GracefulRestartFamily, LargeCommunity, Message, MpReach,
    MpUnreach, Negotiated, Notification, Open, Origin, RawAttr, RouteRefresh, Safi, Update,
    AS_TRANS,
};

fn open(caps: Vec<Capability>) -> Open {
    Open {
        version: 4,
        my_as: 65030,
        hold_time: 9,
        router_id: Ipv4Addr::new(203, 0, 113, 1),
        capabilities: caps,
    }
}

fn header_err(subcode: u8, data: &[u8]) -> Notification {
    Notification::new(ErrorCode::MessageHeader, subcode, data.to_vec())
}

fn open_err(subcode: u8, data: &[u8]) -> Notification {
    Notification::new(ErrorCode::OpenMessage, subcode, data.to_vec())
}

// ===== framing and header errors (RFC 4271 §6.1) =====

#[test]
fn frame_waits_for_a_whole_message_then_gives_its_length() {
    let ka = msg(KEEPALIVE, &[]);
    let mut two = ka.clone();
    two.extend_from_slice(&msg(NOTIFICATION, &[6, 2]));
    assert_eq!(packet::frame(&[]), Ok(None));
    assert_eq!(packet::frame(&ka[..18]), Ok(None));
    assert_eq!(packet::frame(&ka), Ok(Some(19)));
    assert_eq!(packet::frame(&two), Ok(Some(19)));
    assert_eq!(packet::frame(&two[19..]), Ok(Some(21)));
    assert_eq!(packet::frame(&two[19..30]), Ok(None));
}

#[test]
fn bad_marker_is_1_1_as_soon_as_the_marker_is_in() {
    let mut m = msg(KEEPALIVE, &[]);
    m[3] = 0;
    let want = header_err(subcode::header::CONNECTION_NOT_SYNCHRONIZED, &[]);
    assert_eq!(packet::frame(&m[..16]), Err(want.clone()));
    assert_eq!(packet::frame(&m), Err(want.clone()));
    assert_eq!(packet::decode(&m, &Negotiated::default()), Err(want));
}

/// RUNBOOK §3: BIRD answers header length 18 with 1/2 data 0012 and type 9 with 1/3 data 09.
#[test]
fn header_length_18_is_1_2_with_the_length_and_type_9_is_1_3_with_the_type() {
    let short = msg_len(KEEPALIVE, &[], 18);
    assert_eq!(
        packet::frame(&short),
        Err(header_err(
            subcode::header::BAD_MESSAGE_LENGTH,
            &[0x00, 0x12]
        ))
    );
    let long = msg_len(UPDATE, &[], 4097);
    assert_eq!(
        packet::frame(&long),
        Err(header_err(
            subcode::header::BAD_MESSAGE_LENGTH,
            &[0x10, 0x01]
        ))
    );
    let ty9 = msg(9, &[]);
    assert_eq!(
        packet::frame(&ty9),
        Err(header_err(subcode::header::BAD_MESSAGE_TYPE, &[9]))
    );
    assert_eq!(
        packet::decode(&ty9, &Negotiated::default()),
        Err(header_err(subcode::header::BAD_MESSAGE_TYPE, &[9]))
    );
}

#[test]
fn per_type_length_rules_are_1_2() {
    let bad = |ty: u8, body_len: usize| {
        let m = msg(ty, &vec![0; body_len]);
        let len = (19 + body_len) as u16;
        assert_eq!(
            packet::frame(&m),
            Err(header_err(
                subcode::header::BAD_MESSAGE_LENGTH,
                &len.to_be_bytes()
            )),
            "type {ty} body {body_len}"
        );
    };
    bad(KEEPALIVE, 1); // exactly 19
    bad(OPEN, 9); // at least 29
    bad(UPDATE, 3); // at least 23
    bad(NOTIFICATION, 1); // at least 21
    for ok in [
        msg(KEEPALIVE, &[]),
        msg(UPDATE, &[0; 4]),
        msg(NOTIFICATION, &[6, 2]),
    ] {
        assert_eq!(packet::frame(&ok), Ok(Some(ok.len())));
    }
}

#[test]
fn decode_refuses_a_slice_that_is_not_exactly_the_message() {
    let mut m = msg(KEEPALIVE, &[]);
    m.push(0);
    assert_eq!(
        packet::decode(&m, &Negotiated::default()),
        Err(header_err(subcode::header::BAD_MESSAGE_LENGTH, &[0, 19]))
    );
    assert_eq!(
        packet::decode(&m[..10], &Negotiated::default()),
        Err(header_err(subcode::header::BAD_MESSAGE_LENGTH, &[0, 10]))
    );
}

/// RFC 7313 §5: a ROUTE-REFRESH whose body is not 4 octets is 7/1 with the whole message.
#[test]
fn route_refresh_of_the_wrong_length_is_7_1_with_the_message() {
    let m = msg(ROUTE_REFRESH, &[0, 1, 0, 1, 0]);
    assert_eq!(packet::frame(&m), Ok(Some(24)));
    assert_eq!(
        packet::decode(&m, &Negotiated::default()),
        Err(Notification::new(
            ErrorCode::RouteRefresh,
            subcode::route_refresh::INVALID_MESSAGE_LENGTH,
            m.clone()
        ))
    );
    let short = msg(ROUTE_REFRESH, &[0, 1]);
    assert!(matches!(
        packet::decode(&short, &Negotiated::default()),
        Err(Notification {
            code: ErrorCode::RouteRefresh,
            ..
        })
    ));
}

// ===== OPEN (RFC 4271 §4.2, §6.2; RFC 5492) =====

/// The bytes RUNBOOK §3's Python peer sends (`open_msg(65030, '203.0.113.1')`), which BIRD
/// accepts, decode to what they say and re-encode to the same bytes.
#[test]
fn open_matches_the_python_peer_bytes_both_ways() {
    let caps = [1u8, 4, 0, 1, 0, 1, 65, 4, 0, 0, 0xfe, 0x06];
    let mut body = vec![4, 0xfe, 0x06, 0, 9, 203, 0, 113, 1, caps.len() as u8 + 2, 2];
    body.push(caps.len() as u8);
    body.extend_from_slice(&caps);
    let wire = msg(OPEN, &body);
    let want = open(vec![
        Capability::Multiprotocol(Family::IPV4_UNICAST),
        Capability::FourOctetAs(65030),
    ]);
    assert_eq!(
        packet::decode(&wire, &Negotiated::default()),
        Ok(Message::Open(want.clone()))
    );
    assert_eq!(encoded(&Message::Open(want), &Negotiated::default()), wire);
}

#[test]
fn open_with_every_capability_round_trips() {
    let o = open(vec![
        Capability::Multiprotocol(Family::IPV4_UNICAST),
        Capability::Multiprotocol(Family::IPV6_UNICAST),
        Capability::Multiprotocol(Family {
            afi: Afi::Other(25),
            safi: Safi::Other(65),
        }),
        Capability::RouteRefresh,
        Capability::GracefulRestart(GracefulRestart {
            restarting: true,
            restart_time: 4095,
            families: vec![
                GracefulRestartFamily {
                    family: Family::IPV4_UNICAST,
                    forwarding_preserved: true,
                },
                GracefulRestartFamily {
                    family: Family::IPV6_UNICAST,
                    forwarding_preserved: false,
                },
            ],
        }),
        Capability::FourOctetAs(4_200_000_000),
        Capability::Unknown {
            code: 70,
            value: vec![],
        },
        Capability::Unknown {
            code: 73,
            value: b"twill".to_vec(),
        },
    ]);
    let m = Message::Open(Open {
        my_as: AS_TRANS,
        ..o
    });
    assert_eq!(round_trip(&m, &Negotiated::default()), m);
}

/// RFC 4724 §3: the R bit is the top bit of the first two octets and the time their low 12;
/// the F bit the top bit of each family's flags. Bits Twill does not know are ignored.
#[test]
fn graceful_restart_bits_are_where_rfc_4724_puts_them() {
    let gr = Capability::GracefulRestart(GracefulRestart {
        restarting: true,
        restart_time: 120,
        families: vec![GracefulRestartFamily {
            family: Family::IPV4_UNICAST,
            forwarding_preserved: true,
        }],
    });
    let bytes = encoded(
        &Message::Open(open(vec![gr.clone()])),
        &Negotiated::default(),
    );
    assert_eq!(&bytes[29..], &[2, 8, 64, 6, 0x80, 120, 0, 1, 1, 0x80]);
    // N bit (RFC 8538) and time bits set, family flags with low bits set.
    let mut body = bytes[19..29].to_vec();
    body.extend_from_slice(&[2, 8, 64, 6, 0xcf, 0xff, 0, 1, 1, 0x7f]);
    body[9] = 10;
    let Ok(Message::Open(o)) = packet::decode(&msg(OPEN, &body), &Negotiated::default()) else {
        panic!()
    };
    assert_eq!(
        o.capabilities,
        vec![Capability::GracefulRestart(GracefulRestart {
            restarting: true,
            restart_time: 0xfff,
            families: vec![GracefulRestartFamily {
                family: Family::IPV4_UNICAST,
                forwarding_preserved: false,
            }],
        })]
    );
}

#[test]
fn capabilities_split_over_several_parameters_are_all_read() {
    let mut body = vec![4, 0xfe, 0x06, 0, 90, 203, 0, 113, 1];
    let params = [
        vec![2, 6, 1, 4, 0, 2, 0, 1],
        vec![2, 2, 2, 0],
        vec![2, 0],
        vec![2, 6, 65, 4, 0, 0, 0xfe, 0x06],
    ]
    .concat();
    body.push(params.len() as u8);
    body.extend_from_slice(&params);
    let Ok(Message::Open(o)) = packet::decode(&msg(OPEN, &body), &Negotiated::default()) else {
        panic!()
    };
    assert_eq!(
        o.capabilities,
        vec![
            Capability::Multiprotocol(Family::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(65030)
        ]
    );
    assert_eq!(o.asn(), 65030);
}

fn open_body(version: u8, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version, 0xfe, 0x06];
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    msg(OPEN, &b)
}

#[test]
fn open_errors_have_their_rfc_4271_subcodes() {
    let neg = Negotiated::default();
    let id = [203, 0, 113, 1];
    use subcode::open::*;
    // §6.2: version 3 → 2/1, data the largest version we support.
    assert_eq!(
        packet::decode(&open_body(3, 9, id, &[]), &neg),
        Err(open_err(UNSUPPORTED_VERSION, &[0, 4]))
    );
    // RFC 6286: BGP Identifier 0.0.0.0 → 2/3.
    assert_eq!(
        packet::decode(&open_body(4, 9, [0; 4], &[]), &neg),
        Err(open_err(BAD_BGP_IDENTIFIER, &[]))
    );
    // §6.2: hold time 1 or 2 → 2/6; 0 and 3 are fine.
    for hold in [1, 2] {
        assert_eq!(
            packet::decode(&open_body(4, hold, id, &[]), &neg),
            Err(open_err(UNACCEPTABLE_HOLD_TIME, &[]))
        );
    }
    for hold in [0, 3] {
        assert!(packet::decode(&open_body(4, hold, id, &[]), &neg).is_ok());
    }
    // §6.2: an optional parameter other than capabilities → 2/4.
    assert_eq!(
        packet::decode(&open_body(4, 9, id, &[1, 1, 0]), &neg),
        Err(open_err(UNSUPPORTED_OPTIONAL_PARAMETER, &[]))
    );
    // Malformed parameters or capabilities → 2/0.
    for params in [
        &[2u8, 5, 1, 4, 0, 1][..],   // parameter overruns
        &[2, 4, 1, 4, 0, 1][..],     // capability overruns its parameter
        &[2, 3, 1, 1, 0][..],        // multiprotocol of length 1
        &[2, 4, 65, 2, 0, 1][..],    // four-octet AS of length 2
        &[2, 3, 2, 1, 0][..],        // route refresh with a value
        &[2, 5, 64, 3, 0, 0, 0][..], // graceful restart not 2 + 4n
        &[2][..],                    // parameter header cut
    ] {
        assert_eq!(
            packet::decode(&open_body(4, 9, id, params), &neg),
            Err(open_err(UNSPECIFIC, &[])),
            "{params:?}"
        );
    }
    // Opt Parm Len shorter than what follows → 2/0.
    let mut m = open_body(4, 9, id, &[2, 0]);
    m[28] = 0;
    assert_eq!(packet::decode(&m, &neg), Err(open_err(UNSPECIFIC, &[])));
}

#[test]
fn negotiated_from_two_opens() {
    let mp = |f| Capability::Multiprotocol(f);
    let ours = open(vec![
        mp(Family::IPV4_UNICAST),
        mp(Family::IPV6_UNICAST),
        Capability::FourOctetAs(65030),
    ]);
    let theirs = Open {
        my_as: 65040,
        capabilities: vec![mp(Family::IPV6_UNICAST), Capability::FourOctetAs(65040)],
        ..ours.clone()
    };
    assert_eq!(
        Negotiated::new(&ours, &theirs),
        Negotiated {
            four_octet_as: true,
            families: vec![Family::IPV6_UNICAST],
            ibgp: false
        }
    );
    // No multiprotocol capability: IPv4 unicast only; no four-octet AS on one side.
    let old = open(vec![]);
    assert_eq!(
        Negotiated::new(&ours, &old),
        Negotiated {
            four_octet_as: false,
            families: vec![Family::IPV4_UNICAST],
            ibgp: true
        }
    );
}

// ===== NOTIFICATION, KEEPALIVE, ROUTE-REFRESH =====

#[test]
fn notification_keepalive_and_route_refresh_round_trip_with_exact_bytes() {
    let neg = Negotiated::default();
    let n = Message::Notification(Notification::new(ErrorCode::UpdateMessage, 10, vec![]));
    assert_eq!(encoded(&n, &neg), msg(NOTIFICATION, &[3, 10]));
    assert_eq!(round_trip(&n, &neg), n);
    let n = Message::Notification(Notification::new(ErrorCode::Other(9), 7, b"why".to_vec()));
    assert_eq!(round_trip(&n, &neg), n);
    let shut = Notification::cease(subcode::cease::ADMINISTRATIVE_SHUTDOWN);
    assert_eq!(shut.to_string(), "Cease / Administrative Shutdown (6/2)");
    assert_eq!(encoded(&Message::Keepalive, &neg), msg(KEEPALIVE, &[]));
    assert_eq!(round_trip(&Message::Keepalive, &neg), Message::Keepalive);
    let rr = Message::RouteRefresh(RouteRefresh {
        family: Family::IPV6_UNICAST,
    });
    assert_eq!(encoded(&rr, &neg), msg(ROUTE_REFRESH, &[0, 2, 0, 1]));
    assert_eq!(round_trip(&rr, &neg), rr);
    let other = Message::RouteRefresh(RouteRefresh {
        family: Family::new(16388, 71),
    });
    assert_eq!(round_trip(&other, &neg), other);
}

#[test]
fn mp_reach_without_a_next_hop_of_its_family_is_refused() {
    for nh in [vec![], vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]] {
        let m = Message::Update(Box::new(Update {
            mp_reach: Some(MpReach {
                family: Family::IPV6_UNICAST,
                next_hops: nh,
                nlri: vec![net("2001:db8::/32")],
            }),
            ..Update::default()
        }));
        let mut out = Vec::new();
        assert_eq!(
            packet::encode(&m, &ebgp4(), &mut out),
            Err(packet::EncodeError::MissingNextHop {
                family: Family::IPV6_UNICAST
            })
        );
        assert!(out.is_empty());
    }
}

#[test]
fn an_oversized_message_is_refused_and_leaves_out_untouched() {
    let n = Message::Notification(Notification::new(ErrorCode::Cease, 2, vec![0; 4096]));
    let mut out = vec![1, 2, 3];
    assert_eq!(
        packet::encode(&n, &Negotiated::default(), &mut out),
        Err(packet::EncodeError::TooLong { len: 4096 + 21 })
    );
    assert_eq!(out, [1, 2, 3]);
}

// ===== UPDATE and attributes =====

fn full_attrs() -> Attrs {
    Attrs {
        origin: Origin::Egp,
        as_path: AsPath {
            segments: vec![
                AsSegment {
                    kind: AsSegmentKind::Sequence,
                    asns: vec![65030, 4_200_000_001, 65031],
                },
                AsSegment {
                    kind: AsSegmentKind::Set,
                    asns: vec![64512, 4_200_000_002],
                },
            ],
        },
        next_hop: Some(Ipv4Addr::new(203, 0, 113, 1)),
        med: Some(50),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some(Aggregator {
            asn: 4_200_000_003,
            address: Ipv4Addr::new(192, 0, 2, 9),
        }),
        communities: vec![Community(0xfe06_0001), Community::NO_EXPORT],
        large_communities: vec![LargeCommunity {
            global: 4_200_000_001,
            local1: 1,
            local2: 2,
        }],
        originator_id: Some(Ipv4Addr::new(192, 0, 2, 1)),
        cluster_list: vec![Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3)],
        mp_next_hop: vec![],
        // In code order, as they are sent and so decoded.
        unknown: vec![
            RawAttr {
                flags: 0xe0,
                code: 16,
                value: vec![0, 2, 0xfe, 6, 0, 0, 0, 1],
            },
            RawAttr {
                flags: 0xe0,
                code: 240,
                value: b"hi".to_vec(),
            },
        ],
    }
}

/// Every attribute, four-octet session (iBGP so LOCAL_PREF and the RR attributes are kept).
#[test]
fn update_with_every_attribute_round_trips() {
    let neg = ibgp4();
    let u = Update {
        withdrawn: vec![net4("198.51.100.0/24"), net4("0.0.0.0/0")],
        attrs: Some(full_attrs()),
        nlri: vec![
            net4("10.244.0.0/16"),
            net4("10.244.1.128/25"),
            net4("192.0.2.1/32"),
        ],
        ..Update::default()
    };
    let m = Message::Update(Box::new(u));
    assert_eq!(round_trip(&m, &neg), m);
}

/// The same attributes to an OLD two-octet peer: AS_TRANS in AS_PATH and AGGREGATOR, the
/// real ones in AS4_PATH/AS4_AGGREGATOR, merged back on decode (RFC 6793 §4.2.2, §4.2.3).
#[test]
fn update_to_a_two_octet_peer_splits_and_merges_back() {
    let neg = Negotiated {
        ibgp: true,
        ..ebgp2()
    };
    let u = Update {
        attrs: Some(full_attrs()),
        nlri: vec![net4("10.244.0.0/16")],
        ..Update::default()
    };
    let m = Message::Update(Box::new(u));
    let bytes = encoded(&m, &neg);
    // AS_PATH: sequence 65030, AS_TRANS, 65031; set 64512, AS_TRANS.
    let as_path = attr(
        0x40,
        2,
        &[
            2, 3, 0xfe, 0x06, 0x5b, 0xa0, 0xfe, 0x07, 1, 2, 0xfc, 0, 0x5b, 0xa0,
        ],
    );
    assert!(contains(&bytes, &as_path), "{bytes:02x?}");
    // AGGREGATOR with AS_TRANS; AS4_AGGREGATOR (18) with the real AS.
    assert!(contains(
        &bytes,
        &attr(0xc0, 7, &[0x5b, 0xa0, 192, 0, 2, 9])
    ));
    let mut a4 = 4_200_000_003u32.to_be_bytes().to_vec();
    a4.extend_from_slice(&[192, 0, 2, 9]);
    assert!(contains(&bytes, &attr(0xc0, 18, &a4)));
    assert!(bytes.windows(2).any(|w| w == [0xc0, 17]), "AS4_PATH sent");
    let back = packet::decode(&bytes, &neg).unwrap();
    assert_eq!(back, m);
    let Message::Update(back) = back else {
        panic!()
    };
    assert!(back.errors.is_empty(), "{:?}", back.errors);
}

#[test]
fn no_as4_attributes_when_every_as_fits_two_octets() {
    let mut attrs = Attrs::local(Origin::Igp);
    attrs.as_path = AsPath::default().prepend(65030);
    attrs.next_hop = Some(Ipv4Addr::new(203, 0, 113, 1));
    attrs.aggregator = Some(Aggregator {
        asn: 65030,
        address: Ipv4Addr::new(203, 0, 113, 1),
    });
    let m = Message::Update(Box::new(Update {
        attrs: Some(attrs),
        nlri: vec![net4("10.244.30.0/24")],
        ..Update::default()
    }));
    let bytes = encoded(&m, &ebgp2());
    let want = update(
        &[],
        &[
            origin(0),
            as_path2(&[65030]),
            next_hop([203, 0, 113, 1]),
            attr(0xc0, 7, &[0xfe, 0x06, 203, 0, 113, 1]),
        ]
        .concat(),
        &["10.244.30.0/24"],
    );
    assert_eq!(bytes, want);
    assert_eq!(packet::decode(&bytes, &ebgp2()).unwrap(), m);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// RUNBOOK §3's `update(std_attrs(65030, '203.0.113.1'), ['10.244.30.0/24'])`, which BIRD
/// takes, is what Twill decodes and writes back byte for byte.
#[test]
fn the_python_peer_update_decodes_and_re_encodes_identically() {
    let wire = update(&[], &std_attrs(65030), &["10.244.30.0/24"]);
    let u = decode_update(&wire, &ebgp4()).unwrap();
    assert!(u.errors.is_empty());
    assert_eq!(u.nlri, vec![net4("10.244.30.0/24")]);
    let a = u.attrs.as_ref().unwrap();
    assert_eq!(a.origin, Origin::Igp);
    assert_eq!(a.as_path.neighbour_as(), Some(65030));
    assert_eq!(a.next_hop, Some(Ipv4Addr::new(203, 0, 113, 1)));
    assert_eq!(encoded(&Message::Update(Box::new(u)), &ebgp4()), wire);
}

/// RFC 4271 §4.3: trailing bits of a prefix are irrelevant; they are masked on decode.
#[test]
fn prefix_trailing_bits_are_masked() {
    let mut nlri = pfx("10.244.16.0/20");
    nlri[3] |= 0x0f;
    let wire = update_raw(&[], &std_attrs(65030), &nlri, None);
    let u = decode_update(&wire, &ebgp4()).unwrap();
    assert_eq!(u.nlri, vec![net4("10.244.16.0/20")]);
}

#[test]
fn ipv6_mp_reach_with_global_and_link_local_next_hop_round_trips() {
    let neg = ebgp4();
    let mut attrs = Attrs::local(Origin::Igp);
    attrs.as_path = AsPath::default().prepend(65030);
    let nh: Vec<IpAddr> = vec!["2001:db8::1".parse().unwrap(), "fe80::1".parse().unwrap()];
    let u = Update {
        attrs: Some(attrs),
        mp_reach: Some(MpReach {
            family: Family::IPV6_UNICAST,
            next_hops: nh.clone(),
            nlri: vec![
                net("2001:db8:1::/48"),
                net("2001:db8:2:3::/64"),
                net("::/0"),
            ],
        }),
        mp_unreach: Some(MpUnreach {
            family: Family::IPV6_UNICAST,
            withdrawn: vec![net("2001:db8:ff::/56")],
        }),
        ..Update::default()
    };
    let m = Message::Update(Box::new(u));
    assert_eq!(round_trip(&m, &neg), m);
    // One next hop only (16 octets) is fine too.
    let wire = update(
        &[],
        &[
            mp_reach(2, 1, &v6("2001:db8::1"), &["2001:db8:1::/48"]),
            origin(0),
            as_path4(&[65030]),
        ]
        .concat(),
        &[],
    );
    let u = decode_update(&wire, &neg).unwrap();
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    let reach = u.mp_reach.unwrap();
    assert_eq!(reach.next_hops, vec![nh[0]]);
    assert_eq!(reach.nlri, vec![net("2001:db8:1::/48")]);
}

#[test]
fn ipv4_in_mp_reach_decodes() {
    let wire = update(
        &[],
        &[
            mp_reach(1, 1, &[203, 0, 113, 1], &["10.244.30.0/24"]),
            origin(0),
            as_path4(&[65030]),
        ]
        .concat(),
        &[],
    );
    let u = decode_update(&wire, &ebgp4()).unwrap();
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    assert_eq!(
        u.mp_reach,
        Some(MpReach {
            family: Family::IPV4_UNICAST,
            next_hops: vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))],
            nlri: vec![net("10.244.30.0/24")],
        })
    );
    assert!(u.attrs.is_some());
}

#[test]
fn unknown_optional_transitive_is_kept_and_sent_on_with_the_partial_bit() {
    let wire = update(
        &[],
        &[std_attrs(65030), attr(0xc0, 240, b"hi")].concat(),
        &["10.244.30.0/24"],
    );
    let u = decode_update(&wire, &ebgp4()).unwrap();
    assert!(u.errors.is_empty());
    let unknown = &u.attrs.as_ref().unwrap().unknown;
    assert_eq!(
        unknown,
        &vec![RawAttr {
            flags: 0xc0,
            code: 240,
            value: b"hi".to_vec()
        }]
    );
    let again = encoded(&Message::Update(Box::new(u)), &ebgp4());
    assert!(contains(&again, &attr(0xe0, 240, b"hi")), "{again:02x?}");
    // A long one keeps its value and gets the extended length.
    let long = vec![7u8; 300];
    let wire = update(
        &[],
        &[std_attrs(65030), attr(0xd0, 241, &long)].concat(),
        &["10.244.30.0/24"],
    );
    let u = decode_update(&wire, &ebgp4()).unwrap();
    let again = encoded(&Message::Update(Box::new(u)), &ebgp4());
    assert!(contains(&again, &attr(0xf0, 241, &long)));
}

#[test]
fn unknown_optional_non_transitive_is_dropped_quietly() {
    let wire = update(
        &[],
        &[std_attrs(65030), attr(0x80, 241, b"x")].concat(),
        &["10.244.30.0/24"],
    );
    let u = decode_update(&wire, &ebgp4()).unwrap();
    assert!(u.errors.is_empty());
    assert!(u.attrs.unwrap().unknown.is_empty());
}

// ===== End-of-RIB (RFC 4724 §2) =====

#[test]
fn end_of_rib_for_both_families() {
    let neg = ebgp4();
    let v4 = Update::end_of_rib(Family::IPV4_UNICAST);
    assert!(v4.is_end_of_rib());
    assert_eq!(
        encoded(&Message::Update(Box::new(v4.clone())), &neg),
        msg(UPDATE, &[0, 0, 0, 0])
    );
    let v6 = Update::end_of_rib(Family::IPV6_UNICAST);
    let bytes = encoded(&Message::Update(Box::new(v6.clone())), &neg);
    assert_eq!(bytes, msg(UPDATE, &[0, 0, 0, 6, 0x80, 15, 3, 0, 2, 1]));
    for (eor, fam) in [(v4, Family::IPV4_UNICAST), (v6, Family::IPV6_UNICAST)] {
        let bytes = encoded(&Message::Update(Box::new(eor)), &neg);
        let back = decode_update(&bytes, &neg).unwrap();
        assert_eq!(back.end_of_rib_family(), Some(fam));
    }
    let not = decode_update(&update(&["10.0.0.0/8"], &[], &[]), &neg).unwrap();
    assert!(!not.is_end_of_rib());
    let not = decode_update(&update(&[], &std_attrs(65030), &["10.0.0.0/8"]), &neg).unwrap();
    assert!(!not.is_end_of_rib());
}
