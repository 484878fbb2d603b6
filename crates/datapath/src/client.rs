//! The control client (twilld's udp backend, the bench, the crate's tests): connect to a
//! running `twill-datapath`'s socket, say Hello (and receive the dups of its fds), hand it
//! tables, read its stats, shut it down. Blocking, with one timeout for every step.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ctl::{CtlError, Reply, Request, PROTO};
use crate::seqpacket;
use crate::stats::Stats;
use crate::table::{LocalNode, Peer};

/// The control socket's file name in twilld's state dir, where twilld's udp backend starts
/// the datapath (`--ctl <state-dir>/datapath.sock`) and where `twill lab trace` asks it.
pub const SOCKET_NAME: &str = "datapath.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no datapath answers at {path} after {waited:?}: {source}; is twill-datapath running \
         with --ctl {path}?"
    )]
    Connect {
        path: PathBuf,
        waited: Duration,
        #[source]
        source: io::Error,
    },
    #[error("the datapath's control socket: {0} (did the datapath exit? see its log)")]
    Io(#[source] io::Error),
    #[error("the datapath closed the control connection")]
    Closed,
    #[error("the datapath's reply does not decode: {0}; run a matching twilld and datapath")]
    Decode(#[from] CtlError),
    #[error("the datapath refused: {0}")]
    Refused(String),
    #[error("the datapath answered {got} to {asked}")]
    Unexpected { asked: &'static str, got: String },
}

/// What the datapath said in `HelloAck`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub proto: u16,
    pub pid: u32,
    pub generation: u64,
    pub tun: String,
    pub queues: u16,
    pub build: String,
}

/// A connection to the datapath's control socket.
pub struct Client {
    fd: OwnedFd,
}

impl Client {
    /// Connects (retrying while the socket is missing or refuses, until `timeout`), says
    /// Hello, and returns the datapath's answer with its fds: `queues` TUN queue dups, then
    /// `queues` receive socket dups (the order `--inherit-fds` takes).
    pub fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Client, Hello, Vec<OwnedFd>), ClientError> {
        let start = Instant::now();
        let fd = loop {
            match seqpacket::connect(path) {
                Ok(fd) => break fd,
                Err(e)
                    if start.elapsed() < timeout
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::EAGAIN)
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        path: path.to_owned(),
                        waited: start.elapsed(),
                        source,
                    })
                }
            }
        };
        seqpacket::set_timeout(
            fd.as_raw_fd(),
            Some(timeout.max(Duration::from_millis(100))),
        )
        .map_err(ClientError::Io)?;
        let c = Client { fd };
        let (reply, fds) = c.call(&Request::Hello { proto: PROTO })?;
        match reply {
            Reply::HelloAck {
                proto,
                pid,
                generation,
                tun,
                queues,
                build,
            } => Ok((
                c,
                Hello {
                    proto,
                    pid,
                    generation,
                    tun,
                    queues,
                    build,
                },
                fds,
            )),
            other => Err(unexpected("Hello", other)),
        }
    }

    fn call(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        seqpacket::send(self.fd.as_raw_fd(), &req.encode(), &[]).map_err(ClientError::Io)?;
        let (msg, fds) = seqpacket::recv(self.fd.as_raw_fd())
            .map_err(ClientError::Io)?
            .ok_or(ClientError::Closed)?;
        Ok((Reply::decode(&msg)?, fds))
    }

    /// Hands over a table; returns once the datapath forwards with it.
    pub fn table(
        &self,
        generation: u64,
        local: LocalNode,
        peers: Vec<Peer>,
    ) -> Result<(), ClientError> {
        let (reply, _) = self.call(&Request::Table {
            generation,
            local,
            peers,
        })?;
        match reply {
            Reply::TableAck { generation: g } if g == generation => Ok(()),
            other => Err(unexpected("Table", other)),
        }
    }

    /// Everything the datapath counted.
    pub fn stats(&self) -> Result<Stats, ClientError> {
        match self.call(&Request::Stats)?.0 {
            Reply::Stats(s) => Ok(s),
            other => Err(unexpected("Stats", other)),
        }
    }

    /// The table the datapath forwards with: (generation, local node, peers); generation 0
    /// before the first table.
    pub fn get_table(&self) -> Result<(u64, LocalNode, Vec<Peer>), ClientError> {
        match self.call(&Request::GetTable)?.0 {
            Reply::Table {
                generation,
                local,
                peers,
            } => Ok((generation, local, peers)),
            other => Err(unexpected("GetTable", other)),
        }
    }

    /// Stops the datapath (with `remove_device`, the TUN stops being persistent and goes with
    /// its last fd); returns when it closed the connection (it exits right after).
    pub fn shutdown(self, remove_device: bool) -> Result<(), ClientError> {
        let fd = self.fd.as_raw_fd();
        seqpacket::send(fd, &Request::Shutdown { remove_device }.encode(), &[])
            .map_err(ClientError::Io)?;
        match seqpacket::recv(fd) {
            Ok(None) => Ok(()),
            Ok(Some((m, _))) => Err(unexpected("Shutdown", Reply::decode(&m)?)),
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => Ok(()),
            Err(e) => Err(ClientError::Io(e)),
        }
    }
}

fn unexpected(asked: &'static str, got: Reply) -> ClientError {
    match got {
        Reply::Error(e) => ClientError::Refused(e),
        other => ClientError::Unexpected {
            asked,
            got: format!("{other:?}"),
        },
    }
}
