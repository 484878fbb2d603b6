use super::*;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn local() -> Local {
    Local {
        name: "n1".into(),
        address: ip("192.0.2.11"),
        uplink: "eth0".into(),
        uplink_cidr: net("192.0.2.0/24"),
        blocks: vec![net("10.244.1.0/24")],
        mtu_uplink: 1500,
    }
}

fn peer(name: &str, address: &str, blocks: &[&str]) -> Peer {
    Peer {
        name: name.into(),
        address: ip(address),
        blocks: blocks.iter().map(|b| net(b)).collect(),
        vtep_mac: None,
    }
}

fn peers() -> Vec<Peer> {
    vec![
        peer("n3", "198.51.100.13", &["10.244.3.0/24"]),
        peer("n2", "192.0.2.12", &["10.244.2.0/24", "10.244.12.0/24"]),
    ]
}

fn vxlan(direct_routing: bool) -> Vxlan {
    Vxlan {
        device: VXLAN_DEVICE.into(),
        vni: 1,
        port: 8472,
        direct_routing,
        disable_tx_checksum: true,
    }
}

fn route(dst: &str, via: &str, dev: &str, onlink: bool) -> RouteEntry {
    RouteEntry {
        dst: net(dst),
        via: ip(via),
        dev: dev.into(),
        onlink,
    }
}

/// The kernel state after applying `desired` perfectly.
fn observed_from(desired: &Desired) -> Observed {
    Observed {
        routes: desired.routes.clone(),
        foreign_routes: vec![],
        neighbours: desired.neighbours.clone(),
        fdb: desired.fdb.clone(),
        device: desired.device.as_ref().map(|s| ObservedDevice {
            name: s.name.clone(),
            kind: Some("vxlan".into()),
            vxlan: Some(ObservedVxlan {
                vni: s.vni,
                port: s.port,
                local: Some(s.local),
                uplink: Some(s.uplink.clone()),
                learning: false,
            }),
            mtu: s.mtu,
            mac: Some(s.mac),
            up: true,
            addresses: s.address.into_iter().collect(),
            tx_checksum: false,
        }),
    }
}

#[test]
fn none_plans_nothing_and_removes_a_left_over_device() {
    let desired = NoneBackend.plan(&local(), &peers());
    assert_eq!(desired, Desired::default());
    let old = observed_from(&vxlan::plan(&local(), &peers(), &vxlan(false)));
    let plan = diff(&desired, &old);
    // The routes through the device go with it; only the host-gw-less remains.
    assert_eq!(
        plan.ops,
        vec![Op::DeleteDevice("twl.1".into())],
        "{:#?}",
        plan.ops
    );
}

#[test]
fn host_gw_routes_peers_on_the_segment_and_reports_the_others() {
    let desired = HostGw.plan(&local(), &peers());
    assert_eq!(
        desired.routes,
        vec![
            route("10.244.2.0/24", "192.0.2.12", "eth0", false),
            route("10.244.12.0/24", "192.0.2.12", "eth0", false),
        ]
    );
    assert_eq!(desired.device, None);
    assert_eq!(
        desired.problems,
        vec!["host-gw: n3 (198.51.100.13) is not on this node's segment 192.0.2.0/24: it needs a router that knows the pod routes, or use vxlan / directRouting; its blocks 10.244.3.0/24 are not routed".to_string()]
    );
    let plan = diff(&desired, &Observed::default());
    assert_eq!(plan.problems, desired.problems);
    assert_eq!(plan.ops.len(), 2);
    assert!(plan.ops.iter().all(|o| matches!(o, Op::AddRoute(_))));
    assert_eq!(
        plan.ops[0].to_string(),
        "route add 10.244.2.0/24 via 192.0.2.12 dev eth0"
    );
}

