//! The network config `twill-cni` reads on stdin: the plugin entry of a conflist plus the
//! `name`/`cniVersion` the runtime copies in, `runtimeConfig` for declared capabilities and,
//! when chained, `prevResult`.
//!
//! ```json
//! {"cniVersion":"1.1.0","name":"twill","type":"twill-cni",
//!  "podWiring":"bridge","bridge":"twl0","mtu":1500,"ipMasq":true,"hairpinMode":true,"isDefaultGateway":true,
//!  "clusterCIDR":"10.244.0.0/16","capabilities":{"portMappings":true},
//!  "ipam":{"type":"twill","subnet":"10.244.1.0/24","rangeStart":"10.244.1.10",
//!          "reserved":["10.244.1.50-10.244.1.60"],"dataDir":"/var/lib/twill/ipam",
//!          "routes":[{"dst":"0.0.0.0/0"}]},
//!  "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],
//!                   "labels":{"app":"web"},"namedPorts":[{"name":"http","port":80,"protocol":"TCP"}]}}
//! ```

use super::error::{CniError, ErrorCode};
use super::json::{join, parse_cidr, parse_ipv4, wrong, Obj};
use super::result::{CniResult, Dns};
use super::SUPPORTED_VERSIONS;
use crate::names;
use crate::policy::{check_object_labels, check_port_name, NamedPort};
use crate::wiring::PodWiring;
use ipnet::Ipv4Net;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub const DEFAULT_BRIDGE: &str = "twl0";
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/twill/ipam";

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    /// How pods meet the node: `bridge` (default) or `l3`; without `podWiring` in the
    /// config, the hand-off's.
    pub pod_wiring: PodWiring,
    /// The bridge of [`PodWiring::Bridge`]; unused in l3.
    pub bridge: String,
    pub mtu: u32,
    pub hairpin: bool,
    pub ip_masq: bool,
    pub is_default_gateway: bool,
    /// Destinations that are never masqueraded (pod-to-pod stays un-NATed). Defaults to
    /// the IPAM subnets.
    pub cluster_cidrs: Vec<Ipv4Net>,
    pub ipam: IpamConf,
    pub dns: Dns,
    pub port_mappings: Vec<PortMapping>,
    /// `runtimeConfig.labels`: the pod's labels as the runtime gives them (see
    /// [`super::identity`] for CNI_ARGS' `TWILL_POD_LABELS`, which win).
    pub labels: BTreeMap<String, String>,
    /// `runtimeConfig.namedPorts`: the pod's containers' named ports.
    pub named_ports: Vec<NamedPort>,
    pub prev_result: Option<CniResult>,
    /// The raw `prevResult`, kept for chaining unknown fields through unchanged.
    pub prev_result_raw: Option<Value>,
    /// Which defaults the config overrode; the rest may come from the node's hand-off.
    pub given: Given,
    /// `policyWaitSeconds` (default 10): how long ADD waits, when the node's policy table
    /// exists, for twilld to put the pod in its dispatch map (see twill-cni's policy_wait).
    pub policy_wait: std::time::Duration,
}

/// Fields the config set explicitly (so the hand-off from twilld does not replace them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Given {
    pub mtu: bool,
    pub ip_masq: bool,
    pub cluster_cidr: bool,
    pub pod_wiring: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    pub ranges: Vec<RangeConf>,
    /// Single addresses or inclusive spans "a-b", as written.
    pub reserved: Vec<String>,
    pub data_dir: PathBuf,
    pub routes: Vec<RouteConf>,
    /// Without `subnet`/`ranges`, the node's blocks come from the file twilld writes
    /// (`ipam.handoffFile`, default /run/twill/node.json).
    pub handoff_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RangeConf {
    /// Path of this range in the config, for error messages.
    pub path: String,
    pub subnet: Ipv4Net,
    pub range_start: Option<Ipv4Addr>,
    pub range_end: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
}

/// `policyWaitSeconds` when the config does not say.
pub const DEFAULT_POLICY_WAIT_SECONDS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    // Kubernetes writes protocols in capitals (NetworkPolicy ports, container ports).
    #[serde(alias = "TCP")]
    Tcp,
    #[serde(alias = "UDP")]
    Udp,
    #[serde(alias = "SCTP")]
    Sctp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostIP")]
    pub host_ip: Option<Ipv4Addr>,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// The network name: it names Twill's IPAM folder, so it must be a safe path component.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    names::validate_network_name(name)
        .map_err(|e| CniError::invalid(format!("field \"name\": {e}")))
}

