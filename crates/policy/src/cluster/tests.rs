use super::*;
use serde_json::json;

fn ep(node: &str, ns: &str, pod: &str, ip: &str, labels: serde_json::Value) -> (String, Vec<u8>) {
    let v = json!({
        "namespace": ns, "pod": pod, "node": node, "containerID": format!("c-{pod}"),
        "ifname": "eth0", "hostVeth": format!("twl{pod}"), "ips": [ip], "wiring": "bridge",
        "labels": labels,
        "namedPorts": [{"name": "serve-80-tcp", "port": 80, "protocol": "TCP"},
                       {"name": "serve-81-udp", "port": 81, "protocol": "UDP"}],
    });
    (
        format!("/twill/v1/endpoints/{node}/{ns}/{pod}"),
        serde_json::to_vec(&v).unwrap(),
    )
}

fn put(c: &mut Cluster, key: &str, v: serde_json::Value) -> Option<Change> {
    c.apply(key, Some(&serde_json::to_vec(&v).unwrap()))
}

fn problems(c: &Cluster) -> Vec<String> {
    c.problems().map(|p| p.key.clone()).collect()
}

#[test]
fn built_from_a_listing_with_effective_labels_namespaces_and_lookups() {
    let mut entries = vec![
        ep("n1", "x", "a", "10.244.1.2", json!({"pod": "a"})),
        ep(
            "n2",
            "y",
            "b",
            "10.244.2.3",
            json!({"pod": "b", "tier": "web"}),
        ),
    ];
    entries.push((
        "podlabels/y/b".into(),
        br#"{"labels":{"tier":"db","extra":"1"}}"#.to_vec(),
    ));
    entries.push((
        "namespaces/x".into(),
        br#"{"labels":{"team":"red"}}"#.to_vec(),
    ));
    entries.push(("config".into(), b"not ours".to_vec()));
    let c = Cluster::from_entries(entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    assert_eq!(problems(&c), Vec::<String>::new());

    let b = c.pod("y", "b").unwrap();
    assert_eq!(b.labels.get("tier").map(String::as_str), Some("db"));
    assert_eq!(b.labels.get("pod").map(String::as_str), Some("b"));
    assert_eq!(b.labels.get("extra").map(String::as_str), Some("1"));
    assert_eq!(
        b.calico_labels
            .get(CALICO_NAMESPACE_LABEL)
            .map(String::as_str),
        Some("y")
    );
    assert!(!b.labels.contains_key(CALICO_NAMESPACE_LABEL));
    assert_eq!(
        c.pod_by_ip("10.244.2.3".parse().unwrap()).unwrap().id(),
        PodId::new("y", "b")
    );
    assert!(c.pod_by_ip("10.244.9.9".parse().unwrap()).is_none());
    assert_eq!(c.endpoint("n1", "x", "a").unwrap().node(), "n1");
    assert!(c.endpoint("n2", "x", "a").is_none());

    // Both namespaces exist (x stored, y only through its pod), each with its name label.
    let ns: Vec<&str> = c.namespaces().map(|(n, _)| n).collect();
    assert_eq!(ns, vec!["x", "y"]);
    let x = c.namespace_labels("x");
    assert_eq!(x.get("team").map(String::as_str), Some("red"));
    assert_eq!(x.get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("x"));
    assert_eq!(
        c.namespace_labels("y")
            .get(NAMESPACE_NAME_LABEL)
            .map(String::as_str),
        Some("y")
    );
    assert_eq!(c.namespace_labels("nowhere").len(), 1);

    // Named ports resolve on the pod, per protocol.
    let a = c.pod("x", "a").unwrap();
    assert_eq!(a.named_port("serve-80-tcp", Protocol::Tcp), Some(80));
    assert_eq!(a.named_port("serve-80-tcp", Protocol::Udp), None);
    assert_eq!(
        a.resolve_port(&PortRef::Name("serve-81-udp".into()), Protocol::Udp),
        Some(81)
    );
    assert_eq!(
        a.resolve_port(&PortRef::Number(8080), Protocol::Sctp),
        Some(8080)
    );
}

use twill_api::policy::NAMESPACE_NAME_LABEL;

#[test]
fn incremental_events_move_labels_addresses_and_namespaces() {
    let mut c = Cluster::new();
    let (k, v) = ep("n1", "x", "a", "10.244.1.2", json!({"pod": "a"}));
    assert_eq!(
        c.apply(&k, Some(&v)),
        Some(Change::Endpoint {
            node: "n1".into(),
            namespace: "x".into(),
            pod: "a".into()
        })
    );
    assert!(c.has_namespace("x"));

    // Labels by hand arrive after the pod, then go.
    put(
        &mut c,
        "podlabels/x/a",
        json!({"labels": {"pod": "z", "role": "db"}}),
    );
    assert_eq!(
        c.pod("x", "a")
            .unwrap()
            .labels
            .get("pod")
            .map(String::as_str),
        Some("z")
    );
    c.apply("podlabels/x/a", None);
    assert_eq!(
        c.pod("x", "a")
            .unwrap()
            .labels
            .get("pod")
            .map(String::as_str),
        Some("a")
    );
    assert!(!c.pod("x", "a").unwrap().labels.contains_key("role"));

    // Labels by hand before the pod exists apply when it arrives.
    put(&mut c, "podlabels/x/b", json!({"labels": {"role": "web"}}));
    let (kb, vb) = ep("n1", "x", "b", "10.244.1.3", json!({}));
    c.apply(&kb, Some(&vb));
    assert_eq!(
        c.pod("x", "b")
            .unwrap()
            .labels
            .get("role")
            .map(String::as_str),
        Some("web")
    );

    // The pod's address changes: the old one is free.
    let (k2, v2) = ep("n1", "x", "a", "10.244.1.9", json!({"pod": "a"}));
    c.apply(&k2, Some(&v2));
    assert!(c.pod_by_ip("10.244.1.2".parse().unwrap()).is_none());
    assert_eq!(
        c.pod_by_ip("10.244.1.9".parse().unwrap()).unwrap().name(),
        "a"
    );

    // The namespace lives as long as a pod is in it or it is stored.
    put(&mut c, "namespaces/x", json!({"labels": {"team": "red"}}));
    c.apply(&k, None);
    c.apply(&kb, None);
    assert!(c.pod("x", "a").is_none());
    assert!(c.has_namespace("x"));
    assert_eq!(
        c.namespace_labels("x").get("team").map(String::as_str),
        Some("red")
    );
    c.apply("namespaces/x", None);
    assert!(!c.has_namespace("x"));
    assert_eq!(c.pods().count(), 0);
    assert!(c.pod_by_ip("10.244.1.9".parse().unwrap()).is_none());
}

#[test]
fn policies_sorted_and_selecting_per_direction() {
    let mut c = Cluster::new();
    for (node, ns, pod, ip) in [
        ("n1", "x", "a", "10.244.1.2"),
        ("n1", "y", "a", "10.244.1.3"),
    ] {
        let (k, v) = ep(node, ns, pod, ip, json!({"pod": pod}));
        c.apply(&k, Some(&v));
    }
    put(
        &mut c,
        "networkpolicies/x/zz-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    put(
        &mut c,
        "networkpolicies/x/deny",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    );
    put(
        &mut c,
        "networkpolicies/x/other",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}}),
    );
    put(&mut c, "networkpolicies/y/deny", json!({"podSelector": {}}));
    let names: Vec<String> = c.policies().map(|p| p.to_string()).collect();
    assert_eq!(names, vec!["x/deny", "x/other", "x/zz-egress", "y/deny"]);

    let xa = c.pod("x", "a").unwrap();
    let ing: Vec<&str> = c
        .policies_selecting(xa, PolicyType::Ingress)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(ing, vec!["deny"]);
    let eg: Vec<&str> = c
        .policies_selecting(xa, PolicyType::Egress)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(eg, vec!["zz-egress"]);

    c.apply("networkpolicies/x/deny", None);
    let xa = c.pod("x", "a").unwrap();
    assert_eq!(c.policies_selecting(xa, PolicyType::Ingress).count(), 0);
}

