//! Kubernetes NetworkPolicy in the lab, the upstream e2e suite's way (test/e2e/network/
//! netpol): namespaces x, y, z × pods a, b, c on 2 nodes (x/a, x/c, y/b, z/a, z/c on n1;
//! the others on n2), every pod serving 80 and 81 over TCP and UDP. Each case applies its
//! policies with `twill apply -f`, writes out the 9×9 table it expects, checks that table
//! against the reference model on the lab's own store, then against real probes from
//! every pod to every pod (real twilld compiling nftables, real twill-cni); then its
//! policies go and the table must be all open again before the next case.
//!
//! Bound: one lab per test (~5-20 s to build on 2 loaded cores); a table with blocked
//! cells costs about one probe timeout (1 s) per round, all 81 probes in parallel; a case
//! is 1-3 rounds plus the all-open check: the bridge test (11 cases) stays under ~2 min,
//! the l3 one (5 cases) under ~1 min. Needs root.

mod policy_util;
use policy_util::*;

use twill_lab::netpol::{Peer, PortProto, Reachability};
use twill_lab::plan::PodWiring;

const TCP80: PortProto = PortProto::tcp(80);
const TCP81: PortProto = PortProto::tcp(81);
const UDP80: PortProto = PortProto::udp(80);
const UDP81: PortProto = PortProto::udp(81);

fn np(ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}---\n"
    )
}

fn default_deny_ingress(lab: &PolicyLab) {
    lab.apply(&np(
        "x",
        "deny-ingress",
        "podSelector: {}\npolicyTypes: [Ingress]",
    ));
    let r = Reachability::table(
        "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   X   X   .   .   .   .   .   .
        x/b X   .   X   .   .   .   .   .   .
        x/c X   X   .   .   .   .   .   .   .
        y/a X   X   X   .   .   .   .   .   .
        y/b X   X   X   .   .   .   .   .   .
        y/c X   X   X   .   .   .   .   .   .
        z/a X   X   X   .   .   .   .   .   .
        z/b X   X   X   .   .   .   .   .   .
        z/c X   X   X   .   .   .   .   .   .
        ",
    );
    let mut built = Reachability::new(true);
    built.expect_all_ingress(Peer::ns("x"), false);
    assert_eq!(r, built);
    lab.expect("default deny ingress", &[(TCP80, &r), (UDP81, &r)]);
}

fn default_deny_egress(lab: &PolicyLab) {
    lab.apply(&np(
        "x",
        "deny-egress",
        "podSelector: {}\npolicyTypes: [Egress]",
    ));
    let mut r = Reachability::new(true);
    r.expect_all_egress(Peer::ns("x"), false);
    lab.expect("default deny egress", &[(TCP80, &r), (UDP80, &r)]);
}

fn allow_all(lab: &PolicyLab) {
    lab.apply(&np(
        "x",
        "deny-all",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ));
    let mut denied = Reachability::new(true);
    denied
        .expect_all_ingress(Peer::ns("x"), false)
        .expect_all_egress(Peer::ns("x"), false);
    lab.expect("deny all in x", &[(TCP81, &denied)]);
    lab.apply(&np(
        "x",
        "allow-all",
        "podSelector: {}\ningress: [{}]\negress: [{}]\npolicyTypes: [Ingress, Egress]",
    ));
    let open = Reachability::new(true);
    lab.expect("allow all over deny all", &[(TCP81, &open), (UDP81, &open)]);
}

fn pod_selector(lab: &PolicyLab) {
    lab.apply(&np(
        "x",
        "allow-b-to-a",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}",
    ));
    let r = Reachability::table(
        "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b .   .   .   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a X   .   .   .   .   .   .   .   .
        y/b X   .   .   .   .   .   .   .   .
        y/c X   .   .   .   .   .   .   .   .
        z/a X   .   .   .   .   .   .   .   .
        z/b X   .   .   .   .   .   .   .   .
        z/c X   .   .   .   .   .   .   .   .
        ",
    );
    lab.expect("pod selector", &[(TCP80, &r), (UDP80, &r)]);
}

fn namespace_selector(lab: &PolicyLab) {
    // As upstream's case does, on the label Twill sets on every namespace itself (the
    // lab's namespaces were applied with `ns=<name>` only): a selector on it works.
    lab.apply(&np(
        "x",
        "allow-other-ns",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]",
    ));
    let mut r = Reachability::new(true);
    r.expect_all_ingress(Peer::pod("x", "a"), false)
        .expect_peer(Peer::ns("y"), Peer::pod("x", "a"), true)
        .expect_peer(Peer::ns("z"), Peer::pod("x", "a"), true);
    lab.expect("namespace selector (NotIn)", &[(TCP80, &r), (UDP81, &r)]);
}

