//! Root-gated: chains, rules, sets and counters sent over nfnetlink read back from the
//! kernel exactly as the same rules applied with `nft -f` do.

use twill_netlink::Netns;
use twill_nft::apply_script;
use twill_nft::policy::{ElementTable, TableRef, FAMILY_INET};
use twill_nft::rules::{self, parse_rule, NamedSetType};
use twill_testkit::TestNetns;

/// Every form the policy compiler writes, and nft's corner cases (one-element sets,
/// byte-aligned and other prefixes, /0, merged intervals, negations, ranges).
const RULES: &[&str] = &[
    "meta mark set meta mark & 0xffcfffff",
    "jump c2",
    "meta mark & 0x00100000 == 0x00100000 return",
    "meta mark & 0x00200000 == 0x00200000 goto c2",
    "counter name drop/np/x/a drop",
    "ip saddr @sel/1 meta l4proto tcp ip daddr . meta l4proto . th dport @port/http meta mark set meta mark | 0x00100000 return",
    "ip saddr { 10.244.2.0/24 } ip saddr != { 10.244.2.2/32 } meta l4proto udp th dport 53-60 meta mark set meta mark | 0x00100000 return",
    "meta l4proto { tcp, udp, sctp } ip saddr { 10.9.0.0/16, 10.11.0.0/16 } th dport { 80, 90-99 } th sport != { 1, 5-6 } log prefix \"in g1 rule 0\" group 29815",
    "meta l4proto icmp ip saddr . meta l4proto . th sport != @port/http counter name drop/np/x/a drop",
    "meta l4proto tcp th dport 80 meta mark set meta mark | 0x00200000 return",
    "ip daddr { 10.0.0.0/8 } log prefix \"x y\" group 29815 return",
    "ip saddr { 0.0.0.0/0 } ip saddr != { 10.0.0.0/20, 10.1.0.0/16 } th dport { 90-99 } th sport != { 90-99 } ip daddr != { 10.1.0.0/20 } ip daddr { 10.9.0.0/16, 10.10.0.0/16, 10.10.1.0/24 } th dport != 7 accept",
    "meta l4proto { tcp, udp } th dport { 1, 3 } ip saddr { 1.2.3.4, 1.2.3.6 } th dport != { 80, 65535 } th sport { 65000-65535, 1-2 } drop",
    "ip daddr @sel/1 th dport { 80 } th sport != { 81 } accept",
];

fn listing(ns: &TestNetns, table: &str) -> String {
    let out = ns.exec(&["nft", "list", "table", "inet", table]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rules_over_netlink_read_back_as_nft_f_writes_them() {
    twill_testkit::require_root("rules_over_netlink_read_back_as_nft_f_writes_them");
    let table = "twl-rules";
    let (a, b) = (TestNetns::new("twlrla"), TestNetns::new("twlrlb"));
    let mut script = format!(
        "add table inet {table}\nadd counter inet {table} drop/np/x/a\n\
         add set inet {table} sel/1 {{ type ipv4_addr; }}\n\
         add set inet {table} port/http {{ type ipv4_addr . inet_proto . inet_service; }}\n\
         add chain inet {table} c1\nadd chain inet {table} c2\n"
    );
    for r in RULES {
        script.push_str(&format!("add rule inet {table} c1 {r}\n"));
    }
    let nsa = Netns::open(a.path()).unwrap();
    twill_netlink::run_in(&nsa, || apply_script(&script))
        .unwrap()
        .unwrap();

    let t = TableRef {
        family: FAMILY_INET,
        name: table,
    };
    let nsb = Netns::open(b.path()).unwrap();
    twill_netlink::run_in(&nsb, || apply_script(&format!("add table inet {table}\n")))
        .unwrap()
        .unwrap();
    let mut id = 1;
    let mut msgs = vec![
        rules::add_counter(t, "drop/np/x/a"),
        rules::add_set(t, "sel/1", NamedSetType::Addr, 1000),
        rules::add_set(t, "port/http", NamedSetType::AddrProtoPort, 1001),
        rules::add_chain(t, "c1"),
        rules::add_chain(t, "c2"),
    ];
    for r in RULES {
        let rule = parse_rule(r, &mut id).unwrap();
        msgs.extend(rules::add_rule(t, "c1", &rule));
    }
    let mut et = ElementTable::new_in(&nsb, FAMILY_INET, table).unwrap();
    et.send(msgs).unwrap();
    assert_eq!(listing(&b, table), listing(&a, table));
    // The kernel's own encoding too (what nft reads back, expression by expression).
    let debug = |ns: &TestNetns| {
        let out = ns.exec(&[
            "nft",
            "--debug=netlink",
            "list",
            "chain",
            "inet",
            table,
            "c1",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with('['))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let expected = debug(&a);
    assert!(expected.lines().count() > 90, "{expected}");
    assert_eq!(debug(&b), expected);
    // The rules' comparisons read back over GETRULE, rule by rule (`meta l4proto tcp th
    // dport 80` is the 10th rule); an unknown chain has none.
    let cmps = et.chain_cmp_values("c1").unwrap();
    assert_eq!(cmps.len(), RULES.len());
    assert_eq!(cmps[9], vec![vec![6], vec![0, 80]]);
    assert!(et.chain_cmp_values("nope").unwrap().is_empty());

    // Flush, then delete chains, sets and counters, in one batch, as nft does.
    et.send(vec![
        rules::flush_chain(t, "c1"),
        rules::delete_chain(t, "c1"),
        rules::delete_chain(t, "c2"),
        rules::delete_set(t, "sel/1"),
        rules::delete_set(t, "port/http"),
        rules::delete_counter(t, "drop/np/x/a"),
    ])
    .unwrap();
    let left = listing(&b, table);
    assert_eq!(left.trim(), format!("table inet {table} {{\n}}"), "{left}");
    // A bad batch (a rule in a chain that does not exist) changes nothing.
    let rule = parse_rule("accept", &mut id).unwrap();
    let mut bad = vec![rules::add_chain(t, "c3")];
    bad.extend(rules::add_rule(t, "nope", &rule));
    assert!(et.send(bad).is_err());
    assert_eq!(listing(&b, table), left);
}
