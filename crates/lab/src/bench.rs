//! `twill lab bench`: single-stream iperf3 pod→pod across two nodes, side by side in one run
//! with the bare underlay (node→node) and with a hand-built twin of the same topology (plain
//! `ip`/`bridge`/`ethtool` commands in namespaces `<lab>-tw*`, no Twill code), interleaved
//! A B C A B C so that the machine's drift hits every variant alike.
//!
//! Pure: [`TwinPlan::commands`] (the twin, written out), [`parse_iperf`], [`median`],
//! [`ratios`], [`render`]. I/O: [`target_from_lab`] (reads the lab), [`run`] (builds the
//! twins, runs iperf3, removes everything it made, also on error).
//!
//! The twin's constants are spelled out here on purpose rather than taken from twilld: the
//! twin is what a careful human would type, so it must not share code with what it checks.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

use crate::build::{self, LabError, Log};
use crate::state::LabState;

/// flannel's VXLAN device name, VNI and port, as the vxlan backend uses them.
pub const TWIN_VXLAN_DEVICE: &str = "twl.1";
pub const TWIN_VNI: u32 = 1;
pub const TWIN_VXLAN_PORT: u16 = 8472;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const TWIN_VXLAN_OVERHEAD: u32 = 50;
/// The node bridge pods hang off (the lab's, twill-cni's).
pub const TWIN_NODE_BRIDGE: &str = "twl0";
/// Where iperf3 servers start looking for a free port.
pub const FIRST_PORT: u16 = 5201;
/// Goals of the issue, single stream.
pub const GOAL_TWILL_VS_TWIN: f64 = 0.97;
pub const GOAL_HOST_GW_VS_UNDERLAY: f64 = 0.95;
pub const GOAL_VXLAN_VS_HOST_GW: f64 = 0.85;
/// How long an iperf3 server may take to listen.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("lab {name} has {nodes} node(s): the bench needs 2 or more (`twill lab up --nodes 2 --backend host-gw|vxlan`)")]
    TooFewNodes { name: String, nodes: usize },
    #[error("node {node} of lab {name} has no pod with an address: is the lab fully up? (`twill lab status --name {name}`)")]
    NoPod { name: String, node: String },
    #[error("{0}")]
    Backend(String),
    #[error("lab {name} wires its pods l3, and the bench's twin is built bridge-wired, so the ratios would compare two wirings: bench a `--pod-wiring bridge` lab (scripts/bench-cni.sh compares l3 with bridge on the CNI side)")]
    L3Wiring { name: String },
    #[error("iperf3 is not installed: `apt-get install iperf3`")]
    IperfMissing,
    #[error("iperf3 {variant}: {detail}")]
    Iperf { variant: String, detail: String },
    #[error("cannot read iperf3's JSON: {0}")]
    Parse(String),
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
}

/// The backend kind of the lab benched and of its twins: the one kind of twill-api.
pub use twill_api::backend::BackendKind;

/// The TUN the udp twins forward through (the udp backend's name for it).
pub const TWIN_TUN_DEVICE: &str = "twl.tun";
/// The udp twins' UDP port: flannel's default.
pub const TWIN_UDP_PORT: u16 = crate::bench_udp_baseline::FLANNEL_UDP_PORT;

/// What a twin carries pods' packets across nodes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TwinKind {
    /// A route per remote block via the remote node (host-gw; what rip and bgp program on
    /// one segment).
    HostGw,
    /// Kernel VXLAN, flannel.1's way (the vxlan and static backends).
    Vxlan,
    /// A TUN and the flannel-style baseline ([`crate::bench_udp_baseline`]): flannel's
    /// `udp` design, one packet per syscall.
    UdpBaseline,
    /// A TUN and Twill's own `twill-datapath`, fed a hand-written peer table: what the udp
    /// backend runs, measured before (or beside) a lab that runs it. Not a reference: it is
    /// Twill's code.
    UdpDatapath,
}

impl TwinKind {
    pub fn name(self) -> &'static str {
        match self {
            TwinKind::HostGw => "host-gw",
            TwinKind::Vxlan => "vxlan",
            TwinKind::UdpBaseline => "udp-baseline",
            TwinKind::UdpDatapath => "udp-datapath",
        }
    }
    /// The letter after `<lab>-tw` in the twin's namespaces.
    fn tag(self) -> char {
        match self {
            TwinKind::HostGw => 'h',
            TwinKind::Vxlan => 'v',
            TwinKind::UdpBaseline => 'b',
            TwinKind::UdpDatapath => 'd',
        }
    }
    /// What the encapsulation costs the pods' MTU.
    pub fn overhead(self) -> u32 {
        match self {
            TwinKind::HostGw => 0,
            TwinKind::Vxlan => TWIN_VXLAN_OVERHEAD,
            TwinKind::UdpBaseline | TwinKind::UdpDatapath => {
                crate::bench_udp_baseline::FLANNEL_UDP_OVERHEAD
            }
        }
    }
    /// The twin of a lab of `backend`; none for a backend that carries nothing across
    /// nodes (there is nothing to compare).
    pub fn of_backend(backend: BackendKind) -> Option<TwinKind> {
        match backend {
            // A routing protocol's result on one segment is host-gw's table: a route per
            // remote block via the remote node.
            BackendKind::HostGw | BackendKind::Rip | BackendKind::Bgp => Some(TwinKind::HostGw),
            BackendKind::Vxlan | BackendKind::Static => Some(TwinKind::Vxlan),
            // flannel's udp design, one packet per syscall: what the udp backend is
            // measured against (`--udp` adds the kernel-VXLAN twin).
            BackendKind::Udp => Some(TwinKind::UdpBaseline),
            // Issue 12: the OVS mesh (userspace datapath here) against kernel VXLAN.
            BackendKind::Ovs => Some(TwinKind::Vxlan),
            BackendKind::None => None,
        }
    }
}

/// One node of the topology and its benchmarked pod, as read from the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSide {
    /// The node's underlay address on eth0, with the segment's prefix.
    pub node_ip: Ipv4Net,
    pub uplink_mtu: u32,
    /// The pod's address with its block's prefix (the block is its network).
    pub pod_ip: Ipv4Net,
    /// The pod's gateway: the node bridge's address.
    pub gateway: Ipv4Addr,
}

