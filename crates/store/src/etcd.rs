//! etcd v3 through its JSON gateway (HTTP/1.1, `https://` with rustls), without a gRPC
//! stack. Pure parts: [`base64`], [`proto`] (bodies), [`http`] (framing); I/O edges:
//! [`transport`] (sockets, TLS) and this module (endpoint failover, the watch thread).
//!
//! Every call tries the endpoint that answered last, then the others in turn: a refused
//! connection, a timeout or a member without a leader moves on to the next one. Idle
//! connections are kept for reuse and dropped on any failure, so a restarted etcd is
//! reached again on the next call.

pub mod base64;
pub mod http;
pub mod proto;
pub mod transport;

use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Event, KeyRange, KeyValue, LeaseId, Result, Revision, Store, StoreError, Watch};
use proto::{ErrorClass, WatchMessage};
use transport::{Endpoint, Stream};

/// Where etcd is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port` or `https://host:port`, all of one cluster.
    pub endpoints: Vec<String>,
    /// The CA that signed the servers' certificates; required for `https://`.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Bound on connecting, and on each read or write of a request while the cluster
    /// answers (see [`EtcdStore::patience`] for when it does not).
    pub timeout: Duration,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout: Duration::from_secs(2),
        }
    }
}

/// How many idle connections to keep per endpoint.
const IDLE_PER_ENDPOINT: usize = 8;
/// Keys per page of a list ([`Store::list`]): about 30 KB of protobuf, 55 KB of JSON for
/// node records.
pub const LIST_PAGE: usize = 100;
/// How far [`EtcdStore::patience`] grows: this many times the configured timeout.
const PATIENCE_MAX_FACTOR: u32 = 8;

type Conn = BufReader<Stream>;

/// The etcd implementation of [`Store`]. Cheap to share; calls may run in parallel.
pub struct EtcdStore {
    endpoints: Vec<Endpoint>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    /// The endpoint that answered last: tried first.
    preferred: AtomicUsize,
    /// The current wait for an answer, in ms: see [`EtcdStore::patience`].
    patience_ms: AtomicU64,
    /// Idle keep-alive connections, per endpoint.
    idle: Vec<Mutex<Vec<Conn>>>,
}

