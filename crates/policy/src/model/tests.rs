//! The model against the upstream Kubernetes e2e suite's cases
//! (test/e2e/network/netpol/network_policy.go): namespaces x, y, z (labelled `ns: <name>`
//! as upstream, plus `kubernetes.io/metadata.name`), pods a, b, c in each (labelled
//! `pod: <name>`, named ports `serve-80-tcp` … `serve-81-udp`), every case a full 9×9
//! table per port/protocol, written with upstream's `ExpectPeer` steps. Loopback is not
//! compared (upstream's `ignoreLoopback`; here a pod to itself is always allowed, checked
//! on its own). Then the global tier, and generated properties.

use super::*;
use crate::cluster::Cluster;
use serde_json::{json, Value};
use twill_api::policy::{
    endpoint_key, global_network_policy_key, namespace_key, network_policy_key, pod_labels_key,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

fn pod_ip(ns: &str, pod: &str) -> Ipv4Addr {
    let n = NAMESPACES.iter().position(|x| *x == ns).unwrap() as u8 + 1;
    let p = PODS.iter().position(|x| *x == pod).unwrap() as u8 + 2;
    Ipv4Addr::new(10, 244, n, p)
}

fn endpoint(ns: &str, pod: &str) -> Value {
    let node = if ns == "z" { "n2" } else { "n1" };
    let named: Vec<Value> = [80, 81]
        .iter()
        .flat_map(|port| {
            ["TCP", "UDP"].map(|proto| {
                json!({"name": format!("serve-{port}-{}", proto.to_lowercase()), "port": port, "protocol": proto})
            })
        })
        .collect();
    json!({
        "namespace": ns, "pod": pod, "node": node, "containerID": format!("c{ns}{pod}"),
        "ifname": "eth0", "hostVeth": format!("twl{ns}{pod}"), "ips": [pod_ip(ns, pod)],
        "wiring": "bridge", "labels": {"pod": pod}, "namedPorts": named,
    })
}

/// x/y/z × a/b/c, as upstream's model.
fn upstream_cluster() -> Cluster {
    let mut c = Cluster::new();
    for ns in NAMESPACES {
        c.put(&namespace_key(ns), &json!({"labels": {"ns": ns}}));
        for pod in PODS {
            let node = if ns == "z" { "n2" } else { "n1" };
            c.put(&endpoint_key(node, ns, pod), &endpoint(ns, pod));
        }
    }
    assert_eq!(c.problems().count(), 0);
    c
}

fn all_pods() -> Vec<PodId> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| PodId::new(ns, p)))
        .collect()
}

/// Upstream's `Peer`: a namespace and/or a pod name (none: any).
#[derive(Clone, Copy, Default)]
struct Peer {
    ns: Option<&'static str>,
    pod: Option<&'static str>,
}

fn ns(n: &'static str) -> Peer {
    Peer {
        ns: Some(n),
        pod: None,
    }
}
fn pod(n: &'static str, p: &'static str) -> Peer {
    Peer {
        ns: Some(n),
        pod: Some(p),
    }
}
const ANY: Peer = Peer {
    ns: None,
    pod: None,
};

impl Peer {
    fn matches(&self, id: &PodId) -> bool {
        self.ns.is_none_or(|n| n == id.namespace) && self.pod.is_none_or(|p| p == id.name)
    }
}

/// Upstream's `Reachability`: the expected 9×9 table.
#[derive(Clone)]
struct Reach(Vec<Vec<bool>>);

impl Reach {
    fn new(default: bool) -> Reach {
        Reach(vec![vec![default; 9]; 9])
    }
    fn expect(mut self, from: Peer, to: Peer, v: bool) -> Reach {
        let pods = all_pods();
        for (i, f) in pods.iter().enumerate() {
            for (j, t) in pods.iter().enumerate() {
                if from.matches(f) && to.matches(t) {
                    self.0[i][j] = v;
                }
            }
        }
        self
    }
}

/// The model's table for one port/protocol.
fn model_table(c: &Cluster, protocol: Protocol, port: u16) -> Reach {
    let pods = all_pods();
    let mut r = Reach::new(false);
    for (i, f) in pods.iter().enumerate() {
        for (j, t) in pods.iter().enumerate() {
            let d = evaluate(c, &Flow::pods(f, t, protocol, port));
            assert_eq!(
                d.allowed,
                d.egress.iter().chain(d.ingress.iter()).all(|v| v.allowed),
                "{f} -> {t}: the decision is the AND of its directions"
            );
            r.0[i][j] = d.allowed;
        }
    }
    r
}

fn render(r: &Reach, other: &Reach) -> String {
    let pods = all_pods();
    let mut s = String::from("      ");
    for p in &pods {
        s += &format!("{:>5}", p.to_string());
    }
    s += "\n";
    for (i, f) in pods.iter().enumerate() {
        s += &format!("{:>5} ", f.to_string());
        for j in 0..9 {
            let mark = match (r.0[i][j], i == j, r.0[i][j] == other.0[i][j]) {
                (_, true, _) => "-",
                (true, _, true) => ".",
                (false, _, true) => "X",
                (true, _, false) => ".!",
                (false, _, false) => "X!",
            };
            s += &format!("{mark:>5}");
        }
        s += "\n";
    }
    s
}

/// Compares every pair but loopback; the failure shows both tables ("!" where they
/// differ, "." allowed, "X" denied).
fn check(case: &str, c: &Cluster, protocol: Protocol, port: u16, want: &Reach) {
    let got = model_table(c, protocol, port);
    let differ = (0..9).any(|i| (0..9).any(|j| i != j && got.0[i][j] != want.0[i][j]));
    assert!(
        !differ,
        "{case}, {port}/{protocol}:\nexpected\n{}model\n{}",
        render(want, &got),
        render(&got, want)
    );
    // A pod to itself is always allowed.
    for p in all_pods() {
        assert!(evaluate(c, &Flow::pods(&p, &p, protocol, port)).allowed);
    }
}