/// An interface name given in the config (e.g. `bridge`).
fn validate_ifname(path: &str, name: &str) -> Result<(), CniError> {
    names::validate_ifname(name).map_err(|e| CniError::invalid(format!("field \"{path}\": {e}")))
}

impl NetConf {
    /// Decodes and validates a config. Undecodable JSON is code 6, a missing or mistyped
    /// field code 7, an unknown `cniVersion` code 1, a field Twill does not support code 2.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(CniError::new(
                ErrorCode::Decode,
                "the network config on stdin is empty; the runtime must pass the plugin's JSON config",
            ));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                "cannot decode the network config on stdin as JSON",
            )
            .with_details(e.to_string())
        })?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<NetConf, CniError> {
        let root = Obj::root(value)?;
        let cni_version = root.req_str("cniVersion")?.to_string();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "cniVersion \"{cni_version}\" is not supported; twill-cni supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = root.req_str("name")?.to_string();
        validate_network_name(&name)?;
        let plugin_type = root.req_str("type")?.to_string();

        let pod_wiring_given = root
            .str("podWiring")?
            .map(|w| {
                w.parse::<PodWiring>()
                    .map_err(|e| CniError::invalid(format!("field \"podWiring\": {e}")))
            })
            .transpose()?;
        let bridge = root.str("bridge")?.unwrap_or(DEFAULT_BRIDGE).to_string();
        validate_ifname("bridge", &bridge)?;
        let mtu_given = root.uint("mtu", 68, 65535)?.map(|m| m as u32);
        let mtu = mtu_given.unwrap_or(DEFAULT_MTU);
        let hairpin = root.bool("hairpinMode")?.unwrap_or(true);
        let ip_masq_given = root.bool("ipMasq")?;
        let ip_masq = ip_masq_given.unwrap_or(true);
        let is_default_gateway = root.bool("isDefaultGateway")?.unwrap_or(true);

        let ipam_obj = root.obj("ipam")?.ok_or_else(|| {
            CniError::invalid(
                "field \"ipam\" is required: give at least {\"type\":\"twill\",\"subnet\":\"10.244.1.0/24\"}",
            )
        })?;
        let ipam = parse_ipam(&ipam_obj, is_default_gateway)?;

        let cluster_cidrs = match root.get("clusterCIDR") {
            None => ipam.ranges.iter().map(|r| r.subnet).collect(),
            Some(Value::String(s)) => vec![parse_cidr("clusterCIDR", s)?.trunc()],
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => {
                        parse_cidr(&format!("clusterCIDR[{i}]"), s).map(|n| n.trunc())
                    }
                    other => Err(wrong(&format!("clusterCIDR[{i}]"), other, "a CIDR string")),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(wrong(
                    "clusterCIDR",
                    other,
                    "a CIDR string or a list of them",
                ))
            }
        };

        let dns = match root.get("dns") {
            None => Dns::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| CniError::invalid(format!("field \"dns\": {e}")))?,
        };

        let runtime_config = root.obj("runtimeConfig")?;
        let (labels, named_ports) = match &runtime_config {
            None => (BTreeMap::new(), Vec::new()),
            Some(rc) => (parse_labels(rc)?, parse_named_ports(rc)?),
        };
        let port_mappings = match runtime_config {
            None => Vec::new(),
            Some(rc) => match rc.array("portMappings")? {
                None => Vec::new(),
                Some(list) => list
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        parse_port_mapping(&format!("runtimeConfig.portMappings[{i}]"), v)
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .flatten()
                    .collect(),
            },
        };
        check_duplicate_mappings(&port_mappings)?;

        let policy_wait = std::time::Duration::from_secs(
            root.uint("policyWaitSeconds", 0, 300)?
                .unwrap_or(DEFAULT_POLICY_WAIT_SECONDS),
        );

        let prev_result_raw = root.get("prevResult").cloned();
        let prev_result = match &prev_result_raw {
            None => None,
            Some(v) => Some(serde_json::from_value::<CniResult>(v.clone()).map_err(|e| {
                CniError::new(
                    ErrorCode::Decode,
                    format!("field \"prevResult\" is not a CNI result: {e}"),
                )
            })?),
        };

        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            pod_wiring: pod_wiring_given.unwrap_or_default(),
            bridge,
            mtu,
            hairpin,
            ip_masq,
            is_default_gateway,
            cluster_cidrs,
            ipam,
            dns,
            port_mappings,
            labels,
            named_ports,
            prev_result,
            prev_result_raw,
            given: Given {
                mtu: mtu_given.is_some(),
                ip_masq: ip_masq_given.is_some(),
                cluster_cidr: root.get("clusterCIDR").is_some(),
                pod_wiring: pod_wiring_given.is_some(),
            },
            policy_wait,
        })
    }

    /// Fills in what the config left to the node agent: the node's blocks as ranges, and
    /// the cluster CIDR, MTU, masquerade setting and pod wiring unless the config set them.
    pub fn with_handoff(mut self, h: &crate::resources::HandOff) -> NetConf {
        self.ipam.ranges = h
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| RangeConf {
                path: format!("hand-off blocks[{i}]"),
                subnet: *b,
                range_start: None,
                range_end: None,
                gateway: None,
            })
            .collect();
        if !self.given.cluster_cidr {
            self.cluster_cidrs = vec![h.cluster_cidr];
        }
        if !self.given.mtu {
            self.mtu = h.mtu;
        }
        if !self.given.ip_masq {
            self.ip_masq = h.ip_masq;
        }
        if !self.given.pod_wiring {
            self.pod_wiring = h.pod_wiring;
        }
        self
    }
}

