//! Unit tests of the RIB: input checks, FIB changes, export rules, reflection, graceful
//! restart, refresh, RFC 8212, interning.

use super::*;
use crate::packet::{AsPath, AsSegment, AsSegmentKind, LargeCommunity, MpReach, MpUnreach, Origin};
use crate::policy::{Action, Match, PrefixMatch, Term, Verdict};

const LOCAL_AS: u32 = 65000;
const RID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn v4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn path(asns: &[u32]) -> AsPath {
    if asns.is_empty() {
        return AsPath::default();
    }
    AsPath {
        segments: vec![AsSegment {
            kind: AsSegmentKind::Sequence,
            asns: asns.to_vec(),
        }],
    }
}

fn attrs(asns: &[u32], nh: &str) -> Attrs {
    let mut a = Attrs::local(Origin::Igp);
    a.as_path = path(asns);
    a.next_hop = Some(ip4(nh));
    a
}

fn announce(a: Attrs, prefixes: &[&str]) -> Update {
    Update {
        attrs: Some(a),
        nlri: prefixes.iter().map(|p| v4(p)).collect(),
        ..Update::default()
    }
}

fn withdraw(prefixes: &[&str]) -> Update {
    Update {
        withdrawn: prefixes.iter().map(|p| v4(p)).collect(),
        ..Update::default()
    }
}

/// The test topology: we are AS 65000, router ID 10.0.0.1, on 192.0.2.1.
/// Peers: 1 = eBGP AS 65001 at 192.0.2.11 (accept all both ways); 2 = eBGP AS 65002 at
/// 192.0.2.12 (accept all); 3, 4 = iBGP at 192.0.2.13/.14; more added per test.
struct Lab {
    rib: Rib,
}

const E1: PeerId = PeerId(1);
const E2: PeerId = PeerId(2);
const I3: PeerId = PeerId(3);
const I4: PeerId = PeerId(4);

impl Lab {
    fn new() -> Lab {
        Lab::with(|_| {})
    }

    fn with(tune: impl FnOnce(&mut RibConfig)) -> Lab {
        let mut cfg = RibConfig::new(LOCAL_AS, RID);
        tune(&mut cfg);
        let mut lab = Lab { rib: Rib::new(cfg) };
        lab.add(E1, 65001, "192.0.2.11", |c| {
            c.import = Some(Policy::accept_all());
            c.export = Some(Policy::accept_all());
        });
        lab.add(E2, 65002, "192.0.2.12", |c| {
            c.import = Some(Policy::accept_all());
            c.export = Some(Policy::accept_all());
        });
        lab.add(I3, LOCAL_AS, "192.0.2.13", |_| {});
        lab.add(I4, LOCAL_AS, "192.0.2.14", |_| {});
        lab
    }

    fn add(&mut self, id: PeerId, asn: u32, addr: &str, tune: impl FnOnce(&mut PeerConfig)) {
        let mut c = PeerConfig::new(asn, ip(addr));
        tune(&mut c);
        self.rib.add_peer(id, c).unwrap();
        let rid = rid_of(addr);
        let c = self
            .rib
            .peer_up(
                id,
                PeerSession::new(
                    ip("192.0.2.1"),
                    rid,
                    vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
                ),
            )
            .unwrap();
        assert!(c.fib.is_empty());
    }

    fn apply(&mut self, id: PeerId, u: Update) -> RibChanges {
        self.rib.apply(id, &u).unwrap()
    }
}

/// The BGP Identifier the Lab gives the peer at `addr`: 172.16.0.<last octet>.
fn rid_of(addr: &str) -> Ipv4Addr {
    match ip(addr) {
        IpAddr::V4(a) => Ipv4Addr::new(172, 16, 0, a.octets()[3]),
        IpAddr::V6(_) => Ipv4Addr::new(172, 16, 1, 0),
    }
}

/// What one peer was sent in a change set.
fn sent(c: &RibChanges, peer: PeerId) -> Option<&OutUpdate> {
    c.out.iter().find(|(p, _)| *p == peer).map(|(_, u)| u)
}

fn announced(c: &RibChanges, peer: PeerId) -> Vec<(IpNet, Arc<Attrs>)> {
    sent(c, peer)
        .map(|u| {
            u.announce
                .iter()
                .flat_map(|(a, ps)| ps.iter().map(move |p| (*p, a.clone())))
                .collect()
        })
        .unwrap_or_default()
}

fn withdrawn(c: &RibChanges, peer: PeerId) -> Vec<IpNet> {
    sent(c, peer)
        .map(|u| u.withdraw.clone())
        .unwrap_or_default()
}

fn fib(prefix: &str, nhs: &[&str]) -> FibChange {
    FibChange {
        prefix: net(prefix),
        next_hops: nhs.iter().map(|n| ip(n)).collect(),
    }
}

#[test]
fn learned_route_goes_to_the_fib_and_to_peers_by_the_export_rules() {
    let mut lab = Lab::new();
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.11"])]);
    // Not back to E1.
    assert!(sent(&c, E1).is_none());
    // To eBGP E2: our AS prepended, next hop our address, no LOCAL_PREF.
    let to_e2 = announced(&c, E2);
    assert_eq!(to_e2.len(), 1);
    let a = &to_e2[0].1;
    assert_eq!(a.as_path, path(&[65000, 65001]));
    assert_eq!(a.next_hop, Some(ip4("192.0.2.1")));
    assert_eq!(a.local_pref, None);
    // To iBGP: next hop unchanged, LOCAL_PREF 100, path unchanged.
    for peer in [I3, I4] {
        let to = announced(&c, peer);
        assert_eq!(to.len(), 1, "{peer:?}");
        assert_eq!(to[0].1.next_hop, Some(ip4("192.0.2.11")));
        assert_eq!(to[0].1.local_pref, Some(DEFAULT_LOCAL_PREF));
        assert_eq!(to[0].1.as_path, path(&[65001]));
    }
}

#[test]
fn unchanged_reannouncement_sends_nothing() {
    let mut lab = Lab::new();
    let u = announce(
        attrs(&[65001], "192.0.2.11"),
        &["203.0.113.0/24", "198.51.100.0/24"],
    );
    let first = lab.apply(E1, u.clone());
    assert_eq!(first.fib.len(), 2);
    let again = lab.apply(E1, u);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn better_path_with_same_export_is_not_resent_but_fib_follows() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(attrs(&[65001, 65010], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    // E2 brings a shorter path: best changes, FIB follows, every peer but E2 hears it.
    let c = lab.apply(
        E2,
        announce(attrs(&[65002], "192.0.2.12"), &["203.0.113.0/24"]),
    );
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.12"])]);
    assert_eq!(announced(&c, E1)[0].1.as_path, path(&[65000, 65002]));
    // E2 is the source now: what it had from us is withdrawn.
    assert_eq!(withdrawn(&c, E2), vec![net("203.0.113.0/24")]);
}

#[test]
fn withdrawal_removes_from_fib_and_peers_and_unknown_withdrawal_is_silent() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    let c = lab.apply(E1, withdraw(&["203.0.113.0/24"]));
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &[])]);
    for p in [E2, I3, I4] {
        assert_eq!(withdrawn(&c, p), vec![net("203.0.113.0/24")], "{p:?}");
    }
    assert!(lab.apply(E1, withdraw(&["203.0.113.0/24"])).is_empty());
    assert!(lab.apply(E2, withdraw(&["198.51.100.0/24"])).is_empty());
    assert!(lab.rib.routes().is_empty());
}

