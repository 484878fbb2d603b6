//! The environment a runtime sets for a plugin (spec 1.1.0, "Parameters").

use super::error::{CniError, ErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs ("FOO=BAR;ABC=123").
    pub args: Vec<(String, String)>,
    pub path: String,
}

impl CniEnv {
    /// Reads the parameters through `var`, so this stays testable without touching the
    /// process environment. Which variables are required depends on the command.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let missing = |name: &str, why: &str| {
            CniError::new(ErrorCode::InvalidEnvironment, format!("{name} {why}"))
        };
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(missing(
                    "CNI_COMMAND",
                    &format!("is \"{other}\"; expected ADD, DEL, CHECK, VERSION, STATUS or GC"),
                ))
            }
            None => {
                return Err(missing(
                    "CNI_COMMAND",
                    "is not set (this binary is a CNI plugin: a container runtime runs it)",
                ))
            }
        };
        let mut env = CniEnv {
            command,
            container_id: var("CNI_CONTAINERID").unwrap_or_default(),
            netns: var("CNI_NETNS").unwrap_or_default(),
            ifname: var("CNI_IFNAME").unwrap_or_default(),
            args: Vec::new(),
            path: var("CNI_PATH").unwrap_or_default(),
        };
        if let Some(args) = var("CNI_ARGS") {
            for pair in args.split(';').filter(|p| !p.is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(missing(
                        "CNI_ARGS",
                        &format!("has \"{pair}\", not KEY=VALUE"),
                    ));
                };
                env.args.push((k.to_string(), v.to_string()));
            }
        }
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        if per_attachment {
            if env.container_id.is_empty() {
                return Err(missing("CNI_CONTAINERID", "is not set"));
            }
            crate::names::validate_container_id(&env.container_id)
                .map_err(|e| missing("CNI_CONTAINERID", &format!("is not usable: {e}")))?;
            if env.ifname.is_empty() {
                return Err(missing("CNI_IFNAME", "is not set"));
            }
            crate::names::validate_ifname(&env.ifname)
                .map_err(|e| missing("CNI_IFNAME", &format!("is not usable: {e}")))?;
            // "CNI_NETNS ... may be empty for DEL"
            if env.netns.is_empty() && command != Command::Del {
                return Err(missing("CNI_NETNS", "is not set"));
            }
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_everything() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
        ];
        let e = env(&full).unwrap();
        assert_eq!(e.args[1], ("K8S_POD_NAME".into(), "p".into()));
        for skip in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let partial: Vec<_> = full.iter().copied().filter(|(k, _)| *k != skip).collect();
            let err = env(&partial).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEnvironment);
            assert!(err.msg.contains(skip), "{}", err.msg);
        }
    }

    #[test]
    fn del_allows_empty_netns_and_version_needs_nothing() {
        assert!(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0")
        ])
        .is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn bad_values() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "averyveryverylongname"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_IFNAME"));
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c/../x"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_CONTAINERID"));
        assert!(env(&[("CNI_COMMAND", "FOO")])
            .unwrap_err()
            .msg
            .contains("FOO"));
        assert!(env(&[]).unwrap_err().msg.contains("CNI_COMMAND"));
    }
}