fn parse_ipam(ipam: &Obj<'_>, default_route: bool) -> Result<IpamConf, CniError> {
    match ipam.str("type")? {
        None | Some("twill") => {}
        Some(other) => {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                format!(
                    "field \"ipam.type\": \"{other}\" is not supported; twill-cni allocates addresses itself, set \"type\": \"twill\""
                ),
            ))
        }
    }
    let mut ranges = Vec::new();
    if let Some(subnet) = ipam.cidr("subnet")? {
        ranges.push(RangeConf {
            path: "ipam".into(),
            subnet,
            range_start: ipam.ipv4("rangeStart")?,
            range_end: ipam.ipv4("rangeEnd")?,
            gateway: ipam.ipv4("gateway")?,
        });
    }
    if let Some(sets) = ipam.array("ranges")? {
        if !ranges.is_empty() {
            return Err(CniError::invalid(
                "fields \"ipam.subnet\" and \"ipam.ranges\" exclude each other: use one",
            ));
        }
        if sets.len() > 1 {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                format!(
                    "field \"ipam.ranges\" has {} range sets; twill-cni supports one (IPv4) for now",
                    sets.len()
                ),
            ));
        }
        for (i, set) in sets.iter().enumerate() {
            let Value::Array(set) = set else {
                return Err(wrong(
                    &format!("ipam.ranges[{i}]"),
                    set,
                    "an array of ranges",
                ));
            };
            for (j, r) in set.iter().enumerate() {
                let r = Obj::at(format!("ipam.ranges[{i}][{j}]"), r)?;
                ranges.push(RangeConf {
                    subnet: r.cidr("subnet")?.ok_or_else(|| {
                        CniError::invalid(format!("field \"{}\" is required", r.path_of("subnet")))
                    })?,
                    range_start: r.ipv4("rangeStart")?,
                    range_end: r.ipv4("rangeEnd")?,
                    gateway: r.ipv4("gateway")?,
                    path: r.path.clone(),
                });
            }
        }
    }
    let handoff_file = match (ipam.str("handoffFile")?, ranges.is_empty()) {
        (Some(_), false) => {
            return Err(CniError::invalid(
                "field \"ipam.handoffFile\" excludes \"ipam.subnet\"/\"ipam.ranges\": the node's blocks come from one or the other",
            ))
        }
        (Some(f), true) if !f.starts_with('/') => {
            return Err(CniError::invalid(format!(
                "field \"ipam.handoffFile\": {f} must be an absolute path"
            )))
        }
        (f, true) => Some(PathBuf::from(
            f.unwrap_or(crate::resources::DEFAULT_HANDOFF_FILE),
        )),
        (None, false) => None,
    };
    let reserved = match ipam.array("reserved")? {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong(
                    &format!("ipam.reserved[{i}]"),
                    other,
                    "an address or \"a-b\" span",
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let data_dir = PathBuf::from(ipam.str("dataDir")?.unwrap_or(DEFAULT_DATA_DIR));
    if !data_dir.is_absolute() {
        return Err(CniError::invalid(format!(
            "field \"ipam.dataDir\": {} must be an absolute path",
            data_dir.display()
        )));
    }
    let routes = match ipam.array("routes")? {
        None if default_route => vec![RouteConf {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: None,
        }],
        None => Vec::new(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let r = Obj::at(format!("ipam.routes[{i}]"), v)?;
                Ok(RouteConf {
                    dst: r.cidr("dst")?.ok_or_else(|| {
                        CniError::invalid(format!("field \"{}\" is required", r.path_of("dst")))
                    })?,
                    gw: r.ipv4("gw")?,
                })
            })
            .collect::<Result<_, CniError>>()?,
    };
    Ok(IpamConf {
        handoff_file,
        ranges,
        reserved,
        data_dir,
        routes,
    })
}

