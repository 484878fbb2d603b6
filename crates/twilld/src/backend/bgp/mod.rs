//! Backend `bgp` (Calico's way): an embedded BGP speaker on every node
//! ([`twill_bgp::speaker::embed`]) announces the node's blocks and learns the others'.
//!
//! - **Settings** come only from the store: the BGPConfiguration, the BGPPeers and every
//!   node's Node resource (AS, route reflector cluster ID, router ID, labels), which the
//!   agent's machine reads and watches for this backend ([`RoutingInputs`]). The network
//!   config says only `backend: bgp`.
//! - **Sessions**: [`sessions::plan`] (pure) decides them on every pass, and also as soon
//!   as a watch event changes the other nodes ([`Backend::peers_changed`]: a reflector
//!   peers with a client that just joined without waiting for the agent's round); the
//!   speaker gets the list ([`Embedded::set_peers`]: new peers start, removed ones get
//!   Cease 6/3 and their routes leave the kernel, unchanged ones keep their sessions).
//!   Password files are read here, at the edge: a file that cannot be read leaves that one
//!   peer out.
//! - **Announcements** ([`originated`], pure): this node's blocks as aggregates, plus a /32
//!   for every pod address (twill-cni's records) outside them, each with the
//!   BGPConfiguration's communities; only the difference goes out.
//! - **Next hops** are resolved against the uplink's subnet only (RFC 4271 §9.1.2.1): a
//!   route whose next hop is a node on another segment is never chosen (the kernel would
//!   refuse it: not on-link); the router's path on this segment is. Routers outside the
//!   cluster are sent this node's own blocks only ([`sessions`]).
//! - **Kernel**: learned routes are written by the speaker with protocol 186 (RTPROT_BGP,
//!   `ip route show proto bgp`); the agent's diff owns only protocol 0x54 routes, so it
//!   never deletes them, and the plan of this backend has no route of its own: the l3
//!   blackholes of this node's blocks stay the agent's. A destination both want is a
//!   problem in /readyz, never a fight.
//! - **Graceful restart** (on unless the BGPConfiguration turns it off; restart time 120 s
//!   unless set): SIGKILL of twilld leaves every kernel as it is (peers keep our routes
//!   as stale, our kernel keeps the learned ones); the next start adopts them (its state
//!   directory says it ran before: the OPENs carry the R and F bits) and nothing moves. A
//!   clean stop ([`Backend::stop`], on SIGTERM) sends Cease to every peer: our routes leave
//!   every kernel at once, and the learned ones leave ours.
//! - A change of the speaker's own identity (router ID, AS, listen port, cluster ID,
//!   restart time) restarts it gracefully: routes stay while it comes back.
//! - **Status**: the speaker's notices are this backend's [`Events`]; each refreshes
//!   [`Backend::routing_status`] (`routingstatus/<node>`, /metrics), and a session stuck
//!   in Connect or Active longer than [`STUCK_AFTER`] is a problem in /readyz with the fix.
//!   The control socket is `<state dir>/bgp.sock` (`twill bgp neighbors --socket …`).

pub mod sessions;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net};
use twill_api::bgp::{PeerType, RoutingPeerStatus, RoutingProtocol, RoutingStatus};
use twill_bgp::config::{self, Config, GracefulRestart, Kernel, Listen, PeerAddress};
use twill_bgp::fsm::State;
use twill_bgp::packet::Community;
use twill_bgp::speaker::embed::{Embedded, Notice, Options, PeerStatus, Status};

use super::{Backend, BackendKind, Desired, Event, Events, Local, Peer, Reaction, RoutingInputs};
use sessions::{NodeInfo, Session, SessionPlan};

/// The speaker's control socket, in twilld's state directory.
pub const CONTROL_SOCKET: &str = "bgp.sock";
/// Written in the state directory when the speaker first runs, removed by a clean stop: if
/// it is there at start, the last run was killed and this start is a graceful restart.
pub const RAN_MARK: &str = "bgp.running";
/// A session not Established this long (in Connect or Active between its tries) is
/// reported in /readyz.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);
/// The routing table learned routes go to (main).
pub const TABLE: u32 = 254;

