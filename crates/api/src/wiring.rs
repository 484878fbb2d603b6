//! How a pod's veth meets its node: the pod-wiring seam shared by the network config
//! (`podWiring` in the store's `config`), twilld's hand-off and the CNI config.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The host-side gateway of every pod in [`PodWiring::L3`]: a link-local address no
/// interface holds, answered by proxy ARP on the pod's host veth (Calico's 169.254.1.1).
/// Every network shares it, so nothing may be keyed by it.
pub const L3_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);

/// The fixed MAC of every host-side veth in [`PodWiring::L3`] (Calico's ee:ee:ee:ee:ee:ee):
/// locally administered and unicast, so a pod's neighbour entry for its gateway never
/// changes when the host end is re-created.
pub const L3_HOST_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];

/// How pods are attached to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodWiring {
    /// Docker's and CNI bridge's way: every pod's host veth on the node's bridge, which
    /// holds the gateway address of the node's subnet.
    #[default]
    Bridge,
    /// Calico's way: no bridge; the pod holds its address as a /32 with a default route
    /// via [`L3_GATEWAY`], the node a `/32 dev <veth> scope link` route per pod and proxy
    /// ARP on the veth.
    L3,
}

impl PodWiring {
    pub const ALL: [PodWiring; 2] = [PodWiring::Bridge, PodWiring::L3];

    /// The name used in configs and on the command line: `bridge`, `l3`.
    pub fn name(self) -> &'static str {
        match self {
            PodWiring::Bridge => "bridge",
            PodWiring::L3 => "l3",
        }
    }
}

impl fmt::Display for PodWiring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name was neither `bridge` nor `l3`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a pod wiring: use bridge or l3")]
pub struct UnknownWiring(pub String);

impl FromStr for PodWiring {
    type Err = UnknownWiring;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PodWiring::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| UnknownWiring(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for w in PodWiring::ALL {
            assert_eq!(w.name().parse::<PodWiring>().unwrap(), w);
            let json = serde_json::to_string(&w).unwrap();
            assert_eq!(json, format!("\"{}\"", w.name()));
            assert_eq!(serde_json::from_str::<PodWiring>(&json).unwrap(), w);
        }
        assert_eq!(PodWiring::default(), PodWiring::Bridge);
    }

    #[test]
    fn an_unknown_wiring_names_the_choices() {
        let e = "L3x".parse::<PodWiring>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"L3x\" is not a pod wiring: use bridge or l3"
        );
    }
}
