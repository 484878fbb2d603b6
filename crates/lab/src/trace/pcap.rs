//! Pure: the classic pcap file format (what `tcpdump -w -` writes) and the frames in it,
//! decoded down to what a trace shows: Ethernet or raw IP (a TUN), IPv4, ICMP/TCP/UDP, VXLAN
//! with the inner frame it carries, and the udp backend's UDP (flannel's: the bare inner IP
//! packet as the payload, port 8285 unless configured) with the inner packet it carries.

use std::net::Ipv4Addr;

use serde::Serialize;

/// LINKTYPE_ETHERNET: veth, bridge, vxlan devices.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// LINKTYPE_RAW: a TUN (the udp backend's twl.tun) carries bare IP packets; some libpcaps
/// write DLT_RAW's own number, 12 (or 14 on OpenBSD), so those are read as raw too.
pub const LINKTYPE_RAW: u32 = 101;
const DLT_RAW: [u32; 2] = [12, 14];
/// The udp backend's default port (flannel's): its payload is looked into for an inner packet.
pub const UDP_OVERLAY_PORT: u16 = 8285;
/// The UDP ports a VXLAN header is looked for behind: Linux's default (flannel's) and IANA's.
pub const VXLAN_PORTS: [u16; 2] = [8472, 4789];

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_VLAN: u16 = 0x8100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PcapError {
    #[error("not a pcap stream (magic {0:#010x}); was tcpdump run with -w -?")]
    BadMagic(u32),
    #[error("pcap stream ends inside its {0}")]
    Truncated(&'static str),
    #[error("link type {0} is neither Ethernet nor raw IP; only those captures are decoded")]
    LinkType(u32),
}

/// What a capture's frames start with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// An IP packet, no link header (a TUN).
    Raw,
}

/// A whole capture: its link type and records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcap {
    pub link: LinkType,
    pub records: Vec<Record>,
}

/// One captured frame: its time (seconds since the epoch) and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub ts_sec: u32,
    pub ts_usec: u32,
    pub data: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize, le: bool) -> u16 {
    let v = [b[at], b[at + 1]];
    if le {
        u16::from_le_bytes(v)
    } else {
        u16::from_be_bytes(v)
    }
}

fn u32_at(b: &[u8], at: usize, le: bool) -> u32 {
    let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if le {
        u32::from_le_bytes(v)
    } else {
        u32::from_be_bytes(v)
    }
}

/// Reads a whole pcap stream. A record cut short at the end (tcpdump stopped mid-write) is
/// dropped rather than failing the rest. An empty stream (tcpdump never started) is empty.
pub fn parse_pcap(bytes: &[u8]) -> Result<Pcap, PcapError> {
    if bytes.is_empty() {
        return Ok(Pcap {
            link: LinkType::Ethernet,
            records: Vec::new(),
        });
    }
    if bytes.len() < 24 {
        return Err(PcapError::Truncated("file header"));
    }
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    // Microsecond and nanosecond variants, in either byte order.
    let (le, nanos) = match magic {
        0xa1b2c3d4 => (true, false),
        0xa1b23c4d => (true, true),
        0xd4c3b2a1 => (false, false),
        0x4d3cb2a1 => (false, true),
        other => return Err(PcapError::BadMagic(other)),
    };
    let linktype = u32_at(bytes, 20, le) & 0x0fff_ffff;
    let link = match linktype {
        LINKTYPE_ETHERNET => LinkType::Ethernet,
        t if t == LINKTYPE_RAW || DLT_RAW.contains(&t) => LinkType::Raw,
        other => return Err(PcapError::LinkType(other)),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let ts_sec = u32_at(bytes, at, le);
        let frac = u32_at(bytes, at + 4, le);
        let incl = u32_at(bytes, at + 8, le) as usize;
        let start = at + 16;
        if start + incl > bytes.len() {
            break;
        }
        out.push(Record {
            ts_sec,
            ts_usec: if nanos { frac / 1000 } else { frac },
            data: bytes[start..start + incl].to_vec(),
        });
        at = start + incl;
    }
    Ok(Pcap { link, records: out })
}

