//! The kernel FIB edge: a thread of its own that turns the RIB's [`FibChange`]s into
//! batched netlink route changes ([`twill_netlink::Handle::apply_routes`]), so the event
//! loop goes on decoding while the kernel installs, and the adoption of the routes a
//! previous run left behind (graceful restart, restarting side).
//!
//! Back-pressure: the channel holds at most [`QUEUE_BATCHES`] batches; when the kernel is
//! slower than the peers, [`KernelWriter::try_send`] hands the batch back and the loop stops
//! reading from its peers (TCP flow control holds the rest of the feed in the peer) until
//! the writer wakes it, instead of piling up changes (a queued change is ~64 bytes) or
//! blocking (which would stop its keepalives: a peer with a 9 s hold time reset the session
//! of a debug build taking 100,000 routes under load).
//!
//! Adoption ([`Adopted`]): at start the speaker dumps its own routes ([`RTPROT_BGP`] in its
//! table) and leaves them in place. A prefix the RIB learns again with the same next hops
//! is not written at all (a restart moves no kernel route); one learned with other next
//! hops is replaced in one step (NLM_F_REPLACE), so it is never absent; when every peer
//! has sent End-of-RIB, or the restart time ran out, whatever was not learned again is
//! deleted.
//!
//! Ownership: the speaker's routes carry rtm_protocol [`RTPROT_BGP`] (186,
//! `ip route show proto bgp`), so they are never mistaken for twilld's own routes
//! ([`twill_netlink::ROUTE_PROTOCOL`], 84) nor twilld's for the speaker's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ipnet::IpNet;
use twill_netlink::fib::route_change_message;
use twill_netlink::{FibRoute, Handle, RouteChange};

use super::poll::Waker;
use crate::rib::FibChange;

/// The rtm_protocol of the routes the speaker installs: linux/rtnetlink.h `#define
/// RTPROT_BGP 186 /* BGP Routes */` (iproute2's rt_protos names it `bgp`; BIRD and FRR use
/// it too, each in its own table or with its own metric).
pub const RTPROT_BGP: u8 = 186;

/// Batches the loop may have queued before it waits for the kernel writer.
pub const QUEUE_BATCHES: usize = 2;

/// What the kernel writer did, for `twill bgp rib` and `neighbors`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelStats {
    /// Routes added or replaced.
    pub installed: u64,
    /// Routes deleted.
    pub removed: u64,
    /// Changes the kernel refused.
    pub refused: u64,
    /// The last refusal, with the route it was for.
    pub last_error: Option<String>,
    /// Batches the loop sent and the writer finished.
    pub batches_done: u64,
    /// Routes adopted from a previous run at start, and how many of those were swept.
    pub adopted: u64,
    pub swept: u64,
}

enum Job {
    Apply(Vec<FibChange>),
    Flush(mpsc::Sender<()>),
}

/// The writer thread and its queue.
pub struct KernelWriter {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<KernelStats>>,
    sent: u64,
}

impl KernelWriter {
    /// Starts the writer on an rtnetlink socket of the calling thread's namespace; it
    /// installs into `table`. `waker` is woken after each batch.
    pub fn start(table: u32, waker: Arc<Waker>) -> Result<KernelWriter, twill_netlink::Error> {
        let handle = Handle::new()?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let stats = Arc::new(Mutex::new(KernelStats::default()));
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("twill-bgp-fib".into())
            .spawn(move || writer(handle, table, rx, st, waker))
            .map_err(|e| twill_netlink::Error::Io {
                op: "start the kernel writer thread".into(),
                source: e,
            })?;
        Ok(KernelWriter {
            tx: Some(tx),
            thread: Some(thread),
            stats,
            sent: 0,
        })
    }

