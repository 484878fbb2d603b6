//! `twill lab demo --backend ovs`: the walk-through's Open vSwitch step (SEED-NOTES step
//! 8), built and proven. By hand, every node gets an OVS bridge and a GRE tunnel to every
//! other node: n·(n−1) tunnels, and every new node means a new tunnel on every node ("so we
//! may need Ansible"). Here each node's twilld keeps that mesh from the store: one
//! flow-based tunnel port per node and per-peer flows, added and removed as nodes come and
//! go, while nothing else moves.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use twill_lab::ovs::{self, NodeOvsReport, OvsPaths};
use twill_lab::plan::{LabPlan, LabSpec};
use twill_lab::{build, check, trace, LabState};

use super::progress;

/// Every node's OVS, read back.
pub fn reports(state: &LabState) -> anyhow::Result<Vec<NodeOvsReport>> {
    state
        .plan
        .nodes
        .iter()
        .map(|n| {
            ovs::read_node(&OvsPaths::of(n))
                .map(|o| NodeOvsReport::from(&o))
                .map_err(anyhow::Error::from)
        })
        .collect()
}

/// Node IP → node name, to name the peers.
pub fn node_names(state: &LabState) -> BTreeMap<Ipv4Addr, String> {
    state
        .plan
        .nodes
        .iter()
        .map(|n| (n.address.addr(), n.short.clone()))
        .collect()
}

/// How many (node, peer) tunnels the nodes' flows keep (both directions), and what is
/// missing from the full mesh.
fn mesh(state: &LabState, reports: &[NodeOvsReport]) -> (usize, Vec<String>) {
    let mut kept = 0;
    let mut missing = Vec::new();
    for r in reports {
        for n in &state.plan.nodes {
            if n.short == r.node {
                continue;
            }
            match r.peers.get(&n.address.addr()) {
                Some((out, inn)) if *out > 0 && *inn > 0 => kept += 1,
                _ => missing.push(format!("{} → {}", r.node, n.short)),
            }
        }
    }
    (kept, missing)
}

fn changed(before: &[NodeOvsReport], after: &[NodeOvsReport]) -> Vec<String> {
    let mut v = Vec::new();
    for b in before {
        if let Some(a) = after.iter().find(|a| a.node == b.node) {
            if a.identities != b.identities {
                v.push(format!(
                    "{}: {:?} -> {:?}",
                    b.node, b.identities, a.identities
                ));
            }
        }
    }
    v
}

pub fn demo(spec: &LabSpec, p: &LabPlan, cni_bin: &Path, twilld_bin: &Path) -> anyhow::Result<i32> {
    let name = spec.name.as_str();
    let tunnel = p.ovs_tunnel.expect("an ovs plan");
    let kind = tunnel.name().to_uppercase();
    anyhow::ensure!(
        p.nodes.len() >= 2,
        "lab demo --backend ovs needs --nodes 2 or more: a tunnel needs two ends"
    );
    let n = p.nodes.len();
    println!(
        "== 1. The walk-through, by hand\n\
         Open vSwitch on every node: a bridge attached to the pod network, and a {kind} tunnel\n\
         to every other node. For these {n} nodes that is {} tunnels ({} per node), typed in\n\
         on each node; a node joining needs a new tunnel on every node ({n} more commands,\n\
         plus {n} on itself). For n1 alone:",
        ovs::mesh_tunnels(n),
        n - 1
    );
    let first = &p.nodes[0];
    println!("    ovs-vsctl add-br br0");
    for (i, other) in p.nodes.iter().skip(1).enumerate() {
        println!(
            "    ovs-vsctl add-port br0 {}{} -- set interface {0}{1} type={} options:remote_ip={}",
            tunnel.name(),
            i + 1,
            tunnel.name(),
            other.address.addr()
        );
    }
    println!(
        "    ip route add <each other node's pod subnet> dev br0     # and so on, on every node\n"
    );
    let op = OvsPaths::of(first);
    println!(
        "== 2. Here: one Open vSwitch per node, kept by the node's agent\n\
         The lab starts, in every node namespace, an ovsdb-server and an ovs-vswitchd of its own\n\
         (database, sockets and logs in {}; n1's socket {}), the\n\
         userspace (netdev) datapath since this kernel has no openvswitch module. The node's\n\
         address moves onto the OVS bridge {} that holds eth0 as a port, so the tunnels' outer\n\
         packets leave through OVS. twilld gets `--ovs-rundir {}` and builds, marked as its own\n\
         (external_ids twill-owner, flow cookie 0x5477…):\n\
         - bridge {} with the internal port {} (the host's way in: the routes to the other\n\
           nodes' blocks point there);\n\
         - ONE flow-based {kind} port (remote_ip=flow) instead of a port per peer;\n\
         - per peer node, a flow into the tunnel (set tun_dst) and one out of it.\n",
        op.dir.display(),
        op.db_sock().display(),
        twill_lab::plan::OVS_PHY_BRIDGE,
        op.dir.display(),
        ovs::INTEGRATION_BRIDGE,
        ovs::HOST_PORT
    );
    println!("building lab {name} ...");
    let mut state = match build::up(spec, cni_bin, twilld_bin, &progress) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("twill: error: {e}");
            return Ok(1);
        }
    };
    let outcome = body(&mut state, &kind);
    println!(
        "\n== 7. Cleaning up\nThe agents stop, then every node's ovs-vswitchd and ovsdb-server (by PID), DEL for\nevery pod, the namespaces."
    );
    super::demo_exit(name, outcome, build::down(name, &progress))
}

