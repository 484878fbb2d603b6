//! Segmentation of what the TUN hands out (TX: TUN → UDP). Pure.
//!
//! With IFF_VNET_HDR and TUNSETOFFLOAD TSO4/USO4, one `read` returns a super-packet of up
//! to ~64 KiB (design §1: 65,372 B, `gso_size` 1420 at TUN MTU 1472) whose transport checksum
//! is only partial. [`split`] makes the MTU-sized packets the kernel would have made, back to
//! back in one caller buffer, ready for `sendmsg` with `UDP_SEGMENT`.
//!
//! The API (for the worker, part dp-io):
//! ```text
//! let hdr = VirtioNetHdr::decode(&read[..n])?;          // or split() refuses it
//! let packet = &mut read[VirtioNetHdr::LEN..n];
//! match gso::split(&hdr, packet, &mut out, checksums)? { // out: &mut [u8], gso::OUT_LEN is enough
//!     Split::Whole => send(packet),                      // one datagram, checksum finished in place
//!     Split::Segments(s) => for c in s.chunks() {         // each chunk: ONE sendmsg
//!         send_gso(&out[c.range.clone()], c.segment_size) // UDP_SEGMENT = c.segment_size
//!     }                                                  // (c.segments == 1: no cmsg needed)
//! }
//! ```
//! - [`split`]`(hdr, packet: &mut [u8], out: &mut [u8], checksums) -> Result<Split, GsoError>`.
//!   `GSO_NONE`: [`Split::Whole`]; with `NEEDS_CSUM` and [`Checksums::Full`] the checksum at
//!   `csum_start + csum_offset` is finished in place (over `[csum_start..]`, 0 sent as
//!   0xffff, as `skb_checksum_help` does). The packet is not modified otherwise, and never
//!   for GSO. With [`Checksums::Partial`] (a Twill peer, [`crate::partial`]) a packet's
//!   partial checksum is left as it is, and each segment's field gets its own pseudo-header
//!   sum instead of the full checksum: no pass over the payload at all.
//! - GSO (`TCPV4`, `UDP_L4` over IPv4): the header is re-checked ([`VirtioNetHdr::check`],
//!   `hdr_len` recomputed), then segment *i* of *n* is written at `out[i·S..]` with `S =
//!   hdr_len + gso_size` (the last one shorter): the IP header with ID + i, total length and
//!   a fresh header checksum; the TCP header with seq + i·gso_size, FIN and PSH only on the
//!   last segment, CWR only on the first (or the UDP header with its length); the payload;
//!   the full transport checksum (pseudo-header + header + payload) summed over the segment
//!   right after its copy, while it is in L1. A UDP checksum of 0 is sent as 0xffff.
//! - [`Segments`] `{ len, segment_size, segments }`: `out[..len]` holds them.
//!   [`Segments::chunks`] yields [`Chunk`] `{ range, segment_size, segments }`, each at most
//!   [`MAX_SEGMENTS`] (128, this kernel's UDP_MAX_SEGMENTS) segments and [`MAX_DATAGRAM`]
//!   (65,507) bytes, so each is one `sendmsg` with `UDP_SEGMENT = segment_size`; only the last
//!   chunk's last segment is short, as UDP_SEGMENT requires. If the sendmsg fails with
//!   EIO/EINVAL, send each `range.chunks(segment_size)` as its own datagram.
//! - [`split_len`]`(hdr, packet_len)`: the bytes `out` needs; [`OUT_LEN`] (192 KiB) is
//!   enough for any frame of ≤ 65,535 B with `gso_size ≥ 64`. A smaller `out` gives
//!   [`GsoError::OutTooSmall`], never a partial write.

use std::ops::Range;

use thiserror::Error;

use crate::checksum;
use crate::partial::{self, Checksums, PartialAt};
pub use crate::virtio::MAX_DATAGRAM;
use crate::virtio::{GsoType, VirtioError, VirtioNetHdr, IPPROTO_TCP, IPPROTO_UDP};