/// What the speaker's thread tells the agent's loop: which speaker (a generation: a
/// stopped one's last words must not touch its successor), and the notice.
#[derive(Debug)]
struct SpeakerNews(u64, Notice);

/// A sync changed the problems of the edge (the speaker could not start, a password file
/// unreadable): the plan that /readyz shows must be made again.
#[derive(Debug)]
struct EdgeProblemsChanged;

/// The speaker's own settings: a change restarts it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    router_id: Ipv4Addr,
    asn: u32,
    listen_port: u16,
    cluster_id: Option<Ipv4Addr>,
    restart_time: Option<u16>,
    /// The uplink's subnet: learned next hops outside it are unresolvable (a node on
    /// another segment is reached through the router, never directly).
    on_link: Ipv4Net,
}

impl Identity {
    fn of(plan: &SessionPlan, local: &Local) -> Identity {
        Identity {
            router_id: plan.router_id,
            asn: plan.asn,
            listen_port: plan.listen_port,
            cluster_id: plan.cluster_id,
            restart_time: plan.restart_time,
            on_link: local.uplink_cidr.trunc(),
        }
    }
}

/// The `bgp` backend. See the module documentation.
pub struct Bgp {
    state_dir: PathBuf,
    events: Option<Events>,
    inputs: RoutingInputs,
    speaker: Option<(Embedded, Identity)>,
    /// Counts the speakers started.
    generation: u64,
    /// What the speaker was last given (unchanged lists are not sent again).
    sent_peers: Option<Vec<config::Peer>>,
    sent_originated: Option<Vec<(IpNet, Vec<Community>)>>,
    /// The planned sessions by peer IP: their type and node, for the status.
    planned: BTreeMap<IpAddr, (PeerType, Option<String>)>,
    /// The last status read from the speaker, and what this node is.
    status: Option<Status>,
    identity: Option<Identity>,
    /// Problems found at the edge (password files, the speaker refusing).
    edge_problems: Vec<String>,
    /// Since when each peer has not been Established (as far as this run saw).
    down_since: BTreeMap<IpAddr, SystemTime>,
    /// Peers whose [`STUCK_AFTER`] has passed and been planned with (no timer for them).
    stuck_seen: std::collections::BTreeSet<IpAddr>,
}

