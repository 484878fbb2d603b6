//! One peer's BGP session state machine (RFC 4271 §8), sans-IO.
//!
//! A [`Session`] owns no socket and reads no clock. The speaker feeds it [`Input`]s with the
//! current time and carries out the [`Output`]s it returns:
//!
//! ```text
//! let mut s = Session::new(config, now)?;         // Idle ("since" counts from now)
//! s.handle(Input::Start, now)                     // -> [Connect] (or nothing when passive)
//! s.handle(Input::Connected(id, Direction::Outgoing), now)
//!                                                 // -> [Send(id, OPEN)]     OpenSent
//! s.handle(Input::Received(id, peer_open), now)   // -> [Send(id, KEEPALIVE)] OpenConfirm
//! s.handle(Input::Received(id, Keepalive), now)   // -> [Established(info)]   Established
//! s.handle(Input::Received(id, Update(u)), now)   // -> [Routes(u)]           for the RIB
//! s.next_deadline()                               // call handle(Input::Tick, t) at t
//! ```
//!
//! # Inputs
//! - `Start` / `Stop`: RFC 4271 ManualStart / ManualStop. Stop sends Cease 6/2
//!   (administrative shutdown) on every open connection and stays Idle until the next Start;
//!   `StopWith(subcode)` the same with another Cease subcode (6/3 peer de-configured).
//! - `Tick`: nothing happened but time. Every `handle` call first fires the timers that are
//!   due at `now` (connect retry, hold, keepalive), oldest first, then handles its input.
//! - `Connected(ConnId, Direction)`: a TCP connection to the peer is up, one this speaker
//!   opened after `Output::Connect` (`Outgoing`) or one it accepted (`Incoming`). The
//!   speaker chooses the `ConnId`s; they must be unique for the life of the session.
//! - `ConnectFailed`: the connect asked for by the last `Output::Connect` failed.
//! - `Closed(ConnId)`: the peer closed or reset that connection (or it failed).
//! - `Received(ConnId, Message)`: a message decoded from that connection.
//! - `DecodeError(ConnId, Notification)`: the codec refused a message; the FSM sends that
//!   NOTIFICATION and closes.
//! - `UpdatesSent(n)`: the speaker wrote `n` UPDATEs for the RIB on the established
//!   connection (counted, and they restart the keepalive timer).
//! - `SendRefresh(Family)`: ask the peer to resend a family (RFC 2918), if it can.
//!
//! Inputs for a `ConnId` the session no longer knows (it closed it already) are ignored.
//!
//! # Outputs
//! - `Connect`: open a TCP connection to the peer, then report `Connected` or
//!   `ConnectFailed`. A new `Connect` replaces an attempt still in flight.
//! - `CancelConnect`: drop the connect in flight, unanswered: the session came up on the
//!   peer's connection, and a late one of ours would look to a graceful-restart peer like our
//!   restart (RFC 4724 §4.2: BIRD and FRR then end the session at once).
//! - `Send(ConnId, Message)` / `Close(ConnId)`: write a message, close a connection (after
//!   writing what was sent before it). A connection the peer closed is not `Close`d again.
//! - `Established(info)`: the session is up on `info.conn`; `info.negotiated` is what the
//!   codec encodes and decodes with, `info.open` the peer's OPEN; [`Established`] also says
//!   what the peer can do (route refresh, graceful restart with its R and F bits).
//! - `Routes(update)`: an UPDATE for the RIB (End-of-RIB markers included: the RIB reads them).
//! - `RefreshRequested(family)`: the peer asked for our Adj-RIB-Out of that family again.
//! - `Down { reason, keep_stale, stale_families }`: an established session ended; exactly
//!   one `Down` follows each `Established`. `keep_stale` is `Some(peer's restart time)` when
//!   the session ended without a NOTIFICATION and both sides advertised graceful restart
//!   (RFC 4724 §4.2): the RIB keeps the peer's routes of `stale_families` as stale that long.
//!
//! # Behaviour worth knowing
//! - Passive peers never connect: they wait in Active for the peer's connection.
//! - Collision (§6.8): one outgoing and one incoming connection may run side by side; when
//!   the second OPEN arrives the connection opened by the speaker with the higher BGP
//!   identifier stays and the other gets Cease 6/7.
//! - After an error (hold timer, NOTIFICATION sent or received, a connection lost after it
//!   was up) the session waits before it connects again, like BIRD's `error wait time`: the
//!   first wait is [`ErrorWait::min`], doubled for each error that follows the previous one
//!   within [`ErrorWait::forget`], up to [`ErrorWait::max`]. During the wait the session is in
//!   Active: it opens nothing, but a peer that connects (one back from a restart) is served.
//!   A failed connect is no error: the next one comes after the connect retry time.
//! - Where this departs from RFC 4271 §8.2.2: after an error, and after a failed connect, the
//!   RFC goes to Idle, which refuses the peer's own connections until an automatic start;
//!   this FSM waits in Active instead, so a peer that comes back is never refused.
//! - Collisions are resolved at the first OPEN, on the other connection in OpenConfirm
//!   (§6.8's MUST) or in OpenSent (its MAY: that OPEN tells the peer's identifier), so both
//!   sides keep the same connection before either is Established; once one connection is
//!   Established, any later connection gets Cease 6/7 at once, unless graceful restart
//!   applies (below).
//! - Graceful restart (RFC 4724), with [`SessionConfig::graceful_restart`] set: our OPEN
//!   carries the capability, with the R bit until our first session is established again
//!   and the F bits as configured. As a helper, when the peer advertised it too: a lost
//!   connection or a hold timer expiry (no NOTIFICATION received or caused by a bad
//!   message) gives `Down { keep_stale: Some(..) }`; a new connection from the peer while
//!   established (it restarted and we did not notice) is served, and its valid OPEN ends the
//!   old session the same way, without a NOTIFICATION (RFC 4724 §4.2). Whether the peer set
//!   the R and F bits is in [`Established`]; End-of-RIB is for the RIB to see in `Routes`.
//! - Timers are exact unless [`SessionConfig::jitter_seed`] is set: then the keepalive and
//!   connect retry timers are drawn each time between 75% and 100% of their value (RFC 4271
//!   §10), from that seed, so a run is still reproducible.
//! - [`Session::status`] is the operator's view: state, since when, last error, message
//!   counters, flaps.