#[test]
fn conflicts_become_problems_not_routes() {
    let mut all = peers();
    all.push(peer(
        "n4",
        "192.0.2.14",
        &["10.244.1.128/25", "10.244.4.0/24"],
    ));
    all.push(peer("n5", "192.0.2.11", &["10.244.5.0/24"]));
    all.push(peer("n6", "192.0.2.16", &["10.244.4.0/23"]));
    all.push(peer("n1", "192.0.2.11", &["10.244.1.0/24"])); // this node itself
    let desired = HostGw.plan(&local(), &all);
    let dsts: Vec<String> = desired.routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(
        dsts,
        ["10.244.2.0/24", "10.244.12.0/24", "10.244.4.0/24"],
        "{desired:#?}"
    );
    let text = desired.problems.join("\n");
    assert!(
        text.contains("n4 claims block 10.244.1.128/25, which overlaps a block of this node (n1)"),
        "{text}"
    );
    assert!(
        text.contains("n5 advertises 192.0.2.11, this node's own IP"),
        "{text}"
    );
    assert!(
        text.contains("n6 claims block 10.244.4.0/23, which overlaps a block of n4"),
        "{text}"
    );
}

#[test]
fn vxlan_plans_device_and_one_route_neigh_fdb_per_peer() {
    let mut all = peers();
    all[0].vtep_mac = Some([2, 0, 0, 0, 0, 3]);
    all.push(peer("n9", "192.0.2.19", &[])); // no blocks yet: nothing to reach
    let desired = vxlan::plan(&local(), &all, &vxlan(false));
    let dev = desired.device.clone().unwrap();
    assert_eq!(
        dev,
        VxlanSpec {
            name: "twl.1".into(),
            vni: 1,
            port: 8472,
            local: ip("192.0.2.11"),
            uplink: "eth0".into(),
            mtu: 1450,
            mac: [0x0a, 0x54, 192, 0, 2, 11],
            address: Some(net("10.244.1.0/32")),
            disable_tx_checksum: true,
        }
    );
    assert_eq!(
        desired.routes,
        vec![
            route("10.244.2.0/24", "10.244.2.0", "twl.1", true),
            route("10.244.12.0/24", "10.244.2.0", "twl.1", true),
            route("10.244.3.0/24", "10.244.3.0", "twl.1", true),
        ]
    );
    assert_eq!(
        desired.neighbours,
        vec![
            NeighEntry {
                dev: "twl.1".into(),
                ip: ip("10.244.2.0"),
                mac: vtep_mac(ip("192.0.2.12")),
            },
            NeighEntry {
                dev: "twl.1".into(),
                ip: ip("10.244.3.0"),
                mac: [2, 0, 0, 0, 0, 3],
            },
        ]
    );
    assert_eq!(
        desired.fdb[1],
        FdbRow {
            dev: "twl.1".into(),
            mac: [2, 0, 0, 0, 0, 3],
            dst: ip("198.51.100.13"),
        }
    );
    assert!(desired.problems.is_empty(), "{:?}", desired.problems);

    let plan = diff(&desired, &Observed::default());
    let text: Vec<String> = plan.ops.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        text,
        [
            "link add twl.1 type vxlan id 1 local 192.0.2.11 dev eth0 dstport 8472 nolearning mtu 1450 address 0a:54:c0:00:02:0b",
            "ethtool -K twl.1 tx off",
            "addr add 10.244.1.0/32 dev twl.1",
            "link set twl.1 up",
            "neigh replace 10.244.2.0 lladdr 0a:54:c0:00:02:0c dev twl.1 nud permanent",
            "neigh replace 10.244.3.0 lladdr 02:00:00:00:00:03 dev twl.1 nud permanent",
            "fdb replace 02:00:00:00:00:03 dev twl.1 dst 198.51.100.13 self permanent",
            "fdb replace 0a:54:c0:00:02:0c dev twl.1 dst 192.0.2.12 self permanent",
            "route add 10.244.2.0/24 via 10.244.2.0 dev twl.1 onlink",
            "route add 10.244.3.0/24 via 10.244.3.0 dev twl.1 onlink",
            "route add 10.244.12.0/24 via 10.244.2.0 dev twl.1 onlink",
        ]
    );
}

