//! The check matrix of Calico mode, through the real `twill lab` (twilld with `backend: bgp`
//! or `rip` on every node, pods wired by twill-cni, BIRD or FRR in the router namespace):
//! bgp × {l3, bridge} × {1, 2 segments} × {mesh, route reflectors} × {embedded, etcd}, and
//! rip × l3 without and with FRR's ripd as the router. Each combination is one test (nextest
//! runs them in parallel): `lab up`, every `lab check` row as expected (pods across nodes and
//! segments, the outside host by pod IP when a router peers), each kernel read back (every
//! other node's block learned by the protocol), each node's sessions as it publishes them
//! (mesh or reflector peers, all Established), then `lab down`.
//!
//! CI runs all 18 (nextest runs them in parallel). Each costs 5-10 s on 2 cores once the
//! binaries are built (3 nodes, 1 pod each; every wait in them is bounded: routes 30 s in
//! `lab up`, sessions 10 s here), about a minute for the whole matrix:
//!   cargo nextest run -p twill-lab --test bgp_matrix
//! Across two segments the nodes peer with each other through the router (mesh or
//! reflector sessions) and with the router (eBGP); a node on the other segment is never a
//! next hop (not on-link: the speaker resolves next hops on the uplink's subnet only), so
//! its blocks are reached through the router, which learns each block from its owner only.
//! Needs root, bird2, frr and etcd-server.

mod bgp_util;
use bgp_util::*;

use serde_json::Value;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Routing {
    Bgp { reflectors: bool },
    Rip { frr: bool },
}

fn matrix(tag: char, routing: Routing, wiring: &str, segments: u8, store: &str) {
    twill_testkit::require_root(&format!("matrix {routing:?} {wiring} {segments} {store}"));
    require("bird");
    require("bgpd");
    let segs = segments.to_string();
    let mut args = vec!["--nodes", "3", "--pods-per-node", "1", "--segments", &segs];
    args.extend(["--store", store, "--pod-wiring", wiring]);
    let router = match routing {
        Routing::Bgp { reflectors } => {
            args.extend(["--backend", "bgp"]);
            if reflectors {
                args.extend(["--route-reflectors", "1"]);
            }
            // Across segments the router is the ToR: BIRD by default, FRR with reflectors
            // (so both daemons are proven in each half of the matrix).
            if segments == 2 && reflectors {
                args.extend(["--external-router", "frr"]);
                Some("frr")
            } else if segments == 2 {
                Some("bird")
            } else {
                None
            }
        }
        Routing::Rip { frr } => {
            args.extend(["--backend", "rip"]);
            if frr {
                args.extend(["--external-router", "frr"]);
                Some("frr")
            } else {
                None
            }
        }
    };
    let lab = Lab::up(tag, &args);
    let rows = lab.check_all_pass();
    let count = |name: &str| rows.iter().filter(|r| r["name"] == name).count();
    // Pods across nodes are reached in every combination; across segments with no tunnel.
    let across: Vec<&Value> = rows
        .iter()
        .filter(|r| r["kind"] == "across nodes" || r["kind"] == "across segments")
        .collect();
    assert!(!across.is_empty(), "{rows:#?}");
    assert!(
        across.iter().all(|r| r["expected"] == "pass"),
        "{across:#?}"
    );
    if segments == 2 {
        assert!(
            rows.iter().any(|r| r["kind"] == "across segments"),
            "{rows:#?}"
        );
    }
    // The outside host reaches pods by pod IP, no NAT, exactly when a router learns them.
    if router.is_some() {
        assert_eq!(count("outside→pod ip, routed, no NAT"), 3, "{rows:#?}");
        for r in rows
            .iter()
            .filter(|r| r["name"] == "outside→pod ip, routed, no NAT")
        {
            assert!(
                r["detail"]
                    .as_str()
                    .unwrap()
                    .contains("saw source 203.0.113.10"),
                "{r}"
            );
        }
    } else {
        assert_eq!(count("outside→pod ip, routed, no NAT"), 0, "{rows:#?}");
    }

    // Kernels: each node learned every other node's blocks from the protocol (BGP routes are
    // the speaker's, proto bgp; RIP's are the agent's, proto 84), no tunnel device anywhere.
    let blocks = lab.blocks();
    assert_eq!(blocks.len(), 3);
    let proto = match routing {
        Routing::Bgp { .. } => "bgp",
        Routing::Rip { .. } => "84",
    };
    lab.wait_routes(proto, Duration::from_secs(5));
    for node in blocks.keys() {
        let links = ip_json(&lab.ns(node), &["-d", "link", "show"]).to_string();
        assert!(!links.contains("\"vxlan\""), "{node} has a tunnel: {links}");
    }
    if let Some(daemon) = router {
        let have = route_dsts(&lab.ns("rt"), &[]);
        for (node, bs) in &blocks {
            for b in bs {
                assert!(
                    have.contains(b),
                    "{daemon} in the router has no route to {b} of {node}: {have:?}"
                );
            }
        }
    }

    // Sessions as each node publishes them (routingstatus/<node>, read by `twill node status`).
    if let Routing::Bgp { reflectors } = routing {
        // Each node publishes its sessions at most once a second and a session across the
        // router may take a SYN retransmit (1 s) to come up: wait, bounded (10 s).
        let (st, _) = wait_for(
            "every node's sessions Established in routingstatus",
            Duration::from_secs(10),
            || {
                let st = lab.node_status("n1");
                let nodes = st["nodes"].as_array().cloned().unwrap_or_default();
                if nodes.len() != 3 {
                    return Err(format!("{} nodes: {st:#}", nodes.len()));
                }
                for n in &nodes {
                    let peers = n["routing"]["peers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if peers.is_empty() || peers.iter().any(|p| p["state"] != "Established") {
                        return Err(format!("{}: {:#}", n["name"], n["routing"]));
                    }
                }
                Ok(st)
            },
        );
        let nodes = st["nodes"].as_array().unwrap();
        for n in nodes {
            let name = n["name"].as_str().unwrap();
            let peers = n["routing"]["peers"].as_array().unwrap();
            let of = |t: &str| peers.iter().filter(|p| p["peerType"] == t).count();
            if reflectors {
                // No mesh at all: n1 reflects for the two others, they peer with it only.
                assert_eq!(of("nodeMesh"), 0, "{name}: {n:#}");
                let want = if name == "n1" { 2 } else { 1 };
                assert_eq!(of("routeReflector"), want, "{name}: {n:#}");
            } else if segments == 1 {
                assert_eq!(of("nodeMesh"), 2, "{name}: {n:#}");
            }
            if let Some(daemon) = router {
                let to_router: Vec<&Value> = peers
                    .iter()
                    .filter(|p| p["peerType"] != "nodeMesh" && p["peerType"] != "routeReflector")
                    .collect();
                assert!(
                    !to_router.is_empty(),
                    "{name} has no session with {daemon}: {n:#}"
                );
                // A node sends the router its own blocks only, none it learned from the
                // other nodes (which would offer the router paths through it, and loops).
                let own = blocks[name].len() as u64;
                for p in to_router {
                    assert_eq!(
                        p["prefixesAdvertised"].as_u64(),
                        Some(own),
                        "{name} sends {daemon} more than its {own} block(s): {p}"
                    );
                }
            }
        }
    }
}