#[test]
fn fallback_to_the_second_path_on_withdrawal() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    lab.apply(
        E2,
        announce(attrs(&[65002, 65020], "192.0.2.12"), &["203.0.113.0/24"]),
    );
    let c = lab.apply(E1, withdraw(&["203.0.113.0/24"]));
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.12"])]);
    // E1 now hears E2's route; E2 (the new source) gets a withdrawal of what it had.
    assert_eq!(announced(&c, E1).len(), 1);
    assert_eq!(withdrawn(&c, E2), vec![net("203.0.113.0/24")]);
}

#[test]
fn ibgp_split_horizon() {
    let mut lab = Lab::new();
    let c = lab.apply(
        I3,
        announce(attrs(&[65010], "192.0.2.50"), &["203.0.113.0/24"]),
    );
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.50"])]);
    assert!(sent(&c, I4).is_none(), "iBGP-learned not sent to iBGP");
    assert!(sent(&c, I3).is_none());
    // eBGP peers get it, with our AS and our next hop.
    let to_e1 = announced(&c, E1);
    assert_eq!(to_e1[0].1.as_path, path(&[65000, 65010]));
    assert_eq!(to_e1[0].1.next_hop, Some(ip4("192.0.2.1")));
}

#[test]
fn loops_are_dropped_on_input() {
    let mut lab = Lab::new();
    // Our AS in an eBGP route's path.
    let c = lab.apply(
        E1,
        announce(
            attrs(&[65001, 65000, 65003], "192.0.2.11"),
            &["203.0.113.0/24"],
        ),
    );
    assert!(c.is_empty());
    // ORIGINATOR_ID is our router ID.
    let mut a = attrs(&[], "192.0.2.13");
    a.originator_id = Some(RID);
    assert!(lab.apply(I3, announce(a, &["203.0.113.0/24"])).is_empty());
    // Our cluster ID in CLUSTER_LIST.
    let mut a = attrs(&[], "192.0.2.13");
    a.cluster_list = vec![ip4("10.9.9.9"), RID];
    assert!(lab.apply(I3, announce(a, &["203.0.113.0/24"])).is_empty());
    assert!(lab.rib.routes().is_empty());
    // A looped announcement replaces (withdraws) a good one from the same peer.
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    let c = lab.apply(
        E1,
        announce(attrs(&[65001, 65000], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &[])]);
}

#[test]
fn configured_cluster_id_is_what_loop_detection_and_reflection_use() {
    let mut lab = Lab::with(|c| c.cluster_id = Some(ip4("10.255.0.1")));
    lab.add(PeerId(5), LOCAL_AS, "192.0.2.15", |c| c.rr_client = true);
    let mut a = attrs(&[], "192.0.2.13");
    a.cluster_list = vec![RID];
    // Our router ID is not our cluster ID here: accepted.
    let c = lab.apply(I3, announce(a, &["203.0.113.0/24"]));
    let to_client = announced(&c, PeerId(5));
    assert_eq!(to_client[0].1.cluster_list, vec![ip4("10.255.0.1"), RID]);
    let mut a = attrs(&[], "192.0.2.13");
    a.cluster_list = vec![ip4("10.255.0.1")];
    assert!(lab.apply(I4, announce(a, &["198.51.100.0/24"])).is_empty());
}

#[test]
fn ebgp_local_pref_is_ignored_and_ibgp_local_pref_decides() {
    let mut lab = Lab::new();
    let mut a = attrs(&[65001], "192.0.2.11");
    a.local_pref = Some(500);
    let c = lab.apply(E1, announce(a, &["203.0.113.0/24"]));
    assert_eq!(announced(&c, I3)[0].1.local_pref, Some(DEFAULT_LOCAL_PREF));
    // An iBGP path with LOCAL_PREF 200 beats the eBGP one (100) despite eBGP-over-iBGP.
    let mut b = attrs(&[65009, 65008], "192.0.2.60");
    b.local_pref = Some(200);
    let c = lab.apply(I3, announce(b, &["203.0.113.0/24"]));
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.60"])]);
}

#[test]
fn med_from_another_as_is_not_passed_to_ebgp_but_reaches_ibgp() {
    let mut lab = Lab::new();
    let mut a = attrs(&[65001], "192.0.2.11");
    a.med = Some(77);
    let c = lab.apply(E1, announce(a, &["203.0.113.0/24"]));
    assert_eq!(announced(&c, E2)[0].1.med, None);
    assert_eq!(announced(&c, I3)[0].1.med, Some(77));
}

#[test]
fn next_hop_self_towards_ibgp() {
    let mut lab = Lab::new();
    lab.add(PeerId(5), LOCAL_AS, "192.0.2.15", |c| {
        c.next_hop_self = true
    });
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    assert_eq!(
        announced(&c, PeerId(5))[0].1.next_hop,
        Some(ip4("192.0.2.1"))
    );
    assert_eq!(announced(&c, I3)[0].1.next_hop, Some(ip4("192.0.2.11")));
}

#[test]
fn keep_original_next_hop_towards_ebgp_but_never_for_our_own_routes() {
    let mut lab = Lab::new();
    lab.add(PeerId(6), 65006, "192.0.2.16", |c| {
        c.import = Some(Policy::accept_all());
        c.export = Some(Policy::accept_all());
        c.keep_original_next_hop = true;
    });
    // Learned from iBGP (a mesh node's block) and from eBGP: the next hop stays.
    let c = lab.apply(I3, announce(attrs(&[], "192.0.2.13"), &["10.244.3.0/24"]));
    assert_eq!(
        announced(&c, PeerId(6))[0].1.next_hop,
        Some(ip4("192.0.2.13"))
    );
    assert_eq!(announced(&c, E1)[0].1.next_hop, Some(ip4("192.0.2.1")));
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    let a = &announced(&c, PeerId(6))[0].1;
    assert_eq!(a.next_hop, Some(ip4("192.0.2.11")));
    assert_eq!(a.as_path, path(&[65000, 65001]), "still an eBGP export");
    // Ours: our address, always.
    let c = lab
        .rib
        .originate(net("10.244.0.0/24"), Attrs::local(Origin::Igp));
    assert_eq!(
        announced(&c, PeerId(6))[0].1.next_hop,
        Some(ip4("192.0.2.1"))
    );
}

