//! Calico mode in the lab, pure: the BGP resources the lab writes into the store before any
//! agent starts ([`bgp_configuration`], [`node_spec`], [`bgp_peers`]), and the external
//! router's daemons ([`router_daemons`]) with their configuration files ([`router_config`]):
//! BIRD 2 or FRR (zebra + bgpd) peering eBGP with every node from [`ROUTER_AS`], FRR
//! (zebra + ripd) on every leg for RIP. The I/O (writing keys and files, starting and
//! stopping the daemons) is in [`crate::daemons`].
//!
//! The story the resources tell, as calicoctl's users write it:
//! - one `BGPConfiguration` named `default`: the node-to-node mesh in AS 64512, or, with
//!   route reflectors, the mesh off;
//! - per node a `Node` resource with labels `segment: "1"|"2"` and, on the first K nodes,
//!   `route-reflector: "true"` and `spec.bgp.routeReflectorClusterID`; with `--as-per-node`
//!   each node's own `spec.bgp.asNumber`;
//! - `BGPPeer`s: every node peers with the reflectors (`peerSelector`); the nodes of each
//!   segment peer with the router's address on that segment (`peerIP`, `nodeSelector`),
//!   with a TCP MD5 key.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use twill_api::bgp::{BgpConfiguration, BgpPeer, NodeBgp, Password};
use twill_api::resources::NodeSpec;

use crate::plan::{
    ExternalRouter, LabPlan, NodePlan, RouterDaemonPlan, RoutingProtocol,
    BGP_CONNECT_RETRY_SECONDS, BGP_HOLD_SECONDS, BGP_KEEPALIVE_SECONDS, LABEL_ROUTE_REFLECTOR,
    LABEL_SEGMENT, NODE_AS, RR_CLUSTER_ID,
};

/// The BGPPeer that makes every node peer with the route reflectors.
pub const PEER_REFLECTORS: &str = "peer-with-route-reflectors";
/// The selector of the reflectors (Calico's docs spell it so).
pub const REFLECTOR_SELECTOR: &str = "route-reflector == 'true'";

/// The label value of segment `s` (0-based): "1", "2".
pub fn segment_label(segment: usize) -> String {
    (segment + 1).to_string()
}

/// The name of the BGPPeer of segment `s` (0-based) with the router: `router-segment-1`.
pub fn router_peer_name(segment: usize) -> String {
    format!("router-segment-{}", segment + 1)
}

/// The cluster's BGP settings; None when the lab does not run the bgp backend.
pub fn bgp_configuration(plan: &LabPlan) -> Option<BgpConfiguration> {
    let bgp = plan.bgp.as_ref()?;
    Some(BgpConfiguration {
        node_to_node_mesh_enabled: bgp.route_reflectors == 0,
        as_number: Some(NODE_AS),
        hold_time_seconds: Some(BGP_HOLD_SECONDS),
        keepalive_time_seconds: Some(BGP_KEEPALIVE_SECONDS),
        connect_retry_seconds: Some(BGP_CONNECT_RETRY_SECONDS),
        ..BgpConfiguration::default()
    })
}

/// Node `node`'s resource (`nodeconfigs/<name>`): its labels and BGP settings; None when
/// the lab does not run the bgp backend.
pub fn node_spec(plan: &LabPlan, node: &NodePlan) -> Option<NodeSpec> {
    let bgp = plan.bgp.as_ref()?;
    let reflector = plan.is_reflector(node);
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_SEGMENT.to_string(), segment_label(node.segment));
    if reflector {
        labels.insert(LABEL_ROUTE_REFLECTOR.to_string(), "true".to_string());
    }
    let node_bgp = NodeBgp {
        as_number: bgp
            .as_per_node
            .then(|| plan.node_asn(node).expect("a bgp plan")),
        route_reflector_cluster_id: reflector.then_some(RR_CLUSTER_ID),
        router_id: None,
    };
    Some(NodeSpec {
        ipv4_address: None,
        bgp: (node_bgp != NodeBgp::default()).then_some(node_bgp),
        labels,
    })
}

