//! The planner against Calico's rules, one rule per test; every case also checks that the
//! two ends of each node-to-node session agree (one connects, the other waits).

use super::*;
use twill_api::bgp::{BgpConfiguration, BgpPeer, NodeBgp, Password, PeerType, RouterIdMode};

fn node(name: &str, ip: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        address: ip.parse().unwrap(),
        bgp: NodeBgp::default(),
        labels: Labels::new(),
    }
}

fn labelled(mut n: NodeInfo, kv: &[(&str, &str)]) -> NodeInfo {
    for (k, v) in kv {
        n.labels.insert(k.to_string(), v.to_string());
    }
    n
}

fn rr(mut n: NodeInfo, cluster: &str) -> NodeInfo {
    n.bgp.route_reflector_cluster_id = Some(cluster.parse().unwrap());
    n
}

fn with_as(mut n: NodeInfo, asn: u32) -> NodeInfo {
    n.bgp.as_number = Some(asn);
    n
}

fn three() -> Vec<NodeInfo> {
    vec![
        node("n1", "192.0.2.11"),
        node("n2", "192.0.2.12"),
        node("n3", "192.0.2.13"),
    ]
}

fn peers(list: &[(&str, BgpPeer)]) -> BTreeMap<String, BgpPeer> {
    list.iter()
        .map(|(n, p)| (n.to_string(), p.clone()))
        .collect()
}

const CIDR: &str = "10.244.0.0/16";

/// The plan of `nodes[i]` in a cluster of `nodes`.
fn plan_of(
    i: usize,
    nodes: &[NodeInfo],
    cfg: &BgpConfiguration,
    rules: &BTreeMap<String, BgpPeer>,
) -> SessionPlan {
    plan(Inputs {
        me: &nodes[i],
        others: nodes,
        config: cfg,
        peers: rules,
        cluster_cidr: Some(CIDR.parse().unwrap()),
    })
}

fn all_plans(
    nodes: &[NodeInfo],
    cfg: &BgpConfiguration,
    rules: &BTreeMap<String, BgpPeer>,
) -> Vec<SessionPlan> {
    let plans: Vec<SessionPlan> = (0..nodes.len())
        .map(|i| plan_of(i, nodes, cfg, rules))
        .collect();
    check_pairs(nodes, &plans);
    plans
}

/// Every node-to-node session has its mirror on the other node, and exactly one of the
/// two connects: the one with the lower IP.
fn check_pairs(nodes: &[NodeInfo], plans: &[SessionPlan]) {
    for (i, p) in plans.iter().enumerate() {
        for s in p.sessions.iter().filter(|s| s.node.is_some()) {
            let j = nodes
                .iter()
                .position(|n| Some(&n.name) == s.node.as_ref())
                .unwrap();
            let back = plans[j]
                .sessions
                .iter()
                .find(|b| b.node.as_deref() == Some(nodes[i].name.as_str()))
                .unwrap_or_else(|| {
                    panic!("{} peers {} but not back", nodes[i].name, nodes[j].name)
                });
            assert_ne!(s.peer.passive, back.peer.passive, "{s:?} / {back:?}");
            assert_eq!(
                s.peer.passive,
                nodes[j].address < nodes[i].address,
                "the lower IP connects"
            );
            assert_eq!(
                s.peer.asn, plans[j].asn,
                "{} expects {}'s AS",
                nodes[i].name, nodes[j].name
            );
            assert_eq!(back.peer.asn, p.asn);
            assert_eq!(s.peer.password, back.peer.password);
        }
    }
}

fn addrs(p: &SessionPlan) -> Vec<String> {
    p.sessions
        .iter()
        .map(|s| s.peer.address.to_string())
        .collect()
}

fn session<'a>(p: &'a SessionPlan, addr: &str) -> &'a Session {
    p.sessions
        .iter()
        .find(|s| s.peer.address.to_string() == addr)
        .unwrap_or_else(|| panic!("no session to {addr}: {:?}", addrs(p)))
}

fn peer_ip(ip: &str, asn: u32) -> BgpPeer {
    BgpPeer {
        peer_ip: Some(ip.into()),
        as_number: Some(asn),
        ..Default::default()
    }
}

