//! The virtio-net header a TUN device with IFF_VNET_HDR puts before every packet it hands
//! out and expects before every packet written to it (10 bytes, little-endian:
//! `struct virtio_net_hdr` of linux/virtio_net.h, without `num_buffers`). Pure.
//!
//! The API:
//! - [`VirtioNetHdr`]: the fields, typed. [`VirtioNetHdr::NONE`] is the all-zero header (a
//!   plain packet, checksum complete).
//! - [`VirtioNetHdr::from_bytes`]`(&[u8]) -> Result<VirtioNetHdr, VirtioError>`: the codec
//!   alone (10 bytes; unknown flags, unknown GSO types and the ECN bit refused).
//! - [`VirtioNetHdr::to_bytes`]`() -> [u8; 10]`.
//! - [`VirtioNetHdr::decode`]`(read) -> Result<VirtioNetHdr, VirtioError>`: what a worker
//!   calls on what one `read` of the TUN returned (header + packet, the packet is
//!   `&read[VirtioNetHdr::LEN..]`). It is `from_bytes` + [`VirtioNetHdr::check`].
//! - [`VirtioNetHdr::check`]`(&self, packet) -> Result<VirtioNetHdr, VirtioError>`: every
//!   limit checked against the packet; for a GSO frame `hdr_len` is **recomputed** (design
//!   §3: in the FORWARD path the kernel may set it to the whole first packet), as
//!   `csum_start + TCP data offset · 4` or `csum_start + 8` for UDP. `gso::split` calls it
//!   again itself, so it never trusts a header it is handed.
//!
//! What `check` accepts: `GSO_NONE` (any packet; with `NEEDS_CSUM`, `csum_start +
//! csum_offset + 2 ≤ len`), and `TCPV4` / `UDP_L4` over IPv4 with `NEEDS_CSUM`, `csum_start =
//! IHL·4`, the protocol matching the type, `csum_offset` 16 (TCP) or 6 (UDP), TCP data offset
//! 5..=15, not a fragment, a non-empty payload, `gso_size ≥ 1`, one segment (`hdr_len +
//! gso_size`) ≤ 65,507 B (it must fit one outer UDP datagram) and the packet ≤ 65,535 B.
//! `TCPV6` and GSO over IPv6 are refused with [`VirtioError::Ipv6Gso`] (the pod network is
//! IPv4; do not set TSO6/USO6 expecting them to be split). `TSO_ECN` is refused: the datapath
//! does not set it in TUNSETOFFLOAD, so the kernel segments CWR packets itself.

use thiserror::Error;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial (it
/// holds the pseudo-header sum) and must be finished over `[csum_start..]`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the kernel already checked the checksum.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into the GSO type by a device with TSO_ECN.
pub const GSO_ECN: u8 = 0x80;

/// The IPv4 header's minimum length, and offsets into it.
pub(crate) const IPV4_MIN: usize = 20;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
/// The TCP checksum's offset in the TCP header, and UDP's.
pub(crate) const TCP_CSUM_OFFSET: u16 = 16;
pub(crate) const UDP_CSUM_OFFSET: u16 = 6;
pub(crate) const UDP_HDR: usize = 8;
/// The largest UDP payload in an IPv4 datagram: 65,535 − 20 − 8.
pub const MAX_DATAGRAM: usize = 65_507;

/// `gso_type`: what the packet is a super-packet of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GsoType {
    /// `VIRTIO_NET_HDR_GSO_NONE` (0): one packet.
    None,
    /// `VIRTIO_NET_HDR_GSO_TCPV4` (1).
    TcpV4,
    /// `VIRTIO_NET_HDR_GSO_TCPV6` (4).
    TcpV6,
    /// `VIRTIO_NET_HDR_GSO_UDP_L4` (5): UDP segmentation (USO), IPv4 or IPv6.
    UdpL4,
}

impl GsoType {
    /// The wire value.
    pub fn code(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
        }
    }
}

/// A decoded virtio-net header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
    pub needs_csum: bool,
    /// `VIRTIO_NET_HDR_F_DATA_VALID`.
    pub data_valid: bool,
    pub gso_type: GsoType,
    /// Bytes of IP + transport header (recomputed by [`VirtioNetHdr::check`] for GSO).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS), not the segment's length.
    pub gso_size: u16,
    /// Where the checksummed part starts (the IP header's length for TCP/UDP).
    pub csum_start: u16,
    /// The checksum field's offset from `csum_start` (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

