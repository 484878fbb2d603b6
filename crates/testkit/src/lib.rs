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

/// `cargo build -q -p P...` from inside a test, for the profile of `profile_dir`
/// (target/debug or target/release), in the environment of a cargo run from a shell.
///
/// Cargo runs a test with its crate's build-time variables set (`CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_NAME`, `CARGO_PKG_VERSION_MAJOR`, `OUT_DIR`...). A nested cargo inheriting them
/// passes them on to build scripts, and ring's declares `rerun-if-env-changed` on exactly
/// those: every nested build re-ran it and rebuilt ring, rustls, twill-store and all above
/// (80 s on 2 busy cores), and the next build from a shell rebuilt them back. In CI that
/// was most of the 99 s put down to the storm test's `twill ipam check`.
pub fn cargo_build(packages: &[&str], profile_dir: &std::path::Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    strip_crate_env(&mut cmd);
    let what = format!("cargo build -p {}", packages.join(" -p "));
    let ok = cmd
        .status()
        .unwrap_or_else(|e| panic!("run {what}: {e}"))
        .success();
    assert!(ok, "{what} failed");
}

/// Removes from `cmd`'s environment what cargo sets for the crate it builds or runs (see
/// [`cargo_build`]); cargo's own settings (`CARGO`, `CARGO_HOME`, `CARGO_TARGET_DIR`,
/// `CARGO_BUILD_*`, `CARGO_PROFILE_*`...) stay.
pub fn strip_crate_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let per_crate = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_", "CARGO_CFG_"]
            .iter()
            .any(|p| k.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&k);
        if per_crate {
            cmd.env_remove(k);
        }
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
        cargo_build(&[package], &dir);
        built.push(package.to_owned());
    }
    let path = dir.join(bin);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_cargo_gets_none_of_the_running_crate_s_variables() {
        // Run by cargo (or nextest), this test has its crate's variables, as every test
        // that builds a binary of another package does.
        for k in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
        ] {
            assert!(
                std::env::var_os(k).is_some(),
                "{k} is set for a test by cargo"
            );
        }
        let mut cmd = Command::new("env");
        strip_crate_env(&mut cmd);
        let out = cmd.output().expect("run env");
        let seen = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = seen
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        for k in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_CRATE_NAME",
        ] {
            assert!(
                !names.contains(&k),
                "{k} reaches the nested cargo: {names:?}"
            );
        }
        assert!(
            names.contains(&"PATH"),
            "the rest of the environment stays: {names:?}"
        );
    }
}
