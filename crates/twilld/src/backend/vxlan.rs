//! `vxlan` (flannel's): one VXLAN device, and per remote node one onlink route per block
//! through it, one permanent neighbour entry (the peer's VTEP IP → its VTEP MAC, so the
//! kernel never ARPs across the tunnel) and one FDB entry (that MAC → the peer's node IP,
//! so the driver knows where to send the UDP packet). Learning is off: the agent knows
//! every entry. A peer's VTEP IP is the `.0` of its first block, as with flannel.1.
//!
//! `directRouting` (Calico's CrossSubnet, flannel's DirectRouting): peers on this node's
//! segment get a plain host-gw route, only the others go through the tunnel.

use super::host_gw::direct_routes;
use super::{usable_peers, vtep_mac, Backend, BackendKind, Desired, FdbRow, Local, NeighEntry};
use super::{Peer, RouteEntry, VxlanSpec, VXLAN_DEVICE, VXLAN_OVERHEAD};
use ipnet::Ipv4Net;

/// Smallest MTU IPv4 allows on a link.
const MIN_MTU: u32 = 68;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub device: String,
    pub vni: u32,
    pub port: u16,
    pub direct_routing: bool,
    pub disable_tx_checksum: bool,
}

impl Backend for Vxlan {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }

    fn mtu_overhead(&self) -> u32 {
        VXLAN_OVERHEAD
    }

    fn devices(&self) -> &'static [&'static str] {
        &[VXLAN_DEVICE]
    }

    fn plan(&self, local: &Local, peers: &[Peer]) -> Desired {
        plan(local, peers, self)
    }
}

/// The `.0` of a node's first block: its VTEP IP.
pub use twill_netlink::ethtool::checksum_offload_broken;

pub fn vtep_ip(blocks: &[Ipv4Net]) -> Option<std::net::Ipv4Addr> {
    blocks.first().map(|b| b.network())
}

/// Device, routes, neighbour and FDB entries of the vxlan backend.
pub fn plan(local: &Local, peers: &[Peer], options: &Vxlan) -> Desired {
    let mut desired = Desired::default();
    let mtu = local.mtu_uplink.saturating_sub(VXLAN_OVERHEAD);
    if mtu < MIN_MTU {
        desired.problems.push(format!(
            "vxlan: uplink {} has MTU {}, too small to carry VXLAN ({} bytes of headers); raise it",
            local.uplink, local.mtu_uplink, VXLAN_OVERHEAD
        ));
    }
    desired.device = Some(VxlanSpec {
        name: options.device.clone(),
        vni: options.vni,
        port: options.port,
        local: local.address,
        uplink: local.uplink.clone(),
        mtu: mtu.max(MIN_MTU),
        mac: vtep_mac(local.address),
        address: vtep_ip(&local.blocks).map(Ipv4Net::from),
        disable_tx_checksum: options.disable_tx_checksum,
    });
    for peer in usable_peers(local, peers, &mut desired.problems) {
        if options.direct_routing && local.uplink_cidr.contains(&peer.address) {
            desired.routes.extend(direct_routes(local, &peer));
            continue;
        }
        // A node without blocks yet has nothing to reach.
        let Some(vtep) = vtep_ip(&peer.blocks) else {
            continue;
        };
        let mac = peer.vtep_mac.unwrap_or_else(|| vtep_mac(peer.address));
        desired.neighbours.push(NeighEntry {
            dev: options.device.clone(),
            ip: vtep,
            mac,
        });
        desired.fdb.push(FdbRow {
            dev: options.device.clone(),
            mac,
            dst: peer.address,
        });
        desired
            .routes
            .extend(peer.blocks.iter().map(|block| RouteEntry {
                dst: *block,
                via: vtep,
                dev: options.device.clone(),
                onlink: true,
            }));
    }
    desired
}