#[test]
fn originated_routes_get_our_next_hop_and_are_not_fib_changes() {
    let mut lab = Lab::new();
    let c = lab
        .rib
        .originate(net("10.244.1.0/24"), Attrs::local(Origin::Igp));
    assert!(c.fib.is_empty(), "a local best is not a FIB change");
    let to_i3 = announced(&c, I3);
    assert_eq!(to_i3[0].1.next_hop, Some(ip4("192.0.2.1")));
    assert_eq!(to_i3[0].1.local_pref, Some(DEFAULT_LOCAL_PREF));
    assert!(to_i3[0].1.as_path.segments.is_empty());
    let to_e1 = announced(&c, E1);
    assert_eq!(to_e1[0].1.as_path, path(&[65000]));
    // Learned paths for the same prefix lose to the local one: no FIB entry, nothing sent.
    let c = lab.apply(
        E2,
        announce(attrs(&[65002], "192.0.2.12"), &["10.244.1.0/24"]),
    );
    assert!(c.is_empty(), "{c:?}");
    // Withdrawing ours: the learned path takes over, so the FIB gets it.
    let c = lab.rib.withdraw_originated(net("10.244.1.0/24"));
    assert_eq!(c.fib, vec![fib("10.244.1.0/24", &["192.0.2.12"])]);
    assert_eq!(withdrawn(&c, E2), vec![net("10.244.1.0/24")]);
    assert_eq!(announced(&c, E1)[0].1.as_path, path(&[65000, 65002]));
    // Originating again takes it back out of the FIB.
    let c = lab
        .rib
        .originate(net("10.244.1.0/24"), Attrs::local(Origin::Igp));
    assert_eq!(c.fib, vec![fib("10.244.1.0/24", &[])]);
}

#[test]
fn originated_med_may_go_to_ebgp() {
    let mut lab = Lab::new();
    let mut a = Attrs::local(Origin::Igp);
    a.med = Some(10);
    let c = lab.rib.originate(net("10.244.1.0/24"), a);
    assert_eq!(announced(&c, E1)[0].1.med, Some(10));
}

#[test]
fn multipath_next_hops_up_to_the_maximum() {
    let mut lab = Lab::with(|c| c.max_paths = 2);
    lab.add(PeerId(5), 65001, "192.0.2.15", |c| {
        c.import = Some(Policy::accept_all())
    });
    lab.add(PeerId(6), 65001, "192.0.2.16", |c| {
        c.import = Some(Policy::accept_all())
    });
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.11"])]);
    let c = lab.apply(
        PeerId(5),
        announce(attrs(&[65001], "192.0.2.15"), &["203.0.113.0/24"]),
    );
    assert_eq!(
        c.fib,
        vec![fib("203.0.113.0/24", &["192.0.2.11", "192.0.2.15"])]
    );
    // E1 is still best (lowest router ID): peers hear nothing new.
    assert!(c.out.is_empty(), "{:?}", c.out);
    // A third equal path: the maximum is 2, and it has the highest router ID: no change.
    let c = lab.apply(
        PeerId(6),
        announce(attrs(&[65001], "192.0.2.16"), &["203.0.113.0/24"]),
    );
    assert!(c.is_empty(), "{c:?}");
    // A path from another neighbouring AS is not in the set.
    let c = lab.apply(
        E2,
        announce(attrs(&[65002], "192.0.2.12"), &["203.0.113.0/24"]),
    );
    assert!(c.fib.is_empty());
    // Without E1, E2 has the lowest router ID: best, and alone in its neighbouring AS.
    let c = lab.apply(E1, withdraw(&["203.0.113.0/24"]));
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.12"])]);
    let c = lab.apply(E2, withdraw(&["203.0.113.0/24"]));
    assert_eq!(
        c.fib,
        vec![fib("203.0.113.0/24", &["192.0.2.15", "192.0.2.16"])]
    );
    let view = lab.rib.route(net("203.0.113.0/24")).unwrap();
    assert_eq!(view.paths.iter().filter(|p| p.multipath).count(), 2);
    assert_eq!(view.paths[0].peer, Some(PeerId(5)));
    assert!(view.paths[0].best);
}

#[test]
fn same_next_hop_twice_is_one_fib_next_hop() {
    let mut lab = Lab::with(|c| c.max_paths = 4);
    lab.add(PeerId(5), 65001, "192.0.2.15", |c| {
        c.import = Some(Policy::accept_all())
    });
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.99"), &["203.0.113.0/24"]),
    );
    let c = lab.apply(
        PeerId(5),
        announce(attrs(&[65001], "192.0.2.99"), &["203.0.113.0/24"]),
    );
    assert!(c.fib.is_empty(), "{c:?}");
    assert_eq!(lab.rib.fib(), vec![fib("203.0.113.0/24", &["192.0.2.99"])]);
}

// ----- route reflection (RFC 4456 §6) -----

/// A reflector: clients 5 and 6, non-clients 3 and 4 (the Lab's iBGP peers).
fn reflector() -> Lab {
    let mut lab = Lab::new();
    lab.add(PeerId(5), LOCAL_AS, "192.0.2.15", |c| c.rr_client = true);
    lab.add(PeerId(6), LOCAL_AS, "192.0.2.16", |c| c.rr_client = true);
    lab
}

#[test]
fn reflection_from_a_client_goes_to_clients_and_non_clients() {
    let mut lab = reflector();
    let c = lab.apply(
        PeerId(5),
        announce(attrs(&[], "192.0.2.15"), &["10.244.5.0/24"]),
    );
    for p in [PeerId(6), I3, I4, E1, E2] {
        assert_eq!(announced(&c, p).len(), 1, "{p:?}");
    }
    assert!(
        sent(&c, PeerId(5)).is_none(),
        "never back to the client it came from"
    );
    let a = &announced(&c, PeerId(6))[0].1;
    assert_eq!(
        a.originator_id,
        Some(rid_of("192.0.2.15")),
        "the client's router ID"
    );
    assert_eq!(a.cluster_list, vec![RID]);
    assert_eq!(a.next_hop, Some(ip4("192.0.2.15")), "next hop unchanged");
    // Towards eBGP the reflection attributes are not sent.
    let e = &announced(&c, E1)[0].1;
    assert_eq!(e.originator_id, None);
    assert!(e.cluster_list.is_empty());
}

#[test]
fn reflection_from_a_non_client_goes_to_clients_only() {
    let mut lab = reflector();
    let mut a = attrs(&[], "192.0.2.13");
    a.originator_id = Some(ip4("10.7.7.7"));
    a.cluster_list = vec![ip4("10.8.8.8")];
    let c = lab.apply(I3, announce(a, &["10.244.3.0/24"]));
    assert!(sent(&c, I4).is_none(), "non-client to non-client: no");
    for p in [PeerId(5), PeerId(6)] {
        let a = &announced(&c, p)[0].1;
        assert_eq!(a.originator_id, Some(ip4("10.7.7.7")), "kept when present");
        assert_eq!(a.cluster_list, vec![RID, ip4("10.8.8.8")], "ours prepended");
    }
}

