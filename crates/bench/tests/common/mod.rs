//! What the two smoke tests share: the lock that keeps their runs apart, the binaries next
//! to twill-bench, and the search for anything named `twlbench*` left behind.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const BENCH: &str = env!("CARGO_BIN_EXE_twill-bench");

/// Held while a smoke run goes: both smoke tests look for every `twlbench*` name, so their
/// runs must not overlap (nextest runs test binaries in parallel).
pub fn smoke_lock() -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("twill-bench-smoke.lock"))
        .unwrap();
    // SAFETY: the fd is open for the duration of the call.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

/// A binary next to twill-bench, which must have been built.
pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(BENCH).parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p twilld -p twill-cni)",
        p.display()
    );
    p
}

/// Namespaces and temp folders named twlbench*, from any run.
pub fn twlbench_netns_and_dirs() -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    left.extend(
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path().to_string_lossy().into_owned()),
    );
    left.retain(|n| n.contains("twlbench"));
    left
}
