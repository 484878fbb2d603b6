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
//! - `split` (dp-offload): input = a 10-byte virtio-net header, then one TUN frame.
//!   `gso::split` never panics; `gso::split_headers` gathers to the same datagrams; a
//!   refused frame is left untouched; a finished `GSO_NONE` checksum verifies; every segment's IPv4 and transport checksums verify, its lengths are
//!   right, the payloads concatenate to the frame's, the chunks tile the output within the
//!   UDP_SEGMENT limits; and `gro::coalesce` of the segments gives the frame back (its
//!   lengths, IPv4 checksum and pseudo-header sum normalised) whenever the GRO rules allow.
//! - `coalesce` (dp-offload): input = a flags byte (bit 0: merge UDP; bit 1: fix each
//!   packet's lengths and checksums first, to reach the merge rules), a u16 LE gso_size,
//!   then a datagram cut at it. `gro::coalesce` never panics, loses or invents no packet, an
//!   unmerged packet is untouched with a zero header, and a merged item passes
//!   `VirtioNetHdr::check` and splits back into exactly its packets (checksum fields, and
//!   the IPv4 ID under DF, compared by validity).
//!
//! Adding a target: a `[[bin]]` in Cargo.toml, its
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
use twill_datapath::gro::{self, Coalesced, GroOptions};
use twill_datapath::gso::{self, Split};
use twill_datapath::partial::{self, Checksums, PartialAt};
use twill_datapath::table::{LocalNode, Peer, PeerId, PeerTable};
use twill_datapath::virtio::{GsoType, VirtioNetHdr};

/// A target's check: takes the raw fuzz input, panics on a broken promise.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and corpus folder.
pub const TARGETS: &[(&str, Check)] = &[
    ("admit", admit),
    ("ctl_decode", ctl_decode),
    ("split", split),
    ("coalesce", coalesce),
];

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("a fixed block")
}

