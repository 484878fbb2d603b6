//! The one ethtool setting Twill needs: TX checksum offload of a device, through the
//! SIOCETHTOOL ioctl (ETHTOOL_GTXCSUM / ETHTOOL_STXCSUM, what `ethtool -K DEV tx off` sends).
//!
//! Why: on some kernels and virtual NICs (vmxnet3 in particular) a VXLAN device that leaves
//! the inner checksum to offload sends packets whose checksum is wrong, and the receiver
//! drops them; flannel turns TX (and RX) checksum offload off on flannel.1 for that reason
//! (flannel-io/flannel#1282, "Disable tx and rx offloading on VXLAN interfaces").
//!
//! The ioctl is issued on the handle's own netlink socket: the kernel falls back to the
//! generic device ioctls for any socket family, in that socket's namespace, so the caller's
//! thread never has to enter the namespace.

use std::os::fd::{AsFd, AsRawFd};

use crate::{Error, Handle};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 24 - std::mem::size_of::<usize>()],
}

/// `name` as a NUL-terminated `ifr_name`; None if it does not fit (15 bytes at most).
fn ifr_name(name: &str) -> Option<[u8; libc::IFNAMSIZ]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    let mut out = [0u8; libc::IFNAMSIZ];
    out[..bytes.len()].copy_from_slice(bytes);
    Some(out)
}

impl Handle {
    /// Whether TX checksum offload (`tx-checksumming`) is on for device `name`.
    pub fn tx_checksum(&mut self, name: &str) -> Result<bool, Error> {
        Ok(self.ethtool_value(name, ETHTOOL_GTXCSUM, 0)? != 0)
    }

    /// Turns TX checksum offload of device `name` on or off (all of `tx-checksum-*`; the
    /// offloads that depend on it, TSO and friends, follow).
    pub fn set_tx_checksum(&mut self, name: &str, on: bool) -> Result<(), Error> {
        self.ethtool_value(name, ETHTOOL_STXCSUM, on as u32)
            .map(drop)
    }

    fn ethtool_value(&mut self, name: &str, cmd: u32, data: u32) -> Result<u32, Error> {
        let what = match cmd {
            ETHTOOL_GTXCSUM => format!("read tx checksum offload of {name}"),
            _ => format!(
                "turn tx checksum offload {} on {name}",
                if data != 0 { "on" } else { "off" }
            ),
        };
        let Some(ifname) = ifr_name(name) else {
            return Err(Error::Conflict(format!(
                "{what}: {name:?} is not a valid interface name (1 to 15 bytes)"
            )));
        };
        let mut value = EthtoolValue { cmd, data };
        let mut req = IfreqData {
            name: ifname,
            data: (&mut value as *mut EthtoolValue).cast(),
            _pad: [0; 24 - std::mem::size_of::<usize>()],
        };
        let fd = self.socket().as_fd().as_raw_fd();
        // SAFETY: req is a valid ifreq whose ifr_data points at a live ethtool_value; both
        // outlive the call.
        let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfreqData) };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            return Err(Error::Kernel {
                errno: source.raw_os_error().unwrap_or(libc::EIO),
                op: what,
                ext_ack: None,
            });
        }
        Ok(value.data)
    }
}

/// Whether a kernel (`uname -r`) has the VXLAN checksum-offload fault: before 5.7, the
/// outer UDP checksum of an offloaded VXLAN packet could be left wrong after NAT, and
/// the far side dropped it (projectcalico/calico#3145, fixed around felix#2815 by turning
/// offload off on kernels older than 5.7; flannel#1282 turns it off everywhere). Newer
/// kernels keep offload, and with it TSO. An unreadable release counts as affected.
pub fn checksum_offload_broken(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = match parts.next().and_then(|p| p.parse().ok()) {
        Some(m) => m,
        None => return true,
    };
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) < (5, 7)
}

/// This kernel's release (`uname -r`); empty if it cannot be read.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given; the fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<IfreqData>(), 40);
        assert_eq!(std::mem::size_of::<EthtoolValue>(), 8);
    }

    #[test]
    fn interface_names_are_checked() {
        let n = ifr_name("twl.1").unwrap();
        assert_eq!(&n[..6], b"twl.1\0");
        assert!(ifr_name("").is_none());
        assert!(ifr_name("a-name-too-long-").is_none());
        assert!(ifr_name("nul\0").is_none());
        assert!(ifr_name("fifteen-chars-x").is_some());
    }
}
