//! The decoders are total, and what they accept re-encodes stably: hundreds of thousands of
//! deterministic mutations of real and crafted messages go through `frame` and `decode` on
//! every kind of session, and each message decoded is encoded and decoded again to the same
//! value. (The fuzz targets search further; this runs in every test run, bounded to about
//! a second in release, a few in debug.)

mod codec_util;

use codec_util::*;
use twill_bgp::packet::{self, EncodeError, Message, Negotiated};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut s = vec![
        msg(KEEPALIVE, &[]),
        msg(NOTIFICATION, &[3, 1, 0x40, 1, 1, 9]),
        msg(ROUTE_REFRESH, &[0, 2, 0, 1]),
        update(
            &["10.0.0.0/8"],
            &std_attrs(65030),
            &["10.244.30.0/24", "192.0.2.1/32"],
        ),
        update(
            &[],
            &[
                mp_reach(
                    2,
                    1,
                    &[v6("2001:db8::1"), v6("fe80::1")].concat(),
                    &["2001:db8:1::/48"],
                ),
                mp_unreach(2, 1, &["2001:db8:2::/64"]),
                origin(2),
                as_path4(&[65030, 4_200_000_001]),
                attr(0xc0, 7, &[0, 0, 0xfe, 0x06, 192, 0, 2, 1]),
                attr(0xc0, 8, &[0xfe, 6, 0, 1]),
                attr(0xc0, 32, &[0; 12]),
                attr(0x80, 9, &[192, 0, 2, 1]),
                attr(0x80, 10, &[192, 0, 2, 2]),
                attr(0x40, 5, &[0, 0, 0, 100]),
                attr(0x80, 4, &[0, 0, 0, 5]),
                attr(0x40, 6, &[]),
                attr(0xc0, 240, b"hi"),
            ]
            .concat(),
            &[],
        ),
        update(
            &[],
            &[
                origin(0),
                as_path2(&[65030, 23456]),
                next_hop([203, 0, 113, 1]),
                attr(0xc0, 7, &[0x5b, 0xa0, 192, 0, 2, 1]),
                attr(0xc0, 17, &[2, 2, 0, 0, 0xfe, 0x06, 0xfa, 0x56, 0xea, 0x01]),
                attr(0xc0, 18, &[0xfa, 0x56, 0xea, 0x01, 192, 0, 2, 1]),
            ]
            .concat(),
            &["10.244.30.0/24"],
        ),
    ];
    // Every captured message too.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "txt") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                if line.starts_with('#') || line.trim().is_empty() {
                    continue;
                }
                let hex = line.split('#').next().unwrap().trim();
                s.push(
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect(),
                );
            }
        }
    }
    let mut o = vec![4, 0xfe, 0x06, 0, 90, 203, 0, 113, 1];
    let caps = [
        2u8, 18, 1, 4, 0, 2, 0, 1, 64, 6, 0x80, 120, 0, 1, 1, 0x80, 65, 4, 0, 0, 0xfe, 6,
    ];
    o.push(caps.len() as u8);
    o.extend_from_slice(&caps);
    s.push(msg(OPEN, &o));
    s
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(m.len());
        match rng.below(7) {
            0 => m[at] = rng.next() as u8,
            1 => m[at] ^= 1 << rng.below(8),
            2 => m.truncate(at),
            3 => {
                let b = rng.next() as u8;
                m.insert(at, b)
            }
            4 if at < m.len() => {
                m.remove(at);
            }
            // Small length-like values where lengths live.
            5 => m[at] = [0, 1, 2, 3, 4, 5, 16, 32, 33, 128, 129, 255][rng.below(12)],
            _ => m[at] = m[at].wrapping_add(1),
        }
        if m.is_empty() {
            break;
        }
    }
    // Keep the header's length right most of the time, so the body gets exercised.
    if m.len() >= 19 && rng.below(4) != 0 {
        let len = (m.len() as u16).to_be_bytes();
        m[16] = len[0];
        m[17] = len[1];
        m[..16].fill(0xff);
    }
    m
}

/// A decoded message as it must decode again: RFC 7606's notes are not encoded, and an
/// unknown attribute goes on with the Partial bit.
fn normal(m: &Message) -> Message {
    let mut m = m.clone();
    if let Message::Update(u) = &mut m {
        u.errors.clear();
        if let Some(a) = &mut u.attrs {
            for r in &mut a.unknown {
                r.flags |= 0x20;
            }
        }
    }
    m
}

#[test]
fn mutated_messages_never_panic_and_what_decodes_re_encodes_stably() {
    let sessions = [
        Negotiated::default(),
        ebgp4(),
        ibgp4(),
        Negotiated {
            ibgp: true,
            ..Negotiated::default()
        },
    ];
    let seeds = seeds();
    let rounds = if cfg!(debug_assertions) { 150 } else { 1500 };
    let mut rng = Rng(0x7769_6c6c_2d62_6770);
    let (mut decoded, mut tried) = (0usize, 0usize);
    for _ in 0..rounds {
        for seed in &seeds {
            let m = mutate(&mut rng, seed);
            tried += 1;
            let _ = packet::frame(&m);
            for neg in &sessions {
                let Ok(msg) = packet::decode(&m, neg) else {
                    continue;
                };
                decoded += 1;
                let mut again = Vec::new();
                match packet::encode(&msg, neg, &mut again) {
                    Ok(()) => {}
                    // Twill's encoding of what a peer sent may be longer (extended lengths).
                    Err(EncodeError::TooLong { .. }) => continue,
                    Err(e) => panic!("{e}: {msg:?}"),
                }
                let back = packet::decode(&again, neg)
                    .unwrap_or_else(|n| panic!("{n}\nfrom {m:02x?}\nas {msg:?}\nto {again:02x?}"));
                assert_eq!(
                    normal(&back),
                    normal(&msg),
                    "from {m:02x?}\nto {again:02x?}"
                );
            }
        }
    }
    eprintln!("{tried} mutated messages, {decoded} decodes re-encoded");
    assert!(decoded > tried / 10, "{decoded} of {tried}");
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    let neg = [Negotiated::default(), ebgp4()];
    for _ in 0..if cfg!(debug_assertions) {
        20_000
    } else {
        200_000
    } {
        let len = rng.below(64);
        let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 && m.len() >= 19 {
            m[..16].fill(0xff);
            let len = (m.len() as u16).to_be_bytes();
            m[16..18].copy_from_slice(&len);
            m[18] = 1 + rng.below(5) as u8;
        }
        let _ = packet::frame(&m);
        for n in &neg {
            let _ = packet::decode(&m, n);
        }
    }
}
