//! `twill node status`: calicoctl's `node status` for Twill. Every agent probes the node IP
//! each peer advertises and publishes what it sees (`peers/<node>`); this puts those views
//! side by side, per node a table of its peers, and says plainly when a node's chosen IP is
//! unreachable from the others: the seed's `first-found` trap. In Calico mode each agent
//! also publishes its routing sessions (`routingstatus/<node>`), shown as calicoctl shows
//! them ("IPv4 BGP status", PEER ADDRESS | PEER TYPE | STATE | SINCE | INFO), and BGP
//! sessions stuck in Active or Connect are the same trap seen from BGP: named, with the
//! probes' evidence and the fix. Pure: [`build`], [`render`].

use crate::table;
use crate::view::ClusterView;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use twill_api::bgp::{RoutingProtocol, RoutingStatus, PREFIX_ROUTING_STATUS};
use twill_api::resources::{PeerView, PREFIX_PEERS};
use twill_store::{KeyValue, PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum State {
    Reachable,
    Unreachable,
    Unknown,
}

/// One peer as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRow {
    pub peer: String,
    /// The address the peer advertises now.
    pub address: Ipv4Addr,
    pub state: State,
    /// Seconds since the epoch when the state began (Reachable / Unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_micros: Option<u64>,
    /// Seconds since the epoch of the result shown: its last probe, or for a peer a
    /// partial view leaves out (reachable), the oldest of that view's results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked: Option<u64>,
    pub failures: u32,
    /// Why the last probe failed, or why the state is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub name: String,
    pub address: Ipv4Addr,
    /// How the address was chosen ("first-found", "override", …).
    pub autodetection: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Whether its agent publishes a peer view (it probes only when a backend is on).
    pub probing: bool,
    pub peers: Vec<PeerRow>,
    /// Its BGP or RIP sessions as its agent publishes them (Calico mode), with each
    /// peer's state and prefixes received and advertised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub backend: String,
    pub nodes: Vec<NodeReport>,
    pub warnings: Vec<String>,
}

impl StatusReport {
    /// 1 when any node in the report is unreachable from a peer, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(!self.warnings.is_empty())
    }
}

/// The `peers/<node>` views among listed keys; unreadable ones are skipped. Pure.
pub fn peer_views(kvs: &[KeyValue]) -> BTreeMap<String, PeerView> {
    kvs.iter()
        .filter_map(|kv| {
            let name = kv.key.strip_prefix(PREFIX)?.strip_prefix(PREFIX_PEERS)?;
            Some((name.to_string(), serde_json::from_slice(&kv.value).ok()?))
        })
        .collect()
}

/// The `routingstatus/<node>` values among listed keys; unreadable ones are skipped. Pure.
pub fn routing_statuses(kvs: &[KeyValue]) -> BTreeMap<String, RoutingStatus> {
    kvs.iter()
        .filter_map(|kv| {
            let name = kv
                .key
                .strip_prefix(PREFIX)?
                .strip_prefix(PREFIX_ROUTING_STATUS)?;
            Some((name.to_string(), serde_json::from_slice(&kv.value).ok()?))
        })
        .collect()
}

/// A session in Active or Connect this long is stuck, not coming up: the connect retry
/// (5 s by default) has run at least once.
pub const STUCK_AFTER_SECS: u64 = 10;

/// Whether a BGP session is failing rather than coming up: in Idle, Connect or Active
/// for [`STUCK_AFTER_SECS`], or with an error recorded. The error matters because a
/// session that cannot connect cycles between Connect and Active with every retry, and
/// each change restarts `since`.
pub fn is_stuck(p: &twill_api::bgp::RoutingPeerStatus, now: u64) -> bool {
    matches!(p.state.as_str(), "Idle" | "Active" | "Connect")
        && (now.saturating_sub(p.since) >= STUCK_AFTER_SECS || !p.info.is_empty())
}

