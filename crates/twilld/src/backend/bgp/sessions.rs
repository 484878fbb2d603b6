//! The session planner (pure): from this node, the other nodes, the cluster's
//! BGPConfiguration and its BGPPeers to the BGP sessions this node must have, as Calico's
//! confd computes BIRD's peerings.
//!
//! - **Mesh** (`nodeToNodeMeshEnabled`, the default): a session to every other node, iBGP in
//!   one AS or eBGP when nodes have their own (`spec.bgp.asNumber`). Every session between
//!   two nodes (mesh or selector) is opened from one side only: the node with the lower IP
//!   connects, the other is passive, so the two never race (a race aborts a graceful
//!   restart in progress).
//! - **BGPPeer** rules apply to every node (no `node`, no `nodeSelector`: PEER TYPE
//!   "global"), to one `node`, or to the nodes a `nodeSelector` picks ("node specific").
//!   - `peerIP`: a router outside the cluster, AS `asNumber`, with the rule's password,
//!     `keepOriginalNextHop` and `maxRestartTime`;
//!   - `peerSelector`: the other nodes whose labels match (route reflectors), each with its
//!     own AS. The selected node peers back: a node matched by `peerSelector` gets sessions
//!     to every node the rule applies to, so both ends agree.
//! - **Route reflectors**: a node with `spec.bgp.routeReflectorClusterID` reflects; its
//!   iBGP sessions to nodes without a cluster ID are its clients, RR to RR is plain iBGP.
//! - **Router ID**: `spec.bgp.routerID`, else the node IP (`routerIDMode: nodeIP`) or a
//!   32-bit FNV-1 hash of the node name (`hash`, as calico/node's `CALICO_ROUTER_ID=hash`).
//! - **Routers outside the cluster** (`peerIP`) are sent this node's own blocks only, as
//!   Calico's nodes do, unless the rule says `keepOriginalNextHop` (then every route learned
//!   goes too, with its owner as next hop).
//! - One session per peer address: explicit `peerIP` rules (node-specific first) win over
//!   selector peers, which win over the mesh; what cannot be planned is a problem in words
//!   with its fix, never a panic.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use twill_api::bgp::{BgpConfiguration, BgpPeer, NodeBgp, Password, PeerType, RouterIdMode};
use twill_bgp::config::{self, PeerAddress, PolicyConfig, PrefixEntry, TermConfig};
use twill_bgp::packet::Community;

/// Labels of a Node resource.
pub type Labels = BTreeMap<String, String>;

/// A node of the cluster as the planner sees it: its IP from its agent (`nodes/<name>`),
/// its BGP settings and labels from its Node resource (`nodeconfigs/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub address: Ipv4Addr,
    pub bgp: NodeBgp,
    pub labels: Labels,
}

/// One session this node must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub peer: config::Peer,
    /// Why it exists (`twill node status`'s PEER TYPE).
    pub peer_type: PeerType,
    /// The cluster node at the other end; None for a router outside the cluster.
    pub node: Option<String>,
    /// The password comes from this file on this node (read at the I/O edge, into
    /// `peer.password`).
    pub password_file: Option<String>,
}

/// Everything this node's speaker runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPlan {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// This node reflects routes with this cluster ID.
    pub cluster_id: Option<Ipv4Addr>,
    pub listen_port: u16,
    /// The restart time advertised (graceful restart); None: graceful restart off.
    pub restart_time: Option<u16>,
    /// Attached to every pod prefix this node announces.
    pub communities: Vec<Community>,
    /// Sorted by peer address.
    pub sessions: Vec<Session>,
    /// What could not be planned, each naming the fix.
    pub problems: Vec<String>,
}

/// The planner's inputs.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub me: &'a NodeInfo,
    /// The other nodes (this one, if listed, is skipped).
    pub others: &'a [NodeInfo],
    pub config: &'a BgpConfiguration,
    /// `bgppeers/<name>` by name.
    pub peers: &'a BTreeMap<String, BgpPeer>,
    /// The cluster's pod addresses: what eBGP peers are sent (RFC 8212 wants an explicit
    /// export policy); None: everything.
    pub cluster_cidr: Option<Ipv4Net>,
}

/// The AS of `node`: its own, else the cluster's (default [`twill_api::bgp::DEFAULT_AS`]).
pub fn asn_of(node: &NodeInfo, cfg: &BgpConfiguration) -> u32 {
    node.bgp.as_number.unwrap_or_else(|| cfg.as_number())
}

/// The router ID of `node`: `spec.bgp.routerID`, else by `routerIDMode`.
pub fn router_id_of(node: &NodeInfo, cfg: &BgpConfiguration) -> Ipv4Addr {
    if let Some(id) = node.bgp.router_id {
        return id;
    }
    match cfg.router_id_mode {
        RouterIdMode::NodeIp => node.address,
        RouterIdMode::Hash => hash_router_id(&node.name),
    }
}

