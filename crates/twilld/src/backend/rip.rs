//! `rip`: RIPv2 (RFC 2453, `twill-rip`) on the uplink segment. This node announces its
//! blocks at metric 1; what it hears from the segment's other RIP speakers (other nodes with
//! this backend, FRR's ripd, BIRD's `protocol rip`) becomes `block via NEXTHOP dev UPLINK`
//! routes in its plan, which the agent installs (proto 0x54) like any backend route. The
//! walk-through's "Quagga on every node", and a router outside the cluster that learns
//! each block's node, so that everything behind it reaches pods by pod IP.
//!
//! The store's peers play no part: RIP learns from the segment. A peer off the segment is
//! reached only if a RIP router on the segment announces its blocks.
//!
//! # Lifecycle
//! - [`Backend::start`] keeps the event sink; the socket needs this node's uplink and
//!   address, so the first [`Backend::sync`] opens it (`twill_rip::io::Socket`: port 520 on
//!   the uplink, 224.0.0.9, TTL 1, no loopback), creates the router with the network
//!   config's timers and starts it (a whole-table request, then our blocks). A reader thread
//!   hands every packet to [`Backend::on_event`] through the sink. A later uplink or address
//!   change closes and reopens it (withdrawing our blocks from the old segment first).
//! - Every [`Backend::sync`] hands the router this node's blocks (a new or released block
//!   goes out as a triggered update).
//! - [`Backend::on_event`] feeds the router packets and timers ([`Backend::next_timer`] is
//!   the router's next deadline) and sends what it answers; a changed table is
//!   [`Reaction::Reconcile`].
//! - [`Backend::stop`] sends a last response with our blocks at metric 16, so neighbours
//!   drop them at once, and joins the reader. Learned routes stay in the kernel (a restarted
//!   agent adopts them, then re-learns or times them out). A SIGKILLed agent sends nothing:
//!   neighbours time our routes out (`timeoutSeconds`).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use twill_api::backend::RipOptions;
use twill_rip::io::{Received, Socket};
use twill_rip::router::{Config, Input, Output, Route, Router, Timers};

use super::{Backend, BackendKind, Desired, Event, Events, Local, Peer, Reaction, RouteEntry};
use crate::log;

/// How often the reader looks at its stop flag.
const READ_SLICE: Duration = Duration::from_millis(200);

pub struct Rip {
    timers: Timers,
    events: Option<Events>,
    running: Option<Running>,
    /// Why the socket could not be opened, for the plan's problems.
    failure: Option<String>,
}

/// The speaker on one uplink.
struct Running {
    uplink: String,
    address: Ipv4Addr,
    router: Router,
    socket: Socket,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// The learned routes as last logged.
    logged: Vec<Route>,
}

/// A packet the reader thread heard.
struct Heard(Received);

impl Rip {
    pub fn new(options: &RipOptions) -> Rip {
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        Rip {
            timers: Timers {
                update: secs(options.update_seconds()),
                timeout: secs(options.timeout_seconds()),
                garbage: secs(options.garbage_seconds()),
            },
            events: None,
            running: None,
            failure: None,
        }
    }

    pub fn timers(&self) -> Timers {
        self.timers
    }

    fn open(&mut self, local: &Local, now: Instant) -> Result<(), String> {
        let events = self
            .events
            .clone()
            .ok_or_else(|| "rip: not started".to_string())?;
        let socket = Socket::open(&local.uplink, local.address).map_err(|e| e.to_string())?;
        let reader_socket = socket.try_clone().map_err(|e| {
            format!(
                "rip: cannot share the socket on {} with a reader: {e}",
                local.uplink
            )
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_reader = stop.clone();
        let reader = std::thread::Builder::new()
            .name("twilld-rip".into())
            .spawn(move || read(reader_socket, events, stop_reader))
            .map_err(|e| format!("rip: cannot start its reader thread: {e}"))?;
        // Jitter differs per node and per start.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut router = Router::new(Config {
            timers: self.timers,
            seed: (u64::from(u32::from(local.address)) << 32) | u64::from(nanos) | 1,
            ..Config::new(local.address, local.uplink_cidr)
        });
        let mut out = router.handle(Input::SetOwn(local.blocks.clone()), now);
        out.extend(router.handle(Input::Start, now));
        log::info(
            "rip: speaking on the uplink",
            &[
                ("uplink", &local.uplink),
                ("address", &local.address),
                ("update", &self.timers.update.as_secs()),
                ("timeout", &self.timers.timeout.as_secs()),
                ("garbage", &self.timers.garbage.as_secs()),
            ],
        );
        let mut running = Running {
            uplink: local.uplink.clone(),
            address: local.address,
            router,
            socket,
            stop,
            reader: Some(reader),
            logged: Vec::new(),
        };
        running.carry_out(out);
        self.running = Some(running);
        Ok(())
    }