impl Bgp {
    pub fn new(state_dir: &Path) -> Bgp {
        Bgp {
            state_dir: state_dir.to_path_buf(),
            events: None,
            inputs: RoutingInputs::default(),
            speaker: None,
            generation: 0,
            sent_peers: None,
            sent_originated: None,
            planned: BTreeMap::new(),
            status: None,
            identity: None,
            edge_problems: Vec::new(),
            down_since: BTreeMap::new(),
            stuck_seen: Default::default(),
        }
    }

    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join(CONTROL_SOCKET)
    }

    fn refresh_status(&mut self) {
        if let Some((sp, _)) = &self.speaker {
            self.status = sp.status().ok();
        }
        let now = SystemTime::now();
        let peers = self
            .status
            .as_ref()
            .map(|s| &s.peers[..])
            .unwrap_or_default();
        self.down_since = peers
            .iter()
            .filter(|p| p.state != State::Established)
            .map(|p| {
                let ip = p.address.ip;
                (
                    ip,
                    self.down_since
                        .get(&ip)
                        .copied()
                        .unwrap_or(now)
                        .min(p.since),
                )
            })
            .collect();
        let down = &self.down_since;
        self.stuck_seen.retain(|ip| down.contains_key(ip));
    }

    /// Starts the speaker for `identity` (restarting it gracefully if it ran with another).
    fn ensure_speaker(&mut self, identity: &Identity) -> Result<(), String> {
        if self.speaker.as_ref().is_some_and(|(_, id)| id == identity) {
            return Ok(());
        }
        if let Some((old, _)) = self.speaker.take() {
            // Graceful: the kernel routes stay while the new one comes up and adopts them.
            let _ = old.stop(true);
        }
        self.sent_peers = None;
        self.sent_originated = None;
        std::fs::create_dir_all(&self.state_dir).map_err(|e| {
            format!(
                "cannot create the state directory {}: {e}; fix its parent's permissions",
                self.state_dir.display()
            )
        })?;
        let mark = self.state_dir.join(RAN_MARK);
        let restarted = mark.exists();
        let events = self.events.clone();
        self.generation += 1;
        let generation = self.generation;
        let notify = move |n: Notice| {
            if let Some(e) = &events {
                e.send(SpeakerNews(generation, n));
            }
        };
        let cfg = speaker_config(identity, &self.control_socket());
        let sp = Embedded::spawn(
            cfg,
            Options {
                control_socket: true,
                restarted,
                notify: Some(Box::new(notify)),
            },
        )
        .map_err(|e| {
            format!(
                "the BGP speaker cannot start: {e}; if another BGP daemon (BIRD, FRR) holds port {} on this node, stop it or set listenPort in the BGPConfiguration (every node listens on it)",
                identity.listen_port
            )
        })?;
        std::fs::write(&mark, b"").map_err(|e| {
            format!(
                "cannot write {}: {e}; a restart after a crash would not be graceful",
                mark.display()
            )
        })?;
        crate::log::info(
            "BGP speaker started",
            &[
                ("routerID", &identity.router_id),
                ("as", &identity.asn),
                ("port", &identity.listen_port),
                ("restarted", &restarted),
                ("socket", &self.control_socket().display()),
            ],
        );
        self.speaker = Some((sp, identity.clone()));
        Ok(())
    }
}

/// The speaker's configuration for `identity`: no peers and nothing originated yet (they
/// follow at once), learned routes into the main table, control socket at `socket`.
fn speaker_config(identity: &Identity, socket: &Path) -> Config {
    let mut cfg: Config = serde_json::from_value(serde_json::json!({
        "routerId": identity.router_id,
        "as": identity.asn,
    }))
    .expect("a minimal speaker config");
    cfg.listen = Listen {
        port: identity.listen_port,
        ..Listen::default()
    };
    cfg.control_socket = socket.to_path_buf();
    cfg.graceful_restart = identity
        .restart_time
        .map(|restart_time| GracefulRestart { restart_time });
    cfg.kernel = Kernel {
        install: true,
        table: TABLE,
    };
    cfg.cluster_id = identity.cluster_id;
    cfg.next_hop_networks = vec![IpNet::V4(identity.on_link)];
    cfg
}

/// This node and the others as the planner sees them (pure): addresses from the agents,
/// BGP settings and labels from the Node resources.
pub fn node_infos(
    local: &Local,
    peers: &[Peer],
    inputs: &RoutingInputs,
) -> (NodeInfo, Vec<NodeInfo>) {
    let info = |name: &str, address: Ipv4Addr| {
        let spec = inputs.node_specs.get(name);
        NodeInfo {
            name: name.to_string(),
            address,
            bgp: spec.and_then(|s| s.bgp.clone()).unwrap_or_default(),
            labels: spec.map(|s| s.labels.clone()).unwrap_or_default(),
        }
    };
    let me = info(&local.name, local.address);
    let others = peers.iter().map(|p| info(&p.name, p.address)).collect();
    (me, others)
}

/// The session plan for this pass (pure).
pub fn session_plan(local: &Local, peers: &[Peer], inputs: &RoutingInputs) -> SessionPlan {
    let (me, others) = node_infos(local, peers, inputs);
    let cfg = inputs.bgp_config.clone().unwrap_or_default();
    sessions::plan(sessions::Inputs {
        me: &me,
        others: &others,
        config: &cfg,
        peers: &inputs.bgp_peers,
        cluster_cidr: inputs.cluster_cidr,
    })
}