fn with_policies(policies: &[(&str, &str, Value)]) -> Cluster {
    let mut c = upstream_cluster();
    for (ns, name, spec) in policies {
        c.put(&network_policy_key(ns, name), spec);
        assert_eq!(
            c.problems().count(),
            0,
            "{name}: {:?}",
            c.problems().collect::<Vec<_>>()
        );
    }
    c
}

struct Case {
    name: &'static str,
    policies: Vec<(&'static str, &'static str, Value)>,
    /// (protocol, port, expected).
    tables: Vec<(Protocol, u16, Reach)>,
}

fn upstream_cases() -> Vec<Case> {
    let a = json!({"matchLabels": {"pod": "a"}});
    let ns_y = json!({"matchLabels": {"ns": "y"}});
    let ns_not_x =
        json!({"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]});
    let x_b = pod_ip("x", "b");
    let y_b = pod_ip("y", "b");
    vec![
        Case {
            name: "should support a 'default-deny-ingress' policy",
            policies: vec![("x", "deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))],
            tables: vec![
                (TCP, 80, Reach::new(true).expect(ANY, ns("x"), false)),
                (UDP, 81, Reach::new(true).expect(ANY, ns("x"), false)),
            ],
        },
        Case {
            name: "should support a 'default-deny-all' policy",
            policies: vec![(
                "x",
                "deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(ANY, ns("x"), false).expect(ns("x"), ANY, false),
            )],
        },
        Case {
            name: "should support allow-all policy",
            policies: vec![("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}))],
            tables: vec![(TCP, 80, Reach::new(true)), (UDP, 81, Reach::new(true))],
        },
        Case {
            name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            policies: vec![(
                "x",
                "x-a-allows-x-b",
                json!({"podSelector": a, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(ANY, pod("x", "a"), false).expect(pod("x", "b"), pod("x", "a"), true),
            )],
        },
        Case {
            name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            policies: vec![(
                "x",
                "allow-client-a-via-ns-selector",
                json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": ns_y}]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(ANY, pod("x", "a"), false).expect(ns("y"), pod("x", "a"), true),
            )],
        },
        Case {
            name: "should enforce policy based on NamespaceSelector with MatchExpressions",
            policies: vec![(
                "x",
                "allow-ns-not-x",
                json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": ns_not_x}]}]}),
            )],
            tables: vec![(TCP, 80, Reach::new(true).expect(ns("x"), pod("x", "a"), false))],
        },
        Case {
            name: "should enforce policy based on NamespaceSelector with MatchLabels using default ns label",
            policies: vec![(
                "x",
                "allow-y-by-name",
                json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(ANY, pod("x", "a"), false).expect(ns("y"), pod("x", "a"), true),
            )],
        },
        Case {
            name: "should enforce policy based on PodSelector or NamespaceSelector",
            policies: vec![(
                "x",
                "b-or-not-x",
                json!({"podSelector": a, "ingress": [{"from": [
                    {"namespaceSelector": ns_not_x},
                    {"podSelector": {"matchLabels": {"pod": "b"}}}
                ]}]}),
            )],
            tables: vec![(TCP, 80, Reach::new(true).expect(pod("x", "c"), pod("x", "a"), false))],
        },
        Case {
            name: "should enforce policy based on PodSelector and NamespaceSelector",
            policies: vec![(
                "x",
                "b-and-not-x",
                json!({"podSelector": a, "ingress": [{"from": [
                    {"namespaceSelector": ns_not_x, "podSelector": {"matchLabels": {"pod": "b"}}}
                ]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true)
                    .expect(ANY, pod("x", "a"), false)
                    .expect(pod("y", "b"), pod("x", "a"), true)
                    .expect(pod("z", "b"), pod("x", "a"), true),
            )],
        },
        Case {
            name: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            policies: vec![(
                "x",
                "bc-and-not-x",
                json!({"podSelector": a, "ingress": [{"from": [
                    {"namespaceSelector": ns_not_x, "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}
                ]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true)
                    .expect(ns("x"), pod("x", "a"), false)
                    .expect(pod("y", "a"), pod("x", "a"), false)
                    .expect(pod("z", "a"), pod("x", "a"), false),
            )],
        },
        Case {
            name: "should enforce policy based on any PodSelectors",
            policies: vec![(
                "x",
                "b-or-c",
                json!({"podSelector": a, "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"pod": "b"}}},
                    {"podSelector": {"matchLabels": {"pod": "c"}}}
                ]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true)
                    .expect(ANY, pod("x", "a"), false)
                    .expect(pod("x", "b"), pod("x", "a"), true)
                    .expect(pod("x", "c"), pod("x", "a"), true),
            )],
        },
        Case {
            name: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            policies: vec![(
                "x",
                "y-a-only",
                json!({"podSelector": a, "ingress": [{"from": [
                    {"namespaceSelector": ns_y, "podSelector": {"matchLabels": {"pod": "a"}}}
                ]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(ANY, pod("x", "a"), false).expect(pod("y", "a"), pod("x", "a"), true),
            )],
        },
        Case {
            name: "should enforce policy based on Ports",
            policies: vec![(
                "x",
                "y-on-81",
                json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": ns_y}], "ports": [{"port": 81, "protocol": "TCP"}]}]}),
            )],
            tables: vec![
                (TCP, 80, Reach::new(true).expect(ANY, pod("x", "a"), false)),
                (
                    TCP,
                    81,
                    Reach::new(true).expect(ANY, pod("x", "a"), false).expect(ns("y"), pod("x", "a"), true),
                ),
            ],
        },
        Case {
            name: "should enforce multiple, stacked policies with overlapping podSelectors",
            policies: vec![
                (
                    "x",
                    "y-on-81",
                    json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": ns_y}], "ports": [{"port": 81}]}]}),
                ),
                (
                    "x",
                    "y-on-80",
                    json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": ns_y}], "ports": [{"port": 80}]}]}),
                ),
            ],
            tables: [80, 81]
                .map(|p| {
                    (
                        TCP,
                        p,
                        Reach::new(true).expect(ANY, pod("x", "a"), false).expect(ns("y"), pod("x", "a"), true),
                    )
                })
                .to_vec(),
        },
        Case {
            name: "should allow ingress access on one named port",
            policies: vec![(
                "x",
                "allow-81-by-name",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
            )],
            tables: vec![
                (TCP, 81, Reach::new(true)),
                (TCP, 80, Reach::new(true).expect(ANY, ns("x"), false)),
                // The name is TCP's: UDP 81 is not it.
                (UDP, 81, Reach::new(true).expect(ANY, ns("x"), false)),
            ],
        },
        Case {
            name: "should allow ingress access from namespace on one named port",
            policies: vec![(
                "x",
                "y-on-80-by-name",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_y}], "ports": [{"port": "serve-80-tcp"}]}]}),
            )],
            tables: vec![
                (TCP, 80, Reach::new(true).expect(ANY, ns("x"), false).expect(ns("y"), ns("x"), true)),
                (TCP, 81, Reach::new(true).expect(ANY, ns("x"), false)),
            ],
        },
        Case {
            name: "should allow egress access on one named port",
            policies: vec![(
                "x",
                "egress-80-by-name",
                json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
            )],
            tables: vec![
                (TCP, 80, Reach::new(true)),
                (TCP, 81, Reach::new(true).expect(pod("x", "a"), ANY, false)),
            ],
        },
        Case {
            name: "should enforce policy to allow ingress traffic for a target [Feature:NetworkPolicyEndPort]",
            policies: vec![(
                "x",
                "y-on-80-81",
                json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": ns_y}], "ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]}),
            )],
            tables: [80, 81]
                .map(|p| {
                    (
                        TCP,
                        p,
                        Reach::new(true).expect(ANY, pod("x", "a"), false).expect(ns("y"), pod("x", "a"), true),
                    )
                })
                .to_vec(),
        },
        Case {
            name: "should enforce multiple ingress policies with endPort ranges (81-82 leaves 80 out)",
            policies: vec![(
                "x",
                "y-on-81-82",
                json!({"podSelector": a, "ingress": [{"from": [{"namespaceSelector": ns_y}], "ports": [{"port": 81, "endPort": 82}]}]}),
            )],
            tables: vec![
                (TCP, 80, Reach::new(true).expect(ANY, pod("x", "a"), false)),
                (
                    TCP,
                    81,
                    Reach::new(true).expect(ANY, pod("x", "a"), false).expect(ns("y"), pod("x", "a"), true),
                ),
            ],
        },
        Case {
            name: "should deny egress from pods based on PodSelector",
            policies: vec![("x", "deny-egress-a", json!({"podSelector": a, "policyTypes": ["Egress"]}))],
            tables: vec![(TCP, 80, Reach::new(true).expect(pod("x", "a"), ANY, false))],
        },
        Case {
            name: "should deny egress from all pods in a namespace",
            policies: vec![("x", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]}))],
            tables: vec![(UDP, 80, Reach::new(true).expect(ns("x"), ANY, false))],
        },
        Case {
            name: "should work with Ingress, Egress specified together",
            policies: vec![(
                "x",
                "in-b-out-80",
                json!({"podSelector": a,
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
                       "egress": [{"ports": [{"port": 80}]}]}),
            )],
            tables: vec![
                (
                    TCP,
                    80,
                    Reach::new(true).expect(ANY, pod("x", "a"), false).expect(pod("x", "b"), pod("x", "a"), true),
                ),
                (
                    TCP,
                    81,
                    Reach::new(true)
                        .expect(ANY, pod("x", "a"), false)
                        .expect(pod("x", "b"), pod("x", "a"), true)
                        .expect(pod("x", "a"), ANY, false),
                ),
            ],
        },
        Case {
            name: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            policies: vec![
                (
                    "x",
                    "a-to-y-only",
                    json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ns_y}]}]}),
                ),
                ("z", "allow-all-in", json!({"podSelector": {}, "ingress": [{}]})),
            ],
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(pod("x", "a"), ANY, false).expect(pod("x", "a"), ns("y"), true),
            )],
        },
        Case {
            name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            policies: vec![(
                "x",
                "a-to-y-b",
                json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [
                    {"namespaceSelector": ns_y, "podSelector": {"matchLabels": {"pod": "b"}}}
                ]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(pod("x", "a"), ANY, false).expect(pod("x", "a"), pod("y", "b"), true),
            )],
        },
        Case {
            name: "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            policies: vec![(
                "x",
                "tcp-any-port",
                json!({"podSelector": a, "ingress": [{"ports": [{"protocol": "TCP"}]}]}),
            )],
            tables: vec![
                (TCP, 80, Reach::new(true)),
                (TCP, 81, Reach::new(true)),
                (UDP, 80, Reach::new(true).expect(ANY, pod("x", "a"), false)),
            ],
        },
        Case {
            name: "should not allow access by TCP when a policy specifies only UDP",
            policies: vec![(
                "x",
                "udp-81",
                json!({"podSelector": a, "ingress": [{"ports": [{"protocol": "UDP", "port": 81}]}]}),
            )],
            tables: vec![
                (TCP, 81, Reach::new(true).expect(ANY, pod("x", "a"), false)),
                (UDP, 81, Reach::new(true)),
            ],
        },
        Case {
            name: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP'",
            policies: vec![(
                "x",
                "sctp-80",
                json!({"podSelector": a, "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}),
            )],
            tables: vec![(TCP, 80, Reach::new(true).expect(ANY, pod("x", "a"), false))],
        },
        Case {
            name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            policies: vec![
                ("x", "only-81", json!({"podSelector": a, "ingress": [{"ports": [{"port": 81}]}]})),
                ("x", "allow-all", json!({"podSelector": a, "ingress": [{}]})),
            ],
            tables: vec![(TCP, 80, Reach::new(true)), (TCP, 81, Reach::new(true))],
        },
        Case {
            name: "should enforce multiple egress policies with egress allow-all policy taking precedence",
            policies: vec![
                (
                    "x",
                    "only-81",
                    json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 81}]}]}),
                ),
                ("x", "allow-all", json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{}]})),
            ],
            tables: vec![(TCP, 80, Reach::new(true)), (TCP, 81, Reach::new(true))],
        },
        Case {
            name: "should allow egress access to server in CIDR block",
            policies: vec![(
                "x",
                "a-to-y-b-ip",
                json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": format!("{y_b}/32")}}]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(pod("x", "a"), ANY, false).expect(pod("x", "a"), pod("y", "b"), true),
            )],
        },
        Case {
            name: "should enforce except clause while egress access to server in CIDR block",
            policies: vec![(
                "x",
                "a-to-pods-but-x-b",
                json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [
                    {"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{x_b}/32")]}}
                ]}]}),
            )],
            tables: vec![(TCP, 80, Reach::new(true).expect(pod("x", "a"), pod("x", "b"), false))],
        },
        Case {
            name: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            policies: vec![
                (
                    "x",
                    "a-to-pods-but-x-b",
                    json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [
                        {"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{x_b}/32")]}}
                    ]}]}),
                ),
                (
                    "x",
                    "a-to-x-b",
                    json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [
                        {"ipBlock": {"cidr": format!("{x_b}/32")}}
                    ]}]}),
                ),
            ],
            tables: vec![(TCP, 80, Reach::new(true))],
        },
        Case {
            name: "ipBlock matches pod addresses in ingress too",
            policies: vec![(
                "x",
                "from-y-block",
                json!({"podSelector": a, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.2.0/24", "except": ["10.244.2.4/32"]}}]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true)
                    .expect(ANY, pod("x", "a"), false)
                    .expect(pod("y", "a"), pod("x", "a"), true)
                    .expect(pod("y", "b"), pod("x", "a"), true),
            )],
        },
        Case {
            name: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            policies: vec![
                ("x", "egress-only", json!({"podSelector": a, "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})),
            ],
            // An egress-only policy leaves x/a's ingress open.
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(pod("x", "a"), ANY, false).expect(pod("x", "a"), pod("x", "b"), true),
            )],
        },
        Case {
            name: "should deny ingress from pods on other namespaces",
            policies: vec![(
                "x",
                "same-ns-only",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            )],
            tables: vec![(
                TCP,
                80,
                Reach::new(true).expect(ANY, ns("x"), false).expect(ns("x"), ns("x"), true),
            )],
        },
    ]
}

#[test]
fn upstream_e2e_cases_give_upstream_tables() {
    let cases = upstream_cases();
    assert!(cases.len() >= 30);
    for case in cases {
        let c = with_policies(&case.policies);
        for (protocol, port, want) in &case.tables {
            check(case.name, &c, *protocol, *port, want);
        }
    }
}

#[test]
fn no_policy_leaves_every_pod_open_and_says_so() {
    let c = upstream_cluster();
    check("no policy", &c, TCP, 80, &Reach::new(true));
    let d = evaluate(
        &c,
        &Flow::pods(&PodId::new("x", "a"), &PodId::new("y", "b"), TCP, 80),
    );
    assert_eq!(d.egress.unwrap().reason, Reason::Open);
    assert_eq!(d.ingress.unwrap().reason, Reason::Open);
}

#[test]
fn policies_updated_then_deleted() {
    // "should enforce updated policy", "should stop enforcing policies after they are deleted".
    let mut c = with_policies(&[(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    )]);
    check(
        "before",
        &c,
        TCP,
        80,
        &Reach::new(true)
            .expect(ANY, ns("x"), false)
            .expect(pod("x", "a"), ns("x"), true),
    );
    c.put(
        &network_policy_key("x", "p"),
        &json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    check(
        "updated",
        &c,
        TCP,
        80,
        &Reach::new(true)
            .expect(ANY, ns("x"), false)
            .expect(pod("x", "b"), ns("x"), true),
    );
    c.apply(&network_policy_key("x", "p"), None);
    check("deleted", &c, TCP, 80, &Reach::new(true));
}

#[test]
fn updated_namespace_and_pod_labels() {
    // "should allow ingress access from updated namespace" and "… from updated pod".
    let mut c = with_policies(&[(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]},
            {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}
        ]}),
    )]);
    let base = Reach::new(true).expect(ANY, pod("x", "a"), false).expect(
        pod("x", "b"),
        pod("x", "a"),
        true,
    );
    check("before", &c, TCP, 80, &base);
    c.put(
        &namespace_key("y"),
        &json!({"labels": {"ns": "y", "ns2": "updated"}}),
    );
    check(
        "ns y labelled",
        &c,
        TCP,
        80,
        &base.clone().expect(ns("y"), pod("x", "a"), true),
    );
    c.put(&pod_labels_key("x", "c"), &json!({"labels": {"pod": "b"}}));
    check(
        "x/c relabelled pod=b",
        &c,
        TCP,
        80,
        &base.clone().expect(ns("y"), pod("x", "a"), true).expect(
            pod("x", "c"),
            pod("x", "a"),
            true,
        ),
    );
    // "should deny ingress access to updated pod": x/a relabelled leaves the policy.
    c.put(
        &pod_labels_key("x", "a"),
        &json!({"labels": {"pod": "not-a"}}),
    );
    check("x/a relabelled", &c, TCP, 80, &Reach::new(true));
}