#[test]
fn direct_routing_tunnels_only_across_segments() {
    let desired = vxlan::plan(&local(), &peers(), &vxlan(true));
    assert_eq!(
        desired.routes,
        vec![
            route("10.244.2.0/24", "192.0.2.12", "eth0", false),
            route("10.244.12.0/24", "192.0.2.12", "eth0", false),
            route("10.244.3.0/24", "10.244.3.0", "twl.1", true),
        ]
    );
    assert_eq!(desired.neighbours.len(), 1);
    assert_eq!(desired.fdb[0].dst, ip("198.51.100.13"));
    assert!(desired.problems.is_empty());
}

#[test]
fn a_converged_node_plans_nothing() {
    for backend in [
        Box::new(HostGw) as Box<dyn Backend>,
        Box::new(vxlan(false)),
        Box::new(vxlan(true)),
    ] {
        let desired = backend.plan(&local(), &peers());
        let plan = diff(&desired, &observed_from(&desired));
        assert!(plan.ops.is_empty(), "{}: {:?}", backend.name(), plan.ops);
    }
}

#[test]
fn a_removed_peer_takes_only_its_entries() {
    let desired = vxlan::plan(&local(), &peers(), &vxlan(false));
    let observed = observed_from(&desired);
    let fewer: Vec<Peer> = peers().into_iter().filter(|p| p.name != "n3").collect();
    let plan = diff(&vxlan::plan(&local(), &fewer, &vxlan(false)), &observed);
    let text: Vec<String> = plan.ops.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        text,
        [
            "route del 10.244.3.0/24 via 10.244.3.0 dev twl.1 onlink",
            "fdb del 0a:54:c6:33:64:0d dev twl.1 dst 198.51.100.13",
            "neigh del 10.244.3.0 dev twl.1",
        ]
    );
}

#[test]
fn changes_are_replaced_in_place() {
    let before = vxlan::plan(&local(), &peers(), &vxlan(false));
    let mut observed = observed_from(&before);
    // n2 moved to another address; the device lost its checksum setting and is down.
    let mut moved = peers();
    moved[1].address = ip("192.0.2.22");
    let dev = observed.device.as_mut().unwrap();
    dev.tx_checksum = true;
    dev.up = false;
    dev.mtu = 1400;
    let plan = diff(&vxlan::plan(&local(), &moved, &vxlan(false)), &observed);
    let text: Vec<String> = plan.ops.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        text,
        [
            "fdb del 0a:54:c0:00:02:0c dev twl.1 dst 192.0.2.12",
            "link set twl.1 mtu 1450",
            "ethtool -K twl.1 tx off",
            "link set twl.1 up",
            "neigh replace 10.244.2.0 lladdr 0a:54:c0:00:02:16 dev twl.1 nud permanent",
            "fdb replace 0a:54:c0:00:02:16 dev twl.1 dst 192.0.2.22 self permanent",
        ]
    );
    // Switching n2 to a direct route replaces its routes atomically.
    let direct = diff(
        &vxlan::plan(&local(), &peers(), &vxlan(true)),
        &observed_from(&before),
    );
    let replaced: Vec<String> = direct
        .ops
        .iter()
        .filter(|o| matches!(o, Op::ReplaceRoute { .. }))
        .map(|o| o.to_string())
        .collect();
    assert_eq!(
        replaced,
        [
            "route replace 10.244.2.0/24 via 192.0.2.12 dev eth0",
            "route replace 10.244.12.0/24 via 192.0.2.12 dev eth0",
        ]
    );
    assert!(!direct.ops.iter().any(|o| matches!(o, Op::AddRoute(_))));
}

#[test]
fn a_device_with_other_fixed_settings_is_recreated_with_its_entries() {
    let desired = vxlan::plan(&local(), &peers(), &vxlan(false));
    let mut observed = observed_from(&desired);
    observed
        .device
        .as_mut()
        .unwrap()
        .vxlan
        .as_mut()
        .unwrap()
        .vni = 42;
    let plan = diff(&desired, &observed);
    assert_eq!(plan.ops[0], Op::DeleteDevice("twl.1".into()));
    assert!(matches!(plan.ops[1], Op::CreateDevice(_)));
    // Everything on the old device died with it and is programmed again.
    let adds = plan
        .ops
        .iter()
        .filter(|o| matches!(o, Op::AddRoute(_) | Op::SetNeighbour(_) | Op::SetFdb(_)))
        .count();
    assert_eq!(adds, 3 + 2 + 2);
}