/// Writes Ethernet records as a pcap stream (microseconds, little endian): for tests and
/// samples.
pub fn write_pcap(records: &[Record]) -> Vec<u8> {
    write_pcap_as(LINKTYPE_ETHERNET, records)
}

/// The same with a link type of its own.
pub fn write_pcap_as(linktype: u32, records: &[Record]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&65535u32.to_le_bytes());
    b.extend_from_slice(&linktype.to_le_bytes());
    for r in records {
        b.extend_from_slice(&r.ts_sec.to_le_bytes());
        b.extend_from_slice(&r.ts_usec.to_le_bytes());
        b.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        b.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        b.extend_from_slice(&r.data);
    }
    b
}

/// A MAC address, printed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Mac {
    type Err = ();
    fn from_str(s: &str) -> Result<Mac, ()> {
        let parts: Vec<u8> = s
            .split(':')
            .map(|p| u8::from_str_radix(p, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| ())?;
        Ok(Mac(parts.try_into().map_err(|_| ())?))
    }
}

/// Layer 4 as a trace shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "proto", rename_all = "lowercase")]
pub enum L4 {
    Icmp {
        #[serde(rename = "type")]
        kind: u8,
        code: u8,
        /// Echo identifier and sequence (echo request/reply only).
        id: Option<u16>,
        seq: Option<u16>,
        #[serde(skip)]
        payload: Vec<u8>,
    },
    Tcp {
        sport: u16,
        dport: u16,
        /// tcpdump's letters: S, F, R, P, . (ACK), U.
        flags: String,
    },
    Udp {
        sport: u16,
        dport: u16,
        #[serde(skip)]
        payload: Vec<u8>,
    },
    Other {
        protocol: u8,
    },
}

/// An IPv4 packet's header and its layer 4.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub l4: L4,
}

/// A decoded frame; `vxlan` holds the frame a VXLAN packet carries, `udp_overlay` the
/// packet the udp backend's datagram carries. A raw IP packet (a TUN's, or that inner one)
/// has no MACs and ethertype 0x0800.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub src_mac: Option<Mac>,
    pub dst_mac: Option<Mac>,
    pub ethertype: u16,
    pub ip: Option<Ipv4>,
    pub vxlan: Option<Vxlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_overlay: Option<Box<Frame>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arp: Option<Arp>,
}

/// An ARP request or reply for IPv4 over Ethernet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Arp {
    /// 1: request, 2: reply.
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

impl std::fmt::Display for Arp {
    /// As tcpdump says it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.op {
            1 => write!(f, "ARP who-has {} tell {}", self.target_ip, self.sender_ip),
            2 => write!(f, "ARP reply {} is-at {}", self.sender_ip, self.sender_mac),
            op => write!(f, "ARP op {op} {} → {}", self.sender_ip, self.target_ip),
        }
    }
}

fn decode_arp(b: &[u8]) -> Option<Arp> {
    // htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4.
    if b.len() < 28 || b[0..2] != [0, 1] || b[2..4] != [8, 0] || b[4] != 6 || b[5] != 4 {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    Some(Arp {
        op: u16::from_be_bytes([b[6], b[7]]),
        sender_mac: Mac(b[8..14].try_into().ok()?),
        sender_ip: ip(14),
        target_mac: Mac(b[18..24].try_into().ok()?),
        target_ip: ip(24),
    })
}

/// An encapsulation carrying an Ethernet frame: VXLAN (its VNI) or GRE (its key, 0 when
/// the header has none), as OVS's tunnels and the kernel's VXLAN send them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Vxlan {
    pub encap: Encap,
    /// The VNI (VXLAN) or the GRE key.
    pub vni: u32,
    pub inner: Box<Frame>,
}

