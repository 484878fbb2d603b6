//! Partial inner checksums between Twill datapaths. Pure.
//!
//! flannel's wire format is the bare inner packet with every checksum whole, so each side
//! makes a pass over every payload byte that the kernel never makes for its own VXLAN (over
//! veth, a CHECKSUM_PARTIAL packet crosses namespaces with no checksum ever computed): TX
//! sums every segment a TSO split makes, RX sums every packet before merging it. Between two
//! Twill datapaths that both say so ([`Checksums::Partial`], agreed through the store by
//! twilld), TCP and UDP packets travel as the TUN handed them out: the checksum field holds
//! the pseudo-header sum (folded, not complemented: what a CHECKSUM_PARTIAL packet carries),
//! and the receiver writes them into its TUN with `NEEDS_CSUM`, so the kernel finishes the
//! checksum only if the packet ever leaves by a device that needs one.
//!
//! What protects the payload in transit is then the outer UDP checksum, as for VXLAN with
//! `udpcsum`: Linux computes it for every IPv4 UDP datagram (unless the sender set
//! SO_NO_CHECK, which Twill never does) and drops one that fails before `recvmmsg` sees it.
//!
//! The receiver needs no table to know which packets are partial ([`partial_at`]): a
//! non-fragment TCP or UDP packet is taken as partial when its checksum field equals its
//! pseudo-header sum. That is always safe to act on: finishing a packet whose field holds
//! the pseudo-header sum gives its correct checksum by definition, so a whole checksum that
//! happens to equal that sum (one packet in 65,536 from a flannel peer) is recomputed to the
//! same value. So every Twill datapath accepts partial packets from anyone; only a sender
//! needs to know that the peer is a Twill datapath that does ([`Checksums`]).

use crate::checksum;
use crate::virtio::{
    GsoType, VirtioNetHdr, IPPROTO_TCP, IPPROTO_UDP, TCP_CSUM_OFFSET, UDP_CSUM_OFFSET,
};

/// How the inner TCP/UDP checksums of what is sent to a peer are left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Checksums {
    /// Whole, as flannel sends and expects them: every segment of a split is summed.
    #[default]
    Full,
    /// As the TUN handed them out (the pseudo-header sum in the field): the peer is a Twill
    /// datapath that writes them with `NEEDS_CSUM`.
    Partial,
}

/// Where a partial packet's checksum is: the transport header's start (the IP header
/// length) and the field's offset in it, as a vnet header's `csum_start`/`csum_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialAt {
    pub start: u16,
    pub offset: u16,
}

impl PartialAt {
    /// The bytes up to the end of the checksum field (a vnet header's `hdr_len` at least).
    pub fn end(self) -> usize {
        usize::from(self.start + self.offset) + 2
    }

    /// The vnet header a lone partial packet is written into a TUN with: NEEDS_CSUM at its
    /// field, no GSO.
    pub fn vnet_hdr(self) -> VirtioNetHdr {
        VirtioNetHdr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::None,
            hdr_len: self.end() as u16,
            gso_size: 0,
            csum_start: self.start,
            csum_offset: self.offset,
        }
    }
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// The IPv4 pseudo-header sum of packet `p` (a whole IPv4 header of `ihl` bytes) folded, as a
/// partial packet's checksum field holds it.
pub fn pseudo_field(p: &[u8], ihl: usize) -> u16 {
    let src: [u8; 4] = p[12..16].try_into().expect("an IPv4 header");
    let dst: [u8; 4] = p[16..20].try_into().expect("an IPv4 header");
    checksum::fold(checksum::pseudo_v4(src, dst, p[9], (p.len() - ihl) as u16))
}

/// `Some` when `p` is an IPv4 TCP or UDP packet, not a fragment, its total length its
/// length, whose checksum field holds its pseudo-header sum (see the module doc); `None`
/// for anything else, a whole checksum and a UDP checksum of 0 (none) included.
pub fn partial_at(p: &[u8]) -> Option<PartialAt> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    // More-fragments or an offset: the checksum covers the whole datagram, never partial.
    if ihl < 20 || usize::from(be16(p, 2)) != p.len() || be16(p, 6) & 0x3fff != 0 {
        return None;
    }
    let offset = match p[9] {
        IPPROTO_TCP if p.len() >= ihl + 20 => TCP_CSUM_OFFSET,
        IPPROTO_UDP if p.len() >= ihl + 8 => UDP_CSUM_OFFSET,
        _ => return None,
    };
    let field = be16(p, ihl + usize::from(offset));
    (field != 0 && field == pseudo_field(p, ihl)).then_some(PartialAt {
        start: ihl as u16,
        offset,
    })
}