fn pod_and_namespace_selector(lab: &PolicyLab) {
    // Both in one peer: pods b of namespace y only.
    lab.apply(&np(
        "x",
        "allow-y-b",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n    podSelector: {matchLabels: {pod: b}}",
    ));
    let r = Reachability::table(
        "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b X   .   .   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a X   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c X   .   .   .   .   .   .   .   .
        z/a X   .   .   .   .   .   .   .   .
        z/b X   .   .   .   .   .   .   .   .
        z/c X   .   .   .   .   .   .   .   .
        ",
    );
    lab.expect("pod AND namespace selector", &[(TCP80, &r)]);
    // Two peers: pods b of x, or any pod of y (the same policy, updated).
    lab.apply(&np(
        "x",
        "allow-y-b",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n  - podSelector: {matchLabels: {pod: b}}",
    ));
    let mut or = Reachability::new(true);
    or.expect_all_ingress(Peer::pod("x", "a"), false)
        .expect_peer(Peer::ns("y"), Peer::pod("x", "a"), true)
        .expect("x/b", "x/a", true);
    lab.expect("pod OR namespace selector", &[(TCP80, &or), (UDP80, &or)]);
}

fn ip_block_with_except(lab: &PolicyLab) {
    // x/a may talk out only to n2's block (where x/b lives), except x/b itself.
    let xb = lab.pod("x/b").ip;
    let cidr = ipnet::Ipv4Net::new(xb, 24).unwrap().trunc();
    lab.apply(&np(
        "x",
        "egress-cidr",
        &format!(
            "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock:\n      cidr: {cidr}\n      except: [{xb}/32]"
        ),
    ));
    let mut r = Reachability::new(true);
    r.expect_all_egress(Peer::pod("x", "a"), false);
    for p in &lab.pods {
        if cidr.contains(&p.ip) && p.ip != xb {
            r.expect("x/a", &p.key, true);
        }
    }
    // n2 holds x/b, y/a, y/c, z/b: x/a reaches three of them.
    assert_eq!(
        (0..9).filter(|&t| r.expected.get_by_index(0, t)).count(),
        4,
        "{}",
        r.expected.render()
    );
    lab.expect("ipBlock with except", &[(TCP80, &r), (UDP81, &r)]);
}

fn named_ports(lab: &PolicyLab) {
    lab.apply(&np(
        "x",
        "allow-named",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - port: serve-80-tcp\n  - protocol: UDP\n    port: serve-81-udp",
    ));
    let open = Reachability::new(true);
    let mut closed = Reachability::new(true);
    closed.expect_all_ingress(Peer::pod("x", "a"), false);
    lab.expect(
        "named ports",
        &[
            (TCP80, &open),
            (UDP81, &open),
            (TCP81, &closed),
            (UDP80, &closed),
        ],
    );
}

fn end_port(lab: &PolicyLab) {
    lab.apply(&np(
        "x",
        "allow-range",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - protocol: TCP\n    port: 75\n    endPort: 80",
    ));
    let open = Reachability::new(true);
    let mut closed = Reachability::new(true);
    closed.expect_all_ingress(Peer::pod("x", "a"), false);
    lab.expect(
        "endPort (75-80: 80 in, 81 out)",
        &[(TCP80, &open), (TCP81, &closed), (UDP80, &closed)],
    );
}

fn egress(lab: &PolicyLab) {
    lab.apply(&np(
        "x",
        "egress-to-y-b",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector: {matchLabels: {ns: y}}\n    podSelector: {matchLabels: {pod: b}}\n  ports:\n  - port: 80",
    ));
    let mut r80 = Reachability::new(true);
    r80.expect_all_egress(Peer::pod("x", "a"), false)
        .expect("x/a", "y/b", true);
    let mut r81 = Reachability::new(true);
    r81.expect_all_egress(Peer::pod("x", "a"), false);
    lab.expect(
        "egress to y/b on 80/TCP",
        &[(TCP80, &r80), (TCP81, &r81), (UDP80, &r81)],
    );
}

