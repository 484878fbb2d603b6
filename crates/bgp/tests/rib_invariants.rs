//! The RIB under a long seeded random sequence of inputs (announcements, withdrawals,
//! sessions going down with and without graceful restart and coming back, End-of-RIB, stale
//! expiry, originations, refreshes), checked after every step against oracles that do not
//! share its incremental bookkeeping:
//!
//! - FIB: the changes handed out so far, applied in order to a map, equal `Rib::fib()`,
//!   which is computed from the paths as they are now.
//! - Peers: the out-updates handed out so far, applied in order to a model of each peer's
//!   table (withdraw, then the announce groups), equal that peer's Adj-RIB-Out.
//! - Diffing: re-running export for every prefix and peer from scratch
//!   (`set_peer_config` with the same configuration) finds nothing to send.
//!
//! Bounded: 3 seeds of 500 steps over 40 prefixes and 6 peers (a few seconds in a debug
//! build).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_bgp::packet::{
    AsPath, AsSegment, AsSegmentKind, Attrs, Community, Family, MpReach, MpUnreach, Origin, Update,
};
use twill_bgp::policy::{Match, Policy, PrefixMatch, Term, Verdict};
use twill_bgp::rib::{PeerConfig, PeerId, PeerSession, Rib, RibChanges, RibConfig};

/// A small deterministic generator (xorshift64*), so a failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const LOCAL_AS: u32 = 65000;

struct PeerSpec {
    id: PeerId,
    asn: u32,
    addr: Ipv4Addr,
    cfg: PeerConfig,
}

fn peers() -> Vec<PeerSpec> {
    let only_10 = Policy {
        terms: vec![Term {
            matches: vec![Match::Prefix(vec![PrefixMatch::new(
                "10.0.0.0/8".parse().unwrap(),
                None,
                Some(32),
            )
            .unwrap()])],
            actions: vec![],
            verdict: Verdict::Accept,
        }],
    };
    let spec = |id: u32, asn: u32, tune: &dyn Fn(&mut PeerConfig)| {
        let addr = Ipv4Addr::new(192, 0, 2, 10 + id as u8);
        let mut cfg = PeerConfig::new(asn, IpAddr::V4(addr));
        tune(&mut cfg);
        PeerSpec {
            id: PeerId(id),
            asn,
            addr,
            cfg,
        }
    };
    vec![
        spec(1, 65001, &|c| {
            c.import = Some(Policy::accept_all());
            c.export = Some(Policy::accept_all());
        }),
        spec(2, 65002, &|c| {
            c.import = Some(Policy::accept_all());
            c.export = Some(only_10.clone());
        }),
        spec(3, LOCAL_AS, &|_| {}),
        spec(4, LOCAL_AS, &|c| c.rr_client = true),
        spec(5, LOCAL_AS, &|c| {
            c.rr_client = true;
            c.next_hop_self = true;
        }),
        // No export policy: RFC 8212, it must never be sent anything.
        spec(6, 65001, &|c| c.import = Some(Policy::accept_all())),
    ]
}

fn session(p: &PeerSpec) -> PeerSession {
    let mut s = PeerSession::new(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        Ipv4Addr::new(172, 16, 0, p.id.0 as u8),
        vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
    );
    s.next_hop_v6 = Some("2001:db8::1".parse().unwrap());
    s
}

fn prefixes() -> Vec<IpNet> {
    let mut v: Vec<IpNet> = (0..20u32)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0A00_0000 + (i << 8)), 24).unwrap()))
        .collect();
    v.extend(
        (0..10u32).map(|i| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::new(203, 0, 113, 16 * i as u8), 28).unwrap())
        }),
    );
    v.extend((0..10u32).map(|i| {
        let a = Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 80));
        IpNet::V6(Ipv6Net::new(a, 48).unwrap())
    }));
    v
}

