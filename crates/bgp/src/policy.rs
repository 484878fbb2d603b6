//! Import and export policy: which routes a peer's session takes in or sends out, and what
//! is changed on the way.
//!
//! Plain data, built by the speaker from its configuration:
//!
//! - A [`Policy`] is an ordered list of [`Term`]s. The **first** term whose every
//!   [`Match`] holds decides: its [`Action`]s are applied and its [`Verdict`] taken. A route
//!   no term matches is rejected, so a policy says explicitly what it lets through.
//! - [`Policy::accept_all`] is the explicit "everything, unchanged" policy. RFC 8212 makes it
//!   necessary: an eBGP peer with *no* import (or export) policy accepts (or sends) nothing
//!   (the RIB enforces that, see `rib`). An iBGP peer with no policy takes and sends
//!   everything.
//! - Matches: a prefix list with `ge`/`le` ([`PrefixMatch`]), any of some communities
//!   (RFC 1997), any of some large communities (RFC 8092).
//! - Actions: add/remove a community or large community, set LOCAL_PREF, set MED, next hop
//!   self (export only; on import it does nothing, the RIB keeps the peer's next hop).
//!
//! Evaluation is split in two so the RIB can share work between the many prefixes of one
//! UPDATE: [`Policy::evaluate`] looks at one prefix and its attributes and says which term
//! accepted it; [`Policy::apply`] applies that term's actions to a copy of the attributes,
//! which the RIB then interns and reuses for every prefix the same term accepted.

use ipnet::IpNet;

use crate::packet::{Attrs, Community, LargeCommunity};

/// An import or export policy: ordered terms, first match decides, no match rejects.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Policy {
    pub terms: Vec<Term>,
}

/// One term: when every match holds (an empty list always holds), apply the actions and take
/// the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub matches: Vec<Match>,
    pub actions: Vec<Action>,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject,
}

/// A condition on a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// The prefix matches at least one entry of the list.
    Prefix(Vec<PrefixMatch>),
    /// The route carries at least one of these communities (RFC 1997).
    Community(Vec<Community>),
    /// The route carries at least one of these large communities (RFC 8092).
    LargeCommunity(Vec<LargeCommunity>),
}

/// A change made to an accepted route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Added unless already present (communities stay a set, in first-seen order).
    AddCommunity(Community),
    RemoveCommunity(Community),
    AddLargeCommunity(LargeCommunity),
    RemoveLargeCommunity(LargeCommunity),
    /// LOCAL_PREF. On export it only matters towards iBGP peers: RFC 4271 §5.1.5 keeps
    /// LOCAL_PREF off eBGP sessions, and the RIB strips it there.
    SetLocalPref(u32),
    SetMed(u32),
    /// Export: the next hop becomes this speaker's session address. Import: no effect.
    NextHopSelf,
}

/// Which term of a policy accepted a route: the RIB's key for sharing the modified
/// attributes among prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TermIndex(pub usize);

/// One prefix-list entry: routes inside `prefix` whose length is in the entry's range.
///
/// Without `ge`/`le` the length must equal the prefix's own; with `ge` the range is
/// `ge..=max` (32 or 128); with `le` it is `len..=le`; with both, `ge..=le`. The same
/// semantics as Cisco, FRR and BIRD prefix lists (`{ge,le}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    prefix: IpNet,
    min_len: u8,
    max_len: u8,
}

/// A policy that cannot be built, with what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "prefix-list entry {prefix} ge {ge:?} le {le:?}: want {len} <= ge <= le <= {max} \
         (the prefix length, then ge, then le, within the family's {max} bits); fix the bounds"
    )]
    BadRange {
        prefix: IpNet,
        ge: Option<u8>,
        le: Option<u8>,
        len: u8,
        max: u8,
    },
}