mod open;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::packet::{
    subcode, ErrorCode, Family, GracefulRestart, Message, MessageType, Negotiated, Notification,
    Open, RouteRefresh, Update,
};

/// Failed connects in a row retried [`SessionConfig::connect_backoff`] apart before the
/// interval starts doubling.
pub const QUICK_RETRIES: u32 = 50;

/// RFC 4271 §8.2.2: "a suggested value for the ConnectRetryTime is 120 seconds".
pub const DEFAULT_CONNECT_RETRY: Duration = Duration::from_secs(120);
/// RFC 4271 §10: "HoldTime ... 90 seconds" (the suggested value).
pub const DEFAULT_HOLD_TIME: u16 = 90;
/// RFC 4271 §8.2.2 OpenSent: "A HoldTimer value of 4 minutes is suggested" for the large
/// value the hold timer runs with until the peer's OPEN arrives.
pub const DEFAULT_OPEN_HOLD_TIME: u16 = 240;

/// A connection to the peer, named by the speaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This speaker connected (after [`Output::Connect`]).
    Outgoing,
    /// The peer connected and this speaker accepted.
    Incoming,
}

/// The RFC 4271 §8.2.2 states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        })
    }
}

/// The backoff before reconnecting after an error, BIRD's `error wait time` and `error
/// forget time` (defaults 60 s, 300 s and 300 s, as BIRD's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorWait {
    /// The wait after a first error.
    pub min: Duration,
    /// The longest wait, however many errors in a row.
    pub max: Duration,
    /// Errors further apart than this are not "in a row": the wait falls back to `min`.
    pub forget: Duration,
}

impl Default for ErrorWait {
    fn default() -> Self {
        ErrorWait {
            min: Duration::from_secs(60),
            max: Duration::from_secs(300),
            forget: Duration::from_secs(300),
        }
    }
}

/// This speaker's side of graceful restart (RFC 4724). Configured at all, the speaker
/// advertises the capability and is a helper for peers that advertise it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Seconds the peer should keep our routes when our session drops (12 bits: ≤ 4095).
    pub restart_time: u16,
    /// We restarted: set the R bit in our OPENs until the session is established once.
    pub restarting: bool,
    /// We kept the forwarding state (kernel routes) across that restart: the F bit for every
    /// configured family.
    pub forwarding_preserved: bool,
}

/// Everything one session needs to know about its peer and about this speaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub local_as: u32,
    /// The AS the peer must announce (else NOTIFICATION 2/2); equal to `local_as` for iBGP.
    pub peer_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Never connect; wait for the peer to.
    pub passive: bool,
    /// The address families to offer (multiprotocol capability), at least one.
    pub families: Vec<Family>,
    /// The hold time we offer, seconds: 0 (no keepalives) or at least 3.
    pub hold_time: u16,
    /// The keepalive interval, seconds; `None`: a third of the negotiated hold time. Never
    /// longer than that third.
    pub keepalive: Option<u16>,
    /// The hold time while waiting for the peer's OPEN (RFC 4271 §8.2.2's "large value").
    pub open_hold_time: u16,
    pub connect_retry: Duration,
    /// After a failed connect (the peer refused: not listening yet, e.g. a mesh node that is
    /// starting), or a connection the peer closed before its OPEN (it does not know us yet),
    /// the next connect comes this soon instead of after `connect_retry` or the error wait;
    /// the first [`QUICK_RETRIES`] failures in a row keep this interval, later ones double
    /// it, never beyond `connect_retry`. `None`: RFC 4271's timers only.
    pub connect_backoff: Option<Duration>,
    pub error_wait: ErrorWait,
    /// Advertise route refresh (RFC 2918) and answer the peer's requests.
    pub route_refresh: bool,
    pub graceful_restart: Option<GracefulRestartConfig>,
    /// RFC 4271 §10 jitter on the keepalive and connect retry timers, from this seed (the
    /// caller's randomness: the FSM has none of its own). `None`: exact timers.
    pub jitter_seed: Option<u64>,
}

impl SessionConfig {
    /// A session for IPv4 unicast with the RFC's suggested timers, route refresh on and no
    /// graceful restart.
    pub fn new(local_as: u32, peer_as: u32, router_id: Ipv4Addr) -> SessionConfig {
        SessionConfig {
            local_as,
            peer_as,
            router_id,
            passive: false,
            families: vec![Family::IPV4_UNICAST],
            hold_time: DEFAULT_HOLD_TIME,
            keepalive: None,
            open_hold_time: DEFAULT_OPEN_HOLD_TIME,
            connect_retry: DEFAULT_CONNECT_RETRY,
            connect_backoff: None,
            error_wait: ErrorWait::default(),
            route_refresh: true,
            graceful_restart: None,
            jitter_seed: None,
        }
    }

    /// Whether the peer is in our AS (RFC 4271 §3: "internal peer").
    pub fn internal(&self) -> bool {
        self.local_as == self.peer_as
    }

    /// The checks [`Session::new`] makes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.local_as == 0 || self.peer_as == 0 {
            return Err(ConfigError::ZeroAs);
        }
        if self.router_id == Ipv4Addr::UNSPECIFIED {
            return Err(ConfigError::ZeroRouterId);
        }
        if self.families.is_empty() {
            return Err(ConfigError::NoFamilies);
        }
        // RFC 4271 §4.2: "The Hold Time MUST be either zero or at least three seconds."
        for (what, value) in [
            ("hold time", self.hold_time),
            ("open hold time", self.open_hold_time),
        ] {
            if value == 1 || value == 2 {
                return Err(ConfigError::HoldTime { what, value });
            }
        }
        if self.open_hold_time == 0 {
            return Err(ConfigError::HoldTime {
                what: "open hold time",
                value: 0,
            });
        }
        if self.connect_retry.is_zero() {
            return Err(ConfigError::ZeroConnectRetry);
        }
        let w = self.error_wait;
        if w.min.is_zero() || w.min > w.max {
            return Err(ConfigError::ErrorWait {
                min: w.min,
                max: w.max,
            });
        }
        if let Some(gr) = &self.graceful_restart {
            // RFC 4724 §3: "Restart Time: This is the estimated time (in seconds) it will
            // take for the BGP session to be re-established after a restart" (12 bits).
            if gr.restart_time > 4095 {
                return Err(ConfigError::RestartTime(gr.restart_time));
            }
        }
        Ok(())
    }
}

