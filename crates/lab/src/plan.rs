//! The lab's plan: every namespace name, interface name, address and subnet, derived from the
//! lab's name and size alone. Pure: `build` turns a plan into namespaces and links, `check`
//! reads its expectations from it, and `state.json` stores it so that `down` removes exactly
//! what `up` made.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
pub use twill_api::policy::NamedPort;
pub use twill_api::wiring::PodWiring;

/// The lab name used when none is given.
pub const DEFAULT_NAME: &str = "twllab";
/// Every lab name (and so every namespace the lab makes) starts with this.
pub const NAME_PREFIX: &str = "twl";
/// Short enough that `<name>-n244` still fits an interface name (15 bytes).
pub const MAX_NAME_LEN: usize = 8;
/// The kernel's interface-name limit (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// The interface name twill-cni creates inside every pod (CNI_IFNAME).
pub const POD_IFNAME: &str = "eth0";
/// The node bridge twill-cni plugs pods into (the lab's cni0/docker0).
pub const NODE_BRIDGE: &str = "twl0";
/// The CNI network name in every node's conflist.
pub const CNI_NETWORK: &str = "twill";
/// Where lab state lives: `/run/<name>/`.
pub const STATE_ROOT: &str = "/run";

/// The most nodes one lab holds: node i takes underlay host .(10+i).
pub const MAX_NODES: u16 = 200;
/// The most pods per node: a /24 minus network, gateway and broadcast, with room to spare.
pub const MAX_PODS_PER_NODE: u16 = 250;
/// Block sizes the lab accepts: a /24 per node (flannel's model) down to /28 blocks of which a
/// node claims more as it fills (Calico's model).
pub const BLOCK_SIZES: std::ops::RangeInclusive<u8> = 17..=28;
pub const DEFAULT_BLOCK_SIZE: u8 = 24;
/// Short, so that claims expiring after an agent dies are observable in the lab.
pub const LAB_LEASE_TTL_SECONDS: u64 = 60;
/// The store host's address on the first segment (the router is .1, nodes are .11 and up).
pub const STORE_HOST_INDEX: u32 = 2;
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port; only on the store host's own loopback (one member).
pub const ETCD_PEER_PORT: u16 = 2380;
/// Where every node agent serves /healthz, /readyz, /metrics: each node namespace has its
/// own loopback, so one address works for all.
pub const AGENT_LISTEN: &str = "127.0.0.1:9099";
/// The agents' node IP autodetection: the node's NIC is eth0.
pub const AGENT_IP_AUTODETECTION: &str = "interface=eth0";
/// Segment subnets in order; a lab with 2 segments puts every other node behind the router.
pub const SEGMENT_SUBNETS: [&str; 2] = ["192.0.2.0/24", "198.51.100.0/24"];
/// The outside host's network, reached only through the router.
pub const OUTSIDE_SUBNET: &str = "203.0.113.0/24";
/// The cluster's pod network; every node agent claims its blocks out of it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Host ports every node maps to its first pod, and the container ports behind them.
pub const HOST_PORT_TCP: u16 = 30080;
pub const CONTAINER_PORT_TCP: u16 = 8080;
pub const HOST_PORT_UDP: u16 = 30053;
pub const CONTAINER_PORT_UDP: u16 = 5353;

/// The environment variables `twill` reads its store from (the CLI's `--store`,
/// `--store-dir`, `--etcd-endpoints`, `--static-file`).
pub const ENV_STORE: &str = "TWILL_STORE";
pub const ENV_STORE_DIR: &str = "TWILL_STORE_DIR";
pub const ENV_ETCD_ENDPOINTS: &str = "TWILL_ETCD_ENDPOINTS";
pub const ENV_STATIC_FILE: &str = "TWILL_STATIC_FILE";
/// Every store setting of the caller's that `lab exec` drops (TLS files of another etcd
/// included) before it sets the lab's.
pub const ENV_STORE_PREFIXES: [&str; 3] = ["TWILL_STORE", "TWILL_ETCD_", "TWILL_STATIC_FILE"];

/// Which cluster store the lab's agents share (the store crate's own kind): embedded, a
/// folder under the lab's state directory; etcd, one member the lab starts in its own
/// "store host" namespace on the underlay; static, a file the lab writes from its plan
/// (every node, its IP, one /24 each), which the agents read and nothing claims.
pub use twill_store::StoreKind;

/// How the lab's agents connect pods across nodes (the network config's `backend`): the
/// one kind of twill-api (`static` is the VXLAN mesh from the static file store).
pub use twill_api::resources::BackendKind;

/// The tunnel of `--backend ovs` (GRE by default, or VXLAN on port 4789).
pub use twill_api::backend::TunnelType;

/// Where the node's underlay address lives under `--backend ovs` with the userspace
/// (netdev) datapath: an OVS bridge holding eth0 as a port (RUNBOOK "Open vSwitch 3.1").
pub const OVS_PHY_BRIDGE: &str = "br-phy";

/// Calico's default AS, every node's unless `--as-per-node` (BGP).
pub use twill_api::bgp::DEFAULT_AS as NODE_AS;
/// The file name of twilld's BGP control socket in its state directory.
pub const BGP_SOCKET: &str = "bgp.sock";
/// The agent's own kernel route protocol number.
pub const TWILL_PROTO: u8 = 84;
/// Routes a BGP speaker learned (`proto bgp`, rtnetlink's RTPROT_BGP).
pub const RTPROT_BGP: u8 = 186;
/// Routes a RIP daemon learned (`proto rip`, RTPROT_RIP): FRR's zebra in the router.
pub const RTPROT_RIP: u8 = 189;
/// The external router's own AS: eBGP with every node.
pub const ROUTER_AS: u32 = 64513;
/// With `--as-per-node`, node i is in AS `AS_PER_NODE_BASE + i` (private 16-bit ASes).
pub const AS_PER_NODE_BASE: u32 = 65000;
/// The route reflectors' cluster ID (RFC 4456), as Calico's docs write it.
pub const RR_CLUSTER_ID: Ipv4Addr = Ipv4Addr::new(244, 0, 0, 1);
/// Node labels the lab sets (`metadata.labels`), matched by its BGPPeers' selectors:
/// `segment` is "1" or "2"; `route-reflector` is "true" on the reflectors.
pub const LABEL_SEGMENT: &str = "segment";
pub const LABEL_ROUTE_REFLECTOR: &str = "route-reflector";
/// The TCP MD5 key (RFC 2385) of every session between the nodes and the external router.
pub const ROUTER_MD5_KEY: &str = "twl-lab-md5";
/// Timers of every lab session (nodes and router): a dead peer is noticed in seconds.
pub const BGP_HOLD_SECONDS: u16 = 9;
pub const BGP_KEEPALIVE_SECONDS: u16 = 3;
pub const BGP_CONNECT_RETRY_SECONDS: u32 = 1;

/// A routing daemon the lab runs in its router namespace (`--external-router`): the router
/// then peers with the nodes (BGP: eBGP from its own AS; RIP: ripd on every leg), installs
/// the pod blocks in its kernel, and passes them between the segments and to the outside
/// host. Without one the router only forwards and knows no pod route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalRouter {
    /// BIRD 2 (`bird`, `birdc`): BGP only.
    Bird,
    /// FRR: zebra + bgpd for BGP, zebra + ripd for RIP.
    Frr,
}

impl ExternalRouter {
    pub const ALL: [ExternalRouter; 2] = [ExternalRouter::Bird, ExternalRouter::Frr];

    pub const fn name(self) -> &'static str {
        match self {
            ExternalRouter::Bird => "bird",
            ExternalRouter::Frr => "frr",
        }
    }
}

impl std::fmt::Display for ExternalRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which protocol the router's daemon speaks with the nodes.
pub use twill_api::bgp::RoutingProtocol;

/// The lab's BGP settings, written into the store as resources before any agent starts
/// (see [`crate::routing`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPlan {
    /// The first `route_reflectors` nodes reflect (cluster ID [`RR_CLUSTER_ID`]), and the
    /// node-to-node mesh is off; 0: the mesh.
    pub route_reflectors: u16,
    /// Every node in its own AS (`AS_PER_NODE_BASE + i`) instead of all in [`NODE_AS`].
    pub as_per_node: bool,
}

