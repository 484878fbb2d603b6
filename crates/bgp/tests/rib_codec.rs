//! The RIB's out-updates through the real codec into another RIB: what one speaker's RIB
//! hands out, `packet::encode_announce` / `encode_withdraw` turn into UPDATEs, `packet::frame`
//! and `decode` read back, and the receiving speaker's RIB takes in. The receiver must end up
//! with exactly the routes sent, with the attributes the export rules give them, and the
//! packing must put many prefixes in each message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_bgp::packet::{
    self, AsPath, AsSegment, AsSegmentKind, Attrs, Community, Family, LargeCommunity, Message,
    Negotiated, Origin, Update, MAX_MESSAGE_LEN,
};
use twill_bgp::policy::Policy;
use twill_bgp::rib::{PeerConfig, PeerId, PeerSession, Rib, RibChanges, RibConfig};

const FEEDER: PeerId = PeerId(1);
const EBGP: PeerId = PeerId(2);
const IBGP: PeerId = PeerId(3);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn families() -> Vec<Family> {
    vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST]
}

fn negotiated(ibgp: bool) -> Negotiated {
    Negotiated {
        four_octet_as: true,
        families: families(),
        ibgp,
    }
}

/// Session with our ends at 192.0.2.1 and 2001:db8::1.
fn session(router_id: &str) -> PeerSession {
    let mut s = PeerSession::new(ip("192.0.2.1"), router_id.parse().unwrap(), families());
    s.next_hop_v6 = Some("2001:db8::1".parse().unwrap());
    s
}

/// The sender: AS 65000, a feeder (eBGP 65001), an eBGP receiver (65002), an iBGP receiver.
fn sender() -> Rib {
    let mut rib = Rib::new(RibConfig::new(65000, Ipv4Addr::new(10, 0, 0, 1)));
    for (id, asn, addr) in [
        (FEEDER, 65001, "192.0.2.11"),
        (EBGP, 65002, "192.0.2.12"),
        (IBGP, 65000, "192.0.2.13"),
    ] {
        let mut c = PeerConfig::new(asn, ip(addr));
        if asn != 65000 {
            c.import = Some(Policy::accept_all());
            c.export = Some(Policy::accept_all());
        }
        rib.add_peer(id, c).unwrap();
        rib.peer_up(id, session(&format!("10.0.9.{}", id.0)))
            .unwrap();
    }
    rib
}

/// A receiver whose one peer (id 1) is the sender at 192.0.2.1.
fn receiver(local_as: u32, peer_as: u32) -> Rib {
    let mut rib = Rib::new(RibConfig::new(local_as, Ipv4Addr::new(10, 0, 0, 99)));
    let mut c = PeerConfig::new(peer_as, ip("192.0.2.1"));
    c.import = Some(Policy::accept_all());
    rib.add_peer(PeerId(1), c).unwrap();
    let mut s = PeerSession::new(ip("192.0.2.99"), Ipv4Addr::new(10, 0, 0, 1), families());
    s.next_hop_v6 = Some("2001:db8::99".parse().unwrap());
    rib.peer_up(PeerId(1), s).unwrap();
    rib
}

fn feeder_attrs(tag: u32) -> Attrs {
    let mut a = Attrs::local(Origin::Igp);
    a.as_path = AsPath {
        segments: vec![AsSegment {
            kind: AsSegmentKind::Sequence,
            asns: vec![65001, 4_200_000_000 + tag],
        }],
    };
    a.next_hop = Some(Ipv4Addr::new(192, 0, 2, 11));
    a.med = Some(tag);
    a.communities = vec![Community(0xFDE9_0000 + tag)];
    a.large_communities = vec![LargeCommunity {
        global: 65001,
        local1: tag,
        local2: 7,
    }];
    a
}

fn v4s(n: u32, tag: u32) -> Vec<Ipv4Net> {
    (0..n)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0A00_0000 + (tag << 20) + (i << 8)), 24).unwrap())
        .collect()
}

fn v6s(n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            let a = Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 80));
            IpNet::V6(Ipv6Net::new(a, 48).unwrap())
        })
        .collect()
}

/// Encode everything `peer` is sent in `changes`, as the speaker does; returns the bytes and
/// the number of messages.
fn encode_for(changes: &[RibChanges], peer: PeerId, neg: &Negotiated) -> (Vec<u8>, usize) {
    let mut buf = Vec::new();
    let mut n = 0;
    for c in changes {
        for (p, u) in &c.out {
            if *p != peer {
                continue;
            }
            if !u.withdraw.is_empty() {
                n += packet::encode_withdraw(&u.withdraw, neg, &mut buf).unwrap();
            }
            for (attrs, prefixes) in &u.announce {
                n += packet::encode_announce(attrs, prefixes, neg, &mut buf).unwrap();
            }
        }
    }
    (buf, n)
}

