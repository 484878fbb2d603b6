//! `twill lab check`: connectivity checks that prove each piece of the pod network works —
//! the bridge (pod↔pod), the gateway (pod↔node), masquerade (pod→outside shows the node's
//! address), DNAT host ports (from outside, from localhost, hairpin) and that pod traffic keeps
//! its source address inside the cluster. Which checks exist and what they expect is pure
//! (`plan_checks`, `judge`); `run` starts the listeners and sends the probes.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::build::LabError;
use crate::plan::{
    self, BackendKind, LabPlan, PeerPath, PodWiring, CONTAINER_PORT_TCP, CONTAINER_PORT_UDP,
    HOST_PORT_TCP, HOST_PORT_UDP,
};
use crate::probe::{self, Listener, ProbeError, Reply};
use crate::state::LabState;

/// Connect and reply timeout: short, so a broken network fails in seconds.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The responder name of the outside host's listener.
pub const OUTSIDE_RESPONDER: &str = "out";
/// The row of the outside host reaching a pod by its IP when the router only forwards
/// (expected to fail), and when its routing daemon learned the blocks (expected to pass,
/// with the outside host's own address seen by the pod: no NAT).
pub const OUTSIDE_POD_UNROUTED: &str = "outside→pod ip not routed";
pub const OUTSIDE_POD_ROUTED: &str = "outside→pod ip, routed, no NAT";
/// The port the outside host listens on (pods connect to it through masquerade).
pub const OUTSIDE_PORT: u16 = 8080;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// A responder a check run needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    pub netns: String,
    pub responder: String,
    pub proto: Proto,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Ping(Ipv4Addr),
    Tcp(SocketAddr),
    Udp(SocketAddr),
    /// l3: after a ping to `via`, the pod's neighbour entry for `gateway` holds the host
    /// veth's fixed MAC, answered by proxy ARP.
    ProxyArp {
        gateway: Ipv4Addr,
        via: Ipv4Addr,
    },
}

/// The fixed MAC of every l3 host veth, as `ip neigh` prints it.
pub fn l3_host_mac() -> String {
    crate::trace::pcap::Mac(twill_api::wiring::L3_HOST_MAC).to_string()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A ping reply.
    Reply,
    /// An answer from `responder`; if `peer` is set, the responder must have seen that source.
    Answer {
        responder: String,
        peer: Option<Ipv4Addr>,
    },
    /// No connection at all.
    Unreachable,
    /// No connection, because the backend cannot carry it (`reason`); with `reported`, the
    /// sending node's agent must also name the peer in its /readyz warnings.
    Blocked {
        reason: String,
        reported: Option<Reported>,
    },
}

/// A problem an agent must be reporting: node `netns`'s /readyz names `peer` (`peer_ip`)
/// as off its segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    pub netns: String,
    pub peer: String,
    pub peer_ip: Ipv4Addr,
}