/// The routing daemon in the router namespace: its files live in `dir` (config, log,
/// control socket, pid files), and it is stopped by PID on `down`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterDaemonPlan {
    pub kind: ExternalRouter,
    pub protocol: RoutingProtocol,
    /// BGP: the router's AS ([`ROUTER_AS`]).
    pub asn: u32,
    /// Its first segment leg's address.
    pub router_id: Ipv4Addr,
    pub dir: PathBuf,
    /// BGP: the TCP MD5 key of every session with the nodes.
    pub password: Option<String>,
}

/// How node `from` reaches the pods of node `to`, as the backend promises. Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPath {
    /// A route (direct or through the tunnel) must be in `from`'s table.
    Routed,
    /// No route; `reason` says why. `reported`: `from`'s agent must name the peer in its
    /// /readyz warnings (host-gw across segments); otherwise nothing is promised.
    Blocked { reason: String, reported: bool },
}

/// The text host-gw's agent puts in /readyz for a peer it cannot reach: "<peer> (<ip>) is
/// not on this node's segment".
pub const OFF_SEGMENT_TEXT: &str = "is not on this node's segment";
/// The static file's blocks: node i holds 10.244.i.0/24.
pub const STATIC_BLOCK_SIZE: u8 = 24;

/// What the user asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    pub name: String,
    pub nodes: u16,
    pub pods_per_node: u16,
    /// Underlay segments (1 or 2); the CLI builds 1 for now.
    pub segments: u8,
    pub store: StoreKind,
    /// Prefix length of the blocks the agents claim.
    pub block_size: u8,
    pub lease_ttl_seconds: u64,
    /// The agents' `--poll-interval-seconds` (how fast they notice a leaked address); None
    /// keeps twilld's default.
    pub agent_poll_interval: Option<String>,
    pub backend: BackendKind,
    /// vxlan only: direct routes to peers on the same segment, the tunnel across segments.
    pub direct_routing: bool,
    /// ovs only: GRE or VXLAN between the nodes' OVS (None: the backend's default, GRE).
    pub tunnel_type: Option<TunnelType>,
    /// udp only: `partialChecksums` (every lab node runs Twill's datapath).
    pub partial_checksums: bool,
    /// How pods meet their node: on the node bridge, or Calico's pure L3.
    pub pod_wiring: PodWiring,
    /// bgp: this many route reflectors (the first nodes), the mesh off; 0 keeps the mesh.
    pub route_reflectors: u16,
    /// bgp or rip: the routing daemon the router runs (bgp with 2 segments: BIRD unless
    /// asked otherwise).
    pub external_router: Option<ExternalRouter>,
    /// bgp: an AS per node instead of one AS for all.
    pub as_per_node: bool,
    /// Pods with a Kubernetes identity (namespace, name, labels, named ports), spread over
    /// the nodes in turn (pod k on node `k % nodes + 1`) instead of `pods_per_node`
    /// anonymous ones; see [`crate::netpol::model_pods`] for the upstream NetworkPolicy
    /// model's x/y/z × a/b/c.
    pub pods: Vec<PodIdentity>,
    /// Namespaces the lab writes into the store (`namespaces/<name>`) before any pod
    /// starts, with their labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The agents enforce network policy (`twilld --policy true`).
    pub policy: bool,
}

/// A pod as Kubernetes knows it: the runtime passes its namespace and name in CNI_ARGS
/// (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`), its labels in CNI_ARGS `TWILL_POD_LABELS` and its
/// named ports in `runtimeConfig.namedPorts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

impl PodIdentity {
    /// `namespace/name`, as the upstream suite names pods in its tables.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The lab member name: `x-a` for pod a of namespace x.
    pub fn short(&self) -> String {
        format!("{}-{}", self.namespace, self.name)
    }
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            name: DEFAULT_NAME.into(),
            nodes: 1,
            pods_per_node: 2,
            segments: 1,
            store: StoreKind::Embedded,
            block_size: DEFAULT_BLOCK_SIZE,
            lease_ttl_seconds: LAB_LEASE_TTL_SECONDS,
            agent_poll_interval: None,
            backend: BackendKind::None,
            direct_routing: false,
            tunnel_type: None,
            partial_checksums: false,
            pod_wiring: PodWiring::Bridge,
            route_reflectors: 0,
            external_router: None,
            as_per_node: false,
            pods: Vec::new(),
            namespaces: BTreeMap::new(),
            policy: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "lab name {0:?} is invalid: it must start with {NAME_PREFIX:?}, be at most {MAX_NAME_LEN} \
         characters, and use only a-z and 0-9 (e.g. twllab)"
    )]
    BadName(String),
    #[error("--nodes {0} is out of range: use 1 to {MAX_NODES}")]
    BadNodeCount(u16),
    #[error("--pods-per-node {0} is out of range: use 1 to {MAX_PODS_PER_NODE}")]
    BadPodCount(u16),
    #[error("{0} segments asked for: the lab has 1 or 2")]
    BadSegmentCount(u8),
    #[error("--block-size {0} is out of range: use 17 to 28 (24: one /24 per node; 26: /26 blocks, claimed as nodes fill)")]
    BadBlockSize(u8),
    #[error("--agent-poll-interval {0:?} is not a positive number of seconds (e.g. 1 or 0.5)")]
    BadPollInterval(String),
    #[error("--backend static is the VXLAN mesh of the static file store: it needs --store static (the lab writes the file), not --store {0}")]
    StaticBackendNeedsStaticStore(String),
    #[error("--store static gives node i the block 10.244.i.0/24: use --block-size 24, not {0}")]
    StaticBlockSize(u8),
    #[error("--direct-routing is an option of --backend vxlan, not {0}")]
    DirectRoutingNeedsVxlan(String),
    #[error("--tunnel-type is an option of --backend ovs, not {0}: add --backend ovs or drop --tunnel-type")]
    TunnelTypeNeedsOvs(String),
    #[error("--partial-checksums is an option of --backend udp, not {0}: add --backend udp or drop --partial-checksums")]
    PartialChecksumsNeedUdp(String),
    #[error(
        "{option} is an option of --backend bgp, not {backend}: add --backend bgp or drop {option}"
    )]
    NeedsBgp {
        option: &'static str,
        backend: String,
    },
    #[error("--external-router is an option of --backend bgp or rip, not {0}: add --backend bgp (or rip), or drop it")]
    ExternalRouterNeedsRouting(String),
    #[error("--backend rip runs FRR's ripd in the router: use --external-router frr (BIRD is offered for --backend bgp)")]
    RipRouterIsFrr,
    #[error("--route-reflectors {asked} is more than the lab's {nodes} node(s): use 1 to {nodes} (the first nodes reflect), or 0 for the mesh")]
    TooManyReflectors { asked: u16, nodes: u16 },
    #[error("--route-reflectors and --as-per-node do not mix: a route reflector reflects iBGP inside one AS; drop one of them")]
    ReflectorsWithAsPerNode,
    #[error("--backend bgp reads its BGPConfiguration, BGPPeers and Node resources from the store, which the static file cannot hold: use --store embedded or etcd")]
    BgpNeedsStore,
    #[error("--backend rip with --segments 2 needs --external-router frr: RIP is heard only on a node's own segment, so the router must pass the routes between segments")]
    RipSegmentsNeedRouter,
    #[error("unknown lab member {0:?}: use a node (n1), a pod (n1-p2), rt, out, ul or st (the etcd host)")]
    UnknownTarget(String),
    #[error("pod {pod}: {reason}")]
    BadPod { pod: String, reason: String },
    #[error("namespaces and pod identities live in the store, which the static file cannot hold: use --store embedded or etcd")]
    IdentitiesNeedStore,
}

/// A veth pair: one end in `netns` (optionally addressed), the other in `peer_netns`
/// (optionally enslaved to a bridge there, or addressed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Veth {
    pub netns: String,
    pub ifname: String,
    pub address: Option<Ipv4Net>,
    pub peer_netns: String,
    pub peer_ifname: String,
    pub peer_address: Option<Ipv4Net>,
    pub peer_master: Option<String>,
}

/// An underlay segment: an L2 switch (a bridge in its own namespace) with a subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentPlan {
    pub netns: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// The router's address on this segment: every node's default gateway.
    pub gateway: Ipv4Addr,
}

