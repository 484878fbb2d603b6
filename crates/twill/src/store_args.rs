//! Which store the resource commands talk to: global flags, each with a `TWILL_*`
//! environment equivalent. [`StoreArgs::config`] is pure; [`open`] connects; [`explain`]
//! turns a store failure into what to do about it.

use crate::kind_arg;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use twill_store::etcd::EtcdConfig;
use twill_store::{Store, StoreConfig, StoreError, StoreKind};

pub const DEFAULT_STORE_DIR: &str = "/var/lib/twill/store";
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";

#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// The store: embedded (a folder shared by the agents on this machine), etcd, or static
    /// (a hand-written file, read-only) [default: embedded, or etcd when endpoints are given]
    #[arg(long, global = true, env = "TWILL_STORE", value_parser = kind_arg::parser::<StoreKind>())]
    pub store: Option<StoreKind>,
    /// The embedded store's folder.
    #[arg(long, global = true, env = "TWILL_STORE_DIR", default_value = DEFAULT_STORE_DIR)]
    pub store_dir: PathBuf,
    /// etcd client URLs, comma-separated [default: http://127.0.0.1:2379]
    #[arg(
        long,
        global = true,
        env = "TWILL_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// The CA that signed etcd's certificates (for https:// endpoints).
    #[arg(long, global = true, env = "TWILL_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// A client certificate for etcd's --client-cert-auth.
    #[arg(long, global = true, env = "TWILL_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, global = true, env = "TWILL_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// The static store's file (nodes and their blocks written by hand).
    #[arg(long, global = true, env = "TWILL_STATIC_FILE")]
    pub static_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The store these flags name. Pure.
    pub fn config(&self) -> anyhow::Result<StoreConfig> {
        let kind = self.store.unwrap_or(if self.etcd_endpoints.is_empty() {
            StoreKind::Embedded
        } else {
            StoreKind::Etcd
        });
        Ok(match kind {
            StoreKind::Embedded => StoreConfig::Embedded {
                dir: self.store_dir.clone(),
            },
            StoreKind::Etcd => {
                let endpoints = if self.etcd_endpoints.is_empty() {
                    vec![DEFAULT_ETCD_ENDPOINT.to_string()]
                } else {
                    self.etcd_endpoints.clone()
                };
                if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
                    anyhow::bail!("--etcd-cert-file and --etcd-key-file go together: give both or neither");
                }
                let mut c = EtcdConfig::new(endpoints);
                c.ca_file = self.etcd_ca_file.clone();
                c.cert_file = self.etcd_cert_file.clone();
                c.key_file = self.etcd_key_file.clone();
                c.timeout = Duration::from_secs(3);
                StoreConfig::Etcd(c)
            }
            StoreKind::Static => StoreConfig::Static {
                file: self.static_file.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--store static needs the file: pass --static-file FILE (or set TWILL_STATIC_FILE)"
                    )
                })?,
            },
        })
    }
}

/// Opens the store, creating an embedded one that is not there yet (for `apply`),
/// explaining a failure.
pub fn open(cfg: &StoreConfig) -> anyhow::Result<Box<dyn Store>> {
    twill_store::open(cfg).map_err(|e| explain(e, cfg))
}

/// Opens a store that exists, never creating one (for the commands that read), explaining
/// a failure: a missing store is reported as missing, not silently made empty.
pub fn open_existing(cfg: &StoreConfig) -> anyhow::Result<Box<dyn Store>> {
    twill_store::open_existing(cfg).map_err(|e| explain(e, cfg))
}

/// [`explain`] for an error that may be a store's (it passes any other through).
pub fn explain_any(e: anyhow::Error, cfg: &StoreConfig) -> anyhow::Error {
    match e.downcast::<StoreError>() {
        Ok(se) => explain(se, cfg),
        Err(e) => e,
    }
}