/// A [`SessionConfig`] that cannot run.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("AS number 0 is reserved (RFC 7607): set local and peer AS to real numbers")]
    ZeroAs,
    #[error(
        "router ID 0.0.0.0 is not a valid BGP identifier (RFC 6286): set a non-zero router ID"
    )]
    ZeroRouterId,
    #[error("no address family configured: give at least one (e.g. IPv4 unicast)")]
    NoFamilies,
    #[error("{what} {value}: a hold time must be 0 or at least 3 seconds (RFC 4271 §4.2)")]
    HoldTime { what: &'static str, value: u16 },
    #[error("connect retry time 0: give a positive interval (RFC 4271 suggests 120 s)")]
    ZeroConnectRetry,
    #[error("error wait {min:?}..{max:?}: the minimum must be positive and at most the maximum")]
    ErrorWait { min: Duration, max: Duration },
    #[error("graceful restart time {0}: at most 4095 seconds fit in the capability (RFC 4724 §3)")]
    RestartTime(u16),
}

/// What the session is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Start,
    Stop,
    /// ManualStop with another Cease subcode (RFC 4486 §4), e.g.
    /// [`subcode::cease::PEER_DECONFIGURED`] when the peer is removed from the configuration.
    StopWith(u8),
    Tick,
    Connected(ConnId, Direction),
    ConnectFailed,
    Closed(ConnId),
    Received(ConnId, Message),
    DecodeError(ConnId, Notification),
    UpdatesSent(u64),
    SendRefresh(Family),
}

/// What the session asks the speaker to do, or tells the RIB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Connect,
    CancelConnect,
    Send(ConnId, Message),
    Close(ConnId),
    Established(Box<Established>),
    Routes(Box<Update>),
    RefreshRequested(Family),
    Down {
        reason: Reason,
        keep_stale: Option<Duration>,
        stale_families: Vec<Family>,
    },
}

/// An established session: what was negotiated and what the peer can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Established {
    pub conn: ConnId,
    pub direction: Direction,
    /// What the codec encodes and decodes this session's UPDATEs with.
    pub negotiated: Negotiated,
    /// The peer's OPEN.
    pub open: Open,
    /// The negotiated hold time, seconds (0: no keepalives, no hold timer).
    pub hold_time: u16,
    /// The interval we send KEEPALIVEs at (`None` when the hold time is 0).
    pub keepalive: Option<Duration>,
    /// The peer is in our AS.
    pub internal: bool,
    /// The peer advertised route refresh (RFC 2918): we may send it ROUTE-REFRESH.
    pub peer_route_refresh: bool,
    /// The peer's graceful restart capability (RFC 4724 §3): its R bit, restart time and
    /// per-family F bits.
    pub peer_graceful_restart: Option<GracefulRestart>,
}

impl Established {
    /// The peer set the R bit: it restarted (RFC 4724 §3 "Restart State").
    pub fn peer_restarted(&self) -> bool {
        self.peer_graceful_restart
            .as_ref()
            .is_some_and(|gr| gr.restarting)
    }

    /// The peer set the F bit for `family`: it kept forwarding across its restart, so its
    /// stale routes may stay until its End-of-RIB (RFC 4724 §4.2: otherwise they go now).
    pub fn peer_forwarding_preserved(&self, family: Family) -> bool {
        self.peer_graceful_restart.as_ref().is_some_and(|gr| {
            gr.families
                .iter()
                .any(|f| f.family == family && f.forwarding_preserved)
        })
    }
}

/// Why a connection or a session ended, or a connect failed; for `Down` and the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The operator stopped the session (we sent Cease 6/2).
    Stopped,
    /// No message from the peer within the hold time (we sent 4/0).
    HoldTimerExpired,
    /// The peer sent this NOTIFICATION.
    NotificationReceived(Notification),
    /// We sent this NOTIFICATION: a bad OPEN, a message the codec refused, an FSM error.
    NotificationSent(Notification),
    /// The peer closed or reset the TCP connection.
    ConnectionClosed,
    /// The peer opened a new connection while the session was established: it restarted
    /// (RFC 4724 §4.2).
    PeerRestarted,
    /// A connect to the peer failed.
    ConnectFailed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Stopped => f.write_str("stopped by the operator"),
            Reason::HoldTimerExpired => f.write_str("hold timer expired"),
            Reason::NotificationReceived(n) => {
                write!(f, "NOTIFICATION {n} received")
            }
            Reason::NotificationSent(n) => write!(f, "NOTIFICATION {n} sent"),
            Reason::ConnectionClosed => f.write_str("connection closed by the peer"),
            Reason::PeerRestarted => {
                f.write_str("peer restarted (new connection while established)")
            }
            Reason::ConnectFailed => f.write_str("connect failed"),
        }
    }
}

/// Messages by type, one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub open: u64,
    pub update: u64,
    pub notification: u64,
    pub keepalive: u64,
    pub route_refresh: u64,
}

impl MessageCounts {
    pub fn total(&self) -> u64 {
        self.open + self.update + self.notification + self.keepalive + self.route_refresh
    }

    fn count(&mut self, t: MessageType, n: u64) {
        let c = match t {
            MessageType::Open => &mut self.open,
            MessageType::Update => &mut self.update,
            MessageType::Notification => &mut self.notification,
            MessageType::Keepalive => &mut self.keepalive,
            MessageType::RouteRefresh => &mut self.route_refresh,
        };
        *c += n;
    }
}

/// The session as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// When it entered `state`.
    pub since: Instant,
    /// The last thing that went wrong, and when.
    pub last_error: Option<(Instant, Reason)>,
    pub received: MessageCounts,
    pub sent: MessageCounts,
    /// How many times an established session went down.
    pub flaps: u64,
    /// The session as it was established, while it is.
    pub established: Option<Established>,
    /// When the session connects next (connect retry, or the wait after an error).
    pub next_connect: Option<Instant>,
    /// The wait after the last error (grows while errors come in a row).
    pub error_wait: Option<Duration>,
}