/// What carries an encapsulated packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    #[default]
    Vxlan,
    Gre,
    /// The udp backend: UDP whose payload is the bare inner packet.
    Udp,
}

impl Encap {
    pub fn as_str(self) -> &'static str {
        match self {
            Encap::Vxlan => "VXLAN",
            Encap::Gre => "GRE",
            Encap::Udp => "UDP",
        }
    }
}

/// IP protocol number of GRE (RFC 2784) and GRE's protocol type for a carried Ethernet
/// frame (transparent Ethernet bridging, what OVS's and Linux's gretap send).
pub const IPPROTO_GRE: u8 = 47;
pub const GRE_PROTO_TEB: u16 = 0x6558;

impl Frame {
    /// The frame the payload finally travels in: the innermost one of an encapsulation.
    pub fn innermost(&self) -> &Frame {
        match (&self.vxlan, &self.udp_overlay) {
            (Some(v), _) => v.inner.innermost(),
            (None, Some(inner)) => inner.innermost(),
            (None, None) => self,
        }
    }
}

/// Decodes one record of a capture of link type `link`, looking into UDP datagrams to one of
/// `overlay_ports` for the udp backend's inner packet. None when it is too short to be one.
pub fn decode(link: LinkType, b: &[u8], overlay_ports: &[u16]) -> Option<Frame> {
    match link {
        LinkType::Ethernet => decode_ethernet(b, overlay_ports),
        LinkType::Raw => decode_raw(b, overlay_ports),
    }
}

/// Decodes an Ethernet frame (the udp backend's default port looked into); None when it is
/// too short to be one.
pub fn decode_frame(b: &[u8]) -> Option<Frame> {
    decode_ethernet(b, &[UDP_OVERLAY_PORT])
}

/// A bare IPv4 packet; None when it is not one.
fn decode_raw(b: &[u8], overlay_ports: &[u16]) -> Option<Frame> {
    let mut frame = Frame {
        src_mac: None,
        dst_mac: None,
        ethertype: ETHERTYPE_IPV4,
        ip: None,
        vxlan: None,
        udp_overlay: None,
        arp: None,
    };
    let (ip, l4_payload) = decode_ipv4(b)?;
    look_inside(&mut frame, &ip, l4_payload, overlay_ports);
    frame.ip = Some(ip);
    Some(frame)
}

/// VXLAN or the udp backend's datagram: the frame or packet inside.
fn look_inside(frame: &mut Frame, ip: &Ipv4, l4_payload: &[u8], overlay_ports: &[u16]) {
    if ip.l4
        == (L4::Other {
            protocol: IPPROTO_GRE,
        })
    {
        frame.vxlan = decode_gre(l4_payload);
    }
    if let L4::Udp { dport, .. } = ip.l4 {
        if VXLAN_PORTS.contains(&dport) {
            frame.vxlan = decode_vxlan(l4_payload);
        } else if overlay_ports.contains(&dport) {
            // No header: the payload is the inner packet, whole (a datagram with anything
            // else stays plain UDP).
            frame.udp_overlay = decode_raw(l4_payload, &[])
                .filter(|f| f.ip.is_some())
                .map(Box::new);
        }
    }
}

fn decode_ethernet(b: &[u8], overlay_ports: &[u16]) -> Option<Frame> {
    if b.len() < 14 {
        return None;
    }
    let dst_mac = Mac(b[0..6].try_into().ok()?);
    let src_mac = Mac(b[6..12].try_into().ok()?);
    let mut ethertype = u16_at(b, 12, false);
    let mut at = 14;
    if ethertype == ETHERTYPE_VLAN && b.len() >= 18 {
        ethertype = u16_at(b, 16, false);
        at = 18;
    }
    let mut frame = Frame {
        src_mac: Some(src_mac),
        dst_mac: Some(dst_mac),
        ethertype,
        ip: None,
        vxlan: None,
        udp_overlay: None,
        arp: None,
    };
    if ethertype == ETHERTYPE_ARP {
        frame.arp = decode_arp(&b[at..]);
    }
    if ethertype == ETHERTYPE_IPV4 {
        if let Some((ip, l4_payload)) = decode_ipv4(&b[at..]) {
            look_inside(&mut frame, &ip, l4_payload, overlay_ports);
            frame.ip = Some(ip);
        }
    }
    Some(frame)
}

