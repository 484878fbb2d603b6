//! The control server: an `AF_UNIX SOCK_SEQPACKET` listener at `--ctl PATH` (mode 0600, and
//! root only by `SO_PEERCRED`), one thread per connection, so a second client (the bench, a
//! restarted twilld) is served beside the first and adopts the datapath with `Hello` again.
//!
//! - `Hello{proto}` → `HelloAck{proto, pid, generation, tun, queues, build}` carrying, as
//!   `SCM_RIGHTS`, dups of the TUN queue fds and then of the receive socket fds (`queues` of
//!   each, in worker order): the fds a respawned datapath takes with `--inherit-fds`, in that
//!   order. A proto other than [`PROTO`] gets `Error` (and no fds).
//! - `Table{generation, local, peers}` → the `PeerTable` is built on this thread (off the
//!   hot path), published, then `TableAck{generation}`; a table `PeerTable::new` refuses gets
//!   `Error` naming why, and the old table stays.
//! - `Stats` → `Stats` (the ledger's snapshot).
//! - `GetTable` → `Table` (the table the workers forward with, as it was handed over).
//! - `Shutdown{remove_device}`: the workers stop; with `remove_device` the TUN's persist flag
//!   is cleared (the device goes when the last fd holder closes it); the process exits 0 and
//!   the connection closes (EOF is the acknowledgement).
//!
//! A client going away never stops the datapath: it keeps forwarding with its last table.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::ctl::{Reply, Request, PROTO};
use crate::seqpacket;
use crate::table::PeerTable;
use crate::worker::{Shared, Waker};

/// What the server needs to answer.
pub struct Server {
    pub shared: Arc<Shared>,
    pub tun: String,
    /// The TUN queue fds, then the receive socket fds (HelloAck's order).
    pub fds: Vec<RawFd>,
    pub queues: u16,
    /// Woken when the workers must stop.
    pub wakers: Vec<Arc<Waker>>,
    /// Set by `Shutdown`: `Some(remove_device)`.
    pub shutdown: Mutex<Option<bool>>,
    /// Wakes the accept loop on `Shutdown`.
    pub accept_waker: Waker,
    /// Serialises Table requests from several clients.
    table_lock: Mutex<()>,
}

/// The build string in HelloAck.
pub const BUILD: &str = concat!("twill-datapath ", env!("CARGO_PKG_VERSION"));

impl Server {
    pub fn new(
        shared: Arc<Shared>,
        tun: String,
        fds: Vec<RawFd>,
        queues: u16,
        wakers: Vec<Arc<Waker>>,
    ) -> io::Result<Server> {
        Ok(Server {
            shared,
            tun,
            fds,
            queues,
            wakers,
            shutdown: Mutex::new(None),
            accept_waker: Waker::new()?,
            table_lock: Mutex::new(()),
        })
    }

    /// Serves `listener` until a `Shutdown`; returns its `remove_device`.
    pub fn serve(self: &Arc<Self>, listener: &OwnedFd) -> io::Result<bool> {
        loop {
            if let Some(remove) = *self.shutdown.lock().unwrap_or_else(|e| e.into_inner()) {
                return Ok(remove);
            }
            let mut fds = [
                libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.accept_waker.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: a valid pollfd array.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents & libc::POLLIN == 0 {
                continue;
            }
            let conn = seqpacket::accept(listener.as_raw_fd())?;
            let me = self.clone();
            std::thread::Builder::new()
                .name("twdp-ctl".into())
                .spawn(move || me.connection(conn))?;
        }
    }

    fn connection(&self, conn: OwnedFd) {
        let fd = conn.as_raw_fd();
        match seqpacket::peer_cred(fd) {
            Ok((_, 0)) => {}
            Ok((pid, uid)) => {
                let msg = format!(
                    "the datapath's control socket is root only; pid {pid} runs as uid {uid}: \
                     run the client as root"
                );
                let _ = seqpacket::send(fd, &Reply::Error(msg).encode(), &[]);
                return;
            }
            Err(e) => {
                eprintln!("twill-datapath: SO_PEERCRED on a control connection: {e}");
                return;
            }
        }
        loop {
            let msg = match seqpacket::recv(fd) {
                Ok(Some((m, _))) => m,
                Ok(None) => return, // the client went: keep forwarding
                Err(e) => {
                    eprintln!("twill-datapath: control connection: {e}");
                    return;
                }
            };
            let (reply, fds): (Reply, &[RawFd]) = match Request::decode(&msg) {
                Err(e) => (Reply::Error(format!("bad request: {e}")), &[]),
                Ok(Request::Hello { proto }) if proto != PROTO => (
                    Reply::Error(format!(
                        "this datapath speaks ctl proto {PROTO}, the client {proto}: stop it \
                         (Shutdown) and start a matching one"
                    )),
                    &[],
                ),
                Ok(Request::Hello { .. }) => (
                    Reply::HelloAck {
                        proto: PROTO,
                        pid: std::process::id(),
                        generation: self.generation(),
                        tun: self.tun.clone(),
                        queues: self.queues,
                        build: BUILD.to_owned(),
                    },
                    &self.fds,
                ),
                Ok(Request::Table {
                    generation,
                    local,
                    peers,
                }) => {
                    let _g = self.table_lock.lock().unwrap_or_else(|e| e.into_inner());
                    match PeerTable::new(generation, local, peers) {
                        Ok(t) => {
                            self.shared.table.publish(Some(t));
                            for w in &self.wakers {
                                w.wake();
                            }
                            (Reply::TableAck { generation }, &[])
                        }
                        Err(e) => (
                            Reply::Error(format!("table generation {generation} refused: {e}")),
                            &[],
                        ),
                    }
                }
                Ok(Request::Stats) => (Reply::Stats(self.shared.ledger.snapshot()), &[]),
                Ok(Request::GetTable) => (self.table_reply(), &[]),
                Ok(Request::Shutdown { remove_device }) => {
                    *self.shutdown.lock().unwrap_or_else(|e| e.into_inner()) = Some(remove_device);
                    self.shared.stop.store(true, Ordering::Relaxed);
                    for w in &self.wakers {
                        w.wake();
                    }
                    self.accept_waker.wake();
                    // The connection stays open until the process exits: EOF is the ack.
                    std::mem::forget(conn);
                    return;
                }
            };
            if let Err(e) = seqpacket::send(fd, &reply.encode(), fds) {
                eprintln!("twill-datapath: control reply: {e}");
                return;
            }
        }
    }

    /// The table in use, as `Reply::Table`; before the first one, generation 0 and nothing.
    fn table_reply(&self) -> Reply {
        match self.shared.table.load().as_ref().as_ref() {
            Some(t) => Reply::Table {
                generation: t.generation(),
                local: t.local().clone(),
                peers: t.peers().to_vec(),
            },
            None => Reply::Table {
                generation: 0,
                local: crate::table::LocalNode {
                    node_ip: std::net::Ipv4Addr::UNSPECIFIED,
                    blocks: Vec::new(),
                },
                peers: Vec::new(),
            },
        }
    }

    fn generation(&self) -> u64 {
        self.shared
            .table
            .load()
            .as_ref()
            .as_ref()
            .map_or(0, |t| t.generation())
    }
}

/// Binds the control socket at `path` (see [`seqpacket::listen`]).
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    seqpacket::listen(path)
}
