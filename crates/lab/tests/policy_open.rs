//! The upstream NetworkPolicy model in the lab with no policy at all: every pod reaches
//! every pod on 80 and 81, TCP and UDP, across nodes, in both pod wirings (the baseline
//! every policy case starts from). Bound: each test is one lab (2 nodes, 9 pods, ~5 s to
//! build) and four all-open tables probed in parallel (~1 s); under 30 s each.
//! Needs root.

mod policy_util;
use policy_util::*;

use twill_lab::netpol::Reachability;
use twill_lab::plan::PodWiring;

fn all_open(tag: char, wiring: PodWiring) {
    twill_testkit::require_root("policy all open");
    let lab = PolicyLab::up(tag, wiring);
    // Pods really are on both nodes: x/a on n1, x/b on n2.
    let n = |key: &str| {
        lab.state
            .plan
            .pods()
            .find(|p| p.identity.as_ref().is_some_and(|i| i.key() == key))
            .unwrap()
            .node
    };
    assert_ne!(n("x/a"), n("x/b"));
    lab.expect_all(
        "no policy: all open",
        &Reachability::table(
            "
            -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
            x/a .   .   .   .   .   .   .   .   .
            x/b .   .   .   .   .   .   .   .   .
            x/c .   .   .   .   .   .   .   .   .
            y/a .   .   .   .   .   .   .   .   .
            y/b .   .   .   .   .   .   .   .   .
            y/c .   .   .   .   .   .   .   .   .
            z/a .   .   .   .   .   .   .   .   .
            z/b .   .   .   .   .   .   .   .   .
            z/c .   .   .   .   .   .   .   .   .
            ",
        ),
    );
}

#[test]
fn all_open_bridge() {
    all_open('o', PodWiring::Bridge);
}

#[test]
fn all_open_l3() {
    all_open('p', PodWiring::L3);
}
