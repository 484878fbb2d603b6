//! Pure netlink codec: builds request messages and splits/decodes replies. No I/O.
//!
//! Usable for any netlink protocol (NETLINK_ROUTE, NETLINK_NETFILTER, ...): it knows the
//! generic `nlmsghdr`/`nlattr` framing, NLMSG_ERROR/NLMSG_DONE, and the fixed family headers
//! Twill sends. All integers are host order except the `_be` helpers (netfilter uses big
//! endian for many attributes).

use crate::Error;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLA_HDRLEN: usize = 4;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;
pub const NLMSG_MIN_TYPE: u16 = 0x10;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_ECHO: u16 = 0x08;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
/// In NLMSG_ERROR: the original request's payload was left out.
pub const NLM_F_CAPPED: u16 = 0x100;
/// In NLMSG_ERROR/NLMSG_DONE: extended ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
pub const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// Rounds up to the 4-byte netlink alignment.
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Builds one netlink message: header, optional fixed family header, attributes (nested
/// or not). Attribute payloads are padded to 4 bytes; lengths are filled in by
/// [`MessageBuilder::nest_end`] and [`MessageBuilder::build`].
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    open_nests: Vec<usize>,
}

impl MessageBuilder {
    /// A message with seq 0 and pid 0; the socket sets seq when sending.
    pub fn new(msg_type: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        MessageBuilder {
            buf,
            open_nests: Vec::new(),
        }
    }

    /// Appends a fixed family header (ifinfomsg, ifaddrmsg, rtmsg, nfgenmsg), padded to 4.
    pub fn header(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// Appends one attribute. Panics if `data` exceeds the 16-bit attribute length, which
    /// is a bug in the caller, never input from the kernel.
    pub fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(NLA_HDRLEN + data.len())
            .expect("netlink attribute longer than 65531 bytes");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn attr_u8(&mut self, kind: u16, v: u8) -> &mut Self {
        self.attr(kind, &[v])
    }
    pub fn attr_u16(&mut self, kind: u16, v: u16) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }
    pub fn attr_u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }
    pub fn attr_u64(&mut self, kind: u16, v: u64) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }
    pub fn attr_be16(&mut self, kind: u16, v: u16) -> &mut Self {
        self.attr(kind, &v.to_be_bytes())
    }
    pub fn attr_be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_be_bytes())
    }
    pub fn attr_be64(&mut self, kind: u16, v: u64) -> &mut Self {
        self.attr(kind, &v.to_be_bytes())
    }
    /// Writes `v` NUL-terminated, as the kernel expects for names.
    pub fn attr_str(&mut self, kind: u16, v: &str) -> &mut Self {
        let mut data = Vec::with_capacity(v.len() + 1);
        data.extend_from_slice(v.as_bytes());
        data.push(0);
        self.attr(kind, &data)
    }

    /// Opens a nested attribute without NLA_F_NESTED (what rtnetlink's IFLA_LINKINFO uses).
    pub fn nest_begin(&mut self, kind: u16) -> &mut Self {
        self.open_nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self
    }

    /// Opens a nested attribute with NLA_F_NESTED set (nf_tables, bridge IFLA_PROTINFO).
    pub fn nest_begin_flagged(&mut self, kind: u16) -> &mut Self {
        self.nest_begin(kind | NLA_F_NESTED)
    }

    /// Closes the innermost open nest. Panics if none is open (a caller bug).
    pub fn nest_end(&mut self) -> &mut Self {
        let start = self.open_nests.pop().expect("nest_end without nest_begin");
        let len = u16::try_from(self.buf.len() - start)
            .expect("nested netlink attribute longer than 65535 bytes");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Finishes the message with its length filled in. Panics on unclosed nests.
    pub fn build(mut self) -> Vec<u8> {
        assert!(
            self.open_nests.is_empty(),
            "netlink message built with unclosed nested attribute"
        );
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }

    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }
}

/// The header fields of a message in `msg`, if it is long enough: (type, flags, seq).
pub fn header_fields(msg: &[u8]) -> Option<(u16, u16, u32)> {
    if msg.len() < NLMSG_HDRLEN {
        return None;
    }
    Some((ne_u16(&msg[4..6]), ne_u16(&msg[6..8]), ne_u32(&msg[8..12])))
}

/// Overwrites the sequence number of a built message.
pub fn set_seq(msg: &mut [u8], seq: u32) {
    if msg.len() >= NLMSG_HDRLEN {
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    }
}