#[test]
fn reflection_of_ebgp_routes_goes_to_everyone_without_reflection_attributes() {
    let mut lab = reflector();
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    for p in [PeerId(5), PeerId(6), I3, I4] {
        let a = &announced(&c, p)[0].1;
        assert_eq!(a.originator_id, None, "{p:?}");
        assert!(a.cluster_list.is_empty());
    }
}

#[test]
fn reflected_route_best_path_uses_originator_id_then_cluster_list() {
    let mut lab = reflector();
    let mut a = attrs(&[], "192.0.2.13");
    a.originator_id = Some(ip4("10.5.0.1"));
    a.cluster_list = vec![ip4("10.8.8.8"), ip4("10.8.8.9")];
    lab.apply(I3, announce(a, &["10.244.9.0/24"]));
    // I4 has a lower peer address than the client... but a higher ORIGINATOR_ID.
    let mut b = attrs(&[], "192.0.2.14");
    b.originator_id = Some(ip4("10.6.0.1"));
    let c = lab.apply(I4, announce(b, &["10.244.9.0/24"]));
    assert!(c.fib.is_empty(), "I3's lower ORIGINATOR_ID keeps winning");
    // Same ORIGINATOR_ID, shorter CLUSTER_LIST wins.
    let mut d = attrs(&[], "192.0.2.14");
    d.originator_id = Some(ip4("10.5.0.1"));
    d.cluster_list = vec![ip4("10.8.8.8")];
    let c = lab.apply(I4, announce(d, &["10.244.9.0/24"]));
    assert_eq!(c.fib, vec![fib("10.244.9.0/24", &["192.0.2.14"])]);
}

// ----- RFC 8212 and policy -----

#[test]
fn ebgp_without_policy_accepts_and_sends_nothing() {
    let mut lab = Lab::new();
    lab.add(PeerId(7), 65007, "192.0.2.17", |_| {});
    let c = lab.apply(
        PeerId(7),
        announce(attrs(&[65007], "192.0.2.17"), &["203.0.113.0/24"]),
    );
    assert!(c.is_empty(), "no import policy: nothing accepted ({c:?})");
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    assert!(
        sent(&c, PeerId(7)).is_none(),
        "no export policy: nothing sent"
    );
    assert!(sent(&c, E2).is_some());
    let c = lab
        .rib
        .originate(net("10.244.0.0/24"), Attrs::local(Origin::Igp));
    assert!(sent(&c, PeerId(7)).is_none());
    // iBGP with no policy: everything.
    assert!(sent(&c, I3).is_some());
}

fn communities_policy() -> Policy {
    Policy {
        terms: vec![
            Term {
                matches: vec![Match::Prefix(vec![PrefixMatch::new(
                    net("10.244.0.0/16"),
                    Some(24),
                    Some(26),
                )
                .unwrap()])],
                actions: vec![
                    Action::SetLocalPref(300),
                    Action::AddCommunity(Community(0xFDE8_0064)),
                ],
                verdict: Verdict::Accept,
            },
            Term {
                matches: vec![Match::LargeCommunity(vec![LargeCommunity {
                    global: 65001,
                    local1: 0,
                    local2: 1,
                }])],
                actions: vec![],
                verdict: Verdict::Reject,
            },
            Term {
                matches: vec![],
                actions: vec![Action::SetMed(5)],
                verdict: Verdict::Accept,
            },
        ],
    }
}

#[test]
fn import_policy_ge_le_and_actions() {
    let mut lab = Lab::new();
    lab.add(PeerId(7), 65007, "192.0.2.17", |c| {
        c.import = Some(communities_policy())
    });
    let mut a = attrs(&[65007], "192.0.2.17");
    a.large_communities = vec![LargeCommunity {
        global: 65001,
        local1: 0,
        local2: 1,
    }];
    let c = lab.apply(
        PeerId(7),
        announce(
            a,
            &[
                "10.244.1.0/24",
                "10.244.0.0/16",
                "10.244.2.0/27",
                "10.244.3.0/26",
            ],
        ),
    );
    // /24 and /26 in range (term 0); /16 and /27 out of range then rejected by term 1.
    let prefixes: Vec<IpNet> = c.fib.iter().map(|f| f.prefix).collect();
    assert_eq!(prefixes, vec![net("10.244.1.0/24"), net("10.244.3.0/26")]);
    let route = lab.rib.route(net("10.244.1.0/24")).unwrap();
    assert_eq!(route.paths[0].attrs.local_pref, Some(300));
    assert_eq!(
        route.paths[0].attrs.communities,
        vec![Community(0xFDE8_0064)]
    );
    // Both accepted prefixes share one attribute set, and they go out in one group.
    let groups = &sent(&c, I3).unwrap().announce;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].1.len(), 2);
    assert_eq!(groups[0].0.local_pref, Some(300));
    // Without the large community the /16 falls to term 2.
    let c = lab.apply(
        PeerId(7),
        announce(attrs(&[65007], "192.0.2.17"), &["10.244.0.0/16"]),
    );
    assert_eq!(c.fib.len(), 1);
    assert_eq!(
        lab.rib.route(net("10.244.0.0/16")).unwrap().paths[0]
            .attrs
            .med,
        Some(5)
    );
}

#[test]
fn import_policy_rejecting_a_known_route_withdraws_it() {
    let mut lab = Lab::new();
    lab.add(PeerId(7), 65007, "192.0.2.17", |c| {
        c.import = Some(communities_policy())
    });
    lab.apply(
        PeerId(7),
        announce(attrs(&[65007], "192.0.2.17"), &["203.0.113.0/24"]),
    );
    let mut a = attrs(&[65007], "192.0.2.17");
    a.large_communities = vec![LargeCommunity {
        global: 65001,
        local1: 0,
        local2: 1,
    }];
    let c = lab.apply(PeerId(7), announce(a, &["203.0.113.0/24"]));
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &[])]);
}

