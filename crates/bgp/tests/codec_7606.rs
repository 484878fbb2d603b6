//! RFC 7606 outcomes, one test per case: RUNBOOK §3's table of what BIRD does (each row), and
//! the cases the RFC names beyond it. Each asserts the exact action, where the routes went,
//! and for a session reset the exact NOTIFICATION.

mod codec_util;

use codec_util::*;
use twill_bgp::packet::{
    subcode::update::*, AttrError, ErrorAction, ErrorCode, Family, Negotiated, Notification, Update,
};

const ROUTE: &str = "10.244.30.0/24";

fn reset(subcode: u8) -> Notification {
    Notification::new(ErrorCode::UpdateMessage, subcode, Vec::new())
}

/// The UPDATE was decoded, its one error is `code` with `action`.
fn one_error(u: &Update, code: u8, action: ErrorAction) -> &AttrError {
    assert_eq!(u.errors.len(), 1, "{:?}", u.errors);
    let e = &u.errors[0];
    assert_eq!((e.code, e.action), (code, action), "{e:?}");
    assert!(!e.reason.is_empty());
    e
}

/// Treat-as-withdraw of ROUTE: no attributes, the route in Withdrawn Routes.
fn withdrawn(u: &Update) {
    assert_eq!(u.attrs, None);
    assert!(u.nlri.is_empty());
    assert_eq!(u.withdrawn, vec![net4(ROUTE)]);
    assert_eq!(u.worst_error(), Some(ErrorAction::TreatAsWithdraw));
}

/// ROUTE still announced, with attributes.
fn kept(u: &Update) {
    assert_eq!(u.nlri, vec![net4(ROUTE)]);
    assert!(u.withdrawn.is_empty());
    assert!(u.attrs.is_some());
}

fn with_attrs(attrs: &[u8]) -> Update {
    with_attrs_on(attrs, &ebgp4())
}

fn with_attrs_on(attrs: &[u8], neg: &Negotiated) -> Update {
    decode_update(&update(&[], attrs, &[ROUTE]), neg).expect("no session reset")
}

/// ORIGIN, AS_PATH [65030] and NEXT_HOP with `extra` in the middle (after AS_PATH).
fn std_with(extra: &[u8]) -> Vec<u8> {
    [
        origin(0),
        as_path4(&[65030]),
        extra.to_vec(),
        next_hop([203, 0, 113, 1]),
    ]
    .concat()
}

// ===== RUNBOOK §3, row by row =====

