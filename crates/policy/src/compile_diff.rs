//! From one [`Ruleset`] to another: the smallest list of nftables operations ([`diff`]),
//! in an order the kernel accepts within one transaction, and their `nft -f` text.
//!
//! Order: new counters, sets and (empty) chains first; then set elements; then the rules
//! of new or changed chains (flush, add), which may reference the new objects; then the
//! dispatch maps' elements (which reference chains); then what goes: chains flushed and
//! deleted (nothing refers to them any more), sets and counters deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::compile::{
    DispatchKey, Elem, Ruleset, SetKind, COUNTER_UNKNOWN, FAMILY, MAP_FROM_POD, MAP_TO_POD,
    POD_GROUP, TABLE,
};

/// One nftables operation on Twill's policy table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddCounter(String),
    AddSet {
        name: String,
        kind: SetKind,
    },
    AddChain(String),
    AddElements {
        set: String,
        elements: Vec<Elem>,
    },
    DeleteElements {
        set: String,
        elements: Vec<Elem>,
    },
    /// Flush the chain and add these rules.
    SetRules {
        chain: String,
        rules: Vec<String>,
    },
    /// `map` is [`MAP_FROM_POD`] or [`MAP_TO_POD`]; each key goes to its chain.
    AddDispatch {
        map: &'static str,
        elements: Vec<(DispatchKey, String)>,
    },
    DeleteDispatch {
        map: &'static str,
        keys: Vec<DispatchKey>,
    },
    /// Flushed, then deleted (after every flush, so chains that jumped to each other go).
    DeleteChain(String),
    DeleteSet(String),
    DeleteCounter(String),
}

impl Op {
    /// Whether the operation only adds or removes elements (the nfnetlink fast path).
    pub fn is_elements(&self) -> bool {
        matches!(
            self,
            Op::AddElements { .. }
                | Op::DeleteElements { .. }
                | Op::AddDispatch { .. }
                | Op::DeleteDispatch { .. }
        )
    }
}

fn dispatch_diff(
    map: &'static str,
    old: &BTreeMap<DispatchKey, String>,
    new: &BTreeMap<DispatchKey, String>,
    adds: &mut Vec<Op>,
    dels: &mut Vec<Op>,
) {
    // A key whose chain changed is deleted then re-added (an element's data cannot be
    // replaced in place); both in the same transaction.
    let gone: Vec<DispatchKey> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    let added: Vec<(DispatchKey, String)> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !gone.is_empty() {
        dels.push(Op::DeleteDispatch { map, keys: gone });
    }
    if !added.is_empty() {
        adds.push(Op::AddDispatch {
            map,
            elements: added,
        });
    }
}

/// The operations that turn `old` into `new`.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Vec<Op> {
    let mut ops = Vec::new();
    for c in new.counters.difference(&old.counters) {
        ops.push(Op::AddCounter(c.clone()));
    }
    for (name, set) in &new.sets {
        if !old.sets.contains_key(name) {
            ops.push(Op::AddSet {
                name: name.clone(),
                kind: set.kind,
            });
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            ops.push(Op::AddChain(name.clone()));
        }
    }
    for (name, set) in &new.sets {
        let empty = BTreeSet::new();
        let before = old.sets.get(name).map_or(&empty, |s| &s.elements);
        let dels: Vec<Elem> = before.difference(&set.elements).cloned().collect();
        let adds: Vec<Elem> = set.elements.difference(before).cloned().collect();
        if !dels.is_empty() {
            ops.push(Op::DeleteElements {
                set: name.clone(),
                elements: dels,
            });
        }
        if !adds.is_empty() {
            ops.push(Op::AddElements {
                set: name.clone(),
                elements: adds,
            });
        }
    }
    for (name, rules) in &new.chains {
        // A new chain without rules needs only its AddChain.
        let new_and_empty = rules.is_empty() && !old.chains.contains_key(name);
        if old.chains.get(name) != Some(rules) && !new_and_empty {
            ops.push(Op::SetRules {
                chain: name.clone(),
                rules: rules.clone(),
            });
        }
    }
    let mut dels = Vec::new();
    dispatch_diff(
        MAP_FROM_POD,
        &old.from_pod,
        &new.from_pod,
        &mut ops,
        &mut dels,
    );
    dispatch_diff(MAP_TO_POD, &old.to_pod, &new.to_pod, &mut ops, &mut dels);
    // Dispatch deletes first within the transaction would open a window only between
    // statements of one transaction, which nobody sees; they go before the adds so a
    // key whose chain changed is free again.
    let first_add = ops
        .iter()
        .position(|o| matches!(o, Op::AddDispatch { .. }))
        .unwrap_or(ops.len());
    for (i, d) in dels.into_iter().enumerate() {
        ops.insert(first_add + i, d);
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            ops.push(Op::DeleteChain(name.clone()));
        }
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            ops.push(Op::DeleteSet(name.clone()));
        }
    }
    for c in old.counters.difference(&new.counters) {
        ops.push(Op::DeleteCounter(c.clone()));
    }
    ops
}

