//! The result of ADD, exactly as the spec lays it out ("Success" in spec 1.1.0), and its
//! older shapes: before 1.0.0 every `ips` entry also carried `"version": "4"`.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Spec 1.1.0: "mtu (uint): The MTU of the interface, if known."
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// "sandbox (string): container/namespace-based environments should return the full
    /// filesystem path to the network namespace of that sandbox. Hypervisor/VM-based
    /// plugins should return an ID unique to the VM sandbox. Host interfaces must not set this."
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpConfig {
    /// CIDR form, e.g. "10.244.1.5/24".
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Only in results before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// The result in the shape `version` asks for. Twill's own fields (interface MTU) are
    /// valid in every version the spec keeps compatible; `ips[].version` exists only
    /// before 1.0.0.
    /// Returned as text so the keys keep the spec's order.
    pub fn encode(&self, version: &str) -> String {
        let mut out = self.clone();
        out.cni_version = version.to_string();
        let old = !super::version_at_least(version, "1.0.0");
        for ip in &mut out.ips {
            ip.version = old.then(|| "4".to_string());
        }
        if !super::version_at_least(version, "1.1.0") {
            for i in &mut out.interfaces {
                i.mtu = None;
            }
        }
        serde_json::to_string(&out).expect("plain struct serializes")
    }

    /// Appends `other` to this result (chaining: a plugin adds to prevResult), shifting
    /// `other`'s interface indexes past ours.
    pub fn append(&mut self, other: CniResult) {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "twl0".into(),
                    mac: "aa:bb:cc:00:00:01".into(),
                    mtu: Some(1500),
                    sandbox: String::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:00:00:02".into(),
                    mtu: Some(1500),
                    sandbox: "/run/netns/p".into(),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".into(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
                version: None,
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn encodes_spec_1_1_exactly() {
        let v = sample().encode("1.1.0");
        assert_eq!(
            v,
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"twl0","mac":"aa:bb:cc:00:00:01","mtu":1500},{"name":"eth0","mac":"aa:bb:cc:00:00:02","mtu":1500,"sandbox":"/run/netns/p"}],"ips":[{"address":"10.244.1.2/24","gateway":"10.244.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}]}"#
        );
    }

    #[test]
    fn older_versions_carry_ip_version_and_no_mtu() {
        let v: serde_json::Value = serde_json::from_str(&sample().encode("0.4.0")).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert_eq!(v["cniVersion"], "0.4.0");
        let v: serde_json::Value = serde_json::from_str(&sample().encode("1.0.0")).unwrap();
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn append_shifts_interface_indexes() {
        let mut prev = sample();
        prev.append(sample());
        assert_eq!(prev.interfaces.len(), 4);
        assert_eq!(prev.ips[1].interface, Some(3));
    }

    #[test]
    fn round_trips_through_json() {
        let s = sample();
        let back: CniResult = serde_json::from_str(&s.encode("1.1.0")).unwrap();
        assert_eq!(back, s);
    }
}
