//! Twill's RIPv2 speaker (RFC 2453), for the `rip` backend of twilld.
//!
//! The layers, bottom up. The first two are pure: no socket, file or clock; bytes and time
//! come in as arguments and decisions go out as values.
//!
//! - [`packet`]: the wire codec. Request and Response messages of version 2, AFI 2 entries
//!   (route tag, address, mask, next hop, metric), the whole-table request. Bad entries are
//!   skipped with the reason (RFC 2453 §3.9.2: "ignore that entry and proceed to the
//!   next"); a message that cannot be RIPv2 at all is refused. Nothing panics on any input
//!   (`crates/rip/fuzz` holds that).
//! - [`router`]: a sans-IO router, `handle(Input, now) -> Vec<Output>`: this node's own
//!   prefixes and the routes it learned, the periodic update with jitter, triggered updates
//!   (rate limited 1–5 s), split horizon with poisoned reverse, the timeout and
//!   garbage-collection timers, request handling; every timer configurable
//!   ([`router::Timers`], FRR's `timers basic UPDATE TIMEOUT GARBAGE`).
//! - [`io`]: the I/O edge: UDP port 520 on one interface, member of 224.0.0.9 there,
//!   multicast out of it with TTL 1 and no loopback, our own packets ignored.
//!
//! The speaker talks on one segment (the node's uplink): there is one interface, so split
//! horizon applies to every learned route.

pub mod io;
pub mod packet;
pub mod router;

pub use packet::{Entry, Message, INFINITY};
pub use router::{Config, Input, Output, Route, Router, Timers};