/// Why a virtio-net header or the packet after it was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum VirtioError {
    #[error("short read: {0} bytes, less than the 10-byte virtio-net header (is IFF_VNET_HDR set on this fd, with TUNSETVNETHDRSZ 10?)")]
    Short(usize),
    #[error("virtio-net header has unknown flag bits {0:#04x} (only NEEDS_CSUM and DATA_VALID are understood)")]
    UnknownFlags(u8),
    #[error("virtio-net header has the ECN bit in gso_type {0:#04x}: TSO_ECN must not be set in TUNSETOFFLOAD (the datapath does not fix CWR up)")]
    Ecn(u8),
    #[error("virtio-net header has unknown gso_type {0} (understood: 0 none, 1 tcpv4, 4 tcpv6, 5 udp_l4)")]
    UnknownGsoType(u8),
    #[error("virtio-net NEEDS_CSUM points past the packet: csum_start {csum_start} + csum_offset {csum_offset} + 2 > {len} bytes")]
    CsumOutside {
        csum_start: u16,
        csum_offset: u16,
        len: usize,
    },
    #[error("GSO frame ({0:?}) without NEEDS_CSUM: the kernel always sets it for GSO, so the header is corrupt")]
    GsoWithoutCsum(GsoType),
    #[error("GSO frame with gso_size 0")]
    ZeroGsoSize,
    #[error("GSO over IPv6 ({0:?}) is not supported yet: set only TSO4/USO-compatible offloads or route no IPv6 into the TUN")]
    Ipv6Gso(GsoType),
    #[error("GSO frame ({gso:?}) does not hold an IPv4 packet (version {version})")]
    NotIpv4 { gso: GsoType, version: u8 },
    #[error("GSO frame's IPv4 header is bad: {0}")]
    BadIpv4(&'static str),
    #[error("GSO frame's IPv4 header length {ihl_len} differs from csum_start {csum_start}")]
    CsumStart { ihl_len: usize, csum_start: u16 },
    #[error("GSO frame of type {gso:?} carries IP protocol {proto}")]
    Protocol { gso: GsoType, proto: u8 },
    #[error("GSO frame of type {gso:?} has csum_offset {csum_offset} (want {want})")]
    CsumOffset {
        gso: GsoType,
        csum_offset: u16,
        want: u16,
    },
    #[error("GSO frame's TCP header is bad: {0}")]
    BadTcp(&'static str),
    #[error(
        "GSO frame of {len} bytes is shorter than its headers ({hdr_len} bytes) or has no payload"
    )]
    NoPayload { len: usize, hdr_len: usize },
    #[error("GSO frame of {0} bytes is larger than an IPv4 packet can be (65,535)")]
    TooLong(usize),
    #[error(
        "GSO segment of {0} bytes (hdr_len + gso_size) does not fit one UDP datagram (65,507)"
    )]
    SegmentTooLong(usize),
}

impl VirtioNetHdr {
    /// The header's size on the wire (TUNSETVNETHDRSZ must be 10, the default).
    pub const LEN: usize = 10;