#[test]
fn global_policies_in_order_then_name_with_unordered_last() {
    let mut c = Cluster::new();
    let (k, v) = ep("n1", "x", "a", "10.244.1.2", json!({"pod": "a"}));
    c.apply(&k, Some(&v));
    put(&mut c, "namespaces/x", json!({"labels": {"team": "red"}}));
    put(&mut c, "globalnetworkpolicies/none", json!({}));
    put(&mut c, "globalnetworkpolicies/b", json!({"order": 10}));
    put(&mut c, "globalnetworkpolicies/a", json!({"order": 10}));
    put(
        &mut c,
        "globalnetworkpolicies/first",
        json!({"order": -1.5, "types": ["Egress"]}),
    );
    put(
        &mut c,
        "globalnetworkpolicies/ns-blue",
        json!({"order": 1, "namespaceSelector": "team == 'blue'"}),
    );
    put(
        &mut c,
        "globalnetworkpolicies/calico-ns",
        json!({"order": 2, "selector": "projectcalico.org/namespace == 'x' && pod == 'a'"}),
    );
    let order: Vec<&str> = c.global_policies().map(|g| g.name.as_str()).collect();
    assert_eq!(
        order,
        vec!["first", "ns-blue", "calico-ns", "a", "b", "none"]
    );

    let a = c.pod("x", "a").unwrap();
    let ing: Vec<&str> = c
        .global_policies_selecting(a, PolicyType::Ingress)
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(ing, vec!["calico-ns", "a", "b", "none"]);
    let eg: Vec<&str> = c
        .global_policies_selecting(a, PolicyType::Egress)
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(eg, vec!["first"]);

    // Reordering by a put moves it.
    put(&mut c, "globalnetworkpolicies/none", json!({"order": 0}));
    let order: Vec<&str> = c.global_policies().map(|g| g.name.as_str()).collect();
    assert_eq!(
        order,
        vec!["first", "none", "ns-blue", "calico-ns", "a", "b"]
    );
}