#[test]
fn export_policy_filters_sets_med_communities_and_next_hop_self() {
    let mut lab = Lab::new();
    let export = Policy {
        terms: vec![
            Term {
                matches: vec![Match::Community(vec![Community(1)])],
                actions: vec![],
                verdict: Verdict::Reject,
            },
            Term {
                matches: vec![],
                actions: vec![
                    Action::SetMed(42),
                    Action::RemoveCommunity(Community(2)),
                    Action::AddLargeCommunity(LargeCommunity {
                        global: 65000,
                        local1: 9,
                        local2: 9,
                    }),
                    Action::NextHopSelf,
                    Action::SetLocalPref(250),
                ],
                verdict: Verdict::Accept,
            },
        ],
    };
    lab.add(PeerId(7), 65007, "192.0.2.17", |c| {
        c.import = Some(Policy::accept_all());
        c.export = Some(export.clone());
    });
    lab.add(PeerId(8), LOCAL_AS, "192.0.2.18", |c| {
        c.export = Some(export)
    });
    let mut a = attrs(&[65001], "192.0.2.11");
    a.communities = vec![Community(2), Community(3)];
    a.med = Some(9);
    let c = lab.apply(E1, announce(a.clone(), &["203.0.113.0/24"]));
    let e = &announced(&c, PeerId(7))[0].1;
    assert_eq!(
        e.med,
        Some(42),
        "a MED the export policy sets is ours to send"
    );
    assert_eq!(e.communities, vec![Community(3)]);
    assert_eq!(e.large_communities.len(), 1);
    assert_eq!(e.local_pref, None, "never LOCAL_PREF to eBGP");
    let i = &announced(&c, PeerId(8))[0].1;
    assert_eq!(
        i.next_hop,
        Some(ip4("192.0.2.1")),
        "next hop self by policy"
    );
    assert_eq!(i.local_pref, Some(250));
    // Community 1: rejected by the export policy, so never sent; and when a sent route
    // turns into a rejected one, it is withdrawn.
    a.communities.push(Community(1));
    let c = lab.apply(E1, announce(a, &["203.0.113.0/24"]));
    assert_eq!(withdrawn(&c, PeerId(7)), vec![net("203.0.113.0/24")]);
    assert_eq!(withdrawn(&c, PeerId(8)), vec![net("203.0.113.0/24")]);
    assert_eq!(announced(&c, E2).len(), 1);
}

#[test]
fn well_known_communities_limit_export() {
    let mut lab = Lab::new();
    let mut a = attrs(&[65001], "192.0.2.11");
    a.communities = vec![Community::NO_EXPORT];
    let c = lab.apply(E1, announce(a, &["203.0.113.0/24"]));
    assert!(sent(&c, E2).is_none(), "NO_EXPORT stays in the AS");
    assert!(sent(&c, I3).is_some());
    let mut a = attrs(&[65001], "192.0.2.11");
    a.communities = vec![Community::NO_ADVERTISE];
    let c = lab.apply(E1, announce(a, &["198.51.100.0/24"]));
    assert!(c.out.is_empty(), "NO_ADVERTISE goes to no peer");
    assert_eq!(c.fib.len(), 1);
}

// ----- graceful restart (RFC 4724 §4.2) -----

#[test]
fn graceful_restart_keeps_stale_routes_then_sweeps_after_end_of_rib() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(
            attrs(&[65001], "192.0.2.11"),
            &["203.0.113.0/24", "198.51.100.0/24"],
        ),
    );
    let c = lab
        .rib
        .peer_down(E1, Some(Duration::from_secs(120)))
        .unwrap();
    assert!(c.is_empty(), "routes stay in use: {c:?}");
    assert!(lab.rib.route(net("203.0.113.0/24")).unwrap().paths[0].stale);
    assert!(
        lab.rib.apply(E1, &withdraw(&["203.0.113.0/24"])).is_err(),
        "down"
    );
    // Back up: the initial dump to E1 is empty (it is the source), and End-of-RIB follows.
    let c = lab
        .rib
        .peer_up(
            E1,
            PeerSession::new(
                ip("192.0.2.1"),
                ip4("192.0.3.243"),
                vec![Family::IPV4_UNICAST],
            ),
        )
        .unwrap();
    let u = sent(&c, E1).unwrap();
    assert!(u.announce.is_empty());
    assert_eq!(u.end_of_rib, vec![Family::IPV4_UNICAST]);
    // It re-announces one prefix unchanged: no longer stale, nothing sent anywhere.
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    assert!(c.is_empty());
    assert!(!lab.rib.route(net("203.0.113.0/24")).unwrap().paths[0].stale);
    assert!(lab.rib.route(net("198.51.100.0/24")).unwrap().paths[0].stale);
    // End-of-RIB for IPv6 sweeps nothing of IPv4; IPv4's sweeps the one left stale.
    assert!(lab
        .rib
        .end_of_rib(E1, Family::IPV6_UNICAST)
        .unwrap()
        .is_empty());
    let c = lab.rib.end_of_rib(E1, Family::IPV4_UNICAST).unwrap();
    assert_eq!(c.fib, vec![fib("198.51.100.0/24", &[])]);
    assert_eq!(withdrawn(&c, E2), vec![net("198.51.100.0/24")]);
    assert!(lab.rib.route(net("203.0.113.0/24")).is_some());
}

#[test]
fn graceful_restart_changed_route_replaces_the_stale_one() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    lab.rib
        .peer_down(E1, Some(Duration::from_secs(120)))
        .unwrap();
    lab.rib
        .peer_up(
            E1,
            PeerSession::new(
                ip("192.0.2.1"),
                ip4("192.0.3.243"),
                vec![Family::IPV4_UNICAST],
            ),
        )
        .unwrap();
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.111"), &["203.0.113.0/24"]),
    );
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.111"])]);
    assert!(lab
        .rib
        .end_of_rib(E1, Family::IPV4_UNICAST)
        .unwrap()
        .is_empty());
}

#[test]
fn stale_timer_expiry_removes_all_stale_routes() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    lab.apply(
        E2,
        announce(attrs(&[65002, 65020], "192.0.2.12"), &["203.0.113.0/24"]),
    );
    lab.rib.peer_down(E1, Some(Duration::from_secs(5))).unwrap();
    let c = lab.rib.stale_expired(E1).unwrap();
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.12"])]);
    assert!(lab.rib.stale_expired(E1).unwrap().is_empty());
}

#[test]
fn peer_down_without_graceful_restart_withdraws_everything() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(
            attrs(&[65001], "192.0.2.11"),
            &["203.0.113.0/24", "198.51.100.0/24"],
        ),
    );
    let c = lab.rib.peer_down(E1, None).unwrap();
    assert_eq!(c.fib.len(), 2);
    assert!(c.fib.iter().all(|f| f.next_hops.is_empty()));
    assert_eq!(withdrawn(&c, I3).len(), 2);
    assert!(sent(&c, E1).is_none(), "the down peer is sent nothing");
    assert!(lab.rib.routes().is_empty());
}

#[test]
fn a_down_peer_is_sent_nothing_and_gets_everything_when_up() {
    let mut lab = Lab::new();
    lab.rib.peer_down(E2, None).unwrap();
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    assert!(sent(&c, E2).is_none());
    let c = lab
        .rib
        .peer_up(
            E2,
            PeerSession::new(
                ip("192.0.2.1"),
                ip4("192.0.3.244"),
                vec![Family::IPV4_UNICAST],
            ),
        )
        .unwrap();
    let u = sent(&c, E2).unwrap();
    assert_eq!(u.announce.len(), 1);
    assert_eq!(u.announce[0].1, vec![net("203.0.113.0/24")]);
    assert_eq!(u.announce[0].0.as_path, path(&[65000, 65001]));
}

