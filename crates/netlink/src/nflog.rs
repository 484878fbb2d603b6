//! NFLOG (nfnetlink_log): packets an nftables `log group N` rule copies to user space.
//! [`decode`] is the pure decoder of one NFULNL_MSG_PACKET (never a panic on any input,
//! fuzzed by scripts/fuzz.sh); [`NflogSocket`] is the thin edge that binds a group and
//! receives them.
//!
//! Wire format (linux/netfilter/nfnetlink_log.h): a netlink message of type
//! `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET`, a 4-byte nfgenmsg (family, version, the
//! group big-endian), then attributes: NFULA_PACKET_HDR (hw protocol, hook), NFULA_MARK,
//! NFULA_IFINDEX_INDEV/OUTDEV, NFULA_PAYLOAD (the packet from its network header),
//! NFULA_PREFIX (the rule's prefix, NUL-terminated), …; integers are big-endian.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::codec::{attrs, messages, MessageBuilder, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};
use crate::Error;

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;

const NFULA_PACKET_HDR: u16 = 1;
const NFULA_MARK: u16 = 2;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;

/// How much of each packet the kernel copies: enough for IPv4 and TCP/UDP headers.
pub const COPY_RANGE: u32 = 128;

/// One logged packet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPacket {
    pub group: u16,
    /// The rule's `log prefix`.
    pub prefix: String,
    /// The netfilter hook (NF_INET_FORWARD is 2).
    pub hook: Option<u8>,
    pub mark: Option<u32>,
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    /// From the IPv4 header, when the payload holds one.
    pub ipv4: Option<Ipv4Summary>,
}

/// The parts of an IPv4 packet a log line shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Summary {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub length: u16,
    /// TCP, UDP or SCTP ports, when the copied payload reaches them.
    pub ports: Option<(u16, u16)>,
}

fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}
fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// The IPv4 header (and ports) of a payload; `None` if it is not IPv4 or is cut short.
pub fn ipv4_summary(p: &[u8]) -> Option<Ipv4Summary> {
    let first = *p.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || p.len() < 20 {
        return None;
    }
    let protocol = p[9];
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let fragment_offset = be16(&p[6..8])? & 0x1fff;
    let ports = match (protocol, fragment_offset) {
        (6 | 17 | 132, 0) => p.get(ihl..ihl + 4).map(|t| {
            (
                u16::from_be_bytes([t[0], t[1]]),
                u16::from_be_bytes([t[2], t[3]]),
            )
        }),
        _ => None,
    };
    Some(Ipv4Summary {
        src,
        dst,
        protocol,
        length: be16(&p[2..4])?,
        ports,
    })
}

/// Decodes one message's payload (after the netlink header) of type `msg_type`; `None`
/// for anything that is not a well-formed NFULNL_MSG_PACKET.
pub fn decode(msg_type: u16, payload: &[u8]) -> Option<LogPacket> {
    if msg_type != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
        return None;
    }
    let group = be16(payload.get(2..4)?)?;
    let mut out = LogPacket {
        group,
        ..LogPacket::default()
    };
    for (kind, data) in attrs(payload.get(4..)?) {
        match kind {
            NFULA_PACKET_HDR => out.hook = data.get(2).copied(),
            NFULA_MARK => out.mark = be32(data),
            NFULA_IFINDEX_INDEV => out.indev = be32(data),
            NFULA_IFINDEX_OUTDEV => out.outdev = be32(data),
            NFULA_PAYLOAD => out.ipv4 = ipv4_summary(data),
            NFULA_PREFIX => {
                let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                out.prefix = String::from_utf8_lossy(&data[..end]).into_owned();
            }
            _ => {}
        }
    }
    Some(out)
}

/// The NFULNL_MSG_CONFIG request that binds `group` and asks for packet copies.
pub fn bind_request(group: u16) -> Vec<Vec<u8>> {
    let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    let g = group.to_be_bytes();
    let mut bind = MessageBuilder::new(ty, NLM_F_REQUEST | NLM_F_ACK);
    bind.header(&[libc::AF_UNSPEC as u8, 0, g[0], g[1]]);
    bind.attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode = MessageBuilder::new(ty, NLM_F_REQUEST | NLM_F_ACK);
    mode.header(&[libc::AF_UNSPEC as u8, 0, g[0], g[1]]);
    let mut m = COPY_RANGE.to_be_bytes().to_vec();
    m.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    mode.attr(NFULA_CFG_MODE, &m);
    vec![bind.build(), mode.build()]
}

/// A NETLINK_NETFILTER socket bound to one NFLOG group (of this process's namespace).
pub struct NflogSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
}

fn io(op: &str, e: std::io::Error) -> Error {
    Error::Io {
        op: op.to_string(),
        source: e,
    }
}

impl NflogSocket {
    /// Binds `group`. Fails (EBUSY) if another process has it.
    pub fn bind(group: u16) -> Result<NflogSocket, Error> {
        // SAFETY: plain socket(2); the descriptor is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io(
                "open an nfnetlink_log socket",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A bigger receive buffer: a burst of logged packets must not overflow it.
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt with a valid int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        let mut s = NflogSocket {
            fd,
            buf: vec![0; 1 << 16],
        };
        for (seq, mut msg) in bind_request(group).into_iter().enumerate() {
            msg[8..12].copy_from_slice(&(seq as u32 + 1).to_ne_bytes());
            s.send(&msg)?;
            s.wait_ack(group)?;
        }
        Ok(s)
    }