#[test]
fn global_rule_ports_parse_numbers_ranges_and_names() {
    let r = |s: &str| PortMatch::parse(&PortRef::Name(s.into()));
    assert_eq!(
        PortMatch::parse(&PortRef::Number(80)),
        Ok(PortMatch::Range(80, 80))
    );
    assert_eq!(r("80:90"), Ok(PortMatch::Range(80, 90)));
    assert_eq!(r("443"), Ok(PortMatch::Range(443, 443)));
    assert_eq!(
        r("serve-80-tcp"),
        Ok(PortMatch::Named("serve-80-tcp".into()))
    );
    assert!(r("90:80").unwrap_err().contains("ends before"));
    assert!(r("80:99999").is_err());
    assert!(r("Bad_Name").is_err());
}

#[test]
fn bad_entries_are_left_out_and_reported_until_fixed() {
    let mut c = Cluster::new();
    let (k, v) = ep("n1", "x", "a", "10.244.1.2", json!({"pod": "a"}));
    c.apply(&k, Some(&v));
    put(&mut c, "networkpolicies/x/p", json!({"podSelector": {}}));
    put(&mut c, "globalnetworkpolicies/g", json!({"order": 1}));

    // Garbage over good entries: they are gone, said once per key.
    c.apply(&k, Some(b"{not json"));
    c.apply("networkpolicies/x/p", Some(b"{\"podSelector\": 7}"));
    put(
        &mut c,
        "globalnetworkpolicies/g",
        json!({"selector": "pod == "}),
    );
    put(
        &mut c,
        "globalnetworkpolicies/h",
        json!({"ingress": [{"action": "Allow", "destination": {"ports": ["x:1"]}}]}),
    );
    c.apply("podlabels/x/a", Some(b"\"nope\""));
    c.apply("namespaces/x", Some(b"1"));
    c.apply("endpoints/n1/x", Some(b"{}"));
    c.apply("networkpolicies/x/p/extra", Some(b"{}"));
    // An endpoint whose value names another pod than its key.
    let (_, v_b) = ep("n1", "x", "b", "10.244.1.3", json!({}));
    c.apply("endpoints/n1/x/c", Some(&v_b));

    assert!(c.pod("x", "a").is_none());
    assert!(c.pod("x", "c").is_none());
    assert!(c.pod_by_ip("10.244.1.2".parse().unwrap()).is_none());
    assert_eq!(c.policies().count(), 0);
    assert_eq!(c.global_policies().count(), 0);
    assert_eq!(
        problems(&c),
        vec![
            "endpoints/n1/x",
            "endpoints/n1/x/a",
            "endpoints/n1/x/c",
            "globalnetworkpolicies/g",
            "globalnetworkpolicies/h",
            "namespaces/x",
            "networkpolicies/x/p",
            "networkpolicies/x/p/extra",
            "podlabels/x/a",
        ]
    );
    let why = |key: &str| c.problems().find(|p| p.key == key).unwrap().why.clone();
    assert!(
        why("globalnetworkpolicies/g").contains("spec.selector"),
        "{}",
        why("globalnetworkpolicies/g")
    );
    assert!(why("globalnetworkpolicies/h").contains("spec.ingress[0].destination.ports"));
    assert!(why("endpoints/n1/x/c").contains("x/b"));
    assert!(why("endpoints/n1/x").contains("endpoints/<node>/<namespace>/<pod>"));

    // Fixing or deleting clears each.
    c.apply(&k, Some(&v));
    put(
        &mut c,
        "globalnetworkpolicies/g",
        json!({"selector": "pod == 'a'"}),
    );
    c.apply("globalnetworkpolicies/h", None);
    assert!(c.pod("x", "a").is_some());
    assert_eq!(c.global_policies().count(), 1);
    assert!(!problems(&c).contains(&"endpoints/n1/x/a".to_string()));
    assert!(!problems(&c).contains(&"globalnetworkpolicies/g".to_string()));
    assert!(!problems(&c).contains(&"globalnetworkpolicies/h".to_string()));
}

