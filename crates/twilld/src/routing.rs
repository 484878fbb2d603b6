//! Drives the backend from the agent's loop: peers from the store, this node from its
//! autodetected IP and blocks, then plan → observe → diff → apply, only when something
//! changed (a node joined, left or moved), the backend asked (an event of its own), or
//! every [`RESYNC`] to correct drift. What the kernel already has right is adopted;
//! killing the agent leaves forwarding untouched.
//!
//! The agent's side of the backend seam is this type and nothing else (see
//! [`crate::backend`] for the backend's side):
//! - [`Routing::new`] from the network config's backend (no I/O yet);
//! - [`Routing::set_waker`]: called whenever the backend's sockets or threads have news;
//! - [`Routing::next_wake`]: the loop must call [`Routing::reconcile`] by then (timers,
//!   resync, retries) even if nothing else happens;
//! - [`Routing::reconcile`] with this node and its peers, whenever it wakes: cheap when
//!   nothing is due (returns `None`);
//! - [`Routing::peers_changed`] when a watch event changed the other nodes, before the
//!   round that reconciles them (bgp starts the sessions at once);
//! - [`Routing::pod_mtu`] for the hand-off; [`Routing::stop`] (also on drop).

use crate::backend::{self, BackendError, BackendKind, Driver, Local, Peer, RoutingInputs, Waker};
use crate::log;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use twill_api::bgp::RoutingStatus;
use twill_api::resources::{BackendSpec, NodeStatus, PREFIX_NODES};
use twill_netlink::{Handle, Netns};
use twill_store::{Event, KeyValue, Revision};

pub use crate::backend::driver::RESYNC;

/// The other nodes as the store has them, kept by the agent: filled by one list of
/// `nodes/` (at the revision it was read at), then changed by the watch's events one key
/// at a time. So a node joining or leaving costs each agent one event, not a re-list of
/// every node (a linearizable read of all of `nodes/`, ~300 KB at 1000 nodes: O(N²) for a
/// cold start). Pure: it never touches the store.
#[derive(Debug, Clone)]
pub struct NodeMap {
    me: String,
    /// The revision of the list; events at or before it are already in.
    listed_at: Revision,
    nodes: BTreeMap<String, Peer>,
}