/// The router: a leg into every segment and one towards the outside host. It forwards, but
/// knows no route to the pod network, so pods only get out through their node's masquerade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPlan {
    pub netns: String,
    pub segment_legs: Vec<Veth>,
    pub outside_leg: Veth,
    /// The routing daemon it runs (`--external-router`, or BIRD for bgp across segments).
    #[serde(default)]
    pub daemon: Option<RouterDaemonPlan>,
}

/// The "outside" host (the internet, or clients of an external router).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub netns: String,
    pub ifname: String,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// A port mapping as CNI's `runtimeConfig.portMappings` spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    /// Short name used on the command line: `n1-p2`.
    pub short: String,
    pub node: u16,
    pub index: u16,
    pub netns: String,
    /// CNI_CONTAINERID: what a runtime would use as the sandbox id.
    pub container_id: String,
    pub ifname: String,
    pub port_mappings: Vec<PortMapping>,
    /// Its Kubernetes identity; none: namespace = the lab's name, name = `short`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PodIdentity>,
}

impl PodPlan {
    /// K8S_POD_NAMESPACE: the identity's, else the lab's name.
    pub fn k8s_namespace<'a>(&'a self, lab: &'a str) -> &'a str {
        self.identity.as_ref().map_or(lab, |i| i.namespace.as_str())
    }

    /// K8S_POD_NAME: the identity's, else the short name.
    pub fn k8s_name(&self) -> &str {
        self.identity
            .as_ref()
            .map_or(self.short.as_str(), |i| i.name.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Short name used on the command line: `n1`.
    pub short: String,
    pub index: u16,
    pub netns: String,
    pub segment: usize,
    /// The node's NIC: `eth0` in the node, its peer on the segment's bridge.
    pub uplink: Veth,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The node bridge its pods hang off; none when pods are wired pure L3.
    pub bridge: Option<String>,
    pub dir: PathBuf,
    pub conflist: PathBuf,
    /// twill-cni's records (and the agent's `--cni-data-dir`).
    pub ipam_dir: PathBuf,
    /// The hand-off file the node's agent writes and twill-cni reads.
    pub handoff_file: PathBuf,
    /// The agent's `--state-dir` (its blocks, remembered across restarts).
    pub agent_state_dir: PathBuf,
    pub agent_log: PathBuf,
    pub pods: Vec<PodPlan>,
}

/// The cluster store the agents share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePlan {
    pub kind: StoreKind,
    /// The static file the lab writes (set for `static`).
    #[serde(default)]
    pub static_file: Option<PathBuf>,
    /// The embedded store's folder (set for `embedded`).
    pub dir: Option<PathBuf>,
    /// The etcd member (set for `etcd`).
    pub etcd: Option<EtcdPlan>,
    pub block_size: u8,
    pub lease_ttl_seconds: u64,
    pub agent_poll_interval: Option<String>,
}

/// One etcd member on its own host on the first segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdPlan {
    pub netns: String,
    pub uplink: Veth,
    pub address: Ipv4Net,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub name: String,
    pub state_dir: PathBuf,
    pub cluster_cidr: Ipv4Net,
    pub segments: Vec<SegmentPlan>,
    pub router: RouterPlan,
    pub outside: HostPlan,
    pub store: StorePlan,
    pub nodes: Vec<NodePlan>,
    #[serde(default)]
    pub backend: BackendKind,
    #[serde(default)]
    pub direct_routing: bool,
    /// ovs: the tunnel between the nodes' OVS (set exactly for `--backend ovs`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "tunnel_serde"
    )]
    pub ovs_tunnel: Option<TunnelType>,
    /// udp: the backend's `partialChecksums`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial_checksums: bool,
    /// Pods each node gets (also those `add-node` makes).
    #[serde(default)]
    pub pods_per_node: u16,
    /// How pods meet their node (in the network config and every node's CNI config).
    #[serde(default)]
    pub pod_wiring: PodWiring,
    /// bgp: the resources the lab writes (reflectors, AS per node).
    #[serde(default)]
    pub bgp: Option<BgpPlan>,
    /// Namespaces written into the store at `up`, with their labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The agents enforce network policy (`--policy true`).
    #[serde(default)]
    pub policy: bool,
}

/// Checks a lab name: `twl` + up to 5 of a-z, 0-9. No `-`, so that one lab's namespace prefix
/// (`<name>-`) can never match another lab's namespaces.
pub fn validate_name(name: &str) -> Result<(), PlanError> {
    let ok = name.starts_with(NAME_PREFIX)
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadName(name.to_string()))
    }
}

/// The prefix of every namespace this lab makes.
pub fn netns_prefix(name: &str) -> String {
    format!("{name}-")
}

/// The state directory of a lab.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from(STATE_ROOT).join(name)
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("built-in subnet constant parses")
}

/// The `n`th host address of `subnet` with the subnet's prefix length.
fn host(subnet: Ipv4Net, n: u32) -> Ipv4Net {
    let addr = Ipv4Addr::from(u32::from(subnet.network()) + n);
    Ipv4Net::new(addr, subnet.prefix_len()).expect("prefix from a valid subnet")
}

