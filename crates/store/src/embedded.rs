//! The embedded store: no server, one folder shared by every process on the machine (one
//! `twilld` per lab node namespace), with etcd's semantics (one global revision, atomic
//! create-if-absent, TTL leases, watch from a revision).
//!
//! Design, and why:
//! - `log.jsonl` is the whole store: a header line (a snapshot: keys, leases, the revision,
//!   the compacted revision and the recent history), then one JSON line per change. An
//!   append-only log makes a write one `write(2)` and lets every process follow the others
//!   by reading the tail from its last offset, which also gives watches their events.
//! - Every mutation runs under an exclusive `flock` on `lock`: the writer catches up with
//!   the tail first, so its decision (create-if-absent, compare revision, lease expiry)
//!   sees every earlier write of every process. Readers take no lock: they only consume
//!   complete lines (a line is appended with its `\n` in one write).
//! - Leases are rows in the same log with an absolute wall-clock expiry, so they outlive the
//!   process that granted them and expire while nobody runs. Any access first expires due
//!   leases (under the lock), deleting their keys in one revision: watchers see the
//!   `Delete`s at the revision of expiry. Watches poll every 50 ms, which also drives expiry.
//! - Compaction (every [`Options::compact_after_records`] records, or [`EmbeddedStore::compact`])
//!   writes a new file (snapshot + the last [`Options::keep_revisions`] revisions of
//!   history) and renames it over the log; other processes notice the new inode, finish the
//!   old file and continue from the new one. A watch from before the kept history gets
//!   `Compacted`.
//! - A crash mid-append leaves a partial last line: readers ignore it, and the next writer
//!   (who holds the lock, so nobody else is writing) truncates it.
//! - `fdatasync` is off by default: data survive the crash of any process (the page cache
//!   holds it), and the lab keeps the folder on tmpfs (/run) where syncing is a no-op. Turn
//!   on [`Options::sync`] to survive power loss on a real disk.

use crate::{Event, KeyRange, KeyValue, LeaseId, Result, Revision, Store, StoreError, Watch};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LOG_FILE: &str = "log.jsonl";
const LOG_TMP_FILE: &str = "log.jsonl.tmp";
const LOCK_FILE: &str = "lock";
const FORMAT: u32 = 1;
/// How often a watch looks at the log tail (and expires due leases).
const WATCH_POLL: Duration = Duration::from_millis(50);
/// In-memory history cap per handle, so a long-lived process stays bounded.
const MAX_HISTORY_EVENTS: usize = 100_000;

/// Tuning of an [`EmbeddedStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `fdatasync` after every write (power-loss safety on a real disk).
    pub sync: bool,
    /// Compact when the log holds this many records after its snapshot.
    pub compact_after_records: usize,
    /// Revisions of history a compaction keeps for watches.
    pub keep_revisions: i64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync: false,
            compact_after_records: 10_000,
            keep_revisions: 1_000,
        }
    }
}

/// A handle on the store in a folder. Cheap to share across threads; open one per process.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    log_path: PathBuf,
    lock_file: File,
    opts: Options,
    inner: Mutex<Inner>,
}

struct Inner {
    /// The log file as this handle opened it (it may since have been replaced).
    log: File,
    /// (device, inode) of `log`, to notice a compaction's replacement.
    ident: (u64, u64),
    /// Bytes of `log` consumed (complete lines only).
    offset: u64,
    /// Lines of `log` consumed, for error messages.
    lines: usize,
    /// Records after the header, to decide when to compact.
    records_since_snapshot: usize,
    state: State,
}