/// The BGPPeers, by name: every node with the reflectors, each segment's nodes with the
/// router's leg on that segment when the router speaks BGP. Empty without bgp.
pub fn bgp_peers(plan: &LabPlan) -> Vec<(String, BgpPeer)> {
    let Some(bgp) = plan.bgp.as_ref() else {
        return Vec::new();
    };
    let mut v = Vec::new();
    if bgp.route_reflectors > 0 {
        v.push((
            PEER_REFLECTORS.to_string(),
            BgpPeer {
                node_selector: Some("all()".into()),
                peer_selector: Some(REFLECTOR_SELECTOR.into()),
                ..BgpPeer::default()
            },
        ));
    }
    if let Some(d) = bgp_router(plan) {
        for (s, leg) in plan.router.segment_legs.iter().enumerate() {
            let ip = leg.address.expect("router legs are addressed").addr();
            v.push((
                router_peer_name(s),
                BgpPeer {
                    node_selector: Some(format!("{LABEL_SEGMENT} == '{}'", segment_label(s))),
                    peer_ip: Some(ip.to_string()),
                    as_number: Some(d.asn),
                    password: d.password.clone().map(Password::Value),
                    ..BgpPeer::default()
                },
            ));
        }
    }
    v
}

/// The router's daemon when it speaks BGP.
fn bgp_router(plan: &LabPlan) -> Option<&RouterDaemonPlan> {
    plan.router
        .daemon
        .as_ref()
        .filter(|d| d.protocol == RoutingProtocol::Bgp)
}

/// One of the router's neighbours: a node, from the router's leg on its segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub node: String,
    pub address: Ipv4Addr,
    pub asn: u32,
    /// The router's own address on the node's segment.
    pub local: Ipv4Addr,
}

/// The router's BGP neighbours: every node of the plan.
pub fn neighbors(plan: &LabPlan) -> Vec<Neighbor> {
    plan.nodes
        .iter()
        .map(|n| Neighbor {
            node: n.short.clone(),
            address: n.address.addr(),
            asn: plan.node_asn(n).unwrap_or(NODE_AS),
            local: plan.router.segment_legs[n.segment]
                .address
                .expect("router legs are addressed")
                .addr(),
        })
        .collect()
}

/// The files of the router's daemon, all in its folder.
impl RouterDaemonPlan {
    pub fn config_file(&self) -> PathBuf {
        self.dir.join(match self.kind {
            ExternalRouter::Bird => "bird.conf",
            ExternalRouter::Frr => "frr.conf",
        })
    }

    /// Where the daemons log (their own log file; their stdout goes to `<role>.out`).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(match self.kind {
            ExternalRouter::Bird => "bird.log",
            ExternalRouter::Frr => "frr.log",
        })
    }

    /// BIRD's control socket, or FRR's folder of vty sockets (vtysh --vty_socket).
    pub fn control(&self) -> PathBuf {
        match self.kind {
            ExternalRouter::Bird => self.dir.join("bird.ctl"),
            ExternalRouter::Frr => self.dir.clone(),
        }
    }
}

/// A process of the router's daemon, as the lab starts it in the router namespace (in the
/// foreground, so that its PID is the one recorded). Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonCmd {
    /// `bird`, `zebra`, `bgpd`, `ripd`.
    pub role: String,
    pub bin: PathBuf,
    pub args: Vec<String>,
    /// What must exist before the daemon counts as started (zebra's API socket, bgpd's
    /// vty socket); None: the control socket.
    pub ready_file: Option<PathBuf>,
}

/// FRR's daemons live here (Debian's frr).
pub const FRR_LIB: &str = "/usr/lib/frr";

/// The router's processes in start order; stop them in reverse.
pub fn router_daemons(d: &RouterDaemonPlan) -> Vec<DaemonCmd> {
    let path = |p: PathBuf| p.display().to_string();
    match d.kind {
        ExternalRouter::Bird => vec![DaemonCmd {
            role: "bird".into(),
            bin: PathBuf::from("bird"),
            args: vec![
                "-f".into(),
                "-c".into(),
                path(d.config_file()),
                "-s".into(),
                path(d.control()),
                "-P".into(),
                path(d.dir.join("bird.pid")),
            ],
            ready_file: None,
        }],
        ExternalRouter::Frr => {
            let zserv = d.dir.join("zserv.api");
            let protocol_daemon = match d.protocol {
                RoutingProtocol::Bgp => "bgpd",
                RoutingProtocol::Rip => "ripd",
            };
            ["zebra", protocol_daemon]
                .into_iter()
                .map(|role| {
                    let mut args: Vec<String> = ["-u", "frr", "-g", "frr", "-P", "0", "-z"]
                        .map(String::from)
                        .into();
                    args.extend([
                        path(zserv.clone()),
                        "--vty_socket".into(),
                        path(d.dir.clone()),
                        "-f".into(),
                        path(d.config_file()),
                        "-i".into(),
                        path(d.dir.join(format!("{role}.pid"))),
                    ]);
                    DaemonCmd {
                        role: role.into(),
                        bin: PathBuf::from(FRR_LIB).join(role),
                        args,
                        // zebra's API socket for the next daemon; bgpd's or ripd's own
                        // vty socket before the lab asks it anything.
                        ready_file: Some(if role == "zebra" {
                            zserv.clone()
                        } else {
                            d.dir.join(format!("{role}.vty"))
                        }),
                    }
                })
                .collect()
        }
    }
}