/// Derives the whole lab from the spec.
pub fn plan(spec: &LabSpec) -> Result<LabPlan, PlanError> {
    validate_name(&spec.name)?;
    if spec.nodes == 0 || spec.nodes > MAX_NODES {
        return Err(PlanError::BadNodeCount(spec.nodes));
    }
    if spec.pods_per_node == 0 || spec.pods_per_node > MAX_PODS_PER_NODE {
        return Err(PlanError::BadPodCount(spec.pods_per_node));
    }
    if spec.segments == 0 || spec.segments as usize > SEGMENT_SUBNETS.len() {
        return Err(PlanError::BadSegmentCount(spec.segments));
    }
    if !BLOCK_SIZES.contains(&spec.block_size) {
        return Err(PlanError::BadBlockSize(spec.block_size));
    }
    if spec.backend == BackendKind::Static && spec.store != StoreKind::Static {
        return Err(PlanError::StaticBackendNeedsStaticStore(
            spec.store.name().into(),
        ));
    }
    if spec.store == StoreKind::Static && spec.block_size != STATIC_BLOCK_SIZE {
        return Err(PlanError::StaticBlockSize(spec.block_size));
    }
    if spec.direct_routing && spec.backend != BackendKind::Vxlan {
        return Err(PlanError::DirectRoutingNeedsVxlan(
            spec.backend.name().into(),
        ));
    }
    if spec.tunnel_type.is_some() && spec.backend != BackendKind::Ovs {
        return Err(PlanError::TunnelTypeNeedsOvs(spec.backend.name().into()));
    }
    if spec.partial_checksums && spec.backend != BackendKind::Udp {
        return Err(PlanError::PartialChecksumsNeedUdp(
            spec.backend.name().into(),
        ));
    }
    if let Some(p) = &spec.agent_poll_interval {
        if !p.parse::<f64>().is_ok_and(|v| v > 0.0 && v.is_finite()) {
            return Err(PlanError::BadPollInterval(p.clone()));
        }
    }
    let (bgp, router_kind) = routing_choice(spec)?;
    check_identities(spec)?;
    let name = spec.name.as_str();
    let state_dir = state_dir(name);
    let cluster_cidr = net(CLUSTER_CIDR);

    let segments: Vec<SegmentPlan> = (0..spec.segments as usize)
        .map(|s| {
            let subnet = net(SEGMENT_SUBNETS[s]);
            // Segment 1 keeps the plain `-ul`; a second one is `-ul2`.
            let suffix = if s == 0 {
                String::new()
            } else {
                (s + 1).to_string()
            };
            SegmentPlan {
                netns: format!("{name}-ul{suffix}"),
                bridge: format!("{name}-br{suffix}"),
                subnet,
                gateway: host(subnet, 1).addr(),
            }
        })
        .collect();

    let router_netns = format!("{name}-rt");
    let outside_netns = format!("{name}-out");
    let outside_net = net(OUTSIDE_SUBNET);
    let segment_legs = segments
        .iter()
        .enumerate()
        .map(|(s, seg)| Veth {
            netns: router_netns.clone(),
            ifname: format!("eth{s}"),
            address: Some(host(seg.subnet, 1)),
            peer_netns: seg.netns.clone(),
            peer_ifname: format!("{name}-rt"),
            peer_address: None,
            peer_master: Some(seg.bridge.clone()),
        })
        .collect();
    let outside_leg = Veth {
        netns: router_netns.clone(),
        ifname: format!("eth{}", segments.len()),
        address: Some(host(outside_net, 1)),
        peer_netns: outside_netns.clone(),
        peer_ifname: "eth0".into(),
        peer_address: Some(host(outside_net, 10)),
        peer_master: None,
    };
    let daemon = router_kind.map(|(kind, protocol)| RouterDaemonPlan {
        kind,
        protocol,
        asn: ROUTER_AS,
        router_id: host(segments[0].subnet, 1).addr(),
        dir: state_dir.join("rt"),
        password: (protocol == RoutingProtocol::Bgp).then(|| ROUTER_MD5_KEY.to_string()),
    });
    let router = RouterPlan {
        netns: router_netns,
        segment_legs,
        outside_leg,
        daemon,
    };
    let outside = HostPlan {
        netns: outside_netns,
        ifname: "eth0".into(),
        address: host(outside_net, 10),
        gateway: host(outside_net, 1).addr(),
    };

    let mut nodes: Vec<NodePlan> = (1..=spec.nodes)
        .map(|i| {
            let pods = if spec.pods.is_empty() {
                spec.pods_per_node
            } else {
                0
            };
            node_plan(name, &state_dir, &segments, i, pods, spec.pod_wiring)
        })
        .collect();
    for (k, id) in spec.pods.iter().enumerate() {
        let count = nodes.len();
        let node = &mut nodes[k % count];
        let short = id.short();
        node.pods.push(PodPlan {
            node: node.index,
            index: node.pods.len() as u16 + 1,
            netns: format!("{name}-{short}"),
            container_id: format!("{name}-{short}"),
            ifname: POD_IFNAME.into(),
            port_mappings: Vec::new(),
            identity: Some(id.clone()),
            short,
        });
    }

    let etcd = (spec.store == StoreKind::Etcd).then(|| {
        let seg = &segments[0];
        let address = host(seg.subnet, STORE_HOST_INDEX);
        let netns = format!("{name}-st");
        EtcdPlan {
            uplink: Veth {
                netns: netns.clone(),
                ifname: "eth0".into(),
                address: Some(address),
                peer_netns: seg.netns.clone(),
                peer_ifname: format!("{name}-st"),
                peer_address: None,
                peer_master: Some(seg.bridge.clone()),
            },
            netns,
            address,
            client_url: format!("http://{}:{ETCD_CLIENT_PORT}", address.addr()),
            peer_url: format!("http://127.0.0.1:{ETCD_PEER_PORT}"),
            data_dir: state_dir.join("etcd"),
            log: state_dir.join("etcd.log"),
        }
    });
    let store = StorePlan {
        kind: spec.store,
        dir: (spec.store == StoreKind::Embedded).then(|| state_dir.join("store")),
        static_file: (spec.store == StoreKind::Static).then(|| state_dir.join("static.json")),
        etcd,
        block_size: spec.block_size,
        lease_ttl_seconds: spec.lease_ttl_seconds,
        agent_poll_interval: spec.agent_poll_interval.clone(),
    };

    Ok(LabPlan {
        name: name.to_string(),
        state_dir,
        cluster_cidr,
        segments,
        router,
        outside,
        store,
        nodes,
        backend: spec.backend,
        direct_routing: spec.direct_routing,
        ovs_tunnel: (spec.backend == BackendKind::Ovs)
            .then(|| spec.tunnel_type.unwrap_or_default()),
        partial_checksums: spec.partial_checksums,
        pods_per_node: spec.pods_per_node,
        pod_wiring: spec.pod_wiring,
        bgp,
        namespaces: spec.namespaces.clone(),
        policy: spec.policy,
    })
}

/// Pod identities must be unique, use Kubernetes' DNS-label names (they become namespace
/// and member names), and not collide with the lab's own member names.
fn check_identities(spec: &LabSpec) -> Result<(), PlanError> {
    if (!spec.pods.is_empty() || !spec.namespaces.is_empty()) && spec.store == StoreKind::Static {
        return Err(PlanError::IdentitiesNeedStore);
    }
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 20
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    let mut seen = std::collections::BTreeSet::new();
    for id in &spec.pods {
        let bad = |reason: String| PlanError::BadPod {
            pod: id.key(),
            reason,
        };
        if !label(&id.namespace) || !label(&id.name) {
            return Err(bad(
                "namespace and name must be 1-20 of a-z, 0-9 and '-' (not at either end)".into(),
            ));
        }
        if !seen.insert(id.short()) {
            return Err(bad(format!(
                "member name {} is used twice (pod {} of namespace {})",
                id.short(),
                id.name,
                id.namespace
            )));
        }
        // Members with a '-' are pods; a node's pods are `n<i>-p<j>`.
        let ns = id.namespace.as_bytes();
        if ns.len() > 1 && ns[0] == b'n' && ns[1..].iter().all(u8::is_ascii_digit) {
            return Err(bad(format!(
                "namespace {} reads as a node (n1): its member names would look like a node's pods (n1-p2)",
                id.namespace
            )));
        }
    }
    Ok(())
}

/// The routing options checked against the backend: the BGP plan (bgp only) and the
/// router's daemon with its protocol. Pure.
#[allow(clippy::type_complexity)]
fn routing_choice(
    spec: &LabSpec,
) -> Result<(Option<BgpPlan>, Option<(ExternalRouter, RoutingProtocol)>), PlanError> {
    let backend = spec.backend.name().to_string();
    let bgp = spec.backend == BackendKind::Bgp;
    if !bgp {
        if spec.route_reflectors > 0 {
            return Err(PlanError::NeedsBgp {
                option: "--route-reflectors",
                backend,
            });
        }
        if spec.as_per_node {
            return Err(PlanError::NeedsBgp {
                option: "--as-per-node",
                backend,
            });
        }
    }
    match spec.backend {
        BackendKind::Bgp => {
            if spec.store == StoreKind::Static {
                return Err(PlanError::BgpNeedsStore);
            }
            if spec.route_reflectors > spec.nodes {
                return Err(PlanError::TooManyReflectors {
                    asked: spec.route_reflectors,
                    nodes: spec.nodes,
                });
            }
            if spec.route_reflectors > 0 && spec.as_per_node {
                return Err(PlanError::ReflectorsWithAsPerNode);
            }
            // Across segments the router is the nodes' ToR: it must speak BGP.
            let router = spec
                .external_router
                .or((spec.segments > 1).then_some(ExternalRouter::Bird));
            Ok((
                Some(BgpPlan {
                    route_reflectors: spec.route_reflectors,
                    as_per_node: spec.as_per_node,
                }),
                router.map(|r| (r, RoutingProtocol::Bgp)),
            ))
        }
        BackendKind::Rip => match spec.external_router {
            Some(ExternalRouter::Bird) => Err(PlanError::RipRouterIsFrr),
            None if spec.segments > 1 => Err(PlanError::RipSegmentsNeedRouter),
            r => Ok((None, r.map(|r| (r, RoutingProtocol::Rip)))),
        },
        _ if spec.external_router.is_some() => Err(PlanError::ExternalRouterNeedsRouting(backend)),
        _ => Ok((None, None)),
    }
}

/// Node `i` of lab `name`: on segment `(i - 1) % segments`, underlay host `.(10 + i)`.
fn node_plan(
    name: &str,
    state_dir: &std::path::Path,
    segments: &[SegmentPlan],
    i: u16,
    pods_per_node: u16,
    pod_wiring: PodWiring,
) -> NodePlan {
    let segment = (i as usize - 1) % segments.len();
    let seg = &segments[segment];
    let netns = format!("{name}-n{i}");
    let address = host(seg.subnet, 10 + i as u32);
    let dir = state_dir.join(format!("n{i}"));
    let pods = (1..=pods_per_node)
        .map(|j| PodPlan {
            short: format!("n{i}-p{j}"),
            node: i,
            index: j,
            netns: format!("{name}-n{i}-p{j}"),
            container_id: format!("{name}-n{i}-p{j}"),
            ifname: POD_IFNAME.into(),
            port_mappings: if j == 1 {
                first_pod_port_mappings()
            } else {
                Vec::new()
            },
            identity: None,
        })
        .collect();
    NodePlan {
        short: format!("n{i}"),
        index: i,
        uplink: Veth {
            netns: netns.clone(),
            ifname: "eth0".into(),
            address: Some(address),
            peer_netns: seg.netns.clone(),
            peer_ifname: format!("{name}-n{i}"),
            peer_address: None,
            peer_master: Some(seg.bridge.clone()),
        },
        netns,
        segment,
        address,
        gateway: seg.gateway,
        bridge: (pod_wiring == PodWiring::Bridge).then(|| NODE_BRIDGE.to_string()),
        conflist: dir.join("10-twill.conflist"),
        ipam_dir: dir.join("ipam"),
        handoff_file: dir.join("node.json"),
        agent_state_dir: dir.join("agent"),
        agent_log: dir.join("twilld.log"),
        dir,
        pods,
    }
}

