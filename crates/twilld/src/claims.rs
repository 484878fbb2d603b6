//! Pure helpers of the agent's claims: what to do with a block held before, how full the
//! held blocks are, the search seed, the retry backoff, and the allocations document.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::time::Duration;
use twill_api::resources::Allocation;
use twill_api::resources::Block;
use twill_ipam::pool::{Pool, Range};
use twill_ipam::records::Record;
use twill_store::LeaseId;

/// FNV-1a of the node name: stable across runs and builds (std's hashers promise neither),
/// so a node starts its search for a free block at the same place every time.
pub fn seed(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReclaimAction {
    /// Already ours under the current lease.
    Keep,
    /// Nobody holds it: create it.
    Create,
    /// Ours under an old lease (or unreadable as ours): move it to the current lease,
    /// keeping the first claim time.
    TakeOver { claimed_at: u64 },
    /// Another node holds it now: do not fight.
    Lost { other: String },
}

/// Decides what to do with a block this node held before. `existing`: the block's value
/// (None if unreadable) and lease, if the key exists.
pub fn reclaim_action(
    existing: Option<(Option<&Block>, Option<LeaseId>)>,
    node: &str,
    lease: LeaseId,
) -> ReclaimAction {
    match existing {
        None => ReclaimAction::Create,
        Some((Some(b), l)) if b.node == node => {
            if l == Some(lease) {
                ReclaimAction::Keep
            } else {
                ReclaimAction::TakeOver {
                    claimed_at: b.claimed_at,
                }
            }
        }
        Some((Some(b), _)) => ReclaimAction::Lost {
            other: b.node.clone(),
        },
        Some((None, _)) => ReclaimAction::Lost {
            other: "(unreadable block record)".into(),
        },
    }
}

/// What a create that answered "already exists" found, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Ours under the current lease: an earlier attempt of this very create committed
    /// (the etcd client retries on the next endpoint after a connection error, and the
    /// first endpoint may have written it before the connection broke).
    Mine,
    /// Someone else holds it (or it vanished again): try another block.
    Taken,
}

/// Tells "already exists" apart from "exists, and it is mine". `existing`: the block's
/// value (None if unreadable) and lease, if the key exists. Only this node name under
/// this lease is ours: a lease is granted to one run of one agent, so no other writer
/// can have bound a block to it.
pub fn create_outcome(
    existing: Option<(Option<&Block>, Option<LeaseId>)>,
    node: &str,
    lease: LeaseId,
) -> CreateOutcome {
    match existing {
        Some((Some(b), Some(l))) if b.node == node && l == lease => CreateOutcome::Mine,
        _ => CreateOutcome::Taken,
    }
}

/// Addresses of the held blocks twill-cni can hand out, and how many of them are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub capacity: u64,
    pub used: u64,
    pub free: u64,
}

/// How many addresses twill-cni can hand out in `block` (host-local's rules: no network,
/// gateway or broadcast address).
pub fn block_capacity(block: Ipv4Net) -> u64 {
    Range::new(block, None, None, None)
        .ok()
        .and_then(|r| Pool::new(vec![r], vec![]).ok())
        .map_or(0, |p| u64::from(p.capacity()))
}

pub fn usage(held: &[Ipv4Net], used_ips: &[Ipv4Addr]) -> Usage {
    let capacity: u64 = held.iter().map(|b| block_capacity(*b)).sum();
    let used = used_ips
        .iter()
        .filter(|ip| held.iter().any(|b| b.contains(*ip)))
        .count() as u64;
    Usage {
        capacity,
        used,
        free: capacity.saturating_sub(used),
    }
}

/// `allocations/<node>`: what twill-cni's records hold, sorted by address, each with its
/// host veth and whether that veth still exists (`veth_exists`, asked of the kernel by
/// the caller): a record whose veth is gone is a leak.
pub fn allocations_json(records: &[Record], veth_exists: impl Fn(&str) -> bool) -> Vec<u8> {
    let mut list: Vec<Allocation> = records
        .iter()
        .map(|r| {
            let host_veth = r
                .extra
                .get("hostVeth")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            Allocation {
                ip: r.ip,
                container_id: r.key.container_id.clone(),
                ifname: r.key.ifname.clone(),
                present: host_veth.is_empty() || veth_exists(&host_veth),
                host_veth,
            }
        })
        .collect();
    list.sort_by_key(|a| a.ip);
    serde_json::to_vec(&list).expect("serializes")
}

/// A seeded pseudo-random source (xorshift64*) for spreading timers: agents seeded by their
/// node names do not retry, renew or refresh in step. Pure and reproducible.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration uniformly in `[d × lo, d]`, `lo` in 0..=1.
    pub fn within(&mut self, d: Duration, lo: f64) -> Duration {
        let span = d.as_nanos() as f64 * (1.0 - lo.clamp(0.0, 1.0));
        let cut = (self.next_u64() % 1_000_001) as f64 / 1_000_000.0 * span;
        d.saturating_sub(Duration::from_nanos(cut as u64))
    }
}

