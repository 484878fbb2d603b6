//! The static store: the cluster written by hand in one JSON file (the per-node configured
//! meshes of the Open vSwitch days), presented through the same [`Store`] trait so an
//! agent runs unchanged:
//!
//! ```json
//! {"config": {"clusterCIDR": "10.244.0.0/16", "blockSize": 24, "backend": "static"},
//!  "nodes": [{"name": "n1", "address": "192.0.2.11", "blocks": ["10.244.1.0/24"]},
//!            {"name": "n2", "address": "192.0.2.12", "blocks": ["10.244.2.0/24"]}]}
//! ```
//!
//! Keys: `/twill/v1/config` ([`NetworkConfig`]), `/twill/v1/nodes/<name>` ([`NodeStatus`],
//! `autodetection: "static"`), `/twill/v1/blocks/<a.b.c.d>-<len>` ([`Block`]). Writes fail
//! with `ReadOnly`; leases are no-ops that never expire. The file is re-read whenever its
//! mtime, size or inode changes (checked on every call and every 50 ms by watches); each
//! reload that changes something bumps the revision and its diff becomes watch events. A
//! file that does not hold up is an error (file, line, field) on every call until fixed.

use crate::{
    Event, KeyRange, KeyValue, LeaseId, Result, Revision, Store, StoreError, Watch, PREFIX,
};
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use twill_api::resources::{block_key, Block, NetworkConfig, NodeStatus, KEY_CONFIG, PREFIX_NODES};

const WATCH_POLL: Duration = Duration::from_millis(50);

/// The file as written by hand.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticFile {
    config: NetworkConfig,
    #[serde(default)]
    nodes: Vec<StaticNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticNode {
    name: String,
    address: Ipv4Addr,
    #[serde(default)]
    blocks: Vec<Ipv4Net>,
}

/// The line holding the `nth` (0-based) occurrence of `needle`, if any.
fn line_of(text: &str, needle: &str, nth: usize) -> Option<usize> {
    let (at, _) = text.match_indices(needle).nth(nth)?;
    Some(text[..at].matches('\n').count() + 1)
}

/// The name of the last object key before `line`:`column` (1-based), if any.
fn field_before(text: &str, line: usize, column: usize) -> Option<String> {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let end = (start + column).min(text.len());
    let before = text.get(..end)?;
    let colon = before.rfind("\":")?;
    let open = before[..colon].rfind('"')?;
    Some(before[open + 1..colon].to_string())
}

/// Parses and checks the file's text into the store's keys and values. Pure.
fn parse(file: &str, text: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let bad = |line: Option<usize>, field: &str, reason: String| {
        let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
        StoreError::Config(format!("{file}: {at}{field}: {reason}"))
    };
    let parsed: StaticFile = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        // serde_json names missing and unknown fields but not the one holding a bad value.
        let field = field_before(text, e.line(), e.column())
            .filter(|f| !msg.contains(&format!("`{f}`")))
            .map(|f| format!("{f}: "))
            .unwrap_or_default();
        StoreError::Config(format!(
            "{file}: line {} column {}: {field}{msg} (expected {{\"config\": {{\"clusterCIDR\": …}}, \
             \"nodes\": [{{\"name\", \"address\", \"blocks\"}}]}})",
            e.line(),
            e.column()
        ))
    })?;
    let config = parsed.config;
    config.validate().map_err(|e| {
        let line = line_of(text, &format!("\"{}\"", e.field), 0);
        bad(line, &format!("config.{}", e.field), e.reason)
    })?;
    let mut out = BTreeMap::new();
    out.insert(
        format!("{PREFIX}{KEY_CONFIG}"),
        serde_json::to_vec(&config).expect("config serializes"),
    );
    let mut owners: Vec<(Ipv4Net, &str)> = Vec::new();
    for (i, node) in parsed.nodes.iter().enumerate() {
        let name = node.name.as_str();
        let quoted = format!("\"{name}\"");
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
            return Err(bad(
                line_of(text, &quoted, 0),
                &format!("nodes[{i}].name"),
                format!("{name:?} is not a node name (non-empty, no '/' or spaces)"),
            ));
        }
        let key = format!("{PREFIX}{PREFIX_NODES}{name}");
        if out.contains_key(&key) {
            return Err(bad(
                line_of(text, &quoted, 1),
                &format!("nodes[{i}].name"),
                format!("node {name:?} is listed twice; merge the two entries"),
            ));
        }
        for (j, &cidr) in node.blocks.iter().enumerate() {
            let field = format!("nodes[{i}].blocks[{j}]");
            let line = line_of(text, &format!("\"{cidr}\""), 0);
            if cidr.trunc() != cidr {
                return Err(bad(
                    line,
                    &field,
                    format!("{cidr} has host bits set; did you mean {}?", cidr.trunc()),
                ));
            }
            if !config.cluster_cidr.contains(&cidr) || cidr.prefix_len() != config.block_size {
                return Err(bad(
                    line,
                    &field,
                    format!(
                        "{cidr} must be a /{} block inside clusterCIDR {}",
                        config.block_size, config.cluster_cidr
                    ),
                ));
            }
            if let Some((other, owner)) = owners
                .iter()
                .find(|(o, _)| o.contains(&cidr) || cidr.contains(o))
            {
                return Err(bad(
                    line,
                    &field,
                    format!("{cidr} overlaps {other} of node {owner:?}; give each node its own"),
                ));
            }
            owners.push((cidr, name));
            let block = Block {
                cidr,
                node: name.to_string(),
                claimed_at: 0,
            };
            out.insert(
                format!("{PREFIX}{}", block_key(cidr)),
                serde_json::to_vec(&block).expect("block serializes"),
            );
        }
        let status = NodeStatus {
            name: name.to_string(),
            address: node.address,
            autodetection: "static".into(),
            reason: format!("written in {file}"),
            blocks: node.blocks.clone(),
            started_at: 0,
            agent_version: String::new(),
        };
        out.insert(key, serde_json::to_vec(&status).expect("node serializes"));
    }
    Ok(out)
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