fn random_attrs(rng: &mut Rng, p: &PeerSpec) -> Attrs {
    let mut a = Attrs::local(Origin::Igp);
    let ebgp = p.asn != LOCAL_AS;
    let mut asns = Vec::new();
    if ebgp {
        asns.push(p.asn);
    }
    for _ in 0..rng.below(3) {
        asns.push(65100 + rng.below(3) as u32);
    }
    if !asns.is_empty() {
        a.as_path = AsPath {
            segments: vec![AsSegment {
                kind: AsSegmentKind::Sequence,
                asns,
            }],
        };
    }
    if rng.chance(30) {
        a.med = Some(rng.below(3) as u32 * 10);
    }
    if !ebgp && rng.chance(50) {
        a.local_pref = Some([50, 100, 200][rng.below(3) as usize]);
    }
    if rng.chance(10) {
        a.communities = vec![Community::NO_EXPORT];
    }
    if !ebgp && rng.chance(20) {
        a.originator_id = Some(Ipv4Addr::new(10, 9, 0, rng.below(4) as u8));
        a.cluster_list = vec![Ipv4Addr::new(10, 8, 0, rng.below(3) as u8)];
    }
    if rng.chance(30) {
        a.origin = Origin::Incomplete;
    }
    // Next hop: the peer itself, or one of two others (equal-cost candidates).
    let nh_last = [p.addr.octets()[3], 100, 101][rng.below(3) as usize];
    a.next_hop = Some(Ipv4Addr::new(192, 0, 2, nh_last));
    a
}

fn update_for(rng: &mut Rng, p: &PeerSpec, all: &[IpNet]) -> Update {
    let chosen: Vec<IpNet> = all.iter().filter(|_| rng.chance(15)).copied().collect();
    let withdraw = rng.chance(35);
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = chosen.into_iter().partition(|n| n.addr().is_ipv4());
    let v4: Vec<Ipv4Net> = v4
        .into_iter()
        .map(|n| match n {
            IpNet::V4(n) => n,
            IpNet::V6(_) => unreachable!(),
        })
        .collect();
    if withdraw {
        return Update {
            withdrawn: v4,
            mp_unreach: (!v6.is_empty()).then_some(MpUnreach {
                family: Family::IPV6_UNICAST,
                withdrawn: v6,
            }),
            ..Update::default()
        };
    }
    let attrs = random_attrs(rng, p);
    let v6_nh = IpAddr::V6(Ipv6Addr::from(
        (0x2001_0db8u128 << 96) | u128::from(attrs.next_hop.unwrap().octets()[3]),
    ));
    Update {
        attrs: Some(attrs),
        nlri: v4,
        mp_reach: (!v6.is_empty()).then_some(MpReach {
            family: Family::IPV6_UNICAST,
            next_hops: vec![v6_nh],
            nlri: v6,
        }),
        ..Update::default()
    }
}

struct Models {
    fib: BTreeMap<IpNet, Vec<IpAddr>>,
    peers: BTreeMap<PeerId, BTreeMap<IpNet, Arc<Attrs>>>,
}

impl Models {
    fn take(&mut self, c: &RibChanges, step: usize) {
        for f in &c.fib {
            if f.next_hops.is_empty() {
                assert!(
                    self.fib.remove(&f.prefix).is_some(),
                    "step {step}: FIB removal of {} it never had",
                    f.prefix
                );
            } else {
                self.fib.insert(f.prefix, f.next_hops.clone());
            }
        }
        for (peer, u) in &c.out {
            let m = self.peers.entry(*peer).or_default();
            for p in &u.withdraw {
                assert!(
                    m.remove(p).is_some(),
                    "step {step}: withdrawal of {p} that {peer:?} never had"
                );
            }
            for (a, ps) in &u.announce {
                for p in ps {
                    m.insert(*p, a.clone());
                }
            }
        }
    }
}

