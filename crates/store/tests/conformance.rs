//! The shared conformance suite (`twill_store::conformance`) run against the embedded
//! store: each case on a fresh folder, through two handles (as two processes would).

use twill_store::conformance::{Subject, CASES};
use twill_store::embedded::EmbeddedStore;
use twill_testkit::TempDir;

fn run(name: &str) {
    let (_, case) = CASES
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a case of that name");
    let dir = TempDir::new("store");
    let store = EmbeddedStore::open(&dir.path).unwrap();
    let other = EmbeddedStore::open(&dir.path).unwrap();
    let compact = |rev| store.compact(rev).map(|_| ());
    case(&Subject {
        store: &store,
        other: &other,
        compact: &compact,
        prefix: format!("/twill/v1/test/{name}/"),
    });
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { run(stringify!($name)); } )*

        #[test]
        fn every_case_is_run() {
            let here = [$(stringify!($name)),*];
            let missing: Vec<&str> = CASES.iter().map(|(n, _)| *n).filter(|n| !here.contains(n)).collect();
            assert!(missing.is_empty(), "add these cases to tests/conformance.rs: {missing:?}");
        }
    };
}

cases!(
    get_put,
    list_sorted,
    create_if_absent,
    update_with_stale_revision_refused,
    delete_and_delete_if,
    lease_expiry_deletes_keys_and_emits_delete,
    keep_alive_keeps_keys_past_ttl,
    revoke_deletes_keys_in_one_revision,
    watch_replays_from_a_past_revision,
    watch_sees_other_handles_writes,
    compacted_revision_is_an_error,
    revision_is_monotonic,
);

/// The whole suite in one go on one store, as `run_all` offers it to other implementations.
#[test]
fn run_all_on_one_store() {
    let dir = TempDir::new("storeall");
    let store = EmbeddedStore::open(&dir.path).unwrap();
    let other = EmbeddedStore::open(&dir.path).unwrap();
    let compact = |rev| store.compact(rev).map(|_| ());
    twill_store::conformance::run_all(&store, &other, &compact, "/twill/v1/all/");
}
