use super::*;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn entry(prefix: &str, tag: u16, next_hop: &str, metric: u8) -> Entry {
    Entry {
        tag,
        prefix: net(prefix),
        next_hop: ip(next_hop),
        metric,
    }
}

/// UDP payloads FRR 8.4.4's ripd sent (tcpdump on a bridge port; `redistribute static` of
/// `ip route 10.244.5.0/24 blackhole` and `ip route 10.244.6.0/24 blackhole tag 7`).
mod frr {
    /// At start: the whole-table request to 224.0.0.9.
    pub const REQUEST: &[u8] = &[
        0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
    ];
    /// Its periodic update.
    pub const UPDATE: &[u8] = &[
        0x02, 0x02, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x0a, 0xf4, 0x05, 0x00, 0xff, 0xff, 0xff,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x02, 0x00, 0x07, 0x0a, 0xf4,
        0x06, 0x00, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    ];
    /// The triggered update after `no ip route 10.244.5.0/24 blackhole`: only the change.
    pub const WITHDRAW: &[u8] = &[
        0x02, 0x02, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x0a, 0xf4, 0x05, 0x00, 0xff, 0xff, 0xff,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
    ];
}

#[test]
fn frr_whole_table_request_decodes_and_encodes_to_the_same_bytes() {
    let d = decode(frr::REQUEST).unwrap();
    assert_eq!(d.message, Message::WholeTableRequest);
    assert!(d.skipped.is_empty());
    assert_eq!(Message::WholeTableRequest.encode(), frr::REQUEST);
}

#[test]
fn frr_updates_decode_and_encode_to_the_same_bytes() {
    let d = decode(frr::UPDATE).unwrap();
    let want = Message::Response(vec![
        entry("10.244.5.0/24", 0, "0.0.0.0", 1),
        entry("10.244.6.0/24", 7, "0.0.0.0", 1),
    ]);
    assert_eq!(d.message, want);
    assert!(d.skipped.is_empty());
    assert_eq!(want.encode(), frr::UPDATE);

    let d = decode(frr::WITHDRAW).unwrap();
    let want = Message::Response(vec![entry("10.244.5.0/24", 0, "0.0.0.0", INFINITY)]);
    assert_eq!(d.message, want);
    assert_eq!(want.encode(), frr::WITHDRAW);
}

#[test]
fn next_hop_and_tag_round_trip() {
    let m = Message::Response(vec![
        entry("0.0.0.0/0", 0, "192.0.2.9", 3),
        entry("10.244.1.7/32", 0xffff, "0.0.0.0", 16),
        entry("198.51.100.0/24", 1, "192.0.2.1", 15),
    ]);
    let d = decode(&m.encode()).unwrap();
    assert_eq!(d.message, m);
    let q = Message::Request(vec![entry("10.244.1.0/24", 0, "0.0.0.0", 0)]);
    assert_eq!(decode(&q.encode()).unwrap().message, q);
}

fn raw_entry(afi: u16, addr: &str, mask: &str, nh: &str, metric: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&afi.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&ip(addr).octets());
    b.extend_from_slice(&ip(mask).octets());
    b.extend_from_slice(&ip(nh).octets());
    b.extend_from_slice(&metric.to_be_bytes());
    b
}

fn message(command: u8, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![command, 2, 0, 0];
    for e in entries {
        b.extend_from_slice(e);
    }
    b
}

#[test]
fn bad_entries_are_skipped_with_the_reason_and_the_rest_is_used() {
    let good = raw_entry(2, "10.244.3.0", "255.255.255.0", "0.0.0.0", 2);
    let cases: Vec<(Vec<u8>, SkipReason)> = vec![
        (
            raw_entry(0, "10.1.0.0", "255.255.0.0", "0.0.0.0", 1),
            SkipReason::Family(0),
        ),
        (
            raw_entry(10, "10.1.0.0", "255.255.0.0", "0.0.0.0", 1),
            SkipReason::Family(10),
        ),
        (
            raw_entry(2, "10.1.0.0", "255.0.255.0", "0.0.0.0", 1),
            SkipReason::Mask(ip("255.0.255.0")),
        ),
        (
            raw_entry(2, "10.1.0.0", "0.0.0.0", "0.0.0.0", 1),
            SkipReason::NoMask(ip("10.1.0.0")),
        ),
        (
            raw_entry(2, "10.1.0.1", "255.255.0.0", "0.0.0.0", 1),
            SkipReason::HostBits(ip("10.1.0.1"), 16),
        ),
        (
            raw_entry(2, "127.0.0.0", "255.0.0.0", "0.0.0.0", 1),
            SkipReason::Destination(ip("127.0.0.0")),
        ),
        (
            raw_entry(2, "0.1.0.0", "255.255.0.0", "0.0.0.0", 1),
            SkipReason::Destination(ip("0.1.0.0")),
        ),
        (
            raw_entry(2, "224.0.0.0", "240.0.0.0", "0.0.0.0", 1),
            SkipReason::Destination(ip("224.0.0.0")),
        ),
        (
            raw_entry(2, "240.0.0.0", "255.0.0.0", "0.0.0.0", 1),
            SkipReason::Destination(ip("240.0.0.0")),
        ),
        (
            raw_entry(2, "10.1.0.0", "255.255.0.0", "0.0.0.0", 0),
            SkipReason::Metric(0),
        ),
        (
            raw_entry(2, "10.1.0.0", "255.255.0.0", "0.0.0.0", 17),
            SkipReason::Metric(17),
        ),
        (
            raw_entry(2, "10.1.0.0", "255.255.0.0", "0.0.0.0", u32::MAX),
            SkipReason::Metric(u32::MAX),
        ),
        // AFI 0xFFFF is allowed first only (§5.2); later it is just an unknown family.
        (
            raw_entry(0xffff, "0.0.0.0", "0.0.0.0", "0.0.0.0", 0),
            SkipReason::Family(0xffff),
        ),
    ];
    for (bad, reason) in cases {
        let d = decode(&message(2, &[good.clone(), bad, good.clone()])).unwrap();
        assert_eq!(d.skipped, vec![Skipped { index: 1, reason }]);
        assert_eq!(
            d.message,
            Message::Response(vec![entry("10.244.3.0/24", 0, "0.0.0.0", 2); 2])
        );
        assert!(!reason.to_string().is_empty());
    }
    // The default route is fine; a request may carry any metric (clamped).
    let d = decode(&message(
        1,
        &[
            raw_entry(2, "0.0.0.0", "0.0.0.0", "0.0.0.0", 0),
            raw_entry(2, "10.1.0.0", "255.255.0.0", "0.0.0.0", 1000),
        ],
    ))
    .unwrap();
    assert_eq!(
        d.message,
        Message::Request(vec![
            entry("0.0.0.0/0", 0, "0.0.0.0", 0),
            entry("10.1.0.0/16", 0, "0.0.0.0", 16)
        ])
    );
}