fn selector_peer(node_sel: Option<&str>, peer_sel: &str) -> BgpPeer {
    BgpPeer {
        node_selector: node_sel.map(String::from),
        peer_selector: Some(peer_sel.into()),
        ..Default::default()
    }
}

fn mesh_off() -> BgpConfiguration {
    BgpConfiguration {
        node_to_node_mesh_enabled: false,
        ..Default::default()
    }
}

#[test]
fn defaults_are_an_ibgp_full_mesh_in_as_64512_with_graceful_restart() {
    let nodes = three();
    let plans = all_plans(&nodes, &BgpConfiguration::default(), &BTreeMap::new());
    let p = &plans[1];
    assert_eq!(p.asn, 64512);
    assert_eq!(p.router_id, "192.0.2.12".parse::<Ipv4Addr>().unwrap());
    assert_eq!(p.listen_port, 179);
    assert_eq!(p.restart_time, Some(120));
    assert_eq!(p.cluster_id, None);
    assert!(p.communities.is_empty());
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(addrs(p), ["192.0.2.11", "192.0.2.13"]);
    for s in &p.sessions {
        assert_eq!(s.peer_type, PeerType::NodeMesh);
        assert_eq!(s.peer.asn, 64512);
        assert_eq!(s.peer.local_address, Some("192.0.2.12".parse().unwrap()));
        assert_eq!(s.peer.address.port, None, "the cluster's listen port");
        assert!(!s.peer.route_reflector_client && !s.peer.next_hop_self);
        assert_eq!(
            (&s.peer.import, &s.peer.export),
            (&None, &None),
            "iBGP: all"
        );
        assert_eq!(s.peer.password, None);
    }
    assert!(
        session(p, "192.0.2.11").peer.passive,
        "n1 is lower: it connects"
    );
    assert!(!session(p, "192.0.2.13").peer.passive, "n2 connects to n3");
    assert_eq!(session(p, "192.0.2.13").node.as_deref(), Some("n3"));
    // n1 connects to everyone, n3 to no one.
    assert!(plans[0].sessions.iter().all(|s| !s.peer.passive));
    assert!(plans[2].sessions.iter().all(|s| s.peer.passive));
}

#[test]
fn the_lower_ip_connects_by_number_not_by_text() {
    // As text "192.0.2.9" > "192.0.2.10"; as numbers it is lower, so it connects.
    let nodes = vec![node("a", "192.0.2.10"), node("b", "192.0.2.9")];
    let plans = all_plans(&nodes, &BgpConfiguration::default(), &BTreeMap::new());
    assert!(plans[0].sessions[0].peer.passive);
    assert!(!plans[1].sessions[0].peer.passive);
}

#[test]
fn the_cluster_s_settings_reach_every_session() {
    let cfg = BgpConfiguration {
        as_number: Some(65010),
        listen_port: Some(1790),
        hold_time_seconds: Some(9),
        keepalive_time_seconds: Some(3),
        connect_retry_seconds: Some(1),
        restart_time_seconds: Some(30),
        communities: vec!["65010:100".into(), "no-export".into()],
        ..Default::default()
    };
    let nodes = three();
    let plans = all_plans(&nodes, &cfg, &BTreeMap::new());
    let p = &plans[0];
    assert_eq!(
        (p.asn, p.listen_port, p.restart_time),
        (65010, 1790, Some(30))
    );
    assert_eq!(
        p.communities,
        [Community((65010 << 16) | 100), Community::NO_EXPORT]
    );
    for s in &p.sessions {
        assert_eq!(s.peer.asn, 65010);
        assert_eq!(
            (s.peer.hold_time, s.peer.keepalive, s.peer.connect_retry),
            (Some(9), Some(3), Some(1))
        );
    }
    let off = BgpConfiguration {
        graceful_restart: false,
        ..Default::default()
    };
    assert_eq!(
        plan_of(0, &nodes, &off, &BTreeMap::new()).restart_time,
        None
    );
}

#[test]
fn mesh_off_and_no_peers_means_no_session() {
    let plans = all_plans(&three(), &mesh_off(), &BTreeMap::new());
    assert!(plans.iter().all(|p| p.sessions.is_empty()));
}