#[test]
fn reasons_name_the_policies_and_rules() {
    let c = with_policies(&[
        ("x", "deny", json!({"podSelector": {}})),
        (
            "x",
            "p80",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 81}]}, {"ports": [{"port": 80}]}]}),
        ),
        (
            "x",
            "q80",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 80}]}]}),
        ),
    ]);
    let (xa, yb) = (PodId::new("x", "a"), PodId::new("y", "b"));
    let d = evaluate(&c, &Flow::pods(&yb, &xa, TCP, 80));
    assert!(d.allowed);
    assert_eq!(
        d.ingress.as_ref().unwrap().reason,
        Reason::AllowedBy {
            selected_by: vec!["x/deny".into(), "x/p80".into(), "x/q80".into()],
            rules: vec![
                RuleRef {
                    policy: "x/p80".into(),
                    rule: 1
                },
                RuleRef {
                    policy: "x/q80".into(),
                    rule: 0
                }
            ],
        }
    );
    assert_eq!(d.egress.as_ref().unwrap().reason, Reason::Open);
    let d = evaluate(&c, &Flow::pods(&yb, &xa, UDP, 80));
    assert!(!d.allowed);
    assert_eq!(
        d.ingress.unwrap().reason,
        Reason::NoRuleAllows {
            selected_by: vec!["x/deny".into(), "x/p80".into(), "x/q80".into()]
        }
    );
}