/// Finishes a partial packet in place, as the kernel's `skb_checksum_help` does: the sum
/// over `[start..]` (the field holding the pseudo-header sum) folded and complemented
/// replaces the field, 0 written as 0xffff. For a TUN without vnet headers, which cannot
/// take `NEEDS_CSUM`, and for TX to a [`Checksums::Full`] peer. The caller checked `at`
/// against `p` ([`partial_at`], or a checked vnet header).
pub fn finish(p: &mut [u8], at: PartialAt) {
    let start = usize::from(at.start);
    let mut c = checksum::checksum(&p[start..]);
    if c == 0 {
        c = 0xffff;
    }
    let f = start + usize::from(at.offset);
    p[f..f + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP (or UDP) packet with options-free headers and `payload`, its checksum whole.
    fn packet(proto: u8, payload: &[u8]) -> Vec<u8> {
        let l4h = if proto == IPPROTO_TCP { 20 } else { 8 };
        let len = 20 + l4h + payload.len();
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        let ipc = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&ipc.to_be_bytes());
        p[20..22].copy_from_slice(&40_000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        if proto == IPPROTO_TCP {
            p[32] = 0x50;
            p[33] = 0x18;
        } else {
            p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        p[20 + l4h..].copy_from_slice(payload);
        let off = if proto == IPPROTO_TCP { 36 } else { 26 };
        let c = checksum::finish(
            checksum::pseudo_v4([10, 244, 1, 2], [10, 244, 2, 2], proto, (len - 20) as u16)
                + checksum::sum(&p[20..]),
        );
        p[off..off + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn make_partial(p: &mut [u8]) {
        let off = if p[9] == IPPROTO_TCP { 36 } else { 26 };
        let f = pseudo_field(p, 20);
        p[off..off + 2].copy_from_slice(&f.to_be_bytes());
    }

    #[test]
    fn a_partial_packet_is_found_and_finished_to_its_whole_checksum() {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            for len in [0usize, 1, 7, 1000, 1431] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let whole = packet(proto, &payload);
                let mut p = whole.clone();
                make_partial(&mut p);
                let at = partial_at(&p).expect("partial");
                assert_eq!(at.start, 20);
                finish(&mut p, at);
                assert_eq!(p, whole, "proto {proto}, payload {len}");
            }
        }
    }

    #[test]
    fn whole_checksums_fragments_and_other_protocols_are_not_partial() {
        let whole = packet(IPPROTO_TCP, b"twl-data");
        assert_eq!(partial_at(&whole), None);
        let mut frag = whole.clone();
        make_partial(&mut frag);
        frag[6] = 0x20; // more fragments
        assert_eq!(partial_at(&frag), None);
        let mut icmp = whole.clone();
        icmp[9] = 1;
        make_partial(&mut icmp);
        assert_eq!(partial_at(&icmp), None);
        let mut lies = whole.clone();
        make_partial(&mut lies);
        lies[2..4].copy_from_slice(&999u16.to_be_bytes());
        assert_eq!(partial_at(&lies), None, "total length is not the length");
        let mut udp0 = packet(IPPROTO_UDP, b"x");
        udp0[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(partial_at(&udp0), None, "UDP without a checksum");
        assert_eq!(partial_at(&whole[..30]), None);
        assert_eq!(partial_at(&[]), None);
    }

    #[test]
    fn a_whole_checksum_equal_to_the_pseudo_header_sum_finishes_to_itself() {
        // Search payloads until the whole checksum equals the pseudo-header sum: then the
        // packet is taken as partial, and finishing it must leave it as it was.
        let mut found = 0;
        for a in 0..=u16::MAX {
            let whole = packet(IPPROTO_TCP, &a.to_be_bytes());
            if let Some(at) = partial_at(&whole) {
                let mut p = whole.clone();
                finish(&mut p, at);
                assert_eq!(p, whole);
                found += 1;
            }
        }
        assert!(
            found > 0,
            "no payload made the two equal: the test proves nothing"
        );
    }
}
