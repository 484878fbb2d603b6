//! The check behind the fuzz target (`fuzz_targets/rip_decode.rs`), also compiled into
//! `crates/rip/tests/fuzz_corpus.rs` (by `#[path]`) so every corpus file is replayed in
//! each test run on stable Rust. It panics when the decoder breaks a promise:
//! - any bytes give `Ok` or `Err`, never a panic or an overflow;
//! - a Response holds only metrics 1..=16, a Request only metrics up to 16, and every
//!   prefix has no host bits;
//! - whatever decodes with entries re-encodes, and those bytes decode to the same message
//!   with nothing skipped and encode to the same bytes again.
//!
//! A corpus file is one UDP payload.

use twill_rip::packet::{decode, Message, INFINITY, MAX_ENTRIES};

/// A target's check: takes the raw fuzz input, panics on a broken promise.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and corpus folder.
pub const TARGETS: &[(&str, Check)] = &[("rip_decode", rip_decode)];

pub fn rip_decode(data: &[u8]) {
    let Ok(d) = decode(data) else { return };
    let entries = d.message.entries();
    assert!(entries.len() + d.skipped.len() <= MAX_ENTRIES);
    for e in entries {
        assert_eq!(e.prefix, e.prefix.trunc(), "{e}");
        match d.message {
            Message::Response(_) => assert!((1..=INFINITY).contains(&e.metric), "{e}"),
            _ => assert!(e.metric <= INFINITY, "{e}"),
        }
    }
    if entries.is_empty() && d.message != Message::WholeTableRequest {
        return;
    }
    let bytes = d.message.encode();
    let again = decode(&bytes)
        .unwrap_or_else(|e| panic!("{:?} re-encoded does not decode: {e}", d.message));
    assert_eq!(again.message, d.message);
    assert!(again.skipped.is_empty());
    assert_eq!(again.message.encode(), bytes);
}