/// Exponential backoff for store retries: 100 ms doubling to 10 s, each delay drawn from
/// its upper half (so a restart storm of many agents spreads out instead of retrying in
/// step).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    jitter: Jitter,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn new() -> Backoff {
        Backoff::seeded(0x5eed)
    }

    /// Seeded, e.g. by the node's name ([`seed`]).
    pub fn seeded(seed: u64) -> Backoff {
        Backoff {
            next: Self::FIRST,
            jitter: Jitter::new(seed),
        }
    }

    /// The next delay: in `[ceiling / 2, ceiling]`, the ceiling doubling from
    /// [`Self::FIRST`] to [`Self::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        self.jitter.within(d, 0.5)
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_ipam::records::AttachmentKey;

    fn block(node: &str) -> Block {
        Block {
            cidr: "10.244.1.0/24".parse().unwrap(),
            node: node.into(),
            claimed_at: 42,
        }
    }

    #[test]
    fn reclaim_decisions() {
        let l = LeaseId(7);
        assert_eq!(reclaim_action(None, "n1", l), ReclaimAction::Create);
        let b = block("n1");
        assert_eq!(
            reclaim_action(Some((Some(&b), Some(l))), "n1", l),
            ReclaimAction::Keep
        );
        assert_eq!(
            reclaim_action(Some((Some(&b), Some(LeaseId(3)))), "n1", l),
            ReclaimAction::TakeOver { claimed_at: 42 }
        );
        assert_eq!(
            reclaim_action(Some((Some(&b), None)), "n1", l),
            ReclaimAction::TakeOver { claimed_at: 42 },
            "a reservation of ours without a lease is taken over too"
        );
        let o = block("n2");
        assert_eq!(
            reclaim_action(Some((Some(&o), Some(LeaseId(3)))), "n1", l),
            ReclaimAction::Lost { other: "n2".into() }
        );
    }

    #[test]
    fn a_create_that_found_its_own_write_is_mine() {
        let l = LeaseId(7);
        let b = block("n1");
        assert_eq!(
            create_outcome(Some((Some(&b), Some(l))), "n1", l),
            CreateOutcome::Mine
        );
        assert_eq!(
            create_outcome(Some((Some(&b), Some(LeaseId(3)))), "n1", l),
            CreateOutcome::Taken,
            "ours under an old lease is a reclaim's business, not this create's"
        );
        assert_eq!(
            create_outcome(Some((Some(&b), None)), "n1", l),
            CreateOutcome::Taken
        );
        let o = block("n2");
        assert_eq!(
            create_outcome(Some((Some(&o), Some(l))), "n1", l),
            CreateOutcome::Taken
        );
        assert_eq!(
            create_outcome(Some((None, Some(l))), "n1", l),
            CreateOutcome::Taken
        );
        assert_eq!(create_outcome(None, "n1", l), CreateOutcome::Taken);
    }

    #[test]
    fn usage_counts_only_addresses_in_held_blocks() {
        let held: Vec<Ipv4Net> = vec![
            "10.244.1.0/26".parse().unwrap(),
            "10.244.1.64/26".parse().unwrap(),
        ];
        assert_eq!(
            block_capacity(held[0]),
            61,
            "64 minus network, gateway, broadcast"
        );
        assert_eq!(block_capacity("10.244.1.0/24".parse().unwrap()), 253);
        let ips: Vec<Ipv4Addr> = ["10.244.1.2", "10.244.1.70", "10.244.9.9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            usage(&held, &ips),
            Usage {
                capacity: 122,
                used: 2,
                free: 120
            }
        );
        assert_eq!(usage(&[], &ips), Usage::default());
    }

    #[test]
    fn seed_is_stable_and_spreads() {
        assert_eq!(seed(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(seed("a"), 0xaf63_dc4c_8601_ec8c);
        let seeds: std::collections::HashSet<u64> =
            (0..50).map(|i| seed(&format!("node{i}")) % 255).collect();
        assert!(seeds.len() > 35, "{}", seeds.len());
    }

    #[test]
    fn backoff_doubles_to_ten_seconds_each_delay_in_its_upper_half() {
        let ceilings = [
            100u128, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000,
        ];
        let mut runs = Vec::new();
        for node in ["n1", "n2", "n3"] {
            let mut b = Backoff::seeded(seed(node));
            let d: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
            for (got, c) in d.iter().zip(ceilings) {
                assert!((c / 2..=c).contains(got), "{node}: {d:?}");
            }
            b.reset();
            assert!(b.next_delay() <= Backoff::FIRST);
            runs.push(d);
        }
        assert!(
            runs[0] != runs[1] && runs[1] != runs[2],
            "not in step: {runs:?}"
        );
    }

    #[test]
    fn jitter_spreads_a_thousand_timers_over_the_window() {
        let d = Duration::from_secs(1200);
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let t = Jitter::new(seed(&format!("node{i}"))).within(d, 0.75);
            assert!(t >= d * 3 / 4 && t <= d);
            let b = ((t - d * 3 / 4).as_secs_f64() / (d.as_secs_f64() / 4.0) * 10.0) as usize;
            buckets[b.min(9)] += 1;
        }
        assert!(
            buckets.iter().all(|b| (50..=150).contains(b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn allocations_document() {
        let r = Record {
            key: AttachmentKey::new("c1", "eth0"),
            ip: "10.244.1.5".parse().unwrap(),
            extra: serde_json::Value::Null,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&allocations_json(std::slice::from_ref(&r), |_| true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"ip": "10.244.1.5", "containerID": "c1", "ifname": "eth0", "present": true}])
        );
        let mut gone = r;
        gone.extra = serde_json::json!({"hostVeth": "twl0123456789ab"});
        let v: serde_json::Value =
            serde_json::from_slice(&allocations_json(&[gone], |_| false)).unwrap();
        assert_eq!(v[0]["hostVeth"], "twl0123456789ab");
        assert_eq!(v[0]["present"], false);
    }
}
