//! Root-gated: the backends on real "nodes" (namespaces) joined by an underlay bridge in its
//! own namespace, each with a pod behind a local bridge `twl0` standing in for its block.
//! Each node runs plan → observe → diff → apply through netlink; the proof is real pings
//! pod to pod across nodes, and the kernel's tables read back with `ip -j` / `bridge -j`.

use serde_json::Value;
use twill_api::resources::{BackendSpec, VxlanOptions};
use twill_api::wiring::PodWiring;
use twill_netlink::{Handle, Netns};
use twill_testkit::TestNetns;
use twilld::backend::{self, Backend, HostGw, Local, Op, Peer, Plan, Vxlan, VXLAN_DEVICE};
use twilld::backend::{BackendError, BackendKind, Desired, Event, Events, Reaction, RouteEntry};
use twilld::routing::Routing;

const SEG_A: &str = "192.0.2.0/24";
const SEG_B: &str = "198.51.100.0/24";

struct Node {
    ns: TestNetns,
    _pod: TestNetns,
    pod_ip: String,
    local: Local,
}

struct Lab {
    nodes: Vec<Node>,
    _router: Option<TestNetns>,
    _underlay: TestNetns,
}

fn json(ns: &TestNetns, args: &[&str]) -> Value {
    let out = ns.exec(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: bad JSON: {e}"))
}

fn sysctl_forward(ns: &TestNetns) {
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
}

/// Joins `ns` to bridge `bridge` of the underlay with a veth whose inside end is `ifname`.
fn plug(underlay: &TestNetns, bridge: &str, port: &str, ns: &TestNetns, ifname: &str, cidr: &str) {
    underlay.exec(&[
        "ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", &ns.name,
    ]);
    underlay.exec(&["ip", "link", "set", port, "master", bridge, "up"]);
    ns.exec(&["ip", "link", "set", ifname, "up"]);
    ns.exec(&["ip", "addr", "add", cidr, "dev", ifname]);
}

/// Nodes n1.. on the segments given (`'a'` or `'b'`); a router joins the two when both
/// are used. Node i holds block 10.244.i.0/24, its pod is 10.244.i.2.
fn lab(segments: &[char]) -> Lab {
    let underlay = TestNetns::new("ul");
    for br in ["twlsa", "twlsb"] {
        underlay.exec(&["ip", "link", "add", br, "type", "bridge"]);
        underlay.exec(&["ip", "link", "set", br, "up"]);
    }
    let two = segments.contains(&'a') && segments.contains(&'b');
    let router = two.then(|| {
        let r = TestNetns::new("rt");
        plug(&underlay, "twlsa", "rta", &r, "eth0", "192.0.2.1/24");
        plug(&underlay, "twlsb", "rtb", &r, "eth1", "198.51.100.1/24");
        sysctl_forward(&r);
        r
    });
    let mut nodes = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let i = i + 1;
        let ns = TestNetns::new(&format!("n{i}"));
        let (bridge, address, cidr, gw) = match seg {
            'a' => ("twlsa", format!("192.0.2.1{i}"), SEG_A, "192.0.2.1"),
            _ => ("twlsb", format!("198.51.100.1{i}"), SEG_B, "198.51.100.1"),
        };
        let prefix = format!("{address}/24");
        plug(&underlay, bridge, &format!("p{i}"), &ns, "eth0", &prefix);
        if two {
            ns.exec(&["ip", "route", "add", "default", "via", gw]);
        }
        sysctl_forward(&ns);
        // The pod: a namespace behind the node's bridge twl0 (10.244.i.1/24).
        let pod = TestNetns::new(&format!("pod{i}"));
        ns.exec(&["ip", "link", "add", "twl0", "type", "bridge"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.{i}.1/24"),
            "dev",
            "twl0",
        ]);
        ns.exec(&["ip", "link", "set", "twl0", "up"]);
        ns.exec(&[
            "ip", "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        ns.exec(&["ip", "link", "set", "vpod", "master", "twl0", "up"]);
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.{i}.2/24"),
            "dev",
            "eth0",
        ]);
        pod.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{i}.1"),
        ]);
        let local = Local {
            name: format!("n{i}"),
            address: address.parse().unwrap(),
            uplink: "eth0".into(),
            uplink_cidr: cidr.parse().unwrap(),
            blocks: vec![format!("10.244.{i}.0/24").parse().unwrap()],
            mtu_uplink: 1500,
            pod_wiring: Default::default(),
        };
        nodes.push(Node {
            ns,
            _pod: pod,
            pod_ip: format!("10.244.{i}.2"),
            local,
        });
    }
    Lab {
        nodes,
        _router: router,
        _underlay: underlay,
    }
}

