//! Byte builders for the codec tests, written from the RFCs' wire diagrams (the same shapes
//! as RUNBOOK §3's Python peer), so the tests can forge what a real encoder never sends.
#![allow(dead_code)]

use twill_bgp::packet::{self, Family, Message, Negotiated, Notification, Update};

pub const OPEN: u8 = 1;
pub const UPDATE: u8 = 2;
pub const NOTIFICATION: u8 = 3;
pub const KEEPALIVE: u8 = 4;
pub const ROUTE_REFRESH: u8 = 5;

/// A message with a correct header around `body`.
pub fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    msg_len(ty, body, 19 + body.len())
}

/// A message whose header claims `len` (to forge the length).
pub fn msg_len(ty: u8, body: &[u8], len: usize) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// One path attribute; the Extended Length flag (0x10) selects a 2-octet length.
pub fn attr(flags: u8, code: u8, val: &[u8]) -> Vec<u8> {
    attr_len(flags, code, val, val.len())
}

/// One path attribute whose length field says `len`.
pub fn attr_len(flags: u8, code: u8, val: &[u8], len: usize) -> Vec<u8> {
    let mut a = vec![flags, code];
    if flags & 0x10 != 0 {
        a.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        a.push(len as u8);
    }
    a.extend_from_slice(val);
    a
}

pub fn origin(o: u8) -> Vec<u8> {
    attr(0x40, 1, &[o])
}

/// AS_PATH with one AS_SEQUENCE of four-octet ASNs.
pub fn as_path4(asns: &[u32]) -> Vec<u8> {
    let mut v = vec![2, asns.len() as u8];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    attr(0x40, 2, &v)
}

/// AS_PATH with one AS_SEQUENCE of two-octet ASNs.
pub fn as_path2(asns: &[u16]) -> Vec<u8> {
    let mut v = vec![2, asns.len() as u8];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    attr(0x40, 2, &v)
}

pub fn next_hop(nh: [u8; 4]) -> Vec<u8> {
    attr(0x40, 3, &nh)
}

/// ORIGIN IGP, AS_PATH [asn] (four-octet), NEXT_HOP 203.0.113.1: RUNBOOK's `std_attrs`.
pub fn std_attrs(asn: u32) -> Vec<u8> {
    [origin(0), as_path4(&[asn]), next_hop([203, 0, 113, 1])].concat()
}

/// A prefix in NLRI encoding, from "a.b.c.d/len" or an IPv6 "x::/len".
pub fn pfx(p: &str) -> Vec<u8> {
    let net: ipnet::IpNet = p.parse().unwrap();
    let n = (net.prefix_len() as usize).div_ceil(8);
    let mut v = vec![net.prefix_len()];
    match net {
        ipnet::IpNet::V4(a) => v.extend_from_slice(&a.addr().octets()[..n]),
        ipnet::IpNet::V6(a) => v.extend_from_slice(&a.addr().octets()[..n]),
    }
    v
}

pub fn pfxs(ps: &[&str]) -> Vec<u8> {
    ps.iter().flat_map(|p| pfx(p)).collect()
}

/// An UPDATE message: withdrawn prefixes, raw attributes, NLRI prefixes.
pub fn update(withdrawn: &[&str], attrs: &[u8], nlri: &[&str]) -> Vec<u8> {
    update_raw(&pfxs(withdrawn), attrs, &pfxs(nlri), None)
}

/// An UPDATE from raw parts; `tpal` forges the Total Path Attribute Length.
pub fn update_raw(withdrawn: &[u8], attrs: &[u8], nlri: &[u8], tpal: Option<usize>) -> Vec<u8> {
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(tpal.unwrap_or(attrs.len()) as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    msg(UPDATE, &b)
}

/// MP_REACH_NLRI value for `afi`/`safi` with raw next hop and prefixes.
pub fn mp_reach(afi: u16, safi: u8, nh: &[u8], nlri: &[&str]) -> Vec<u8> {
    let mut v = afi.to_be_bytes().to_vec();
    v.push(safi);
    v.push(nh.len() as u8);
    v.extend_from_slice(nh);
    v.push(0);
    v.extend_from_slice(&pfxs(nlri));
    attr(0x90, 14, &v)
}

pub fn mp_unreach(afi: u16, safi: u8, withdrawn: &[&str]) -> Vec<u8> {
    let mut v = afi.to_be_bytes().to_vec();
    v.push(safi);
    v.extend_from_slice(&pfxs(withdrawn));
    attr(0x90, 15, &v)
}

pub fn v6(a: &str) -> [u8; 16] {
    a.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// An eBGP session with four-octet ASNs and both unicast families.
pub fn ebgp4() -> Negotiated {
    Negotiated {
        four_octet_as: true,
        families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
        ibgp: false,
    }
}

/// An iBGP session with four-octet ASNs and both unicast families.
pub fn ibgp4() -> Negotiated {
    Negotiated {
        ibgp: true,
        ..ebgp4()
    }
}

/// An eBGP session with an OLD (two-octet) peer, IPv4 unicast only.
pub fn ebgp2() -> Negotiated {
    Negotiated::default()
}

/// Decodes a message that must be an UPDATE.
pub fn decode_update(m: &[u8], neg: &Negotiated) -> Result<Update, Notification> {
    assert_eq!(packet::frame(m), Ok(Some(m.len())), "framing {m:02x?}");
    match packet::decode(m, neg)? {
        Message::Update(u) => Ok(*u),
        other => panic!("not an UPDATE: {other:?}"),
    }
}

pub fn net(p: &str) -> ipnet::IpNet {
    p.parse().unwrap()
}

pub fn net4(p: &str) -> ipnet::Ipv4Net {
    p.parse().unwrap()
}

/// Encodes one message and returns the bytes.
pub fn encoded(m: &Message, neg: &Negotiated) -> Vec<u8> {
    let mut out = Vec::new();
    packet::encode(m, neg, &mut out).unwrap();
    out
}

/// Encodes then decodes, asserting the bytes frame as one message.
pub fn round_trip(m: &Message, neg: &Negotiated) -> Message {
    let bytes = encoded(m, neg);
    assert_eq!(packet::frame(&bytes), Ok(Some(bytes.len())));
    packet::decode(&bytes, neg).unwrap_or_else(|n| panic!("{n}: {bytes:02x?}"))
}