/// The most segments one `sendmsg` with UDP_SEGMENT may carry (UDP_MAX_SEGMENTS here; 129
/// gives EINVAL, design §1).
pub const MAX_SEGMENTS: usize = 128;
/// An output buffer size that fits the split of any frame ≤ 65,535 B with gso_size ≥ 64.
pub const OUT_LEN: usize = 192 * 1024;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a frame could not be split.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum GsoError {
    #[error(transparent)]
    Header(#[from] VirtioError),
    #[error("GSO split needs {need} bytes of output, the buffer has {have} (use gso::OUT_LEN, or gso::split_len)")]
    OutTooSmall { need: usize, have: usize },
}

/// What [`split`] made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Not a super-packet: send the packet itself (its checksum finished if it needed it).
    Whole,
    /// The segments, in the output buffer.
    Segments(Segments),
}

/// Segments written back to back at `out[..len]`, each `segment_size` bytes but the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    /// The bytes of all segments together (what the datagrams carry).
    pub len: usize,
    /// The headers each segment repeats (IPv4 + TCP/UDP).
    pub hdr_len: usize,
    pub segment_size: usize,
    pub segments: usize,
}

/// One `sendmsg` worth: `out[range]`, `segments` datagrams of `segment_size` (the last may be
/// shorter); pass `segment_size` as UDP_SEGMENT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub range: Range<usize>,
    pub segment_size: usize,
    pub segments: usize,
}

impl Segments {
    /// Where [`split_headers`] put segment `i`'s headers in its `hdrs`.
    pub fn header(&self, i: usize) -> Range<usize> {
        i * self.hdr_len..(i + 1) * self.hdr_len
    }

    /// Where segment `i`'s payload is in the frame (for [`split_headers`]).
    pub fn payload(&self, i: usize) -> Range<usize> {
        let gso = self.segment_size - self.hdr_len;
        let start = self.hdr_len + i * gso;
        let frame = self.len - self.segments * self.hdr_len + self.hdr_len;
        start..(start + gso).min(frame)
    }

    /// The segments of chunk `c` (indices for [`Segments::header`] and [`Segments::payload`]).
    pub fn chunk_segments(&self, c: &Chunk) -> Range<usize> {
        let first = c.range.start / self.segment_size;
        first..first + c.segments
    }

    /// Segments per chunk: bounded by [`MAX_SEGMENTS`] and by [`MAX_DATAGRAM`] bytes.
    pub fn per_chunk(&self) -> usize {
        (MAX_DATAGRAM / self.segment_size).clamp(1, MAX_SEGMENTS)
    }

    /// The chunks, in order; each is one `sendmsg` with UDP_SEGMENT.
    pub fn chunks(&self) -> impl Iterator<Item = Chunk> + '_ {
        let per = self.per_chunk();
        let step = per * self.segment_size;
        (0..self.segments.div_ceil(per)).map(move |k| {
            let start = k * step;
            let end = (start + step).min(self.len);
            Chunk {
                range: start..end,
                segment_size: self.segment_size,
                segments: (self.segments - k * per).min(per),
            }
        })
    }
}

/// The output bytes [`split`] needs for this (checked) header and a packet of `packet_len`
/// bytes: every segment repeats the headers.
pub fn split_len(hdr: &VirtioNetHdr, packet_len: usize) -> usize {
    if hdr.gso_type == GsoType::None || hdr.gso_size == 0 {
        return 0;
    }
    let hl = usize::from(hdr.hdr_len);
    let payload = packet_len.saturating_sub(hl);
    payload + payload.div_ceil(usize::from(hdr.gso_size)) * hl
}

/// Splits one frame read from the TUN (see the module doc).
pub fn split(
    hdr: &VirtioNetHdr,
    packet: &mut [u8],
    out: &mut [u8],
    checksums: Checksums,
) -> Result<Split, GsoError> {
    let Some(plan) = plan(hdr, packet, checksums)? else {
        return Ok(Split::Whole);
    };
    let need = split_len(&plan.hdr, packet.len());
    if need > out.len() {
        return Err(GsoError::OutTooSmall {
            need,
            have: out.len(),
        });
    }
    let packet: &[u8] = packet;
    let (hl, gso) = (plan.hl, plan.gso);
    let mut pos = 0;
    for (i, data) in packet[hl..].chunks(gso).enumerate() {
        let seg_len = hl + data.len();
        let (h, o) = out[pos..pos + seg_len].split_at_mut(hl);
        o.copy_from_slice(data);
        plan.header(packet, i, h, o);
        pos += seg_len;
    }
    Ok(Split::Segments(plan.segments(pos)))
}