/// Overwrites the flags of a built message.
pub fn set_flags(msg: &mut [u8], flags: u16) {
    if msg.len() >= NLMSG_HDRLEN {
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    }
}

/// One message of a datagram; `payload` is everything after the 16-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram into messages. Malformed framing yields one `Err` and ends the
/// iteration; it never panics.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Message<'_>, Error>> {
    let mut rest = buf;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || rest.is_empty() {
            return None;
        }
        if rest.len() < NLMSG_HDRLEN {
            failed = true;
            return Some(Err(Error::Malformed(format!(
                "{} trailing bytes, shorter than a message header",
                rest.len()
            ))));
        }
        let len = ne_u32(&rest[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            failed = true;
            return Some(Err(Error::Malformed(format!(
                "message length {len} with {} bytes left",
                rest.len()
            ))));
        }
        let msg = Message {
            msg_type: ne_u16(&rest[4..6]),
            flags: ne_u16(&rest[6..8]),
            seq: ne_u32(&rest[8..12]),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        rest = &rest[align(len).min(rest.len())..];
        Some(Ok(msg))
    })
}

/// Iterates attributes as (type without NLA_F_ flags, payload). Tolerant of garbage: stops
/// at the first bad length.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = ne_u16(&rest[0..2]) as usize;
        if len < NLA_HDRLEN || len > rest.len() {
            rest = &[];
            return None;
        }
        let item = (ne_u16(&rest[2..4]) & NLA_TYPE_MASK, &rest[NLA_HDRLEN..len]);
        rest = &rest[align(len).min(rest.len())..];
        Some(item)
    })
}

/// The payload of the first attribute of type `kind`.
pub fn find_attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

pub fn parse_u8(data: &[u8]) -> Option<u8> {
    data.first().copied()
}
pub fn parse_u16(data: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(data.get(..2)?.try_into().ok()?))
}
pub fn parse_u32(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}
pub fn parse_i32(data: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}
pub fn parse_u64(data: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(data.get(..8)?.try_into().ok()?))
}
pub fn parse_be16(data: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(data.get(..2)?.try_into().ok()?))
}
pub fn parse_be32(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(..4)?.try_into().ok()?))
}
pub fn parse_be64(data: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(..8)?.try_into().ok()?))
}
/// A string attribute up to its first NUL (or its end); None if not UTF-8.
pub fn parse_str(data: &[u8]) -> Option<&str> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    std::str::from_utf8(&data[..end]).ok()
}

/// A decoded NLMSG_ERROR (or the status of an NLMSG_DONE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Positive errno; 0 means success (a plain ack).
    pub errno: i32,
    /// The kernel's extended ack text (NLMSGERR_ATTR_MSG), if any.
    pub ext_ack: Option<String>,
    /// Offset of the offending attribute in the request (NLMSGERR_ATTR_OFFS), if any.
    pub bad_attr_offset: Option<u32>,
    /// Type and seq of the request this answers (from the echoed header; 0 for DONE).
    pub request_type: u16,
    pub request_seq: u32,
}

/// Decodes the payload of an NLMSG_ERROR message.
pub fn parse_error(msg: &Message<'_>) -> Result<Ack, Error> {
    let p = msg.payload;
    let code = parse_i32(p)
        .ok_or_else(|| Error::Malformed("NLMSG_ERROR shorter than its error code".into()))?;
    let echoed = p
        .get(4..4 + NLMSG_HDRLEN)
        .ok_or_else(|| Error::Malformed("NLMSG_ERROR without the request header".into()))?;
    let (request_type, _, request_seq) = header_fields(echoed).unwrap_or_default();
    let echoed_len = if msg.flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        align(ne_u32(&echoed[0..4]) as usize)
    };
    let tlvs = if msg.flags & NLM_F_ACK_TLVS != 0 {
        p.get(4 + echoed_len..).unwrap_or(&[])
    } else {
        &[]
    };
    let (ext_ack, bad_attr_offset) = parse_ext_ack(tlvs);
    Ok(Ack {
        errno: code.saturating_neg(),
        ext_ack,
        bad_attr_offset,
        request_type,
        request_seq,
    })
}

/// Decodes the status of an NLMSG_DONE (an optional error code and extended ack).
pub fn parse_done(msg: &Message<'_>) -> Ack {
    let code = parse_i32(msg.payload).unwrap_or(0);
    let tlvs = if msg.flags & NLM_F_ACK_TLVS != 0 {
        msg.payload.get(4..).unwrap_or(&[])
    } else {
        &[]
    };
    let (ext_ack, bad_attr_offset) = parse_ext_ack(tlvs);
    Ack {
        errno: code.saturating_neg(),
        ext_ack,
        bad_attr_offset,
        request_type: 0,
        request_seq: msg.seq,
    }
}

