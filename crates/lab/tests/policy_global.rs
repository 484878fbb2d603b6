//! Calico's GlobalNetworkPolicy in the lab, over the upstream model (x, y, z × a, b, c on
//! 2 nodes, 80/81 TCP+UDP): order decides between global policies, a global Deny beats a
//! namespaced allow, Pass hands the decision down to the NetworkPolicies (and without a
//! decision the tier denies), and a Log rule's packets show up in `twill policy log`. Each
//! table is written out, checked against the reference model on the lab's store, then
//! against real probes.
//!
//! Bound: one lab (~5-20 s to build), 4 cases of 1-3 tables with blocked cells (about one
//! 1 s probe round each) plus the all-open check between cases: under ~1 min. Needs root.

mod policy_util;
use policy_util::*;

use twill_lab::netpol::{Peer, PortProto, Reachability};
use twill_lab::netpol_probe;
use twill_lab::plan::PodWiring;

const TCP80: PortProto = PortProto::tcp(80);
const UDP81: PortProto = PortProto::udp(81);

fn gnp(name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}---\n")
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}---\n"
    )
}

/// x/a's ingress: Deny from y at `deny_order`, Allow everything at 20.
fn ordered(deny_order: u32) -> String {
    format!(
        "{}{}",
        gnp(
            "deny-from-y",
            &format!("order: {deny_order}\nselector: pod == 'a'\nnamespaceSelector: ns == 'x'\ntypes: [Ingress]\ningress:\n- action: Deny\n  source:\n    namespaceSelector: ns == 'y'"),
        ),
        gnp(
            "allow-all",
            "order: 20\nselector: pod == 'a'\nnamespaceSelector: ns == 'x'\ntypes: [Ingress]\ningress:\n- action: Allow",
        )
    )
}

fn order(lab: &PolicyLab) {
    lab.apply(&ordered(10));
    let mut r = Reachability::new(true);
    r.expect_peer(Peer::ns("y"), Peer::pod("x", "a"), false);
    lab.expect(
        "Deny at order 10 before Allow at 20",
        &[(TCP80, &r), (UDP81, &r)],
    );
    lab.apply(&ordered(30));
    let open = Reachability::new(true);
    lab.expect("Allow at 20 before Deny at 30", &[(TCP80, &open)]);
}

fn deny_over_namespaced_allow(lab: &PolicyLab) {
    lab.apply(&format!(
        "{}{}",
        np("x", "allow-everything", "podSelector: {}\ningress: [{}]"),
        gnp(
            "deny-z",
            "order: 10\nnamespaceSelector: ns == 'x'\ntypes: [Ingress]\ningress:\n- action: Deny\n  source:\n    namespaceSelector: ns == 'z'\n- action: Pass",
        )
    ));
    let r = Reachability::table(
        "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b .   .   .   .   .   .   .   .   .
        x/c .   .   .   .   .   .   .   .   .
        y/a .   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c .   .   .   .   .   .   .   .   .
        z/a X   X   X   .   .   .   .   .   .
        z/b X   X   X   .   .   .   .   .   .
        z/c X   X   X   .   .   .   .   .   .
        ",
    );
    lab.expect(
        "global Deny over a namespaced allow",
        &[(TCP80, &r), (UDP81, &r)],
    );
}

fn pass(lab: &PolicyLab) {
    lab.apply(&gnp(
        "pass-y",
        "order: 10\nnamespaceSelector: ns == 'x'\ntypes: [Ingress]\ningress:\n- action: Pass\n  source:\n    namespaceSelector: ns == 'y'",
    ));
    // From y: passed down, no NetworkPolicy: open. Anything else: end of tier, denied.
    let mut r = Reachability::new(true);
    r.expect_all_ingress(Peer::ns("x"), false)
        .expect_peer(Peer::ns("y"), Peer::ns("x"), true);
    lab.expect(
        "Pass, then no NetworkPolicy: open; the rest: end-of-tier deny",
        &[(TCP80, &r)],
    );
    lab.apply(&np(
        "x",
        "a-from-y-b",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n    podSelector: {matchLabels: {pod: b}}",
    ));
    r.expect("y/a", "x/a", false).expect("y/c", "x/a", false);
    lab.expect(
        "Pass, then the NetworkPolicy decides",
        &[(TCP80, &r), (UDP81, &r)],
    );
}

fn log(lab: &PolicyLab) {
    lab.apply(&gnp(
        "log-z",
        "order: 5\nselector: pod == 'a'\nnamespaceSelector: ns == 'x'\ntypes: [Ingress]\ningress:\n- action: Log\n  source:\n    namespaceSelector: ns == 'z'\n- action: Allow",
    ));
    let open = Reachability::new(true);
    lab.expect("Log then Allow: open", &[(TCP80, &open)]);
    // The probes from z to x/a were logged on x/a's node.
    let node = lab
        .state
        .plan
        .pods()
        .find(|p| p.identity.as_ref().is_some_and(|i| i.key() == "x/a"))
        .unwrap()
        .node;
    let node_ns = lab.state.plan.node(node).unwrap().netns.clone();
    let (za, xa, ya) = (lab.pod("z/a"), lab.pod("x/a"), lab.pod("y/a"));
    let read_log = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &node_ns])
            .arg(&lab.twill)
            .args(["policy", "log"])
            .output()
            .unwrap();
        assert!(out.status.success(), "twill policy log: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let from = |ip: std::net::Ipv4Addr, log: &str| {
        let (src, dst) = (format!(" {ip}:"), format!("{}:80", xa.ip));
        log.lines()
            .filter(|l| l.contains(&src) && l.contains(&dst))
            .count()
    };
    // An all-open table holds before the policy is in place too: probe until the Log
    // rule has logged (bounded), y's probes in between.
    let start = std::time::Instant::now();
    let log = loop {
        for p in [za, ya] {
            let _ = netpol_probe::probe(p, xa, TCP80, std::time::Duration::from_millis(500));
        }
        let log = read_log();
        if from(za.ip, &log) > 0 {
            break log;
        }
        assert!(
            start.elapsed() < TABLE_DEADLINE,
            "no line for {} → {}:80 in twill policy log after {TABLE_DEADLINE:?}:\n{log}",
            za.ip,
            xa.ip
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(log.contains("log-z"), "the policy is not named:\n{log}");
    // One more from each, now that the rule is surely in place: z's is logged, y's never.
    let before = from(za.ip, &log);
    for p in [za, ya] {
        netpol_probe::probe(p, xa, TCP80, std::time::Duration::from_secs(1)).unwrap();
    }
    // NFLOG hands packets over in batches: wait for it (bounded).
    let start = std::time::Instant::now();
    let log = loop {
        let log = read_log();
        if from(za.ip, &log) > before {
            break log;
        }
        assert!(
            start.elapsed() < TABLE_DEADLINE,
            "z/a's last probe was not logged:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(from(ya.ip, &log), 0, "{} was logged:\n{log}", ya.ip);
}

#[test]
fn global_bridge() {
    twill_testkit::require_root("global_bridge");
    let lab = PolicyLab::up('g', PodWiring::Bridge);
    lab.run(&[
        ("order", order),
        ("deny over a namespaced allow", deny_over_namespaced_allow),
        ("pass", pass),
        ("log", log),
    ]);
}