/// "n1", "n1 and n3", "n1, n3 and n4".
fn and_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The report for every node with a live status, or only `only` (as an observer, and as
/// the target of warnings). Pure.
pub fn build(
    view: &ClusterView,
    views: &BTreeMap<String, PeerView>,
    routing: &BTreeMap<String, RoutingStatus>,
    only: Option<&str>,
    now: u64,
) -> Result<StatusReport, String> {
    if view.statuses.is_empty() {
        return Err(
            "no node has published its status (no nodes/ keys): start twilld on the nodes, or point twill at their store with --store/--store-dir/--etcd-endpoints".into(),
        );
    }
    if let Some(n) = only {
        if !view.statuses.contains_key(n) {
            return Err(format!(
                "node {n} has no status: its agent is not running or never started (`twill get nodes` lists the nodes)"
            ));
        }
    }
    let mut nodes = Vec::new();
    for (name, entry) in &view.statuses {
        let status = &entry.status;
        let own = views.get(name);
        let peers = view
            .statuses
            .iter()
            .filter(|(peer, _)| *peer != name)
            .map(|(peer, pe)| {
                let address = pe.status.address;
                let seen = own.and_then(|v| v.peers.get(peer));
                match seen {
                    Some(r) if r.address == address => PeerRow {
                        peer: peer.clone(),
                        address,
                        state: if r.reachable {
                            State::Reachable
                        } else {
                            State::Unreachable
                        },
                        since: Some(r.since),
                        rtt_micros: r.rtt_micros,
                        checked: (r.checked > 0).then_some(r.checked),
                        failures: r.failures,
                        info: r.error.clone(),
                        backend: r.backend.clone(),
                    },
                    None if own.is_some_and(|v| {
                        v.summary.as_ref().is_some_and(|s| s.unprobed == 0)
                    }) =>
                    {
                        // A partial view lists only problems: absent means reachable.
                        let s = own.and_then(|v| v.summary.as_ref()).expect("checked");
                        PeerRow {
                            peer: peer.clone(),
                            address,
                            state: State::Reachable,
                            since: None,
                            rtt_micros: None,
                            checked: (s.oldest_checked > 0).then_some(s.oldest_checked),
                            failures: 0,
                            info: Some(format!(
                                "reachable at its last probe ({} of {} peers reachable; views of more than 64 peers list only problems; each peer is probed at least every {}s)",
                                s.reachable,
                                s.probed + s.unprobed,
                                s.cover_seconds
                            )),
                            backend: String::new(),
                        }
                    }
                    other => PeerRow {
                        peer: peer.clone(),
                        address,
                        state: State::Unknown,
                        since: None,
                        rtt_micros: None,
                        checked: None,
                        failures: 0,
                        info: Some(match (own, other) {
                            (None, _) => "this node publishes no peer view (its agent probes only when a backend is on)".into(),
                            (Some(_), Some(r)) => {
                                format!("last probed at its old address {}", r.address)
                            }
                            (Some(_), None) => "not probed yet".into(),
                        }),
                        backend: other.map(|r| r.backend.clone()).unwrap_or_default(),
                    },
                }
            })
            .collect();
        nodes.push(NodeReport {
            name: name.clone(),
            address: status.address,
            autodetection: status.autodetection.clone(),
            interface: own
                .filter(|v| v.address == Some(status.address))
                .and_then(|v| v.interface.clone()),
            probing: own.is_some(),
            peers,
            routing: routing.get(name).cloned(),
        });
    }

    let mut warnings = Vec::new();
    for target in &nodes {
        let verdicts = |state: State| -> Vec<&str> {
            nodes
                .iter()
                .filter(|o| o.name != target.name)
                .filter(|o| {
                    o.peers
                        .iter()
                        .any(|p| p.peer == target.name && p.state == state)
                })
                .map(|o| o.name.as_str())
                .collect()
        };
        let (cannot, can) = (verdicts(State::Unreachable), verdicts(State::Reachable));
        if cannot.is_empty() {
            continue;
        }
        if let Some(n) = only {
            if target.name != n && !cannot.contains(&n) {
                continue;
            }
        }
        let (t, a) = (&target.name, target.address);
        let observers = and_list(&cannot);
        warnings.push(if !can.is_empty() {
            format!(
                "WARNING: {observers} cannot reach {t} at {a}, though {} can: the address is right but something between them drops the traffic (a firewall, a down link, a partition)",
                and_list(&can)
            )
        } else if matches!(target.autodetection.as_str(), "override" | "nodeIP") {
            let by = if target.autodetection == "override" {
                "its Node resource (spec.ipv4Address)"
            } else {
                "nodeIP in its agent's config"
            };
            format!(
                "WARNING: {t} advertises {a} (set by {by}) but {observers} cannot reach it: the address set by hand is wrong or not on the interface facing its peers; fix {by}"
            )
        } else {
            let on = target
                .interface
                .as_deref()
                .map(|i| format!(" on {i}"))
                .unwrap_or_default();
            let example = nodes
                .iter()
                .find(|n| n.name == cannot[0])
                .map(|n| n.address.to_string())
                .unwrap_or_else(|| "<peer IP>".into());
            format!(
                "WARNING: {t} advertises {a} ({}{on}) but {observers} cannot reach it: its autodetection probably picked the wrong interface; set ipAutodetection (e.g. interface=eth0 or can-reach={example}) or apply a Node resource with spec.ipv4Address",
                target.autodetection
            )
        });
    }
    warnings.extend(stuck_warnings(&nodes, only, now));
    if let Some(n) = only {
        nodes.retain(|r| r.name == n);
    }
    Ok(StatusReport {
        backend: view
            .config
            .as_ref()
            .map(|c| c.backend.to_string())
            .unwrap_or_else(|| "(no network config)".into()),
        nodes,
        warnings,
    })
}

/// One session stuck in Active or Connect, as its node reports it.
struct Stuck<'a> {
    observer: &'a NodeReport,
    peer: &'a twill_api::bgp::RoutingPeerStatus,
}

/// Where a stuck session leads: a node of the cluster, or a router outside it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Node(String),
    Router(String),
}

/// BGP sessions stuck in Active or Connect, explained: sessions to a node whose address no
/// one reaches are the `first-found` trap (the probes' evidence is quoted when there is
/// some), sessions to a router outside say what to check on both ends. The node most
/// observers cannot reach is blamed first, and its own stuck sessions are put down to it.
fn stuck_warnings(nodes: &[NodeReport], only: Option<&str>, now: u64) -> Vec<String> {
    let mut stuck: Vec<Stuck> = Vec::new();
    for n in nodes {
        let Some(r) = &n.routing else { continue };
        if r.protocol != RoutingProtocol::Bgp {
            continue;
        }
        for p in &r.peers {
            if is_stuck(p, now) {
                stuck.push(Stuck {
                    observer: n,
                    peer: p,
                });
            }
        }
    }
    let target = |s: &Stuck| match &s.peer.node {
        Some(n) if nodes.iter().any(|m| &m.name == n) => Target::Node(n.clone()),
        _ => Target::Router(s.peer.address.clone()),
    };
    let mut warnings = Vec::new();
    let mut culprits: Vec<String> = Vec::new();
    let mut routers_done: Vec<Target> = Vec::new();
    loop {
        // Each target with the distinct nodes that cannot reach it, once the culprits
        // found so far are set aside.
        let mut by_target: BTreeMap<Target, Vec<&Stuck>> = BTreeMap::new();
        for s in &stuck {
            let t = target(s);
            if culprits.contains(&s.observer.name)
                || matches!(&t, Target::Node(n) if culprits.contains(n))
                || routers_done.contains(&t)
            {
                continue;
            }
            by_target.entry(t).or_default().push(s);
        }
        // Nodes first, the one most observers report (ties: one the probes cannot reach,
        // then by name); routers once no node is left to blame.
        let unreachable_by_probes = |t: &Target, list: &[&Stuck]| match t {
            Target::Node(n) => list.iter().any(|s| {
                s.observer
                    .peers
                    .iter()
                    .any(|p| &p.peer == n && p.state == State::Unreachable)
            }),
            Target::Router(_) => false,
        };
        let Some((t, list)) = by_target
            .iter()
            .max_by_key(|(t, list)| {
                (
                    matches!(t, Target::Node(_)),
                    list.len(),
                    unreachable_by_probes(t, list),
                    std::cmp::Reverse((*t).clone()),
                )
            })
            .map(|(t, l)| (t.clone(), l.clone()))
        else {
            break;
        };
        let involved = |name: &str| {
            list.iter().any(|s| s.observer.name == name) || t == Target::Node(name.to_string())
        };
        // Two nodes that only fail each other, and nothing (more observers, the probes)
        // says which one's address is wrong: neither is blamed.
        let mutual = match (&t, &list[..]) {
            (Target::Node(n), [only_one]) => {
                let o = &only_one.observer.name;
                let back = by_target.get(&Target::Node(o.clone()));
                back.filter(|b| b.len() == 1 && &b[0].observer.name == n)
                    .filter(|b| {
                        !unreachable_by_probes(&t, &list)
                            && !unreachable_by_probes(&Target::Node(o.clone()), b)
                    })
                    .map(|b| (only_one.observer, b[0].observer))
            }
            _ => None,
        };
        let text = match &t {
            Target::Node(_) if mutual.is_some() => {
                let (a, b) = mutual.expect("checked");
                culprits.push(a.name.clone());
                culprits.push(b.name.clone());
                let both = [&list[0], &by_target[&Target::Node(a.name.clone())][0]];
                pair_stuck_warning(a, b, &both)
            }
            Target::Node(n) => {
                let own_stuck = stuck.iter().filter(|s| &s.observer.name == n).count();
                culprits.push(n.clone());
                node_stuck_warning(nodes, n, &list, own_stuck)
            }
            Target::Router(_) => {
                routers_done.push(t.clone());
                router_stuck_warning(&list)
            }
        };
        if only.is_none_or(involved) {
            warnings.push(text);
        }
    }
    warnings
}