#[test]
fn outside_addresses_host_and_unknown_pods() {
    let c = with_policies(&[
        (
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ),
        (
            "y",
            "from-outside",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}]}]}),
        ),
    ]);
    let xa = PodId::new("x", "a");
    let ya = PodId::new("y", "a");
    // The host reaches its pod whatever the policies.
    let d = evaluate(
        &c,
        &Flow::new(Source::Host, Destination::Pod(xa.clone()), TCP, 80),
    );
    assert!(d.allowed);
    assert_eq!(d.ingress.unwrap().reason, Reason::FromOwnNode);
    assert!(d.egress.is_none());
    assert_eq!(d.source, End::Host);
    // Outside sources: ingress alone is judged; ipBlock except carves out.
    let from = |ip: &str, to: &PodId| {
        evaluate(
            &c,
            &Flow::new(
                Source::Ip(ip.parse().unwrap()),
                Destination::Pod(to.clone()),
                TCP,
                80,
            ),
        )
    };
    assert!(from("203.0.113.7", &ya).allowed);
    assert!(!from("203.0.113.200", &ya).allowed);
    assert!(!from("198.51.100.1", &ya).allowed);
    assert!(from("198.51.100.1", &PodId::new("z", "a")).allowed);
    assert!(matches!(
        from("203.0.113.7", &ya).source,
        End::Outside { .. }
    ));
    // A pod's address is that pod.
    let d = from(&pod_ip("x", "a").to_string(), &ya);
    assert_eq!(
        d.source,
        End::Pod {
            pod: "x/a".into(),
            node: "n1".into(),
            ip: Some(pod_ip("x", "a"))
        }
    );
    assert!(!d.allowed);
    assert_eq!(d.egress.unwrap().pod, "x/a");
    // Egress to outside: only the source is judged.
    let d = evaluate(
        &c,
        &Flow::new(
            Source::Pod(ya.clone()),
            Destination::Ip("198.51.100.1".parse().unwrap()),
            UDP,
            53,
        ),
    );
    assert!(d.allowed && d.ingress.is_none());
    let d = evaluate(
        &c,
        &Flow::new(
            Source::Pod(xa.clone()),
            Destination::Ip("198.51.100.1".parse().unwrap()),
            UDP,
            53,
        ),
    );
    assert!(!d.allowed);
    // A pod not in the store: denied, said.
    let ghost = PodId::new("x", "ghost");
    let d = evaluate(&c, &Flow::pods(&ghost, &PodId::new("z", "a"), TCP, 80));
    assert!(!d.allowed);
    assert_eq!(
        d.egress.unwrap().reason,
        Reason::UnknownPod {
            pod: "x/ghost".into()
        }
    );
}