fn elements_text(elements: &[Elem]) -> String {
    elements
        .iter()
        .map(Elem::nft)
        .collect::<Vec<_>>()
        .join(", ")
}

fn dispatch_key_text((iface, ip): &DispatchKey) -> String {
    format!("\"{iface}\" . {ip}")
}

/// The operations as one `nft -f` script (one transaction).
pub fn ops_script(ops: &[Op]) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = String::new();
    let mut deleted = Vec::new();
    for op in ops {
        match op {
            Op::AddCounter(c) => writeln!(s, "add counter {t} {c}"),
            Op::AddSet { name, kind } => {
                writeln!(s, "add set {t} {name} {{ type {}; }}", kind.nft_type())
            }
            Op::AddChain(c) => writeln!(s, "add chain {t} {c}"),
            Op::AddElements { set, elements } => {
                writeln!(s, "add element {t} {set} {{ {} }}", elements_text(elements))
            }
            Op::DeleteElements { set, elements } => {
                writeln!(
                    s,
                    "delete element {t} {set} {{ {} }}",
                    elements_text(elements)
                )
            }
            Op::SetRules { chain, rules } => {
                let _ = writeln!(s, "flush chain {t} {chain}");
                for r in rules {
                    let _ = writeln!(s, "add rule {t} {chain} {r}");
                }
                Ok(())
            }
            Op::AddDispatch { map, elements } => {
                let items: Vec<String> = elements
                    .iter()
                    .map(|(k, c)| format!("{} : goto {c}", dispatch_key_text(k)))
                    .collect();
                writeln!(s, "add element {t} {map} {{ {} }}", items.join(", "))
            }
            Op::DeleteDispatch { map, keys } => {
                let items: Vec<String> = keys.iter().map(dispatch_key_text).collect();
                writeln!(s, "delete element {t} {map} {{ {} }}", items.join(", "))
            }
            Op::DeleteChain(c) => {
                deleted.push(c.clone());
                writeln!(s, "flush chain {t} {c}")
            }
            Op::DeleteSet(n) => {
                for c in deleted.drain(..) {
                    let _ = writeln!(s, "delete chain {t} {c}");
                }
                writeln!(s, "delete set {t} {n}")
            }
            Op::DeleteCounter(c) => {
                for c in deleted.drain(..) {
                    let _ = writeln!(s, "delete chain {t} {c}");
                }
                writeln!(s, "delete counter {t} {c}")
            }
        }
        .expect("writing to a String");
    }
    for c in deleted {
        let _ = writeln!(s, "delete chain {t} {c}");
    }
    s
}

/// The fixed part of the table: base chain, dispatch chains, maps.
pub fn skeleton_script() -> String {
    let t = format!("{FAMILY} {TABLE}");
    format!(
        "add table {t}
add counter {t} {COUNTER_UNKNOWN}
add map {t} {MAP_FROM_POD} {{ type ifname . ipv4_addr : verdict; }}
add map {t} {MAP_TO_POD} {{ type ifname . ipv4_addr : verdict; }}
add chain {t} from-pod
add rule {t} from-pod ct state invalid drop
add rule {t} from-pod iifname . ip saddr vmap @{MAP_FROM_POD}
add rule {t} from-pod counter name {COUNTER_UNKNOWN} drop
add chain {t} to-pod
add rule {t} to-pod ct state invalid drop
add rule {t} to-pod oifname . ip daddr vmap @{MAP_TO_POD}
add rule {t} to-pod counter name {COUNTER_UNKNOWN} drop
add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}
add rule {t} forward ct state established,related accept
add rule {t} forward iifgroup {POD_GROUP} jump from-pod
add rule {t} forward oifgroup {POD_GROUP} jump to-pod
"
    )
}

/// The whole table as one script that replaces whatever table is there, atomically (a
/// restarting twilld never leaves the pods open: the old table judges until the commit).
pub fn full_script(rs: &Ruleset) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = format!("add table {t}\ndelete table {t}\n");
    s.push_str(&skeleton_script());
    // The skeleton made the unknown-interface counter already.
    let mut rest = rs.clone();
    rest.counters.remove(COUNTER_UNKNOWN);
    s.push_str(&ops_script(&diff(&Ruleset::default(), &rest)));
    s
}

/// Removes the table (policy turned off).
pub fn delete_script() -> String {
    format!("delete table {FAMILY} {TABLE}\n")
}

