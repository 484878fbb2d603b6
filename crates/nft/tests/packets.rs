//! Root-gated: real packets through Twill's table. Topology, all in test namespaces:
//!
//! ```text
//!  client (192.0.2.2, "remote pod" 10.244.2.2 on lo) --veth-- node --veth-- outside (203.0.113.2)
//!                                               node: 192.0.2.1, 203.0.113.1, bridge 10.244.1.1/24
//!                                                 |-- pod A 10.244.1.5 (masqueraded, host ports)
//!                                                 |-- pod B 10.244.1.6
//! ```

mod common;

use common::{tcp_ask, tcp_peer_reporter, udp_ask, udp_peer_reporter};
use twill_netlink::Netns;
use twill_nft::{NetworkRules, PortMapping, Protocol, Table};
use twill_testkit::{sh, TestNetns};

struct Topology {
    node: TestNetns,
    pod_a: TestNetns,
    pod_b: TestNetns,
    client: TestNetns,
    outside: TestNetns,
}

fn ip(ns: &TestNetns, args: &str) {
    let mut full = vec!["ip", "-n", &ns.name];
    full.extend(args.split_whitespace());
    sh(&full);
}

/// A veth pair with one end in each namespace, addressed and up.
fn wire(a: &TestNetns, a_if: &str, a_addr: Option<&str>, b: &TestNetns, b_if: &str, b_addr: &str) {
    sh(&[
        "ip",
        "link",
        "add",
        "twlnfttmp0",
        "netns",
        &a.name,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        &b.name,
    ]);
    ip(a, &format!("link set twlnfttmp0 name {a_if}"));
    if let Some(addr) = a_addr {
        ip(a, &format!("addr add {addr} dev {a_if}"));
    }
    ip(b, &format!("addr add {b_addr} dev {b_if}"));
    ip(a, &format!("link set {a_if} up"));
    ip(b, &format!("link set {b_if} up"));
}

fn build() -> Topology {
    let t = Topology {
        node: TestNetns::new("nftnode"),
        pod_a: TestNetns::new("nftpoda"),
        pod_b: TestNetns::new("nftpodb"),
        client: TestNetns::new("nftclient"),
        outside: TestNetns::new("nftout"),
    };
    ip(&t.node, "link add twlbr0 type bridge");
    ip(&t.node, "addr add 10.244.1.1/24 dev twlbr0");
    ip(&t.node, "link set twlbr0 up");
    for (pod, host_if, addr) in [
        (&t.pod_a, "twlvetha", "10.244.1.5/24"),
        (&t.pod_b, "twlvethb", "10.244.1.6/24"),
    ] {
        wire(&t.node, host_if, None, pod, "eth0", addr);
        ip(&t.node, &format!("link set {host_if} master twlbr0"));
        // br_netfilter is on in new namespaces here (bridge-nf-call-iptables=1): a pod's
        // DNAT'd packet back to itself is then bridged out of the port it came in on,
        // which the bridge allows only in hairpin mode (CNI bridge's hairpinMode).
        ip(
            &t.node,
            &format!("link set {host_if} type bridge_slave hairpin on"),
        );
        ip(pod, "route add default via 10.244.1.1");
    }
    wire(
        &t.node,
        "twlup0",
        Some("192.0.2.1/24"),
        &t.client,
        "eth0",
        "192.0.2.2/24",
    );
    wire(
        &t.node,
        "twlout0",
        Some("203.0.113.1/24"),
        &t.outside,
        "eth0",
        "203.0.113.2/24",
    );
    // The client is another node: its pod 10.244.2.2 is routed, not masqueraded.
    ip(&t.client, "addr add 10.244.2.2/32 dev lo");
    ip(&t.client, "route add 10.244.1.0/24 via 192.0.2.1");
    ip(&t.node, "route add 10.244.2.0/24 via 192.0.2.2");
    // The outside knows no route to pods: only masqueraded traffic can come back.
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.route_localnet=1",
        "net.ipv4.conf.twlbr0.route_localnet=1",
    ] {
        t.node.exec(&["sysctl", "-qw", sysctl]);
    }
    t
}