/// ("Active/Connect", "since 10:31:05Z: Connection refused"): the states, and the
/// earliest start with the first reason given.
fn stuck_since(list: &[&Stuck]) -> (String, String) {
    let mut states: Vec<&str> = list.iter().map(|s| s.peer.state.as_str()).collect();
    states.sort();
    states.dedup();
    let since = list.iter().map(|s| s.peer.since).min().unwrap_or(0);
    let why = list
        .iter()
        .map(|s| s.peer.info.as_str())
        .find(|i| !i.is_empty())
        .map(|i| format!(": {i}"))
        .unwrap_or_default();
    (states.join("/"), format!("since {}{why}", clock(since)))
}

fn node_stuck_warning(
    nodes: &[NodeReport],
    target: &str,
    list: &[&Stuck],
    own_stuck: usize,
) -> String {
    let t = nodes
        .iter()
        .find(|n| n.name == target)
        .expect("a node target");
    let observers: Vec<&str> = list.iter().map(|s| s.observer.name.as_str()).collect();
    let addr = list[0].peer.address.as_str();
    let probe = |state: State| -> Vec<&str> {
        list.iter()
            .filter(|s| {
                s.observer
                    .peers
                    .iter()
                    .any(|p| p.peer == target && p.state == state)
            })
            .map(|s| s.observer.name.as_str())
            .collect()
    };
    let (cannot, can) = (probe(State::Unreachable), probe(State::Reachable));
    let (states, since) = stuck_since(list);
    let mut text = format!(
        "WARNING: BGP sessions with {target} at {addr} are stuck in {states} on {} ({since})",
        and_list(&observers)
    );
    if own_stuck > 0 {
        text.push_str(&format!(
            ", and {own_stuck} of {target}'s own session{} with {} are stuck too",
            if own_stuck == 1 { "" } else { "s" },
            if own_stuck == 1 {
                "its peer"
            } else {
                "its peers"
            },
        ));
    }
    if !can.is_empty() && cannot.is_empty() {
        text.push_str(&format!(
            ". Probes from {} reach {addr}, so the address works and BGP itself gets no answer: check that twilld on {target} runs the bgp backend, listens on the BGPConfiguration's listenPort (`twill get bgpconfig`), and that both ends have the same password",
            and_list(&can)
        ));
        return text;
    }
    if !cannot.is_empty() {
        let error = list
            .iter()
            .find_map(|s| {
                s.observer
                    .peers
                    .iter()
                    .find(|p| p.peer == target)
                    .and_then(|p| p.info.clone())
            })
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        text.push_str(&format!(
            ". Probes from {} cannot reach {addr} either{error}",
            and_list(&cannot)
        ));
    }
    let on = t
        .interface
        .as_deref()
        .map(|i| format!(" on {i}"))
        .unwrap_or_default();
    let example_if = list
        .iter()
        .find_map(|s| s.observer.interface.clone())
        .unwrap_or_else(|| "eth0".into());
    let example_ip = list[0].observer.address;
    text.push_str(&match t.autodetection.as_str() {
        "override" => format!(
            ": {target}'s address {} was set by its Node resource (spec.ipv4Address) and is wrong or not on the interface facing its peers; fix it (`twill get node {target} -o yaml`, edit spec.ipv4Address, `twill apply -f`)",
            t.address
        ),
        "nodeIP" => format!(
            ": {target}'s address {} was set by nodeIP in its twilld config and is wrong or not on the interface facing its peers; fix nodeIP there",
            t.address
        ),
        method => format!(
            ": {target} advertises {} ({method}{on}), probably the wrong interface. Fix: set ipAutodetection in {target}'s twilld config (interface={example_if} or can-reach={example_ip}), or `twill apply` a Node {target} with spec.ipv4Address",
            t.address
        ),
    });
    text
}

/// The session between two nodes fails both ways, and nothing says whose address is wrong.
fn pair_stuck_warning(a: &NodeReport, b: &NodeReport, both: &[&&Stuck]) -> String {
    let list: Vec<&Stuck> = both.iter().map(|s| **s).collect();
    let (states, since) = stuck_since(&list);
    let (a, b) = if a.name <= b.name { (a, b) } else { (b, a) };
    let about = |n: &NodeReport| {
        let on = n
            .interface
            .as_deref()
            .map(|i| format!(" on {i}"))
            .unwrap_or_default();
        format!("{} ({}, {}{on})", n.name, n.address, n.autodetection)
    };
    format!(
        "WARNING: the BGP session between {} and {} is stuck in {states} ({since}): one of the two addresses is probably wrong (autodetection on the wrong interface) or unreachable from the other. \
         Check both (`twill get nodes -o wide`); fix the wrong one with ipAutodetection in that node's twilld config (interface=… or can-reach=<the other's IP>), or `twill apply` a Node with spec.ipv4Address",
        about(a),
        about(b)
    )
}

