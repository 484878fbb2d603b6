//! The peer table: who the other nodes are, which pod blocks each one holds, and the
//! longest-prefix match from an inner destination to the peer that holds it.
//!
//! A [`PeerTable`] is immutable and built once per generation (twilld sends a whole new
//! table on every peer change; the ctl thread builds it off the hot path and publishes it
//! with [`crate::published::Published`]). Lookups allocate nothing:
//! - every block (the local node's and every peer's) is flattened into one sorted array of
//!   disjoint intervals, each with its owner, and searched by binary search
//!   ([`PeerTable::route`], [`PeerTable::admit_src`], [`PeerTable::is_local`] are one search
//!   each); where a node's blocks nest, the most specific one wins (the owner is the same by
//!   construction, see below);
//! - `by_ip` is a sorted `(node IP, PeerId)` array for [`PeerTable::peer_by_ip`].
//!
//! What [`PeerTable::new`] refuses, each with a [`TableError`] naming both sides:
//! - a block of one node that overlaps a block of another node (peer/peer or peer/local):
//!   a pod address belongs to exactly one node, so the RX filter can tell a spoofed inner
//!   source from a real one (overlapping blocks of the *same* node are allowed);
//! - a block with host bits set (`10.244.1.5/24`: the lease is `10.244.1.0/24`);
//! - two peers with the same node IP, a peer with the local node IP or with 0.0.0.0;
//! - a peer on UDP port 0.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

use crate::partial::Checksums;

/// A peer's index into [`PeerTable::peers`]; valid for the table it came from only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

impl PeerId {
    /// The index, for counter arrays.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Another node: where to send (node IP, UDP port) and the pod blocks it holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub node_ip: Ipv4Addr,
    pub port: u16,
    pub blocks: Vec<Ipv4Net>,
    /// How the inner checksums of what is sent to it are left ([`crate::partial`]).
    pub checksums: Checksums,
}

impl Peer {
    /// The outer destination of what is sent to this peer.
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.node_ip, self.port)
    }
}

/// This node: its node IP and the pod blocks it holds (what an inner destination must be in).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LocalNode {
    pub node_ip: Ipv4Addr,
    pub blocks: Vec<Ipv4Net>,
}

impl Default for PeerTable {
    /// The table before the first `Table` message: no peers, no local blocks, so nothing is
    /// routed and nothing is admitted.
    fn default() -> Self {
        PeerTable::new(
            0,
            LocalNode {
                node_ip: Ipv4Addr::UNSPECIFIED,
                blocks: Vec::new(),
            },
            Vec::new(),
        )
        .expect("the empty table is valid")
    }
}

/// Whose block a [`TableError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This node (the `local` argument).
    Local(Ipv4Addr),
    /// A peer, by node IP.
    Peer(Ipv4Addr),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Local(ip) => write!(f, "this node ({ip})"),
            Owner::Peer(ip) => write!(f, "peer {ip}"),
        }
    }
}

/// Why [`PeerTable::new`] refused a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error(
        "block {a_block} of {a} overlaps block {b_block} of {b}: a pod address belongs to one \
         node only, so the two leases conflict (release one of them)"
    )]
    Overlap {
        a: Owner,
        a_block: Ipv4Net,
        b: Owner,
        b_block: Ipv4Net,
    },
    #[error("block {block} of {owner} has host bits set (the block is {})", block.trunc())]
    HostBits { owner: Owner, block: Ipv4Net },
    #[error(
        "peers {first} and {second} both have node IP {node_ip}: each node IP is one peer \
         (merge their blocks or drop the stale node)"
    )]
    DuplicateNodeIp {
        node_ip: Ipv4Addr,
        first: u32,
        second: u32,
    },
    #[error("peer {node_ip} has this node's own node IP: a node is not its own peer")]
    PeerIsLocal { node_ip: Ipv4Addr },
    #[error("a peer has node IP 0.0.0.0: give each peer its real node IP")]
    UnspecifiedNodeIp,
    #[error("peer {node_ip} has UDP port 0: give its datapath's port (8285 by default)")]
    ZeroPort { node_ip: Ipv4Addr },
    #[error("{count} peers is more than a table holds ({MAX_PEERS})")]
    TooManyPeers { count: usize },
}

