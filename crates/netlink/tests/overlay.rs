//! Root-gated tests of the overlay pieces (VXLAN device, neighbour and FDB entries, TX
//! checksum offload, route protocol marks), each checked with `ip -j`, `bridge -j` or
//! `ethtool -k` inside a throwaway `twl` namespace.

use std::net::Ipv4Addr;

use serde_json::Value;
use twill_netlink::neigh::{format_mac, NUD_PERMANENT};
use twill_netlink::{Handle, Netns, Route, VxlanInfo, VxlanLink};
use twill_testkit::TestNetns;

const MAC: [u8; 6] = [0x0a, 0x54, 192, 0, 2, 12];

fn json(ns: &TestNetns, args: &[&str]) -> Value {
    let out = ns.exec(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: bad JSON: {e}"))
}

/// A namespace with `eth0` (one end of a veth pair, up, 192.0.2.11/24) and a handle on it.
fn node() -> (TestNetns, Handle, u32) {
    let ns = TestNetns::new("ov");
    ns.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    ns.exec(&["ip", "link", "set", "eth0p", "up"]);
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    ns.exec(&["ip", "addr", "add", "192.0.2.11/24", "dev", "eth0"]);
    let mut h = Handle::new_in(&Netns::open(ns.path()).unwrap()).unwrap();
    let eth0 = h.link_by_name("eth0").unwrap().unwrap().index;
    (ns, h, eth0)
}

fn vxlan(uplink: u32) -> VxlanLink {
    VxlanLink {
        name: "twl.1".into(),
        vni: 7,
        local: Ipv4Addr::new(192, 0, 2, 11),
        uplink: Some(uplink),
        port: 8472,
        learning: false,
        mtu: Some(1450),
        mac: Some([0x0a, 0x54, 192, 0, 2, 11]),
    }
}

#[test]
fn vxlan_device_is_created_as_asked_and_read_back() {
    twill_testkit::require_root("vxlan_device_is_created_as_asked_and_read_back");
    let (ns, mut h, eth0) = node();
    h.create_vxlan(&vxlan(eth0)).unwrap();
    assert!(h.create_vxlan(&vxlan(eth0)).unwrap_err().is_exists());

    let link = json(&ns, &["ip", "-j", "-d", "link", "show", "dev", "twl.1"]);
    let data = &link[0]["linkinfo"]["info_data"];
    assert_eq!(link[0]["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(data["id"], 7);
    assert_eq!(data["local"], "192.0.2.11");
    assert_eq!(data["link"], "eth0");
    assert_eq!(data["port"], 8472);
    assert_eq!(data["learning"], false);
    assert_eq!(link[0]["mtu"], 1450);
    assert_eq!(link[0]["address"], "0a:54:c0:00:02:0b");

    let dev = h.link_by_name("twl.1").unwrap().unwrap();
    assert_eq!(dev.kind.as_deref(), Some("vxlan"));
    assert_eq!(
        h.vxlan_info(dev.index).unwrap(),
        Some(VxlanInfo {
            vni: 7,
            local: Some(Ipv4Addr::new(192, 0, 2, 11)),
            uplink: Some(eth0),
            port: 8472,
            learning: false,
        })
    );
    assert_eq!(h.vxlan_info(eth0).unwrap(), None, "a veth is not vxlan");
    assert_eq!(h.vxlan_info(999_999).unwrap(), None);

    h.set_mac(dev.index, MAC).unwrap();
    let link = json(&ns, &["ip", "-j", "link", "show", "dev", "twl.1"]);
    assert_eq!(link[0]["address"], format_mac(&MAC));
}

#[test]
fn neighbour_and_fdb_entries_round_trip() {
    twill_testkit::require_root("neighbour_and_fdb_entries_round_trip");
    let (ns, mut h, eth0) = node();
    h.create_vxlan(&vxlan(eth0)).unwrap();
    let dev = h.link_by_name("twl.1").unwrap().unwrap().index;
    h.set_link_up(dev).unwrap();
    let vtep = Ipv4Addr::new(10, 244, 2, 0);
    let remote = Ipv4Addr::new(192, 0, 2, 12);

    h.set_neighbour(dev, vtep, MAC).unwrap();
    h.set_neighbour(dev, vtep, MAC).unwrap(); // replace: idempotent
    h.set_fdb(dev, MAC, remote).unwrap();
    h.set_fdb(dev, MAC, remote).unwrap();

    let neigh = json(&ns, &["ip", "-j", "-4", "neigh", "show", "dev", "twl.1"]);
    assert_eq!(neigh.as_array().unwrap().len(), 1, "{neigh}");
    assert_eq!(neigh[0]["dst"], "10.244.2.0");
    assert_eq!(neigh[0]["lladdr"], "0a:54:c0:00:02:0c");
    assert_eq!(neigh[0]["state"][0], "PERMANENT");
    let fdb = json(&ns, &["bridge", "-j", "fdb", "show", "dev", "twl.1"]);
    let ours: Vec<&Value> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["mac"] == "0a:54:c0:00:02:0c")
        .collect();
    assert_eq!(ours.len(), 1, "{fdb}");
    assert_eq!(ours[0]["dst"], "192.0.2.12");
    assert_eq!(ours[0]["state"], "permanent");
    assert!(ours[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "self"));

    let read = h.neighbours(Some(dev)).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!((read[0].ip, read[0].mac), (vtep, Some(MAC)));
    assert_eq!(read[0].state, NUD_PERMANENT);
    assert!(h.neighbours(Some(eth0)).unwrap().is_empty());
    let read = h.fdb(Some(dev)).unwrap();
    let entry = read.iter().find(|e| e.mac == MAC).unwrap();
    assert_eq!(entry.dst, Some(remote));

    h.delete_neighbour(dev, vtep).unwrap();
    assert!(h.delete_neighbour(dev, vtep).unwrap_err().is_not_found());
    h.delete_fdb(dev, MAC, remote).unwrap();
    assert!(h.delete_fdb(dev, MAC, remote).unwrap_err().is_not_found());
    let neigh = json(&ns, &["ip", "-j", "-4", "neigh", "show", "dev", "twl.1"]);
    assert!(neigh.as_array().unwrap().is_empty(), "{neigh}");
    assert!(!h.fdb(Some(dev)).unwrap().iter().any(|e| e.mac == MAC));
}

#[test]
fn tx_checksum_offload_turns_off() {
    twill_testkit::require_root("tx_checksum_offload_turns_off");
    let (ns, mut h, eth0) = node();
    h.create_vxlan(&vxlan(eth0)).unwrap();
    let offload = |ns: &TestNetns| {
        let out = ns.exec(&["ethtool", "-k", "twl.1"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("tx-checksumming:"))
            .unwrap()
            .to_owned()
    };
    assert!(h.tx_checksum("twl.1").unwrap());
    assert!(offload(&ns).contains(": on"), "{}", offload(&ns));
    h.set_tx_checksum("twl.1", false).unwrap();
    assert!(!h.tx_checksum("twl.1").unwrap());
    assert!(offload(&ns).contains(": off"), "{}", offload(&ns));
    let generic = String::from_utf8_lossy(&ns.exec(&["ethtool", "-k", "twl.1"]).stdout)
        .lines()
        .any(|l| l.trim() == "tx-checksum-ip-generic: off");
    assert!(generic, "tx-checksum-ip-generic stays on");
    // A missing device is named in the error.
    let err = h.set_tx_checksum("twlmissing", false).unwrap_err();
    assert!(
        err.is_not_found() && err.to_string().contains("twlmissing"),
        "{err}"
    );
}

#[test]
fn route_protocol_is_written_read_and_respected_on_delete() {
    twill_testkit::require_root("route_protocol_is_written_read_and_respected_on_delete");
    let (ns, mut h, eth0) = node();
    let mut ours = Route::new("10.244.2.0/24".parse().unwrap());
    ours.gateway = Some(Ipv4Addr::new(192, 0, 2, 12));
    ours.oif = Some(eth0);
    ours.protocol = 0x54;
    assert!(h.add_route(&ours).unwrap());
    ns.exec(&[
        "ip",
        "route",
        "add",
        "10.244.3.0/24",
        "via",
        "192.0.2.13",
        "proto",
        "static",
    ]);

    let routes = json(&ns, &["ip", "-j", "route", "show", "proto", "84"]);
    assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
    assert_eq!(routes[0]["dst"], "10.244.2.0/24");
    let read = h.routes(Route::TABLE_MAIN).unwrap();
    assert!(read.contains(&ours), "{read:?}");
    let foreign = read
        .iter()
        .find(|r| r.dst.to_string() == "10.244.3.0/24")
        .unwrap();
    assert_eq!(foreign.protocol, 4);

    // Asking to delete the foreign route as if it were ours leaves it alone.
    let mut pretend = foreign.clone();
    pretend.protocol = 0x54;
    assert!(h.delete_route_exact(&pretend).unwrap_err().is_not_found());
    let routes = json(&ns, &["ip", "-j", "route", "show", "10.244.3.0/24"]);
    assert_eq!(routes.as_array().unwrap().len(), 1);
    h.delete_route_exact(&ours).unwrap();
    let routes = json(&ns, &["ip", "-j", "route", "show", "proto", "84"]);
    assert!(routes.as_array().unwrap().is_empty(), "{routes}");
}

#[test]
fn one_neighbour_is_looked_up_without_a_dump_and_says_whether_it_carries_traffic() {
    twill_testkit::require_root(
        "one_neighbour_is_looked_up_without_a_dump_and_says_whether_it_carries_traffic",
    );
    let (ns, mut h, eth0) = node();
    // The veth's other end in a namespace of its own, at 192.0.2.12: one ping makes this
    // node's entry for it REACHABLE, as traffic with a peer does.
    let far = TestNetns::new("ovf");
    ns.exec(&["ip", "link", "set", "eth0p", "netns", &far.name]);
    far.exec(&["ip", "addr", "add", "192.0.2.12/24", "dev", "eth0p"]);
    far.exec(&["ip", "link", "set", "eth0p", "up"]);
    let far_mac = json(&far, &["ip", "-j", "link", "show", "dev", "eth0p"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let peer = Ipv4Addr::new(192, 0, 2, 12);
    assert_eq!(h.neighbour(eth0, peer).unwrap(), None, "no traffic yet");
    ns.exec(&["ping", "-c", "1", "-W", "2", "192.0.2.12"]);
    let n = h
        .neighbour(eth0, peer)
        .unwrap()
        .expect("resolved by the ping");
    assert_eq!((n.index, n.ip), (eth0, peer));
    assert_eq!(n.mac.map(|m| format_mac(&m)), Some(far_mac));
    const NUD_REACHABLE: u16 = 0x02;
    assert_ne!(n.state & NUD_REACHABLE, 0, "state {:#x}", n.state);
    // A permanent entry reads back as such; an address with none, and a link that does
    // not exist, read as none.
    let other = Ipv4Addr::new(192, 0, 2, 13);
    h.set_neighbour(eth0, other, MAC).unwrap();
    let n = h.neighbour(eth0, other).unwrap().unwrap();
    assert_eq!((n.mac, n.state), (Some(MAC), NUD_PERMANENT));
    assert_eq!(
        h.neighbour(eth0, Ipv4Addr::new(192, 0, 2, 99)).unwrap(),
        None
    );
    assert_eq!(h.neighbour(999_999, peer).unwrap(), None);
}