fn decode_vxlan(b: &[u8]) -> Option<Vxlan> {
    // Flags byte with the I bit (VNI valid), 3 reserved, 3 bytes VNI, 1 reserved.
    if b.len() < 8 || b[0] & 0x08 == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([0, b[4], b[5], b[6]]);
    let inner = decode_ethernet(&b[8..], &[])?;
    Some(Vxlan {
        encap: Encap::Vxlan,
        vni,
        inner: Box::new(inner),
    })
}

/// GRE (RFC 2784 with RFC 2890's key and sequence): flags and version, protocol type, then
/// the optional checksum, key and sequence words; only version 0 carrying Ethernet.
fn decode_gre(b: &[u8]) -> Option<Vxlan> {
    if b.len() < 4 {
        return None;
    }
    let flags = u16_at(b, 0, false);
    if flags & 0x0007 != 0 || u16_at(b, 2, false) != GRE_PROTO_TEB {
        return None;
    }
    let mut at = 4;
    if flags & 0x8000 != 0 {
        at += 4; // checksum + reserved
    }
    let mut key = 0;
    if flags & 0x2000 != 0 {
        key = u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
        at += 4;
    }
    if flags & 0x1000 != 0 {
        at += 4; // sequence number
    }
    let inner = decode_frame(b.get(at..)?)?;
    Some(Vxlan {
        encap: Encap::Gre,
        vni: key,
        inner: Box::new(inner),
    })
}

/// The IPv4 header and the bytes after the layer-4 header (UDP/ICMP payload).
fn decode_ipv4(b: &[u8]) -> Option<(Ipv4, &[u8])> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(u16_at(b, 2, false)).min(b.len());
    if ihl < 20 || total < ihl {
        return None;
    }
    let ttl = b[8];
    let protocol = b[9];
    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    let p = &b[ihl..total];
    let (l4, payload): (L4, &[u8]) = match protocol {
        1 if p.len() >= 8 => {
            let (kind, code) = (p[0], p[1]);
            let echo = kind == 0 || kind == 8;
            (
                L4::Icmp {
                    kind,
                    code,
                    id: echo.then(|| u16_at(p, 4, false)),
                    seq: echo.then(|| u16_at(p, 6, false)),
                    payload: p[8..].to_vec(),
                },
                &p[8..],
            )
        }
        6 if p.len() >= 14 => (
            L4::Tcp {
                sport: u16_at(p, 0, false),
                dport: u16_at(p, 2, false),
                flags: tcp_flags(p[13]),
            },
            &[],
        ),
        17 if p.len() >= 8 => (
            L4::Udp {
                sport: u16_at(p, 0, false),
                dport: u16_at(p, 2, false),
                payload: p[8..].to_vec(),
            },
            &p[8..],
        ),
        // GRE's payload is decoded by the caller.
        other => (L4::Other { protocol: other }, p),
    };
    Some((Ipv4 { src, dst, ttl, l4 }, payload))
}

