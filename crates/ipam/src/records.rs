//! The record directory: the I/O edge of node-local allocation, shared by every
//! `twill-cni` process on the node.
//!
//! Layout, one directory per network under the data dir (default [`DEFAULT_DATA_DIR`]):
//!
//! ```text
//! <data_dir>/<network>/
//!   ips/<a.b.c.d>                      one file per held address: the record JSON, which names its attachment
//!   attachments/<containerID>:<ifname> one file per attachment: the record JSON
//!   last_reserved                      the last address handed out (round-robin hint)
//!   lock                               flock(2) target, see below
//! ```
//!
//! Why it is safe without a global lock on the hot path:
//! - **Intent, then claim.** ADD makes the record's inode unnamed (`O_TMPFILE`) and first
//!   links it to `attachments/<containerID>:<ifname>`; `link` fails if the name exists, so a
//!   duplicate ADD for the same attachment fails atomically
//!   ([`RecordError::AlreadyAllocated`]) before claiming anything. It then writes each
//!   candidate address into the inode (in place, padded to a fixed width) and links it to
//!   `ips/<ip>`: the kernel lets exactly one linker of a name win, across threads and
//!   processes, so no address is ever handed out twice; a loser tries the next candidate.
//!   Both names share one inode, so from the moment an address is claimed the attachment's
//!   record names it: **a DEL after an ADD killed at any moment frees what it took**, with
//!   no GC. (A record naming a candidate someone else holds frees nothing of theirs:
//!   release removes `ips/<ip>` only if it names the attachment.) Readers never see a
//!   half-written record. Why one inode: allocating an inode is by far the dearest step
//!   (about 0.3 ms on this project's ext4 test machines, against a few microseconds for a
//!   link), so an ADD allocates exactly one, like host-local.
//!   (':' cannot occur in a container ID or interface name per the CNI spec, so the name
//!   is unambiguous; both parts are validated, path separators included.)
//! - **Update.** [`RecordDir::update_extra`] writes a new file and renames it over the
//!   attachment name; the address file keeps the old content, which still names the
//!   attachment (that is all it is read for).
//! - **Hint.** `last_reserved` is overwritten in place (fixed width) after each ADD so the
//!   next ADD starts after it (round robin, like host-local). It is advice only: a missing,
//!   stale, torn or garbage hint just restarts the walk elsewhere.
//! - **Release.** The attachment name is removed first (the commit point: only the one
//!   caller whose unlink succeeds goes on), then `ips/<ip>`, and that only if it still
//!   names this attachment.
//! - **Crashes.** A killed ADD leaves at worst an attachment record naming no address, or
//!   one it does not hold (DEL removes it); a killed DEL an address file with no attachment
//!   (record removed, address not yet), which [`RecordDir::gc`] removes. Temporary files
//!   (`update_extra`'s, or a claim's where the file system has no `O_TMPFILE`) live in
//!   `<network>/` and carry their writer's pid namespace and pid: the next ADD removes
//!   those whose writer is dead, and any older than an hour; GC removes them all.
//! - **GC vs. ADD.** An ADD between claim and publish looks exactly like an orphan, so GC
//!   must not run meanwhile: ADD and DEL hold a shared `flock` on `lock`, GC (and the rare
//!   `update_extra`) an exclusive one. Shared locks never wait for each other, and the kernel
//!   drops them if the process dies.
//!
//! Cost of an ADD: open + shared flock of `lock`, a read of the (small) network directory
//! for stale temporary files, one hint read, one unnamed inode, one link for the
//! attachment and normally one for the address (the address after the hint is usually
//! free), one in-place hint write: independent of the number of pods. When the walk meets held addresses (after a
//! wrap-around), it reads `ips/` once after a few misses and skips the held ones from
//! memory, so a nearly full pool costs one directory read, not one failed create per held
//! address. `examples/alloc_cost.rs` measures it.
//!
//! No fsync: like host-local, the records describe pods that do not survive a reboot; the
//! runtime's GC after a crash removes what is left.
//!
//! Address files for addresses no longer in the pool (configuration changed) are left
//! alone and still count as used; GC removes them only when their attachment is gone.

use crate::pool::Pool;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use twill_api::names::{
    validate_container_id, validate_ifname, validate_network_name, InvalidName,
};