struct Loaded {
    stamp: Option<Stamp>,
    rev: Revision,
    kvs: BTreeMap<String, KeyValue>,
    /// Every change since the first load (the file is small; nothing is compacted).
    history: Vec<Event>,
}

struct Shared {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

/// The hand-written file, read-only through the [`Store`] trait.
pub struct StaticStore {
    shared: Arc<Shared>,
    next_lease: AtomicI64,
    leases: Mutex<BTreeMap<i64, Duration>>,
}

impl StaticStore {
    /// Reads `path`; fails if it is missing or does not hold up (the error names the file,
    /// the line and the field).
    pub fn open(path: &Path) -> Result<StaticStore> {
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp: None,
                rev: 0,
                kvs: BTreeMap::new(),
                history: Vec::new(),
            }),
        });
        drop(shared.refresh()?);
        Ok(StaticStore {
            shared,
            next_lease: AtomicI64::new(1),
            leases: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Shared {
    /// Re-reads the file if it changed; returns the up-to-date state.
    fn refresh(&self) -> Result<MutexGuard<'_, Loaded>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let io = |op| crate::embedded::io_err(op, &self.path);
        let meta = std::fs::metadata(&self.path).map_err(io("stat"))?;
        let stamp = Stamp {
            mtime: meta.modified().ok(),
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        if loaded.stamp.as_ref() == Some(&stamp) {
            return Ok(loaded);
        }
        let text = std::fs::read_to_string(&self.path).map_err(io("read"))?;
        let fresh = parse(&self.path.display().to_string(), &text)?;
        let rev = loaded.rev + 1;
        let mut events = Vec::new();
        for (key, kv) in &loaded.kvs {
            if !fresh.contains_key(key) {
                events.push(Event::Delete {
                    key: kv.key.clone(),
                    mod_revision: rev,
                });
            }
        }
        for (key, value) in fresh {
            let create_revision = match loaded.kvs.get(&key) {
                Some(kv) if kv.value == value => continue,
                Some(kv) => kv.create_revision,
                None => rev,
            };
            events.push(Event::Put(KeyValue {
                key,
                value,
                create_revision,
                mod_revision: rev,
                lease: None,
            }));
        }
        // Keep event order by key within the revision, as etcd's txn would.
        events.sort_by(|a, b| a.key().cmp(b.key()));
        if !events.is_empty() {
            loaded.rev = rev;
            for e in &events {
                match e {
                    Event::Put(kv) => {
                        loaded.kvs.insert(kv.key.clone(), kv.clone());
                    }
                    Event::Delete { key, .. } => {
                        loaded.kvs.remove(key);
                    }
                }
            }
            loaded.history.extend(events);
        }
        loaded.stamp = Some(stamp);
        Ok(loaded)
    }
}

const READ_ONLY: StoreError = StoreError::ReadOnly(crate::StoreKind::Static);

impl Store for StaticStore {
    fn kind(&self) -> crate::StoreKind {
        crate::StoreKind::Static
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.shared.refresh()?.kvs.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let loaded = self.shared.refresh()?;
        let kvs = loaded
            .kvs
            .values()
            .filter(|kv| kv.key.starts_with(prefix))
            .cloned()
            .collect();
        Ok((kvs, loaded.rev))
    }

    fn put(&self, _: &str, _: &[u8], _: Option<LeaseId>) -> Result<Revision> {
        Err(READ_ONLY)
    }

    fn create(&self, _: &str, _: &[u8], _: Option<LeaseId>) -> Result<Option<Revision>> {
        Err(READ_ONLY)
    }

    fn update(&self, _: &str, _: Revision, _: &[u8], _: Option<LeaseId>) -> Result<bool> {
        Err(READ_ONLY)
    }

    fn delete(&self, _: &str) -> Result<bool> {
        Err(READ_ONLY)
    }

    fn delete_if(&self, _: &str, _: Revision) -> Result<bool> {
        Err(READ_ONLY)
    }

    /// A lease that never expires, so an agent written for etcd runs unchanged.
    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, ttl);
        Ok(LeaseId(id))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases
            .get(&lease.0)
            .copied()
            .ok_or(StoreError::LeaseExpired(lease))
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases
            .remove(&lease.0)
            .map(|_| ())
            .ok_or(StoreError::LeaseExpired(lease))
    }

    fn watch_range(&self, range: &KeyRange, after: Revision) -> Result<Box<dyn Watch>> {
        drop(self.shared.refresh()?);
        Ok(Box::new(StaticWatch {
            shared: self.shared.clone(),
            range: range.clone(),
            cursor: after,
            next_index: 0,
        }))
    }
}