    fn close(&mut self) {
        if let Some(mut r) = self.running.take() {
            let out = r.router.handle(Input::Stop, Instant::now());
            r.carry_out(out);
            r.stop.store(true, Ordering::Relaxed);
            if let Some(t) = r.reader.take() {
                let _ = t.join();
            }
            log::info(
                "rip: stopped; our blocks withdrawn",
                &[("uplink", &r.uplink)],
            );
        }
    }
}

impl Running {
    /// One line per learned route that came, went or moved since the last call: who
    /// learned what from whom (the lab's trace reads these).
    fn log_changes(&mut self) {
        let now = self.router.routes();
        for r in &now {
            if !self.logged.contains(r) {
                log::info(
                    "rip: route learned",
                    &[
                        ("prefix", &r.prefix),
                        ("via", &r.next_hop),
                        ("from", &r.from),
                        ("metric", &r.metric),
                    ],
                );
            }
        }
        for r in &self.logged {
            if !now.iter().any(|n| n.prefix == r.prefix) {
                log::info(
                    "rip: route lost",
                    &[
                        ("prefix", &r.prefix),
                        ("via", &r.next_hop),
                        ("from", &r.from),
                    ],
                );
            }
        }
        self.logged = now;
    }

    /// Sends what the router asked for; true if the table changed.
    fn carry_out(&mut self, out: Vec<Output>) -> bool {
        let mut changed = false;
        for o in out {
            match o {
                Output::Send { to, message } => {
                    if let Err(e) = self.socket.send(to, &message) {
                        log::warn(
                            "rip: cannot send",
                            &[
                                ("uplink", &self.uplink),
                                ("to", &format!("{to:?}")),
                                ("error", &e),
                            ],
                        );
                    }
                }
                Output::Changed => changed = true,
                // Expected on a shared segment (poisoned reverse of our own blocks, the
                // segment's connected route): not worth a line each.
                Output::Ignored { .. } => {}
            }
        }
        changed
    }
}

/// `block via NEXTHOP dev UPLINK` for every reachable learned route (pure).
pub fn plan_routes(router: &Router, local: &Local) -> Vec<RouteEntry> {
    router
        .routes()
        .into_iter()
        .map(|route| RouteEntry {
            dst: route.prefix,
            via: route.next_hop,
            dev: local.uplink.clone(),
            onlink: false,
        })
        .collect()
}

/// The reader thread: every packet to the agent, until stopped or the agent is gone.
fn read(socket: Socket, events: Events, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match socket.recv(READ_SLICE) {
            Ok(Some(got)) => {
                if !events.send(Heard(got)) {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                log::warn(
                    "rip: read failed",
                    &[("uplink", &socket.interface()), ("error", &e)],
                );
                std::thread::sleep(READ_SLICE);
            }
        }
    }
}

impl Backend for Rip {
    fn kind(&self) -> BackendKind {
        BackendKind::Rip
    }

    fn start(&mut self, events: &Events, _now: Instant) -> Result<(), super::BackendError> {
        self.events = Some(events.clone());
        Ok(())
    }

    fn plan(&self, local: &Local, _peers: &[Peer]) -> Desired {
        let mut desired = Desired::default();
        if let Some(f) = &self.failure {
            desired.problems.push(f.clone());
        }
        if let Some(r) = &self.running {
            desired.routes = plan_routes(&r.router, local);
        }
        desired
    }

    fn sync(&mut self, local: &Local, _peers: &[Peer]) -> Vec<String> {
        let now = Instant::now();
        let moved = self
            .running
            .as_ref()
            .is_some_and(|r| r.uplink != local.uplink || r.address != local.address);
        if moved {
            self.close();
        }
        if self.running.is_none() {
            match self.open(local, now) {
                Ok(()) => self.failure = None,
                Err(e) => {
                    self.failure = Some(e.clone());
                    return vec![e];
                }
            }
            return Vec::new();
        }
        let r = self.running.as_mut().expect("running");
        let out = r.router.handle(Input::SetOwn(local.blocks.clone()), now);
        if r.carry_out(out) {
            r.log_changes();
        }
        Vec::new()
    }

    fn next_timer(&self) -> Option<Instant> {
        self.running.as_ref().and_then(|r| r.router.next_deadline())
    }