#[derive(Default)]
struct State {
    rev: Revision,
    /// Events with a revision up to this one are gone.
    compacted: Revision,
    next_lease: i64,
    kvs: BTreeMap<String, KeyValue>,
    leases: BTreeMap<i64, LeaseRow>,
    history: VecDeque<Event>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LeaseRow {
    ttl_ms: u64,
    /// Milliseconds since the Unix epoch: absolute, so it holds across processes and restarts.
    expires_ms: u64,
}

/// One line of the log. Read through [`FlatRecord`] (same JSON, one pass).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", try_from = "FlatRecord")]
enum Record {
    Put {
        rev: Revision,
        key: String,
        #[serde(with = "value_codec")]
        value: Vec<u8>,
        create_rev: Revision,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<i64>,
    },
    /// Keys deleted in one revision; `lease`: the lease whose end took them.
    Delete {
        rev: Revision,
        keys: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<i64>,
    },
    /// A lease granted or renewed.
    Lease {
        id: i64,
        ttl_ms: u64,
        expires_ms: u64,
    },
    /// A lease that ended holding no key (no revision: etcd bumps none either).
    LeaseEnd { id: i64 },
}

/// How a [`Record`] line is parsed: one flat struct, which serde reads in a single pass.
/// The internally tagged enum would buffer each line into a tree of its own first and then
/// copy it (and the untagged value once more): every process parses every line appended by
/// every other, and an agent opening the store parses the whole log, so this is most of the
/// store's CPU time with 100 agents on one store.
#[derive(Deserialize)]
struct FlatRecord {
    op: Op,
    rev: Option<Revision>,
    key: Option<String>,
    #[serde(default, deserialize_with = "value_codec::deserialize_some")]
    value: Option<Vec<u8>>,
    create_rev: Option<Revision>,
    lease: Option<i64>,
    keys: Option<Vec<String>>,
    id: Option<i64>,
    ttl_ms: Option<u64>,
    expires_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Put,
    Delete,
    Lease,
    LeaseEnd,
}

impl TryFrom<FlatRecord> for Record {
    type Error = String;

    fn try_from(f: FlatRecord) -> std::result::Result<Record, String> {
        fn need<T>(op: Op, name: &str, v: Option<T>) -> std::result::Result<T, String> {
            v.ok_or_else(|| format!("a {op:?} record without its field `{name}`"))
        }
        let op = f.op;
        Ok(match op {
            Op::Put => Record::Put {
                rev: need(op, "rev", f.rev)?,
                key: need(op, "key", f.key)?,
                value: need(op, "value", f.value)?,
                create_rev: need(op, "create_rev", f.create_rev)?,
                lease: f.lease,
            },
            Op::Delete => Record::Delete {
                rev: need(op, "rev", f.rev)?,
                keys: need(op, "keys", f.keys)?,
                lease: f.lease,
            },
            Op::Lease => Record::Lease {
                id: need(op, "id", f.id)?,
                ttl_ms: need(op, "ttl_ms", f.ttl_ms)?,
                expires_ms: need(op, "expires_ms", f.expires_ms)?,
            },
            Op::LeaseEnd => Record::LeaseEnd {
                id: need(op, "id", f.id)?,
            },
        })
    }
}

/// The first line of the log: the state at `rev`, plus history after `compacted`.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    rev: Revision,
    compacted: Revision,
    next_lease: i64,
    kvs: Vec<Record>,
    leases: Vec<Record>,
    history: Vec<Record>,
}

/// Values are mostly JSON text: store them as a string when they are UTF-8 (readable
/// logs), as an array of bytes otherwise.
mod value_codec {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(v) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(v),
        }
    }

    /// Text or an array of bytes, read straight into the bytes (no intermediate value).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                Ok(v.as_bytes().to_vec())
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<u8>, E> {
                Ok(v.into_bytes())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_any(Bytes)
    }

    /// [`deserialize`] for a field that is optional (absent: `None`, by `serde(default)`).
    pub fn deserialize_some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        deserialize(d).map(Some)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { op, path, source }
}