/// The most peers a table holds (the owner codes above it are reserved).
pub const MAX_PEERS: usize = (u32::MAX - 2) as usize;
/// Owner code of an interval no block covers.
const NONE: u32 = u32::MAX;
/// Owner code of an interval in the local node's blocks.
const LOCAL: u32 = u32::MAX - 1;

/// One generation's peers, immutable (see the module docs).
#[derive(Clone, Debug)]
pub struct PeerTable {
    generation: u64,
    local: LocalNode,
    peers: Vec<Peer>,
    /// Sorted by node IP.
    by_ip: Vec<(u32, PeerId)>,
    /// Interval `i` is `starts[i] ..= starts[i + 1] - 1` (the last one up to 255.255.255.255);
    /// `starts[0] == 0`, strictly increasing, so every address is in exactly one interval.
    starts: Vec<u32>,
    /// The owner of interval `i`: a peer index, [`LOCAL`] or [`NONE`]. Neighbours differ.
    owners: Vec<u32>,
}

impl PeerTable {
    /// Validates and builds a table (see the module docs for what is refused). O(n log n) in
    /// the number of blocks.
    pub fn new(
        generation: u64,
        local: LocalNode,
        peers: Vec<Peer>,
    ) -> Result<PeerTable, TableError> {
        if peers.len() > MAX_PEERS {
            return Err(TableError::TooManyPeers { count: peers.len() });
        }
        let mut by_ip = Vec::with_capacity(peers.len());
        for (i, p) in peers.iter().enumerate() {
            if p.node_ip.is_unspecified() {
                return Err(TableError::UnspecifiedNodeIp);
            }
            if p.node_ip == local.node_ip {
                return Err(TableError::PeerIsLocal { node_ip: p.node_ip });
            }
            if p.port == 0 {
                return Err(TableError::ZeroPort { node_ip: p.node_ip });
            }
            by_ip.push((u32::from(p.node_ip), PeerId(i as u32)));
        }
        by_ip.sort_unstable();
        if let Some(w) = by_ip.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(TableError::DuplicateNodeIp {
                node_ip: Ipv4Addr::from(w[0].0),
                first: w[0].1 .0,
                second: w[1].1 .0,
            });
        }

        let owner_of = |code: u32| -> Owner {
            if code == LOCAL {
                Owner::Local(local.node_ip)
            } else {
                Owner::Peer(peers[code as usize].node_ip)
            }
        };
        // Every block as (first address, prefix length, owner code), sorted so that a block
        // comes after every block that contains it.
        let total: usize = local.blocks.len() + peers.iter().map(|p| p.blocks.len()).sum::<usize>();
        let mut blocks: Vec<(u32, u8, u32)> = Vec::with_capacity(total);
        let all = local.blocks.iter().map(|b| (*b, LOCAL)).chain(
            peers
                .iter()
                .enumerate()
                .flat_map(|(i, p)| p.blocks.iter().map(move |b| (*b, i as u32))),
        );
        for (b, code) in all {
            if b.trunc() != b {
                return Err(TableError::HostBits {
                    owner: owner_of(code),
                    block: b,
                });
            }
            blocks.push((u32::from(b.network()), b.prefix_len(), code));
        }
        blocks.sort_unstable();

        let mut flat = Flattener::default();
        // The chain of blocks containing the current one, outermost first: (first, last, owner).
        let mut stack: Vec<(u32, u32, u8, u32)> = Vec::new();
        for &(first, len, code) in &blocks {
            let last = last_of(first, len);
            while let Some(&(_, top_last, _, top_code)) = stack.last() {
                if top_last >= first {
                    break;
                }
                flat.cover_to(u64::from(top_last) + 1, top_code);
                stack.pop();
            }
            if let Some(&(top_first, _, top_len, top_code)) = stack.last() {
                // CIDR blocks nest or are disjoint: the top contains this one.
                if top_code != code {
                    return Err(TableError::Overlap {
                        a: owner_of(top_code),
                        a_block: net(top_first, top_len),
                        b: owner_of(code),
                        b_block: net(first, len),
                    });
                }
                flat.cover_to(u64::from(first), top_code);
            } else {
                flat.cover_to(u64::from(first), NONE);
            }
            stack.push((first, last, len, code));
        }
        while let Some((_, last, _, code)) = stack.pop() {
            flat.cover_to(u64::from(last) + 1, code);
        }
        flat.cover_to(1 << 32, NONE);

