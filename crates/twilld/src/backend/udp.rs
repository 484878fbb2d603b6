//! `udp` (flannel's first backend, made fast): a TUN device ([`TUN_DEVICE`]) and a
//! userspace datapath (the `twill-datapath` crate) that reads each pod packet the kernel
//! routes into the TUN, finds the node holding its destination by longest-prefix match and
//! sends it, bare, in one UDP datagram to that node's port (8285 unless the network config
//! says `port`); the far datapath admits it only from a known peer with an inner source in
//! that peer's blocks and writes it into its own TUN.
//!
//! # Kernel state (the plan, pure)
//! - the TUN: MTU = uplink − [`UDP_OVERHEAD`] (outer IPv4 + UDP), so an outer datagram
//!   never exceeds the uplink and a DF packet too large for the tunnel gets "frag needed"
//!   from the kernel before it reaches the datapath; its address is the `.0/32` of this
//!   node's first block, as flannel gives flannel0 (the source of what the node itself
//!   sends to remote pods);
//! - one `proto 0x54` route per remote block, `dev twl.tun scope link` (no gateway: the
//!   datapath, not ARP, picks the node).
//!
//! The datapath creates the TUN (`/dev/net/tun`, persistent, multi-queue, vnet headers);
//! the reconcile only sets MTU, address, routes and up. Conflicting peers and blocks are
//! dropped as for every backend ([`usable_peers`]), so the kernel routes and the
//! datapath's peer table always agree.

use super::vxlan::vtep_ip;
use super::{usable_peers, Backend, BackendKind, Desired, Local, Peer, RouteEntry, TunSpec};
use super::{TUN_DEVICE, UDP_OVERHEAD};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// Smallest MTU IPv4 allows on a link.
const MIN_MTU: u32 = 68;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
    /// The TUN's name ([`TUN_DEVICE`]).
    pub device: String,
    /// The UDP port every node's datapath listens on.
    pub port: u16,
}

impl Udp {
    pub fn new(port: u16) -> Udp {
        Udp {
            device: TUN_DEVICE.into(),
            port,
        }
    }
}

impl Backend for Udp {
    fn kind(&self) -> BackendKind {
        BackendKind::Udp
    }

    fn mtu_overhead(&self) -> u32 {
        UDP_OVERHEAD
    }

    fn devices(&self) -> &'static [&'static str] {
        &[TUN_DEVICE]
    }

    fn plan(&self, local: &Local, peers: &[Peer]) -> Desired {
        plan(local, peers, &self.device)
    }
}

/// The TUN's settings and one route per remote block into it.
pub fn plan(local: &Local, peers: &[Peer], device: &str) -> Desired {
    let mut desired = Desired::default();
    let mtu = local.mtu_uplink.saturating_sub(UDP_OVERHEAD);
    if mtu < MIN_MTU {
        desired.problems.push(format!(
            "udp: uplink {} has MTU {}, too small to carry pod packets in UDP ({UDP_OVERHEAD} bytes of headers); raise it",
            local.uplink, local.mtu_uplink
        ));
    }
    desired.tun = Some(TunSpec {
        name: device.to_owned(),
        mtu: mtu.max(MIN_MTU),
        address: vtep_ip(&local.blocks).map(Ipv4Net::from),
    });
    for peer in usable_peers(local, peers, &mut desired.problems) {
        desired
            .routes
            .extend(peer.blocks.iter().map(|block| RouteEntry {
                dst: *block,
                via: Ipv4Addr::UNSPECIFIED,
                dev: device.to_owned(),
                onlink: false,
            }));
    }
    desired
}