#[test]
fn named_egress_port_to_an_outside_address_matches_nothing() {
    let c = with_policies(&[(
        "x",
        "egress-by-name",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
    )]);
    let xa = PodId::new("x", "a");
    let out = |ip: &str| {
        evaluate(
            &c,
            &Flow::new(
                Source::Pod(xa.clone()),
                Destination::Ip(ip.parse().unwrap()),
                TCP,
                80,
            ),
        )
    };
    assert!(!out("198.51.100.1").allowed);
    assert!(out(&pod_ip("z", "c").to_string()).allowed);
}

// ---- the global tier ----

fn global(c: &mut Cluster, name: &str, spec: Value) {
    c.put(&global_network_policy_key(name), &spec);
    assert_eq!(
        c.problems().count(),
        0,
        "{:?}",
        c.problems().collect::<Vec<_>>()
    );
}

#[test]
fn global_deny_wins_over_a_namespaced_allow_and_order_decides() {
    let mut c = with_policies(&[(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    )]);
    global(
        &mut c,
        "deny-y-to-x",
        json!({"order": 10, "namespaceSelector": "ns == 'x'", "ingress": [
            {"action": "Log", "source": {"namespaceSelector": "ns == 'y'"}},
            {"action": "Deny", "source": {"namespaceSelector": "ns == 'y'"}},
            {"action": "Pass"}
        ]}),
    );
    check(
        "deny y->x",
        &c,
        TCP,
        80,
        &Reach::new(true).expect(ns("y"), ns("x"), false),
    );
    let d = evaluate(
        &c,
        &Flow::pods(&PodId::new("y", "a"), &PodId::new("x", "b"), TCP, 80),
    );
    let v = d.ingress.as_ref().unwrap();
    assert_eq!(
        v.reason,
        Reason::GlobalRule {
            rule: RuleRef {
                policy: "deny-y-to-x".into(),
                rule: 1
            },
            action: Action::Deny
        }
    );
    assert_eq!(
        v.logged,
        vec![RuleRef {
            policy: "deny-y-to-x".into(),
            rule: 0
        }]
    );
    assert_eq!(d.logged().count(), 1);
    // From z: Pass, then the namespaced allow-all.
    let d = evaluate(
        &c,
        &Flow::pods(&PodId::new("z", "a"), &PodId::new("x", "b"), TCP, 80),
    );
    let v = d.ingress.as_ref().unwrap();
    assert_eq!(
        v.passed,
        Some(RuleRef {
            policy: "deny-y-to-x".into(),
            rule: 2
        })
    );
    assert!(matches!(v.reason, Reason::AllowedBy { .. }));
    // A lower order Allow for y/a comes first.
    global(
        &mut c,
        "allow-y-a",
        json!({"order": 5, "namespaceSelector": "ns == 'x'", "ingress": [
            {"action": "Allow", "source": {"selector": "pod == 'a' && projectcalico.org/namespace == 'y'"}}
        ]}),
    );
    // y/b, y/c still denied; y/a allowed by the global rule; z: end of tier? No: the
    // second policy passes.
    check(
        "allow y/a first",
        &c,
        TCP,
        80,
        &Reach::new(true)
            .expect(ns("y"), ns("x"), false)
            .expect(pod("y", "a"), ns("x"), true),
    );
}

