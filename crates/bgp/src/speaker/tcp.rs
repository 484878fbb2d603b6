//! TCP for BGP sessions: a nonblocking listener and nonblocking connects, TCP_NODELAY on,
//! and RFC 2385 MD5 signatures per peer (TCP_MD5SIG, linux/tcp.h).
//!
//! RFC 2385 §2: "Every segment sent on a TCP connection to be protected against spoofing
//! will contain the 16-byte MD5 digest". Linux keeps the keys per socket and per peer
//! address: on the listening socket (an accepted connection inherits them, so the SYN is
//! already checked) and on a connecting socket before connect (so the SYN is signed). A
//! segment without the right digest is dropped by the kernel and counted
//! (TcpExtTCPMD5Failure, TcpExtTCPMD5NotFound in /proc/net/netstat); the speaker never
//! sees the connection. A key that cannot be set fails the peer closed: the caller gets the
//! error and must not connect, and no session can start.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// linux/tcp.h `TCP_MD5SIG_MAXKEYLEN`: the longest key the kernel takes.
pub const MD5_MAX_KEY_LEN: usize = libc::TCP_MD5SIG_MAXKEYLEN;

/// linux/tcp.h `struct tcp_md5sig`.
#[repr(C)]
struct TcpMd5Sig {
    /// `struct __kernel_sockaddr_storage tcpm_addr`: the peer.
    addr: libc::sockaddr_storage,
    /// `tcpm_flags` (TCP_MD5SIG_FLAG_PREFIX / _IFINDEX; unused: 0).
    flags: u8,
    prefix_len: u8,
    /// `tcpm_keylen`: 0 deletes the key for `addr`.
    key_len: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY_LEN],
}

