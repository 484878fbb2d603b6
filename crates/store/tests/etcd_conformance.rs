//! The shared conformance suite (`twill_store::conformance`) against real etcd 3.4: each
//! case on its own single-member etcd, through two `EtcdStore` clients.

use std::time::Duration;
use twill_store::etcd::{EtcdConfig, EtcdStore};
use twill_testkit::etcd::EtcdMember;

fn run(name: &str) {
    let member = EtcdMember::start(&format!("conf{name}"));
    let mut cfg = EtcdConfig::new(vec![member.client_url()]);
    cfg.timeout = Duration::from_secs(2);
    let store = EtcdStore::connect(&cfg).unwrap();
    let other = EtcdStore::connect(&cfg).unwrap();
    let compact = |rev| store.compact(rev);
    twill_store::conformance::run_one(name, &store, &other, &compact, "/twill/v1/test/");
}

twill_store::conformance_tests!(run);

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