#[test]
fn end_of_global_tier_denies_and_pass_hands_down() {
    let mut c = upstream_cluster();
    // Applies to x only, allows 80 only: everything else into x hits the end of the tier.
    global(
        &mut c,
        "x-80",
        json!({"order": 1, "selector": "projectcalico.org/namespace == 'x'", "ingress": [
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}
        ]}),
    );
    check("80", &c, TCP, 80, &Reach::new(true));
    check(
        "81",
        &c,
        TCP,
        81,
        &Reach::new(true).expect(ANY, ns("x"), false),
    );
    let d = evaluate(
        &c,
        &Flow::pods(&PodId::new("y", "a"), &PodId::new("x", "a"), TCP, 81),
    );
    assert_eq!(
        d.ingress.unwrap().reason,
        Reason::EndOfGlobalTier {
            applied: vec!["x-80".into()]
        }
    );
    // A later Pass-all hands 81 to the namespaced tier, where x is open.
    global(
        &mut c,
        "pass",
        json!({"order": 2, "ingress": [{"action": "Pass"}]}),
    );
    check("81 passed", &c, TCP, 81, &Reach::new(true));
    // Ranges and named ports in global rules; egress.
    global(
        &mut c,
        "egress-x",
        json!({"order": 0, "types": ["Egress"], "selector": "pod == 'a'", "namespaceSelector": "ns == 'x'", "egress": [
            {"action": "Allow", "protocol": "UDP", "destination": {"ports": ["serve-81-udp"]}},
            {"action": "Deny", "destination": {"nets": ["10.244.2.0/24"], "notNets": ["10.244.2.2/32"]}},
            {"action": "Allow", "protocol": "UDP", "destination": {"ports": ["79:80"]}}
        ]}),
    );
    check("udp 81", &c, UDP, 81, &Reach::new(true));
    check(
        "udp 80",
        &c,
        UDP,
        80,
        &Reach::new(true)
            .expect(pod("x", "a"), pod("y", "b"), false)
            .expect(pod("x", "a"), pod("y", "c"), false),
    );
    // TCP from x/a: no rule of egress-x matches, the only global egress policy: end of
    // the tier.
    check(
        "tcp 80",
        &c,
        TCP,
        80,
        &Reach::new(true).expect(pod("x", "a"), ANY, false),
    );
    // 81/udp to y/b: rule 0 allows before the Deny.
    let d = evaluate(
        &c,
        &Flow::pods(&PodId::new("x", "a"), &PodId::new("y", "b"), UDP, 81),
    );
    assert!(matches!(
        d.egress.unwrap().reason,
        Reason::GlobalRule {
            action: Action::Allow,
            ..
        }
    ));
}

#[test]
fn global_selectors_see_the_calico_namespace_label_and_namespace_labels() {
    let mut c = upstream_cluster();
    global(
        &mut c,
        "deny-z",
        json!({"order": 1, "selector": "projectcalico.org/namespace == 'z'", "ingress": [{"action": "Deny"}]}),
    );
    check(
        "deny z",
        &c,
        TCP,
        80,
        &Reach::new(true).expect(ANY, ns("z"), false),
    );
    global(
        &mut c,
        "deny-z",
        json!({"order": 1, "namespaceSelector": "kubernetes.io/metadata.name == 'z'", "ingress": [{"action": "Deny", "source": {"selector": "pod in {'a', 'b'}"}}]}),
    );
    // c's traffic matches no rule: the end of the tier denies it too.
    check(
        "end of tier for c",
        &c,
        TCP,
        80,
        &Reach::new(true).expect(ANY, ns("z"), false),
    );
    global(
        &mut c,
        "deny-z",
        json!({"order": 1, "namespaceSelector": "kubernetes.io/metadata.name == 'z'", "ingress": [
            {"action": "Deny", "source": {"selector": "pod in {'a', 'b'}"}},
            {"action": "Pass"}
        ]}),
    );
    check(
        "deny a, b to z",
        &c,
        TCP,
        80,
        &Reach::new(true)
            .expect(ANY, ns("z"), false)
            .expect(pod("x", "c"), ns("z"), true)
            .expect(pod("y", "c"), ns("z"), true)
            .expect(pod("z", "c"), ns("z"), true),
    );
}

