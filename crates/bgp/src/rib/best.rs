//! The decision process for one prefix: RFC 4271 §9.1.2.2 as elimination steps, RFC 4456 §9
//! for reflected routes, and the multipath set.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr};

use crate::packet::Origin;

use super::DEFAULT_LOCAL_PREF;

/// What the decision process needs to know of one candidate path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// A route this speaker originates itself.
    pub local: bool,
    pub local_pref: Option<u32>,
    pub as_path_len: usize,
    pub origin: Origin,
    pub med: Option<u32>,
    pub neighbour_as: Option<u32>,
    pub ebgp: bool,
    /// The advertising peer's BGP Identifier, or the ORIGINATOR_ID when the route carries one.
    pub router_id: Ipv4Addr,
    pub cluster_list_len: usize,
    pub peer_addr: IpAddr,
    /// A last tie-break that is always unique (the source's id), so the outcome never
    /// depends on the order paths arrived in.
    pub source: u32,
    /// Its next hop is resolvable (RFC 4271 §9.1.2.1): one that is not takes no part.
    pub resolvable: bool,
}

impl Candidate {
    fn degree_of_preference(&self) -> u32 {
        self.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
    }

    /// RFC 4271 §9.1.2.2 c): "Routes that do not have the MULTI_EXIT_DISC attribute are
    /// considered to have the lowest possible MULTI_EXIT_DISC value."
    fn med(&self) -> u32 {
        self.med.unwrap_or(0)
    }

    /// Steps f) onwards, a total order (lower is better).
    fn tie_break(&self, other: &Candidate) -> Ordering {
        // RFC 4271 §9.1.2.2 f): "Remove from consideration all routes other than the route
        // that was advertised by the BGP speaker with the lowest BGP Identifier value."
        // RFC 4456 §9: "If a route carries the ORIGINATOR_ID attribute, then in Step f) ...
        // the ORIGINATOR_ID SHOULD be treated as the BGP Identifier of the BGP speaker that
        // has advertised the route." (`router_id` is already the ORIGINATOR_ID then.)
        self.router_id
            .cmp(&other.router_id)
            // RFC 4456 §9: "a BGP Speaker SHOULD prefer a route with the shorter
            // CLUSTER_LIST length. The CLUSTER_LIST length is zero if a route does not
            // carry the CLUSTER_LIST attribute."
            .then(self.cluster_list_len.cmp(&other.cluster_list_len))
            // RFC 4271 §9.1.2.2 g): "Prefer the route received from the lowest peer address."
            .then(self.peer_addr.cmp(&other.peer_addr))
            .then(self.source.cmp(&other.source))
    }
}