#[test]
fn host_ports_hairpin_and_masquerade_with_real_packets() {
    twill_testkit::require_root("host_ports_hairpin_and_masquerade_with_real_packets");
    let t = build();
    let mut table = Table::new_in(&Netns::open(t.node.path()).unwrap()).unwrap();
    table
        .ensure_network(&NetworkRules {
            network: "twlpackets".into(),
            subnets: vec!["10.244.1.0/24".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            masquerade: true,
        })
        .unwrap();
    let pod_a = "10.244.1.5".parse().unwrap();
    let mappings = [
        PortMapping {
            host_ip: None,
            host_port: 8080,
            container_ip: pod_a,
            container_port: 80,
            protocol: Protocol::Tcp,
        },
        PortMapping {
            host_ip: Some("192.0.2.1".parse().unwrap()),
            host_port: 8443,
            container_ip: pod_a,
            container_port: 80,
            protocol: Protocol::Tcp,
        },
        PortMapping {
            host_ip: None,
            host_port: 5353,
            container_ip: pod_a,
            container_port: 53,
            protocol: Protocol::Udp,
        },
    ];
    table.add_pod(pod_a, true, &mappings).unwrap();
    table
        .add_pod("10.244.1.6".parse().unwrap(), true, &[])
        .unwrap();

    tcp_peer_reporter(&t.pod_a, "0.0.0.0:80");
    udp_peer_reporter(&t.pod_a, "0.0.0.0:53");
    tcp_peer_reporter(&t.outside, "203.0.113.2:9000");
    tcp_peer_reporter(&t.client, "10.244.2.2:9001");

    // Each answer is the source address the server saw.
    let checks: [(&str, &TestNetns, &str, &str); 8] = [
        (
            "DNAT from the node's address keeps the client's source",
            &t.client,
            "192.0.2.1:8080",
            "192.0.2.2",
        ),
        (
            "DNAT on every node address",
            &t.outside,
            "203.0.113.1:8080",
            "203.0.113.2",
        ),
        (
            "DNAT of a hostIP mapping",
            &t.client,
            "192.0.2.1:8443",
            "192.0.2.2",
        ),
        (
            "DNAT from the node itself (output hook)",
            &t.node,
            "192.0.2.1:8080",
            "192.0.2.1",
        ),
        (
            "127.0.0.1:hostPort inside the node, masqueraded to the bridge address",
            &t.node,
            "127.0.0.1:8080",
            "10.244.1.1",
        ),
        (
            "hairpin: the pod reaches itself through its host port",
            &t.pod_a,
            "192.0.2.1:8080",
            "10.244.1.1",
        ),
        (
            "hairpin: a neighbour pod reaches it through the host port",
            &t.pod_b,
            "192.0.2.1:8080",
            "10.244.1.1",
        ),
        (
            "pod-to-pod across nodes keeps the pod's source",
            &t.pod_a,
            "10.244.2.2:9001",
            "10.244.1.5",
        ),
    ];
    for (what, from, to, seen) in checks {
        assert_eq!(tcp_ask(from, to).as_deref(), Ok(seen), "{what}");
    }
    assert_eq!(
        tcp_ask(&t.pod_a, "203.0.113.2:9000").as_deref(),
        Ok("203.0.113.1"),
        "masquerade leaving the cluster"
    );
    assert_eq!(
        tcp_ask(&t.pod_b, "203.0.113.2:9000").as_deref(),
        Ok("203.0.113.1"),
        "masquerade of a second pod"
    );
    assert_eq!(
        udp_ask(&t.client, "192.0.2.1:5353").as_deref(),
        Ok("192.0.2.2"),
        "UDP mapping"
    );
    // The hostIP mapping is bound to 192.0.2.1 only.
    assert!(
        tcp_ask(&t.outside, "203.0.113.1:8443").is_err(),
        "hostIP mapping must not answer on another address"
    );

    // Removed: the port closes, and a pod not in masq_pods is not masqueraded (the outside
    // has no route back, so its connection fails).
    table.remove_pod(pod_a, &mappings).unwrap();
    assert!(
        tcp_ask(&t.client, "192.0.2.1:8080").is_err(),
        "mapping removed"
    );
    assert!(
        tcp_ask(&t.pod_a, "203.0.113.2:9000").is_err(),
        "no masquerade after removal"
    );
}
