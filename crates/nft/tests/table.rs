//! Root-gated: Twill's table in a fresh namespace, read back with `nft`.

mod common;

use std::net::Ipv4Addr;
use std::time::Instant;

use common::{in_ns, list_set, rules_per_chain};
use twill_netlink::Netns;
use twill_nft::ruleset::chain_rules;
use twill_nft::{apply_script, base_script, Error, NetworkRules, PortMapping, Protocol, Table};
use twill_testkit::TestNetns;

fn network() -> NetworkRules {
    NetworkRules {
        network: "twltest".into(),
        subnets: vec!["10.244.1.0/24".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        masquerade: true,
    }
}

fn table_in(ns: &TestNetns) -> Table {
    Table::new_in(&Netns::open(ns.path()).unwrap()).unwrap()
}

fn tcp(host_ip: Option<&str>, host_port: u16, pod: &str, pod_port: u16) -> PortMapping {
    PortMapping {
        host_ip: host_ip.map(|h| h.parse().unwrap()),
        host_port,
        container_ip: pod.parse().unwrap(),
        container_port: pod_port,
        protocol: Protocol::Tcp,
    }
}

fn assert_one_copy_of_each_rule(ns: &TestNetns) {
    let chains = rules_per_chain(ns);
    for (chain, rules) in chain_rules() {
        assert_eq!(
            chains[chain].len(),
            rules.len(),
            "chain {chain}: {:?}",
            chains[chain]
        );
    }
    assert_eq!(chains.len(), 4, "{chains:?}");
}

#[test]
fn base_script_is_idempotent_and_converges_under_concurrency() {
    twill_testkit::require_root("base_script_is_idempotent_and_converges_under_concurrency");
    let ns = TestNetns::new("nftbase");
    in_ns(&ns, || apply_script(&base_script())).unwrap();
    in_ns(&ns, || apply_script(&base_script())).unwrap();
    assert_one_copy_of_each_rule(&ns);

    std::thread::scope(|s| {
        let runs: Vec<_> = (0..10)
            .map(|_| s.spawn(|| in_ns(&ns, || apply_script(&base_script()))))
            .collect();
        for run in runs {
            run.join().unwrap().unwrap();
        }
    });
    assert_one_copy_of_each_rule(&ns);
}

#[test]
fn a_rejected_script_changes_nothing_and_reports_nft_stderr() {
    twill_testkit::require_root("a_rejected_script_changes_nothing_and_reports_nft_stderr");
    let ns = TestNetns::new("nftbad");
    let script = format!("{}add rule ip twill no_such_chain accept\n", base_script());
    let err = in_ns(&ns, || apply_script(&script)).unwrap_err();
    assert!(matches!(err, Error::NftFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("no_such_chain"), "{err}");
    // One transaction: the table from the same script was not created either.
    let (listed, _, _) = ns.try_exec(&["nft", "list", "table", "ip", "twill"]);
    assert!(!listed, "table must not exist after a failed script");
}

/// The markers in `network_blocks`, as nft prints them back: (key, address, netmask).
fn markers(ns: &TestNetns) -> Vec<(String, String, String)> {
    let out = ns.exec(&["nft", "-j", "list", "set", "ip", "twill", "network_blocks"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<_> = v["nftables"][1]["set"]["elem"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let c = &e["concat"];
            (
                c[0].as_str().unwrap().to_string(),
                c[1].as_str().unwrap().to_string(),
                c[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Whether `ip` is in the interval set `set` (auto-merge may join adjacent blocks into one
/// range, so ask for addresses rather than compare elements).
fn in_set(ns: &TestNetns, set: &str, ip: &str) -> bool {
    ns.try_exec(&[
        "nft",
        "get",
        "element",
        "ip",
        "twill",
        set,
        &format!("{{ {ip} }}"),
    ])
    .0
}

#[test]
fn ensure_network_installs_once_and_marks_the_network() {
    twill_testkit::require_root("ensure_network_installs_once_and_marks_the_network");
    let ns = TestNetns::new("nftnet");
    let mut table = table_in(&ns);
    assert!(!table.network_ready(&network()).unwrap(), "no table yet");
    table.ensure_network(&network()).unwrap();
    assert!(table.network_ready(&network()).unwrap());
    table.ensure_network(&network()).unwrap();
    // A second network on the node: its subnet joins, the shared cluster CIDR merges.
    let second = NetworkRules {
        network: "twlother".into(),
        subnets: vec!["10.244.2.0/24".parse().unwrap()],
        ..network()
    };
    assert!(!table.network_ready(&second).unwrap());
    table.ensure_network(&second).unwrap();
    assert!(table.network_ready(&second).unwrap());
    assert_one_copy_of_each_rule(&ns);
    for (set, inside, outside) in [
        ("local_subnets", ["10.244.1.7", "10.244.2.7"], "10.244.3.7"),
        (
            "cluster_cidrs",
            ["10.244.0.1", "10.244.255.1"],
            "10.245.0.1",
        ),
    ] {
        for ip in inside {
            assert!(in_set(&ns, set, ip), "{ip} should be in {set}");
        }
        assert!(
            !in_set(&ns, set, outside),
            "{outside} should not be in {set}"
        );
    }
    assert_eq!(
        markers(&ns),
        [
            (
                "twlother".into(),
                "10.244.2.0".into(),
                "255.255.255.0".into()
            ),
            (
                "twltest".into(),
                "10.244.1.0".into(),
                "255.255.255.0".into()
            ),
        ]
    );
}

/// In `l3` wiring every network's gateway is 169.254.1.1, and twilld hands a network more
/// blocks over time: the markers are per network and block, so each block is installed.
#[test]
fn networks_and_blocks_are_marked_apart_whatever_their_gateway() {
    twill_testkit::require_root("networks_and_blocks_are_marked_apart_whatever_their_gateway");
    let ns = TestNetns::new("nftblk");
    let mut table = table_in(&ns);
    let first = NetworkRules {
        network: "twlfirst".into(),
        subnets: vec!["10.244.5.0/26".parse().unwrap()],
        ..network()
    };
    table.ensure_network(&first).unwrap();
    // A block handed over later to the same network: not ready until installed.
    let grown = NetworkRules {
        subnets: vec!["10.244.7.64/26".parse().unwrap()],
        ..first.clone()
    };
    assert!(!table.network_ready(&grown).unwrap());
    let both = NetworkRules {
        subnets: vec![first.subnets[0], grown.subnets[0]],
        ..first.clone()
    };
    assert!(
        !table.network_ready(&both).unwrap(),
        "one of two blocks is missing"
    );
    table.ensure_network(&grown).unwrap();
    assert!(table.network_ready(&both).unwrap());
    // Another network with the same block is its own marker.
    let long = NetworkRules {
        network: "twl-a-network-with-a-name-longer-than-an-ifname".into(),
        ..first.clone()
    };
    assert!(!table.network_ready(&long).unwrap());
    table.ensure_network(&long).unwrap();
    assert!(table.network_ready(&long).unwrap());
    for ip in ["10.244.5.1", "10.244.7.100"] {
        assert!(in_set(&ns, "local_subnets", ip), "{ip} in local_subnets");
    }
    assert!(!in_set(&ns, "local_subnets", "10.244.7.1"));
    let key = twill_nft::ruleset::network_key(&long.network);
    assert_eq!(
        markers(&ns),
        [
            (key, "10.244.5.0".into(), "255.255.255.192".into()),
            (
                "twlfirst".into(),
                "10.244.5.0".into(),
                "255.255.255.192".into()
            ),
            (
                "twlfirst".into(),
                "10.244.7.64".into(),
                "255.255.255.192".into()
            ),
        ]
    );
}

#[test]
fn pod_elements_are_added_read_back_and_removed() {
    twill_testkit::require_root("pod_elements_are_added_read_back_and_removed");
    let ns = TestNetns::new("nftpod");
    let mut table = table_in(&ns);
    table.ensure_network(&network()).unwrap();
    let pod: Ipv4Addr = "10.244.1.5".parse().unwrap();
    let mappings = [
        tcp(None, 8080, "10.244.1.5", 80),
        tcp(Some("192.0.2.1"), 8443, "10.244.1.5", 443),
        PortMapping {
            protocol: Protocol::Udp,
            ..tcp(None, 5353, "10.244.1.5", 53)
        },
        PortMapping {
            protocol: Protocol::Sctp,
            ..tcp(None, 9999, "10.244.1.5", 99)
        },
    ];
    table.add_pod(pod, true, &mappings).unwrap();

    assert!(list_set(&ns, "set", "masq_pods").contains("10.244.1.5"));
    let any = list_set(&ns, "map", "hostports_any");
    assert!(any.contains("tcp . 8080 : 10.244.1.5 . 80"), "{any}");
    assert!(any.contains("udp . 5353 : 10.244.1.5 . 53"), "{any}");
    assert!(any.contains("sctp . 9999 : 10.244.1.5 . 99"), "{any}");
    let with_ip = list_set(&ns, "map", "hostports_ip");
    assert!(
        with_ip.contains("192.0.2.1 . tcp . 8443 : 10.244.1.5 . 443"),
        "{with_ip}"
    );
    assert!(table.is_masqueraded(pod).unwrap());
    for m in &mappings {
        assert!(table.has_mapping(m).unwrap(), "{m}");
    }

    table.remove_pod(pod, &mappings).unwrap();
    assert!(!list_set(&ns, "set", "masq_pods").contains("10.244.1.5"));
    assert!(!list_set(&ns, "map", "hostports_any").contains("10.244.1.5"));
    assert!(!list_set(&ns, "map", "hostports_ip").contains("10.244.1.5"));
    assert!(!table.is_masqueraded(pod).unwrap());
    // DEL repeats: absent elements are fine.
    table.remove_pod(pod, &mappings).unwrap();
    // The rules were never touched.
    assert_one_copy_of_each_rule(&ns);
}

#[test]
fn a_taken_host_port_fails_the_whole_batch() {
    twill_testkit::require_root("a_taken_host_port_fails_the_whole_batch");
    let ns = TestNetns::new("nfttaken");
    let mut table = table_in(&ns);
    table.ensure_network(&network()).unwrap();
    let holder = tcp(None, 8080, "10.244.1.5", 80);
    table
        .add_pod("10.244.1.5".parse().unwrap(), true, &[holder])
        .unwrap();

    let late: Ipv4Addr = "10.244.1.6".parse().unwrap();
    let late_mappings = [
        tcp(None, 9090, "10.244.1.6", 90),
        tcp(None, 8080, "10.244.1.6", 80),
    ];
    let err = table.add_pod(late, true, &late_mappings).unwrap_err();
    match &err {
        Error::HostPortTaken { mapping, holder } => {
            assert_eq!(*mapping, late_mappings[1]);
            assert_eq!(*holder, Some(("10.244.1.5".parse().unwrap(), 80)));
        }
        other => panic!("expected HostPortTaken, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("8080/tcp") && text.contains("10.244.1.5:80"),
        "{text}"
    );
    // Nothing of the failed pod is left: no masq element, no 9090.
    assert!(!list_set(&ns, "set", "masq_pods").contains("10.244.1.6"));
    assert!(!list_set(&ns, "map", "hostports_any").contains("9090"));

    // The runtime's DEL after the failed ADD leaves the holder's mapping alone.
    table.remove_pod(late, &late_mappings).unwrap();
    assert!(table.has_mapping(&holder).unwrap());
    assert!(list_set(&ns, "map", "hostports_any").contains("tcp . 8080 : 10.244.1.5 . 80"));

    // The same host port on a specific address is a different key: allowed.
    table
        .add_pod(
            late,
            false,
            &[tcp(Some("192.0.2.1"), 8080, "10.244.1.6", 80)],
        )
        .unwrap();
    // Two mappings of one pod on one port are refused before reaching the kernel.
    let dup = tcp(None, 7000, "10.244.1.7", 1);
    let err = table.add_pod(
        "10.244.1.7".parse().unwrap(),
        false,
        &[
            dup,
            PortMapping {
                container_port: 2,
                ..dup
            },
        ],
    );
    assert!(matches!(err, Err(Error::DuplicateMapping(_))), "{err:?}");
}

#[test]
fn removing_an_absent_pod_is_ok_even_without_the_table() {
    twill_testkit::require_root("removing_an_absent_pod_is_ok_even_without_the_table");
    let ns = TestNetns::new("nftabsent");
    let mut table = table_in(&ns);
    let mappings = [tcp(None, 8080, "10.244.1.9", 80)];
    table
        .remove_pod("10.244.1.9".parse().unwrap(), &mappings)
        .unwrap();
    table.ensure_network(&network()).unwrap();
    table
        .remove_pod("10.244.1.9".parse().unwrap(), &mappings)
        .unwrap();
    // Adding without the table says what to do.
    let bare = TestNetns::new("nftbare");
    let err = table_in(&bare)
        .add_pod("10.244.1.9".parse().unwrap(), true, &mappings)
        .unwrap_err();
    assert!(matches!(err, Error::TableMissing(_)), "{err:?}");
    assert!(err.to_string().contains("retry"), "{err}");
}

/// Not a timed assertion: prints the cost of adding one pod with 10 and with 10,000
/// mappings present, and checks only that everything landed.
#[test]
fn adding_a_pod_with_ten_thousand_mappings_present() {
    twill_testkit::require_root("adding_a_pod_with_ten_thousand_mappings_present");
    let mut results = Vec::new();
    for present in [10u32, 10_000] {
        let ns = TestNetns::new("nftscale");
        let mut table = table_in(&ns);
        table.ensure_network(&network()).unwrap();
        // Fill in one batch: one nft transaction with every element.
        let elements: Vec<String> = (0..present)
            .map(|i| {
                format!(
                    "tcp . {} : 10.244.{}.{} . 80",
                    20000 + i,
                    2 + i / 250,
                    1 + i % 250
                )
            })
            .collect();
        let script = format!(
            "add element ip twill hostports_any {{ {} }}\n",
            elements.join(", ")
        );
        in_ns(&ns, || apply_script(&script)).unwrap();
        let count = list_set(&ns, "map", "hostports_any")
            .matches(" . 80")
            .count();
        assert_eq!(count as u32, present);

        let mut samples = Vec::new();
        for k in 0..21u8 {
            let pod = Ipv4Addr::new(10, 244, 1, 10 + k);
            let m = tcp(None, 8000 + k as u16, &pod.to_string(), 80);
            let started = Instant::now();
            table.add_pod(pod, true, &[m]).unwrap();
            samples.push(started.elapsed());
            assert!(table.has_mapping(&m).unwrap());
        }
        samples.sort();
        results.push((present, samples[samples.len() / 2]));
    }
    for (present, median) in &results {
        println!(
            "add_pod (1 mapping + masq) with {present} mappings present: median {median:?} of 21"
        );
    }
}

#[test]
fn a_table_opened_on_a_thread_inside_the_namespace_works_there() {
    twill_testkit::require_root("a_table_opened_on_a_thread_inside_the_namespace_works_there");
    let ns = TestNetns::new("nftnew");
    let mut table = in_ns(&ns, || Table::new().unwrap());
    // Used from this (root-namespace) thread: socket and nft both act in `ns`.
    table.ensure_network(&network()).unwrap();
    table
        .add_pod("10.244.1.5".parse().unwrap(), true, &[])
        .unwrap();
    assert!(list_set(&ns, "set", "masq_pods").contains("10.244.1.5"));
}

/// The lock `ensure_network` holds is the namespace's own: a second holder in the same
/// namespace (opened by another path) waits, another namespace does not.
#[test]
fn the_network_setup_lock_is_per_namespace() {
    twill_testkit::require_root("the_network_setup_lock_is_per_namespace");
    let (a, b) = (TestNetns::new("nftlocka"), TestNetns::new("nftlockb"));
    let held = twill_nft::NetnsLock::take(&Netns::open(a.path()).unwrap()).unwrap();
    // Another namespace: at once.
    drop(twill_nft::NetnsLock::take(&Netns::open(b.path()).unwrap()).unwrap());
    // The same namespace through /proc/thread-self/ns/net: waits until the holder lets go.
    let same = in_ns(&a, || Netns::current().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let lock = twill_nft::NetnsLock::take(&same).unwrap();
        tx.send(()).unwrap();
        drop(lock);
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "a second holder in the same namespace must wait"
    );
    drop(held);
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the waiter gets the lock once it is released");
    waiter.join().unwrap();
}