/// A connection's own state, from TCP up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    OpenSent,
    OpenConfirm,
    Established,
}

impl ConnState {
    fn state(self) -> State {
        match self {
            ConnState::OpenSent => State::OpenSent,
            ConnState::OpenConfirm => State::OpenConfirm,
            ConnState::Established => State::Established,
        }
    }

    /// RFC 6608 §3: the FSM error subcode for an unexpected message in this state.
    fn unexpected_subcode(self) -> u8 {
        match self {
            ConnState::OpenSent => subcode::fsm::UNEXPECTED_IN_OPEN_SENT,
            ConnState::OpenConfirm => subcode::fsm::UNEXPECTED_IN_OPEN_CONFIRM,
            ConnState::Established => subcode::fsm::UNEXPECTED_IN_ESTABLISHED,
        }
    }
}

#[derive(Clone, Debug)]
struct Conn {
    id: ConnId,
    dir: Direction,
    state: ConnState,
    /// The OPEN we sent on it.
    our_open: Open,
    /// The peer's OPEN, from OpenConfirm on.
    peer_open: Option<Open>,
    /// The negotiated hold time (the large OPEN value in OpenSent), `None` when 0.
    hold_time: Option<Duration>,
    hold_deadline: Option<Instant>,
    keepalive: Option<Duration>,
    keepalive_deadline: Option<Instant>,
    /// Set when the connection became Established.
    established: Option<Established>,
}

/// One BGP peer's session. See the module documentation.
#[derive(Clone, Debug)]
pub struct Session {
    config: SessionConfig,
    /// Started and not stopped: the session connects and accepts connections.
    started: bool,
    /// An `Output::Connect` is in flight.
    connecting: bool,
    /// When to connect next (RFC 4271 ConnectRetryTimer, or the wait after an error).
    retry_at: Option<Instant>,
    /// Connects that failed in a row (for `connect_backoff`).
    failed_connects: u32,
    /// At most two: RFC 4271 §6.8 collisions, or a peer back from a restart.
    conns: Vec<Conn>,
    /// Our R bit (RFC 4724): until our first session is established.
    restarting: bool,
    state: State,
    since: Instant,
    last_error: Option<(Instant, Reason)>,
    /// The error wait in force and when the last error was (BIRD's error wait/forget).
    error_wait: Option<Duration>,
    last_error_at: Option<Instant>,
    received: MessageCounts,
    sent: MessageCounts,
    flaps: u64,
    jitter: Jitter,
}

/// RFC 4271 §10: "The suggested default amount of jitter SHALL be determined by multiplying
/// the base value of the appropriate timer by a random factor, which is uniformly distributed
/// in the range from 0.75 to 1.0. A new random value SHOULD be picked each time the timer is
/// set." The random numbers are splitmix64's, from the configured seed.
#[derive(Clone, Debug)]
struct Jitter(Option<u64>);

impl Jitter {
    fn apply(&mut self, base: Duration) -> Duration {
        let Some(state) = &mut self.0 else {
            return base;
        };
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits as a fraction in [0, 1).
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(1.0 - 0.25 * unit)
    }
}

/// How a connection ends.
struct Ending {
    reason: Reason,
    /// The NOTIFICATION to send first.
    notify: Option<Notification>,
    /// Emit `Close` (not when the peer closed it already).
    close: bool,
    /// Counts as an error for the reconnect backoff.
    error: bool,
}

impl Session {
    /// A session in Idle. `now` is the time it starts counting "since" from.
    pub fn new(config: SessionConfig, now: Instant) -> Result<Session, ConfigError> {
        config.validate()?;
        let restarting = config.graceful_restart.is_some_and(|gr| gr.restarting);
        let jitter = Jitter(config.jitter_seed);
        Ok(Session {
            config,
            started: false,
            connecting: false,
            retry_at: None,
            failed_connects: 0,
            conns: Vec::new(),
            restarting,
            state: State::Idle,
            since: now,
            last_error: None,
            error_wait: None,
            last_error_at: None,
            received: MessageCounts::default(),
            sent: MessageCounts::default(),
            flaps: 0,
            jitter,
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The established session, if it is.
    pub fn established(&self) -> Option<&Established> {
        self.conns.iter().find_map(|c| c.established.as_ref())
    }

    /// The earliest time a timer runs out; call `handle(Input::Tick, t)` then (or earlier).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .iter()
            .flat_map(|c| [c.hold_deadline, c.keepalive_deadline])
            .chain([self.retry_at])
            .flatten()
            .min()
    }

    pub fn status(&self) -> Status {
        Status {
            state: self.state,
            since: self.since,
            last_error: self.last_error.clone(),
            received: self.received,
            sent: self.sent,
            flaps: self.flaps,
            established: self.established().cloned(),
            next_connect: self.retry_at,
            error_wait: self.error_wait,
        }
    }

    /// Fire the timers due at `now`, then handle `input`.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.fire_timers(now, &mut out);
        match input {
            Input::Tick => {}
            Input::Start => self.start(now, &mut out),
            Input::Stop => self.stop(subcode::cease::ADMINISTRATIVE_SHUTDOWN, now, &mut out),
            Input::StopWith(cease) => self.stop(cease, now, &mut out),
            Input::Connected(id, dir) => self.connected(id, dir, now, &mut out),
            Input::ConnectFailed => self.connect_failed(now),
            Input::Closed(id) => {
                if let Some(i) = self.conn_index(id) {
                    // Closed by the peer before its OPEN: with connect_backoff, a failed
                    // connect rather than an error (a peer that does not know us yet closes
                    // at once; waiting the error wait would delay the session for nothing).
                    let early = self.config.connect_backoff.is_some()
                        && self.conns[i].state == ConnState::OpenSent
                        && self.conns[i].dir == Direction::Outgoing;
                    // RFC 4271 §8.2.2 OpenSent: "If a TcpConnectionFails event (Event 18) is
                    // received, the local system: closes the BGP connection, restarts the
                    // ConnectRetryTimer, continues to listen ... and changes its state to
                    // Active." (OpenConfirm and Established go to Idle; this FSM waits in
                    // Active, see the module documentation.)
                    self.end_conn(
                        i,
                        Ending {
                            reason: Reason::ConnectionClosed,
                            notify: None,
                            close: false,
                            error: !early,
                        },
                        now,
                        &mut out,
                    );
                    if early {
                        self.last_error = Some((now, Reason::ConnectionClosed));
                        if self.retry_at.is_some() {
                            let wait = self.backoff().unwrap_or(self.config.connect_retry);
                            self.retry_at = Some(now + self.jitter.apply(wait));
                        }
                    }
                }
            }
            Input::Received(id, msg) => {
                if let Some(i) = self.conn_index(id) {
                    self.received.count(msg.kind(), 1);
                    self.received_msg(i, msg, now, &mut out);
                }
            }
            Input::DecodeError(id, notification) => {
                if let Some(i) = self.conn_index(id) {
                    // RFC 4271 §6: "When any of the conditions described here are detected, a
                    // NOTIFICATION message, with the indicated Error Code, Error Subcode, and
                    // Data fields, is sent, and the BGP connection is closed".
                    self.end_conn(
                        i,
                        Ending {
                            reason: Reason::NotificationSent(notification.clone()),
                            notify: Some(notification),
                            close: true,
                            error: true,
                        },
                        now,
                        &mut out,
                    );
                }
            }
            Input::UpdatesSent(n) => {
                self.sent.count(MessageType::Update, n);
                if let Some(c) = self
                    .conns
                    .iter_mut()
                    .find(|c| c.state == ConnState::Established)
                {
                    // RFC 4271 §8.2.2 Established: "Each time the local system sends a
                    // KEEPALIVE or UPDATE message, it restarts its KeepaliveTimer".
                    if let Some(k) = c.keepalive {
                        c.keepalive_deadline = Some(now + self.jitter.apply(k));
                    }
                }
            }
            Input::SendRefresh(family) => self.send_refresh(family, &mut out),
        }
        self.update_state(now);
        out
    }

    fn conn_index(&self, id: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| c.id == id)
    }

