//! Figures for the pure side (not a test, not a benchmark against a reference): how long a
//! `PeerTable` takes to build for 5,000 peers × 1 block and 1,000 peers × 5 blocks, what a
//! lookup and an `admit` cost, and the ctl `Table` message's size and codec time.
//!
//!     cargo run --release -p twill-datapath --example table_figures

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use twill_datapath::ctl::Request;
use twill_datapath::filter::admit;
use twill_datapath::partial::Checksums;
use twill_datapath::table::{LocalNode, Peer, PeerTable};

/// `peers` peers of `blocks` /26 blocks each in 10.0.0.0/8, in a shuffled order.
fn peers(peers: u32, blocks: u32) -> (LocalNode, Vec<Peer>) {
    let mut seed = 0x1234_5678_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut ids: Vec<u32> = (0..peers * blocks).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let block = |k: u32| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + ((k + 1) << 6)), 26).unwrap();
    let local = LocalNode {
        node_ip: Ipv4Addr::new(192, 0, 2, 1),
        blocks: vec![block(peers * blocks)],
    };
    let list = (0..peers)
        .map(|i| Peer {
            node_ip: Ipv4Addr::from(0xac10_0000 + i + 2),
            port: 8285,
            blocks: (0..blocks)
                .map(|j| block(ids[(i * blocks + j) as usize]))
                .collect(),
            checksums: Checksums::Full,
        })
        .collect();
    (local, list)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn figures(np: u32, nb: u32) {
    let (local, list) = peers(np, nb);
    let builds: Vec<Duration> = (0..21)
        .map(|_| {
            let (l, p) = (local.clone(), list.clone());
            let t0 = Instant::now();
            black_box(PeerTable::new(1, l, p).unwrap());
            t0.elapsed()
        })
        .collect();
    let table = PeerTable::new(1, local.clone(), list.clone()).unwrap();
    let addrs: Vec<Ipv4Addr> = (0..1u32 << 20)
        .map(|i| {
            Ipv4Addr::from(0x0a00_0000 + (i.wrapping_mul(2_654_435_761) % (np * nb * 64 + 128)))
        })
        .collect();
    let t0 = Instant::now();
    let mut hits = 0u32;
    for a in &addrs {
        hits += u32::from(black_box(table.route(*a)).is_some());
    }
    let route_ns = t0.elapsed().as_nanos() as f64 / addrs.len() as f64;

    // admit: a 1400-byte packet from each peer to the local block, round robin.
    let mut pkt = vec![0u8; 1400];
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&1400u16.to_be_bytes());
    pkt[16..20].copy_from_slice(&local.blocks[0].network().octets());
    let packets: Vec<(Ipv4Addr, Vec<u8>)> = list
        .iter()
        .map(|p| {
            let mut q = pkt.clone();
            q[12..16].copy_from_slice(&p.blocks[0].network().octets());
            (p.node_ip, q)
        })
        .collect();
    let rounds = (1 << 20) / packets.len() + 1;
    let t0 = Instant::now();
    let mut ok = 0usize;
    for _ in 0..rounds {
        for (src, q) in &packets {
            ok += usize::from(admit(black_box(&table), *src, q).is_ok());
        }
    }
    let admit_ns = t0.elapsed().as_nanos() as f64 / (rounds * packets.len()) as f64;
    assert_eq!(ok, rounds * packets.len());

    let msg = Request::Table {
        generation: 1,
        local,
        peers: list,
    };
    let enc: Vec<Duration> = (0..21)
        .map(|_| {
            let t0 = Instant::now();
            black_box(msg.encode());
            t0.elapsed()
        })
        .collect();
    let bytes = msg.encode();
    let dec: Vec<Duration> = (0..21)
        .map(|_| {
            let t0 = Instant::now();
            black_box(Request::decode(&bytes).unwrap());
            t0.elapsed()
        })
        .collect();
    println!(
        "{np} peers x {nb} blocks: build {:?} (median of 21), {} intervals; route {route_ns:.1} ns \
         ({hits} hits of {}); admit {admit_ns:.1} ns; Table message {} B, encode {:?}, decode {:?}",
        median(builds),
        table.intervals(),
        addrs.len(),
        bytes.len(),
        median(enc),
        median(dec),
    );
}

fn main() {
    figures(5000, 1);
    figures(1000, 5);
}