/// tcpdump's spelling of TCP flags.
fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & 0x10 != 0 {
        s.push('.');
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

impl std::fmt::Display for L4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            L4::Icmp {
                kind: 8,
                id: Some(id),
                seq: Some(seq),
                ..
            } => write!(f, "ICMP echo request id {id} seq {seq}"),
            L4::Icmp {
                kind: 0,
                id: Some(id),
                seq: Some(seq),
                ..
            } => write!(f, "ICMP echo reply id {id} seq {seq}"),
            L4::Icmp { kind, code, .. } => write!(f, "ICMP type {kind} code {code}"),
            L4::Tcp { flags, .. } => write!(f, "TCP [{flags}]"),
            L4::Udp { payload, .. } => write!(f, "UDP length {}", payload.len()),
            L4::Other { protocol } => write!(f, "IP protocol {protocol}"),
        }
    }
}

impl L4 {
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => Some((*sport, *dport)),
            _ => None,
        }
    }
}

/// `10.244.1.2:41234 → 203.0.113.10:8080 TCP [S]` (ports only where there are ports).
pub fn describe(ip: &Ipv4) -> String {
    match ip.l4.ports() {
        Some((s, d)) => format!("{}:{s} → {}:{d} {}", ip.src, ip.dst, ip.l4),
        None => format!("{} → {} {}", ip.src, ip.dst, ip.l4),
    }
}

#[cfg(test)]
pub(crate) mod samples {
    //! Frames built byte by byte as the lab's devices carry them.
    use super::*;

    pub fn eth(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&dst);
        b.extend_from_slice(&src);
        b.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    /// An ARP frame (`op` 1 request, 2 reply) as the kernel sends it.
    pub fn arp(op: u16, smac: [u8; 6], sip: [u8; 4], tmac: [u8; 6], tip: [u8; 4]) -> Vec<u8> {
        let dst = if op == 1 { [0xff; 6] } else { tmac };
        let mut b = Vec::new();
        b.extend_from_slice(&dst);
        b.extend_from_slice(&smac);
        b.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        b.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        b.extend_from_slice(&op.to_be_bytes());
        b.extend_from_slice(&smac);
        b.extend_from_slice(&sip);
        b.extend_from_slice(&tmac);
        b.extend_from_slice(&tip);
        b.extend_from_slice(&[0; 18]); // Ethernet padding
        b
    }

