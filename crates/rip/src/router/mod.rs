//! The RIPv2 router on one segment (RFC 2453 §3.4–3.10), sans-IO.
//!
//! A [`Router`] owns no socket and reads no clock. The edge feeds it [`Input`]s with the
//! current time and carries out the [`Output`]s it returns:
//!
//! ```text
//! let mut r = Router::new(config);
//! r.handle(Input::SetOwn(blocks), now)        // this node's prefixes, advertised at metric 1
//! r.handle(Input::Start, now)                 // -> [Send(Multicast, whole-table request),
//!                                             //     Send(Multicast, Response(own))]
//! r.handle(Input::Received { from, message }, now)
//!                                             // -> [Changed, Send(Multicast, triggered)] ...
//! r.next_deadline()                           // call handle(Input::Tick, t) at t
//! r.routes()                                  // what the kernel should hold
//! r.handle(Input::Stop, now)                  // -> [Send(Multicast, own routes at 16)]
//! ```
//!
//! Every `handle` first fires the timers due at `now` (route timeouts, garbage collection,
//! the periodic update, a held triggered update), then handles its input, then sends a
//! triggered update if one is wanted and allowed.
//!
//! # What it does
//! - **Own prefixes** ([`Input::SetOwn`]) are advertised at metric [`OWN_METRIC`]. One that
//!   is dropped is advertised at 16 until garbage collection (§3.10: "the route is
//!   advertised with a metric of 16"), so neighbours drop it at once.
//! - **Learned routes**: a Response from a neighbour on the segment, from port 520, adds 1 to
//!   each metric (§3.9.2 "metric = MIN (metric + cost, infinity)", cost 1) and takes a route
//!   that is new, better, or from the router it already came from. The next hop is the
//!   entry's when that is on the segment, else the sender (§4.4). [`Router::routes`] lists
//!   the reachable ones; [`Output::Changed`] says that list changed.
//! - **Timers** ([`Timers`]): each learned route times out after `timeout` without a
//!   refresh and is then advertised at 16 for `garbage` before it is deleted (§3.8). The
//!   periodic update goes every `update`, offset by a random ±1/6 of it (§3.8: 30 s "offset
//!   by a small random time (+/- 0 to 5 seconds)").
//! - **Triggered updates** (§3.10.1): a change is sent at once, with only the changed
//!   routes; further changes within a random 1–5 s hold wait for its end and go together.
//!   A periodic update clears the changes it carried, and a held triggered update with
//!   nothing left is not sent.
//! - **Split horizon with poisoned reverse** (§3.4.3): there is one interface, so every
//!   learned route came in on it and goes back out at metric 16 ([`Config::poisoned_reverse`]
//!   false: simple split horizon, they are left out).
//! - **Requests** (§3.9.1): the whole-table request gets the full table (with split horizon)
//!   sent to the requester's address and port; a request for some destinations gets each
//!   with our metric (16 when unknown), no split horizon, as a monitor wants it.
//! - **Start** sends a whole-table request, so neighbours answer at once instead of within a
//!   periodic interval, and our own prefixes. **Stop** sends our own prefixes at 16.
//!
//! Not done: more than one interface, RIP-1, authentication, the default route's special
//! handling (it is a route like the others).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::packet::{responses, Entry, Message, INFINITY, PORT};

/// The metric this node advertises its own prefixes with (a neighbour holds them at 2).
pub const OWN_METRIC: u8 = 1;
/// The cost of the one interface (§3.9.2: "the cost of the network on which the message
/// arrived"; FRR's and BIRD's default).
pub const COST: u8 = 1;
/// §3.10.1: "a timer should be set for a random interval between 1 and 5 seconds".
pub const TRIGGER_HOLD_MIN: Duration = Duration::from_secs(1);
pub const TRIGGER_HOLD_MAX: Duration = Duration::from_secs(5);

/// The three timers of §3.8 (FRR's `timers basic UPDATE TIMEOUT GARBAGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub update: Duration,
    pub timeout: Duration,
    pub garbage: Duration,
}

impl Timers {
    /// §3.8: 30 s updates, a 180 s timeout, 120 s of garbage collection.
    pub const RFC: Timers = Timers {
        update: Duration::from_secs(30),
        timeout: Duration::from_secs(180),
        garbage: Duration::from_secs(120),
    };

