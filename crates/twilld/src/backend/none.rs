//! `none`: nothing across hosts (a single node, or routing done by someone else). Planning
//! nothing also means a VXLAN device and routes left by an earlier backend are removed.

use super::{Backend, BackendKind, Desired, Local, Peer};

#[derive(Debug, Clone, Copy, Default)]
pub struct NoneBackend;

impl Backend for NoneBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::None
    }

    fn plan(&self, _local: &Local, _peers: &[Peer]) -> Desired {
        Desired::default()
    }
}
