//! The TUN device (Twill's flannel0, named `twl.tun` by twilld): open `/dev/net/tun`, attach a
//! queue to the device by name (`TUNSETIFF` with `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE`, plus
//! `IFF_VNET_HDR` when offloads are on), make it persistent, adopt an inherited queue fd.
//!
//! One fd is one queue. A multi-queue device is re-attached by opening it by name again with
//! the same flags (probed: median 3 µs; without `IFF_MULTI_QUEUE` the kernel says EINVAL).
//! The vnet header is a property of the fd, not of the device, so every opener (and every
//! adopter) must say whether it uses one: [`TunQueue::adopt`] reads it back with `TUNGETIFF`.
//!
//! This module does not set addresses, MTU, link state or routes: twilld's reconcile does (as
//! for `twl.1`), and the crate's tests do it with `ip`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `IFF_TUN`: layer 3 packets, no Ethernet header.
pub const IFF_TUN: u16 = 0x0001;
/// `IFF_NO_PI`: no 4-byte packet information prefix.
pub const IFF_NO_PI: u16 = 0x1000;
/// `IFF_VNET_HDR`: each read and write starts with a 10-byte `virtio_net_hdr`.
pub const IFF_VNET_HDR: u16 = 0x4000;
/// `IFF_MULTI_QUEUE`: one queue per fd.
pub const IFF_MULTI_QUEUE: u16 = 0x0100;
/// `IFF_PERSIST`, as `TUNGETIFF` reports it.
pub const IFF_PERSIST: u16 = 0x0800;

/// `TUNSETOFFLOAD` bits (linux/if_tun.h).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// The longest interface name the kernel takes (IFNAMSIZ − 1).
pub const MAX_NAME: usize = 15;

/// The size of the vnet header this datapath uses (`struct virtio_net_hdr`, no num_buffers).
pub const VNET_HDR_LEN: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(
        "TUN device name {0:?} is not valid: it must be 1 to 15 bytes, no '/', no whitespace, \
         no NUL (e.g. twl.tun)"
    )]
    BadName(String),
    #[error(
        "cannot open /dev/net/tun: {0}; the kernel needs CONFIG_TUN and the node \
         /dev/net/tun (mknod /dev/net/tun c 10 200), and this process needs CAP_NET_ADMIN \
         (run as root)"
    )]
    Open(#[source] io::Error),
    #[error("cannot attach a queue to TUN device {name}: {source}; {hint}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("TUN device {name}: {what} failed: {source}; {hint}")]
    Ioctl {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error(
        "fd {fd} is not a queue of TUN device {want}: {why}; pass the fds that HelloAck handed \
         out, in its order (TUN queues first)"
    )]
    NotOurs {
        fd: RawFd,
        want: String,
        why: String,
    },
}

/// How a queue is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueMode {
    /// Each packet is preceded by a `virtio_net_hdr` (`IFF_VNET_HDR`).
    pub vnet_hdr: bool,
}

/// One queue of a TUN device: a non-blocking, close-on-exec fd.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
    name: String,
    mode: QueueMode,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: u16) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        flags,
        _pad: [0; 22],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    r
}

/// Checks an interface name as the kernel would (dev_valid_name).
pub fn check_name(name: &str) -> Result<(), TunError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(TunError::BadName(name.to_owned()))
    }
}

fn attach_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => "attaching needs CAP_NET_ADMIN: run as root",
        Some(libc::EINVAL) => {
            "a device of that name exists with other flags (not a multi-queue TUN, or another \
             kind of link): delete it (`ip link del NAME`) or pick another --tun"
        }
        Some(libc::EBUSY) => {
            "the device is held by a single-queue opener: stop that process or delete the device"
        }
        Some(libc::E2BIG) => {
            "the device has its maximum of 256 queues attached: use fewer --queues"
        }
        _ => "check `ip -d link show NAME`",
    }
}

