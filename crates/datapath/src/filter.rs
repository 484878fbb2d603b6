//! What the datapath lets in, and why not: [`admit`] for every inner packet that arrives on
//! the UDP port (RX), [`route_tx`] for every packet read from the TUN (TX). A refusal is a
//! [`Drop`], each variant one counter (`twill_udp_drops_total{reason}` in twilld's /metrics).
//! After a [`Drop::NoRoute`], [`net_unreachable`] builds flannel's answer for the TUN.
//!
//! [`admit`]'s checks, in this order (the first failing one is the reason):
//! 1. [`Drop::Short`]: fewer than 20 bytes (no IPv4 header);
//! 2. [`Drop::NotIpv4`]: the version nibble is not 4;
//! 3. [`Drop::BadHeader`]: IHL < 5, the header (IHL × 4, options included) longer than the
//!    packet, or the total length field ≠ the length of the segment it came in;
//! 4. [`Drop::UnknownPeer`]: the outer source address is no peer's node IP (the outer source
//!    *port* is not checked: flannel sends from 8285, our workers from their own ports);
//! 5. [`Drop::SpoofedInner`]: the inner source is not in the blocks of *that* peer;
//! 6. [`Drop::ForeignDst`]: the inner destination is not in this node's blocks (so a peer
//!    cannot use this node as a relay to elsewhere, e.g. out through masquerade).
//!
//! The structural checks come first so that a test (or an operator) sees *what* was wrong
//! with a packet from a known peer. For per-peer drop counts the caller finds the peer with
//! [`PeerTable::peer_by_ip`] when `admit` fails (the rare path).
//!
//! Not checked here, on purpose:
//! - the IPv4 header checksum: the kernel's `ip_rcv` verifies it after the TUN write and
//!   drops a bad one (counted in `InHdrErrors`), and a GRO item's headers are checked by
//!   `gro::coalesce` anyway;
//! - TTL: the kernel decremented it on the sending node and decrements it again on ours;
//! - fragments (MF set or a fragment offset): an inner fragment is admitted when its source
//!   and destination pass, like any other packet. The rules need only the IPv4 header, which
//!   every fragment carries, and the kernel reassembles in the pod's namespace (or forwards);
//!   refusing them would break pods that send non-DF datagrams larger than the path MTU;
//! - the protocol: an ICMP error a node's kernel sends into the tunnel (host unreachable,
//!   time exceeded) has as source the address the kernel picks for the route via the TUN,
//!   so it passes only when that address is in the node's blocks. The udp backend therefore
//!   puts the `.0` of the node's first block on the TUN (as vxlan does on `twl.1`), not the
//!   node IP; an error from an address outside the sender's blocks is [`Drop::SpoofedInner`]
//!   like anything else.

use std::net::Ipv4Addr;

use crate::table::{PeerId, PeerTable};

/// Why a packet was not forwarded. `#[repr(u8)]`: the discriminant is the wire code in the
/// ctl protocol's `Stats` reply, so variants are only ever appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Drop {
    /// Shorter than an IPv4 header (20 bytes).
    Short = 0,
    /// The version nibble is not 4 (the datapath is IPv4 only).
    NotIpv4 = 1,
    /// IHL < 5, header longer than the packet, or total length ≠ the segment length.
    BadHeader = 2,
    /// RX: the outer source is no peer's node IP.
    UnknownPeer = 3,
    /// RX: the inner source is outside the sending peer's blocks.
    SpoofedInner = 4,
    /// RX: the inner destination is outside this node's blocks.
    ForeignDst = 5,
    /// TX: no peer holds the destination.
    NoRoute = 6,
    /// TX: a TUN frame whose virtio-net header or GSO layout `virtio`/`gso::split` refused
    /// (the kernel should never hand one out; counted so a bug shows).
    BadOffload = 7,
    /// TX: the kernel refused the UDP send (ENETUNREACH, EPERM from a firewall, EMSGSIZE…),
    /// after any GSO fallback; counted against the peer it was for.
    SendFailed = 8,
    /// RX: the kernel refused the TUN write of an admitted packet (EIO, EINVAL…); counted
    /// against the peer it came from.
    WriteFailed = 9,
}