/// The configuration file of the router's daemon. Pure.
pub fn router_config(plan: &LabPlan, d: &RouterDaemonPlan) -> String {
    match (d.kind, d.protocol) {
        (ExternalRouter::Bird, _) => bird_config(plan, d),
        (ExternalRouter::Frr, RoutingProtocol::Bgp) => frr_bgp_config(plan, d),
        (ExternalRouter::Frr, RoutingProtocol::Rip) => frr_rip_config(plan, d),
    }
}

/// With one AS for all nodes, a route from a node on one segment reaches the other
/// segment's nodes with their own AS in its path, and they would drop it as a loop: the
/// router takes the nodes' AS out when it passes routes on (FRR's `as-override`).
fn shared_node_as(plan: &LabPlan) -> Option<u32> {
    plan.bgp
        .as_ref()
        .filter(|b| !b.as_per_node)
        .map(|_| NODE_AS)
}

fn header(plan: &LabPlan, comment: &str) -> String {
    format!(
        "{comment} The router of lab {}, generated by `twill lab up`: edits are lost on the next add-node.\n",
        plan.name
    )
}

/// BIRD 2: a kernel protocol exporting what BGP learned, one eBGP session per node from
/// the router's leg on its segment.
pub fn bird_config(plan: &LabPlan, d: &RouterDaemonPlan) -> String {
    let mut s = header(plan, "#");
    let _ = writeln!(s, "log \"{}\" all;", d.log_file().display());
    let _ = writeln!(s, "router id {};", d.router_id);
    s.push_str("protocol device { scan time 10; }\n");
    s.push_str(
        "# The pod blocks the nodes announce go into this namespace's kernel (proto bird).\n\
         protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }\n",
    );
    match shared_node_as(plan) {
        Some(asn) => {
            let _ = writeln!(
                s,
                "# Every node is in AS {asn}: take it out of the path, so that the nodes of the\n\
                 # other segment do not drop the routes as a loop (FRR's as-override).\n\
                 filter twl_to_nodes {{ if source != RTS_BGP then reject; bgp_path.delete({asn}); accept; }}"
            );
        }
        None => s.push_str("filter twl_to_nodes { if source != RTS_BGP then reject; accept; }\n"),
    }
    let _ = writeln!(
        s,
        "template bgp twl_node {{\n  local as {};\n  hold time {BGP_HOLD_SECONDS};\n  keepalive time {BGP_KEEPALIVE_SECONDS};\n  \
         connect delay time 1;\n  connect retry time {BGP_CONNECT_RETRY_SECONDS};\n  error wait time 1, 5;\n  graceful restart on;\n  \
         ipv4 {{ import all; export filter twl_to_nodes; }};\n}}",
        d.asn
    );
    for n in neighbors(plan) {
        let _ = write!(
            s,
            "protocol bgp {} from twl_node {{ local {} as {}; neighbor {} as {};",
            n.node, n.local, d.asn, n.address, n.asn
        );
        if let Some(p) = &d.password {
            let _ = write!(s, " password \"{p}\";");
        }
        s.push_str(" }\n");
    }
    s
}

/// FRR bgpd: one eBGP neighbour per node; zebra puts what it learns into the kernel.
pub fn frr_bgp_config(plan: &LabPlan, d: &RouterDaemonPlan) -> String {
    let mut s = frr_head(plan, d);
    let shared = shared_node_as(plan).is_some();
    let all: Vec<FrrNeighbor> = neighbors(plan)
        .iter()
        .map(|n| frr_neighbor(n, d, shared))
        .collect();
    for line in all.iter().flat_map(|n| &n.global) {
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(s, "router bgp {}", d.asn);
    let _ = writeln!(s, " bgp router-id {}", d.router_id);
    s.push_str(
        " no bgp ebgp-requires-policy\n no bgp network import-check\n bgp graceful-restart\n",
    );
    for line in all.iter().flat_map(|n| &n.session) {
        let _ = writeln!(s, " {line}");
    }
    s.push_str(" address-family ipv4 unicast\n");
    for line in all.iter().flat_map(|n| &n.ipv4) {
        let _ = writeln!(s, "  {line}");
    }
    s.push_str(" exit-address-family\n!\n");
    s
}

/// One neighbour's part of FRR's configuration, in its three places: before `router bgp`
/// (`global`), in it (`session`), in its `address-family ipv4 unicast` (`ipv4`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrrNeighbor {
    pub global: Vec<String>,
    pub session: Vec<String>,
    pub ipv4: Vec<String>,
}

