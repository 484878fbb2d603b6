//! Coalescing of received inner packets into TUN super-packets (RX: UDP → TUN). Pure.
//!
//! A `recvmmsg` with UDP_GRO returns datagrams that are several inner packets back to back
//! (the peer's `gso::split` chunks), with their gso_size in a cmsg. Writing each inner packet
//! into the TUN would cost one `write` each; [`coalesce`] merges consecutive packets of one
//! TCP (or UDP) flow back into one GSO super-packet with a virtio-net header, so the kernel
//! takes ~44 packets per `write`, as wireguard-go's `tcpGRO`/`udpGRO` do (design §3; learned,
//! not copied).
//!
//! The API (for the worker, part dp-io):
//! ```text
//! let mut packets = Vec::new();                           // ranges into `buf`
//! for each datagram d (bytes buf[d.start..d.end], UDP_GRO gso_size g, or its length):
//!     gro::cut(d.clone(), g, &mut packets);               // the inner packets
//! packets.retain(|r| admit(&table, outer_src, &buf[r.clone()]).is_ok()); // (counted)
//! gro::coalesce(&mut buf, &packets, GroOptions { udp: uso_on }, &mut out);
//! for (item, parts) in out.items() {                      // in order; one write each
//!     let h = item.hdr.to_bytes();
//!     writev(tun, [&h, &buf[parts[0]], &buf[parts[1]], …]); // or out.gather(i, &buf, &mut v)
//! }
//! ```
//! - [`cut`]`(datagram: Range<usize>, gso_size, out: &mut Vec<Range<usize>>)`: appends the
//!   ranges of the inner packets (`gso_size` bytes each, the last shorter; `gso_size` 0 or ≥
//!   the length: the whole datagram).
//! - [`coalesce`]`(buf: &mut [u8], packets: &[Range<usize>], opts, out: &mut Coalesced)`:
//!   `out` is cleared and filled with [`Item`]s in the order of their first packet; a flow's
//!   packets are never reordered (see below). It rewrites the first packet of each merged
//!   item in `buf` (IPv4 total length and header checksum, the TCP/UDP checksum field, PSH,
//!   UDP length) and nothing else; a merged item's parts are that packet's whole range, then
//!   the payload ranges of the packets appended to it, so the item is written with one
//!   `writev` and no copy. A range outside `buf` is left out (counted in
//!   [`Coalesced::bad_ranges`]).
//! - [`Item`]`{ hdr, segments }`: `hdr` is `NEEDS_CSUM`, `TCPV4` (or `UDP_L4`), `hdr_len` = IP
//!   and transport header, `gso_size` = the first packet's payload, `csum_start` 20,
//!   `csum_offset` 16 (6), with the pseudo-header sum in the checksum field (the kernel
//!   takes it as CHECKSUM_PARTIAL and never checks it again, hence the verification below).
//!   An item of one packet has its packet untouched and [`VirtioNetHdr::NONE`], or, when the
//!   packet is partial ([`partial::partial_at`]: a Twill peer left its checksum as the
//!   pseudo-header sum), `NEEDS_CSUM` at its checksum field and no GSO.
//!
//! The rules. A packet is a candidate when it is IPv4 without options, its total length is
//! its length, it is not a fragment, its IP header checksum verifies, and it is TCP with
//! exactly ACK or ACK|PSH, a payload, and a verifying checksum, or (with `opts.udp`: the TUN
//! has USO, so the kernel takes UDP_L4 writes) UDP with a payload, a length that matches and
//! a non-zero verifying checksum. A partial checksum (the pseudo-header sum, from a Twill
//! peer: [`crate::partial`]) counts as verifying: there is nothing to verify, the outer UDP
//! checksum covered the packet. Only the latest item of a flow (addresses, ports,
//! protocol) is open, and a candidate is appended to it when all of these hold:
//! - TCP: the same ack, the same TCP header length and option bytes (so equal timestamps),
//!   and seq = the item's next seq;
//! - the same window, urgent pointer and reserved bits (a split copies them from the head);
//! - the same TOS, TTL and flags/fragment byte (DF, the reserved bit), and ID = the previous one + 1 (or equal, with DF);
//! - no PSH in the item yet, the item's last payload was its full gso_size, and this payload
//!   is not larger than the gso_size (a short packet ends the item);
//! - the result stays ≤ 65,535 B and ≤ [`MAX_SEGMENTS`] packets (the writev's iovecs and the
//!   kernel's UDP_L4 limit).
//!
//! Otherwise the packet starts a new item (if it is a candidate) or is an item of its own,
//! and either way it closes the flow's open item, so nothing of that flow is ever written
//! before something that came earlier (a non-candidate without ports, e.g. a fragment,
//! closes every open item with its addresses and protocol).

use std::ops::Range;

use crate::checksum;
use crate::partial::{self, PartialAt};
use crate::virtio::{
    GsoType, VirtioNetHdr, IPPROTO_TCP, IPPROTO_UDP, TCP_CSUM_OFFSET, UDP_CSUM_OFFSET,
};

/// The most packets in one item.
pub const MAX_SEGMENTS: usize = 128;
/// Open flows tracked at once; past it, the oldest is closed (it is only written sooner).
const MAX_OPEN: usize = 64;

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// What [`coalesce`] may merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroOptions {
    /// Merge UDP too (only when the TUN accepted USO4|USO6 in TUNSETOFFLOAD: older kernels
    /// refuse UDP_L4 writes).
    pub udp: bool,
}