#[test]
fn origin_flags_0xc0_is_treat_as_withdraw() {
    // RFC 7606 §3 c. BIRD: "Malformed origin attribute - conflicting flags (c0)".
    let u = with_attrs(
        &[
            attr(0xc0, 1, &[0]),
            as_path4(&[65030]),
            next_hop([203, 0, 113, 1]),
        ]
        .concat(),
    );
    one_error(&u, 1, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn origin_length_2_is_treat_as_withdraw() {
    // RFC 7606 §7.1. BIRD: "Malformed ORIGIN attribute - invalid length (2)".
    let u = with_attrs(
        &[
            attr(0x40, 1, &[0, 0]),
            as_path4(&[65030]),
            next_hop([203, 0, 113, 1]),
        ]
        .concat(),
    );
    one_error(&u, 1, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn origin_value_5_is_treat_as_withdraw() {
    // RFC 7606 §7.1. BIRD: "Malformed ORIGIN attribute - invalid value (5)".
    let u = with_attrs(&[origin(5), as_path4(&[65030]), next_hop([203, 0, 113, 1])].concat());
    one_error(&u, 1, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn missing_next_hop_is_treat_as_withdraw() {
    // RFC 7606 §3 d. BIRD: "Missing mandatory NEXT_HOP attribute".
    let u = with_attrs(&[origin(0), as_path4(&[65030])].concat());
    one_error(&u, 3, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn next_hop_length_5_is_treat_as_withdraw() {
    // RFC 7606 §7.3. BIRD: "Malformed NEXT_HOP attribute - invalid length (5)".
    let u = with_attrs(
        &[
            origin(0),
            as_path4(&[65030]),
            attr(0x40, 3, &[203, 0, 113, 1, 0]),
        ]
        .concat(),
    );
    one_error(&u, 3, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn as_path_segment_claiming_2_ases_holding_1_is_treat_as_withdraw() {
    // RFC 7606 §7.2 overrun. BIRD: "Malformed AS_PATH attribute - segment framing error".
    let mut bad = vec![2, 2];
    bad.extend_from_slice(&65030u32.to_be_bytes());
    let u = with_attrs(&[origin(0), attr(0x40, 2, &bad), next_hop([203, 0, 113, 1])].concat());
    one_error(&u, 2, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn attribute_length_overrunning_the_list_is_treat_as_withdraw_and_nlri_still_found() {
    // RFC 7606 §4: the Total Path Attribute Length locates the NLRI. BIRD: "Malformed
    // attribute list - framing error (9/4) at 23", withdraw.
    let attrs = [
        origin(0),
        as_path4(&[65030]),
        attr_len(0x40, 3, &[203, 0, 113, 1], 9),
    ]
    .concat();
    let u = with_attrs(&attrs);
    one_error(&u, 0, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn unknown_attribute_with_well_known_flags_is_3_2_with_the_attribute() {
    // RFC 4271 §6.3, which RFC 7606 leaves as it is. BIRD departs from it here: "Unknown
    // attribute (code 99) - conflicting flags (40)", withdraw.
    let bad = attr(0x40, 99, &[1]);
    let m = update(&[], &std_with(&bad), &[ROUTE]);
    assert_eq!(
        decode_update(&m, &ebgp4()),
        Err(Notification::new(
            ErrorCode::UpdateMessage,
            UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
            bad
        ))
    );
}

#[test]
fn origin_twice_keeps_the_first_and_discards_the_second() {
    // RFC 7606 §3 g. BIRD: "Discarding duplicate attribute (code 1)".
    let attrs = [
        origin(1),
        as_path4(&[65030]),
        origin(2),
        next_hop([203, 0, 113, 1]),
    ]
    .concat();
    let u = with_attrs(&attrs);
    one_error(&u, 1, ErrorAction::AttributeDiscard);
    kept(&u);
    assert_eq!(u.attrs.unwrap().origin, twill_bgp::packet::Origin::Egp);
}

#[test]
fn unknown_optional_transitive_is_kept_without_error() {
    // BIRD keeps it, shown as `BGP.f0 [t]: 68 69`.
    let u = with_attrs(&std_with(&attr(0xc0, 240, b"hi")));
    assert!(u.errors.is_empty());
    kept(&u);
    assert_eq!(u.attrs.unwrap().unknown[0].value, b"hi");
}

#[test]
fn total_path_attribute_length_too_big_is_3_1() {
    // RFC 7606 §3 b. BIRD: NOTIFICATION 3/1 "Malformed attribute list".
    let attrs = std_attrs(65030);
    let m = update_raw(&[], &attrs, &pfx(ROUTE), Some(40));
    assert_eq!(
        decode_update(&m, &ebgp4()),
        Err(reset(MALFORMED_ATTRIBUTE_LIST))
    );
}

#[test]
fn nlri_prefix_length_33_is_3_10() {
    // RFC 7606 §5.3 a. BIRD: NOTIFICATION 3/10 "Invalid network field" (data empty).
    let m = update_raw(&[], &std_attrs(65030), &[33, 10, 244, 30, 0, 0], None);
    assert_eq!(
        decode_update(&m, &ebgp4()),
        Err(reset(INVALID_NETWORK_FIELD))
    );
}

// ===== the rest of RFC 7606 §3–§7 =====

#[test]
fn withdrawn_routes_length_too_big_is_3_1() {
    let mut m = update(&[ROUTE], &[], &[]);
    m[20] = 9; // Withdrawn Routes Length 9, 4 there
    assert_eq!(
        decode_update(&m, &ebgp4()),
        Err(reset(MALFORMED_ATTRIBUTE_LIST))
    );
}

#[test]
fn nlri_prefix_overrunning_the_message_is_3_10() {
    // RFC 7606 §5.3 b.
    let m = update_raw(&[], &std_attrs(65030), &[24, 10, 244], None);
    assert_eq!(
        decode_update(&m, &ebgp4()),
        Err(reset(INVALID_NETWORK_FIELD))
    );
}

#[test]
fn withdrawn_routes_are_checked_like_nlri() {
    // RFC 7606 §3 i.
    let m = update_raw(&[40, 10, 0, 0, 0, 0], &[], &[], None);
    assert_eq!(
        decode_update(&m, &ebgp4()),
        Err(reset(INVALID_NETWORK_FIELD))
    );
}

#[test]
fn attribute_header_cut_short_is_treat_as_withdraw() {
    // RFC 7606 §4: "fewer than three octets remain".
    let attrs = [std_attrs(65030), vec![0x40, 99]].concat();
    let u = with_attrs(&attrs);
    one_error(&u, 0, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
    // With Extended Length, fewer than four.
    let attrs = [std_attrs(65030), vec![0x50, 99, 0]].concat();
    let u = with_attrs(&attrs);
    one_error(&u, 0, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn well_known_attribute_not_transitive_is_treat_as_withdraw() {
    // RFC 7606 §3 c: AS_PATH with flags 0x00.
    let mut p = vec![2, 1];
    p.extend_from_slice(&65030u32.to_be_bytes());
    let u = with_attrs(&[origin(0), attr(0x00, 2, &p), next_hop([203, 0, 113, 1])].concat());
    one_error(&u, 2, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn missing_origin_and_missing_as_path_are_treat_as_withdraw() {
    // RFC 7606 §3 d; both recorded, the UPDATE withdrawn.
    let u = with_attrs(&next_hop([203, 0, 113, 1]));
    assert_eq!(
        u.errors
            .iter()
            .map(|e| (e.code, e.action))
            .collect::<Vec<_>>(),
        vec![
            (1, ErrorAction::TreatAsWithdraw),
            (2, ErrorAction::TreatAsWithdraw)
        ]
    );
    withdrawn(&u);
    // No attributes at all with NLRI.
    let u = decode_update(&update(&[], &[], &[ROUTE]), &ebgp4()).unwrap();
    assert_eq!(u.errors.len(), 3);
    withdrawn(&u);
}

#[test]
fn malformed_as_paths_are_treat_as_withdraw() {
    // RFC 7606 §7.2: unknown segment type, segment length zero, a single octet left;
    // RFC 7607: AS 0; RFC 5065: a confederation segment from a peer outside one.
    let seg = |ty: u8, asns: &[u32]| {
        let mut v = vec![ty, asns.len() as u8];
        for a in asns {
            v.extend_from_slice(&a.to_be_bytes());
        }
        v
    };
    for (what, path) in [
        ("type 5", seg(5, &[65030])),
        ("length 0", seg(2, &[])),
        ("underrun", [seg(2, &[65030]), vec![2]].concat()),
        ("AS 0", seg(2, &[65030, 0])),
        ("confed sequence", seg(3, &[65030])),
        ("confed set", seg(4, &[65030])),
    ] {
        let u = with_attrs(&[origin(0), attr(0x40, 2, &path), next_hop([203, 0, 113, 1])].concat());
        let e = one_error(&u, 2, ErrorAction::TreatAsWithdraw);
        withdrawn(&u);
        assert!(e.reason.starts_with("AS_PATH"), "{what}: {e:?}");
    }
    // A four-octet AS_PATH read on a two-octet session: AS 0, then a bad segment.
    let u = with_attrs_on(&std_attrs(65030), &ebgp2());
    one_error(&u, 2, ErrorAction::TreatAsWithdraw);
    // An empty AS_PATH is valid (iBGP-originated).
    let u = with_attrs(&[origin(0), attr(0x40, 2, &[]), next_hop([203, 0, 113, 1])].concat());
    assert!(u.errors.is_empty());
    kept(&u);
}

#[test]
fn next_hop_that_is_not_a_host_address_is_treat_as_withdraw() {
    for nh in [[0, 0, 0, 0], [224, 0, 0, 1], [255, 255, 255, 255]] {
        let u = with_attrs(&[origin(0), as_path4(&[65030]), next_hop(nh)].concat());
        one_error(&u, 3, ErrorAction::TreatAsWithdraw);
        withdrawn(&u);
    }
}

#[test]
fn med_of_the_wrong_length_is_treat_as_withdraw() {
    // RFC 7606 §7.4.
    let u = with_attrs(&std_with(&attr(0x80, 4, &[0, 1])));
    one_error(&u, 4, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn local_pref_from_ebgp_is_discarded_and_malformed_from_ibgp_withdraws() {
    // RFC 7606 §7.5.
    let lp = attr(0x40, 5, &100u32.to_be_bytes());
    let u = with_attrs(&std_with(&lp));
    one_error(&u, 5, ErrorAction::AttributeDiscard);
    kept(&u);
    assert_eq!(u.attrs.unwrap().local_pref, None);
    let u = with_attrs_on(&std_with(&lp), &ibgp4());
    assert!(u.errors.is_empty());
    assert_eq!(u.attrs.unwrap().local_pref, Some(100));
    let u = with_attrs_on(&std_with(&attr(0x40, 5, &[0, 0, 100])), &ibgp4());
    one_error(&u, 5, ErrorAction::TreatAsWithdraw);
    withdrawn(&u);
}

#[test]
fn atomic_aggregate_with_a_value_is_discarded() {
    // RFC 7606 §7.6.
    let u = with_attrs(&std_with(&attr(0x40, 6, &[1])));
    one_error(&u, 6, ErrorAction::AttributeDiscard);
    kept(&u);
    assert!(!u.attrs.unwrap().atomic_aggregate);
}

#[test]
fn aggregator_of_the_wrong_length_or_as_0_is_discarded() {
    // RFC 7606 §7.7: 8 octets between four-octet speakers, 6 otherwise; RFC 7607 AS 0.
    for (neg, value) in [
        (ebgp4(), vec![0xfe, 0x06, 192, 0, 2, 1]),
        (ebgp2(), vec![0, 0, 0xfe, 0x06, 192, 0, 2, 1]),
        (ebgp4(), vec![0, 0, 0, 0, 192, 0, 2, 1]),
    ] {
        let attrs = if neg.four_octet_as {
            std_with(&attr(0xc0, 7, &value))
        } else {
            [
                origin(0),
                as_path2(&[65030]),
                attr(0xc0, 7, &value),
                next_hop([203, 0, 113, 1]),
            ]
            .concat()
        };
        let u = with_attrs_on(&attrs, &neg);
        one_error(&u, 7, ErrorAction::AttributeDiscard);
        kept(&u);
        assert_eq!(u.attrs.unwrap().aggregator, None);
    }
}

#[test]
fn list_attributes_of_bad_lengths_are_treat_as_withdraw() {
    // RFC 7606 §7.8 COMMUNITIES, RFC 8092 §6 LARGE_COMMUNITY, §7.14 extended communities,
    // §7.15 IPv6 extended communities: each a non-zero multiple of its unit.
    for (code, flags, len) in [
        (8u8, 0xc0u8, 3usize),
        (8, 0xc0, 0),
        (32, 0xc0, 13),
        (32, 0xc0, 0),
        (16, 0xc0, 7),
        (25, 0xc0, 21),
    ] {
        let u = with_attrs(&std_with(&attr(flags, code, &vec![1; len])));
        one_error(&u, code, ErrorAction::TreatAsWithdraw);
        withdrawn(&u);
    }
}

#[test]
fn route_reflector_attributes_from_ebgp_are_discarded_and_malformed_from_ibgp_withdraw() {
    // RFC 7606 §7.9 ORIGINATOR_ID, §7.10 CLUSTER_LIST.
    let oid = attr(0x80, 9, &[192, 0, 2, 1]);
    let cl = attr(0x80, 10, &[192, 0, 2, 2]);
    for a in [&oid, &cl] {
        let u = with_attrs(&std_with(a));
        one_error(&u, a[1], ErrorAction::AttributeDiscard);
        kept(&u);
        let u = with_attrs_on(&std_with(a), &ibgp4());
        assert!(u.errors.is_empty());
        kept(&u);
    }
    for bad in [
        attr(0x80, 9, &[192, 0, 2, 1, 0]),
        attr(0x80, 10, &[192, 0, 2, 2, 0, 0]),
    ] {
        let u = with_attrs_on(&std_with(&bad), &ibgp4());
        one_error(&u, bad[1], ErrorAction::TreatAsWithdraw);
        withdrawn(&u);
    }
}

#[test]
fn several_errors_take_the_strongest_action_and_all_are_recorded() {
    // RFC 7606 §3 h: a discard (ATOMIC_AGGREGATE) and a withdraw (MED) → withdraw.
    let u = with_attrs(&std_with(
        &[attr(0x40, 6, &[1]), attr(0x80, 4, &[1])].concat(),
    ));
    assert_eq!(
        u.errors
            .iter()
            .map(|e| (e.code, e.action))
            .collect::<Vec<_>>(),
        vec![
            (6, ErrorAction::AttributeDiscard),
            (4, ErrorAction::TreatAsWithdraw)
        ]
    );
    withdrawn(&u);
    // Two discards stay a discard.
    let u = with_attrs(&std_with(&[attr(0x40, 6, &[1]), origin(1)].concat()));
    assert_eq!(u.worst_error(), Some(ErrorAction::AttributeDiscard));
    kept(&u);
}

#[test]
fn errors_with_no_reachable_nlri_are_a_session_reset() {
    // RFC 7606 §5.2: path attributes, no NLRI, an error other than attribute discard.
    let attrs = [attr(0x40, 1, &[0, 0]), as_path4(&[65030])].concat();
    let m = update(&["10.244.31.0/24"], &attrs, &[]);
    assert_eq!(
        decode_update(&m, &ebgp4()),
        Err(Notification::new(
            ErrorCode::UpdateMessage,
            ATTRIBUTE_LENGTH_ERROR,
            attr(0x40, 1, &[0, 0])
        ))
    );
    // A discard there is fine, and the withdrawal stands.
    let m = update(
        &["10.244.31.0/24"],
        &[origin(0), attr(0x40, 6, &[1])].concat(),
        &[],
    );
    let u = decode_update(&m, &ebgp4()).unwrap();
    one_error(&u, 6, ErrorAction::AttributeDiscard);
    assert_eq!(u.withdrawn, vec![net4("10.244.31.0/24")]);
    assert_eq!(u.attrs, None);
}

#[test]
fn as4_attributes_malformed_or_from_a_four_octet_peer_are_discarded() {
    // RFC 6793 §6: malformed AS4_PATH / AS4_AGGREGATOR from an OLD speaker → discard.
    let two = [origin(0), as_path2(&[65030]), next_hop([203, 0, 113, 1])].concat();
    for bad in [
        attr(0xc0, 17, &[2, 1, 0, 0]),                  // shorter than 6
        attr(0xc0, 17, &[2, 2, 0, 0, 0xfe, 0x06]),      // segment overrun
        attr(0xc0, 17, &[9, 1, 0, 0, 0xfe, 0x06]),      // unknown segment type
        attr(0xc0, 18, &[0, 0, 0xfe, 0x06, 192, 0, 2]), // AS4_AGGREGATOR not 8
    ] {
        let u = with_attrs_on(&[two.clone(), bad.clone()].concat(), &ebgp2());
        one_error(&u, bad[1], ErrorAction::AttributeDiscard);
        kept(&u);
    }
    // RFC 6793 §4.1: from a NEW speaker they are not used.
    let as4 = attr(0xc0, 17, &[2, 1, 0xfa, 0x56, 0xea, 0x01]);
    let u = with_attrs(&std_with(&as4));
    one_error(&u, 17, ErrorAction::AttributeDiscard);
    kept(&u);
    assert_eq!(u.attrs.unwrap().as_path.segments[0].asns, vec![65030]);
}

// ===== MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760, RFC 7606 §5.3, §7.11, §7.12) =====

const NH6: &str = "2001:db8::1";

fn mp_attrs(reach: &[u8]) -> Vec<u8> {
    [reach.to_vec(), origin(0), as_path4(&[65030])].concat()
}

fn reach6(nlri: &[&str]) -> Vec<u8> {
    mp_reach(2, 1, &v6(NH6), nlri)
}

#[test]
fn duplicate_mp_reach_or_mp_unreach_is_3_1() {
    // RFC 7606 §3 g.
    let a = [
        reach6(&["2001:db8:1::/48"]),
        reach6(&["2001:db8:2::/48"]),
        origin(0),
        as_path4(&[65030]),
    ]
    .concat();
    assert_eq!(
        decode_update(&update(&[], &a, &[]), &ebgp4()),
        Err(reset(MALFORMED_ATTRIBUTE_LIST))
    );
    let un = mp_unreach(2, 1, &["2001:db8:1::/48"]);
    let a = [un.clone(), un].concat();
    assert_eq!(
        decode_update(&update(&[], &a, &[]), &ebgp4()),
        Err(reset(MALFORMED_ATTRIBUTE_LIST))
    );
}

/// An MP_REACH_NLRI value from raw parts: AFI, SAFI, next hop, then `rest` (the reserved
/// octet and the NLRI, or whatever a test forges there).
fn mp_value(afi: u16, safi: u8, nh: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = afi.to_be_bytes().to_vec();
    v.push(safi);
    v.push(nh.len() as u8);
    v.extend_from_slice(nh);
    v.extend_from_slice(rest);
    v
}

#[test]
fn malformed_mp_reach_is_a_session_reset_with_3_9() {
    // RFC 7606 §5.3 (a) IPv6 length > 128, (b) overrun, (c) flags, (d) length < 5; §7.11 next
    // hop length; RFC 4760 §7 names "Optional Attribute Error".
    let nh = v6(NH6);
    let good_nlri = [&[0u8][..], &pfx("2001:db8:1::/48")].concat();
    let cases = [
        (
            "/129",
            attr(0x90, 14, &mp_value(2, 1, &nh, &[0, 129, 0x20])),
        ),
        (
            "overrun",
            attr(0x90, 14, &mp_value(2, 1, &nh, &[0, 48, 0x20, 0x01])),
        ),
        (
            "flags 0x40",
            attr(0x50, 14, &mp_value(2, 1, &nh, &good_nlri)),
        ),
        (
            "flags 0xc0",
            attr(0xd0, 14, &mp_value(2, 1, &nh, &good_nlri)),
        ),
        ("length 4", attr(0x90, 14, &[0, 2, 1, 16])),
        (
            "next hop 5 octets",
            attr(0x90, 14, &mp_value(2, 1, &[0; 5], &good_nlri)),
        ),
        (
            "next hop over the end",
            attr(0x90, 14, &[0, 2, 1, 16, 0, 0]),
        ),
        (
            "IPv4 next hop of 16",
            attr(0x90, 14, &mp_value(1, 1, &nh, &[0])),
        ),
        (
            "no reserved octet",
            attr(0x90, 14, &mp_value(2, 1, &nh, &[])),
        ),
    ];
    for (what, reach) in cases {
        let m = update(&[], &mp_attrs(&reach), &[]);
        let got = decode_update(&m, &ebgp4());
        let Err(n) = got else {
            panic!("{what}: {got:?}")
        };
        assert_eq!(
            (n.code, n.subcode, n.data),
            (ErrorCode::UpdateMessage, OPTIONAL_ATTRIBUTE_ERROR, reach),
            "{what}"
        );
    }
}

#[test]
fn malformed_mp_unreach_is_a_session_reset_with_3_9() {
    for un in [
        attr(0x90, 15, &[0, 2]),                 // length < 3
        attr(0x90, 15, &[0, 2, 1, 64, 0x20, 1]), // overrun
        attr(0x90, 15, &[0, 2, 1, 130, 0]),      // /130
        attr(0xc0, 15, &[0, 2, 1]),              // flags
    ] {
        let m = update(&[], &un, &[]);
        let Err(n) = decode_update(&m, &ebgp4()) else {
            panic!("{un:?}")
        };
        assert_eq!(
            (n.code, n.subcode),
            (ErrorCode::UpdateMessage, OPTIONAL_ATTRIBUTE_ERROR)
        );
    }
}

#[test]
fn mp_reach_for_an_unknown_or_unnegotiated_family_is_discarded() {
    // Not "incorrect" under RFC 4760 §7: the routes are ignored, the session stays (BIRD
    // does the same).
    let four = |reach: Vec<u8>| mp_attrs(&reach);
    let two = |reach: Vec<u8>| [reach, origin(0), as_path2(&[65030])].concat();
    for (neg, attrs) in [
        (ebgp4(), four(mp_reach(25, 65, &[192, 0, 2, 1], &[]))), // L2VPN VPLS
        (ebgp4(), four(mp_reach(1, 128, &[0; 12], &[]))),        // VPNv4
        (ebgp2(), two(reach6(&["2001:db8:1::/48"]))),            // IPv6 not negotiated
    ] {
        let u = decode_update(&update(&[], &attrs, &[]), &neg).unwrap();
        one_error(&u, 14, ErrorAction::AttributeDiscard);
        assert_eq!(u.mp_reach, None);
        assert_eq!(u.attrs, None);
    }
    let u = decode_update(&update(&[], &mp_unreach(25, 65, &[]), &[]), &ebgp4()).unwrap();
    one_error(&u, 15, ErrorAction::AttributeDiscard);
    assert_eq!(u.mp_unreach, None);
}

#[test]
fn treat_as_withdraw_moves_mp_reach_into_mp_unreach() {
    let a = [
        reach6(&["2001:db8:1::/48", "2001:db8:2::/48"]),
        attr(0x40, 1, &[9]),
        as_path4(&[65030]),
    ]
    .concat();
    let u = decode_update(&update(&[], &a, &[]), &ebgp4()).unwrap();
    one_error(&u, 1, ErrorAction::TreatAsWithdraw);
    assert_eq!(u.mp_reach, None);
    assert_eq!(u.attrs, None);
    let un = u.mp_unreach.unwrap();
    assert_eq!(un.family, Family::IPV6_UNICAST);
    assert_eq!(
        un.withdrawn,
        vec![net("2001:db8:1::/48"), net("2001:db8:2::/48")]
    );
}

#[test]
fn missing_as_path_with_only_mp_reach_is_treat_as_withdraw() {
    // RFC 7606 §3 d; NEXT_HOP is not required without IPv4 NLRI (RFC 4760).
    let a = [reach6(&["2001:db8:1::/48"]), origin(0)].concat();
    let u = decode_update(&update(&[], &a, &[]), &ebgp4()).unwrap();
    one_error(&u, 2, ErrorAction::TreatAsWithdraw);
    assert_eq!(
        u.mp_unreach.unwrap().withdrawn,
        vec![net("2001:db8:1::/48")]
    );
}

#[test]
fn treat_as_withdraw_with_ipv4_nlri_ipv6_reach_and_an_ipv4_unreach_keeps_every_prefix() {
    // RFC 7606 §5.1: be ready for any combination. IPv4 MP_UNREACH, IPv6 MP_REACH and IPv4
    // NLRI with a bad ORIGIN: every prefix ends up withdrawn.
    let a = [
        mp_unreach(1, 1, &["10.244.40.0/24"]),
        reach6(&["2001:db8:1::/48"]),
        origin(7),
        as_path4(&[65030]),
        next_hop([203, 0, 113, 1]),
    ]
    .concat();
    let u = decode_update(&update(&[], &a, &[ROUTE]), &ebgp4()).unwrap();
    one_error(&u, 1, ErrorAction::TreatAsWithdraw);
    let mut w = u.withdrawn.clone();
    w.sort();
    assert_eq!(w, vec![net4("10.244.30.0/24"), net4("10.244.40.0/24")]);
    let un = u.mp_unreach.unwrap();
    assert_eq!(
        (un.family, un.withdrawn),
        (Family::IPV6_UNICAST, vec![net("2001:db8:1::/48")])
    );
    assert!(u.nlri.is_empty() && u.mp_reach.is_none() && u.attrs.is_none());
}

#[test]
fn mp_unreach_alone_with_errors_elsewhere_is_not_5_2() {
    // RFC 7606 §5.2 exempts MP_UNREACH_NLRI: an IPv6 withdrawal plus a discarded attribute.
    let a = [mp_unreach(2, 1, &["2001:db8:1::/48"]), attr(0x40, 6, &[1])].concat();
    let u = decode_update(&update(&[], &a, &[]), &ebgp4()).unwrap();
    one_error(&u, 6, ErrorAction::AttributeDiscard);
    assert_eq!(
        u.mp_unreach.unwrap().withdrawn,
        vec![net("2001:db8:1::/48")]
    );
}