impl Lab {
    /// Every other node, as the store would describe it.
    fn peers_of(&self, i: usize) -> Vec<Peer> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| Peer {
                name: n.local.name.clone(),
                address: n.local.address,
                blocks: n.local.blocks.clone(),
                vtep_mac: None,
            })
            .collect()
    }

    fn ping(&self, from: usize, to: usize) -> bool {
        let target = self.nodes[to].pod_ip.clone();
        (0..3).any(|_| {
            self.nodes[from]
                ._pod
                .try_exec(&["ping", "-c", "1", "-W", "2", &target])
                .0
        })
    }
}

/// One reconcile pass on node `node` through a fresh handle (as a restarted agent would):
/// plan, observe, diff, apply. Panics if an operation fails.
fn reconcile(node: &Node, backend: &dyn Backend, peers: &[Peer]) -> Plan {
    let mut h = Handle::new_in(&Netns::open(node.ns.path()).unwrap()).unwrap();
    let desired = backend.plan(&node.local, peers);
    let observed = backend::observe(&mut h, VXLAN_DEVICE).unwrap();
    let plan = backend::diff(&desired, &observed);
    let report = backend::apply(&mut h, &plan.ops);
    assert!(report.is_ok(), "{}: {report}", node.local.name);
    plan
}

fn reconcile_all(lab: &Lab, backend: &dyn Backend) -> Vec<Plan> {
    (0..lab.nodes.len())
        .map(|i| reconcile(&lab.nodes[i], backend, &lab.peers_of(i)))
        .collect()
}

/// `ip -j route show proto 84` as (dst, gateway, dev, onlink).
fn twill_routes(ns: &TestNetns) -> Vec<(String, String, String, bool)> {
    let mut out: Vec<_> = json(ns, &["ip", "-j", "-4", "route", "show", "proto", "84"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap().to_owned(),
                r["gateway"].as_str().unwrap_or("").to_owned(),
                r["dev"].as_str().unwrap().to_owned(),
                r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "onlink")),
            )
        })
        .collect();
    out.sort();
    out
}

fn r(dst: &str, gw: &str, dev: &str, onlink: bool) -> (String, String, String, bool) {
    (dst.into(), gw.into(), dev.into(), onlink)
}

fn vxlan(direct_routing: bool) -> Vxlan {
    Vxlan {
        device: VXLAN_DEVICE.into(),
        vni: 1,
        port: 8472,
        direct_routing,
        // Exercise the workaround whatever this kernel is.
        disable_tx_checksum: true,
    }
}