    fn send(&mut self, id: ConnId, msg: Message, out: &mut Vec<Output>) {
        self.sent.count(msg.kind(), 1);
        out.push(Output::Send(id, msg));
    }

    fn update_state(&mut self, now: Instant) {
        let state = self
            .conns
            .iter()
            .map(|c| c.state.state())
            .max()
            .unwrap_or(if !self.started {
                State::Idle
            } else if self.connecting {
                State::Connect
            } else {
                State::Active
            });
        if state != self.state {
            self.state = state;
            self.since = now;
        }
    }

    fn fire_timers(&mut self, now: Instant, out: &mut Vec<Output>) {
        // Each firing removes its timer or moves it past `now`, so this ends.
        loop {
            #[derive(Clone, Copy)]
            enum Due {
                Retry,
                Hold(usize),
                Keepalive(usize),
            }
            let mut due: Option<(Instant, Due)> = self.retry_at.map(|t| (t, Due::Retry));
            for (i, c) in self.conns.iter().enumerate() {
                for (t, what) in [
                    (c.hold_deadline, Due::Hold(i)),
                    (c.keepalive_deadline, Due::Keepalive(i)),
                ] {
                    if let Some(t) = t {
                        if due.is_none_or(|(d, _)| t < d) {
                            due = Some((t, what));
                        }
                    }
                }
            }
            match due {
                Some((t, what)) if t <= now => match what {
                    Due::Retry => self.retry_expired(now, out),
                    Due::Hold(i) => {
                        // RFC 4271 §8.2.2 (OpenSent, OpenConfirm, Established): "If the
                        // HoldTimer_Expires (Event 10), the local system: sends a
                        // NOTIFICATION message with the error code Hold Timer Expired, ...
                        // drops the TCP connection".
                        let n = Notification::hold_timer_expired();
                        self.end_conn(
                            i,
                            Ending {
                                reason: Reason::HoldTimerExpired,
                                notify: Some(n),
                                close: true,
                                error: true,
                            },
                            now,
                            out,
                        );
                    }
                    Due::Keepalive(i) => {
                        // RFC 4271 §8.2.2 OpenConfirm/Established: "If the KeepaliveTimer_
                        // Expires event occurs (Event 11), the local system: sends a
                        // KEEPALIVE message, [and] restarts the KeepaliveTimer".
                        let c = &mut self.conns[i];
                        c.keepalive_deadline = c.keepalive.map(|k| now + self.jitter.apply(k));
                        let id = c.id;
                        self.send(id, Message::Keepalive, out);
                    }
                },
                _ => break,
            }
        }
    }

    /// RFC 4271 §8.2.1.1 ConnectRetryTimer expiry (or the end of the error wait).
    fn retry_expired(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.retry_at = None;
        if !self.started || self.config.passive || !self.conns.is_empty() {
            return;
        }
        // §8.2.2 Connect: "In response to the ConnectRetryTimer_Expires event (Event 9), the
        // local system: drops the TCP connection, restarts the ConnectRetryTimer, ...
        // initiates a TCP connection to the other BGP peer". Active: the same, "and changes
        // its state to Connect".
        self.connect(now, out);
    }

    fn connect(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.connecting = true;
        self.retry_at = Some(now + self.jitter.apply(self.config.connect_retry));
        out.push(Output::Connect);
    }

    fn start(&mut self, now: Instant, out: &mut Vec<Output>) {
        // §8.2.2 Idle: "In this state, BGP FSM refuses all incoming BGP connections for this
        // peer. No resources are allocated to the peer." Any other state: "Any start event
        // (Events 1, 3-7) is ignored".
        if self.started {
            return;
        }
        self.started = true;
        self.error_wait = None;
        self.last_error_at = None;
        self.failed_connects = 0;
        if self.config.passive {
            // §8.2.2 Idle, ManualStart_with_PassiveTcpEstablishment: "listens for a
            // connection that may be initiated by the remote peer, and changes its state
            // to Active."
            return;
        }
        // §8.2.2 Idle, ManualStart: "initiates a TCP connection to the other BGP peer,
        // listens for a connection that may be initiated by the remote BGP peer, and changes
        // its state to Connect."
        self.connect(now, out);
    }