impl NodeSide {
    pub fn block(&self) -> Ipv4Net {
        self.pod_ip.trunc()
    }
    /// The VTEP address: the block's `.0`, as flannel gives flannel.1.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.block().network()
    }
    /// A stable MAC for the node's VXLAN device: `0a:54:` + the node IP (locally
    /// administered, unicast).
    pub fn vtep_mac(&self) -> String {
        let [a, b, c, d] = self.node_ip.addr().octets();
        format!("0a:54:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }
}

/// A hand-built copy of two nodes and one pod on each: their own underlay bridge, node
/// namespaces, node bridges, pods, and the backend's routes and devices. Same addresses as
/// the lab (separate namespaces, so nothing clashes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TwinPlan {
    /// Namespace prefix, `<lab>-tw` + `v` (vxlan), `h` (host-gw), `b` (udp baseline) or
    /// `d` (udp datapath).
    pub prefix: String,
    pub kind: TwinKind,
    pub nodes: [NodeSide; 2],
    /// Whether the human turns TX checksum offload off on the VXLAN device: on kernels
    /// with the checksum fault (before 5.7), as twilld does. False from `new` (a pure plan);
    /// `run` sets it from this kernel's release.
    pub tx_checksum_off: bool,
}

pub(crate) fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

impl TwinPlan {
    /// The twin of a `backend` lab; refused for a backend that carries nothing across
    /// nodes (there is nothing to compare).
    pub fn new(
        lab: &str,
        backend: BackendKind,
        nodes: [NodeSide; 2],
    ) -> Result<TwinPlan, BenchError> {
        let kind = TwinKind::of_backend(backend).ok_or_else(|| {
            BenchError::Backend(format!(
                "backend {backend} carries nothing between nodes, so there is no twin to \
                 compare with; bench a lab made with `twill lab up --backend host-gw|vxlan`"
            ))
        })?;
        Ok(TwinPlan::of_kind(lab, kind, nodes))
    }

    /// A twin of `kind`, whatever the lab runs.
    pub fn of_kind(lab: &str, kind: TwinKind, nodes: [NodeSide; 2]) -> TwinPlan {
        TwinPlan {
            prefix: format!("{lab}-tw{}", kind.tag()),
            kind,
            nodes,
            tx_checksum_off: false,
        }
    }

    pub fn underlay_netns(&self) -> String {
        format!("{}ul", self.prefix)
    }
    /// Node `k` (1 or 2).
    pub fn node_netns(&self, k: usize) -> String {
        format!("{}n{k}", self.prefix)
    }
    pub fn pod_netns(&self, k: usize) -> String {
        format!("{}n{k}p", self.prefix)
    }
    /// Every namespace of the twin, in creation order.
    pub fn netns(&self) -> Vec<String> {
        vec![
            self.underlay_netns(),
            self.node_netns(1),
            self.node_netns(2),
            self.pod_netns(1),
            self.pod_netns(2),
        ]
    }
    /// The pods' MTU: the uplink's less what the backend's encapsulation needs.
    pub fn pod_mtu(&self, k: usize) -> u32 {
        self.nodes[k - 1].uplink_mtu - self.kind.overhead()
    }

    /// The whole twin as the commands a person would type, in order.
    pub fn commands(&self) -> Vec<Vec<String>> {
        let mut c = Vec::new();
        for ns in self.netns() {
            c.push(cmd(&["ip", "netns", "add", &ns]));
            c.push(cmd(&["ip", "-n", &ns, "link", "set", "lo", "up"]));
        }
        let ul = self.underlay_netns();
        c.push(cmd(&[
            "ip", "-n", &ul, "link", "add", "br0", "type", "bridge",
        ]));
        c.push(cmd(&["ip", "-n", &ul, "link", "set", "br0", "up"]));
        for k in 1..=2 {
            let me = &self.nodes[k - 1];
            let (n, p) = (self.node_netns(k), self.pod_netns(k));
            let port = format!("n{k}");
            let (umtu, pmtu) = (me.uplink_mtu.to_string(), self.pod_mtu(k).to_string());
            let (node_ip, gw) = (me.node_ip.to_string(), me.gateway.to_string());
            let gw_net = format!("{}/{}", me.gateway, me.pod_ip.prefix_len());
            // The node's NIC on the underlay switch.
            c.push(cmd(&[
                "ip", "-n", &n, "link", "add", "eth0", "mtu", &umtu, "type", "veth", "peer",
                "name", &port, "mtu", &umtu, "netns", &ul,
            ]));
            c.push(cmd(&[
                "ip", "-n", &n, "addr", "add", &node_ip, "dev", "eth0",
            ]));
            c.push(cmd(&[
                "ip", "-n", &ul, "link", "set", &port, "master", "br0",
            ]));
            c.push(cmd(&["ip", "-n", &n, "link", "set", "eth0", "up"]));
            c.push(cmd(&["ip", "-n", &ul, "link", "set", &port, "up"]));
            c.push(cmd(&[
                "ip",
                "netns",
                "exec",
                &n,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]));
            // The node bridge and the pod, as a bridge CNI plugin makes them.
            let br = TWIN_NODE_BRIDGE;
            c.push(cmd(&[
                "ip", "-n", &n, "link", "add", br, "mtu", &pmtu, "type", "bridge",
            ]));
            c.push(cmd(&["ip", "-n", &n, "addr", "add", &gw_net, "dev", br]));
            c.push(cmd(&["ip", "-n", &n, "link", "set", br, "up"]));
            c.push(cmd(&[
                "ip", "-n", &n, "link", "add", "veth0", "mtu", &pmtu, "type", "veth", "peer",
                "name", "eth0", "mtu", &pmtu, "netns", &p,
            ]));
            c.push(cmd(&["ip", "-n", &n, "link", "set", "veth0", "master", br]));
            c.push(cmd(&[
                "bridge", "-n", &n, "link", "set", "dev", "veth0", "hairpin", "on",
            ]));
            c.push(cmd(&["ip", "-n", &n, "link", "set", "veth0", "up"]));
            c.push(cmd(&[
                "ip",
                "-n",
                &p,
                "addr",
                "add",
                &me.pod_ip.to_string(),
                "dev",
                "eth0",
            ]));
            c.push(cmd(&["ip", "-n", &p, "link", "set", "eth0", "up"]));
            c.push(cmd(&[
                "ip", "-n", &p, "route", "add", "default", "via", &gw,
            ]));
        }
        for k in 1..=2 {
            c.extend(self.backend_commands(k));
        }
        if !self.tx_checksum_off {
            // Kernels without the checksum fault keep offload (and with it TSO), as twilld does.
            c.retain(|cmd| !cmd.iter().any(|w| w == "ethtool"));
        }
        c
    }