impl TunQueue {
    /// Creates the multi-queue TUN device `name` or attaches one more queue to it.
    pub fn attach(name: &str, mode: QueueMode) -> Result<TunQueue, TunError> {
        check_name(name)?;
        // SAFETY: a plain open(2) of a NUL-terminated literal.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(TunError::Open(io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE;
        if mode.vnet_hdr {
            flags |= IFF_VNET_HDR;
        }
        let mut req = ifreq(name, flags);
        // SAFETY: TUNSETIFF reads (and writes back) a struct ifreq, which IfReq lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let source = io::Error::last_os_error();
            return Err(TunError::Attach {
                name: name.to_owned(),
                hint: attach_hint(&source),
                source,
            });
        }
        let q = TunQueue {
            fd,
            name: name.to_owned(),
            mode,
        };
        if mode.vnet_hdr {
            let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
            q.ioctl(
                TUNSETVNETHDRSZ,
                &size as *const libc::c_int as usize,
                "TUNSETVNETHDRSZ",
            )?;
        }
        Ok(q)
    }

    /// Adopts an fd this process inherited (`--inherit-fds`): it must be a queue attached to
    /// the TUN device `name` (`TUNGETIFF`), in multi-queue mode. The vnet header mode is read
    /// from the fd. The fd is made non-blocking and close-on-exec.
    pub fn adopt(fd: OwnedFd, name: &str) -> Result<TunQueue, TunError> {
        let raw = fd.as_raw_fd();
        let not_ours = |why: String| TunError::NotOurs {
            fd: raw,
            want: name.to_owned(),
            why,
        };
        let mut req = ifreq("", 0);
        // SAFETY: TUNGETIFF writes a struct ifreq.
        if unsafe { libc::ioctl(raw, TUNGETIFF, &mut req) } < 0 {
            return Err(not_ours(format!(
                "TUNGETIFF: {}",
                io::Error::last_os_error()
            )));
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(16);
        let got = String::from_utf8_lossy(&req.name[..end]).into_owned();
        if got != name {
            return Err(not_ours(format!("it is attached to {got:?}")));
        }
        if req.flags & IFF_TUN == 0 || req.flags & IFF_NO_PI == 0 {
            return Err(not_ours(format!(
                "flags {:#x} lack IFF_TUN|IFF_NO_PI",
                req.flags
            )));
        }
        if req.flags & IFF_MULTI_QUEUE == 0 {
            return Err(not_ours(format!(
                "flags {:#x} lack IFF_MULTI_QUEUE",
                req.flags
            )));
        }
        set_nonblock_cloexec(raw).map_err(|e| not_ours(format!("fcntl: {e}")))?;
        Ok(TunQueue {
            fd,
            name: name.to_owned(),
            mode: QueueMode {
                vnet_hdr: req.flags & IFF_VNET_HDR != 0,
            },
        })
    }

    fn ioctl(&self, req: libc::c_ulong, arg: usize, what: &'static str) -> Result<(), TunError> {
        // SAFETY: the TUN ioctls used here take an int or a pointer to one, passed as `arg`.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), req, arg) } < 0 {
            let source = io::Error::last_os_error();
            let hint = match source.raw_os_error() {
                Some(libc::EPERM) => "it needs CAP_NET_ADMIN: run as root",
                Some(libc::EINVAL) if req == TUNSETOFFLOAD => {
                    "the kernel refuses this offload set (TSO/USO need CSUM; USO4 and USO6 go \
                     together, kernel 6.2 or later)"
                }
                Some(libc::EBADFD) => {
                    "the device was deleted under this queue (`ip link del`): start again"
                }
                _ => "check `ip -d link show NAME`",
            };
            return Err(TunError::Ioctl {
                name: self.name.clone(),
                what,
                source,
                hint,
            });
        }
        Ok(())
    }

    /// `TUNSETPERSIST`: the device stays when the last queue closes (its routes stay too,
    /// marked linkdown), so a fresh datapath re-attaches by name.
    pub fn set_persist(&self, persist: bool) -> Result<(), TunError> {
        self.ioctl(TUNSETPERSIST, persist as usize, "TUNSETPERSIST")
    }

    /// `TUNSETOFFLOAD` with the `TUN_F_*` bits: what the kernel may hand this queue unfinished
    /// (partial checksums, TSO/USO super-packets). Needs a vnet header.
    pub fn set_offload(&self, flags: u32) -> Result<(), TunError> {
        self.ioctl(TUNSETOFFLOAD, flags as usize, "TUNSETOFFLOAD")
    }

    /// Whether the device is persistent now (`TUNGETIFF`).
    pub fn is_persistent(&self) -> Result<bool, TunError> {
        let mut req = ifreq("", 0);
        // SAFETY: TUNGETIFF writes a struct ifreq.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNGETIFF, &mut req) } < 0 {
            return Err(TunError::Ioctl {
                name: self.name.clone(),
                what: "TUNGETIFF",
                source: io::Error::last_os_error(),
                hint: "check `ip -d link show NAME`",
            });
        }
        Ok(req.flags & IFF_PERSIST != 0)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mode(&self) -> QueueMode {
        self.mode
    }

    /// One packet (with its vnet header if the queue has one) into `buf`; `WouldBlock` when the
    /// queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// One packet into the device (with its vnet header if the queue has one).
    pub fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        // SAFETY: pkt is valid for reads of pkt.len() bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl TunQueue {
    /// One packet gathered from `parts` (vnet header first if the queue has one).
    pub fn writev(&self, parts: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the iovecs point at live buffers the caller borrows for the call.
        let n = unsafe {
            libc::writev(
                self.fd.as_raw_fd(),
                parts.as_ptr(),
                parts.len() as libc::c_int,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sets O_NONBLOCK and FD_CLOEXEC on an fd this process inherited.
pub(crate) fn set_nonblock_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own; the flags are plain ints.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        let fdf = libc::fcntl(fd, libc::F_GETFD);
        if fdf < 0 || libc::fcntl(fd, libc::F_SETFD, fdf | libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_the_kernel_takes_them() {
        for ok in ["twl.tun", "a", "twl0123456789ab"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "twl0123456789abc"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("1 to 15 bytes"), "{bad}: {e}");
        }
    }

    #[test]
    fn ifreq_is_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let r = ifreq("twl.tun", IFF_TUN | IFF_NO_PI);
        assert_eq!(&r.name[..8], b"twl.tun\0");
        assert_eq!(r.flags, 0x1001);
    }
}
