//! `AF_UNIX SOCK_SEQPACKET` I/O for the control socket (server.rs and client.rs): message
//! boundaries (one `ctl` message per packet), `SCM_RIGHTS` for handing fds over, and
//! `SO_PEERCRED` for the root-only check. std has no seqpacket sockets, so this is libc.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// The largest control message taken (a 5,000-peer table is ~60 KB; stats ~220 KB).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Socket buffers: a message must fit the sender's buffer whole.
const BUFFER: libc::c_int = 8 << 20;
/// The most fds one message carries (256 TUN queues + 256 sockets).
pub const MAX_FDS: usize = 512;

fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_os_str().as_bytes();
    if b.is_empty() || b.len() >= sa.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} must be 1 to {} bytes",
                path.display(),
                sa.sun_path.len() - 1
            ),
        ));
    }
    for (d, s) in sa.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + b.len() + 1;
    Ok((sa, len as libc::socklen_t))
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        if crate::udp::setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, force, BUFFER).is_err() {
            let _ = crate::udp::setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, plain, BUFFER);
        }
    }
    Ok(fd)
}

/// Connects to the socket at `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let (sa, len) = sockaddr_un(path)?;
    let fd = socket()?;
    // SAFETY: sa is a valid sockaddr_un of length len.
    if unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_un).cast(),
            len,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Listens at `path` (mode 0600). A stale socket file (nobody accepts on it) is replaced; a
/// live one is refused with `AddrInUse`, so two datapaths never share a control socket.
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    let (sa, len) = sockaddr_un(path)?;
    if path.exists() {
        match connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process serves this control socket",
                ))
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let fd = socket()?;
    // SAFETY: sa is a valid sockaddr_un of length len.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_un).cast(),
            len,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: chmod of a NUL-terminated path.
    unsafe { libc::chmod(c.as_ptr(), 0o600) };
    // SAFETY: listen on a bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Accepts one connection (blocking).
pub fn accept(fd: RawFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: accept4 with no address wanted.
        let raw = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if raw >= 0 {
            // SAFETY: a fresh fd.
            return Ok(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The connected peer's (pid, uid), from `SO_PEERCRED`.
pub fn peer_cred(fd: RawFd) -> io::Result<(u32, u32)> {
    // SAFETY: an all-zero ucred is valid.
    let mut c: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((c.pid as u32, c.uid))
}

/// Sets the send and receive timeouts (`None`: block forever).
pub fn set_timeout(fd: RawFd, t: Option<Duration>) -> io::Result<()> {
    let tv = match t {
        Some(t) => libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros().max(if t.is_zero() { 0 } else { 1 }) as libc::suseconds_t,
        },
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: a timeval option.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends one message, with `fds` as `SCM_RIGHTS` (the receiver gets its own dups).
pub fn send(fd: RawFd, msg: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    // SAFETY: zeroed msghdr is valid; the pointers set below live across the call.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_iov = &mut iov;
    h.msg_iovlen = 1;
    let bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    if !fds.is_empty() {
        h.msg_control = cbuf.as_mut_ptr().cast();
        h.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE(bytes) long and 8-aligned.
        unsafe {
            let cm = libc::CMSG_FIRSTHDR(&h);
            (*cm).cmsg_level = libc::SOL_SOCKET;
            (*cm).cmsg_type = libc::SCM_RIGHTS;
            (*cm).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cm).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: h is fully built.
        let r = unsafe { libc::sendmsg(fd, &h, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message and the fds it carries. `Ok(None)` at EOF (the peer closed).
pub fn recv(fd: RawFd) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    // Peek the length first (MSG_TRUNC returns the real size), then read it whole.
    let want = loop {
        // SAFETY: a zero-length peek.
        let r = unsafe {
            libc::recv(
                fd,
                std::ptr::null_mut(),
                0,
                libc::MSG_PEEK | libc::MSG_TRUNC,
            )
        };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if want > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a control message of {want} bytes (at most {MAX_MESSAGE})"),
        ));
    }
    let mut buf = vec![0u8; want.max(1)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is arithmetic.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: zeroed msghdr is valid; pointers set below live across the call.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_iov = &mut iov;
    h.msg_iovlen = 1;
    h.msg_control = cbuf.as_mut_ptr().cast();
    h.msg_controllen = space as _;
    let n = loop {
        // SAFETY: h is fully built.
        let r = unsafe { libc::recvmsg(fd, &mut h, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control data the kernel wrote; each SCM_RIGHTS fd is ours now.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(&h);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cm);
                let count = ((*cm).cmsg_len as usize - (data as usize - cm as usize))
                    / std::mem::size_of::<RawFd>();
                for k in 0..count {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(k));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cm = libc::CMSG_NXTHDR(&h, cm);
        }
    }
    if n == 0 && want == 0 {
        // A zero-length read on SEQPACKET is EOF (no ctl message is empty).
        return Ok(None);
    }
    if h.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many fds in one message",
        ));
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_boundaries_and_carry_fds() {
        let dir = std::env::temp_dir().join(format!("twlsp{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let l = listen(&path).unwrap();
        let c = connect(&path).unwrap();
        let s = accept(l.as_raw_fd()).unwrap();
        // A live socket is refused (its probe connection is accepted and dropped here).
        let again = listen(&path).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
        drop(accept(l.as_raw_fd()).unwrap());
        assert_eq!(peer_cred(s.as_raw_fd()).unwrap().0, std::process::id());
        let big = vec![7u8; 300_000];
        send(c.as_raw_fd(), b"one", &[]).unwrap();
        send(c.as_raw_fd(), &big, &[c.as_raw_fd(), l.as_raw_fd()]).unwrap();
        let (m, f) = recv(s.as_raw_fd()).unwrap().unwrap();
        assert_eq!((m.as_slice(), f.len()), (&b"one"[..], 0));
        let (m, f) = recv(s.as_raw_fd()).unwrap().unwrap();
        assert_eq!((m.len(), f.len()), (300_000, 2));
        drop(f); // a dup of c: EOF comes only when every copy is closed
        drop(c);
        assert!(recv(s.as_raw_fd()).unwrap().is_none(), "EOF");
        drop((l, s));
        // A stale file (nobody listening) is replaced.
        let l = listen(&path).unwrap();
        drop(l);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