/// (neighbour IP, lladdr, state) of the permanent entries on twl.1.
fn neighbours(ns: &TestNetns) -> Vec<(String, String)> {
    let mut out: Vec<_> = json(
        ns,
        &["ip", "-j", "-4", "neigh", "show", "dev", VXLAN_DEVICE],
    )
    .as_array()
    .unwrap()
    .iter()
    .filter(|n| {
        n["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "PERMANENT")
    })
    .map(|n| {
        (
            n["dst"].as_str().unwrap().to_owned(),
            n["lladdr"].as_str().unwrap().to_owned(),
        )
    })
    .collect();
    out.sort();
    out
}

/// (mac, dst) of the FDB entries with a remote on twl.1.
fn fdb(ns: &TestNetns) -> Vec<(String, String)> {
    let mut out: Vec<_> = json(ns, &["bridge", "-j", "fdb", "show", "dev", VXLAN_DEVICE])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["dst"].is_string())
        .map(|e| {
            assert_eq!(e["state"], "permanent", "{e}");
            (
                e["mac"].as_str().unwrap().to_owned(),
                e["dst"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn host_gw_routes_pods_across_nodes_and_programs_only_the_delta() {
    twill_testkit::require_root("host_gw_routes_pods_across_nodes_and_programs_only_the_delta");
    let lab = lab(&['a', 'a', 'a']);
    let n1 = &lab.nodes[0];
    assert!(
        !lab.ping(0, 1),
        "pods must not reach each other before any route"
    );

    let first = reconcile_all(&lab, &HostGw);
    for plan in &first {
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        assert_eq!(plan.ops.len(), 2, "{:?}", plan.ops);
    }
    assert_eq!(
        twill_routes(&n1.ns),
        vec![
            r("10.244.2.0/24", "192.0.2.12", "eth0", false),
            r("10.244.3.0/24", "192.0.2.13", "eth0", false),
        ]
    );
    for (a, b) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        assert!(lab.ping(a, b), "pod {a} -> pod {b} over host-gw");
    }

    // Foreign routes, one to a pod block with another metric: never touched.
    n1.ns.exec(&[
        "ip",
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "192.0.2.99",
        "proto",
        "static",
    ]);
    n1.ns.exec(&[
        "ip",
        "route",
        "add",
        "10.244.3.0/24",
        "via",
        "192.0.2.99",
        "metric",
        "100",
    ]);
    let all_before = json(&n1.ns, &["ip", "-j", "-4", "route", "show"]);

    // Converged: a second pass (a restarted agent) adopts everything, plans nothing.
    for plan in reconcile_all(&lab, &HostGw) {
        assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    }
    assert_eq!(
        json(&n1.ns, &["ip", "-j", "-4", "route", "show"]),
        all_before
    );

    // n3 leaves: only its route goes.
    let without_n3: Vec<Peer> = lab
        .peers_of(0)
        .into_iter()
        .filter(|p| p.name != "n3")
        .collect();
    let plan = reconcile(n1, &HostGw, &without_n3);
    assert_eq!(plan.ops.len(), 1, "{:?}", plan.ops);
    assert!(matches!(&plan.ops[0], Op::DeleteRoute(e) if e.dst.to_string() == "10.244.3.0/24"));
    assert_eq!(
        twill_routes(&n1.ns),
        vec![r("10.244.2.0/24", "192.0.2.12", "eth0", false)]
    );
    let routes = json(&n1.ns, &["ip", "-j", "-4", "route", "show"]);
    let foreign: Vec<&Value> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["gateway"] == "192.0.2.99")
        .collect();
    assert_eq!(foreign.len(), 2, "foreign routes were touched: {routes}");
    assert!(lab.ping(0, 1), "n2 keeps working while n3 leaves");
}

#[test]
fn vxlan_mesh_reaches_pods_and_reconciles_only_the_delta() {
    twill_testkit::require_root("vxlan_mesh_reaches_pods_and_reconciles_only_the_delta");
    let lab = lab(&['a', 'a', 'a']);
    let n1 = &lab.nodes[0];
    let first = reconcile_all(&lab, &vxlan(false));
    for plan in &first {
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        assert!(lab.ping(a, b), "pod {a} -> pod {b} over vxlan");
    }

    // The device, as flannel.1 would be.
    let link = json(
        &n1.ns,
        &["ip", "-j", "-d", "link", "show", "dev", VXLAN_DEVICE],
    );
    let data = &link[0]["linkinfo"]["info_data"];
    assert_eq!(link[0]["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(
        (
            &data["id"],
            &data["port"],
            &data["learning"],
            &data["local"],
            &data["link"]
        ),
        (
            &1.into(),
            &8472.into(),
            &false.into(),
            &"192.0.2.11".into(),
            &"eth0".into()
        )
    );
    assert_eq!(link[0]["mtu"], 1450, "uplink 1500 - 50");
    assert_eq!(link[0]["address"], "0a:54:c0:00:02:0b");
    let addrs = json(
        &n1.ns,
        &["ip", "-j", "-4", "addr", "show", "dev", VXLAN_DEVICE],
    );
    assert_eq!(addrs[0]["addr_info"][0]["local"], "10.244.1.0");
    assert_eq!(addrs[0]["addr_info"][0]["prefixlen"], 32);
    let offload =
        String::from_utf8_lossy(&n1.ns.exec(&["ethtool", "-k", VXLAN_DEVICE]).stdout).into_owned();
    assert!(offload.contains("tx-checksumming: off"), "{offload}");

    // Per peer: one onlink route, one permanent neighbour, one FDB entry.
    assert_eq!(
        twill_routes(&n1.ns),
        vec![
            r("10.244.2.0/24", "10.244.2.0", VXLAN_DEVICE, true),
            r("10.244.3.0/24", "10.244.3.0", VXLAN_DEVICE, true),
        ]
    );
    assert_eq!(
        neighbours(&n1.ns),
        vec![
            ("10.244.2.0".into(), "0a:54:c0:00:02:0c".into()),
            ("10.244.3.0".into(), "0a:54:c0:00:02:0d".into()),
        ]
    );
    assert_eq!(
        fdb(&n1.ns),
        vec![
            ("0a:54:c0:00:02:0c".into(), "192.0.2.12".into()),
            ("0a:54:c0:00:02:0d".into(), "192.0.2.13".into()),
        ]
    );

    // A second pass plans nothing.
    for plan in reconcile_all(&lab, &vxlan(false)) {
        assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    }

    // n3 leaves: exactly its route, neighbour and FDB entry go.
    let without_n3: Vec<Peer> = lab
        .peers_of(0)
        .into_iter()
        .filter(|p| p.name != "n3")
        .collect();
    let plan = reconcile(n1, &vxlan(false), &without_n3);
    let text: Vec<String> = plan.ops.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        text,
        [
            "route del 10.244.3.0/24 via 10.244.3.0 dev twl.1 onlink",
            "fdb del 0a:54:c0:00:02:0d dev twl.1 dst 192.0.2.13",
            "neigh del 10.244.3.0 dev twl.1",
        ]
    );
    assert_eq!(twill_routes(&n1.ns).len(), 1);
    assert_eq!(neighbours(&n1.ns).len(), 1);
    assert_eq!(
        fdb(&n1.ns),
        vec![("0a:54:c0:00:02:0c".into(), "192.0.2.12".into())]
    );
    assert!(lab.ping(0, 1));

    // Switching the node to none removes the device and, with it, every entry.
    let plan = reconcile(n1, &backend::NoneBackend, &without_n3);
    assert_eq!(plan.ops, vec![Op::DeleteDevice(VXLAN_DEVICE.into())]);
    assert!(twill_routes(&n1.ns).is_empty());
    assert!(!n1.ns.try_exec(&["ip", "link", "show", VXLAN_DEVICE]).0);
}

#[test]
fn across_two_segments_host_gw_reports_and_direct_routing_tunnels() {
    twill_testkit::require_root("across_two_segments_host_gw_reports_and_direct_routing_tunnels");
    // n1, n2 on 192.0.2.0/24; n3 on 198.51.100.0/24 behind a router that knows no pods.
    let lab = lab(&['a', 'a', 'b']);
    let (n1, n3) = (&lab.nodes[0], &lab.nodes[2]);

    let plans = reconcile_all(&lab, &HostGw);
    assert_eq!(
        plans[0].problems,
        vec!["host-gw: n3 (198.51.100.13) is not on this node's segment 192.0.2.0/24: it needs a router that knows the pod routes, or use vxlan / directRouting; its blocks 10.244.3.0/24 are not routed".to_string()]
    );
    assert_eq!(plans[2].problems.len(), 2, "n3 sees both others as far");
    assert_eq!(
        twill_routes(&n1.ns),
        vec![r("10.244.2.0/24", "192.0.2.12", "eth0", false)],
        "no route is installed for the far peer"
    );
    assert!(twill_routes(&n3.ns).is_empty());
    assert!(lab.ping(0, 1), "same segment works over host-gw");
    assert!(!lab.ping(0, 2), "the far pod is unreachable over host-gw");

    // vxlan with directRouting: the near peer keeps its direct route (adopted, untouched),
    // the far one goes through the tunnel, across the router.
    let plans = reconcile_all(&lab, &vxlan(true));
    for plan in &plans {
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    }
    assert!(
        !plans[0]
            .ops
            .iter()
            .any(|o| o.to_string().contains("10.244.2.0/24")),
        "the near peer's route must not flap: {:?}",
        plans[0].ops
    );
    assert_eq!(
        twill_routes(&n1.ns),
        vec![
            r("10.244.2.0/24", "192.0.2.12", "eth0", false),
            r("10.244.3.0/24", "10.244.3.0", VXLAN_DEVICE, true),
        ]
    );
    assert_eq!(
        twill_routes(&n3.ns),
        vec![
            r("10.244.1.0/24", "10.244.1.0", VXLAN_DEVICE, true),
            r("10.244.2.0/24", "10.244.2.0", VXLAN_DEVICE, true),
        ]
    );
    assert_eq!(
        fdb(&n1.ns),
        vec![("0a:54:c6:33:64:0d".into(), "198.51.100.13".into())]
    );
    for (a, b) in [(0, 1), (0, 2), (2, 1), (1, 2)] {
        assert!(
            lab.ping(a, b),
            "pod {a} -> pod {b} over vxlan directRouting"
        );
    }
    for plan in reconcile_all(&lab, &vxlan(true)) {
        assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    }
}

/// `ip -j route show proto 84 type blackhole`: the destinations.
fn blackholes(ns: &TestNetns) -> Vec<String> {
    let mut out: Vec<String> = json(
        ns,
        &[
            "ip",
            "-j",
            "-4",
            "route",
            "show",
            "proto",
            "84",
            "type",
            "blackhole",
        ],
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|r| r["dst"].as_str().unwrap().to_owned())
    .collect();
    out.sort();
    out
}

/// The l3 pod's route on its node, as twill-cni installs it (or nothing if gone).
fn pod_route(ns: &TestNetns) -> Vec<Value> {
    json(
        ns,
        &[
            "ip", "-j", "-4", "route", "show", "proto", "84", "dev", "twll3h",
        ],
    )
    .as_array()
    .unwrap()
    .clone()
}

/// One pass as the agent runs it, through a fresh Routing (a restarted agent) in `node`'s
/// namespace. Panics on a failed operation; returns the changes made.
fn agent_pass(node: &Node, spec: &BackendSpec, peers: &[Peer]) -> usize {
    let mut routing = Routing::new(spec, std::path::Path::new("/nonexistent"))
        .unwrap()
        .in_netns(Netns::open(node.ns.path()).unwrap());
    let pass = routing
        .reconcile(&node.local, peers)
        .unwrap()
        .expect("a first pass is always due");
    assert!(pass.failures.is_empty(), "{spec}: {:?}", pass.failures);
    assert!(pass.problems.is_empty(), "{spec}: {:?}", pass.problems);
    // Nothing changed: the same Routing has nothing to do.
    assert_eq!(routing.reconcile(&node.local, peers).unwrap(), None);
    pass.changes
}

#[test]
fn l3_blocks_are_blackholed_pod_routes_survive_and_every_backend_carries_l3_pods() {
    twill_testkit::require_root(
        "l3_blocks_are_blackholed_pod_routes_survive_and_every_backend_carries_l3_pods",
    );
    let mut lab = lab(&['a', 'a']);
    // n1 wires its pods l3 from two /26 blocks; n2 keeps its bridge pod.
    lab.nodes[0].local.blocks = vec![
        "10.244.101.0/26".parse().unwrap(),
        "10.244.101.64/26".parse().unwrap(),
    ];
    lab.nodes[0].local.pod_wiring = PodWiring::L3;
    let n1 = &lab.nodes[0];
    // The l3 pod, wired as twill-cni does: a /32, a default via 169.254.1.1 answered by
    // proxy ARP, and the node's `/32 dev <veth> scope link proto 0x54` route. The node
    // needs a route to 169.254.1.1 for proxy ARP to answer: a default route, as nodes
    // have (and by which an unheld address would leave, but for the blackhole).
    let pod = TestNetns::new("l3p");
    for args in [
        &["ip", "route", "add", "default", "via", "192.0.2.1"][..],
        &[
            "ip", "link", "add", "twll3h", "type", "veth", "peer", "name", "eth0", "netns",
            &pod.name,
        ][..],
        &["ip", "link", "set", "twll3h", "up"],
        &["sysctl", "-qw", "net.ipv4.conf.twll3h.proxy_arp=1"],
        &["sysctl", "-qw", "net.ipv4.neigh.twll3h.proxy_delay=0"],
        &[
            "ip",
            "route",
            "add",
            "10.244.101.5/32",
            "dev",
            "twll3h",
            "scope",
            "link",
            "proto",
            "84",
        ],
    ] {
        n1.ns.exec(args);
    }
    for args in [
        &["ip", "link", "set", "eth0", "up"][..],
        &["ip", "addr", "add", "10.244.101.5/32", "dev", "eth0"],
        &[
            "ip",
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ],
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ],
    ] {
        pod.exec(args);
    }
    let pod_route_before = pod_route(&n1.ns);
    assert_eq!(pod_route_before.len(), 1);
    let reach_l3_pod = || {
        (0..3).any(|_| {
            lab.nodes[1]
                ._pod
                .try_exec(&["ping", "-c", "1", "-W", "2", "10.244.101.5"])
                .0
        })
    };
    assert!(!reach_l3_pod(), "no route yet");

    let vx = |direct_routing| VxlanOptions {
        direct_routing,
        ..Default::default()
    };
    for spec in [
        BackendSpec::HostGw,
        BackendSpec::Vxlan(vx(true)),
        BackendSpec::Vxlan(vx(false)),
        BackendSpec::Static(vx(false)),
    ] {
        for i in 0..2 {
            agent_pass(&lab.nodes[i], &spec, &lab.peers_of(i));
        }
        assert_eq!(
            blackholes(&n1.ns),
            ["10.244.101.0/26", "10.244.101.64/26"],
            "{spec}"
        );
        assert!(
            blackholes(&lab.nodes[1].ns).is_empty(),
            "bridge wiring: none"
        );
        assert_eq!(pod_route(&n1.ns), pod_route_before, "{spec}: the pod route");
        assert!(reach_l3_pod(), "{spec}: n2's pod -> n1's l3 pod");
        // A restarted agent adopts it all: no change, the pod route untouched.
        assert_eq!(agent_pass(n1, &spec, &lab.peers_of(0)), 0, "{spec}");
        assert_eq!(pod_route(&n1.ns), pod_route_before, "{spec}");
    }
    // An address of the block no pod holds goes nowhere on n1, not by the default route.
    let (ok, out, err) = n1.ns.try_exec(&["ip", "route", "get", "10.244.101.9"]);
    assert!(!ok || out.contains("blackhole"), "{out}{err}");
    let (ok, out, _) = n1.ns.try_exec(&["ip", "route", "get", "10.244.200.9"]);
    assert!(ok && out.contains("via 192.0.2.1"), "{out}");

    // Releasing a block removes its blackhole, and only that.
    let spec = BackendSpec::HostGw;
    let mut n1_local = n1.local.clone();
    n1_local.blocks.pop();
    let mut routing = Routing::new(&spec, std::path::Path::new("/nonexistent"))
        .unwrap()
        .in_netns(Netns::open(n1.ns.path()).unwrap());
    let pass = routing
        .reconcile(&n1_local, &lab.peers_of(0))
        .unwrap()
        .unwrap();
    assert!(pass.failures.is_empty(), "{:?}", pass.failures);
    assert_eq!(blackholes(&n1.ns), ["10.244.101.0/26"]);
    assert_eq!(pod_route(&n1.ns), pod_route_before);
    // Back to bridge wiring: the blackholes go, the pod route stays (twill-cni's).
    n1_local.pod_wiring = PodWiring::Bridge;
    routing
        .reconcile(&n1_local, &lab.peers_of(0))
        .unwrap()
        .unwrap();
    assert!(blackholes(&n1.ns).is_empty());
    assert_eq!(pod_route(&n1.ns), pod_route_before);
    drop(pod);
}

/// A backend with a socket of its own, as a routing speaker has: a thread reads datagrams
/// `DST via GW` on a UDP socket and sends each as an event; the backend plans the routes
/// it learned. The agent side (Routing) knows none of this.
struct UdpLearner {
    socket: Option<std::net::UdpSocket>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    learned: Vec<RouteEntry>,
    uplink: String,
}

impl twilld::backend::Backend for UdpLearner {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }

    fn start(&mut self, events: &Events, _now: std::time::Instant) -> Result<(), BackendError> {
        let socket = self.socket.take().expect("started once");
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let (events, stop) = (events.clone(), self.stop.clone());
        self.thread = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue; // the timeout: look at the stop flag
                };
                if !events.send(String::from_utf8_lossy(&buf[..n]).into_owned()) {
                    return;
                }
            }
        }));
        Ok(())
    }

    fn plan(&self, _local: &Local, _peers: &[Peer]) -> Desired {
        Desired {
            routes: self.learned.clone(),
            ..Default::default()
        }
    }

    fn on_event(&mut self, event: Event, _now: std::time::Instant) -> Reaction {
        let Some(text) = event.message::<String>() else {
            return Reaction::Idle;
        };
        let Some((dst, via)) = text.split_once(" via ") else {
            return Reaction::Idle;
        };
        self.learned.push(RouteEntry {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
            dev: self.uplink.clone(),
            onlink: false,
        });
        Reaction::Reconcile
    }

    fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[test]
