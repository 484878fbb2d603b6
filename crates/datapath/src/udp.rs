//! The UDP edge: sockets and batched syscalls.
//!
//! - [`bind_rx`]: the receive socket on `:port` (8285 by default), one per worker in an
//!   `SO_REUSEPORT` group, buffers forced to 4 MiB (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`, root;
//!   falling back to the capped `SO_RCVBUF`/`SO_SNDBUF`).
//! - [`bind_tx`]: a worker's send socket on an ephemeral port: different source ports let the
//!   receiver's reuseport hash spread the workers' flows, each flow on one worker.
//! - [`SendBatch`]: slots written in place (a TUN read lands straight in its slot), sent with
//!   one `sendmmsg`; a slot may carry a `UDP_SEGMENT` cmsg (GSO: one message, many datagrams).
//! - [`GatherBatch`]: the offload path's batch: TUN frames stay where they were read, the
//!   segment headers in their own arena, and each message gathers them with iovecs (one
//!   copy, the kernel's); a refused GSO send falls back to one datagram per segment.
//! - [`RecvBatch`]: one `recvmmsg` into slots of 64 KiB, with the `UDP_GRO` cmsg decoded (a GRO
//!   read is several datagrams back to back, each `gro_size` long but the last).
//!
//! The payload is the bare inner IPv4 packet (flannel's wire format): nothing is added here.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Socket buffers asked for (forced as root).
pub const SOCKET_BUFFER: usize = 4 << 20;
/// The largest UDP payload over IPv4.
pub const MAX_PAYLOAD: usize = 65_507;
/// A receive slot holds the largest datagram, or a whole GRO read (≤ 64 KiB).
pub const RECV_SLOT: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error(
        "cannot create a UDP socket: {0}; is the process out of file descriptors (ulimit -n)?"
    )]
    Socket(#[source] io::Error),
    #[error("setsockopt {what} on the UDP socket failed: {source}; {hint}")]
    Option {
        what: &'static str,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot bind UDP {addr}: {source}; {hint}")]
    Bind {
        addr: SocketAddrV4,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error(
        "fd {fd} is not this datapath's UDP socket on port {port}: {why}; pass the fds that \
         HelloAck handed out, in its order (the UDP sockets after the TUN queues)"
    )]
    NotOurs { fd: RawFd, port: u16, why: String },
}

fn socket() -> Result<OwnedFd, UdpError> {
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(UdpError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option, passed by pointer with its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(crate) fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int option, read into v.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

/// Sets both buffers to [`SOCKET_BUFFER`]: forced (root, past net.core.[rw]mem_max), else capped.
fn set_buffers(fd: RawFd) -> Result<(), UdpError> {
    for (force, plain, what) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF"),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF"),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER as i32).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER as i32).map_err(
                |source| UdpError::Option {
                    what,
                    source,
                    hint: "the kernel refused even the capped size",
                },
            )?;
        }
    }
    Ok(())
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

fn bind(fd: RawFd, addr: SocketAddrV4) -> Result<(), UdpError> {
    let sa = sockaddr(addr);
    // SAFETY: sa is a valid sockaddr_in of the size given.
    let r = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let source = io::Error::last_os_error();
        let hint = match source.raw_os_error() {
            Some(libc::EADDRINUSE) => {
                "another process holds this port without SO_REUSEPORT (a flanneld, or another \
                 datapath of another user): stop it or pick another --port"
            }
            Some(libc::EADDRNOTAVAIL) => {
                "--bind must be an address of this node (in this network namespace)"
            }
            Some(libc::EACCES) => "ports below 1024 need root",
            _ => "check --bind and --port",
        };
        return Err(UdpError::Bind { addr, source, hint });
    }
    Ok(())
}

/// The address a socket is bound to.
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddrV4> {
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockname writes at most len bytes into sa.
    if unsafe { libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if sa.sin_family != libc::AF_INET as libc::sa_family_t {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an IPv4 socket",
        ));
    }
    Ok(from_sockaddr(&sa))
}

/// A receive socket on `bind:port` in the port's `SO_REUSEPORT` group.
pub fn bind_rx(bind_ip: Ipv4Addr, port: u16) -> Result<OwnedFd, UdpError> {
    let fd = socket()?;
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(|source| {
        UdpError::Option {
            what: "SO_REUSEPORT",
            source,
            hint: "the kernel needs SO_REUSEPORT (3.9 or later)",
        }
    })?;
    set_buffers(fd.as_raw_fd())?;
    bind(fd.as_raw_fd(), SocketAddrV4::new(bind_ip, port))?;
    Ok(fd)
}