        Ok(PeerTable {
            generation,
            local,
            peers,
            by_ip,
            starts: flat.starts,
            owners: flat.owners,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn local(&self) -> &LocalNode {
        &self.local
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The peer `id` names. Panics when `id` is not from this table (a bug, not input).
    pub fn peer(&self, id: PeerId) -> &Peer {
        &self.peers[id.index()]
    }

    /// TX: the peer holding `dst` (longest prefix match), `None` for an address no peer holds
    /// (in the local blocks or in none).
    #[inline]
    pub fn route(&self, dst: Ipv4Addr) -> Option<PeerId> {
        match self.owner(dst) {
            NONE | LOCAL => None,
            i => Some(PeerId(i)),
        }
    }

    /// The peer whose node IP is `node_ip` (the outer source of what arrives).
    #[inline]
    pub fn peer_by_ip(&self, node_ip: Ipv4Addr) -> Option<PeerId> {
        let ip = u32::from(node_ip);
        self.by_ip
            .binary_search_by_key(&ip, |&(k, _)| k)
            .ok()
            .map(|i| self.by_ip[i].1)
    }

    /// RX: whether `inner_src` is in `peer`'s blocks.
    #[inline]
    pub fn admit_src(&self, peer: PeerId, inner_src: Ipv4Addr) -> bool {
        self.owner(inner_src) == peer.0
    }

    /// RX: whether `inner_dst` is in this node's blocks.
    #[inline]
    pub fn is_local(&self, inner_dst: Ipv4Addr) -> bool {
        self.owner(inner_dst) == LOCAL
    }

    /// The number of disjoint intervals the blocks flattened into (for tests and figures).
    pub fn intervals(&self) -> usize {
        self.starts.len()
    }

    #[inline]
    fn owner(&self, addr: Ipv4Addr) -> u32 {
        let a = u32::from(addr);
        // starts[0] == 0 <= a, so the point is >= 1.
        let i = self.starts.partition_point(|&s| s <= a) - 1;
        self.owners[i]
    }
}

/// The last address of the block `first/len`.
fn last_of(first: u32, len: u8) -> u32 {
    let size = 1u64 << (32 - u32::from(len));
    (u64::from(first) + size - 1) as u32
}

fn net(first: u32, len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(first), len).expect("prefix length from an Ipv4Net")
}

/// Builds the interval arrays left to right: everything from the cursor up to an address
/// gets an owner; neighbours with the same owner merge.
#[derive(Default)]
struct Flattener {
    starts: Vec<u32>,
    owners: Vec<u32>,
    /// The first address not covered yet (up to 2^32).
    next: u64,
}

impl Flattener {
    fn cover_to(&mut self, end: u64, owner: u32) {
        if end <= self.next {
            return;
        }
        if self.owners.last() != Some(&owner) {
            self.starts.push(self.next as u32);
            self.owners.push(owner);
        }
        self.next = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn peer(node: &str, blocks: &[&str]) -> Peer {
        Peer {
            node_ip: ip(node),
            port: 8285,
            blocks: blocks.iter().map(|b| n(b)).collect(),
            checksums: Checksums::Full,
        }
    }
    fn local(blocks: &[&str]) -> LocalNode {
        LocalNode {
            node_ip: ip("192.0.2.1"),
            blocks: blocks.iter().map(|b| n(b)).collect(),
        }
    }

    #[test]
    fn routes_by_longest_prefix_and_knows_the_local_blocks() {
        let t = PeerTable::new(
            7,
            local(&["10.244.1.0/24"]),
            vec![
                peer("192.0.2.2", &["10.244.2.0/24", "10.244.2.128/25"]),
                peer("192.0.2.3", &["10.244.3.0/24", "10.244.4.0/26"]),
                peer("192.0.2.4", &[]),
            ],
        )
        .unwrap();
        assert_eq!(t.generation(), 7);
        assert_eq!(t.route(ip("10.244.2.1")), Some(PeerId(0)));
        assert_eq!(t.route(ip("10.244.2.200")), Some(PeerId(0)));
        assert_eq!(t.route(ip("10.244.3.255")), Some(PeerId(1)));
        assert_eq!(t.route(ip("10.244.4.63")), Some(PeerId(1)));
        assert_eq!(t.route(ip("10.244.4.64")), None);
        assert_eq!(t.route(ip("10.244.1.9")), None, "local is not routed");
        assert_eq!(t.route(ip("0.0.0.0")), None);
        assert_eq!(t.route(ip("255.255.255.255")), None);
        assert!(t.is_local(ip("10.244.1.0")) && t.is_local(ip("10.244.1.255")));
        assert!(!t.is_local(ip("10.244.0.255")) && !t.is_local(ip("10.244.2.0")));
        assert!(t.admit_src(PeerId(0), ip("10.244.2.5")));
        assert!(!t.admit_src(PeerId(1), ip("10.244.2.5")));
        assert!(!t.admit_src(PeerId(0), ip("10.244.1.5")));
        assert_eq!(t.peer_by_ip(ip("192.0.2.3")), Some(PeerId(1)));
        assert_eq!(t.peer_by_ip(ip("192.0.2.4")), Some(PeerId(2)));
        assert_eq!(t.peer_by_ip(ip("192.0.2.1")), None);
        assert_eq!(t.peer(PeerId(1)).addr(), "192.0.2.3:8285".parse().unwrap());
        // none, local, peer 0, peer 1, none: the nested /25 and the adjacent 10.244.4.0/26
        // of the same owner merged away.
        assert_eq!(t.intervals(), 5);
    }

    #[test]
    fn whole_space_and_host_routes_work_at_the_edges() {
        let t = PeerTable::new(
            1,
            local(&["255.255.255.255/32"]),
            vec![peer("192.0.2.2", &["0.0.0.0/1"])],
        )
        .unwrap();
        assert_eq!(t.route(ip("0.0.0.0")), Some(PeerId(0)));
        assert_eq!(t.route(ip("127.255.255.255")), Some(PeerId(0)));
        assert_eq!(t.route(ip("128.0.0.0")), None);
        assert!(t.is_local(ip("255.255.255.255")));
        assert!(!t.is_local(ip("255.255.255.254")));
        let all = PeerTable::new(1, local(&[]), vec![peer("192.0.2.2", &["0.0.0.0/0"])]).unwrap();
        assert_eq!(all.intervals(), 1);
        assert_eq!(all.route(ip("203.0.113.9")), Some(PeerId(0)));
    }

    #[test]
    fn the_empty_table_routes_and_admits_nothing() {
        let t = PeerTable::default();
        assert_eq!(t.generation(), 0);
        assert_eq!(t.route(ip("10.244.0.1")), None);
        assert!(!t.is_local(ip("0.0.0.0")));
        assert_eq!(t.peer_by_ip(ip("0.0.0.0")), None);
        assert_eq!(t.intervals(), 1);
    }

    #[test]
    fn refuses_blocks_of_two_nodes_that_overlap_naming_both() {
        let e = PeerTable::new(
            1,
            local(&["10.244.1.0/24"]),
            vec![
                peer("192.0.2.2", &["10.244.2.0/24"]),
                peer("192.0.2.3", &["10.244.2.64/26"]),
            ],
        )
        .unwrap_err();
        assert_eq!(
            e,
            TableError::Overlap {
                a: Owner::Peer(ip("192.0.2.2")),
                a_block: n("10.244.2.0/24"),
                b: Owner::Peer(ip("192.0.2.3")),
                b_block: n("10.244.2.64/26"),
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("10.244.2.0/24 of peer 192.0.2.2")
                && msg.contains("10.244.2.64/26 of peer 192.0.2.3"),
            "{msg}"
        );

        let e = PeerTable::new(
            1,
            local(&["10.244.1.0/25"]),
            vec![peer("192.0.2.2", &["10.244.0.0/16"])],
        )
        .unwrap_err();
        assert_eq!(
            e,
            TableError::Overlap {
                a: Owner::Peer(ip("192.0.2.2")),
                a_block: n("10.244.0.0/16"),
                b: Owner::Local(ip("192.0.2.1")),
                b_block: n("10.244.1.0/25"),
            }
        );
        assert!(e.to_string().contains("this node (192.0.2.1)"), "{e}");
        // The same block twice in two peers.
        assert!(matches!(
            PeerTable::new(
                1,
                local(&[]),
                vec![
                    peer("192.0.2.2", &["10.244.5.0/24"]),
                    peer("192.0.2.3", &["10.244.5.0/24"])
                ]
            ),
            Err(TableError::Overlap { .. })
        ));
        // One node's own blocks may nest or repeat.
        PeerTable::new(
            1,
            local(&["10.244.1.0/24", "10.244.1.0/24", "10.244.1.0/28"]),
            vec![peer("192.0.2.2", &["10.244.2.0/24", "10.244.2.0/24"])],
        )
        .unwrap();
    }

    #[test]
    fn refuses_bad_peers() {
        let e = PeerTable::new(
            1,
            local(&[]),
            vec![
                peer("192.0.2.2", &[]),
                peer("192.0.2.3", &[]),
                peer("192.0.2.2", &[]),
            ],
        )
        .unwrap_err();
        assert_eq!(
            e,
            TableError::DuplicateNodeIp {
                node_ip: ip("192.0.2.2"),
                first: 0,
                second: 2
            }
        );
        let mut p = peer("192.0.2.2", &[]);
        p.port = 0;
        let e = PeerTable::new(1, local(&[]), vec![p]).unwrap_err();
        assert_eq!(
            e,
            TableError::ZeroPort {
                node_ip: ip("192.0.2.2")
            }
        );
        assert!(e.to_string().contains("port 0"), "{e}");
        assert_eq!(
            PeerTable::new(1, local(&[]), vec![peer("192.0.2.1", &[])]).unwrap_err(),
            TableError::PeerIsLocal {
                node_ip: ip("192.0.2.1")
            }
        );
        assert_eq!(
            PeerTable::new(1, local(&[]), vec![peer("0.0.0.0", &[])]).unwrap_err(),
            TableError::UnspecifiedNodeIp
        );
        let e =
            PeerTable::new(1, local(&[]), vec![peer("192.0.2.2", &["10.244.2.5/24"])]).unwrap_err();
        assert_eq!(
            e,
            TableError::HostBits {
                owner: Owner::Peer(ip("192.0.2.2")),
                block: n("10.244.2.5/24")
            }
        );
        assert!(e.to_string().contains("the block is 10.244.2.0/24"), "{e}");
    }

    /// splitmix64: a seeded generator (no proptest in the workspace).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Owner code in the oracle: None = nobody, Some(LOCAL) = local, Some(i) = peer i.
    fn oracle_owner(blocks: &[(Ipv4Net, u32)], addr: Ipv4Addr) -> Option<u32> {
        blocks
            .iter()
            .filter(|(b, _)| b.contains(&addr))
            .max_by_key(|(b, _)| b.prefix_len())
            .map(|(_, o)| *o)
    }

    /// A random table in 10.244.0.0/16 (and a few blocks anywhere): blocks of every length
    /// from /12 to /32, often nested, some of the same owner. With `valid`, blocks that would
    /// overlap another owner's are left out.
    fn generate(seed: u64, valid: bool) -> (LocalNode, Vec<Peer>, Vec<(Ipv4Net, u32)>) {
        let mut rng = Rng(seed);
        let npeers = 1 + rng.below(12) as usize;
        let mut all: Vec<(Ipv4Net, u32)> = Vec::new();
        let nblocks = rng.below(40);
        for _ in 0..nblocks {
            let owner = if rng.below(4) == 0 {
                LOCAL
            } else {
                rng.below(npeers as u64) as u32
            };
            let len = 12 + rng.below(21) as u8;
            let base = if rng.below(8) == 0 {
                rng.next() as u32
            } else {
                0x0af4_0000 | (rng.next() as u32 & 0xffff)
            };
            let b = Ipv4Net::new(Ipv4Addr::from(base), len).unwrap().trunc();
            let clash = all
                .iter()
                .any(|(o, ow)| *ow != owner && (o.contains(&b) || b.contains(o)));
            if valid && clash {
                continue;
            }
            all.push((b, owner));
        }
        let local = LocalNode {
            node_ip: Ipv4Addr::new(192, 0, 2, 1),
            blocks: all
                .iter()
                .filter(|(_, o)| *o == LOCAL)
                .map(|(b, _)| *b)
                .collect(),
        };
        let peers = (0..npeers as u32)
            .map(|i| Peer {
                node_ip: Ipv4Addr::from(0xc633_6400 + i + 2), // 198.51.100.x
                port: 8285,
                blocks: all
                    .iter()
                    .filter(|(_, o)| *o == i)
                    .map(|(b, _)| *b)
                    .collect(),
                checksums: Checksums::Full,
            })
            .collect();
        (local, peers, all)
    }

    fn check_against_oracle(seed: u64) {
        for valid in [true, false] {
            let (local, peers, all) = generate(seed, valid);
            let clash = all
                .iter()
                .any(|(a, ao)| all.iter().any(|(b, bo)| ao != bo && a.contains(b)));
            let t = match PeerTable::new(seed, local.clone(), peers.clone()) {
                Err(TableError::Overlap {
                    a,
                    a_block,
                    b,
                    b_block,
                }) => {
                    assert!(clash, "seed {seed}: refused a table with no clash ({a_block} of {a}, {b_block} of {b})");
                    assert_ne!(a, b, "seed {seed}");
                    assert!(
                        a_block.contains(&b_block) || b_block.contains(&a_block),
                        "seed {seed}: {a_block} {b_block}"
                    );
                    continue;
                }
                Err(e) => panic!("seed {seed}: {e}"),
                Ok(t) => {
                    assert!(
                        !clash,
                        "seed {seed} (valid {valid}): a clash was not refused"
                    );
                    t
                }
            };
            let mut rng = Rng(seed ^ 0x5eed);
            let mut addrs: Vec<Ipv4Addr> = vec![Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::BROADCAST];
            for (b, _) in &all {
                let (lo, hi) = (u32::from(b.network()), u32::from(b.broadcast()));
                for a in [
                    lo.wrapping_sub(1),
                    lo,
                    lo.wrapping_add(1),
                    hi.wrapping_sub(1),
                    hi,
                    hi.wrapping_add(1),
                ] {
                    addrs.push(Ipv4Addr::from(a));
                }
            }
            for _ in 0..300 {
                addrs.push(Ipv4Addr::from(0x0af4_0000 | (rng.next() as u32 & 0xffff)));
                addrs.push(Ipv4Addr::from(rng.next() as u32));
            }
            for a in addrs {
                let want = oracle_owner(&all, a);
                let route = want.filter(|o| *o != LOCAL).map(PeerId);
                assert_eq!(t.route(a), route, "seed {seed}: route({a})");
                assert_eq!(
                    t.is_local(a),
                    want == Some(LOCAL),
                    "seed {seed}: is_local({a})"
                );
                for i in 0..peers.len() as u32 {
                    assert_eq!(
                        t.admit_src(PeerId(i), a),
                        want == Some(i),
                        "seed {seed}: admit_src({i}, {a})"
                    );
                }
            }
            for (i, p) in peers.iter().enumerate() {
                assert_eq!(
                    t.peer_by_ip(p.node_ip),
                    Some(PeerId(i as u32)),
                    "seed {seed}"
                );
            }
            // Neighbouring intervals always differ in owner (the flattening merges).
            assert!(t.owners.windows(2).all(|w| w[0] != w[1]), "seed {seed}");
            assert_eq!(t.starts[0], 0, "seed {seed}");
            assert!(t.starts.windows(2).all(|w| w[0] < w[1]), "seed {seed}");
        }
    }

    /// Generated tables against a naive LPM oracle. `TWILL_SEED=N` reruns one seed.
    #[test]
    fn matches_a_naive_lpm_oracle_on_generated_tables() {
        if let Some(seed) = std::env::var("TWILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            return check_against_oracle(seed);
        }
        for seed in 0..400 {
            check_against_oracle(seed);
        }
    }
}
