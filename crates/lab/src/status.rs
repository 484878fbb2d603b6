//! `twill lab status`: the lab's namespaces with their interfaces and addresses, read live from
//! the kernel (`ip -j -n NS addr`); per node what its agent published in the store (node IP
//! and why, blocks), the agent's readiness (its /readyz, asked inside the node), and the
//! pods' addresses.

use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::build::{ip, netns_exists, LabError};
use crate::daemons;
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

/// A node agent as the lab sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: Option<u32>,
    pub running: bool,
    /// /readyz answered 200.
    pub ready: bool,
    /// /readyz's answer ("ready", or why not), or why it could not be asked.
    pub readyz: String,
    /// `twill_lease_renewals_total` from its /metrics.
    pub lease_renewals: Option<u64>,
    pub log: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub netns: String,
    /// The address the lab gave the node's eth0.
    pub address: Ipv4Net,
    /// The node IP its agent chose, how and why (from the store's `nodes/<name>`).
    pub node_ip: Option<Ipv4Addr>,
    pub ip_method: Option<String>,
    pub ip_reason: Option<String>,
    /// The blocks the node holds (from the store).
    pub blocks: Vec<Ipv4Net>,
    pub agent: AgentStatus,
    pub pods: Vec<PodStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub state_dir: String,
    pub cluster_cidr: Ipv4Net,
    pub cni_bin: String,
    /// `embedded` or `etcd`, and where.
    pub store: String,
    /// Why the store could not be read, if it could not.
    pub store_error: Option<String>,
    pub namespaces: Vec<NetnsStatus>,
    pub nodes: Vec<NodeStatus>,
    /// The router's routing daemon: what it is, its processes, its files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterStatus>,
}

/// The router's routing daemon as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterStatus {
    pub what: String,
    /// `rt-bird 1234 running`, ...
    pub processes: Vec<String>,
    pub config: String,
    pub log: String,
    /// How to ask it (`twill lab exec rt -- birdc -s ... show protocols`).
    pub ask: String,
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
    if p.store.etcd.as_ref().is_some_and(|e| e.netns == netns) {
        return "store host (etcd)".into();
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
    let (published, store_error) = match daemons::read_nodes(plan) {
        Ok(m) => (m, None),
        Err(e) => (Default::default(), Some(e)),
    };
    let nodes = plan
        .nodes
        .iter()
        .map(|n| {
            let p = published.get(&n.short);
            NodeStatus {
                name: n.short.clone(),
                netns: n.netns.clone(),
                address: n.address,
                node_ip: p.map(|p| p.address),
                ip_method: p.map(|p| p.autodetection.clone()),
                ip_reason: p.map(|p| p.reason.clone()),
                blocks: p.map(|p| p.blocks.clone()).unwrap_or_default(),
                agent: agent_status(state, &n.short),
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
            }
        })
        .collect();
    let store = match (&plan.store.dir, &plan.store.etcd) {
        (Some(dir), _) => format!("embedded, folder {}", dir.display()),
        (_, Some(e)) => format!(
            "etcd {} in {} (pid {})",
            e.client_url,
            e.netns,
            state
                .etcd
                .as_ref()
                .and_then(|r| r.pid)
                .map_or("stopped".into(), |p| p.to_string())
        ),
        _ => match &plan.store.static_file {
            Some(f) => format!("static, file {} (written by the lab)", f.display()),
            None => plan.store.kind.name().into(),
        },
    };
    Ok(LabStatus {
        name: plan.name.clone(),
        state_dir: plan.state_dir.display().to_string(),
        cluster_cidr: plan.cluster_cidr,
        cni_bin: state.cni_bin.display().to_string(),
        store,
        store_error,
        namespaces,
        nodes,
        router: router_status(state),
    })
}