/// calico/node's `CALICO_ROUTER_ID=hash`: FNV-1 (32 bits) of the name, as an IPv4 address
/// (0.0.0.0 is no BGP identifier: it becomes 0.0.0.1).
pub fn hash_router_id(name: &str) -> Ipv4Addr {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = h.wrapping_mul(0x0100_0193);
        h ^= u32::from(b);
    }
    Ipv4Addr::from(h.max(1))
}

/// Where a candidate session comes from, in precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    NodeSpecificIp,
    GlobalIp,
    Selector,
    Mesh,
}

struct Candidate {
    source: Source,
    /// `BGPPeer <name>`, or the mesh.
    origin: String,
    session: Session,
}

/// Plans this node's sessions (pure).
pub fn plan(inputs: Inputs<'_>) -> SessionPlan {
    let Inputs {
        me,
        others,
        config: cfg,
        peers: rules,
        cluster_cidr,
    } = inputs;
    let mut problems = Vec::new();
    if let Err(e) = me.bgp.validate() {
        problems.push(format!(
            "this node's Node resource: {e}; fix it with twill apply -f"
        ));
    }
    let asn = asn_of(me, cfg);
    let router_id = router_id_of(me, cfg);
    let cluster_id = me.bgp.route_reflector_cluster_id;
    let others: Vec<&NodeInfo> = others
        .iter()
        .filter(|o| o.name != me.name && o.address != me.address)
        .collect();
    for o in &others {
        if router_id_of(o, cfg) == router_id {
            problems.push(format!(
                "node {} has this node's router ID {router_id}: their sessions fail (OPEN error: bad BGP identifier); set spec.bgp.routerID on one of them, or routerIDMode: hash in the BGPConfiguration",
                o.name
            ));
        }
    }
    let communities = match cfg.community_values() {
        Ok(v) => v.into_iter().map(Community).collect(),
        Err(e) => {
            problems.push(format!(
                "the BGPConfiguration: {e}; no community is attached until it is fixed (twill apply -f)"
            ));
            Vec::new()
        }
    };
    let ctx = Ctx {
        me,
        asn,
        cluster_id,
        cfg,
        cluster_cidr,
    };

    let mut candidates: Vec<Candidate> = Vec::new();
    for (name, rule) in rules {
        let origin = format!("BGPPeer {name}");
        if let Err(e) = rule.validate() {
            problems.push(format!(
                "{origin} is ignored: {e}; fix it with twill apply -f"
            ));
            continue;
        }
        let applies = rule.applies_to(&me.name, &me.labels);
        match (rule.peer_address(), rule.peer_selector()) {
            (Ok(Some((ip, port))), _) => {
                if !applies || ip == IpAddr::V4(me.address) {
                    continue;
                }
                let source = if rule.is_global() {
                    Source::GlobalIp
                } else {
                    Source::NodeSpecificIp
                };
                candidates.push(Candidate {
                    source,
                    origin,
                    session: ctx.external(rule, PeerAddress { ip, port }),
                });
            }
            (_, Ok(Some(sel))) => {
                // This node's sessions to the nodes the selector picks and, when this
                // node is one of those, to the nodes the rule applies to.
                let picked_me = sel.matches(&me.labels);
                for o in &others {
                    let forward = applies && sel.matches(&o.labels);
                    let back = picked_me && rule.applies_to(&o.name, &o.labels);
                    if forward || back {
                        candidates.push(Candidate {
                            source: Source::Selector,
                            origin: origin.clone(),
                            session: ctx.node_session(o, PeerType::RouteReflector, Some(rule)),
                        });
                    }
                }
            }
            // validate() refused every other shape.
            _ => {}
        }
    }
    if cfg.node_to_node_mesh_enabled {
        for o in &others {
            candidates.push(Candidate {
                source: Source::Mesh,
                origin: "the node-to-node mesh".into(),
                session: ctx.node_session(o, PeerType::NodeMesh, None),
            });
        }
    }

    // One session per peer address, the first by precedence (then rule name) winning.
    candidates.sort_by(|a, b| (a.source, &a.origin).cmp(&(b.source, &b.origin)));
    let mut chosen: BTreeMap<IpAddr, Candidate> = BTreeMap::new();
    for c in candidates {
        let ip = c.session.peer.address.ip;
        match chosen.get(&ip) {
            None => {
                chosen.insert(ip, c);
            }
            Some(first) => {
                let explicit = matches!(c.source, Source::NodeSpecificIp | Source::GlobalIp);
                if explicit && first.session != c.session {
                    problems.push(format!(
                        "{} and {} both peer this node with {ip}: {} applies; remove one of them",
                        first.origin, c.origin, first.origin
                    ));
                }
            }
        }
    }
    SessionPlan {
        router_id,
        asn,
        cluster_id,
        listen_port: cfg.listen_port(),
        restart_time: cfg.restart_time(),
        communities,
        sessions: chosen.into_values().map(|c| c.session).collect(),
        problems,
    }
}

