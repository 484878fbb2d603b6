//! The cluster store behind Twill: where the network config, the nodes and the blocks of
//! pod addresses each node holds are recorded. One trait, [`Store`], with the semantics of
//! etcd v3 (the reference): keys are strings under `/twill/v1/`, every change bumps a
//! cluster-wide revision, a key may be bound to a lease that expires unless kept alive,
//! and a watch replays every change after a given revision.
//!
//! Implementations:
//! - [`etcd`]: etcd v3 over its JSON gateway (HTTP/1.1, optional TLS), for real clusters;
//! - [`embedded`]: no server, a folder shared by the agents on one machine (the lab);
//! - [`static_file`]: nodes and their subnets written by hand, read-only.
//!
//! Key layout (see docs/store.md): `config`, `nodes/<name>`, `blocks/<a.b.c.d>-<len>`.

pub mod embedded;
pub mod etcd;
pub mod kind;
pub mod open;
pub mod static_file;

pub use kind::{StoreKind, UnknownStore};
pub use open::{open, open_existing, StoreConfig};

/// The shared test suite of the writable stores (see its module docs).
#[doc(hidden)]
pub mod conformance;

use std::time::Duration;

/// The prefix of every key Twill writes.
pub const PREFIX: &str = "/twill/v1/";

/// etcd's revision: a counter bumped by every change in the whole store.
pub type Revision = i64;

/// A lease: keys bound to it vanish when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// The lease the key is bound to, if any.
    pub lease: Option<LeaseId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    /// The key and the revision of its deletion (explicit, or its lease expired).
    Delete {
        key: String,
        mod_revision: Revision,
    },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now; retrying later may work.
    #[error("store unavailable ({endpoint}): {reason}")]
    Unavailable { endpoint: String, reason: String },
    /// The lease is unknown: it expired or was revoked.
    #[error("lease {0:?} has expired or was revoked")]
    LeaseExpired(LeaseId),
    /// The watch start revision was compacted away: list again, then watch from there.
    #[error("revision {requested} was compacted (oldest kept: {compacted}); list and watch again")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The store refuses writes (the static file store).
    #[error("the {0} store is read-only: edit its file instead")]
    ReadOnly(StoreKind),
    /// The store answered something this client cannot read.
    #[error("unexpected answer from the store: {0}")]
    Protocol(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("bad store configuration: {0}")]
    Config(String),
    /// The store to read does not exist (an embedded store's folder holds no log); nothing
    /// was created.
    #[error("no store at {path}: {reason}")]
    Missing { path: String, reason: String },
}

impl StoreError {
    /// Worth retrying with backoff (the agent keeps going; readyz says why).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The keys a watch follows: every key starting with a prefix, or every key in
/// `[from, to)` (etcd's key and range_end), so that a reader skips whole kinds it does not
/// need without one stream per kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    Prefix(String),
    Between {
        from: String,
        to: String,
    },
    /// Every key in any of these ranges, on one stream: a reader can skip a kind that
    /// sorts in the middle of the ones it needs (the agents skip the other nodes'
    /// `blocks/`, which lie between `bgppeers/` and `config`). etcd: one watcher per
    /// range, created on the same stream.
    AnyOf(Vec<KeyRange>),
}

impl KeyRange {
    pub fn contains(&self, key: &str) -> bool {
        match self {
            KeyRange::Prefix(p) => key.starts_with(p.as_str()),
            KeyRange::Between { from, to } => key >= from.as_str() && key < to.as_str(),
            KeyRange::AnyOf(ranges) => ranges.iter().any(|r| r.contains(key)),
        }
    }

    /// A watch of this range from `starts` gives one revision per part.
    pub fn check_starts(&self, starts: &[Revision]) -> Result<()> {
        let parts = self.parts().len();
        if starts.len() != parts {
            return Err(StoreError::Config(format!(
                "a watch of {parts} key ranges was given {} start revisions",
                starts.len()
            )));
        }
        Ok(())
    }

    /// The plain ranges (prefixes and intervals) this one is made of, nested
    /// [`KeyRange::AnyOf`] flattened; what etcd is asked to watch, one watcher each.
    pub fn parts(&self) -> Vec<&KeyRange> {
        match self {
            KeyRange::AnyOf(ranges) => ranges.iter().flat_map(KeyRange::parts).collect(),
            plain => vec![plain],
        }
    }
}

/// A stream of changes under a prefix, in revision order.
pub trait Watch: Send {
    /// The next event, waiting at most `timeout`; `Ok(None)` on timeout. An error ends the
    /// watch (e.g. `Compacted`, or the store went away): list and watch again.
    fn next(&mut self, timeout: Duration) -> Result<Option<Event>>;
}

/// The store. All methods are blocking; implementations are safe to share across threads.
pub trait Store: Send + Sync {
    /// Which kind of store this is.
    fn kind(&self) -> StoreKind;

    fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Every key starting with `prefix`, sorted by key, and the store's revision then.
    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    /// Writes `key` unconditionally; returns the new revision.
    fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision>;

    /// Writes `key` only if it does not exist (etcd: `txn` comparing create_revision = 0).
    /// `Ok(None)`: it existed, nothing written; `Ok(Some(rev))`: created at `rev`.
    fn create(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Option<Revision>>;

    /// Writes `key` only if its mod_revision is still `expected` (optimistic update).
    /// `Ok(false)`: it changed (or vanished) meanwhile; nothing written.
    fn update(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<bool>;

    /// Deletes `key`; `Ok(false)` if it did not exist.
    fn delete(&self, key: &str) -> Result<bool>;

    /// Deletes `key` only if its mod_revision is still `expected`.
    fn delete_if(&self, key: &str, expected: Revision) -> Result<bool>;

    /// A new lease that expires `ttl` after its last keep-alive.
    fn grant(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews the lease; returns its TTL. `Err(LeaseExpired)` if it is gone.
    fn keep_alive(&self, lease: LeaseId) -> Result<Duration>;

    /// Ends the lease now, deleting its keys.
    fn revoke(&self, lease: LeaseId) -> Result<()>;

    /// Every change under `prefix` after revision `after` (exclusive), in order.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>> {
        self.watch_range(&KeyRange::Prefix(prefix.to_string()), after)
    }

    /// Every change to a key in `range` after revision `after` (exclusive), in order. With
    /// [`KeyRange::AnyOf`], etcd keeps the order within each part only (one watcher each):
    /// events of different parts may interleave out of revision order.
    fn watch_range(&self, range: &KeyRange, after: Revision) -> Result<Box<dyn Watch>>;

    /// A watch resumed: every change to a key of part i of `range` ([`KeyRange::parts`])
    /// after revision `after[i]`, one revision per part (a watch's parts reach different
    /// revisions, see [`Store::watch_range`]). Stores that keep one order for all parts
    /// start them all from the oldest: the caller drops what it has already seen.
    fn watch_range_from(&self, range: &KeyRange, after: &[Revision]) -> Result<Box<dyn Watch>> {
        range.check_starts(after)?;
        self.watch_range(range, after.iter().copied().min().unwrap_or_default())
    }
}
