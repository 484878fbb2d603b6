//! The check behind the fuzz target (`fuzz_targets/nflog_decode.rs`), also compiled into
//! `crates/netlink/tests/fuzz_corpus.rs` (by `#[path]`) so every corpus file is replayed in
//! each test run on stable Rust. A corpus file is one datagram as an nfnetlink_log socket
//! receives it (netlink messages back to back). It panics when the decoder breaks a
//! promise:
//! - any bytes give packets or nothing, never a panic or an overflow;
//! - a prefix holds no NUL;
//! - an IPv4 summary's ports are only there for TCP, UDP and SCTP.

use twill_netlink::codec::messages;
use twill_netlink::nflog::decode;

/// A target's check: takes the raw fuzz input, panics on a broken promise.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and corpus folder.
pub const TARGETS: &[(&str, Check)] = &[("nflog_decode", nflog_decode)];

pub fn nflog_decode(data: &[u8]) {
    for m in messages(data).flatten() {
        let Some(p) = decode(m.msg_type, m.payload) else {
            continue;
        };
        assert!(!p.prefix.contains('\0'), "{p:?}");
        if let Some(v) = p.ipv4 {
            if v.ports.is_some() {
                assert!([6, 17, 132].contains(&v.protocol), "{v:?}");
            }
        }
    }
}