    /// What the backend programs on node `k`: the part Twill is compared on.
    pub fn backend_commands(&self, k: usize) -> Vec<Vec<String>> {
        let (me, peer) = (&self.nodes[k - 1], &self.nodes[2 - k]);
        let n = self.node_netns(k);
        let block = peer.block().to_string();
        match self.kind {
            TwinKind::HostGw => vec![cmd(&[
                "ip",
                "-n",
                &n,
                "route",
                "add",
                &block,
                "via",
                &peer.node_ip.addr().to_string(),
                "dev",
                "eth0",
            ])],
            TwinKind::Vxlan => {
                let dev = TWIN_VXLAN_DEVICE;
                let mtu = (me.uplink_mtu - TWIN_VXLAN_OVERHEAD).to_string();
                let (vni, port) = (TWIN_VNI.to_string(), TWIN_VXLAN_PORT.to_string());
                let local = me.node_ip.addr().to_string();
                let peer_vtep = peer.vtep_ip().to_string();
                let peer_mac = peer.vtep_mac();
                vec![
                    cmd(&[
                        "ip",
                        "-n",
                        &n,
                        "link",
                        "add",
                        dev,
                        "type",
                        "vxlan",
                        "id",
                        &vni,
                        "dstport",
                        &port,
                        "local",
                        &local,
                        "dev",
                        "eth0",
                        "nolearning",
                    ]),
                    cmd(&[
                        "ip",
                        "-n",
                        &n,
                        "link",
                        "set",
                        dev,
                        "address",
                        &me.vtep_mac(),
                        "mtu",
                        &mtu,
                    ]),
                    // The kernel's VXLAN TX checksum offload fault: checksum in software
                    // (dropped by commands() on kernels without the fault).
                    cmd(&["ip", "netns", "exec", &n, "ethtool", "-K", dev, "tx", "off"]),
                    cmd(&[
                        "ip",
                        "-n",
                        &n,
                        "addr",
                        "add",
                        &format!("{}/32", me.vtep_ip()),
                        "dev",
                        dev,
                    ]),
                    cmd(&["ip", "-n", &n, "link", "set", dev, "up"]),
                    cmd(&[
                        "ip",
                        "-n",
                        &n,
                        "neigh",
                        "add",
                        &peer_vtep,
                        "lladdr",
                        &peer_mac,
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ]),
                    cmd(&[
                        "bridge",
                        "-n",
                        &n,
                        "fdb",
                        "append",
                        &peer_mac,
                        "dev",
                        dev,
                        "dst",
                        &peer.node_ip.addr().to_string(),
                        "self",
                        "permanent",
                    ]),
                    cmd(&[
                        "ip", "-n", &n, "route", "add", &block, "via", &peer_vtep, "dev", dev,
                        "onlink",
                    ]),
                ]
            }
            // flannel's udp layout, as the udp backend makes it: a TUN with MTU uplink - 28,
            // the block's .0 as a /32 on it, a route per remote block into it. The process
            // that forwards is started after (see `bench_udp::daemon_command`). Twill's
            // datapath opens the TUN multi-queue, so it is made so.
            TwinKind::UdpBaseline | TwinKind::UdpDatapath => {
                let dev = TWIN_TUN_DEVICE;
                let mtu = self.pod_mtu(k).to_string();
                let mut add = cmd(&["ip", "-n", &n, "tuntap", "add", "dev", dev, "mode", "tun"]);
                if self.kind == TwinKind::UdpDatapath {
                    add.push("multi_queue".into());
                }
                vec![
                    add,
                    cmd(&["ip", "-n", &n, "link", "set", dev, "mtu", &mtu]),
                    cmd(&[
                        "ip",
                        "-n",
                        &n,
                        "addr",
                        "add",
                        &format!("{}/32", me.vtep_ip()),
                        "dev",
                        dev,
                    ]),
                    cmd(&["ip", "-n", &n, "link", "set", dev, "up"]),
                    cmd(&["ip", "-n", &n, "route", "add", &block, "dev", dev]),
                ]
            }
        }
    }
}

/// One iperf3 run, from the client's (sender's) JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IperfRun {
    /// What the receiver got, in Gbit/s.
    pub gbps: f64,
    pub retransmits: Option<u64>,
    /// iperf3's cpu_utilization_percent: host_total (the client, the sender) and
    /// remote_total (the server, the receiver).
    pub sender_cpu: f64,
    pub receiver_cpu: f64,
    pub congestion: Option<String>,
}

/// Reads `iperf3 -J` client output.
pub fn parse_iperf(text: &str) -> Result<IperfRun, BenchError> {
    let v: Value = serde_json::from_str(text).map_err(|e| BenchError::Parse(e.to_string()))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(BenchError::Parse(format!("iperf3 reported: {err}")));
    }
    let end = &v["end"];
    let f = |x: &Value, what: &str| {
        x.as_f64()
            .ok_or_else(|| BenchError::Parse(format!("no {what} in the output")))
    };
    Ok(IperfRun {
        gbps: f(
            &end["sum_received"]["bits_per_second"],
            "end.sum_received.bits_per_second",
        )? / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
        sender_cpu: f(
            &end["cpu_utilization_percent"]["host_total"],
            "end.cpu_utilization_percent.host_total",
        )?,
        receiver_cpu: f(
            &end["cpu_utilization_percent"]["remote_total"],
            "end.cpu_utilization_percent.remote_total",
        )?,
        congestion: end["sender_tcp_congestion"].as_str().map(str::to_string),
    })
}

/// The median (mean of the middle two for an even count); NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Which path a variant measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VariantKind {
    /// Node to node over the lab's underlay.
    Underlay,
    /// Pod to pod through what Twill's agents programmed.
    Twill,
    /// Pod to pod through the hand-built twin of the lab's backend.
    Twin,
    /// Pod to pod through a hand-built host-gw twin (`--compare-host-gw` on vxlan).
    TwinHostGw,
}

impl VariantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VariantKind::Underlay => "underlay",
            VariantKind::Twill => "twill",
            VariantKind::Twin => "twin",
            VariantKind::TwinHostGw => "twin-host-gw",
        }
    }
}

/// A variant's figures over all rounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VariantFigures {
    pub variant: VariantKind,
    /// What goes where, e.g. `twllab-n1-p1 -> 10.244.1.2`.
    pub path: String,
    pub runs: Vec<IperfRun>,
    pub median_gbps: f64,
    pub median_sender_cpu: f64,
    pub median_receiver_cpu: f64,
}

impl VariantFigures {
    pub fn new(variant: VariantKind, path: String, runs: Vec<IperfRun>) -> VariantFigures {
        let m = |f: fn(&IperfRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        VariantFigures {
            variant,
            path,
            median_gbps: m(|r| r.gbps),
            median_sender_cpu: m(|r| r.sender_cpu),
            median_receiver_cpu: m(|r| r.receiver_cpu),
            runs,
        }
    }
}

/// A ratio of two variants' median throughput, with its goal if the issue sets one.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ratio {
    pub name: String,
    pub value: Option<f64>,
    pub goal: Option<f64>,
    /// None without a goal; a ratio of nothing never meets one.
    pub met: Option<bool>,
}