// ----- route refresh -----

#[test]
fn refresh_resends_the_whole_adj_rib_out() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(
            attrs(&[65001], "192.0.2.11"),
            &["203.0.113.0/24", "198.51.100.0/24"],
        ),
    );
    let c = lab.rib.refresh(E2, Family::IPV4_UNICAST).unwrap();
    assert!(c.fib.is_empty());
    let u = sent(&c, E2).unwrap();
    assert_eq!(u.announce.len(), 1);
    assert_eq!(
        u.announce[0].1,
        vec![net("198.51.100.0/24"), net("203.0.113.0/24")]
    );
    assert_eq!(lab.rib.adj_rib_out(E2, Family::IPV4_UNICAST).len(), 2);
    assert!(
        lab.rib
            .refresh(E1, Family::IPV4_UNICAST)
            .unwrap()
            .is_empty(),
        "E1 has nothing from us"
    );
}

// ----- IPv6 -----

#[test]
fn ipv6_routes_via_mp_reach_and_mp_unreach() {
    let mut lab = Lab::new();
    let mut a = attrs(&[65001], "192.0.2.11");
    a.next_hop = None;
    let u = Update {
        attrs: Some(a),
        mp_reach: Some(MpReach {
            family: Family::IPV6_UNICAST,
            next_hops: vec![ip("2001:db8::11"), ip("fe80::11")],
            nlri: vec![net("2001:db8:100::/48")],
        }),
        ..Update::default()
    };
    let c = lab.apply(E1, u);
    assert_eq!(c.fib, vec![fib("2001:db8:100::/48", &["2001:db8::11"])]);
    // The session is IPv4: no IPv6 address of ours to give eBGP E2 as next hop.
    assert!(sent(&c, E2).is_none());
    let i = &announced(&c, I3)[0].1;
    // Passed on without the link-local next hop (RFC 2545 §3).
    assert_eq!(i.mp_next_hop, vec![ip("2001:db8::11")]);
    assert_eq!(i.next_hop, None);
    // A peer on an IPv6 session gets our IPv6 address.
    let mut cfg = PeerConfig::new(65009, ip("2001:db8::9"));
    cfg.export = Some(Policy::accept_all());
    lab.rib.add_peer(PeerId(9), cfg).unwrap();
    let c = lab
        .rib
        .peer_up(
            PeerId(9),
            PeerSession::new(
                ip("2001:db8::1"),
                ip4("10.9.9.9"),
                vec![Family::IPV6_UNICAST],
            ),
        )
        .unwrap();
    let to9 = announced(&c, PeerId(9));
    assert_eq!(to9.len(), 1, "IPv6 only: the IPv4 family is not negotiated");
    assert_eq!(to9[0].1.mp_next_hop, vec![ip("2001:db8::1")]);
    let u = Update {
        mp_unreach: Some(MpUnreach {
            family: Family::IPV6_UNICAST,
            withdrawn: vec![net("2001:db8:100::/48")],
        }),
        ..Update::default()
    };
    let c = lab.apply(E1, u);
    assert_eq!(c.fib, vec![fib("2001:db8:100::/48", &[])]);
    assert_eq!(withdrawn(&c, PeerId(9)), vec![net("2001:db8:100::/48")]);
}

// ----- interning and errors -----

#[test]
fn one_attribute_set_for_many_prefixes() {
    let mut lab = Lab::new();
    let prefixes: Vec<Ipv4Net> = (0..1000u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0A00_0000 + (i << 8)), 24).unwrap())
        .collect();
    let u = Update {
        attrs: Some(attrs(&[65001], "192.0.2.11")),
        nlri: prefixes,
        ..Update::default()
    };
    let c = lab.apply(E1, u);
    assert_eq!(c.fib.len(), 1000);
    for p in [E2, I3, I4] {
        assert_eq!(
            sent(&c, p).unwrap().announce.len(),
            1,
            "one group for {p:?}"
        );
    }
    // One for the Loc-RIB, one export for eBGP, one for iBGP.
    assert_eq!(lab.rib.stats().attr_sets, 3);
    assert_eq!(lab.rib.stats().prefixes, 1000);
    drop(c);
    let c = lab.rib.peer_down(E1, None).unwrap();
    assert_eq!(c.fib.len(), 1000);
    assert_eq!(
        lab.rib.stats().attr_sets,
        0,
        "swept when no route holds them"
    );
}

#[test]
fn calls_that_do_not_fit_the_peer_table_are_errors() {
    let mut lab = Lab::new();
    let err = lab.rib.apply(PeerId(42), &Update::default()).unwrap_err();
    assert_eq!(err, RibError::UnknownPeer(PeerId(42)));
    assert!(err.to_string().contains("add_peer"));
    assert_eq!(
        lab.rib.add_peer(E1, PeerConfig::new(1, ip("192.0.2.99"))),
        Err(RibError::DuplicatePeer(E1))
    );
    assert_eq!(
        lab.rib
            .add_peer(PeerId(u32::MAX), PeerConfig::new(1, ip("192.0.2.99"))),
        Err(RibError::ReservedPeerId(PeerId(u32::MAX)))
    );
    lab.rib.peer_down(E1, None).unwrap();
    assert_eq!(
        lab.rib.refresh(E1, Family::IPV4_UNICAST),
        Err(RibError::PeerNotUp(E1))
    );
}

#[test]
fn remove_peer_withdraws_its_routes_and_updates_the_reflector_role() {
    let mut lab = reflector();
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    let c = lab.rib.remove_peer(E1).unwrap();
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &[])]);
    lab.rib.remove_peer(PeerId(5)).unwrap();
    lab.rib.remove_peer(PeerId(6)).unwrap();
    // No clients left: non-client routes are no longer reflected.
    let c = lab.apply(I3, announce(attrs(&[], "192.0.2.13"), &["10.244.3.0/24"]));
    assert!(sent(&c, I4).is_none());
}

#[test]
fn a_route_with_our_own_address_as_next_hop_is_ignored() {
    let mut lab = Lab::new();
    let c = lab.apply(I3, announce(attrs(&[], "192.0.2.1"), &["10.244.3.0/24"]));
    assert!(c.is_empty(), "{c:?}");
    assert!(lab.rib.routes().is_empty());
}