/// Whether a /readyz body names `peer` as off this node's segment (host-gw's warning).
pub fn reports_off_segment(readyz: &str, peer: &str, peer_ip: Ipv4Addr) -> bool {
    let who = format!("{peer} ({peer_ip})");
    readyz
        .lines()
        .any(|l| l.contains(&who) && l.contains(OFF_SEGMENT_TEXT))
}

/// The destinations in `ip -j route show` output; unreadable output gives none.
pub fn parse_route_dsts(text: &str) -> Vec<Ipv4Net> {
    #[derive(Deserialize)]
    struct Route {
        dst: String,
    }
    serde_json::from_str::<Vec<Route>>(text)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            r.dst
                .parse()
                .ok()
                .or_else(|| r.dst.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
        })
        .collect()
}

/// What the router's kernel lacks: a route to every block of every node (its daemon
/// learned them from the nodes). Pure; empty when all is in place.
pub fn router_gaps(
    nodes: &[NodePlan],
    blocks: &std::collections::HashMap<String, Vec<Ipv4Net>>,
    router_routes: &[Ipv4Net],
) -> Vec<String> {
    nodes
        .iter()
        .flat_map(|n| {
            blocks
                .get(&n.short)
                .into_iter()
                .flatten()
                .filter(|b| !router_routes.contains(b))
                .map(|b| format!("the router has no route to {b} of {}", n.short))
        })
        .collect()
}

/// Pod 1 of every node publishes a TCP and a UDP port on the node, like a NodePort/hostPort.
pub fn first_pod_port_mappings() -> Vec<PortMapping> {
    vec![
        PortMapping {
            host_port: HOST_PORT_TCP,
            container_port: CONTAINER_PORT_TCP,
            protocol: "tcp".into(),
        },
        PortMapping {
            host_port: HOST_PORT_UDP,
            container_port: CONTAINER_PORT_UDP,
            protocol: "udp".into(),
        },
    ]
}

impl LabPlan {
    /// The infrastructure namespaces (segments, router, outside, nodes) in creation order;
    /// pods come after, made one by one as a runtime would.
    pub fn infra_netns(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.segments.iter().map(|s| s.netns.as_str()).collect();
        v.push(&self.router.netns);
        v.push(&self.outside.netns);
        v.extend(self.store.etcd.iter().map(|e| e.netns.as_str()));
        v.extend(self.nodes.iter().map(|n| n.netns.as_str()));
        v
    }

    /// Every namespace of the lab, pods last.
    pub fn all_netns(&self) -> Vec<&str> {
        let mut v = self.infra_netns();
        v.extend(self.pods().map(|p| p.netns.as_str()));
        v
    }

    /// Every veth pair the builder makes (pod veths are twill-cni's).
    pub fn veths(&self) -> Vec<&Veth> {
        let mut v: Vec<&Veth> = self.router.segment_legs.iter().collect();
        v.push(&self.router.outside_leg);
        v.extend(self.store.etcd.iter().map(|e| &e.uplink));
        v.extend(self.nodes.iter().map(|n| &n.uplink));
        v
    }