/// A send socket on `bind:0` (an ephemeral port).
pub fn bind_tx(bind_ip: Ipv4Addr) -> Result<OwnedFd, UdpError> {
    let fd = socket()?;
    set_buffers(fd.as_raw_fd())?;
    bind(fd.as_raw_fd(), SocketAddrV4::new(bind_ip, 0))?;
    Ok(fd)
}

/// Adopts an inherited receive socket: a bound IPv4 datagram socket on `port`. It is made
/// non-blocking and close-on-exec.
pub fn adopt_rx(fd: OwnedFd, port: u16) -> Result<OwnedFd, UdpError> {
    let raw = fd.as_raw_fd();
    let not_ours = |why: String| UdpError::NotOurs { fd: raw, port, why };
    let ty = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_TYPE)
        .map_err(|e| not_ours(format!("SO_TYPE: {e}")))?;
    if ty != libc::SOCK_DGRAM {
        return Err(not_ours(format!("socket type {ty}, not SOCK_DGRAM")));
    }
    let addr = local_addr(raw).map_err(|e| not_ours(format!("getsockname: {e}")))?;
    if addr.port() != port {
        return Err(not_ours(format!("it is bound to {addr}")));
    }
    crate::tun::set_nonblock_cloexec(raw).map_err(|e| not_ours(format!("fcntl: {e}")))?;
    Ok(fd)
}

/// What one slot of a [`SendBatch`] carries besides its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotMeta {
    /// The caller's tag (the worker: the peer's index).
    pub tag: u32,
    /// `UDP_SEGMENT` size, 0 for one plain datagram.
    pub segment: u16,
    /// How many inner packets the slot carries (1 unless segmented).
    pub packets: u16,
}

/// What happened to one message in [`SendBatch::send`] or [`GatherBatch::send`].
#[derive(Debug)]
pub enum Sent {
    Ok,
    /// A GSO message the kernel refused went as one datagram per segment ([`GatherBatch`]).
    Segmented,
    /// The kernel refused this message (the worker counts it and moves on).
    Failed(io::Error),
}

/// Slots of `slot_size` bytes, filled in place and sent with `sendmmsg`.
pub struct SendBatch {
    buf: Vec<u8>,
    slot_size: usize,
    lens: Vec<usize>,
    dsts: Vec<libc::sockaddr_in>,
    metas: Vec<SlotMeta>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    cmsgs: Vec<u8>,
    filled: usize,
    sent: usize,
}

const CMSG_U16: usize = 24; // CMSG_SPACE(sizeof(u16)) on 64-bit Linux, rounded up

