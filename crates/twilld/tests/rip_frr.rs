//! Root-gated: twilld with `backend: rip` against FRR 8.4's ripd (zebra + ripd) as the
//! router outside the cluster, in namespaces on one bridge. FRR learns every node's block
//! into its kernel (`proto rip`, via the node), the nodes learn FRR's outside network into
//! theirs (proto 84, via FRR), and a host behind FRR reaches pods by pod IP, with no NAT. A
//! cleanly stopped twilld is withdrawn at once (its last response at metric 16); a
//! SIGKILLed one times out (15 s timeout: FRR's and Twill's `timers basic 5 15 10`).
//! Bounded: about 45 s, every wait with its deadline.

mod common;
mod rip_common;

use std::time::{Duration, Instant};

use rip_common::seg::ripd_conf;
use rip_common::{route, short_rip, wait_no_route, wait_ping, wait_route, Cluster, FrrRip, TIMERS};
use twill_api::wiring::PodWiring;
use twill_testkit::TestNetns;

#[test]
fn frr_learns_the_blocks_an_outside_host_reaches_pods_and_a_leaving_node_is_withdrawn() {
    twill_testkit::require_root(
        "frr_learns_the_blocks_an_outside_host_reaches_pods_and_a_leaving_node_is_withdrawn",
    );
    twill_testkit::require_program("rip_frr", "/usr/lib/frr/ripd", "frr");
    let started = Instant::now();
    let mut c = Cluster::new("twlripf", 2, short_rip(), PodWiring::Bridge);
    let router = c.router_ns().to_string();
    // The outside host, behind FRR on 198.51.100.0/24; its only route is FRR.
    let outside = TestNetns::new("twlripfo");
    twill_testkit::sh(&[
        "ip",
        "link",
        "add",
        "twlripout",
        "netns",
        &router,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.name,
    ]);
    twill_testkit::sh(&[
        "ip",
        "-n",
        &router,
        "addr",
        "add",
        "198.51.100.1/24",
        "dev",
        "twlripout",
    ]);
    twill_testkit::sh(&["ip", "-n", &router, "link", "set", "twlripout", "up"]);
    outside.exec(&["ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    outside.exec(&["ip", "link", "set", "eth0", "up"]);
    outside.exec(&["ip", "route", "add", "default", "via", "198.51.100.1"]);
    // FRR announces its connected outside network (and the segment, which Twill ignores:
    // the connected route is better).
    let frr = FrrRip::start(&router, "", &ripd_conf(TIMERS, " redistribute connected"));

    c.wait_ready(1);
    c.wait_ready(2);
    let (b1, b2) = (c.block(1), c.block(2));
    let (n1, n2) = (c.node(1).to_string(), c.node(2).to_string());
    // FRR's kernel: each block via its node, proto rip.
    let t1 = wait_route(&router, &b1, "192.0.2.2", "rip", Duration::from_secs(10));
    wait_route(&router, &b2, "192.0.2.3", "rip", Duration::from_secs(10));
    // The nodes' kernels: the outside network via FRR and each other's block, Twill's routes.
    wait_route(
        &n1,
        "198.51.100.0/24",
        "192.0.2.1",
        "84",
        Duration::from_secs(10),
    );
    wait_route(
        &n2,
        "198.51.100.0/24",
        "192.0.2.1",
        "84",
        Duration::from_secs(10),
    );
    wait_route(&n1, &b2, "192.0.2.3", "84", Duration::from_secs(10));
    wait_route(&n2, &b1, "192.0.2.2", "84", Duration::from_secs(10));
    assert!(route(&n1, "192.0.2.0/24").is_some_and(|r| r.protocol == "kernel"));
    let show = frr.vtysh(&["show ip rip"]);
    assert!(show.contains(&b1) && show.contains(&b2), "{show}");
    println!("FRR had n1's block {t1:?} after the agents were ready\n{show}");

    // Pods, by pod IP from outside (no NAT: masquerade off) and across nodes.
    let p1 = c.add_pod(1);
    let p2 = c.add_pod(2);
    wait_ping(&outside.name, &p1, Duration::from_secs(5));
    wait_ping(&outside.name, &p2, Duration::from_secs(5));
    let pod1 = c.pods[0].name.clone();
    wait_ping(&pod1, &p2, Duration::from_secs(5));
    wait_ping(&pod1, "198.51.100.2", Duration::from_secs(5));

    // n2 stops cleanly: its last response (metric 16) takes its block out of FRR's kernel and
    // n1's at once.
    let stop = Instant::now();
    c.stop(2);
    let gone_frr = wait_no_route(&router, &b2, Duration::from_secs(3));
    let gone_n1 = wait_no_route(&n1, &b2, Duration::from_secs(3));
    println!(
        "n2 stopped: its block left FRR after {gone_frr:?} and n1 after {gone_n1:?} (stop took {:?})",
        stop.elapsed()
    );
    assert!(
        c.logs().contains("rip: stopped; our blocks withdrawn"),
        "{}",
        c.logs()
    );

    // Back: its block returns (the same lease), then a SIGKILL: no last word, so FRR and n1
    // time it out after 15 s without an update.
    c.start(2);
    c.wait_ready(2);
    wait_route(&router, &b2, "192.0.2.3", "rip", Duration::from_secs(10));
    wait_route(&n1, &b2, "192.0.2.3", "84", Duration::from_secs(10));
    c.kill(2);
    let killed = Instant::now();
    wait_no_route(&router, &b2, Duration::from_secs(25));
    let frr_after = killed.elapsed();
    wait_no_route(&n1, &b2, Duration::from_secs(25));
    let n1_after = killed.elapsed();
    println!("n2 SIGKILLed: its block left FRR after {frr_after:?} and n1 after {n1_after:?}");
    // Not before the timeout less one update interval (the last update may have come up
    // to 5 s before the kill).
    assert!(frr_after >= Duration::from_secs(9), "{frr_after:?}");
    assert!(n1_after >= Duration::from_secs(9), "{n1_after:?}");
    // n1 and the outside host still reach each other's side.
    wait_ping(&outside.name, &p1, Duration::from_secs(5));
    println!("took {:?}", started.elapsed());
    drop(frr);
}