/// The `admit` target's table (the seeds in corpus/admit/ are written against it).
pub fn fixed_table() -> PeerTable {
    let peer = |ip: [u8; 4], blocks: &[&str]| Peer {
        node_ip: Ipv4Addr::from(ip),
        port: 8285,
        blocks: blocks.iter().map(|b| net(b)).collect(),
        checksums: Checksums::Full,
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

/// The transport checksum field's offset in an IPv4 packet without options.
fn l4_csum_at(proto: u8) -> usize {
    if proto == 6 {
        36
    } else {
        26
    }
}

fn l4_verifies(p: &[u8]) -> bool {
    let src: [u8; 4] = p[12..16].try_into().unwrap();
    let dst: [u8; 4] = p[16..20].try_into().unwrap();
    let ihl = usize::from(p[0] & 15) * 4;
    let pseudo = checksum::pseudo_v4(src, dst, p[9], (p.len() - ihl) as u16);
    checksum::verify(pseudo + checksum::sum(&p[ihl..]))
}

pub fn split(data: &[u8]) {
    let Ok(h) = VirtioNetHdr::from_bytes(data) else {
        return;
    };
    let orig = &data[VirtioNetHdr::LEN..];
    let mut packet = orig.to_vec();
    let mut out = vec![0u8; gso::OUT_LEN];
    let s = match gso::split(&h, &mut packet, &mut out, Checksums::Full) {
        Err(_) => {
            assert_eq!(packet, orig, "a refused frame is untouched");
            return;
        }
        Ok(Split::Whole) => {
            if h.needs_csum {
                // (An odd csum_offset, which no kernel sets, sums the field byte-swapped.)
                if h.csum_offset % 2 == 1 {
                    return;
                }
                let start = usize::from(h.csum_start);
                let at = start + usize::from(h.csum_offset);
                // The field held the partial sum (pseudo-header); it now completes it.
                let partial = u64::from(u16::from_be_bytes([orig[at], orig[at + 1]]));
                assert!(checksum::verify(checksum::sum(&packet[start..]) + partial));
                assert_eq!(packet[..at], orig[..at]);
                assert_eq!(packet[at + 2..], orig[at + 2..]);
            } else {
                assert_eq!(packet, orig);
            }
            return;
        }
        Ok(Split::Segments(s)) => s,
    };
    assert_eq!(packet, orig, "the frame is read only");
    // The headers-only split (what the worker sends from) gathers to the same datagrams.
    let mut hdrs = vec![0u8; gso::OUT_LEN];
    let mut again = orig.to_vec();
    let Ok(Split::Segments(hs)) = gso::split_headers(&h, &mut again, &mut hdrs, Checksums::Full)
    else {
        panic!("split_headers refused what split took");
    };
    assert_eq!(hs, s);
    for c in s.chunks() {
        let mut m = Vec::with_capacity(c.range.len());
        for i in hs.chunk_segments(&c) {
            m.extend_from_slice(&hdrs[hs.header(i)]);
            m.extend_from_slice(&again[hs.payload(i)]);
        }
        assert_eq!(m, out[c.range], "gathered chunk");
    }
    let hc = h.check(orig).expect("split accepted it");
    let hl = usize::from(hc.hdr_len);
    assert_eq!(s.segment_size, hl + usize::from(hc.gso_size));
    let mut at = 0;
    let mut n = 0;
    for c in s.chunks() {
        assert_eq!(c.range.start, at);
        assert!(c.segments <= gso::MAX_SEGMENTS && c.range.len() <= gso::MAX_DATAGRAM);
        assert_eq!(c.range.len().div_ceil(c.segment_size), c.segments);
        at = c.range.end;
        n += c.segments;
    }
    assert_eq!((at, n), (s.len, s.segments));
    let mut payload = Vec::new();
    for seg in out[..s.len].chunks(s.segment_size) {
        assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), seg.len());
        assert!(checksum::verify(checksum::sum(&seg[..20])));
        assert!(l4_verifies(seg), "{seg:02x?}");
        payload.extend_from_slice(&seg[hl..]);
    }
    assert_eq!(payload, orig[hl..]);
    // For a Twill peer (partial checksums): the same segments but for the checksum field,
    // which the receiver finishes to what the full split wrote (0 and 0xffff are one value
    // in ones' complement: the kernel's skb_checksum_help writes 0xffff, TCP's split 0).
    let mut partial_out = vec![0u8; gso::OUT_LEN];
    let mut third = orig.to_vec();
    let Ok(Split::Segments(ps)) = gso::split(&h, &mut third, &mut partial_out, Checksums::Partial)
    else {
        panic!("the partial split refused what the full one took");
    };
    assert_eq!(ps, s);
    let at = PartialAt {
        start: hc.csum_start,
        offset: hc.csum_offset,
    };
    let field = usize::from(hc.csum_start + hc.csum_offset);
    let norm = |b: &[u8]| match u16::from_be_bytes([b[field], b[field + 1]]) {
        0 => 0xffff,
        v => v,
    };
    for (p, f) in partial_out[..s.len]
        .chunks_mut(s.segment_size)
        .zip(out[..s.len].chunks(s.segment_size))
    {
        partial::finish(p, at);
        assert_eq!(norm(p), norm(f), "a finished partial segment's checksum");
        assert_eq!(
            (&p[..field], &p[field + 2..]),
            (&f[..field], &f[field + 2..])
        );
    }
    // Back through GRO, when its rules let the segments merge.
    let tcp = hc.gso_type == GsoType::TcpV4;
    let flags = orig[33.min(orig.len() - 1)];
    let mergeable = hc.csum_start == 20
        && s.segments > 1
        && s.segments <= gro::MAX_SEGMENTS
        && (!tcp || flags == 0x10 || flags == 0x18);
    if !mergeable {
        return;
    }
    let mut packets = Vec::new();
    gro::cut(0..s.len, s.segment_size, &mut packets);
    let mut items = Coalesced::new();
    gro::coalesce(&mut out, &packets, GroOptions { udp: true }, &mut items);
    assert_eq!(items.len(), 1, "{:?}", items.items().collect::<Vec<_>>());
    let mut got = Vec::new();
    items.gather(0, &out, &mut got);
    let data_valid = false; // what a TUN read said about it does not travel
    assert_eq!(
        VirtioNetHdr::from_bytes(&got),
        Ok(VirtioNetHdr { data_valid, ..hc })
    );
    let mut want = orig.to_vec();
    let len = want.len() as u16;
    want[2..4].copy_from_slice(&len.to_be_bytes());
    want[10..12].copy_from_slice(&[0, 0]);
    let ipc = checksum::checksum(&want[..20]);
    want[10..12].copy_from_slice(&ipc.to_be_bytes());
    if !tcp {
        want[24..26].copy_from_slice(&(len - 20).to_be_bytes());
    }
    let src: [u8; 4] = want[12..16].try_into().unwrap();
    let dst: [u8; 4] = want[16..20].try_into().unwrap();
    let pseudo = checksum::fold(checksum::pseudo_v4(src, dst, want[9], len - 20));
    let c = l4_csum_at(want[9]);
    want[c..c + 2].copy_from_slice(&pseudo.to_be_bytes());
    assert_eq!(got[VirtioNetHdr::LEN..], want[..]);
}