// ---- generated properties (a small seeded generator: proptest is not in the workspace,
// and these need no shrinking to read: every failure prints the seed and the policies) ----

/// xorshift64*, seeded: the same seed gives the same cases on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn namespace(&mut self) -> &'static str {
        NAMESPACES[self.below(NAMESPACES.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn gen_selector(r: &mut Rng, key: &str, values: &[&str]) -> Value {
    match r.below(4) {
        0 => json!({}),
        1 => json!({"matchLabels": {key: r.pick(values)}}),
        2 => {
            json!({"matchExpressions": [{"key": key, "operator": r.pick(&["In", "NotIn"]), "values": [r.pick(values), r.pick(values)]}]})
        }
        _ => {
            json!({"matchExpressions": [{"key": r.pick(&[key, "missing"]), "operator": r.pick(&["Exists", "DoesNotExist"])}]})
        }
    }
}

fn gen_peer(r: &mut Rng) -> Value {
    match r.below(4) {
        0 => json!({"podSelector": gen_selector(r, "pod", &PODS)}),
        1 => json!({"namespaceSelector": gen_selector(r, "ns", &NAMESPACES)}),
        2 => {
            json!({"podSelector": gen_selector(r, "pod", &PODS), "namespaceSelector": gen_selector(r, "ns", &NAMESPACES)})
        }
        _ => {
            let n = r.below(3) + 1;
            let except = if r.chance(50) {
                vec![format!("10.244.{n}.{}/32", r.below(3) + 2)]
            } else {
                vec![]
            };
            json!({"ipBlock": {"cidr": format!("10.244.{n}.0/24"), "except": except}})
        }
    }
}

fn gen_port(r: &mut Rng) -> Value {
    let proto = *r.pick(&["TCP", "UDP"]);
    match r.below(4) {
        0 => json!({"protocol": proto}),
        1 => json!({"protocol": proto, "port": r.pick(&[80, 81])}),
        2 => json!({"protocol": proto, "port": 80, "endPort": 81}),
        _ => {
            json!({"protocol": proto, "port": format!("serve-{}-{}", r.pick(&[80, 81]), proto.to_lowercase())})
        }
    }
}

fn gen_rules(r: &mut Rng, field: &str) -> Vec<Value> {
    (0..r.below(3))
        .map(|_| {
            let peers: Vec<Value> = (0..r.below(3)).map(|_| gen_peer(r)).collect();
            let ports: Vec<Value> = (0..r.below(3)).map(|_| gen_port(r)).collect();
            json!({field: peers, "ports": ports})
        })
        .collect()
}

fn gen_policy(r: &mut Rng) -> Value {
    let types = r
        .pick(&[
            vec![],
            vec!["Ingress"],
            vec!["Egress"],
            vec!["Ingress", "Egress"],
        ])
        .clone();
    json!({
        "podSelector": gen_selector(r, "pod", &PODS),
        "policyTypes": types,
        "ingress": gen_rules(r, "from"),
        "egress": gen_rules(r, "to"),
    })
}

fn gen_cluster(r: &mut Rng, n: usize) -> (Cluster, Vec<(String, Value)>) {
    let mut c = upstream_cluster();
    let mut ps = Vec::new();
    for i in 0..n {
        let key = network_policy_key(r.namespace(), &format!("p{i}"));
        let spec = gen_policy(r);
        c.put(&key, &spec);
        assert_eq!(c.problems().count(), 0, "{spec}");
        ps.push((key, spec));
    }
    (c, ps)
}

const FLOWS: [(Protocol, u16); 4] = [(TCP, 80), (TCP, 81), (UDP, 80), (UDP, 81)];

fn every_flow() -> Vec<Flow> {
    let pods = all_pods();
    let mut flows = Vec::new();
    for f in &pods {
        for t in &pods {
            for (proto, port) in FLOWS {
                flows.push(Flow::pods(f, t, proto, port));
            }
        }
        for ip in ["10.244.1.2", "198.51.100.9", "10.244.3.3"] {
            flows.push(Flow::new(
                Source::Pod(f.clone()),
                Destination::Ip(ip.parse().unwrap()),
                TCP,
                80,
            ));
            flows.push(Flow::new(
                Source::Ip(ip.parse().unwrap()),
                Destination::Pod(f.clone()),
                UDP,
                81,
            ));
        }
    }
    flows
}

const SEEDS: u64 = 100;

#[test]
fn property_adding_a_policy_never_removes_what_an_isolated_pod_was_allowed() {
    for seed in 1..=SEEDS {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let n = r.below(4);
        let (mut c, ps) = gen_cluster(&mut r, n);
        let before: Vec<Decision> = every_flow().iter().map(|f| evaluate(&c, f)).collect();
        let extra = gen_policy(&mut r);
        c.put(&network_policy_key(r.namespace(), "extra"), &extra);
        for (f, b) in every_flow().iter().zip(&before) {
            let a = evaluate(&c, f);
            for (vb, va) in [(&b.egress, &a.egress), (&b.ingress, &a.ingress)] {
                let (Some(vb), Some(va)) = (vb, va) else {
                    continue;
                };
                let was_isolated = matches!(vb.reason, Reason::AllowedBy { .. });
                assert!(
                    !(was_isolated && vb.allowed && !va.allowed),
                    "seed {seed}: {f:?}: allowed before by {:?}, denied after adding {extra}\npolicies {ps:?}",
                    vb.reason
                );
                // And what no policy isolated stays open unless the new one selects it.
                if vb.reason == Reason::Open && !va.allowed {
                    assert!(
                        matches!(&va.reason, Reason::NoRuleAllows { selected_by } if selected_by.iter().any(|p| p.ends_with("/extra")))
                    );
                }
            }
        }
    }
}

#[test]
fn property_a_policy_selecting_nothing_changes_nothing() {
    for seed in 1..=SEEDS {
        let mut r = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let n = r.below(4);
        let (mut c, _) = gen_cluster(&mut r, n);
        let before: Vec<bool> = every_flow()
            .iter()
            .map(|f| evaluate(&c, f).allowed)
            .collect();
        let mut spec = gen_policy(&mut r);
        spec["podSelector"] = json!({"matchLabels": {"pod": "nobody"}});
        c.put(&network_policy_key(r.namespace(), "nothing"), &spec);
        let after: Vec<bool> = every_flow()
            .iter()
            .map(|f| evaluate(&c, f).allowed)
            .collect();
        assert_eq!(before, after, "seed {seed}: {spec}");
    }
}

#[test]
fn property_the_order_of_events_does_not_matter_and_deleting_all_opens_all() {
    for seed in 1..=SEEDS / 3 {
        let mut r = Rng(seed.wrapping_mul(0xA076_1D64_78BD_642F));
        let n = r.below(5) + 1;
        let (c, ps) = gen_cluster(&mut r, n);
        // The same entries, policies first and pods last, in reverse.
        let mut entries: Vec<(String, Vec<u8>)> = ps
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), serde_json::to_vec(v).unwrap()))
            .collect();
        for ns in NAMESPACES.iter().rev() {
            for p in PODS.iter().rev() {
                let node = if *ns == "z" { "n2" } else { "n1" };
                entries.push((
                    endpoint_key(node, ns, p),
                    serde_json::to_vec(&endpoint(ns, p)).unwrap(),
                ));
            }
            entries.push((
                namespace_key(ns),
                serde_json::to_vec(&json!({"labels": {"ns": ns}})).unwrap(),
            ));
        }
        let mut c2 = Cluster::from_entries(entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        for f in every_flow() {
            assert_eq!(evaluate(&c, &f), evaluate(&c2, &f), "seed {seed}: {f:?}");
        }
        for (k, _) in &ps {
            c2.apply(k, None);
        }
        assert!(
            every_flow().iter().all(|f| evaluate(&c2, f).allowed),
            "seed {seed}"
        );
    }
}