/// A node as FRR's neighbour. With one AS for all nodes (`shared_as`), `as-override` lets
/// the other segment's nodes take the routes, which also takes away their loop check: a
/// route-map then keeps each node's own routes (next hop: the node) from going back to it.
pub fn frr_neighbor(n: &Neighbor, d: &RouterDaemonPlan, shared_as: bool) -> FrrNeighbor {
    let ip = n.address;
    let mut session = vec![
        format!("neighbor {ip} remote-as {}", n.asn),
        format!("neighbor {ip} description node {}", n.node),
        format!("neighbor {ip} update-source {}", n.local),
        format!("neighbor {ip} timers {BGP_KEEPALIVE_SECONDS} {BGP_HOLD_SECONDS}"),
        format!("neighbor {ip} timers connect {BGP_CONNECT_RETRY_SECONDS}"),
        format!("neighbor {ip} advertisement-interval 0"),
    ];
    if let Some(p) = &d.password {
        session.push(format!("neighbor {ip} password {p}"));
    }
    let (mut global, mut ipv4) = (Vec::new(), Vec::new());
    if shared_as {
        let map = format!("twl-to-{}", n.node);
        global = vec![
            format!("ip prefix-list {map} seq 5 permit {ip}/32"),
            format!("route-map {map} deny 10"),
            format!(" match ip next-hop prefix-list {map}"),
            "exit".into(),
            format!("route-map {map} permit 20"),
            "exit".into(),
        ];
        ipv4 = vec![
            format!("neighbor {ip} as-override"),
            format!("neighbor {ip} route-map {map} out"),
        ];
    }
    FrrNeighbor {
        global,
        session,
        ipv4,
    }
}

/// The vtysh commands (one `-c` each) that add node `node` to a running FRR router.
pub fn frr_add_neighbor_commands(
    plan: &LabPlan,
    d: &RouterDaemonPlan,
    node: &str,
) -> Option<Vec<String>> {
    let n = neighbors(plan).into_iter().find(|n| n.node == node)?;
    let f = frr_neighbor(&n, d, shared_node_as(plan).is_some());
    let mut v = vec!["configure terminal".to_string()];
    v.extend(f.global.iter().map(|l| l.trim().to_string()));
    v.push(format!("router bgp {}", d.asn));
    v.extend(f.session);
    v.push("address-family ipv4 unicast".into());
    v.extend(f.ipv4);
    Some(v)
}

/// The vtysh commands that take node `node` out of a running FRR router (it left the lab).
pub fn frr_remove_neighbor_commands(
    plan: &LabPlan,
    d: &RouterDaemonPlan,
    node: &NodePlan,
) -> Vec<String> {
    let mut v = vec![
        "configure terminal".into(),
        format!("router bgp {}", d.asn),
        format!("no neighbor {}", node.address.addr()),
        "exit".into(),
    ];
    if shared_node_as(plan).is_some() {
        let map = format!("twl-to-{}", node.short);
        v.push(format!("no route-map {map}"));
        v.push(format!("no ip prefix-list {map}"));
    }
    v
}

/// FRR ripd on every leg of the router: both segments and the outside.
pub fn frr_rip_config(plan: &LabPlan, d: &RouterDaemonPlan) -> String {
    let mut s = frr_head(plan, d);
    s.push_str("router rip\n version 2\n");
    for leg in plan
        .router
        .segment_legs
        .iter()
        .chain([&plan.router.outside_leg])
    {
        let _ = writeln!(s, " network {}", leg.ifname);
    }
    s.push_str("!\n");
    s
}

fn frr_head(plan: &LabPlan, d: &RouterDaemonPlan) -> String {
    let mut s = header(plan, "!");
    s.push_str("frr defaults traditional\n");
    let _ = writeln!(s, "hostname {}", plan.router.netns);
    let _ = writeln!(s, "log file {} informational", d.log_file().display());
    s.push_str("!\n");
    s
}

