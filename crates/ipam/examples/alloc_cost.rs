//! Cost of `allocate`, `update_extra` and `release` with N pods already on
//! the node, in a `twl…` temp dir under /tmp (or the dir given as the first argument).
//!
//! `cargo run --release -p twill-ipam --example alloc_cost -- [DIR] [PODS] [SUBNET]`
//!
//! Reports medians and p99 in microseconds; the full-pool case shows the wrap-around path.

use std::time::{Duration, Instant};
use twill_ipam::{AttachmentKey, Pool, Range, RecordDir};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let pods: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(1000);
    let subnet = args.next().unwrap_or_else(|| "10.244.0.0/22".to_string());
    let data = base.join(format!("twlipambench{}", std::process::id()));
    let dir = RecordDir::open(&data, "bench").unwrap();
    // The default /22 holds 1021 pod addresses: 1000 pods leave it nearly full, the worst
    // case for the round-robin walk. A /16 shows the common case.
    let pool = Pool::new(
        vec![Range::new(subnet.parse().unwrap(), None, None, None).unwrap()],
        vec![],
    )
    .unwrap();
    let extra = serde_json::json!({"hostVeth": "twl0123456789", "portMappings": [{"hostPort": 8080, "containerPort": 80}]});
    let key = |i: usize| AttachmentKey::new(format!("{i:064x}"), "eth0");
    for i in 0..pods {
        dir.allocate(&pool, &key(i), extra.clone()).unwrap();
    }
    let rounds = 2000;
    let (mut add, mut upd, mut del) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        // Churn: free one of the old pods, then add a new one (the walk must find the hole).
        let old = key(r % pods);
        let t = Instant::now();
        dir.release(&old).unwrap().unwrap();
        del.push(t.elapsed());
        let t = Instant::now();
        dir.allocate(&pool, &old, serde_json::Value::Null).unwrap();
        add.push(t.elapsed());
        let t = Instant::now();
        dir.update_extra(&old, extra.clone()).unwrap();
        upd.push(t.elapsed());
    }
    println!(
        "{pods} pods in {} (capacity {}): allocate median {:.1} us p99 {:.1} us; update_extra median {:.1} us; release median {:.1} us p99 {:.1} us",
        pool.ranges()[0].subnet,
        pool.capacity(),
        pct(&mut add, 0.5),
        pct(&mut add, 0.99),
        pct(&mut upd, 0.5),
        pct(&mut del, 0.5),
        pct(&mut del, 0.99)
    );
    std::fs::remove_dir_all(&data).unwrap();
}