#[test]
fn foreign_state_is_never_touched() {
    let desired = HostGw.plan(&local(), &peers());
    let mut observed = Observed::default();
    observed.foreign_routes.push(ForeignRoute {
        dst: net("10.244.2.0/24"),
        metric: 0,
        protocol: 4,
    });
    observed.foreign_routes.push(ForeignRoute {
        dst: net("10.244.12.0/24"),
        metric: 100,
        protocol: 4,
    });
    let plan = diff(&desired, &observed);
    assert_eq!(
        plan.ops,
        vec![Op::AddRoute(route(
            "10.244.12.0/24",
            "192.0.2.12",
            "eth0",
            false
        ))],
        "a foreign route with another metric does not block ours"
    );
    assert!(plan
        .problems
        .iter()
        .any(|p| p.contains("a route to 10.244.2.0/24 already exists, installed by protocol 4")));

    // A non-VXLAN link under Twill's name: reported, left alone, no tunnel entries.
    let desired = vxlan::plan(&local(), &peers(), &vxlan(false));
    let observed = Observed {
        device: Some(ObservedDevice {
            name: "twl.1".into(),
            kind: Some("bridge".into()),
            vxlan: None,
            mtu: 1500,
            mac: None,
            up: true,
            addresses: vec![],
            tx_checksum: true,
        }),
        ..Default::default()
    };
    let plan = diff(&desired, &observed);
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    assert!(plan.problems[0].contains("link twl.1 exists but is a bridge device"));
}

#[test]
fn select_names_the_backends() {
    assert_eq!(
        select("none", &BackendOptions::default()).unwrap().name(),
        "none"
    );
    assert_eq!(
        select("host-gw", &BackendOptions::default())
            .unwrap()
            .name(),
        "host-gw"
    );
    assert_eq!(
        select("vxlan", &BackendOptions::default()).unwrap().name(),
        "vxlan"
    );
    let err = select("gre", &BackendOptions::default()).err().unwrap();
    assert_eq!(
        err.to_string(),
        "unknown backend \"gre\": choose one of none, host-gw, vxlan, static"
    );
    // The static store's mesh is a VXLAN mesh.
    assert_eq!(
        select("static", &BackendOptions::default()).unwrap().name(),
        "vxlan"
    );
    let bad = BackendOptions {
        vni: Some(1 << 24),
        ..Default::default()
    };
    assert_eq!(
        select("vxlan", &bad).err(),
        Some(BackendError::BadVni(1 << 24))
    );
}

#[test]
fn tiny_uplink_mtu_is_a_problem() {
    let mut l = local();
    l.mtu_uplink = 100;
    let desired = vxlan::plan(&l, &[], &vxlan(false));
    assert!(desired.problems[0].contains("uplink eth0 has MTU 100"));
    assert_eq!(desired.device.unwrap().mtu, 68);
}

#[test]
fn checksum_offload_is_kept_on_fixed_kernels() {
    use super::vxlan::checksum_offload_broken;
    assert!(checksum_offload_broken("4.19.0-21-amd64"));
    assert!(checksum_offload_broken("5.6.19"));
    assert!(!checksum_offload_broken("5.7.0"));
    assert!(!checksum_offload_broken("6.18.44-fc-v669"));
    assert!(checksum_offload_broken("garbage"));
    let mut on_fixed = vxlan(false);
    on_fixed.disable_tx_checksum = false;
    let desired = super::vxlan::plan(&local(), &[], &on_fixed);
    let plan = diff(&desired, &Observed::default());
    assert!(
        !plan
            .ops
            .iter()
            .any(|o| matches!(o, Op::DisableTxChecksum(_))),
        "{:?}",
        plan.ops
    );
}