/// Where `twill-cni` keeps its records unless the network config says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/twill/ipam";

/// Longest "<containerID>:<ifname>" that still fits a file name (255 bytes).
const MAX_KEY_FILE_NAME: usize = 255;

/// Failed `O_EXCL` claims tolerated before reading `ips/` once to skip held addresses.
const DIRECT_TRIES: usize = 8;

const TMP_PREFIX: &str = ".tmp-";

/// One pod interface, as the CNI spec identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentKey {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> AttachmentKey {
        AttachmentKey {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// Checks both parts against the CNI spec and that the pair fits a file name.
    pub fn validate(&self) -> Result<(), InvalidName> {
        validate_container_id(&self.container_id)?;
        validate_ifname(&self.ifname)?;
        if self.container_id.len() + 1 + self.ifname.len() > MAX_KEY_FILE_NAME {
            return Err(InvalidName {
                what: "container ID",
                value: self.container_id.clone(),
                reason: format!(
                    "it is {} bytes long; with the interface name it must fit {MAX_KEY_FILE_NAME} bytes",
                    self.container_id.len()
                ),
            });
        }
        Ok(())
    }
}

/// "<containerID>:<ifname>": the attachment's file name and the content of its address file.
impl fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.container_id, self.ifname)
    }
}

/// What is stored per attachment. `extra` is the caller's own data (e.g. the host veth
/// name and port mappings), kept verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub key: AttachmentKey,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub extra: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "network {network}: container {container_id} interface {ifname} already holds {ip}; \
         delete that attachment (CNI DEL) before adding it again"
    )]
    AlreadyAllocated {
        network: String,
        container_id: String,
        ifname: String,
        ip: Ipv4Addr,
    },
    #[error(
        "network {network}: no free address in {ranges} ({capacity} allocatable, all held); \
         widen the range or remove unused pods"
    )]
    Exhausted {
        network: String,
        ranges: String,
        capacity: u32,
    },
    #[error("network {network}: no record for container {container_id} interface {ifname}; allocate it first")]
    NotFound {
        network: String,
        container_id: String,
        ifname: String,
    },
    #[error(
        "record {path} is unreadable ({reason}); delete it if its container is gone, or run CNI GC"
    )]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RecordError + 'a {
    move |source| RecordError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn record_json(record: &Record) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(record).expect("a record always serializes");
    bytes.push(b'\n');
    bytes
}

/// Unique temporary names within this process; the pid makes them unique across processes.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file older than this is stale whoever wrote it: a write takes
/// microseconds.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// `.tmp-<what>-<pid namespace inode>-<pid>-<n>`: the writer, so a later run can tell
/// whether it is still alive.
fn tmp_name(what: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{TMP_PREFIX}{what}-{}-{}-{n}",
        pid_namespace().unwrap_or(0),
        std::process::id()
    )
}

/// The inode number of this process's pid namespace.
fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// The writer a temporary file name carries: (pid namespace, pid).
fn tmp_writer(name: &str) -> Option<(u64, i32)> {
    let mut parts = name.strip_prefix(TMP_PREFIX)?.rsplit('-');
    let _n = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let pidns = parts.next()?.parse().ok()?;
    Some((pidns, pid))
}

/// Whether the writer named in a temporary file's name is dead: only decidable for a
/// writer in our own pid namespace (another's pid means nothing here).
fn tmp_writer_is_dead(name: &str) -> bool {
    let Some((pidns, pid)) = tmp_writer(name) else {
        return false;
    };
    if pidns == 0 || Some(pidns) != pid_namespace() || pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    !alive
}

/// The record padded with spaces to `width` bytes (JSON allows trailing white space), so
/// rewriting it in place for another candidate address never leaves a stale tail.
fn padded_json(record: &Record, width: usize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(record).expect("a record always serializes");
    bytes.resize(width.saturating_sub(1).max(bytes.len()), b' ');
    bytes.push(b'\n');
    bytes
}

/// The width that fits `record` with any address (the widest is 15 characters).
fn padded_width(record: &Record) -> usize {
    let widest = Record {
        ip: Ipv4Addr::new(255, 255, 255, 255),
        ..record.clone()
    };
    record_json(&widest).len()
}

/// The inode a new record lives in, before and while it is given its names.
struct RecordInode {
    file: File,
    /// A named temporary file, when the file system cannot make unnamed ones; removed on
    /// drop (the record's other names keep the inode).
    named: Option<PathBuf>,
}