/// An answer: HTTP status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl EtcdStore {
    /// Checks the configuration and loads the TLS material; does not contact etcd (the
    /// first call does), so an agent can start before etcd is up.
    pub fn connect(cfg: &EtcdConfig) -> Result<EtcdStore> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoint given".into()));
        }
        if cfg.timeout.is_zero() {
            return Err(StoreError::Config("etcd timeout must be above zero".into()));
        }
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|u| Endpoint::parse(u))
            .collect::<Result<Vec<_>>>()?;
        let tls = if endpoints.iter().any(|e| e.tls) {
            Some(transport::tls_config(
                cfg.ca_file.as_deref(),
                cfg.cert_file.as_deref(),
                cfg.key_file.as_deref(),
            )?)
        } else {
            None
        };
        let idle = endpoints.iter().map(|_| Mutex::new(Vec::new())).collect();
        Ok(EtcdStore {
            endpoints,
            tls,
            timeout: cfg.timeout,
            preferred: AtomicUsize::new(0),
            patience_ms: AtomicU64::new(cfg.timeout.as_millis() as u64),
            idle,
        })
    }

    /// How long a call waits for an answer now: the configured timeout while the cluster
    /// answers; doubled, up to 8 times it, each time a call found every member silent
    /// past it (or silent and the rest refusing or without a leader); back to the timeout
    /// at the first answer that serves (a member without a leader answers at once, but
    /// says nothing about how soon the one with a leader will). An overloaded etcd still does
    /// the work of a request the client gave up on, and the client's retry asks for it
    /// again: giving up sooner than it can answer feeds a congestion collapse (the
    /// 1000-agent cold start of docs/scale.md, where most of the ranges were abandoned
    /// at 2 s). A member that is down refuses the connection at once and is not waited for.
    pub fn patience(&self) -> Duration {
        Duration::from_millis(self.patience_ms.load(Ordering::Relaxed))
    }

    /// A call found every member silent: wait twice as long next time (bounded).
    fn wait_longer(&self) {
        let max = (self.timeout * PATIENCE_MAX_FACTOR).as_millis() as u64;
        let now = self.patience_ms.load(Ordering::Relaxed);
        self.patience_ms
            .store((now * 2).min(max), Ordering::Relaxed);
    }

    /// The URL of the endpoint that answered last.
    pub fn current_endpoint(&self) -> &str {
        &self.endpoints[self.preferred.load(Ordering::Relaxed) % self.endpoints.len()].url
    }

    /// Whether the cluster has a leader, asked of the first member that answers
    /// (`/v3/maintenance/status`); for readiness checks.
    pub fn has_leader(&self) -> Result<bool> {
        let body = self.call("/v3/maintenance/status", "{}", None)?;
        let (_member, leader) = proto::parse_status(&body)?;
        Ok(!leader.is_empty() && leader != "0")
    }

    /// Compacts etcd's history through `revision` (etcd's `compaction`, waiting until it
    /// is physically done). Operators' and tests' tool: Twill itself never compacts.
    pub fn compact(&self, revision: Revision) -> Result<()> {
        self.call("/v3/kv/compaction", &proto::compaction(revision), None)
            .map(drop)
    }

    fn connect_to(&self, i: usize) -> std::io::Result<Conn> {
        transport::connect(&self.endpoints[i], self.tls.as_ref(), self.timeout).map(BufReader::new)
    }

    /// One request on one endpoint: on an idle connection if there is one (once more on a
    /// fresh one if the server had closed it), else on a new connection.
    fn exchange(&self, i: usize, path: &str, body: &str) -> std::io::Result<Answer> {
        let request = http::encode_post(&self.endpoints[i].authority(), path, body.as_bytes());
        let reused = self.idle[i].lock().unwrap().pop();
        let patience = self.patience();
        if let Some(mut conn) = reused {
            conn.get_ref().tcp().set_read_timeout(Some(patience))?;
            match Self::send(&mut conn, &request) {
                Ok((answer, reusable)) => {
                    self.keep(i, conn, reusable);
                    return Ok(answer);
                }
                // The server closed the idle connection before reading: safe to resend.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        let mut conn = self.connect_to(i)?;
        conn.get_ref().tcp().set_read_timeout(Some(patience))?;
        let (answer, reusable) = Self::send(&mut conn, &request)?;
        self.keep(i, conn, reusable);
        Ok(answer)
    }

    fn send(conn: &mut Conn, request: &[u8]) -> std::io::Result<(Answer, bool)> {
        conn.get_mut().write_all(request)?;
        conn.get_mut().flush()?;
        let head = http::read_head(conn)?;
        let body = http::read_body(conn, &head)?;
        Ok((
            Answer {
                status: head.status,
                body,
            },
            head.reusable,
        ))
    }

    fn keep(&self, i: usize, conn: Conn, reusable: bool) {
        let mut idle = self.idle[i].lock().unwrap();
        if reusable && conn.buffer().is_empty() && idle.len() < IDLE_PER_ENDPOINT {
            idle.push(conn);
        }
    }

    /// POSTs `body` to `path`, failing over across endpoints; returns a 200 answer's body.
    /// `lease` names the lease an answer "lease not found" is about.
    fn call(&self, path: &str, body: &str, lease: Option<LeaseId>) -> Result<Vec<u8>> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        let mut tls_failures = 0;
        let mut silent = 0;
        for k in 0..n {
            let i = (start + k) % n;
            let waited = self.patience();
            let answer = match self.exchange(i, path, body) {
                Ok(a) => a,
                Err(e) => {
                    self.idle[i].lock().unwrap().clear();
                    tls_failures += usize::from(transport::is_tls_error(&e));
                    silent += usize::from(transport::is_timeout(&e));
                    failures.push(format!(
                        "{}: {}",
                        self.endpoints[i].url,
                        transport::describe(&e, waited)
                    ));
                    continue;
                }
            };
            if answer.status == 200 {
                self.patience_ms
                    .store(self.timeout.as_millis() as u64, Ordering::Relaxed);
                self.preferred.store(i, Ordering::Relaxed);
                return Ok(answer.body);
            }
            let err = proto::parse_error(&answer.body);
            match proto::classify(answer.status, &err) {
                ErrorClass::Transient => {
                    failures.push(format!(
                        "{}: {} (HTTP {})",
                        self.endpoints[i].url, err.message, answer.status
                    ));
                }
                ErrorClass::LeaseNotFound => {
                    return Err(StoreError::LeaseExpired(lease.unwrap_or(LeaseId(0))));
                }
                ErrorClass::Compacted | ErrorClass::Permanent => {
                    return Err(StoreError::Protocol(format!(
                        "{path} on {}: {} (HTTP {}, code {})",
                        self.endpoints[i].url, err.message, answer.status, err.code
                    )));
                }
            }
        }
        if silent > 0 {
            self.wait_longer();
        }
        if tls_failures == n {
            // Every member refused the handshake: retrying will not help, the files will.
            return Err(StoreError::Config(format!(
                "TLS with etcd failed ({}); check ca_file, cert_file and key_file",
                failures.join("; ")
            )));
        }
        Err(self.none_answered("no etcd endpoint answered", &failures))
    }

    /// Opens a watch stream on the first endpoint that accepts it and waits for etcd to
    /// confirm it (or refuse it as compacted).
    /// `starts`: the first revision of each part of `range` ([`KeyRange::parts`]).
    fn open_watch(&self, range: &KeyRange, starts: &[Revision]) -> Result<EtcdWatch> {
        range.check_starts(starts)?;
        if range.parts().is_empty() {
            // etcd would wait forever for a create request that never comes.
            return Err(StoreError::Config(
                "a watch needs at least one key range; KeyRange::AnyOf was given none".into(),
            ));
        }
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            match self.try_watch(i, range, starts) {
                Ok(w) => return Ok(w),
                Err(StoreError::Unavailable { reason, .. }) => {
                    failures.push(format!("{}: {reason}", self.endpoints[i].url))
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.none_answered("cannot open a watch", &failures))
    }

    /// Every endpoint failed: `what` went wrong, with each endpoint's reason.
    fn none_answered(&self, what: &str, failures: &[String]) -> StoreError {
        StoreError::Unavailable {
            endpoint: self
                .endpoints
                .iter()
                .map(|e| e.url.as_str())
                .collect::<Vec<_>>()
                .join(","),
            reason: format!(
                "{what} ({}); check that etcd runs and is reachable",
                failures.join("; ")
            ),
        }
    }

    fn try_watch(&self, i: usize, range: &KeyRange, starts: &[Revision]) -> Result<EtcdWatch> {
        // For messages: etcd reports compaction per watcher, the oldest start is the one.
        let start = starts.iter().copied().min().unwrap_or_default();
        let url = self.endpoints[i].url.clone();
        let unavailable = |reason: String| StoreError::Unavailable {
            endpoint: url.clone(),
            reason,
        };
        let io = |e: std::io::Error| unavailable(e.to_string());
        let mut conn = self.connect_to(i).map_err(io)?;
        let shutdown_handle = conn.get_ref().tcp().try_clone().map_err(io)?;
        let body = proto::watch_create(range, starts);
        let request =
            http::encode_post(&self.endpoints[i].authority(), "/v3/watch", body.as_bytes());
        conn.get_mut().write_all(&request).map_err(io)?;
        let head = http::read_head(&mut conn).map_err(io)?;
        if head.status != 200 {
            let body = http::read_body(&mut conn, &head).map_err(io)?;
            let err = proto::parse_error(&body);
            return Err(match proto::classify(head.status, &err) {
                ErrorClass::Transient => unavailable(err.message),
                _ => StoreError::Protocol(format!(
                    "watch on {url}: {} (HTTP {})",
                    err.message, head.status
                )),
            });
        }
        let mut lines: Box<dyn BufRead + Send> = match head.framing {
            http::Framing::Chunked => Box::new(BufReader::new(http::ChunkedReader::new(conn))),
            _ => Box::new(conn),
        };
        // The first messages confirm the watchers, one per part of the range (etcd reports
        // a compacted start right after the creation).
        for _ in range.parts() {
            match read_message(&mut lines).map_err(|e| unavailable(format!("watch stream: {e}")))? {
                Some(WatchMessage::Created) => {}
                None => {
                    return Err(unavailable(
                        "watch stream closed before it was confirmed".into(),
                    ))
                }
                Some(WatchMessage::Canceled {
                    compact_revision,
                    reason,
                }) => return Err(canceled_error(&url, start, compact_revision, &reason)),
                Some(other) => {
                    return Err(StoreError::Protocol(format!(
                        "watch on {url}: expected creation, got {other:?}"
                    )))
                }
            }
        }
        // From now on, the stream may stay quiet for as long as nothing changes.
        shutdown_handle.set_read_timeout(None).map_err(io)?;
        let (tx, rx) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("etcd-watch".into())
                .spawn(move || pump_watch(lines, tx, &stopping, &url, start))
                .map_err(|e| StoreError::Protocol(format!("cannot start the watch thread: {e}")))?
        };
        Ok(EtcdWatch {
            rx,
            shutdown_handle,
            stopping,
            thread: Some(thread),
            ended: false,
        })
    }
}

