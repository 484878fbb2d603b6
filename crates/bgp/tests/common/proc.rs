//! A daemon the test started, owned by its PID: stopped with SIGTERM (then SIGKILL after a
//! grace period) and always reaped, on drop too. Never a broad kill by name.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub name: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Runs `args` inside namespace `ns` (`ip netns exec` execs it, so the child's PID is
    /// the daemon's) in the foreground, output appended to `log`.
    pub fn spawn(name: &str, ns: &str, args: &[&str], log: &Path) -> Daemon {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({args:?}): {e}"));
        Daemon {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// Still running (not exited, not reaped).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(st))) => {
                self.status = Some(st);
                self.child = None;
                false
            }
            _ => false,
        }
    }

    /// Fails the test, with the daemon's log, if it has exited.
    pub fn assert_running(&mut self) {
        if !self.running() {
            panic!(
                "{} exited ({:?}); its log {}:\n{}",
                self.name,
                self.status,
                self.log.display(),
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` to the daemon's PID (if it is still ours).
    pub fn signal(&mut self, sig: i32) {
        if self.running() {
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// Waits up to `grace` for the daemon to exit (it was signalled), then SIGKILLs it;
    /// reaps it either way and returns its exit status.
    pub fn wait_exit(&mut self, grace: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while self.running() {
            if start.elapsed() >= grace {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                    self.status = c.wait().ok();
                }
                self.child = None;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.status
    }

    /// SIGTERM, then SIGKILL after `grace`; reaped.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(grace)
    }

    /// SIGKILL at once (a crash); reaped.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(5));
    }
}

/// Stops several daemons at once: SIGTERM to all, then each is waited for (FRR's daemons
/// need 1–3 s each after SIGTERM, so in parallel rather than one after another).
pub fn stop_all(daemons: &mut [&mut Daemon], grace: Duration) {
    for d in daemons.iter_mut() {
        d.signal(libc::SIGTERM);
    }
    for d in daemons.iter_mut() {
        d.wait_exit(grace);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