/// The kernel route protocol of what the router's daemon installs: BIRD's own (12), FRR's
/// zebra `proto bgp` / `proto rip`.
pub fn router_kernel_proto(d: &RouterDaemonPlan) -> u8 {
    match (d.kind, d.protocol) {
        (ExternalRouter::Bird, _) => RTPROT_BIRD,
        (ExternalRouter::Frr, RoutingProtocol::Bgp) => crate::plan::RTPROT_BGP,
        (ExternalRouter::Frr, RoutingProtocol::Rip) => crate::plan::RTPROT_RIP,
    }
}

/// BIRD's kernel route protocol number (`proto bird`).
pub const RTPROT_BIRD: u8 = 12;

/// Node `from`'s session with the peer at `peer_ip`, as its agent published it.
pub fn session<'a>(
    statuses: &'a std::collections::HashMap<String, twill_api::bgp::RoutingStatus>,
    from: &str,
    peer_ip: Ipv4Addr,
) -> Option<&'a twill_api::bgp::RoutingPeerStatus> {
    let ip = peer_ip.to_string();
    statuses
        .get(from)?
        .peers
        .iter()
        .find(|p| p.address == ip || p.address.split_once(':').is_some_and(|(a, _)| a == ip))
}

/// Every session not Established, in words ("n1 → 192.0.2.13 (n3): Active, Connection
/// refused"), sorted. Pure.
pub fn sessions_down(
    statuses: &std::collections::HashMap<String, twill_api::bgp::RoutingStatus>,
) -> Vec<String> {
    let mut v: Vec<String> = statuses
        .iter()
        .flat_map(|(node, st)| {
            st.peers
                .iter()
                .filter(|p| p.state != "Established")
                .map(move |p| {
                    let who = p
                        .node
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default();
                    let info = if p.info.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", p.info)
                    };
                    format!("{node} → {}{who}: {}{info}", p.address, p.state)
                })
        })
        .collect();
    v.sort();
    v
}

