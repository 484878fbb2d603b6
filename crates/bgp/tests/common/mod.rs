//! The interop harness: real BIRD 2 and FRR 8.4 daemons (and later Twill's own speaker) in
//! network namespaces the test builds, joined by veths. Everything is named `twl…`, unique
//! per test, and goes away when its guard drops, failures included: daemons are stopped by
//! PID (SIGTERM, then SIGKILL after a grace period, always reaped) before their namespaces
//! are deleted, because locals drop in reverse order of declaration (declare the [`net::Lan`]
//! first, daemons after it).
//!
//! Timers are short everywhere (hold 9 / keepalive 3, connect retry 1–2 s, BIRD `connect
//! delay time 0`), so each scenario is bounded by a few seconds; every wait has a deadline
//! and fails the test with the daemon's last answer when it passes.
#![allow(dead_code)]

pub mod bird;
pub mod conf;
pub mod frr;
pub mod kernel;
pub mod net;
pub mod proc;
pub mod pypeer;
pub mod twill;
pub mod wait;