/// The selection for one prefix: indices into the candidates, best first, then the rest of
/// the multipath set (at most `max_paths` in all). Empty when there are no candidates.
///
/// The multipath rule: a path joins the best's set when it survives steps a) to d) of
/// §9.1.2.2 with the best (equal degree of preference, AS_PATH length and ORIGIN, the
/// winning MED, and the same eBGP/iBGP kind) and was learned from the same neighbouring AS
/// (for an empty AS_PATH: also empty). They are ordered by the remaining tie-breaks. A
/// locally originated best has no multipath set.
pub(crate) fn select(cands: &[Candidate], max_paths: usize) -> Vec<usize> {
    // Locally originated routes win over learned ones: this speaker's own announcement is
    // what it forwards by (RFC 4271 §9.1.1 leaves the degree of preference to local policy).
    if let Some(i) = cands.iter().position(|c| c.local) {
        return vec![i];
    }
    // RFC 4271 §9.1.2.1: "If the NEXT_HOP attribute of a BGP route depicts an address that
    // is not resolvable ... the route SHOULD be excluded from the Phase 2 decision
    // function." Stale paths (RFC 4724) are not candidates of a lesser kind: "The router
    // MUST NOT differentiate between stale and other routing information during
    // forwarding."
    let mut live: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].resolvable).collect();
    if live.len() <= 1 {
        return live;
    }

    // RFC 4271 §9.1.2.1 / §9.1.1: the route with the highest degree of preference (for
    // routes from internal peers "the value of the LOCAL_PREF attribute"; for routes from
    // external peers the RIB has applied import policy or the default).
    let best_pref = live
        .iter()
        .map(|&i| cands[i].degree_of_preference())
        .max()
        .unwrap_or(0);
    live.retain(|&i| cands[i].degree_of_preference() == best_pref);

    // RFC 4271 §9.1.2.2 a): "Remove from consideration all routes that are not tied for
    // having the smallest number of AS numbers present in their AS_PATH attributes. Note
    // that when counting this number, an AS_SET counts as 1" (AsPath::path_len).
    let min_len = live
        .iter()
        .map(|&i| cands[i].as_path_len)
        .min()
        .unwrap_or(0);
    live.retain(|&i| cands[i].as_path_len == min_len);

    // RFC 4271 §9.1.2.2 b): "Remove from consideration all routes that are not tied for
    // having the lowest Origin number in their Origin attribute."
    let min_origin = live
        .iter()
        .map(|&i| cands[i].origin)
        .min()
        .unwrap_or(Origin::Igp);
    live.retain(|&i| cands[i].origin == min_origin);

    // RFC 4271 §9.1.2.2 c): "Remove from consideration routes with less-preferred
    // MULTI_EXIT_DISC attributes. MULTI_EXIT_DISC is only comparable between routes learned
    // from the same neighboring AS". Elimination per neighbouring AS, so the result does not
    // depend on the order paths are looked at.
    let snapshot = live.clone();
    live.retain(|&i| {
        !snapshot.iter().any(|&j| {
            cands[j].neighbour_as == cands[i].neighbour_as && cands[j].med() < cands[i].med()
        })
    });

    // RFC 4271 §9.1.2.2 d): "If at least one of the candidate routes was received via EBGP,
    // remove from consideration all routes that were received via IBGP."
    if live.iter().any(|&i| cands[i].ebgp) {
        live.retain(|&i| cands[i].ebgp);
    }

    // RFC 4271 §9.1.2.2 e) (interior cost to the next hop) does not apply: Twill runs no IGP
    // and takes only on-link next hops as resolvable, so every interior cost is equal.

    // Steps f) and g) and RFC 4456 §9's CLUSTER_LIST rule: a total order.
    live.sort_by(|&a, &b| cands[a].tie_break(&cands[b]));
    let best = cands[live[0]];
    live.retain(|&i| cands[i].neighbour_as == best.neighbour_as);
    live.truncate(max_paths.max(1));
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(source: u32) -> Candidate {
        Candidate {
            local: false,
            local_pref: None,
            as_path_len: 2,
            origin: Origin::Igp,
            med: None,
            neighbour_as: Some(65001),
            ebgp: true,
            router_id: Ipv4Addr::new(192, 0, 2, 100 + source as u8),
            cluster_list_len: 0,
            peer_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, source as u8)),
            source,
            resolvable: true,
        }
    }

    /// `better` must win over `worse` in either order.
    fn prefers(better: Candidate, worse: Candidate) {
        assert_eq!(
            select(&[better, worse], 1),
            vec![0],
            "{better:?} over {worse:?}"
        );
        assert_eq!(
            select(&[worse, better], 1),
            vec![1],
            "{better:?} over {worse:?}"
        );
    }

    #[test]
    fn highest_local_pref_wins() {
        let mut a = base(1);
        a.local_pref = Some(200);
        a.as_path_len = 9; // would lose every later step
        a.router_id = Ipv4Addr::new(255, 0, 0, 0);
        let b = base(2); // default 100
        prefers(a, b);
        let mut c = base(3);
        c.local_pref = Some(99);
        prefers(base(4), c);
    }

    #[test]
    fn shortest_as_path_wins() {
        let mut a = base(1);
        a.as_path_len = 1;
        a.origin = Origin::Incomplete;
        prefers(a, base(2));
    }

    #[test]
    fn lowest_origin_wins() {
        let mut a = base(1);
        a.origin = Origin::Egp;
        a.med = Some(1000);
        let mut b = base(2);
        b.origin = Origin::Incomplete;
        prefers(a, b);
        let mut c = base(3);
        c.origin = Origin::Igp;
        prefers(c, a);
    }

    #[test]
    fn lowest_med_wins_within_one_neighbouring_as() {
        let mut a = base(1);
        a.med = Some(10);
        a.router_id = Ipv4Addr::new(250, 0, 0, 1);
        let mut b = base(2);
        b.med = Some(20);
        prefers(a, b);
    }

    #[test]
    fn missing_med_counts_as_zero() {
        let mut a = base(1);
        a.router_id = Ipv4Addr::new(250, 0, 0, 1);
        let mut b = base(2);
        b.med = Some(1);
        prefers(a, b);
    }

    #[test]
    fn med_is_not_compared_across_neighbouring_ases() {
        let mut a = base(1);
        a.med = Some(500);
        a.router_id = Ipv4Addr::new(10, 0, 0, 1);
        let mut b = base(2);
        b.med = Some(5);
        b.neighbour_as = Some(65002);
        b.router_id = Ipv4Addr::new(10, 0, 0, 2);
        // Different neighbouring ASes: MED is skipped and the router ID decides.
        prefers(a, b);
    }

    #[test]
    fn med_elimination_does_not_depend_on_order() {
        // The classic non-transitive trio: with pairwise comparison the arrival order
        // decides. By elimination per neighbouring AS, c (AS 65001, MED 5) removes a.
        let mut a = base(1);
        a.med = Some(10);
        a.router_id = Ipv4Addr::new(10, 0, 0, 1);
        let mut b = base(2);
        b.neighbour_as = Some(65002);
        b.med = Some(0);
        b.router_id = Ipv4Addr::new(10, 0, 0, 2);
        let mut c = base(3);
        c.med = Some(5);
        c.router_id = Ipv4Addr::new(10, 0, 0, 3);
        let orders = [
            [a, b, c],
            [a, c, b],
            [b, a, c],
            [b, c, a],
            [c, a, b],
            [c, b, a],
        ];
        for o in orders {
            let sel = select(&o, 1);
            assert_eq!(o[sel[0]], b, "{o:?}");
        }
    }

    #[test]
    fn ebgp_over_ibgp() {
        let a = base(1);
        let mut b = base(2);
        b.ebgp = false;
        b.router_id = Ipv4Addr::new(1, 1, 1, 1);
        prefers(a, b);
    }

    #[test]
    fn lowest_router_id_wins() {
        let mut a = base(1);
        a.router_id = Ipv4Addr::new(10, 0, 0, 1);
        a.peer_addr = "192.0.2.200".parse().unwrap();
        let mut b = base(2);
        b.router_id = Ipv4Addr::new(10, 0, 0, 2);
        prefers(a, b);
    }

    #[test]
    fn shortest_cluster_list_wins() {
        let mut a = base(1);
        a.ebgp = false;
        a.router_id = Ipv4Addr::new(10, 0, 0, 9);
        a.cluster_list_len = 1;
        a.peer_addr = "192.0.2.200".parse().unwrap();
        let mut b = a;
        b.source = 2;
        b.cluster_list_len = 2;
        b.peer_addr = "192.0.2.1".parse().unwrap();
        prefers(a, b);
    }

    #[test]
    fn lowest_peer_address_wins() {
        let mut a = base(1);
        a.router_id = Ipv4Addr::new(10, 0, 0, 9);
        a.peer_addr = "192.0.2.1".parse().unwrap();
        let mut b = a;
        b.source = 2;
        b.peer_addr = "192.0.2.2".parse().unwrap();
        prefers(a, b);
    }

    #[test]
    fn local_route_wins_over_learned() {
        let mut l = base(0);
        l.local = true;
        l.as_path_len = 0;
        l.local_pref = Some(0);
        let mut r = base(1);
        r.local_pref = Some(1000);
        prefers(l, r);
        assert_eq!(
            select(&[r, r, l], 4),
            vec![2],
            "no multipath with a local best"
        );
    }

    #[test]
    fn multipath_set_same_neighbour_as_up_to_max() {
        let mut cands = Vec::new();
        for s in 1..=4u32 {
            let mut c = base(s);
            c.router_id = Ipv4Addr::new(10, 0, 0, 10 - s as u8);
            cands.push(c);
        }
        // Another neighbouring AS with the same length: not in the set.
        let mut other = base(5);
        other.neighbour_as = Some(65009);
        other.router_id = Ipv4Addr::new(10, 0, 0, 100);
        cands.push(other);
        // Longer AS_PATH: not in the set.
        let mut longer = base(6);
        longer.as_path_len = 3;
        cands.push(longer);
        // Ordered by router ID: 10.0.0.6 (s=4), .7 (s=3), .8, .9.
        assert_eq!(select(&cands, 8), vec![3, 2, 1, 0]);
        assert_eq!(select(&cands, 2), vec![3, 2]);
        assert_eq!(select(&cands, 1), vec![3]);
        assert_eq!(select(&cands, 0), vec![3], "0 means 1");
    }

    #[test]
    fn an_unresolvable_next_hop_takes_no_part() {
        // The shorter AS path (iBGP from a node on another segment) loses to the path
        // whose next hop is on-link, however good it is otherwise.
        let mut far = base(1);
        far.as_path_len = 0;
        far.local_pref = Some(500);
        far.resolvable = false;
        let near = base(2);
        prefers(near, far);
        assert_eq!(select(&[far], 1), Vec::<usize>::new(), "alone: no best");
        assert_eq!(select(&[far, far], 4), Vec::<usize>::new());
        let mut near2 = base(3);
        near2.router_id = Ipv4Addr::new(192, 0, 2, 200);
        assert_eq!(
            select(&[far, near, near2], 4),
            vec![1, 2],
            "nor in the multipath set"
        );
    }

    #[test]
    fn multipath_excludes_ibgp_when_ebgp_present_and_worse_med() {
        let a = base(1);
        let mut ib = base(2);
        ib.ebgp = false;
        let mut med = base(3);
        med.med = Some(7);
        assert_eq!(select(&[a, ib, med], 8), vec![0]);
    }
}
