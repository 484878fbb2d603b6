//! Node-local files: the hand-off to twill-cni (flannel's subnet.env) and the agent's own
//! memory of its blocks. Both are written atomically (a temporary file in the same folder,
//! then rename), so a reader sees the old or the new content, never a torn one.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use twill_api::resources::HandOff;

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}: {source}; check that the folder exists and is writable")]
pub struct FileError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Writes `bytes` to `path` atomically, creating the folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let err = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| FileError {
            op,
            path: p,
            source,
        }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err("create folder", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // Killed between here and the rename, the file stays: remove_stale_temporaries.
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err("write", &tmp)(e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err("rename into", path)(e)
    })
}

/// The temporary file [`write_atomic`] uses for `path` in process `pid`.
fn temporary(path: &Path, pid: u32) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    Some(path.with_file_name(format!(".{name}.tmp-{pid}")))
}

/// Removes the temporary files of `path` that writes killed part-way left behind (see
/// [`write_atomic`]); returns what it removed. Safe: only files named exactly as
/// `write_atomic` names them for this `path` are touched, and only those of this process
/// or of a process that no longer runs (a live writer's file is left alone).
pub fn remove_stale_temporaries(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive && temporary(path, pid).is_some_and(|t| fs::remove_file(&t).is_ok()) {
            removed.push(e.path());
        }
    }
    removed
}

/// Cuts the hand-off file at `path` (if there is one) to the blocks in `keep`, leaving the
/// rest of it as it is: what the agent does at start, before it knows the network config.
/// True if it wrote.
pub fn restrict_handoff(path: &Path, keep: &[Ipv4Net]) -> Result<bool, FileError> {
    let Some(mut h) = fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<HandOff>(&b).ok())
    else {
        return Ok(false);
    };
    if h.blocks.iter().all(|b| keep.contains(b)) {
        return Ok(false);
    }
    h.blocks.retain(|b| keep.contains(b));
    let mut bytes = serde_json::to_vec_pretty(&h).expect("a hand-off serializes");
    bytes.push(b'\n');
    write_atomic(path, &bytes)?;
    Ok(true)
}

/// Writes hand-offs, skipping the write when nothing changed.
#[derive(Debug)]
pub struct HandOffWriter {
    path: PathBuf,
    last: Option<HandOff>,
}

impl HandOffWriter {
    pub fn new(path: PathBuf) -> HandOffWriter {
        HandOffWriter { path, last: None }
    }

    /// Writes `h` unless it is what was last written; true if it wrote.
    pub fn write(&mut self, h: &HandOff) -> Result<bool, FileError> {
        if self.last.as_ref() == Some(h) {
            return Ok(false);
        }
        let mut bytes = serde_json::to_vec_pretty(h).expect("a hand-off serializes");
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes)?;
        self.last = Some(h.clone());
        Ok(true)
    }
}

/// The blocks of `node` in a hand-off file left by an earlier run (None if unreadable or
/// another node's).
pub fn read_handoff_blocks(path: &Path, node: &str) -> Vec<Ipv4Net> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<HandOff>(&b).ok())
        .filter(|h| h.node == node)
        .map(|h| h.blocks)
        .unwrap_or_default()
}

/// What the agent remembers across restarts: `<stateDir>/blocks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub node: String,
    pub blocks: Vec<Ipv4Net>,
}

pub fn memory_path(state_dir: &Path) -> PathBuf {
    state_dir.join("blocks.json")
}

pub fn read_memory(state_dir: &Path, node: &str) -> Vec<Ipv4Net> {
    fs::read(memory_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice::<Memory>(&b).ok())
        .filter(|m| m.node == node)
        .map(|m| m.blocks)
        .unwrap_or_default()
}

