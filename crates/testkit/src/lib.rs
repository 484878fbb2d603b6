//! Helpers for Twill's root-gated tests: every namespace a test makes is named with the
//! `twl` prefix, unique across parallel tests, and removed when its guard drops, failures
//! included. [`require_root`] gates them: run as a user, they fail and say how to run them.

pub mod etcd;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The gate of every test that builds namespaces, links or nft rules: it returns when the
/// test runs as root and otherwise fails the test, saying why and how to run it. A failure,
/// not a skip: libtest has no runtime "ignored", and a test that returns early is reported
/// as passed by every runner (cargo test, cargo nextest, scripts/test.sh), which is how a
/// broken feature hides. Pure tests need no gate and pass as any user.
pub fn require_root(test: &str) {
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!("{}", not_root_message(test, euid));
    }
}

/// What [`require_root`] says when the test runs as user `euid`.
pub fn not_root_message(test: &str, euid: u32) -> String {
    format!(
        "{test}: NOT RUN: needs root to build network namespaces, links and nftables rules \
         (running as uid {euid}). Run it as root: `sudo -E cargo nextest run -p <crate>` or \
         `sudo scripts/test.sh` (the whole suite); as a user only the pure tests can pass \
         (`cargo test --lib`)."
    )
}

/// The gate of a test that runs an installed program: fails the test (as [`require_root`]
/// does, never a silent pass) unless `program` is on PATH, naming the Debian `package`
/// and scripts/install-deps.sh, which installs everything the suite needs.
pub fn require_program(test: &str, program: &str, package: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|d| d.join(program).is_file()) {
        panic!(
            "{test}: NOT RUN: `{program}` is not installed (not on PATH). Install it: \
             `apt-get install {package}`, or `scripts/install-deps.sh` for the whole suite."
        );
    }
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

/// Binary `bin` of workspace package `package`, built (or brought up to date) once per test
/// process, in the calling test executable's profile directory (target/debug or
/// target/release): `cargo test -p X` builds no binary of another package.
pub fn workspace_bin(package: &str, bin: &str) -> std::path::PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test executable under target/<profile>/deps")
        .to_path_buf();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|p| p == package) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", package]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let ok = cmd
            .status()
            .unwrap_or_else(|e| panic!("run cargo build -p {package}: {e}"))
            .success();
        assert!(ok, "cargo build -p {package} failed");
        built.push(package.to_owned());
    }
    let path = dir.join(bin);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}
