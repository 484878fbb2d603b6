//! How long the codec takes to frame and decode a 100,000-route feed, as the speaker reads
//! one from a peer: `cargo run --release -p twill-bgp --example decode_100k [ROUTES] [RUNS]`.
//!
//! The feed is packed the way a BIRD feeder packs it (one attribute set, as many /24s per
//! UPDATE as fit 4096 octets); a second feed has one UPDATE per route, the worst case. It
//! prints the median of RUNS (default 5) for each, and the allocations the decoder made per
//! UPDATE (it must not allocate per prefix beyond the output Vec). A report, not a test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use twill_bgp::packet::{self, AsPath, Attrs, Community, Family, Message, Negotiated, Origin};

/// Counts allocations, to show the decoder's per-UPDATE (not per-prefix) allocations.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn decode_all(stream: &[u8], neg: &Negotiated) -> (usize, usize) {
    let mut rest = stream;
    let (mut routes, mut updates) = (0, 0);
    while let Ok(Some(len)) = packet::frame(rest) {
        let (msg, tail) = rest.split_at(len);
        match packet::decode(msg, neg) {
            Ok(Message::Update(u)) => {
                routes += u.nlri.len();
                updates += 1;
            }
            other => panic!("not a clean UPDATE: {other:?}"),
        }
        rest = tail;
    }
    (routes, updates)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args
        .next()
        .map_or(100_000, |a| a.parse().expect("ROUTES: a number"));
    let runs: usize = args
        .next()
        .map_or(5, |a| a.parse().expect("RUNS: a number"));
    let neg = Negotiated {
        four_octet_as: true,
        families: vec![Family::IPV4_UNICAST],
        ibgp: false,
    };
    let mut attrs = Attrs::local(Origin::Igp);
    attrs.as_path = AsPath::default().prepend(65030);
    attrs.next_hop = Some(Ipv4Addr::new(203, 0, 113, 1));
    attrs.communities = vec![Community(0xfe06_0001)];
    let prefixes: Vec<IpNet> = (0..n)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from((10 << 24) + (i << 8)), 24).unwrap()))
        .collect();

    let mut packed = Vec::new();
    packet::encode_announce(&attrs, &prefixes, &neg, &mut packed).unwrap();
    let mut single = Vec::new();
    for p in &prefixes {
        packet::encode_announce(&attrs, std::slice::from_ref(p), &neg, &mut single).unwrap();
    }

    for (name, stream) in [("packed", &packed), ("one route per UPDATE", &single)] {
        let mut times = Vec::new();
        let mut counts = (0, 0);
        let mut allocs = 0;
        for _ in 0..runs {
            let before = ALLOCS.load(Ordering::Relaxed);
            let t = Instant::now();
            counts = decode_all(stream, &neg);
            times.push(t.elapsed());
            allocs = ALLOCS.load(Ordering::Relaxed) - before;
        }
        assert_eq!(counts.0, n as usize);
        let m = median(times);
        println!(
            "{name}: {} routes in {} UPDATEs ({} octets): median {:.2} ms of {runs} runs, \
             {:.0} ns/route, {:.1} allocations/UPDATE",
            counts.0,
            counts.1,
            stream.len(),
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() * 1e9 / f64::from(n),
            allocs as f64 / counts.1 as f64,
        );
    }
}