    /// The argument list of node `node`'s agent (after `ip netns exec <node ns> twilld`).
    pub fn agent_args(&self, node: &NodePlan) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--node-name".into(),
            node.short.clone(),
            "--store".into(),
            self.store.kind.name().into(),
        ];
        if let Some(dir) = &self.store.dir {
            a.extend(["--store-dir".into(), dir.display().to_string()]);
        }
        if let Some(e) = &self.store.etcd {
            a.extend(["--etcd-endpoints".into(), e.client_url.clone()]);
        }
        if let Some(f) = &self.store.static_file {
            a.extend(["--static-file".into(), f.display().to_string()]);
        }
        let path = |p: &PathBuf| p.display().to_string();
        a.extend([
            "--handoff-file".into(),
            path(&node.handoff_file),
            "--state-dir".into(),
            path(&node.agent_state_dir),
            "--cni-data-dir".into(),
            path(&node.ipam_dir),
            "--cni-network".into(),
            CNI_NETWORK.into(),
            "--listen".into(),
            AGENT_LISTEN.into(),
            "--ip-autodetection".into(),
            match self.ovs_tunnel {
                // The node IP is on br-phy (netdev datapath): twilld's uplink is br-phy.
                Some(_) => format!("interface={OVS_PHY_BRIDGE}"),
                None => AGENT_IP_AUTODETECTION.into(),
            },
        ]);
        if self.ovs_tunnel.is_some() {
            a.extend([
                "--ovs-rundir".into(),
                crate::ovs::OvsPaths::of(node).dir.display().to_string(),
            ]);
        }
        if let Some(p) = &self.store.agent_poll_interval {
            a.extend(["--poll-interval-seconds".into(), p.clone()]);
        }
        if self.policy {
            a.extend(["--policy".into(), "true".into()]);
        }
        a
    }

    /// The environment that points `twill` at this lab's store (what `store_args.rs` of
    /// the CLI reads): `twill lab exec NODE -- twill node status` then reads the lab's
    /// store, as the agents do. Pure.
    pub fn store_env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![(ENV_STORE, self.store.kind.name().to_string())];
        if let Some(dir) = &self.store.dir {
            v.push((ENV_STORE_DIR, dir.display().to_string()));
        }
        if let Some(e) = &self.store.etcd {
            v.push((ENV_ETCD_ENDPOINTS, e.client_url.clone()));
        }
        if let Some(f) = &self.store.static_file {
            v.push((ENV_STATIC_FILE, f.display().to_string()));
        }
        v
    }

    /// The etcd member's argument list (after `ip netns exec <store ns> etcd`): one member,
    /// the fast timings the runbook measured (healthy in well under a second).
    pub fn etcd_args(&self) -> Option<Vec<String>> {
        let e = self.store.etcd.as_ref()?;
        Some(vec![
            "--name".into(),
            self.name.clone(),
            "--data-dir".into(),
            e.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            e.client_url.clone(),
            "--advertise-client-urls".into(),
            e.client_url.clone(),
            "--listen-peer-urls".into(),
            e.peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            e.peer_url.clone(),
            "--initial-cluster".into(),
            format!("{}={}", self.name, e.peer_url),
            "--initial-cluster-state".into(),
            "new".into(),
            "--heartbeat-interval=10".into(),
            "--election-timeout=100".into(),
        ])
    }

    /// The next node `add-node` makes: the next free index, on the segment that index
    /// alternates to, with the lab's pods per node.
    pub fn next_node(&self) -> Result<NodePlan, PlanError> {
        let i = self.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
        if i > MAX_NODES {
            return Err(PlanError::BadNodeCount(i));
        }
        Ok(node_plan(
            &self.name,
            &self.state_dir,
            &self.segments,
            i,
            self.pods_per_node.max(1),
            self.pod_wiring,
        ))
    }

    /// The block the static file gives node `index`: 10.244.<index>.0/24.
    pub fn static_block(&self, index: u16) -> Ipv4Net {
        let base = u32::from(self.cluster_cidr.network()) + ((index as u32) << 8);
        Ipv4Net::new(Ipv4Addr::from(base), STATIC_BLOCK_SIZE).expect("a /24")
    }

    /// The network config's backend: the kind, with directRouting if asked for.
    pub fn backend_spec(&self) -> twill_api::resources::BackendSpec {
        if let Some(tunnel_type) = self.ovs_tunnel {
            return twill_api::resources::BackendSpec::Ovs(twill_api::backend::OvsOptions {
                tunnel_type,
            });
        }
        if self.backend == BackendKind::Udp {
            return twill_api::resources::BackendSpec::Udp(twill_api::resources::UdpOptions {
                partial_checksums: self.partial_checksums,
                ..Default::default()
            });
        }
        let options = twill_api::resources::VxlanOptions {
            direct_routing: self.direct_routing,
            ..Default::default()
        };
        // plan() refuses directRouting on any kind but vxlan.
        twill_api::resources::BackendSpec::with_options(self.backend, Some(options))
            .unwrap_or_else(|_| self.backend.spec())
    }

    /// The backend as the network config spells it: a name, or an object with options.
    pub fn backend_json(&self) -> serde_json::Value {
        serde_json::to_value(self.backend_spec()).expect("a backend serializes")
    }

    /// Node `node`'s AS under the lab's BGP plan (None without BGP).
    pub fn node_asn(&self, node: &NodePlan) -> Option<u32> {
        let bgp = self.bgp.as_ref()?;
        Some(if bgp.as_per_node {
            AS_PER_NODE_BASE + node.index as u32
        } else {
            NODE_AS
        })
    }

    /// The control socket of node `node`'s BGP speaker (twilld's `<state-dir>/bgp.sock`),
    /// for `twill bgp neighbors|rib --socket`.
    pub fn bgp_socket(&self, node: &NodePlan) -> PathBuf {
        node.agent_state_dir.join(BGP_SOCKET)
    }

    /// Whether `node` is one of the route reflectors (the first `--route-reflectors`
    /// nodes; a node added later never is).
    pub fn is_reflector(&self, node: &NodePlan) -> bool {
        self.bgp
            .as_ref()
            .is_some_and(|b| node.index <= b.route_reflectors)
    }

    /// The outside host reaches pods by pod IP: the router's daemon learned the blocks.
    /// Otherwise the router knows no pod route and only host ports reach pods.
    pub fn outside_reaches_pods(&self) -> bool {
        self.router.daemon.is_some()
    }

    /// The kernel route protocols of the routes the backend gives a node to other nodes'
    /// blocks: the agent's own (84; the rip backend's routes too), and what the embedded
    /// BGP speaker learned (`proto bgp`).
    pub fn backend_route_protos(&self) -> &'static [u8] {
        match self.backend {
            BackendKind::Bgp => &[TWILL_PROTO, RTPROT_BGP],
            _ => &[TWILL_PROTO],
        }
    }

    /// How node `from` reaches node `to`'s pods under this lab's backend. Pure.
    pub fn peer_path(&self, from: &NodePlan, to: &NodePlan) -> PeerPath {
        let same_segment = from.segment == to.segment;
        match self.backend {
            BackendKind::None => PeerPath::Blocked {
                reason: "backend none programs no routes between nodes".into(),
                reported: false,
            },
            BackendKind::HostGw if !same_segment => PeerPath::Blocked {
                reason: format!(
                    "host-gw needs a shared segment: {} reports {} off-segment in /readyz",
                    from.short, to.short
                ),
                reported: true,
            },
            _ => PeerPath::Routed,
        }
    }

    /// What is missing for every node to reach its peers as the backend promises. Inputs:
    /// each node's blocks (from the store), each node's Twill routes (their destinations)
    /// and its /readyz body. Pure; empty when all is in place.
    pub fn peering_gaps(
        &self,
        blocks: &std::collections::HashMap<String, Vec<Ipv4Net>>,
        routes: &std::collections::HashMap<String, Vec<Ipv4Net>>,
        readyz: &std::collections::HashMap<String, String>,
    ) -> Vec<String> {
        let mut gaps = Vec::new();
        for from in &self.nodes {
            for to in self.nodes.iter().filter(|n| n.short != from.short) {
                match self.peer_path(from, to) {
                    PeerPath::Routed => {
                        let theirs = blocks.get(&to.short).map(Vec::as_slice).unwrap_or(&[]);
                        if theirs.is_empty() {
                            gaps.push(format!("{} has published no blocks yet", to.short));
                        }
                        let have = routes.get(&from.short).map(Vec::as_slice).unwrap_or(&[]);
                        for b in theirs.iter().filter(|b| !have.contains(b)) {
                            gaps.push(format!(
                                "{} has no route to {b} of {}",
                                from.short, to.short
                            ));
                        }
                    }
                    PeerPath::Blocked { reported: true, .. } => {
                        let body = readyz.get(&from.short).map(String::as_str).unwrap_or("");
                        if !reports_off_segment(body, &to.short, to.address.addr()) {
                            gaps.push(format!(
                                "{}'s /readyz does not (yet) report {} off-segment",
                                from.short, to.short
                            ));
                        }
                    }
                    PeerPath::Blocked { .. } => {}
                }
            }
        }
        gaps
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodPlan> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    pub fn node(&self, index: u16) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.index == index)
    }

    /// Resolves a command-line member name (`n1`, `n1-p2`, `rt`, `out`, `ul`, `ul2`) to its
    /// namespace.
    pub fn target_netns(&self, target: &str) -> Result<&str, PlanError> {
        let unknown = || PlanError::UnknownTarget(target.to_string());
        match target {
            "rt" => return Ok(&self.router.netns),
            "out" => return Ok(&self.outside.netns),
            "st" => {
                return self
                    .store
                    .etcd
                    .as_ref()
                    .map(|e| e.netns.as_str())
                    .ok_or_else(unknown)
            }
            _ => {}
        }
        if let Some(seg) = self
            .segments
            .iter()
            .find(|s| s.netns.strip_prefix(&netns_prefix(&self.name)) == Some(target))
        {
            return Ok(&seg.netns);
        }
        if let Some(n) = self.nodes.iter().find(|n| n.short == target) {
            return Ok(&n.netns);
        }
        self.pods()
            .find(|p| p.short == target)
            .map(|p| p.netns.as_str())
            .ok_or_else(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nodes: u16, pods: u16, segments: u8) -> LabSpec {
        LabSpec {
            name: "twllab".into(),
            nodes,
            pods_per_node: pods,
            segments,
            ..LabSpec::default()
        }
    }

    #[test]
    fn names_are_checked() {
        for ok in ["twl", "twllab", "twl12345", "twla1"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "lab",
            "twl-ab",
            "twlLab",
            "twl123456",
            "",
            "tw",
            "twl_a",
            "twl a",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let err = plan(&LabSpec {
            name: "mylab".into(),
            ..LabSpec::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("must start with \"twl\""), "{err}");
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(
            plan(&spec(0, 1, 1)).unwrap_err(),
            PlanError::BadNodeCount(0)
        );
        assert_eq!(
            plan(&spec(201, 1, 1)).unwrap_err(),
            PlanError::BadNodeCount(201)
        );
        assert_eq!(plan(&spec(1, 0, 1)).unwrap_err(), PlanError::BadPodCount(0));
        assert_eq!(
            plan(&spec(1, 251, 1)).unwrap_err(),
            PlanError::BadPodCount(251)
        );
        assert_eq!(
            plan(&spec(1, 1, 0)).unwrap_err(),
            PlanError::BadSegmentCount(0)
        );
        assert_eq!(
            plan(&spec(1, 1, 3)).unwrap_err(),
            PlanError::BadSegmentCount(3)
        );
        assert!(plan(&spec(MAX_NODES, MAX_PODS_PER_NODE, 2)).is_ok());
        let bs = |block_size| LabSpec {
            block_size,
            ..spec(1, 1, 1)
        };
        assert_eq!(plan(&bs(16)).unwrap_err(), PlanError::BadBlockSize(16));
        assert_eq!(plan(&bs(29)).unwrap_err(), PlanError::BadBlockSize(29));
        assert!(plan(&bs(26)).is_ok());
        let poll = |p: &str| LabSpec {
            agent_poll_interval: Some(p.into()),
            ..spec(1, 1, 1)
        };
        assert!(plan(&poll("0.5")).is_ok());
        for bad in ["0", "-1", "x", "inf"] {
            assert_eq!(
                plan(&poll(bad)).unwrap_err(),
                PlanError::BadPollInterval(bad.into())
            );
        }
    }

    #[test]
    fn one_node_lab_matches_the_documented_topology() {
        let p = plan(&spec(1, 3, 1)).unwrap();
        assert_eq!(p.state_dir, PathBuf::from("/run/twllab"));
        assert_eq!(p.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(p.segments.len(), 1);
        let ul = &p.segments[0];
        assert_eq!(
            (ul.netns.as_str(), ul.bridge.as_str()),
            ("twllab-ul", "twllab-br")
        );
        assert_eq!(ul.subnet.to_string(), "192.0.2.0/24");
        assert_eq!(ul.gateway, Ipv4Addr::new(192, 0, 2, 1));

        assert_eq!(p.router.netns, "twllab-rt");
        let leg = &p.router.segment_legs[0];
        assert_eq!(leg.address.unwrap().to_string(), "192.0.2.1/24");
        assert_eq!(
            (leg.peer_netns.as_str(), leg.peer_ifname.as_str()),
            ("twllab-ul", "twllab-rt")
        );
        assert_eq!(leg.peer_master.as_deref(), Some("twllab-br"));
        let out = &p.router.outside_leg;
        assert_eq!(out.address.unwrap().to_string(), "203.0.113.1/24");
        assert_eq!(out.peer_address.unwrap().to_string(), "203.0.113.10/24");
        assert_eq!(out.peer_netns, "twllab-out");
        assert_eq!(p.outside.address.to_string(), "203.0.113.10/24");
        assert_eq!(p.outside.gateway, Ipv4Addr::new(203, 0, 113, 1));

        let n = &p.nodes[0];
        assert_eq!((n.short.as_str(), n.netns.as_str()), ("n1", "twllab-n1"));
        assert_eq!(n.address.to_string(), "192.0.2.11/24");
        assert_eq!(n.gateway, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(n.uplink.ifname, "eth0");
        assert_eq!(n.uplink.peer_ifname, "twllab-n1");
        assert_eq!(n.uplink.peer_master.as_deref(), Some("twllab-br"));
        assert_eq!(n.bridge.as_deref(), Some("twl0"));
        assert_eq!(n.handoff_file, PathBuf::from("/run/twllab/n1/node.json"));
        assert_eq!(n.agent_state_dir, PathBuf::from("/run/twllab/n1/agent"));
        assert_eq!(n.agent_log, PathBuf::from("/run/twllab/n1/twilld.log"));
        // The embedded store by default: one folder shared by every node, no store host.
        assert_eq!(p.store.kind, StoreKind::Embedded);
        assert_eq!(p.store.dir, Some(PathBuf::from("/run/twllab/store")));
        assert!(p.store.etcd.is_none());
        assert_eq!(
            p.agent_args(n).join(" "),
            "--node-name n1 --store embedded --store-dir /run/twllab/store \
             --handoff-file /run/twllab/n1/node.json --state-dir /run/twllab/n1/agent \
             --cni-data-dir /run/twllab/n1/ipam --cni-network twill --listen 127.0.0.1:9099 \
             --ip-autodetection interface=eth0"
        );
        assert!(p.etcd_args().is_none());
        assert_eq!(
            p.store_env(),
            [
                (ENV_STORE, "embedded".to_string()),
                (ENV_STORE_DIR, "/run/twllab/store".to_string())
            ]
        );
        assert_eq!(
            n.conflist,
            PathBuf::from("/run/twllab/n1/10-twill.conflist")
        );
        assert_eq!(n.ipam_dir, PathBuf::from("/run/twllab/n1/ipam"));

        let pods: Vec<_> = p.pods().map(|p| p.netns.as_str()).collect();
        assert_eq!(pods, ["twllab-n1-p1", "twllab-n1-p2", "twllab-n1-p3"]);
        assert_eq!(n.pods[0].port_mappings, first_pod_port_mappings());
        assert!(n.pods[1].port_mappings.is_empty() && n.pods[2].port_mappings.is_empty());
        assert_eq!(n.pods[1].container_id, "twllab-n1-p2");
        assert_eq!(n.pods[1].ifname, "eth0");

        assert_eq!(
            p.all_netns(),
            [
                "twllab-ul",
                "twllab-rt",
                "twllab-out",
                "twllab-n1",
                "twllab-n1-p1",
                "twllab-n1-p2",
                "twllab-n1-p3"
            ]
        );
        assert_eq!(p.veths().len(), 3);
    }

    #[test]
    fn port_mappings_serialize_as_cni_spells_them() {
        let v = serde_json::to_value(first_pod_port_mappings()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"},
                {"hostPort": 30053, "containerPort": 5353, "protocol": "udp"}
            ])
        );
    }

    #[test]
    fn n_nodes_get_distinct_addresses_and_subnets() {
        let p = plan(&LabSpec {
            name: "twl12345".into(),
            ..spec(MAX_NODES, 2, 1)
        })
        .unwrap();
        let mut addrs = std::collections::HashSet::new();
        let mut dirs = std::collections::HashSet::new();
        for n in &p.nodes {
            assert!(addrs.insert(n.address.addr()), "duplicate {}", n.address);
            assert!(dirs.insert(n.handoff_file.clone()));
            assert!(p.segments[n.segment].subnet.contains(&n.address.addr()));
            assert_ne!(n.address.addr(), p.segments[n.segment].gateway);
            assert_ne!(n.address.addr(), n.address.broadcast());
        }
        assert_eq!(p.nodes[199].address.to_string(), "192.0.2.210/24");
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        // The longest name with the most nodes and segments.
        let p = plan(&LabSpec {
            name: "twl12345".into(),
            ..spec(MAX_NODES, 1, 2)
        })
        .unwrap();
        let mut names: Vec<&str> = vec![NODE_BRIDGE, POD_IFNAME];
        for v in p.veths() {
            names.push(&v.ifname);
            names.push(&v.peer_ifname);
            names.extend(v.peer_master.as_deref());
        }
        names.extend(p.segments.iter().map(|s| s.bridge.as_str()));
        for n in names {
            assert!(n.len() <= MAX_IFNAME_LEN, "{n} is {} bytes", n.len());
        }
        // Every namespace carries the lab's prefix, so `down` can find leftovers by name.
        for ns in p.all_netns() {
            assert!(ns.starts_with("twl12345-"), "{ns}");
        }
    }

    #[test]
    fn two_segments_alternate_nodes_and_the_router_joins_both() {
        let p = plan(&spec(4, 1, 2)).unwrap();
        assert_eq!(p.segments[1].netns, "twllab-ul2");
        assert_eq!(p.segments[1].subnet.to_string(), "198.51.100.0/24");
        assert_eq!(p.segments[1].gateway, Ipv4Addr::new(198, 51, 100, 1));
        let segs: Vec<usize> = p.nodes.iter().map(|n| n.segment).collect();
        assert_eq!(segs, [0, 1, 0, 1]);
        assert_eq!(p.nodes[1].address.to_string(), "198.51.100.12/24");
        assert_eq!(p.nodes[1].gateway, Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(p.nodes[1].uplink.peer_netns, "twllab-ul2");
        assert_eq!(p.router.segment_legs.len(), 2);
        assert_eq!(p.router.segment_legs[1].ifname, "eth1");
        assert_eq!(
            p.router.segment_legs[1].address.unwrap().to_string(),
            "198.51.100.1/24"
        );
        assert_eq!(p.router.outside_leg.ifname, "eth2");
    }

    #[test]
    fn an_etcd_lab_has_a_store_host_on_the_first_segment() {
        let p = plan(&LabSpec {
            store: StoreKind::Etcd,
            block_size: 26,
            agent_poll_interval: Some("1".into()),
            ..spec(2, 1, 2)
        })
        .unwrap();
        assert_eq!(p.store.dir, None);
        let e = p.store.etcd.as_ref().unwrap();
        assert_eq!(e.netns, "twllab-st");
        assert_eq!(e.address.to_string(), "192.0.2.2/24");
        assert_eq!(e.client_url, "http://192.0.2.2:2379");
        assert_eq!(e.uplink.peer_master.as_deref(), Some("twllab-br"));
        assert_eq!(e.data_dir, PathBuf::from("/run/twllab/etcd"));
        assert_eq!(p.target_netns("st").unwrap(), "twllab-st");
        assert!(p.infra_netns().contains(&"twllab-st"));
        assert!(p.veths().iter().any(|v| v.netns == "twllab-st"));
        let args = p.agent_args(&p.nodes[1]).join(" ");
        assert!(
            args.starts_with("--node-name n2 --store etcd --etcd-endpoints http://192.0.2.2:2379 "),
            "{args}"
        );
        assert!(args.ends_with("--poll-interval-seconds 1"), "{args}");
        let etcd = p.etcd_args().unwrap().join(" ");
        assert!(
            etcd.contains("--listen-client-urls http://192.0.2.2:2379")
                && etcd.contains("--initial-cluster twllab=http://127.0.0.1:2380")
                && etcd.contains("--data-dir /run/twllab/etcd"),
            "{etcd}"
        );
        assert_eq!(
            p.store_env(),
            [
                (ENV_STORE, "etcd".to_string()),
                (ENV_ETCD_ENDPOINTS, "http://192.0.2.2:2379".to_string())
            ]
        );
        // Without etcd there is no `st` member.
        let plain = plan(&spec(1, 1, 1)).unwrap();
        assert!(plain.target_netns("st").is_err());
    }

    #[test]
    fn targets_resolve_to_namespaces() {
        let p = plan(&spec(2, 2, 2)).unwrap();
        assert_eq!(p.target_netns("n1").unwrap(), "twllab-n1");
        assert_eq!(p.target_netns("n2-p2").unwrap(), "twllab-n2-p2");
        assert_eq!(p.target_netns("rt").unwrap(), "twllab-rt");
        assert_eq!(p.target_netns("out").unwrap(), "twllab-out");
        assert_eq!(p.target_netns("ul").unwrap(), "twllab-ul");
        assert_eq!(p.target_netns("ul2").unwrap(), "twllab-ul2");
        for bad in ["n3", "n1-p3", "twllab-n1", "x", ""] {
            assert_eq!(
                p.target_netns(bad),
                Err(PlanError::UnknownTarget(bad.into()))
            );
        }
    }

    #[test]
    fn backends_and_stores_are_checked_and_paths_follow_the_backend() {
        let with = |backend, store, direct_routing| LabSpec {
            backend,
            store,
            direct_routing,
            ..spec(3, 1, 2)
        };
        assert_eq!(
            plan(&with(BackendKind::Static, StoreKind::Etcd, false)).unwrap_err(),
            PlanError::StaticBackendNeedsStaticStore("etcd".into())
        );
        assert_eq!(
            plan(&with(BackendKind::HostGw, StoreKind::Embedded, true)).unwrap_err(),
            PlanError::DirectRoutingNeedsVxlan("host-gw".into())
        );
        assert!(plan(&with(BackendKind::Udp, StoreKind::Embedded, false)).is_ok());
        assert_eq!(
            plan(&LabSpec {
                block_size: 26,
                ..with(BackendKind::Static, StoreKind::Static, false)
            })
            .unwrap_err(),
            PlanError::StaticBlockSize(26)
        );
        let st = plan(&with(BackendKind::Static, StoreKind::Static, false)).unwrap();
        assert_eq!(
            st.store.static_file,
            Some(PathBuf::from("/run/twllab/static.json"))
        );
        assert!(st.store.dir.is_none() && st.store.etcd.is_none());
        let args = st.agent_args(&st.nodes[0]).join(" ");
        assert!(
            args.starts_with(
                "--node-name n1 --store static --static-file /run/twllab/static.json "
            ),
            "{args}"
        );
        assert_eq!(st.static_block(3).to_string(), "10.244.3.0/24");
        assert_eq!(st.backend_json(), serde_json::json!("static"));

        // n1, n3 on segment 1; n2 on segment 2.
        let hg = plan(&with(BackendKind::HostGw, StoreKind::Embedded, false)).unwrap();
        let (n1, n2, n3) = (&hg.nodes[0], &hg.nodes[1], &hg.nodes[2]);
        assert_eq!(hg.peer_path(n1, n3), PeerPath::Routed);
        assert_eq!(
            hg.peer_path(n1, n2),
            PeerPath::Blocked {
                reason: "host-gw needs a shared segment: n1 reports n2 off-segment in /readyz"
                    .into(),
                reported: true
            }
        );
        let vx = plan(&with(BackendKind::Vxlan, StoreKind::Embedded, true)).unwrap();
        assert_eq!(
            vx.backend_json(),
            serde_json::json!({"type": "vxlan", "directRouting": true})
        );
        assert_eq!(vx.peer_path(&vx.nodes[0], &vx.nodes[1]), PeerPath::Routed);
        // --partial-checksums: udp's option in the network config; refused elsewhere.
        let udp = |partial_checksums| LabSpec {
            backend: BackendKind::Udp,
            partial_checksums,
            ..spec(2, 1, 1)
        };
        assert_eq!(
            plan(&udp(true)).unwrap().backend_json(),
            serde_json::json!({"type": "udp", "partialChecksums": true})
        );
        assert_eq!(
            plan(&udp(false)).unwrap().backend_json(),
            serde_json::json!("udp")
        );
        let err = plan(&LabSpec {
            backend: BackendKind::Vxlan,
            ..udp(true)
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("--partial-checksums is an option of --backend udp, not vxlan"),
            "{err}"
        );
        let none = plan(&spec(2, 1, 1)).unwrap();
        assert!(matches!(
            none.peer_path(&none.nodes[0], &none.nodes[1]),
            PeerPath::Blocked {
                reported: false,
                ..
            }
        ));
    }

    #[test]
    fn peering_gaps_name_what_is_missing() {
        use std::collections::HashMap;
        let p = plan(&LabSpec {
            backend: BackendKind::HostGw,
            ..spec(3, 1, 2)
        })
        .unwrap();
        let b = |s: &str| -> Ipv4Net { s.parse().unwrap() };
        let blocks: HashMap<String, Vec<Ipv4Net>> = [
            ("n1".to_string(), vec![b("10.244.1.0/24")]),
            ("n2".to_string(), vec![b("10.244.2.0/24")]),
            ("n3".to_string(), vec![b("10.244.3.0/24")]),
        ]
        .into();
        let mut routes: HashMap<String, Vec<Ipv4Net>> = [
            ("n1".to_string(), vec![b("10.244.3.0/24")]),
            ("n3".to_string(), vec![]),
        ]
        .into();
        let warn = |peer: &str, ip: &str| {
            format!("ready, with warnings:\nhost-gw: {peer} ({ip}) is not on this node's segment 192.0.2.0/24: ...\n")
        };
        let mut readyz: HashMap<String, String> = [
            ("n1".to_string(), warn("n2", "198.51.100.12")),
            (
                "n2".to_string(),
                warn("n1", "192.0.2.11") + &warn("n3", "192.0.2.13"),
            ),
            ("n3".to_string(), "ready\n".to_string()),
        ]
        .into();
        assert_eq!(
            p.peering_gaps(&blocks, &routes, &readyz),
            [
                "n3 has no route to 10.244.1.0/24 of n1",
                "n3's /readyz does not (yet) report n2 off-segment"
            ]
        );
        routes.insert("n3".into(), vec![b("10.244.1.0/24")]);
        readyz.insert("n3".into(), warn("n2", "198.51.100.12"));
        assert!(p.peering_gaps(&blocks, &routes, &readyz).is_empty());
        // The peer's name alone is not enough: n20 must not count as n2.
        assert!(!reports_off_segment(
            &warn("n20", "198.51.100.12"),
            "n2",
            Ipv4Addr::new(198, 51, 100, 12)
        ));
    }

    #[test]
    fn the_next_node_alternates_segments_and_route_json_is_read() {
        let mut p = plan(&spec(3, 2, 2)).unwrap();
        let n4 = p.next_node().unwrap();
        assert_eq!((n4.short.as_str(), n4.segment), ("n4", 1));
        assert_eq!(n4.address.to_string(), "198.51.100.14/24");
        assert_eq!(n4.pods.len(), 2);
        p.nodes.remove(1);
        assert_eq!(p.next_node().unwrap().short, "n4");
        let text = r#"[{"dst":"10.244.3.0/24","gateway":"192.0.2.13","dev":"eth0"},
            {"dst":"10.244.9.0","dev":"twl.1"},{"dst":"default"}]"#;
        assert_eq!(
            parse_route_dsts(text),
            [
                "10.244.3.0/24".parse::<Ipv4Net>().unwrap(),
                "10.244.9.0/32".parse().unwrap()
            ]
        );
        assert!(parse_route_dsts("").is_empty());
    }

    #[test]
    fn plan_round_trips_through_json() {
        let p = plan(&spec(2, 2, 1)).unwrap();
        let back: LabPlan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}

/// TunnelType has no serde Serialize in the API (a kind is written by name): the plan
/// stores it by its name.
mod tunnel_serde {
    use super::TunnelType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<TunnelType>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(t.name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TunnelType>, D::Error> {
        Option::<TunnelType>::deserialize(d)
    }
}