    fn stop(&mut self, cease: u8, now: Instant, out: &mut Vec<Output>) {
        if !self.started {
            return;
        }
        // §8.2.2, every state: "If a ManualStop event (Event 2) is issued ..., the local
        // system: sends the NOTIFICATION with a Cease, ... releases all BGP resources, drops
        // the TCP connection, ... changes its state to Idle." RFC 4486 §4: subcode
        // "Administrative Shutdown" (or what the caller names: "Peer De-configured", ...).
        self.started = false;
        self.connecting = false;
        self.retry_at = None;
        let cease = Notification::cease(cease);
        while !self.conns.is_empty() {
            self.end_conn(
                0,
                Ending {
                    reason: Reason::Stopped,
                    notify: Some(cease.clone()),
                    close: true,
                    error: false,
                },
                now,
                out,
            );
        }
    }

    fn connect_failed(&mut self, now: Instant) {
        if !self.connecting {
            return;
        }
        self.connecting = false;
        self.last_error = Some((now, Reason::ConnectFailed));
        if self.conns.is_empty() && self.started {
            // §8.2.2 Connect, TcpConnectionFails: "restarts the ConnectRetryTimer, continues
            // to listen for a connection that may be initiated by the remote BGP peer, and
            // changes its state to Active." (The DelayOpen branch; without DelayOpen the
            // RFC goes to Idle, which would refuse the peer's own connection until the next
            // automatic start.) With `connect_backoff`, sooner (see there): a refused connect
            // costs nothing, and a node that starts a moment after its peers is reached at
            // once instead of a connect retry time later.
            let wait = self.backoff().unwrap_or(self.config.connect_retry);
            self.retry_at = Some(now + self.jitter.apply(wait));
        }
    }

    /// With `connect_backoff`: counts one more failure in a row and returns the wait
    /// before the next connect.
    fn backoff(&mut self) -> Option<Duration> {
        let b = self.config.connect_backoff?;
        self.failed_connects = self.failed_connects.saturating_add(1);
        let doublings = self.failed_connects.saturating_sub(QUICK_RETRIES).min(20);
        Some(
            b.saturating_mul(1 << doublings)
                .min(self.config.connect_retry),
        )
    }

    fn connected(&mut self, id: ConnId, dir: Direction, now: Instant, out: &mut Vec<Output>) {
        if dir == Direction::Outgoing {
            self.connecting = false;
        }
        self.failed_connects = 0;
        if !self.started {
            // §8.2.2 Idle: "refuses all incoming BGP connections for this peer".
            out.push(Output::Close(id));
            return;
        }
        if self.conn_index(id).is_some() {
            return;
        }
        if let Some(est) = self
            .conns
            .iter()
            .find(|c| c.state == ConnState::Established)
        {
            if dir == Direction::Outgoing || self.helper_for(est).is_none() {
                // §6.8: "a connection collision with an existing BGP connection that is in
                // the Established state causes closing of the newly created connection."
                let n = Notification::cease(subcode::cease::CONNECTION_COLLISION_RESOLUTION);
                self.send(id, Message::Notification(n), out);
                out.push(Output::Close(id));
                return;
            }
            // RFC 4724 §4.2: "In case it does not detect the termination of the old TCP
            // session and still considers the BGP session as being established, it MUST
            // treat the subsequent open connection from the peer as an indication of the
            // termination of the old TCP session and act accordingly (when the Graceful
            // Restart Capability has been received from the peer)." It is served; its OPEN
            // ends the old session (see `open_received`). A newer one replaces an older one.
            self.close_others_than_established(out);
        } else if let Some(i) = self.conns.iter().position(|c| c.dir == dir) {
            // A second connection in the same direction: the peer gave up on its first one
            // (or it is a leftover of ours). The newer one replaces it.
            let old = self.conns.remove(i).id;
            out.push(Output::Close(old));
        }
        // §8.2.2 Connect/Active, TcpConnectionConfirmed: "stops the ConnectRetryTimer and
        // sets the ConnectRetryTimer to zero, ... sends an OPEN message to its peer, sets the
        // HoldTimer to a large value, and changes its state to OpenSent."
        self.retry_at = None;
        let hold = Duration::from_secs(u64::from(self.config.open_hold_time));
        let open = open::ours(&self.config, self.restarting);
        self.conns.push(Conn {
            id,
            dir,
            state: ConnState::OpenSent,
            our_open: open.clone(),
            peer_open: None,
            hold_time: Some(hold),
            hold_deadline: Some(now + hold),
            keepalive: None,
            keepalive_deadline: None,
            established: None,
        });
        self.send(id, Message::Open(open), out);
    }

    /// The stale time and families if this connection's session going down without a
    /// NOTIFICATION leaves the peer's routes stale: both sides advertised graceful restart and
    /// the peer listed families (RFC 4724 §4.2: "for all the address families that were
    /// previously received in the Graceful Restart Capability").
    fn helper_for(&self, c: &Conn) -> Option<(Duration, Vec<Family>)> {
        self.config.graceful_restart?;
        let est = c.established.as_ref()?;
        let gr = est.peer_graceful_restart.as_ref()?;
        let families: Vec<Family> = gr
            .families
            .iter()
            .map(|f| f.family)
            .filter(|f| est.negotiated.families.contains(f))
            .collect();
        if families.is_empty() || gr.restart_time == 0 {
            return None;
        }
        Some((Duration::from_secs(u64::from(gr.restart_time)), families))
    }

