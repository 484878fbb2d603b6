//! The speaker embedded in another program (twilld's `bgp` backend): the same event loop,
//! kernel writer and graceful restart as `twill bgp serve`, on a thread of its own, driven
//! by method calls instead of a config file and signals.
//!
//! ```text
//! let sp = Embedded::spawn(cfg, Options { control_socket: true, restarted: false,
//!                                         notify: Some(Box::new(|n: Notice| wake())) })?;
//! sp.set_peers(vec![config::Peer { .. }, ..])?;     // add / remove / change while running
//! sp.set_originated(vec![(block, vec![Community(..)]), ..])?;   // replaces the set
//! let st: Status = sp.status()?;                   // per peer: state, since, counts, ...
//! sp.stop(graceful)?;                              // or drop it (= not graceful)
//! ```
//!
//! - [`Embedded::spawn`] opens everything in the calling thread (so in the calling thread's
//!   network namespace, and every error comes back here): the BGP listener, the kernel
//!   writer (routes of protocol [`super::kernel::RTPROT_BGP`] in `cfg.kernel.table`), the
//!   adoption of the routes a previous run left (graceful restart, restarting side), and,
//!   with [`Options::control_socket`], the control socket at `cfg.controlSocket`, so
//!   `twill bgp neighbors|rib --socket PATH` works against it. Then the loop runs on its own
//!   thread, `twill-bgp`. No signal is touched: the embedder owns them.
//! - `cfg.peers` and `cfg.originate` are the starting point; [`Embedded::set_peers`] and
//!   [`Embedded::set_originated`] replace them while running. set_peers: a peer no longer
//!   listed gets Cease 6/3 (peer de-configured) and its routes are withdrawn from the kernel
//!   and from the other peers; a new one is added and started (connects at once unless
//!   passive); one whose settings changed is reset (Cease 6/6, other configuration change)
//!   and started again; one that is the same (only its `tag` or `maxRestartTime` may
//!   differ) keeps its session. Peers are keyed by IP address. set_originated: only the
//!   difference is sent (withdrawals, and announcements of new prefixes or of prefixes
//!   whose communities changed).
//! - Commands go over a channel and wake the loop through its eventfd; they are carried out
//!   in the order sent. [`Embedded::status`] and [`Embedded::neighbors`] wait for the loop's
//!   answer (a turn: well under a millisecond unless a large feed is being decoded).
//! - [`Options::notify`] is called on the speaker's thread, after each loop turn in which
//!   something changed: [`Notice::Session`] for each peer whose state changed, one
//!   [`Notice::Routes`] when routes changed (kernel or advertised), and
//!   [`Notice::Stopped`] once at the end. It must return quickly (wake something, send on a
//!   channel); it must not call back into the [`Embedded`] (status would wait for itself).
//! - [`Embedded::stop`]: graceful closes every connection without a NOTIFICATION and leaves
//!   the kernel routes (peers with graceful restart keep ours for our restart time; a
//!   restarted speaker adopts them); not graceful sends Cease 6/2 to every peer and removes
//!   the routes we installed. Dropping an [`Embedded`] stops it, not graceful. A SIGKILL of
//!   the whole process needs nothing: the kernel closes the sockets without NOTIFICATION.
//! - [`Options::restarted`]: the embedder knows it ran before (its state directory says so)
//!   even when no route of ours is in the kernel (a node that learned nothing): the OPENs
//!   then carry the R and F bits, so helpers keep our routes until our End-of-RIB.

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use ipnet::IpNet;

use super::control::{NeighborsReply, PeerKind};
use super::kernel::KernelStats;
use super::poll::Waker;
use super::{Setup, Speaker, SpeakerError};
use crate::config::{self, Config, PeerAddress};
use crate::fsm::State;
use crate::packet::Community;

/// The embedder's callback ([`Options::notify`]).
pub type Notify = Box<dyn Fn(Notice) + Send>;

/// What the speaker tells its embedder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A peer's session is now in `state`.
    Session { peer: PeerAddress, state: State },
    /// Routes changed: in the kernel, or what we advertise.
    Routes,
    /// The speaker stopped: asked to, or because of `error`.
    Stopped { error: Option<String> },
}

/// How [`Embedded::spawn`] runs the speaker.
#[derive(Default)]
pub struct Options {
    /// Answer on `cfg.controlSocket` (`twill bgp neighbors|rib --socket PATH`).
    pub control_socket: bool,
    /// The embedder ran before: announce graceful restart's R and F bits even if no route
    /// of ours is found in the kernel.
    pub restarted: bool,
    pub notify: Option<Notify>,
}

/// One peer as [`Embedded::status`] reports it: what twilld turns into a RoutingPeerStatus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: PeerAddress,
    pub asn: u32,
    pub kind: PeerKind,
    /// The `tag` it was configured with.
    pub tag: Option<String>,
    pub state: State,
    /// When it entered `state` (wall clock).
    pub since: SystemTime,
    /// What `twill bgp neighbors` shows in INFO: the prefix count when established, else
    /// why not.
    pub info: String,
    /// The last error or reason the session ended, in words ("hold timer expired",
    /// "NOTIFICATION 6/2 ... received", "connect to ...: Connection refused").
    pub last_error: Option<String>,
    /// The peer cannot run (e.g. its MD5 key could not be set); `info` says why.
    pub failed: bool,
    /// The peer's BGP identifier while established.
    pub router_id: Option<Ipv4Addr>,
    /// Its routes in our RIB (accepted by import policy, stale ones included).
    pub prefixes_received: u64,
    /// Prefixes it has from us (its Adj-RIB-Out).
    pub prefixes_advertised: u64,
    /// Its routes are kept stale (graceful restart helper) this many more seconds.
    pub stale_seconds_left: Option<u64>,
    /// It sent End-of-RIB since the session came up.
    pub end_of_rib: bool,
}

