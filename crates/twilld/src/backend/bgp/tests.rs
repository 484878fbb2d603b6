//! The pure parts of the bgp backend: what it announces, the planner's inputs from the
//! agent's, the status it publishes, and stuck sessions. The speaker itself runs in
//! namespaces in tests/bgp_backend.rs.

use super::*;
use std::time::Duration;
use twill_api::bgp::{BgpConfiguration, NodeBgp};
use twill_api::resources::NodeSpec;
use twill_bgp::speaker::control::PeerKind;
use twill_bgp::speaker::kernel::KernelStats;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn blocks_are_announced_as_aggregates_plus_pods_outside_them() {
    let c = [Community(0xFDE8_0064)];
    let got = originated(
        &[net("10.244.1.0/26"), net("10.244.1.64/26")],
        &[
            ip("10.244.1.5"),
            ip("10.244.1.70"),
            ip("10.244.9.9"),
            ip("10.244.9.9"),
        ],
        &c,
    );
    let want: Vec<(IpNet, Vec<Community>)> = ["10.244.1.0/26", "10.244.1.64/26", "10.244.9.9/32"]
        .iter()
        .map(|n| (n.parse().unwrap(), c.to_vec()))
        .collect();
    assert_eq!(got, want);
    // Host bits in a block never reach the speaker (it would refuse the whole list).
    assert_eq!(
        originated(&[net("10.244.2.7/24")], &[], &[])[0].0,
        "10.244.2.0/24".parse::<IpNet>().unwrap()
    );
    assert!(originated(&[], &[], &c).is_empty());
}

fn local() -> Local {
    Local {
        name: "n1".into(),
        address: ip("192.0.2.11"),
        uplink: "eth0".into(),
        uplink_cidr: net("192.0.2.0/24"),
        blocks: vec![net("10.244.1.0/24")],
        mtu_uplink: 1500,
        pod_wiring: Default::default(),
    }
}

fn peer(name: &str, address: &str) -> Peer {
    Peer {
        name: name.into(),
        address: ip(address),
        blocks: vec![],
        vtep_mac: None,
    }
}

#[test]
fn the_planner_sees_addresses_from_the_agents_and_settings_from_the_node_resources() {
    let mut inputs = RoutingInputs::default();
    inputs.node_specs.insert(
        "n2".into(),
        NodeSpec {
            bgp: Some(NodeBgp {
                as_number: Some(65002),
                ..Default::default()
            }),
            labels: [("rack".to_string(), "a".to_string())].into(),
            ..Default::default()
        },
    );
    let (me, others) = node_infos(
        &local(),
        &[peer("n2", "192.0.2.12"), peer("n3", "192.0.2.13")],
        &inputs,
    );
    assert_eq!((me.name.as_str(), me.address), ("n1", ip("192.0.2.11")));
    assert_eq!(me.bgp, NodeBgp::default());
    assert_eq!(others[0].bgp.as_number, Some(65002));
    assert_eq!(others[0].labels["rack"], "a");
    assert!(others[1].labels.is_empty());
    // No BGPConfiguration: the defaults (iBGP mesh, AS 64512).
    let plan = session_plan(
        &local(),
        &[peer("n2", "192.0.2.12"), peer("n3", "192.0.2.13")],
        &inputs,
    );
    assert_eq!(plan.asn, 64512);
    assert_eq!(plan.sessions.len(), 2);
    assert_eq!(plan.sessions[0].peer.asn, 65002, "n2's own AS: eBGP");
    inputs.bgp_config = Some(BgpConfiguration {
        node_to_node_mesh_enabled: false,
        ..Default::default()
    });
    assert!(session_plan(&local(), &[peer("n2", "192.0.2.12")], &inputs)
        .sessions
        .is_empty());
}

fn session(password_file: Option<&str>, node: Option<&str>) -> Session {
    let nodes = [
        NodeInfo {
            name: "n1".into(),
            address: ip("192.0.2.11"),
            bgp: NodeBgp::default(),
            labels: Default::default(),
        },
        NodeInfo {
            name: "n2".into(),
            address: ip("192.0.2.12"),
            bgp: NodeBgp::default(),
            labels: Default::default(),
        },
    ];
    let plan = sessions::plan(sessions::Inputs {
        me: &nodes[0],
        others: &nodes,
        config: &BgpConfiguration::default(),
        peers: &Default::default(),
        cluster_cidr: None,
    });
    let mut s = plan.sessions[0].clone();
    s.password_file = password_file.map(String::from);
    if node.is_none() {
        s.node = None;
        s.peer_type = PeerType::Global;
    }
    s
}

#[test]
fn password_files_are_read_at_the_edge_and_a_bad_one_says_which() {
    let s = session(Some("/etc/twill/k"), Some("n2"));
    let ok = speaker_peer(&s, &|f| {
        assert_eq!(f, "/etc/twill/k");
        Ok("s3cr3t\n".into())
    })
    .unwrap();
    assert_eq!(
        ok.password.as_deref(),
        Some("s3cr3t"),
        "the newline is not the key"
    );
    assert_eq!(ok.tag.as_deref(), Some("node-to-node mesh n2"));
    let e = speaker_peer(&s, &|_| {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    })
    .unwrap_err();
    assert!(
        e.starts_with("BGP peer 192.0.2.12: cannot read its password file /etc/twill/k"),
        "{e}"
    );
    assert!(e.contains("the session is not configured"), "{e}");
    let plain = speaker_peer(&session(None, None), &|_| panic!("no file to read")).unwrap();
    assert_eq!(
        (plain.password, plain.tag.as_deref()),
        (None, Some("global"))
    );
}

