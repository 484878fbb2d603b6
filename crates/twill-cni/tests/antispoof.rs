//! Anti-spoofing in bridge wiring, with real packets (root only): three pods on the
//! node's bridge; a raw AF_PACKET socket in one pod sends frames the kernel would never
//! send for it: a forged source IPv4 address, a forged source MAC, and ARP claiming a
//! neighbour's address. Each is dropped before the bridge forwards it, and counted in
//! `table bridge twill`; the same frames with the pod's own addresses pass (so the frames
//! are well-formed and the path is up). DEL removes the pod's elements.

mod common;
use common::*;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;
use twill_netlink::{run_in, Netns};
use twill_testkit::TestNetns;

fn mac_of(ns: &TestNetns, ifname: &str) -> [u8; 6] {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    let s = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(s.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame holding an IPv4/UDP datagram (UDP checksum 0: none, allowed in IPv4).
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// An Ethernet frame holding an ARP reply: "`sender_ip` is at `sender_mac`".
fn arp_reply(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&target_ip.octets());
    f
}

/// Sends `frame` as it is out of `ifname` in `ns`, through an AF_PACKET raw socket.
fn send_raw(ns: &TestNetns, ifname: &str, frame: Vec<u8>) {
    let netns = Netns::open(ns.path()).unwrap();
    let ifname = std::ffi::CString::new(ifname).unwrap();
    run_in(&netns, move || {
        // SAFETY: plain syscalls on a socket this closure owns and closes; the address and
        // the frame are buffers that outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let index = libc::if_nametoindex(ifname.as_ptr());
            assert!(index > 0, "no {ifname:?} in the pod");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(n, frame.len() as isize, "sendto: {err}");
        }
    })
    .unwrap();
}

fn listen(ns: &TestNetns, addr: &str) -> UdpSocket {
    let netns = Netns::open(ns.path()).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let s = run_in(&netns, move || UdpSocket::bind(addr))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn received(s: &UdpSocket) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

/// Packets counted by `table bridge twill`'s counter `name`.
fn counter(node: &Node, name: &str) -> u64 {
    let out = node
        .ns
        .exec(&["nft", "list", "counter", "bridge", "twill", name]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words.next().unwrap().parse().unwrap();
        }
    }
    panic!("no packets in {text:?}")
}