#[test]
fn property_a_pass_all_global_tier_changes_nothing_and_a_deny_all_denies_all_but_the_host() {
    for seed in 1..=SEEDS / 3 {
        let mut r = Rng(seed.wrapping_mul(0xE703_7ED1_A0B4_28DB));
        let n = r.below(4);
        let (mut c, _) = gen_cluster(&mut r, n);
        let before: Vec<Decision> = every_flow().iter().map(|f| evaluate(&c, f)).collect();
        global(
            &mut c,
            "pass-all",
            json!({"order": 1, "types": ["Ingress", "Egress"], "ingress": [{"action": "Log"}, {"action": "Pass"}], "egress": [{"action": "Pass"}]}),
        );
        for (f, b) in every_flow().iter().zip(&before) {
            let a = evaluate(&c, f);
            assert_eq!(a.allowed, b.allowed, "seed {seed}: {f:?}");
            if let Some(v) = &a.ingress {
                if v.reason != Reason::ToItself {
                    assert_eq!(v.logged.len(), 1, "{f:?}");
                }
            }
        }
        global(
            &mut c,
            "deny-all",
            json!({"order": 0, "types": ["Ingress", "Egress"], "ingress": [{"action": "Deny"}], "egress": [{"action": "Deny"}]}),
        );
        for f in every_flow() {
            let d = evaluate(&c, &f);
            // (an address may be the source pod's own)
            let to_itself = matches!((&d.source, &d.destination), (End::Pod { pod: a, .. }, End::Pod { pod: b, .. }) if a == b);
            assert_eq!(d.allowed, to_itself, "seed {seed}: {f:?}");
        }
        for p in all_pods() {
            assert!(evaluate(&c, &Flow::new(Source::Host, Destination::Pod(p), TCP, 80)).allowed);
        }
    }
}

#[test]
fn property_a_named_port_is_its_number_when_every_pod_names_it_alike() {
    for seed in 1..=SEEDS {
        let mut r = Rng(seed.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7));
        let (mut c, _) = gen_cluster(&mut r, 0);
        let mut by_name = gen_policy(&mut r);
        let proto = *r.pick(&["TCP", "UDP"]);
        let port = *r.pick(&[80u16, 81]);
        by_name["ingress"] = json!([{"ports": [{"protocol": proto, "port": format!("serve-{port}-{}", proto.to_lowercase())}]}]);
        by_name["egress"] = json!([{"ports": [{"protocol": proto, "port": format!("serve-{port}-{}", proto.to_lowercase())}]}]);
        let mut by_number = by_name.clone();
        by_number["ingress"] = json!([{"ports": [{"protocol": proto, "port": port}]}]);
        by_number["egress"] = json!([{"ports": [{"protocol": proto, "port": port}]}]);
        let key = network_policy_key(r.namespace(), "p");
        c.put(&key, &by_name);
        // Pod-to-pod flows only: an outside address has no named ports.
        let flows: Vec<Flow> = every_flow()
            .into_iter()
            .filter(|f| {
                matches!(
                    (&f.source, &f.destination),
                    (Source::Pod(_), Destination::Pod(_))
                )
            })
            .collect();
        let a: Vec<bool> = flows.iter().map(|f| evaluate(&c, f).allowed).collect();
        c.put(&key, &by_number);
        let b: Vec<bool> = flows.iter().map(|f| evaluate(&c, f).allowed).collect();
        assert_eq!(a, b, "seed {seed}: {by_name}");
    }
}