#[test]
fn entries_twill_apply_would_refuse_are_left_out_too() {
    let mut c = Cluster::new();
    // ipBlock with a selector in one peer: readable JSON, refused by Kubernetes' rules.
    put(
        &mut c,
        "networkpolicies/x/both",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
    );
    put(
        &mut c,
        "globalnetworkpolicies/ports-no-proto",
        json!({"ingress": [{"action": "Allow", "destination": {"ports": [80]}}]}),
    );
    assert_eq!(c.policies().count(), 0);
    assert_eq!(c.global_policies().count(), 0);
    let whys: Vec<String> = c.problems().map(|p| p.to_string()).collect();
    assert_eq!(whys.len(), 2, "{whys:?}");
    assert!(
        whys.iter()
            .all(|w| w.contains("twill apply would refuse it")),
        "{whys:?}"
    );
}

#[test]
fn a_pod_on_two_nodes_at_once_is_found_and_leaves_cleanly() {
    let mut c = Cluster::new();
    let (k1, v1) = ep("n1", "x", "a", "10.244.1.2", json!({}));
    let (k2, v2) = ep("n2", "x", "a", "10.244.2.2", json!({}));
    c.apply(&k1, Some(&v1));
    c.apply(&k2, Some(&v2));
    assert_eq!(c.pod_endpoints("x", "a").count(), 2);
    assert_eq!(c.pod("x", "a").unwrap().node(), "n1");
    let names = |c: &Cluster, node: &str| {
        c.node_pods(node)
            .map(|p| format!("{}/{}", p.namespace(), p.name()))
            .collect::<Vec<_>>()
    };
    let (k3, v3) = ep("n1", "w", "b", "10.244.1.3", json!({}));
    c.apply(&k3, Some(&v3));
    assert_eq!(names(&c, "n1"), ["w/b", "x/a"]);
    assert_eq!(names(&c, "n2"), ["x/a"]);
    assert!(names(&c, "n3").is_empty());
    c.apply(&k1, None);
    assert_eq!(names(&c, "n1"), ["w/b"]);
    c.apply(&k3, None);
    assert!(names(&c, "n1").is_empty());
    assert_eq!(c.pod("x", "a").unwrap().node(), "n2");
    assert!(c.has_namespace("x"));
    c.apply(&k2, None);
    assert!(!c.has_namespace("x"));
}

#[test]
fn typed_puts_read_as_json_ones() {
    let mut c = Cluster::new();
    let spec = NetworkPolicySpec::default();
    assert_eq!(
        c.put(&twill_api::policy::network_policy_key("x", "p"), &spec),
        Some(Change::Policy {
            namespace: "x".into(),
            name: "p".into()
        })
    );
    assert_eq!(c.policy("x", "p").unwrap().spec, spec);
    assert_eq!(c.put("blocks/10.0.0.0-24", &spec), None);
}
