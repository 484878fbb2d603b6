//! The I/O edge: one UDP socket on port 520 of one interface (the node's uplink).
//!
//! - Bound to 0.0.0.0:520 (a socket bound to the node IP would not hear 224.0.0.9) and to
//!   the interface (`SO_BINDTODEVICE`), so only that segment's packets arrive.
//! - Member of 224.0.0.9 on that interface (`IP_ADD_MEMBERSHIP` with its index).
//! - Multicast leaves through that interface from the node IP (`IP_MULTICAST_IF` with both),
//!   with TTL 1 (RIP neighbours are one hop away) and no loopback (`IP_MULTICAST_LOOP` 0:
//!   our own updates do not come back; the router ignores its own address anyway).
//! - `IP_TOS` 0xc0 (internetwork control), as FRR's ripd and BIRD send routing traffic.
//! - Unicast answers (to requests) take the kernel's source for the requester: on the
//!   segment, the interface's primary address.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::packet::{decode, DecodeError, Decoded, Message, GROUP, MAX_LEN, PORT};
use crate::router::Destination;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("interface {0:?} does not exist: RIP needs the node's uplink")]
    NoInterface(String),
    #[error("RIP socket on {interface}: {what}: {source}; is another RIP daemon (ripd, bird) using port 520 here?")]
    Socket {
        interface: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What one read brought.
#[derive(Debug)]
pub struct Received {
    pub from: SocketAddrV4,
    /// The message, or why it was refused.
    pub message: Result<Decoded, DecodeError>,
}

#[derive(Debug)]
pub struct Socket {
    udp: UdpSocket,
    interface: String,
    address: Ipv4Addr,
}

impl Socket {
    /// A RIP socket on `interface`, sending from `address` (the node IP on it).
    pub fn open(interface: &str, address: Ipv4Addr) -> Result<Socket, OpenError> {
        let fail = |what: &'static str| {
            move |source: io::Error| OpenError::Socket {
                interface: interface.to_string(),
                what,
                source,
            }
        };
        let name = std::ffi::CString::new(interface)
            .map_err(|_| OpenError::NoInterface(interface.to_string()))?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(OpenError::NoInterface(interface.to_string()));
        }
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::IPPROTO_UDP,
            )
        };
        if fd < 0 {
            return Err(fail("socket")(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32)
            .map_err(fail("SO_REUSEADDR"))?;
        set_bytes(
            raw,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_bytes_with_nul(),
        )
        .map_err(fail("SO_BINDTODEVICE"))?;
        let mreq = libc::ip_mreqn {
            imr_multiaddr: in_addr(GROUP),
            imr_address: in_addr(address),
            imr_ifindex: ifindex as i32,
        };
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreq)
            .map_err(fail("IP_MULTICAST_IF"))?;
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, &1i32)
            .map_err(fail("IP_MULTICAST_TTL"))?;
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, &0i32)
            .map_err(fail("IP_MULTICAST_LOOP"))?;
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_TOS, &0xc0i32).map_err(fail("IP_TOS"))?;
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: PORT.to_be(),
            sin_addr: in_addr(Ipv4Addr::UNSPECIFIED),
            sin_zero: [0; 8],
        };
        // SAFETY: a valid sockaddr_in and its size.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(fail("bind 0.0.0.0:520")(io::Error::last_os_error()));
        }
        // After bind: membership on this interface only.
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreq)
            .map_err(fail("IP_ADD_MEMBERSHIP 224.0.0.9"))?;
        Ok(Socket {
            udp: UdpSocket::from(fd),
            interface: interface.to_string(),
            address,
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// A second handle on the same socket (one thread reads, another sends).
    pub fn try_clone(&self) -> io::Result<Socket> {
        Ok(Socket {
            udp: self.udp.try_clone()?,
            interface: self.interface.clone(),
            address: self.address,
        })
    }

    pub fn send(&self, to: Destination, message: &Message) -> io::Result<()> {
        let dst = match to {
            Destination::Multicast => SocketAddrV4::new(GROUP, PORT),
            Destination::Unicast(a) => a,
        };
        self.udp.send_to(&message.encode(), dst).map(|_| ())
    }

    /// Waits up to `timeout` for a message; `None` when none came. Our own packets (if the
    /// kernel loops one back anyway) are skipped.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Received>> {
        self.udp
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; MAX_LEN + 1];
        loop {
            let (n, from) = match self.udp.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let SocketAddr::V4(from) = from else { continue };
            if *from.ip() == self.address {
                continue;
            }
            // A datagram longer than the largest message is cut at MAX_LEN + 1 octets and
            // refused by decode as a bad length or too many entries.
            return Ok(Some(Received {
                from,
                message: decode(&buf[..n]),
            }));
        }
    }
}

fn in_addr(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from(a).to_be(),
    }
}

fn setsockopt<T>(fd: i32, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a T of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_bytes(fd: i32, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is a live slice of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