    pub fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, ttl: u8, l4: &[u8]) -> Vec<u8> {
        let mut b = vec![0x45, 0];
        b.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        b.extend_from_slice(&[0x12, 0x34, 0x40, 0, ttl, protocol, 0, 0]);
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(l4);
        b
    }

    pub fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![8, 0, 0, 0];
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(payload);
        b
    }

    pub fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        b
    }

    /// GREv0 with a key, carrying an Ethernet frame (OVS's `gre` port with a key).
    pub fn gre(key: u32, inner: &[u8]) -> Vec<u8> {
        let mut b = vec![0x20, 0, 0x65, 0x58];
        b.extend_from_slice(&key.to_be_bytes());
        b.extend_from_slice(inner);
        b
    }

    pub fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
        let v = vni.to_be_bytes();
        let mut b = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
        b.extend_from_slice(inner);
        b
    }

    pub const POD_A: [u8; 4] = [10, 244, 226, 2];
    pub const POD_B: [u8; 4] = [10, 244, 4, 2];
    pub const NODE1: [u8; 4] = [192, 0, 2, 11];
    pub const NODE2: [u8; 4] = [192, 0, 2, 12];
    pub const MAC_A: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x0a];
    pub const MAC_GW: [u8; 6] = [0xfa, 0xec, 0x8a, 0x1c, 0x12, 0x32];
    pub const VTEP1: [u8; 6] = [0x0a, 0x54, 0xc0, 0, 2, 0x0b];
    pub const VTEP2: [u8; 6] = [0x0a, 0x54, 0xc0, 0, 2, 0x0c];
    pub const ETH1: [u8; 6] = [0x3a, 0xdb, 0x42, 0x7c, 0x70, 0x87];
    pub const ETH2: [u8; 6] = [0x3a, 0xdb, 0x42, 0x7c, 0x70, 0x88];

    /// The ping pod A → pod B as it leaves pod A.
    pub fn ping_in_pod() -> Vec<u8> {
        eth(
            MAC_GW,
            MAC_A,
            &ipv4(POD_A, POD_B, 1, 64, &icmp_echo(7, 1, b"twll-twll")),
        )
    }

    /// The same ping read from node 1's TUN (raw IP, no link header).
    pub fn ping_on_tun() -> Vec<u8> {
        ipv4(POD_A, POD_B, 1, 63, &icmp_echo(7, 1, b"twll-twll"))
    }

    /// The same ping on node 1's eth0 with the udp backend: the bare packet in UDP 8285.
    pub fn ping_on_uplink_udp() -> Vec<u8> {
        eth(
            ETH2,
            ETH1,
            &ipv4(NODE1, NODE2, 17, 64, &udp(40123, 8285, &ping_on_tun())),
        )
    }

    /// The same ping on node 1's eth0: wrapped in UDP 8472 between the node IPs.
    pub fn ping_on_uplink() -> Vec<u8> {
        let inner = eth(
            VTEP2,
            VTEP1,
            &ipv4(POD_A, POD_B, 1, 63, &icmp_echo(7, 1, b"twll-twll")),
        );
        eth(
            ETH2,
            ETH1,
            &ipv4(NODE1, NODE2, 17, 64, &udp(41000, 8472, &vxlan(1, &inner))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;

    #[test]
    fn gre_carrying_ethernet_decodes_to_the_inner_ping() {
        let inner = eth(
            MAC_GW,
            MAC_A,
            &ipv4(POD_A, POD_B, 1, 63, &icmp_echo(7, 1, b"twll-twll")),
        );
        let f = decode_frame(&eth(
            ETH2,
            ETH1,
            &ipv4(NODE1, NODE2, 47, 64, &gre(0x54, &inner)),
        ))
        .unwrap();
        let g = f.vxlan.as_ref().unwrap();
        assert_eq!((g.encap, g.vni), (Encap::Gre, 0x54));
        let ip = f.innermost().ip.as_ref().unwrap();
        assert_eq!(ip.dst, Ipv4Addr::from(POD_B));
        assert_eq!(f.ip.as_ref().unwrap().l4, L4::Other { protocol: 47 });
        // Keyless GREv0, as OVS's flow-based port sends it; and a GRE packet carrying IP
        // (not Ethernet) is left undecoded.
        let mut bare = vec![0, 0, 0x65, 0x58];
        bare.extend_from_slice(&inner);
        let f = decode_frame(&eth(ETH2, ETH1, &ipv4(NODE1, NODE2, 47, 64, &bare))).unwrap();
        assert_eq!(f.vxlan.as_ref().map(|g| g.vni), Some(0));
        let mut ip_in_gre = vec![0, 0, 0x08, 0x00];
        ip_in_gre.extend_from_slice(&inner[14..]);
        let f = decode_frame(&eth(ETH2, ETH1, &ipv4(NODE1, NODE2, 47, 64, &ip_in_gre))).unwrap();
        assert!(f.vxlan.is_none());
        assert!(
            decode_frame(&eth(ETH2, ETH1, &ipv4(NODE1, NODE2, 47, 64, &[0, 0])))
                .unwrap()
                .vxlan
                .is_none()
        );
    }

    #[test]
    fn arp_request_and_proxy_reply_decode() {
        let pod = [0xc2, 0x90, 0xac, 0x80, 0x25, 0x39];
        let host = [0xee; 6];
        let req = decode_frame(&samples::arp(
            1,
            pod,
            [10, 244, 226, 2],
            [0; 6],
            [169, 254, 1, 1],
        ))
        .unwrap();
        assert!(req.ip.is_none());
        let a = req.arp.unwrap();
        assert_eq!(a.to_string(), "ARP who-has 169.254.1.1 tell 10.244.226.2");
        let rep = decode_frame(&samples::arp(
            2,
            host,
            [169, 254, 1, 1],
            pod,
            [10, 244, 226, 2],
        ))
        .unwrap();
        assert_eq!(rep.dst_mac, Some(Mac(pod)));
        let a = rep.arp.unwrap();
        assert_eq!(
            a.to_string(),
            "ARP reply 169.254.1.1 is-at ee:ee:ee:ee:ee:ee"
        );
        assert_eq!(a.target_ip, Ipv4Addr::new(10, 244, 226, 2));
        // Cut short: no ARP, still a frame.
        let cut = samples::arp(1, pod, [10, 244, 226, 2], [0; 6], [169, 254, 1, 1]);
        assert!(decode_frame(&cut[..30]).unwrap().arp.is_none());
    }

    #[test]
    fn pcap_round_trips_and_tolerates_a_cut_record() {
        let recs = vec![
            Record {
                ts_sec: 1,
                ts_usec: 2,
                data: ping_in_pod(),
            },
            Record {
                ts_sec: 3,
                ts_usec: 4,
                data: ping_on_uplink(),
            },
        ];
        let bytes = write_pcap(&recs);
        assert_eq!(parse_pcap(&bytes).unwrap().records, recs);
        // tcpdump killed mid-record: the whole records survive.
        assert_eq!(
            parse_pcap(&bytes[..bytes.len() - 3]).unwrap().records,
            recs[..1]
        );
        assert_eq!(parse_pcap(&[]).unwrap().records, vec![]);
        assert_eq!(parse_pcap(&[0u8; 24]).unwrap_err(), PcapError::BadMagic(0));
        assert_eq!(
            parse_pcap(&bytes[..10]).unwrap_err(),
            PcapError::Truncated("file header")
        );
    }

    #[test]
    fn big_endian_and_nanosecond_headers_are_read() {
        let mut b = vec![0xa1, 0xb2, 0x3c, 0x4d, 0, 2, 0, 4];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&65535u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&5u32.to_be_bytes());
        b.extend_from_slice(&7000u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&[0xab, 0xcd]);
        let r = parse_pcap(&b).unwrap().records;
        assert_eq!(
            (r[0].ts_sec, r[0].ts_usec, r[0].data.clone()),
            (5, 7, vec![0xab, 0xcd])
        );
        let mut sll = write_pcap(&[]);
        sll[20] = 113;
        assert_eq!(parse_pcap(&sll).unwrap_err(), PcapError::LinkType(113));
    }

    #[test]
    fn a_plain_ping_decodes() {
        let f = decode_frame(&ping_in_pod()).unwrap();
        assert_eq!(f.src_mac.unwrap().to_string(), "0e:00:00:00:00:0a");
        assert_eq!(f.dst_mac, Some(Mac(MAC_GW)));
        let ip = f.ip.as_ref().unwrap();
        assert_eq!(ip.ttl, 64);
        assert_eq!(
            describe(ip),
            "10.244.226.2 → 10.244.4.2 ICMP echo request id 7 seq 1"
        );
        assert!(f.vxlan.is_none());
        assert_eq!(f.innermost(), &f);
    }

    #[test]
    fn vxlan_shows_outer_and_inner_headers() {
        let f = decode_frame(&ping_on_uplink()).unwrap();
        let outer = f.ip.as_ref().unwrap();
        assert_eq!(
            describe(outer),
            "192.0.2.11:41000 → 192.0.2.12:8472 UDP length 59"
        );
        let v = f.vxlan.as_ref().unwrap();
        assert_eq!(v.vni, 1);
        assert_eq!(v.inner.src_mac, Some(Mac(VTEP1)));
        let inner = f.innermost().ip.as_ref().unwrap();
        assert_eq!(
            describe(inner),
            "10.244.226.2 → 10.244.4.2 ICMP echo request id 7 seq 1"
        );
        assert_eq!(inner.ttl, 63);
    }

    #[test]
    fn the_udp_backend_shows_outer_udp_and_the_inner_packet_and_a_tun_is_raw_ip() {
        let f = decode_frame(&ping_on_uplink_udp()).unwrap();
        assert_eq!(
            describe(f.ip.as_ref().unwrap()),
            "192.0.2.11:40123 → 192.0.2.12:8285 UDP length 37"
        );
        assert!(f.vxlan.is_none());
        let inner = f.innermost();
        assert_eq!(inner.src_mac, None);
        assert_eq!(
            describe(inner.ip.as_ref().unwrap()),
            "10.244.226.2 → 10.244.4.2 ICMP echo request id 7 seq 1"
        );
        // Another port: looked into only when asked.
        let other = eth(
            ETH2,
            ETH1,
            &ipv4(NODE1, NODE2, 17, 64, &udp(1, 9000, &ping_on_tun())),
        );
        assert!(decode_frame(&other).unwrap().udp_overlay.is_none());
        assert!(decode(LinkType::Ethernet, &other, &[9000])
            .unwrap()
            .udp_overlay
            .is_some());
        // Port 8285 carrying something that is not an IPv4 packet stays plain UDP.
        let junk = eth(
            ETH2,
            ETH1,
            &ipv4(
                NODE1,
                NODE2,
                17,
                64,
                &udp(1, 8285, b"not an ip packet at all"),
            ),
        );
        assert!(decode_frame(&junk).unwrap().udp_overlay.is_none());
        // A TUN capture: LINKTYPE_RAW, bare IP packets.
        let cap = write_pcap_as(
            LINKTYPE_RAW,
            &[Record {
                ts_sec: 1,
                ts_usec: 0,
                data: ping_on_tun(),
            }],
        );
        let p = parse_pcap(&cap).unwrap();
        assert_eq!(p.link, LinkType::Raw);
        let f = decode(p.link, &p.records[0].data, &[]).unwrap();
        assert_eq!(f.innermost(), &f);
        assert_eq!(f.ip.as_ref().unwrap().ttl, 63);
        let mut dlt = cap.clone();
        dlt[20] = 12;
        assert_eq!(parse_pcap(&dlt).unwrap().link, LinkType::Raw);
        assert_eq!(decode(LinkType::Raw, &[0x45, 0], &[]), None);
    }

    #[test]
    fn tcp_and_udp_and_junk() {
        let syn = eth(
            MAC_GW,
            MAC_A,
            &ipv4(POD_A, NODE1, 6, 64, &tcp_syn(40000, 30080)),
        );
        let ip = decode_frame(&syn).unwrap().ip.unwrap();
        assert_eq!(
            describe(&ip),
            "10.244.226.2:40000 → 192.0.2.11:30080 TCP [S]"
        );
        let dgram = eth(
            MAC_GW,
            MAC_A,
            &ipv4(POD_A, NODE1, 17, 64, &udp(5000, 53, b"hi")),
        );
        let ip = decode_frame(&dgram).unwrap().ip.unwrap();
        assert_eq!(
            describe(&ip),
            "10.244.226.2:5000 → 192.0.2.11:53 UDP length 2"
        );
        assert_eq!(decode_frame(&[1, 2, 3]), None);
        // Not IPv4 (ARP): the frame decodes, without an IP layer.
        let mut arp = ping_in_pod();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(decode_frame(&arp).unwrap().ip.is_none());
        // A UDP 8472 packet that is not VXLAN stays plain UDP.
        let fake = eth(
            MAC_GW,
            MAC_A,
            &ipv4(NODE1, NODE2, 17, 64, &udp(1, 8472, &[0; 4])),
        );
        assert!(decode_frame(&fake).unwrap().vxlan.is_none());
        assert_eq!("0a:54:c0:00:02:0b".parse::<Mac>(), Ok(Mac(VTEP1)));
        assert!("0a:54".parse::<Mac>().is_err());
    }
}
