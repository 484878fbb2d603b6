//! `/run/<name>/state.json`: the plan plus what `up` actually made, saved after every step so
//! that `down` (or a failed `up`) removes exactly that.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::LabPlan;

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no lab {name}: {path} is missing (start one with `twill lab up --name {name}`)")]
    Missing { name: String, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({source}); `twill lab down --name {name}` still removes the lab by name")]
    Corrupt {
        name: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A pod the lab made and twill-cni wired (or tried to).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub short: String,
    pub node: u16,
    pub netns: String,
    pub container_id: String,
    /// The pod IP from the ADD result.
    pub address: Option<Ipv4Addr>,
    /// The ADD result, replayed as `prevResult` on DEL (as runtimes cache it).
    pub result: Option<Value>,
}

/// A daemon the lab started (a node agent, the etcd member): enough to stop it by PID and to
/// start it again exactly as before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    /// `n1` for an agent, `etcd` for the store.
    pub role: String,
    pub netns: String,
    pub bin: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
    /// None once it was stopped on purpose (`twill lab store stop`).
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub plan: LabPlan,
    /// The plugin binary `up` used; `down` runs DEL with the same one.
    pub cni_bin: PathBuf,
    /// Namespaces `up` created, in order.
    pub netns: Vec<String>,
    pub pods: Vec<PodRecord>,
    /// Other processes the lab started; `down` kills exactly these.
    pub pids: Vec<u32>,
    /// The node agent binary `up` used.
    #[serde(default)]
    pub twilld_bin: PathBuf,
    /// The node agents, one per node.
    #[serde(default)]
    pub agents: Vec<ProcRecord>,
    /// The etcd member, for `--store etcd`.
    #[serde(default)]
    pub etcd: Option<ProcRecord>,
    /// The router's routing daemons (BIRD; or FRR's zebra and bgpd/ripd), in start order.
    #[serde(default)]
    pub router: Vec<ProcRecord>,
    /// `--backend ovs`: every node's ovsdb-server and ovs-vswitchd (roles `ovsdb-<node>`,
    /// `vswitchd-<node>`), stopped by PID with their node and the lab.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ovs: Vec<ProcRecord>,
}

impl LabState {
    pub fn new(plan: LabPlan, cni_bin: PathBuf, twilld_bin: PathBuf) -> LabState {
        LabState {
            plan,
            cni_bin,
            netns: Vec::new(),
            pods: Vec::new(),
            pids: Vec::new(),
            twilld_bin,
            agents: Vec::new(),
            etcd: None,
            router: Vec::new(),
            ovs: Vec::new(),
        }
    }

    pub fn agent(&self, node: &str) -> Option<&ProcRecord> {
        self.agents.iter().find(|a| a.role == node)
    }

    pub fn file(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Writes the state atomically (temp file + rename), so a crash never leaves half a file.
    pub fn save(&self) -> Result<(), StateError> {
        let path = Self::file(&self.plan.state_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text).map_err(|source| StateError::Write {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| StateError::Write { path, source })
    }

    /// Reads the state of lab `name` from `dir`.
    pub fn load(name: &str, dir: &Path) -> Result<LabState, StateError> {
        let path = Self::file(dir);
        let text = std::fs::read(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StateError::Missing {
                    name: name.into(),
                    path: path.clone(),
                }
            } else {
                StateError::Read {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
            name: name.into(),
            path,
            source,
        })
    }

    pub fn pod(&self, short: &str) -> Option<&PodRecord> {
        self.pods.iter().find(|p| p.short == short)
    }
}
