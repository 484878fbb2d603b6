//! Which store: the one type every binary names a store kind with (flags, config files,
//! the lab's plan, status output). Nothing matches on store names outside this file.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The kind of a [`crate::Store`], without how to reach it (that is [`crate::StoreConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum StoreKind {
    /// No server: a folder shared by the agents on one machine.
    #[default]
    Embedded,
    /// etcd v3.
    Etcd,
    /// Nodes and their blocks written by hand in a file; read-only.
    Static,
}

impl StoreKind {
    pub const ALL: [StoreKind; 3] = [StoreKind::Embedded, StoreKind::Etcd, StoreKind::Static];

    /// The name used in configs, on command lines and in status output.
    pub const fn name(self) -> &'static str {
        match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Etcd => "etcd",
            StoreKind::Static => "static",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is none of [`StoreKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a store: use one of {names}", names = StoreKind::ALL.map(StoreKind::name).join(", "))]
pub struct UnknownStore(pub String);

impl FromStr for StoreKind {
    type Err = UnknownStore;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StoreKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownStore(s.to_string()))
    }
}

impl Serialize for StoreKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for StoreKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StoreKind, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_by_its_name() {
        for k in StoreKind::ALL {
            assert_eq!(k.name().parse::<StoreKind>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<StoreKind>(&json).unwrap(), k);
        }
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_choices() {
        let e = "consul".parse::<StoreKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"consul\" is not a store: use one of embedded, etcd, static"
        );
        let e = serde_json::from_str::<StoreKind>("\"Etcd\"").unwrap_err();
        assert!(e.to_string().contains("\"Etcd\" is not a store"), "{e}");
    }
}