impl Expect {
    /// Whether the probe is meant to get through.
    pub fn reaches(&self) -> bool {
        !matches!(self, Expect::Unreachable | Expect::Blocked { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub name: String,
    /// Which pair this is: on a node, across nodes, across segments, outside.
    pub kind: String,
    pub from: String,
    pub from_netns: String,
    pub to: String,
    pub probe: Probe,
    pub expect: Expect,
    /// What a failure most likely means.
    pub hint: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub kind: String,
    pub from: String,
    pub to: String,
    /// "pass" when the probe is meant to get through (with the right answer and source),
    /// "fail" when the topology or backend must stop it.
    pub expected: String,
    /// What happened, in the same words.
    pub result: String,
    /// `result` is `expected` (and an expected failure is the one the agent reports).
    pub passed: bool,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub lab: String,
    /// At least one check ran, and every one is what was expected.
    pub passed: bool,
    pub checks: Vec<CheckResult>,
}

/// Why a run that checked nothing fails: it proves nothing.
pub const NO_CHECKS: &str = "no checks ran, and a check of nothing proves nothing: the lab has \
     no node with pods (`twill lab status` shows it; `twill lab add-node` adds one)";

impl CheckReport {
    /// The report of `checks`: passed only if there is at least one and all passed. Pure.
    pub fn new(lab: String, checks: Vec<CheckResult>) -> CheckReport {
        CheckReport {
            lab,
            passed: !checks.is_empty() && checks.iter().all(|c| c.passed),
            checks,
        }
    }

    /// Why the run failed, in one line; None when it passed.
    pub fn failure(&self) -> Option<String> {
        if self.passed {
            return None;
        }
        if self.checks.is_empty() {
            return Some(NO_CHECKS.into());
        }
        let n = self.checks.iter().filter(|c| !c.passed).count();
        Some(format!(
            "{n} of {} checks were not what was expected",
            self.checks.len()
        ))
    }
}

/// The listeners a check run needs: every pod answers TCP on its container port, pod 1 of
/// each node also UDP, and the outside host answers TCP.
pub fn plan_listeners(plan: &LabPlan) -> Vec<ListenerSpec> {
    let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let mut v = Vec::new();
    for node in &plan.nodes {
        for (j, pod) in node.pods.iter().enumerate() {
            v.push(ListenerSpec {
                netns: pod.netns.clone(),
                responder: pod.short.clone(),
                proto: Proto::Tcp,
                addr: any(CONTAINER_PORT_TCP),
            });
            if j == 0 {
                v.push(ListenerSpec {
                    netns: pod.netns.clone(),
                    responder: pod.short.clone(),
                    proto: Proto::Udp,
                    addr: any(CONTAINER_PORT_UDP),
                });
            }
        }
    }
    v.push(ListenerSpec {
        netns: plan.outside.netns.clone(),
        responder: OUTSIDE_RESPONDER.into(),
        proto: Proto::Tcp,
        addr: any(OUTSIDE_PORT),
    });
    v
}

/// A pod's addresses as its ADD result gives them: the node's agent chose the block, so
/// nothing here is derived from the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodAddrs {
    pub ip: Ipv4Addr,
    /// The pod's default gateway (the bridge's address in the pod's block).
    pub gateway: Option<Ipv4Addr>,
}

/// Every check for the lab, given each pod's addresses (from its ADD result). A pod without
/// an address gets one failing row instead of its probes. Checks stay within a node:
/// cross-node pod routing comes with the backends.
pub fn plan_checks(plan: &LabPlan, pod_addrs: &HashMap<String, PodAddrs>) -> Vec<CheckSpec> {
    let pod_ips: HashMap<String, Ipv4Addr> =
        pod_addrs.iter().map(|(k, a)| (k.clone(), a.ip)).collect();
    let mut v = Vec::new();
    let outside = plan.outside.address.addr();
    let mut add =
        |name: &str, from: (&str, &str), to: String, probe: Probe, expect: Expect, hint: &str| {
            v.push(CheckSpec {
                name: name.into(),
                kind: kind_of(name).into(),
                from: from.0.into(),
                from_netns: from.1.into(),
                to,
                probe,
                expect,
                hint: hint.into(),
            })
        };
    let answer = |responder: &str, peer: Option<Ipv4Addr>| Expect::Answer {
        responder: responder.into(),
        peer,
    };
    let tcp = |ip: Ipv4Addr, port: u16| Probe::Tcp(SocketAddr::from((ip, port)));

    let l3 = plan.pod_wiring == PodWiring::L3;
    let (pods_hint, node_pod_hint, hairpin_hint, localhost_hint) = if l3 {
        (
            "l3: pods on one node talk through the host: the node routes each pod's /32 to its veth, and proxy ARP on the veths answers for the pods' gateway 169.254.1.1",
            "l3: the node reaches each pod by its /32 route to the pod's veth (ip route show proto 84)",
            "a pod reaching a host port on its own node needs DNAT on traffic from its veth, and masquerade when it comes back to the same pod",
            "DNAT in the output hook, route_localnet on the pod's veth and masquerade of 127.0.0.1",
        )
    } else {
        (
            "pods on one node talk through the node bridge: check both veths are ports of twl0 and up",
            "the node reaches its pods through the connected route of the bridge",
            "a pod reaching a host port on its own node needs DNAT on traffic from the bridge, and masquerade when it comes back to the same pod",
            "DNAT in the output hook, route_localnet on the bridge and masquerade of 127.0.0.1",
        )
    };
    for node in &plan.nodes {
        let node_ip = node.address.addr();
        let node_from = (node.short.as_str(), node.netns.as_str());
        let pods: Vec<_> = node
            .pods
            .iter()
            .filter_map(|p| pod_ips.get(&p.short).map(|ip| (p, *ip)))
            .collect();
        for p in node.pods.iter().filter(|p| !pod_ips.contains_key(&p.short)) {
            add(
                "pod has an address",
                (&p.short, &p.netns),
                "-".into(),
                Probe::Ping(Ipv4Addr::UNSPECIFIED),
                Expect::Reply,
                "twill-cni ADD returned no IPv4 address for this pod",
            );
        }
        let Some(&(first, first_ip)) = pods.first() else {
            continue;
        };
        let first_from = (first.short.as_str(), first.netns.as_str());

        for &(p, ip) in &pods[1..] {
            let from = (p.short.as_str(), p.netns.as_str());
            let bridge_hint = pods_hint;
            add(
                "pod→pod icmp",
                first_from,
                format!("{} {ip}", p.short),
                Probe::Ping(ip),
                Expect::Reply,
                bridge_hint,
            );
            add(
                "pod→pod icmp",
                from,
                format!("{} {first_ip}", first.short),
                Probe::Ping(first_ip),
                Expect::Reply,
                bridge_hint,
            );
            let src_hint = "pod-to-pod traffic must keep the pod's address: masquerade must skip the cluster CIDR";
            add(
                "pod→pod tcp, source kept",
                first_from,
                format!("{} {ip}:{CONTAINER_PORT_TCP}", p.short),
                tcp(ip, CONTAINER_PORT_TCP),
                answer(&p.short, Some(first_ip)),
                src_hint,
            );
            add(
                "pod→pod tcp, source kept",
                from,
                format!("{} {first_ip}:{CONTAINER_PORT_TCP}", first.short),
                tcp(first_ip, CONTAINER_PORT_TCP),
                answer(&first.short, Some(ip)),
                src_hint,
            );
        }
        for &(p, ip) in &pods {
            let from = (p.short.as_str(), p.netns.as_str());
            // No gateway in the ADD result: the unspecified address makes the row fail.
            let gw = pod_addrs
                .get(&p.short)
                .and_then(|a| a.gateway)
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            if l3 {
                add(
                    "pod→gateway proxy arp",
                    from,
                    format!("{} {gw} is-at {}", node.short, l3_host_mac()),
                    Probe::ProxyArp { gateway: gw, via: node_ip },
                    Expect::Reply,
                    "l3: no interface holds 169.254.1.1; proxy ARP on the pod's host veth (proxy_arp=1) must answer for it with the veth's fixed MAC",
                );
            } else {
                add(
                    "pod→gateway icmp",
                    from,
                    format!("{} {gw}", node.bridge.as_deref().unwrap_or("-")),
                    Probe::Ping(gw),
                    Expect::Reply,
                    "the pod's default gateway is the node bridge's address in the pod's block (from the ADD result)",
                );
            }
            add(
                "node→pod icmp",
                node_from,
                format!("{} {ip}", p.short),
                Probe::Ping(ip),
                Expect::Reply,
                node_pod_hint,
            );
            let masq_hint = if plan.router.daemon.is_some() {
                "the node must masquerade pod traffic leaving the cluster CIDR to its own address (masquerade: true), even though the router knows the pods"
            } else {
                "the router has no route to pods: the node must masquerade pod traffic leaving the cluster CIDR to its own address"
            };
            add(
                "pod→outside via masquerade",
                from,
                format!("out {outside}:{OUTSIDE_PORT}"),
                tcp(outside, OUTSIDE_PORT),
                answer(OUTSIDE_RESPONDER, Some(node_ip)),
                masq_hint,
            );
            let hairpin = if p.short == first.short {
                "hairpin to itself via host port"
            } else {
                "pod→host port on its node"
            };
            add(
                hairpin,
                from,
                format!("{node_ip}:{HOST_PORT_TCP} -> {}", first.short),
                tcp(node_ip, HOST_PORT_TCP),
                answer(&first.short, None),
                hairpin_hint,
            );
        }
        add(
            "pod→node eth0 icmp",
            first_from,
            format!("{} {node_ip}", node.short),
            Probe::Ping(node_ip),
            Expect::Reply,
            "the node answers on every local address via the pod's default route",
        );
        add(
            "node→pod tcp",
            node_from,
            format!("{} {first_ip}:{CONTAINER_PORT_TCP}", first.short),
            tcp(first_ip, CONTAINER_PORT_TCP),
            answer(&first.short, None),
            node_pod_hint,
        );
        let out_from = (OUTSIDE_RESPONDER, plan.outside.netns.as_str());
        add(
            "outside→host port tcp",
            out_from,
            format!(
                "{node_ip}:{HOST_PORT_TCP} -> {}:{CONTAINER_PORT_TCP}",
                first.short
            ),
            tcp(node_ip, HOST_PORT_TCP),
            answer(&first.short, None),
            "host port mapping: DNAT of node:30080 to the pod's 8080",
        );
        add(
            "outside→host port udp",
            out_from,
            format!(
                "{node_ip}:{HOST_PORT_UDP} -> {}:{CONTAINER_PORT_UDP}",
                first.short
            ),
            Probe::Udp(SocketAddr::from((node_ip, HOST_PORT_UDP))),
            answer(&first.short, None),
            "host port mapping: DNAT of udp node:30053 to the pod's 5353",
        );
        add(
            "localhost→host port",
            node_from,
            format!("127.0.0.1:{HOST_PORT_TCP} -> {}", first.short),
            tcp(Ipv4Addr::LOCALHOST, HOST_PORT_TCP),
            answer(&first.short, None),
            localhost_hint,
        );
        match &plan.router.daemon {
            Some(d) => add(
                OUTSIDE_POD_ROUTED,
                out_from,
                format!("{} {first_ip}:{CONTAINER_PORT_TCP}", first.short),
                tcp(first_ip, CONTAINER_PORT_TCP),
                answer(&first.short, Some(outside)),
                &format!(
                    "the router ({}) must have learned {}'s block from {} and installed it in its kernel (`twill lab trace out {}` shows who learned what), and nothing may NAT on the way: the pod sees the outside host's own address",
                    crate::routing::describe_router(d),
                    first.short,
                    node.short,
                    first.short
                ),
            ),
            None => add(OUTSIDE_POD_UNROUTED, out_from, format!("{} {first_ip}:{CONTAINER_PORT_TCP}", first.short), tcp(first_ip, CONTAINER_PORT_TCP), Expect::Unreachable, "the router must not know the pod network: pods are reached from outside only through host ports"),
        }
    }
    v.extend(cross_node_checks(plan, &pod_ips));
    v
}

/// The kind of pair a check covers, from its name.
fn kind_of(name: &str) -> &'static str {
    if name.contains("outside") {
        "outside"
    } else if name.contains("host port") {
        "host port"
    } else {
        "on a node"
    }
}

/// Between every ordered pair of nodes: pod 1 → pod 1 (ICMP, and TCP with the source kept:
/// no NAT between pods), node → the other node's pod 1. What each row expects follows
/// from the backend ([`LabPlan::peer_path`]): host-gw across segments must fail, and the
/// sending node's agent must say why in /readyz.
pub fn cross_node_checks(plan: &LabPlan, pod_ips: &HashMap<String, Ipv4Addr>) -> Vec<CheckSpec> {
    let mut v = Vec::new();
    for a in &plan.nodes {
        for b in plan.nodes.iter().filter(|b| b.index != a.index) {
            let kind = if a.segment == b.segment {
                "across nodes"
            } else {
                "across segments"
            };
            let (Some(pa), Some(pb)) = (a.pods.first(), b.pods.first()) else {
                continue;
            };
            let (Some(&ip_a), Some(&ip_b)) = (pod_ips.get(&pa.short), pod_ips.get(&pb.short))
            else {
                continue; // the row "pod has an address" already fails
            };
            let blocked = match plan.peer_path(a, b) {
                PeerPath::Routed => None,
                PeerPath::Blocked { reason, reported } => Some(Expect::Blocked {
                    reason,
                    reported: reported.then(|| Reported {
                        netns: a.netns.clone(),
                        peer: b.short.clone(),
                        peer_ip: b.address.addr(),
                    }),
                }),
            };
            let via = match plan.backend {
                BackendKind::HostGw => "host-gw: a route per remote block via the remote node (ip route show proto 84)",
                BackendKind::Bgp if a.segment != b.segment => {
                    "bgp across segments: the block is learned over BGP (proto bgp) via the router, which learned it from the other segment's node (`twill lab trace` shows who learned what)"
                }
                BackendKind::Bgp => "bgp: the block is learned over BGP (ip route show proto bgp) via the node that announced it",
                BackendKind::Rip => "rip: the block is heard over RIP and installed by twilld (ip route show proto 84), via the node or the router that announced it",
                BackendKind::Udp => {
                    "udp: a route per remote block dev twl.tun (ip route show proto 84); the node's datapath process wraps each packet in UDP to the peer's node IP, port 8285"
                }
                BackendKind::Ovs => {
                    "ovs: a route per remote block via 169.254.84.84 dev twl.ovs, or dev twl0 with bridge wiring and twl.ovs a port of it (ip route show proto 84; ip link show twl.ovs), and in twl-int a flow setting tun_dst to the peer's node IP and one taking the peer's packets out of the tunnel (twill lab ovs)"
                }
                BackendKind::Vxlan if plan.direct_routing && a.segment == b.segment => {
                    "vxlan directRouting: on one segment, a direct route via the remote node (ip route show proto 84)"
                }
                _ => {
                    "vxlan: route onlink via the peer's VTEP on twl.1 (ip route show proto 84), its neighbour and FDB entry"
                }
            };
            let mut add = |name: &str, from: (&str, &str), to: String, probe, expect| {
                v.push(CheckSpec {
                    name: name.into(),
                    kind: kind.into(),
                    from: from.0.into(),
                    from_netns: from.1.into(),
                    to,
                    probe,
                    expect: blocked.clone().unwrap_or(expect),
                    hint: format!(
                        "{} must have a route of the backend to {}'s block; {via}",
                        a.short, b.short
                    ),
                })
            };
            add(
                "pod→pod icmp, other node",
                (&pa.short, &pa.netns),
                format!("{} {ip_b}", pb.short),
                Probe::Ping(ip_b),
                Expect::Reply,
            );
            add(
                "pod→pod tcp, other node, source kept",
                (&pa.short, &pa.netns),
                format!("{} {ip_b}:{CONTAINER_PORT_TCP}", pb.short),
                Probe::Tcp(SocketAddr::from((ip_b, CONTAINER_PORT_TCP))),
                Expect::Answer {
                    responder: pb.short.clone(),
                    peer: Some(ip_a),
                },
            );
            add(
                "node→pod icmp, other node",
                (&a.short, &a.netns),
                format!("{} {ip_b}", pb.short),
                Probe::Ping(ip_b),
                Expect::Reply,
            );
        }
    }
    v
}

/// Decides one check from what the probe got.
pub fn judge(spec: &CheckSpec, outcome: Result<Option<Reply>, String>) -> (bool, String) {
    judge_with(spec, outcome, None)
}

/// [`judge`], given the sending node's /readyz body for rows that need it.
pub fn judge_with(
    spec: &CheckSpec,
    outcome: Result<Option<Reply>, String>,
    readyz: Option<&str>,
) -> (bool, String) {
    match (&spec.expect, outcome) {
        (Expect::Blocked { reason, .. }, Ok(reply)) => (
            false,
            format!(
                "reached{}, but {reason}: the probe should have failed",
                reply.map_or(String::new(), |r| format!(" {}", r.responder))
            ),
        ),
        (Expect::Blocked { reason, reported }, Err(e)) => match reported {
            None => (true, format!("failed as expected: {reason} ({e})")),
            Some(r) => {
                let body = readyz.unwrap_or("");
                if plan::reports_off_segment(body, &r.peer, r.peer_ip) {
                    (
                        true,
                        format!("failed as expected: {reason}, and it does ({e})"),
                    )
                } else {
                    (
                        false,
                        format!(
                            "failed as expected ({e}), but {reason} is not true: its /readyz says {:?}",
                            body.trim()
                        ),
                    )
                }
            }
        },
        (Expect::Unreachable, Ok(reply)) => (
            false,
            format!(
                "reached{}: {}",
                reply.map_or(String::new(), |r| format!(" {}", r.responder)),
                spec.hint
            ),
        ),
        (Expect::Unreachable, Err(e)) => (true, format!("not reachable, as expected ({e})")),
        (_, Err(e)) => (false, format!("{e}; {}", spec.hint)),
        (Expect::Reply, Ok(_)) => (
            true,
            match spec.probe {
                Probe::ProxyArp { gateway, .. } => format!(
                    "proxy ARP answered: {gateway} is-at {} (the host veth)",
                    l3_host_mac()
                ),
                _ => "echo reply".into(),
            },
        ),
        (Expect::Answer { .. }, Ok(None)) => (false, "no answer".into()),
        (Expect::Answer { responder, peer }, Ok(Some(r))) => {
            if &r.responder != responder {
                return (
                    false,
                    format!(
                        "answered by {}, expected {responder}; {}",
                        r.responder, spec.hint
                    ),
                );
            }
            match peer {
                Some(want) if r.peer.ip() != std::net::IpAddr::V4(*want) => (
                    false,
                    format!(
                        "{responder} saw source {}, expected {want}; {}",
                        r.peer.ip(),
                        spec.hint
                    ),
                ),
                _ => (true, format!("{responder} answered, saw source {}", r.peer)),
            }
        }
    }
}

fn start(l: &ListenerSpec) -> Result<Listener, ProbeError> {
    match l.proto {
        Proto::Tcp => probe::tcp_listener(&l.netns, &l.responder, l.addr),
        Proto::Udp => probe::udp_listener(&l.netns, &l.responder, l.addr),
    }
}

fn send(spec: &CheckSpec) -> Result<Option<Reply>, String> {
    let r = match spec.probe {
        Probe::Ping(ip) if ip.is_unspecified() => return Err("no address".into()),
        Probe::Ping(ip) => probe::ping(&spec.from_netns, ip, PROBE_TIMEOUT).map(|_| None),
        Probe::Tcp(dst) => probe::tcp_ask(&spec.from_netns, dst, PROBE_TIMEOUT).map(Some),
        Probe::Udp(dst) => probe::udp_ask(&spec.from_netns, dst, PROBE_TIMEOUT).map(Some),
        Probe::ProxyArp { gateway, via } => probe::proxy_arp(
            &spec.from_netns,
            gateway,
            &l3_host_mac(),
            via,
            PROBE_TIMEOUT,
        )
        .map(|_| None),
    };
    r.map_err(|e| e.to_string())
}

/// Runs every check against the live lab: listeners up, all probes in parallel (each bounded
/// by `PROBE_TIMEOUT`), listeners down.
pub fn run(state: &LabState) -> Result<CheckReport, LabError> {
    let plan = &state.plan;
    let pod_addrs: HashMap<String, PodAddrs> = state
        .pods
        .iter()
        .filter_map(|p| {
            let ip = p.address?;
            let gateway = p.result.as_ref().and_then(crate::runtime::pod_gateway);
            Some((p.short.clone(), PodAddrs { ip, gateway }))
        })
        .collect();
    let mut listeners = Vec::new();
    for l in plan_listeners(plan) {
        listeners.push(start(&l).map_err(|e| LabError::Command {
            cmd: format!(
                "start the {} listener of {}",
                format!("{:?}", l.proto).to_lowercase(),
                l.responder
            ),
            detail: e.to_string(),
        })?);
    }
    let specs = plan_checks(plan, &pod_addrs);
    let checks: Vec<CheckResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    let outcome = send(s);
                    let readyz = match &s.expect {
                        Expect::Blocked {
                            reported: Some(r), ..
                        } => Some(
                            crate::daemons::http_get(
                                &r.netns,
                                crate::daemons::agent_addr(),
                                "/readyz",
                            )
                            .map(|(_, body)| body)
                            .unwrap_or_else(|e| format!("unreachable: {e}")),
                        ),
                        _ => None,
                    };
                    judge_with(s, outcome, readyz.as_deref())
                })
            })
            .collect();
        specs
            .iter()
            .zip(handles)
            .map(|(s, h)| {
                let (passed, detail) = h.join().unwrap_or((false, "probe thread panicked".into()));
                result_row(s, passed, detail)
            })
            .collect()
    });
    drop(listeners);
    Ok(CheckReport::new(plan.name.clone(), checks))
}

