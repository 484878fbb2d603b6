//! Helpers for Twill's root-gated tests: every namespace a test makes is named with the
//! `twl` prefix, unique across parallel tests, and removed when its guard drops, failures
//! included.

pub mod etcd;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// True when the test may build namespaces. Tests that need root call this first and
/// return early (printing why) otherwise, so `cargo test` as a user still passes the pure
/// tests. Set `TWILL_REQUIRE_ROOT=1` (CI does) to turn a skip into a failure.
pub fn root_or_skip(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var_os("TWILL_REQUIRE_ROOT").is_some() {
            panic!("{test}: needs root (TWILL_REQUIRE_ROOT is set)");
        }
        eprintln!("{test}: skipped, needs root to build network namespaces");
    }
    root
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, `twl` + tag + pid + counter, at most `max` bytes
/// (15 for an interface name). The tag is shortened first.
pub fn unique_name(tag: &str, max: usize) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("{:x}{:x}", std::process::id() & 0xfffff, n);
    let room = max.saturating_sub(3 + suffix.len());
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(room)
        .collect();
    format!("twl{tag}{suffix}")
}

/// Runs a command, panicking with its output if it fails. For test set-up only.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command and returns (success, stdout, stderr) without panicking.
pub fn try_sh(args: &[&str]) -> (bool, String, String) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), e.to_string()),
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(tag: &str) -> TestNetns {
        let name = unique_name(tag, 40);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        TestNetns { name }
    }

    /// The bind-mount path a runtime would pass as CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `CMD...` inside the namespace and panics on failure.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `CMD...` inside the namespace; (success, stdout, stderr).
    pub fn try_exec(&self, args: &[&str]) -> (bool, String, String) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        try_sh(&full)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Kill anything a test left running inside, then remove the namespace.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A temporary directory named `twl…` under /tmp, removed on drop.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(tag, 64));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
