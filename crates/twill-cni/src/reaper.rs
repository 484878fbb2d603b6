//! The slow half of DEL, done after the plugin has answered.
//!
//! Deleting a veth costs 15-35 ms here, nearly all of it the kernel waiting for RCU grace
//! periods in its unregister path; closing the nfnetlink socket after deleting set
//! elements waits for another one. Neither changes what the pod can do once DEL has
//! taken its host end down and removed its addresses' rules, so DEL does that much
//! itself (about 1 ms), then starts this detached reaper, which holds the nfnetlink
//! socket open, deletes the veth and exits. A veth a reaper could not delete is removed by
//! the next ADD of the same attachment, or by GC.
//!
//! The reaper deletes the veth by its interface index, never by name: a runtime may ADD
//! the same attachment again at once, and that ADD removes the old veth and makes a new
//! one of the same name, which a lookup by name would find and delete. Indexes are
//! allocated cyclically, so the old one names no other link.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::{Command, Stdio};

/// The environment variable that turns this binary into a reaper for the veth with this
/// interface index.
pub const ENV: &str = "TWILL_CNI_REAP_IFINDEX";

/// Starts a detached reaper for the veth with index `index`, letting it inherit
/// `keep_open` so the last close happens there. Stdio is /dev/null: the runtime reads our stdout until EOF. No
/// `pre_exec`, so std can use posix_spawn (vfork), the cheapest way to start it.
pub fn spawn(index: u32, keep_open: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    if let Some(fd) = keep_open {
        // SAFETY: fcntl on a descriptor we borrow; it stays open for the whole call.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mut cmd = Command::new("/proc/self/exe");
    cmd.env_clear()
        .env(ENV, index.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group: a signal to the runtime's group does not stop it halfway.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // Not waited for: it outlives us and is reparented.
    cmd.spawn().map(drop)
}

/// The reaper's whole life: delete the veth (gone already is fine), then exit, closing
/// the inherited socket.
pub fn run(index: &str) -> i32 {
    let Ok(index) = index.parse::<u32>() else {
        return 2;
    };
    match twill_netlink::Handle::new() {
        Ok(mut h) => match h.delete_link(index) {
            Ok(()) => 0,
            Err(e) if e.is_not_found() => 0,
            Err(_) => 1,
        },
        Err(_) => 1,
    }
}