    /// The all-zero header: a plain packet whose checksums are complete.
    pub const NONE: VirtioNetHdr = VirtioNetHdr {
        needs_csum: false,
        data_valid: false,
        gso_type: GsoType::None,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Decodes the first 10 bytes of `b` (the codec alone; see [`VirtioNetHdr::decode`]).
    pub fn from_bytes(b: &[u8]) -> Result<VirtioNetHdr, VirtioError> {
        let b: &[u8; 10] = b
            .get(..Self::LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(VirtioError::Short(b.len()))?;
        let flags = b[0];
        if flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return Err(VirtioError::UnknownFlags(flags));
        }
        let gso_type = match b[1] {
            0 => GsoType::None,
            1 => GsoType::TcpV4,
            4 => GsoType::TcpV6,
            5 => GsoType::UdpL4,
            t if t & GSO_ECN != 0 => return Err(VirtioError::Ecn(t)),
            t => return Err(VirtioError::UnknownGsoType(t)),
        };
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VirtioNetHdr {
            needs_csum: flags & F_NEEDS_CSUM != 0,
            data_valid: flags & F_DATA_VALID != 0,
            gso_type,
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// The 10 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0] = if self.needs_csum { F_NEEDS_CSUM } else { 0 }
            | if self.data_valid { F_DATA_VALID } else { 0 };
        b[1] = self.gso_type.code();
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Decodes what one `read` of the TUN returned (header, then the packet at
    /// `read[VirtioNetHdr::LEN..]`) and checks the header against the packet
    /// ([`VirtioNetHdr::check`]: `hdr_len` recomputed for GSO frames).
    pub fn decode(read: &[u8]) -> Result<VirtioNetHdr, VirtioError> {
        Self::from_bytes(read)?.check(&read[Self::LEN..])
    }

    /// Checks the header against the packet it came with and returns it normalised (a GSO
    /// frame's `hdr_len` recomputed from the packet's own headers). See the module doc for
    /// the rules.
    pub fn check(&self, packet: &[u8]) -> Result<VirtioNetHdr, VirtioError> {
        let len = packet.len();
        let csum_outside = || VirtioError::CsumOutside {
            csum_start: self.csum_start,
            csum_offset: self.csum_offset,
            len,
        };
        if self.needs_csum && usize::from(self.csum_start) + usize::from(self.csum_offset) + 2 > len
        {
            return Err(csum_outside());
        }
        let gso = self.gso_type;
        if gso == GsoType::None {
            return Ok(*self);
        }
        if !self.needs_csum {
            return Err(VirtioError::GsoWithoutCsum(gso));
        }
        if self.gso_size == 0 {
            return Err(VirtioError::ZeroGsoSize);
        }
        if len > usize::from(u16::MAX) {
            return Err(VirtioError::TooLong(len));
        }
        let version = packet.first().map_or(0, |b| b >> 4);
        if gso == GsoType::TcpV6 || version == 6 {
            return Err(VirtioError::Ipv6Gso(gso));
        }
        if version != 4 {
            return Err(VirtioError::NotIpv4 { gso, version });
        }
        if len < IPV4_MIN {
            return Err(VirtioError::BadIpv4("shorter than 20 bytes"));
        }
        let ihl_len = usize::from(packet[0] & 0x0f) * 4;
        if ihl_len < IPV4_MIN {
            return Err(VirtioError::BadIpv4("IHL below 5"));
        }
        if ihl_len != usize::from(self.csum_start) {
            return Err(VirtioError::CsumStart {
                ihl_len,
                csum_start: self.csum_start,
            });
        }
        let frag = u16::from_be_bytes([packet[6], packet[7]]);
        if frag & 0x3fff != 0 {
            return Err(VirtioError::BadIpv4("a fragment (MF or an offset)"));
        }
        let (proto, want_offset) = match gso {
            GsoType::TcpV4 => (IPPROTO_TCP, TCP_CSUM_OFFSET),
            _ => (IPPROTO_UDP, UDP_CSUM_OFFSET),
        };
        if packet[9] != proto {
            return Err(VirtioError::Protocol {
                gso,
                proto: packet[9],
            });
        }
        if self.csum_offset != want_offset {
            return Err(VirtioError::CsumOffset {
                gso,
                csum_offset: self.csum_offset,
                want: want_offset,
            });
        }
        let hdr_len = match gso {
            GsoType::TcpV4 => {
                // csum_start + 18 ≤ len was checked above, so byte 12 is there.
                let doff = usize::from(packet[ihl_len + 12] >> 4) * 4;
                if doff < 20 {
                    return Err(VirtioError::BadTcp("data offset below 5"));
                }
                ihl_len + doff
            }
            _ => ihl_len + UDP_HDR,
        };
        if len <= hdr_len {
            return Err(VirtioError::NoPayload { len, hdr_len });
        }
        let segment = hdr_len + usize::from(self.gso_size);
        if segment > MAX_DATAGRAM {
            return Err(VirtioError::SegmentTooLong(segment));
        }
        Ok(VirtioNetHdr {
            hdr_len: hdr_len as u16,
            ..*self
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x45;
        let tot = p.len() as u16;
        p[2..4].copy_from_slice(&tot.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 3]);
        p[32] = 5 << 4;
        p[33] = 0x10;
        p
    }

    fn gso_tcp() -> VirtioNetHdr {
        VirtioNetHdr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::TcpV4,
            // What the FORWARD path may say: the whole first packet.
            hdr_len: 1460,
            gso_size: 1420,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    #[test]
    fn round_trips_through_the_ten_bytes() {
        let h = gso_tcp();
        let b = h.to_bytes();
        assert_eq!(b, [1, 1, 0xb4, 0x05, 0x8c, 0x05, 20, 0, 16, 0]);
        assert_eq!(VirtioNetHdr::from_bytes(&b), Ok(h));
        assert_eq!(VirtioNetHdr::NONE.to_bytes(), [0; 10]);
        for t in [
            GsoType::None,
            GsoType::TcpV4,
            GsoType::TcpV6,
            GsoType::UdpL4,
        ] {
            let h = VirtioNetHdr {
                gso_type: t,
                data_valid: true,
                ..VirtioNetHdr::NONE
            };
            assert_eq!(VirtioNetHdr::from_bytes(&h.to_bytes()), Ok(h));
        }
    }

    #[test]
    fn the_codec_refuses_what_it_does_not_know() {
        assert_eq!(
            VirtioNetHdr::from_bytes(&[0; 9]),
            Err(VirtioError::Short(9))
        );
        let mut b = [0u8; 10];
        b[0] = 4;
        assert_eq!(
            VirtioNetHdr::from_bytes(&b),
            Err(VirtioError::UnknownFlags(4))
        );
        b[0] = 0;
        b[1] = 0x81;
        assert_eq!(VirtioNetHdr::from_bytes(&b), Err(VirtioError::Ecn(0x81)));
        b[1] = 3; // UDP (UFO), legacy
        assert_eq!(
            VirtioNetHdr::from_bytes(&b),
            Err(VirtioError::UnknownGsoType(3))
        );
    }

    #[test]
    fn hdr_len_is_recomputed_from_the_tcp_header() {
        let mut p = tcp_frame(3000);
        let got = gso_tcp().check(&p).unwrap();
        assert_eq!(got.hdr_len, 40);
        p[32] = 8 << 4; // 12 bytes of options
        assert_eq!(gso_tcp().check(&p).unwrap().hdr_len, 52);
        let mut read = gso_tcp().to_bytes().to_vec();
        read.extend_from_slice(&p);
        assert_eq!(VirtioNetHdr::decode(&read).unwrap().hdr_len, 52);
    }

    #[test]
    fn udp_hdr_len_is_csum_start_plus_8() {
        let mut p = tcp_frame(3000);
        p[9] = IPPROTO_UDP;
        let h = VirtioNetHdr {
            gso_type: GsoType::UdpL4,
            csum_offset: 6,
            hdr_len: 0,
            ..gso_tcp()
        };
        assert_eq!(h.check(&p).unwrap().hdr_len, 28);
    }

    #[test]
    fn every_limit_is_checked() {
        let p = tcp_frame(3000);
        let h = gso_tcp();
        let err = |h: VirtioNetHdr, p: &[u8]| h.check(p).unwrap_err();
        assert!(matches!(
            err(
                VirtioNetHdr {
                    needs_csum: false,
                    ..h
                },
                &p
            ),
            VirtioError::GsoWithoutCsum(_)
        ));
        assert_eq!(
            err(VirtioNetHdr { gso_size: 0, ..h }, &p),
            VirtioError::ZeroGsoSize
        );
        assert!(matches!(
            err(
                VirtioNetHdr {
                    csum_start: 24,
                    ..h
                },
                &p
            ),
            VirtioError::CsumStart { .. }
        ));
        assert!(matches!(
            err(
                VirtioNetHdr {
                    csum_offset: 6,
                    ..h
                },
                &p
            ),
            VirtioError::CsumOffset { .. }
        ));
        assert!(matches!(
            err(
                VirtioNetHdr {
                    csum_start: 3000,
                    ..h
                },
                &p[..100]
            ),
            VirtioError::CsumOutside { .. }
        ));
        assert!(matches!(
            err(
                VirtioNetHdr {
                    gso_type: GsoType::UdpL4,
                    csum_offset: 6,
                    ..h
                },
                &p
            ),
            VirtioError::Protocol { .. }
        ));
        assert!(matches!(
            err(
                VirtioNetHdr {
                    gso_type: GsoType::TcpV6,
                    ..h
                },
                &p
            ),
            VirtioError::Ipv6Gso(_)
        ));
        assert!(matches!(
            err(
                VirtioNetHdr {
                    gso_size: 65_500,
                    ..h
                },
                &p
            ),
            VirtioError::SegmentTooLong(65_540)
        ));
        let mut q = p.clone();
        q[0] = 0x65;
        assert!(matches!(err(h, &q), VirtioError::Ipv6Gso(_)));
        q[0] = 0x55;
        assert!(matches!(err(h, &q), VirtioError::NotIpv4 { .. }));
        q[0] = 0x44;
        assert_eq!(err(h, &q), VirtioError::BadIpv4("IHL below 5"));
        q = p.clone();
        q[6] = 0x20; // MF
        assert!(matches!(err(h, &q), VirtioError::BadIpv4(_)));
        q = p.clone();
        q[32] = 4 << 4;
        assert!(matches!(err(h, &q), VirtioError::BadTcp(_)));
        q = p.clone();
        q[32] = 15 << 4; // 60-byte TCP header, the packet has 3,020 bytes after it
        assert_eq!(h.check(&q).unwrap().hdr_len, 80);
        assert!(matches!(err(h, &p[..40]), VirtioError::NoPayload { .. }));
        let big = tcp_frame(65_536);
        assert!(matches!(err(h, &big), VirtioError::TooLong(_)));
        // GSO_NONE with NEEDS_CSUM: only the checksum position is checked.
        let none = VirtioNetHdr {
            gso_type: GsoType::None,
            ..h
        };
        assert_eq!(none.check(&p[..38]), Ok(none));
        assert!(matches!(
            err(none, &p[..37]),
            VirtioError::CsumOutside { .. }
        ));
        // Never a panic on short input, whatever the header says.
        for n in 0..64 {
            for t in [GsoType::None, GsoType::TcpV4, GsoType::UdpL4] {
                let _ = VirtioNetHdr { gso_type: t, ..h }.check(&p[..n]);
            }
        }
    }
}