#[test]
fn an_as_per_node_makes_the_mesh_ebgp_with_explicit_policies() {
    let nodes = vec![
        with_as(node("n1", "192.0.2.11"), 65001),
        with_as(node("n2", "192.0.2.12"), 65002),
        node("n3", "192.0.2.13"),
    ];
    let plans = all_plans(&nodes, &BgpConfiguration::default(), &BTreeMap::new());
    assert_eq!(
        plans.iter().map(|p| p.asn).collect::<Vec<_>>(),
        [65001, 65002, 64512]
    );
    let s = session(&plans[0], "192.0.2.12");
    assert_eq!(s.peer.asn, 65002);
    assert_eq!(s.peer.import, Some(PolicyConfig::Accept), "RFC 8212");
    let Some(PolicyConfig::Terms(t)) = &s.peer.export else {
        panic!("{:?}", s.peer.export)
    };
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].prefixes[0].to_string(), "10.244.0.0/16 le 32");
    assert_eq!(t[0].action, config::Verdict::Accept);
    // Without a cluster CIDR, everything.
    let p = plan(Inputs {
        me: &nodes[0],
        others: &nodes,
        config: &BgpConfiguration::default(),
        peers: &BTreeMap::new(),
        cluster_cidr: None,
    });
    assert_eq!(p.sessions[0].peer.export, Some(PolicyConfig::Accept));
}

#[test]
fn router_ids_from_the_node_ip_a_hash_or_the_node_resource() {
    let mut nodes = three();
    let ip = plan_of(0, &nodes, &BgpConfiguration::default(), &BTreeMap::new());
    assert_eq!(ip.router_id, nodes[0].address);
    let hash = BgpConfiguration {
        router_id_mode: RouterIdMode::Hash,
        ..Default::default()
    };
    let h = plan_of(0, &nodes, &hash, &BTreeMap::new());
    assert_eq!(h.router_id, hash_router_id("n1"));
    assert_ne!(h.router_id, hash_router_id("n2"));
    // FNV-1 32 of "n1": 0x050c5d7e * ... checked against the definition by hand below.
    let mut x: u32 = 0x811c_9dc5;
    for b in *b"n1" {
        x = x.wrapping_mul(16_777_619) ^ u32::from(b);
    }
    assert_eq!(h.router_id, Ipv4Addr::from(x));
    assert_eq!(hash_router_id(""), Ipv4Addr::from(0x811c_9dc5));
    nodes[0].bgp.router_id = Some("198.51.100.7".parse().unwrap());
    for cfg in [BgpConfiguration::default(), hash] {
        assert_eq!(
            plan_of(0, &nodes, &cfg, &BTreeMap::new()).router_id,
            "198.51.100.7".parse::<Ipv4Addr>().unwrap()
        );
    }
}

#[test]
fn a_router_id_shared_with_another_node_is_a_problem() {
    let mut nodes = three();
    nodes[2].bgp.router_id = Some(nodes[0].address);
    let p = plan_of(0, &nodes, &BgpConfiguration::default(), &BTreeMap::new());
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert!(p.problems[0].contains("node n3 has this node's router ID 192.0.2.11"));
    assert!(p.problems[0].contains("spec.bgp.routerID"));
    assert_eq!(p.sessions.len(), 2, "the sessions are still planned");
}

#[test]
fn this_node_and_nodes_with_its_ip_are_never_peers() {
    let mut nodes = three();
    nodes.push(node("dup", "192.0.2.11"));
    let p = plan_of(0, &nodes, &BgpConfiguration::default(), &BTreeMap::new());
    assert_eq!(addrs(&p), ["192.0.2.12", "192.0.2.13"]);
}

#[test]
fn a_global_peer_ip_applies_to_every_node() {
    let mut tor = peer_ip("192.0.2.1", 65100);
    tor.password = Some(Password::Value("s3cr3t".into()));
    tor.keep_original_next_hop = true;
    tor.max_restart_time = Some("2m".into());
    let rules = peers(&[("tor", tor)]);
    let nodes = three();
    let plans = all_plans(&nodes, &mesh_off(), &rules);
    for (p, n) in plans.iter().zip(&nodes) {
        assert_eq!(addrs(p), ["192.0.2.1"]);
        let s = &p.sessions[0];
        assert_eq!(s.peer_type, PeerType::Global);
        assert_eq!(s.node, None);
        assert_eq!(s.peer.asn, 65100);
        assert!(!s.peer.passive, "routers are connected to");
        assert_eq!(s.peer.password.as_deref(), Some("s3cr3t"));
        assert!(s.peer.keep_original_next_hop);
        assert!(
            !s.peer.export_originated_only,
            "keepOriginalNextHop: the learned routes go too"
        );
        assert_eq!(s.peer.max_restart_time, Some(120));
        assert_eq!(s.peer.local_address, Some(IpAddr::V4(n.address)));
        assert!(s.peer.import.is_some() && s.peer.export.is_some(), "eBGP");
    }
}

