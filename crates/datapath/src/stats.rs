//! Counters: per worker, per peer, per drop reason; summed on request into [`Stats`], keyed by
//! node IP so they survive table generations (and twilld restarts: they live in the datapath).
//!
//! How it fits together:
//! - a [`Counters`] block belongs to one worker and one table generation: `AtomicU64` arrays
//!   indexed by [`PeerId`], written with `Relaxed` `fetch_add` (one writer, no contention;
//!   the atomics only make the ctl thread's reads sound);
//! - a [`Ledger`] (one per process, shared by the workers and the ctl thread) holds each
//!   worker's live block, plus what retired blocks counted, folded by node IP;
//! - a worker calls [`Ledger::rotate`] when it picks up a new table (once per generation):
//!   its old block is folded in and it gets a fresh one for the new table. Only the worker
//!   writes its block, and it rotates itself, so no count is lost in the hand-over;
//! - the ctl thread answers `Stats` with [`Ledger::snapshot`]: the folded totals plus every
//!   live block.
//!
//! A peer that left the table keeps its totals (twilld's counters never go backwards).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::filter::Drop;
use crate::table::{PeerId, PeerTable};

/// Everything counted, as the ctl `Stats` reply carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sorted by node IP, one entry per node IP ever in a table.
    pub peers: Vec<PeerStats>,
    /// Every reason in [`Drop::ALL`] order, zeros included (from [`Ledger::snapshot`]).
    pub drops: Vec<(Drop, u64)>,
    /// GSO sends that failed (EMSGSIZE/EINVAL/EIO) and went out one datagram per packet.
    pub gso_fallbacks: u64,
}

/// One peer's totals. `rx_*` is what it sent us that was admitted, `tx_*` what we sent it
/// (inner packets and inner bytes), `drops` what arrived from its node IP and was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    pub node_ip: Ipv4Addr,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
}

impl PeerStats {
    /// All zero.
    pub fn new(node_ip: Ipv4Addr) -> PeerStats {
        PeerStats {
            node_ip,
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            drops: 0,
        }
    }
}

impl Stats {
    /// The count for one reason (0 when absent).
    pub fn drop_count(&self, reason: Drop) -> u64 {
        self.drops
            .iter()
            .filter(|(d, _)| *d == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// The totals of the peer at `node_ip`.
    pub fn peer(&self, node_ip: Ipv4Addr) -> Option<&PeerStats> {
        self.peers.iter().find(|p| p.node_ip == node_ip)
    }
}

#[derive(Default)]
struct PeerCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: AtomicU64,
}

/// One worker's counters for one table generation (see the module docs).
pub struct Counters {
    /// The node IP of each PeerId of the table this block was made for.
    node_ips: Box<[Ipv4Addr]>,
    peers: Box<[PeerCounters]>,
    drops: [AtomicU64; Drop::COUNT],
    gso_fallbacks: AtomicU64,
}

impl Counters {
    /// A zeroed block for `table`'s peers.
    pub fn new(table: &PeerTable) -> Counters {
        let node_ips: Box<[Ipv4Addr]> = table.peers().iter().map(|p| p.node_ip).collect();
        let peers = node_ips.iter().map(|_| PeerCounters::default()).collect();
        Counters {
            node_ips,
            peers,
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            gso_fallbacks: AtomicU64::new(0),
        }
    }

    /// `packets` inner packets of `bytes` bytes in total admitted from `peer`.
    #[inline]
    pub fn rx(&self, peer: PeerId, packets: u64, bytes: u64) {
        let c = &self.peers[peer.index()];
        c.rx_packets.fetch_add(packets, Relaxed);
        c.rx_bytes.fetch_add(bytes, Relaxed);
    }

    /// `packets` inner packets of `bytes` bytes in total sent to `peer`.
    #[inline]
    pub fn tx(&self, peer: PeerId, packets: u64, bytes: u64) {
        let c = &self.peers[peer.index()];
        c.tx_packets.fetch_add(packets, Relaxed);
        c.tx_bytes.fetch_add(bytes, Relaxed);
    }

    /// One packet dropped for `reason`, from (RX) or to (TX) `peer` when it is known.
    #[inline]
    pub fn dropped(&self, peer: Option<PeerId>, reason: Drop) {
        self.drops[reason.index()].fetch_add(1, Relaxed);
        if let Some(p) = peer {
            self.peers[p.index()].drops.fetch_add(1, Relaxed);
        }
    }

    /// One GSO send that fell back to one datagram per packet.
    #[inline]
    pub fn gso_fallback(&self) {
        self.gso_fallbacks.fetch_add(1, Relaxed);
    }