/// One `runtimeConfig.portMappings` entry. IPv6 host IPs are skipped (a dual-stack runtime
/// sends one entry per family and this plugin is IPv4-only), never half-applied.
fn parse_port_mapping(path: &str, v: &Value) -> Result<Option<PortMapping>, CniError> {
    let o = Obj::at(path.to_string(), v)?;
    let port = |key: &str| -> Result<u16, CniError> {
        o.uint(key, 1, 65535)?
            .map(|p| p as u16)
            .ok_or_else(|| CniError::invalid(format!("field \"{}\" is required", join(path, key))))
    };
    let host_port = port("hostPort")?;
    let container_port = port("containerPort")?;
    let protocol = match o.str("protocol")?.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some("sctp") => Protocol::Sctp,
        Some(other) => {
            return Err(CniError::invalid(format!(
                "field \"{}\": \"{other}\" is not tcp, udp or sctp",
                join(path, "protocol")
            )))
        }
    };
    let host_ip = match o.str("hostIP")? {
        None | Some("") | Some("0.0.0.0") => None,
        Some(s) if s.contains(':') => return Ok(None),
        Some(s) => Some(parse_ipv4(&join(path, "hostIP"), s)?),
    };
    Ok(Some(PortMapping {
        host_port,
        container_port,
        protocol,
        host_ip,
    }))
}

/// `runtimeConfig.labels`: a map of strings, each a valid label.
fn parse_labels(rc: &Obj<'_>) -> Result<BTreeMap<String, String>, CniError> {
    let Some(o) = rc.obj("labels")? else {
        return Ok(BTreeMap::new());
    };
    let mut labels = BTreeMap::new();
    for (k, v) in o.map {
        match v {
            Value::String(s) => {
                labels.insert(k.clone(), s.clone());
            }
            other => return Err(wrong(&o.path_of(k), other, "a string (a label value)")),
        }
    }
    check_object_labels(&o.path, &labels)
        .map_err(|e| CniError::invalid(format!("field \"{}\": {}", e.field, e.reason)))?;
    Ok(labels)
}

/// `runtimeConfig.namedPorts`: `[{"name":"serve-80-tcp","port":80,"protocol":"TCP"}]`
/// (protocol default TCP); names unique within the pod, as Kubernetes' container ports.
fn parse_named_ports(rc: &Obj<'_>) -> Result<Vec<NamedPort>, CniError> {
    let Some(list) = rc.array("namedPorts")? else {
        return Ok(Vec::new());
    };
    let mut ports: Vec<NamedPort> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let o = Obj::at(format!("{}[{i}]", rc.path_of("namedPorts")), v)?;
        let name = o.req_str("name")?;
        check_port_name(&o.path_of("name"), name)
            .map_err(|e| CniError::invalid(format!("field \"{}\": {}", e.field, e.reason)))?;
        let port = o.uint("port", 1, 65535)?.ok_or_else(|| {
            CniError::invalid(format!("field \"{}\" is required", o.path_of("port")))
        })? as u16;
        let protocol = match o.str("protocol")? {
            None | Some("TCP") | Some("tcp") => Protocol::Tcp,
            Some("UDP") | Some("udp") => Protocol::Udp,
            Some("SCTP") | Some("sctp") => Protocol::Sctp,
            Some(other) => {
                return Err(CniError::invalid(format!(
                    "field \"{}\": \"{other}\" is not TCP, UDP or SCTP",
                    o.path_of("protocol")
                )))
            }
        };
        if let Some(j) = ports.iter().position(|p| p.name == name) {
            return Err(CniError::invalid(format!(
                "field \"{}\": {name:?} is already the name of runtimeConfig.namedPorts[{j}]; a pod's port names are unique",
                o.path_of("name")
            )));
        }
        ports.push(NamedPort {
            name: name.to_string(),
            port,
            protocol,
        });
    }
    Ok(ports)
}