/// The ratios and goals that apply to `backend` given the measured `variants`.
pub fn ratios(backend: BackendKind, variants: &[VariantFigures]) -> Vec<Ratio> {
    let gbps = |k: VariantKind| {
        variants
            .iter()
            .find(|v| v.variant == k)
            .map(|v| v.median_gbps)
    };
    let mut out = Vec::new();
    let mut push = |name: String, a: VariantKind, b: VariantKind, goal: Option<f64>| {
        let (Some(x), Some(y)) = (gbps(a), gbps(b)) else {
            return;
        };
        let value = Some(x / y).filter(|r| r.is_finite());
        out.push(Ratio {
            name,
            value,
            goal,
            met: goal.map(|g| value.is_some_and(|v| v >= g)),
        });
    };
    use VariantKind::*;
    let b = backend.name();
    push(
        format!("twill-{b} / twin-{b}"),
        Twill,
        Twin,
        Some(GOAL_TWILL_VS_TWIN),
    );
    let underlay_goal = (backend == BackendKind::HostGw).then_some(GOAL_HOST_GW_VS_UNDERLAY);
    push(
        format!("twill-{b} / underlay"),
        Twill,
        Underlay,
        underlay_goal,
    );
    push(format!("twin-{b} / underlay"), Twin, Underlay, None);
    if backend == BackendKind::Vxlan {
        push(
            "twin-vxlan / twin-host-gw".into(),
            Twin,
            TwinHostGw,
            Some(GOAL_VXLAN_VS_HOST_GW),
        );
        push(
            "twill-vxlan / twin-host-gw".into(),
            Twill,
            TwinHostGw,
            Some(GOAL_VXLAN_VS_HOST_GW),
        );
    }
    out
}

/// Everything one bench run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    pub lab: String,
    pub backend: BackendKind,
    pub seconds: u32,
    pub rounds: u32,
    pub congestion_control: String,
    /// The order the runs went in, one round.
    pub order: Vec<VariantKind>,
    pub variants: Vec<VariantFigures>,
    pub ratios: Vec<Ratio>,
    /// The twins, as the commands that built them.
    pub twins: Vec<TwinReport>,
    /// Where the lab differs from its twin in what was read back (MTUs, offloads, ...).
    pub differences: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TwinReport {
    pub kind: TwinKind,
    pub netns: Vec<String>,
    pub commands: Vec<String>,
}

fn fmt_num(x: f64, width: usize, prec: usize) -> String {
    if x.is_finite() {
        format!("{x:>width$.prec$}")
    } else {
        format!("{:>width$}", "-")
    }
}

