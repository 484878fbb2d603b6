//! Root-gated tests of batched protocol routes ([`twill_netlink::fib`]): everything happens
//! in throwaway `twl` namespaces and is read back with `ip -j route` as well as our dump.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;
use twill_netlink::{FibRoute, Handle, Netns, NextHop, RouteChange, ROUTE_PROTOCOL};
use twill_testkit::TestNetns;

const MAIN: u32 = 254;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn json(ns: &TestNetns, args: &[&str]) -> Value {
    let mut full = vec!["ip", "-j", "-n", &ns.name];
    full.extend_from_slice(args);
    let out = twill_testkit::sh(&full);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{full:?}: bad JSON: {e}"))
}

/// A namespace with a veth pair up, 192.0.2.10/24 and 2001:db8::10/64 on one end, so
/// 192.0.2.0/24 and 2001:db8::/64 gateways are directly reachable.
fn lan(tag: &str) -> (TestNetns, Netns, Handle) {
    let ns = TestNetns::new(tag);
    for args in [
        &[
            "ip", "link", "add", "twlfa", "type", "veth", "peer", "name", "twlfb",
        ][..],
        &["ip", "link", "set", "twlfa", "up"],
        &["ip", "link", "set", "twlfb", "up"],
        &["ip", "addr", "add", "192.0.2.10/24", "dev", "twlfa"],
        &[
            "ip",
            "addr",
            "add",
            "2001:db8::10/64",
            "dev",
            "twlfa",
            "nodad",
        ],
    ] {
        ns.exec(args);
    }
    let netns = Netns::open(ns.path()).unwrap();
    let h = Handle::new_in(&netns).unwrap();
    (ns, netns, h)
}

fn gateways(route: &Value) -> Vec<String> {
    match route["nexthops"].as_array() {
        Some(hops) => hops
            .iter()
            .map(|h| h["gateway"].as_str().unwrap().to_owned())
            .collect(),
        None => vec![route["gateway"].as_str().unwrap_or("").to_owned()],
    }
}

#[test]
fn batch_installs_multipath_replaces_and_ties_each_error_to_its_route() {
    twill_testkit::require_root(
        "batch_installs_multipath_replaces_and_ties_each_error_to_its_route",
    );
    let (ns, _netns, mut h) = lan("fibmp");
    let multi = FibRoute::via(net("10.9.0.0/16"), &[ip("192.0.2.1"), ip("192.0.2.2")]);
    let single = FibRoute::via(net("10.8.1.0/27"), &[ip("192.0.2.3")]);
    let v6 = FibRoute::via(
        net("2001:db8:77::/48"),
        &[ip("2001:db8::1"), ip("2001:db8::2")],
    );
    let bh = FibRoute::via(net("10.7.0.0/24"), &[]);
    let refused = h
        .apply_routes(&[
            RouteChange::Replace(multi.clone()),
            RouteChange::Replace(single.clone()),
            RouteChange::Replace(v6.clone()),
            RouteChange::Replace(bh.clone()),
        ])
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");

    let shown = json(&ns, &["-4", "route", "show", "proto", "84"]);
    let by_dst = |v: &Value, dst: &str| -> Value {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == dst)
            .unwrap_or_else(|| panic!("{dst} not in {v}"))
            .clone()
    };
    assert_eq!(
        gateways(&by_dst(&shown, "10.9.0.0/16")),
        ["192.0.2.1", "192.0.2.2"]
    );
    assert_eq!(gateways(&by_dst(&shown, "10.8.1.0/27")), ["192.0.2.3"]);
    assert_eq!(by_dst(&shown, "10.7.0.0/24")["type"], "blackhole");
    let shown6 = json(&ns, &["-6", "route", "show", "proto", "84"]);
    assert_eq!(
        gateways(&by_dst(&shown6, "2001:db8:77::/48")),
        ["2001:db8::1", "2001:db8::2"]
    );

    // Our dump reads the same routes back, multipath hops with the devices the kernel chose.
    let link = h.link_by_name("twlfa").unwrap().unwrap().index;
    let mut got = h.fib_routes(ROUTE_PROTOCOL, MAIN).unwrap();
    got.sort_by_key(|r| r.dst);
    let strip = |mut r: FibRoute| {
        for nh in &mut r.next_hops {
            assert_eq!(nh.oif, Some(link), "{:?}", r.dst);
            nh.oif = None;
        }
        r.metric = None;
        r
    };
    let got: Vec<FibRoute> = got
        .into_iter()
        .map(|r| if r.next_hops.is_empty() { r } else { strip(r) })
        .collect();
    assert_eq!(
        got,
        vec![bh.clone(), single.clone(), multi.clone(), v6.clone()]
    );

    // Replace moves a multipath route to one hop and back, in place; a route the kernel
    // refuses (gateway not on any link), a delete of a missing route and a delete of a
    // foreign route of the same prefix each fail alone, tied to their index.
    ns.exec(&[
        "ip",
        "route",
        "add",
        "10.6.0.0/24",
        "via",
        "192.0.2.9",
        "proto",
        "static",
    ]);
    let one = FibRoute::via(multi.dst, &[ip("192.0.2.2")]);
    let unreachable = FibRoute::via(net("10.5.0.0/24"), &[ip("203.0.113.1")]);
    let refused = h
        .apply_routes(&[
            RouteChange::Replace(one.clone()),
            RouteChange::Replace(unreachable),
            RouteChange::Delete(FibRoute::via(net("10.4.0.0/24"), &[])),
            RouteChange::Delete(FibRoute::via(net("10.6.0.0/24"), &[])),
            RouteChange::Delete(bh.clone()),
            RouteChange::Delete(v6.clone()),
        ])
        .unwrap();
    let idx: Vec<(usize, Option<i32>)> =
        refused.iter().map(|r| (r.index, r.error.errno())).collect();
    assert_eq!(
        idx,
        vec![
            (1, Some(libc::ENETUNREACH)),
            (2, Some(libc::ESRCH)),
            (3, Some(libc::ESRCH))
        ],
        "{refused:?}"
    );
    let msg = refused[0].error.to_string();
    assert!(
        msg.contains("replace route 10.5.0.0/24 via 203.0.113.1 proto 84"),
        "{msg}"
    );
    let shown = json(&ns, &["-4", "route", "show", "proto", "84"]);
    assert_eq!(gateways(&by_dst(&shown, "10.9.0.0/16")), ["192.0.2.2"]);
    assert_eq!(shown.as_array().unwrap().len(), 2, "{shown}");
    assert!(json(&ns, &["-6", "route", "show", "proto", "84"])
        .as_array()
        .unwrap()
        .is_empty());
    let foreign = json(&ns, &["-4", "route", "show", "10.6.0.0/24"]);
    assert_eq!(
        foreign[0]["protocol"], "static",
        "not ours, not deleted: {foreign}"
    );

    let back = FibRoute {
        next_hops: vec![
            NextHop::via(ip("192.0.2.1")),
            NextHop {
                oif: Some(link),
                ..NextHop::via(ip("192.0.2.2"))
            },
        ],
        ..one
    };
    assert!(h
        .apply_routes(&[RouteChange::Replace(back)])
        .unwrap()
        .is_empty());
    let shown = json(&ns, &["-4", "route", "show", "proto", "84"]);
    assert_eq!(
        gateways(&by_dst(&shown, "10.9.0.0/16")),
        ["192.0.2.1", "192.0.2.2"]
    );
}