/// Frame and decode a byte stream into its UPDATEs.
fn decode_all(mut buf: &[u8], neg: &Negotiated) -> Vec<Update> {
    let mut v = Vec::new();
    while !buf.is_empty() {
        let len = packet::frame(buf).unwrap().expect("a whole message");
        assert!(len <= MAX_MESSAGE_LEN);
        match packet::decode(&buf[..len], neg).unwrap() {
            Message::Update(u) => {
                assert!(u.errors.is_empty(), "{:?}", u.errors);
                v.push(*u);
            }
            m => panic!("not an UPDATE: {m:?}"),
        }
        buf = &buf[len..];
    }
    v
}

fn feed(rib: &mut Rib) -> Vec<RibChanges> {
    let mut changes = Vec::new();
    for tag in [1, 2] {
        let u = Update {
            attrs: Some(feeder_attrs(tag)),
            nlri: v4s(3000, tag),
            ..Update::default()
        };
        changes.push(rib.apply(FEEDER, &u).unwrap());
    }
    let mut a = feeder_attrs(3);
    a.next_hop = None;
    let u = Update {
        attrs: Some(a),
        mp_reach: Some(packet::MpReach {
            family: Family::IPV6_UNICAST,
            next_hops: vec![ip("2001:db8::11"), ip("fe80::11")],
            nlri: v6s(500),
        }),
        ..Update::default()
    };
    changes.push(rib.apply(FEEDER, &u).unwrap());
    changes
}

#[test]
fn ebgp_receiver_gets_every_route_with_our_as_and_next_hop() {
    let mut a = sender();
    let changes = feed(&mut a);
    let neg = negotiated(false);
    let (bytes, messages) = encode_for(&changes, EBGP, &neg);
    // 6,000 /24s in two attribute sets (4 octets each: about 1,000 a message) and 500 /48s
    // (7 octets each): packed, not one message per prefix.
    assert!(messages <= 10, "{messages} messages");
    let mut b = receiver(65002, 65000);
    for u in decode_all(&bytes, &neg) {
        b.apply(PeerId(1), &u).unwrap();
    }
    let routes = b.routes();
    assert_eq!(routes.len(), 6500);
    for r in &routes {
        let attrs = &r.paths[0].attrs;
        let asns = &attrs.as_path.segments[0].asns;
        assert_eq!(asns[..2], [65000, 65001], "{}", r.prefix);
        assert_eq!(attrs.local_pref, None, "eBGP-learned: ignored");
        assert_eq!(attrs.med, None, "not passed from another AS");
        assert_eq!(attrs.communities.len(), 1);
        assert_eq!(attrs.large_communities.len(), 1);
        match r.prefix {
            IpNet::V4(_) => assert_eq!(attrs.next_hop, Some(Ipv4Addr::new(192, 0, 2, 1))),
            IpNet::V6(_) => assert_eq!(attrs.mp_next_hop, vec![ip("2001:db8::1")]),
        }
    }
    // Withdraw one attribute set's prefixes at the sender: the receiver loses exactly those.
    let gone = a
        .apply(
            FEEDER,
            &Update {
                withdrawn: v4s(3000, 1),
                ..Update::default()
            },
        )
        .unwrap();
    let (bytes, messages) = encode_for(&[gone], EBGP, &neg);
    assert!(messages <= 4, "{messages} withdrawal messages");
    for u in decode_all(&bytes, &neg) {
        b.apply(PeerId(1), &u).unwrap();
    }
    assert_eq!(b.routes().len(), 3500);
    assert!(b.route(IpNet::V4(v4s(1, 1)[0])).is_none());
    assert!(b.route(IpNet::V4(v4s(1, 2)[0])).is_some());
}

#[test]
fn ibgp_receiver_gets_next_hop_unchanged_and_local_pref() {
    let mut a = sender();
    let changes = feed(&mut a);
    let neg = negotiated(true);
    let (bytes, _) = encode_for(&changes, IBGP, &neg);
    let mut c = receiver(65000, 65000);
    for u in decode_all(&bytes, &neg) {
        c.apply(PeerId(1), &u).unwrap();
    }
    let routes = c.routes();
    assert_eq!(routes.len(), 6500);
    for r in &routes {
        let attrs = &r.paths[0].attrs;
        assert_eq!(attrs.local_pref, Some(100));
        assert_eq!(
            attrs.as_path.segments[0].asns[0], 65001,
            "no prepend inside the AS"
        );
        assert!(attrs.med.is_some(), "MED passes inside the AS");
        match r.prefix {
            IpNet::V4(_) => assert_eq!(attrs.next_hop, Some(Ipv4Addr::new(192, 0, 2, 11))),
            // Passed on without the link-local next hop.
            IpNet::V6(_) => assert_eq!(attrs.mp_next_hop, vec![ip("2001:db8::11")]),
        }
    }
    // The receiver forwards by what it got: the feeder's next hops.
    let fib = c.fib();
    assert_eq!(fib.len(), 6500);
    assert!(fib
        .iter()
        .all(|f| f.next_hops == vec![ip("192.0.2.11")] || f.next_hops == vec![ip("2001:db8::11")]));
}
