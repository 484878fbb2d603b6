//! Per-namespace sysctls. Not netlink: /proc/sys/net resolves to the namespace of the thread
//! that opens the file, so writing for another namespace happens on a thread inside it.

use std::path::PathBuf;

use crate::{run_in, Error, Netns};

/// Writes `value` to sysctl `key` ("net.ipv4.ip_forward" or "net/ipv4/conf/eth0.1/forwarding";
/// use the slash form when a component contains a dot) in `ns`, or in the calling thread's
/// namespace when `ns` is None.
pub fn set_sysctl(ns: Option<&Netns>, key: &str, value: &str) -> Result<(), Error> {
    let path = sysctl_path(key);
    let write = || {
        std::fs::write(&path, value)
            .map_err(|e| Error::io(format!("write {value:?} to {}", path.display()), e))
    };
    match ns {
        Some(ns) => run_in(ns, write)?,
        None => write(),
    }
}

/// Reads sysctl `key` (trimmed) in `ns` or the calling thread's namespace.
pub fn get_sysctl(ns: Option<&Netns>, key: &str) -> Result<String, Error> {
    let path = sysctl_path(key);
    let read = || {
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| Error::io(format!("read {}", path.display()), e))
    };
    match ns {
        Some(ns) => run_in(ns, read)?,
        None => read(),
    }
}

/// Sets sysctl `key` to `value` unless it already holds it; returns whether it wrote. A read
/// is cheaper than a write, which takes the sysctl lock and, for some keys (forwarding),
/// walks every device.
pub fn ensure_sysctl(ns: Option<&Netns>, key: &str, value: &str) -> Result<bool, Error> {
    let path = sysctl_path(key);
    let ensure = || {
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
            return Ok(false);
        }
        std::fs::write(&path, value)
            .map(|()| true)
            .map_err(|e| Error::io(format!("write {value:?} to {}", path.display()), e))
    };
    match ns {
        Some(ns) => run_in(ns, ensure)?,
        None => ensure(),
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.trim_start_matches('/').to_owned()
    } else {
        key.replace('.', "/")
    };
    PathBuf::from("/proc/sys").join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_forms() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.1/rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.1/rp_filter")
        );
    }

    #[test]
    fn reads_in_current_namespace() {
        let v = get_sysctl(None, "net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v}");
    }
}