#[test]
fn a_router_outside_the_cluster_gets_only_this_nodes_own_blocks() {
    let rules = peers(&[("tor", peer_ip("192.0.2.1", 65100))]);
    let nodes = three();
    for p in all_plans(&nodes, &BgpConfiguration::default(), &rules) {
        for s in &p.sessions {
            assert_eq!(
                s.peer.export_originated_only,
                s.node.is_none(),
                "originated only towards the router, everything towards nodes: {s:?}"
            );
        }
    }
}

#[test]
fn a_peer_ip_with_a_port_and_a_password_file() {
    let mut r = peer_ip("203.0.113.1:1179", 64512);
    r.password = Some(Password::File("/etc/twill/bgp.key".into()));
    let plans = all_plans(&three(), &mesh_off(), &peers(&[("r", r)]));
    let s = &plans[0].sessions[0];
    assert_eq!(s.peer.address.to_string(), "203.0.113.1:1179");
    assert_eq!(s.peer.password, None, "read at the I/O edge");
    assert_eq!(s.password_file.as_deref(), Some("/etc/twill/bgp.key"));
    assert_eq!((&s.peer.import, &s.peer.export), (&None, &None), "iBGP");
}

#[test]
fn node_specific_peers_apply_by_name_or_by_selector() {
    let nodes = vec![
        labelled(node("n1", "192.0.2.11"), &[("rack", "a")]),
        labelled(node("n2", "192.0.2.12"), &[("rack", "b")]),
        node("n3", "192.0.2.13"),
    ];
    let by_name = BgpPeer {
        node: Some("n3".into()),
        ..peer_ip("198.51.100.1", 65200)
    };
    let by_label = BgpPeer {
        node_selector: Some("rack == 'a'".into()),
        ..peer_ip("198.51.100.2", 65201)
    };
    let rules = peers(&[("one", by_name), ("racka", by_label)]);
    let plans = all_plans(&nodes, &mesh_off(), &rules);
    assert_eq!(addrs(&plans[0]), ["198.51.100.2"]);
    assert!(plans[1].sessions.is_empty());
    assert_eq!(addrs(&plans[2]), ["198.51.100.1"]);
    assert_eq!(plans[0].sessions[0].peer_type, PeerType::NodeSpecific);
    assert_eq!(plans[2].sessions[0].peer_type, PeerType::NodeSpecific);
}

#[test]
fn route_reflectors_by_selector_with_the_mesh_off() {
    // n1 and n4 reflect (cluster 224.0.0.1); every node peers with the reflectors.
    let nodes = vec![
        labelled(rr(node("n1", "192.0.2.11"), "224.0.0.1"), &[("rr", "yes")]),
        node("n2", "192.0.2.12"),
        node("n3", "192.0.2.13"),
        labelled(rr(node("n4", "192.0.2.14"), "224.0.0.1"), &[("rr", "yes")]),
    ];
    let rules = peers(&[("to-rr", selector_peer(Some("all()"), "has(rr)"))]);
    let plans = all_plans(&nodes, &mesh_off(), &rules);
    // Clients: sessions to both reflectors only.
    for c in [1, 2] {
        assert_eq!(addrs(&plans[c]), ["192.0.2.11", "192.0.2.14"]);
        for s in &plans[c].sessions {
            assert_eq!(s.peer_type, PeerType::RouteReflector);
            assert!(!s.peer.route_reflector_client);
        }
    }
    // Reflectors: every other node; non-RR nodes are clients, RR to RR is plain iBGP.
    let r1 = &plans[0];
    assert_eq!(r1.cluster_id, Some("224.0.0.1".parse().unwrap()));
    assert_eq!(addrs(r1), ["192.0.2.12", "192.0.2.13", "192.0.2.14"]);
    assert!(session(r1, "192.0.2.12").peer.route_reflector_client);
    assert!(session(r1, "192.0.2.13").peer.route_reflector_client);
    assert!(!session(r1, "192.0.2.14").peer.route_reflector_client);
    assert!(r1
        .sessions
        .iter()
        .all(|s| s.peer_type == PeerType::RouteReflector));
    assert!(r1.problems.is_empty(), "{:?}", r1.problems);
}