impl Drop {
    /// Every reason, in wire-code order (`ALL[d as usize] == d`).
    pub const ALL: &'static [Drop] = &[
        Drop::Short,
        Drop::NotIpv4,
        Drop::BadHeader,
        Drop::UnknownPeer,
        Drop::SpoofedInner,
        Drop::ForeignDst,
        Drop::NoRoute,
        Drop::BadOffload,
        Drop::SendFailed,
        Drop::WriteFailed,
    ];
    /// `Drop::ALL.len()`, for counter arrays.
    pub const COUNT: usize = Drop::ALL.len();

    /// The snake_case name: the `reason` label in /metrics.
    pub fn name(self) -> &'static str {
        match self {
            Drop::Short => "short",
            Drop::NotIpv4 => "not_ipv4",
            Drop::BadHeader => "bad_header",
            Drop::UnknownPeer => "unknown_peer",
            Drop::SpoofedInner => "spoofed_inner",
            Drop::ForeignDst => "foreign_dst",
            Drop::NoRoute => "no_route",
            Drop::BadOffload => "bad_offload",
            Drop::SendFailed => "send_failed",
            Drop::WriteFailed => "write_failed",
        }
    }

    /// The index into counter arrays and the wire code.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The reason with wire code `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Drop> {
        Drop::ALL.get(usize::from(code)).copied()
    }

    /// The reason named `name` (the inverse of [`Drop::name`]).
    pub fn from_name(name: &str) -> Option<Drop> {
        Drop::ALL.iter().copied().find(|d| d.name() == name)
    }
}

impl std::fmt::Display for Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The IPv4 header fields the rules need, after the structural checks 1-3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Summary {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IHL × 4 (20 to 60).
    pub header_len: usize,
    pub protocol: u8,
}

/// Checks 1-3 of the module docs on one packet that must be exactly `pkt.len()` long.
#[inline]
pub fn parse_ipv4(pkt: &[u8]) -> Result<Ipv4Summary, Drop> {
    if pkt.len() < 20 {
        return Err(Drop::Short);
    }
    if pkt[0] >> 4 != 4 {
        return Err(Drop::NotIpv4);
    }
    let header_len = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if header_len < 20 || header_len > pkt.len() || total != pkt.len() {
        return Err(Drop::BadHeader);
    }
    Ok(Ipv4Summary {
        src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
        header_len,
        protocol: pkt[9],
    })
}

/// RX: whether the inner packet `inner` (one whole IPv4 packet: one GRO segment, or one
/// datagram's payload), which came from `outer_src`, may be written into the TUN, and from
/// which peer. See the module docs for the checks and their order.
#[inline]
pub fn admit(table: &PeerTable, outer_src: Ipv4Addr, inner: &[u8]) -> Result<PeerId, Drop> {
    let h = parse_ipv4(inner)?;
    let peer = table.peer_by_ip(outer_src).ok_or(Drop::UnknownPeer)?;
    if !table.admit_src(peer, h.src) {
        return Err(Drop::SpoofedInner);
    }
    if !table.is_local(h.dst) {
        return Err(Drop::ForeignDst);
    }
    Ok(peer)
}

/// TX: the peer to send `pkt` (an IPv4 packet read from the TUN, after its virtio-net
/// header) to. Only the first 20 bytes are looked at: a GSO super-packet's total length is
/// the kernel's business (`gso::split` checks it). [`Drop::Short`] under 20 bytes,
/// [`Drop::NotIpv4`] for anything else than IPv4 (the kernel's IPv6 router solicitations on
/// the TUN, say), [`Drop::NoRoute`] when no peer holds the destination.
#[inline]
pub fn route_tx(table: &PeerTable, pkt: &[u8]) -> Result<PeerId, Drop> {
    if pkt.len() < 20 {
        return Err(Drop::Short);
    }
    if pkt[0] >> 4 != 4 {
        return Err(Drop::NotIpv4);
    }
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    table.route(dst).ok_or(Drop::NoRoute)
}

/// The longest reply [`net_unreachable`] writes: IPv4 header, ICMP header, the offender's
/// header with options and 8 bytes of its payload (RFC 792).
pub const ICMP_ERROR_MAX: usize = 20 + 8 + 60 + 8;

