//! `twill node status`: calicoctl's `node status` for Twill. Every agent probes the node IP
//! each peer advertises and publishes what it sees (`peers/<node>`); this puts those views
//! side by side, per node a table of its peers, and says plainly when a node's chosen IP is
//! unreachable from the others: the seed's `first-found` trap. Pure: [`build`], [`render`].

use crate::table;
use crate::view::ClusterView;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
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
    only: Option<&str>,
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
                        failures: r.failures,
                        info: r.error.clone(),
                        backend: r.backend.clone(),
                    },
                    other => PeerRow {
                        peer: peer.clone(),
                        address,
                        state: State::Unknown,
                        since: None,
                        rtt_micros: None,
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

/// "10:31:05Z": the UTC time of day of `epoch` (a state's start is recent).
fn clock(epoch: u64) -> String {
    let s = epoch % 86400;
    format!("{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
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
        if node.peers.is_empty() {
            out.push_str("no peers\n");
            continue;
        }
        let mut header = vec!["PEER", "ADDRESS", "STATE", "RTT", "BACKEND"];
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
            "failures": if reachable { 0 } else { 1 }, "backend": "host-gw direct"});
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

    fn report(kvs: &[KeyValue], only: Option<&str>) -> StatusReport {
        let view = ClusterView::from_kvs(twill_store::StoreKind::Embedded, 9, kvs);
        build(&view, &peer_views(kvs), only).unwrap()
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
        assert!(text.contains("\nNode n1: 192.0.2.11 (first-found on eth0)\nPEER   ADDRESS      STATE                         RTT       BACKEND\nn2     10.0.5.2     Unreachable since 10:31:05Z   -         host-gw direct\nn3     192.0.2.13   Reachable                     0.085ms   host-gw direct\n"), "{text}");
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
        assert!(build(&view, &BTreeMap::new(), None)
            .unwrap_err()
            .contains("start twilld"));
        let kvs = trapped();
        let view = ClusterView::from_kvs(twill_store::StoreKind::Embedded, 1, &kvs);
        assert!(build(&view, &peer_views(&kvs), Some("n9"))
            .unwrap_err()
            .contains("twill get nodes"));
    }
}