#[cfg(test)]
/// What the kernel does with the operations, on the description (the oracle for
/// "diff then apply gives the new rule set").
pub(crate) fn tests_apply(rs: &Ruleset, ops: &[Op]) -> Ruleset {
    use crate::compile::Set;
    let mut rs = rs.clone();
    for op in ops {
        match op {
            Op::AddCounter(c) => assert!(rs.counters.insert(c.clone()), "{c} twice"),
            Op::AddSet { name, kind } => {
                let old = rs.sets.insert(
                    name.clone(),
                    Set {
                        kind: *kind,
                        elements: BTreeSet::new(),
                    },
                );
                assert!(old.is_none(), "{name} twice");
            }
            Op::AddChain(c) => assert!(rs.chains.insert(c.clone(), vec![]).is_none()),
            Op::AddElements { set, elements } => {
                let s = rs.sets.get_mut(set).expect("set exists");
                for e in elements {
                    assert!(s.elements.insert(e.clone()), "{e:?} twice in {set}");
                }
            }
            Op::DeleteElements { set, elements } => {
                let s = rs.sets.get_mut(set).expect("set exists");
                for e in elements {
                    assert!(s.elements.remove(e), "{e:?} not in {set}");
                }
            }
            Op::SetRules { chain, rules } => {
                *rs.chains.get_mut(chain).expect("chain exists") = rules.clone();
            }
            Op::AddDispatch { map, elements } => {
                let m = if *map == MAP_FROM_POD {
                    &mut rs.from_pod
                } else {
                    &mut rs.to_pod
                };
                for (k, c) in elements {
                    assert!(rs.chains.contains_key(c), "{c} missing");
                    assert!(m.insert(k.clone(), c.clone()).is_none(), "{k:?} twice");
                }
            }
            Op::DeleteDispatch { map, keys } => {
                let m = if *map == MAP_FROM_POD {
                    &mut rs.from_pod
                } else {
                    &mut rs.to_pod
                };
                for k in keys {
                    assert!(m.remove(k).is_some(), "{k:?} absent");
                }
            }
            Op::DeleteChain(c) => assert!(rs.chains.remove(c).is_some()),
            Op::DeleteSet(n) => assert!(rs.sets.remove(n).is_some()),
            Op::DeleteCounter(c) => assert!(rs.counters.remove(c)),
        }
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::compile::compile;

    fn apply(rs: &Ruleset, ops: &[Op]) -> Ruleset {
        tests_apply(rs, ops)
    }

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

    fn cluster(entries: &[(String, String)]) -> Cluster {
        Cluster::from_entries(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    fn base() -> Vec<(String, String)> {
        vec![
            ep("n1", "x", "a", "10.244.1.2", "pod=a"),
            ep("n1", "x", "b", "10.244.1.3", "pod=b"),
            ep("n2", "y", "c", "10.244.2.2", "pod=c"),
            (
                "networkpolicies/x/allow-b".into(),
                r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod":"b"}}},{"ipBlock":{"cidr":"10.244.2.0/24","except":["10.244.2.2/32"]}}],"ports":[{"port":"http"},{"protocol":"UDP","port":53,"endPort":60}]}]}"#.into(),
            ),
            (
                "globalnetworkpolicies/g1".into(),
                r#"{"order":10,"selector":"pod == 'a'","ingress":[{"action":"Log"},{"action":"Deny","source":{"nets":["10.9.0.0/16"]}},{"action":"Pass"}]}"#.into(),
            ),
        ]
    }

    #[test]
    fn a_selected_pod_goes_through_its_globals_then_its_policies() {
        let rs = compile(&cluster(&base()), "n1", &BTreeMap::new());
        let a_in = &rs.to_pod[&("twla".to_string(), "10.244.1.2".parse().unwrap())];
        let rules = &rs.chains[a_in];
        assert_eq!(rules[1], "jump gnp/in/g1");
        assert!(rules
            .last()
            .unwrap()
            .starts_with("counter name drop/gnp/g1 drop"));
        let k8s = &rs.chains[&format!("{a_in}/k8s")];
        assert_eq!(k8s[0], "jump np/in/x/allow-b");
        assert_eq!(k8s.last().unwrap(), "counter name drop/np/x/allow-b drop");
        // b is selected by nothing: open; c is on another node: not dispatched.
        let b = ("twlb".to_string(), "10.244.1.3".parse().unwrap());
        assert_eq!(rs.to_pod[&b], CHAIN_OPEN_NAME);
        assert_eq!(rs.from_pod.len(), 2);
        let np = &rs.chains["np/in/x/allow-b"];
        assert_eq!(np.len(), 4, "{np:#?}");
        assert!(np[0].contains("meta l4proto tcp ip daddr . meta l4proto . th dport @port/http"));
        assert!(np[3].starts_with("ip saddr { 10.244.2.0/24 } ip saddr != { 10.244.2.2/32 } meta l4proto udp th dport 53-60"), "{}", np[3]);
        let sel = np[0]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .trim_start_matches('@');
        assert_eq!(
            rs.sets[sel].elements,
            [Elem::Addr("10.244.1.3".parse().unwrap())].into()
        );
        let g = &rs.chains["gnp/in/g1"];
        assert!(
            g[0].starts_with("log prefix \"in g1 rule 0\" group"),
            "{g:?}"
        );
        assert_eq!(
            g[1],
            "ip saddr { 10.9.0.0/16 } counter name drop/gnp/g1 drop"
        );
        assert!(g[2].ends_with("return") && g[2].contains("0x00200000"));
    }

    const CHAIN_OPEN_NAME: &str = crate::compile::CHAIN_OPEN;

    #[test]
    fn a_pod_joining_a_selected_set_changes_only_elements() {
        let mut e = base();
        let before = compile(&cluster(&e), "n1", &BTreeMap::new());
        e.push(ep("n2", "x", "d", "10.244.2.9", "pod=b"));
        let after = compile(&cluster(&e), "n1", &BTreeMap::new());
        let ops = diff(&before, &after);
        assert!(ops.iter().all(Op::is_elements), "{ops:#?}");
        assert_eq!(
            ops.len(),
            2,
            "the selector set and the named port set: {ops:#?}"
        );
        assert_eq!(apply(&before, &ops), after);
        // A local pod joining: also its dispatch elements, to existing profiles.
        e.push(ep("n1", "x", "e", "10.244.1.9", "pod=b"));
        let local = compile(&cluster(&e), "n1", &BTreeMap::new());
        let ops = diff(&after, &local);
        assert!(ops.iter().all(Op::is_elements), "{ops:#?}");
        assert_eq!(apply(&after, &ops), local);
    }

    type Step = Box<dyn Fn(&mut Vec<(String, String)>)>;

    #[test]
    fn diff_applied_gives_the_new_rule_set_on_every_step() {
        // Every prefix of a sequence of changes, each compared with a fresh compile.
        let mut e = base();
        let steps: Vec<Step> = vec![
            Box::new(|e| e.retain(|(k, _)| !k.starts_with("globalnetworkpolicies/"))),
            Box::new(|e| {
                e.push((
                    "networkpolicies/x/deny".into(),
                    r#"{"podSelector":{},"policyTypes":["Ingress","Egress"]}"#.into(),
                ))
            }),
            Box::new(|e| e.push(("namespaces/y".into(), r#"{"labels":{"team":"t"}}"#.into()))),
            Box::new(|e| {
                e.push(("networkpolicies/x/ns".into(), r#"{"podSelector":{},"egress":[{"to":[{"namespaceSelector":{"matchLabels":{"team":"t"}}}]}]}"#.into()))
            }),
            Box::new(|e| e.retain(|(k, _)| k != "endpoints/n1/x/b")),
            Box::new(|e| e.retain(|(k, _)| !k.starts_with("networkpolicies/x/deny"))),
            Box::new(|e| {
                e.push(("globalnetworkpolicies/g2".into(), r#"{"selector":"all()","egress":[{"action":"Allow","protocol":"TCP","destination":{"ports":[80,"http","90:99"]}},{"action":"Log","destination":{"selector":"pod == 'c'","ports":["http", 81]}}]}"#.into()))
            }),
            Box::new(|e| e.clear()),
        ];
        let mut old = compile(&cluster(&e), "n1", &BTreeMap::new());
        for (i, step) in steps.iter().enumerate() {
            step(&mut e);
            let new = compile(&cluster(&e), "n1", &BTreeMap::new());
            let ops = diff(&old, &new);
            assert_eq!(apply(&old, &ops), new, "step {i}");
            assert!(diff(&new, &new).is_empty());
            old = new;
        }
        assert_eq!(old.from_pod.len(), 0);
    }

    #[test]
    fn scripts_name_the_table_and_quote_interfaces() {
        let rs = compile(&cluster(&base()), "n1", &BTreeMap::new());
        let s = full_script(&rs);
        assert!(s.starts_with("add table inet twill-policy\ndelete table inet twill-policy\n"));
        assert!(s.contains(
            "add element inet twill-policy to_pod { \"twla\" . 10.244.1.2 : goto prof/in/"
        ));
        assert!(s.contains("add element inet twill-policy port/http { 10.244.1.2 . 6 . 8080"));
    }
}