/// A store error with the way out: which endpoint or folder, and which flag to change.
pub fn explain(e: StoreError, cfg: &StoreConfig) -> anyhow::Error {
    if let (StoreError::Missing { .. }, StoreConfig::Embedded { dir }) = (&e, cfg) {
        return anyhow::anyhow!(
            "{e}; nothing was created. Point twill at the folder the agents share with \
             --store-dir or TWILL_STORE_DIR (now {}), or use --store etcd; a new embedded store \
             is made by the first twilld started with --store-dir DIR, or by \
             `twill apply -f FILE --store-dir DIR` (a NetworkConfig)",
            dir.display()
        );
    }
    let hint = match (&e, cfg) {
        (StoreError::Unavailable { endpoint, .. }, StoreConfig::Etcd(c)) => format!(
            "cannot reach etcd at {endpoint}{}: check that etcd runs there, or point twill at it with \
             --etcd-endpoints or TWILL_ETCD_ENDPOINTS (https:// endpoints also need --etcd-ca-file, \
             and --etcd-cert-file/--etcd-key-file if etcd checks client certificates)",
            if c.endpoints.len() > 1 {
                format!(" (tried {})", c.endpoints.join(", "))
            } else {
                String::new()
            }
        ),
        (StoreError::Unavailable { endpoint, .. }, _) => {
            format!("the store at {endpoint} is unavailable; try again")
        }
        (StoreError::Io { .. }, StoreConfig::Embedded { dir }) => format!(
            "cannot use the embedded store in {}: pass --store-dir (or TWILL_STORE_DIR) naming the folder \
             the agents share, and run as a user who may write it",
            dir.display()
        ),
        (StoreError::Io { .. }, StoreConfig::Static { file }) => format!(
            "cannot read the static store {}: check the path given with --static-file (or TWILL_STATIC_FILE)",
            file.display()
        ),
        _ => return e.into(),
    };
    // One line: the hint, then the store's own words (its source is already in them).
    anyhow::anyhow!("{hint}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_by_default_etcd_when_endpoints_are_given() {
        let a = StoreArgs {
            store_dir: "/tmp/x".into(),
            ..StoreArgs::default()
        };
        assert!(
            matches!(a.config().unwrap(), StoreConfig::Embedded { dir } if dir == std::path::Path::new("/tmp/x"))
        );
        let a = StoreArgs {
            etcd_endpoints: vec!["http://127.0.0.1:1".into()],
            ..StoreArgs::default()
        };
        let StoreConfig::Etcd(c) = a.config().unwrap() else {
            panic!()
        };
        assert_eq!(c.endpoints, ["http://127.0.0.1:1"]);
        let a = StoreArgs {
            store: Some(StoreKind::Etcd),
            ..StoreArgs::default()
        };
        let StoreConfig::Etcd(c) = a.config().unwrap() else {
            panic!()
        };
        assert_eq!(c.endpoints, [DEFAULT_ETCD_ENDPOINT]);
    }

    #[test]
    fn incomplete_flags_are_refused_with_the_fix() {
        let a = StoreArgs {
            store: Some(StoreKind::Static),
            ..StoreArgs::default()
        };
        assert!(a
            .config()
            .unwrap_err()
            .to_string()
            .contains("--static-file"));
        let a = StoreArgs {
            store: Some(StoreKind::Etcd),
            etcd_cert_file: Some("c.pem".into()),
            ..StoreArgs::default()
        };
        assert!(a
            .config()
            .unwrap_err()
            .to_string()
            .contains("--etcd-key-file"));
    }

    #[test]
    fn a_missing_embedded_store_names_the_folder_and_how_to_make_one() {
        let cfg = StoreConfig::Embedded {
            dir: "/tmp/twl-none".into(),
        };
        let e = explain(
            StoreError::Missing {
                path: "/tmp/twl-none".into(),
                reason: "the folder does not exist".into(),
            },
            &cfg,
        );
        let text = format!("{e:#}");
        for part in [
            "no store at /tmp/twl-none: the folder does not exist; nothing was created",
            "--store-dir or TWILL_STORE_DIR (now /tmp/twl-none)",
            "twill apply -f FILE",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
    }

    #[test]
    fn unreachable_etcd_names_the_endpoint_and_the_flag() {
        let cfg = StoreConfig::Etcd(EtcdConfig::new(vec!["http://127.0.0.1:1".into()]));
        let e = explain(
            StoreError::Unavailable {
                endpoint: "http://127.0.0.1:1".into(),
                reason: "connection refused".into(),
            },
            &cfg,
        );
        let text = format!("{e:#}");
        assert!(
            text.contains("cannot reach etcd at http://127.0.0.1:1"),
            "{text}"
        );
        assert!(text.contains("--etcd-endpoints"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
    }
}