/// The node's name in a `nodes/<name>` key (None for other keys and deeper paths).
fn node_name(key: &str) -> Option<&str> {
    key.rsplit_once(PREFIX_NODES)
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

/// The peer a `nodes/<name>` value describes: None if unreadable or this node itself.
fn peer_of(value: &[u8], me: &str) -> Option<Peer> {
    serde_json::from_slice::<NodeStatus>(value)
        .ok()
        .filter(|n| n.name != me)
        .map(|n| Peer {
            name: n.name,
            address: n.address,
            blocks: n.blocks,
            vtep_mac: None,
        })
}

impl NodeMap {
    /// From a list of `nodes/` read at revision `rev`.
    pub fn listed(kvs: &[KeyValue], rev: Revision, me: &str) -> NodeMap {
        let nodes = kvs
            .iter()
            .filter_map(|kv| Some((node_name(&kv.key)?.to_string(), peer_of(&kv.value, me)?)))
            .collect();
        NodeMap {
            me: me.to_string(),
            listed_at: rev,
            nodes,
        }
    }

    /// A watch event: true when it changed a peer. Events the list already had (at or
    /// before its revision), other keys and this node's own key change nothing; a value
    /// that does not parse drops the node, as a list would have left it out.
    pub fn apply(&mut self, ev: &Event) -> bool {
        if ev.revision() <= self.listed_at {
            return false;
        }
        let Some(name) = node_name(ev.key()) else {
            return false;
        };
        let now = match ev {
            Event::Put(kv) => peer_of(&kv.value, &self.me),
            Event::Delete { .. } => None,
        };
        match now {
            Some(p) => self.nodes.insert(name.to_string(), p.clone()).as_ref() != Some(&p),
            None => self.nodes.remove(name).is_some(),
        }
    }

    /// Every other node, in key order.
    pub fn peers(&self) -> backend::Peers {
        self.nodes.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

pub struct Routing {
    spec: BackendSpec,
    /// twilld's state dir (a udp datapath's socket is there).
    state_dir: Option<std::path::PathBuf>,
    driver: Driver,
    /// The namespace to program (None: the agent's own).
    netns: Option<Netns>,
    handle: Option<Handle>,
    problems: Vec<String>,
    /// What the kernel holds as the last pass left it, when known exactly
    /// ([`backend::after`]): a pass driven by a change diffs against it instead of dumping
    /// the routing table; the resync (and any pass after a failure) reads the kernel.
    kernel: Option<backend::Observed>,
}

/// What a pass found, for status and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub changes: usize,
    pub failures: Vec<String>,
    pub problems: Vec<String>,
}

impl Routing {
    /// `state_dir`: twilld's (`--state-dir`), for backends that keep files (bgp's control
    /// socket).
    pub fn new(spec: &BackendSpec, state_dir: &Path) -> Result<Routing, BackendError> {
        Routing::new_in(spec, state_dir, Path::new(backend::ovs::DEFAULT_RUNDIR))
    }

    /// [`Routing::new`] with OVS's run directory (`--ovs-rundir`), for the ovs backend.
    pub fn new_in(
        spec: &BackendSpec,
        state_dir: &Path,
        ovs_rundir: &Path,
    ) -> Result<Routing, BackendError> {
        let broken = twill_netlink::ethtool::checksum_offload_broken(
            &twill_netlink::ethtool::kernel_release(),
        );
        let mut routing = Routing::with_backend(
            *spec,
            backend::select_in(spec, broken, state_dir, ovs_rundir)?,
        );
        routing.state_dir = Some(state_dir.to_owned());
        Ok(routing)
    }

    /// Drives `backend` (tests, and backends not chosen by [`backend::select`]).
    pub fn with_backend(spec: BackendSpec, backend: Box<dyn backend::Backend>) -> Routing {
        Routing {
            spec,
            state_dir: None,
            driver: Driver::new(backend, Instant::now()),
            netns: None,
            handle: None,
            problems: Vec::new(),
            kernel: None,
        }
    }

    /// twilld's state dir, for a backend given by [`Routing::with_backend`] (where another
    /// backend's udp datapath is told to go when this one takes over).
    pub fn with_state_dir(mut self, dir: &Path) -> Routing {
        self.state_dir = Some(dir.to_owned());
        self
    }

    /// The backend's own /metrics series, if any.
    pub fn metrics(&self) -> Option<std::sync::Arc<dyn backend::MetricsSource>> {
        self.driver.backend().metrics()
    }

    /// Programs namespace `ns` instead of the agent's own.
    pub fn in_netns(mut self, ns: Netns) -> Routing {
        self.netns = Some(ns);
        self.handle = None;
        self
    }

    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    pub fn kind(&self) -> BackendKind {
        self.driver.backend().kind()
    }

    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The pod MTU for the hand-off: the uplink's less this backend's headers, capped by
    /// the network config's.
    pub fn pod_mtu(&self, uplink_mtu: u32, config_mtu: u32) -> u32 {
        backend::pod_mtu(self.driver.backend(), uplink_mtu, config_mtu)
    }

    /// `wake` is called (from any thread) whenever the backend has an event.
    pub fn set_waker(&self, wake: Waker) {
        self.driver.set_waker(wake);
    }

    /// The latest moment the loop should call [`Routing::reconcile`] again.
    pub fn next_wake(&self) -> Instant {
        self.driver.next_wake()
    }

    /// The routing resources and pod addresses for the backends that read them; a change
    /// makes the next [`Routing::reconcile`] a pass.
    pub fn set_inputs(&mut self, inputs: RoutingInputs) {
        self.driver.set_inputs(inputs);
    }

    /// The other nodes changed (a watch event), before the pass that follows: a backend
    /// that keeps sessions with them (bgp) gets the list at once, so a node joining is
    /// peered with without waiting for the agent's round and kernel pass. Failures are
    /// logged; the pass retries them.
    pub fn peers_changed(&mut self, peers: &[Peer]) {
        let name = self.driver.backend().name();
        for f in self.driver.peers_changed(peers) {
            log::error("could not program", &[("backend", &name), ("op", &f)]);
        }
    }

    /// The backend's routing sessions (None: it runs none).
    pub fn routing_status(&self) -> Option<RoutingStatus> {
        self.driver.backend().routing_status()
    }

    /// Stops the backend's sockets and threads; routes and devices stay.
    pub fn stop(&mut self) {
        self.driver.stop();
    }

    /// Programs the kernel for `local` and `peers` if they changed, the backend asked, or
    /// a resync is due. Returns `None` when nothing needed looking at.
    pub fn reconcile(
        &mut self,
        local: &Local,
        peers: &[Peer],
    ) -> Result<Option<Pass>, twill_netlink::Error> {
        let now = Instant::now();
        let name = self.driver.backend().name();
        let check_kernel = self.driver.kernel_check_due(now);
        let desired = match self.driver.poll(now, local, peers) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) => {
                log::error(
                    "backend cannot start; retrying",
                    &[("backend", &name), ("error", &e)],
                );
                return Ok(Some(Pass {
                    changes: 0,
                    failures: vec![e.to_string()],
                    problems: self.problems.clone(),
                }));
            }
        };
        if self.handle.is_none() {
            let opened = match &self.netns {
                Some(ns) => Handle::new_in(ns),
                None => Handle::new(),
            };
            self.handle = Some(opened.inspect_err(|_| self.driver.failed(now))?);
        }
        let handle = self.handle.as_mut().expect("opened above");
        let known = self.kernel.take().filter(|_| !check_kernel);
        let observed = match known {
            Some(k) => k,
            None => match backend::observe(handle, backend::VXLAN_DEVICE) {
                Ok(o) => o,
                Err(e) => {
                    // A broken socket is replaced on the next pass.
                    self.handle = None;
                    self.driver.failed(now);
                    return Err(e);
                }
            },
        };
        let plan = backend::diff(&desired, &observed);
        let tun_goes = plan
            .ops
            .iter()
            .any(|op| matches!(op, backend::Op::DeleteDevice(d) if d == backend::TUN_DEVICE));
        if let (true, Some(dir)) = (tun_goes, &self.state_dir) {
            // Another backend took over from udp: its datapath stops and removes the TUN
            // (the delete that follows finds it gone, or removes it if none answered).
            if backend::udp::shut_down(dir) {
                log::info("stopped the udp datapath", &[("backend", &name)]);
            }
        }
        let report = backend::apply(handle, &plan.ops);
        // With a problem (a TUN its datapath has yet to make, a foreign route in the way)
        // the kernel may change under the plan: read it on every pass, as before.
        if report.is_ok() && plan.problems.is_empty() {
            self.kernel = backend::after(observed, &plan.ops);
        }
        for op in &report.done {
            log::info("programmed", &[("backend", &name), ("op", op)]);
        }
        let mut failures: Vec<String> = report
            .failures
            .iter()
            .map(|f| format!("{}: {}", f.op, f.error))
            .collect();
        failures.extend(self.driver.finish(now, local, peers, !report.is_ok()));
        for f in &failures {
            log::error("could not program", &[("backend", &name), ("op", f)]);
        }
        if plan.problems != self.problems {
            for p in plan.problems.iter().filter(|p| !self.problems.contains(p)) {
                log::warn("backend problem", &[("backend", &name), ("problem", p)]);
            }
            self.problems = plan.problems.clone();
        }
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
        let peers = NodeMap::listed(&kvs, 0, "n1").peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].name, "n2");
        assert_eq!(peers[0].blocks, vec!["10.244.2.0/24".parse().unwrap()]);
    }

    #[test]
    fn the_node_map_follows_events_after_its_list_and_ignores_older_ones() {
        let status = |n: &str, ip: &str, b: &str| {
            format!(
                r#"{{"name":"{n}","address":"{ip}","autodetection":"x","reason":"y","blocks":["{b}"]}}"#
            )
        };
        let at = |key: &str, value: &str, rev: Revision| KeyValue {
            mod_revision: rev,
            ..kv(key, value)
        };
        let names = |m: &NodeMap| m.peers().iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        let kvs = vec![
            at(
                "/twill/v1/nodes/n1",
                &status("n1", "192.0.2.11", "10.244.1.0/24"),
                3,
            ),
            at(
                "/twill/v1/nodes/n2",
                &status("n2", "192.0.2.12", "10.244.2.0/24"),
                5,
            ),
        ];
        let mut m = NodeMap::listed(&kvs, 10, "n1");
        assert_eq!(names(&m), ["n2"]);
        // At or before the list's revision: already in it (a late delivery), no change.
        let old = Event::Delete {
            key: "/twill/v1/nodes/n2".into(),
            mod_revision: 10,
        };
        assert!(!m.apply(&old));
        assert_eq!(names(&m), ["n2"]);
        // A join, a move, the same value again, a leave.
        let n3 = status("n3", "192.0.2.13", "10.244.3.0/24");
        assert!(m.apply(&Event::Put(at("/twill/v1/nodes/n3", &n3, 11))));
        assert!(!m.apply(&Event::Put(at("/twill/v1/nodes/n3", &n3, 12))));
        let moved = status("n3", "192.0.2.33", "10.244.3.0/24");
        assert!(m.apply(&Event::Put(at("/twill/v1/nodes/n3", &moved, 13))));
        assert_eq!(
            m.peers()[1].address,
            "192.0.2.33".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert!(m.apply(&Event::Delete {
            key: "/twill/v1/nodes/n2".into(),
            mod_revision: 14
        }));
        assert_eq!(names(&m), ["n3"]);
        // An unreadable value drops the node (a list would leave it out); this node's own
        // key, deeper keys and other kinds change nothing.
        assert!(m.apply(&Event::Put(at("/twill/v1/nodes/n3", "garbage", 15))));
        assert!(m.is_empty());
        let me = status("n1", "192.0.2.11", "10.244.1.0/24");
        assert!(!m.apply(&Event::Put(at("/twill/v1/nodes/n1", &me, 16))));
        assert!(!m.apply(&Event::Put(at("/twill/v1/nodes/n4/x", &n3, 17))));
        assert!(!m.apply(&Event::Put(at("/twill/v1/blocks/10.244.4.0-24", &n3, 18))));
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn pod_mtu_leaves_room_for_the_tunnel() {
        let mtu = |kind: BackendKind, uplink, config| {
            Routing::new(&kind.spec(), Path::new("/nonexistent"))
                .unwrap()
                .pod_mtu(uplink, config)
        };
        assert_eq!(mtu(BackendKind::Vxlan, 1500, 1500), 1450);
        assert_eq!(mtu(BackendKind::Static, 9000, 1500), 1500);
        assert_eq!(mtu(BackendKind::Static, 1500, 1500), 1450);
        assert_eq!(mtu(BackendKind::HostGw, 1500, 1500), 1500);
        assert_eq!(mtu(BackendKind::None, 1500, 1400), 1400);
        assert_eq!(mtu(BackendKind::Vxlan, 9000, 65535), 8950);
    }
}
