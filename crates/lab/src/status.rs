//! `twill lab status`: the lab's namespaces with their interfaces and addresses, read live from
//! the kernel (`ip -j -n NS addr`), plus each node's pod subnet and its pods' addresses.

use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::build::{ip, netns_exists, LabError};
use crate::plan::PortMapping;
use crate::state::LabState;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IfaceStatus {
    pub name: String,
    pub state: String,
    pub master: Option<String>,
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetnsStatus {
    pub netns: String,
    pub role: String,
    pub present: bool,
    pub interfaces: Vec<IfaceStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodStatus {
    pub name: String,
    pub netns: String,
    pub address: Option<Ipv4Addr>,
    pub port_mappings: Vec<PortMapping>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Net,
    pub pod_subnet: Ipv4Net,
    pub pod_gateway: Ipv4Addr,
    pub pods: Vec<PodStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub state_dir: String,
    pub cluster_cidr: Ipv4Net,
    pub cni_bin: String,
    pub namespaces: Vec<NetnsStatus>,
    pub nodes: Vec<NodeStatus>,
}

/// Reads `ip -j addr` output into interfaces (pure, so it is tested without a namespace).
pub fn parse_ip_addr_json(text: &str) -> Result<Vec<IfaceStatus>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Addr {
        local: Option<String>,
        prefixlen: Option<u8>,
    }
    #[derive(Deserialize)]
    struct Link {
        ifname: String,
        operstate: Option<String>,
        master: Option<String>,
        #[serde(default)]
        addr_info: Vec<Addr>,
    }
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let links: Vec<Link> = serde_json::from_str(text)?;
    Ok(links
        .into_iter()
        .map(|l| IfaceStatus {
            name: l.ifname,
            state: l.operstate.unwrap_or_default(),
            master: l.master,
            addresses: l
                .addr_info
                .into_iter()
                .filter_map(|a| Some(format!("{}/{}", a.local?, a.prefixlen?)))
                .collect(),
        })
        .collect())
}

fn role(state: &LabState, netns: &str) -> String {
    let p = &state.plan;
    if p.segments.iter().any(|s| s.netns == netns) {
        return "underlay switch".into();
    }
    if p.router.netns == netns {
        return "router".into();
    }
    if p.outside.netns == netns {
        return "outside host".into();
    }
    if let Some(n) = p.nodes.iter().find(|n| n.netns == netns) {
        return format!("node {}", n.short);
    }
    if let Some(pod) = p.pods().find(|pod| pod.netns == netns) {
        return format!("pod {}", pod.short);
    }
    "unknown".into()
}

/// Reads the lab's live state.
pub fn status(state: &LabState) -> Result<LabStatus, LabError> {
    let plan = &state.plan;
    let mut namespaces = Vec::new();
    for netns in plan.all_netns() {
        let present = netns_exists(netns);
        let interfaces = if present {
            let text = ip(&["-j", "-n", netns, "addr", "show"])?;
            parse_ip_addr_json(&text).map_err(|e| LabError::Command {
                cmd: format!("ip -j -n {netns} addr show"),
                detail: format!("unreadable JSON: {e}"),
            })?
        } else {
            Vec::new()
        };
        namespaces.push(NetnsStatus {
            netns: netns.into(),
            role: role(state, netns),
            present,
            interfaces,
        });
    }
    let nodes = plan
        .nodes
        .iter()
        .map(|n| NodeStatus {
            name: n.short.clone(),
            netns: n.netns.clone(),
            address: n.address,
            pod_subnet: n.pod_subnet,
            pod_gateway: n.pod_gateway,
            pods: n
                .pods
                .iter()
                .map(|p| PodStatus {
                    name: p.short.clone(),
                    netns: p.netns.clone(),
                    address: state.pod(&p.short).and_then(|r| r.address),
                    port_mappings: p.port_mappings.clone(),
                })
                .collect(),
        })
        .collect();
    Ok(LabStatus {
        name: plan.name.clone(),
        state_dir: plan.state_dir.display().to_string(),
        cluster_cidr: plan.cluster_cidr,
        cni_bin: state.cni_bin.display().to_string(),
        namespaces,
        nodes,
    })
}

/// The human-readable status.
pub fn render(s: &LabStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "lab {} (state {}, cluster CIDR {}, plugin {})",
        s.name, s.state_dir, s.cluster_cidr, s.cni_bin
    );
    let _ = writeln!(
        o,
        "\nNODE  NETNS                 ADDRESS           POD SUBNET        GATEWAY"
    );
    for n in &s.nodes {
        // Ipv4Net ignores width flags: format to strings first.
        let (addr, subnet) = (n.address.to_string(), n.pod_subnet.to_string());
        let _ = writeln!(
            o,
            "{:<5} {:<21} {:<17} {:<17} {}",
            n.name, n.netns, addr, subnet, n.pod_gateway
        );
    }
    let _ = writeln!(
        o,
        "\nPOD     NETNS                 ADDRESS          HOST PORTS"
    );
    for n in &s.nodes {
        for p in &n.pods {
            let ports: Vec<String> = p
                .port_mappings
                .iter()
                .map(|m| format!("{}->{}/{}", m.host_port, m.container_port, m.protocol))
                .collect();
            let addr = p.address.map_or("-".into(), |a| a.to_string());
            let _ = writeln!(
                o,
                "{:<7} {:<21} {:<16} {}",
                p.name,
                p.netns,
                addr,
                ports.join(" ")
            );
        }
    }
    let _ = writeln!(
        o,
        "\nNETNS                 ROLE             INTERFACE        STATE    ADDRESSES"
    );
    for ns in &s.namespaces {
        if !ns.present {
            let _ = writeln!(o, "{:<21} {:<16} (missing)", ns.netns, ns.role);
            continue;
        }
        for (i, ifc) in ns.interfaces.iter().enumerate() {
            let (name, role) = if i == 0 {
                (ns.netns.as_str(), ns.role.as_str())
            } else {
                ("", "")
            };
            let mut addrs = ifc.addresses.join(" ");
            if let Some(m) = &ifc.master {
                addrs = format!("{addrs} (port of {m})").trim().to_string();
            }
            let _ = writeln!(
                o,
                "{:<21} {:<16} {:<16} {:<8} {}",
                name, role, ifc.name, ifc.state, addrs
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addr_json_is_read() {
        let text = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"mtu":65536,
          "operstate":"UNKNOWN","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8},
          {"family":"inet6","local":"::1","prefixlen":128}]},
          {"ifindex":2,"ifname":"veth1","master":"twl0","operstate":"UP","addr_info":[]},
          {"ifindex":3,"ifname":"eth0","operstate":"DOWN"}]"#;
        let v = parse_ip_addr_json(text).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].addresses, ["127.0.0.1/8", "::1/128"]);
        assert_eq!(v[1].master.as_deref(), Some("twl0"));
        assert_eq!(v[2].state, "DOWN");
        assert!(v[2].addresses.is_empty());
        assert_eq!(parse_ip_addr_json("").unwrap(), Vec::new());
        assert!(parse_ip_addr_json("{").is_err());
    }
}
