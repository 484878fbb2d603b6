//! The fuzz corpus as ordinary tests: every file under `fuzz/corpus/<target>/` goes through
//! the check its fuzz target runs (`fuzz/src/lib.rs`, compiled in here), on stable Rust and
//! without libFuzzer.

use std::fs;
use std::path::Path;

#[path = "../fuzz/src/lib.rs"]
mod checks;

#[test]
fn every_corpus_file_passes_its_targets_check() {
    let mut replayed = 0;
    for (target, check) in checks::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every fuzz target has a corpus)", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for f in files {
            check(&fs::read(&f).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= 3);
}