fn router_stuck_warning(list: &[&Stuck]) -> String {
    let p = list[0].peer;
    let observers: Vec<String> = list
        .iter()
        .map(|s| format!("{} ({})", s.observer.name, s.observer.address))
        .collect();
    let observers: Vec<&str> = observers.iter().map(String::as_str).collect();
    let first_found: Vec<&str> = list
        .iter()
        .filter(|s| !matches!(s.observer.autodetection.as_str(), "override" | "nodeIP"))
        .map(|s| s.observer.name.as_str())
        .collect();
    let asn = p.asn.map(|a| format!(", AS {a}")).unwrap_or_default();
    let (states, since) = stuck_since(list);
    let mut text = format!(
        "WARNING: BGP sessions with the router {} ({}{asn}) are stuck in {states} on {} ({since}): the router does not take them. Check that it is configured to peer with these nodes' addresses, their AS and the password, and the BGPPeer's peerIP and asNumber (`twill get bgppeers -o wide`)",
        p.address,
        p.peer_type.label(),
        and_list(&observers)
    );
    if !first_found.is_empty() {
        text.push_str(&format!(
            "; if {} picked the wrong address ({}), set ipAutodetection (interface=… or can-reach={}) or `twill apply` a Node with spec.ipv4Address",
            and_list(&first_found),
            if first_found.len() == 1 { "autodetected" } else { "all autodetected" },
            router_ip(&p.address)
        ));
    }
    text
}

/// The router's IP from `IP` or `IP:PORT`.
fn router_ip(address: &str) -> String {
    address
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| address.to_string())
}

