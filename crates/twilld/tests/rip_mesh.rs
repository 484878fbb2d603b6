//! Root-gated: the walk-through's "Quagga on every node", with Twill's own speaker: three
//! twilld nodes with `backend: rip` on one segment and no other router. Each learns the
//! others' blocks over RIP (proto 84 routes via their node IPs, nothing from the store's
//! peer list), pods reach each other across nodes, a node that stops is withdrawn from the
//! others at once, and one that comes back is learned again within a triggered update.
//! Bounded: about 15 s (timers 5 15 10), every wait with its deadline.

mod common;
mod rip_common;

use std::time::{Duration, Instant};

use rip_common::{route, routes, short_rip, wait_no_route, wait_ping, wait_route, Cluster};
use twill_api::wiring::PodWiring;

#[test]
fn three_nodes_exchange_blocks_over_rip_and_bridge_pods_reach_each_other() {
    twill_testkit::require_root(
        "three_nodes_exchange_blocks_over_rip_and_bridge_pods_reach_each_other",
    );
    three_nodes("twlripm", PodWiring::Bridge);
}

/// With l3 wiring a block has no connected route, only the agent's blackhole; RIP announces
/// the block as one route all the same, and pods' /32s are reached through it.
#[test]
fn three_nodes_exchange_blocks_over_rip_and_l3_pods_reach_each_other() {
    twill_testkit::require_root(
        "three_nodes_exchange_blocks_over_rip_and_l3_pods_reach_each_other",
    );
    three_nodes("twlripl", PodWiring::L3);
}

fn three_nodes(tag: &str, wiring: PodWiring) {
    let started = Instant::now();
    let mut c = Cluster::new(tag, 3, short_rip(), wiring);
    for i in 1..=3 {
        c.wait_ready(i);
    }
    let blocks: Vec<String> = (1..=3).map(|i| c.block(i)).collect();
    let addr = |i: usize| format!("192.0.2.{}", i + 1);
    let mut took = Duration::ZERO;
    for i in 1..=3 {
        for j in (1..=3).filter(|j| *j != i) {
            took = took.max(wait_route(
                c.node(i),
                &blocks[j - 1],
                &addr(j),
                "84",
                Duration::from_secs(10),
            ));
        }
        // Exactly the two learned routes: no poisoned route, no route to the segment.
        let twill: Vec<_> = routes(c.node(i))
            .into_iter()
            .filter(|r| r.protocol == "84" && r.gateway.is_some())
            .collect();
        assert_eq!(twill.len(), 2, "n{i}: {twill:#?}");
    }
    println!("every node had every block {took:?} after the last was ready");
    if wiring == PodWiring::L3 {
        for i in 1..=3 {
            let own = route(c.node(i), &blocks[i - 1]);
            assert_eq!(own.map(|r| r.kind), Some("blackhole".to_string()), "n{i}");
        }
    }
    let pods: Vec<String> = (1..=3).map(|i| c.add_pod(i)).collect();
    for (i, from) in c.pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                wait_ping(&from.name, to, Duration::from_secs(5));
            }
        }
    }

    // n3 leaves cleanly: gone from n1 and n2 at once.
    c.stop(3);
    let g1 = wait_no_route(c.node(1), &blocks[2], Duration::from_secs(3));
    let g2 = wait_no_route(c.node(2), &blocks[2], Duration::from_secs(3));
    println!("n3 stopped: its block left n1 after {g1:?} and n2 after {g2:?}");
    // Each agent's log says who it learned what from, and what it lost.
    let log1 = std::fs::read_to_string(c.dir.path.join("n1.log")).unwrap();
    let learned = format!(
        "msg=\"rip: route learned\" prefix={} via=192.0.2.4 from=192.0.2.4 metric=2",
        blocks[2]
    );
    let lost = format!(
        "msg=\"rip: route lost\" prefix={} via=192.0.2.4 from=192.0.2.4",
        blocks[2]
    );
    assert!(log1.contains(&learned) && log1.contains(&lost), "{log1}");
    // n1 and n2 still reach each other.
    let p1 = c.pods[0].name.clone();
    wait_ping(&p1, &pods[1], Duration::from_secs(5));
    // n3 returns: its start-up request and update bring everything back within seconds.
    c.start(3);
    c.wait_ready(3);
    let back = Instant::now();
    wait_route(
        c.node(1),
        &blocks[2],
        &addr(3),
        "84",
        Duration::from_secs(8),
    );
    wait_route(
        c.node(3),
        &blocks[0],
        &addr(1),
        "84",
        Duration::from_secs(8),
    );
    wait_route(
        c.node(3),
        &blocks[1],
        &addr(2),
        "84",
        Duration::from_secs(8),
    );
    println!("n3 back: routes both ways after {:?}", back.elapsed());
    wait_ping(&p1, &pods[2], Duration::from_secs(5));
    println!("took {:?}", started.elapsed());
}