/// An exclusive `flock`, released on drop.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn exclusive(file: &'a File, path: &Path) -> Result<Flock<'a>> {
        loop {
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Flock(file));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_err("flock", path)(e));
            }
        }
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl State {
    fn apply(&mut self, rec: &Record) {
        match rec {
            Record::Put {
                rev,
                key,
                value,
                create_rev,
                lease,
            } => {
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: *create_rev,
                    mod_revision: *rev,
                    lease: lease.map(LeaseId),
                };
                self.kvs.insert(key.clone(), kv.clone());
                self.history.push_back(Event::Put(kv));
                self.rev = self.rev.max(*rev);
            }
            Record::Delete { rev, keys, lease } => {
                for key in keys {
                    self.kvs.remove(key);
                    self.history.push_back(Event::Delete {
                        key: key.clone(),
                        mod_revision: *rev,
                    });
                }
                if let Some(id) = lease {
                    self.leases.remove(id);
                }
                self.rev = self.rev.max(*rev);
            }
            Record::Lease {
                id,
                ttl_ms,
                expires_ms,
            } => {
                self.leases.insert(
                    *id,
                    LeaseRow {
                        ttl_ms: *ttl_ms,
                        expires_ms: *expires_ms,
                    },
                );
                self.next_lease = self.next_lease.max(id + 1);
            }
            Record::LeaseEnd { id } => {
                self.leases.remove(id);
            }
        }
        self.trim_history(MAX_HISTORY_EVENTS);
    }

    fn trim_history(&mut self, max: usize) {
        while self.history.len() > max {
            let rev = self.history.front().map(Event::revision).unwrap_or(0);
            // Drop whole revisions, so a watch never gets half of one.
            while self.history.front().is_some_and(|e| e.revision() == rev) {
                self.history.pop_front();
            }
            self.compacted = self.compacted.max(rev);
        }
    }

    fn forget_through(&mut self, rev: Revision) {
        while self.history.front().is_some_and(|e| e.revision() <= rev) {
            self.history.pop_front();
        }
        self.compacted = self.compacted.max(rev);
    }

    fn has_due_lease(&self, now: u64) -> bool {
        self.leases.values().any(|l| l.expires_ms <= now)
    }

    fn lease_keys(&self, id: i64) -> Vec<String> {
        self.kvs
            .values()
            .filter(|kv| kv.lease == Some(LeaseId(id)))
            .map(|kv| kv.key.clone())
            .collect()
    }

    /// The record ending lease `id` (deleting its keys in one revision, if it has any).
    fn end_lease(&self, id: i64, rev: Revision) -> Record {
        let keys = self.lease_keys(id);
        if keys.is_empty() {
            Record::LeaseEnd { id }
        } else {
            Record::Delete {
                rev,
                keys,
                lease: Some(id),
            }
        }
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<()> {
        match lease {
            Some(l) if !self.leases.contains_key(&l.0) => Err(StoreError::LeaseExpired(l)),
            _ => Ok(()),
        }
    }

    fn put_record(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Record {
        let rev = self.rev + 1;
        Record::Put {
            rev,
            key: key.to_string(),
            value: value.to_vec(),
            create_rev: self.kvs.get(key).map_or(rev, |kv| kv.create_revision),
            lease: lease.map(|l| l.0),
        }
    }

    fn header(&self) -> Header {
        let put = |kv: &KeyValue| Record::Put {
            rev: kv.mod_revision,
            key: kv.key.clone(),
            value: kv.value.clone(),
            create_rev: kv.create_revision,
            lease: kv.lease.map(|l| l.0),
        };
        let mut history: Vec<Record> = Vec::new();
        for event in &self.history {
            match event {
                Event::Put(kv) => history.push(put(kv)),
                Event::Delete { key, mod_revision } => match history.last_mut() {
                    Some(Record::Delete { rev, keys, .. }) if rev == mod_revision => {
                        keys.push(key.clone())
                    }
                    _ => history.push(Record::Delete {
                        rev: *mod_revision,
                        keys: vec![key.clone()],
                        lease: None,
                    }),
                },
            }
        }
        Header {
            format: FORMAT,
            rev: self.rev,
            compacted: self.compacted,
            next_lease: self.next_lease,
            kvs: self.kvs.values().map(put).collect(),
            leases: self
                .leases
                .iter()
                .map(|(id, l)| Record::Lease {
                    id: *id,
                    ttl_ms: l.ttl_ms,
                    expires_ms: l.expires_ms,
                })
                .collect(),
            history,
        }
    }

    /// Takes the state of a (new) log's header. Events this handle has not seen yet come
    /// from the header's history; if that does not reach back far enough, the gap becomes
    /// the compacted revision (watches behind it get `Compacted`).
    fn adopt(&mut self, h: Header) {
        let mut fresh = State::default();
        for rec in h.kvs.iter().chain(&h.leases) {
            fresh.apply(rec);
        }
        fresh.history.clear();
        if self.rev < h.compacted || self.rev > h.rev {
            self.history.clear();
            self.compacted = self.compacted.max(h.compacted).max(self.rev.min(h.rev));
        }
        let seen = self.rev;
        for rec in &h.history {
            let mut one = State::default();
            one.apply(rec);
            for e in one.history {
                if e.revision() > seen {
                    self.history.push_back(e);
                }
            }
        }
        self.rev = h.rev;
        self.kvs = fresh.kvs;
        self.leases = fresh.leases;
        self.next_lease = self.next_lease.max(h.next_lease).max(fresh.next_lease);
        self.forget_through(h.compacted);
        self.trim_history(MAX_HISTORY_EVENTS);
    }
}

/// Opens the log at `path` and parses its header line; returns the file, its identity,
/// the header and the header's length in bytes (with its newline).
fn open_log(path: &Path) -> Result<(File, (u64, u64), Header, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("stat", path))?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let newline = loop {
        let n = file
            .read_at(&mut chunk, buf.len() as u64)
            .map_err(io_err("read", path))?;
        if n == 0 {
            return Err(StoreError::Protocol(format!(
                "{}: the header line is missing or cut; the folder is not an embedded store \
                 (or was damaged): remove it to start empty",
                path.display()
            )));
        }
        let start = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
            break start + i;
        }
    };
    let header: Header = serde_json::from_slice(&buf[..newline]).map_err(|e| {
        StoreError::Protocol(format!(
            "{}: line 1 (header): {e}; the store is damaged: remove the folder to start empty",
            path.display()
        ))
    })?;
    if header.format != FORMAT {
        return Err(StoreError::Protocol(format!(
            "{}: format {} is not the format {FORMAT} this twill reads; use the matching version",
            path.display(),
            header.format
        )));
    }
    Ok((file, (meta.dev(), meta.ino()), header, newline as u64 + 1))
}

