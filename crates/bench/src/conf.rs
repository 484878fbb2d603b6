//! The network configs each plugin gets, built the way libcni builds them from a conflist:
//! `name` and `cniVersion` from the list, `runtimeConfig` only for a declared capability,
//! `prevResult` for the next plugin in the chain and for every DEL. Pure.

use serde_json::{json, Value};
use std::path::PathBuf;
use twill_api::wiring::PodWiring;

/// Twill's subnet: a /21 holds 2046 pods, room for a 1000-pod fill. Each plugin has a node
/// namespace of its own, so both wirings use it.
pub const TWILL_SUBNET: &str = "10.244.0.0/21";
/// The reference's subnet, disjoint from Twill's.
pub const REF_SUBNET: &str = "10.244.8.0/21";
pub const TWILL_BRIDGE: &str = "twl0";
pub const REF_BRIDGE: &str = "twlref0";
/// The port every pod "listens" on behind its host port.
pub const CONTAINER_PORT: u16 = 80;

/// What both plugins are configured alike with.
#[derive(Debug, Clone)]
pub struct Setup {
    pub ip_masq: bool,
    /// One tcp host port per pod: runtimeConfig for Twill, the portmap plugin for the reference.
    pub mappings: bool,
    /// Twill's IPAM folders live under it, one per wiring.
    pub twill_data_dir: PathBuf,
    pub ref_data_dir: PathBuf,
}

fn port_mappings(host_port: u16) -> Value {
    json!([{"hostPort": host_port, "containerPort": CONTAINER_PORT, "protocol": "tcp"}])
}

impl Setup {
    /// Twill's config for ADD (`prev` None) or DEL (`prev` = the cached ADD result).
    pub fn twill(&self, wiring: PodWiring, host_port: u16, prev: Option<&Value>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": "twlbench",
            "type": "twill-cni",
            "podWiring": wiring.name(),
            "bridge": TWILL_BRIDGE,
            "ipMasq": self.ip_masq,
            "capabilities": {"portMappings": true},
            "ipam": {"type": "twill", "subnet": TWILL_SUBNET, "dataDir": self.twill_data_dir.join(wiring.name())},
        });
        if self.mappings {
            conf["runtimeConfig"] = json!({"portMappings": port_mappings(host_port)});
        }
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    /// The reference chain's first plugin: bridge + host-local.
    pub fn ref_bridge(&self, prev: Option<&Value>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "twlbenchref",
            "type": "bridge",
            "bridge": REF_BRIDGE,
            "isGateway": true,
            "ipMasq": self.ip_masq,
            "ipam": {
                "type": "host-local",
                "dataDir": self.ref_data_dir,
                "ranges": [[{"subnet": REF_SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        });
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    /// The reference chain's second plugin, only with `mappings`: portmap, fed the bridge's
    /// result on ADD and the cached final result on DEL.
    pub fn ref_portmap(&self, host_port: u16, prev: &Value) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "twlbenchref",
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": port_mappings(host_port)},
            "prevResult": prev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(mappings: bool) -> Setup {
        Setup {
            ip_masq: true,
            mappings,
            twill_data_dir: "/t/a".into(),
            ref_data_dir: "/t/b".into(),
        }
    }

    #[test]
    fn twill_gets_mappings_only_when_asked() {
        let c = setup(false).twill(PodWiring::L3, 10001, None);
        assert!(c.get("runtimeConfig").is_none());
        assert!(c.get("prevResult").is_none());
        assert_eq!(c["podWiring"], "l3");
        assert_eq!(c["ipam"]["dataDir"], "/t/a/l3");
        let prev = json!({"cniVersion": "1.1.0"});
        let c = setup(true).twill(PodWiring::Bridge, 10001, Some(&prev));
        assert_eq!(c["podWiring"], "bridge");
        assert_eq!(
            c["ipam"]["dataDir"], "/t/a/bridge",
            "one IPAM folder per wiring"
        );
        assert_eq!(c["runtimeConfig"]["portMappings"][0]["hostPort"], 10001);
        assert_eq!(c["runtimeConfig"]["portMappings"][0]["protocol"], "tcp");
        assert_eq!(c["prevResult"], prev);
    }

    #[test]
    fn reference_chain_matches_twill() {
        let s = setup(true);
        let b = s.ref_bridge(None);
        assert_eq!(b["ipMasq"], s.twill(PodWiring::L3, 1, None)["ipMasq"]);
        assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], REF_SUBNET);
        assert!(
            b.get("runtimeConfig").is_none(),
            "bridge declares no capability"
        );
        let prev = json!({"ips": []});
        let p = s.ref_portmap(10002, &prev);
        assert_eq!(p["name"], b["name"]);
        assert_eq!(p["cniVersion"], b["cniVersion"]);
        assert_eq!(p["runtimeConfig"]["portMappings"][0]["hostPort"], 10002);
        assert_eq!(p["prevResult"], prev);
    }
}