/// 100,000 routes in one call (about 50 datagrams of 2,048), read back, replaced to a
/// two-hop multipath in one call, then deleted in one call. Bounded: about 2 s here.
#[test]
fn hundred_thousand_routes_in_one_go() {
    twill_testkit::require_root("hundred_thousand_routes_in_one_go");
    let (ns, _netns, mut h) = lan("fib100k");
    const N: u32 = 100_000;
    let prefix = |i: u32| -> IpNet {
        let a = (10u32 << 24) | (i << 5);
        IpNet::new(IpAddr::V4(a.into()), 27).unwrap()
    };
    let gw = [ip("192.0.2.1")];
    let adds: Vec<RouteChange> = (0..N)
        .map(|i| RouteChange::Replace(FibRoute::via(prefix(i), &gw)))
        .collect();
    let refused = h.apply_routes(&adds).unwrap();
    assert!(refused.is_empty(), "{:?}", &refused[..refused.len().min(3)]);
    let count = |ns: &TestNetns| {
        let (_, out, _) = ns.try_exec(&["ip", "-4", "route", "show", "proto", "84"]);
        out.lines().count()
    };
    assert_eq!(count(&ns), N as usize);
    let ours = h.fib_routes(ROUTE_PROTOCOL, MAIN).unwrap();
    assert_eq!(ours.len(), N as usize);
    assert!(ours
        .iter()
        .all(|r| r.next_hops.len() == 1 && r.next_hops[0].gateway == Some(gw[0])));
    drop(ours);

    let two = [ip("192.0.2.1"), ip("192.0.2.2")];
    let moves: Vec<RouteChange> = (0..N)
        .map(|i| RouteChange::Replace(FibRoute::via(prefix(i), &two)))
        .collect();
    assert!(h.apply_routes(&moves).unwrap().is_empty());
    let ours = h.fib_routes(ROUTE_PROTOCOL, MAIN).unwrap();
    assert_eq!(
        ours.len(),
        N as usize,
        "replaced in place, not added beside"
    );
    assert!(ours.iter().all(|r| r.next_hops.len() == 2));
    drop(ours);

    let dels: Vec<RouteChange> = (0..N)
        .map(|i| RouteChange::Delete(FibRoute::via(prefix(i), &[])))
        .collect();
    assert!(h.apply_routes(&dels).unwrap().is_empty());
    assert_eq!(count(&ns), 0);
    // Deleting them again: every one refused (ESRCH), each with its own index.
    let refused = h.apply_routes(&dels).unwrap();
    assert_eq!(refused.len(), N as usize);
    assert!(refused
        .iter()
        .enumerate()
        .all(|(i, r)| r.index == i && r.error.errno() == Some(libc::ESRCH)));
}