    fn on_event(&mut self, event: Event, now: Instant) -> Reaction {
        let Some(r) = self.running.as_mut() else {
            return Reaction::Idle;
        };
        let out = match event {
            Event::Timer => r.router.handle(Input::Tick, now),
            m => match m.message::<Heard>() {
                Some(Heard(got)) => match got.message {
                    Ok(d) => {
                        for s in &d.skipped {
                            log::warn(
                                "rip: entry skipped",
                                &[
                                    ("from", &got.from),
                                    ("entry", &s.index),
                                    ("reason", &s.reason),
                                ],
                            );
                        }
                        r.router.handle(
                            Input::Received {
                                from: got.from,
                                message: d.message,
                            },
                            now,
                        )
                    }
                    Err(e) => {
                        log::warn(
                            "rip: packet refused",
                            &[("from", &got.from), ("reason", &e)],
                        );
                        return Reaction::Idle;
                    }
                },
                None => return Reaction::Idle,
            },
        };
        if r.carry_out(out) {
            r.log_changes();
            Reaction::Reconcile
        } else {
            Reaction::Idle
        }
    }

    fn stop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{select, BackendError, BackendSpec};
    use std::net::SocketAddrV4;
    use twill_api::wiring::PodWiring;
    use twill_rip::{Entry, Message};

    fn local() -> Local {
        Local {
            name: "n1".into(),
            address: "192.0.2.2".parse().unwrap(),
            uplink: "eth0".into(),
            uplink_cidr: "192.0.2.0/24".parse().unwrap(),
            blocks: vec!["10.244.1.0/24".parse().unwrap()],
            mtu_uplink: 1500,
            pod_wiring: PodWiring::Bridge,
        }
    }

    #[test]
    fn learned_routes_become_block_via_next_hop_dev_uplink() {
        let l = local();
        let now = Instant::now();
        let mut router = Router::new(Config::new(l.address, l.uplink_cidr));
        router.handle(Input::SetOwn(l.blocks.clone()), now);
        router.handle(Input::Start, now);
        let entry = |p: &str, nh: &str| Entry {
            tag: 0,
            prefix: p.parse().unwrap(),
            next_hop: nh.parse().unwrap(),
            metric: 1,
        };
        router.handle(
            Input::Received {
                from: SocketAddrV4::new("192.0.2.1".parse().unwrap(), 520),
                message: Message::Response(vec![
                    entry("198.51.100.0/24", "0.0.0.0"),
                    entry("10.244.7.0/24", "192.0.2.7"),
                    // Ours: not routed.
                    entry("10.244.1.0/24", "0.0.0.0"),
                ]),
            },
            now,
        );
        let routes: Vec<String> = plan_routes(&router, &l)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            routes,
            [
                "10.244.7.0/24 via 192.0.2.7 dev eth0",
                "198.51.100.0/24 via 192.0.2.1 dev eth0"
            ]
        );
    }

    #[test]
    fn select_takes_the_rip_timers_and_refuses_bad_ones_by_field() {
        let spec = |json: &str| serde_json::from_str::<BackendSpec>(json).unwrap();
        let b = select(
            &spec(r#"{"type":"rip","updateSeconds":5,"timeoutSeconds":15,"garbageSeconds":10}"#),
            false,
            std::path::Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(b.kind(), BackendKind::Rip);
        assert_eq!(b.name(), "rip");
        assert_eq!(b.mtu_overhead(), 0);
        let r = Rip::new(&RipOptions::default());
        assert_eq!(r.timers(), Timers::RFC);
        let e = select(
            &spec(r#"{"type":"rip","updateSeconds":20,"timeoutSeconds":10}"#),
            false,
            std::path::Path::new("/nonexistent"),
        )
        .err()
        .unwrap();
        assert!(
            matches!(
                &e,
                BackendError::Invalid {
                    field: "timeoutSeconds",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("backend.timeoutSeconds: 10 is not longer than updateSeconds 20"),
            "{e}"
        );
        // Not started, so no socket: an empty plan, and nothing fails.
        let plan = r.plan(&local(), &[]);
        assert!(plan.routes.is_empty() && plan.problems.is_empty());
    }

    #[test]
    fn a_missing_uplink_is_a_problem_that_names_it() {
        let (events, _rx) = Events::channel();
        let mut r = Rip::new(&RipOptions::default());
        r.start(&events, Instant::now()).unwrap();
        let l = Local {
            uplink: "twlnosuch0".into(),
            ..local()
        };
        let failures = r.sync(&l, &[]);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("twlnosuch0"), "{failures:?}");
        assert_eq!(r.plan(&l, &[]).problems, failures);
        assert!(r.next_timer().is_none());
    }
}