#[test]
fn messages_that_are_not_ripv2_are_refused() {
    let good = raw_entry(2, "10.244.3.0", "255.255.255.0", "0.0.0.0", 2);
    assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
    assert_eq!(decode(&[2, 2, 0]), Err(DecodeError::Short(3)));
    assert_eq!(decode(&[2, 2, 0, 0]), Err(DecodeError::Empty));
    let mut b = message(2, std::slice::from_ref(&good));
    b.push(0);
    assert_eq!(decode(&b), Err(DecodeError::Length(25)));
    assert_eq!(
        decode(&message(3, std::slice::from_ref(&good))),
        Err(DecodeError::Command(3))
    );
    assert_eq!(
        decode(&message(0, std::slice::from_ref(&good))),
        Err(DecodeError::Command(0))
    );
    for v in [0u8, 1, 3] {
        let mut b = message(2, std::slice::from_ref(&good));
        b[1] = v;
        assert_eq!(decode(&b), Err(DecodeError::Version(v)));
    }
    let many: Vec<Vec<u8>> = (0..26).map(|_| good.clone()).collect();
    assert_eq!(
        decode(&message(2, &many)),
        Err(DecodeError::TooManyEntries(26))
    );
    assert!(decode(&message(2, &many[..25])).is_ok());
    let auth = raw_entry(0xffff, "0.0.0.0", "0.0.0.0", "0.0.0.0", 0);
    assert_eq!(
        decode(&message(2, &[auth, good.clone()])),
        Err(DecodeError::Authenticated)
    );
    // The unused octets are not checked.
    let mut b = message(2, &[good]);
    b[2] = 0xab;
    assert!(decode(&b).is_ok());
    // A response's AFI-0 metric-16 entry is no whole-table request, just a skipped entry.
    let d = decode(&message(
        2,
        &[raw_entry(0, "0.0.0.0", "0.0.0.0", "0.0.0.0", 16)],
    ))
    .unwrap();
    assert_eq!(d.message, Message::Response(vec![]));
    assert_eq!(d.skipped.len(), 1);
}

#[test]
fn responses_split_at_25_entries() {
    let entries: Vec<Entry> = (0..60u32)
        .map(|i| Entry {
            tag: 0,
            prefix: Ipv4Net::new(Ipv4Addr::from(0x0af4_0000 + (i << 8)), 24).unwrap(),
            next_hop: Ipv4Addr::UNSPECIFIED,
            metric: 1,
        })
        .collect();
    let ms = responses(&entries);
    assert_eq!(
        ms.iter().map(|m| m.entries().len()).collect::<Vec<_>>(),
        [25, 25, 10]
    );
    assert!(ms.iter().all(|m| m.encode().len() <= MAX_LEN));
    let back: Vec<Entry> = ms
        .iter()
        .flat_map(|m| decode(&m.encode()).unwrap().message.entries().to_vec())
        .collect();
    assert_eq!(back, entries);
    assert!(responses(&[]).is_empty());
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap sweep beside the fuzz target: every prefix of a valid message and every
    // single-octet change of it.
    let base = frr::UPDATE;
    for n in 0..=base.len() {
        let _ = decode(&base[..n]);
    }
    for i in 0..base.len() {
        for v in [0u8, 1, 2, 0x10, 0x7f, 0x80, 0xff] {
            let mut b = base.to_vec();
            b[i] = v;
            let _ = decode(&b);
        }
    }
}