    /// Queues `changes` unless [`QUEUE_BATCHES`] are queued already; then hands them back
    /// (the loop keeps them and stops reading from peers until the writer catches up).
    pub fn try_send(&mut self, changes: Vec<FibChange>) -> Result<(), Vec<FibChange>> {
        if changes.is_empty() {
            return Ok(());
        }
        let Some(tx) = &self.tx else { return Ok(()) };
        match tx.try_send(Job::Apply(changes)) {
            Ok(()) => {
                self.sent += 1;
                Ok(())
            }
            Err(mpsc::TrySendError::Full(Job::Apply(c))) => Err(c),
            // The writer is gone (it only ends when we drop it): nothing to deliver to.
            Err(_) => Ok(()),
        }
    }

    /// Queues `changes`, waiting while [`QUEUE_BATCHES`] are queued already (shutdown).
    pub fn send(&mut self, changes: Vec<FibChange>) {
        if changes.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            self.sent += 1;
            let _ = tx.send(Job::Apply(changes));
        }
    }

    /// Waits until everything queued so far is in the kernel.
    pub fn flush(&mut self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = mpsc::channel();
            if tx.send(Job::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }

    /// Whether the writer has finished every batch sent.
    pub fn idle(&self) -> bool {
        self.stats().batches_done >= self.sent
    }

    pub fn stats(&self) -> KernelStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn note_adopted(&self, adopted: u64, swept: u64) {
        if let Ok(mut s) = self.stats.lock() {
            s.adopted += adopted;
            s.swept += swept;
        }
    }
}