/// Sets a packet's lengths and checksums right (where it is IPv4 without options).
fn fix(p: &mut [u8]) {
    if p.len() < 20 || p[0] >> 4 != 4 || p[0] & 15 != 5 {
        return;
    }
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let at = match p[9] {
        6 if p.len() >= 40 => 36,
        17 if p.len() >= 28 => {
            p[24..26].copy_from_slice(&(len - 20).to_be_bytes());
            26
        }
        _ => return,
    };
    p[at..at + 2].copy_from_slice(&[0, 0]);
    let src: [u8; 4] = p[12..16].try_into().unwrap();
    let dst: [u8; 4] = p[16..20].try_into().unwrap();
    let s = checksum::pseudo_v4(src, dst, p[9], len - 20) + checksum::sum(&p[20..]);
    let mut c = checksum::finish(s);
    if c == 0 && p[9] == 17 {
        c = 0xffff;
    }
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

pub fn coalesce(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let opts = GroOptions {
        udp: data[0] & 1 != 0,
    };
    let gso_size = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let mut buf = data[3..].to_vec();
    let mut packets = Vec::new();
    gro::cut(0..buf.len(), gso_size, &mut packets);
    if data[0] & 2 != 0 {
        for r in &packets {
            fix(&mut buf[r.clone()]);
        }
    }
    let orig = buf.clone();
    let mut items = Coalesced::new();
    gro::coalesce(&mut buf, &packets, opts, &mut items);
    assert_eq!(items.bad_ranges, 0);
    let mut seen = Vec::new();
    let mut got = Vec::new();
    let mut out = vec![0u8; gso::OUT_LEN];
    for (i, (item, parts)) in items.items().enumerate() {
        assert_eq!(parts.len(), item.segments);
        if item.segments == 1 {
            // A lone packet goes as it is; NEEDS_CSUM at its field exactly when it is
            // partial (its checksum field holds its pseudo-header sum).
            let want = partial::partial_at(&orig[parts[0].clone()])
                .map_or(VirtioNetHdr::NONE, PartialAt::vnet_hdr);
            assert_eq!(item.hdr, want);
            assert_eq!(buf[parts[0].clone()], orig[parts[0].clone()]);
            seen.push(parts[0].clone());
            continue;
        }
        let hl = usize::from(item.hdr.hdr_len);
        let originals: Vec<_> = std::iter::once(parts[0].clone())
            .chain(parts[1..].iter().map(|r| r.start - hl..r.end))
            .collect();
        seen.extend(originals.iter().cloned());
        items.gather(i, &buf, &mut got);
        let packet = &mut got[VirtioNetHdr::LEN..];
        assert_eq!(item.hdr.check(packet), Ok(item.hdr), "the kernel's checks");
        let Ok(Split::Segments(s)) = gso::split(&item.hdr, packet, &mut out, Checksums::Full)
        else {
            panic!("a merged item does not split: {item:?}");
        };
        assert_eq!(s.segments, item.segments);
        let c = l4_csum_at(orig[originals[0].start + 9]);
        for (seg, r) in out[..s.len].chunks(s.segment_size).zip(&originals) {
            let o = &orig[r.clone()];
            assert_eq!(seg.len(), o.len());
            assert!(checksum::verify(checksum::sum(&seg[..20])) && l4_verifies(seg));
            let df = o[6] & 0x40 != 0;
            let same = |a: usize, b: usize| seg[a..b] == o[a..b];
            assert!(same(0, 4) && same(6, 10) && same(12, c) && same(c + 2, o.len()));
            assert!(df || same(4, 6), "the IPv4 ID without DF");
        }
    }
    seen.sort_by_key(|r| r.start);
    assert_eq!(seen, packets, "every packet in exactly one item");
}