// SAFETY: the raw pointers in iovs/msgs only ever point into this struct's own buffers and are
// rebuilt before each use.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new(slots: usize, slot_size: usize) -> SendBatch {
        // SAFETY: all-zero sockaddr_in, iovec and mmsghdr are valid values.
        let zero_sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        SendBatch {
            buf: vec![0; slots * slot_size],
            slot_size,
            lens: vec![0; slots],
            dsts: vec![zero_sa; slots],
            metas: vec![SlotMeta::default(); slots],
            iovs: (0..slots)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            msgs: (0..slots).map(|_| unsafe { std::mem::zeroed() }).collect(),
            cmsgs: vec![0; slots * CMSG_U16],
            filled: 0,
            sent: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Slots filled and not sent yet.
    pub fn pending(&self) -> usize {
        self.filled - self.sent
    }

    pub fn is_full(&self) -> bool {
        self.filled == self.capacity()
    }

    /// The next free slot's buffer. Panics when full (check [`SendBatch::is_full`]).
    pub fn slot(&mut self) -> &mut [u8] {
        assert!(!self.is_full(), "SendBatch::slot on a full batch");
        let at = self.filled * self.slot_size;
        &mut self.buf[at..at + self.slot_size]
    }

    /// Commits the next slot: its first `len` bytes go to `dst`.
    pub fn commit(&mut self, len: usize, dst: SocketAddrV4, meta: SlotMeta) {
        assert!(len <= self.slot_size && !self.is_full());
        let i = self.filled;
        self.lens[i] = len;
        self.dsts[i] = sockaddr(dst);
        self.metas[i] = meta;
        self.filled += 1;
    }

    /// Sends what is pending with `sendmmsg`, calling `done` for each slot that left or was
    /// refused. Returns `Err(WouldBlock)` when the socket buffer is full: the rest stays
    /// pending (wait for POLLOUT and call again). Any other error is per message: it is
    /// reported through `done` and the batch moves on. When all is sent the batch is empty.
    pub fn send(
        &mut self,
        fd: RawFd,
        mut done: impl FnMut(SlotMeta, usize, Sent),
    ) -> io::Result<()> {
        for i in self.sent..self.filled {
            self.iovs[i] = libc::iovec {
                iov_base: self.buf[i * self.slot_size..].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            };
            let mut h = msghdr(&mut self.dsts[i], &mut self.iovs[i..i + 1]);
            set_segment(
                &mut h,
                &mut self.cmsgs[i * CMSG_U16..(i + 1) * CMSG_U16],
                self.metas[i].segment,
            );
            self.msgs[i] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        let (metas, lens) = (&self.metas, &self.lens);
        sendmmsg_pending(fd, &mut self.msgs[..self.filled], &mut self.sent, |i, r| {
            done(
                metas[i],
                lens[i],
                r.map_or_else(Sent::Failed, |()| Sent::Ok),
            )
        })?;
        self.filled = 0;
        self.sent = 0;
        Ok(())
    }
}

/// A message to `dst` of the iovecs `iovs` (pointers into the caller's buffers, which must
/// stay put until the send).
fn msghdr(dst: &mut libc::sockaddr_in, iovs: &mut [libc::iovec]) -> libc::msghdr {
    // SAFETY: all-zero msghdr is valid; the pointers set are into the caller's buffers.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_name = (dst as *mut libc::sockaddr_in).cast();
    h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    h.msg_iov = iovs.as_mut_ptr();
    h.msg_iovlen = iovs.len();
    h
}

/// Adds the `UDP_SEGMENT = segment` cmsg to `h`, in `control` (CMSG_U16 bytes); nothing for 0.
fn set_segment(h: &mut libc::msghdr, control: &mut [u8], segment: u16) {
    if segment == 0 {
        return;
    }
    assert!(control.len() >= CMSG_U16);
    h.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_* on a control buffer of CMSG_U16 ≥ CMSG_SPACE(2) bytes.
    unsafe {
        h.msg_controllen = libc::CMSG_SPACE(2) as _;
        let cm = libc::CMSG_FIRSTHDR(h);
        (*cm).cmsg_level = libc::SOL_UDP;
        (*cm).cmsg_type = libc::UDP_SEGMENT;
        (*cm).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), segment);
    }
}

/// The `sendmmsg` loop both batches share: sends `msgs[*sent..]` (built by the caller) until
/// all went, calling `done(i, Ok(()))` for each message that left. EINTR is retried.
/// `Err(WouldBlock)` when the socket buffer is full: `*sent` says how far it got, the rest
/// stays (call again after POLLOUT). Any other error belongs to the first pending message:
/// `done(i, Err(e))`, and the loop goes on after it (what to do with a refused message, such
/// as sending it again another way, is `done`'s choice).
fn sendmmsg_pending(
    fd: RawFd,
    msgs: &mut [libc::mmsghdr],
    sent: &mut usize,
    mut done: impl FnMut(usize, io::Result<()>),
) -> io::Result<()> {
    while *sent < msgs.len() {
        let n = msgs.len() - *sent;
        // SAFETY: msgs[sent..] are whole messages pointing into buffers the caller owns.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                msgs[*sent..].as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Err(e),
                io::ErrorKind::Interrupted => continue,
                _ => {
                    done(*sent, Err(e));
                    *sent += 1;
                }
            }
        } else {
            for i in *sent..*sent + r as usize {
                done(i, Ok(()));
            }
            *sent += r as usize;
        }
    }
    Ok(())
}

