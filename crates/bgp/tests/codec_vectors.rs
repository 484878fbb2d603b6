//! Every message of the real BIRD and FRR sessions in `tests/vectors/` (format: its README)
//! decodes cleanly, re-encodes, and decodes again to the same value; messages Twill writes
//! the same way as the sender come out byte for byte.

mod codec_util;

use std::path::Path;

use twill_bgp::packet::{self, Family, Message, Negotiated};

struct Session {
    name: String,
    four_octet_as: bool,
    families: Vec<Family>,
    /// (sender comment, message bytes)
    messages: Vec<(String, Vec<u8>)>,
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn parse(path: &Path) -> Session {
    let text = std::fs::read_to_string(path).unwrap();
    let mut s = Session {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        four_octet_as: false,
        families: Vec::new(),
        messages: Vec::new(),
    };
    for line in text.lines() {
        if let Some(kv) = line.strip_prefix("#!") {
            let (k, v) = kv.split_once(':').unwrap();
            match k.trim() {
                "four-octet-as" => s.four_octet_as = v.trim() == "yes",
                "families" => {
                    s.families = v
                        .split(',')
                        .map(|f| match f.trim() {
                            "ipv4-unicast" => Family::IPV4_UNICAST,
                            "ipv6-unicast" => Family::IPV6_UNICAST,
                            other => panic!("{}: family {other}", s.name),
                        })
                        .collect()
                }
                _ => {}
            }
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else {
            let (bytes, comment) = line.split_once('#').unwrap_or((line, ""));
            s.messages
                .push((comment.trim().to_string(), hex(bytes.trim())));
        }
    }
    s
}

fn sessions() -> Vec<Session> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "vectors in {}", dir.display());
    files.iter().map(|p| parse(p)).collect()
}

/// The session's context from its two OPENs (`Negotiated::new`), checked against the file's
/// `#!` lines.
fn negotiated(s: &Session) -> Negotiated {
    let opens: Vec<_> = s
        .messages
        .iter()
        .filter_map(|(_, m)| match packet::decode(m, &Negotiated::default()) {
            Ok(Message::Open(o)) => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(opens.len(), 2, "{}: two OPENs", s.name);
    let neg = Negotiated::new(&opens[0], &opens[1]);
    assert_eq!(neg, Negotiated::new(&opens[1], &opens[0]), "{}", s.name);
    assert_eq!(neg.four_octet_as, s.four_octet_as, "{}", s.name);
    assert_eq!(neg.families, s.families, "{}", s.name);
    neg
}

#[test]
fn every_captured_message_decodes_and_re_encodes() {
    let (mut total, mut identical) = (0, 0);
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for s in sessions() {
        let neg = negotiated(&s);
        for (comment, wire) in &s.messages {
            let what = format!("{}: {comment}", s.name);
            assert_eq!(packet::frame(wire), Ok(Some(wire.len())), "{what}");
            let m = packet::decode(wire, &neg).unwrap_or_else(|n| panic!("{what}: {n}"));
            if let Message::Update(u) = &m {
                assert!(u.errors.is_empty(), "{what}: {:?}", u.errors);
            }
            let again = codec_util::encoded(&m, &neg);
            assert_eq!(
                packet::decode(&again, &neg).as_ref(),
                Ok(&m),
                "{what}: re-encoded as {again:02x?}"
            );
            total += 1;
            if &again == wire {
                identical += 1;
            }
            *kinds
                .entry(match m {
                    Message::Open(_) => "OPEN",
                    Message::Update(_) => "UPDATE",
                    Message::Notification(_) => "NOTIFICATION",
                    Message::Keepalive => "KEEPALIVE",
                    Message::RouteRefresh(_) => "ROUTE-REFRESH",
                })
                .or_default() += 1;
        }
    }
    eprintln!("{total} messages ({kinds:?}), {identical} re-encoded byte for byte");
    assert!(total > 200, "{total}");
    for k in [
        "OPEN",
        "UPDATE",
        "NOTIFICATION",
        "KEEPALIVE",
        "ROUTE-REFRESH",
    ] {
        assert!(kinds.contains_key(k), "no {k} in the vectors");
    }
}

/// What BIRD writes, Twill writes identically: the attribute order, one-octet lengths, and
/// the capabilities in one parameter are the same choices. (FRR differs on purpose: it
/// puts each capability in its own parameter and always uses extended lengths for AS_PATH
/// and MP_REACH_NLRI; those are compared by value above.)
#[test]
fn birds_updates_and_keepalives_re_encode_byte_for_byte() {
    let mut checked = 0;
    for s in sessions() {
        let neg = negotiated(&s);
        for (comment, wire) in &s.messages {
            if !comment.starts_with("from bird") {
                continue;
            }
            let m = packet::decode(wire, &neg).unwrap();
            if !matches!(
                m,
                Message::Update(_) | Message::Keepalive | Message::Notification(_)
            ) {
                continue;
            }
            assert_eq!(
                &codec_util::encoded(&m, &neg),
                wire,
                "{}: {comment}",
                s.name
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked}");
}