    /// End connection `i`: notify, close, `Down` if it was established, and plan the next
    /// connect when it was the last one.
    fn end_conn(&mut self, i: usize, ending: Ending, now: Instant, out: &mut Vec<Output>) {
        let id = self.conns[i].id;
        if let Some(n) = ending.notify.clone() {
            self.send(id, Message::Notification(n), out);
        }
        if ending.close {
            out.push(Output::Close(id));
        }
        if self.conns[i].established.is_some() {
            self.flaps += 1;
            // RFC 4724 §4.2: "When the Receiving Speaker detects termination of the TCP
            // session for a BGP session with a peer that has advertised the Graceful Restart
            // Capability, it MUST retain the routes received from the peer ... and MUST mark
            // them as stale". A NOTIFICATION (sent or received) ends the session for good.
            let gr_ok = match &ending.reason {
                Reason::ConnectionClosed | Reason::PeerRestarted => true,
                // The brief of this speaker: a hold timer expiry is a dead peer, as a reset
                // connection is (RFC 8538 §4 treats it so too).
                Reason::HoldTimerExpired => true,
                _ => false,
            };
            let (keep_stale, stale_families) = match gr_ok.then(|| self.helper_for(&self.conns[i]))
            {
                Some(Some((t, f))) => (Some(t), f),
                _ => (None, Vec::new()),
            };
            out.push(Output::Down {
                reason: ending.reason.clone(),
                keep_stale,
                stale_families,
            });
        }
        self.conns.remove(i);
        if ending.error || ending.reason == Reason::PeerRestarted {
            self.last_error = Some((now, ending.reason));
        }
        if !self.conns.is_empty() || !self.started {
            return;
        }
        let wait = if ending.error {
            // BIRD's "error wait time": the delay "between a protocol failure ... and
            // automatic restart"; "If consecutive errors happen, the delay is increased
            // exponentially until it reaches the maximum." RFC 4271 §8.1.1 names the idea
            // DampPeerOscillations.
            let w = self.config.error_wait;
            let wait = match (self.last_error_at, self.error_wait) {
                (Some(at), Some(prev)) if now.saturating_duration_since(at) <= w.forget => {
                    (prev * 2).min(w.max)
                }
                _ => w.min,
            };
            self.error_wait = Some(wait);
            self.last_error_at = Some(now);
            wait
        } else {
            self.config.connect_retry
        };
        if !self.config.passive && !self.connecting {
            self.retry_at = Some(now + wait);
        }
    }

    fn unexpected(&mut self, i: usize, msg: &Message, now: Instant, out: &mut Vec<Output>) {
        // RFC 6608 §3: "If a BGP speaker receives an unexpected message (e.g., OPEN message)
        // on a session in OpenSent state, it MUST send to the neighbor a NOTIFICATION message
        // with the Error Code Finite State Machine Error and the Error Subcode 'Receive
        // Unexpected Message in OpenSent State'. The Data field is a 1-octet, unsigned
        // integer that indicates the type of the unexpected message." (Likewise for
        // OpenConfirm and Established.)
        let n = Notification::new(
            ErrorCode::FsmError,
            self.conns[i].state.unexpected_subcode(),
            vec![msg.kind() as u8],
        );
        self.end_conn(
            i,
            Ending {
                reason: Reason::NotificationSent(n.clone()),
                notify: Some(n),
                close: true,
                error: true,
            },
            now,
            out,
        );
    }

    fn received_msg(&mut self, i: usize, msg: Message, now: Instant, out: &mut Vec<Output>) {
        let state = self.conns[i].state;
        match (state, msg) {
            (_, Message::Notification(n)) => {
                // §8.2.2 OpenSent/OpenConfirm/Established: "If the local system receives a
                // NOTIFICATION message (Event 24 or Event 25) ..., the local system: ...
                // drops the TCP connection, ... changes its state to Idle."
                self.end_conn(
                    i,
                    Ending {
                        reason: Reason::NotificationReceived(n),
                        notify: None,
                        close: true,
                        error: true,
                    },
                    now,
                    out,
                );
            }
            (ConnState::OpenSent, Message::Open(open)) => self.open_received(i, open, now, out),
            (ConnState::OpenConfirm, Message::Keepalive) => {
                // §8.2.2 OpenConfirm: "If the local system receives a KEEPALIVE message
                // (KeepAliveMsg (Event 26)), the local system: restarts the HoldTimer and
                // changes its state to Established."
                self.restart_hold(i, now);
                self.establish(i, now, out);
            }
            (ConnState::Established, Message::Keepalive) => {
                // §8.2.2 Established: "If the local system receives a KEEPALIVE message
                // (Event 26), the local system: restarts its HoldTimer, if the negotiated
                // HoldTime value is non-zero".
                self.restart_hold(i, now);
            }
            (ConnState::Established, Message::Update(update)) => {
                // §8.2.2 Established: "If the local system receives an UPDATE message (Event
                // 27), the local system: processes the message, restarts its HoldTimer, if
                // the negotiated HoldTime value is non-zero".
                self.restart_hold(i, now);
                out.push(Output::Routes(update));
            }
            (ConnState::Established, Message::RouteRefresh(RouteRefresh { family })) => {
                // A message from a live peer: as good as a KEEPALIVE for the hold timer.
                self.restart_hold(i, now);
                let negotiated = self.conns[i]
                    .established
                    .as_ref()
                    .is_some_and(|e| e.negotiated.families.contains(&family));
                // RFC 2918 §4: "If a BGP speaker receives from its peer a ROUTE-REFRESH
                // message with the <AFI, SAFI> that the speaker didn't advertise to the peer
                // at the session establishment time via capability advertisement, the
                // speaker shall ignore such a message."
                if self.config.route_refresh && negotiated {
                    out.push(Output::RefreshRequested(family));
                }
            }
            (_, msg) => self.unexpected(i, &msg, now, out),
        }
    }

    fn restart_hold(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        c.hold_deadline = c.hold_time.map(|h| now + h);
    }

