use std::io;
use std::path::PathBuf;

/// Every failure of this crate. Kernel refusals keep the errno so callers can branch on it
/// ([`Error::is_exists`], [`Error::is_not_found`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace path could not be opened (missing, no permission).
    #[error("cannot open network namespace {path}: {source} (is the path a netns bind mount like /run/netns/NAME or /proc/PID/ns/net?)")]
    NetnsOpen { path: PathBuf, source: io::Error },

    /// The path exists but is not a network namespace.
    #[error("{path} is not a network namespace (expected /run/netns/NAME or /proc/PID/ns/net)")]
    NotNetns { path: PathBuf },

    /// A system call failed; `op` names what was being done.
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },

    /// The kernel answered a request with an error.
    #[error("kernel refused {op}: {} (errno {errno}){}", io::Error::from_raw_os_error(*errno), ext_ack.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel {
        errno: i32,
        op: String,
        ext_ack: Option<String>,
    },

    /// A message from the kernel (or a caller's buffer) does not parse.
    #[error("malformed netlink message: {0}")]
    Malformed(String),

    /// The kernel state contradicts what was asked, e.g. a link of the wrong kind.
    #[error("{0}")]
    Conflict(String),
}

impl Error {
    /// The kernel said the object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Kernel { errno, .. } if *errno == libc::EEXIST)
    }

    /// The kernel said the object is not there (ENOENT, ENODEV, ESRCH, EADDRNOTAVAIL).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kernel { errno, .. }
            if matches!(*errno, libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::EADDRNOTAVAIL))
    }

    /// The errno of a kernel refusal or failed system call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } | Error::NetnsOpen { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Replaces the generic operation name of a kernel or I/O error with a precise one, so
    /// messages read "kernel refused create bridge twl0: File exists".
    pub fn context(self, what: impl Into<String>) -> Error {
        match self {
            Error::Kernel { errno, ext_ack, .. } => Error::Kernel {
                errno,
                op: what.into(),
                ext_ack,
            },
            Error::Io { source, .. } => Error::Io {
                op: what.into(),
                source,
            },
            other => other,
        }
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn last_os(op: impl Into<String>) -> Error {
        Error::io(op, io::Error::last_os_error())
    }
}
