//! The lab's own Open vSwitch per node namespace, without an agent: ovsdb-server and
//! ovs-vswitchd started in a namespace with every file in the node's folder, a netdev
//! bridge with a GRE port made and read back from the database (uuids, options), a flow
//! read back from ovs-vswitchd, vswitchd killed and started again on the same database
//! (the bridge comes back, the flow does not), both stopped by PID. Needs root.

use std::process::Command;

use twill_lab::ovs::{self, OvsPaths};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Procs(Vec<twill_lab::state::ProcRecord>);

impl Drop for Procs {
    fn drop(&mut self) {
        ovs::stop(&self.0);
    }
}

#[test]
fn a_nodes_ovs_starts_is_read_back_survives_a_vswitchd_restart_and_stops_by_pid() {
    twill_testkit::require_root(
        "a_nodes_ovs_starts_is_read_back_survives_a_vswitchd_restart_and_stops_by_pid",
    );
    let tag = format!("twlod{:04x}", std::process::id() & 0xffff);
    let ns = Netns(tag.clone());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());
    let dir = Dir(std::path::PathBuf::from(format!("/tmp/{tag}")));
    let p = OvsPaths {
        netns: ns.0.clone(),
        node: "n1".into(),
        dir: dir.0.join("ovs"),
    };
    let mut procs = Procs(ovs::start(&p).expect("OVS starts"));
    assert_eq!(procs.0.len(), 2);
    assert!(p.db_sock().exists());
    let pids: Vec<u32> = procs.0.iter().map(|r| r.pid.unwrap()).collect();
    // The daemons run inside the namespace.
    let in_ns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "pids", &ns.0])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for pid in &pids {
        assert!(
            in_ns.split_whitespace().any(|x| x == pid.to_string()),
            "{pid} not in {in_ns}"
        );
    }

    p.vsctl(&[
        "add-br",
        "twlbr",
        "--",
        "set",
        "bridge",
        "twlbr",
        "datapath_type=netdev",
        "--",
        "add-port",
        "twlbr",
        "twlgre",
        "--",
        "set",
        "interface",
        "twlgre",
        "type=gre",
        "options:remote_ip=flow",
        "options:local_ip=192.0.2.11",
        "external_ids:twill-owner=test",
    ])
    .unwrap();
    let v = ovs::read_view(&p).unwrap();
    let b = v.bridge("twlbr").expect("the bridge");
    assert_eq!(b.datapath_type, "netdev");
    assert!(
        b.ports
            .iter()
            .any(|x| x.name == "twlgre" && x.kinds == ["gre"]),
        "{b:?}"
    );
    assert_eq!(v.tunnels.len(), 1);
    assert_eq!(
        (
            v.tunnels[0].remote_ip.as_str(),
            v.tunnels[0].local_ip.as_str()
        ),
        ("flow", "192.0.2.11")
    );
    assert_eq!(
        v.tunnels[0]
            .external_ids
            .get("twill-owner")
            .map(String::as_str),
        Some("test")
    );
    let ids = v.identities();
    p.ofctl(&[
        "add-flow",
        "twlbr",
        "cookie=0x5477000000000001,priority=100,ip,nw_dst=10.244.2.0/24,actions=set_field:192.0.2.12->tun_dst,output:twlgre",
    ])
    .unwrap();
    let flows = ovs::parse_flows(&p.ofctl(&["dump-flows", "twlbr"]).unwrap());
    let peers = ovs::peer_tunnels(&flows);
    assert_eq!(
        peers.get(&"192.0.2.12".parse().unwrap()),
        Some(&(1, 0)),
        "{flows:?}"
    );

    // vswitchd killed (SIGKILL) and started again: same database, so the same uuids; its
    // flows are gone (they live in the daemon).
    let old = procs.0[1].clone();
    unsafe { libc::kill(old.pid.unwrap() as i32, libc::SIGKILL) };
    while twill_lab::daemons::is_ours(old.pid.unwrap(), &old.bin) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    procs.0[1] = ovs::start_vswitchd(&p).unwrap();
    assert_ne!(procs.0[1].pid, old.pid);
    assert_eq!(ovs::read_view(&p).unwrap().identities(), ids);
    let flows = ovs::parse_flows(&p.ofctl(&["dump-flows", "twlbr"]).unwrap());
    assert!(ovs::peer_tunnels(&flows).is_empty(), "{flows:?}");

    let recs = std::mem::take(&mut procs.0);
    assert!(ovs::stop(&recs).is_empty(), "both exit on SIGTERM");
    for r in &recs {
        assert!(
            !twill_lab::daemons::is_ours(r.pid.unwrap(), &r.bin),
            "{} still runs",
            r.role
        );
    }
    drop(dir);
    drop(ns);
}
