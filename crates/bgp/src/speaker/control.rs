//! The control socket of `twill bgp serve`: a unix stream socket (the config's
//! `controlSocket`). A client writes one JSON request and a newline, e.g.
//! `{"request":"neighbors"}`, and reads one JSON reply until the speaker closes; an error
//! comes back as `{"error":"..."}`. `twill bgp neighbors` and `twill bgp rib` use
//! [`query`]; `socat - UNIX-CONNECT:/run/twill/bgp.sock` works too.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::kernel::KernelStats;
use super::tcp::Md5Counters;

/// What a client asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum Request {
    Neighbors,
    Rib,
}

/// A peer's relationship to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    Ebgp,
    Ibgp,
    /// An iBGP peer we reflect routes to (RFC 4456).
    IbgpRrClient,
}

impl PeerKind {
    pub fn label(self) -> &'static str {
        match self {
            PeerKind::Ebgp => "eBGP",
            PeerKind::Ibgp => "iBGP",
            PeerKind::IbgpRrClient => "iBGP rr-client",
        }
    }
}

/// Messages of one direction, by type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCounts {
    pub open: u64,
    pub update: u64,
    pub notification: u64,
    pub keepalive: u64,
    pub route_refresh: u64,
}

/// One neighbour, as `twill bgp neighbors` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Neighbor {
    /// As configured: IP or IP:PORT.
    pub peer: String,
    #[serde(rename = "as")]
    pub asn: u32,
    pub kind: PeerKind,
    /// Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
    /// Seconds in that state.
    pub since_seconds: u64,
    /// The last error, or what is going on.
    pub info: String,
    /// A TCP MD5 key is configured for this peer.
    pub md5: bool,
    /// The peer cannot run: e.g. its MD5 key could not be set (fail closed).
    pub failed: Option<String>,
    /// The peer's BGP identifier, once established.
    pub router_id: Option<String>,
    pub prefixes_received: u64,
    pub received: MessageCounts,
    pub sent: MessageCounts,
    /// Established sessions that went down.
    pub flaps: u64,
    /// Its routes are kept stale (graceful restart helper) for this many more seconds.
    pub stale_seconds_left: Option<u64>,
    /// It has sent End-of-RIB since it came up.
    pub end_of_rib: bool,
    /// The peer's `tag` in the configuration (twilld: its peer type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// The reply to [`Request::Neighbors`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NeighborsReply {
    pub router_id: String,
    #[serde(rename = "as")]
    pub asn: u32,
    pub neighbors: Vec<Neighbor>,
    /// The namespace's TCP MD5 drop counters (Linux counts them per namespace, not per peer).
    pub md5_counters: Md5Counters,
    pub kernel: KernelStats,
    /// Adopted kernel routes still waiting for the peers' End-of-RIB (graceful restart).
    pub adopted_pending: u64,
}

/// One path of a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RibPath {
    /// The peer it came from; None: originated here.
    pub peer: Option<String>,
    pub next_hop: Option<IpAddr>,
    pub as_path: String,
    pub origin: String,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    pub best: bool,
    pub multipath: bool,
    pub stale: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RibRoute {
    pub prefix: IpNet,
    pub paths: Vec<RibPath>,
}

/// The reply to [`Request::Rib`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RibReply {
    pub routes: Vec<RibRoute>,
    pub kernel: KernelStats,
}

/// Why a control query failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the BGP speaker at {path}: {cause} (is `twill bgp serve` running? its config's controlSocket names the path; pass it with --socket)")]
    Connect { path: String, cause: std::io::Error },
    #[error("talking to the BGP speaker at {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("the BGP speaker at {path} answered: {message}")]
    Speaker { path: String, message: String },
    #[error("the BGP speaker at {path} sent a reply this twill does not understand ({message}); are the CLI and the speaker the same version?")]
    Reply { path: String, message: String },
}

/// Asks the speaker at `path` and decodes its reply.
pub fn query<T: serde::de::DeserializeOwned>(path: &Path, req: Request) -> Result<T, ControlError> {
    let p = path.display().to_string();
    let mut s = UnixStream::connect(path).map_err(|cause| ControlError::Connect {
        path: p.clone(),
        cause,
    })?;
    let io = |cause| ControlError::Io {
        path: p.clone(),
        cause,
    };
    let mut line = serde_json::to_vec(&req).expect("a request serialises");
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|cause| ControlError::Io {
        path: p.clone(),
        cause,
    })?;
    let v: serde_json::Value = serde_json::from_slice(&buf).map_err(|e| ControlError::Reply {
        path: p.clone(),
        message: e.to_string(),
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(ControlError::Speaker {
            path: p,
            message: e.to_owned(),
        });
    }
    serde_json::from_value(v).map_err(|e| ControlError::Reply {
        path: p,
        message: e.to_string(),
    })
}

/// One connected control client, on the speaker's side.
#[derive(Debug)]
pub struct Client {
    pub stream: UnixStream,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub written: usize,
    /// The request was read and the reply queued.
    pub answered: bool,
}

/// The most a request may be (it is one short line).
pub const MAX_REQUEST: usize = 4096;

impl Client {
    pub fn new(stream: UnixStream) -> Client {
        Client {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            answered: false,
        }
    }

    /// Reads what is there. Some(request) once a whole line came in; Err(reply) for a
    /// request that is bad or too long (the reply is the error to send).
    pub fn read(&mut self) -> std::io::Result<Option<Result<Request, String>>> {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    if self.input.is_empty() {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    break;
                }
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    if self.input.contains(&b'\n') || self.input.len() > MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let line = self.input.split(|b| *b == b'\n').next().unwrap_or_default();
        Ok(Some(serde_json::from_slice::<Request>(line).map_err(|e| {
            format!("bad request ({e}); send {{\"request\":\"neighbors\"}} or {{\"request\":\"rib\"}} and a newline")
        })))
    }

    /// Queues the reply: its JSON, or `{"error": ...}`.
    pub fn answer(&mut self, reply: Result<Vec<u8>, String>) {
        self.output = match reply {
            Ok(v) => v,
            Err(e) => serde_json::to_vec(&serde_json::json!({ "error": e })).unwrap_or_default(),
        };
        self.output.push(b'\n');
        self.answered = true;
    }

    /// Writes what it can; true when all of the reply is out.
    pub fn flush(&mut self) -> std::io::Result<bool> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(self.answered)
    }
}