#[test]
fn set_peer_config_redoes_the_adj_rib_outs() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    lab.apply(I3, announce(attrs(&[], "192.0.2.13"), &["10.244.3.0/24"]));
    // E2 gets an export policy that lets only 10.244.0.0/16 out: 203.0.113.0/24 goes.
    let mut cfg = PeerConfig::new(65002, ip("192.0.2.12"));
    cfg.import = Some(Policy::accept_all());
    cfg.export = Some(Policy {
        terms: vec![Term {
            matches: vec![Match::Prefix(vec![PrefixMatch::new(
                net("10.244.0.0/16"),
                None,
                Some(32),
            )
            .unwrap()])],
            actions: vec![],
            verdict: Verdict::Accept,
        }],
    });
    let c = lab.rib.set_peer_config(E2, cfg).unwrap();
    assert_eq!(withdrawn(&c, E2), vec![net("203.0.113.0/24")]);
    assert!(announced(&c, E2).is_empty(), "10.244.3.0/24 it has already");
    assert!(c.fib.is_empty());
    // I4 becomes a reflection client: it now gets I3's route.
    let mut cfg = PeerConfig::new(LOCAL_AS, ip("192.0.2.14"));
    cfg.rr_client = true;
    let c = lab.rib.set_peer_config(I4, cfg).unwrap();
    let to_i4 = announced(&c, I4);
    assert_eq!(to_i4.len(), 1);
    assert_eq!(to_i4[0].0, net("10.244.3.0/24"));
    assert_eq!(to_i4[0].1.cluster_list, vec![RID]);
    // Same configuration again: nothing.
    let mut cfg = PeerConfig::new(LOCAL_AS, ip("192.0.2.14"));
    cfg.rr_client = true;
    assert!(lab.rib.set_peer_config(I4, cfg).unwrap().is_empty());
    assert_eq!(
        lab.rib
            .set_peer_config(I4, PeerConfig::new(65099, ip("192.0.2.14"))),
        Err(RibError::IdentityChanged(I4))
    );
}

#[test]
fn peer_counts_follow_the_rib() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(
            attrs(&[65001], "192.0.2.11"),
            &["203.0.113.0/24", "198.51.100.0/24"],
        ),
    );
    lab.apply(
        E2,
        announce(attrs(&[65002, 65020], "192.0.2.12"), &["203.0.113.0/24"]),
    );
    let e1 = lab.rib.peer_counts(E1).unwrap();
    assert_eq!((e1.accepted, e1.best, e1.stale), (2, 2, 0));
    assert_eq!(e1.advertised, 0, "nothing back to its source");
    let e2 = lab.rib.peer_counts(E2).unwrap();
    assert_eq!((e2.accepted, e2.best, e2.advertised), (1, 0, 2));
    lab.rib.peer_down(E1, Some(Duration::from_secs(1))).unwrap();
    let e1 = lab.rib.peer_counts(E1).unwrap();
    assert_eq!((e1.accepted, e1.stale), (2, 2));
    assert!(lab.rib.peer_counts(PeerId(77)).is_none());
    // The one-walk counts of every peer are each peer's counts.
    let all = lab.rib.all_peer_counts();
    assert_eq!(all.get(&E1), Some(&e1));
    assert_eq!(all.get(&E2), lab.rib.peer_counts(E2).as_ref());
    assert_eq!(all[&E2].advertised, 2);
    assert!(!all.contains_key(&PeerId(77)));
}

#[test]
fn originating_many_prefixes_in_one_call_is_one_packed_group_per_peer() {
    let mut lab = Lab::new();
    let prefixes: Vec<IpNet> = (0..1000u32)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0AF4_0000 + (i << 8)), 24).unwrap()))
        .collect();
    let c = lab
        .rib
        .originate_all(prefixes.clone(), Attrs::local(Origin::Igp));
    assert!(c.fib.is_empty());
    for p in [E1, E2, I3, I4] {
        let u = sent(&c, p).unwrap();
        assert_eq!(u.announce.len(), 1, "{p:?}");
        assert_eq!(u.announce[0].1, prefixes, "{p:?}: every prefix, in order");
    }
    let c = lab.rib.withdraw_originated_all(prefixes.clone());
    for p in [E1, E2, I3, I4] {
        assert_eq!(withdrawn(&c, p), prefixes, "{p:?}");
    }
    assert!(lab.rib.routes().is_empty());
}

fn gr_session(families: &[(Family, bool)]) -> PeerSession {
    let mut s = PeerSession::new(
        ip("192.0.2.1"),
        rid_of("192.0.2.11"),
        vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
    );
    s.graceful_restart = PeerGracefulRestart::Families(
        families
            .iter()
            .map(|&(family, forwarding_preserved)| GracefulRestartFamily {
                family,
                forwarding_preserved,
            })
            .collect(),
    );
    s
}

fn v6_announce(prefix: &str) -> Update {
    let mut a = attrs(&[65001], "192.0.2.11");
    a.next_hop = None;
    Update {
        attrs: Some(a),
        mp_reach: Some(MpReach {
            family: Family::IPV6_UNICAST,
            next_hops: vec![ip("2001:db8::11")],
            nlri: vec![net(prefix)],
        }),
        ..Update::default()
    }
}

/// E1 with a graceful restart capability for `families`, holding one IPv4 and one IPv6 route.
fn gr_lab(families: &[(Family, bool)]) -> Lab {
    let mut lab = Lab::new();
    lab.rib.peer_down(E1, None).unwrap();
    lab.rib.peer_up(E1, gr_session(families)).unwrap();
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    lab.apply(E1, v6_announce("2001:db8:100::/48"));
    lab
}

