//! Feed the RIB 100,000 prefixes and report time and memory (a report, not a test).
//!
//! `cargo run --release -p twill-bgp --example rib_100k [-- N [receive]]` (`receive`: only
//! the first run, so the process's peak RSS printed at the end is that run's)
//!
//! Three runs, each on a fresh RIB:
//! 1. receive: one eBGP peer announces N /24s in full UPDATEs (about 1,000 prefixes each, as
//!    a 4,096-byte UPDATE carries); no other peer is up. This is the bench's receiver.
//! 2. receive + reflect: the same with one iBGP peer up that gets every route (Adj-RIB-Out).
//! 3. announce: N originated prefixes dumped to one new eBGP peer (the bench's other
//!    direction).
//!
//! Memory: the live heap as counted by this program's allocator (peak and after), and the
//! RIB's own estimate (`Rib::heap_size`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net};
use twill_bgp::packet::{AsPath, AsSegment, AsSegmentKind, Attrs, Family, Origin, Update};
use twill_bgp::policy::Policy;
use twill_bgp::rib::{PeerConfig, PeerId, PeerSession, Rib, RibConfig};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const PER_UPDATE: usize = 1000;

/// CPU time of this (single) thread so far, from the scheduler's own count, in seconds: the
/// machine may be busy, so wall time alone says little.
fn cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(f64::NAN, |ns| ns as f64 / 1e9)
}

fn mb(b: usize) -> f64 {
    b as f64 / 1e6
}

fn prefixes(n: usize) -> Vec<Ipv4Net> {
    (0..n as u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0A00_0000 + (i << 8)), 24).unwrap())
        .collect()
}

fn feeder_attrs() -> Attrs {
    let mut a = Attrs::local(Origin::Igp);
    a.as_path = AsPath {
        segments: vec![AsSegment {
            kind: AsSegmentKind::Sequence,
            asns: vec![65001, 65010],
        }],
    };
    a.next_hop = Some(Ipv4Addr::new(192, 0, 2, 11));
    a
}

fn rib_with_feeder() -> Rib {
    let mut rib = Rib::new(RibConfig::new(65000, Ipv4Addr::new(10, 0, 0, 1)));
    let mut feeder = PeerConfig::new(65001, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)));
    feeder.import = Some(Policy::accept_all());
    rib.add_peer(PeerId(1), feeder).unwrap();
    rib.peer_up(
        PeerId(1),
        PeerSession::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            Ipv4Addr::new(192, 0, 2, 11),
            vec![Family::IPV4_UNICAST],
        ),
    )
    .unwrap();
    rib
}

/// Feed `n` prefixes; returns (wall seconds, CPU seconds, FIB changes, out prefixes).
fn feed(rib: &mut Rib, n: usize) -> (f64, f64, usize, usize) {
    let all = prefixes(n);
    // Decoded UPDATEs as the codec would hand them over, built before the clock starts.
    let updates: Vec<Update> = all
        .chunks(PER_UPDATE)
        .map(|c| Update {
            attrs: Some(feeder_attrs()),
            nlri: c.to_vec(),
            ..Update::default()
        })
        .collect();
    drop(all);
    let t = Instant::now();
    let c0 = cpu();
    let (mut fib, mut out) = (0, 0);
    for u in &updates {
        let c = rib.apply(PeerId(1), u).unwrap();
        fib += c.fib.len();
        out += c
            .out
            .iter()
            .map(|(_, u)| u.announce.iter().map(|(_, p)| p.len()).sum::<usize>())
            .sum::<usize>();
    }
    (t.elapsed().as_secs_f64(), cpu() - c0, fib, out)
}

fn report(name: &str, (secs, cpu): (f64, f64), rib: &Rib, base: usize, extra: &str) {
    let live = LIVE.load(Ordering::Relaxed) - base;
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let s = rib.stats();
    println!(
        "{name}: {:.3} s ({:.3} s CPU); heap live {:.2} MB, peak {:.2} MB (RIB estimate {:.2} MB); \
         {} prefixes, {} paths, {} attribute sets{extra}",
        secs,
        cpu,
        mb(live),
        mb(peak),
        mb(s.heap_bytes),
        s.prefixes,
        s.paths,
        s.attr_sets
    );
}

/// The kernel's figure for this process's peak resident set.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn reset_peak() -> usize {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("N: a number of prefixes"))
        .unwrap_or(100_000);

    // 1. receive
    let base = reset_peak();
    let mut rib = rib_with_feeder();
    let (secs, cpu_s, fib, out) = feed(&mut rib, n);
    report(
        "receive",
        (secs, cpu_s),
        &rib,
        base,
        &format!("; {fib} FIB changes, {out} prefixes out"),
    );
    drop(rib);

    if std::env::args().nth(2).as_deref() == Some("receive") {
        println!("process peak RSS (VmHWM): {}", peak_rss());
        return;
    }

    // 2. receive with an iBGP peer that gets everything
    let base = reset_peak();
    let mut rib = rib_with_feeder();
    rib.add_peer(
        PeerId(2),
        PeerConfig::new(65000, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 12))),
    )
    .unwrap();
    rib.peer_up(
        PeerId(2),
        PeerSession::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            Ipv4Addr::new(192, 0, 2, 12),
            vec![Family::IPV4_UNICAST],
        ),
    )
    .unwrap();
    let (secs, cpu_s, fib, out) = feed(&mut rib, n);
    report(
        "receive+ibgp",
        (secs, cpu_s),
        &rib,
        base,
        &format!("; {fib} FIB changes, {out} prefixes out"),
    );
    drop(rib);

    // 3. originate N, dump to a new eBGP peer
    let base = reset_peak();
    let mut rib = Rib::new(RibConfig::new(65000, Ipv4Addr::new(10, 0, 0, 1)));
    let t = Instant::now();
    let c0 = cpu();
    rib.originate_all(
        prefixes(n).into_iter().map(IpNet::V4),
        Attrs::local(Origin::Igp),
    );
    let orig = t.elapsed().as_secs_f64();
    let mut cfg = PeerConfig::new(65001, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)));
    cfg.export = Some(Policy::accept_all());
    rib.add_peer(PeerId(1), cfg).unwrap();
    let t = Instant::now();
    let c = rib
        .peer_up(
            PeerId(1),
            PeerSession::new(
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                Ipv4Addr::new(192, 0, 2, 11),
                vec![Family::IPV4_UNICAST],
            ),
        )
        .unwrap();
    let dump = t.elapsed().as_secs_f64();
    let cpu_s = cpu() - c0;
    let groups = c.out[0].1.announce.len();
    let out: usize = c.out[0].1.announce.iter().map(|(_, p)| p.len()).sum();
    drop(c);
    report(
        "announce",
        (orig + dump, cpu_s),
        &rib,
        base,
        &format!(
            "; originate {orig:.3} s, dump {dump:.3} s, {out} prefixes out in {groups} group(s)"
        ),
    );
    println!("process peak RSS (VmHWM): {}", peak_rss());
}
