//! What the lab tests share: running the real `twill`, unique lab names, a guard that
//! removes the lab however the test ends, and the sibling binaries the lab starts.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub const TWILL: &str = env!("CARGO_BIN_EXE_twill");

pub fn twill(args: &[&str]) -> Output {
    Command::new(TWILL).args(args).output().expect("run twill")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `twl` + a letter per test + 4 hex digits of the pid (8 characters, the limit): unique
/// per test and run, whether the tests of a file share a process (cargo test) or not.
pub fn lab_name(tag: char) -> String {
    format!("twl{tag}{:04x}", std::process::id() & 0xffff)
}

/// Removes the lab however the test ends.
pub struct LabGuard(pub String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = twill(&["lab", "down", "--name", &self.0]);
    }
}

/// twill-cni and twilld next to twill (where the lab looks by default), built or brought
/// up to date first: `cargo test -p twill` builds only this package's binary. Returns
/// (plugin, agent), honouring TWILL_CNI_BIN / TWILL_TWILLD_BIN as the lab does.
pub fn ensure_binaries() -> (PathBuf, PathBuf) {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let dir = PathBuf::from(TWILL).parent().unwrap().to_path_buf();
    BUILD.call_once(|| twill_testkit::cargo_build(&["twill-cni", "twilld"], &dir));
    let plugin = std::env::var_os("TWILL_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("twill-cni"));
    let agent = std::env::var_os("TWILL_TWILLD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("twilld"));
    for b in [&plugin, &agent] {
        assert!(b.is_file(), "{} is missing", b.display());
    }
    (plugin, agent)
}

/// `twill lab status -o json`.
pub fn status_json(name: &str) -> serde_json::Value {
    let st = twill(&["lab", "status", "--name", name, "-o", "json"]);
    assert!(st.status.success(), "status: {}", text(&st));
    serde_json::from_slice(&st.stdout).expect("status -o json is JSON")
}

/// The blocks each node holds, by node name, from `twill lab status -o json`.
pub fn blocks_by_node(st: &serde_json::Value) -> std::collections::BTreeMap<String, Vec<String>> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let blocks = n["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().to_string())
                .collect();
            (n["name"].as_str().unwrap().to_string(), blocks)
        })
        .collect()
}

/// `ip -j -d -n NETNS ARGS…` parsed (an empty answer is an empty array).
pub fn ip_json(netns: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["-j", "-d", "-n", netns])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    if s.trim().is_empty() {
        serde_json::Value::Array(vec![])
    } else {
        serde_json::from_str(&s).unwrap()
    }
}

/// A background command inside a namespace, its output piped.
pub fn spawn_in(netns: &str, cmd: &[&str]) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(cmd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Nothing of lab `name` is left: namespaces, state folder, daemons.
pub fn assert_gone(name: &str, pids: &[u64]) {
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let prefix = format!("{name}-");
    assert!(
        left.iter().all(|n| !n.starts_with(&prefix)),
        "namespaces left: {left:?}"
    );
    assert!(
        !PathBuf::from("/run").join(name).exists(),
        "/run/{name} left behind"
    );
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next());
        assert!(
            matches!(state, None | Some(Some('Z'))),
            "process {pid} still runs: {stat}"
        );
    }
}