/// One write into the TUN: `hdr` then the parts, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub hdr: VirtioNetHdr,
    /// Inner packets in it.
    pub segments: usize,
    parts: (usize, usize),
}

/// [`coalesce`]'s output, reused from batch to batch (no allocation once warm).
#[derive(Debug, Default)]
pub struct Coalesced {
    items: Vec<Item>,
    parts: Vec<Range<usize>>,
    /// Ranges left out because they were not inside `buf`.
    pub bad_ranges: usize,
    // Scratch.
    build: Vec<Build>,
    assign: Vec<(u32, Range<usize>)>,
    open: Vec<Open>,
    ends: Vec<usize>,
}

impl Coalesced {
    pub fn new() -> Coalesced {
        Coalesced::default()
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// The items in write order, each with its parts (ranges into the `buf` given to
    /// [`coalesce`]).
    pub fn items(&self) -> impl Iterator<Item = (&Item, &[Range<usize>])> {
        self.items
            .iter()
            .map(|it| (it, &self.parts[it.parts.0..it.parts.1]))
    }
    /// Item `i` made contiguous (vnet header + super-packet) in `to` (cleared first): for a
    /// caller that wants one `write` of one buffer, and for tests.
    pub fn gather(&self, i: usize, buf: &[u8], to: &mut Vec<u8>) {
        let it = &self.items[i];
        to.clear();
        to.extend_from_slice(&it.hdr.to_bytes());
        for r in &self.parts[it.parts.0..it.parts.1] {
            to.extend_from_slice(&buf[r.clone()]);
        }
    }
}

/// Appends the inner packets of one datagram `d` received with UDP_GRO segment size
/// `gso_size` (0: not coalesced, the whole datagram is one packet).
pub fn cut(d: Range<usize>, gso_size: usize, out: &mut Vec<Range<usize>>) {
    if gso_size == 0 || d.len() <= gso_size {
        if !d.is_empty() {
            out.push(d);
        }
        return;
    }
    let mut s = d.start;
    while s < d.end {
        let e = (s + gso_size).min(d.end);
        out.push(s..e);
        s = e;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    sport: u16,
    dport: u16,
}

/// A candidate packet, parsed.
struct Cand {
    key: FlowKey,
    /// IP + transport header bytes.
    hl: usize,
    tos: u8,
    ttl: u8,
    df: bool,
    id: u16,
    seq: u32,
    ack: u32,
    psh: bool,
    payload: usize,
    /// The checksum field holds the pseudo-header sum.
    partial: bool,
}

#[derive(Debug)]
struct Build {
    head: Range<usize>,
    proto: u8,
    hl: usize,
    gso: usize,
    total: usize,
    segments: usize,
    psh: bool,
    /// A lone packet's partial checksum, written with NEEDS_CSUM.
    partial: Option<PartialAt>,
}

#[derive(Debug)]
struct Open {
    key: FlowKey,
    item: usize,
    ack: u32,
    next_seq: u32,
    last_id: u16,
    last_payload: usize,
    tos: u8,
    ttl: u8,
    df: bool,
    /// The head packet's TCP options (absolute range in buf).
    opts: Range<usize>,
    /// Where the head packet starts in buf.
    head: usize,
}

/// The TCP header fields that the segments of one super-packet share and a split copies
/// from the head: data offset and reserved bits, window, urgent pointer (the kernel's
/// tcp_gro_receive also flushes on a different window).
fn same_tcp_words(buf: &[u8], a: usize, b: usize) -> bool {
    buf[a + 32] == buf[b + 32]
        && buf[a + 34..a + 36] == buf[b + 34..b + 36]
        && buf[a + 38..a + 40] == buf[b + 38..b + 40]
}

/// What a packet that is not a candidate tells about the flows it may belong to.
enum Other {
    /// Not IPv4 (or too short to say): belongs to no open flow.
    Unknown,
    /// Addresses and protocol, and the ports when they can be read.
    Flow([u8; 4], [u8; 4], u8, Option<(u16, u16)>),
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}
fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn classify(p: &[u8], opts: GroOptions) -> Result<Cand, Other> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[0] & 0x0f < 5 {
        return Err(Other::Unknown);
    }
    let src: [u8; 4] = p[12..16].try_into().expect("20 bytes");
    let dst: [u8; 4] = p[16..20].try_into().expect("20 bytes");
    let proto = p[9];
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let frag = be16(p, 6);
    let ports =
        (frag & 0x1fff == 0 && p.len() >= ihl + 4).then(|| (be16(p, ihl), be16(p, ihl + 2)));
    let other = Err(Other::Flow(src, dst, proto, ports));
    if ihl != 20
        || usize::from(be16(p, 2)) != p.len()
        || frag & 0x3fff != 0
        || !checksum::verify(checksum::sum(&p[..20]))
    {
        return other;
    }
    let Some((sport, dport)) = ports else {
        return other;
    };
    let key = FlowKey {
        src,
        dst,
        proto,
        sport,
        dport,
    };
    let l4_len = p.len() - 20;
    let (hl, seq, ack, psh, csum_at) = match proto {
        IPPROTO_TCP => {
            if p.len() < 40 {
                return other;
            }
            let thl = usize::from(p[32] >> 4) * 4;
            let flags = p[33];
            if thl < 20 || 20 + thl > p.len() || (flags != TCP_ACK && flags != TCP_ACK | TCP_PSH) {
                return other;
            }
            (
                20 + thl,
                be32(p, 24),
                be32(p, 28),
                flags & TCP_PSH != 0,
                20 + usize::from(TCP_CSUM_OFFSET),
            )
        }
        IPPROTO_UDP if opts.udp => {
            if p.len() < 28 || usize::from(be16(p, 24)) != l4_len || be16(p, 26) == 0 {
                return other;
            }
            (28, 0, 0, false, 20 + usize::from(UDP_CSUM_OFFSET))
        }
        _ => return other,
    };
    if p.len() == hl {
        return other;
    }
    let pseudo = checksum::pseudo_v4(src, dst, proto, l4_len as u16);
    let partial = be16(p, csum_at) == checksum::fold(pseudo);
    if !partial && !checksum::verify(pseudo + checksum::sum(&p[20..])) {
        return other;
    }
    Ok(Cand {
        key,
        hl,
        tos: p[1],
        ttl: p[8],
        df: p[6] & 0x40 != 0,
        id: be16(p, 4),
        seq,
        ack,
        psh,
        payload: p.len() - hl,
        partial,
    })
}

/// Coalesces `packets` (ranges into `buf`) into write-ready items (see the module doc).
pub fn coalesce(buf: &mut [u8], packets: &[Range<usize>], opts: GroOptions, out: &mut Coalesced) {
    out.items.clear();
    out.parts.clear();
    out.build.clear();
    out.assign.clear();
    out.open.clear();
    out.bad_ranges = 0;
    for r in packets {
        if r.start > r.end || r.end > buf.len() {
            out.bad_ranges += 1;
            continue;
        }
        let p = &buf[r.clone()];
        let c = match classify(p, opts) {
            Ok(c) => c,
            Err(other) => {
                if let Other::Flow(src, dst, proto, ports) = other {
                    out.open.retain(|o| {
                        !(o.key.src == src
                            && o.key.dst == dst
                            && o.key.proto == proto
                            && ports.is_none_or(|(s, d)| o.key.sport == s && o.key.dport == d))
                    });
                }
                let item = out.build.len();
                out.build.push(Build {
                    head: r.clone(),
                    proto: 0,
                    hl: 0,
                    gso: 0,
                    total: r.len(),
                    segments: 1,
                    psh: false,
                    partial: partial::partial_at(p),
                });
                out.assign.push((item as u32, r.clone()));
                continue;
            }
        };
        // TCP options (empty for UDP).
        let opts_range = r.start + c.hl.min(40)..r.start + c.hl;
        if let Some(k) = out.open.iter().position(|o| o.key == c.key) {
            let o = &out.open[k];
            let b = &out.build[o.item];
            let fits = o.tos == c.tos
                && o.ttl == c.ttl
                && o.df == c.df
                && buf[o.head + 6] == buf[r.start + 6]
                && (c.id == o.last_id.wrapping_add(1) || (c.df && c.id == o.last_id))
                && !b.psh
                && o.last_payload == b.gso
                && c.payload <= b.gso
                && b.total + c.payload <= usize::from(u16::MAX)
                && b.segments < MAX_SEGMENTS
                && (c.key.proto != IPPROTO_TCP
                    || (c.ack == o.ack
                        && c.seq == o.next_seq
                        && c.hl == b.hl
                        && same_tcp_words(buf, o.head, r.start)
                        && buf[opts_range.clone()] == buf[o.opts.clone()]));
            if fits {
                let o = &mut out.open[k];
                o.next_seq = o.next_seq.wrapping_add(c.payload as u32);
                o.last_id = c.id;
                o.last_payload = c.payload;
                let item = o.item;
                let b = &mut out.build[item];
                b.total += c.payload;
                b.segments += 1;
                b.psh |= c.psh;
                out.assign.push((item as u32, r.start + c.hl..r.end));
                continue;
            }
            out.open.swap_remove(k);
        }
        let item = out.build.len();
        out.build.push(Build {
            head: r.clone(),
            proto: c.key.proto,
            hl: c.hl,
            gso: c.payload,
            total: r.len(),
            segments: 1,
            psh: c.psh,
            partial: c.partial.then_some(PartialAt {
                start: 20,
                offset: if c.key.proto == IPPROTO_TCP {
                    TCP_CSUM_OFFSET
                } else {
                    UDP_CSUM_OFFSET
                },
            }),
        });
        out.assign.push((item as u32, r.clone()));
        if out.open.len() == MAX_OPEN {
            let oldest = (0..out.open.len())
                .min_by_key(|&i| out.open[i].item)
                .expect("non-empty");
            out.open.swap_remove(oldest);
        }
        out.open.push(Open {
            key: c.key,
            item,
            ack: c.ack,
            next_seq: c.seq.wrapping_add(c.payload as u32),
            last_id: c.id,
            last_payload: c.payload,
            tos: c.tos,
            ttl: c.ttl,
            df: c.df,
            opts: opts_range,
            head: r.start,
        });
    }
    // Parts grouped by item, in arrival order within each (a stable counting sort): `ends`
    // holds each item's first slot, then, once filled, its end.
    out.ends.clear();
    out.ends.resize(out.build.len(), 0);
    for (item, _) in &out.assign {
        out.ends[*item as usize] += 1;
    }
    let mut acc = 0;
    for e in out.ends.iter_mut() {
        let n = *e;
        *e = acc;
        acc += n;
    }
    out.parts.resize(out.assign.len(), 0..0);
    for (item, r) in out.assign.drain(..) {
        let slot = &mut out.ends[item as usize];
        out.parts[*slot] = r;
        *slot += 1;
    }
    for (i, b) in out.build.iter().enumerate() {
        let hdr = match (b.segments, b.partial) {
            (2.., _) => finalize(&mut buf[b.head.clone()], b),
            (_, Some(at)) => at.vnet_hdr(),
            (_, None) => VirtioNetHdr::NONE,
        };
        let first = if i == 0 { 0 } else { out.ends[i - 1] };
        out.items.push(Item {
            hdr,
            segments: b.segments,
            parts: (first, out.ends[i]),
        });
    }
}

/// Rewrites a merged item's head packet into the super-packet's headers and returns its
/// vnet header.
fn finalize(h: &mut [u8], b: &Build) -> VirtioNetHdr {
    let total = b.total as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[10] = 0;
    h[11] = 0;
    let ipc = checksum::checksum(&h[..20]);
    h[10..12].copy_from_slice(&ipc.to_be_bytes());
    let src: [u8; 4] = h[12..16].try_into().expect("20 bytes");
    let dst: [u8; 4] = h[16..20].try_into().expect("20 bytes");
    let l4 = total - 20;
    let pseudo = checksum::fold(checksum::pseudo_v4(src, dst, b.proto, l4));
    let (gso_type, off) = if b.proto == IPPROTO_TCP {
        if b.psh {
            h[33] |= TCP_PSH;
        }
        (GsoType::TcpV4, TCP_CSUM_OFFSET)
    } else {
        h[24..26].copy_from_slice(&l4.to_be_bytes());
        (GsoType::UdpL4, UDP_CSUM_OFFSET)
    };
    let at = 20 + usize::from(off);
    h[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    VirtioNetHdr {
        needs_csum: true,
        data_valid: false,
        gso_type,
        hdr_len: b.hl as u16,
        gso_size: b.gso as u16,
        csum_start: 20,
        csum_offset: off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gso::{self, Split};
    use crate::partial::Checksums;

    /// RFC 1071 written plainly (independent of `checksum`).
    fn reference(bytes: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for w in bytes.chunks(2) {
            acc += u64::from(w[0]) << 8 | u64::from(*w.get(1).unwrap_or(&0));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn pseudo_bytes(p: &[u8]) -> Vec<u8> {
        let l4 = (p.len() - 20) as u16;
        [&p[12..20], &[0, p[9]], &l4.to_be_bytes()[..]].concat()
    }

    /// A seeded xorshift generator (no proptest in the workspace).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + (self.next() % (hi - lo + 1) as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[derive(Clone)]
    struct Spec {
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        id: u16,
        tos: u8,
        ttl: u8,
        df: bool,
        opts: Vec<u8>,
    }

    fn spec() -> Spec {
        Spec {
            proto: 6,
            src: [10, 244, 1, 5],
            dst: [10, 244, 2, 6],
            sport: 40000,
            dport: 5201,
            seq: 1_000_000,
            ack: 42,
            flags: TCP_ACK,
            id: 100,
            tos: 0,
            ttl: 63,
            df: true,
            opts: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        }
    }

    /// A packet; `partial`: the transport checksum field holds the pseudo-header sum (as
    /// the TUN hands a CHECKSUM_PARTIAL packet out), else the full checksum.
    fn build(s: &Spec, payload: &[u8], partial: bool) -> Vec<u8> {
        let thl = if s.proto == 6 { 20 + s.opts.len() } else { 8 };
        let mut p = vec![0u8; 20 + thl];
        p[0] = 0x45;
        p[1] = s.tos;
        p[4..6].copy_from_slice(&s.id.to_be_bytes());
        p[6] = if s.df { 0x40 } else { 0 };
        p[8] = s.ttl;
        p[9] = s.proto;
        p[12..16].copy_from_slice(&s.src);
        p[16..20].copy_from_slice(&s.dst);
        p[20..22].copy_from_slice(&s.sport.to_be_bytes());
        p[22..24].copy_from_slice(&s.dport.to_be_bytes());
        if s.proto == 6 {
            p[24..28].copy_from_slice(&s.seq.to_be_bytes());
            p[28..32].copy_from_slice(&s.ack.to_be_bytes());
            p[32] = ((thl / 4) as u8) << 4;
            p[33] = s.flags;
            p[34..36].copy_from_slice(&501u16.to_be_bytes());
            p[40..].copy_from_slice(&s.opts);
        }
        p.extend_from_slice(payload);
        let tot = p.len() as u16;
        p[2..4].copy_from_slice(&tot.to_be_bytes());
        let at = if s.proto == 6 { 36 } else { 26 };
        if s.proto == 17 {
            p[24..26].copy_from_slice(&(tot - 20).to_be_bytes());
        }
        let ipc = reference(&p[..20]);
        p[10..12].copy_from_slice(&ipc.to_be_bytes());
        let c = if partial {
            !reference(&pseudo_bytes(&p))
        } else {
            let mut c = reference(&[pseudo_bytes(&p), p[20..].to_vec()].concat());
            if s.proto == 17 && c == 0 {
                c = 0xffff;
            }
            c
        };
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn gso_hdr(s: &Spec, gso_size: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            needs_csum: true,
            data_valid: false,
            gso_type: if s.proto == 6 {
                GsoType::TcpV4
            } else {
                GsoType::UdpL4
            },
            hdr_len: 7, // garbage: check() recomputes it
            gso_size,
            csum_start: 20,
            csum_offset: if s.proto == 6 { 16 } else { 6 },
        }
    }

    /// What a peer's split sends, as a receiver's recvmmsg lays it out: each chunk a datagram
    /// in its own slot of `stride` bytes, cut at its segment size.
    fn send(x: &[u8], hdr: &VirtioNetHdr, buf: &mut Vec<u8>, packets: &mut Vec<Range<usize>>) {
        send_with(x, hdr, Checksums::Full, buf, packets)
    }

    fn send_with(
        x: &[u8],
        hdr: &VirtioNetHdr,
        checksums: Checksums,
        buf: &mut Vec<u8>,
        packets: &mut Vec<Range<usize>>,
    ) {
        let mut frame = x.to_vec();
        let mut out = vec![0u8; gso::OUT_LEN];
        let Split::Segments(s) = gso::split(hdr, &mut frame, &mut out, checksums).unwrap() else {
            panic!("not a GSO frame")
        };
        for c in s.chunks() {
            let at = buf.len();
            buf.extend_from_slice(&out[c.range.clone()]);
            buf.resize(at + 65_536 + 17, 0); // the slot, and an odd stride
            cut(at..at + c.range.len(), c.segment_size, packets);
        }
    }

    fn segments(out: &Coalesced) -> Vec<usize> {
        out.items().map(|(it, _)| it.segments).collect()
    }

    #[test]
    fn coalesce_of_split_gives_the_super_packet_back() {
        let mut rng = Rng(0x5eed_1234_abcd);
        let mut out = Coalesced::new();
        let mut got = Vec::new();
        for case in 0..300 {
            let mut s = spec();
            s.proto = if case % 4 == 3 { 17 } else { 6 };
            s.seq = rng.next() as u32;
            s.ack = rng.next() as u32;
            s.id = rng.next() as u16;
            s.tos = rng.next() as u8;
            s.ttl = rng.range(1, 255) as u8;
            s.df = case % 5 != 0;
            s.flags = if rng.next().is_multiple_of(2) {
                TCP_ACK
            } else {
                TCP_ACK | TCP_PSH
            };
            s.opts = match case % 3 {
                0 => vec![],
                1 => s.opts.clone(),
                _ => rng.bytes(40),
            };
            let hl = 20 + if s.proto == 6 { 20 + s.opts.len() } else { 8 };
            let gso_size = rng.range(64, 1460);
            let max = (65_535 - hl).min(MAX_SEGMENTS * gso_size);
            let len = rng.range(gso_size + 1, max);
            let x = build(&s, &rng.bytes(len), true);
            let hdr = gso_hdr(&s, gso_size as u16);
            let (mut buf, mut packets) = (Vec::new(), Vec::new());
            send(&x, &hdr, &mut buf, &mut packets);
            assert_eq!(packets.len(), len.div_ceil(gso_size));
            for r in &packets {
                let p = &buf[r.clone()];
                assert_eq!(reference(&p[..20]), 0, "case {case}: IP checksum");
                let l4 = [pseudo_bytes(p), p[20..].to_vec()].concat();
                assert_eq!(reference(&l4), 0, "case {case}: transport checksum");
            }
            coalesce(&mut buf, &packets, GroOptions { udp: true }, &mut out);
            assert_eq!(segments(&out), [packets.len()], "case {case}");
            out.gather(0, &buf, &mut got);
            let want_hdr = hdr.check(&x).unwrap();
            assert_eq!(
                VirtioNetHdr::from_bytes(&got).unwrap(),
                want_hdr,
                "case {case}"
            );
            assert!(got[10..] == x[..], "case {case}: the super-packet differs");
        }
    }

    #[test]
    fn a_twill_peers_partial_segments_merge_and_a_lone_one_is_written_needs_csum() {
        let mut rng = Rng(0x7a12);
        let mut out = Coalesced::new();
        let mut got = Vec::new();
        for case in 0..100 {
            let mut s = spec();
            s.proto = if case % 4 == 3 { 17 } else { 6 };
            s.seq = rng.next() as u32;
            let gso_size = rng.range(64, 1460);
            let len = rng.range(gso_size + 1, 40 * gso_size);
            let x = build(&s, &rng.bytes(len), true);
            let hdr = gso_hdr(&s, gso_size as u16);
            let (mut buf, mut packets) = (Vec::new(), Vec::new());
            send_with(&x, &hdr, Checksums::Partial, &mut buf, &mut packets);
            for r in &packets {
                assert!(
                    partial::partial_at(&buf[r.clone()]).is_some(),
                    "case {case}"
                );
            }
            coalesce(&mut buf, &packets, GroOptions { udp: true }, &mut out);
            assert_eq!(segments(&out), [packets.len()], "case {case}");
            out.gather(0, &buf, &mut got);
            assert_eq!(
                VirtioNetHdr::from_bytes(&got).unwrap(),
                hdr.check(&x).unwrap()
            );
            assert!(got[10..] == x[..], "case {case}: the super-packet differs");
        }
        // Lone packets: a partial bare ACK (not a candidate) and a partial data packet (a
        // candidate alone) go as NEEDS_CSUM at their field; a whole one as it is.
        let mut ack = spec();
        ack.seq = 7;
        let (bare, data, whole) = (
            build(&ack, &[], true),
            build(&spec(), b"twl-data", true),
            build(&spec(), b"twl-data", false),
        );
        let mut buf = [bare.clone(), data.clone(), whole.clone()].concat();
        let ranges = [
            0..bare.len(),
            bare.len()..bare.len() + data.len(),
            bare.len() + data.len()..buf.len(),
        ];
        coalesce(&mut buf, &ranges, GroOptions::default(), &mut out);
        let hdrs: Vec<VirtioNetHdr> = out.items().map(|(it, _)| it.hdr).collect();
        let needs = VirtioNetHdr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::None,
            hdr_len: 38,
            gso_size: 0,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(hdrs, [needs, needs, VirtioNetHdr::NONE]);
        assert_eq!(
            buf[..],
            [bare, data, whole].concat()[..],
            "lone packets are untouched"
        );
    }

    #[test]
    fn interleaved_flows_come_back_each_whole_and_in_order() {
        let mut rng = Rng(77);
        let a = spec();
        let mut b = spec();
        b.sport = 40001;
        b.flags = TCP_ACK | TCP_PSH;
        let mut c = spec();
        c.proto = 17;
        let xa = build(&a, &rng.bytes(30_000), true);
        let xb = build(&b, &rng.bytes(20_000), true);
        let xc = build(&c, &rng.bytes(9_000), true);
        let (mut buf, mut pa, mut pb, mut pc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        send(&xa, &gso_hdr(&a, 1000), &mut buf, &mut pa);
        send(&xb, &gso_hdr(&b, 1000), &mut buf, &mut pb);
        send(&xc, &gso_hdr(&c, 1200), &mut buf, &mut pc);
        // a b c a b c …: one packet of each in turn.
        let mut packets = Vec::new();
        for i in 0..30 {
            for p in [&pa, &pb, &pc] {
                if let Some(r) = p.get(i) {
                    packets.push(r.clone());
                }
            }
        }
        let mut out = Coalesced::new();
        coalesce(&mut buf, &packets, GroOptions { udp: true }, &mut out);
        assert_eq!(segments(&out), [30, 20, 8]);
        let mut got = Vec::new();
        for (i, x) in [&xa, &xb, &xc].into_iter().enumerate() {
            out.gather(i, &buf, &mut got);
            assert!(got[10..] == x[..], "flow {i}");
        }
        // Without UDP: the UDP packets are items of their own, unchanged, zero header.
        let (mut buf2, mut pc2) = (Vec::new(), Vec::new());
        send(&xc, &gso_hdr(&c, 1200), &mut buf2, &mut pc2);
        let before = buf2.clone();
        coalesce(&mut buf2, &pc2, GroOptions { udp: false }, &mut out);
        assert_eq!(segments(&out), [1; 8]);
        assert!(out.items().all(|(it, _)| it.hdr == VirtioNetHdr::NONE));
        assert!(buf2 == before);
    }

    /// Three segments of one flow, 1,000 B each; `f` mutates the middle one (by index).
    fn run(f: impl Fn(usize, &mut Spec, &mut Vec<u8>), udp: bool) -> Vec<usize> {
        let mut buf = Vec::new();
        let mut packets = Vec::new();
        for i in 0..3 {
            let mut s = spec();
            s.seq = 1_000_000 + 1000 * i as u32;
            s.id = 100 + i as u16;
            let mut payload = vec![i as u8; 1000];
            f(i, &mut s, &mut payload);
            let p = build(&s, &payload, false);
            let at = buf.len();
            buf.extend_from_slice(&p);
            packets.push(at..buf.len());
        }
        let mut out = Coalesced::new();
        coalesce(&mut buf, &packets, GroOptions { udp }, &mut out);
        segments(&out)
    }

    fn mid(f: impl Fn(&mut Spec, &mut Vec<u8>)) -> Vec<usize> {
        run(
            |i, s, p| {
                if i == 1 {
                    f(s, p)
                }
            },
            false,
        )
    }

    #[test]
    fn the_rejection_rules() {
        assert_eq!(mid(|_, _| {}), [3], "the baseline merges");
        assert_eq!(mid(|s, _| s.opts[11] ^= 1), [1, 1, 1], "options differ");
        assert_eq!(
            mid(|s, _| s.opts.clear()),
            [1, 1, 1],
            "header length differs"
        );
        assert_eq!(mid(|s, _| s.tos = 4), [1, 1, 1], "TOS");
        assert_eq!(mid(|s, _| s.ttl = 62), [1, 1, 1], "TTL");
        assert_eq!(mid(|s, _| s.df = false), [1, 1, 1], "DF");
        assert_eq!(mid(|s, _| s.seq += 1), [1, 1, 1], "seq gap");
        assert_eq!(mid(|s, _| s.seq -= 1000), [1, 1, 1], "retransmission");
        assert_eq!(mid(|s, _| s.ack += 1), [1, 1, 1], "ack");

        assert_eq!(mid(|s, _| s.flags |= TCP_PSH), [2, 1], "nothing after PSH");
        for bad in [0x01, 0x02, 0x04, 0x20, 0x40, 0x80] {
            assert_eq!(mid(|s, _| s.flags |= bad), [1, 1, 1], "flag {bad:#x}");
        }
        assert_eq!(mid(|s, _| s.flags = 0x18 & !TCP_ACK), [1, 1, 1], "no ACK");
        assert_eq!(mid(|_, p| p.clear()), [1, 1, 1], "no payload");
        // Another flow in between (with IDs of its own, as each socket has).
        assert_eq!(
            run(
                |i, s, _| match i {
                    1 => {
                        s.dport = 1;
                        s.id = 9
                    }
                    2 => {
                        s.id -= 1;
                        s.seq -= 1000
                    }
                    _ => {}
                },
                false
            ),
            [2, 1],
            "another flow in between"
        );
        // ID: +1 needed; equal is fine with DF only.
        assert_eq!(mid(|s, _| s.id += 5), [1, 1, 1], "ID jump");
        assert_eq!(run(|_, s, _| s.id = 7, false), [3], "a fixed ID with DF");
        assert_eq!(
            run(
                |_, s, _| {
                    s.id = 7;
                    s.df = false
                },
                false
            ),
            [1, 1, 1],
            "a fixed ID without DF"
        );
        // A short segment ends the item even when the next one is adjacent.
        assert_eq!(
            run(
                |i, s, p| match i {
                    1 => p.truncate(500),
                    2 => s.seq -= 500,
                    _ => {}
                },
                false
            ),
            [2, 1]
        );
        // Never a larger segment after a smaller one; a larger first sets the gso_size.
        assert_eq!(
            run(
                |i, s, p| match i {
                    1 => p.resize(1200, 1),
                    2 => s.seq += 200,
                    _ => {}
                },
                false
            ),
            [1, 2]
        );
        // UDP: merged with `udp` only; a zero checksum is never merged.
        let udp = |f: fn(usize, &mut Spec)| {
            run(
                |i, s, _| {
                    s.proto = 17;
                    f(i, s)
                },
                true,
            )
        };
        assert_eq!(udp(|_, _| {}), [3]);
        assert_eq!(
            run(|_, s, _| s.proto = 17, false),
            [1, 1, 1],
            "UDP needs opts.udp"
        );
        assert_eq!(
            udp(|i, s| if i == 1 {
                s.ttl = 1
            }),
            [1, 1, 1]
        );
    }

    /// The middle packet of three, corrupted after it was built.
    fn corrupt(f: impl Fn(&mut Vec<u8>), udp: bool) -> (Vec<usize>, Vec<VirtioNetHdr>) {
        let mut buf = Vec::new();
        let mut packets = Vec::new();
        for i in 0..3 {
            let mut s = spec();
            if udp {
                s.proto = 17;
            }
            s.seq = 1_000_000 + 1000 * i as u32;
            s.id = 100 + i as u16;
            let mut p = build(&s, &[i as u8 + 1; 1000], false);
            if i == 1 {
                f(&mut p);
            }
            let at = buf.len();
            buf.extend_from_slice(&p);
            packets.push(at..buf.len());
        }
        let mut out = Coalesced::new();
        let before = buf[packets[1].clone()].to_vec();
        coalesce(&mut buf, &packets, GroOptions { udp }, &mut out);
        if out.len() == 3 {
            assert_eq!(
                buf[packets[1].clone()],
                before[..],
                "an unmerged packet is untouched"
            );
        }
        (segments(&out), out.items().map(|(it, _)| it.hdr).collect())
    }

    #[test]
    fn checksums_are_verified_before_merging() {
        let (seg, hdrs) = corrupt(|p| p[500] ^= 0x40, false);
        assert_eq!(seg, [1, 1, 1], "a bad TCP checksum");
        assert!(hdrs.iter().all(|h| *h == VirtioNetHdr::NONE));
        assert_eq!(
            corrupt(|p| p[10] ^= 1, false).0,
            [1, 1, 1],
            "a bad IP checksum"
        );
        assert_eq!(
            corrupt(|p| p[500] ^= 0x40, true).0,
            [1, 1, 1],
            "a bad UDP checksum"
        );
        assert_eq!(
            corrupt(
                |p| {
                    p[26] = 0;
                    p[27] = 0
                },
                true
            )
            .0,
            [1, 1, 1],
            "UDP without a checksum"
        );
        // IP options, fragments, a total length that is not the packet's, not IPv4.
        let refix = |p: &mut Vec<u8>| {
            p[10] = 0;
            p[11] = 0;
            let c = reference(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        };
        assert_eq!(
            corrupt(
                |p| {
                    p[0] = 0x46;
                    p.splice(20..20, [1, 1, 1, 0]);
                    let t = p.len() as u16;
                    p[2..4].copy_from_slice(&t.to_be_bytes());
                    refix(p)
                },
                false
            )
            .0,
            [1, 1, 1],
            "IP options"
        );
        assert_eq!(
            corrupt(
                |p| {
                    p[6] |= 0x20;
                    refix(p)
                },
                false
            )
            .0,
            [1, 1, 1],
            "MF"
        );
        assert_eq!(
            corrupt(
                |p| {
                    p[7] = 1;
                    refix(p)
                },
                false
            )
            .0,
            [1, 1, 1],
            "an offset"
        );
        assert_eq!(corrupt(|p| p.push(0), false).0, [1, 1, 1], "total length");
        assert_eq!(corrupt(|p| p[0] = 0x65, false).0, [1, 1, 1], "IPv6");
        // Window, urgent pointer, TCP reserved bits, IP reserved bit: each differs, the
        // checksums right.
        let refix_tcp = |p: &mut Vec<u8>| {
            refix(p);
            p[36] = 0;
            p[37] = 0;
            let c = reference(&[pseudo_bytes(p), p[20..].to_vec()].concat());
            p[36..38].copy_from_slice(&c.to_be_bytes());
        };
        for at in [32, 34, 35, 38, 39, 6] {
            let (seg, _) = corrupt(
                |p| {
                    p[at] ^= if at == 6 { 0x80 } else { 1 };
                    refix_tcp(p)
                },
                false,
            );
            assert_eq!(seg, [1, 1, 1], "byte {at}");
        }
        assert_eq!(corrupt(|p| p.truncate(10), false).0, [1, 1, 1], "short");
    }

    #[test]
    fn items_stop_at_65535_bytes_and_128_segments() {
        let mut out = Coalesced::new();
        for (n, size, want) in [(48, 1400, vec![46, 2]), (130, 100, vec![128, 2])] {
            let mut buf = Vec::new();
            let mut packets = Vec::new();
            for i in 0..n {
                let mut s = spec();
                s.opts.clear();
                s.seq = (size * i) as u32;
                s.id = i as u16;
                let p = build(&s, &vec![i as u8; size], false);
                let at = buf.len();
                buf.extend_from_slice(&p);
                packets.push(at..buf.len());
            }
            coalesce(&mut buf, &packets, GroOptions::default(), &mut out);
            assert_eq!(segments(&out), want);
            let mut got = Vec::new();
            out.gather(0, &buf, &mut got);
            assert!(got.len() - 10 <= 65_535);
            assert_eq!(
                u16::from_be_bytes([got[12], got[13]]) as usize,
                got.len() - 10
            );
        }
    }

    #[test]
    fn a_merged_item_is_what_the_kernel_wants() {
        let mut buf = Vec::new();
        let mut packets = Vec::new();
        for i in 0..3u32 {
            let mut s = spec();
            s.seq = 5000 + 1000 * i;
            s.id = 9 + i as u16;
            let len = if i == 2 { 300 } else { 1000 };
            let p = build(&s, &vec![i as u8; len], false);
            let at = buf.len();
            buf.extend_from_slice(&p);
            packets.push(at..buf.len());
        }
        // Ranges outside the buffer are left out and counted.
        packets.push(buf.len()..buf.len() + 1);
        let mut out = Coalesced::new();
        coalesce(&mut buf, &packets, GroOptions::default(), &mut out);
        assert_eq!(out.bad_ranges, 1);
        assert_eq!(out.len(), 1);
        let (it, parts) = out.items().next().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            it.hdr,
            VirtioNetHdr {
                needs_csum: true,
                data_valid: false,
                gso_type: GsoType::TcpV4,
                hdr_len: 52,
                gso_size: 1000,
                csum_start: 20,
                csum_offset: 16
            }
        );
        let mut got = Vec::new();
        out.gather(0, &buf, &mut got);
        let p = &got[10..];
        assert_eq!(p.len(), 52 + 2300);
        assert_eq!(reference(&p[..20]), 0);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 9, "the first ID");
        // The field holds the pseudo-header sum: finishing it gives a valid checksum.
        assert_eq!(
            u16::from_be_bytes([p[36], p[37]]),
            !reference(&pseudo_bytes(p))
        );
        let mut fin = p.to_vec();
        fin[36] = 0;
        fin[37] = 0;
        let c = reference(&[pseudo_bytes(&fin), fin[20..].to_vec()].concat());
        fin[36..38].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            reference(&[pseudo_bytes(&fin), fin[20..].to_vec()].concat()),
            0
        );
        assert_eq!(&p[52..1052], &[0u8; 1000][..]);
        assert_eq!(&p[2052..], &[2u8; 300][..]);
    }

    #[test]
    fn cut_at_the_gso_size() {
        let mut v = Vec::new();
        cut(10..3010, 1000, &mut v);
        cut(5000..5999, 1000, &mut v);
        cut(7000..7100, 0, &mut v);
        cut(8000..8000, 1000, &mut v);
        cut(9000..9500, 200, &mut v);
        assert_eq!(
            v,
            [
                10..1010,
                1010..2010,
                2010..3010,
                5000..5999,
                7000..7100,
                9000..9200,
                9200..9400,
                9400..9500
            ]
        );
    }
}