impl PrefixMatch {
    /// An entry, checked: `len(prefix) <= ge <= le <= max_prefix_len`.
    pub fn new(prefix: IpNet, ge: Option<u8>, le: Option<u8>) -> Result<PrefixMatch, PolicyError> {
        let len = prefix.prefix_len();
        let max = prefix.max_prefix_len();
        let (min_len, max_len) = match (ge, le) {
            (None, None) => (len, len),
            (Some(ge), None) => (ge, max),
            (None, Some(le)) => (len, le),
            (Some(ge), Some(le)) => (ge, le),
        };
        if !(len <= min_len && min_len <= max_len && max_len <= max) {
            return Err(PolicyError::BadRange {
                prefix,
                ge,
                le,
                len,
                max,
            });
        }
        Ok(PrefixMatch {
            prefix: prefix.trunc(),
            min_len,
            max_len,
        })
    }

    /// An entry for exactly this prefix.
    pub fn exact(prefix: IpNet) -> PrefixMatch {
        let len = prefix.prefix_len();
        PrefixMatch {
            prefix: prefix.trunc(),
            min_len: len,
            max_len: len,
        }
    }

    pub fn prefix(&self) -> IpNet {
        self.prefix
    }

    /// The accepted prefix lengths, inclusive.
    pub fn len_range(&self) -> (u8, u8) {
        (self.min_len, self.max_len)
    }

    /// Whether `route` is inside this entry's prefix with a length in range. A route of the
    /// other address family never matches.
    pub fn matches(&self, route: IpNet) -> bool {
        let len = route.prefix_len();
        len >= self.min_len && len <= self.max_len && self.prefix.contains(&route)
    }
}

impl Match {
    fn holds(&self, prefix: IpNet, attrs: &Attrs) -> bool {
        match self {
            Match::Prefix(list) => list.iter().any(|e| e.matches(prefix)),
            Match::Community(cs) => cs.iter().any(|c| attrs.communities.contains(c)),
            Match::LargeCommunity(cs) => cs.iter().any(|c| attrs.large_communities.contains(c)),
        }
    }

    /// Whether the match looks at the prefix (so its outcome differs between the prefixes
    /// of one UPDATE).
    fn on_prefix(&self) -> bool {
        matches!(self, Match::Prefix(_))
    }
}

impl Policy {
    /// The explicit "take (or send) everything unchanged" policy (RFC 8212 §3 makes the
    /// operator say so for eBGP).
    pub fn accept_all() -> Policy {
        Policy {
            terms: vec![Term {
                matches: Vec::new(),
                actions: Vec::new(),
                verdict: Verdict::Accept,
            }],
        }
    }

    /// The term that decides `prefix` with `attrs`: `Some` when it accepts, `None` when a
    /// term rejects it or none matches.
    pub fn evaluate(&self, prefix: IpNet, attrs: &Attrs) -> Option<TermIndex> {
        for (i, term) in self.terms.iter().enumerate() {
            if term.matches.iter().all(|m| m.holds(prefix, attrs)) {
                return match term.verdict {
                    Verdict::Accept => Some(TermIndex(i)),
                    Verdict::Reject => None,
                };
            }
        }
        None
    }

    /// Whether any term looks at the prefix. When none does, one evaluation holds for every
    /// prefix of an UPDATE.
    pub fn depends_on_prefix(&self) -> bool {
        self.terms
            .iter()
            .any(|t| t.matches.iter().any(Match::on_prefix))
    }

