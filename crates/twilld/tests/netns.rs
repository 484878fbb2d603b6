//! Autodetection against real interfaces: a test namespace with a container-tool bridge and
//! two veth "uplinks" (root only). Checks what the kernel reports, the RTM_GETROUTE lookup
//! of can-reach, and a real twilld run inside the namespace publishing what it found.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twill_api::resources::{NetworkConfig, NodeStatus};
use twill_netlink::Netns;
use twill_store::embedded::EmbeddedStore;
use twill_store::{Store, PREFIX};
use twill_testkit::{TempDir, TestNetns};
use twilld::autodetect::{detect, Method};
use twilld::netinfo;

fn host(ns: &TestNetns) {
    for cmd in [
        "link add docker0 type bridge",
        "addr add 172.17.0.1/16 dev docker0",
        "link set docker0 up",
        "link add eth0 type veth peer name peer0",
        "addr add 192.0.2.11/24 dev eth0",
        "link set eth0 up",
        "link set peer0 up",
        "link add eth1 type veth peer name peer1",
        "addr add 198.51.100.7/24 dev eth1",
        "link set eth1 up",
        "link set peer1 up",
    ] {
        let mut args = vec!["ip", "-n", &ns.name];
        args.extend(cmd.split(' '));
        twill_testkit::sh(&args);
    }
}

#[test]
fn every_method_against_the_kernel() {
    twill_testkit::require_root("every_method_against_the_kernel");
    let ns = TestNetns::new("autodet");
    host(&ns);
    let handle = Netns::open(ns.path()).unwrap();
    let ifs = netinfo::interfaces(Some(&handle)).unwrap();
    let names: Vec<&str> = ifs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names[..2], ["lo", "docker0"], "{names:?}");
    assert_eq!(ifs[1].kind.as_deref(), Some("bridge"));

    let ip = detect(&Method::FirstFound, &ifs, None).unwrap();
    assert_eq!(
        (ip.address, ip.interface.as_deref()),
        ("192.0.2.11".parse().unwrap(), Some("eth0"))
    );
    let ip = detect(&Method::parse("interface=eth1").unwrap(), &ifs, None).unwrap();
    assert_eq!(ip.address, "198.51.100.7".parse::<Ipv4Addr>().unwrap());
    let ip = detect(&Method::parse("cidr=172.16.0.0/12").unwrap(), &ifs, None).unwrap();
    assert_eq!(ip.interface.as_deref(), Some("docker0"));
    let e = detect(&Method::parse("interface=eth9.*").unwrap(), &ifs, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("eth0 192.0.2.11/24") && e.contains("docker0 172.17.0.1/16"),
        "{e}"
    );

    // can-reach: no route yet, then via the on-link and the default route.
    let out: Ipv4Addr = "203.0.113.1".parse().unwrap();
    assert_eq!(netinfo::route_get(Some(&handle), out).unwrap(), None);
    let m = Method::CanReach(out);
    let e = detect(&m, &ifs, None).unwrap_err().to_string();
    assert!(
        e.starts_with("can-reach=203.0.113.1: the kernel has no route"),
        "{e}"
    );
    let r = netinfo::route_get(Some(&handle), "192.0.2.99".parse().unwrap())
        .unwrap()
        .unwrap();
    let ip = detect(&Method::CanReach(r.dst), &ifs, Some(&r)).unwrap();
    assert_eq!(
        (ip.address, ip.interface.as_deref()),
        ("192.0.2.11".parse().unwrap(), Some("eth0"))
    );
    ns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
        "dev",
        "eth1",
    ]);
    let r = netinfo::route_get(Some(&handle), out).unwrap().unwrap();
    let ip = detect(&m, &ifs, Some(&r)).unwrap();
    assert_eq!(ip.cidr, Some("198.51.100.7/24".parse().unwrap()));
    assert_eq!(
        ip.reason,
        "the kernel reaches 203.0.113.1 via eth1 from 198.51.100.7"
    );
}

#[test]
fn twilld_in_a_namespace_publishes_the_address_it_found() {
    twill_testkit::require_root("twilld_in_a_namespace_publishes_the_address_it_found");
    let ns = TestNetns::new("agentip");
    host(&ns);
    let dir = TempDir::new("agentip");
    let store = EmbeddedStore::open(&dir.path.join("store")).unwrap();
    let config = NetworkConfig {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        block_size: 24,
        subnet_min: None,
        subnet_max: None,
        reservations: vec![],
        backend: twill_api::resources::BackendSpec::None,
        mtu: 1500,
        masquerade: true,
        pod_wiring: Default::default(),
        lease_ttl_seconds: 60,
    };
    store
        .put(
            &format!("{PREFIX}config"),
            &serde_json::to_vec(&config).unwrap(),
            None,
        )
        .unwrap();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_twilld"),
            "--node-name",
            "n1",
        ])
        .arg("--store-dir")
        .arg(dir.path.join("store"))
        .arg("--handoff-file")
        .arg(dir.path.join("node.json"))
        .arg("--state-dir")
        .arg(dir.path.join("state"))
        .arg("--cni-data-dir")
        .arg(dir.path.join("ipam"))
        .args([
            "--listen",
            "127.0.0.1:9099",
            "--ip-autodetection",
            "skip-interface=docker.*,peer.*,lo",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let status: NodeStatus = loop {
        if let Some(kv) = store.get(&format!("{PREFIX}nodes/n1")).unwrap() {
            break serde_json::from_slice(&kv.value).unwrap();
        }
        assert!(Instant::now() < end, "twilld never published its node");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status.address, "192.0.2.11".parse::<Ipv4Addr>().unwrap());
    assert_eq!(status.autodetection, "skip-interface=docker.*,peer.*,lo");
    assert!(status.reason.contains("eth0"), "{}", status.reason);
    assert_eq!(status.blocks.len(), 1);
}
