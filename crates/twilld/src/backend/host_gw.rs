//! `host-gw` (flannel's): one route per remote block via the remote node's IP, out of the
//! uplink. Works only between nodes on one layer-2 segment: a peer elsewhere would need a
//! router that knows the pod routes, so it is reported as a problem and gets no route
//! (a route through the default gateway would be a silent black hole).

use super::{usable_peers, Backend, BackendKind, Desired, Local, Peer, RouteEntry};

#[derive(Debug, Clone, Copy, Default)]
pub struct HostGw;

impl Backend for HostGw {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }

    fn plan(&self, local: &Local, peers: &[Peer]) -> Desired {
        plan(local, peers)
    }
}

/// The routes of host-gw.
pub fn plan(local: &Local, peers: &[Peer]) -> Desired {
    let mut desired = Desired::default();
    for peer in usable_peers(local, peers, &mut desired.problems) {
        if !local.uplink_cidr.contains(&peer.address) {
            desired
                .problems
                .push(not_on_segment(BackendKind::HostGw, local, &peer));
            continue;
        }
        desired.routes.extend(direct_routes(local, &peer));
    }
    desired
}

/// `block via PEER dev UPLINK` for each of the peer's blocks.
pub(crate) fn direct_routes(local: &Local, peer: &Peer) -> Vec<RouteEntry> {
    peer.blocks
        .iter()
        .map(|block| RouteEntry {
            dst: *block,
            via: peer.address,
            dev: local.uplink.clone(),
            onlink: false,
        })
        .collect()
}

pub(crate) fn not_on_segment(backend: BackendKind, local: &Local, peer: &Peer) -> String {
    format!(
        "{backend}: {} ({}) is not on this node's segment {}: it needs a router that knows the pod routes, or use vxlan / directRouting; its blocks {} are not routed",
        peer.name,
        peer.address,
        local.uplink_cidr,
        list(&peer.blocks)
    )
}

fn list(blocks: &[ipnet::Ipv4Net]) -> String {
    if blocks.is_empty() {
        return "(none yet)".into();
    }
    blocks
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