/// A socket address as the kernel takes it.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Sets (or with an empty `key`, removes) the MD5 key for `peer` on socket `fd`, whose
/// address family is `family`. An IPv4 peer on an IPv6 socket is keyed as its v4-mapped
/// address, the form the kernel sees its segments in.
pub fn set_md5(fd: RawFd, family: libc::c_int, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "MD5 key of {} bytes: the kernel takes at most {MD5_MAX_KEY_LEN}",
                key.len()
            ),
        ));
    }
    let peer = match (family, peer) {
        (libc::AF_INET6, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => peer,
    };
    let mut sig = TcpMd5Sig {
        addr: sockaddr(SocketAddr::new(peer, 0)).0,
        flags: 0,
        prefix_len: 0,
        key_len: key.len() as u16,
        ifindex: 0,
        key: [0; MD5_MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: sig is a live tcp_md5sig and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const TcpMd5Sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn new_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: v is a live c_int and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn family_of(ip: IpAddr) -> libc::c_int {
    match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

fn bind(fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss holds a valid sockaddr of length len.
    if unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A failure to open a socket, naming what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct TcpError {
    pub what: String,
    pub cause: io::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TcpError {
    let what = what.into();
    move |cause| TcpError { what, cause }
}

/// The nonblocking listening socket on `addr`, with an MD5 key for each peer in `keys`
/// (set before listen, so no SYN gets through unchecked). An IPv6 wildcard listener takes
/// IPv4 connections too.
pub fn listen(addr: SocketAddr, keys: &[(IpAddr, &[u8])]) -> Result<TcpListener, TcpError> {
    let family = family_of(addr.ip());
    let fd = new_socket(family).map_err(err("open the listening socket"))?;
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .map_err(err("set SO_REUSEADDR"))?;
    for (peer, key) in keys {
        set_md5(fd.as_raw_fd(), family, *peer, key).map_err(err(format!(
            "set the TCP MD5 key for peer {peer} on the listening socket"
        )))?;
    }
    bind(fd.as_raw_fd(), addr).map_err(err(format!(
        "bind {addr} (is another BGP speaker listening there? choose another port with listen.port)"
    )))?;
    // SAFETY: fd is a bound stream socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 64) } != 0 {
        return Err(err(format!("listen on {addr}"))(io::Error::last_os_error()));
    }
    Ok(TcpListener::from(fd))
}

/// Starts a nonblocking connect to `peer`: TCP_NODELAY on, bound to `local` if given, the
/// MD5 `key` set first (an error there fails closed: no connect is made). The stream is
/// returned at once; it is connected when it turns writable and [`finish_connect`] says so.
pub fn connect(
    peer: SocketAddr,
    local: Option<IpAddr>,
    key: Option<&[u8]>,
) -> Result<TcpStream, TcpError> {
    let family = family_of(peer.ip());
    let fd = new_socket(family).map_err(err(format!("open a socket to {peer}")))?;
    if let Some(key) = key {
        set_md5(fd.as_raw_fd(), family, peer.ip(), key).map_err(err(format!(
            "set the TCP MD5 key for peer {} (kernel without TCP_MD5SIG?); the peer stays down",
            peer.ip()
        )))?;
    }
    setsockopt_int(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
        .map_err(err("set TCP_NODELAY"))?;
    if let Some(local) = local {
        bind(fd.as_raw_fd(), SocketAddr::new(local, 0)).map_err(err(format!(
            "bind {local} to connect to {peer} (is it an address of this host?)"
        )))?;
    }
    let (ss, len) = sockaddr(peer);
    // SAFETY: ss holds a valid sockaddr of length len.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err(format!("connect to {peer}"))(e));
        }
    }
    Ok(TcpStream::from(fd))
}

/// After a connecting stream turned writable: Ok if it is connected, else why not.
pub fn finish_connect(stream: &TcpStream) -> io::Result<()> {
    match stream.take_error()? {
        Some(e) => Err(e),
        None => stream.peer_addr().map(drop),
    }
}

/// Prepares an accepted connection: nonblocking, TCP_NODELAY.
pub fn accepted(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)
}

/// The unspecified address of `ip`'s family.
pub fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// The kernel's TCP MD5 counters of the calling thread's network namespace
/// (/proc/net/netstat TcpExt: TCPMD5NotFound, TCPMD5Unexpected, TCPMD5Failure): segments
/// dropped for a missing, unexpected or wrong signature. Namespace-wide: Linux keeps no
/// per-peer count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Md5Counters {
    pub not_found: u64,
    pub unexpected: u64,
    pub failure: u64,
}

impl Md5Counters {
    /// Parses the text of /proc/net/netstat (pairs of header and value lines). Pure.
    pub fn parse(netstat: &str) -> Md5Counters {
        let mut c = Md5Counters::default();
        let lines: Vec<&str> = netstat.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            if !names.starts_with("TcpExt:") {
                continue;
            }
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                let v = v.parse().unwrap_or(0);
                match n {
                    "TCPMD5NotFound" => c.not_found = v,
                    "TCPMD5Unexpected" => c.unexpected = v,
                    "TCPMD5Failure" => c.failure = v,
                    _ => {}
                }
            }
        }
        c
    }

    /// Reads them for the current namespace; zero if /proc is not there.
    pub fn read() -> Md5Counters {
        std::fs::read_to_string("/proc/thread-self/net/netstat")
            .map(|s| Md5Counters::parse(&s))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5sig_has_the_kernel_layout() {
        // 128 (sockaddr_storage) + 1 + 1 + 2 + 4 + 80.
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[test]
    fn netstat_md5_counters() {
        let text = "TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure\n\
                    TcpExt: 0 3 1 7\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            Md5Counters::parse(text),
            Md5Counters {
                not_found: 3,
                unexpected: 1,
                failure: 7
            }
        );
    }

    #[test]
    fn too_long_a_key_is_refused_before_the_kernel() {
        let e = set_md5(-1, libc::AF_INET, "192.0.2.1".parse().unwrap(), &[b'k'; 81]).unwrap_err();
        assert!(e.to_string().contains("at most 80"), "{e}");
    }
}