/// The human-readable report.
pub fn render(r: &BenchReport) -> String {
    let mut out = String::new();
    let order: Vec<&str> = r.order.iter().map(|v| v.as_str()).collect();
    let _ = writeln!(
        out,
        "twill lab bench: lab {}, backend {}, iperf3 -C {} single stream, {} s x {} rounds, interleaved {} ...\n",
        r.lab,
        r.backend.name(),
        r.congestion_control,
        r.seconds,
        r.rounds,
        order.join(" ")
    );
    let _ = writeln!(
        out,
        "  {:<13} {:>8} {:>8} {:>8}  {:<24} path",
        "variant", "Gbit/s", "snd CPU%", "rcv CPU%", "runs (Gbit/s)"
    );
    for v in &r.variants {
        let runs: Vec<String> = v.runs.iter().map(|x| format!("{:.1}", x.gbps)).collect();
        let _ = writeln!(
            out,
            "  {:<13} {} {} {}  {:<24} {}",
            v.variant.as_str(),
            fmt_num(v.median_gbps, 8, 2),
            fmt_num(v.median_sender_cpu, 8, 1),
            fmt_num(v.median_receiver_cpu, 8, 1),
            runs.join(" "),
            v.path
        );
    }
    let _ = writeln!(out, "\nRatios (median Gbit/s)");
    for x in &r.ratios {
        let mark = match x.met {
            Some(true) => "[met ]",
            Some(false) => "[MISS]",
            None => "[    ]",
        };
        let goal = x.goal.map(|g| format!(">= {g:.2}")).unwrap_or_default();
        let line = format!(
            "  {mark} {:<28} {} {goal}",
            x.name,
            fmt_num(x.value.unwrap_or(f64::NAN), 6, 3)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if !r.differences.is_empty() {
        let _ = writeln!(out, "\nThe lab differs from its twin:");
        for d in &r.differences {
            let _ = writeln!(out, "  - {d}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The I/O edge: reading the lab, building the twins, running iperf3.
// ---------------------------------------------------------------------------------------

/// One iperf3 path: the client runs in `client_netns`, the server in `server_netns`
/// listening on `server_ip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub client_netns: String,
    pub server_netns: String,
    pub server_ip: Ipv4Addr,
}

impl Path {
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} -> {} ({})",
            self.client_netns, self.server_ip, self.server_netns
        )
    }
}

/// What the bench measures on a lab: its name (the twins' namespace prefix), its backend,
/// the underlay and Twill paths, and the two sides to copy into the twin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub lab: String,
    pub backend: BackendKind,
    pub underlay: Path,
    pub twill: Path,
    pub sides: [NodeSide; 2],
    /// Node namespaces of the lab (n1, n2), to compare with the twin's.
    pub nodes_netns: [String; 2],
    /// The pods' namespaces (on n1, on n2).
    pub pods_netns: [String; 2],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    pub seconds: u32,
    pub rounds: u32,
    /// On a vxlan lab, also build a host-gw twin and compare against it.
    pub compare_host_gw: bool,
}

pub(crate) fn run_cmd(args: &[String]) -> Result<String, BenchError> {
    let line = args.join(" ");
    let out = Command::new(&args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| BenchError::Command {
            cmd: line.clone(),
            detail: format!("{e} (is {} installed?)", args[0]),
        })?;
    if !out.status.success() {
        return Err(BenchError::Command {
            cmd: line,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip_json(args: &[&str]) -> Result<Value, BenchError> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = build::ip(&full)?;
    serde_json::from_str(&text).map_err(|e| BenchError::Command {
        cmd: format!("ip {}", full.join(" ")),
        detail: format!("unreadable JSON: {e}"),
    })
}

fn link_mtu(netns: &str, dev: &str) -> Result<u32, BenchError> {
    let v = ip_json(&["-n", netns, "link", "show", "dev", dev])?;
    v[0]["mtu"]
        .as_u64()
        .map(|m| m as u32)
        .ok_or_else(|| BenchError::Command {
            cmd: format!("ip -j -n {netns} link show dev {dev}"),
            detail: "no mtu in the answer".into(),
        })
}

/// The pod's address (with prefix) and gateway from its CNI ADD result.
fn pod_address(result: &Value) -> Option<(Ipv4Net, Ipv4Addr)> {
    let ip = result["ips"].as_array()?.first()?;
    let net: Ipv4Net = ip["address"].as_str()?.parse().ok()?;
    let gw: Ipv4Addr = ip["gateway"].as_str()?.parse().ok()?;
    Some((net, gw))
}

/// Reads from lab `state` (and the kernel) what the bench needs: the first pod with an
/// address on n1 and n2, the nodes' MTUs, and the backend, told by how n1 reaches n2's pod.
pub fn target_from_lab(state: &LabState) -> Result<Target, BenchError> {
    let plan = &state.plan;
    if plan.pod_wiring == crate::plan::PodWiring::L3 {
        return Err(BenchError::L3Wiring {
            name: plan.name.clone(),
        });
    }
    if plan.nodes.len() < 2 {
        return Err(BenchError::TooFewNodes {
            name: plan.name.clone(),
            nodes: plan.nodes.len(),
        });
    }
    let nodes = [&plan.nodes[0], &plan.nodes[1]];
    let mut sides = Vec::new();
    let mut pods = Vec::new();
    for node in nodes {
        let (rec, (pod_ip, gateway)) = state
            .pods
            .iter()
            .filter(|p| p.node == node.index)
            .find_map(|p| Some((p, p.result.as_ref().and_then(pod_address)?)))
            .ok_or_else(|| BenchError::NoPod {
                name: plan.name.clone(),
                node: node.short.clone(),
            })?;
        sides.push(NodeSide {
            node_ip: node.address,
            uplink_mtu: link_mtu(&node.netns, &node.uplink.ifname)?,
            pod_ip,
            gateway,
        });
        pods.push(rec.netns.clone());
    }
    let sides: [NodeSide; 2] = [sides[0].clone(), sides[1].clone()];
    let backend = detect_backend(&nodes[0].netns, &sides[1])?;
    Ok(Target {
        lab: plan.name.clone(),
        backend,
        underlay: Path {
            client_netns: nodes[0].netns.clone(),
            server_netns: nodes[1].netns.clone(),
            server_ip: sides[1].node_ip.addr(),
        },
        twill: Path {
            client_netns: pods[0].clone(),
            server_netns: pods[1].clone(),
            server_ip: sides[1].pod_ip.addr(),
        },
        sides,
        nodes_netns: [nodes[0].netns.clone(), nodes[1].netns.clone()],
        pods_netns: [pods[0].clone(), pods[1].clone()],
    })
}

/// The backend, from the route node 1 takes to node 2's pod: through the VXLAN device, or
/// via node 2's address.
fn detect_backend(n1: &str, peer: &NodeSide) -> Result<BackendKind, BenchError> {
    let dst = peer.pod_ip.addr().to_string();
    let v = ip_json(&["-n", n1, "route", "get", &dst])?;
    let dev = v[0]["dev"].as_str().unwrap_or("");
    let via = v[0]["gateway"].as_str().unwrap_or("none");
    classify_route(dev, via, peer).map_err(BenchError::Backend)
}

/// Pure part of [`detect_backend`].
pub fn classify_route(dev: &str, via: &str, peer: &NodeSide) -> Result<BackendKind, String> {
    if dev == TWIN_VXLAN_DEVICE {
        return Ok(BackendKind::Vxlan);
    }
    if dev == TWIN_TUN_DEVICE {
        return Ok(BackendKind::Udp);
    }
    if dev == crate::ovs::HOST_PORT || via == twill_ovs::flows::GATEWAY.to_string() {
        return Ok(BackendKind::Ovs);
    }
    if via == peer.node_ip.addr().to_string() {
        return Ok(BackendKind::HostGw);
    }
    Err(format!(
        "node 1 routes node 2's pod {} via {via} dev {dev}, neither through {TWIN_VXLAN_DEVICE} nor via node 2 ({}): \
         the lab's backend is none or not programmed yet; bench a lab made with `twill lab up --backend host-gw|vxlan`",
        peer.pod_ip.addr(),
        peer.node_ip.addr()
    ))
}

/// A twin that exists until dropped: its namespaces are deleted then, whatever happened.
pub(crate) struct TwinGuard {
    netns: Vec<String>,
}

impl TwinGuard {
    pub(crate) fn build(plan: &TwinPlan, log: Log) -> Result<TwinGuard, BenchError> {
        // Whatever a crashed run left under this twin's names is ours: remove it first.
        remove_netns(&plan.netns());
        let mut guard = TwinGuard { netns: Vec::new() };
        log(&format!(
            "twin {}: building {} with ip/bridge/ethtool",
            plan.kind.name(),
            plan.netns().join(", ")
        ));
        for c in plan.commands() {
            if c[..3] == ["ip", "netns", "add"] {
                guard.netns.push(c[3].clone());
            }
            run_cmd(&c)?;
        }
        Ok(guard)
    }
}

impl Drop for TwinGuard {
    fn drop(&mut self) {
        remove_netns(&self.netns);
    }
}

fn remove_netns(names: &[String]) {
    for ns in names.iter().rev() {
        if build::netns_exists(ns) {
            let _ = build::ip(&["netns", "del", ns]);
        }
    }
}

/// An iperf3 server, killed by its PID when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        // `ip netns exec` execs iperf3, so this PID is iperf3's own.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TCP ports something listens on in `netns`.
fn listening_ports(netns: &str) -> Result<Vec<u16>, BenchError> {
    let out = run_cmd(&cmd(&["ip", "netns", "exec", netns, "ss", "-Hltn"]))?;
    Ok(parse_ss_ports(&out))
}

/// Local ports of `ss -Hltn` lines (`LISTEN 0 5 *:5201 *:*`).
pub fn parse_ss_ports(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|local| local.rsplit_once(':'))
        .filter_map(|(_, port)| port.parse().ok())
        .collect()
}

pub(crate) fn start_server(netns: &str) -> Result<Server, BenchError> {
    let used = listening_ports(netns)?;
    let port = (FIRST_PORT..u16::MAX)
        .find(|p| !used.contains(p))
        .expect("a namespace has a free port");
    let child = Command::new("ip")
        .args(["netns", "exec", netns, "iperf3", "-s", "-p"])
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Command {
            cmd: format!("ip netns exec {netns} iperf3 -s -p {port}"),
            detail: e.to_string(),
        })?;
    let mut server = Server { child, port };
    let start = Instant::now();
    loop {
        if listening_ports(netns)?.contains(&port) {
            return Ok(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(BenchError::Command {
                cmd: format!("ip netns exec {netns} iperf3 -s -p {port}"),
                detail: format!("exited with {status}"),
            });
        }
        if start.elapsed() > SERVER_READY_TIMEOUT {
            return Err(BenchError::Command {
                cmd: format!("ip netns exec {netns} iperf3 -s -p {port}"),
                detail: format!("not listening after {SERVER_READY_TIMEOUT:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_client(
    variant: VariantKind,
    path: &Path,
    port: u16,
    seconds: u32,
) -> Result<IperfRun, BenchError> {
    let out = Command::new("ip")
        .args(["netns", "exec", &path.client_netns, "iperf3", "-c"])
        .arg(path.server_ip.to_string())
        // Sender on CPU 0, receiver on CPU 1: on 2 cores an unpinned pair lands on one core
        // or on two at random and the same path measures ~20 or ~40 Gbit/s.
        .args(["-A", "0,1"])
        .args(["-p", &port.to_string(), "-C", "cubic", "-J", "-t"])
        .arg(seconds.to_string())
        .output()
        .map_err(|e| BenchError::Iperf {
            variant: variant.as_str().into(),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_iperf(&text).map_err(|e| BenchError::Iperf {
        variant: variant.as_str().into(),
        detail: format!(
            "{} -> {}:{port}: {e}{}",
            path.client_netns,
            path.server_ip,
            if out.status.success() {
                String::new()
            } else {
                format!(" ({})", String::from_utf8_lossy(&out.stderr).trim())
            }
        ),
    })
}

pub(crate) fn iperf_installed() -> bool {
    Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The twin's paths: pod on its node 1 to pod on its node 2.
pub(crate) fn twin_path(plan: &TwinPlan) -> Path {
    Path {
        client_netns: plan.pod_netns(1),
        server_netns: plan.pod_netns(2),
        server_ip: plan.nodes[1].pod_ip.addr(),
    }
}

/// Builds the twins, runs every variant `rounds` times interleaved, and removes all it made
/// (servers by PID, twins by namespace), also on error.
pub fn run(target: &Target, opts: &BenchOptions, log: Log) -> Result<BenchReport, BenchError> {
    if !iperf_installed() {
        return Err(BenchError::IperfMissing);
    }
    let faulty =
        twill_netlink::ethtool::checksum_offload_broken(&twill_netlink::ethtool::kernel_release());
    let mut twin = TwinPlan::new(&target.lab, target.backend, target.sides.clone())?;
    twin.tx_checksum_off = faulty;
    let hg_twin = (opts.compare_host_gw && target.backend == BackendKind::Vxlan)
        .then(|| TwinPlan::new(&target.lab, BackendKind::HostGw, target.sides.clone()))
        .transpose()?;
    let mut twins = vec![twin.clone()];
    twins.extend(hg_twin.clone());
    // Guards drop in reverse: servers first, then the twins' namespaces.
    let mut guards = Vec::new();
    for t in &twins {
        guards.push(TwinGuard::build(t, log)?);
    }
    let mut variants: Vec<(VariantKind, Path)> = vec![
        (VariantKind::Underlay, target.underlay.clone()),
        (VariantKind::Twill, target.twill.clone()),
        (VariantKind::Twin, twin_path(&twin)),
    ];
    if let Some(t) = &hg_twin {
        variants.push((VariantKind::TwinHostGw, twin_path(t)));
    }
    let mut servers = Vec::new();
    for (kind, path) in &variants {
        let s = start_server(&path.server_netns)?;
        log(&format!(
            "{}: iperf3 server in {} on port {} (pid {})",
            kind.as_str(),
            path.server_netns,
            s.port,
            s.child.id()
        ));
        servers.push(s);
    }
    let mut runs: Vec<Vec<IperfRun>> = vec![Vec::new(); variants.len()];
    for round in 1..=opts.rounds {
        for (i, (kind, path)) in variants.iter().enumerate() {
            let r = run_client(*kind, path, servers[i].port, opts.seconds)?;
            log(&format!(
                "round {round}/{}: {:<12} {:6.2} Gbit/s (sender CPU {:.0}%, receiver {:.0}%)",
                opts.rounds,
                kind.as_str(),
                r.gbps,
                r.sender_cpu,
                r.receiver_cpu
            ));
            runs[i].push(r);
        }
    }
    let differences = compare_with_twin(target, &twin);
    drop(servers);
    drop(guards);
    let figures: Vec<VariantFigures> = variants
        .iter()
        .zip(runs)
        .map(|((kind, path), runs)| VariantFigures::new(*kind, path.describe(), runs))
        .collect();
    Ok(BenchReport {
        lab: target.lab.clone(),
        backend: target.backend,
        seconds: opts.seconds,
        rounds: opts.rounds,
        congestion_control: "cubic".into(),
        order: variants.iter().map(|(k, _)| *k).collect(),
        ratios: ratios(target.backend, &figures),
        variants: figures,
        twins: twins
            .iter()
            .map(|t| TwinReport {
                kind: t.kind,
                netns: t.netns(),
                commands: t.commands().iter().map(|c| c.join(" ")).collect(),
            })
            .collect(),
        differences,
    })
}

/// What a node or pod looks like where it matters for throughput, read back from the
/// kernel in a form that does not depend on the namespace or interface indexes.
fn fingerprint(node_netns: &str, pod_netns: &str, peer_pod: Ipv4Addr) -> Vec<(String, String)> {
    let mut f = Vec::new();
    let mut put = |k: &str, v: String| f.push((k.to_string(), v));
    let link = |ns: &str, dev: &str| ip_json(&["-d", "-n", ns, "link", "show", "dev", dev]).ok();
    if let Some(v) = link(pod_netns, "eth0") {
        put("pod eth0 mtu", v[0]["mtu"].to_string());
        put("pod eth0 gso_max_size", v[0]["gso_max_size"].to_string());
    }
    if let Some(v) = link(node_netns, "eth0") {
        put("node eth0 mtu", v[0]["mtu"].to_string());
    }
    if let Some(v) = link(node_netns, TWIN_TUN_DEVICE) {
        // The TUN's offloads are the datapath's to set (the baseline sets none), so only
        // what the backend programs is compared.
        put("twl.tun mtu", v[0]["mtu"].to_string());
        let d = &v[0]["linkinfo"]["info_data"];
        put("twl.tun type", d["type"].to_string());
        put("twl.tun pi", d["pi"].to_string());
    }
    if let Some(v) = link(node_netns, TWIN_VXLAN_DEVICE) {
        let d = &v[0]["linkinfo"]["info_data"];
        put("twl.1 mtu", v[0]["mtu"].to_string());
        for k in ["id", "port", "learning", "udp_csum", "ttl", "tos", "df"] {
            put(&format!("twl.1 {k}"), d[k].to_string());
        }
        put("twl.1 gso_max_size", v[0]["gso_max_size"].to_string());
        if let Ok(text) = run_cmd(&cmd(&[
            "ip",
            "netns",
            "exec",
            node_netns,
            "ethtool",
            "-k",
            TWIN_VXLAN_DEVICE,
        ])) {
            for line in text.lines().filter(|l| !l.contains("[fixed]")) {
                if let Some((k, v)) = line.trim().split_once(": ") {
                    put(&format!("twl.1 offload {k}"), v.to_string());
                }
            }
        }
    }
    if let Ok(v) = ip_json(&["-n", node_netns, "route", "get", &peer_pod.to_string()]) {
        let r = &v[0];
        put(
            "route to the peer pod",
            format!("via {} dev {}", r["gateway"], r["dev"]),
        );
    }
    f
}

/// Every key whose value differs between the lab's node 1 / pod 1 and the twin's.
pub(crate) fn compare_with_twin(target: &Target, twin: &TwinPlan) -> Vec<String> {
    let peer = target.sides[1].pod_ip.addr();
    let lab = fingerprint(&target.nodes_netns[0], &target.pods_netns[0], peer);
    let tw = fingerprint(&twin.node_netns(1), &twin.pod_netns(1), peer);
    diff_fingerprints(&lab, &tw)
}

/// Pure part of [`compare_with_twin`].
pub fn diff_fingerprints(lab: &[(String, String)], twin: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in lab {
        match twin.iter().find(|(tk, _)| tk == k) {
            Some((_, tv)) if tv == v => {}
            Some((_, tv)) => out.push(format!("{k}: lab {v}, twin {tv}")),
            None => out.push(format!("{k}: lab {v}, twin has none")),
        }
    }
    for (k, v) in twin {
        if !lab.iter().any(|(lk, _)| lk == k) {
            out.push(format!("{k}: lab has none, twin {v}"));
        }
    }
    out
}

/// Loads lab `name`, reads it, and benchmarks it.
pub fn bench_lab(name: &str, opts: &BenchOptions, log: Log) -> Result<BenchReport, BenchError> {
    let state = build::load(name)?;
    let target = target_from_lab(&state)?;
    run(&target, opts, log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(node: &str, pod: &str, gw: &str) -> NodeSide {
        NodeSide {
            node_ip: node.parse().unwrap(),
            uplink_mtu: 1500,
            pod_ip: pod.parse().unwrap(),
            gateway: gw.parse().unwrap(),
        }
    }

    fn sides() -> [NodeSide; 2] {
        [
            side("192.0.2.11/24", "10.244.0.2/24", "10.244.0.1"),
            side("192.0.2.12/24", "10.244.1.2/24", "10.244.1.1"),
        ]
    }

    #[test]
    fn an_l3_lab_is_refused_before_anything_runs() {
        let plan = crate::plan::plan(&crate::plan::LabSpec {
            nodes: 2,
            pod_wiring: crate::plan::PodWiring::L3,
            ..Default::default()
        })
        .unwrap();
        let state = LabState::new(plan, "/nonexistent".into(), "/nonexistent".into());
        let Err(e) = target_from_lab(&state) else {
            panic!("an l3 lab was benched");
        };
        assert!(e.to_string().contains("--pod-wiring bridge"), "{e}");
    }

    #[test]
    fn iperf3_json_is_read_from_a_recorded_run() {
        let r = parse_iperf(include_str!("testdata/iperf3_cubic_1s.json")).unwrap();
        assert!((r.gbps - 58.1293649285311).abs() < 1e-9, "{}", r.gbps);
        assert_eq!(r.retransmits, Some(9));
        assert!((r.sender_cpu - 44.16376237229403).abs() < 1e-9);
        assert!((r.receiver_cpu - 51.03148100408276).abs() < 1e-9);
        assert_eq!(r.congestion.as_deref(), Some("cubic"));
        let err = parse_iperf(r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("Connection refused"), "{err}");
        assert!(parse_iperf("not json").is_err());
        assert!(parse_iperf(r#"{"end":{}}"#)
            .unwrap_err()
            .to_string()
            .contains("sum_received"));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    fn lines(c: &[Vec<String>]) -> Vec<String> {
        c.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn the_vxlan_twin_is_what_the_backend_programs_written_out() {
        let t = TwinPlan::new("twllab", BackendKind::Vxlan, sides()).unwrap();
        assert_eq!(
            t.netns(),
            [
                "twllab-twvul",
                "twllab-twvn1",
                "twllab-twvn2",
                "twllab-twvn1p",
                "twllab-twvn2p"
            ]
        );
        assert_eq!(
            lines(&t.backend_commands(1)),
            [
                "ip -n twllab-twvn1 link add twl.1 type vxlan id 1 dstport 8472 local 192.0.2.11 dev eth0 nolearning",
                "ip -n twllab-twvn1 link set twl.1 address 0a:54:c0:00:02:0b mtu 1450",
                "ip netns exec twllab-twvn1 ethtool -K twl.1 tx off",
                "ip -n twllab-twvn1 addr add 10.244.0.0/32 dev twl.1",
                "ip -n twllab-twvn1 link set twl.1 up",
                "ip -n twllab-twvn1 neigh add 10.244.1.0 lladdr 0a:54:c0:00:02:0c dev twl.1 nud permanent",
                "bridge -n twllab-twvn1 fdb append 0a:54:c0:00:02:0c dev twl.1 dst 192.0.2.12 self permanent",
                "ip -n twllab-twvn1 route add 10.244.1.0/24 via 10.244.1.0 dev twl.1 onlink",
            ]
        );
        // The checksum workaround is written out only for kernels with the fault.
        let mut faulty = t.clone();
        faulty.tx_checksum_off = true;
        assert!(lines(&faulty.commands())
            .iter()
            .any(|l| l.ends_with("ethtool -K twl.1 tx off")));
        let mut fixed = t.clone();
        fixed.tx_checksum_off = false;
        assert!(!lines(&fixed.commands())
            .iter()
            .any(|l| l.contains("ethtool")));
        let all = lines(&t.commands());
        // Pods get the uplink MTU less the VXLAN headers, on both veth ends and the bridge.
        assert!(all.contains(&"ip -n twllab-twvn2 link add veth0 mtu 1450 type veth peer name eth0 mtu 1450 netns twllab-twvn2p".to_string()));
        assert!(all.contains(&"ip -n twllab-twvn2 addr add 10.244.1.1/24 dev twl0".to_string()));
        assert!(all.contains(&"ip -n twllab-twvn2p route add default via 10.244.1.1".to_string()));
        assert!(all.contains(&"ip -n twllab-twvn2 link add eth0 mtu 1500 type veth peer name n2 mtu 1500 netns twllab-twvul".to_string()));
        // Node 2's side mirrors node 1's, and the backend comes last.
        assert_eq!(
            all.last().unwrap(),
            "ip -n twllab-twvn2 route add 10.244.0.0/24 via 10.244.0.0 dev twl.1 onlink"
        );
        // Nothing Twill-specific sneaks in: only ip, bridge, and ethtool/sysctl inside a netns.
        assert!(t
            .commands()
            .iter()
            .all(|c| c[0] == "ip" || c[0] == "bridge"));
    }

    #[test]
    fn the_host_gw_twin_routes_each_block_via_the_peer_node() {
        let t = TwinPlan::new("twllab", BackendKind::HostGw, sides()).unwrap();
        assert_eq!(t.underlay_netns(), "twllab-twhul");
        assert_eq!(
            lines(&t.backend_commands(1)),
            ["ip -n twllab-twhn1 route add 10.244.1.0/24 via 192.0.2.12 dev eth0"]
        );
        assert_eq!(
            lines(&t.backend_commands(2)),
            ["ip -n twllab-twhn2 route add 10.244.0.0/24 via 192.0.2.11 dev eth0"]
        );
        assert_eq!(t.pod_mtu(1), 1500);
        let all = lines(&t.commands());
        assert!(!all.iter().any(|c| c.contains("vxlan")));
        // Every namespace added is one the twin lists (so all are removed).
        let added: Vec<&str> = all
            .iter()
            .filter_map(|c| c.strip_prefix("ip netns add "))
            .collect();
        assert_eq!(added, t.netns());
    }

    #[test]
    fn every_backend_kind_has_a_twin_or_a_reason_why_not() {
        for kind in BackendKind::ALL {
            match TwinPlan::new("twllab", kind, sides()) {
                Ok(t) => {
                    assert!(kind.crosses_nodes(), "{kind}");
                    assert!(!t.backend_commands(1).is_empty(), "{kind}");
                    let tunnels = lines(&t.commands()).iter().any(|c| c.contains("vxlan"));
                    assert_eq!(tunnels, t.pod_mtu(1) == 1450, "{kind}");
                }
                Err(e) => {
                    assert!(!kind.crosses_nodes(), "{kind}: {e}");
                    assert!(e.to_string().contains("--backend host-gw|vxlan"), "{e}");
                }
            }
        }
        // A static lab is a VXLAN mesh: its twin is the vxlan twin.
        let st = TwinPlan::new("twllab", BackendKind::Static, sides()).unwrap();
        let vx = TwinPlan::new("twllab", BackendKind::Vxlan, sides()).unwrap();
        assert_eq!(st.commands(), vx.commands());
    }

    #[test]
    fn the_backend_is_told_by_the_route_to_the_peer_pod() {
        let peer = &sides()[1];
        assert_eq!(
            classify_route("twl.1", "10.244.1.0", peer),
            Ok(BackendKind::Vxlan)
        );
        assert_eq!(
            classify_route("eth0", "192.0.2.12", peer),
            Ok(BackendKind::HostGw)
        );
        assert_eq!(
            classify_route("twl.tun", "none", peer),
            Ok(BackendKind::Udp)
        );
        let err = classify_route("eth0", "192.0.2.1", peer).unwrap_err();
        assert!(err.contains("--backend host-gw|vxlan"), "{err}");
    }

    fn fig(kind: VariantKind, gbps: &[f64]) -> VariantFigures {
        let runs = gbps
            .iter()
            .map(|&g| IperfRun {
                gbps: g,
                retransmits: None,
                sender_cpu: 90.0,
                receiver_cpu: 50.0,
                congestion: Some("cubic".into()),
            })
            .collect();
        VariantFigures::new(kind, format!("{kind:?}"), runs)
    }

    #[test]
    fn ratios_carry_the_goals_of_each_backend() {
        let v = [
            fig(VariantKind::Underlay, &[40.0, 30.0, 35.0]),
            fig(VariantKind::Twill, &[33.0, 34.0, 30.0]),
            fig(VariantKind::Twin, &[33.0]),
        ];
        let r = ratios(BackendKind::HostGw, &v);
        let names: Vec<&str> = r.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "twill-host-gw / twin-host-gw",
                "twill-host-gw / underlay",
                "twin-host-gw / underlay"
            ]
        );
        assert_eq!(r[0].value, Some(1.0));
        assert_eq!((r[0].goal, r[0].met), (Some(0.97), Some(true)));
        // 33 / 35 = 0.943 < 0.95.
        assert_eq!((r[1].goal, r[1].met), (Some(0.95), Some(false)));
        assert_eq!((r[2].goal, r[2].met), (None, None));

        let mut v = v.to_vec();
        v.push(fig(VariantKind::TwinHostGw, &[40.0]));
        let r = ratios(BackendKind::Vxlan, &v);
        assert_eq!(r[1].goal, None, "no underlay goal for vxlan");
        let hg = r
            .iter()
            .find(|x| x.name == "twill-vxlan / twin-host-gw")
            .unwrap();
        assert_eq!((hg.value, hg.met), (Some(33.0 / 40.0), Some(false)));
        // Without --compare-host-gw there is nothing to compare against.
        assert_eq!(ratios(BackendKind::Vxlan, &v[..3]).len(), 3);
        // A ratio of nothing never meets its goal.
        let r = ratios(
            BackendKind::HostGw,
            &[fig(VariantKind::Twill, &[]), fig(VariantKind::Twin, &[1.0])],
        );
        assert_eq!((r[0].value, r[0].met), (None, Some(false)));
    }

    #[test]
    fn the_report_renders_figures_ratios_and_goals() {
        let v = vec![
            fig(VariantKind::Underlay, &[40.0]),
            fig(VariantKind::Twill, &[33.0]),
            fig(VariantKind::Twin, &[34.0]),
        ];
        let report = BenchReport {
            lab: "twllab".into(),
            backend: BackendKind::HostGw,
            seconds: 10,
            rounds: 1,
            congestion_control: "cubic".into(),
            order: v.iter().map(|x| x.variant).collect(),
            ratios: ratios(BackendKind::HostGw, &v),
            variants: v,
            twins: Vec::new(),
            differences: vec!["pod eth0 mtu: lab 1450, twin 1500".into()],
        };
        let text = render(&report);
        assert!(
            text.contains("interleaved underlay twill twin ..."),
            "{text}"
        );
        assert!(
            text.contains("  twill            33.00     90.0     50.0  33.0"),
            "{text}"
        );
        assert!(
            text.contains("[met ] twill-host-gw / twin-host-gw  0.971 >= 0.97"),
            "{text}"
        );
        assert!(
            text.contains("[MISS] twill-host-gw / underlay      0.825 >= 0.95"),
            "{text}"
        );
        assert!(
            text.contains("[    ] twin-host-gw / underlay       0.850"),
            "{text}"
        );
        assert!(
            text.contains("- pod eth0 mtu: lab 1450, twin 1500"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["backend"], "host-gw");
        assert_eq!(json["variants"][1]["variant"], "twill");
        assert_eq!(json["variants"][1]["medianGbps"], 33.0);
        assert_eq!(json["ratios"][1]["met"], false);
    }

    #[test]
    fn fingerprints_differ_only_where_values_do() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let lab = [kv("a", "1"), kv("b", "2"), kv("c", "3")];
        let twin = [kv("a", "1"), kv("b", "9"), kv("d", "4")];
        assert_eq!(
            diff_fingerprints(&lab, &twin),
            [
                "b: lab 2, twin 9",
                "c: lab 3, twin has none",
                "d: lab has none, twin 4"
            ]
        );
    }

    #[test]
    fn ss_listing_gives_ports() {
        let text = "LISTEN 0 5 0.0.0.0:5201 0.0.0.0:*\nLISTEN 0 4096 [::]:8080 [::]:*\nLISTEN 0 5 *:5202 *:*\n";
        assert_eq!(parse_ss_ports(text), [5201, 8080, 5202]);
    }
}
