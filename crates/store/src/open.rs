//! Opening the store a config names: the one entry point agents and the CLI use.

use crate::{Result, Store, StoreKind};
use std::path::PathBuf;

/// Which store, and how to reach it.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// No server: a folder shared by the agents on this machine.
    Embedded { dir: PathBuf },
    /// etcd v3: endpoints, optional TLS.
    Etcd(crate::etcd::EtcdConfig),
    /// Nodes and subnets written by hand; read-only.
    Static { file: PathBuf },
}

impl StoreConfig {
    pub fn kind(&self) -> StoreKind {
        match self {
            StoreConfig::Embedded { .. } => StoreKind::Embedded,
            StoreConfig::Etcd(_) => StoreKind::Etcd,
            StoreConfig::Static { .. } => StoreKind::Static,
        }
    }
}

pub fn open(cfg: &StoreConfig) -> Result<Box<dyn Store>> {
    Ok(match cfg {
        StoreConfig::Embedded { dir } => Box::new(crate::embedded::EmbeddedStore::open(dir)?),
        StoreConfig::Etcd(c) => Box::new(crate::etcd::EtcdStore::connect(c)?),
        StoreConfig::Static { file } => Box::new(crate::static_file::StaticStore::open(file)?),
    })
}

/// Like [`open`], but never creates a store: an embedded store must already exist
/// ([`crate::StoreError::Missing`] otherwise). etcd and the static file are only ever read
/// or connected to, so they open as with [`open`]. For commands that only read.
pub fn open_existing(cfg: &StoreConfig) -> Result<Box<dyn Store>> {
    match cfg {
        StoreConfig::Embedded { dir } => Ok(Box::new(
            crate::embedded::EmbeddedStore::open_existing(dir)?,
        )),
        other => open(other),
    }
}
