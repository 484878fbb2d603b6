//! Root-gated tests: everything happens inside throwaway `twl` namespaces and is checked by
//! reading kernel state back with `ip -j` / `bridge -j` and by sending real packets.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;

use ipnet::Ipv4Net;

use serde_json::Value;
use twill_netlink::codec::{
    IfAddrMsg, MessageBuilder, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use twill_netlink::{get_sysctl, set_sysctl, Error, Handle, Netns, Route};
use twill_testkit::{try_sh, unique_name, TestNetns};

fn json(args: &[&str]) -> Value {
    let out = twill_testkit::sh(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: bad JSON: {e}"))
}

/// `ip -j -d -n NS link show DEV`, or None if the device is not in that namespace.
fn ip_link(ns: &TestNetns, dev: &str) -> Option<Value> {
    let (ok, out, _) = try_sh(&["ip", "-j", "-d", "-n", &ns.name, "link", "show", "dev", dev]);
    ok.then(|| serde_json::from_str::<Value>(&out).unwrap()[0].clone())
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"].as_array().unwrap().iter().any(|f| f == flag)
}

fn open(ns: &TestNetns) -> (Netns, Handle) {
    let netns = Netns::open(ns.path()).unwrap();
    let handle = Handle::new_in(&netns).unwrap();
    (netns, handle)
}

#[test]
fn bridge_is_idempotent_and_survives_a_race() {
    twill_testkit::require_root("bridge_is_idempotent_and_survives_a_race");
    let ns = TestNetns::new("br");
    let (netns, mut h) = open(&ns);
    let before = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();

    let br = h.create_bridge("twlbr0", Some(1400)).unwrap();
    let again = h.create_bridge("twlbr0", None).unwrap();
    assert_eq!(br.index, again.index);
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    let seen = ip_link(&ns, "twlbr0").expect("bridge exists in the test namespace");
    assert_eq!(seen["linkinfo"]["info_kind"], "bridge");
    assert_eq!(seen["mtu"], 1400);
    assert!(has_flag(&seen, "UP"));
    // The caller's thread never moved, and nothing was created in our own namespace.
    assert_eq!(
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
        before
    );
    assert!(Handle::new()
        .unwrap()
        .link_by_name("twlbr0")
        .unwrap()
        .is_none());

    // 20 threads, each with its own socket, race to create the same bridge.
    let indexes: Vec<u32> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    Handle::new_in(&netns)
                        .unwrap()
                        .create_bridge("twlbr1", None)
                        .unwrap()
                        .index
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(indexes.iter().all(|&i| i == indexes[0]), "{indexes:?}");
    assert!(has_flag(&ip_link(&ns, "twlbr1").unwrap(), "UP"));

    // A non-bridge under the name is refused, naming it.
    let other = Netns::open(ns.path()).unwrap();
    h.create_veth("twlnotbr", "twlnotbrp", &other, 1500, None)
        .unwrap();
    let err = h.create_bridge("twlnotbr", None).unwrap_err();
    assert!(
        matches!(err, Error::Conflict(_)) && err.to_string().contains("twlnotbr"),
        "{err}"
    );
}

#[test]
fn veth_is_born_in_both_namespaces() {
    twill_testkit::require_root("veth_is_born_in_both_namespaces");
    let host = TestNetns::new("vh");
    let pod = TestNetns::new("vp");
    let (_, mut h) = open(&host);
    let pod_ns = Netns::open(pod.path()).unwrap();
    let br = h.create_bridge("twlbr0", None).unwrap();
    let host_name = unique_name("vh", 15);
    h.create_veth(&host_name, "eth0", &pod_ns, 1450, Some(br.index))
        .unwrap();

    let host_end = ip_link(&host, &host_name).expect("host end in host namespace");
    assert_eq!(host_end["master"], "twlbr0");
    assert_eq!(host_end["mtu"], 1450);
    assert!(has_flag(&host_end, "UP"));
    assert!(
        ip_link(&pod, &host_name).is_none(),
        "host end leaked into the pod namespace"
    );
    let pod_end = ip_link(&pod, "eth0").expect("peer in pod namespace");
    assert_eq!(pod_end["mtu"], 1450);
    assert_eq!(pod_end["linkinfo"]["info_kind"], "veth");
    assert!(
        ip_link(&host, "eth0").is_none(),
        "peer leaked into the host namespace"
    );

    let link = h.link_by_name(&host_name).unwrap().unwrap();
    assert_eq!(link.kind.as_deref(), Some("veth"));
    assert_eq!(link.master, Some(br.index));
    assert_eq!(
        link.peer_index,
        pod_end["ifindex"].as_u64().map(|i| i as u32)
    );
    assert_eq!(link.mac, h.link_mac(link.index).unwrap());
    assert!(h.links().unwrap().iter().any(|l| l.name == host_name));

    // Same names again: EEXIST surfaces.
    let err = h
        .create_veth(&host_name, "eth0", &pod_ns, 1450, None)
        .unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(err.to_string().contains(&host_name), "{err}");
}

#[test]
fn addresses_routes_and_a_real_ping() {
    twill_testkit::require_root("addresses_routes_and_a_real_ping");
    let host = TestNetns::new("ah");
    let pod = TestNetns::new("ap");
    let (_, mut h) = open(&host);
    let (pod_ns, mut p) = open(&pod);
    h.create_veth("twlah", "eth0", &pod_ns, 1500, None).unwrap();
    let host_if = h.link_by_name("twlah").unwrap().unwrap().index;
    let pod_if = p.link_by_name("eth0").unwrap().unwrap().index;
    p.set_link_up(pod_if).unwrap();

    let gw = Ipv4Addr::new(10, 244, 7, 1);
    let ip = Ipv4Addr::new(10, 244, 7, 2);
    assert!(h.add_address(host_if, gw, 24).unwrap());
    assert!(
        !h.add_address(host_if, gw, 24).unwrap(),
        "second add reports already there"
    );
    assert!(p.add_address(pod_if, ip, 24).unwrap());
    assert_eq!(
        p.addresses(Some(pod_if)).unwrap(),
        vec![(pod_if, "10.244.7.2/24".parse().unwrap())]
    );
    let addrs = json(&[
        "ip", "-j", "-n", &pod.name, "-4", "addr", "show", "dev", "eth0",
    ]);
    assert_eq!(addrs[0]["addr_info"][0]["local"], "10.244.7.2");
    assert_eq!(addrs[0]["addr_info"][0]["broadcast"], "10.244.7.255");

    let mut default = Route::new("0.0.0.0/0".parse().unwrap());
    default.gateway = Some(gw);
    assert!(p.add_route(&default).unwrap());
    assert!(!p.add_route(&default).unwrap());
    let mut onlink = Route::new("203.0.113.0/24".parse().unwrap());
    onlink.gateway = Some(Ipv4Addr::new(198, 51, 100, 1));
    onlink.oif = Some(pod_if);
    onlink.onlink = true;
    onlink.metric = Some(50);
    assert!(p.add_route(&onlink).unwrap());

    let routes = json(&["ip", "-j", "-n", &pod.name, "-4", "route", "show"]);
    let find = |dst: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == dst)
            .cloned()
    };
    assert_eq!(find("default").unwrap()["gateway"], "10.244.7.1");
    let on = find("203.0.113.0/24").expect("onlink route");
    assert_eq!(on["gateway"], "198.51.100.1");
    assert_eq!(on["metric"], 50);
    assert!(
        on["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "onlink"),
        "{on}"
    );
    let ours = p.routes(Route::TABLE_MAIN).unwrap();
    let read_default = ours.iter().find(|r| r.dst.prefix_len() == 0).unwrap();
    assert_eq!(
        (read_default.gateway, read_default.oif),
        (Some(gw), Some(pod_if))
    );
    assert!(ours.iter().any(|r| r == &onlink), "{ours:?}");

    // Real traffic, configured only through this crate.
    let (ok, out, err) = pod.try_exec(&["ping", "-c", "1", "-W", "2", "10.244.7.1"]);
    assert!(ok, "ping failed: {out}{err}");

    p.delete_route(&onlink).unwrap();
    assert!(p.delete_route(&onlink).unwrap_err().is_not_found());
    p.delete_address(pod_if, ip, 24).unwrap();
    assert!(p.addresses(Some(pod_if)).unwrap().is_empty());
    assert!(p.delete_address(pod_if, ip, 24).unwrap_err().is_not_found());
}

#[test]
fn hairpin_mtu_master_and_delete() {
    twill_testkit::require_root("hairpin_mtu_master_and_delete");
    let ns = TestNetns::new("hp");
    let (netns, mut h) = open(&ns);
    let br = h.create_bridge("twlbr0", None).unwrap();
    h.create_veth("twlhp0", "twlhp1", &netns, 1500, None)
        .unwrap();
    let port = h.link_by_name("twlhp0").unwrap().unwrap();
    h.set_master(port.index, br.index).unwrap();
    h.set_mtu(port.index, 1300).unwrap();
    h.set_link_up(port.index).unwrap();
    h.set_hairpin(port.index, true).unwrap();
    let seen = ip_link(&ns, "twlhp0").unwrap();
    assert_eq!(seen["master"], "twlbr0");
    assert_eq!(seen["mtu"], 1300);
    assert_eq!(
        seen["linkinfo"]["info_slave_data"]["hairpin"], true,
        "{seen}"
    );
    let bridge = json(&[
        "bridge", "-j", "-d", "-n", &ns.name, "link", "show", "dev", "twlhp0",
    ]);
    assert_eq!(bridge[0]["hairpin"], true, "{bridge}");
    h.set_hairpin(port.index, false).unwrap();
    assert_eq!(
        ip_link(&ns, "twlhp0").unwrap()["linkinfo"]["info_slave_data"]["hairpin"],
        false
    );

    h.delete_link(port.index).unwrap();
    assert!(
        ip_link(&ns, "twlhp0").is_none() && ip_link(&ns, "twlhp1").is_none(),
        "veth deleted with its peer"
    );
    let err = h.delete_link(port.index).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(h.link_by_name("twlhp0").unwrap().is_none());
    assert!(h.link_by_index(port.index).unwrap().is_none());
    assert!(h.set_mtu(port.index, 1400).unwrap_err().is_not_found());
}

#[test]
fn errors_name_their_cause() {
    twill_testkit::require_root("errors_name_their_cause");
    let err = Netns::open("/run/netns/twl-no-such-ns").unwrap_err();
    assert!(
        err.to_string().contains("/run/netns/twl-no-such-ns"),
        "{err}"
    );
    assert!(Handle::new_in(&Netns::current().unwrap()).is_ok());

    let ns = TestNetns::new("er");
    let (netns, mut h) = open(&ns);
    let err = h
        .create_veth("twlerr0", "twlerr1", &netns, 10, None)
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
    assert!(err.to_string().contains("twlerr0"), "{err}");
    // Gateway route without a reachable next hop: the kernel's extended ack text is surfaced.
    let mut r = Route::new("10.244.9.0/24".parse().unwrap());
    r.gateway = Some(Ipv4Addr::new(192, 0, 2, 77));
    let err = h.add_route(&r).unwrap_err();
    assert!(err.to_string().contains("10.244.9.0/24"), "{err}");
    assert!(
        matches!(&err, Error::Kernel { ext_ack: Some(m), .. } if m.contains("gateway")),
        "{err:?}"
    );
}

#[test]
fn batch_reports_first_error_and_applies_the_rest() {
    twill_testkit::require_root("batch_reports_first_error_and_applies_the_rest");
    let ns = TestNetns::new("ba");
    let (_, mut h) = open(&ns);
    let lo = h.link_by_name("lo").unwrap().unwrap().index;
    let add = |index: u32, last: u8| {
        let mut b = MessageBuilder::new(20, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        b.header(
            &IfAddrMsg {
                family: libc::AF_INET as u8,
                prefix_len: 32,
                index,
                ..Default::default()
            }
            .to_bytes(),
        );
        b.attr(2, &[192, 0, 2, last]);
        b.build()
    };
    h.socket()
        .send_batch(vec![add(lo, 10), add(lo, 11)])
        .unwrap();
    let err = h
        .socket()
        .send_batch(vec![add(lo, 12), add(999_999, 13), add(lo, 14)])
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    assert!(err.to_string().contains("message 2 of 3"), "{err}");
    let have: Vec<String> = h
        .addresses(Some(lo))
        .unwrap()
        .iter()
        .map(|(_, a)| a.to_string())
        .collect();
    for want in [
        "192.0.2.10/32",
        "192.0.2.11/32",
        "192.0.2.12/32",
        "192.0.2.14/32",
    ] {
        assert!(
            have.iter().any(|a| a == want),
            "{want} missing from {have:?}"
        );
    }
    // The socket is still in step afterwards.
    assert!(h.link_by_name("lo").unwrap().is_some());
}

#[test]
fn sysctl_is_per_namespace() {
    twill_testkit::require_root("sysctl_is_per_namespace");
    let ns = TestNetns::new("sy");
    let netns = Netns::open(ns.path()).unwrap();
    let ours = get_sysctl(None, "net.ipv4.ip_forward").unwrap();
    set_sysctl(Some(&netns), "net.ipv4.ip_forward", "1").unwrap();
    set_sysctl(Some(&netns), "net/ipv4/conf/lo/rp_filter", "2").unwrap();
    let out = ns.exec(&[
        "sysctl",
        "-n",
        "net.ipv4.ip_forward",
        "net.ipv4.conf.lo.rp_filter",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["1", "2"]
    );
    assert_eq!(
        get_sysctl(Some(&netns), "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    assert_eq!(
        get_sysctl(None, "net.ipv4.ip_forward").unwrap(),
        ours,
        "our namespace untouched"
    );
}

#[test]
fn veth_with_a_fixed_mac_scope_link_route_with_protocol_and_route_lookup() {
    twill_testkit::require_root(
        "veth_with_a_fixed_mac_scope_link_route_with_protocol_and_route_lookup",
    );
    let host = TestNetns::new("lh");
    let pod = TestNetns::new("lp");
    let (host_ns, mut h) = open(&host);
    let pod_ns = Netns::open(pod.path()).unwrap();
    let mac = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
    h.create_veth_pair(&twill_netlink::VethPair {
        host_name: "twllh0",
        peer_name: "eth0",
        peer_ns: &pod_ns,
        mtu: 1450,
        host_master: None,
        host_mac: Some(mac),
    })
    .unwrap();
    let link = h.link_by_name("twllh0").unwrap().unwrap();
    assert_eq!(link.mac, Some(mac), "born with the MAC asked for");
    assert_eq!(
        ip_link(&host, "twllh0").unwrap()["address"],
        "ee:ee:ee:ee:ee:ee"
    );
    assert!(link.up && link.master.is_none());
    let peer = ip_link(&pod, "eth0").unwrap();
    assert_ne!(peer["address"], "ee:ee:ee:ee:ee:ee", "only the host end");

    // A /32 scope-link route carrying Twill's protocol, as ip sees it and as we read it.
    let pod_ip: Ipv4Net = "10.244.9.7/32".parse().unwrap();
    let route = Route {
        oif: Some(link.index),
        scope: Route::SCOPE_LINK,
        protocol: twill_netlink::ROUTE_PROTOCOL,
        ..Route::new(pod_ip)
    };
    assert!(h.add_route(&route).unwrap());
    let shown = json(&[
        "ip", "-j", "-n", &host.name, "-4", "route", "show", "proto", "84",
    ]);
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown[0]["dst"], "10.244.9.7");
    assert_eq!(shown[0]["dev"], "twllh0");
    assert_eq!(shown[0]["scope"], "link");
    assert!(h.routes(Route::TABLE_MAIN).unwrap().contains(&route));
    // Another protocol's same-looking route is not ours to delete.
    let foreign = Route {
        protocol: Route::PROTO_BOOT,
        ..route.clone()
    };
    assert!(h.delete_route_exact(&foreign).unwrap_err().is_not_found());

    // route_to: what `ip route get` answers.
    let gw = Ipv4Addr::new(169, 254, 1, 1);
    assert_eq!(h.route_to(gw).unwrap(), None, "no default route yet");
    assert_eq!(
        h.route_to(Ipv4Addr::new(10, 244, 9, 7))
            .unwrap()
            .unwrap()
            .oif,
        Some(link.index)
    );
    let up = h.link_by_name("lo").unwrap().unwrap();
    h.set_link_up(up.index).unwrap();
    h.create_veth("twllh1", "twllh1p", &pod_ns, 1500, None)
        .unwrap();
    let uplink = h.link_by_name("twllh1").unwrap().unwrap();
    h.add_address(uplink.index, Ipv4Addr::new(192, 0, 2, 11), 24)
        .unwrap();
    let mut default = Route::new("0.0.0.0/0".parse().unwrap());
    default.gateway = Some(Ipv4Addr::new(192, 0, 2, 1));
    default.oif = Some(uplink.index);
    default.onlink = true;
    h.add_route(&default).unwrap();
    assert_eq!(h.route_to(gw).unwrap().unwrap().oif, Some(uplink.index));
    let local = h.route_to(Ipv4Addr::new(192, 0, 2, 11)).unwrap().unwrap();
    assert_eq!(
        local.oif,
        Some(up.index),
        "a local address goes to lo: {local:?}"
    );

    // Going down takes the /32 route with it (DEL relies on it).
    h.set_link_down(link.index).unwrap();
    assert!(!h.routes(Route::TABLE_MAIN).unwrap().contains(&route));

    // ensure_sysctl writes only what differs.
    let key = "net/ipv4/conf/twllh0/proxy_arp";
    assert!(twill_netlink::ensure_sysctl(Some(&host_ns), key, "1").unwrap());
    assert!(!twill_netlink::ensure_sysctl(Some(&host_ns), key, "1").unwrap());
    assert_eq!(get_sysctl(Some(&host_ns), key).unwrap(), "1");
    let delay = "net/ipv4/neigh/twllh0/proxy_delay";
    assert!(twill_netlink::ensure_sysctl(Some(&host_ns), delay, "0").unwrap());
    assert_eq!(
        String::from_utf8_lossy(
            &host
                .exec(&["sysctl", "-n", "net.ipv4.neigh.twllh0.proxy_delay"])
                .stdout
        )
        .trim(),
        "0"
    );
}

#[test]
fn blackhole_routes_drop_add_read_back_and_delete_exactly() {
    twill_testkit::require_root("blackhole_routes_drop_add_read_back_and_delete_exactly");
    let ns = TestNetns::new("bh");
    let (_netns, mut h) = open(&ns);
    let block: Ipv4Net = "10.244.7.0/26".parse().unwrap();
    let bh = Route {
        protocol: twill_netlink::ROUTE_PROTOCOL,
        ..Route::blackhole(block)
    };
    assert!(h.add_route(&bh).unwrap());
    assert!(!h.add_route(&bh).unwrap(), "the same again: EEXIST");
    let shown = json(&[
        "ip", "-j", "-n", &ns.name, "-4", "route", "show", "proto", "84",
    ]);
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown[0]["type"], "blackhole", "{shown}");
    assert_eq!(shown[0]["dst"], "10.244.7.0/26", "{shown}");
    let read = h.routes(Route::TABLE_MAIN).unwrap();
    assert!(read.contains(&bh), "{read:?}");
    // With a default route, the block's addresses still go nowhere; others go by it.
    for args in [
        &[
            "ip", "link", "add", "twlbh0", "type", "veth", "peer", "name", "twlbh1",
        ][..],
        &["ip", "link", "set", "twlbh0", "up"],
        &["ip", "link", "set", "twlbh1", "up"],
        &["ip", "addr", "add", "192.0.2.11/24", "dev", "twlbh0"],
        &["ip", "route", "add", "default", "via", "192.0.2.1"],
    ] {
        ns.exec(args);
    }
    assert!(h.route_to(Ipv4Addr::new(10, 244, 8, 1)).unwrap().is_some());
    assert_eq!(
        h.route_to(Ipv4Addr::new(10, 244, 7, 9)).unwrap(),
        None,
        "an address in a blackholed block goes nowhere, not by the default route"
    );
    // A unicast route to the same destination is another route: deleting it misses the
    // blackhole, and so does a delete with another protocol.
    let unicast = Route {
        protocol: twill_netlink::ROUTE_PROTOCOL,
        ..Route::new(block)
    };
    assert!(h.delete_route_exact(&unicast).unwrap_err().is_not_found());
    let other_proto = Route {
        protocol: Route::PROTO_BOOT,
        ..bh.clone()
    };
    assert!(h
        .delete_route_exact(&other_proto)
        .unwrap_err()
        .is_not_found());
    assert!(h.routes(Route::TABLE_MAIN).unwrap().contains(&bh));

    h.delete_route_exact(&bh).unwrap();
    assert!(!h.routes(Route::TABLE_MAIN).unwrap().contains(&bh));
    assert!(h.delete_route_exact(&bh).unwrap_err().is_not_found());
    assert!(h.route_to(Ipv4Addr::new(10, 244, 7, 9)).unwrap().is_some());
}

#[test]
fn run_here_in_enters_and_returns_on_the_calling_thread() {
    twill_testkit::require_root("run_here_in_enters_and_returns_on_the_calling_thread");
    let ns = TestNetns::new("rh");
    let netns = Netns::open(ns.path()).unwrap();
    let inode = || std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    let (home, target) = (inode(), std::fs::metadata(ns.path()).unwrap().ino());
    assert_ne!(home, target);
    let (inside, tid) =
        twill_netlink::run_here_in(&netns, || (inode(), unsafe { libc::gettid() })).unwrap();
    assert_eq!(inside, target, "f ran in the namespace");
    assert_eq!(tid, unsafe { libc::gettid() }, "on the calling thread");
    assert_eq!(inode(), home, "and the thread came back");
    // Back after a panic too.
    let panicked = std::panic::catch_unwind(|| {
        twill_netlink::run_here_in(&netns, || panic!("inside")).unwrap();
    });
    assert!(panicked.is_err());
    assert_eq!(inode(), home);
    // A handle made so talks to that namespace's kernel.
    let mut h = Handle::new_here_in(&netns).unwrap();
    h.create_veth("twlrh0", "twlrh1", &netns, 1500, None)
        .unwrap();
    assert!(ip_link(&ns, "twlrh0").is_some());
    assert!(Handle::new()
        .unwrap()
        .link_by_name("twlrh0")
        .unwrap()
        .is_none());
}
