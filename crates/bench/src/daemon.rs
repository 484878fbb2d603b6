//! Long-running processes the benchmark starts (etcd, twilld): stopped by their PID only,
//! and recorded in the run's scratch folder so `--cleanup` can stop what a killed run left.
//! I/O edge.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// The file in a run's scratch folder listing the PIDs it started, one a line.
const PID_FILE: &str = "pids";

pub struct Daemon {
    pub name: String,
    pub child: Child,
    /// Set once it has been waited for.
    exited: bool,
}

impl Daemon {
    /// Wraps a started child and records its PID in `scratch`.
    pub fn new(name: String, child: Child, scratch: &Path) -> Result<Daemon> {
        let d = Daemon {
            name,
            child,
            exited: false,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(scratch.join(PID_FILE))
            .with_context(|| format!("cannot record PIDs in {}", scratch.display()))?;
        writeln!(f, "{}", d.pid())?;
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (false once it exited on its own).
    pub fn is_running(&mut self) -> bool {
        !self.exited && matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit either way.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                self.exited = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        say!(
            "twill-bench: {} (pid {}) still ran {grace:?} after SIGTERM; killing it",
            self.name,
            self.pid()
        );
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        self.exited = true;
    }

    /// Sends `sig` without waiting (to stop many at once, then wait for each).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.exited {
            return;
        }
        // Our own child, not yet waited for: its PID cannot have been reused.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Stops many daemons: SIGTERM to all first (they shut down in parallel), then waits.
pub fn stop_all(daemons: &mut [Daemon], grace: Duration) {
    for d in daemons.iter_mut() {
        d.signal(libc::SIGTERM);
    }
    for d in daemons.iter_mut() {
        d.stop(grace);
    }
}

/// `--cleanup`: SIGKILLs the processes a killed run recorded in `scratch`, if still alive
/// and still ours (their command line names the scratch folder, so a reused PID is left
/// alone). Returns how many it stopped.
pub fn kill_recorded(scratch: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(scratch.join(PID_FILE)) else {
        return 0;
    };
    let needle = scratch.to_string_lossy().into_owned();
    let mut killed = 0;
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if pid > 1 && cmdline.contains(&needle) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
    }
    if killed > 0 {
        // Let the kernel reap them (they were reparented) before the folder goes.
        std::thread::sleep(Duration::from_millis(300));
    }
    killed
}