fn status(peers: Vec<PeerStatus>) -> Status {
    Status {
        router_id: ip("192.0.2.11"),
        asn: 64512,
        peers,
        kernel: KernelStats::default(),
        adopted_pending: 0,
    }
}

fn peer_status(addr: &str, state: State, since: SystemTime, error: Option<&str>) -> PeerStatus {
    PeerStatus {
        address: addr.parse().unwrap(),
        asn: 64512,
        kind: PeerKind::Ibgp,
        tag: None,
        state,
        since,
        info: "waiting".into(),
        last_error: error.map(String::from),
        failed: false,
        router_id: None,
        prefixes_received: 3,
        prefixes_advertised: 2,
        stale_seconds_left: None,
        end_of_rib: false,
    }
}

fn planned() -> BTreeMap<IpAddr, (PeerType, Option<String>)> {
    [
        (
            "192.0.2.12".parse().unwrap(),
            (PeerType::NodeMesh, Some("n2".to_string())),
        ),
        ("203.0.113.1".parse().unwrap(), (PeerType::Global, None)),
    ]
    .into()
}

#[test]
fn the_published_status_names_each_peer_s_type_node_state_since_and_counts() {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let st = status(vec![
        peer_status("192.0.2.12", State::Established, t, None),
        peer_status(
            "203.0.113.1:1179",
            State::Active,
            t,
            Some("connect: Connection refused"),
        ),
    ]);
    let r = routing_status(&st, &planned(), Some(ip("224.0.0.1")));
    assert_eq!(r.protocol, RoutingProtocol::Bgp);
    assert_eq!((r.router_id, r.asn), (Some(ip("192.0.2.11")), Some(64512)));
    assert_eq!(r.route_reflector_cluster_id, Some(ip("224.0.0.1")));
    let a = &r.peers[0];
    assert_eq!(
        (
            a.address.as_str(),
            a.node.as_deref(),
            a.peer_type,
            a.state.as_str(),
            a.since
        ),
        (
            "192.0.2.12",
            Some("n2"),
            PeerType::NodeMesh,
            "Established",
            1_700_000_000
        )
    );
    assert_eq!(
        (a.prefixes_received, a.prefixes_advertised, a.info.as_str()),
        (3, 2, "waiting")
    );
    let b = &r.peers[1];
    assert_eq!(
        (b.address.as_str(), b.node.as_deref(), b.peer_type),
        ("203.0.113.1:1179", None, PeerType::Global)
    );
    assert_eq!(b.info, "connect: Connection refused");
    // The same speaker status gives the same document (no clock in it): unchanged, it is
    // not written again.
    assert_eq!(routing_status(&st, &planned(), Some(ip("224.0.0.1"))), r);
}

#[test]
fn a_session_in_connect_or_active_too_long_is_a_problem_with_the_fix() {
    let now = SystemTime::now();
    let long = now - STUCK_AFTER - Duration::from_secs(2);
    let st = status(vec![
        peer_status(
            "192.0.2.12",
            State::Active,
            long,
            Some("connect to 192.0.2.12:179: No route to host"),
        ),
        peer_status("203.0.113.1", State::Connect, long, None),
        peer_status("192.0.2.13", State::Active, now, None),
        peer_status("192.0.2.14", State::Established, long, None),
    ]);
    let none = BTreeMap::new();
    let p = stuck(&st, &planned(), &none, now);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with("BGP session with 192.0.2.12 (node n2, node-to-node mesh) stuck in Active for 12s (connect to 192.0.2.12:179: No route to host): check that twilld runs on n2"), "{}", p[0]);
    assert!(p[0].contains("set nodeIP or a Node resource"), "{}", p[0]);
    assert!(p[1].starts_with("BGP session with 203.0.113.1 (global) stuck in Connect for 12s (waiting): check that the router at 203.0.113.1 runs BGP with AS 64512"), "{}", p[1]);
    assert!(
        stuck(&st, &planned(), &none, long).is_empty(),
        "not before STUCK_AFTER"
    );
    // Retrying, a session changes state every second: what counts is how long it has
    // been down.
    let st = status(vec![peer_status("192.0.2.12", State::Connect, now, None)]);
    assert!(stuck(&st, &planned(), &none, now).is_empty());
    let down: BTreeMap<IpAddr, SystemTime> = [("192.0.2.12".parse().unwrap(), long)].into();
    let p = stuck(&st, &planned(), &down, now);
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("stuck in Connect for 12s"), "{}", p[0]);
}

#[test]
fn the_speaker_config_carries_the_identity_and_the_control_socket() {
    let id = Identity {
        router_id: ip("192.0.2.11"),
        asn: 65010,
        listen_port: 1790,
        cluster_id: Some(ip("224.0.0.1")),
        restart_time: Some(30),
        on_link: "192.0.2.0/24".parse().unwrap(),
    };
    let c = speaker_config(&id, Path::new("/run/twl/bgp.sock"));
    assert_eq!(
        c.next_hop_networks,
        vec!["192.0.2.0/24".parse::<IpNet>().unwrap()],
        "next hops resolve on the uplink's subnet only"
    );
    assert_eq!(
        (c.router_id, c.asn, c.listen.port),
        (ip("192.0.2.11"), 65010, 1790)
    );
    assert_eq!(c.cluster_id, Some(ip("224.0.0.1")));
    assert_eq!(c.graceful_restart.unwrap().restart_time, 30);
    assert_eq!((c.kernel.install, c.kernel.table), (true, 254));
    assert_eq!(c.control_socket, Path::new("/run/twl/bgp.sock"));
    assert!(c.peers.is_empty() && c.originate.is_empty());
    let off = speaker_config(
        &Identity {
            restart_time: None,
            ..id
        },
        Path::new("/x"),
    );
    assert!(off.graceful_restart.is_none());
}