/// What this node announces (pure): its blocks as aggregates, then a /32 for each pod
/// address outside them, each with `communities`; sorted, no duplicates.
pub fn originated(
    blocks: &[Ipv4Net],
    pod_ips: &[Ipv4Addr],
    communities: &[Community],
) -> Vec<(IpNet, Vec<Community>)> {
    let mut nets: Vec<Ipv4Net> = blocks.iter().map(|b| b.trunc()).collect();
    nets.extend(
        pod_ips
            .iter()
            .filter(|ip| !blocks.iter().any(|b| b.contains(*ip)))
            .map(|ip| Ipv4Net::from(*ip)),
    );
    nets.sort();
    nets.dedup();
    nets.into_iter()
        .map(|n| (IpNet::V4(n), communities.to_vec()))
        .collect()
}

/// The speaker's peer for a planned session: the password read from its file if it names
/// one (the I/O edge; `read` returns the file's text).
fn speaker_peer(
    s: &Session,
    read: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<config::Peer, String> {
    let mut p = s.peer.clone();
    p.tag = Some(match &s.node {
        Some(n) => format!("{} {n}", s.peer_type.label()),
        None => s.peer_type.label().to_string(),
    });
    if let Some(file) = &s.password_file {
        let key = read(file).map_err(|e| {
            format!(
                "BGP peer {}: cannot read its password file {file}: {e}; put the key there on this node (or use password.value), until then the session is not configured",
                p.address
            )
        })?;
        p.password = Some(key.trim_end_matches(['\n', '\r']).to_string());
    }
    Ok(p)
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The status `routingstatus/<node>` holds (pure).
pub fn routing_status(
    status: &Status,
    planned: &BTreeMap<IpAddr, (PeerType, Option<String>)>,
    cluster_id: Option<Ipv4Addr>,
) -> RoutingStatus {
    let peers = status
        .peers
        .iter()
        .map(|p| {
            let (peer_type, node) = planned
                .get(&p.address.ip)
                .cloned()
                .unwrap_or((PeerType::Global, None));
            RoutingPeerStatus {
                address: p.address.to_string(),
                node,
                peer_type,
                asn: Some(p.asn),
                state: p.state.to_string(),
                since: epoch(p.since),
                info: p.last_error.clone().unwrap_or_else(|| p.info.clone()),
                prefixes_received: p.prefixes_received,
                prefixes_advertised: p.prefixes_advertised,
            }
        })
        .collect();
    RoutingStatus {
        protocol: RoutingProtocol::Bgp,
        router_id: Some(status.router_id),
        asn: Some(status.asn),
        route_reflector_cluster_id: cluster_id,
        peers,
    }
}

/// Sessions not Established since `down_since` for [`STUCK_AFTER`] or more at `now` (wall
/// clock), in words with the fix (pure). A session retrying goes Connect, Active, Connect…:
/// what counts is how long it has not been up.
pub fn stuck(
    status: &Status,
    planned: &BTreeMap<IpAddr, (PeerType, Option<String>)>,
    down_since: &BTreeMap<IpAddr, SystemTime>,
    now: SystemTime,
) -> Vec<String> {
    status
        .peers
        .iter()
        .filter(|p| p.state != State::Established)
        .filter_map(|p| {
            let since = down_since.get(&p.address.ip).copied().unwrap_or(p.since);
            let long = now.duration_since(since).ok()?;
            (long >= STUCK_AFTER).then(|| stuck_problem(p, planned.get(&p.address.ip), long))
        })
        .collect()
}

fn stuck_problem(
    p: &PeerStatus,
    planned: Option<&(PeerType, Option<String>)>,
    long: Duration,
) -> String {
    let why = p.last_error.as_deref().unwrap_or(&p.info);
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    let (what, fix) = match planned {
        Some((t, Some(node))) => (
            format!("node {node}, {}", t.label()),
            format!(
                "check that twilld runs on {node}, that {node}'s node IP {} is the address this node reaches it by (a first-found address on the wrong interface is the usual cause: set nodeIP or a Node resource, see twill node status), and that TCP port {} is open between them",
                p.address.ip,
                p.address.port.unwrap_or(179)
            ),
        ),
        Some((t, None)) => (
            t.label().to_string(),
            format!(
                "check that the router at {} runs BGP with AS {}, peers with this node's IP, and has the same password (if any)",
                p.address, p.asn
            ),
        ),
        None => ("peer".into(), "check the BGPPeer resources".into()),
    };
    format!(
        "BGP session with {} ({what}) stuck in {} for {}s{why}: {fix}",
        p.address,
        p.state,
        long.as_secs()
    )
}

impl Backend for Bgp {
    fn kind(&self) -> BackendKind {
        BackendKind::Bgp
    }

    fn start(&mut self, events: &Events, _now: Instant) -> Result<(), super::BackendError> {
        // The speaker itself starts on the first sync, when its router ID and AS are known.
        self.events = Some(events.clone());
        Ok(())
    }

    /// No route of its own (the speaker writes the learned ones): only what cannot be done.
    fn plan(&self, local: &Local, peers: &[Peer]) -> Desired {
        let plan = session_plan(local, peers, &self.inputs);
        let mut problems = self.inputs.problems.clone();
        problems.extend(plan.problems);
        problems.extend(self.edge_problems.iter().cloned());
        if let Some(st) = &self.status {
            problems.extend(stuck(
                st,
                &self.planned,
                &self.down_since,
                SystemTime::now(),
            ));
        }
        Desired {
            problems,
            ..Desired::default()
        }
    }

    fn set_inputs(&mut self, inputs: &RoutingInputs) {
        self.inputs = inputs.clone();
    }

    fn sync(&mut self, local: &Local, peers: &[Peer]) -> Vec<String> {
        let shown = self.edge_problems.clone();
        let failures = self.sync_speaker(local, peers);
        if self.edge_problems != shown {
            // This pass's plan (so /readyz) was made with the old ones: another pass now.
            // (A speaker that started here and had its session up before the news of it
            // arrived left "cannot start" in /readyz until the 30 s resync: seen in CI.)
            if let Some(e) = &self.events {
                e.send(EdgeProblemsChanged);
            }
        }
        failures
    }

    /// Between passes: the planned sessions for the new peer list go to the running
    /// speaker now (a reflector peers with a client that just joined without waiting for
    /// the agent's round). A change of the speaker's identity waits for the pass, which
    /// restarts it.
    fn peers_changed(&mut self, local: &Local, peers: &[Peer]) -> Vec<String> {
        let plan = session_plan(local, peers, &self.inputs);
        let same = self
            .speaker
            .as_ref()
            .is_some_and(|(_, id)| *id == Identity::of(&plan, local));
        if !same {
            return Vec::new();
        }
        self.send_peers(&plan)
    }

    fn next_timer(&self) -> Option<Instant> {
        // When the next session not up yet counts as stuck (so /readyz says so); one in
        // the past is due now, until a pass has seen it.
        let now = SystemTime::now();
        self.down_since
            .iter()
            .filter(|(ip, _)| !self.stuck_seen.contains(*ip))
            .map(|(_, since)| {
                let at = *since + STUCK_AFTER;
                match at.duration_since(now) {
                    Ok(left) => Instant::now() + left,
                    // Overdue: an instant in the past, so the driver finds it due.
                    Err(e) => Instant::now()
                        .checked_sub(e.duration())
                        .unwrap_or_else(Instant::now),
                }
            })
            .min()
    }

    fn on_event(&mut self, event: Event, _now: Instant) -> Reaction {
        let before = self.established();
        let timer = matches!(event, Event::Timer);
        match event {
            Event::Timer => {
                let now = SystemTime::now();
                for (ip, since) in &self.down_since {
                    if *since + STUCK_AFTER <= now {
                        self.stuck_seen.insert(*ip);
                    }
                }
            }
            Event::Message(m) if m.is::<EdgeProblemsChanged>() => return Reaction::Reconcile,
            Event::Message(m) => {
                let Ok(news) = m.downcast::<SpeakerNews>() else {
                    return Reaction::Idle;
                };
                if news.0 != self.generation || self.speaker.is_none() {
                    return Reaction::Idle;
                }
                if let Notice::Stopped { error } = news.1 {
                    // The loop ended on its own: a new one starts on the next pass.
                    crate::log::error(
                        "the BGP speaker stopped; starting it again",
                        &[("error", &error.unwrap_or_default())],
                    );
                    self.speaker = None;
                    self.status = None;
                    return Reaction::Reconcile;
                }
            }
        }
        self.refresh_status();
        // The counts are read with the status after every pass or not; a session up or
        // down (or one crossing STUCK_AFTER, the timer) may change the problems: a pass.
        // Retries (Connect, Active, Connect…) are no change.
        if self.established() != before || timer {
            Reaction::Reconcile
        } else {
            Reaction::Idle
        }
    }

    fn routing_status(&self) -> Option<RoutingStatus> {
        let st = self.status.as_ref()?;
        let cluster = self.identity.as_ref().and_then(|i| i.cluster_id);
        Some(routing_status(st, &self.planned, cluster))
    }

    /// A clean stop: Cease to every peer, our routes leave every kernel, the learned ones
    /// leave ours; the next start is a fresh one.
    fn stop(&mut self) {
        if let Some((sp, _)) = self.speaker.take() {
            if let Err(e) = sp.stop(false) {
                crate::log::error("the BGP speaker stopped with an error", &[("error", &e)]);
            }
            let _ = std::fs::remove_file(self.state_dir.join(RAN_MARK));
            crate::log::info("BGP speaker stopped: Cease sent to every peer", &[]);
        }
        self.status = None;
        self.down_since.clear();
    }
}

impl Bgp {
    /// The speaker's side of a pass: started (or restarted) for this identity, given its
    /// peers and announcements. Returns what failed.
    fn sync_speaker(&mut self, local: &Local, peers: &[Peer]) -> Vec<String> {
        let plan = session_plan(local, peers, &self.inputs);
        let identity = Identity::of(&plan, local);
        self.identity = Some(identity.clone());
        if let Err(e) = self.ensure_speaker(&identity) {
            // Shown in /readyz by the next pass (a failure brings one within the retry).
            self.edge_problems = vec![e.clone()];
            return vec![e];
        }
        let mut failures = self.send_peers(&plan);
        let announce = originated(&local.blocks, &self.inputs.pod_ips, &plan.communities);
        let (sp, _) = self.speaker.as_ref().expect("started above");
        if self.sent_originated.as_ref() != Some(&announce) {
            match sp.set_originated(announce.clone()) {
                Ok(()) => self.sent_originated = Some(announce),
                Err(e) => failures.push(format!("BGP announcements not applied: {e}")),
            }
        }
        self.refresh_status();
        failures
    }

    /// Hands the running speaker the peers of `plan` if they differ from what it has
    /// (password files read here); remembers what is planned for the status. Returns what
    /// failed.
    fn send_peers(&mut self, plan: &SessionPlan) -> Vec<String> {
        let mut failures = Vec::new();
        let mut edge = Vec::new();
        let read = |f: &str| std::fs::read_to_string(f);
        let mut list = Vec::new();
        self.planned.clear();
        for s in &plan.sessions {
            self.planned
                .insert(s.peer.address.ip, (s.peer_type, s.node.clone()));
            match speaker_peer(s, &read) {
                Ok(p) => list.push(p),
                Err(e) => edge.push(e),
            }
        }
        self.edge_problems = edge;
        let Some((sp, _)) = self.speaker.as_ref() else {
            return failures;
        };
        if self.sent_peers.as_ref() != Some(&list) {
            match sp.set_peers(list.clone()) {
                Ok(()) => self.sent_peers = Some(list),
                Err(e) => failures.push(format!("BGP peers not applied: {e}")),
            }
        }
        failures
    }

    /// The peers whose sessions are up.
    fn established(&self) -> Vec<PeerAddress> {
        self.status
            .as_ref()
            .map(|s| {
                s.peers
                    .iter()
                    .filter(|p| p.state == State::Established)
                    .map(|p| p.address)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