#[test]
fn graceful_restart_keeps_only_the_families_the_capability_listed() {
    let mut lab = gr_lab(&[(Family::IPV4_UNICAST, true)]);
    let c = lab
        .rib
        .peer_down(E1, Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(
        c.fib,
        vec![fib("2001:db8:100::/48", &[])],
        "IPv6 was not covered"
    );
    assert!(lab.rib.route(net("203.0.113.0/24")).unwrap().paths[0].stale);
}

#[test]
fn graceful_restart_reestablished_without_forwarding_state_drops_that_family() {
    let both = [(Family::IPV4_UNICAST, true), (Family::IPV6_UNICAST, true)];
    let mut lab = gr_lab(&both);
    assert!(lab
        .rib
        .peer_down(E1, Some(Duration::from_secs(60)))
        .unwrap()
        .is_empty());
    // Back with the F bit for IPv4 only.
    let c = lab
        .rib
        .peer_up(
            E1,
            gr_session(&[(Family::IPV4_UNICAST, true), (Family::IPV6_UNICAST, false)]),
        )
        .unwrap();
    assert_eq!(c.fib, vec![fib("2001:db8:100::/48", &[])]);
    assert!(lab.rib.route(net("203.0.113.0/24")).unwrap().paths[0].stale);
    // Its initial dump and End-of-RIB are still there, once each.
    let u = sent(&c, E1).unwrap();
    assert!(u.announce.is_empty());
    assert_eq!(u.end_of_rib.len(), 2);

    // Back without the capability at all: every stale route goes.
    let mut lab = gr_lab(&both);
    lab.rib
        .peer_down(E1, Some(Duration::from_secs(60)))
        .unwrap();
    let mut s = gr_session(&[]);
    s.graceful_restart = PeerGracefulRestart::NotAdvertised;
    let c = lab.rib.peer_up(E1, s).unwrap();
    assert_eq!(c.fib.len(), 2);
    assert!(lab.rib.routes().is_empty());
}

#[test]
fn graceful_restart_state_comes_from_the_open() {
    use crate::packet::{Capability, GracefulRestart, Open};
    let open = Open {
        version: 4,
        my_as: 65001,
        hold_time: 90,
        router_id: ip4("10.0.0.11"),
        capabilities: vec![Capability::GracefulRestart(GracefulRestart {
            restarting: false,
            restart_time: 120,
            families: vec![GracefulRestartFamily {
                family: Family::IPV4_UNICAST,
                forwarding_preserved: true,
            }],
        })],
    };
    let s = PeerSession::new(ip("192.0.2.1"), open.router_id, vec![Family::IPV4_UNICAST])
        .with_open(&open);
    assert_eq!(
        s.graceful_restart,
        PeerGracefulRestart::Families(vec![GracefulRestartFamily {
            family: Family::IPV4_UNICAST,
            forwarding_preserved: true,
        }])
    );
    let bare = Open {
        capabilities: vec![],
        ..open
    };
    assert_eq!(
        PeerGracefulRestart::of(&bare),
        PeerGracefulRestart::NotAdvertised
    );
}

#[test]
fn a_prefix_both_withdrawn_and_announced_is_announced_without_a_flap() {
    let mut lab = Lab::new();
    lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]),
    );
    let mut u = announce(attrs(&[65001], "192.0.2.11"), &["203.0.113.0/24"]);
    u.withdrawn = vec![v4("203.0.113.0/24"), v4("198.51.100.0/24")];
    let c = lab.apply(E1, u);
    assert!(c.is_empty(), "no withdraw-and-add: {c:?}");
    assert!(lab.rib.route(net("203.0.113.0/24")).is_some());
    // Changed attributes in the same form: one FIB change, one announcement, no withdrawal.
    let mut u = announce(attrs(&[65001], "192.0.2.111"), &["203.0.113.0/24"]);
    u.withdrawn = vec![v4("203.0.113.0/24")];
    let c = lab.apply(E1, u);
    assert_eq!(c.fib, vec![fib("203.0.113.0/24", &["192.0.2.111"])]);
    assert!(withdrawn(&c, I3).is_empty());
    assert_eq!(announced(&c, I3).len(), 1);
}

#[test]
fn an_ipv4_prefix_in_nlri_and_mp_reach_is_taken_once_from_mp_reach() {
    let mut lab = Lab::new();
    let mut u = announce(
        attrs(&[65001], "192.0.2.11"),
        &["203.0.113.0/24", "198.51.100.0/24"],
    );
    u.mp_reach = Some(MpReach {
        family: Family::IPV4_UNICAST,
        next_hops: vec![ip("192.0.2.111")],
        nlri: vec![net("203.0.113.0/24")],
    });
    let c = lab.apply(E1, u);
    let mut f = c.fib.clone();
    f.sort_by_key(|f| f.prefix);
    assert_eq!(
        f,
        vec![
            fib("198.51.100.0/24", &["192.0.2.11"]),
            fib("203.0.113.0/24", &["192.0.2.111"])
        ]
    );
    let to_i3 = announced(&c, I3);
    assert_eq!(to_i3.len(), 2, "each prefix once: {to_i3:?}");
}

/// Two segments: we are on 192.0.2.0/24; I3's routes come from a node on another segment
/// (next hop 198.51.100.50), E1 (on our segment) is the router between them.
#[test]
fn an_unresolvable_next_hop_is_never_best_and_the_routers_path_is() {
    let mut lab = Lab::with(|c| c.next_hop_networks = vec![net("192.0.2.0/24")]);
    // The iBGP path alone: kept, but no FIB entry and nothing sent.
    let c = lab.apply(
        I3,
        announce(attrs(&[], "198.51.100.50"), &["10.244.5.0/24"]),
    );
    assert!(c.is_empty(), "{c:?}");
    let r = lab.rib.route(net("10.244.5.0/24")).unwrap();
    assert_eq!(r.paths.len(), 1);
    assert!(!r.paths[0].best && !r.paths[0].multipath);
    // The router's path (longer AS path, resolvable) is chosen over the shorter one.
    let c = lab.apply(
        E1,
        announce(attrs(&[65001], "192.0.2.11"), &["10.244.5.0/24"]),
    );
    assert_eq!(c.fib, vec![fib("10.244.5.0/24", &["192.0.2.11"])]);
    assert_eq!(announced(&c, I4).len(), 1);
    // The router's path goes: the unresolvable one does not take over.
    let c = lab.apply(E1, withdraw(&["10.244.5.0/24"]));
    assert_eq!(c.fib, vec![fib("10.244.5.0/24", &[])]);
    assert_eq!(withdrawn(&c, I4), vec![net("10.244.5.0/24")]);
    // On-link iBGP next hops are resolvable as before; IPv6 (no network listed) too.
    let c = lab.apply(I3, announce(attrs(&[], "192.0.2.50"), &["10.244.6.0/24"]));
    assert_eq!(c.fib, vec![fib("10.244.6.0/24", &["192.0.2.50"])]);
    let mut a6 = attrs(&[65001], "192.0.2.11");
    a6.next_hop = None;
    let v6 = Update {
        attrs: Some(a6),
        mp_reach: Some(MpReach {
            family: Family::IPV6_UNICAST,
            next_hops: vec![ip("2001:db8::11")],
            nlri: vec![net("2001:db8:5::/48")],
        }),
        ..Update::default()
    };
    let c = lab.apply(E1, v6);
    assert_eq!(c.fib, vec![fib("2001:db8:5::/48", &["2001:db8::11"])]);
}

#[test]
fn a_peer_taking_originated_routes_only_hears_none_it_learned() {
    let mut lab = Lab::new();
    lab.add(PeerId(5), 65005, "192.0.2.15", |c| {
        c.export = Some(Policy::accept_all());
        c.export_originated_only = true;
    });
    let c = lab.apply(I3, announce(attrs(&[], "192.0.2.13"), &["10.244.3.0/24"]));
    assert!(sent(&c, PeerId(5)).is_none(), "{c:?}");
    assert_eq!(announced(&c, E1).len(), 1, "other eBGP peers still hear it");
    let c = lab
        .rib
        .originate(net("10.244.1.0/24"), Attrs::local(Origin::Igp));
    let own = announced(&c, PeerId(5));
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].0, net("10.244.1.0/24"));
    assert_eq!(own[0].1.next_hop, Some(ip4("192.0.2.1")));
}