#[test]
fn the_selected_node_peers_back_even_outside_the_rule_s_scope() {
    // Only rack a nodes are told to peer with the reflector; the reflector itself is not
    // in rack a, yet it must peer back with them (and with no one else).
    let nodes = vec![
        labelled(node("n1", "192.0.2.11"), &[("rack", "a")]),
        labelled(node("n2", "192.0.2.12"), &[("rack", "b")]),
        labelled(rr(node("n3", "192.0.2.13"), "224.0.0.2"), &[("rr", "")]),
    ];
    let rules = peers(&[("a-to-rr", selector_peer(Some("rack == 'a'"), "has(rr)"))]);
    let plans = all_plans(&nodes, &mesh_off(), &rules);
    assert_eq!(addrs(&plans[0]), ["192.0.2.13"]);
    assert!(plans[1].sessions.is_empty());
    assert_eq!(addrs(&plans[2]), ["192.0.2.11"]);
    assert!(plans[2].sessions[0].peer.route_reflector_client);
}

#[test]
fn a_global_selector_rule_without_node_selector_works_both_ways() {
    let nodes = vec![
        node("n1", "192.0.2.11"),
        labelled(rr(node("n2", "192.0.2.12"), "224.0.0.3"), &[("rr", "1")]),
        node("n3", "192.0.2.13"),
    ];
    let rules = peers(&[("g", selector_peer(None, "rr == '1'"))]);
    let plans = all_plans(&nodes, &mesh_off(), &rules);
    assert_eq!(addrs(&plans[0]), ["192.0.2.12"]);
    assert_eq!(addrs(&plans[1]), ["192.0.2.11", "192.0.2.13"]);
    assert_eq!(addrs(&plans[2]), ["192.0.2.12"]);
}

#[test]
fn selector_peers_take_the_password_of_the_rule_on_both_ends() {
    let nodes = vec![
        node("n1", "192.0.2.11"),
        labelled(rr(node("n2", "192.0.2.12"), "224.0.0.3"), &[("rr", "1")]),
    ];
    let mut rule = selector_peer(None, "has(rr)");
    rule.password = Some(Password::Value("k".into()));
    let plans = all_plans(&nodes, &mesh_off(), &peers(&[("g", rule)]));
    assert_eq!(plans[0].sessions[0].peer.password.as_deref(), Some("k"));
    assert_eq!(plans[1].sessions[0].peer.password.as_deref(), Some("k"));
}

#[test]
fn a_reflector_in_the_mesh_reflects_to_nodes_without_a_cluster_id() {
    let nodes = vec![
        rr(node("n1", "192.0.2.11"), "224.0.0.1"),
        node("n2", "192.0.2.12"),
        rr(node("n3", "192.0.2.13"), "224.0.0.1"),
        with_as(node("n4", "192.0.2.14"), 65004),
    ];
    let plans = all_plans(&nodes, &BgpConfiguration::default(), &BTreeMap::new());
    let r = &plans[0];
    assert!(session(r, "192.0.2.12").peer.route_reflector_client);
    assert!(
        !session(r, "192.0.2.13").peer.route_reflector_client,
        "RR to RR"
    );
    assert!(
        !session(r, "192.0.2.14").peer.route_reflector_client,
        "eBGP peers are never clients"
    );
    assert!(plans[1]
        .sessions
        .iter()
        .all(|s| !s.peer.route_reflector_client));
}