    fn fold_into(&self, acc: &mut Totals) {
        for (ip, c) in self.node_ips.iter().zip(self.peers.iter()) {
            let p = acc.peers.entry(*ip).or_insert_with(|| PeerStats::new(*ip));
            p.rx_packets += c.rx_packets.load(Relaxed);
            p.rx_bytes += c.rx_bytes.load(Relaxed);
            p.tx_packets += c.tx_packets.load(Relaxed);
            p.tx_bytes += c.tx_bytes.load(Relaxed);
            p.drops += c.drops.load(Relaxed);
        }
        for (a, d) in acc.drops.iter_mut().zip(self.drops.iter()) {
            *a += d.load(Relaxed);
        }
        acc.gso_fallbacks += self.gso_fallbacks.load(Relaxed);
    }
}

#[derive(Clone, Default)]
struct Totals {
    /// By node IP.
    peers: BTreeMap<Ipv4Addr, PeerStats>,
    drops: [u64; Drop::COUNT],
    gso_fallbacks: u64,
}

impl Totals {
    fn into_stats(self) -> Stats {
        Stats {
            peers: self.peers.into_values().collect(),
            drops: Drop::ALL
                .iter()
                .map(|d| (*d, self.drops[d.index()]))
                .collect(),
            gso_fallbacks: self.gso_fallbacks,
        }
    }
}

struct LedgerInner {
    retired: Totals,
    live: Vec<Option<Arc<Counters>>>,
}

/// The process's counters: each worker's live block and the folded totals of retired ones.
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

impl Ledger {
    /// A ledger for `workers` workers (indexes `0..workers`).
    pub fn new(workers: usize) -> Ledger {
        Ledger {
            inner: Mutex::new(LedgerInner {
                retired: Totals::default(),
                live: vec![None; workers],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerInner> {
        // Every critical section leaves the state whole, so a poisoned lock is still good.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Worker `worker` moves to `table`: its previous block (if any) is folded into the
    /// totals, and the fresh block it must count into from now on is returned. Call it from
    /// the worker itself (it must not write the old block afterwards). Panics when `worker`
    /// is not below the `workers` given to [`Ledger::new`].
    pub fn rotate(&self, worker: usize, table: &PeerTable) -> Arc<Counters> {
        let fresh = Arc::new(Counters::new(table));
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(old) = g.live[worker].replace(fresh.clone()) {
            old.fold_into(&mut g.retired);
        }
        fresh
    }

    /// Everything counted so far: retired totals plus every live block, by node IP.
    pub fn snapshot(&self) -> Stats {
        let g = self.lock();
        let mut acc = g.retired.clone();
        for c in g.live.iter().flatten() {
            c.fold_into(&mut acc);
        }
        acc.into_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partial::Checksums;
    use crate::table::{LocalNode, Peer};

    fn table(generation: u64, peers: &[&str]) -> PeerTable {
        PeerTable::new(
            generation,
            LocalNode {
                node_ip: "192.0.2.1".parse().unwrap(),
                blocks: vec![],
            },
            peers
                .iter()
                .map(|p| Peer {
                    node_ip: p.parse().unwrap(),
                    port: 8285,
                    blocks: vec![],
                    checksums: Checksums::Full,
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn sums_workers_and_survives_generations_by_node_ip() {
        let ledger = Ledger::new(2);
        let t1 = table(1, &["192.0.2.2", "192.0.2.3"]);
        let w0 = ledger.rotate(0, &t1);
        let w1 = ledger.rotate(1, &t1);
        w0.rx(PeerId(0), 2, 3000);
        w1.rx(PeerId(0), 1, 100);
        w1.tx(PeerId(1), 5, 500);
        w0.dropped(Some(PeerId(1)), Drop::SpoofedInner);
        w0.dropped(None, Drop::UnknownPeer);
        w1.gso_fallback();
        let s = ledger.snapshot();
        assert_eq!(s.peers.len(), 2);
        let a = s.peer("192.0.2.2".parse().unwrap()).unwrap();
        assert_eq!(
            (a.rx_packets, a.rx_bytes, a.tx_packets, a.drops),
            (3, 3100, 0, 0)
        );
        let b = s.peer("192.0.2.3".parse().unwrap()).unwrap();
        assert_eq!((b.tx_packets, b.tx_bytes, b.drops), (5, 500, 1));
        assert_eq!(s.drop_count(Drop::SpoofedInner), 1);
        assert_eq!(s.drop_count(Drop::UnknownPeer), 1);
        assert_eq!(s.drops.len(), Drop::COUNT);
        assert_eq!(s.gso_fallbacks, 1);

        // Generation 2: 192.0.2.3 moved to index 0, 192.0.2.2 left, 192.0.2.4 joined.
        let t2 = table(2, &["192.0.2.3", "192.0.2.4"]);
        let w0 = ledger.rotate(0, &t2);
        w0.rx(PeerId(0), 1, 10);
        w0.tx(PeerId(1), 1, 20);
        let s2 = ledger.snapshot();
        let ips: Vec<String> = s2.peers.iter().map(|p| p.node_ip.to_string()).collect();
        assert_eq!(ips, ["192.0.2.2", "192.0.2.3", "192.0.2.4"]);
        assert_eq!(
            s2.peer("192.0.2.2".parse().unwrap()).unwrap().rx_packets,
            3,
            "a gone peer keeps its totals"
        );
        let b = s2.peer("192.0.2.3".parse().unwrap()).unwrap();
        assert_eq!((b.rx_packets, b.tx_packets, b.drops), (1, 5, 1));
        assert_eq!(s2.peer("192.0.2.4".parse().unwrap()).unwrap().tx_bytes, 20);
        // w1 still counts into its generation-1 block until it rotates.
        w1.rx(PeerId(1), 1, 1);
        assert_eq!(
            ledger
                .snapshot()
                .peer("192.0.2.3".parse().unwrap())
                .unwrap()
                .rx_packets,
            2
        );
        ledger.rotate(1, &t2);
        assert_eq!(
            ledger
                .snapshot()
                .peer("192.0.2.3".parse().unwrap())
                .unwrap()
                .rx_packets,
            2
        );
    }

    #[test]
    fn counts_from_threads_add_up() {
        let ledger = Arc::new(Ledger::new(4));
        let t = Arc::new(table(1, &["192.0.2.2"]));
        let handles: Vec<_> = (0..4)
            .map(|w| {
                let (ledger, t) = (ledger.clone(), t.clone());
                std::thread::spawn(move || {
                    let c = ledger.rotate(w, &t);
                    for _ in 0..10_000 {
                        c.tx(PeerId(0), 1, 3);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = ledger.snapshot();
        assert_eq!(s.peers[0].tx_packets, 40_000);
        assert_eq!(s.peers[0].tx_bytes, 120_000);
    }
}
