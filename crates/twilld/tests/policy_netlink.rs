//! Root-gated: a policy change sent as one nfnetlink batch ([`ops_messages`]) leaves the
//! kernel's table exactly as the old path, the whole table through `nft -f`, leaves it
//! (read back with `nft list table`), for every form the compiler writes; and back.

use std::collections::BTreeMap;

use twill_netlink::Netns;
use twill_nft::policy::{ElementTable, FAMILY_INET};
use twill_policy::cluster::Cluster;
use twill_policy::compile::{compile, Ruleset, TABLE};
use twill_policy::compile_diff::{diff, full_script};
use twill_testkit::TestNetns;
use twilld::policy::dataplane::ops_messages;

fn ep(node: &str, ns: &str, pod: &str, ip: &str, labels: &str) -> (String, String) {
    let labels: BTreeMap<&str, &str> = labels
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    (
        format!("endpoints/{node}/{ns}/{pod}"),
        serde_json::json!({
            "namespace": ns, "pod": pod, "node": node, "containerID": format!("c-{pod}"),
            "ifname": "eth0", "hostVeth": format!("twl{pod}"), "ips": [ip], "wiring": "l3",
            "labels": labels,
            "namedPorts": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
        .to_string(),
    )
}

fn pods() -> Vec<(String, String)> {
    vec![
        ep("n1", "x", "a", "10.244.1.2", "pod=a"),
        ep("n1", "x", "b", "10.244.1.3", "pod=b"),
        ep("n1", "y", "e", "10.244.1.4", "pod=c"),
        ep("n2", "y", "c", "10.244.2.2", "pod=c"),
        ("namespaces/y".into(), r#"{"labels":{"team":"t"}}"#.into()),
    ]
}

/// Every kind of rule: selectors, namespace selectors, ipBlock with except, named and
/// numbered ports and ranges, egress, default deny, and global Allow/Deny/Log/Pass with
/// nets, not-nets, ports, not-ports and named ports.
fn policies() -> Vec<(String, String)> {
    vec![
        (
            "networkpolicies/x/allow-b".into(),
            r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod":"b"}}},{"ipBlock":{"cidr":"10.244.2.0/24","except":["10.244.2.2/32","10.244.2.128/25"]}}],"ports":[{"port":"http"},{"protocol":"UDP","port":53,"endPort":60},{"protocol":"SCTP","port":81}]}]}"#.into(),
        ),
        (
            "networkpolicies/x/deny".into(),
            r#"{"podSelector":{},"policyTypes":["Ingress","Egress"]}"#.into(),
        ),
        (
            "networkpolicies/x/ns".into(),
            r#"{"podSelector":{},"egress":[{"to":[{"namespaceSelector":{"matchLabels":{"team":"t"}},"podSelector":{"matchLabels":{"pod":"c"}}},{"ipBlock":{"cidr":"0.0.0.0/0","except":["10.0.0.0/8"]}}]}]}"#.into(),
        ),
        (
            "globalnetworkpolicies/g1".into(),
            r#"{"order":10,"selector":"pod == 'a'","ingress":[{"action":"Log"},{"action":"Deny","source":{"nets":["10.9.0.0/16","10.11.0.0/20"]}},{"action":"Pass"}]}"#.into(),
        ),
        (
            "globalnetworkpolicies/g2".into(),
            r#"{"selector":"all()","egress":[{"action":"Allow","protocol":"TCP","destination":{"ports":[80,"http","90:99"]}},{"action":"Log","destination":{"selector":"pod == 'c'","ports":["http", 81]}},{"action":"Deny","protocol":"UDP","destination":{"notPorts":[53],"notNets":["10.244.0.0/16"]}},{"action":"Allow","destination":{"ports":[443]}}]}"#.into(),
        ),
    ]
}

fn ruleset(entries: &[(String, String)]) -> Ruleset {
    let c = Cluster::from_entries(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    compile(&c, "n1", &BTreeMap::new())
}

/// The table as `nft list` prints it, its objects (counters, sets, chains, each with
/// its contents in order) sorted: a chain made by an earlier change is listed earlier.
fn listing(ns: &TestNetns) -> String {
    let out = ns.exec(&["nft", "list", "table", "inet", TABLE]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut blocks: Vec<&str> = text
        .split("\n\n")
        .map(|b| b.trim_end_matches("\n}\n").trim())
        .collect();
    let head = blocks.remove(0);
    blocks.sort();
    format!("{head}\n{}", blocks.join("\n\n"))
}

fn load(ns: &TestNetns, rs: &Ruleset) {
    let script = full_script(rs);
    twill_netlink::run_in(&Netns::open(ns.path()).unwrap(), || {
        twill_nft::apply_script(&script)
    })
    .unwrap()
    .unwrap();
}

#[test]
fn a_change_over_netlink_reads_back_as_the_whole_table_through_nft() {
    twill_testkit::require_root("a_change_over_netlink_reads_back_as_the_whole_table_through_nft");
    let empty = ruleset(&pods());
    let mut all = pods();
    all.extend(policies());
    let full = ruleset(&all);
    let (reference, fast) = (TestNetns::new("twlpnlr"), TestNetns::new("twlpnlf"));
    let mut table =
        ElementTable::new_in(&Netns::open(fast.path()).unwrap(), FAMILY_INET, TABLE).unwrap();

    // No policies → every policy at once → each policy taken away in turn → none.
    load(&fast, &empty);
    let mut steps = vec![(empty.clone(), full.clone())];
    let mut now = full.clone();
    for i in 0..policies().len() {
        let mut e = pods();
        e.extend(policies().into_iter().skip(i + 1));
        let next = ruleset(&e);
        steps.push((now, next.clone()));
        now = next;
    }
    for (i, (old, new)) in steps.iter().enumerate() {
        let msgs = ops_messages(&diff(old, new)).unwrap_or_else(|e| panic!("step {i}: {e}"));
        table.send(msgs).unwrap_or_else(|e| panic!("step {i}: {e}"));
        load(&reference, new);
        assert_eq!(listing(&fast), listing(&reference), "step {i}");
    }
    assert_eq!(now, empty);
    assert!(
        listing(&reference).contains("prof/open"),
        "{}",
        listing(&reference)
    );
}