    fn send(&self, msg: &[u8]) -> Result<(), Error> {
        // SAFETY: sockaddr_nl zeroed is the kernel's address (pid 0, no groups).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and addr are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io(
                "send an nfnetlink_log request",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn wait_ack(&mut self, group: u16) -> Result<(), Error> {
        loop {
            let n = self.recv_raw(Some(Duration::from_secs(2)))?;
            if n == 0 {
                return Err(io(
                    "bind the NFLOG group",
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from the kernel"),
                ));
            }
            for m in messages(&self.buf[..n]) {
                let m = m?;
                if m.msg_type == NLMSG_ERROR {
                    let code = m
                        .payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(0);
                    if code == 0 {
                        return Ok(());
                    }
                    return Err(io(
                        &format!("bind NFLOG group {group} (is another program reading it?)"),
                        std::io::Error::from_raw_os_error(-code),
                    ));
                }
            }
        }
    }

    /// Waits up to `timeout` for data; the bytes received (0: nothing came).
    fn recv_raw(&mut self, timeout: Option<Duration>) -> Result<usize, Error> {
        if let Some(t) = timeout {
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, t.as_millis().min(60_000) as i32) };
            if r == 0 {
                return Ok(0);
            }
        }
        // SAFETY: buf is writable for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                // The kernel dropped packets for a full buffer: go on (they are lost).
                Some(libc::ENOBUFS) => Ok(0),
                _ => Err(io("receive from nfnetlink_log", e)),
            };
        }
        Ok(n as usize)
    }

    /// The packets that arrive within `timeout` (empty if none).
    pub fn recv(&mut self, timeout: Duration) -> Result<Vec<LogPacket>, Error> {
        let n = self.recv_raw(Some(timeout))?;
        Ok(messages(&self.buf[..n])
            .filter_map(Result::ok)
            .filter_map(|m| decode(m.msg_type, m.payload))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(data);
        buf.resize(buf.len() + (4 - len % 4) % 4, 0);
    }

    fn udp_packet() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 30, 0, 1, 0x40, 0, 64, 17, 0, 0];
        p.extend_from_slice(&[10, 244, 1, 10, 10, 244, 1, 11]);
        p.extend_from_slice(&[0x9c, 0x40, 0, 81, 0, 10, 0, 0, b'h', b'i']);
        p
    }

    #[test]
    fn a_logged_udp_packet_is_read_back() {
        let mut m = vec![2, 0, 0x74, 0x77];
        attr(&mut m, NFULA_PACKET_HDR, &[0x08, 0x00, 2, 0]);
        attr(&mut m, NFULA_MARK, &0x0010_0000u32.to_be_bytes());
        attr(&mut m, NFULA_IFINDEX_INDEV, &7u32.to_be_bytes());
        attr(&mut m, NFULA_PREFIX, b"in g1 rule 0\0");
        attr(&mut m, NFULA_PAYLOAD, &udp_packet());
        let p = decode(4 << 8, &m).unwrap();
        assert_eq!(p.group, 0x7477);
        assert_eq!(p.prefix, "in g1 rule 0");
        assert_eq!(p.hook, Some(2));
        assert_eq!(p.indev, Some(7));
        assert_eq!(p.outdev, None);
        let v4 = p.ipv4.unwrap();
        assert_eq!(v4.src, Ipv4Addr::new(10, 244, 1, 10));
        assert_eq!(v4.dst, Ipv4Addr::new(10, 244, 1, 11));
        assert_eq!(
            (v4.protocol, v4.length, v4.ports),
            (17, 30, Some((40000, 81)))
        );
    }

    #[test]
    fn other_messages_and_garbage_decode_to_nothing_or_partially() {
        assert_eq!(decode((4 << 8) | 1, &[0; 8]), None);
        assert_eq!(decode(4 << 8, &[0; 3]), None);
        // A truncated IPv4 payload: the packet is still reported, without a summary.
        let mut m = vec![2, 0, 0, 1];
        attr(&mut m, NFULA_PAYLOAD, &udp_packet()[..12]);
        assert_eq!(decode(4 << 8, &m).unwrap().ipv4, None);
        // Every prefix of a real message decodes without a panic.
        let mut full = vec![2, 0, 0x74, 0x77];
        attr(&mut full, NFULA_PREFIX, b"x\0");
        attr(&mut full, NFULA_PAYLOAD, &udp_packet());
        for n in 0..full.len() {
            let _ = decode(4 << 8, &full[..n]);
        }
    }

    #[test]
    fn bind_asks_for_the_group_and_packet_copies() {
        let msgs = bind_request(0x7477);
        assert_eq!(msgs.len(), 2);
        assert_eq!(u16::from_ne_bytes([msgs[0][4], msgs[0][5]]), (4 << 8) | 1);
        assert_eq!(msgs[0][18..20], [0x74, 0x77]);
        assert!(msgs[1].windows(6).any(|w| w == [0, 0, 0, 128, 2, 0]));
    }
}
