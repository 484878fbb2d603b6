//! The fuzz corpus as ordinary tests (dp-pure's file, beside dp-io's tests): every file under
//! `fuzz/corpus/<target>/` (and `fuzz/regressions/<target>/`) goes through the check its
//! fuzz target runs (`fuzz/src/lib.rs`, compiled in here), on stable Rust and without
//! libFuzzer; and the seeds `fuzz/seeds.py` wrote still mean what their names say.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use twill_datapath::ctl::{Reply, Request};
use twill_datapath::filter::{admit, Drop};

#[path = "../fuzz/src/lib.rs"]
mod checks;

fn files(target: &str, kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn every_corpus_file_passes_its_targets_check() {
    let mut replayed = 0;
    for (target, check) in checks::TARGETS {
        let corpus = files(target, "corpus");
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target}: empty or missing (every target has a corpus)"
        );
        for f in corpus.iter().chain(&files(target, "regressions")) {
            check(&fs::read(f).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= 10);
}

#[test]
fn the_seeds_mean_what_their_names_say() {
    let table = checks::fixed_table();
    let reasons = [
        ("short", Drop::Short),
        ("ipv6", Drop::NotIpv4),
        ("bad_ihl", Drop::BadHeader),
        ("stranger", Drop::UnknownPeer),
        ("spoofed", Drop::SpoofedInner),
        ("no_blocks", Drop::SpoofedInner),
        ("foreign", Drop::ForeignDst),
    ];
    let seed = |target: &str, name: &str| {
        fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(target)
                .join(name),
        )
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}/{name}: {e} (run fuzz/seeds.py)"))
    };
    for name in ["ok", "ok_options", "ok_fragment", "ok_nested"] {
        let b = seed("admit", name);
        let outer = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        assert!(admit(&table, outer, &b[4..]).is_ok(), "{name}");
    }
    for (name, reason) in reasons {
        let b = seed("admit", name);
        let outer = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        assert_eq!(admit(&table, outer, &b[4..]), Err(reason), "{name}");
    }
    for name in ["hello", "table", "table_overlap", "stats", "shutdown"] {
        Request::decode(&seed("ctl_decode", name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["hello_ack", "table_ack", "stats_reply", "error"] {
        Reply::decode(&seed("ctl_decode", name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