macro_rules! combos {
    ($($(#[$m:meta])* $name:ident: $tag:literal, $routing:expr, $wiring:literal, $segs:literal, $store:literal;)*) => {
        $(
            #[test]
            $(#[$m])*
            fn $name() {
                matrix($tag, $routing, $wiring, $segs, $store);
            }
        )*
    };
}

const MESH: Routing = Routing::Bgp { reflectors: false };
const RR: Routing = Routing::Bgp { reflectors: true };

combos! {
    matrix_bgp_l3_1seg_mesh_embedded: 'a', MESH, "l3", 1, "embedded";
    matrix_bgp_bridge_2seg_rr_etcd: 'b', RR, "bridge", 2, "etcd";
    matrix_rip_l3: 'c', Routing::Rip { frr: false }, "l3", 1, "embedded";
    matrix_rip_l3_frr: 'd', Routing::Rip { frr: true }, "l3", 1, "embedded";
    matrix_bgp_l3_1seg_mesh_etcd: 'e', MESH, "l3", 1, "etcd";
    matrix_bgp_l3_1seg_rr_embedded: 'f', RR, "l3", 1, "embedded";
    matrix_bgp_l3_1seg_rr_etcd: 'g', RR, "l3", 1, "etcd";
    matrix_bgp_l3_2seg_mesh_embedded: 'h', MESH, "l3", 2, "embedded";
    matrix_bgp_l3_2seg_mesh_etcd: 'i', MESH, "l3", 2, "etcd";
    matrix_bgp_l3_2seg_rr_embedded: 'j', RR, "l3", 2, "embedded";
    matrix_bgp_l3_2seg_rr_etcd: 'k', RR, "l3", 2, "etcd";
    matrix_bgp_bridge_1seg_mesh_embedded: 'l', MESH, "bridge", 1, "embedded";
    matrix_bgp_bridge_1seg_mesh_etcd: 'm', MESH, "bridge", 1, "etcd";
    matrix_bgp_bridge_1seg_rr_embedded: 'n', RR, "bridge", 1, "embedded";
    matrix_bgp_bridge_1seg_rr_etcd: 'o', RR, "bridge", 1, "etcd";
    matrix_bgp_bridge_2seg_mesh_embedded: 'p', MESH, "bridge", 2, "embedded";
    matrix_bgp_bridge_2seg_mesh_etcd: 'q', MESH, "bridge", 2, "etcd";
    matrix_bgp_bridge_2seg_rr_embedded: 'r', RR, "bridge", 2, "embedded";
}
