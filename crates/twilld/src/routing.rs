//! Drives the backend from the agent's loop: peers from the store, this node from its
//! autodetected IP and blocks, then plan → observe → diff → apply, only when something
//! changed (a node joined, left or moved) or every `RESYNC` to correct drift. What the
//! kernel already has right is adopted; killing the agent leaves forwarding untouched.

use crate::backend::{self, Backend, BackendError, BackendOptions, Local, Peer};
use crate::log;
use std::time::{Duration, Instant};
use twill_api::resources::{BackendSpec, NodeStatus, PREFIX_NODES};
use twill_netlink::Handle;
use twill_store::KeyValue;

/// How often the kernel is compared with the plan when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Every node the store lists but this one, as a backend peer.
pub fn peers_from(kvs: &[KeyValue], me: &str) -> Vec<Peer> {
    kvs.iter()
        .filter(|kv| {
            kv.key
                .rsplit_once(PREFIX_NODES)
                .is_some_and(|(_, n)| !n.contains('/'))
        })
        .filter_map(|kv| serde_json::from_slice::<NodeStatus>(&kv.value).ok())
        .filter(|n| n.name != me)
        .map(|n| Peer {
            name: n.name,
            address: n.address,
            blocks: n.blocks,
            vtep_mac: None,
        })
        .collect()
}

/// The pod MTU the hand-off gives twill-cni: the uplink's, less the tunnel's headers when
/// packets are encapsulated, and never above what the network config asks for.
pub fn pod_mtu(spec: &BackendSpec, uplink_mtu: u32, config_mtu: u32) -> u32 {
    let overhead = match spec.kind.as_str() {
        "vxlan" | "static" => backend::VXLAN_OVERHEAD,
        _ => 0,
    };
    uplink_mtu.saturating_sub(overhead).min(config_mtu)
}

pub struct Routing {
    spec: BackendSpec,
    backend: Box<dyn Backend>,
    handle: Option<Handle>,
    last: Option<(Local, Vec<Peer>)>,
    next_resync: Instant,
    problems: Vec<String>,
}

/// What a pass found, for status and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub changes: usize,
    pub failures: Vec<String>,
    pub problems: Vec<String>,
}

impl Routing {
    pub fn new(spec: &BackendSpec) -> Result<Routing, BackendError> {
        let options = BackendOptions {
            vni: spec.vni,
            port: spec.port,
            direct_routing: spec.direct_routing,
            disable_tx_checksum: twill_netlink::ethtool::checksum_offload_broken(
                &twill_netlink::ethtool::kernel_release(),
            ),
        };
        Ok(Routing {
            backend: backend::select(&spec.kind, &options)?,
            spec: spec.clone(),
            handle: None,
            last: None,
            next_resync: Instant::now(),
            problems: Vec::new(),
        })
    }

    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Programs the kernel for `local` and `peers` if they changed or a resync is due.
    /// Returns `None` when nothing needed looking at.
    pub fn reconcile(
        &mut self,
        local: &Local,
        peers: &[Peer],
    ) -> Result<Option<Pass>, twill_netlink::Error> {
        let now = Instant::now();
        let same = self
            .last
            .as_ref()
            .is_some_and(|(l, p)| l == local && p == peers);
        if same && now < self.next_resync {
            return Ok(None);
        }
        if self.handle.is_none() {
            self.handle = Some(Handle::new()?);
        }
        let handle = self.handle.as_mut().expect("opened above");
        let desired = self.backend.plan(local, peers);
        let observed = match backend::observe(handle, backend::VXLAN_DEVICE) {
            Ok(o) => o,
            Err(e) => {
                // A broken socket is replaced on the next pass.
                self.handle = None;
                return Err(e);
            }
        };
        let plan = backend::diff(&desired, &observed);
        let report = backend::apply(handle, &plan.ops);
        for op in &report.done {
            log::info("programmed", &[("backend", &self.spec.kind), ("op", op)]);
        }
        let failures: Vec<String> = report
            .failures
            .iter()
            .map(|f| format!("{}: {}", f.op, f.error))
            .collect();
        for f in &failures {
            log::error(
                "could not program",
                &[("backend", &self.spec.kind), ("op", f)],
            );
        }
        if plan.problems != self.problems {
            for p in plan.problems.iter().filter(|p| !self.problems.contains(p)) {
                log::warn(
                    "backend problem",
                    &[("backend", &self.spec.kind), ("problem", p)],
                );
            }
            self.problems = plan.problems.clone();
        }
        // A failed operation is retried soon rather than after a full resync interval.
        self.next_resync = now
            + if failures.is_empty() {
                RESYNC
            } else {
                Duration::from_secs(2)
            };
        self.last = Some((local.clone(), peers.to_vec()));
        Ok(Some(Pass {
            changes: report.done.len(),
            failures,
            problems: plan.problems,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: None,
        }
    }

    #[test]
    fn peers_are_every_other_node() {
        let status = |n: &str, ip: &str, b: &str| {
            format!(
                r#"{{"name":"{n}","address":"{ip}","autodetection":"x","reason":"y","blocks":["{b}"]}}"#
            )
        };
        let kvs = vec![
            kv(
                "/twill/v1/nodes/n1",
                &status("n1", "192.0.2.11", "10.244.1.0/24"),
            ),
            kv(
                "/twill/v1/nodes/n2",
                &status("n2", "192.0.2.12", "10.244.2.0/24"),
            ),
            kv("/twill/v1/nodes/n3", "garbage"),
        ];
        let peers = peers_from(&kvs, "n1");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].name, "n2");
        assert_eq!(peers[0].blocks, vec!["10.244.2.0/24".parse().unwrap()]);
    }

    #[test]
    fn pod_mtu_leaves_room_for_the_tunnel() {
        assert_eq!(pod_mtu(&"vxlan".into(), 1500, 1500), 1450);
        assert_eq!(pod_mtu(&"static".into(), 9000, 1500), 1500);
        assert_eq!(pod_mtu(&"host-gw".into(), 1500, 1500), 1500);
        assert_eq!(pod_mtu(&"vxlan".into(), 9000, 65535), 8950);
    }
}