#[test]
fn one_session_per_address_explicit_rules_first() {
    let nodes = vec![
        labelled(node("n1", "192.0.2.11"), &[("rr", "")]),
        node("n2", "192.0.2.12"),
    ];
    // The mesh and a selector rule both give n1 <-> n2: one session, of the selector's
    // type. A node-specific and a global peerIP rule name the same router: the
    // node-specific one wins, and since they differ, it is said.
    let special = BgpPeer {
        node: Some("n2".into()),
        ..peer_ip("198.51.100.1", 65300)
    };
    let rules = peers(&[
        ("a-global", peer_ip("198.51.100.1", 65301)),
        ("b-special", special),
        ("rr", selector_peer(None, "has(rr)")),
    ]);
    let plans = all_plans(&nodes, &BgpConfiguration::default(), &rules);
    let p = &plans[1];
    assert_eq!(addrs(p), ["192.0.2.11", "198.51.100.1"]);
    assert_eq!(session(p, "192.0.2.11").peer_type, PeerType::RouteReflector);
    let r = session(p, "198.51.100.1");
    assert_eq!((r.peer.asn, r.peer_type), (65300, PeerType::NodeSpecific));
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert!(
        p.problems[0].contains("BGPPeer b-special and BGPPeer a-global"),
        "{}",
        p.problems[0]
    );
    // n1 has only the global rule's router: no conflict there.
    assert_eq!(session(&plans[0], "198.51.100.1").peer.asn, 65301);
    assert!(plans[0].problems.is_empty(), "{:?}", plans[0].problems);
    // The same rule twice under two names is no conflict.
    let rules = peers(&[
        ("x", peer_ip("198.51.100.1", 65301)),
        ("y", peer_ip("198.51.100.1", 65301)),
    ]);
    assert!(plan_of(0, &nodes, &mesh_off(), &rules).problems.is_empty());
}

#[test]
fn a_peer_ip_naming_this_node_is_skipped() {
    let rules = peers(&[("self", peer_ip("192.0.2.11", 64512))]);
    let p = plan_of(0, &three(), &mesh_off(), &rules);
    assert!(p.sessions.is_empty() && p.problems.is_empty());
}

#[test]
fn invalid_rules_are_problems_naming_the_rule_and_the_field() {
    let rules = peers(&[
        (
            "no-as",
            BgpPeer {
                peer_ip: Some("198.51.100.1".into()),
                ..Default::default()
            },
        ),
        ("nothing", BgpPeer::default()),
        ("bad-sel", selector_peer(Some("rack ==="), "all()")),
        ("ok", peer_ip("198.51.100.9", 65000)),
    ]);
    let p = plan_of(0, &three(), &mesh_off(), &rules);
    assert_eq!(addrs(&p), ["198.51.100.9"], "the valid rule still applies");
    assert_eq!(p.problems.len(), 3, "{:?}", p.problems);
    assert!(p
        .problems
        .iter()
        .any(|e| e.starts_with("BGPPeer no-as is ignored: spec.asNumber")));
    assert!(p
        .problems
        .iter()
        .any(|e| e.starts_with("BGPPeer nothing is ignored: spec.peerIP")));
    assert!(p
        .problems
        .iter()
        .any(|e| e.starts_with("BGPPeer bad-sel is ignored: spec.nodeSelector")));
    assert!(p
        .problems
        .iter()
        .all(|e| e.ends_with("fix it with twill apply -f")));
}

#[test]
fn bad_communities_and_node_settings_are_problems() {
    let cfg = BgpConfiguration {
        communities: vec!["70000:1".into()],
        ..Default::default()
    };
    let mut nodes = three();
    nodes[0].bgp.as_number = Some(0);
    let p = plan_of(0, &nodes, &cfg, &BTreeMap::new());
    assert!(p.communities.is_empty());
    assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
    assert!(p.problems.iter().any(|e| e.contains("spec.communities[0]")));
    assert!(p.problems.iter().any(|e| e.contains("spec.bgp.asNumber")));
}

#[test]
fn sessions_are_sorted_and_the_plan_is_deterministic() {
    let mut nodes: Vec<NodeInfo> = (1..=20)
        .rev()
        .map(|i| node(&format!("n{i}"), &format!("192.0.2.{i}")))
        .collect();
    nodes.push(node("x", "198.51.100.1"));
    let cfg = BgpConfiguration::default();
    let a = all_plans(&nodes, &cfg, &BTreeMap::new());
    nodes.reverse();
    let b = plan_of(nodes.len() - 1, &nodes, &cfg, &BTreeMap::new());
    assert_eq!(a[0], b, "the order of the inputs does not matter");
    let ips: Vec<IpAddr> = a[0].sessions.iter().map(|s| s.peer.address.ip).collect();
    let mut sorted = ips.clone();
    sorted.sort();
    assert_eq!(ips, sorted);
    assert_eq!(ips.len(), 20);
}