fn router_status(state: &LabState) -> Option<RouterStatus> {
    let d = state.plan.router.daemon.as_ref()?;
    let name = &state.plan.name;
    Some(RouterStatus {
        what: crate::routing::describe_router(d),
        processes: state
            .router
            .iter()
            .map(|r| {
                let pid = r.pid.unwrap_or(0);
                let alive = r.pid.is_some_and(|p| crate::daemons::is_ours(p, &r.bin));
                format!(
                    "{} {pid} {}",
                    r.role,
                    if alive { "running" } else { "NOT RUNNING" }
                )
            })
            .collect(),
        config: d.config_file().display().to_string(),
        log: d.log_file().display().to_string(),
        ask: match d.kind {
            crate::plan::ExternalRouter::Bird => format!(
                "twill lab exec --name {name} rt -- birdc -s {} show protocols",
                d.control().display()
            ),
            crate::plan::ExternalRouter::Frr => format!(
                "twill lab exec --name {name} rt -- vtysh --vty_socket {} -c 'show ip {}'",
                d.control().display(),
                match d.protocol {
                    crate::plan::RoutingProtocol::Bgp => "bgp summary",
                    crate::plan::RoutingProtocol::Rip => "rip",
                }
            ),
        },
    })
}

/// Asks node `node`'s agent, inside its namespace, how it is.
fn agent_status(state: &LabState, node: &str) -> AgentStatus {
    let rec = state.agent(node);
    let pid = rec.and_then(|r| r.pid);
    let running = rec.is_some_and(|r| r.pid.is_some_and(|p| daemons::is_ours(p, &r.bin)));
    let netns = state
        .plan
        .nodes
        .iter()
        .find(|n| n.short == node)
        .map(|n| n.netns.clone())
        .unwrap_or_default();
    let (ready, readyz) = match daemons::http_get(&netns, daemons::agent_addr(), "/readyz") {
        Ok((code, body)) => (code == 200, body.trim().to_string()),
        Err(e) => (false, format!("unreachable: {e}")),
    };
    let lease_renewals = daemons::http_get(&netns, daemons::agent_addr(), "/metrics")
        .ok()
        .and_then(|(_, page)| daemons::metric(&page, "twill_lease_renewals_total"))
        .map(|v| v as u64);
    AgentStatus {
        pid,
        running,
        ready,
        readyz,
        lease_renewals,
        log: rec.map(|r| r.log.display().to_string()).unwrap_or_default(),
    }
}

/// The human-readable status.
pub fn render(s: &LabStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "lab {} (state {}, cluster CIDR {}, plugin {})",
        s.name, s.state_dir, s.cluster_cidr, s.cni_bin
    );
    let _ = writeln!(o, "store: {}", s.store);
    if let Some(e) = &s.store_error {
        let _ = writeln!(o, "store unreadable: {e}");
    }
    let _ = writeln!(
        o,
        "\nNODE  NETNS                 NODE IP          BLOCKS                  AGENT"
    );
    for n in &s.nodes {
        let ip = n.node_ip.map_or("-".into(), |a| a.to_string());
        let blocks: Vec<String> = n.blocks.iter().map(|b| b.to_string()).collect();
        let blocks = if blocks.is_empty() {
            "-".into()
        } else {
            blocks.join(",")
        };
        let agent = match (n.agent.running, n.agent.ready) {
            (false, _) => format!(
                "not running (pid {})",
                n.agent.pid.map_or("-".into(), |p| p.to_string())
            ),
            (true, true) => format!("ready (pid {})", n.agent.pid.unwrap_or(0)),
            (true, false) => format!("NOT READY: {}", n.agent.readyz),
        };
        let _ = writeln!(
            o,
            "{:<5} {:<21} {:<16} {:<23} {}",
            n.name, n.netns, ip, blocks, agent
        );
        if let (Some(m), Some(r)) = (&n.ip_method, &n.ip_reason) {
            let _ = writeln!(o, "      node IP by {m}: {r}");
        }
    }
    if let Some(r) = &s.router {
        let _ = writeln!(
            o,
            "\nrouter: {} ({}); config {}, log {}\n  ask it: {}",
            r.what,
            r.processes.join(", "),
            r.config,
            r.log,
            r.ask
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
