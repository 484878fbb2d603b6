//! `static`: the VXLAN mesh of a hand-written static store file (the seed's Open vSwitch
//! days, kept by hand). Its peers come from the file instead of the store's leases; on
//! the node it is exactly the vxlan backend, under its own kind.

use super::{Backend, BackendKind, Desired, Local, Peer, Vxlan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMesh(pub Vxlan);

impl Backend for StaticMesh {
    fn kind(&self) -> BackendKind {
        BackendKind::Static
    }

    fn mtu_overhead(&self) -> u32 {
        self.0.mtu_overhead()
    }

    fn devices(&self) -> &'static [&'static str] {
        self.0.devices()
    }

    fn plan(&self, local: &Local, peers: &[Peer]) -> Desired {
        self.0.plan(local, peers)
    }
}