/// One `sendmmsg` of messages gathered from two arenas it owns, so a TUN frame is never
/// copied in userspace (the offload path):
/// - **reads**: one slot per TUN read (`read_size` bytes: vnet header + frame); a frame stays
///   where it was read until the batch is sent;
/// - **hdrs**: the segment headers `gso::split_headers` wrote for the frames;
/// - iovecs into both: a GSO message is `[hdr 0, payload 0, hdr 1, payload 1, ...]` with a
///   `UDP_SEGMENT` cmsg, and the kernel's one copy gathers it; a whole packet is one iovec.
///
/// The worker asks for [`GatherBatch::stage`] (the next read slot and the free header room),
/// reads into it, pushes iovecs ([`GatherBatch::push_read`], [`GatherBatch::push_hdr`],
/// offsets into what `stage` gave), closes each message ([`GatherBatch::end_msg`]), then
/// [`GatherBatch::keep`]s the slot and the header bytes it used. [`GatherBatch::fits`] says
/// whether that many more iovecs and messages fit.
///
/// A GSO message refused with EIO (the route's device cannot checksum, as quinn-udp and
/// wireguard-go found) or EINVAL is sent again as one datagram per segment (each segment is
/// its own iovecs, so nothing is copied), and GSO is off for this batch from then on
/// ([`GatherBatch::gso`] false): the worker then ends a message after every segment.
pub struct GatherBatch {
    reads: Vec<u8>,
    read_size: usize,
    reads_used: usize,
    hdrs: Vec<u8>,
    hdrs_used: usize,
    iovs: Vec<libc::iovec>,
    iovs_used: usize,
    /// Per message: its iovecs `iov_at[i]..iov_at[i + 1]`.
    iov_at: Vec<usize>,
    lens: Vec<usize>,
    dsts: Vec<libc::sockaddr_in>,
    metas: Vec<SlotMeta>,
    msgs: Vec<libc::mmsghdr>,
    cmsgs: Vec<u8>,
    filled: usize,
    sent: usize,
    /// Bytes of the message being built.
    open_len: usize,
    gso: bool,
}

// SAFETY: the raw pointers in `iovs` and `msgs` point into the batch's own Vecs, which are
// never reallocated; they are only dereferenced by the kernel during `send`.
unsafe impl Send for GatherBatch {}

/// What [`GatherBatch::stage`] lends: the next read slot and the free header room.
pub struct Stage<'a> {
    pub read: &'a mut [u8],
    pub hdrs: &'a mut [u8],
}