fn several_policies(lab: &PolicyLab) {
    lab.apply(&format!(
        "{}{}{}",
        np(
            "x",
            "from-y",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}",
        ),
        np(
            "x",
            "from-z-81",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: z}}\n  ports: [{port: 81}]",
        ),
        np(
            "y",
            "c-no-egress",
            "podSelector: {matchLabels: {pod: c}}\npolicyTypes: [Egress]",
        )
    ));
    let mut r80 = Reachability::new(true);
    r80.expect_all_ingress(Peer::pod("x", "a"), false)
        .expect_peer(Peer::ns("y"), Peer::pod("x", "a"), true)
        .expect_all_egress(Peer::pod("y", "c"), false);
    let mut r81 = r80.clone();
    r81.expect_peer(Peer::ns("z"), Peer::pod("x", "a"), true);
    lab.expect("several policies add up", &[(TCP80, &r80), (TCP81, &r81)]);
}

/// A file with any bad document is refused by `twill apply -f` in the live lab: the store
/// keeps every policy and namespace as it was (same keys, same values), and the
/// dataplane keeps enforcing the policy already there, although the same file's good
/// documents would have opened everything.
fn bad_resources_change_nothing(lab: &PolicyLab) {
    lab.apply(&np(
        "x",
        "deny-ingress",
        "podSelector: {}\npolicyTypes: [Ingress]",
    ));
    let mut denied = Reachability::new(true);
    denied.expect_all_ingress(Peer::ns("x"), false);
    lab.expect(
        "deny ingress in x, before the bad files",
        &[(TCP80, &denied)],
    );
    let snapshot = || {
        ["networkpolicies/", "globalnetworkpolicies/", "namespaces/"]
            .iter()
            .flat_map(|p| lab.store_list(p))
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let good = format!(
        "{}kind: Namespace\nmetadata: {{name: w, labels: {{ns: w}}}}\n---\n",
        np("x", "allow-all", "podSelector: {}\ningress: [{}]")
    );
    let bad: &[(&str, &str, &str)] = &[
        (
            "ipBlock with a selector",
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.244.0.0/16}\n      podSelector: {}\n",
            "spec.ingress[0].from[0]",
        ),
        (
            "except outside the cidr",
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.244.0.0/16, except: [10.245.0.0/24]}\n",
            "except[0]",
        ),
        (
            "endPort with a named port",
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress:\n  - ports:\n    - port: serve-80-tcp\n      endPort: 90\n",
            "endPort",
        ),
        (
            "a Calico selector that does not parse",
            "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: pod == a\n",
            "spec.selector",
        ),
        (
            "an order that is not finite",
            "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  order: .inf\n",
            "spec.order",
        ),
    ];
    let file = std::env::temp_dir().join(format!("twlbad{}.yaml", std::process::id()));
    for (what, doc, path) in bad {
        std::fs::write(&file, format!("{good}{doc}")).unwrap();
        let out = lab.twill(&["apply", "-f", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(path),
            "{what}: expected a refusal naming {path}: {}",
            text(&out)
        );
        assert!(snapshot() == before, "{what}: the store changed");
    }
    let _ = std::fs::remove_file(&file);
    lab.expect(
        "deny ingress in x, after the bad files",
        &[(TCP80, &denied)],
    );
}

#[test]
fn netpol_bridge() {
    twill_testkit::require_root("netpol_bridge");
    let lab = PolicyLab::up('k', PodWiring::Bridge);
    lab.run(&[
        ("default deny ingress", default_deny_ingress),
        ("default deny egress", default_deny_egress),
        ("allow all", allow_all),
        ("pod selector", pod_selector),
        ("namespace selector", namespace_selector),
        ("pod and namespace selector", pod_and_namespace_selector),
        ("ipBlock with except", ip_block_with_except),
        ("named ports", named_ports),
        ("endPort", end_port),
        ("egress", egress),
        ("several policies", several_policies),
        ("bad resources change nothing", bad_resources_change_nothing),
    ]);
}

/// l3 wiring, with the store in etcd (the bridge test uses the embedded store).
#[test]
fn netpol_l3_etcd() {
    twill_testkit::require_root("netpol_l3_etcd");
    twill_testkit::require_program("netpol_l3_etcd", "etcd", "etcd-server");
    let lab = PolicyLab::up_with('l', PodWiring::L3, twill_lab::plan::StoreKind::Etcd);
    lab.run(&[
        ("default deny ingress", default_deny_ingress),
        ("pod and namespace selector", pod_and_namespace_selector),
        ("ipBlock with except", ip_block_with_except),
        ("egress", egress),
        ("bad resources change nothing", bad_resources_change_nothing),
    ]);
}