/// The headers-only split, for a gathering `sendmsg` (one iovec for segment *i*'s headers,
/// one for its payload, left in the frame): the same segments as [`split`], but only their
/// headers are written, `hdr_len` bytes each, back to back at
/// `hdrs[..segments · hdr_len]` ([`Segments::header`]); segment *i*'s payload is
/// `packet[`[`Segments::payload`]`(i)]`, not copied. The checksums are summed over the
/// payload where it is. `GSO_NONE` is [`Split::Whole`], as for [`split`]. A `hdrs` shorter
/// than [`headers_len`] gives [`GsoError::OutTooSmall`].
pub fn split_headers(
    hdr: &VirtioNetHdr,
    packet: &mut [u8],
    hdrs: &mut [u8],
    checksums: Checksums,
) -> Result<Split, GsoError> {
    let Some(plan) = plan(hdr, packet, checksums)? else {
        return Ok(Split::Whole);
    };
    let need = headers_len(&plan.hdr, packet.len());
    if need > hdrs.len() {
        return Err(GsoError::OutTooSmall {
            need,
            have: hdrs.len(),
        });
    }
    let packet: &[u8] = packet;
    let hl = plan.hl;
    for (i, data) in packet[hl..].chunks(plan.gso).enumerate() {
        plan.header(packet, i, &mut hdrs[i * hl..(i + 1) * hl], data);
    }
    let len = packet.len() - hl + plan.n * hl;
    Ok(Split::Segments(plan.segments(len)))
}

/// The header bytes [`split_headers`] needs for this (checked) header and a packet of
/// `packet_len` bytes: `hdr_len` per segment.
pub fn headers_len(hdr: &VirtioNetHdr, packet_len: usize) -> usize {
    if hdr.gso_type == GsoType::None || hdr.gso_size == 0 {
        return 0;
    }
    let hl = usize::from(hdr.hdr_len);
    packet_len
        .saturating_sub(hl)
        .div_ceil(usize::from(hdr.gso_size))
        * hl
}

/// What every segment of one checked GSO frame shares: the one definition of the segment
/// rules, for [`split`] and [`split_headers`].
struct Plan {
    hdr: VirtioNetHdr,
    iph: usize,
    hl: usize,
    gso: usize,
    csum_at: usize,
    tcp: bool,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    id0: u16,
    seq0: u32,
    /// Segments.
    n: usize,
    checksums: Checksums,
}

/// Checks the frame; `None` for `GSO_NONE` (its checksum finished in place if it needed it).
fn plan(
    hdr: &VirtioNetHdr,
    packet: &mut [u8],
    checksums: Checksums,
) -> Result<Option<Plan>, GsoError> {
    let hdr = hdr.check(packet)?;
    if hdr.gso_type == GsoType::None {
        if hdr.needs_csum && checksums == Checksums::Full {
            let at = PartialAt {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
            };
            partial::finish(packet, at);
        }
        return Ok(None);
    }
    let iph = usize::from(hdr.csum_start);
    let hl = usize::from(hdr.hdr_len);
    let gso = usize::from(hdr.gso_size);
    let tcp = hdr.gso_type == GsoType::TcpV4;
    Ok(Some(Plan {
        hdr,
        iph,
        hl,
        gso,
        csum_at: iph + usize::from(hdr.csum_offset),
        tcp,
        proto: if tcp { IPPROTO_TCP } else { IPPROTO_UDP },
        src: packet[12..16].try_into().expect("checked length"),
        dst: packet[16..20].try_into().expect("checked length"),
        id0: u16::from_be_bytes([packet[4], packet[5]]),
        seq0: u32::from_be_bytes([
            packet[iph + 4],
            packet[iph + 5],
            packet[iph + 6],
            packet[iph + 7],
        ]),
        n: (packet.len() - hl).div_ceil(gso),
        checksums,
    }))
}

