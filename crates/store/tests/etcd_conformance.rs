//! The shared conformance suite (`twill_store::conformance`) against real etcd 3.4: each
//! case on its own single-member etcd, through two `EtcdStore` clients.

use std::time::Duration;
use twill_store::conformance::{Subject, CASES};
use twill_store::etcd::{EtcdConfig, EtcdStore};
use twill_testkit::etcd::EtcdMember;

fn run(name: &str) {
    let (_, case) = CASES
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a case of that name");
    let member = EtcdMember::start(&format!("conf{name}"));
    let mut cfg = EtcdConfig::new(vec![member.client_url()]);
    cfg.timeout = Duration::from_secs(2);
    let store = EtcdStore::connect(&cfg).unwrap();
    let other = EtcdStore::connect(&cfg).unwrap();
    let compact = |rev| store.compact(rev);
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
            assert!(missing.is_empty(), "add these cases to tests/etcd_conformance.rs: {missing:?}");
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

/// The whole suite in one go on one etcd, as a deployment would see it.
#[test]
fn run_all_on_one_etcd() {
    let member = EtcdMember::start("confall");
    let cfg = EtcdConfig::new(vec![member.client_url()]);
    let store = EtcdStore::connect(&cfg).unwrap();
    let other = EtcdStore::connect(&cfg).unwrap();
    let compact = |rev| store.compact(rev);
    twill_store::conformance::run_all(&store, &other, &compact, "/twill/v1/all/");
}

/// The whole suite over https with a client certificate.
#[test]
fn run_all_over_tls() {
    let tls = twill_testkit::etcd::EtcdTls::generate();
    let member = EtcdMember::start_tls("conftls", &tls);
    let cfg = EtcdConfig {
        endpoints: vec![member.client_url()],
        ca_file: Some(tls.ca_file.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
        timeout: Duration::from_secs(2),
    };
    let store = EtcdStore::connect(&cfg).unwrap();
    let other = EtcdStore::connect(&cfg).unwrap();
    let compact = |rev| store.compact(rev);
    twill_store::conformance::run_all(&store, &other, &compact, "/twill/v1/tls/");
}