impl GatherBatch {
    /// `reads` slots of `read_size` bytes, `hdr_bytes` of header room, `iovs` iovecs and
    /// `msgs` messages per `sendmmsg`.
    pub fn new(
        reads: usize,
        read_size: usize,
        hdr_bytes: usize,
        iovs: usize,
        msgs: usize,
    ) -> GatherBatch {
        let zero_sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        GatherBatch {
            reads: vec![0; reads * read_size],
            read_size,
            reads_used: 0,
            hdrs: vec![0; hdr_bytes],
            hdrs_used: 0,
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                iovs
            ],
            iovs_used: 0,
            iov_at: vec![0; msgs + 1],
            lens: vec![0; msgs],
            dsts: vec![zero_sa; msgs],
            metas: vec![SlotMeta::default(); msgs],
            msgs: (0..msgs).map(|_| unsafe { std::mem::zeroed() }).collect(),
            cmsgs: vec![0; msgs * CMSG_U16],
            filled: 0,
            sent: 0,
            open_len: 0,
            gso: true,
        }
    }

    /// Messages waiting to be sent.
    pub fn pending(&self) -> usize {
        self.filled - self.sent
    }

    /// False once a GSO send was refused: send one datagram per message.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// The next read slot and the free header room; None when every read slot is taken.
    pub fn stage(&mut self) -> Option<Stage<'_>> {
        if self.reads_used * self.read_size >= self.reads.len() {
            return None;
        }
        let at = self.reads_used * self.read_size;
        Some(Stage {
            read: &mut self.reads[at..at + self.read_size],
            hdrs: &mut self.hdrs[self.hdrs_used..],
        })
    }

    /// True when `iovs` more iovecs in `msgs` more messages fit.
    pub fn fits(&self, iovs: usize, msgs: usize) -> bool {
        self.iovs_used + iovs <= self.iovs.len() && self.filled + msgs <= self.lens.len()
    }

    fn push(&mut self, base: *mut u8, len: usize) {
        assert!(
            self.iovs_used < self.iovs.len(),
            "GatherBatch: out of iovecs"
        );
        self.iovs[self.iovs_used] = libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        };
        self.iovs_used += 1;
        self.open_len += len;
    }

    /// Appends `range` of the staged read slot to the open message.
    pub fn push_read(&mut self, range: std::ops::Range<usize>) {
        assert!(range.end <= self.read_size);
        let at = self.reads_used * self.read_size + range.start;
        let base = self.reads[at..at + range.len()].as_mut_ptr();
        self.push(base, range.len());
    }

    /// Appends `range` of the staged header room to the open message.
    pub fn push_hdr(&mut self, range: std::ops::Range<usize>) {
        let at = self.hdrs_used + range.start;
        let base = self.hdrs[at..at + range.len()].as_mut_ptr();
        self.push(base, range.len());
    }

    /// Closes the open message: to `dst`, with `UDP_SEGMENT = meta.segment` unless 0.
    pub fn end_msg(&mut self, dst: SocketAddrV4, meta: SlotMeta) {
        assert!(
            self.filled < self.lens.len(),
            "GatherBatch: out of messages"
        );
        let i = self.filled;
        self.iov_at[i + 1] = self.iovs_used;
        self.lens[i] = self.open_len;
        self.dsts[i] = sockaddr(dst);
        self.metas[i] = meta;
        self.open_len = 0;
        self.filled += 1;
    }

    /// The staged read slot and `hdr_bytes` of the header room stay taken until the send.
    pub fn keep(&mut self, hdr_bytes: usize) {
        assert!(self.open_len == 0, "GatherBatch::keep with a message open");
        self.reads_used += 1;
        self.hdrs_used += hdr_bytes;
    }

    /// The index of the slot [`GatherBatch::stage`] lends, if one is free.
    pub fn staged_slot(&self) -> Option<usize> {
        (self.reads_used * self.read_size < self.reads.len()).then_some(self.reads_used)
    }

    /// Moves the first `len` bytes of read slot `from` into the slot `stage` lends now (the
    /// first, once the batch was sent).
    pub fn move_to_first(&mut self, from: usize, len: usize) {
        assert!(self.filled == 0 && len <= self.read_size);
        let to = self.reads_used * self.read_size;
        self.reads
            .copy_within(from * self.read_size..from * self.read_size + len, to);
    }

    fn msghdr(&mut self, i: usize, iovs: std::ops::Range<usize>, segment: u16) -> libc::msghdr {
        let mut h = msghdr(&mut self.dsts[i], &mut self.iovs[iovs]);
        set_segment(
            &mut h,
            &mut self.cmsgs[i * CMSG_U16..(i + 1) * CMSG_U16],
            segment,
        );
        h
    }

    /// Sends what is pending with `sendmmsg`, calling `done` per message. EAGAIN leaves the
    /// rest pending (returned as the error); once everything went, the batch is empty again.
    /// A GSO message refused with EIO/EINVAL goes again as one datagram per segment.
    pub fn send(
        &mut self,
        fd: RawFd,
        mut done: impl FnMut(SlotMeta, usize, Sent),
    ) -> io::Result<()> {
        // Out of `self` while sending, so a refused message can be re-sent from `self`.
        let mut msgs = std::mem::take(&mut self.msgs);
        for (i, m) in msgs
            .iter_mut()
            .enumerate()
            .take(self.filled)
            .skip(self.sent)
        {
            let h = self.msghdr(i, self.iov_at[i]..self.iov_at[i + 1], self.metas[i].segment);
            *m = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        let mut sent = self.sent;
        let r = sendmmsg_pending(fd, &mut msgs[..self.filled], &mut sent, |i, r| {
            let outcome = match r {
                Ok(()) => Sent::Ok,
                Err(e)
                    if self.metas[i].segment != 0
                        && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) =>
                {
                    if self.gso {
                        eprintln!(
                            "twill-datapath: a UDP_SEGMENT send was refused ({e}); \
                             sending one datagram per segment from now on"
                        );
                    }
                    self.gso = false;
                    self.send_segments(fd, i)
                }
                Err(e) => Sent::Failed(e),
            };
            done(self.metas[i], self.lens[i], outcome);
        });
        self.msgs = msgs;
        self.sent = sent;
        r?;
        self.clear();
        Ok(())
    }

    /// Message `i` (a GSO one) as one datagram per segment, each segment its share of the
    /// message's iovecs (`[hdr, payload]` pairs). Waits up to 100 ms for room per datagram.
    fn send_segments(&mut self, fd: RawFd, i: usize) -> Sent {
        let (first, end) = (self.iov_at[i], self.iov_at[i + 1]);
        let packets = usize::from(self.metas[i].packets.max(1));
        let per = (end - first) / packets;
        if per == 0 || (end - first) % packets != 0 {
            return Sent::Failed(io::Error::from_raw_os_error(libc::EINVAL));
        }
        for k in 0..packets {
            let h = self.msghdr(i, first + k * per..first + (k + 1) * per, 0);
            loop {
                // SAFETY: the message points into buffers the batch owns.
                let r = unsafe { libc::sendmsg(fd, &h, libc::MSG_DONTWAIT) };
                if r >= 0 {
                    break;
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => {
                        let mut p = libc::pollfd {
                            fd,
                            events: libc::POLLOUT,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
                            return Sent::Failed(e);
                        }
                    }
                    _ => return Sent::Failed(e),
                }
            }
        }
        Sent::Segmented
    }

    fn clear(&mut self) {
        self.filled = 0;
        self.sent = 0;
        self.reads_used = 0;
        self.hdrs_used = 0;
        self.iovs_used = 0;
        self.open_len = 0;
    }
}

