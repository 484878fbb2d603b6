use super::*;
use std::time::Duration;

/// No backend run by these tests writes a file (bgp's speaker starts in its sync, which the
/// lifecycle test skips for it: tests/bgp_*.rs run it in namespaces).
const STATE: &str = "/nonexistent/twl-state";

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
        pod_wiring: PodWiring::Bridge,
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
        blackholes: desired.blackholes.clone(),
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
        tun: desired.tun.as_ref().map(observed_tun),
    }
}

/// The TUN as its datapath made it and the reconcile set it up for `s`.
fn observed_tun(s: &TunSpec) -> ObservedDevice {
    ObservedDevice {
        name: s.name.clone(),
        kind: Some("tun".into()),
        vxlan: None,
        mtu: s.mtu,
        mac: None,
        up: true,
        addresses: s.address.into_iter().collect(),
        tx_checksum: false,
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
fn select_builds_each_kind_with_its_options() {
    for kind in BackendKind::ALL {
        let b = select(&kind.spec(), false, Path::new(STATE)).unwrap();
        assert_eq!(b.kind(), kind);
        assert_eq!(b.name(), kind.name());
        // Every device a backend owns is one the reconcile knows to look after.
        assert!(b.devices().iter().all(|d| DEVICES.contains(d)), "{kind}");
    }
    let vx = |o: VxlanOptions| BackendSpec::Vxlan(o);
    let b = select(
        &vx(VxlanOptions {
            vni: Some(7),
            port: Some(4789),
            direct_routing: true,
        }),
        false,
        Path::new(STATE),
    )
    .unwrap();
    let d = b.plan(&local(), &peers());
    let dev = d.device.unwrap();
    assert_eq!((dev.vni, dev.port), (7, 4789));
    assert_eq!(
        d.routes[0].dev, "eth0",
        "directRouting: n2 is on the segment"
    );
    // The static mesh plans exactly what vxlan plans.
    let st = select(
        &BackendSpec::Static(VxlanOptions::DEFAULT),
        true,
        Path::new(STATE),
    )
    .unwrap();
    assert_eq!(
        st.plan(&local(), &peers()),
        vxlan(false).plan(&local(), &peers())
    );
    let bad = vx(VxlanOptions {
        vni: Some(1 << 24),
        ..Default::default()
    });
    assert_eq!(
        select(&bad, false, Path::new(STATE)).err().map(|e| e.to_string()),
        Some("backend.vni: 16777216 is out of range 1..=16777215; fix it with twill apply -f network.yaml".into())
    );
    // udp: its port, and a plan like Udp's own (no I/O before start).
    let u = select(
        &BackendSpec::Udp(UdpOptions {
            port: Some(9000),
            ..UdpOptions::DEFAULT
        }),
        false,
        Path::new(STATE),
    )
    .unwrap();
    assert_eq!(u.plan(&local(), &peers()), udp().plan(&local(), &peers()));
    assert!(u.metrics().is_some());
    let zero = BackendSpec::Udp(UdpOptions {
        port: Some(0),
        ..UdpOptions::DEFAULT
    });
    assert_eq!(
        select(&zero, false, Path::new(STATE)).err().map(|e| e.to_string()),
        Some("backend.port: 0 is not a port: leave it out for 8285; fix it with twill apply -f network.yaml".into())
    );
}

#[test]
fn each_backend_declares_its_mtu_overhead() {
    let overhead = |k: BackendKind| {
        select(&k.spec(), false, Path::new(STATE))
            .unwrap()
            .mtu_overhead()
    };
    assert_eq!(overhead(BackendKind::None), 0);
    assert_eq!(overhead(BackendKind::HostGw), 0);
    assert_eq!(overhead(BackendKind::Vxlan), VXLAN_OVERHEAD);
    assert_eq!(overhead(BackendKind::Static), VXLAN_OVERHEAD);
    assert_eq!(
        Udp::new(&UdpOptions::DEFAULT, Path::new(STATE)).mtu_overhead(),
        UDP_OVERHEAD
    );
    assert_eq!(UDP_OVERHEAD, 28);
    assert_eq!(
        pod_mtu(
            &Udp::new(&UdpOptions::DEFAULT, Path::new(STATE)),
            1500,
            9000
        ),
        1472
    );
    assert_eq!(pod_mtu(&vxlan(false), 1500, 9000), 1450);
    assert_eq!(pod_mtu(&HostGw, 1500, 1400), 1400);
    assert_eq!(pod_mtu(&vxlan(false), 40, 1500), 0);
}

fn l3() -> Local {
    Local {
        blocks: vec![net("10.244.1.0/26"), net("10.244.1.64/26")],
        pod_wiring: PodWiring::L3,
        ..local()
    }
}

#[test]
fn l3_pods_get_a_blackhole_per_block_with_every_backend() {
    for kind in BackendKind::ALL {
        let b = select(&kind.spec(), false, Path::new(STATE)).unwrap();
        let d = desired(b.as_ref(), &l3(), &peers());
        assert_eq!(
            d.blackholes,
            vec![net("10.244.1.0/26"), net("10.244.1.64/26")],
            "{kind}"
        );
        // The backend's own plan is unchanged by the wiring.
        let mut without = d.clone();
        without.blackholes.clear();
        assert_eq!(without, b.plan(&local(), &peers()), "{kind}");
        // Bridge wiring: the bridge's connected route covers the block.
        assert!(desired(b.as_ref(), &local(), &peers())
            .blackholes
            .is_empty());
    }
    let d = desired(&HostGw, &l3(), &[]);
    let plan = diff(&d, &Observed::default());
    let text: Vec<String> = plan.ops.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        text,
        [
            "route add blackhole 10.244.1.0/26",
            "route add blackhole 10.244.1.64/26"
        ]
    );
    assert!(diff(&d, &observed_from(&d)).ops.is_empty(), "converged");
}

#[test]
fn a_released_block_loses_its_blackhole_and_a_new_one_gains_one() {
    let before = desired(&HostGw, &l3(), &peers());
    let observed = observed_from(&before);
    let mut now = l3();
    now.blocks = vec![net("10.244.1.64/26"), net("10.244.1.128/26")];
    let plan = diff(&desired(&HostGw, &now, &peers()), &observed);
    assert_eq!(
        plan.ops,
        vec![
            Op::DeleteBlackhole(net("10.244.1.0/26")),
            Op::AddBlackhole(net("10.244.1.128/26")),
        ]
    );
    // Back to bridge wiring: every blackhole goes, nothing else changes.
    let plan = diff(&desired(&HostGw, &local(), &peers()), &observed);
    assert_eq!(
        plan.ops,
        vec![
            Op::DeleteBlackhole(net("10.244.1.0/26")),
            Op::DeleteBlackhole(net("10.244.1.64/26")),
        ]
    );
}

#[test]
fn a_block_moving_from_a_peer_to_this_node_swaps_route_for_blackhole() {
    // n2 held 10.244.1.64/26; now this node does.
    let mut p = peers();
    p[1].blocks.push(net("10.244.1.64/26"));
    let mut had = l3();
    had.blocks = vec![net("10.244.1.0/26")];
    let observed = observed_from(&desired(&HostGw, &had, &p));
    let plan = diff(&desired(&HostGw, &l3(), &peers()), &observed);
    assert_eq!(
        plan.ops,
        vec![
            Op::DeleteRoute(route("10.244.1.64/26", "192.0.2.12", "eth0", false)),
            Op::AddBlackhole(net("10.244.1.64/26")),
        ]
    );
    // A foreign route already there: reported, not fought over.
    let observed = Observed {
        foreign_routes: vec![ForeignRoute {
            dst: net("10.244.1.0/26"),
            metric: 0,
            protocol: 2,
        }],
        ..Default::default()
    };
    let plan = diff(&desired(&NoneBackend, &l3(), &[]), &observed);
    assert_eq!(plan.ops, vec![Op::AddBlackhole(net("10.244.1.64/26"))]);
    assert!(plan.problems[0].contains("blackhole 10.244.1.0/26 is not installed"));
}

#[test]
fn the_backend_owns_gateway_blackhole_and_device_routes_not_pod_routes() {
    assert!(owned_by_backend(true, None, ""));
    assert!(owned_by_backend(false, Some(ip("192.0.2.12")), "eth0"));
    assert!(owned_by_backend(false, None, VXLAN_DEVICE));
    // twill-cni's l3 pod route: `10.244.1.5/32 dev twlabc scope link proto 0x54`.
    assert!(!owned_by_backend(false, None, "twl1a2b3c4d5e6"));
    assert!(!owned_by_backend(
        false,
        Some(Ipv4Addr::UNSPECIFIED),
        "vethx"
    ));
}

/// A backend with a timer and a thread of its own, standing in for a routing speaker: each
/// timer tick and each message "learns" a route, which must reach the plan.
struct Learner {
    next: Option<Instant>,
    learned: Vec<RouteEntry>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: usize,
    stopped: usize,
    synced: Vec<Vec<Ipv4Net>>,
}

/// What Learner's thread sends.
struct Learned(RouteEntry);

impl Learner {
    fn new() -> Learner {
        Learner {
            next: None,
            learned: Vec::new(),
            thread: None,
            started: 0,
            stopped: 0,
            synced: Vec::new(),
        }
    }
}

impl Backend for Learner {
    fn kind(&self) -> BackendKind {
        // A kind it is not: the driver must not care.
        BackendKind::None
    }

    fn start(&mut self, events: &Events, now: Instant) -> Result<(), BackendError> {
        self.started += 1;
        self.next = Some(now + Duration::from_secs(5));
        let events = events.clone();
        self.thread = Some(std::thread::spawn(move || {
            assert!(events.send(Learned(route(
                "10.244.50.0/24",
                "192.0.2.50",
                "eth0",
                false
            ))));
            assert!(events.send("a message of a type Learner ignores"));
        }));
        Ok(())
    }

    fn plan(&self, _local: &Local, _peers: &[Peer]) -> Desired {
        Desired {
            routes: self.learned.clone(),
            ..Default::default()
        }
    }

    fn sync(&mut self, local: &Local, _peers: &[Peer]) -> Vec<String> {
        self.synced.push(local.blocks.clone());
        Vec::new()
    }

    fn next_timer(&self) -> Option<Instant> {
        self.next
    }

    fn on_event(&mut self, event: Event, now: Instant) -> Reaction {
        match event {
            Event::Timer => {
                self.next = Some(now + Duration::from_secs(5));
                self.learned
                    .push(route("10.244.60.0/24", "192.0.2.60", "eth0", false));
                Reaction::Reconcile
            }
            message => match message.message::<Learned>() {
                Some(Learned(r)) => {
                    self.learned.push(r);
                    Reaction::Reconcile
                }
                None => Reaction::Idle,
            },
        }
    }

    fn stop(&mut self) {
        self.stopped += 1;
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[test]
fn the_driver_runs_every_backend_through_its_lifecycle() {
    let t0 = Instant::now();
    // Not rip: its sync opens a real RIP socket on the uplink and multicasts on it (here,
    // the machine's own interface); its lifecycle is tested in backend/rip.rs and in
    // tests/rip_*.rs, inside namespaces. Not bgp: its sync starts a real speaker (sockets in
    // this namespace); tests/backend_bgp.rs runs it in namespaces of its own.
    // Not udp: its start spawns the datapath process; tests/backend_udp.rs runs it. Not ovs:
    // its sync programs this machine's Open vSwitch; tests/backend_ovs.rs runs it against
    // OVS daemons in namespaces.
    for kind in BackendKind::ALL.into_iter().filter(|k| {
        !matches!(
            k,
            BackendKind::Rip | BackendKind::Bgp | BackendKind::Udp | BackendKind::Ovs
        )
    }) {
        let mut d = Driver::new(select(&kind.spec(), false, Path::new(STATE)).unwrap(), t0);
        let (me, them) = (l3(), peers());
        // First poll: started, a pass is due, with the plan plus the blackholes.
        let want = desired(d.backend(), &me, &them);
        assert_eq!(d.poll(t0, &me, &them).unwrap(), Some(want), "{kind}");
        assert!(d.finish(t0, &me, &them, false).is_empty());
        // Nothing changed: nothing to do until the resync.
        assert_eq!(d.poll(t0 + Duration::from_secs(1), &me, &them), Ok(None));
        assert_eq!(d.next_wake(), t0 + driver::RESYNC, "{kind}");
        assert!(d.poll(t0 + driver::RESYNC, &me, &them).unwrap().is_some());
        d.finish(t0 + driver::RESYNC, &me, &them, true);
        // A failure is retried soon.
        assert_eq!(d.next_wake(), t0 + driver::RESYNC + driver::RETRY);
        let t1 = t0 + driver::RESYNC + Duration::from_secs(1);
        d.finish(t1, &me, &them, false);
        // A released block is a change: a pass whose plan has one blackhole fewer.
        let mut fewer = me.clone();
        fewer.blocks.pop();
        let pass = d.poll(t1, &fewer, &them).unwrap().unwrap();
        assert_eq!(pass.blackholes, vec![net("10.244.1.0/26")], "{kind}");
        d.stop();
    }
}

#[test]
fn events_from_a_backends_timer_and_thread_reach_the_plan() {
    let t0 = Instant::now();
    let (woken_tx, woken) = std::sync::mpsc::channel();
    let mut d = Driver::new(Box::new(Learner::new()), t0);
    d.set_waker(Arc::new(move || {
        let _ = woken_tx.send(());
    }));
    let (me, them) = (local(), peers());
    let first = d.poll(t0, &me, &them).unwrap().unwrap();
    d.finish(t0, &me, &them, false);
    // The backend's thread sent two messages; each woke the loop.
    for _ in 0..2 {
        woken
            .recv_timeout(Duration::from_secs(10))
            .expect("the waker is called for each event");
    }
    // Whatever the first poll saw, the message's route is in the next plan.
    let t1 = t0 + Duration::from_secs(1);
    let learned = route("10.244.50.0/24", "192.0.2.50", "eth0", false);
    let plan = match d.poll(t1, &me, &them).unwrap() {
        Some(p) => p,
        None => first,
    };
    assert_eq!(plan.routes, vec![learned.clone()]);
    d.finish(t1, &me, &them, false);
    assert_eq!(d.poll(t1, &me, &them), Ok(None), "nothing new");
    // The timer: the loop is told when, and the tick's route is planned then.
    let tick = t0 + Duration::from_secs(5);
    assert_eq!(d.next_wake(), tick);
    assert_eq!(
        d.poll(tick - Duration::from_millis(1), &me, &them),
        Ok(None)
    );
    let plan = d.poll(tick, &me, &them).unwrap().unwrap();
    assert_eq!(
        plan.routes,
        vec![
            learned,
            route("10.244.60.0/24", "192.0.2.60", "eth0", false)
        ]
    );
    assert_eq!(diff(&plan, &Observed::default()).ops.len(), 2);
    d.finish(tick, &me, &them, false);
    assert_eq!(d.next_wake(), tick + Duration::from_secs(5));
    drop(d);
}

#[test]
fn stop_and_start_are_each_called_once_per_run() {
    struct Counted(Arc<Mutex<(usize, usize)>>);
    impl Backend for Counted {
        fn kind(&self) -> BackendKind {
            BackendKind::HostGw
        }
        fn start(&mut self, _: &Events, _: Instant) -> Result<(), BackendError> {
            let mut c = self.0.lock().unwrap();
            c.0 += 1;
            if c.0 == 1 {
                return Err(BackendError::Start {
                    kind: BackendKind::HostGw,
                    reason: "port busy".into(),
                });
            }
            Ok(())
        }
        fn plan(&self, _: &Local, _: &[Peer]) -> Desired {
            Desired::default()
        }
        fn stop(&mut self) {
            self.0.lock().unwrap().1 += 1;
        }
    }
    let counts = Arc::new(Mutex::new((0, 0)));
    let t0 = Instant::now();
    let mut d = Driver::new(Box::new(Counted(counts.clone())), t0);
    let e = d.poll(t0, &local(), &[]).unwrap_err();
    assert_eq!(e.to_string(), "backend host-gw cannot start: port busy");
    assert_eq!(
        d.next_wake(),
        t0 + driver::RETRY,
        "a failed start is retried"
    );
    assert!(d.poll(t0 + driver::RETRY, &local(), &[]).unwrap().is_some());
    assert!(d.poll(t0 + driver::RETRY, &local(), &[]).unwrap().is_some());
    d.stop();
    d.stop();
    drop(d);
    assert_eq!(*counts.lock().unwrap(), (2, 1));
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

fn udp() -> Udp {
    Udp::new(&UdpOptions::DEFAULT, Path::new(STATE))
}

fn tun_route(dst: &str) -> RouteEntry {
    route(dst, "0.0.0.0", TUN_DEVICE, false)
}

#[test]
fn udp_plans_the_tun_and_one_route_per_remote_block_on_any_segment() {
    let d = udp().plan(&local(), &peers());
    assert_eq!(
        d.tun,
        Some(TunSpec {
            name: "twl.tun".into(),
            mtu: 1472,
            address: Some(net("10.244.1.0/32")),
        })
    );
    // n3 is behind the router: the outer UDP crosses it, as vxlan's does.
    assert_eq!(
        d.routes,
        vec![
            tun_route("10.244.2.0/24"),
            tun_route("10.244.12.0/24"),
            tun_route("10.244.3.0/24"),
        ]
    );
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert!(d.device.is_none() && d.neighbours.is_empty() && d.fdb.is_empty());
    assert_eq!(d.routes[0].to_string(), "10.244.2.0/24 dev twl.tun");
    assert_eq!(
        Op::AddRoute(d.routes[0].clone()).to_string(),
        "route add 10.244.2.0/24 dev twl.tun"
    );
    // Every route it plans is one the reconcile owns, so a later pass can remove it.
    assert!(d
        .routes
        .iter()
        .all(|r| owned_by_backend(false, None, &r.dev)));
    assert!(DEVICES.contains(&TUN_DEVICE) && udp().devices() == [TUN_DEVICE]);
    assert_eq!(udp().kind(), BackendKind::Udp);
    // A node with no block yet: the TUN gets no address; conflicts drop the block.
    let bare = Local {
        blocks: vec![],
        ..local()
    };
    assert_eq!(udp().plan(&bare, &[]).tun.unwrap().address, None);
    let twice = vec![
        peer("n2", "192.0.2.12", &["10.244.2.0/24"]),
        peer("n4", "192.0.2.14", &["10.244.2.0/25", "10.244.4.0/24"]),
    ];
    let d = udp().plan(&local(), &twice);
    assert_eq!(
        d.routes,
        vec![tun_route("10.244.2.0/24"), tun_route("10.244.4.0/24")]
    );
    assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
}

#[test]
fn udp_sets_up_the_tun_its_datapath_made_then_routes_into_it() {
    let d = udp().plan(&local(), &peers());
    // The datapath made twl.tun: down, MTU 1500, no address.
    let fresh = Observed {
        tun: Some(ObservedDevice {
            mtu: 1500,
            up: false,
            addresses: vec![],
            ..observed_tun(d.tun.as_ref().unwrap())
        }),
        ..Observed::default()
    };
    let plan = diff(&d, &fresh);
    let dev = || "twl.tun".to_string();
    assert_eq!(
        plan.ops,
        vec![
            Op::SetMtu {
                dev: dev(),
                mtu: 1472
            },
            Op::AddDeviceAddress {
                dev: dev(),
                net: net("10.244.1.0/32")
            },
            Op::SetUp(dev()),
            Op::AddRoute(tun_route("10.244.2.0/24")),
            Op::AddRoute(tun_route("10.244.3.0/24")),
            Op::AddRoute(tun_route("10.244.12.0/24")),
        ]
    );
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    // Converged: nothing to do. A stray address goes; the uplink's MTU changed: followed.
    assert_eq!(diff(&d, &observed_from(&d)), Plan::default());
    let mut drifted = observed_from(&d);
    drifted
        .tun
        .as_mut()
        .unwrap()
        .addresses
        .push(net("10.9.9.9/32"));
    let bigger = udp().plan(
        &Local {
            mtu_uplink: 9000,
            ..local()
        },
        &peers(),
    );
    assert_eq!(
        diff(&bigger, &drifted).ops,
        vec![
            Op::DeleteDeviceAddress {
                dev: dev(),
                net: net("10.9.9.9/32")
            },
            Op::SetMtu {
                dev: dev(),
                mtu: 8972
            },
        ]
    );
    // A peer leaving takes its routes, nothing else.
    let fewer = udp().plan(&local(), &peers()[1..]);
    assert_eq!(
        diff(&fewer, &observed_from(&d)).ops,
        vec![Op::DeleteRoute(tun_route("10.244.3.0/24"))]
    );
}

#[test]
fn udp_without_its_tun_waits_and_says_why() {
    let d = udp().plan(&local(), &peers());
    let plan = diff(&d, &Observed::default());
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    assert_eq!(plan.problems.len(), 1);
    assert!(
        plan.problems[0].contains("twl.tun does not exist: the udp datapath creates it"),
        "{:?}",
        plan.problems
    );
    // A link of that name that is not a TUN is not Twill's: left alone, said so.
    let foreign = Observed {
        tun: Some(ObservedDevice {
            kind: Some("veth".into()),
            ..observed_tun(d.tun.as_ref().unwrap())
        }),
        ..Observed::default()
    };
    let plan = diff(&d, &foreign);
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    assert!(plan.problems[0].contains("is a veth device, not Twill's TUN"));
    let plan = diff(&NoneBackend.plan(&local(), &peers()), &foreign);
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
}

#[test]
fn another_backend_after_udp_deletes_the_tun_with_its_routes() {
    let was = observed_from(&udp().plan(&local(), &peers()));
    // host-gw: the TUN goes (its routes with it); n2's blocks get their direct routes.
    let plan = diff(&HostGw.plan(&local(), &peers()), &was);
    assert_eq!(plan.ops[0], Op::DeleteDevice("twl.tun".into()));
    assert!(
        plan.ops[1..]
            .iter()
            .all(|op| matches!(op, Op::AddRoute(r) if r.dev == "eth0")),
        "{:#?}",
        plan.ops
    );
    assert_eq!(plan.ops.len(), 3);
    // vxlan: the TUN goes, the VXLAN device comes, the routes are re-made through it.
    let plan = diff(&vxlan(false).plan(&local(), &peers()), &was);
    assert_eq!(plan.ops[0], Op::DeleteDevice("twl.tun".into()));
    assert!(plan
        .ops
        .iter()
        .any(|op| matches!(op, Op::CreateDevice(s) if s.name == "twl.1")));
    assert!(!plan.ops.iter().any(|op| matches!(op, Op::DeleteRoute(_))));
    // And udp after vxlan: the VXLAN device goes, the TUN is set up.
    let plan = diff(
        &udp().plan(&local(), &peers()),
        &Observed {
            tun: was.tun.clone(),
            ..observed_from(&vxlan(false).plan(&local(), &peers()))
        },
    );
    assert_eq!(plan.ops[0], Op::DeleteDevice("twl.1".into()));
    assert_eq!(
        plan.ops[1..],
        [
            Op::AddRoute(tun_route("10.244.2.0/24")),
            Op::AddRoute(tun_route("10.244.3.0/24")),
            Op::AddRoute(tun_route("10.244.12.0/24")),
        ]
    );
}

#[test]
fn udp_on_a_tiny_uplink_is_a_problem() {
    let tiny = Local {
        mtu_uplink: 90,
        ..local()
    };
    let d = udp().plan(&tiny, &peers());
    assert!(d.problems[0].contains("too small"), "{:?}", d.problems);
    assert_eq!(d.tun.unwrap().mtu, 68);
}

/// The ordered overlap check finds an overlap exactly when a scan of every taken block
/// does, over random blocks of mixed sizes (many overlapping) in a small space.
#[test]
fn taken_blocks_find_exactly_the_overlaps_a_scan_finds() {
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..200 {
        let mut taken = super::TakenBlocks::default();
        let mut scan: Vec<Ipv4Net> = Vec::new();
        for _ in 0..60 {
            let len = 20 + (next() % 9) as u8; // /20 to /28 inside 10.244.0.0/16
            let host = 0x0af4_0000 | (next() as u32 & 0xffff);
            let block = Ipv4Net::new(Ipv4Addr::from(host), len).unwrap().trunc();
            let expected = scan.iter().any(|t| t.contains(&block) || block.contains(t));
            assert_eq!(
                taken.overlapping(block).is_some(),
                expected,
                "{block} against {scan:?}"
            );
            if !expected {
                taken.insert(block, "n");
                scan.push(block);
            }
        }
    }
}

#[test]
fn the_state_after_a_pass_of_route_ops_is_what_the_next_diff_finds_done() {
    let mut l = local();
    l.pod_wiring = PodWiring::L3;
    let before = HostGw.plan(&l, &peers());
    let mut kernel = observed_from(&before);
    kernel.blackholes = blackholes(&l);
    // n2 moves one block to n4, n3 leaves, n5 comes; this node takes a second block.
    let now_peers = vec![
        peer("n2", "192.0.2.12", &["10.244.2.0/24"]),
        peer("n4", "192.0.2.14", &["10.244.12.0/24"]),
        peer("n5", "192.0.2.15", &["10.244.5.0/24"]),
    ];
    l.blocks.push(net("10.244.9.0/24"));
    let mut want = HostGw.plan(&l, &now_peers);
    want.blackholes = blackholes(&l);
    let plan = diff(&want, &kernel);
    assert!(plan
        .ops
        .iter()
        .any(|o| matches!(o, Op::ReplaceRoute { .. })));
    assert!(plan.ops.iter().any(|o| matches!(o, Op::AddBlackhole(_))));
    let modelled = after(kernel, &plan.ops).expect("route and blackhole ops only");
    assert_eq!(diff(&want, &modelled).ops, vec![], "{modelled:#?}");
    let mut routes = modelled.routes.clone();
    routes.sort();
    let mut wanted = want.routes.clone();
    wanted.sort();
    assert_eq!(routes, wanted);
    // Ops of another kind: not modelled, so the next pass reads the kernel.
    let vx = vxlan::plan(&local(), &peers(), &vxlan(false));
    let ops = diff(&vx, &Observed::default()).ops;
    assert_eq!(after(Observed::default(), &ops), None);
}