fn parse_ext_ack(tlvs: &[u8]) -> (Option<String>, Option<u32>) {
    let msg = find_attr(tlvs, NLMSGERR_ATTR_MSG)
        .and_then(parse_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    (msg, find_attr(tlvs, NLMSGERR_ATTR_OFFS).and_then(parse_u32))
}

/// `struct ifinfomsg` (16 bytes): link requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfInfoMsg {
    pub family: u8,
    pub link_type: u16,
    pub index: u32,
    pub flags: u32,
    pub change: u32,
}

impl IfInfoMsg {
    pub const LEN: usize = 16;

    /// The header of a request about link `index`, changing no flags.
    pub fn link(index: u32) -> IfInfoMsg {
        IfInfoMsg {
            index,
            ..IfInfoMsg::default()
        }
    }

    /// A request of type `ty` (RTM_GETLINK, RTM_SETLINK, RTM_DELLINK, ...) with this
    /// header; the caller adds the attributes.
    pub fn request(self, ty: u16) -> MessageBuilder {
        let mut b = MessageBuilder::new(ty, NLM_F_REQUEST);
        b.header(&self.to_bytes());
        b
    }
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.family;
        b[2..4].copy_from_slice(&self.link_type.to_ne_bytes());
        b[4..8].copy_from_slice(&self.index.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.change.to_ne_bytes());
        b
    }
    pub fn parse(b: &[u8]) -> Option<IfInfoMsg> {
        let b = b.get(..16)?;
        Some(IfInfoMsg {
            family: b[0],
            link_type: ne_u16(&b[2..4]),
            index: ne_u32(&b[4..8]),
            flags: ne_u32(&b[8..12]),
            change: ne_u32(&b[12..16]),
        })
    }
}

/// `struct ifaddrmsg` (8 bytes): address requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfAddrMsg {
    pub family: u8,
    pub prefix_len: u8,
    pub flags: u8,
    pub scope: u8,
    pub index: u32,
}

impl IfAddrMsg {
    pub const LEN: usize = 8;
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [
            self.family,
            self.prefix_len,
            self.flags,
            self.scope,
            0,
            0,
            0,
            0,
        ];
        b[4..8].copy_from_slice(&self.index.to_ne_bytes());
        b
    }
    pub fn parse(b: &[u8]) -> Option<IfAddrMsg> {
        let b = b.get(..8)?;
        Some(IfAddrMsg {
            family: b[0],
            prefix_len: b[1],
            flags: b[2],
            scope: b[3],
            index: ne_u32(&b[4..8]),
        })
    }
}

/// `struct rtmsg` (12 bytes): route requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtMsg {
    pub family: u8,
    pub dst_len: u8,
    pub src_len: u8,
    pub tos: u8,
    pub table: u8,
    pub protocol: u8,
    pub scope: u8,
    pub route_type: u8,
    pub flags: u32,
}

impl RtMsg {
    pub const LEN: usize = 12;
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&[
            self.family,
            self.dst_len,
            self.src_len,
            self.tos,
            self.table,
            self.protocol,
            self.scope,
            self.route_type,
        ]);
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }
    pub fn parse(b: &[u8]) -> Option<RtMsg> {
        let b = b.get(..12)?;
        Some(RtMsg {
            family: b[0],
            dst_len: b[1],
            src_len: b[2],
            tos: b[3],
            table: b[4],
            protocol: b[5],
            scope: b[6],
            route_type: b[7],
            flags: ne_u32(&b[8..12]),
        })
    }
}

/// `struct nfgenmsg` (4 bytes) with version NFNETLINK_V0; `res_id` is big endian on the wire.
pub fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let id = res_id.to_be_bytes();
    [family, 0, id[0], id[1]]
}

fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}
fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn builds_getlink_by_name() {
        // RTM_GETLINK(18) REQUEST|ACK, ifinfomsg all zero, IFLA_IFNAME(3) "eth0".
        let mut b = MessageBuilder::new(18, NLM_F_REQUEST | NLM_F_ACK);
        b.header(&IfInfoMsg::default().to_bytes())
            .attr_str(3, "eth0");
        let msg = b.build();
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            44, 0, 0, 0,  18, 0,  5, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            9, 0, 3, 0,  b'e', b't', b'h', b'0',  0, 0, 0, 0,
        ];
        // nlmsg_len counts the padding of the last attribute too.
        assert_eq!(msg, want);
    }

    #[test]
    fn builds_nests_and_scalars() {
        let mut b = MessageBuilder::new(16, NLM_F_REQUEST);
        b.nest_begin(18)
            .attr_str(1, "veth")
            .nest_begin_flagged(2)
            .attr_u8(7, 1)
            .attr_be16(8, 0x1234)
            .nest_end()
            .nest_end();
        b.attr_u32(4, 1500).attr_be32(9, 0x0a000001);
        let msg = b.build();
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            68, 0, 0, 0,  16, 0,  1, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            36, 0, 18, 0,                                  // IFLA_LINKINFO: 4 + 12 + 20
              9, 0, 1, 0,  b'v', b'e', b't', b'h', 0, 0, 0, 0,
              20, 0, 2, 0x80,                             // nested flag set
                5, 0, 7, 0,  1, 0, 0, 0,
                6, 0, 8, 0,  0x12, 0x34, 0, 0,
            8, 0, 4, 0,  0xdc, 0x05, 0, 0,
            8, 0, 9, 0,  10, 0, 0, 1,
        ];
        assert_eq!(msg, want);
        let outer: Vec<_> = attrs(&msg[16..]).collect();
        assert_eq!(outer.len(), 3);
        assert_eq!(outer[0].0, 18);
        let inner: Vec<_> = attrs(outer[0].1).collect();
        assert_eq!(parse_str(inner[0].1), Some("veth"));
        assert_eq!(inner[1].0, 2, "NLA_F_NESTED is masked off");
        assert_eq!(parse_be16(find_attr(inner[1].1, 8).unwrap()), Some(0x1234));
        assert_eq!(parse_u32(outer[1].1), Some(1500));
        assert_eq!(parse_be32(outer[2].1), Some(0x0a000001));
    }

    #[test]
    fn seq_and_flags_are_patched() {
        let mut msg = MessageBuilder::new(20, NLM_F_REQUEST).build();
        set_seq(&mut msg, 0x01020304);
        set_flags(&mut msg, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(header_fields(&msg), Some((20, 5, 0x01020304)));
        assert_eq!(&msg[8..12], &[4, 3, 2, 1]);
    }

    #[test]
    fn splits_datagram_and_decodes_errors() {
        #[rustfmt::skip]
        let datagram: Vec<u8> = vec![
            // NLMSG_ERROR, CAPPED|ACK_TLVS, seq 7: -17 (EEXIST), echoed header, ext ack "boom".
            48, 0, 0, 0,  2, 0,  0x00, 0x03,  7, 0, 0, 0,  0x99, 0, 0, 0,
            0xef, 0xff, 0xff, 0xff,
            40, 0, 0, 0,  16, 0,  0x05, 0x06,  7, 0, 0, 0,  0, 0, 0, 0,
            9, 0, 1, 0,  b'b', b'o', b'o', b'm', 0, 0, 0, 0,
            // NLMSG_ERROR ack, CAPPED, seq 8: 0.
            36, 0, 0, 0,  2, 0,  0x00, 0x01,  8, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0, 0,
            20, 0, 0, 0,  16, 0,  5, 0,  8, 0, 0, 0,  0, 0, 0, 0,
            // NLMSG_DONE, seq 9, status 0.
            20, 0, 0, 0,  3, 0,  2, 0,  9, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
        ];
        let msgs: Vec<_> = messages(&datagram).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 3);
        let e = parse_error(&msgs[0]).unwrap();
        assert_eq!(e.errno, libc::EEXIST);
        assert_eq!(e.ext_ack.as_deref(), Some("boom"));
        assert_eq!((e.request_type, e.request_seq), (16, 7));
        let ack = parse_error(&msgs[1]).unwrap();
        assert_eq!((ack.errno, ack.request_seq, ack.ext_ack), (0, 8, None));
        assert_eq!(msgs[2].msg_type, NLMSG_DONE);
        assert_eq!(parse_done(&msgs[2]).errno, 0);
    }

    #[test]
    fn uncapped_error_skips_echoed_payload() {
        let mut b = MessageBuilder::new(NLMSG_ERROR, NLM_F_ACK_TLVS);
        let request = {
            let mut r = MessageBuilder::new(16, NLM_F_REQUEST);
            r.attr_str(3, "abcdef");
            r.build()
        };
        let mut payload = (-19i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&request);
        b.header(&payload)
            .attr_str(1, "no such device")
            .attr_u32(2, 16);
        let msg = b.build();
        let m = messages(&msg).next().unwrap().unwrap();
        let e = parse_error(&m).unwrap();
        assert_eq!(e.errno, libc::ENODEV);
        assert_eq!(e.ext_ack.as_deref(), Some("no such device"));
        assert_eq!(e.bad_attr_offset, Some(16));
    }

    #[test]
    fn a_link_request_is_its_header_then_the_attributes() {
        // RTM_SETLINK(19) REQUEST, ifinfomsg for link #7, IFLA_MTU(4) 1400.
        let mut b = IfInfoMsg::link(7).request(19);
        b.attr_u32(4, 1400);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            40, 0, 0, 0,  19, 0,  1, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0, 0,  7, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            8, 0, 4, 0,  0x78, 0x05, 0, 0,
        ];
        assert_eq!(b.build(), want);
        let up = IfInfoMsg {
            flags: 1,
            change: 1,
            ..IfInfoMsg::link(7)
        };
        assert_eq!(&up.request(19).build()[16..], &up.to_bytes());
    }

    #[test]
    fn family_headers_round_trip() {
        let i = IfInfoMsg {
            family: 7,
            link_type: 1,
            index: 42,
            flags: 1,
            change: 1,
        };
        assert_eq!(IfInfoMsg::parse(&i.to_bytes()), Some(i));
        assert_eq!(&i.to_bytes()[4..8], &[42, 0, 0, 0]);
        let a = IfAddrMsg {
            family: 2,
            prefix_len: 24,
            flags: 0,
            scope: 0,
            index: 3,
        };
        assert_eq!(a.to_bytes(), [2, 24, 0, 0, 3, 0, 0, 0]);
        assert_eq!(IfAddrMsg::parse(&a.to_bytes()), Some(a));
        let r = RtMsg {
            family: 2,
            dst_len: 16,
            table: 254,
            protocol: 3,
            route_type: 1,
            flags: 4,
            ..Default::default()
        };
        assert_eq!(r.to_bytes(), [2, 16, 0, 0, 254, 3, 0, 1, 4, 0, 0, 0]);
        assert_eq!(RtMsg::parse(&r.to_bytes()), Some(r));
        assert_eq!(nfgenmsg(2, 0x0a0b), [2, 0, 0x0a, 0x0b]);
        assert_eq!(IfInfoMsg::parse(&[0; 15]), None);
    }

    #[test]
    fn bad_framing_is_an_error_not_a_panic() {
        let short = [1u8, 2, 3];
        assert!(matches!(messages(&short).next(), Some(Err(_))));
        // Length beyond the buffer.
        let mut m = MessageBuilder::new(16, 0).build();
        m[0] = 200;
        let all: Vec<_> = messages(&m).collect();
        assert_eq!(all.len(), 1);
        assert!(all[0].is_err());
        // Length below the header size.
        m[0] = 4;
        assert!(messages(&m).next().unwrap().is_err());
        // Attribute with a bad length stops iteration.
        let attrs_buf = [8u8, 0, 1, 0, 1, 0, 0, 0, 99, 0, 2, 0, 0];
        assert_eq!(attrs(&attrs_buf).count(), 1);
        assert_eq!(attrs(&[2u8, 0, 1, 0]).count(), 0);
        assert_eq!(parse_u32(&[1, 2]), None);
        assert_eq!(parse_str(&[0xff, 0xfe]), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let len = (next() % 200) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Half the time, make the first header plausible so the deeper decoders run.
            if round % 2 == 0 && buf.len() >= 20 {
                let l = (buf.len() as u32 - (next() % 4) as u32).to_ne_bytes();
                buf[0..4].copy_from_slice(&l);
                buf[4] = if round % 4 == 0 {
                    NLMSG_ERROR as u8
                } else {
                    NLMSG_DONE as u8
                };
                buf[5] = 0;
            }
            for m in messages(&buf).flatten() {
                let _ = parse_error(&m);
                let _ = parse_done(&m);
                for (_, v) in attrs(m.payload) {
                    let _ = attrs(v).count();
                    let _ = (parse_u32(v), parse_str(v), parse_be16(v));
                }
                let _ = (
                    IfInfoMsg::parse(m.payload),
                    IfAddrMsg::parse(m.payload),
                    RtMsg::parse(m.payload),
                );
            }
            let _ = attrs(&buf).count();
        }
    }
}