/// The MAC `ns` holds for `ip` on eth0, if any.
fn neighbour(ns: &TestNetns, ip: &str) -> Option<String> {
    let out = ns.exec(&["ip", "-j", "neigh", "show", ip, "dev", "eth0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()?.first()?["lladdr"]
        .as_str()
        .map(str::to_string)
}

fn hex(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The elements of `table bridge twill`'s set `name`.
fn guard_elements(node: &Node, name: &str) -> Vec<String> {
    let (ok, out, _) = node
        .ns
        .try_exec(&["nft", "-j", "list", "set", "bridge", "twill", name]);
    if !ok {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("set")?.get("elem")?.as_array().cloned())
        .flatten()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn bridged_pods_cannot_send_with_an_address_or_mac_not_their_own() {
    twill_testkit::require_root("bridged_pods_cannot_send_with_an_address_or_mac_not_their_own");
    let node = Node::wired("asp", "bridge");
    let (p1, p2, p3) = (
        TestNetns::new("asp1"),
        TestNetns::new("asp2"),
        TestNetns::new("asp3"),
    );
    let r1 = node.add("c1", &p1);
    let r2 = node.add("c2", &p2);
    let r3 = node.add("c3", &p3);
    let ip = |r: &serde_json::Value| -> Ipv4Addr { pod_ip(r).parse().unwrap() };
    let (ip1, ip2, ip3) = (ip(&r1), ip(&r2), ip(&r3));
    let (mac1, mac2, mac3) = (
        mac_of(&p1, "eth0"),
        mac_of(&p2, "eth0"),
        mac_of(&p3, "eth0"),
    );
    // The result and the guard agree with the kernel on the pod's MAC.
    assert_eq!(
        r1["interfaces"][2]["mac"].as_str(),
        Some(hex(mac1).as_str())
    );
    assert_eq!(guard_elements(&node, "pods").len(), 3);
    let to_p2 = listen(&p2, &format!("{ip2}:9999"));
    // Neighbours learnt: the path is up both ways.
    assert!(ping(&p1, &ip2.to_string()) && ping(&p2, &ip3.to_string()));

    // The pod's own addresses pass, from a socket and as a raw frame.
    let udp = |src_mac, src, what: &str| udp_frame(src_mac, mac2, src, ip2, 9999, what.as_bytes());
    send_raw(&p1, "eth0", udp(mac1, ip1, "own"));
    assert_eq!(
        received(&to_p2),
        ["own"],
        "a well-formed frame of its own passes"
    );
    let counts = |n: &Node| {
        ["spoofed_ip", "spoofed_mac", "spoofed_arp", "spoofed_other"].map(|c| counter(n, c))
    };
    assert_eq!(counts(&node), [0; 4], "nothing genuine was dropped");

    // Forged source address: a neighbour's, a free one of the block, one outside.
    let forged_ips = [
        ip3,
        Ipv4Addr::new(10, 244, 1, 200),
        Ipv4Addr::new(198, 51, 100, 7),
    ];
    for f in forged_ips {
        send_raw(&p1, "eth0", udp(mac1, f, &format!("ip {f}")));
    }
    // And through the kernel's own stack, with the address added to the pod.
    p1.exec(&["ip", "addr", "add", "10.244.1.201/32", "dev", "eth0"]);
    {
        let netns = Netns::open(p1.path()).unwrap();
        run_in(&netns, move || {
            let s = UdpSocket::bind("10.244.1.201:0").unwrap();
            s.send_to(b"ip socket", SocketAddr::from((ip2, 9999)))
                .unwrap();
        })
        .unwrap();
    }
    // Forged source MAC: a neighbour's, and a made-up one, with the pod's own address.
    let forged_macs = [mac3, [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01]];
    for m in forged_macs {
        send_raw(&p1, "eth0", udp(m, ip1, &format!("mac {}", hex(m))));
    }
    assert_eq!(
        received(&to_p2),
        Vec::<String>::new(),
        "a forged frame reached the pod"
    );
    let [spoofed_ip, spoofed_mac, _, _] = counts(&node);
    assert_eq!(
        spoofed_ip,
        forged_ips.len() as u64 + 1,
        "each forged address counted"
    );
    assert_eq!(
        spoofed_mac,
        forged_macs.len() as u64,
        "each forged MAC counted"
    );

    // ARP: p1 claims p3's address (classic poisoning of p2's cache), as a reply with its
    // own MAC as sender, and with p3's MAC as sender but its own as the frame's source.
    // p2 holds a stale entry for each so that a reply that got through would change it
    // (past the kernel's 1 s lock time).
    let bogus = [0x02, 0, 0, 0, 0, 0x99];
    p2.exec(&[
        "ip",
        "neigh",
        "replace",
        &ip1.to_string(),
        "lladdr",
        &hex(bogus),
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    p2.exec(&[
        "ip",
        "neigh",
        "replace",
        &ip3.to_string(),
        "lladdr",
        &hex(mac3),
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    std::thread::sleep(Duration::from_millis(1200));
    let arp_before = counts(&node)[2];
    send_raw(&p1, "eth0", arp_reply(mac1, mac2, mac1, ip3, ip2));
    send_raw(&p1, "eth0", arp_reply(mac1, mac2, mac3, ip3, ip2));
    // Its own address with its own MAC passes and corrects p2's bogus entry.
    send_raw(&p1, "eth0", arp_reply(mac1, mac2, mac1, ip1, ip2));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        counts(&node)[2] - arp_before,
        2,
        "both forged ARP replies counted"
    );
    assert_eq!(
        neighbour(&p2, &ip3.to_string()),
        Some(hex(mac3)),
        "p2's cache not poisoned"
    );
    assert_eq!(
        neighbour(&p2, &ip1.to_string()),
        Some(hex(mac1)),
        "the genuine ARP reply got through"
    );

    // Still fine from its own address afterwards; and the other pods are untouched.
    send_raw(&p1, "eth0", udp(mac1, ip1, "own again"));
    assert_eq!(received(&to_p2), ["own again"]);
    assert!(ping(&p3, &ip2.to_string()));

    // CHECK sees the guard: fine as ADD left it, a failure naming it once an element went.
    let mut conf = node.conf();
    conf["prevResult"] = r1.clone();
    let r = node.cni("CHECK", "c1", &p1.path(), "eth0", &conf);
    assert!(r.ok, "CHECK: {}", r.stdout);
    let veth = r1["interfaces"][1]["name"].as_str().unwrap();
    node.ns.exec(&[
        "nft",
        "delete",
        "element",
        "bridge",
        "twill",
        "pods",
        &format!("{{ \"{veth}\" }}"),
    ]);
    let r = node.cni("CHECK", "c1", &p1.path(), "eth0", &conf);
    assert!(!r.ok);
    assert_eq!(r.json["code"], 104, "{}", r.stdout);
    assert!(
        r.json["msg"].as_str().unwrap().contains("anti-spoofing") && r.stdout.contains(veth),
        "{}",
        r.stdout
    );

    node.del("c1", &p1, Some(&r1));
    node.del("c2", &p2, Some(&r2));
    node.del("c3", &p3, Some(&r3));
    node.assert_clean("after DEL");
    for set in ["pods", "pod_macs", "pod_ips"] {
        assert_eq!(
            guard_elements(&node, set),
            Vec::<String>::new(),
            "{set} after DEL"
        );
    }
}