    /// Apply the actions of the accepting term to `attrs`. Returns whether the term asked for
    /// next hop self (the RIB, which knows the session address, does that part).
    pub fn apply(&self, term: TermIndex, attrs: &mut Attrs) -> bool {
        let mut next_hop_self = false;
        let Some(term) = self.terms.get(term.0) else {
            return false;
        };
        for action in &term.actions {
            match *action {
                Action::AddCommunity(c) => {
                    if !attrs.communities.contains(&c) {
                        attrs.communities.push(c);
                    }
                }
                Action::RemoveCommunity(c) => attrs.communities.retain(|x| *x != c),
                Action::AddLargeCommunity(c) => {
                    if !attrs.large_communities.contains(&c) {
                        attrs.large_communities.push(c);
                    }
                }
                Action::RemoveLargeCommunity(c) => attrs.large_communities.retain(|x| *x != c),
                Action::SetLocalPref(v) => attrs.local_pref = Some(v),
                Action::SetMed(v) => attrs.med = Some(v),
                Action::NextHopSelf => next_hop_self = true,
            }
        }
        next_hop_self
    }

    /// Whether the accepting term sets MED itself (an export policy's MED is ours to send
    /// to an eBGP peer, unlike one learned from another AS).
    pub fn sets_med(&self, term: TermIndex) -> bool {
        self.terms
            .get(term.0)
            .is_some_and(|t| t.actions.iter().any(|a| matches!(a, Action::SetMed(_))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Origin;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn pm(p: &str, ge: Option<u8>, le: Option<u8>) -> PrefixMatch {
        PrefixMatch::new(net(p), ge, le).unwrap()
    }

    #[test]
    fn prefix_match_exact_without_ge_le() {
        let e = pm("10.244.0.0/16", None, None);
        assert!(e.matches(net("10.244.0.0/16")));
        assert!(!e.matches(net("10.244.1.0/24")));
        assert!(!e.matches(net("10.0.0.0/8")));
    }

    #[test]
    fn prefix_match_ge_only_reaches_the_family_maximum() {
        let e = pm("10.244.0.0/16", Some(24), None);
        assert!(!e.matches(net("10.244.0.0/16")));
        assert!(!e.matches(net("10.244.0.0/23")));
        assert!(e.matches(net("10.244.3.0/24")));
        assert!(e.matches(net("10.244.3.7/32")));
        assert!(!e.matches(net("10.245.3.0/24")), "outside the prefix");
    }

    #[test]
    fn prefix_match_le_only_starts_at_the_prefix_length() {
        let e = pm("10.244.0.0/16", None, Some(20));
        assert!(e.matches(net("10.244.0.0/16")));
        assert!(e.matches(net("10.244.16.0/20")));
        assert!(!e.matches(net("10.244.16.0/21")));
    }

    #[test]
    fn prefix_match_ge_and_le() {
        let e = pm("2001:db8::/32", Some(48), Some(64));
        assert!(!e.matches(net("2001:db8::/47")));
        assert!(e.matches(net("2001:db8:1::/48")));
        assert!(e.matches(net("2001:db8:1:2::/64")));
        assert!(!e.matches(net("2001:db8:1:2::/65")));
        assert!(!e.matches(net("10.0.0.0/24")), "other family");
    }

    #[test]
    fn prefix_match_refuses_inverted_bounds() {
        assert!(PrefixMatch::new(net("10.0.0.0/16"), Some(8), None).is_err());
        assert!(PrefixMatch::new(net("10.0.0.0/16"), Some(24), Some(20)).is_err());
        assert!(PrefixMatch::new(net("10.0.0.0/16"), None, Some(33)).is_err());
        let err = PrefixMatch::new(net("10.0.0.0/16"), Some(8), None).unwrap_err();
        assert!(err.to_string().contains("fix the bounds"), "{err}");
    }

    fn attrs_with(communities: &[u32], large: &[(u32, u32, u32)]) -> Attrs {
        let mut a = Attrs::local(Origin::Igp);
        a.communities = communities.iter().map(|c| Community(*c)).collect();
        a.large_communities = large
            .iter()
            .map(|&(global, local1, local2)| LargeCommunity {
                global,
                local1,
                local2,
            })
            .collect();
        a
    }

    #[test]
    fn community_and_large_community_matches() {
        let p = Policy {
            terms: vec![
                Term {
                    matches: vec![Match::Community(vec![Community(0xFDE8_0001)])],
                    actions: vec![Action::SetLocalPref(200)],
                    verdict: Verdict::Accept,
                },
                Term {
                    matches: vec![Match::LargeCommunity(vec![LargeCommunity {
                        global: 64512,
                        local1: 1,
                        local2: 2,
                    }])],
                    actions: vec![],
                    verdict: Verdict::Reject,
                },
                Term {
                    matches: vec![],
                    actions: vec![Action::AddCommunity(Community(7))],
                    verdict: Verdict::Accept,
                },
            ],
        };
        let n = net("192.0.2.0/24");
        let tagged = attrs_with(&[5, 0xFDE8_0001], &[]);
        assert_eq!(p.evaluate(n, &tagged), Some(TermIndex(0)));
        let large = attrs_with(&[5], &[(64512, 1, 2)]);
        assert_eq!(
            p.evaluate(n, &large),
            None,
            "rejected by the large community"
        );
        let other_large = attrs_with(&[], &[(64512, 1, 3)]);
        assert_eq!(p.evaluate(n, &other_large), Some(TermIndex(2)));

        let mut a = tagged.clone();
        assert!(!p.apply(TermIndex(0), &mut a));
        assert_eq!(a.local_pref, Some(200));
        let mut b = other_large.clone();
        p.apply(TermIndex(2), &mut b);
        p.apply(TermIndex(2), &mut b);
        assert_eq!(b.communities, vec![Community(7)], "added once");
    }

    #[test]
    fn all_matches_of_a_term_must_hold_and_no_match_rejects() {
        let p = Policy {
            terms: vec![Term {
                matches: vec![
                    Match::Prefix(vec![pm("10.244.0.0/16", Some(24), Some(26))]),
                    Match::Community(vec![Community(1)]),
                ],
                actions: vec![
                    Action::RemoveCommunity(Community(1)),
                    Action::AddLargeCommunity(LargeCommunity {
                        global: 1,
                        local1: 2,
                        local2: 3,
                    }),
                    Action::SetMed(50),
                    Action::NextHopSelf,
                ],
                verdict: Verdict::Accept,
            }],
        };
        assert!(p.depends_on_prefix());
        let a = attrs_with(&[1, 2], &[]);
        assert_eq!(p.evaluate(net("10.244.1.0/24"), &a), Some(TermIndex(0)));
        assert_eq!(
            p.evaluate(net("10.244.0.0/16"), &a),
            None,
            "length out of range"
        );
        assert_eq!(
            p.evaluate(net("10.244.1.0/24"), &attrs_with(&[2], &[])),
            None,
            "community missing"
        );
        let mut m = a.clone();
        assert!(p.apply(TermIndex(0), &mut m), "next hop self asked");
        assert_eq!(m.communities, vec![Community(2)]);
        assert_eq!(m.med, Some(50));
        assert!(p.sets_med(TermIndex(0)));
        assert_eq!(m.large_communities.len(), 1);
        let mut r = a;
        r.large_communities.push(LargeCommunity {
            global: 9,
            local1: 9,
            local2: 9,
        });
        let rm = Policy {
            terms: vec![Term {
                matches: vec![],
                actions: vec![Action::RemoveLargeCommunity(LargeCommunity {
                    global: 9,
                    local1: 9,
                    local2: 9,
                })],
                verdict: Verdict::Accept,
            }],
        };
        assert!(!rm.depends_on_prefix());
        rm.apply(TermIndex(0), &mut r);
        assert!(r.large_communities.is_empty());
    }

    #[test]
    fn empty_policy_rejects_and_accept_all_accepts() {
        let a = Attrs::local(Origin::Igp);
        assert_eq!(Policy::default().evaluate(net("10.0.0.0/8"), &a), None);
        assert_eq!(
            Policy::accept_all().evaluate(net("10.0.0.0/8"), &a),
            Some(TermIndex(0))
        );
    }
}
