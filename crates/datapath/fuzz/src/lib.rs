//! The checks behind the fuzz targets (`fuzz_targets/<name>.rs`), also compiled into
//! `crates/datapath/tests/fuzz_corpus.rs` (by `#[path]`) so every corpus file is replayed in
//! each test run on stable Rust. The promises each target checks:
//!
//! - `admit`: input = 4 bytes of outer source address, then one inner packet. Against a
//!   fixed table (nested blocks, a peer without blocks, a local block nested in another):
//!   `filter::admit` never panics and gives exactly what a naive reading of its rules (the
//!   module docs of `filter`, with a linear longest-prefix match) gives; `filter::route_tx`
//!   likewise; `filter::net_unreachable` on it never panics, and what it builds is a
//!   well-formed IPv4 ICMP packet with both checksums right.
//! - `ctl_decode`: input = one ctl message. `Request::decode` and `Reply::decode` never
//!   panic; whatever decodes encodes back to the same bytes; a decoded `Table` goes through
//!   `PeerTable::new` without a panic, and a table it accepts routes the first address of
//!   every block to that block's owner.
//!
//! Adding a target (dp-offload's `split`, `coalesce`): a `[[bin]]` in Cargo.toml, its
//! `fuzz_targets/<name>.rs` (three lines, as these), its check here with a row in
//! [`TARGETS`], and a non-empty `corpus/<name>/` (the replay test requires one).

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use ipnet::Ipv4Net;
use twill_datapath::checksum;
use twill_datapath::ctl::{Reply, Request};
use twill_datapath::filter::{
    admit as filter_admit, net_unreachable, parse_ipv4, route_tx, Drop, ICMP_ERROR_MAX,
};
use twill_datapath::table::{LocalNode, Peer, PeerId, PeerTable};

/// A target's check: takes the raw fuzz input, panics on a broken promise.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and corpus folder.
pub const TARGETS: &[(&str, Check)] = &[("admit", admit), ("ctl_decode", ctl_decode)];

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("a fixed block")
}

/// The `admit` target's table (the seeds in corpus/admit/ are written against it).
pub fn fixed_table() -> PeerTable {
    let peer = |ip: [u8; 4], blocks: &[&str]| Peer {
        node_ip: Ipv4Addr::from(ip),
        port: 8285,
        blocks: blocks.iter().map(|b| net(b)).collect(),
    };
    PeerTable::new(
        1,
        LocalNode {
            node_ip: Ipv4Addr::new(192, 0, 2, 1),
            blocks: vec![
                net("10.244.1.0/24"),
                net("10.244.1.0/28"),
                net("10.244.100.0/22"),
            ],
        },
        vec![
            peer([192, 0, 2, 2], &["10.244.2.0/24"]),
            peer(
                [192, 0, 2, 3],
                &["10.244.3.0/24", "10.244.3.128/25", "10.245.0.0/16"],
            ),
            peer([192, 0, 2, 4], &[]),
            peer([198, 51, 100, 7], &["0.0.0.0/5", "10.244.0.0/24"]),
        ],
    )
    .expect("the fixed table is valid")
}

/// The owner by a linear scan: `Some(None)` = local, `Some(Some(i))` = peer i.
fn naive_owner(t: &PeerTable, a: Ipv4Addr) -> Option<Option<u32>> {
    let mut best: Option<(u8, Option<u32>)> = None;
    let mut consider = |b: &Ipv4Net, o: Option<u32>| {
        if b.contains(&a) && best.is_none_or(|(len, _)| b.prefix_len() > len) {
            best = Some((b.prefix_len(), o));
        }
    };
    for b in &t.local().blocks {
        consider(b, None);
    }
    for (i, p) in t.peers().iter().enumerate() {
        for b in &p.blocks {
            consider(b, Some(i as u32));
        }
    }
    best.map(|(_, o)| o)
}

fn naive_admit(t: &PeerTable, outer: Ipv4Addr, p: &[u8]) -> Result<PeerId, Drop> {
    if p.len() < 20 {
        return Err(Drop::Short);
    }
    if p[0] >> 4 != 4 {
        return Err(Drop::NotIpv4);
    }
    let ihl = (p[0] & 15) as usize * 4;
    if ihl < 20 || ihl > p.len() || u16::from_be_bytes([p[2], p[3]]) as usize != p.len() {
        return Err(Drop::BadHeader);
    }
    let peer = t
        .peers()
        .iter()
        .position(|q| q.node_ip == outer)
        .ok_or(Drop::UnknownPeer)? as u32;
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    if naive_owner(t, src) != Some(Some(peer)) {
        return Err(Drop::SpoofedInner);
    }
    if naive_owner(t, dst) != Some(None) {
        return Err(Drop::ForeignDst);
    }
    Ok(PeerId(peer))
}

pub fn admit(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    static TABLE: OnceLock<PeerTable> = OnceLock::new();
    let t = TABLE.get_or_init(fixed_table);
    let outer = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
    let inner = &data[4..];
    assert_eq!(filter_admit(t, outer, inner), naive_admit(t, outer, inner));
    let want = if inner.len() < 20 {
        Err(Drop::Short)
    } else if inner[0] >> 4 != 4 {
        Err(Drop::NotIpv4)
    } else {
        let dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
        naive_owner(t, dst)
            .flatten()
            .map(PeerId)
            .ok_or(Drop::NoRoute)
    };
    assert_eq!(route_tx(t, inner), want);
    let mut out = [0u8; ICMP_ERROR_MAX];
    if let Some(n) = net_unreachable(inner, &mut out) {
        let b = &out[..n];
        assert!(parse_ipv4(b).is_ok(), "{b:02x?}");
        assert!(checksum::verify(checksum::sum(&b[..20])), "{b:02x?}");
        assert!(checksum::verify(checksum::sum(&b[20..])), "{b:02x?}");
        assert_eq!(&b[28..], &inner[..n - 28]);
        assert_eq!((&b[12..16], &b[16..20]), (&inner[16..20], &inner[12..16]));
    }
}

pub fn ctl_decode(data: &[u8]) {
    if let Ok(m) = Reply::decode(data) {
        assert_eq!(m.encode(), data, "{m:?}");
    }
    let Ok(m) = Request::decode(data) else {
        return;
    };
    assert_eq!(m.encode(), data, "{m:?}");
    if let Request::Table {
        generation,
        local,
        peers,
    } = m
    {
        let Ok(t) = PeerTable::new(generation, local, peers) else {
            return;
        };
        for b in &t.local().blocks {
            assert!(t.is_local(b.network()), "{b}");
            assert_eq!(t.route(b.network()), None, "{b}");
        }
        for (i, p) in t.peers().iter().enumerate() {
            let id = PeerId(i as u32);
            assert_eq!(t.peer_by_ip(p.node_ip), Some(id));
            for b in &p.blocks {
                assert_eq!(t.route(b.network()), Some(id), "{b}");
                assert!(t.admit_src(id, b.broadcast()), "{b}");
            }
        }
    }
}