fn check_duplicate_mappings(list: &[PortMapping]) -> Result<(), CniError> {
    for (i, a) in list.iter().enumerate() {
        for b in &list[..i] {
            let overlap = a.protocol == b.protocol
                && a.host_port == b.host_port
                && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip);
            if overlap {
                return Err(CniError::invalid(format!(
                    "field \"runtimeConfig.portMappings\": host port {}/{} is listed twice",
                    a.host_port, a.protocol
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    const MIN: &str = r#"{"cniVersion":"1.1.0","name":"net","type":"twill-cni","ipam":{"subnet":"10.244.1.0/24"}}"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.pod_wiring, PodWiring::Bridge);
        assert!(!c.given.pod_wiring);
        assert_eq!(c.bridge, "twl0");
        assert_eq!(c.mtu, 1500);
        assert!(c.ip_masq && c.hairpin && c.is_default_gateway);
        assert_eq!(c.cluster_cidrs, vec!["10.244.1.0/24".parse().unwrap()]);
        assert_eq!(
            c.ipam.routes,
            vec![RouteConf {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None
            }]
        );
        assert_eq!(c.ipam.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"twill-cni","bridge":"br1","mtu":1450,
            "ipMasq":false,"clusterCIDR":"10.244.0.0/16",
            "ipam":{"type":"twill","ranges":[[{"subnet":"10.244.1.0/24","rangeStart":"10.244.1.10","gateway":"10.244.1.254"}]],
              "reserved":["10.244.1.20-10.244.1.30"],"dataDir":"/tmp/x","routes":[{"dst":"10.0.0.0/8","gw":"10.244.1.254"}]},
            "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP"},
               {"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"192.0.2.11"},
               {"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"::1"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.mtu, 1450);
        assert!(!c.ip_masq);
        assert_eq!(
            c.ipam.ranges[0].gateway,
            Some("10.244.1.254".parse().unwrap())
        );
        assert_eq!(c.port_mappings.len(), 2, "the IPv6 entry is skipped");
        assert_eq!(
            c.port_mappings[1].host_ip,
            Some("192.0.2.11".parse().unwrap())
        );
    }

    #[test]
    fn labels_and_named_ports_from_runtime_config() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},
            "runtimeConfig":{"labels":{"pod":"a","example.com/tier":"web"},
              "namedPorts":[{"name":"serve-80-tcp","port":80,"protocol":"TCP"},{"name":"serve-81-udp","port":81,"protocol":"UDP"},{"name":"dns","port":53}]}}"#,
        )
        .unwrap();
        assert_eq!(c.labels.get("pod").map(String::as_str), Some("a"));
        assert_eq!(
            c.labels.get("example.com/tier").map(String::as_str),
            Some("web")
        );
        let ports: Vec<(&str, u16, Protocol)> = c
            .named_ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("serve-80-tcp", 80, Protocol::Tcp),
                ("serve-81-udp", 81, Protocol::Udp),
                ("dns", 53, Protocol::Tcp)
            ]
        );
        let none = parse(MIN).unwrap();
        assert!(none.labels.is_empty() && none.named_ports.is_empty());
    }

    #[test]
    fn pod_wiring_from_the_config_wins_over_the_hand_off() {
        let handoff = |w| crate::resources::HandOff {
            node: "n1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            blocks: vec!["10.244.3.0/26".parse().unwrap()],
            mtu: 1450,
            ip_masq: false,
            pod_wiring: w,
        };
        let none = r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{}}"#;
        let c = parse(none).unwrap().with_handoff(&handoff(PodWiring::L3));
        assert_eq!(c.pod_wiring, PodWiring::L3, "taken from the hand-off");
        let bridge =
            r#"{"cniVersion":"1.1.0","name":"n","type":"t","podWiring":"bridge","ipam":{}}"#;
        let c = parse(bridge).unwrap();
        assert!(c.given.pod_wiring);
        let c = c.with_handoff(&handoff(PodWiring::L3));
        assert_eq!(c.pod_wiring, PodWiring::Bridge, "the config's own wins");
        let l3 = r#"{"cniVersion":"1.1.0","name":"n","type":"t","podWiring":"l3","ipam":{}}"#;
        let c = parse(l3).unwrap().with_handoff(&handoff(PodWiring::Bridge));
        assert_eq!(c.pod_wiring, PodWiring::L3);
    }

    fn code_and_msg(s: &str) -> (u32, String) {
        let e = parse(s).unwrap_err();
        (e.code.code(), e.msg)
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, u32, &str)] = &[
            ("{", 6, "decode"),
            (" \n", 6, "stdin is empty"),
            ("[]", 6, "object"),
            (
                r#"{"name":"n","type":"t","ipam":{}}"#,
                7,
                "\"cniVersion\" is required",
            ),
            (
                r#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#,
                1,
                "9.9.9",
            ),
            (r#"{"cniVersion":1,"name":"n","type":"t"}"#, 7, "cniVersion"),
            (
                r#"{"cniVersion":"1.1.0","name":"a/b","type":"t","ipam":{}}"#,
                7,
                "name",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#,
                7,
                "\"ipam\" is required",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"handoffFile":"run/x.json"}}"#,
                7,
                "ipam.handoffFile",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16","handoffFile":"/run/x.json"}}"#,
                7,
                "excludes",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.244.1.0/33"}}"#,
                7,
                "ipam.subnet",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"fd00::/64"}}"#,
                2,
                "IPv6",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"type":"host-local","subnet":"10.1.0.0/16"}}"#,
                2,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":"1500","ipam":{"subnet":"10.1.0.0/16"}}"#,
                7,
                "\"mtu\"",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":10,"ipam":{"subnet":"10.1.0.0/16"}}"#,
                7,
                "out of range",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","bridge":"averyveryverylongbridge","ipam":{"subnet":"10.1.0.0/16"}}"#,
                7,
                "bridge",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","podWiring":"L3","ipam":{"subnet":"10.1.0.0/16"}}"#,
                7,
                "field \"podWiring\": \"L3\" is not a pod wiring: use bridge or l3",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","podWiring":3,"ipam":{"subnet":"10.1.0.0/16"}}"#,
                7,
                "field \"podWiring\": expected a string",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipMasq":"yes","ipam":{"subnet":"10.1.0.0/16"}}"#,
                7,
                "ipMasq",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16","rangeStart":"10.1.0.300"}}"#,
                7,
                "ipam.rangeStart",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"ranges":[[{"rangeStart":"10.1.0.3"}]]}}"#,
                7,
                "ipam.ranges[0][0].subnet",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"10.2.0.0/16"}]]}}"#,
                2,
                "range sets",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16","dataDir":"rel/dir"}}"#,
                7,
                "absolute",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}"#,
                7,
                "hostPort",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"portMappings":[{"hostPort":80}]}}"#,
                7,
                "containerPort\" is required",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]}}"#,
                7,
                "icmp",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":81}]}}"#,
                7,
                "twice",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"prevResult":{"ips":"x"}}"#,
                6,
                "prevResult",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","clusterCIDR":"10.0.0.0/99","ipam":{"subnet":"10.1.0.0/16"}}"#,
                7,
                "clusterCIDR",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"labels":["app=web"]}}"#,
                7,
                "field \"runtimeConfig.labels\": expected an object",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"labels":{"app":3}}}"#,
                7,
                "field \"runtimeConfig.labels.app\": expected a string",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"labels":{"app":"a b"}}}"#,
                7,
                "field \"runtimeConfig.labels.app\": \"a b\" is not a label value",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"labels":{"bad key":"a"}}}"#,
                7,
                "field \"runtimeConfig.labels.bad key\"",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"namedPorts":{"name":"http"}}}"#,
                7,
                "field \"runtimeConfig.namedPorts\": expected an array",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"namedPorts":[{"port":80}]}}"#,
                7,
                "field \"runtimeConfig.namedPorts[0].name\" is required",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"namedPorts":[{"name":"HTTP","port":80}]}}"#,
                7,
                "field \"runtimeConfig.namedPorts[0].name\": \"HTTP\" is not a port name",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"namedPorts":[{"name":"http","port":0}]}}"#,
                7,
                "field \"runtimeConfig.namedPorts[0].port\": 0 is out of range",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"namedPorts":[{"name":"http","port":80,"protocol":"ICMP"}]}}"#,
                7,
                "field \"runtimeConfig.namedPorts[0].protocol\": \"ICMP\"",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"subnet":"10.1.0.0/16"},"runtimeConfig":{"namedPorts":[{"name":"http","port":80},{"name":"http","port":81,"protocol":"UDP"}]}}"#,
                7,
                "field \"runtimeConfig.namedPorts[1].name\": \"http\" is already the name of runtimeConfig.namedPorts[0]",
            ),
        ];
        for (input, code, needle) in cases {
            let (c, msg) = code_and_msg(input);
            assert_eq!(c, *code, "{input} gave code {c}: {msg}");
            assert!(
                msg.contains(needle) || msg.to_lowercase().contains(&needle.to_lowercase()),
                "{input}: message {msg:?} does not mention {needle:?}"
            );
        }
    }
}