struct Ctx<'a> {
    me: &'a NodeInfo,
    asn: u32,
    cluster_id: Option<Ipv4Addr>,
    cfg: &'a BgpConfiguration,
    cluster_cidr: Option<Ipv4Net>,
}

impl Ctx<'_> {
    /// A peer with this cluster's timers, sourced from the node IP.
    fn peer(&self, address: PeerAddress, asn: u32) -> config::Peer {
        let ebgp = asn != self.asn;
        config::Peer {
            address,
            asn,
            password: None,
            password_file: None,
            passive: false,
            hold_time: self.cfg.hold_time_seconds,
            keepalive: self.cfg.keepalive_time_seconds,
            connect_retry: self.cfg.connect_retry_seconds,
            local_address: Some(IpAddr::V4(self.me.address)),
            route_reflector_client: false,
            next_hop_self: false,
            keep_original_next_hop: false,
            export_originated_only: false,
            max_restart_time: None,
            tag: None,
            // RFC 8212: eBGP takes and sends nothing without a policy. iBGP: everything
            // (the iBGP rules keep learned routes from going round).
            import: ebgp.then_some(PolicyConfig::Accept),
            export: ebgp.then(|| self.export()),
        }
    }

    /// What eBGP peers are sent: the pod addresses.
    fn export(&self) -> PolicyConfig {
        match self.cluster_cidr {
            Some(c) => PolicyConfig::Terms(vec![TermConfig {
                prefixes: vec![PrefixEntry {
                    prefix: IpNet::V4(c),
                    ge: None,
                    le: Some(32),
                }],
                communities: Vec::new(),
                large_communities: Vec::new(),
                action: config::Verdict::Accept,
                add_communities: Vec::new(),
                remove_communities: Vec::new(),
                add_large_communities: Vec::new(),
                set_local_pref: None,
                set_med: None,
                next_hop_self: false,
            }]),
            None => PolicyConfig::Accept,
        }
    }

    /// A session to another node: one side connects (the lower IP), the other waits.
    fn node_session(&self, o: &NodeInfo, peer_type: PeerType, rule: Option<&BgpPeer>) -> Session {
        let asn = asn_of(o, self.cfg);
        let mut peer = self.peer(
            PeerAddress {
                ip: IpAddr::V4(o.address),
                port: None,
            },
            asn,
        );
        peer.passive = o.address < self.me.address;
        peer.route_reflector_client = self.cluster_id.is_some()
            && o.bgp.route_reflector_cluster_id.is_none()
            && asn == self.asn;
        let mut session = Session {
            peer,
            peer_type,
            node: Some(o.name.clone()),
            password_file: None,
        };
        if let Some(rule) = rule {
            session.peer.keep_original_next_hop = rule.keep_original_next_hop;
            session.peer.max_restart_time = rule.max_restart_seconds().ok().flatten();
            set_password(&mut session, rule);
        }
        session
    }

    /// A session to a router outside the cluster (`peerIP`).
    fn external(&self, rule: &BgpPeer, address: PeerAddress) -> Session {
        let asn = rule
            .as_number
            .expect("validated: peerIP comes with asNumber");
        let mut peer = self.peer(address, asn);
        peer.keep_original_next_hop = rule.keep_original_next_hop;
        // Calico's nodes send a router outside the cluster their own blocks only: passing
        // on the other nodes' routes would offer it paths through this node (and back to
        // it: loops). keepOriginalNextHop asks for the others' routes with their owners as
        // next hops (a ToR that routes to the owner), so it sends everything learned too.
        peer.export_originated_only = !rule.keep_original_next_hop;
        peer.max_restart_time = rule.max_restart_seconds().ok().flatten();
        let mut session = Session {
            peer,
            peer_type: if rule.is_global() {
                PeerType::Global
            } else {
                PeerType::NodeSpecific
            },
            node: None,
            password_file: None,
        };
        set_password(&mut session, rule);
        session
    }
}

fn set_password(session: &mut Session, rule: &BgpPeer) {
    match &rule.password {
        Some(Password::Value(v)) => session.peer.password = Some(v.clone()),
        Some(Password::File(f)) => session.password_file = Some(f.clone()),
        None => {}
    }
}

#[cfg(test)]
mod tests;