fn a_route_learned_on_a_backends_own_socket_reaches_the_kernel() {
    twill_testkit::require_root("a_route_learned_on_a_backends_own_socket_reaches_the_kernel");
    let lab = lab(&['a', 'a']);
    let n1 = &lab.nodes[0];
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let backend = UdpLearner {
        socket: Some(socket),
        thread: None,
        stop: Default::default(),
        learned: Vec::new(),
        uplink: "eth0".into(),
    };
    let (woke_tx, woke) = std::sync::mpsc::channel();
    let mut routing = Routing::with_backend(BackendSpec::HostGw, Box::new(backend))
        .in_netns(Netns::open(n1.ns.path()).unwrap());
    routing.set_waker(std::sync::Arc::new(move || {
        let _ = woke_tx.send(());
    }));
    let peers = lab.peers_of(0);
    // Start: nothing learned yet.
    routing.reconcile(&n1.local, &peers).unwrap().unwrap();
    assert!(twill_routes(&n1.ns).is_empty());
    assert_eq!(routing.reconcile(&n1.local, &peers).unwrap(), None);

    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(b"10.244.77.0/24 via 192.0.2.12", addr).unwrap();
    woke.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the backend's event wakes the agent");
    // The loop woke: one reconcile, the same inputs, and the learned route is in.
    let pass = routing.reconcile(&n1.local, &peers).unwrap().unwrap();
    assert_eq!(pass.changes, 1, "{pass:?}");
    assert_eq!(
        twill_routes(&n1.ns),
        vec![r("10.244.77.0/24", "192.0.2.12", "eth0", false)]
    );
    // Stopping the backend leaves the route: forwarding goes on.
    routing.stop();
    drop(routing);
    assert_eq!(twill_routes(&n1.ns).len(), 1);
}