/// TX, after [`Drop::NoRoute`]: flannel's answer, an ICMP "destination net unreachable"
/// (type 3 code 0) about `offender` (a packet read from the TUN), written into `out` to go
/// back into the TUN, so the sender fails fast instead of timing out. Returns its length.
///
/// Its source is the destination the offender asked for, not an address of this node: a
/// packet arriving on the TUN with a local source (the TUN's own address, say) is a martian
/// to the kernel and dropped unless `accept_local` is set. That destination was routed into
/// the TUN, so a reverse-path check on the reply passes too.
///
/// `None` (send nothing), as RFC 1122 §3.2.2 and RFC 1812 §4.3.2.7 say, for an offender that
/// is no whole IPv4 header, is an ICMP error itself (or an ICMP packet too short to tell),
/// is a fragment other than the first, or comes from an address that is not one host
/// (unspecified, broadcast, multicast, loopback) or goes to a multicast or broadcast one;
/// and when `out` is shorter than the reply (`ICMP_ERROR_MAX` always fits). Rate limiting
/// is the caller's: a flood of packets to nowhere is a flood of these.
pub fn net_unreachable(offender: &[u8], out: &mut [u8]) -> Option<usize> {
    if offender.len() < 20 || offender[0] >> 4 != 4 {
        return None;
    }
    let hl = usize::from(offender[0] & 0x0f) * 4;
    if hl < 20 || hl > offender.len() {
        return None;
    }
    let frag_offset = u16::from_be_bytes([offender[6], offender[7]]) & 0x1fff;
    if frag_offset != 0 {
        return None;
    }
    let o_src = Ipv4Addr::new(offender[12], offender[13], offender[14], offender[15]);
    let o_dst = Ipv4Addr::new(offender[16], offender[17], offender[18], offender[19]);
    if o_src.is_unspecified() || o_src.is_broadcast() || o_src.is_multicast() || o_src.is_loopback()
    {
        return None;
    }
    if o_dst.is_broadcast() || o_dst.is_multicast() {
        return None;
    }
    if offender[9] == 1 {
        // ICMP: only queries get an error; an error about an error could loop.
        match offender.get(hl) {
            Some(0 | 8 | 13 | 14 | 17 | 18) => {}
            _ => return None,
        }
    }
    let quoted = &offender[..offender.len().min(hl + 8)];
    let len = 28 + quoted.len();
    let buf = out.get_mut(..len)?;
    buf[..28].fill(0);
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    buf[8] = 64; // TTL
    buf[9] = 1; // ICMP
    buf[12..16].copy_from_slice(&o_dst.octets());
    buf[16..20].copy_from_slice(&o_src.octets());
    let ip_csum = crate::checksum::checksum(&buf[..20]);
    buf[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    buf[20] = 3; // destination unreachable
    buf[21] = 0; // net unreachable
    buf[28..].copy_from_slice(quoted);
    let icmp_csum = crate::checksum::checksum(&buf[20..]);
    buf[22..24].copy_from_slice(&icmp_csum.to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partial::Checksums;
    use crate::table::{LocalNode, Peer};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn table() -> PeerTable {
        PeerTable::new(
            3,
            LocalNode {
                node_ip: ip("192.0.2.1"),
                blocks: vec!["10.244.1.0/24".parse().unwrap()],
            },
            vec![
                Peer {
                    node_ip: ip("192.0.2.2"),
                    port: 8285,
                    blocks: vec!["10.244.2.0/24".parse().unwrap()],
                    checksums: Checksums::Full,
                },
                Peer {
                    node_ip: ip("192.0.2.3"),
                    port: 40000,
                    blocks: vec!["10.244.3.0/24".parse().unwrap()],
                    checksums: Checksums::Full,
                },
            ],
        )
        .unwrap()
    }

    /// An IPv4 packet with `options` bytes of options and `payload` bytes of payload.
    fn packet(src: &str, dst: &str, options: usize, payload: usize) -> Vec<u8> {
        assert_eq!(options % 4, 0);
        let hl = 20 + options;
        let total = hl + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x40 | (hl / 4) as u8;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&ip(src).octets());
        p[16..20].copy_from_slice(&ip(dst).octets());
        for b in &mut p[20..hl] {
            *b = 1; // NOP options
        }
        p
    }

    #[test]
    fn admits_a_peer_packet_to_a_local_pod() {
        let t = table();
        let p = packet("10.244.2.7", "10.244.1.9", 0, 100);
        assert_eq!(admit(&t, ip("192.0.2.2"), &p), Ok(PeerId(0)));
        let p = packet("10.244.3.7", "10.244.1.9", 8, 0);
        assert_eq!(admit(&t, ip("192.0.2.3"), &p), Ok(PeerId(1)));
    }

    #[test]
    fn names_are_snake_case_unique_and_codes_follow_all() {
        let mut names: Vec<_> = Drop::ALL.iter().map(|d| d.name()).collect();
        for (i, d) in Drop::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
            assert_eq!(Drop::from_code(i as u8), Some(*d));
            assert_eq!(Drop::from_name(d.name()), Some(*d));
            assert!(
                d.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{d:?}"
            );
        }
        assert_eq!(Drop::from_code(Drop::COUNT as u8), None);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Drop::COUNT);
    }

    const FROM: &str = "192.0.2.2";

    fn good() -> Vec<u8> {
        packet("10.244.2.7", "10.244.1.9", 0, 8)
    }

    #[test]
    fn drop_short() {
        let t = table();
        for n in 0..20 {
            assert_eq!(
                admit(&t, ip(FROM), &good()[..n]),
                Err(Drop::Short),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn drop_not_ipv4() {
        let t = table();
        for v in [0u8, 1, 5, 6, 15] {
            let mut p = good();
            p[0] = v << 4 | 5;
            assert_eq!(admit(&t, ip(FROM), &p), Err(Drop::NotIpv4), "version {v}");
        }
    }

    #[test]
    fn drop_bad_header() {
        let t = table();
        for ihl in 0..5 {
            let mut p = good();
            p[0] = 0x40 | ihl;
            assert_eq!(admit(&t, ip(FROM), &p), Err(Drop::BadHeader), "IHL {ihl}");
        }
        // IHL 15 (60 bytes) in a 28-byte packet.
        let mut p = good();
        p[0] = 0x4f;
        assert_eq!(admit(&t, ip(FROM), &p), Err(Drop::BadHeader));
        assert_eq!(
            admit(&t, ip(FROM), &good()[..27]),
            Err(Drop::BadHeader),
            "total length > segment"
        );
        let mut long = good();
        long.push(0);
        assert_eq!(
            admit(&t, ip(FROM), &long),
            Err(Drop::BadHeader),
            "total length < segment"
        );
        let mut zero = good();
        zero[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(
            admit(&t, ip(FROM), &zero),
            Err(Drop::BadHeader),
            "total length 0 (a TSO frame's)"
        );
    }

    #[test]
    fn drop_unknown_peer() {
        let t = table();
        assert_eq!(admit(&t, ip("192.0.2.9"), &good()), Err(Drop::UnknownPeer));
        assert_eq!(
            admit(&t, ip("192.0.2.1"), &good()),
            Err(Drop::UnknownPeer),
            "our own node IP"
        );
        assert_eq!(
            admit(&PeerTable::default(), ip(FROM), &good()),
            Err(Drop::UnknownPeer),
            "before the first table"
        );
    }

    #[test]
    fn drop_spoofed_inner() {
        let t = table();
        assert_eq!(
            admit(&t, ip("192.0.2.3"), &good()),
            Err(Drop::SpoofedInner),
            "another peer's source"
        );
        let p = packet("10.244.1.7", "10.244.1.9", 0, 8);
        assert_eq!(
            admit(&t, ip(FROM), &p),
            Err(Drop::SpoofedInner),
            "a local source"
        );
        let p = packet("192.0.2.2", "10.244.1.9", 0, 8);
        assert_eq!(
            admit(&t, ip(FROM), &p),
            Err(Drop::SpoofedInner),
            "the peer's node IP is not in its blocks"
        );
        let p = packet("10.244.3.1", "10.244.1.9", 0, 8);
        assert_eq!(admit(&t, ip(FROM), &p), Err(Drop::SpoofedInner));
    }

    #[test]
    fn drop_foreign_dst() {
        let t = table();
        let p = packet("10.244.2.7", "10.244.3.9", 0, 8);
        assert_eq!(
            admit(&t, ip(FROM), &p),
            Err(Drop::ForeignDst),
            "relay to another peer"
        );
        let p = packet("10.244.2.7", "10.244.2.9", 0, 8);
        assert_eq!(
            admit(&t, ip(FROM), &p),
            Err(Drop::ForeignDst),
            "back to the sender's block"
        );
        let p = packet("10.244.2.7", "8.8.8.8", 0, 8);
        assert_eq!(
            admit(&t, ip(FROM), &p),
            Err(Drop::ForeignDst),
            "out through masquerade"
        );
        let p = packet("10.244.2.7", "192.0.2.1", 0, 8);
        assert_eq!(
            admit(&t, ip(FROM), &p),
            Err(Drop::ForeignDst),
            "this node's own IP"
        );
    }

    #[test]
    fn drop_no_route() {
        let t = table();
        assert_eq!(
            route_tx(&t, &packet("10.244.1.9", "10.244.1.1", 0, 0)),
            Err(Drop::NoRoute),
            "local"
        );
        assert_eq!(
            route_tx(&t, &packet("10.244.1.9", "10.9.0.1", 0, 0)),
            Err(Drop::NoRoute)
        );
        assert_eq!(
            route_tx(
                &PeerTable::default(),
                &packet("10.244.1.9", "10.244.3.1", 0, 0)
            ),
            Err(Drop::NoRoute)
        );
    }

    #[test]
    fn admits_headers_with_options() {
        let t = table();
        for words in 1..=10 {
            let p = packet("10.244.2.7", "10.244.1.9", 4 * words, 0);
            assert_eq!(
                admit(&t, ip(FROM), &p),
                Ok(PeerId(0)),
                "{words} option words"
            );
            assert_eq!(parse_ipv4(&p).unwrap().header_len, 20 + 4 * words);
        }
        // All 60 header bytes and nothing after them.
        let p = packet("10.244.2.7", "10.244.1.9", 40, 0);
        assert_eq!(p.len(), 60);
        assert_eq!(admit(&t, ip(FROM), &p), Ok(PeerId(0)));
    }

    #[test]
    fn admits_fragments_by_the_same_rules() {
        let t = table();
        // First fragment (MF), a middle one (MF + offset), the last (offset only).
        for flags_offset in [0x2000u16, 0x2000 | 185, 370] {
            let mut p = packet("10.244.2.7", "10.244.1.9", 0, 64);
            p[6..8].copy_from_slice(&flags_offset.to_be_bytes());
            assert_eq!(admit(&t, ip(FROM), &p), Ok(PeerId(0)), "{flags_offset:#x}");
            let mut spoofed = p.clone();
            spoofed[12..16].copy_from_slice(&[10, 244, 3, 7]);
            assert_eq!(admit(&t, ip(FROM), &spoofed), Err(Drop::SpoofedInner));
            let mut foreign = p;
            foreign[16..20].copy_from_slice(&[10, 244, 3, 7]);
            assert_eq!(admit(&t, ip(FROM), &foreign), Err(Drop::ForeignDst));
        }
    }

    /// ICMP errors a peer's kernel sends into the tunnel: from the `.0` of its block (the TUN
    /// address) they pass; from its node IP they do not.
    #[test]
    fn icmp_errors_from_the_peer_kernel_follow_the_source_rule() {
        let t = table();
        // Time exceeded, quoting a packet this node's pod sent.
        let quoted = packet("10.244.1.9", "10.244.2.7", 0, 8);
        let mut icmp = packet("10.244.2.0", "10.244.1.9", 0, 8 + quoted.len());
        icmp[9] = 1;
        icmp[20] = 11;
        icmp[28..].copy_from_slice(&quoted);
        assert_eq!(admit(&t, ip(FROM), &icmp), Ok(PeerId(0)));
        icmp[12..16].copy_from_slice(&ip(FROM).octets());
        assert_eq!(admit(&t, ip(FROM), &icmp), Err(Drop::SpoofedInner));
    }

    /// [`net_unreachable`] as an `Option<Vec<u8>>`, in a buffer of exactly the most it needs.
    fn unreachable(offender: &[u8]) -> Option<Vec<u8>> {
        let mut out = [0u8; ICMP_ERROR_MAX];
        net_unreachable(offender, &mut out).map(|n| out[..n].to_vec())
    }

    #[test]
    fn answers_no_route_with_net_unreachable_from_the_destination() {
        use crate::checksum::{sum, verify};
        let mut off = packet("10.244.1.9", "10.9.0.1", 4, 100);
        off[9] = 6;
        let b = unreachable(&off).unwrap();
        assert_eq!(b.len(), 20 + 8 + 24 + 8);
        assert_eq!(parse_ipv4(&b).unwrap().header_len, 20);
        assert!(verify(sum(&b[..20])), "IPv4 header checksum");
        assert!(verify(sum(&b[20..])), "ICMP checksum");
        assert_eq!((b[9], b[20], b[21]), (1, 3, 0));
        assert_eq!(&b[12..16], &[10, 9, 0, 1], "from the destination asked for");
        assert_eq!(&b[16..20], &[10, 244, 1, 9]);
        assert_eq!(&b[28..], &off[..32], "the offender's header and 8 bytes");
        // A short payload is quoted whole; an echo request gets an answer.
        let mut ping = packet("10.244.1.9", "10.9.0.1", 0, 3);
        ping[9] = 1;
        ping[20] = 8;
        assert_eq!(unreachable(&ping).unwrap().len(), 28 + 23);
        // Garbage left in the caller's buffer does not leak into the reply.
        let mut out = [0xaau8; 200];
        let n = net_unreachable(&off, &mut out).unwrap();
        assert_eq!(&out[..n], &b[..]);
        assert_eq!(
            net_unreachable(&off, &mut out[..n - 1]),
            None,
            "a buffer too short"
        );
    }

    #[test]
    fn sends_no_icmp_error_where_the_rfcs_say_not_to() {
        let base = packet("10.244.1.9", "10.9.0.1", 0, 16);
        assert!(unreachable(&base).is_some());
        let mut err = base.clone();
        err[9] = 1;
        for ty in [3u8, 4, 5, 11, 12, 42] {
            err[20] = ty;
            assert!(unreachable(&err).is_none(), "ICMP type {ty}");
        }
        assert!(unreachable(&err[..20]).is_none(), "ICMP without a type");
        let mut frag = base.clone();
        frag[6..8].copy_from_slice(&185u16.to_be_bytes());
        assert!(unreachable(&frag).is_none(), "a later fragment");
        frag[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        assert!(unreachable(&frag).is_some(), "the first fragment");
        for bad_src in ["0.0.0.0", "255.255.255.255", "224.0.0.5", "127.0.0.1"] {
            let p = packet(bad_src, "10.9.0.1", 0, 16);
            assert!(unreachable(&p).is_none(), "from {bad_src}");
        }
        for bad_dst in ["255.255.255.255", "239.1.2.3"] {
            let p = packet("10.244.1.9", bad_dst, 0, 16);
            assert!(unreachable(&p).is_none(), "to {bad_dst}");
        }
        assert!(unreachable(&base[..19]).is_none());
        assert!(unreachable(&[0x60; 40]).is_none());
        let mut ihl = base;
        ihl[0] = 0x4f;
        assert!(unreachable(&ihl).is_none(), "header longer than the packet");
    }

    #[test]
    fn routes_tx_packets() {
        let t = table();
        assert_eq!(
            route_tx(&t, &packet("10.244.1.9", "10.244.3.1", 0, 0)),
            Ok(PeerId(1))
        );
        assert_eq!(
            route_tx(&t, &packet("10.244.1.9", "10.244.1.1", 0, 0)),
            Err(Drop::NoRoute)
        );
        assert_eq!(
            route_tx(&t, &packet("10.244.1.9", "10.9.0.1", 0, 0)),
            Err(Drop::NoRoute)
        );
        assert_eq!(route_tx(&t, &[0x45; 19]), Err(Drop::Short));
        assert_eq!(route_tx(&t, &[0x60; 40]), Err(Drop::NotIpv4));
    }
}