/// "10:31:05Z": the UTC time of day of `epoch` (a state's start is recent).
fn clock(epoch: u64) -> String {
    let s = epoch % 86400;
    format!("{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// calicoctl's SINCE: the UTC time of day within the last day, else the date.
fn since(epoch: u64, now: u64) -> String {
    if now.saturating_sub(epoch) < 86400 {
        let s = epoch % 86400;
        return format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    }
    // Days since 1970-01-01 to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = (epoch / 86400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A table boxed as calicoctl's (tablewriter: `+---+` rules, centred headers).
fn boxed(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let line = |cells: Vec<String>| -> String {
        cells.iter().map(|c| format!("| {c} ")).collect::<String>() + "|\n"
    };
    let mut out = rule.clone();
    out.push_str(&line(
        header
            .iter()
            .zip(&widths)
            .map(|(h, w)| {
                let pad = w - h.chars().count();
                format!("{}{h}{}", " ".repeat(pad / 2), " ".repeat(pad - pad / 2))
            })
            .collect(),
    ));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(
            row.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect(),
        ));
    }
    out.push_str(&rule);
    out
}

/// A node's routing sessions as calicoctl prints them: "IPv4 BGP status" (or RIP), then
/// PEER ADDRESS | PEER TYPE | STATE | SINCE | INFO. STATE is BIRD's protocol state (`up`
/// when Established, else `start`); INFO the session state and its last error.
fn render_routing(r: &RoutingStatus, wide: bool, now: u64) -> String {
    let name = match r.protocol {
        RoutingProtocol::Bgp => "BGP",
        RoutingProtocol::Rip => "RIP",
    };
    let mut out = format!("\nIPv4 {name} status\n");
    if wide {
        let mut about = Vec::new();
        if let Some(a) = r.asn {
            about.push(format!("AS {a}"));
        }
        if let Some(id) = r.router_id {
            about.push(format!("router ID {id}"));
        }
        if let Some(c) = r.route_reflector_cluster_id {
            about.push(format!("route reflector (cluster ID {c})"));
        }
        if !about.is_empty() {
            out.push_str(&about.join(", "));
            out.push('\n');
        }
    }
    if r.peers.is_empty() {
        out.push_str("No IPv4 peers found.\n");
        return out;
    }
    let rows: Vec<Vec<String>> = r
        .peers
        .iter()
        .map(|p| {
            let (state, info) = match r.protocol {
                RoutingProtocol::Bgp => (
                    if p.state == "Established" {
                        "up"
                    } else {
                        "start"
                    }
                    .to_string(),
                    if p.info.is_empty() {
                        p.state.clone()
                    } else {
                        format!("{} {}", p.state, p.info)
                    },
                ),
                RoutingProtocol::Rip => (
                    p.state.clone(),
                    if p.info.is_empty() {
                        format!(
                            "{} route{}",
                            p.prefixes_received,
                            if p.prefixes_received == 1 { "" } else { "s" }
                        )
                    } else {
                        p.info.clone()
                    },
                ),
            };
            let mut row = vec![
                p.address.clone(),
                p.peer_type.label().to_string(),
                state,
                since(p.since, now),
                info,
            ];
            if wide {
                row.push(p.node.clone().unwrap_or_else(|| "-".into()));
                row.push(p.asn.map_or("-".into(), |a| a.to_string()));
                row.push(p.prefixes_received.to_string());
                row.push(p.prefixes_advertised.to_string());
            }
            row
        })
        .collect();
    let mut header = vec!["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"];
    if wide {
        header.extend(["NODE", "ASN", "RECEIVED", "ADVERTISED"]);
    }
    out.push_str(&boxed(&header, &rows));
    out
}

fn rtt(micros: Option<u64>) -> String {
    micros
        .map(|m| format!("{:.3}ms", m as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

/// The tables (a header line per node) and the warnings. Pure.
pub fn render(report: &StatusReport, wide: bool, now: u64) -> String {
    let mut out = format!("Backend: {}\n", report.backend);
    for node in &report.nodes {
        let on = node
            .interface
            .as_deref()
            .map(|i| format!(" on {i}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "\nNode {}: {} ({}{on})\n",
            node.name, node.address, node.autodetection
        ));
        let routing = match &node.routing {
            Some(r) => render_routing(r, wide, now),
            None if report.nodes.iter().any(|n| n.routing.is_some()) => {
                "\nNo routing status: this node's twilld publishes none (it runs no bgp or rip backend, or has not started it yet)\n".to_string()
            }
            None => String::new(),
        };
        if node.peers.is_empty() {
            out.push_str("no peers\n");
            out.push_str(&routing);
            continue;
        }
        let mut header = vec!["PEER", "ADDRESS", "STATE", "CHECKED", "RTT", "BACKEND"];
        if wide {
            header.extend(["FOR", "FAILURES", "INFO"]);
        }
        let rows: Vec<Vec<String>> = node
            .peers
            .iter()
            .map(|p| {
                let state = match (p.state, p.since) {
                    (State::Unreachable, Some(s)) => format!("Unreachable since {}", clock(s)),
                    (s, _) => format!("{s:?}"),
                };
                let mut row = vec![
                    p.peer.clone(),
                    p.address.to_string(),
                    state,
                    p.checked
                        .map(|c| format!("{} ago", table::age(now.saturating_sub(c))))
                        .unwrap_or_else(|| "-".into()),
                    rtt(p.rtt_micros),
                    if p.backend.is_empty() {
                        "-".into()
                    } else {
                        p.backend.clone()
                    },
                ];
                if wide {
                    row.push(
                        p.since
                            .map(|s| table::age(now.saturating_sub(s)))
                            .unwrap_or_else(|| "-".into()),
                    );
                    row.push(p.failures.to_string());
                    row.push(p.info.clone().unwrap_or_else(|| "-".into()));
                }
                row
            })
            .collect();
        out.push_str(&table::render(&header, &rows));
        out.push_str(&routing);
    }
    if !report.warnings.is_empty() {
        out.push('\n');
        for w in &report.warnings {
            out.push_str(w);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(key: &str, value: serde_json::Value) -> KeyValue {
        KeyValue {
            key: format!("{PREFIX}{key}"),
            value: serde_json::to_vec(&value).unwrap(),
            create_revision: 1,
            mod_revision: 1,
            lease: Some(twill_store::LeaseId(1)),
        }
    }

    fn node(name: &str, ip: &str, method: &str) -> KeyValue {
        kv(
            &format!("nodes/{name}"),
            json!({"name": name, "address": ip, "autodetection": method, "reason": "x"}),
        )
    }

    fn seen(ip: &str, reachable: bool) -> serde_json::Value {
        let mut v = json!({"address": ip, "reachable": reachable, "since": 37865,
            "checked": 37865 + 50, "failures": if reachable { 0 } else { 1 }, "backend": "host-gw direct"});
        if reachable {
            v["rttMicros"] = json!(85);
        } else {
            v["error"] = json!("Network is unreachable (os error 101)");
        }
        v
    }

    /// The first-found trap: n2 advertises the address of an interface no peer reaches.
    fn trapped() -> Vec<KeyValue> {
        vec![
            kv(
                "config",
                json!({"clusterCIDR": "10.244.0.0/16", "backend": "host-gw"}),
            ),
            node("n1", "192.0.2.11", "first-found"),
            node("n2", "10.0.5.2", "first-found"),
            node("n3", "192.0.2.13", "first-found"),
            kv(
                "peers/n1",
                json!({"address": "192.0.2.11", "interface": "eth0", "peers": {
                "n2": seen("10.0.5.2", false), "n3": seen("192.0.2.13", true)}}),
            ),
            kv(
                "peers/n2",
                json!({"address": "10.0.5.2", "interface": "eth1", "peers": {
                "n1": seen("192.0.2.11", true), "n3": seen("192.0.2.13", true)}}),
            ),
            kv(
                "peers/n3",
                json!({"address": "192.0.2.13", "interface": "eth0", "peers": {
                "n1": seen("192.0.2.11", true), "n2": seen("10.0.5.2", false)}}),
            ),
        ]
    }

    /// The probes' `since` (10:31:05Z) plus a minute.
    const NOW: u64 = 37865 + 60;

    fn report(kvs: &[KeyValue], only: Option<&str>) -> StatusReport {
        let view = ClusterView::from_kvs(twill_store::StoreKind::Embedded, 9, kvs);
        build(&view, &peer_views(kvs), &routing_statuses(kvs), only, NOW).unwrap()
    }

    #[test]
    fn a_partial_view_lists_problems_and_says_how_fresh_the_rest_is() {
        let mut kvs = vec![kv(
            "config",
            json!({"clusterCIDR": "10.244.0.0/16", "backend": "host-gw"}),
        )];
        for i in 1..=70 {
            kvs.push(node(
                &format!("n{i}"),
                &format!("192.0.2.{i}"),
                "first-found",
            ));
        }
        kvs.push(kv(
            "peers/n1",
            json!({"address": "192.0.2.1", "peers": {"n5": seen("192.0.2.5", false)},
                "summary": {"probed": 69, "reachable": 68, "unprobed": 0,
                    "oldestChecked": 37865 + 20, "coverSeconds": 15}}),
        ));
        let r = report(&kvs, Some("n1"));
        let n1 = &r.nodes[0];
        assert_eq!(n1.peers.len(), 69);
        let row = |p: &str| n1.peers.iter().find(|r| r.peer == p).unwrap();
        assert_eq!(row("n5").state, State::Unreachable);
        assert_eq!(row("n5").checked, Some(37865 + 50));
        assert_eq!(row("n6").state, State::Reachable);
        assert_eq!(row("n6").checked, Some(37865 + 20));
        assert!(row("n6")
            .info
            .as_deref()
            .unwrap()
            .contains("68 of 69 peers reachable"));
        let text = render(&r, false, NOW);
        assert!(
            text.contains("n6     192.0.2.6    Reachable                     40s ago   -     -"),
            "{text}"
        );
        assert_eq!(r.exit_code(), 1, "n1 cannot reach n5: {:?}", r.warnings);
    }

    #[test]
    fn the_first_found_trap_is_caught_and_explained() {
        let r = report(&trapped(), None);
        assert_eq!(r.exit_code(), 1);
        assert_eq!(
            r.warnings,
            ["WARNING: n2 advertises 10.0.5.2 (first-found on eth1) but n1 and n3 cannot reach it: its autodetection probably picked the wrong interface; set ipAutodetection (e.g. interface=eth0 or can-reach=192.0.2.11) or apply a Node resource with spec.ipv4Address"]
        );
        let text = render(&r, false, 37865 + 60);
        assert!(text.contains("\nNode n1: 192.0.2.11 (first-found on eth0)\nPEER   ADDRESS      STATE                         CHECKED   RTT       BACKEND\nn2     10.0.5.2     Unreachable since 10:31:05Z   10s ago   -         host-gw direct\nn3     192.0.2.13   Reachable                     10s ago   0.085ms   host-gw direct\n"), "{text}");
        let wide = render(&r, true, 37865 + 60);
        assert!(
            wide.contains("60s   1          Network is unreachable (os error 101)"),
            "{wide}"
        );
        // Scoped to n3: its own table, and the warning it is an observer of.
        let r = report(&trapped(), Some("n3"));
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn a_fixed_address_moves_every_verdict_to_unknown_until_probed() {
        let mut kvs = trapped();
        kvs[2] = node("n2", "192.0.2.12", "override");
        let r = report(&kvs, None);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.exit_code(), 0);
        let n1 = &r.nodes[0];
        assert_eq!(n1.peers[0].state, State::Unknown);
        assert_eq!(
            n1.peers[0].info.as_deref(),
            Some("last probed at its old address 10.0.5.2")
        );
        assert_eq!(
            r.nodes[1].interface, None,
            "n2's view names its old address"
        );
    }

    #[test]
    fn a_partial_partition_is_not_blamed_on_the_address() {
        let mut kvs = trapped();
        kvs[2] = node("n2", "192.0.2.12", "first-found");
        kvs[4] = kv(
            "peers/n1",
            json!({"address": "192.0.2.11", "peers": {"n2": seen("192.0.2.12", false)}}),
        );
        kvs[6] = kv(
            "peers/n3",
            json!({"address": "192.0.2.13", "peers": {"n2": seen("192.0.2.12", true)}}),
        );
        let r = report(&kvs, None);
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].starts_with("WARNING: n1 cannot reach n2 at 192.0.2.12, though n3 can"),
            "{}",
            r.warnings[0]
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["nodes"][0]["peers"][0]["state"], "Unreachable");
    }

    #[test]
    fn unknown_nodes_and_empty_stores_are_refused_with_the_fix() {
        let view = ClusterView::from_kvs(twill_store::StoreKind::Embedded, 1, &[]);
        assert!(build(&view, &BTreeMap::new(), &BTreeMap::new(), None, NOW)
            .unwrap_err()
            .contains("start twilld"));
        let kvs = trapped();
        let view = ClusterView::from_kvs(twill_store::StoreKind::Embedded, 1, &kvs);
        assert!(
            build(&view, &peer_views(&kvs), &BTreeMap::new(), Some("n9"), NOW)
                .unwrap_err()
                .contains("twill get nodes")
        );
    }

    fn session(
        addr: &str,
        node: Option<&str>,
        kind: &str,
        state: &str,
        since: u64,
        info: &str,
    ) -> serde_json::Value {
        let mut v = json!({"address": addr, "peerType": kind, "state": state, "since": since,
            "info": info, "prefixesReceived": if state == "Established" { 2 } else { 0 },
            "prefixesAdvertised": if state == "Established" { 1 } else { 0 }});
        if let Some(n) = node {
            v["node"] = json!(n);
            v["asn"] = json!(64512);
        } else {
            v["asn"] = json!(65000);
        }
        v
    }

    fn routing(node: &str, id: &str, peers: Vec<serde_json::Value>) -> KeyValue {
        kv(
            &format!("routingstatus/{node}"),
            json!({"protocol": "bgp", "routerID": id, "asn": 64512, "peers": peers}),
        )
    }

    /// The trap as BGP sees it: every session with n2 (at its wrong 10.0.5.2) is stuck,
    /// and so are n2's own; n1 and n3 peer with each other and with a ToR router.
    fn bgp_trapped() -> Vec<KeyValue> {
        let mut kvs = trapped();
        let t = 37865;
        kvs.push(routing(
            "n1",
            "192.0.2.11",
            vec![
                session(
                    "192.0.2.13",
                    Some("n3"),
                    "nodeMesh",
                    "Established",
                    t - 3600,
                    "",
                ),
                session(
                    "10.0.5.2",
                    Some("n2"),
                    "nodeMesh",
                    "Active",
                    t,
                    "Connection timed out",
                ),
                session("192.0.2.1", None, "global", "Established", t - 7200, ""),
            ],
        ));
        kvs.push(routing(
            "n2",
            "10.0.5.2",
            vec![
                session("192.0.2.11", Some("n1"), "nodeMesh", "Active", t, ""),
                session("192.0.2.13", Some("n3"), "nodeMesh", "Active", t, ""),
            ],
        ));
        kvs.push(routing(
            "n3",
            "192.0.2.13",
            vec![
                session(
                    "192.0.2.11",
                    Some("n1"),
                    "nodeMesh",
                    "Established",
                    t - 3600,
                    "",
                ),
                session("10.0.5.2", Some("n2"), "nodeMesh", "Connect", t, ""),
                session("192.0.2.1", None, "global", "Established", t - 7200, ""),
            ],
        ));
        kvs
    }

    #[test]
    fn bgp_sessions_print_as_calicoctl_prints_them() {
        let r = report(&bgp_trapped(), Some("n1"));
        let text = render(&r, false, NOW);
        assert!(
            text.contains(
                "\nIPv4 BGP status\n\
                 +--------------+-------------------+-------+----------+-----------------------------+\n\
                 | PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |            INFO             |\n\
                 +--------------+-------------------+-------+----------+-----------------------------+\n\
                 | 192.0.2.13   | node-to-node mesh | up    | 09:31:05 | Established                 |\n\
                 | 10.0.5.2     | node-to-node mesh | start | 10:31:05 | Active Connection timed out |\n\
                 | 192.0.2.1    | global            | up    | 08:31:05 | Established                 |\n\
                 +--------------+-------------------+-------+----------+-----------------------------+\n\
                 \nWARNING: "
            ),
            "{text}"
        );
        // The probes' table is still there, above.
        assert!(
            text.contains("\nNode n1: 192.0.2.11 (first-found on eth0)\nPEER   ADDRESS"),
            "{text}"
        );
        let wide = render(&r, true, NOW);
        assert!(
            wide.contains("\nIPv4 BGP status\nAS 64512, router ID 192.0.2.11\n"),
            "{wide}"
        );
        assert!(
            wide.contains("| Established                 | n3   | 64512 | 2        | 1          |"),
            "{wide}"
        );
        // A session up for more than a day shows its date, as BIRD's does.
        assert_eq!(since(37865, 37865 + 86399), "10:31:05");
        assert_eq!(since(37865, 37865 + 86400), "1970-01-01");
        assert_eq!(since(1_772_323_200, 1_772_323_200 + 90_000), "2026-03-01");
        assert_eq!(since(951_782_400, 951_782_400 + 90_000), "2000-02-29");
        // json: the sessions with their prefix counts.
        let j = serde_json::to_value(&r).unwrap();
        let peers = &j["nodes"][0]["routing"]["peers"];
        assert_eq!(peers[0]["prefixesReceived"], 2);
        assert_eq!(peers[0]["prefixesAdvertised"], 1);
        assert_eq!(peers[0]["peerType"], "nodeMesh");
        assert_eq!(peers[1]["state"], "Active");
        assert_eq!(j["nodes"][0]["routing"]["routerID"], "192.0.2.11");
    }

    #[test]
    fn bgp_sessions_stuck_in_active_blame_the_unreachable_node_with_the_fix() {
        let r = report(&bgp_trapped(), None);
        assert_eq!(r.exit_code(), 1);
        assert_eq!(r.warnings.len(), 2, "{:#?}", r.warnings);
        // The probes' warning as before, then BGP's: n2 is blamed once, its own stuck
        // sessions put down to it, the probes quoted, the fix given.
        assert!(
            r.warnings[0].starts_with("WARNING: n2 advertises 10.0.5.2"),
            "{}",
            r.warnings[0]
        );
        assert_eq!(
            r.warnings[1],
            "WARNING: BGP sessions with n2 at 10.0.5.2 are stuck in Active/Connect on n1 and n3 (since 10:31:05Z: Connection timed out), \
             and 2 of n2's own sessions with its peers are stuck too. Probes from n1 and n3 cannot reach 10.0.5.2 either \
             (Network is unreachable (os error 101)): n2 advertises 10.0.5.2 (first-found on eth1), probably the wrong interface. \
             Fix: set ipAutodetection in n2's twilld config (interface=eth0 or can-reach=192.0.2.11), or `twill apply` a Node n2 with spec.ipv4Address"
        );
        // Scoped to a node not involved in the stuck sessions: no BGP warning.
        let mut kvs = bgp_trapped();
        kvs.push(node("n4", "192.0.2.14", "first-found"));
        let r = report(&kvs, Some("n4"));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let r = report(&bgp_trapped(), Some("n2"));
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    }

    #[test]
    fn a_session_cycling_with_an_error_is_stuck_however_recent_its_state() {
        let p = |state: &str, since: u64, info: &str| -> twill_api::bgp::RoutingPeerStatus {
            serde_json::from_value(session(
                "192.0.2.12",
                Some("n2"),
                "nodeMesh",
                state,
                since,
                info,
            ))
            .unwrap()
        };
        let now = 1000;
        assert!(!is_stuck(&p("Active", now - 3, ""), now));
        assert!(is_stuck(&p("Active", now - 10, ""), now));
        assert!(is_stuck(&p("Connect", now - 1, "Connection refused"), now));
        assert!(is_stuck(&p("Idle", now, "Network is unreachable"), now));
        assert!(!is_stuck(&p("Idle", now - 5, ""), now));
        assert!(!is_stuck(&p("Established", now - 100, "x"), now));
        assert!(!is_stuck(&p("OpenSent", now - 100, ""), now));
    }

    #[test]
    fn a_session_only_just_started_is_not_stuck() {
        let r = report(&bgp_trapped(), None);
        let view = ClusterView::from_kvs(twill_store::StoreKind::Embedded, 9, &bgp_trapped());
        let kvs = bgp_trapped();
        // Five seconds after the sessions went Active: only the one with an error counts.
        let early = build(
            &view,
            &peer_views(&kvs),
            &routing_statuses(&kvs),
            None,
            37865 + 5,
        )
        .unwrap();
        assert_eq!(early.warnings.len(), 2, "{:?}", early.warnings);
        assert!(
            early.warnings[1].starts_with(
                "WARNING: BGP sessions with n2 at 10.0.5.2 are stuck in Active on n1 (since"
            ),
            "{}",
            early.warnings[1]
        );
        assert!(r.warnings[1].contains("on n1 and n3"), "{}", r.warnings[1]);
    }

    #[test]
    fn without_probes_the_node_most_peers_fail_is_blamed_and_a_lone_pair_is_not() {
        let t = 37865;
        // Three nodes, no peer views: n2 is the one both others fail.
        let mut kvs = trapped()[..4].to_vec();
        kvs.push(routing(
            "n1",
            "192.0.2.11",
            vec![
                session("10.0.5.2", Some("n2"), "nodeMesh", "Active", t, ""),
                session("192.0.2.13", Some("n3"), "nodeMesh", "Established", t, ""),
            ],
        ));
        kvs.push(routing(
            "n2",
            "10.0.5.2",
            vec![
                session("192.0.2.11", Some("n1"), "nodeMesh", "Connect", t, ""),
                session("192.0.2.13", Some("n3"), "nodeMesh", "Connect", t, ""),
            ],
        ));
        kvs.push(routing(
            "n3",
            "192.0.2.13",
            vec![
                session("10.0.5.2", Some("n2"), "nodeMesh", "Active", t, ""),
                session("192.0.2.11", Some("n1"), "nodeMesh", "Established", t, ""),
            ],
        ));
        let r = report(&kvs, None);
        assert_eq!(
            r.warnings,
            ["WARNING: BGP sessions with n2 at 10.0.5.2 are stuck in Active on n1 and n3 (since 10:31:05Z), and 2 of n2's own sessions with its peers are stuck too: \
              n2 advertises 10.0.5.2 (first-found), probably the wrong interface. Fix: set ipAutodetection in n2's twilld config (interface=eth0 or can-reach=192.0.2.11), \
              or `twill apply` a Node n2 with spec.ipv4Address"]
        );
        // Two nodes failing only each other: neither is blamed, both are named.
        let mut kvs = trapped()[..3].to_vec();
        kvs.push(routing(
            "n1",
            "192.0.2.11",
            vec![session(
                "10.0.5.2",
                Some("n2"),
                "nodeMesh",
                "Connect",
                t,
                "Connection timed out",
            )],
        ));
        kvs.push(routing(
            "n2",
            "10.0.5.2",
            vec![session(
                "192.0.2.11",
                Some("n1"),
                "nodeMesh",
                "Active",
                t,
                "",
            )],
        ));
        let r = report(&kvs, None);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with(
                "WARNING: the BGP session between n1 (192.0.2.11, first-found) and n2 (10.0.5.2, first-found) is stuck in Active/Connect (since 10:31:05Z: Connection timed out): one of the two addresses is probably wrong"
            ),
            "{}",
            r.warnings[0]
        );
        // With the probes: n1 cannot reach n2, so n2 is blamed.
        kvs.push(kv("peers/n1", json!({"address": "192.0.2.11", "interface": "eth0", "peers": {"n2": seen("10.0.5.2", false)}})));
        let r = report(&kvs, None);
        let bgp: Vec<&String> = r
            .warnings
            .iter()
            .filter(|w| w.starts_with("WARNING: BGP"))
            .collect();
        assert_eq!(bgp.len(), 1, "{:?}", r.warnings);
        assert!(
            bgp[0].starts_with("WARNING: BGP sessions with n2 at 10.0.5.2"),
            "{}",
            bgp[0]
        );
    }

    #[test]
    fn stuck_sessions_to_a_reachable_node_point_at_bgp_itself() {
        // n2's address is right (probes reach it) but its BGP does not answer.
        let t = 37865;
        let mut kvs = trapped();
        kvs[2] = node("n2", "192.0.2.12", "first-found");
        kvs[4] = kv(
            "peers/n1",
            json!({"address": "192.0.2.11", "peers": {"n2": seen("192.0.2.12", true)}}),
        );
        kvs[6] = kv(
            "peers/n3",
            json!({"address": "192.0.2.13", "peers": {"n2": seen("192.0.2.12", true)}}),
        );
        kvs.push(routing(
            "n1",
            "192.0.2.11",
            vec![session(
                "192.0.2.12",
                Some("n2"),
                "nodeMesh",
                "Active",
                t,
                "Connection refused",
            )],
        ));
        let r = report(&kvs, None);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("stuck in Active on n1 (since 10:31:05Z: Connection refused). Probes from n1 reach 192.0.2.12, so the address works")
                && r.warnings[0].contains("runs the bgp backend")
                && r.warnings[0].contains("listenPort"),
            "{}",
            r.warnings[0]
        );
        // An address set by hand: the fix is in the Node resource.
        kvs[2] = node("n2", "192.0.2.12", "override");
        kvs[4] = kv(
            "peers/n1",
            json!({"address": "192.0.2.11", "peers": {"n2": seen("192.0.2.12", false)}}),
        );
        kvs[6] = kv("peers/n3", json!({"address": "192.0.2.13", "peers": {}}));
        let r = report(&kvs, None);
        let bgp = r
            .warnings
            .iter()
            .find(|w| w.starts_with("WARNING: BGP"))
            .unwrap();
        assert!(
            bgp.contains("set by its Node resource (spec.ipv4Address)")
                && bgp.contains("twill get node n2 -o yaml"),
            "{bgp}"
        );
    }

    #[test]
    fn stuck_sessions_to_a_router_say_what_to_check_on_both_ends() {
        let t = 37865;
        let mut kvs = trapped()[..4].to_vec();
        for (n, ip) in [("n1", "192.0.2.11"), ("n3", "192.0.2.13")] {
            kvs.push(routing(
                n,
                ip,
                vec![session("192.0.2.1:1179", None, "global", "Connect", t, "")],
            ));
        }
        let r = report(&kvs, None);
        assert_eq!(
            r.warnings,
            ["WARNING: BGP sessions with the router 192.0.2.1:1179 (global, AS 65000) are stuck in Connect on n1 (192.0.2.11) and n3 (192.0.2.13) (since 10:31:05Z): \
              the router does not take them. Check that it is configured to peer with these nodes' addresses, their AS and the password, \
              and the BGPPeer's peerIP and asNumber (`twill get bgppeers -o wide`); if n1 and n3 picked the wrong address (all autodetected), \
              set ipAutodetection (interface=… or can-reach=192.0.2.1) or `twill apply` a Node with spec.ipv4Address"]
        );
        // A node with no routing status, beside nodes with one, says so.
        let text = render(&r, false, NOW);
        assert!(
            text.contains("\nNode n2: 10.0.5.2 (first-found)\nPEER   ADDRESS")
                && text.contains("\nNo routing status: this node's twilld publishes none"),
            "{text}"
        );
    }

    #[test]
    fn rip_neighbours_get_their_own_table() {
        let mut kvs = trapped()[..2].to_vec();
        kvs.push(kv(
            "routingstatus/n1",
            json!({"protocol": "rip", "peers": [
                {"address": "192.0.2.1", "peerType": "ripNeighbor", "state": "up", "since": 37800,
                 "prefixesReceived": 3, "prefixesAdvertised": 1},
                {"address": "192.0.2.12", "peerType": "ripNeighbor", "state": "timeout", "since": 37700,
                 "info": "no update for 180 s", "prefixesReceived": 0, "prefixesAdvertised": 1}]}),
        ));
        let text = render(&report(&kvs, None), false, NOW);
        assert!(
            text.ends_with(
                "\nIPv4 RIP status\n\
                 +--------------+--------------+---------+----------+---------------------+\n\
                 | PEER ADDRESS |  PEER TYPE   |  STATE  |  SINCE   |        INFO         |\n\
                 +--------------+--------------+---------+----------+---------------------+\n\
                 | 192.0.2.1    | rip neighbor | up      | 10:30:00 | 3 routes            |\n\
                 | 192.0.2.12   | rip neighbor | timeout | 10:28:20 | no update for 180 s |\n\
                 +--------------+--------------+---------+----------+---------------------+\n"
            ),
            "{text}"
        );
        // No sessions yet: calicoctl's words.
        let mut kvs = trapped()[..2].to_vec();
        kvs.push(routing("n1", "192.0.2.11", vec![]));
        assert!(render(&report(&kvs, None), false, NOW)
            .ends_with("\nIPv4 BGP status\nNo IPv4 peers found.\n"));
    }
}