impl Plan {
    fn segments(&self, len: usize) -> Segments {
        Segments {
            len,
            hdr_len: self.hl,
            segment_size: self.hl + self.gso,
            segments: self.n,
        }
    }

    /// Writes segment `i`'s headers into `o` (`hl` bytes) from the frame's, for its payload
    /// `data`: the IPv4 header with ID + i, total length and a fresh header checksum; the TCP
    /// header with seq + i·gso_size, FIN and PSH only on the last segment, CWR only on the
    /// first (or the UDP header with its length); the full transport checksum (pseudo-header
    /// + header + payload; a UDP checksum of 0 sent as 0xffff).
    fn header(&self, packet: &[u8], i: usize, o: &mut [u8], data: &[u8]) {
        let (iph, hl, csum_at) = (self.iph, self.hl, self.csum_at);
        let seg_len = hl + data.len();
        o.copy_from_slice(&packet[..hl]);
        o[4..6].copy_from_slice(&self.id0.wrapping_add(i as u16).to_be_bytes());
        o[2..4].copy_from_slice(&(seg_len as u16).to_be_bytes());
        o[10] = 0;
        o[11] = 0;
        let ipc = checksum::checksum(&o[..iph]);
        o[10..12].copy_from_slice(&ipc.to_be_bytes());
        let l4_len = seg_len - iph;
        if self.tcp {
            let seq = self.seq0.wrapping_add((i * self.gso) as u32);
            o[iph + 4..iph + 8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < self.n {
                o[iph + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                o[iph + 13] &= !TCP_CWR;
            }
        } else {
            o[iph + 4..iph + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let pseudo = checksum::pseudo_v4(self.src, self.dst, self.proto, l4_len as u16);
        if self.checksums == Checksums::Partial {
            // What the TUN would have handed out for this segment alone.
            let f = checksum::fold(pseudo);
            o[csum_at..csum_at + 2].copy_from_slice(&f.to_be_bytes());
            return;
        }
        o[csum_at] = 0;
        o[csum_at + 1] = 0;
        // The L4 header is an even number of bytes (TCP: doff·4, UDP: 8), so the sums add.
        let s = pseudo + checksum::sum(&o[iph..]) + checksum::sum(data);
        let mut c = checksum::finish(s);
        if !self.tcp && c == 0 {
            c = 0xffff;
        }
        o[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 written plainly (independent of `checksum`): 16-bit big-endian words summed
    /// in a u64, folded, complemented.
    fn reference(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut acc: u64 = 0;
        for w in bytes.chunks(2) {
            acc += u64::from(w[0]) << 8 | u64::from(*w.get(1).unwrap_or(&0));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn be16(b: &[u8], i: usize) -> u16 {
        u16::from_be_bytes([b[i], b[i + 1]])
    }
    fn be32(b: &[u8], i: usize) -> u32 {
        u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    /// A TCP/IPv4 super-packet as the TUN hands it out: the IP header checksum valid, the
    /// TCP checksum field holding only the pseudo-header sum.
    fn tcp_super(opts: usize, payload: &[u8], flags: u8) -> (VirtioNetHdr, Vec<u8>) {
        let thl = 20 + opts;
        let mut p = vec![0u8; 20 + thl];
        p[0] = 0x45;
        p[1] = 0x02; // ECT(0)
        p[4..6].copy_from_slice(&0xfffeu16.to_be_bytes()); // ID wraps after two segments
        p[6] = 0x40;
        p[8] = 63;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 5]);
        p[16..20].copy_from_slice(&[10, 244, 2, 6]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&0xffff_f000u32.to_be_bytes()); // seq wraps
        p[28..32].copy_from_slice(&77u32.to_be_bytes());
        p[32] = ((thl / 4) as u8) << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&502u16.to_be_bytes());
        for (k, b) in p[40..].iter_mut().enumerate() {
            *b = if k % 4 == 0 { 1 } else { 0x11 + k as u8 }; // NOPs and junk options
        }
        p.extend_from_slice(payload);
        let tot = p.len() as u16;
        p[2..4].copy_from_slice(&tot.to_be_bytes());
        let ipc = reference(&[&p[..20]]);
        p[10..12].copy_from_slice(&ipc.to_be_bytes());
        let l4 = (p.len() - 20) as u16;
        let pseudo = !reference(&[&p[12..20], &[0, 6], &l4.to_be_bytes()]);
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VirtioNetHdr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::TcpV4,
            hdr_len: 1500, // untrustworthy, as in the FORWARD path
            gso_size: 1420,
            csum_start: 20,
            csum_offset: 16,
        };
        (hdr, p)
    }

    fn udp_super(payload: &[u8], gso_size: u16) -> (VirtioNetHdr, Vec<u8>) {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 244, 1, 5]);
        p[16..20].copy_from_slice(&[10, 244, 2, 6]);
        p[20..22].copy_from_slice(&5353u16.to_be_bytes());
        p[22..24].copy_from_slice(&4789u16.to_be_bytes());
        p.extend_from_slice(payload);
        let tot = p.len() as u16;
        p[2..4].copy_from_slice(&tot.to_be_bytes());
        p[24..26].copy_from_slice(&(tot - 20).to_be_bytes());
        let hdr = VirtioNetHdr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::UdpL4,
            hdr_len: 28,
            gso_size,
            csum_start: 20,
            csum_offset: 6,
        };
        (hdr, p)
    }

    fn payload(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    /// Every segment's IP and transport checksums with the reference, and its lengths.
    fn check_segment(seg: &[u8], proto: u8) {
        assert_eq!(be16(seg, 2) as usize, seg.len(), "IPv4 total length");
        assert_eq!(reference(&[&seg[..20]]), 0, "IPv4 header checksum");
        let l4 = &seg[20..];
        let pseudo = [&seg[12..20], &[0, proto], &(l4.len() as u16).to_be_bytes()].concat();
        assert_eq!(reference(&[&pseudo, l4]), 0, "transport checksum");
    }

    #[test]
    fn a_tcp_super_packet_splits_as_the_kernel_would() {
        let data = payload(65_372 - 52 - 700, 3); // 45 full segments and one of 720 B
        let (hdr, mut p) = tcp_super(12, &data, 0x18 | TCP_FIN | TCP_CWR); // ACK|PSH|FIN|CWR
        let orig = p.clone();
        let mut out = vec![0u8; OUT_LEN];
        let Split::Segments(s) = split(&hdr, &mut p, &mut out, Checksums::Full).unwrap() else {
            panic!("not split")
        };
        assert_eq!(p, orig, "the frame is left alone");
        assert_eq!(s.segment_size, 52 + 1420);
        assert_eq!(s.segments, 46);
        assert_eq!(s.len, data.len() + 46 * 52);
        let mut got = Vec::new();
        for (i, seg) in out[..s.len].chunks(s.segment_size).enumerate() {
            let last = i == 45;
            if !last {
                assert_eq!(seg.len(), 1472);
            }
            check_segment(seg, 6);
            assert_eq!(be16(seg, 4), 0xfffeu16.wrapping_add(i as u16), "IPv4 ID");
            assert_eq!(&seg[6..10], &orig[6..10], "DF, TTL, protocol");
            assert_eq!(seg[1], 0x02, "TOS");
            assert_eq!(
                be32(seg, 24),
                0xffff_f000u32.wrapping_add(1420 * i as u32),
                "seq"
            );
            assert_eq!(be32(seg, 28), 77, "ack");
            assert_eq!(&seg[40..52], &orig[40..52], "options");
            let flags = seg[33];
            assert_eq!(flags & TCP_PSH != 0, last, "PSH on the last only");
            assert_eq!(flags & TCP_FIN != 0, last, "FIN on the last only");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR on the first only");
            assert!(flags & 0x10 != 0, "ACK everywhere");
            got.extend_from_slice(&seg[52..]);
        }
        let last_len = s.len - 45 * s.segment_size;
        assert_eq!(last_len, 52 + data.len() - 45 * 1420);
        assert!(last_len < s.segment_size, "the last one is short");
        assert_eq!(got, data);
        // 44 segments of 1472 B fit 65,507 B; 2 more in a second chunk.
        let chunks: Vec<Chunk> = s.chunks().collect();
        assert_eq!(
            chunks,
            vec![
                Chunk {
                    range: 0..44 * 1472,
                    segment_size: 1472,
                    segments: 44
                },
                Chunk {
                    range: 44 * 1472..s.len,
                    segment_size: 1472,
                    segments: 2
                },
            ]
        );
    }

    #[test]
    fn a_udp_super_packet_splits_with_lengths_and_checksums() {
        let data = payload(10 * 1400 + 99, 9);
        let (hdr, mut p) = udp_super(&data, 1400);
        let mut out = vec![0u8; OUT_LEN];
        let Split::Segments(s) = split(&hdr, &mut p, &mut out, Checksums::Full).unwrap() else {
            panic!("not split")
        };
        assert_eq!((s.segments, s.segment_size), (11, 1428));
        let mut got = Vec::new();
        for (i, seg) in out[..s.len].chunks(s.segment_size).enumerate() {
            check_segment(seg, 17);
            assert_eq!(be16(seg, 24) as usize, seg.len() - 20, "UDP length");
            assert_eq!(be16(seg, 4), i as u16, "IPv4 ID");
            assert_eq!(be16(seg, 20), 5353);
            assert_ne!(be16(seg, 26), 0, "UDP checksum present");
            got.extend_from_slice(&seg[28..]);
        }
        assert_eq!(got, data);
        assert_eq!(s.chunks().count(), 1);
    }

    #[test]
    fn a_udp_checksum_of_zero_is_sent_as_ffff() {
        // Search a payload whose segment checksum comes out 0: vary two bytes.
        let mut out = vec![0u8; OUT_LEN];
        let mut found = false;
        'outer: for a in 0..=255u8 {
            for b in 0..=255u8 {
                let (hdr, mut p) = udp_super(&[a, b, 1, 2, 3, 4, 5, 6, 7, 8], 5);
                let Split::Segments(_) = split(&hdr, &mut p, &mut out, Checksums::Full).unwrap()
                else {
                    unreachable!()
                };
                let seg = &out[..33];
                if be16(seg, 26) == 0xffff {
                    check_segment(seg, 17);
                    found = true;
                    break 'outer;
                }
                assert_ne!(be16(seg, 26), 0);
            }
        }
        assert!(found, "no payload gave a zero checksum");
    }

    #[test]
    fn chunks_stop_at_128_segments_and_65507_bytes() {
        // gso_size 100: segments of 140 B, 65,507 / 140 = 467, so 128 bound; 300 segments.
        let data = payload(300 * 100 - 1, 1);
        let (mut hdr, mut p) = tcp_super(0, &data, 0x10);
        hdr.gso_size = 100;
        let mut out = vec![0u8; OUT_LEN];
        let Split::Segments(s) = split(&hdr, &mut p, &mut out, Checksums::Full).unwrap() else {
            panic!()
        };
        let c: Vec<Chunk> = s.chunks().collect();
        assert_eq!(
            c.iter().map(|c| c.segments).collect::<Vec<_>>(),
            [128, 128, 44]
        );
        assert_eq!(c[0].range, 0..128 * 140);
        assert_eq!(c[2].range, 256 * 140..s.len);
        assert_eq!(s.len, 300 * 40 + data.len());
        for seg in out[..s.len].chunks(140) {
            check_segment(seg, 6);
        }
        // Byte bound: 65,507 / 1460 = 44 segments of 1,460 B (64,240 B) per chunk.
        let s = Segments {
            len: 100 * 1460,
            hdr_len: 40,
            segment_size: 1460,
            segments: 100,
        };
        let c: Vec<Chunk> = s.chunks().collect();
        assert_eq!(c.len(), 3);
        assert!(c.iter().all(|c| c.range.len() <= MAX_DATAGRAM));
        assert_eq!(c[0].range.len(), 44 * 1460);
        // Exactly 65,507 in one segment: one chunk of one.
        let s = Segments {
            len: 2 * MAX_DATAGRAM,
            hdr_len: 40,
            segment_size: MAX_DATAGRAM,
            segments: 2,
        };
        assert_eq!(
            s.chunks().map(|c| c.range.len()).collect::<Vec<_>>(),
            [MAX_DATAGRAM; 2]
        );
    }

    #[test]
    fn one_segment_and_exact_multiples() {
        let mut out = vec![0u8; OUT_LEN];
        for n in [1, 1419, 1420, 1421, 2840, 2841] {
            let data = payload(n, 5);
            let (hdr, mut p) = tcp_super(0, &data, 0x18);
            let Split::Segments(s) = split(&hdr, &mut p, &mut out, Checksums::Full).unwrap() else {
                panic!()
            };
            assert_eq!(s.segments, n.div_ceil(1420));
            assert_eq!(s.len, n + s.segments * 40);
            let last = &out[(s.segments - 1) * s.segment_size..s.len];
            check_segment(last, 6);
            assert!(last[33] & TCP_PSH != 0);
        }
    }

    #[test]
    fn out_len_fits_the_worst_frame_with_gso_size_64() {
        // IPv4 with 40 bytes of options and TCP with 40: 120 B of headers, 65,535 B in all.
        let hdr = VirtioNetHdr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::TcpV4,
            hdr_len: 120,
            gso_size: 64,
            csum_start: 60,
            csum_offset: 16,
        };
        assert!(split_len(&hdr, 65_535) <= OUT_LEN);
        let mut p = vec![0u8; 65_535];
        p[0] = 0x4f;
        p[9] = 6;
        p[60 + 12] = 15 << 4;
        let mut out = vec![0u8; OUT_LEN];
        let Split::Segments(s) = split(&hdr, &mut p, &mut out, Checksums::Full).unwrap() else {
            panic!()
        };
        assert_eq!(s.len, split_len(&hdr, 65_535));
        assert_eq!(s.segments, (65_535usize - 120).div_ceil(64));
    }

    #[test]
    fn gso_none_with_needs_csum_is_finished_in_place() {
        // A pure ACK as the TUN hands it out: NEEDS_CSUM, pseudo-header sum in the field.
        let (_, mut p) = tcp_super(12, &[], 0x10);
        let hdr = VirtioNetHdr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::None,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut out = [0u8; 0];
        assert_eq!(
            split(&hdr, &mut p, &mut out, Checksums::Full),
            Ok(Split::Whole)
        );
        check_segment(&p, 6);
        // Without NEEDS_CSUM nothing changes.
        let before = p.clone();
        assert_eq!(
            split(&VirtioNetHdr::NONE, &mut p, &mut out, Checksums::Full),
            Ok(Split::Whole)
        );
        assert_eq!(p, before);
    }

    /// What a gathering sendmsg of `split_headers`' iovecs puts on the wire, chunk by chunk.
    fn gathered(s: &Segments, hdrs: &[u8], packet: &[u8]) -> Vec<Vec<u8>> {
        s.chunks()
            .map(|c| {
                let mut m = Vec::new();
                for i in s.chunk_segments(&c) {
                    m.extend_from_slice(&hdrs[s.header(i)]);
                    m.extend_from_slice(&packet[s.payload(i)]);
                }
                assert_eq!(m.len(), c.range.len());
                m
            })
            .collect()
    }

    #[test]
    fn split_headers_gathers_to_what_split_writes() {
        let cases = [
            tcp_super(12, &payload(65_372 - 64, 3), 0x18 | TCP_FIN | TCP_CWR),
            tcp_super(0, &payload(1, 4), 0x10),
            tcp_super(0, &payload(2840, 4), 0x18),
            tcp_super(40, &payload(2841, 6), 0x10),
            udp_super(&payload(10 * 1400 + 99, 9), 1400),
            udp_super(&payload(7, 1), 5),
        ];
        for (k, (hdr, p)) in cases.into_iter().enumerate() {
            for gso_size in [hdr.gso_size, 100, 64, 1] {
                let hdr = VirtioNetHdr { gso_size, ..hdr };
                let mut a = p.clone();
                let mut out = vec![0u8; OUT_LEN];
                let mut b = p.clone();
                let mut hdrs = vec![0u8; OUT_LEN];
                let (sa, sb) = match (
                    split(&hdr, &mut a, &mut out, Checksums::Full),
                    split_headers(&hdr, &mut b, &mut hdrs, Checksums::Full),
                ) {
                    (Ok(Split::Segments(sa)), Ok(Split::Segments(sb))) => (sa, sb),
                    // gso_size 1 on a big frame: more headers than either buffer holds.
                    (Err(GsoError::OutTooSmall { .. }), _) => continue,
                    other => panic!("case {k} gso {gso_size}: {other:?}"),
                };
                assert_eq!(sa, sb, "case {k}");
                assert_eq!(b, p, "the frame is read only");
                assert_eq!(
                    hdrs[sb.segments * sb.hdr_len..],
                    vec![0u8; OUT_LEN - sb.segments * sb.hdr_len][..]
                );
                let want: Vec<Vec<u8>> = sa.chunks().map(|c| out[c.range].to_vec()).collect();
                assert_eq!(gathered(&sb, &hdrs, &b), want, "case {k} gso {gso_size}");
                assert_eq!(
                    headers_len(&hdr.check(&p).unwrap(), p.len()),
                    sb.segments * sb.hdr_len
                );
            }
        }
        // Too little room for the headers: refused, nothing else.
        let (hdr, mut p) = tcp_super(0, &payload(5000, 2), 0x10);
        let mut hdrs = vec![0u8; 4 * 40 - 1];
        assert_eq!(
            split_headers(&hdr, &mut p, &mut hdrs, Checksums::Full),
            Err(GsoError::OutTooSmall {
                need: 160,
                have: 159
            })
        );
        // GSO_NONE: Whole, finished in place, no header written.
        let (_, mut p) = tcp_super(12, &[], 0x10);
        let none = VirtioNetHdr {
            gso_type: GsoType::None,
            hdr_len: 0,
            gso_size: 0,
            ..hdr
        };
        assert_eq!(
            split_headers(&none, &mut p, &mut [], Checksums::Full),
            Ok(Split::Whole)
        );
        check_segment(&p, 6);
    }

    #[test]
    fn malformed_frames_are_refused_not_panicked_on() {
        let data = payload(5000, 2);
        let (hdr, p) = tcp_super(0, &data, 0x10);
        let mut out = vec![0u8; OUT_LEN];
        // Too small an output buffer: an error, nothing half-written matters.
        let mut q = p.clone();
        assert_eq!(
            split(&hdr, &mut q, &mut out[..5000], Checksums::Full),
            Err(GsoError::OutTooSmall {
                need: 5000 + 4 * 40,
                have: 5000
            })
        );
        assert!(matches!(
            split(
                &VirtioNetHdr {
                    csum_start: 24,
                    ..hdr
                },
                &mut q,
                &mut out,
                Checksums::Full
            ),
            Err(GsoError::Header(VirtioError::CsumStart { .. }))
        ));
        // Every truncation and every single-byte corruption of the headers: Ok or Err.
        for n in 0..q.len().min(200) {
            let mut t = p[..n].to_vec();
            let _ = split(&hdr, &mut t, &mut out, Checksums::Full);
        }
        for i in 0..60 {
            for v in [0u8, 0xff, 0x0f, 0xf0, 0x45] {
                let mut t = p.clone();
                t[i] = v;
                for h in [
                    hdr,
                    VirtioNetHdr { gso_size: 1, ..hdr },
                    VirtioNetHdr {
                        gso_type: GsoType::UdpL4,
                        csum_offset: 6,
                        ..hdr
                    },
                    VirtioNetHdr {
                        gso_type: GsoType::None,
                        csum_start: 0xffff,
                        ..hdr
                    },
                ] {
                    let _ = split(&h, &mut t, &mut out, Checksums::Full);
                }
            }
        }
        // gso_size 1 on a 5,000-byte payload needs 5,000 × 41 B: refused for the buffer.
        assert!(matches!(
            split(
                &VirtioNetHdr { gso_size: 1, ..hdr },
                &mut q,
                &mut out,
                Checksums::Full
            ),
            Err(GsoError::OutTooSmall { .. })
        ));
    }
}