fn body(state: &mut LabState, kind: &str) -> anyhow::Result<bool> {
    let mut ok = true;
    let before = reports(state)?;
    let n = state.plan.nodes.len();
    let (kept, missing) = mesh(state, &before);
    println!(
        "\n== 3. The mesh, read back from every node's OVS (`twill lab ovs --name {}`)\n{}",
        state.plan.name,
        ovs::render(&before, &node_names(state))
    );
    println!(
        "   {kept} of the {} tunnels of the full mesh are kept by flows, with {n} tunnel port(s) in all.\n",
        ovs::mesh_tunnels(n)
    );
    for m in &missing {
        println!("   MISSING: {m}");
        ok = false;
    }

    let (src, dst) = (
        state.plan.nodes[0].pods.first().map(|p| p.short.clone()),
        state.plan.nodes[1].pods.first().map(|p| p.short.clone()),
    );
    if let (Some(src), Some(dst)) = (src, dst) {
        println!(
            "== 4. On the wire: `twill lab trace --name {} {src} {dst}`\n\
             The kernel routes the pod's packet into {}; OVS wraps it in {kind} to the node that\n\
             holds the block (outer: node IP to node IP), the far OVS takes it out and hands it\n\
             to its host port.",
            state.plan.name,
            ovs::HOST_PORT
        );
        let req = trace::TraceRequest {
            src,
            dst,
            proto: trace::path::TraceProto::Icmp,
            port: None,
        };
        match trace::run(state, &req) {
            Ok(r) => print!("{}", trace::path::render(&r)),
            Err(e) => {
                println!("   trace failed: {e}");
                ok = false;
            }
        }
    }

    println!(
        "\n== 5. A node joins: `twill lab add-node --name {}`\n\
         By hand: a new {kind} port on each of the {n} nodes and {n} on the new one. Here the\n\
         new node's agent claims its block; every other agent sees it in the store and adds only\n\
         that peer's flows. No port, bridge or interface of the others changes.",
        state.plan.name
    );
    let joined = build::add_node(state, &progress)?;
    let after = reports(state)?;
    let (kept, missing) = mesh(state, &after);
    let moved = changed(&before, &after);
    println!(
        "   {joined} joined: {kept} of the {} tunnels kept; ports, bridges and interfaces changed on the\n   \
         {n} nodes that were there: {}",
        ovs::mesh_tunnels(n + 1),
        moved.len()
    );
    for m in missing.iter().chain(&moved) {
        println!("   UNEXPECTED: {m}");
        ok = false;
    }

    println!("\n== 6. Proving it: every check sends real packets between the namespaces");
    let report = check::run(state)?;
    print!("{}", check::render(&report));
    ok &= report.passed;

    println!(
        "\n   {joined} leaves: `twill lab remove-node --name {} {joined}`; its flows go from every node.",
        state.plan.name
    );
    let gone_ip = state
        .plan
        .nodes
        .iter()
        .find(|x| x.short == joined)
        .map(|x| x.address.addr());
    build::remove_node(state, &joined, &super::node_remove, &progress)?;
    let last = reports(state)?;
    let left: Vec<&str> = last
        .iter()
        .filter(|r| gone_ip.is_some_and(|ip| r.peers.contains_key(&ip)))
        .map(|r| r.node.as_str())
        .collect();
    if left.is_empty() {
        println!("   no node keeps a tunnel to {joined} any more; the ports stayed as they were.");
    } else {
        println!(
            "   UNEXPECTED: still tunnels to {joined} on {}",
            left.join(", ")
        );
        ok = false;
    }
    let moved = changed(&before, &last);
    for m in &moved {
        println!("   UNEXPECTED: {m}");
        ok = false;
    }
    Ok(ok)
}