/// The whole speaker's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    pub peers: Vec<PeerStatus>,
    pub kernel: KernelStats,
    /// Adopted kernel routes still waiting for the peers' End-of-RIB (graceful restart).
    pub adopted_pending: u64,
}

pub(crate) enum Command {
    SetPeers(Vec<config::Peer>),
    SetOriginated(Vec<(IpNet, Vec<Community>)>),
    Status(mpsc::Sender<Status>),
    Neighbors(mpsc::Sender<NeighborsReply>),
    Stop { graceful: bool },
}

/// Why a call on an [`Embedded`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("BGP peers: {0}")]
    Invalid(String),
    #[error("the BGP speaker has stopped{}; spawn a new one", .0.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Stopped(Option<String>),
}

/// A speaker running on its own thread. See the module documentation.
pub struct Embedded {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<Result<(), SpeakerError>>>,
    /// The configuration without its peers: set_peers checks the new list against it.
    base: Config,
}

impl Embedded {
    /// Opens everything in the calling thread's namespace and starts the loop's thread.
    pub fn spawn(mut cfg: Config, opts: Options) -> Result<Embedded, SpeakerError> {
        cfg.validate()
            .map_err(|message| SpeakerError::Config { message })?;
        config::read_password_files(&mut cfg.peers)
            .map_err(|message| SpeakerError::Config { message })?;
        let (tx, rx) = mpsc::channel();
        let mut base = cfg.clone();
        base.peers.clear();
        base.originate.clear();
        let speaker = Speaker::open(
            cfg,
            Setup {
                signals: false,
                control: opts.control_socket,
                restarted: opts.restarted,
                commands: Some(rx),
                notify: opts.notify,
            },
        )?;
        let waker = speaker.waker.clone();
        let thread = std::thread::Builder::new()
            .name("twill-bgp".into())
            .spawn(move || speaker.run())
            .map_err(|cause| SpeakerError::Io {
                what: "start the BGP speaker's thread".into(),
                cause,
            })?;
        Ok(Embedded {
            tx,
            waker,
            thread: Some(thread),
            base,
        })
    }

    fn send(&self, cmd: Command) -> Result<(), EmbedError> {
        self.tx.send(cmd).map_err(|_| EmbedError::Stopped(None))?;
        self.waker.wake();
        Ok(())
    }

    /// The peers from now on (see the module documentation). A list that would not pass
    /// as a config file's `peers` is refused whole, and nothing changes.
    pub fn set_peers(&self, mut peers: Vec<config::Peer>) -> Result<(), EmbedError> {
        let mut check = self.base.clone();
        check.peers = peers.clone();
        check.validate().map_err(EmbedError::Invalid)?;
        config::read_password_files(&mut peers).map_err(EmbedError::Invalid)?;
        self.send(Command::SetPeers(peers))
    }

    /// What this speaker announces from now on, each prefix with its communities.
    pub fn set_originated(&self, prefixes: Vec<(IpNet, Vec<Community>)>) -> Result<(), EmbedError> {
        if let Some((p, _)) = prefixes.iter().find(|(p, _)| p.trunc() != *p) {
            return Err(EmbedError::Invalid(format!(
                "originated prefix {p} has host bits set; announce {} instead",
                p.trunc()
            )));
        }
        self.send(Command::SetOriginated(prefixes))
    }

    /// Every peer's state and counts, from the loop.
    pub fn status(&self) -> Result<Status, EmbedError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Status(tx))?;
        rx.recv().map_err(|_| EmbedError::Stopped(None))
    }

    /// What `twill bgp neighbors -o json` shows, without the control socket.
    pub fn neighbors(&self) -> Result<NeighborsReply, EmbedError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Neighbors(tx))?;
        rx.recv().map_err(|_| EmbedError::Stopped(None))
    }

    /// Whether the loop still runs (it ends only when stopped or on an error).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the speaker and waits for it: `graceful` as the module documentation says.
    /// Returns the error the loop ended with, if it ended on its own.
    pub fn stop(mut self, graceful: bool) -> Result<(), SpeakerError> {
        self.stop_inner(graceful)
    }

    fn stop_inner(&mut self, graceful: bool) -> Result<(), SpeakerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.send(Command::Stop { graceful });
        match thread.join() {
            Ok(r) => r,
            Err(_) => Err(SpeakerError::Io {
                what: "the BGP speaker's thread".into(),
                cause: std::io::Error::other("it panicked"),
            }),
        }
    }
}

impl Drop for Embedded {
    /// Not graceful: Cease to every peer, our kernel routes removed.
    fn drop(&mut self) {
        let _ = self.stop_inner(false);
    }
}