fn canceled_error(
    url: &str,
    start: Revision,
    compact_revision: Revision,
    reason: &str,
) -> StoreError {
    if compact_revision > 0 {
        StoreError::Compacted {
            requested: start,
            compacted: compact_revision,
        }
    } else {
        StoreError::Unavailable {
            endpoint: url.to_string(),
            reason: format!("etcd canceled the watch: {reason}"),
        }
    }
}

/// The next non-empty line of the stream, parsed; `Ok(None)` at a clean end.
fn read_message(lines: &mut dyn BufRead) -> Result<Option<WatchMessage>> {
    loop {
        let mut line = Vec::new();
        let n = lines
            .read_until(b'\n', &mut line)
            .map_err(|e| StoreError::Protocol(e.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            return proto::parse_watch_message(&line).map(Some);
        }
    }
}

/// The watch thread: forwards events until the stream ends, then sends why.
fn pump_watch(
    mut lines: Box<dyn BufRead + Send>,
    tx: Sender<Result<Event>>,
    stopping: &AtomicBool,
    url: &str,
    start: Revision,
) {
    let end = loop {
        match read_message(&mut lines) {
            Ok(Some(WatchMessage::Events(events))) => {
                for ev in events {
                    if tx.send(Ok(ev)).is_err() {
                        return; // nobody listens any more
                    }
                }
            }
            Ok(Some(WatchMessage::Canceled {
                compact_revision,
                reason,
            })) => break canceled_error(url, start, compact_revision, &reason),
            Ok(Some(_)) => {}
            Ok(None) => {
                break StoreError::Unavailable {
                    endpoint: url.to_string(),
                    reason: "etcd closed the watch stream".into(),
                }
            }
            Err(e) => {
                break StoreError::Unavailable {
                    endpoint: url.to_string(),
                    reason: format!("watch stream broke: {e}"),
                }
            }
        }
    };
    if !stopping.load(Ordering::Relaxed) {
        let _ = tx.send(Err(end));
    }
}

/// A watch on etcd: a thread reads the stream and hands events over a channel.
pub struct EtcdWatch {
    rx: Receiver<Result<Event>>,
    /// The socket, to unblock the thread's read when the watch is dropped.
    shutdown_handle: std::net::TcpStream,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    ended: bool,
}

impl Watch for EtcdWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<Event>> {
        if self.ended {
            return Err(StoreError::Protocol(
                "this watch has ended: list and watch again".into(),
            ));
        }
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(ev)) => Ok(Some(ev)),
            Ok(Err(e)) => {
                self.ended = true;
                Err(e)
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Err(StoreError::Protocol(
                    "the watch thread stopped: list and watch again".into(),
                ))
            }
        }
    }
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.shutdown_handle.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn first_kv(body: &[u8]) -> Result<Option<KeyValue>> {
    Ok(proto::parse_range(body)?.0.into_iter().next())
}