    /// Out-of-range timers, as (field, reason): every timer at least 1 s, and the timeout
    /// longer than the update interval (else every route times out between two updates).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, d) in [
            ("update", self.update),
            ("timeout", self.timeout),
            ("garbage", self.garbage),
        ] {
            if d < Duration::from_secs(1) {
                return Err((field, format!("{d:?} is under 1 s")));
            }
        }
        if self.timeout <= self.update {
            return Err((
                "timeout",
                format!(
                    "{:?} is not longer than the update interval {:?}: routes would time out between updates; the RFC has 6 times it",
                    self.timeout, self.update
                ),
            ));
        }
        Ok(())
    }
}

impl Default for Timers {
    fn default() -> Timers {
        Timers::RFC
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's address on the segment: the source of its packets. Packets from it are
    /// ours (looped back) and ignored.
    pub address: Ipv4Addr,
    /// The segment. Neighbours are on it (§3.9.2: a Response from elsewhere is ignored), a
    /// next hop is used only when on it (§4.4), and a route to it is the connected one's, so
    /// advertisements of it are ignored.
    pub subnet: Ipv4Net,
    pub timers: Timers,
    /// Learned routes go back out at 16 (true) or not at all (false).
    pub poisoned_reverse: bool,
    /// Seeds the jitter of the periodic update and the triggered-update hold.
    pub seed: u64,
}

impl Config {
    /// RFC timers, poisoned reverse.
    pub fn new(address: Ipv4Addr, subnet: Ipv4Net) -> Config {
        Config {
            address,
            subnet,
            timers: Timers::RFC,
            poisoned_reverse: true,
            seed: u64::from(u32::from(address)) | 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Begin: ask the neighbours for their tables and announce ours.
    Start,
    /// This node's prefixes now (host bits are cleared; duplicates are one).
    SetOwn(Vec<Ipv4Net>),
    /// A message that arrived from `from` (address and UDP port).
    Received {
        from: SocketAddrV4,
        message: Message,
    },
    /// Nothing but time passed.
    Tick,
    /// End: withdraw our own prefixes (metric 16). Inputs after it are ignored until the next
    /// Start; learned routes stay in [`Router::routes`] (the kernel keeps them, as for every
    /// backend that stops).
    Stop,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 224.0.0.9 port 520, out of the segment's interface.
    Multicast,
    /// An answer to a request, to its sender's address and port.
    Unicast(SocketAddrV4),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send {
        to: Destination,
        message: Message,
    },
    /// [`Router::routes`] changed (a route came, went, or moved to another next hop or metric).
    Changed,
    /// A message or an entry that was not used, and why (for the log and counters).
    Ignored {
        from: SocketAddrV4,
        reason: Ignored,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("a response from port {0}, not 520 (RFC 2453 §3.9.2)")]
    NotRipPort(u16),
    #[error("our own packet")]
    Own,
    #[error("the sender is not on the segment")]
    OffSegment,
    #[error("{0}: its next hop is this node")]
    NextHopIsUs(Ipv4Net),
    #[error("{0}: this node's own prefix")]
    OwnPrefix(Ipv4Net),
    #[error("{0}: the segment itself (the connected route)")]
    Segment(Ipv4Net),
}

/// A reachable learned route: what the kernel should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub prefix: Ipv4Net,
    /// The gateway: the entry's next hop, or the neighbour that sent it.
    pub next_hop: Ipv4Addr,
    /// As held (the neighbour's plus [`COST`]).
    pub metric: u8,
    /// The neighbour it was learned from.
    pub from: Ipv4Addr,
    pub tag: u16,
}

/// One row of the table, for status: own and learned, reachable or being deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub prefix: Ipv4Net,
    pub metric: u8,
    /// None: this node's own prefix.
    pub from: Option<Ipv4Addr>,
    pub next_hop: Ipv4Addr,
    pub tag: u16,
    /// When it times out (learned, reachable) or is deleted (metric 16).
    pub expires: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Held {
    metric: u8,
    /// None: our own.
    from: Option<Ipv4Addr>,
    next_hop: Ipv4Addr,
    tag: u16,
    /// Reachable learned routes: when they time out.
    timeout: Option<Instant>,
    /// Metric 16: when the route is deleted.
    garbage: Option<Instant>,
    /// §3.10.1's route change flag.
    changed: bool,
}

impl Held {
    fn own_active(&self) -> bool {
        self.from.is_none() && self.metric < INFINITY
    }