/// One row of the report: what was expected, what happened, and whether they agree.
pub fn result_row(spec: &CheckSpec, passed: bool, detail: String) -> CheckResult {
    let word = |b: bool| if b { "pass" } else { "fail" };
    let expected = spec.expect.reaches();
    CheckResult {
        name: spec.name.clone(),
        kind: spec.kind.clone(),
        from: spec.from.clone(),
        to: spec.to.clone(),
        expected: word(expected).into(),
        // A mismatch means the opposite happened, except an expected failure whose
        // report is missing: it still failed.
        result: word(
            if passed || !expected && detail.starts_with("failed as expected") {
                expected
            } else {
                !expected
            },
        )
        .into(),
        passed,
        detail,
    }
}

/// The check table.
pub fn render(report: &CheckReport) -> String {
    let width = |f: &dyn Fn(&CheckResult) -> &str, title: &str| {
        report
            .checks
            .iter()
            .map(|c| f(c).chars().count())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let w_name = width(&|c| &c.name, "CHECK");
    let w_kind = width(&|c| &c.kind, "KIND");
    let w_from = width(&|c| &c.from, "FROM");
    let w_to = width(&|c| &c.to, "TO");
    let mut o = String::new();
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    let _ = writeln!(
        o,
        "{}  {}  {}  {}  EXPECT  RESULT  DETAIL",
        pad("CHECK", w_name),
        pad("KIND", w_kind),
        pad("FROM", w_from),
        pad("TO", w_to)
    );
    for c in &report.checks {
        // Upper case marks a row that is not what was expected.
        let result = if c.passed {
            c.result.clone()
        } else {
            c.result.to_uppercase()
        };
        let _ = writeln!(
            o,
            "{}  {}  {}  {}  {:<6}  {result:<6}  {}",
            pad(&c.name, w_name),
            pad(&c.kind, w_kind),
            pad(&c.from, w_from),
            pad(&c.to, w_to),
            c.expected,
            c.detail
        );
    }
    let failed = report.checks.iter().filter(|c| !c.passed).count();
    let expected_fail = report
        .checks
        .iter()
        .filter(|c| c.passed && c.expected == "fail")
        .count();
    let _ = writeln!(
        o,
        "{} checks, {} failed as expected, {} unexpected",
        report.checks.len(),
        expected_fail,
        failed
    );
    if report.checks.is_empty() {
        let _ = writeln!(o, "FAILED: {NO_CHECKS}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, LabSpec};

    fn lab(pods: u16) -> LabPlan {
        plan(&LabSpec {
            name: "twllab".into(),
            nodes: 1,
            pods_per_node: pods,
            segments: 1,
            ..LabSpec::default()
        })
        .unwrap()
    }

    /// Pods in a block the agent chose, 10.244.37.0/26 here: nothing assumes 10.244.<i>.0/24.
    fn ips(n: u16) -> HashMap<String, PodAddrs> {
        (1..=n)
            .map(|j| {
                (
                    format!("n1-p{j}"),
                    PodAddrs {
                        ip: Ipv4Addr::new(10, 244, 37, 1 + j as u8),
                        gateway: Some(Ipv4Addr::new(10, 244, 37, 1)),
                    },
                )
            })
            .collect()
    }

    fn find<'a>(v: &'a [CheckSpec], name: &str, from: &str) -> Vec<&'a CheckSpec> {
        v.iter()
            .filter(|c| c.name == name && c.from == from)
            .collect()
    }

    #[test]
    fn listeners_cover_every_pod_and_the_outside() {
        let l = plan_listeners(&lab(3));
        assert_eq!(l.len(), 5);
        assert_eq!(l[0].addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            (l[1].proto, l[1].addr.port(), l[1].responder.as_str()),
            (Proto::Udp, 5353, "n1-p1")
        );
        assert_eq!(
            (l[4].netns.as_str(), l[4].responder.as_str()),
            ("twllab-out", "out")
        );
    }

    #[test]
    fn l3_pods_check_proxy_arp_instead_of_pinging_a_gateway() {
        let mut p = lab(2);
        p.pod_wiring = PodWiring::L3;
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        let ips: HashMap<String, PodAddrs> = (1..=2)
            .map(|j| {
                (
                    format!("n1-p{j}"),
                    PodAddrs {
                        ip: Ipv4Addr::new(10, 244, 37, 1 + j as u8),
                        gateway: Some(gw),
                    },
                )
            })
            .collect();
        let v = plan_checks(&p, &ips);
        assert_eq!(v.len(), plan_checks(&lab(2), &self::ips(2)).len());
        assert!(!v.iter().any(|c| c.name == "pod→gateway icmp"));
        let arp = find(&v, "pod→gateway proxy arp", "n1-p2");
        assert_eq!(
            arp[0].probe,
            Probe::ProxyArp {
                gateway: gw,
                via: Ipv4Addr::new(192, 0, 2, 11)
            }
        );
        assert_eq!(arp[0].to, "n1 169.254.1.1 is-at ee:ee:ee:ee:ee:ee");
        let (ok, detail) = judge(arp[0], Ok(None));
        assert!(ok && detail.contains("proxy ARP answered"), "{detail}");
        // The hints speak of /32 routes, not of a bridge.
        let pp = find(&v, "pod→pod icmp", "n1-p1");
        assert!(
            pp[0].hint.contains("/32") && !pp[0].hint.contains("twl0"),
            "{}",
            pp[0].hint
        );
    }

    #[test]
    fn checks_expect_what_each_mechanism_does() {
        let v = plan_checks(&lab(3), &ips(3));
        // 2 pairs × (2 icmp + 2 tcp) + 3 pods × 4 + 6 per node.
        assert_eq!(v.len(), 8 + 12 + 6);
        let p2 = Ipv4Addr::new(10, 244, 37, 3);
        let node = Ipv4Addr::new(192, 0, 2, 11);

        let src = find(&v, "pod→pod tcp, source kept", "n1-p2");
        assert_eq!(
            src[0].probe,
            Probe::Tcp("10.244.37.2:8080".parse().unwrap())
        );
        assert_eq!(
            src[0].expect,
            Expect::Answer {
                responder: "n1-p1".into(),
                peer: Some(p2)
            }
        );

        let masq = find(&v, "pod→outside via masquerade", "n1-p2");
        assert_eq!(masq[0].from_netns, "twllab-n1-p2");
        assert_eq!(
            masq[0].probe,
            Probe::Tcp("203.0.113.10:8080".parse().unwrap())
        );
        assert_eq!(
            masq[0].expect,
            Expect::Answer {
                responder: "out".into(),
                peer: Some(node)
            }
        );

        let hp = find(&v, "hairpin to itself via host port", "n1-p1");
        assert_eq!(hp[0].probe, Probe::Tcp("192.0.2.11:30080".parse().unwrap()));
        assert_eq!(
            hp[0].expect,
            Expect::Answer {
                responder: "n1-p1".into(),
                peer: None
            }
        );
        assert_eq!(find(&v, "pod→host port on its node", "n1-p3").len(), 1);

        let udp = find(&v, "outside→host port udp", "out");
        assert_eq!(
            (udp[0].probe.clone(), udp[0].from_netns.as_str()),
            (
                Probe::Udp("192.0.2.11:30053".parse().unwrap()),
                "twllab-out"
            )
        );
        let lo = find(&v, "localhost→host port", "n1");
        assert_eq!(
            (lo[0].probe.clone(), lo[0].from_netns.as_str()),
            (Probe::Tcp("127.0.0.1:30080".parse().unwrap()), "twllab-n1")
        );
        assert_eq!(
            find(&v, "pod→gateway icmp", "n1-p3")[0].probe,
            Probe::Ping(Ipv4Addr::new(10, 244, 37, 1))
        );
        // A result without a gateway fails that row instead of guessing one.
        let mut no_gw = ips(1);
        no_gw.get_mut("n1-p1").unwrap().gateway = None;
        let v1 = plan_checks(&lab(1), &no_gw);
        let gw = find(&v1, "pod→gateway icmp", "n1-p1")[0];
        assert!(!judge(gw, send(gw)).0);
        assert_eq!(
            find(&v, "pod→node eth0 icmp", "n1-p1")[0].probe,
            Probe::Ping(node)
        );
        assert_eq!(find(&v, "node→pod icmp", "n1").len(), 3);
        assert_eq!(
            find(&v, "outside→pod ip not routed", "out")[0].expect,
            Expect::Unreachable
        );
    }

    #[test]
    fn one_pod_lab_has_no_pod_pairs_and_a_missing_address_fails() {
        let v = plan_checks(&lab(1), &ips(1));
        assert!(v.iter().all(|c| !c.name.starts_with("pod→pod")));
        assert_eq!(v.len(), 4 + 6);
        let mut partial = ips(2);
        partial.remove("n1-p2");
        let v = plan_checks(&lab(2), &partial);
        let missing = find(&v, "pod has an address", "n1-p2");
        assert_eq!(missing.len(), 1);
        assert!(!judge(missing[0], send(missing[0])).0);
    }

    #[test]
    fn judging() {
        let v = plan_checks(&lab(2), &ips(2));
        let masq = find(&v, "pod→outside via masquerade", "n1-p1")[0];
        let reply = |who: &str, peer: &str| {
            Ok(Some(Reply {
                responder: who.into(),
                peer: peer.parse().unwrap(),
            }))
        };
        assert!(judge(masq, reply("out", "192.0.2.11:40000")).0);
        let (ok, detail) = judge(masq, reply("out", "10.244.37.2:40000"));
        assert!(
            !ok && detail.contains("saw source 10.244.37.2, expected 192.0.2.11"),
            "{detail}"
        );
        let (ok, detail) = judge(masq, reply("n1-p2", "192.0.2.11:1"));
        assert!(
            !ok && detail.contains("answered by n1-p2, expected out"),
            "{detail}"
        );
        let (ok, detail) = judge(masq, Err("connect: timed out".into()));
        assert!(
            !ok && detail.starts_with("connect: timed out; the router has no route"),
            "{detail}"
        );

        let unrouted = find(&v, "outside→pod ip not routed", "out")[0];
        assert!(judge(unrouted, Err("Network is unreachable".into())).0);
        assert!(!judge(unrouted, reply("n1-p1", "203.0.113.10:1")).0);

        let ping = find(&v, "pod→gateway icmp", "n1-p1")[0];
        assert!(judge(ping, Ok(None)).0);
        assert!(!judge(ping, Err("100% packet loss".into())).0);
    }

    #[test]
    fn cross_node_rows_follow_the_backend() {
        use crate::plan::BackendKind;
        let p = plan(&LabSpec {
            nodes: 3,
            pods_per_node: 1,
            segments: 2,
            backend: BackendKind::HostGw,
            ..LabSpec::default()
        })
        .unwrap();
        let ips: HashMap<String, Ipv4Addr> = (1..=3u8)
            .map(|i| (format!("n{i}-p1"), Ipv4Addr::new(10, 244, i, 2)))
            .collect();
        let v = cross_node_checks(&p, &ips);
        // 6 ordered pairs × 3 rows.
        assert_eq!(v.len(), 18);
        let tcp = find(&v, "pod→pod tcp, other node, source kept", "n1-p1");
        let to_n3 = tcp.iter().find(|c| c.to.starts_with("n3-p1")).unwrap();
        assert_eq!(to_n3.kind, "across nodes");
        assert_eq!(
            to_n3.expect,
            Expect::Answer {
                responder: "n3-p1".into(),
                peer: Some(Ipv4Addr::new(10, 244, 1, 2))
            }
        );
        let to_n2 = tcp.iter().find(|c| c.to.starts_with("n2-p1")).unwrap();
        assert_eq!(to_n2.kind, "across segments");
        let Expect::Blocked { reason, reported } = &to_n2.expect else {
            panic!("{to_n2:?}");
        };
        assert!(reason.contains("n1 reports n2 off-segment"), "{reason}");
        assert_eq!(reported.as_ref().unwrap().netns, "twllab-n1");

        // Judging an expected failure: it must fail, and n1 must say why.
        let refused: Result<Option<Reply>, String> = Err("connect: timed out".into());
        let warn = "ready, with warnings:\nhost-gw: n2 (198.51.100.12) is not on this node's segment 192.0.2.0/24\n";
        let (ok, detail) = judge_with(to_n2, refused.clone(), Some(warn));
        assert!(ok, "{detail}");
        let (ok, detail) = judge_with(to_n2, refused.clone(), Some("ready\n"));
        assert!(!ok && detail.contains("is not true"), "{detail}");
        let row = result_row(to_n2, ok, detail);
        assert_eq!(
            (row.expected.as_str(), row.result.as_str()),
            ("fail", "fail")
        );
        let reached = Ok(Some(Reply {
            responder: "n2-p1".into(),
            peer: "10.244.1.2:1".parse().unwrap(),
        }));
        let (ok, detail) = judge_with(to_n2, reached, Some(warn));
        assert!(!ok && detail.contains("should have failed"), "{detail}");
        let row = result_row(to_n2, ok, detail);
        assert_eq!(row.result, "pass");

        // vxlan routes every pair.
        let vx = plan(&LabSpec {
            nodes: 3,
            pods_per_node: 1,
            segments: 2,
            backend: BackendKind::Vxlan,
            ..LabSpec::default()
        })
        .unwrap();
        assert!(cross_node_checks(&vx, &ips)
            .iter()
            .all(|c| c.expect.reaches()));
    }

    #[test]
    fn the_outside_reaches_pods_by_ip_only_where_the_router_learned_them() {
        use crate::plan::{BackendKind, ExternalRouter};
        let with = |backend, segments, external_router| {
            plan(&LabSpec {
                nodes: 2,
                pods_per_node: 1,
                segments,
                backend,
                external_router,
                ..LabSpec::default()
            })
            .unwrap()
        };
        let ips: HashMap<String, PodAddrs> = (1..=2u8)
            .map(|i| {
                (
                    format!("n{i}-p1"),
                    PodAddrs {
                        ip: Ipv4Addr::new(10, 244, i, 2),
                        gateway: None,
                    },
                )
            })
            .collect();
        let outside = Ipv4Addr::new(203, 0, 113, 10);
        for p in [
            with(BackendKind::Bgp, 2, None),
            with(BackendKind::Bgp, 1, Some(ExternalRouter::Frr)),
            with(BackendKind::Rip, 1, Some(ExternalRouter::Frr)),
        ] {
            let v = plan_checks(&p, &ips);
            assert!(find(&v, OUTSIDE_POD_UNROUTED, "out").is_empty());
            let rows = find(&v, OUTSIDE_POD_ROUTED, "out");
            assert_eq!(rows.len(), 2);
            assert_eq!(
                rows[1].expect,
                Expect::Answer {
                    responder: "n2-p1".into(),
                    peer: Some(outside)
                }
            );
            assert!(
                rows[0].hint.contains("n1-p1's block from n1"),
                "{}",
                rows[0].hint
            );
            // Answered through a NAT: the pod saw the router's address, not the host's.
            let natted = Ok(Some(Reply {
                responder: "n1-p1".into(),
                peer: "203.0.113.1:40000".parse().unwrap(),
            }));
            let (ok, detail) = judge(rows[0], natted);
            assert!(!ok && detail.contains("expected 203.0.113.10"), "{detail}");
            let (ok, detail) = judge(rows[0], Err("connect: timed out".into()));
            assert!(!ok && detail.contains("must have learned"), "{detail}");
        }
        for p in [
            with(BackendKind::Bgp, 1, None),
            with(BackendKind::Rip, 1, None),
            with(BackendKind::Vxlan, 2, None),
        ] {
            let v = plan_checks(&p, &ips);
            assert!(find(&v, OUTSIDE_POD_ROUTED, "out").is_empty());
            assert_eq!(
                find(&v, OUTSIDE_POD_UNROUTED, "out")[0].expect,
                Expect::Unreachable
            );
        }
    }

    #[test]
    fn table_lists_every_check() {
        let row =
            |name: &str, from: &str, to: &str, expected: &str, result: &str, passed| CheckResult {
                name: name.into(),
                kind: "on a node".into(),
                from: from.into(),
                to: to.into(),
                expected: expected.into(),
                result: result.into(),
                passed,
                detail: "d".into(),
            };
        let report = CheckReport::new(
            "twllab".into(),
            vec![
                row("a", "n1", "x", "pass", "pass", true),
                row("bb", "out", "y", "pass", "fail", false),
                row("c", "n1", "z", "fail", "fail", true),
            ],
        );
        assert!(!report.passed);
        assert_eq!(
            report.failure().unwrap(),
            "1 of 3 checks were not what was expected"
        );
        let t = render(&report);
        assert!(
            t.starts_with("CHECK  KIND       FROM  TO  EXPECT  RESULT  DETAIL\n"),
            "{t}"
        );
        assert!(
            t.contains("bb     on a node  out   y   pass    FAIL    d"),
            "{t}"
        );
        assert!(
            t.ends_with("3 checks, 1 failed as expected, 1 unexpected\n"),
            "{t}"
        );
    }

    #[test]
    fn a_run_of_no_checks_fails_and_says_why() {
        let empty = CheckReport::new("twllab".into(), vec![]);
        assert!(!empty.passed);
        assert_eq!(empty.failure().unwrap(), NO_CHECKS);
        let t = render(&empty);
        assert!(
            t.ends_with(&format!(
                "0 checks, 0 failed as expected, 0 unexpected\nFAILED: {NO_CHECKS}\n"
            )),
            "{t}"
        );
        // A lab with no node plans no checks at all.
        let mut p = lab(2);
        p.nodes.clear();
        assert!(plan_checks(&p, &ips(2)).is_empty());
    }
}
