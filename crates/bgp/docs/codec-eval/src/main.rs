//! Twill issue 8: does netgauze-bgp-pkt meet Twill's codec needs?
//! `cargo run --release` prints the RFC 7606 probes and the decode throughput.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use netgauze_bgp_pkt::path_attribute::{PathAttribute, PathAttributeValue, UnknownAttribute};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use netgauze_parse_utils::WritablePdu;

/// One UPDATE: header, no withdrawn routes, the given attribute bytes, IPv4 NLRI.
fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let len = 19 + 2 + 2 + attrs.len() + nlri.len();
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(attrs);
    m.extend_from_slice(nlri);
    m
}

// ORIGIN IGP, AS_PATH SEQUENCE [65001] (four-octet), NEXT_HOP 192.0.2.1.
const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
const AS_PATH: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9];
const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 1];
const NLRI: [u8; 4] = [24, 203, 0, 113]; // 203.0.113.0/24

fn ctx(fail_on_malformed_path_attr: bool) -> BgpParsingContext {
    BgpParsingContext::new(
        true,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        true,
        fail_on_malformed_path_attr,
    )
}

fn probe(name: &str, attrs: &[u8]) {
    let msg = update(attrs, &NLRI);
    for fail in [true, false] {
        let mut c = ctx(fail);
        let r = BgpMessage::parse(&mut SliceReader::new(&msg), &mut c);
        println!("== {name}, fail_on_malformed_path_attr={fail}");
        match r {
            Ok(BgpMessage::Update(u)) => {
                println!(
                    "   Ok: {} NLRI, {} withdrawn",
                    u.nlri().len(),
                    u.withdraw_routes().len()
                );
                for a in u.path_attributes() {
                    println!(
                        "   attr {:?} optional={} transitive={} partial={}",
                        a.value(),
                        a.optional(),
                        a.transitive(),
                        a.partial()
                    );
                }
                println!("   ignored errors: {:?}", c.parsing_errors());
            }
            Ok(other) => println!("   Ok (not an UPDATE): {other:?}"),
            Err(e) => println!("   Err: {e}"),
        }
    }
}

/// `n` distinct IPv4 /24s (10.0.0.0/24, 10.0.1.0/24, ...), as UPDATEs carrying at most
/// `per_msg` prefixes each, all with the same ORIGIN/AS_PATH/NEXT_HOP, each message ≤4096 bytes.
pub fn stream(n: u32, per_msg: usize) -> Vec<u8> {
    let attrs: Vec<u8> = [&ORIGIN[..], &AS_PATH, &NEXT_HOP].concat();
    let mut out = Vec::new();
    let mut nlri = Vec::new();
    let mut in_msg = 0;
    for i in 0..n {
        let a = 10 + (i >> 16);
        nlri.extend_from_slice(&[24, a as u8, (i >> 8) as u8, i as u8]);
        in_msg += 1;
        if in_msg == per_msg || 23 + attrs.len() + nlri.len() + 4 > 4096 {
            out.extend(update(&attrs, &nlri));
            nlri.clear();
            in_msg = 0;
        }
    }
    if !nlri.is_empty() {
        out.extend(update(&attrs, &nlri));
    }
    out
}

fn bench(label: &str, bytes: &[u8], n: u32) {
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let mut c = ctx(true);
        let mut cur = SliceReader::new(bytes);
        let mut routes = 0usize;
        let mut msgs = 0usize;
        while !cur.is_empty() {
            match BgpMessage::parse(&mut cur, &mut c).expect("valid stream") {
                BgpMessage::Update(u) => routes += black_box(u).nlri().len(),
                _ => unreachable!(),
            }
            msgs += 1;
        }
        assert_eq!(routes, n as usize);
        black_box(msgs);
        times.push(t.elapsed());
    }
    times.sort();
    let med = times[times.len() / 2];
    println!(
        "{label}: {} bytes, median of 15 {:.2} ms, {:.1} M prefixes/s, {:.0} MB/s",
        bytes.len(),
        med.as_secs_f64() * 1e3,
        n as f64 / med.as_secs_f64() / 1e6,
        bytes.len() as f64 / med.as_secs_f64() / 1e6
    );
}

fn main() {
    // Well-known ORIGIN sent with the Optional bit (flags 0xC0): RFC 7606 §3 c → treat-as-withdraw.
    probe(
        "ORIGIN flags 0xC0",
        &[&[0xc0, 1, 1, 0][..], &AS_PATH, &NEXT_HOP].concat(),
    );
    // ORIGIN length 2: RFC 7606 §7.1 → treat-as-withdraw.
    probe(
        "ORIGIN length 2",
        &[&[0x40, 1, 2, 0, 0][..], &AS_PATH, &NEXT_HOP].concat(),
    );
    // Two ORIGINs: RFC 7606 §3 g → discard all but the first.
    probe(
        "duplicate ORIGIN",
        &[&ORIGIN[..], &[0x40, 1, 1, 2], &AS_PATH, &NEXT_HOP].concat(),
    );
    // Unknown optional transitive attribute (code 0xf0, flags 0xC0).
    probe(
        "unknown optional transitive",
        &[
            &ORIGIN[..],
            &AS_PATH,
            &NEXT_HOP,
            &[0xc0, 0xf0, 2, 0xab, 0xcd],
        ]
        .concat(),
    );

    // Re-encoding it with the Partial bit (RFC 4271 §5 / §9): flags are set only at construction.
    let unknown = UnknownAttribute::new(0xf0, vec![0xab, 0xcd]);
    let with_partial = PathAttribute::from(
        true,
        true,
        true,
        false,
        PathAttributeValue::UnknownAttribute(unknown),
    )
    .expect("unknown attributes take any flags");
    let mut out = Vec::new();
    with_partial.write(&mut out).expect("write");
    println!("== re-encoded unknown with partial: {out:02x?}");

    let n = 100_000;
    bench(
        "netgauze, packed (≤1016 prefixes/UPDATE)",
        &stream(n, usize::MAX),
        n,
    );
    bench("netgauze, 1 prefix/UPDATE", &stream(n, 1), n);
}