impl RecordInode {
    /// An unnamed inode in the network's directory holding `bytes`; a named temporary
    /// file there if the file system has no `O_TMPFILE`.
    fn new(dir: &RecordDir, bytes: &[u8]) -> Result<RecordInode, RecordError> {
        let unnamed = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o644)
            .open(&dir.root);
        let inode = match unnamed {
            Ok(file) => RecordInode { file, named: None },
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                let path = dir.root.join(tmp_name("claim"));
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&path)
                    .map_err(io_err("create", &path))?;
                RecordInode {
                    file,
                    named: Some(path),
                }
            }
            Err(source) => {
                return Err(RecordError::Io {
                    op: "create a record in",
                    path: dir.root.clone(),
                    source,
                })
            }
        };
        inode.rewrite(bytes)?;
        Ok(inode)
    }

    /// Overwrites the content in place (callers keep the length fixed).
    fn rewrite(&self, bytes: &[u8]) -> Result<(), RecordError> {
        self.file
            .write_all_at(bytes, 0)
            .map_err(|source| RecordError::Io {
                op: "write",
                path: self.named.clone().unwrap_or_else(|| "a new record".into()),
                source,
            })
    }

    /// Gives the inode the name `target`; `AlreadyExists` if the name is taken.
    fn link_to(&self, target: &Path) -> io::Result<()> {
        if let Some(named) = &self.named {
            return fs::hard_link(named, target);
        }
        use std::os::unix::ffi::OsStrExt;
        let to = std::ffi::CString::new(target.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = self.file.as_raw_fd();
        let empty = c"";
        // SAFETY: valid descriptor and NUL-terminated paths, which outlive the calls.
        if unsafe {
            libc::linkat(
                fd,
                empty.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        } == 0
        {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOENT)) {
            return Err(e);
        }
        // Without CAP_DAC_READ_SEARCH: through /proc, as open(2) suggests for O_TMPFILE.
        let proc = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
        // SAFETY: as above.
        if unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        } == 0
        {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for RecordInode {
    fn drop(&mut self) {
        if let Some(named) = &self.named {
            let _ = fs::remove_file(named);
        }
    }
}

/// Held while an operation runs; closing the file drops the lock.
struct DirLock {
    _file: File,
}

/// The records of one network. Cheap to open; every call works on the directory directly,
/// so separate handles (threads or processes) see each other's changes at once.
#[derive(Debug, Clone)]
pub struct RecordDir {
    network: String,
    root: PathBuf,
    ips: PathBuf,
    attachments: PathBuf,
    hint: PathBuf,
    lock: PathBuf,
}

impl RecordDir {
    /// Opens (creating if needed) `<data_dir>/<network>`.
    pub fn open(data_dir: &Path, network: &str) -> Result<RecordDir, RecordError> {
        validate_network_name(network)?;
        let root = data_dir.join(network);
        let dir = RecordDir {
            network: network.to_string(),
            ips: root.join("ips"),
            attachments: root.join("attachments"),
            hint: root.join("last_reserved"),
            lock: root.join("lock"),
            root,
        };
        for d in [&dir.ips, &dir.attachments] {
            fs::create_dir_all(d).map_err(io_err("create directory", d))?;
        }
        dir.open_lock_file()?;
        Ok(dir)
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    /// `<data_dir>/<network>`.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn open_lock_file(&self) -> Result<File, RecordError> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock)
            .map_err(io_err("open lock file", &self.lock))
    }

    fn lock(&self, exclusive: bool) -> Result<DirLock, RecordError> {
        let file = self.open_lock_file()?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(DirLock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(RecordError::Io {
                    op: "lock",
                    path: self.lock.clone(),
                    source: e,
                });
            }
        }
    }

    fn ip_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.ips.join(ip.to_string())
    }

    fn attachment_path(&self, key: &AttachmentKey) -> PathBuf {
        self.attachments.join(key.to_string())
    }

    /// Takes a free address from `pool` for `key` and records it with `extra`.
    ///
    /// The record's inode is made unnamed (`O_TMPFILE`), so a kill leaves no temporary
    /// file. It is linked to `attachments/<key>` *before* any address is claimed, naming
    /// no address or a candidate not yet held; each candidate is then written into it (in
    /// place, at a fixed width, so every name of the inode sees a whole record) and linked
    /// to `ips/<ip>`, which fails if the address is held. So from the first claim on, the
    /// attachment's record names the address: a DEL after this ADD was killed at any
    /// moment finds and frees it, and a record naming an address held by another
    /// attachment frees nothing of that one (release checks the owner).
    pub fn allocate(
        &self,
        pool: &Pool,
        key: &AttachmentKey,
        extra: serde_json::Value,
    ) -> Result<Record, RecordError> {
        key.validate()?;
        let _lock = self.lock(false)?;
        self.sweep_stale_tmp();
        let mut record = Record {
            key: key.clone(),
            ip: Ipv4Addr::UNSPECIFIED,
            extra,
        };
        let width = padded_width(&record);
        let inode = RecordInode::new(self, &padded_json(&record, width))?;
        let target = self.attachment_path(key);
        let mut linked = inode.link_to(&target);
        if linked
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::AlreadyExists)
        {
            let existing = self.read_record(&target).ok().flatten();
            match existing {
                // The record of an earlier ADD of this attachment that was killed before
                // it claimed an address: it holds nothing, so it is replaced. (The CNI
                // spec forbids a concurrent ADD of one attachment, so it is not in flight.)
                Some(r) if !self.holds(&target, &r)? => {
                    let _ = fs::remove_file(&target);
                    linked = inode.link_to(&target);
                }
                _ => {
                    return Err(RecordError::AlreadyAllocated {
                        network: self.network.clone(),
                        container_id: key.container_id.clone(),
                        ifname: key.ifname.clone(),
                        // Gone again meanwhile (a concurrent DEL): no address to report.
                        ip: existing.map_or(Ipv4Addr::UNSPECIFIED, |r| r.ip),
                    });
                }
            }
        }
        if let Err(source) = linked {
            return Err(if source.kind() == io::ErrorKind::AlreadyExists {
                RecordError::AlreadyAllocated {
                    network: self.network.clone(),
                    container_id: key.container_id.clone(),
                    ifname: key.ifname.clone(),
                    ip: Ipv4Addr::UNSPECIFIED,
                }
            } else {
                RecordError::Io {
                    op: "link",
                    path: target,
                    source,
                }
            });
        }
        match self.claim_one(pool, &inode, &mut record, width) {
            Ok(true) => {
                // The hint is advice: failing to write it costs only round-robin order.
                let _ = self.write_hint(record.ip);
                Ok(record)
            }
            outcome => {
                // Nothing claimed: the attachment's name goes again (its content may name
                // a candidate held by someone else, which stays theirs).
                let _ = fs::remove_file(&target);
                outcome?;
                Err(RecordError::Exhausted {
                    network: self.network.clone(),
                    ranges: pool
                        .ranges()
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    capacity: pool.capacity(),
                })
            }
        }
    }

    /// Walks the candidates: writes each into the record's inode and links it to
    /// `ips/<ip>`. `Ok(false)`: every address is held.
    fn claim_one(
        &self,
        pool: &Pool,
        inode: &RecordInode,
        record: &mut Record,
        width: usize,
    ) -> Result<bool, RecordError> {
        let mut misses = 0;
        let mut held: Option<HashSet<Ipv4Addr>> = None;
        for ip in pool.candidates_after(self.read_hint()) {
            if held.is_none() && misses >= DIRECT_TRIES {
                held = Some(self.used()?.into_iter().collect());
            }
            if held.as_ref().is_some_and(|h| h.contains(&ip)) {
                continue;
            }
            record.ip = ip;
            inode.rewrite(&padded_json(record, width))?;
            let path = self.ip_path(ip);
            match inode.link_to(&path) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => misses += 1,
                Err(source) => {
                    return Err(RecordError::Io {
                        op: "link",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(false)
    }

    /// Removes temporary files that no live writer uses: those whose writer (named in the
    /// file name, with its pid namespace) has died, and any older than [`STALE_TMP`]
    /// (a writer in another pid namespace). Cheap: the network's directory holds a
    /// handful of names; the big `ips/` and `attachments/` hold no temporary files.
    fn sweep_stale_tmp(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with(TMP_PREFIX) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if old || tmp_writer_is_dead(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Writes `record` as JSON to a new temporary file in the network's directory (where
    /// [`Self::sweep_stale_tmp`] finds it if the writer dies) and returns its path.
    fn write_tmp(&self, what: &str, record: &Record) -> Result<PathBuf, RecordError> {
        let bytes = record_json(record);
        let tmp = self.root.join(tmp_name(what));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(RecordError::Io {
                op: "write",
                path: tmp,
                source: e,
            });
        }
        Ok(tmp)
    }

    fn read_hint(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(&self.hint).ok()?.trim().parse().ok()
    }

    /// Overwrites the hint in place, padded to a fixed width so no stale tail remains.
    /// In place rather than by rename: creating a file is the dearest step of an ADD on a
    /// busy ext4, and a torn read by a concurrent ADD only yields a harmless bad hint.
    fn write_hint(&self, ip: Ipv4Addr) -> io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&self.hint)?;
        file.write_all_at(format!("{ip:<15}\n").as_bytes(), 0)
    }

    /// Reads a record file; `None` if it does not exist.
    fn read_record(&self, path: &Path) -> Result<Option<Record>, RecordError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(RecordError::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        };
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| RecordError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if record.key.to_string() != name {
            return Err(RecordError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("it names attachment {}, not {name}", record.key),
            });
        }
        Ok(Some(record))
    }

    /// The record of `key`, if it holds an address.
    pub fn get(&self, key: &AttachmentKey) -> Result<Option<Record>, RecordError> {
        key.validate()?;
        self.read_record(&self.attachment_path(key))
    }

    /// Replaces the caller's data of an existing record atomically (write + rename).
    pub fn update_extra(
        &self,
        key: &AttachmentKey,
        extra: serde_json::Value,
    ) -> Result<(), RecordError> {
        key.validate()?;
        // Exclusive, so a concurrent release cannot remove the record between our read and
        // our rename (the rename would resurrect it without its address).
        let _lock = self.lock(true)?;
        let path = self.attachment_path(key);
        let Some(mut record) = self.read_record(&path)? else {
            return Err(RecordError::NotFound {
                network: self.network.clone(),
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
            });
        };
        record.extra = extra;
        let tmp = self.write_tmp("record", &record)?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(RecordError::Io {
                op: "rename",
                path,
                source: e,
            });
        }
        Ok(())
    }

    /// Frees the address of `key`. Idempotent: `None` when nothing was held (or a
    /// concurrent release got there first).
    pub fn release(&self, key: &AttachmentKey) -> Result<Option<Record>, RecordError> {
        key.validate()?;
        let _lock = self.lock(false)?;
        let path = self.attachment_path(key);
        let owner = key.to_string();
        let record = match self.read_record(&path) {
            Ok(None) => return Ok(None),
            Ok(Some(r)) => Some(r),
            // Still release it: DEL must succeed. The address is found by scanning below.
            Err(RecordError::Corrupt { .. }) => None,
            Err(e) => return Err(e),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(RecordError::Io {
                    op: "remove",
                    path,
                    source: e,
                })
            }
        }
        match record {
            Some(r) => {
                self.remove_ip_if_owned(r.ip, &owner)?;
                Ok(Some(r))
            }
            None => {
                let mut found = None;
                for ip in self.used()? {
                    if self.remove_ip_if_owned(ip, &owner)? {
                        found = Some(ip);
                    }
                }
                Ok(found.map(|ip| Record {
                    key: key.clone(),
                    ip,
                    extra: serde_json::Value::Null,
                }))
            }
        }
    }

    /// The attachment `ips/<ip>` names ("<containerID>:<ifname>"); `Some("")` if the file
    /// cannot be parsed (a crash before its content was written), `None` if it is gone.
    fn ip_owner(&self, ip: Ipv4Addr) -> Result<Option<String>, RecordError> {
        let path = self.ip_path(ip);
        match fs::read(&path) {
            Ok(b) => Ok(Some(
                serde_json::from_slice::<Record>(&b)
                    .map(|r| r.key.to_string())
                    .unwrap_or_default(),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RecordError::Io {
                op: "read",
                path,
                source: e,
            }),
        }
    }

    /// Removes `ips/<ip>` if it names `owner`; true if it did.
    fn remove_ip_if_owned(&self, ip: Ipv4Addr, owner: &str) -> Result<bool, RecordError> {
        if self.ip_owner(ip)?.as_deref() != Some(owner) {
            return Ok(false);
        }
        let path = self.ip_path(ip);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(RecordError::Io {
                op: "remove",
                path,
                source: e,
            }),
        }
    }

    /// Names in `dir` that are not temporary files.
    fn entries(&self, dir: &Path) -> Result<Vec<String>, RecordError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let entry = entry.map_err(io_err("read directory", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(TMP_PREFIX) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Every record that holds its address, sorted by attachment. A record that cannot be
    /// parsed is an error naming its file. Left out: the record of an ADD still looking
    /// for an address, or killed before it got one (it names none, or a candidate another
    /// attachment holds); it holds nothing, and the DEL that follows removes it.
    pub fn list(&self) -> Result<Vec<Record>, RecordError> {
        let mut records = Vec::new();
        for name in self.entries(&self.attachments)? {
            let path = self.attachments.join(name);
            // Gone between listing and reading: released meanwhile.
            if let Some(r) = self.read_record(&path)? {
                if self.holds(&path, &r)? {
                    records.push(r);
                }
            }
        }
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(records)
    }

    /// Whether `ips/<ip>` is this record's claim: the same inode as the attachment's file
    /// (one stat each), or, after `update_extra` gave the record a new inode, an address
    /// file that names the attachment.
    fn holds(&self, attachment: &Path, record: &Record) -> Result<bool, RecordError> {
        use std::os::unix::fs::MetadataExt;
        if record.ip.is_unspecified() {
            return Ok(false);
        }
        let claim = match fs::metadata(self.ip_path(record.ip)) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(RecordError::Io {
                    op: "stat",
                    path: self.ip_path(record.ip),
                    source,
                })
            }
        };
        let same_inode = fs::metadata(attachment)
            .map(|m| (m.dev(), m.ino()) == (claim.dev(), claim.ino()))
            .unwrap_or(false);
        Ok(same_inode || self.ip_owner(record.ip)?.as_deref() == Some(&*record.key.to_string()))
    }

    /// Every held address, sorted, including addresses outside the current pool and
    /// orphans not yet collected.
    pub fn used(&self) -> Result<Vec<Ipv4Addr>, RecordError> {
        let mut ips: Vec<Ipv4Addr> = self
            .entries(&self.ips)?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        ips.sort_unstable();
        Ok(ips)
    }

    /// Releases every attachment not in `valid` and returns their records (a corrupt one
    /// is removed but not returned). Also removes orphans: address files whose attachment
    /// record is missing or names another address, and temporary files left by a crash.
    pub fn gc(&self, valid: &[AttachmentKey]) -> Result<Vec<Record>, RecordError> {
        let _lock = self.lock(true)?;
        let valid: HashSet<String> = valid.iter().map(|k| k.to_string()).collect();

        // Under the exclusive lock no operation is in flight: every temp file is stale.
        for dir in [&self.root, &self.attachments, &self.ips] {
            for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
                let entry = entry.map_err(io_err("read directory", dir))?;
                if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }

        let mut released = Vec::new();
        // Surviving attachments and their address; `None` if unreadable (keep its address).
        let mut kept: HashMap<String, Option<Ipv4Addr>> = HashMap::new();
        for name in self.entries(&self.attachments)? {
            let path = self.attachments.join(&name);
            let record = match self.read_record(&path) {
                Ok(Some(r)) => Some(r),
                Ok(None) => continue,
                Err(RecordError::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            };
            if valid.contains(&name) {
                kept.insert(name, record.map(|r| r.ip));
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(RecordError::Io {
                        op: "remove",
                        path,
                        source: e,
                    })
                }
            }
            if let Some(r) = record {
                self.remove_ip_if_owned(r.ip, &name)?;
                released.push(r);
            }
            // A corrupt record's address file is now an orphan; the pass below takes it.
        }

        for name in self.entries(&self.ips)? {
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            let Some(owner) = self.ip_owner(ip)? else {
                continue;
            };
            let in_use = match kept.get(&owner) {
                Some(Some(held)) => *held == ip,
                Some(None) => true,
                None => false,
            };
            if !in_use {
                let path = self.ip_path(ip);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(RecordError::Io {
                            op: "remove",
                            path,
                            source: e,
                        })
                    }
                }
            }
        }
        released.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(released)
    }
}
