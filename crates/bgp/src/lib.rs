//! Twill's BGP-4 speaker.
//!
//! The layers, bottom up. Everything above `speaker` is pure: no socket, file, clock or
//! namespace; time and bytes come in as arguments and decisions go out as values.
//!
//! - [`packet`]: the wire codec (RFC 4271 messages, RFC 5492 capabilities, path attributes,
//!   RFC 7606 error outcomes). Types here are the vocabulary every other layer speaks.
//! - `fsm`: one peer's session state machine (RFC 4271 §8), `Input -> Vec<Output>`.
//! - `rib`: Adj-RIB-In per peer, Loc-RIB, Adj-RIB-Out, best path (§9.1.2.2), route
//!   reflection (RFC 4456), graceful-restart stale handling (RFC 4724).
//! - `policy`: import/export filters and actions.
//! - `speaker`: the I/O edge: TCP (with RFC 2385 MD5) on one event loop, the kernel FIB
//!   over netlink, the control socket.

pub mod config;
pub mod fsm;
pub mod packet;
pub mod policy;
pub mod rib;
pub mod speaker;