/// One received datagram (or GRO run of datagrams) in a [`RecvBatch`].
#[derive(Debug)]
pub struct Received<'a> {
    pub src: SocketAddrV4,
    pub data: &'a [u8],
    /// The `UDP_GRO` cmsg: the datagrams' size (the last may be shorter); `None` for one.
    pub gro_size: Option<u16>,
    /// The kernel cut the datagram (`MSG_TRUNC`): it was larger than a slot.
    pub truncated: bool,
}

/// Slots of [`RECV_SLOT`] bytes filled by one `recvmmsg`.
pub struct RecvBatch {
    buf: Vec<u8>,
    srcs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    cmsgs: Vec<u8>,
    got: usize,
}

const CMSG_RECV: usize = 64;

// SAFETY: as for SendBatch, the pointers only point into the struct's own buffers.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(slots: usize) -> RecvBatch {
        // SAFETY: all-zero values of these C structs are valid.
        let zero_sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        RecvBatch {
            buf: vec![0; slots * RECV_SLOT],
            srcs: vec![zero_sa; slots],
            iovs: (0..slots)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            msgs: (0..slots).map(|_| unsafe { std::mem::zeroed() }).collect(),
            cmsgs: vec![0; slots * CMSG_RECV],
            got: 0,
        }
    }

    /// One non-blocking `recvmmsg` into every slot; the number of datagrams read
    /// (`WouldBlock` when there was none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let slots = self.srcs.len();
        for i in 0..slots {
            self.iovs[i] = libc::iovec {
                iov_base: self.buf[i * RECV_SLOT..].as_mut_ptr().cast(),
                iov_len: RECV_SLOT,
            };
            // SAFETY: all-zero msghdr is valid; the pointers set are into self.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (&mut self.srcs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i * CMSG_RECV..].as_mut_ptr().cast();
            h.msg_controllen = CMSG_RECV as _;
            self.msgs[i] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        loop {
            // SAFETY: msgs are built above and point into live buffers.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    self.msgs.as_mut_ptr(),
                    slots as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.got = 0;
                return Err(e);
            }
            self.got = r as usize;
            return Ok(self.got);
        }
    }

    /// Where the `i`th datagram of the last [`RecvBatch::recv`] lies in [`RecvBatch::buf_mut`].
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        assert!(i < self.got);
        let len = (self.msgs[i].msg_len as usize).min(RECV_SLOT);
        i * RECV_SLOT..i * RECV_SLOT + len
    }

    /// The whole receive buffer (every slot), for `gro::coalesce`'s in-place rewrites.
    pub fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The `i`th datagram of the last [`RecvBatch::recv`].
    pub fn get(&self, i: usize) -> Received<'_> {
        assert!(i < self.got);
        let m = &self.msgs[i];
        let len = (m.msg_len as usize).min(RECV_SLOT);
        let mut gro_size = None;
        // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_* walk within it.
        unsafe {
            let mut cm = libc::CMSG_FIRSTHDR(&m.msg_hdr);
            while !cm.is_null() {
                if (*cm).cmsg_level == libc::SOL_UDP && (*cm).cmsg_type == libc::UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast::<libc::c_int>());
                    gro_size = u16::try_from(v)
                        .ok()
                        .filter(|&s| s > 0 && (s as usize) < len);
                }
                cm = libc::CMSG_NXTHDR(&m.msg_hdr, cm);
            }
        }
        Received {
            src: from_sockaddr(&self.srcs[i]),
            data: &self.buf[i * RECV_SLOT..i * RECV_SLOT + len],
            gro_size,
            truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        }
    }
}