impl Drop for KernelWriter {
    /// Finishes the queued batches, then stops the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The RIB's change as a netlink route change of protocol [`RTPROT_BGP`] in `table`.
pub fn route_change(c: &FibChange, table: u32) -> RouteChange {
    let mut r = FibRoute::via(c.prefix, &c.next_hops);
    r.table = table;
    r.protocol = RTPROT_BGP;
    if c.next_hops.is_empty() {
        RouteChange::Delete(r)
    } else {
        RouteChange::Replace(r)
    }
}

fn writer(
    mut handle: Handle,
    table: u32,
    rx: Receiver<Job>,
    stats: Arc<Mutex<KernelStats>>,
    waker: Arc<Waker>,
) {
    while let Ok(job) = rx.recv() {
        let fib = match job {
            Job::Apply(fib) => fib,
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        // Messages are built as the socket packs them: no second copy of the batch.
        let outcome = handle.socket().request_each(
            fib.iter()
                .map(|c| route_change_message(&route_change(c, table))),
        );
        let removes = fib.iter().filter(|c| c.next_hops.is_empty()).count() as u64;
        let (mut installed, mut removed) = (fib.len() as u64 - removes, removes);
        if let Ok(mut s) = stats.lock() {
            let refused_before = s.refused;
            match outcome {
                Ok(refused) => {
                    for (index, error) in refused {
                        let change = route_change(&fib[index], table);
                        match change {
                            RouteChange::Replace(_) => installed -= 1,
                            // Already gone (ESRCH): what was asked for holds.
                            RouteChange::Delete(_) if error.is_not_found() => continue,
                            RouteChange::Delete(_) => removed -= 1,
                        }
                        s.refused += 1;
                        s.last_error = Some(error.context(describe(&change)).to_string());
                    }
                }
                Err(e) => {
                    s.refused += fib.len() as u64;
                    installed = 0;
                    removed = 0;
                    s.last_error = Some(e.to_string());
                }
            }
            s.installed += installed;
            s.removed += removed;
            s.batches_done += 1;
            if s.refused > refused_before {
                super::log(format_args!(
                    "the kernel refused {} of {} route changes; the last: {}",
                    s.refused - refused_before,
                    fib.len(),
                    s.last_error.as_deref().unwrap_or("?")
                ));
            }
        }
        drop(fib);
        waker.wake();
    }
}

fn describe(c: &RouteChange) -> String {
    match c {
        RouteChange::Replace(r) => format!("replace route {}", r.describe()),
        RouteChange::Delete(r) => format!("delete route {}", r.describe()),
    }
}

/// The routes of a previous run found at start, kept until re-learned or swept: each
/// prefix with its next hops (sorted), so a route learned again unchanged is not rewritten.
#[derive(Debug, Default)]
pub struct Adopted {
    routes: HashMap<IpNet, Vec<IpAddr>>,
}

impl Adopted {
    /// Reads our routes ([`RTPROT_BGP`] in `table`) from the kernel of the calling thread's
    /// namespace.
    pub fn read(table: u32) -> Result<Adopted, twill_netlink::Error> {
        let routes = Handle::new()?.fib_routes(RTPROT_BGP, table)?;
        Ok(Adopted::from_routes(routes))
    }

    /// From a dump of the kernel's routes (pure).
    pub fn from_routes(routes: impl IntoIterator<Item = FibRoute>) -> Adopted {
        Adopted {
            routes: routes
                .into_iter()
                .map(|r| {
                    let mut hops: Vec<IpAddr> =
                        r.next_hops.iter().filter_map(|h| h.gateway).collect();
                    hops.sort_unstable();
                    hops.dedup();
                    (r.dst, hops)
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The RIB decided about these prefixes: they are no longer ours to sweep. A change
    /// that puts back exactly the route the kernel already has is dropped from `changes`:
    /// writing it would be a netlink RTM_NEWROUTE for nothing (and a route change every
    /// `ip monitor` sees).
    pub fn learned(&mut self, changes: &mut Vec<FibChange>) {
        if self.routes.is_empty() {
            return;
        }
        changes.retain(|c| match self.routes.remove(&c.prefix) {
            Some(hops) => hops != c.next_hops || c.next_hops.is_empty(),
            None => true,
        });
    }

    /// Everything not learned again, as deletions; the set is emptied.
    pub fn sweep(&mut self) -> Vec<FibChange> {
        let out = self
            .routes
            .drain()
            .map(|(prefix, _)| FibChange {
                prefix,
                next_hops: Vec::<IpAddr>::new(),
            })
            .collect();
        self.routes.shrink_to_fit();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(p: &str, hops: &[&str]) -> FibChange {
        FibChange {
            prefix: p.parse().unwrap(),
            next_hops: hops.iter().map(|h| h.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_route_learned_again_unchanged_is_not_written() {
        let gw = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut multi = FibRoute::via(
            "10.244.3.0/24".parse().unwrap(),
            &[gw("192.0.2.4"), gw("192.0.2.3")],
        );
        multi.protocol = RTPROT_BGP;
        let mut adopted = Adopted::from_routes([
            FibRoute::via("10.244.1.0/24".parse().unwrap(), &[gw("192.0.2.2")]),
            FibRoute::via("10.244.2.0/24".parse().unwrap(), &[gw("192.0.2.2")]),
            multi,
            FibRoute::via("10.244.4.0/24".parse().unwrap(), &[gw("192.0.2.2")]),
        ]);
        let mut fib = vec![
            change("10.244.1.0/24", &["192.0.2.2"]),
            change("10.244.2.0/24", &["192.0.2.9"]),
            change("10.244.3.0/24", &["192.0.2.3", "192.0.2.4"]),
            change("10.244.5.0/24", &["192.0.2.2"]),
        ];
        adopted.learned(&mut fib);
        assert_eq!(
            fib,
            vec![
                change("10.244.2.0/24", &["192.0.2.9"]),
                change("10.244.5.0/24", &["192.0.2.2"]),
            ],
            "the same route is not written again; a new next hop or a new prefix is"
        );
        // Learned again once: a later change of that prefix is written as usual.
        let mut later = vec![change("10.244.1.0/24", &[])];
        adopted.learned(&mut later);
        assert_eq!(later.len(), 1);
        assert_eq!(adopted.sweep(), vec![change("10.244.4.0/24", &[])]);
        assert!(adopted.is_empty());
    }
}
