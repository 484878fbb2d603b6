//! The fuzz corpus as ordinary tests: every file checked in under `fuzz/corpus/<target>/`
//! goes through the check its fuzz target runs (`fuzz/src/lib.rs`, compiled in here), on
//! stable Rust and without libFuzzer, so a codec change that breaks an input the fuzzer
//! once found interesting fails `cargo nextest run` even where no fuzzing runs. The fuzz
//! README says how the corpus is made and grown; below it, regressions for what fuzzing found.

use std::fs;
use std::net::Ipv4Addr;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod checks;

use twill_bgp::packet::{
    self, Aggregator, AsPath, AsSegment, AsSegmentKind, Attrs, Message, Origin, Update,
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files in `dir`, sorted.
fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    files.sort();
    Ok(files)
}

#[test]
fn every_corpus_file_passes_its_targets_check() {
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (target, check) in checks::TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let mut inputs = files(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every fuzz target has a corpus)", dir.display()));
        assert!(
            !inputs.is_empty(),
            "{} is empty: seed it (fuzz/README.md)",
            dir.display()
        );
        // The inputs that once crashed a target, kept apart so no corpus merge drops them.
        inputs.extend(files(&fuzz_dir().join("regressions").join(target)).unwrap_or_default());
        for f in inputs {
            let data = fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            // Run every file even after a failure, so the report names them all.
            if panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failed.push(f.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {replayed} corpus files fail their fuzz target's check (the panics are above; \
         reproduce one with its target's binary, fuzz/README.md):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn every_corpus_folder_is_a_target() {
    for kind in ["corpus", "regressions"] {
        for dir in files(&fuzz_dir().join(kind)).expect("fuzz/corpus and fuzz/regressions") {
            let name = dir.file_name().expect("a folder").to_string_lossy();
            assert!(
                checks::TARGETS.iter().any(|(t, _)| *t == name),
                "fuzz/{kind}/{name} names no target in fuzz/src/lib.rs TARGETS, so nothing \
                 replays it"
            );
        }
    }
}

/// Found by the roundtrip target (fuzz/regressions/roundtrip/as4-path-with-two-octet-aggregator): to a two-octet peer, a path
/// with a four-octet AS went out in AS4_PATH but an aggregator whose AS fits two octets went
/// out in AGGREGATOR alone, and RFC 6793 §4.2.3 makes the receiver ignore AS4_PATH then, so
/// the four-octet AS came back as AS_TRANS. The aggregator now goes in AS4_AGGREGATOR too.
#[test]
fn a_four_octet_path_with_a_two_octet_aggregator_survives_a_two_octet_peer() {
    let mut attrs = Attrs::local(Origin::Igp);
    attrs.as_path = AsPath {
        segments: vec![AsSegment {
            kind: AsSegmentKind::Sequence,
            asns: vec![4_200_000_001, 65001],
        }],
    };
    attrs.next_hop = Some(Ipv4Addr::new(192, 0, 2, 1));
    attrs.aggregator = Some(Aggregator {
        asn: 10240,
        address: Ipv4Addr::new(192, 0, 2, 9),
    });
    let sent = Message::Update(Box::new(Update {
        attrs: Some(attrs),
        nlri: vec!["203.0.113.0/24".parse().unwrap()],
        ..Update::default()
    }));
    let two_octet = checks::session(0);
    let mut bytes = Vec::new();
    packet::encode(&sent, &two_octet, &mut bytes).expect("encodes");
    assert_eq!(packet::decode(&bytes, &two_octet), Ok(sent));
}
