//! The backend lifecycle, sans I/O: starts the backend once, hands it the messages its
//! sockets and threads sent and the timers that fell due, and says when a reconcile pass
//! is due (this node or its peers changed, an event asked for one, a failure is to be
//! retried, or the periodic resync that corrects drift) and with which [`Desired`] state.
//! It touches no socket, file or namespace: the caller (`crate::routing::Routing`) owns
//! the netlink edge, and tests drive it with a clock of their own.

use std::any::Any;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::RoutingInputs;
use super::Waker;
use super::{desired, Backend, BackendError, Desired, Event, Events, Local, Peer, Reaction};

/// How often the kernel is compared with the plan when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How soon a failed pass (or a backend that could not start) is tried again.
pub const RETRY: Duration = Duration::from_secs(2);
/// At most this many messages and due timers are handled per poll, so a chatty backend
/// cannot starve the agent's loop; the rest wait for the next poll.
const MAX_EVENTS_PER_POLL: usize = 1024;

pub struct Driver {
    backend: Box<dyn Backend>,
    events: Events,
    rx: mpsc::Receiver<Box<dyn Any + Send>>,
    started: bool,
    /// The inputs of the last pass.
    last: Option<(Local, Vec<Peer>)>,
    /// An event (or new inputs) asked for a pass.
    replan: bool,
    /// What [`Backend::set_inputs`] got last.
    inputs: RoutingInputs,
    next_pass: Instant,
}

impl Driver {
    pub fn new(backend: Box<dyn Backend>, now: Instant) -> Driver {
        let (events, rx) = Events::channel();
        Driver {
            backend,
            events,
            rx,
            started: false,
            last: None,
            replan: false,
            inputs: RoutingInputs::default(),
            next_pass: now,
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Hands the backend new routing inputs; a change makes the next poll a pass.
    pub fn set_inputs(&mut self, inputs: RoutingInputs) {
        if inputs != self.inputs {
            self.backend.set_inputs(&inputs);
            self.inputs = inputs;
            self.replan = true;
        }
    }

    /// `wake` is called whenever the backend sends an event.
    pub fn set_waker(&self, wake: Waker) {
        self.events.set_waker(wake);
    }

    /// When [`Driver::poll`] has work even if nothing else happens: the resync or retry,
    /// or the backend's next timer. Messages call the waker instead.
    pub fn next_wake(&self) -> Instant {
        match self.backend.next_timer() {
            Some(t) => t.min(self.next_pass),
            None => self.next_pass,
        }
    }

    /// Whether the next pass is the periodic (or retrying) one that compares the kernel
    /// with the plan, rather than one driven by a change.
    pub fn kernel_check_due(&self, now: Instant) -> bool {
        now >= self.next_pass
    }

    /// Starts the backend if it is not running, delivers its queued messages and due
    /// timers, and returns the state to reconcile to if a pass is due.
    pub fn poll(
        &mut self,
        now: Instant,
        local: &Local,
        peers: &[Peer],
    ) -> Result<Option<Desired>, BackendError> {
        if !self.started {
            if let Err(e) = self.backend.start(&self.events, now) {
                self.next_pass = now + RETRY;
                return Err(e);
            }
            self.started = true;
        }
        for _ in 0..MAX_EVENTS_PER_POLL {
            let event = match self.rx.try_recv() {
                Ok(m) => Event::Message(m),
                Err(_) if self.backend.next_timer().is_some_and(|t| t <= now) => Event::Timer,
                Err(_) => break,
            };
            if self.backend.on_event(event, now) == Reaction::Reconcile {
                self.replan = true;
            }
        }
        let same = self
            .last
            .as_ref()
            .is_some_and(|(l, p)| l == local && p == peers);
        if same && !self.replan && now < self.next_pass {
            return Ok(None);
        }
        Ok(Some(desired(self.backend.as_ref(), local, peers)))
    }

    /// The pass for `local` and `peers` is done; `kernel_failed`: some operation failed.
    /// Hands the inputs to [`Backend::sync`] and returns what it could not do.
    pub fn finish(
        &mut self,
        now: Instant,
        local: &Local,
        peers: &[Peer],
        kernel_failed: bool,
    ) -> Vec<String> {
        let failures = self.backend.sync(local, peers);
        self.replan = false;
        // A failed operation is retried soon rather than after a full resync interval.
        self.next_pass = now
            + if kernel_failed || !failures.is_empty() {
                RETRY
            } else {
                RESYNC
            };
        self.last = Some((local.clone(), peers.to_vec()));
        failures
    }

    /// The other nodes changed between passes: the backend hears of it now
    /// ([`Backend::peers_changed`], with the last pass's `local`); the pass still follows
    /// (the inputs differ from the last pass's). Before the first pass: nothing (that pass
    /// is the first news).
    pub fn peers_changed(&mut self, peers: &[Peer]) -> Vec<String> {
        match &self.last {
            Some((local, _)) if self.started => self.backend.peers_changed(local, peers),
            _ => Vec::new(),
        }
    }

    /// The pass could not even read the kernel: try again soon.
    pub fn failed(&mut self, now: Instant) {
        self.next_pass = now + RETRY;
    }

    /// Stops the backend (its routes and devices stay). A later poll starts it again.
    pub fn stop(&mut self) {
        if self.started {
            self.backend.stop();
            self.started = false;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}