pub fn write_memory(state_dir: &Path, m: &Memory) -> Result<(), FileError> {
    let mut bytes = serde_json::to_vec(m).expect("serializes");
    bytes.push(b'\n');
    write_atomic(&memory_path(state_dir), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_off_is_written_once_per_change_and_atomically() {
        let dir = twill_testkit::TempDir::new("handoff");
        let path = dir.path.join("sub/node.json");
        let mut w = HandOffWriter::new(path.clone());
        let mut h = HandOff {
            node: "n1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            blocks: vec!["10.244.1.0/24".parse().unwrap()],
            mtu: 1500,
            ip_masq: true,
            pod_wiring: Default::default(),
        };
        assert!(w.write(&h).unwrap());
        assert!(!w.write(&h).unwrap());
        let got: HandOff = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(got, h);
        h.blocks.push("10.244.2.0/24".parse().unwrap());
        assert!(w.write(&h).unwrap());
        assert_eq!(read_handoff_blocks(&path, "n1").len(), 2);
        assert!(read_handoff_blocks(&path, "n2").is_empty());
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["node.json"], "no temporary file left");
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["clusterCIDR"], "10.244.0.0/16");
        assert_eq!(v["ipMasq"], true);
    }

    #[test]
    fn temporaries_of_killed_writes_are_removed_and_live_ones_kept() {
        let dir = twill_testkit::TempDir::new("handofftmp");
        let path = dir.path.join("node.json");
        // A process that has exited: its pid is free (or reused, then it is left alone).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = 1; // init runs as long as the machine does
        let me = std::process::id();
        for pid in [dead, live, me] {
            fs::write(dir.path.join(format!(".node.json.tmp-{pid}")), b"{").unwrap();
        }
        for other in [".node.json.tmp-x", ".other.json.tmp-1", "node.json"] {
            fs::write(dir.path.join(other), b"{").unwrap();
        }
        let mut removed: Vec<String> = remove_stale_temporaries(&path)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        let mut want = vec![format!(".node.json.tmp-{me}")];
        if !Path::new(&format!("/proc/{dead}")).exists() {
            want.push(format!(".node.json.tmp-{dead}"));
        }
        want.sort();
        assert_eq!(removed, want);
        let mut left: Vec<String> = fs::read_dir(&dir.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert!(left.contains(&".node.json.tmp-1".to_string()), "{left:?}");
        assert!(left.contains(&".other.json.tmp-1".to_string()), "{left:?}");
        assert!(left.contains(&".node.json.tmp-x".to_string()), "{left:?}");
        assert!(left.contains(&"node.json".to_string()), "{left:?}");
    }

    #[test]
    fn an_old_hand_off_is_cut_to_the_kept_blocks() {
        let dir = twill_testkit::TempDir::new("handoffcut");
        let path = dir.path.join("node.json");
        assert!(
            !restrict_handoff(&path, &[]).unwrap(),
            "no file, nothing to do"
        );
        let a: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let b: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let mut w = HandOffWriter::new(path.clone());
        let h = HandOff {
            node: "n1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            blocks: vec![a, b],
            mtu: 1450,
            ip_masq: true,
            pod_wiring: Default::default(),
        };
        w.write(&h).unwrap();
        assert!(!restrict_handoff(&path, &[a, b]).unwrap());
        assert!(restrict_handoff(&path, &[b]).unwrap());
        let got: HandOff = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(got.blocks, [b]);
        assert_eq!(got.mtu, 1450, "the rest is kept");
        assert!(restrict_handoff(&path, &[]).unwrap());
        assert!(read_handoff_blocks(&path, "n1").is_empty());
    }

    #[test]
    fn memory_round_trips_per_node() {
        let dir = twill_testkit::TempDir::new("memory");
        let m = Memory {
            node: "n1".into(),
            blocks: vec!["10.244.3.0/26".parse().unwrap()],
        };
        write_memory(&dir.path, &m).unwrap();
        assert_eq!(read_memory(&dir.path, "n1"), m.blocks);
        assert!(read_memory(&dir.path, "other").is_empty());
    }
}
