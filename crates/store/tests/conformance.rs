//! The shared conformance suite (`twill_store::conformance`) run against the embedded
//! store: each case on a fresh folder, through two handles (as two processes would).

use twill_store::embedded::EmbeddedStore;
use twill_testkit::TempDir;

fn run(name: &str) {
    let dir = TempDir::new("store");
    let store = EmbeddedStore::open(&dir.path).unwrap();
    let other = EmbeddedStore::open(&dir.path).unwrap();
    let compact = |rev| store.compact(rev).map(|_| ());
    twill_store::conformance::run_one(name, &store, &other, &compact, "/twill/v1/test/");
}

twill_store::conformance_tests!(run);

/// The whole suite in one go on one store, as `run_all` offers it to other implementations.
#[test]
fn run_all_on_one_store() {
    let dir = TempDir::new("storeall");
    let store = EmbeddedStore::open(&dir.path).unwrap();
    let other = EmbeddedStore::open(&dir.path).unwrap();
    let compact = |rev| store.compact(rev).map(|_| ());
    twill_store::conformance::run_all(&store, &other, &compact, "/twill/v1/all/");
}