/// Writes a log holding only `header`, atomically (write a temporary file, rename it).
fn write_log(dir: &Path, header: &Header, sync: bool) -> Result<()> {
    let tmp = dir.join(LOG_TMP_FILE);
    let path = dir.join(LOG_FILE);
    let mut line = serde_json::to_vec(header).expect("header serializes");
    line.push(b'\n');
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(&line).map_err(io_err("write", &tmp))?;
    if sync {
        f.sync_data().map_err(io_err("fdatasync", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    if sync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", dir))?;
    }
    Ok(())
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, with default [`Options`].
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        EmbeddedStore::open_with(dir, Options::default())
    }

    /// Opens the store in `dir` only if one is there (its log exists): a reader that must
    /// not leave an empty store behind where it looked. [`StoreError::Missing`] otherwise.
    pub fn open_existing(dir: &Path) -> Result<EmbeddedStore> {
        if !dir.join(LOG_FILE).is_file() {
            let reason = if dir.is_dir() {
                format!("the folder exists but holds no {LOG_FILE}")
            } else {
                "the folder does not exist".to_string()
            };
            return Err(StoreError::Missing {
                path: dir.display().to_string(),
                reason,
            });
        }
        EmbeddedStore::open(dir)
    }

    pub fn open_with(dir: &Path, opts: Options) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(dir).map_err(io_err("create folder", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        let log_path = dir.join(LOG_FILE);
        let (log, ident, header, offset) = {
            let _lock = Flock::exclusive(&lock_file, &lock_path)?;
            if !log_path.exists() {
                write_log(dir, &State::default().header(), opts.sync)?;
            }
            open_log(&log_path)?
        };
        let mut state = State::default();
        state.adopt(header);
        let inner = Inner {
            log,
            ident,
            offset,
            lines: 1,
            records_since_snapshot: 0,
            state,
        };
        let store = EmbeddedStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                log_path,
                lock_file,
                opts,
                inner: Mutex::new(inner),
            }),
        };
        // Catch up with the log and apply expiries that fell due while nobody ran.
        store.shared.read(|_| ())?;
        Ok(store)
    }

    /// The folder this store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Drops history up to and including `revision` (etcd's compaction) and rewrites the
    /// log as one snapshot; watches from before it get `Compacted`. Returns the compacted
    /// revision (clamped to the current one).
    pub fn compact(&self, revision: Revision) -> Result<Revision> {
        let mut inner = self.shared.lock_inner();
        let _lock = self.shared.flock()?;
        self.shared.catch_up(&mut inner, true)?;
        self.shared.expire_due(&mut inner)?;
        self.shared.compact_locked(&mut inner, revision)?;
        Ok(inner.state.compacted)
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<Revision> {
        self.shared.read(|s| s.rev)
    }
}