    fn reachable_learned(&self) -> bool {
        self.from.is_some() && self.metric < INFINITY
    }
}

pub struct Router {
    config: Config,
    table: BTreeMap<Ipv4Net, Held>,
    started: bool,
    next_update: Option<Instant>,
    /// A triggered update is wanted.
    trigger: bool,
    /// Triggered updates wait until then (§3.10.1's 1–5 s timer).
    hold_until: Option<Instant>,
    rng: u64,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .field("routes", &self.table.len())
            .field("started", &self.started)
            .finish()
    }
}

impl Router {
    pub fn new(config: Config) -> Router {
        let rng = config.seed.max(1);
        Router {
            config,
            table: BTreeMap::new(),
            started: false,
            next_update: None,
            trigger: false,
            hold_until: None,
            rng,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    /// The reachable learned routes, by prefix.
    pub fn routes(&self) -> Vec<Route> {
        self.table
            .iter()
            .filter(|(_, h)| h.reachable_learned())
            .map(|(prefix, h)| Route {
                prefix: *prefix,
                next_hop: h.next_hop,
                metric: h.metric,
                from: h.from.unwrap_or(Ipv4Addr::UNSPECIFIED),
                tag: h.tag,
            })
            .collect()
    }

    /// Every row, own and learned, by prefix.
    pub fn table(&self) -> Vec<Row> {
        self.table
            .iter()
            .map(|(prefix, h)| Row {
                prefix: *prefix,
                metric: h.metric,
                from: h.from,
                next_hop: h.next_hop,
                tag: h.tag,
                expires: h.timeout.or(h.garbage),
            })
            .collect()
    }

    /// When [`Router::handle`] has a timer to fire (call it with [`Input::Tick`] then).
    pub fn next_deadline(&self) -> Option<Instant> {
        let routes = self
            .table
            .values()
            .flat_map(|h| [h.timeout, h.garbage])
            .flatten();
        let held = self.hold_until.filter(|_| self.trigger && self.started);
        routes
            .chain(self.next_update.filter(|_| self.started))
            .chain(held)
            .min()
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.fire_timers(now, &mut out);
        match input {
            Input::Tick => {}
            Input::Start => self.start(now, &mut out),
            Input::Stop => self.stop(&mut out),
            Input::SetOwn(prefixes) => self.set_own(prefixes, now, &mut out),
            Input::Received { from, message } => {
                if from.ip() == &self.config.address {
                    out.push(Output::Ignored {
                        from,
                        reason: Ignored::Own,
                    });
                } else if self.started {
                    match message {
                        Message::Response(entries) => self.response(from, &entries, now, &mut out),
                        Message::WholeTableRequest => {
                            // §3.9.1: "normal output processing is done ... sent to the
                            // requestor's address and port".
                            for message in responses(&self.update_entries(false)) {
                                out.push(Output::Send {
                                    to: Destination::Unicast(from),
                                    message,
                                });
                            }
                        }
                        Message::Request(entries) => self.request(from, &entries, &mut out),
                    }
                }
            }
        }
        self.flush_trigger(now, &mut out);
        // One Changed per call is enough.
        let mut seen = false;
        out.retain(|o| {
            if *o != Output::Changed {
                return true;
            }
            !std::mem::replace(&mut seen, true)
        });
        out
    }

    fn start(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(Output::Send {
            to: Destination::Multicast,
            message: Message::WholeTableRequest,
        });
        self.periodic(now, out);
    }

    fn stop(&mut self, out: &mut Vec<Output>) {
        if !self.started {
            return;
        }
        let entries: Vec<Entry> = self
            .table
            .iter()
            .filter(|(_, h)| h.own_active())
            .map(|(prefix, h)| Entry {
                tag: h.tag,
                prefix: *prefix,
                next_hop: Ipv4Addr::UNSPECIFIED,
                metric: INFINITY,
            })
            .collect();
        out.extend(responses(&entries).into_iter().map(|message| Output::Send {
            to: Destination::Multicast,
            message,
        }));
        self.started = false;
        self.next_update = None;
        self.trigger = false;
        self.hold_until = None;
    }

    fn set_own(&mut self, prefixes: Vec<Ipv4Net>, now: Instant, out: &mut Vec<Output>) {
        let mut want: Vec<Ipv4Net> = prefixes.iter().map(Ipv4Net::trunc).collect();
        want.sort();
        want.dedup();
        let gone: Vec<Ipv4Net> = self
            .table
            .iter()
            .filter(|(p, h)| h.own_active() && want.binary_search(p).is_err())
            .map(|(p, _)| *p)
            .collect();
        for prefix in gone {
            let h = self.table.get_mut(&prefix).expect("listed above");
            h.metric = INFINITY;
            h.garbage = Some(now + self.config.timers.garbage);
            h.changed = true;
            self.trigger = true;
        }
        for prefix in want {
            if self.table.get(&prefix).is_some_and(Held::own_active) {
                continue;
            }
            let old = self.table.insert(
                prefix,
                Held {
                    metric: OWN_METRIC,
                    from: None,
                    next_hop: Ipv4Addr::UNSPECIFIED,
                    tag: 0,
                    timeout: None,
                    garbage: None,
                    changed: true,
                },
            );
            if old.is_some_and(|o| o.reachable_learned()) {
                out.push(Output::Changed);
            }
            self.trigger = true;
        }
    }

    /// §3.9.2, Response Messages.
    fn response(
        &mut self,
        from: SocketAddrV4,
        entries: &[Entry],
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        // "The Response must be ignored if it is not from the RIP port."
        if from.port() != PORT {
            out.push(Output::Ignored {
                from,
                reason: Ignored::NotRipPort(from.port()),
            });
            return;
        }
        // "the source of the datagram must be on a directly-connected network".
        let sender = *from.ip();
        if !self.config.subnet.contains(&sender) {
            out.push(Output::Ignored {
                from,
                reason: Ignored::OffSegment,
            });
            return;
        }
        let timers = self.config.timers;
        for e in entries {
            let ignore = |reason| Output::Ignored { from, reason };
            if e.prefix == self.config.subnet.trunc() {
                out.push(ignore(Ignored::Segment(e.prefix)));
                continue;
            }
            if self.table.get(&e.prefix).is_some_and(Held::own_active) {
                out.push(ignore(Ignored::OwnPrefix(e.prefix)));
                continue;
            }
            // §4.4: "If the received Next Hop is not directly reachable, it should be treated
            // as 0.0.0.0." One pointing at this node would loop: the entry is not used.
            if e.next_hop == self.config.address {
                out.push(ignore(Ignored::NextHopIsUs(e.prefix)));
                continue;
            }
            let next_hop =
                if !e.next_hop.is_unspecified() && self.config.subnet.contains(&e.next_hop) {
                    e.next_hop
                } else {
                    sender
                };
            // "metric = MIN (metric + cost, infinity)"
            let metric = e.metric.saturating_add(COST).min(INFINITY);
            let Some(h) = self.table.get_mut(&e.prefix) else {
                // "If there is no existing route ... and the new metric is not infinity: add".
                if metric < INFINITY {
                    self.table.insert(
                        e.prefix,
                        Held {
                            metric,
                            from: Some(sender),
                            next_hop,
                            tag: e.tag,
                            timeout: Some(now + timers.timeout),
                            garbage: None,
                            changed: true,
                        },
                    );
                    self.trigger = true;
                    out.push(Output::Changed);
                }
                continue;
            };
            let same_router = h.from == Some(sender);
            if same_router {
                // "If the datagram is from the same router as the existing route, reinitialize
                // the timeout."
                if metric < INFINITY {
                    h.timeout = Some(now + timers.timeout);
                    h.garbage = None;
                }
            }
            // "If the new metric is the same as the old one, it is simplest to do nothing
            // further (beyond reinitializing the timeout ...)": except that a route half way to
            // its timeout is taken over by another router with the same metric, as §3.9.2
            // suggests ("it may be better to switch to a good alternative route immediately").
            let fading = !same_router
                && metric == h.metric
                && metric < INFINITY
                && h.timeout
                    .is_some_and(|t| t.saturating_duration_since(now) < timers.timeout / 2);
            let differs = metric != h.metric || next_hop != h.next_hop || e.tag != h.tag;
            if (same_router && differs) || (!same_router && metric < h.metric) || fading {
                if metric == INFINITY {
                    // "the deletion process is started only when the metric is first set to
                    // infinity"
                    if h.metric < INFINITY {
                        h.metric = INFINITY;
                        h.timeout = None;
                        h.garbage = Some(now + timers.garbage);
                        h.changed = true;
                        self.trigger = true;
                        out.push(Output::Changed);
                    }
                    continue;
                }
                *h = Held {
                    metric,
                    from: Some(sender),
                    next_hop,
                    tag: e.tag,
                    timeout: Some(now + timers.timeout),
                    garbage: None,
                    changed: true,
                };
                self.trigger = true;
                out.push(Output::Changed);
            }
        }
    }

    /// §3.9.1, a request for particular destinations: each with our metric, or 16.
    fn request(&self, from: SocketAddrV4, entries: &[Entry], out: &mut Vec<Output>) {
        let answers: Vec<Entry> = entries
            .iter()
            .map(|e| match self.table.get(&e.prefix) {
                Some(h) => Entry {
                    tag: h.tag,
                    prefix: e.prefix,
                    next_hop: Ipv4Addr::UNSPECIFIED,
                    metric: h.metric,
                },
                None => Entry {
                    metric: INFINITY,
                    ..*e
                },
            })
            .collect();
        out.extend(responses(&answers).into_iter().map(|message| Output::Send {
            to: Destination::Unicast(from),
            message,
        }));
    }

    fn fire_timers(&mut self, now: Instant, out: &mut Vec<Output>) {
        let garbage = self.config.timers.garbage;
        let mut lost = false;
        self.table.retain(|_, h| {
            if h.timeout.is_some_and(|t| t <= now) {
                // §3.8: "Upon expiration of the timeout, the route is no longer valid ... the
                // metric is set to 16 ... the garbage-collection timer is set".
                h.timeout = None;
                h.metric = INFINITY;
                h.garbage = Some(now + garbage);
                h.changed = true;
                lost = true;
            }
            // "Upon expiration of the garbage-collection timer, the route is finally removed".
            h.garbage.is_none_or(|t| t > now)
        });
        if lost {
            self.trigger = true;
            out.push(Output::Changed);
        }
        if self.started && self.next_update.is_some_and(|t| t <= now) {
            self.periodic(now, out);
        }
    }

    /// The full table to everyone; re-arms the periodic timer.
    fn periodic(&mut self, now: Instant, out: &mut Vec<Output>) {
        let entries = self.update_entries(false);
        out.extend(responses(&entries).into_iter().map(|message| Output::Send {
            to: Destination::Multicast,
            message,
        }));
        for h in self.table.values_mut() {
            h.changed = false;
        }
        // §3.10.1: "if a regular update is due at the time a triggered update is to be sent,
        // the triggered update may be suppressed": it was just carried.
        self.trigger = false;
        let update = self.config.timers.update;
        let sixth = update / 6;
        let jitter = self.random(sixth * 2);
        self.next_update = Some(now + update - sixth + jitter);
    }

    fn flush_trigger(&mut self, now: Instant, out: &mut Vec<Output>) {
        if !self.started || !self.trigger || self.hold_until.is_some_and(|t| t > now) {
            return;
        }
        self.trigger = false;
        let entries = self.update_entries(true);
        for h in self.table.values_mut() {
            h.changed = false;
        }
        if entries.is_empty() {
            return;
        }
        out.extend(responses(&entries).into_iter().map(|message| Output::Send {
            to: Destination::Multicast,
            message,
        }));
        let spread = TRIGGER_HOLD_MAX - TRIGGER_HOLD_MIN;
        self.hold_until = Some(now + TRIGGER_HOLD_MIN + self.random(spread));
    }

    /// The entries of an update (all, or the changed ones), split horizon applied.
    fn update_entries(&self, only_changed: bool) -> Vec<Entry> {
        self.table
            .iter()
            .filter(|(_, h)| !only_changed || h.changed)
            .filter_map(|(prefix, h)| {
                let metric = match h.from {
                    None => h.metric,
                    // §3.4.3: routes learned on this interface go back "with their metrics set
                    // to infinity" (poisoned reverse), or not at all.
                    Some(_) if self.config.poisoned_reverse => INFINITY,
                    Some(_) => return None,
                };
                Some(Entry {
                    tag: h.tag,
                    prefix: *prefix,
                    next_hop: Ipv4Addr::UNSPECIFIED,
                    metric,
                })
            })
            .collect()
    }

    /// A duration in [0, max] (xorshift64*: jitter only, nothing secret).
    fn random(&mut self, max: Duration) -> Duration {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let millis = max.as_millis() as u64;
        Duration::from_millis(r % (millis + 1))
    }
}

#[cfg(test)]
mod tests;