struct StaticWatch {
    shared: Arc<Shared>,
    range: KeyRange,
    cursor: Revision,
    /// Where to resume in the history (it only grows).
    next_index: usize,
}

impl Watch for StaticWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let loaded = self.shared.refresh()?;
                while let Some(e) = loaded.history.get(self.next_index) {
                    self.next_index += 1;
                    if e.revision() > self.cursor && self.range.contains(e.key()) {
                        return Ok(Some(e.clone()));
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(WATCH_POLL.min(deadline - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"config": {"clusterCIDR": "10.244.0.0/16", "blockSize": 24, "backend": "static"},
 "nodes": [{"name": "n1", "address": "192.0.2.11", "blocks": ["10.244.1.0/24"]},
           {"name": "n2", "address": "192.0.2.12", "blocks": ["10.244.2.0/24"]}]}"#;

    #[test]
    fn presents_config_nodes_and_blocks() {
        let kvs = parse("f.json", GOOD).unwrap();
        let keys: Vec<&str> = kvs.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "/twill/v1/blocks/10.244.1.0-24",
                "/twill/v1/blocks/10.244.2.0-24",
                "/twill/v1/config",
                "/twill/v1/nodes/n1",
                "/twill/v1/nodes/n2"
            ]
        );
        let block: Block = serde_json::from_slice(&kvs["/twill/v1/blocks/10.244.2.0-24"]).unwrap();
        assert_eq!(
            (block.node.as_str(), block.cidr.to_string().as_str()),
            ("n2", "10.244.2.0/24")
        );
        let node: NodeStatus = serde_json::from_slice(&kvs["/twill/v1/nodes/n1"]).unwrap();
        assert_eq!(node.address, Ipv4Addr::new(192, 0, 2, 11));
        let config: NetworkConfig = serde_json::from_slice(&kvs["/twill/v1/config"]).unwrap();
        assert_eq!(
            config.backend,
            twill_api::resources::BackendSpec::Static(Default::default())
        );
    }

    fn err(text: &str) -> String {
        parse("f.json", text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err(&GOOD.replace("\"192.0.2.12\"", "12"));
        assert!(e.contains("f.json: line 3 column"), "{e}");
        let e = err(&GOOD.replace("192.0.2.12", "192.0.2.300"));
        assert!(e.contains("line 3 column 50: address: invalid IPv4"), "{e}");
        let e = err(&GOOD.replace("\"address\": \"192.0.2.12\"", "\"addr\": \"x\""));
        assert!(e.contains("line 3") && e.contains("addr"), "{e}");
        let e = err(&GOOD.replace("10.244.2.0/24", "10.245.2.0/24"));
        assert!(
            e.contains("line 3: nodes[1].blocks[0]") && e.contains("clusterCIDR"),
            "{e}"
        );
        let e = err(&GOOD.replace("10.244.2.0/24", "10.244.1.0/24"));
        assert!(e.contains("overlaps") && e.contains("\"n1\""), "{e}");
        let e = err(&GOOD.replace("\"n2\"", "\"n1\""));
        assert!(
            e.contains("line 3: nodes[1].name") && e.contains("twice"),
            "{e}"
        );
        let e = err(&GOOD.replace("\"blockSize\": 24", "\"blockSize\": 8"));
        assert!(e.contains("line 1: config.blockSize"), "{e}");
        let e = err("{\"config\": ");
        assert!(e.contains("f.json: line 1"), "{e}");
    }
}
