//! The I/O edge that tells the agent at once when twill-cni's records change: an inotify
//! watch on the records' `attachments/` and `ips/` folders (a record is named in
//! `attachments/` first, and holds its address from the moment it is also named in
//! `ips/`; DEL and GC unname both; an update renames over the `attachments/` name).
//! A thread waits on it and calls back on every batch of events; the callback only
//! wakes the agent's loop, which reads the records itself.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;

/// How often the thread looks at `shutdown`, and retries a folder whose watch went
/// (the folder was removed; twill-cni or the agent make it again).
const TICK: Duration = Duration::from_millis(500);

struct Dir {
    path: PathBuf,
    wd: Option<i32>,
}

fn add_watch(fd: &OwnedFd, path: &std::path::Path) -> io::Result<i32> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid inotify descriptor and a NUL-terminated path that outlives the call.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), MASK) };
    if wd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(wd)
    }
}

/// Watches `dirs` (which must exist) on a thread of its own until `shutdown`, calling
/// `changed` after each read of events (and once when a lost folder is watched again).
pub fn start(
    dirs: Vec<PathBuf>,
    shutdown: Arc<AtomicBool>,
    changed: impl Fn() + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    // SAFETY: plain syscall; the descriptor is owned below.
    let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut watched = Vec::new();
    for path in dirs {
        let wd = add_watch(&fd, &path)
            .map_err(|e| io::Error::new(e.kind(), format!("inotify on {}: {e}", path.display())))?;
        watched.push(Dir { path, wd: Some(wd) });
    }
    std::thread::Builder::new()
        .name("twilld-records".into())
        .spawn(move || run(fd, watched, &shutdown, changed))
}

fn run(fd: OwnedFd, mut dirs: Vec<Dir>, shutdown: &AtomicBool, changed: impl Fn()) {
    let mut buf = vec![0u8; 64 * 1024];
    while !shutdown.load(Ordering::Relaxed) {
        let mut rewatched = false;
        for d in dirs.iter_mut().filter(|d| d.wd.is_none()) {
            if let Ok(wd) = add_watch(&fd, &d.path) {
                d.wd = Some(wd);
                rewatched = true;
            }
        }
        if rewatched {
            changed();
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as i32) };
        if n <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer we own, of its length.
        let len = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if len <= 0 {
            continue;
        }
        let mut off = 0usize;
        let head = std::mem::size_of::<libc::inotify_event>();
        while off + head <= len as usize {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            if ev.mask & libc::IN_IGNORED != 0 {
                // The folder went: watch it again once it is back.
                if let Some(d) = dirs.iter_mut().find(|d| d.wd == Some(ev.wd)) {
                    d.wd = None;
                }
            }
            off += head + ev.len as usize;
        }
        changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use twill_testkit::TempDir;

    #[test]
    fn creating_and_removing_a_file_calls_back_at_once() {
        let tmp = TempDir::new("recwatch");
        let dir = tmp.path.join("attachments");
        std::fs::create_dir_all(&dir).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let t = start(vec![dir.clone()], stop.clone(), move || {
            let _ = tx.send(());
        })
        .unwrap();
        std::fs::write(dir.join("c1:eth0"), b"{}").unwrap();
        rx.recv_timeout(Duration::from_secs(2))
            .expect("told of the create");
        std::fs::remove_file(dir.join("c1:eth0")).unwrap();
        rx.recv_timeout(Duration::from_secs(2))
            .expect("told of the removal");
        // The folder removed and made again: watched again.
        std::fs::remove_dir(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        while rx.try_recv().is_ok() {}
        std::thread::sleep(TICK * 2);
        while rx.try_recv().is_ok() {}
        std::fs::write(dir.join("c2:eth0"), b"{}").unwrap();
        rx.recv_timeout(Duration::from_secs(2))
            .expect("watched again");
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_it() {
        let e = start(
            vec![PathBuf::from("/nonexistent/twl-none")],
            Arc::new(AtomicBool::new(true)),
            || {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/twl-none"), "{e}");
    }
}