impl Store for EtcdStore {
    fn kind(&self) -> crate::StoreKind {
        crate::StoreKind::Etcd
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        first_kv(&self.call("/v3/kv/range", &proto::range_one(key), None)?)
    }

    /// In pages of [`LIST_PAGE`] keys, all at the first page's revision. One answer of
    /// every key under a prefix is O(N) bytes that etcd's JSON gateway renders at once: with
    /// 1000 nodes listing `nodes/` at a cold start (about 550 KB each) the answers took
    /// longer than the client waits, were abandoned after etcd had done the work, and asked
    /// again (3,000 lists for 1000 agents; etcd logged 1.4 GB of them as slow). A page
    /// answers within the wait, and no work is thrown away.
    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let end = proto::prefix_range_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut at = None;
        let mut all = Vec::new();
        loop {
            let body = proto::range_page(&from, &end, LIST_PAGE, at);
            let (kvs, rev, more) =
                proto::parse_range_page(&self.call("/v3/kv/range", &body, None)?)?;
            let snapshot = *at.get_or_insert(rev);
            let last = kvs.last().map(|kv| kv.key.clone());
            all.extend(kvs);
            match last.filter(|_| more) {
                // The next page starts just after the last key.
                Some(k) => from = [k.as_bytes(), &[0]].concat(),
                None => return Ok((all, snapshot)),
            }
        }
    }

    fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        proto::parse_revision(&self.call("/v3/kv/put", &proto::put(key, value, lease), lease)?)
    }

    fn create(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Option<Revision>> {
        let (created, rev) = proto::parse_txn(&self.call(
            "/v3/kv/txn",
            &proto::txn_create(key, value, lease),
            lease,
        )?)?;
        Ok(created.then_some(rev))
    }

    fn update(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<bool> {
        let body = self.call(
            "/v3/kv/txn",
            &proto::txn_update(key, expected, value, lease),
            lease,
        )?;
        Ok(proto::parse_txn(&body)?.0)
    }

    fn delete(&self, key: &str) -> Result<bool> {
        Ok(proto::parse_deleted(&self.call("/v3/kv/deleterange", &proto::delete(key), None)?)? > 0)
    }

    fn delete_if(&self, key: &str, expected: Revision) -> Result<bool> {
        Ok(proto::parse_txn(&self.call(
            "/v3/kv/txn",
            &proto::txn_delete_if(key, expected),
            None,
        )?)?
        .0)
    }

    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        proto::parse_grant(&self.call("/v3/lease/grant", &proto::lease_grant(ttl), None)?)
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let body = self.call("/v3/lease/keepalive", &proto::lease_id(lease), Some(lease))?;
        let secs = proto::parse_keepalive(&body, lease)?;
        Ok(Duration::from_secs(secs as u64))
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.call("/v3/lease/revoke", &proto::lease_id(lease), Some(lease))
            .map(drop)
    }

    fn watch_range(&self, range: &KeyRange, after: Revision) -> Result<Box<dyn Watch>> {
        let starts = vec![after + 1; range.parts().len()];
        Ok(Box::new(self.open_watch(range, &starts)?))
    }

    /// One watcher per part, each from its own revision: nothing a part has already
    /// delivered is sent again.
    fn watch_range_from(&self, range: &KeyRange, after: &[Revision]) -> Result<Box<dyn Watch>> {
        let starts: Vec<Revision> = after.iter().map(|a| *a + 1).collect();
        Ok(Box::new(self.open_watch(range, &starts)?))
    }
}
