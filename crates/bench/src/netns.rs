//! Namespaces and scratch folders the benchmark makes, all named `twlbench…`, and their
//! removal (also for a run that died: `--cleanup`). I/O edge.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use twill_netlink::Netns;

/// Every namespace and folder the benchmark makes starts with this.
pub const PREFIX: &str = "twlbench";
const NETNS_DIR: &str = "/run/netns";

/// Moves the calling thread into `ns`; children it spawns start there.
pub fn enter(ns: &Netns) -> Result<()> {
    // SAFETY: the fd is a valid, open netns descriptor for the duration of the call.
    if unsafe { libc::setns(ns.fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot enter network namespace {}", ns.path().display()));
    }
    Ok(())
}

pub fn path_of(name: &str) -> String {
    format!("{NETNS_DIR}/{name}")
}

/// Runs `ip -batch -` with one command a line; `force` goes on past failed lines.
fn ip_batch(lines: &[String], force: bool) -> Result<()> {
    ip_batch_with(&[], lines, force)
}

/// Runs `ip -n NS -batch -`: every line inside namespace `ns`.
pub fn batch_in(ns: &str, lines: &[String]) -> Result<()> {
    ip_batch_with(&["-n", ns], lines, false).with_context(|| format!("configuring namespace {ns}"))
}

fn ip_batch_with(global: &[&str], lines: &[String], force: bool) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    cmd.args(global);
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip (install iproute2)")?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let text = lines.join("\n") + "\n";
    let written = stdin.write_all(text.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    written.context("feeding ip -batch")?;
    if !out.status.success() && !force {
        bail!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates the named namespaces (one `ip` process for all of them).
pub fn create(names: &[String]) -> Result<()> {
    let lines: Vec<String> = names.iter().map(|n| format!("netns add {n}")).collect();
    ip_batch(&lines, false).context("creating the benchmark's namespaces")
}

/// Removes the named namespaces that exist; missing ones are fine (best effort).
pub fn remove(names: &[String]) -> Result<()> {
    let lines: Vec<String> = names
        .iter()
        .filter(|n| Path::new(&path_of(n)).exists())
        .map(|n| format!("netns del {n}"))
        .collect();
    ip_batch(&lines, true)?;
    let left: Vec<&String> = names
        .iter()
        .filter(|n| Path::new(&path_of(n)).exists())
        .collect();
    if !left.is_empty() {
        bail!(
            "{} namespaces could not be removed, e.g. {}; retry with `twill-bench cni --cleanup`",
            left.len(),
            left[0]
        );
    }
    Ok(())
}

/// Names of every `twlbench*` namespace now present, from any run.
pub fn leftovers() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// Scratch folders `twlbench*` under the temp dir, from any run.
pub fn leftover_dirs() -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// `--cleanup`: removes every `twlbench*` namespace and scratch folder. Deleting a node
/// namespace takes its bridge, veths and nftables/iptables state with it.
pub fn cleanup_all() -> Result<(usize, usize)> {
    let names = leftovers();
    let dirs = leftover_dirs();
    remove(&names)?;
    for d in &dirs {
        std::fs::remove_dir_all(d).with_context(|| format!("cannot remove {}", d.display()))?;
    }
    Ok((names.len(), dirs.len()))
}