/// Turns `UDP_GRO` on for a receive socket (the kernel then hands several datagrams of one
/// flow in one read, with their size in a cmsg).
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd, SocketAddrV4) {
        let rx = bind_rx(Ipv4Addr::LOCALHOST, 0).unwrap();
        let addr = local_addr(rx.as_raw_fd()).unwrap();
        let tx = bind_tx(Ipv4Addr::LOCALHOST).unwrap();
        (rx, tx, addr)
    }

    fn wait_readable(fd: RawFd) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        assert_eq!(
            unsafe { libc::poll(&mut p, 1, 2000) },
            1,
            "nothing arrived in 2 s"
        );
    }

    #[test]
    fn a_batch_goes_out_in_one_sendmmsg_and_comes_back_in_one_recvmmsg() {
        let (rx, tx, addr) = pair();
        let mut out = SendBatch::new(8, 2048);
        for i in 0..5u8 {
            let s = out.slot();
            s[..3].copy_from_slice(&[i, i, i]);
            out.commit(
                3 + i as usize,
                addr,
                SlotMeta {
                    tag: i as u32,
                    segment: 0,
                    packets: 1,
                },
            );
        }
        let mut tags = vec![];
        out.send(tx.as_raw_fd(), |m, len, r| {
            assert!(matches!(r, Sent::Ok));
            tags.push((m.tag, len));
        })
        .unwrap();
        assert_eq!(tags, [(0, 3), (1, 4), (2, 5), (3, 6), (4, 7)]);
        assert_eq!(out.pending(), 0);
        wait_readable(rx.as_raw_fd());
        let mut inb = RecvBatch::new(16);
        let mut seen = vec![];
        while seen.len() < 5 {
            let n = inb.recv(rx.as_raw_fd()).unwrap();
            for i in 0..n {
                let d = inb.get(i);
                assert_eq!(d.src, local_addr(tx.as_raw_fd()).unwrap());
                assert_eq!(d.gro_size, None);
                assert!(!d.truncated);
                seen.push(d.data.to_vec());
            }
        }
        assert_eq!(seen[2], [2, 2, 2, 0, 0]);
        assert_eq!(
            inb.recv(rx.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_segmented_slot_arrives_as_datagrams_or_as_one_gro_read() {
        for gro in [false, true] {
            let (rx, tx, addr) = pair();
            if gro {
                enable_gro(rx.as_raw_fd()).unwrap();
            }
            let mut out = SendBatch::new(2, 8192);
            let s = out.slot();
            for (k, b) in s[..5000].iter_mut().enumerate() {
                *b = (k / 1000) as u8;
            }
            out.commit(
                4500,
                addr,
                SlotMeta {
                    tag: 7,
                    segment: 1000,
                    packets: 5,
                },
            );
            out.send(tx.as_raw_fd(), |_, _, r| assert!(matches!(r, Sent::Ok)))
                .unwrap();
            wait_readable(rx.as_raw_fd());
            let mut inb = RecvBatch::new(8);
            let mut sizes = vec![];
            while sizes.iter().map(|(l, _)| l).sum::<usize>() < 4500 {
                match inb.recv(rx.as_raw_fd()) {
                    Ok(n) => {
                        for i in 0..n {
                            let d = inb.get(i);
                            sizes.push((d.data.len(), d.gro_size));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        wait_readable(rx.as_raw_fd())
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            if gro {
                assert_eq!(sizes, [(4500, Some(1000))]);
            } else {
                assert_eq!(
                    sizes,
                    [
                        (1000, None),
                        (1000, None),
                        (1000, None),
                        (1000, None),
                        (500, None)
                    ]
                );
            }
        }
    }

    /// Every datagram waiting on `rx` (without GRO), until `total` bytes came.
    fn drain(rx: RawFd, total: usize) -> Vec<Vec<u8>> {
        let mut inb = RecvBatch::new(64);
        let mut got: Vec<Vec<u8>> = vec![];
        while got.iter().map(Vec::len).sum::<usize>() < total {
            match inb.recv(rx) {
                Ok(n) => got.extend((0..n).map(|i| inb.get(i).data.to_vec())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(rx),
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    /// Stages a "frame" of `segs` payloads of `size` bytes (byte k of segment i is i) in the
    /// next read slot, their 4-byte headers ("H", i, 0, 0) in the header room, and pushes
    /// one message of `[hdr, payload]` pairs with UDP_SEGMENT = 4 + size.
    fn stage_frame(b: &mut GatherBatch, addr: SocketAddrV4, segs: usize, size: usize) {
        let st = b.stage().unwrap();
        for i in 0..segs {
            st.read[10 + i * size..10 + (i + 1) * size].fill(i as u8);
            st.hdrs[i * 4..(i + 1) * 4].copy_from_slice(&[b'H', i as u8, 0, 0]);
        }
        for i in 0..segs {
            b.push_hdr(i * 4..(i + 1) * 4);
            b.push_read(10 + i * size..10 + (i + 1) * size);
        }
        let meta = SlotMeta {
            tag: 3,
            segment: (4 + size) as u16,
            packets: segs as u16,
        };
        b.end_msg(addr, meta);
        b.keep(segs * 4);
    }

    #[test]
    fn a_gathered_message_goes_out_as_its_segments() {
        let (rx, tx, addr) = pair();
        let mut b = GatherBatch::new(4, 4096, 4096, 64, 4);
        stage_frame(&mut b, addr, 3, 100);
        // A whole packet from the next slot: one iovec.
        let st = b.stage().unwrap();
        st.read[10..15].copy_from_slice(b"whole");
        b.push_read(10..15);
        b.end_msg(addr, SlotMeta::default());
        b.keep(0);
        assert_eq!(b.pending(), 2);
        let mut done = vec![];
        b.send(tx.as_raw_fd(), |m, len, r| {
            done.push((m.packets, len, matches!(r, Sent::Ok)))
        })
        .unwrap();
        assert_eq!(done, [(3, 312, true), (0, 5, true)]);
        assert_eq!(b.pending(), 0);
        assert!(b.gso());
        let got = drain(rx.as_raw_fd(), 312 + 5);
        assert_eq!(got.len(), 4);
        for (i, d) in got[..3].iter().enumerate() {
            assert_eq!(d[..4], [b'H', i as u8, 0, 0]);
            assert!(d.len() == 104 && d[4..].iter().all(|&x| x == i as u8));
        }
        assert_eq!(got[3], b"whole");
        // Sent: the slots are free again.
        assert_eq!(b.staged_slot(), Some(0));
    }

    #[test]
    fn a_refused_gso_send_goes_again_one_datagram_per_segment() {
        // 129 segments is one more than UDP_MAX_SEGMENTS: the kernel says EINVAL.
        let (rx, tx, addr) = pair();
        let mut b = GatherBatch::new(2, 8192, 1024, 512, 2);
        stage_frame(&mut b, addr, 129, 8);
        let mut done = vec![];
        b.send(tx.as_raw_fd(), |m, len, r| {
            done.push((m.packets, len, matches!(r, Sent::Segmented)))
        })
        .unwrap();
        assert_eq!(done, [(129, 129 * 12, true)], "reported as Sent::Segmented");
        assert!(!b.gso(), "GSO is off after the refusal");
        let got = drain(rx.as_raw_fd(), 129 * 12);
        assert_eq!(got.len(), 129);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d[..2], [b'H', i as u8]);
            assert!(d.len() == 12 && d[4..].iter().all(|&x| x == i as u8));
        }
    }

    #[test]
    fn a_frame_moved_to_the_first_slot_keeps_its_bytes() {
        let (_rx, tx, addr) = pair();
        let mut b = GatherBatch::new(2, 64, 64, 8, 2);
        stage_frame(&mut b, addr, 1, 20);
        assert_eq!(b.staged_slot(), Some(1));
        b.stage().unwrap().read[..6].copy_from_slice(b"second");
        b.send(tx.as_raw_fd(), |_, _, r| assert!(matches!(r, Sent::Ok)))
            .unwrap();
        b.move_to_first(1, 6);
        assert_eq!(&b.stage().unwrap().read[..6], b"second");
        // Both slots taken: no stage.
        stage_frame(&mut b, addr, 1, 20);
        stage_frame(&mut b, addr, 1, 20);
        assert!(b.stage().is_none() && b.staged_slot().is_none());
        assert!(b.fits(4, 0) && !b.fits(5, 0) && !b.fits(0, 1));
    }

    #[test]
    fn a_refused_message_is_reported_and_the_rest_still_go() {
        let (rx, tx, addr) = pair();
        let mut out = SendBatch::new(4, 70_000);
        out.commit(
            10,
            addr,
            SlotMeta {
                tag: 1,
                segment: 0,
                packets: 1,
            },
        );
        out.commit(
            MAX_PAYLOAD + 1,
            addr,
            SlotMeta {
                tag: 2,
                segment: 0,
                packets: 1,
            },
        );
        out.commit(
            10,
            addr,
            SlotMeta {
                tag: 3,
                segment: 0,
                packets: 1,
            },
        );
        let mut res = vec![];
        out.send(tx.as_raw_fd(), |m, _, r| {
            res.push((m.tag, matches!(r, Sent::Ok)))
        })
        .unwrap();
        assert_eq!(res, [(1, true), (2, false), (3, true)]);
        drop(rx);
    }

    #[test]
    fn two_receive_sockets_share_a_port_and_an_inherited_one_is_checked() {
        let a = bind_rx(Ipv4Addr::LOCALHOST, 0).unwrap();
        let port = local_addr(a.as_raw_fd()).unwrap().port();
        let b = bind_rx(Ipv4Addr::LOCALHOST, port).unwrap();
        let b = adopt_rx(b, port).unwrap();
        let e = adopt_rx(a, port.wrapping_add(1)).unwrap_err().to_string();
        assert!(e.contains("it is bound to 127.0.0.1:"), "{e}");
        drop(b);
    }
}