/// What the router is, in one line, for `up` and the demo.
pub fn describe_router(d: &RouterDaemonPlan) -> String {
    match (d.kind, d.protocol) {
        (ExternalRouter::Bird, _) => format!(
            "BIRD in AS {}, eBGP with every node{}",
            d.asn,
            if d.password.is_some() {
                " (TCP MD5)"
            } else {
                ""
            }
        ),
        (ExternalRouter::Frr, RoutingProtocol::Bgp) => format!(
            "FRR (zebra + bgpd) in AS {}, eBGP with every node{}",
            d.asn,
            if d.password.is_some() {
                " (TCP MD5)"
            } else {
                ""
            }
        ),
        (ExternalRouter::Frr, RoutingProtocol::Rip) => {
            "FRR (zebra + ripd), RIPv2 on every leg".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, BackendKind, LabSpec, PlanError, ROUTER_AS, ROUTER_MD5_KEY};
    use twill_store::StoreKind;

    fn bgp(nodes: u16, segments: u8) -> LabSpec {
        LabSpec {
            nodes,
            segments,
            backend: BackendKind::Bgp,
            ..LabSpec::default()
        }
    }

    #[test]
    fn options_are_checked_against_the_backend() {
        let e = |s: LabSpec| plan(&s).unwrap_err();
        let vx = |f: fn(&mut LabSpec)| {
            let mut s = LabSpec {
                backend: BackendKind::Vxlan,
                nodes: 2,
                ..LabSpec::default()
            };
            f(&mut s);
            s
        };
        assert_eq!(
            e(vx(|s| s.route_reflectors = 1)),
            PlanError::NeedsBgp {
                option: "--route-reflectors",
                backend: "vxlan".into()
            }
        );
        assert_eq!(
            e(vx(|s| s.as_per_node = true)),
            PlanError::NeedsBgp {
                option: "--as-per-node",
                backend: "vxlan".into()
            }
        );
        assert_eq!(
            e(vx(|s| s.external_router = Some(ExternalRouter::Bird))),
            PlanError::ExternalRouterNeedsRouting("vxlan".into())
        );
        assert!(e(vx(|s| s.external_router = Some(ExternalRouter::Frr)))
            .to_string()
            .contains("add --backend bgp (or rip)"));
        assert_eq!(
            e(LabSpec {
                route_reflectors: 3,
                ..bgp(2, 1)
            }),
            PlanError::TooManyReflectors { asked: 3, nodes: 2 }
        );
        assert_eq!(
            e(LabSpec {
                route_reflectors: 1,
                as_per_node: true,
                ..bgp(2, 1)
            }),
            PlanError::ReflectorsWithAsPerNode
        );
        assert_eq!(
            e(LabSpec {
                store: StoreKind::Static,
                ..bgp(2, 1)
            }),
            PlanError::BgpNeedsStore
        );
        let rip = |segments, external_router| LabSpec {
            nodes: 2,
            segments,
            backend: BackendKind::Rip,
            external_router,
            ..LabSpec::default()
        };
        assert_eq!(
            e(rip(1, Some(ExternalRouter::Bird))),
            PlanError::RipRouterIsFrr
        );
        assert_eq!(e(rip(2, None)), PlanError::RipSegmentsNeedRouter);
        let r = plan(&rip(2, Some(ExternalRouter::Frr))).unwrap();
        let d = r.router.daemon.as_ref().unwrap();
        assert_eq!(
            (d.kind, d.protocol),
            (ExternalRouter::Frr, RoutingProtocol::Rip)
        );
        assert_eq!(d.password, None);
        assert!(r.bgp.is_none() && r.outside_reaches_pods());
        assert!(!plan(&rip(1, None)).unwrap().outside_reaches_pods());
        // Every refusal names the fix.
        for err in [
            PlanError::RipSegmentsNeedRouter,
            PlanError::BgpNeedsStore,
            PlanError::ReflectorsWithAsPerNode,
            PlanError::RipRouterIsFrr,
        ] {
            let t = err.to_string();
            assert!(
                t.contains("use") || t.contains("drop") || t.contains("needs"),
                "{t}"
            );
        }
    }

    #[test]
    fn two_segments_of_bgp_get_a_bird_router_unless_frr_is_asked() {
        let p = plan(&bgp(2, 2)).unwrap();
        let d = p.router.daemon.as_ref().unwrap();
        assert_eq!(
            (d.kind, d.protocol, d.asn),
            (ExternalRouter::Bird, RoutingProtocol::Bgp, ROUTER_AS)
        );
        assert_eq!(d.router_id, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(d.dir, PathBuf::from("/run/twllab/rt"));
        assert_eq!(d.password.as_deref(), Some(ROUTER_MD5_KEY));
        assert!(p.outside_reaches_pods());
        let frr = plan(&LabSpec {
            external_router: Some(ExternalRouter::Frr),
            ..bgp(2, 2)
        })
        .unwrap();
        assert_eq!(frr.router.daemon.unwrap().kind, ExternalRouter::Frr);
        // One segment, no router asked: the router only forwards.
        let one = plan(&bgp(2, 1)).unwrap();
        assert!(one.router.daemon.is_none() && !one.outside_reaches_pods());
        assert_eq!(one.backend_route_protos(), [84, 186]);
    }

    #[test]
    fn the_mesh_by_default_reflectors_when_asked() {
        let mesh = plan(&bgp(3, 1)).unwrap();
        let c = bgp_configuration(&mesh).unwrap();
        assert!(c.node_to_node_mesh_enabled && c.graceful_restart);
        assert_eq!(c.as_number, Some(64512));
        assert_eq!(c.hold_time_seconds, Some(9));
        assert!(bgp_peers(&mesh).is_empty());
        let n1 = node_spec(&mesh, &mesh.nodes[0]).unwrap();
        assert_eq!(n1.bgp, None);
        assert_eq!(n1.labels, BTreeMap::from([("segment".into(), "1".into())]));

        let rr = plan(&LabSpec {
            route_reflectors: 2,
            ..bgp(4, 2)
        })
        .unwrap();
        assert!(!bgp_configuration(&rr).unwrap().node_to_node_mesh_enabled);
        let specs: Vec<NodeSpec> = rr
            .nodes
            .iter()
            .map(|n| node_spec(&rr, n).unwrap())
            .collect();
        // n1 (segment 1) and n2 (segment 2) reflect; n3, n4 do not.
        for (i, s) in specs.iter().enumerate() {
            let reflects = i < 2;
            assert_eq!(
                s.bgp.as_ref().and_then(|b| b.route_reflector_cluster_id),
                reflects.then_some(RR_CLUSTER_ID),
                "n{}",
                i + 1
            );
            assert_eq!(s.labels.contains_key("route-reflector"), reflects);
            assert_eq!(s.labels["segment"], ["1", "2"][i % 2]);
        }
        let peers = bgp_peers(&rr);
        let names: Vec<&str> = peers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [PEER_REFLECTORS, "router-segment-1", "router-segment-2"]
        );
        assert_eq!(
            peers[0].1.peer_selector.as_deref(),
            Some(REFLECTOR_SELECTOR)
        );
        assert_eq!(peers[0].1.node_selector.as_deref(), Some("all()"));
        let seg2 = &peers[2].1;
        assert_eq!(seg2.node_selector.as_deref(), Some("segment == '2'"));
        assert_eq!(seg2.peer_ip.as_deref(), Some("198.51.100.1"));
        assert_eq!(seg2.as_number, Some(64513));
        assert_eq!(seg2.password, Some(Password::Value(ROUTER_MD5_KEY.into())));
        // A node added later is no reflector.
        let mut rr2 = rr.clone();
        let n5 = rr2.next_node().unwrap();
        rr2.nodes.push(n5.clone());
        assert!(!rr2.is_reflector(&n5));
        // Non-bgp labs write none of it.
        let vx = plan(&LabSpec::default()).unwrap();
        assert!(bgp_configuration(&vx).is_none() && node_spec(&vx, &vx.nodes[0]).is_none());
        assert!(bgp_peers(&vx).is_empty());
    }

    #[test]
    fn the_resources_validate_and_the_selectors_pick_the_intended_nodes() {
        use twill_api::bgp::Selector;
        for spec in [
            LabSpec {
                route_reflectors: 2,
                ..bgp(4, 2)
            },
            LabSpec {
                as_per_node: true,
                ..bgp(3, 2)
            },
        ] {
            let p = plan(&spec).unwrap();
            bgp_configuration(&p).unwrap().validate().unwrap();
            let labels: Vec<_> = p
                .nodes
                .iter()
                .map(|n| {
                    let s = node_spec(&p, n).unwrap();
                    if let Some(b) = &s.bgp {
                        b.validate().unwrap();
                    }
                    (n, s.labels)
                })
                .collect();
            for (name, peer) in bgp_peers(&p) {
                peer.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
                let sel = Selector::parse(peer.node_selector.as_deref().unwrap()).unwrap();
                let picked: Vec<&str> = labels
                    .iter()
                    .filter(|(_, l)| sel.matches(l))
                    .map(|(n, _)| n.short.as_str())
                    .collect();
                let want: Vec<&str> = match name.as_str() {
                    PEER_REFLECTORS => p.nodes.iter().map(|n| n.short.as_str()).collect(),
                    "router-segment-1" => vec!["n1", "n3"],
                    "router-segment-2" => p
                        .nodes
                        .iter()
                        .filter(|n| n.segment == 1)
                        .map(|n| n.short.as_str())
                        .collect(),
                    other => panic!("unexpected peer {other}"),
                };
                assert_eq!(picked, want, "{name}");
                if let Some(ps) = &peer.peer_selector {
                    let sel = Selector::parse(ps).unwrap();
                    let rrs: Vec<&str> = labels
                        .iter()
                        .filter(|(_, l)| sel.matches(l))
                        .map(|(n, _)| n.short.as_str())
                        .collect();
                    assert_eq!(rrs, ["n1", "n2"]);
                }
            }
        }
    }

    #[test]
    fn sessions_are_read_from_the_routing_status() {
        use twill_api::bgp::{PeerType, RoutingPeerStatus, RoutingStatus};
        let peer = |address: &str, node: &str, state: &str, info: &str| RoutingPeerStatus {
            address: address.into(),
            node: Some(node.into()),
            peer_type: PeerType::NodeMesh,
            asn: Some(64512),
            state: state.into(),
            since: 0,
            info: info.into(),
            prefixes_received: 0,
            prefixes_advertised: 0,
        };
        let st = |peers| RoutingStatus {
            protocol: RoutingProtocol::Bgp,
            router_id: None,
            asn: Some(64512),
            route_reflector_cluster_id: None,
            peers,
        };
        let m = std::collections::HashMap::from([
            (
                "n1".to_string(),
                st(vec![
                    peer("192.0.2.12", "n2", "Established", ""),
                    peer("203.0.113.200", "n3", "Active", "Connection refused"),
                ]),
            ),
            (
                "n2".to_string(),
                st(vec![peer("203.0.113.200:179", "n3", "Connect", "")]),
            ),
        ]);
        assert_eq!(
            sessions_down(&m),
            [
                "n1 → 203.0.113.200 (n3): Active, Connection refused",
                "n2 → 203.0.113.200:179 (n3): Connect"
            ]
        );
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            session(&m, "n2", ip("203.0.113.200")).unwrap().state,
            "Connect"
        );
        assert_eq!(
            session(&m, "n1", ip("192.0.2.12")).unwrap().state,
            "Established"
        );
        assert!(session(&m, "n3", ip("192.0.2.12")).is_none());
    }

    #[test]
    fn an_as_per_node() {
        let p = plan(&LabSpec {
            as_per_node: true,
            external_router: Some(ExternalRouter::Bird),
            ..bgp(3, 1)
        })
        .unwrap();
        let asns: Vec<Option<u32>> = p
            .nodes
            .iter()
            .map(|n| node_spec(&p, n).unwrap().bgp.unwrap().as_number)
            .collect();
        assert_eq!(asns, [Some(65001), Some(65002), Some(65003)]);
        let conf = bird_config(&p, p.router.daemon.as_ref().unwrap());
        assert!(conf.contains("neighbor 192.0.2.12 as 65002;"), "{conf}");
        // No shared AS: nothing to take out of the paths.
        assert!(!conf.contains("bgp_path.delete"), "{conf}");
    }

    #[test]
    fn bird_peers_with_every_node_from_its_segment_leg() {
        let p = plan(&bgp(3, 2)).unwrap();
        let d = p.router.daemon.as_ref().unwrap();
        let conf = router_config(&p, d);
        assert!(conf.starts_with("# The router of lab twllab"), "{conf}");
        assert!(conf.contains("log \"/run/twllab/rt/bird.log\" all;\nrouter id 192.0.2.1;\n"));
        assert!(conf.contains("export where source = RTS_BGP;"));
        assert!(conf.contains("bgp_path.delete(64512);"));
        assert!(conf.contains("local as 64513;\n  hold time 9;\n  keepalive time 3;"));
        assert!(conf.contains(
            "protocol bgp n1 from twl_node { local 192.0.2.1 as 64513; neighbor 192.0.2.11 as 64512; password \"twl-lab-md5\"; }\n"
        ), "{conf}");
        assert!(conf.contains(
            "protocol bgp n2 from twl_node { local 198.51.100.1 as 64513; neighbor 198.51.100.12 as 64512;"
        ), "{conf}");
        assert_eq!(conf.matches("protocol bgp ").count(), 3);
        let cmds = router_daemons(d);
        assert_eq!(cmds.len(), 1);
        assert_eq!(
            cmds[0].args.join(" "),
            "-f -c /run/twllab/rt/bird.conf -s /run/twllab/rt/bird.ctl -P /run/twllab/rt/bird.pid"
        );
    }

    #[test]
    fn frr_bgp_and_rip() {
        let p = plan(&LabSpec {
            external_router: Some(ExternalRouter::Frr),
            ..bgp(2, 2)
        })
        .unwrap();
        let d = p.router.daemon.as_ref().unwrap();
        let conf = router_config(&p, d);
        for line in [
            "hostname twllab-rt",
            "log file /run/twllab/rt/frr.log informational",
            "router bgp 64513",
            " bgp router-id 192.0.2.1",
            " no bgp ebgp-requires-policy",
            " neighbor 192.0.2.11 remote-as 64512",
            " neighbor 198.51.100.12 update-source 198.51.100.1",
            " neighbor 198.51.100.12 password twl-lab-md5",
            " neighbor 192.0.2.11 timers 3 9",
            "  neighbor 198.51.100.12 as-override",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line:?} missing:\n{conf}");
        }
        let cmds = router_daemons(d);
        let roles: Vec<&str> = cmds.iter().map(|c| c.role.as_str()).collect();
        assert_eq!(roles, ["zebra", "bgpd"]);
        assert_eq!(cmds[1].bin, PathBuf::from("/usr/lib/frr/bgpd"));
        assert_eq!(
            cmds[0].args.join(" "),
            "-u frr -g frr -P 0 -z /run/twllab/rt/zserv.api --vty_socket /run/twllab/rt \
             -f /run/twllab/rt/frr.conf -i /run/twllab/rt/zebra.pid"
        );
        assert_eq!(
            cmds[0].ready_file,
            Some(PathBuf::from("/run/twllab/rt/zserv.api"))
        );
        assert_eq!(
            cmds[1].ready_file,
            Some(PathBuf::from("/run/twllab/rt/bgpd.vty"))
        );

        let r = plan(&LabSpec {
            nodes: 2,
            segments: 2,
            backend: BackendKind::Rip,
            external_router: Some(ExternalRouter::Frr),
            ..LabSpec::default()
        })
        .unwrap();
        let d = r.router.daemon.as_ref().unwrap();
        let conf = router_config(&r, d);
        assert!(
            conf.contains("router rip\n version 2\n network eth0\n network eth1\n network eth2\n"),
            "{conf}"
        );
        assert_eq!(router_daemons(d)[1].role, "ripd");
        assert_eq!(r.backend_route_protos(), [84]);
    }
}