impl Shared {
    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere leaves the state consistent (records are applied whole).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flock(&self) -> Result<Flock<'_>> {
        Flock::exclusive(&self.lock_file, &self.dir.join(LOCK_FILE))
    }

    /// Applies the complete lines appended since our offset. With the lock held
    /// (`writer`), a partial last line can only be a crashed writer's: cut it off.
    fn read_tail(&self, inner: &mut Inner, writer: bool) -> Result<()> {
        let path = &self.log_path;
        let len = inner.log.metadata().map_err(io_err("stat", path))?.len();
        if len <= inner.offset {
            return Ok(());
        }
        let mut buf = vec![0u8; (len - inner.offset) as usize];
        let mut got = 0;
        while got < buf.len() {
            let n = inner
                .log
                .read_at(&mut buf[got..], inner.offset + got as u64)
                .map_err(io_err("read", path))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in buf[..complete].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            inner.lines += 1;
            let rec: Record = serde_json::from_slice(line).map_err(|e| {
                StoreError::Protocol(format!(
                    "{}: line {}: {e}; the log is damaged: remove the lines from there on \
                     (or the folder) and restart",
                    path.display(),
                    inner.lines
                ))
            })?;
            inner.state.apply(&rec);
            inner.records_since_snapshot += 1;
        }
        inner.offset += complete as u64;
        if writer && (complete as u64) < got as u64 {
            inner
                .log
                .set_len(inner.offset)
                .map_err(io_err("truncate the partial last line of", path))?;
        }
        Ok(())
    }

    /// Brings this handle up to date with the log, following compactions.
    fn catch_up(&self, inner: &mut Inner, writer: bool) -> Result<()> {
        loop {
            self.read_tail(inner, writer)?;
            let meta = std::fs::metadata(&self.log_path).map_err(io_err("stat", &self.log_path))?;
            let same = (meta.dev(), meta.ino()) == inner.ident;
            if same && meta.len() >= inner.offset {
                return Ok(());
            }
            if same {
                // Shrunk under us (cut by hand while running): start over from the file;
                // watches of this handle may miss or repeat events.
                inner.state = State::default();
            } else {
                // Replaced by a compaction. Writers catch up (and so switch files) before
                // appending, so once the rename is visible the old file is final: finish it.
                self.read_tail(inner, false)?;
            }
            let (log, ident, header, offset) = open_log(&self.log_path)?;
            inner.state.adopt(header);
            inner.log = log;
            inner.ident = ident;
            inner.offset = offset;
            inner.lines = 1;
            inner.records_since_snapshot = 0;
        }
    }

    /// Appends `records` (one write) and applies them. Lock held, caught up.
    fn append(&self, inner: &mut Inner, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for rec in records {
            serde_json::to_writer(&mut buf, rec).expect("record serializes");
            buf.push(b'\n');
        }
        let path = &self.log_path;
        let written = inner.log.write_all(&buf).and_then(|()| {
            if self.opts.sync {
                inner.log.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Leave no partial line behind (we hold the lock: nobody else appends).
            let _ = inner.log.set_len(inner.offset);
            return Err(io_err("append to", path)(e));
        }
        inner.offset += buf.len() as u64;
        inner.lines += records.len();
        inner.records_since_snapshot += records.len();
        for rec in records {
            inner.state.apply(rec);
        }
        Ok(())
    }

    /// Ends every lease that is due, each in its own revision. Lock held, caught up.
    fn expire_due(&self, inner: &mut Inner) -> Result<()> {
        let now = now_ms();
        let mut due: Vec<(u64, i64)> = inner
            .state
            .leases
            .iter()
            .filter(|(_, l)| l.expires_ms <= now)
            .map(|(id, l)| (l.expires_ms, *id))
            .collect();
        due.sort();
        for (_, id) in due {
            let rec = inner.state.end_lease(id, inner.state.rev + 1);
            self.append(inner, &[rec])?;
        }
        Ok(())
    }

    fn compact_locked(&self, inner: &mut Inner, keep_after: Revision) -> Result<()> {
        let keep_after = keep_after.clamp(inner.state.compacted, inner.state.rev);
        inner.state.forget_through(keep_after);
        write_log(&self.dir, &inner.state.header(), self.opts.sync)?;
        let (log, ident, _, offset) = open_log(&self.log_path)?;
        inner.log = log;
        inner.ident = ident;
        inner.offset = offset;
        inner.lines = 1;
        inner.records_since_snapshot = 0;
        Ok(())
    }

    /// Runs `f` on the current state (expiring due leases first).
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T> {
        let mut inner = self.lock_inner();
        self.catch_up(&mut inner, false)?;
        if inner.state.has_due_lease(now_ms()) {
            // Caught up just above: under the lock only what came since is parsed.
            let _lock = self.flock()?;
            self.catch_up(&mut inner, true)?;
            self.expire_due(&mut inner)?;
        }
        Ok(f(&inner.state))
    }

    /// Runs the mutation `f` under the lock: `f` sees the up-to-date state and returns the
    /// records to append and its answer.
    fn write<T>(&self, f: impl FnOnce(&State, u64) -> Result<(Vec<Record>, T)>) -> Result<T> {
        let mut inner = self.lock_inner();
        // Parse the tail before taking the lock: every other process waits while we hold
        // it, so under it only the lines appended meanwhile are read. (With 100 agents on
        // one store, catching up under the lock made each write wait ~0.7 s.)
        self.catch_up(&mut inner, false)?;
        let _lock = self.flock()?;
        self.catch_up(&mut inner, true)?;
        self.expire_due(&mut inner)?;
        let (records, answer) = f(&inner.state, now_ms())?;
        self.append(&mut inner, &records)?;
        if inner.records_since_snapshot >= self.opts.compact_after_records {
            let keep_after = inner.state.rev - self.opts.keep_revisions;
            self.compact_locked(&mut inner, keep_after)?;
        }
        Ok(answer)
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

impl Store for EmbeddedStore {
    fn kind(&self) -> crate::StoreKind {
        crate::StoreKind::Embedded
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.shared.read(|s| s.kvs.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        self.shared.read(|s| {
            let kvs = s
                .kvs
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, kv)| kv.clone())
                .collect();
            (kvs, s.rev)
        })
    }

    fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        self.shared.write(|s, _| {
            s.check_lease(lease)?;
            Ok((vec![s.put_record(key, value, lease)], s.rev + 1))
        })
    }

    fn create(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Option<Revision>> {
        self.shared.write(|s, _| {
            if s.kvs.contains_key(key) {
                return Ok((Vec::new(), None));
            }
            s.check_lease(lease)?;
            Ok((vec![s.put_record(key, value, lease)], Some(s.rev + 1)))
        })
    }

    fn update(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<bool> {
        self.shared.write(|s, _| {
            if s.kvs.get(key).map(|kv| kv.mod_revision) != Some(expected) {
                return Ok((Vec::new(), false));
            }
            s.check_lease(lease)?;
            Ok((vec![s.put_record(key, value, lease)], true))
        })
    }

    fn delete(&self, key: &str) -> Result<bool> {
        self.shared.write(|s, _| {
            if !s.kvs.contains_key(key) {
                return Ok((Vec::new(), false));
            }
            let rec = Record::Delete {
                rev: s.rev + 1,
                keys: vec![key.to_string()],
                lease: None,
            };
            Ok((vec![rec], true))
        })
    }

    fn delete_if(&self, key: &str, expected: Revision) -> Result<bool> {
        self.shared.write(|s, _| {
            if s.kvs.get(key).map(|kv| kv.mod_revision) != Some(expected) {
                return Ok((Vec::new(), false));
            }
            let rec = Record::Delete {
                rev: s.rev + 1,
                keys: vec![key.to_string()],
                lease: None,
            };
            Ok((vec![rec], true))
        })
    }

    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.shared.write(|s, now| {
            let id = s.next_lease.max(1);
            let ttl_ms = ttl_ms(ttl);
            let rec = Record::Lease {
                id,
                ttl_ms,
                expires_ms: now + ttl_ms,
            };
            Ok((vec![rec], LeaseId(id)))
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.shared.write(|s, now| {
            let Some(row) = s.leases.get(&lease.0) else {
                return Err(StoreError::LeaseExpired(lease));
            };
            let rec = Record::Lease {
                id: lease.0,
                ttl_ms: row.ttl_ms,
                expires_ms: now + row.ttl_ms,
            };
            Ok((vec![rec], Duration::from_millis(row.ttl_ms)))
        })
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.shared.write(|s, _| {
            if !s.leases.contains_key(&lease.0) {
                return Err(StoreError::LeaseExpired(lease));
            }
            Ok((vec![s.end_lease(lease.0, s.rev + 1)], ()))
        })
    }

    fn watch_range(&self, range: &KeyRange, after: Revision) -> Result<Box<dyn Watch>> {
        let compacted = self.shared.read(|s| s.compacted)?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        Ok(Box::new(EmbeddedWatch {
            shared: self.shared.clone(),
            range: range.clone(),
            cursor: after,
            pending: VecDeque::new(),
        }))
    }
}

struct EmbeddedWatch {
    shared: Arc<Shared>,
    range: KeyRange,
    /// Every event up to this revision has been queued.
    cursor: Revision,
    pending: VecDeque<Event>,
}

impl Watch for EmbeddedWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            let (cursor, range, pending) = (&mut self.cursor, &self.range, &mut self.pending);
            self.shared.read(|s| {
                if *cursor < s.compacted {
                    return Err(StoreError::Compacted {
                        requested: *cursor,
                        compacted: s.compacted,
                    });
                }
                let start = s.history.partition_point(|e| e.revision() <= *cursor);
                pending.extend(
                    s.history
                        .range(start..)
                        .filter(|e| range.contains(e.key()))
                        .cloned(),
                );
                *cursor = (*cursor).max(s.rev);
                Ok(())
            })??;
            if !self.pending.is_empty() {
                continue;
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

    #[test]
    fn values_round_trip_as_text_or_bytes() {
        for value in [b"{\"a\":1}".to_vec(), vec![0xff, 0x00, 0x80]] {
            let rec = Record::Put {
                rev: 3,
                key: "/k".into(),
                value: value.clone(),
                create_rev: 2,
                lease: None,
            };
            let line = serde_json::to_string(&rec).unwrap();
            assert!(!line.contains('\n'));
            match serde_json::from_str(&line).unwrap() {
                Record::Put { value: v, .. } => assert_eq!(v, value),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn every_record_kind_reads_back_as_written_and_a_missing_field_is_named() {
        let recs = [
            Record::Put {
                rev: 7,
                key: "/twill/v1/nodes/m1".into(),
                value: b"{\"name\":\"m1\",\"note\":\"a \\\"quoted\\\" \\u00e9\"}".to_vec(),
                create_rev: 5,
                lease: Some(3),
            },
            Record::Put {
                rev: 8,
                key: "/k".into(),
                value: vec![],
                create_rev: 8,
                lease: None,
            },
            Record::Delete {
                rev: 9,
                keys: vec!["/a".into(), "/b".into()],
                lease: Some(3),
            },
            Record::Delete {
                rev: 10,
                keys: vec![],
                lease: None,
            },
            Record::Lease {
                id: 3,
                ttl_ms: 20_000,
                expires_ms: 1_796_000_000_000,
            },
            Record::LeaseEnd { id: 4 },
        ];
        for rec in recs {
            let line = serde_json::to_string(&rec).unwrap();
            let back: Record = serde_json::from_str(&line).unwrap();
            assert_eq!(format!("{back:?}"), format!("{rec:?}"), "{line}");
        }
        let e = serde_json::from_str::<Record>(r#"{"op":"put","rev":1,"key":"/k","create_rev":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`value`"), "{e}");
        let e = serde_json::from_str::<Record>(r#"{"op":"rename","rev":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rename"), "{e}");
    }

    #[test]
    fn header_regroups_multi_key_deletes() {
        let mut s = State::default();
        s.apply(&Record::Lease {
            id: 1,
            ttl_ms: 10,
            expires_ms: 0,
        });
        for (rev, key) in [(1, "a"), (2, "b")] {
            s.apply(&Record::Put {
                rev,
                key: key.into(),
                value: vec![],
                create_rev: rev,
                lease: Some(1),
            });
        }
        s.apply(&s.end_lease(1, 3));
        assert!(s.kvs.is_empty() && s.leases.is_empty());
        let h = s.header();
        assert_eq!(h.history.len(), 3);
        let mut t = State::default();
        t.adopt(h);
        assert_eq!(t.history.len(), 4);
        assert_eq!(t.rev, 3);
        assert_eq!(t.next_lease, 2);
    }
}