    fn open_received(&mut self, i: usize, open: Open, now: Instant, out: &mut Vec<Output>) {
        let checked = open::check(&self.config, &open).and_then(|()| {
            let negotiated = Negotiated::new(&self.conns[i].our_open, &open);
            open::check_families(&self.conns[i].our_open, &negotiated)
        });
        if let Err(n) = checked {
            // §8.2.2 OpenSent: "If the BGP message header checking or OPEN message checking
            // detects an error (see Section 6.2) ..., the local system: sends a NOTIFICATION
            // message with the appropriate error code, ... changes its state to Idle."
            self.end_conn(
                i,
                Ending {
                    reason: Reason::NotificationSent(n.clone()),
                    notify: Some(n),
                    close: true,
                    error: true,
                },
                now,
                out,
            );
            return;
        }
        let id = self.conns[i].id;
        if let Some(j) = (0..self.conns.len()).find(|&j| j != i) {
            let other = &self.conns[j];
            match other.state {
                ConnState::Established if self.helper_for(other).is_some() => {
                    // RFC 4724 §4.2: "'Acting accordingly' in this context means that the
                    // previous TCP session MUST be closed, and the new one retained. ...
                    // Since the previous connection is considered to be reset, no
                    // NOTIFICATION message should be sent to the peer to close the old TCP
                    // session."
                    self.end_conn(
                        j,
                        Ending {
                            reason: Reason::PeerRestarted,
                            notify: None,
                            close: true,
                            error: false,
                        },
                        now,
                        out,
                    );
                }
                ConnState::Established => {
                    // §6.8: "a connection collision with an existing BGP connection that is
                    // in the Established state causes closing of the newly created
                    // connection."
                    self.collision_close(i, now, out);
                    return;
                }
                // §6.8: "Upon receipt of an OPEN message, the local system MUST examine all
                // of its connections that are in the OpenConfirm state. ... the local
                // system performs the following collision resolution procedure" that keeps
                // the connection opened by the higher BGP identifier; RFC 6286 §2.3: with
                // equal identifiers, "the connection initiated by the BGP speaker with the
                // larger AS number is preserved."
                //
                // And OpenSent: "A BGP speaker MAY also examine connections in an OpenSent
                // state if it knows the BGP Identifier of the peer by means outside of the
                // protocol." This OPEN tells it (the same peer, on the other connection).
                // Resolving only later let this side go Established on the connection the
                // peer had already chosen to close (it resolved first, by the same rule),
                // and then close the peer's choice as "newer than Established": both died
                // and the session came back a connect retry later (seen in the 100-node
                // reflector bench and once against FRR).
                ConnState::OpenConfirm | ConnState::OpenSent => {
                    let ours = (u32::from(self.config.router_id), self.config.local_as);
                    let theirs = (u32::from(open.router_id), open.asn());
                    let keep = if ours > theirs {
                        Direction::Outgoing
                    } else {
                        Direction::Incoming
                    };
                    if self.conns[i].dir == keep {
                        // §6.8 2): "the local system closes the BGP connection that already
                        // exists (the one that is already in the OpenConfirm state), and
                        // accepts the BGP connection initiated by the remote system." (Or
                        // the one in OpenSent, whose OPEN has not come.)
                        self.collision_close(j, now, out);
                    } else {
                        // §6.8 3): "Otherwise, the local system closes the newly created BGP
                        // connection (the one associated with the newly received OPEN
                        // message), and continues to use the existing one".
                        self.collision_close(i, now, out);
                        return;
                    }
                }
            }
        }
        // Closing the other connection may have moved this one in the list.
        let Some(i) = self.conn_index(id) else {
            return;
        };
        // §8.2.2 OpenSent, BGPOpen: "sets the BGP ConnectRetryTimer to zero, sends a
        // KEEPALIVE message, and sets a KeepaliveTimer ..., sets the HoldTimer according to
        // the negotiated value (see Section 4.2), changes its state to OpenConfirm." And:
        // "If the negotiated hold time value is zero, then the HoldTimer and KeepaliveTimer
        // are not started."
        let hold = open::hold_time(&self.config, &open);
        let c = &mut self.conns[i];
        if hold == 0 {
            c.hold_time = None;
            c.keepalive = None;
        } else {
            c.hold_time = Some(Duration::from_secs(u64::from(hold)));
            c.keepalive = Some(open::keepalive_interval(&self.config, hold));
        }
        c.hold_deadline = c.hold_time.map(|h| now + h);
        c.keepalive_deadline = c.keepalive.map(|k| now + self.jitter.apply(k));
        c.peer_open = Some(open);
        c.state = ConnState::OpenConfirm;
        let id = c.id;
        self.send(id, Message::Keepalive, out);
    }

    /// Close, without a word, the connections not established (a restart candidate replaced
    /// by a newer one).
    fn close_others_than_established(&mut self, out: &mut Vec<Output>) {
        self.conns.retain(|c| {
            let keep = c.state == ConnState::Established;
            if !keep {
                out.push(Output::Close(c.id));
            }
            keep
        });
    }

    /// §6.8: "the local system closes ... by sending the NOTIFICATION message with the Error
    /// Code Cease", RFC 4486 subcode "Connection Collision Resolution". Not an error of the
    /// session: the other connection goes on.
    fn collision_close(&mut self, i: usize, now: Instant, out: &mut Vec<Output>) {
        let n = Notification::cease(subcode::cease::CONNECTION_COLLISION_RESOLUTION);
        self.end_conn(
            i,
            Ending {
                reason: Reason::NotificationSent(n.clone()),
                notify: Some(n),
                close: true,
                error: false,
            },
            now,
            out,
        );
    }

    fn establish(&mut self, i: usize, now: Instant, out: &mut Vec<Output>) {
        let c = &mut self.conns[i];
        let Some(open) = c.peer_open.clone() else {
            return;
        };
        let est = Established {
            conn: c.id,
            direction: c.dir,
            negotiated: Negotiated::new(&c.our_open, &open),
            hold_time: c.hold_time.map_or(0, |h| h.as_secs() as u16),
            keepalive: c.keepalive,
            internal: self.config.internal(),
            peer_route_refresh: open::peer_route_refresh(&open),
            peer_graceful_restart: open::peer_graceful_restart(&open).cloned(),
            open,
        };
        c.state = ConnState::Established;
        c.established = Some(est.clone());
        out.push(Output::Established(Box::new(est)));
        // §6.8: "a connection collision with an existing BGP connection that is in the
        // Established state causes closing of the newly created connection": the other one,
        // still in OpenSent, whose OPEN has not come.
        let others: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|c| c.state != ConnState::Established)
            .map(|c| c.id)
            .collect();
        for other in others {
            if let Some(j) = self.conn_index(other) {
                self.collision_close(j, now, out);
            }
        }
        if self.connecting {
            self.connecting = false;
            out.push(Output::CancelConnect);
        }
        // RFC 4724 §4.2: the R bit only "unless the Receiving Speaker has restarted": once a
        // session is up again, a later drop is no longer part of that restart.
        self.restarting = false;
    }

    fn send_refresh(&mut self, family: Family, out: &mut Vec<Output>) {
        let Some(est) = self.established() else {
            return;
        };
        // RFC 2918 §3: "A BGP speaker may send a ROUTE-REFRESH message to its peer only if
        // it has received the Route Refresh Capability from its peer."
        if est.peer_route_refresh && est.negotiated.families.contains(&family) {
            let id = est.conn;
            self.send(id, Message::RouteRefresh(RouteRefresh { family }), out);
        }
    }
}