fn check(
    rib: &mut Rib,
    specs: &[PeerSpec],
    up: &[bool],
    models: &Models,
    step: usize,
    re_export: bool,
) {
    let fib: BTreeMap<IpNet, Vec<IpAddr>> = rib
        .fib()
        .into_iter()
        .map(|f| (f.prefix, f.next_hops))
        .collect();
    assert_eq!(models.fib, fib, "step {step}: FIB changes vs the FIB");
    for (i, p) in specs.iter().enumerate() {
        let mut have: BTreeMap<IpNet, Arc<Attrs>> = BTreeMap::new();
        for f in [Family::IPV4_UNICAST, Family::IPV6_UNICAST] {
            have.extend(rib.adj_rib_out(p.id, f));
        }
        let sent = models.peers.get(&p.id).cloned().unwrap_or_default();
        assert_eq!(
            sent, have,
            "step {step}: what {:?} was sent vs its Adj-RIB-Out",
            p.id
        );
        if !up[i] {
            assert!(have.is_empty(), "step {step}: a down peer's Adj-RIB-Out");
        }
        if p.id == PeerId(6) {
            assert!(
                have.is_empty(),
                "step {step}: RFC 8212, peer 6 has no export"
            );
        }
        for (prefix, a) in &have {
            let route = rib
                .route(*prefix)
                .expect("advertised prefix is in the Loc-RIB");
            assert_ne!(
                route.paths[0].peer,
                Some(p.id),
                "step {step}: back to its source"
            );
            assert!(
                a.local_pref.is_some() != (p.asn != LOCAL_AS),
                "step {step}: LOCAL_PREF"
            );
        }
        // Export from scratch must agree with the incremental Adj-RIB-Out.
        if !re_export {
            continue;
        }
        let again = rib.set_peer_config(p.id, p.cfg.clone()).unwrap();
        assert!(
            again.is_empty(),
            "step {step}: a full re-export after the fact sends {:?}",
            again.out
        );
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut cfg = RibConfig::new(LOCAL_AS, Ipv4Addr::new(10, 0, 0, 1));
    cfg.max_paths = 3;
    let mut rib = Rib::new(cfg);
    let specs = peers();
    let all = prefixes();
    let mut models = Models {
        fib: BTreeMap::new(),
        peers: BTreeMap::new(),
    };
    let mut up = vec![false; specs.len()];
    for (i, p) in specs.iter().enumerate() {
        rib.add_peer(p.id, p.cfg.clone()).unwrap();
        let c = rib.peer_up(p.id, session(p)).unwrap();
        models.take(&c, 0);
        up[i] = true;
    }
    for step in 1..=steps {
        let i = rng.below(specs.len() as u64) as usize;
        let p = &specs[i];
        let roll = rng.below(100);
        let c = if !up[i] {
            if roll < 60 {
                up[i] = true;
                // The peer's table empties with its session.
                models.peers.remove(&p.id);
                rib.peer_up(p.id, session(p)).unwrap()
            } else if roll < 80 {
                rib.stale_expired(p.id).unwrap()
            } else {
                let prefix = all[rng.below(all.len() as u64) as usize];
                if rng.chance(50) {
                    rib.originate(prefix, Attrs::local(Origin::Igp))
                } else {
                    rib.withdraw_originated(prefix)
                }
            }
        } else if roll < 75 {
            let u = update_for(&mut rng, p, &all);
            rib.apply(p.id, &u).unwrap()
        } else if roll < 82 {
            up[i] = false;
            models.peers.remove(&p.id);
            let keep = rng.chance(50).then_some(Duration::from_secs(60));
            rib.peer_down(p.id, keep).unwrap()
        } else if roll < 88 {
            let f = if rng.chance(50) {
                Family::IPV4_UNICAST
            } else {
                Family::IPV6_UNICAST
            };
            rib.end_of_rib(p.id, f).unwrap()
        } else if roll < 92 {
            let f = if rng.chance(50) {
                Family::IPV4_UNICAST
            } else {
                Family::IPV6_UNICAST
            };
            let c = rib.refresh(p.id, f).unwrap();
            // A refresh re-sends what the peer has: the model must not change.
            let before = models.peers.get(&p.id).cloned().unwrap_or_default();
            models.take(&c, step);
            assert_eq!(models.peers.get(&p.id).cloned().unwrap_or_default(), before);
            RibChanges::default()
        } else {
            let prefix = all[rng.below(all.len() as u64) as usize];
            if rng.chance(50) {
                rib.originate(prefix, Attrs::local(Origin::Igp))
            } else {
                rib.withdraw_originated(prefix)
            }
        };
        models.take(&c, step);
        // The from-scratch re-export is the costly oracle: every fifth step and the last.
        check(
            &mut rib,
            &specs,
            &up,
            &models,
            step,
            step % 5 == 0 || step == steps,
        );
    }
}

#[test]
fn random_inputs_keep_fib_and_adj_rib_outs_consistent() {
    for seed in [1, 0x5EED_0F7B_1100, 0xDEAD_BEEF_CAFE] {
        run(seed, 500);
    }
}
