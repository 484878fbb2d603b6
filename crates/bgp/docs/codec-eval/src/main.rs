//! Twill issue 8: does netgauze-bgp-pkt meet Twill's codec needs?
//! `cargo run --release` prints the RFC 7606 probes and the decode throughput, each beside
//! Twill's own codec (twill_bgp::packet) on the same bytes.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use netgauze_bgp_pkt::path_attribute::{PathAttribute, PathAttributeValue, UnknownAttribute};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use netgauze_parse_utils::WritablePdu;
use twill_bgp::packet;

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
    println!("== {name}");
    twill_probe(attrs);
    for fail in [true, false] {
        let mut c = ctx(fail);
        let r = BgpMessage::parse(&mut SliceReader::new(&msg), &mut c);
        println!("   netgauze, fail_on_malformed_path_attr={fail}:");
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

/// Decodes the whole stream with netgauze; returns the IPv4 prefixes announced.
fn netgauze_decode(bytes: &[u8]) -> usize {
    let mut c = ctx(true);
    let mut cur = SliceReader::new(bytes);
    let mut routes = 0;
    while !cur.is_empty() {
        match BgpMessage::parse(&mut cur, &mut c).expect("valid stream") {
            BgpMessage::Update(u) => routes += black_box(u).nlri().len(),
            _ => unreachable!(),
        }
    }
    routes
}

/// Twill's session for the stream: four-octet ASes, eBGP, IPv4 unicast.
fn twill_session() -> packet::Negotiated {
    packet::Negotiated {
        four_octet_as: true,
        ..packet::Negotiated::default()
    }
}

/// Decodes the whole stream with Twill's codec, framing it as the speaker does.
fn twill_decode(bytes: &[u8]) -> usize {
    let neg = twill_session();
    let mut buf = bytes;
    let mut routes = 0;
    while let Some(len) = packet::frame(buf).expect("valid stream") {
        match packet::decode(&buf[..len], &neg).expect("valid stream") {
            packet::Message::Update(u) => routes += black_box(u).nlri.len(),
            _ => unreachable!(),
        }
        buf = &buf[len..];
    }
    assert!(buf.is_empty());
    routes
}

/// Both decoders on the same bytes, alternating within each of 15 rounds so the machine's
/// load falls on both alike; prints the median of each.
fn bench(label: &str, bytes: &[u8], n: u32) {
    let decoders: [(&str, fn(&[u8]) -> usize); 2] =
        [("netgauze", netgauze_decode), ("twill", twill_decode)];
    let mut times = vec![Vec::new(); decoders.len()];
    for _ in 0..15 {
        for (i, (_, decode)) in decoders.iter().enumerate() {
            let t = Instant::now();
            assert_eq!(decode(black_box(bytes)), n as usize);
            times[i].push(t.elapsed());
        }
    }
    for ((name, _), mut t) in decoders.iter().zip(times) {
        t.sort();
        let med = t[t.len() / 2];
        println!(
            "{name:8} {label}: {} bytes, median of 15 {:.2} ms, {:.1} M prefixes/s, {:.0} MB/s",
            bytes.len(),
            med.as_secs_f64() * 1e3,
            n as f64 / med.as_secs_f64() / 1e6,
            bytes.len() as f64 / med.as_secs_f64() / 1e6
        );
    }
}

/// What Twill's decoder makes of the same probe.
fn twill_probe(attrs: &[u8]) {
    match packet::decode(&update(attrs, &NLRI), &twill_session()) {
        Ok(packet::Message::Update(u)) => println!(
            "   twill: Ok: {} NLRI, {} withdrawn, attrs {}, errors {:?}",
            u.nlri.len(),
            u.withdrawn.len(),
            if u.attrs.is_some() { "kept" } else { "dropped" },
            u.errors
        ),
        other => println!("   twill: {other:?}"),
    }
}

fn main() {
    // `once DECODER STREAM`: decode one stream once, for an instruction count that the
    // machine's load does not change: `valgrind --tool=callgrind target/release/... once
    // twill packed` (DECODER: netgauze | twill | none; STREAM: packed | single).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [once, decoder, kind] = &args[..] {
        assert_eq!(once, "once", "usage: [once netgauze|twill packed|single]");
        let n = 100_000;
        let bytes = stream(n, if kind == "single" { 1 } else { usize::MAX });
        // `none` only builds the stream: subtract its count from the others.
        match decoder.as_str() {
            "twill" => assert_eq!(twill_decode(&bytes), n as usize),
            "netgauze" => assert_eq!(netgauze_decode(&bytes), n as usize),
            _ => drop(black_box(bytes)),
        }
        return;
    }
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
    bench("packed (≤1016 prefixes/UPDATE)", &stream(n, usize::MAX), n);
    bench("1 prefix/UPDATE", &stream(n, 1), n);
}
