//! Root-gated: backend `bgp` with real twilld processes. Nodes are namespaces on one
//! underlay bridge, each running twilld (`ip netns exec`) on one embedded store with
//! `backend: bgp` and l3 pod wiring; pods are added by the real twill-cni. Proven here:
//! - a 3-node iBGP mesh: every kernel holds every other block (`proto bgp`, via the
//!   block's node), pods reach pods across nodes, `routingstatus/<node>` and /metrics show
//!   every session Established, the control socket answers `twill bgp neighbors`;
//! - SIGKILL and restart of one twilld moves no route in any kernel (`ip monitor` on the
//!   others stays silent; every dump is the same after);
//! - a node removed from the store: its sessions close and its routes leave at once;
//! - a clean stop (SIGTERM): its routes leave every kernel at once, and its own learned
//!   routes go with it;
//! - an external BIRD router as a global BGPPeer (eBGP, TCP MD5): each side's kernel
//!   holds the other's prefixes; a wrong password is reported stuck in /readyz;
//! - the mesh off, a route reflector picked by peerSelector, bridge-wired pods;
//! - an AS per node (an eBGP mesh); a speaker that cannot listen, reported with the fix.
//!
//! Names: `twlbb…`. Each test is bounded (every wait has a deadline of at most 30 s).

mod common;

use common::AgentProc;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use twill_api::bgp::RoutingStatus;
use twill_api::resources::{BackendKind, NetworkConfig, NodeStatus};
use twill_api::wiring::PodWiring;
use twill_bgp::speaker::control::{self, NeighborsReply};
use twill_netlink::{run_in, Netns};
use twill_store::embedded::EmbeddedStore;
use twill_store::{Store, PREFIX};
use twill_testkit::{TempDir, TestNetns};

const LISTEN_PORT: u16 = 9099;
const NETWORK: &str = "twlbbnet";
/// Timers that make sessions come up and fail fast (the defaults are for real networks).
const BGP_CONFIG: &str =
    r#"{"holdTimeSeconds":9,"keepaliveTimeSeconds":3,"connectRetrySeconds":1}"#;

/// Field order is drop order: agents stop before their namespaces go.
struct Cluster {
    agents: Vec<Option<AgentProc>>,
    pods: Vec<TestNetns>,
    nodes: Vec<TestNetns>,
    underlay: TestNetns,
    store: EmbeddedStore,
    dir: TempDir,
    wiring: PodWiring,
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= end => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn plug(underlay: &TestNetns, port: &str, ns: &TestNetns, cidr: &str) {
    underlay.exec(&[
        "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    underlay.exec(&["ip", "link", "set", port, "master", "twlbr", "up"]);
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    ns.exec(&["ip", "addr", "add", cidr, "dev", "eth0"]);
    ns.exec(&["ip", "link", "set", "lo", "up"]);
}

/// `n` nodes on 192.0.2.0/24 (n<i> at 192.0.2.1<i>), backend bgp, l3 pods, /24 blocks;
/// `bgpconfig` holds [`BGP_CONFIG`]. Agents are not started yet.
fn cluster(tag: &str, n: usize) -> Cluster {
    cluster_wired(tag, n, PodWiring::L3)
}

fn cluster_wired(tag: &str, n: usize, pod_wiring: PodWiring) -> Cluster {
    let underlay = TestNetns::new(&format!("{tag}ul"));
    underlay.exec(&["ip", "link", "add", "twlbr", "type", "bridge"]);
    underlay.exec(&["ip", "link", "set", "twlbr", "up"]);
    let mut nodes = Vec::new();
    for i in 1..=n {
        let ns = TestNetns::new(&format!("{tag}n{i}"));
        plug(
            &underlay,
            &format!("p{i}"),
            &ns,
            &format!("192.0.2.1{i}/24"),
        );
        // l3 pods need a route to their gateway 169.254.1.1 through the uplink.
        ns.exec(&["ip", "route", "add", "default", "via", "192.0.2.1"]);
        nodes.push(ns);
    }
    let dir = TempDir::new(tag);
    let store = EmbeddedStore::open(&dir.path.join("store")).unwrap();
    let config = NetworkConfig {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        block_size: 24,
        subnet_min: None,
        subnet_max: None,
        reservations: vec![],
        backend: BackendKind::Bgp.spec(),
        mtu: 1500,
        masquerade: false,
        pod_wiring,
        lease_ttl_seconds: 600,
    };
    store
        .put(
            &format!("{PREFIX}config"),
            &serde_json::to_vec(&config).unwrap(),
            None,
        )
        .unwrap();
    store
        .put(&format!("{PREFIX}bgpconfig"), BGP_CONFIG.as_bytes(), None)
        .unwrap();
    Cluster {
        agents: (0..n).map(|_| None).collect(),
        pods: Vec::new(),
        nodes,
        underlay,
        store,
        dir,
        wiring: pod_wiring,
    }
}

impl Cluster {
    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path.join(format!("n{}", i + 1))
    }

    fn start(&mut self, i: usize) {
        let name = format!("n{}", i + 1);
        let d = self.node_dir(i);
        std::fs::create_dir_all(&d).unwrap();
        let path = |p: &str| d.join(p).display().to_string();
        let args: Vec<String> = [
            "--node-name",
            &name,
            "--store",
            "embedded",
            "--store-dir",
            &self.dir.path.join("store").display().to_string(),
            "--handoff-file",
            &path("node.json"),
            "--state-dir",
            &path("state"),
            "--cni-data-dir",
            &path("ipam"),
            "--cni-network",
            NETWORK,
            "--poll-interval-seconds",
            "0.2",
            "--listen",
            &format!("127.0.0.1:{LISTEN_PORT}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // One log per run: n1.0.log, n1.1.log after a restart, …
        let log = (0..)
            .map(|k| self.dir.path.join(format!("{name}.{k}.log")))
            .find(|p| !p.exists())
            .unwrap();
        let agent = AgentProc::spawn(&["ip", "netns", "exec", &self.nodes[i].name], &args, log);
        self.agents[i] = Some(agent);
    }

    fn get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let ns = Netns::open(self.nodes[i].path()).unwrap();
        run_in(&ns, || common::get(LISTEN_PORT, path)).unwrap()
    }

    fn logs(&self) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir.path)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                format!(
                    "--- {}\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    }

    fn wait_ready(&self, i: usize) {
        wait(
            &format!("n{} ready", i + 1),
            Duration::from_secs(30),
            || match self.get(i, "/readyz") {
                Some((200, _)) => Ok(()),
                other => Err(format!("{other:?}\n{}", self.logs())),
            },
        )
    }

    fn node_status(&self, node: &str) -> Option<NodeStatus> {
        let kv = self.store.get(&format!("{PREFIX}nodes/{node}")).unwrap()?;
        serde_json::from_slice(&kv.value).ok()
    }

    fn block(&self, i: usize) -> String {
        let s = self.node_status(&format!("n{}", i + 1)).expect("published");
        s.blocks[0].to_string()
    }

    fn routing(&self, i: usize) -> Option<RoutingStatus> {
        let kv = self
            .store
            .get(&format!("{PREFIX}routingstatus/n{}", i + 1))
            .unwrap()?;
        serde_json::from_slice(&kv.value).ok()
    }

    /// `ip -j route show proto bgp` in node `i`: (dst, gateway), sorted.
    fn bgp_routes(&self, i: usize) -> Vec<(String, String)> {
        bgp_routes(&self.nodes[i])
    }

    /// Waits until node `i`'s kernel has exactly `want` as its BGP routes.
    fn wait_routes(&self, i: usize, want: &[(String, String)], timeout: Duration) -> Duration {
        let t = Instant::now();
        let mut want = want.to_vec();
        want.sort();
        wait(
            &format!("n{}'s BGP routes to be {want:?}", i + 1),
            timeout,
            || {
                let got = self.bgp_routes(i);
                if got == want {
                    Ok(())
                } else {
                    Err(format!("got {got:?}\n{}", self.logs()))
                }
            },
        );
        t.elapsed()
    }

    /// A pod on node `i`, wired l3 by the real twill-cni; its address.
    fn add_pod(&mut self, i: usize) -> String {
        let pod = TestNetns::new(&format!("bbpod{}", i + 1));
        let d = self.node_dir(i);
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "twill-cni",
            "ipam": {"handoffFile": d.join("node.json"), "dataDir": d.join("ipam")},
        });
        if self.wiring == PodWiring::Bridge {
            conf["bridge"] = json!("twl0");
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].name])
            .arg(twill_testkit::workspace_bin("twill-cni", "twill-cni"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("twlbb{}", i + 1))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn twill-cni");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "twill-cni ADD: {}", text(&out));
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ip = result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        self.pods.push(pod);
        ip
    }

    fn sigterm(&mut self, i: usize) {
        let mut a = self.agents[i].take().expect("running");
        let mut child = a.child.take().unwrap();
        // SAFETY: kill(2) on the PID of a child this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < end,
                "twilld ignored SIGTERM\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigkill(&mut self, i: usize) {
        self.agents[i].take().expect("running").kill();
    }
}

fn bgp_routes(ns: &TestNetns) -> Vec<(String, String)> {
    let out = ns.exec(&["ip", "-j", "-4", "route", "show", "proto", "bgp"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
    let mut r: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    r.sort();
    r
}

/// Every route and neighbour-independent piece of a node's routing state, as text.
fn dump(ns: &TestNetns) -> String {
    text(&ns.exec(&["ip", "-4", "route", "show", "table", "all"]))
}

/// `ip monitor route` in a namespace, until [`Monitor::stop`]: every route event.
struct Monitor(Option<Child>, PathBuf);

impl Monitor {
    fn start(ns: &TestNetns, file: PathBuf) -> Monitor {
        let out = std::fs::File::create(&file).unwrap();
        let child = Command::new("ip")
            .args(["-4", "-n", &ns.name, "monitor", "route"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Monitor(Some(child), file)
    }

    fn stop(&mut self) -> String {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ping(from: &TestNetns, to: &str) -> Result<(), String> {
    let (ok, out, err) = from.try_exec(&["ping", "-c", "1", "-W", "1", to]);
    if ok {
        Ok(())
    } else {
        Err(format!("{out}{err}"))
    }
}

/// What `twill bgp neighbors --socket PATH` asks the speaker.
fn neighbors(sock: &std::path::Path) -> Result<NeighborsReply, String> {
    control::query(sock, control::Request::Neighbors).map_err(|e| e.to_string())
}

fn gw(i: usize) -> String {
    format!("192.0.2.1{}", i + 1)
}

#[test]
fn a_three_node_mesh_routes_pods_survives_sigkill_and_leaves_on_stop() {
    twill_testkit::require_root(
        "a_three_node_mesh_routes_pods_survives_sigkill_and_leaves_on_stop",
    );
    let mut c = cluster("twlbbm", 3);
    let t0 = Instant::now();
    for i in 0..3 {
        c.start(i);
    }
    for i in 0..3 {
        c.wait_ready(i);
    }
    let blocks: Vec<String> = (0..3).map(|i| c.block(i)).collect();
    let routes_of = |i: usize, blocks: &[String]| -> Vec<(String, String)> {
        (0..blocks.len())
            .filter(|j| *j != i)
            .map(|j| (blocks[j].clone(), gw(j)))
            .collect()
    };
    for i in 0..3 {
        c.wait_routes(i, &routes_of(i, &blocks), Duration::from_secs(30));
    }
    let meshed_in = t0.elapsed();

    // Pods on every node reach each other, l3-wired, by the learned routes.
    let ips: Vec<String> = (0..3).map(|i| c.add_pod(i)).collect();
    for (from, pod) in c.pods.iter().enumerate() {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                wait(
                    &format!("pod {from} -> pod {to} ({ip})"),
                    Duration::from_secs(10),
                    || ping(pod, ip),
                );
            }
        }
    }

    // routingstatus/<node>: two Established mesh sessions, with prefixes counted.
    for i in 0..3 {
        let st = wait(
            &format!("routingstatus/n{}", i + 1),
            Duration::from_secs(10),
            || {
                let st = c.routing(i).ok_or("absent")?;
                if st.peers.len() == 2
                    && st
                        .peers
                        .iter()
                        .all(|p| p.state == "Established" && p.prefixes_received == 1)
                {
                    Ok(st)
                } else {
                    Err(format!("{st:?}"))
                }
            },
        );
        assert_eq!(st.asn, Some(64512));
        assert_eq!(st.router_id, Some(gw(i).parse().unwrap()));
        for p in &st.peers {
            assert_eq!(p.peer_type, twill_api::bgp::PeerType::NodeMesh);
            assert!(p.node.is_some());
            assert_eq!(p.prefixes_advertised, 1, "{p:?}");
        }
        let kv = c
            .store
            .get(&format!("{PREFIX}routingstatus/n{}", i + 1))
            .unwrap()
            .unwrap();
        let node = c
            .store
            .get(&format!("{PREFIX}nodes/n{}", i + 1))
            .unwrap()
            .unwrap();
        assert_eq!(kv.lease, node.lease, "bound to the agent's lease");
        let (_, m) = c.get(i, "/metrics").unwrap();
        let established = m
            .lines()
            .filter(|l| l.starts_with("twill_bgp_session_established{") && l.ends_with(" 1"))
            .count();
        assert_eq!(established, 2, "{m}");
        assert!(m.contains("twill_bgp_prefixes_received{peer=\""), "{m}");
    }
    // The speaker's control socket, as `twill bgp neighbors --socket` asks it.
    let sock = c.node_dir(0).join("state").join("bgp.sock");
    let n = neighbors(&sock).unwrap();
    assert_eq!(n.neighbors.len(), 2, "{n:?}");
    assert!(
        n.neighbors.iter().all(|p| p.state == "Established"),
        "{n:?}"
    );

    // SIGKILL n1 and start it again: no kernel changes (graceful restart both ways).
    let before: Vec<String> = c.nodes.iter().map(dump).collect();
    let mut monitors: Vec<Monitor> = (0..3)
        .map(|i| Monitor::start(&c.nodes[i], c.dir.path.join(format!("monitor{i}"))))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    c.sigkill(0);
    std::thread::sleep(Duration::from_secs(1));
    c.start(0);
    c.wait_ready(0);
    wait(
        "n1's sessions Established again",
        Duration::from_secs(30),
        || {
            let st = c.routing(0).ok_or("absent")?;
            let since_restart = st.peers.iter().all(|p| p.state == "Established");
            let n = neighbors(&sock)?;
            let all_up = n.neighbors.len() == 2
                && n.neighbors
                    .iter()
                    .all(|p| p.state == "Established" && p.end_of_rib);
            if since_restart && all_up && n.adopted_pending == 0 {
                Ok(())
            } else {
                Err(format!("{n:?}"))
            }
        },
    );
    // Past the time a stale route would have been swept on End-of-RIB.
    std::thread::sleep(Duration::from_secs(2));
    let events: Vec<String> = monitors.iter_mut().map(|m| m.stop()).collect();
    let after: Vec<String> = c.nodes.iter().map(dump).collect();
    for i in 0..3 {
        assert_eq!(
            before[i],
            after[i],
            "n{}'s routes changed across n1's restart",
            i + 1
        );
    }
    for (i, e) in events.iter().enumerate().skip(1) {
        assert!(
            e.trim().is_empty(),
            "n{}'s kernel saw route changes while n1 restarted:\n{e}",
            i + 1
        );
    }
    assert!(
        !events[0].contains("Deleted"),
        "n1 deleted routes while restarting:\n{}",
        events[0]
    );
    for (from, pod) in c.pods.iter().enumerate() {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                ping(pod, ip)
                    .unwrap_or_else(|e| panic!("pod {from} -> {to} after the restart: {e}"));
            }
        }
    }

    // n2 removed from the store (its agent killed first, so nothing re-publishes it): the
    // others close its sessions and drop its routes at once, not after the restart time.
    c.sigkill(1);
    let t = Instant::now();
    c.store.delete(&format!("{PREFIX}nodes/n2")).unwrap();
    let rest = [blocks[0].clone(), String::new(), blocks[2].clone()];
    c.wait_routes(0, &[(rest[2].clone(), gw(2))], Duration::from_secs(10));
    c.wait_routes(2, &[(rest[0].clone(), gw(0))], Duration::from_secs(10));
    let removed_in = t.elapsed();
    wait("n1's status without n2", Duration::from_secs(10), || {
        let st = c.routing(0).ok_or("absent")?;
        (st.peers.len() == 1).then_some(()).ok_or(format!("{st:?}"))
    });

    // A clean stop of n3: Cease; its block leaves n1's kernel at once, its own learned
    // routes leave its kernel.
    let t = Instant::now();
    c.sigterm(2);
    let exited_in = t.elapsed();
    let gone_after_exit = c.wait_routes(0, &[], Duration::from_secs(5));
    assert_eq!(c.bgp_routes(2), vec![], "n3 left its learned routes behind");
    eprintln!(
        "mesh of 3 in {meshed_in:?}; a removed node's routes gone in {removed_in:?}; a stopped node exited {exited_in:?} after SIGTERM, its routes gone {gone_after_exit:?} after that"
    );
}

/// BIRD in namespace `ns` with `conf`; killed by PID on drop.
struct Bird {
    child: Child,
    ctl: PathBuf,
}

impl Bird {
    fn start(ns: &TestNetns, dir: &std::path::Path, conf: &str) -> Bird {
        let path = dir.join("bird.conf");
        std::fs::write(&path, conf).unwrap();
        let ctl = dir.join("bird.ctl");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "bird", "-f", "-c"])
            .arg(&path)
            .arg("-s")
            .arg(&ctl)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("bird.out")).unwrap())
            .spawn()
            .expect("start bird");
        Bird { child, ctl }
    }

    fn cmd(&self, args: &str) -> String {
        let mut argv = vec!["birdc", "-s", self.ctl.to_str().unwrap()];
        argv.extend(args.split_whitespace());
        let (_, out, err) = twill_testkit::try_sh(&argv);
        format!("{out}{err}")
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_external_bird_router_peers_by_a_global_bgppeer_with_md5() {
    twill_testkit::require_root("an_external_bird_router_peers_by_a_global_bgppeer_with_md5");
    twill_testkit::require_program(
        "an_external_bird_router_peers_by_a_global_bgppeer_with_md5",
        "bird",
        "bird2",
    );
    let mut c = cluster("twlbbx", 1);
    // The router: 192.0.2.1 on the segment, AS 65100, announcing 203.0.113.0/24.
    let router = TestNetns::new("twlbbxr");
    plug(&c.underlay, "pr", &router, "192.0.2.1/24");
    let bird = Bird::start(
        &router,
        &c.dir.path,
        r#"
router id 192.0.2.1;
protocol device { }
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }
protocol static outside { ipv4; route 203.0.113.0/24 blackhole; }
protocol bgp n1 { local 192.0.2.1 as 65100; neighbor 192.0.2.11 as 64512;
  hold time 9; keepalive time 3; connect retry time 1; password "twlbb-s3cr3t";
  ipv4 { import all; export where source = RTS_STATIC; }; }
"#,
    );
    c.store
        .put(
            &format!("{PREFIX}bgpconfig"),
            br#"{"nodeToNodeMeshEnabled":false,"holdTimeSeconds":9,"keepaliveTimeSeconds":3,"connectRetrySeconds":1}"#,
            None,
        )
        .unwrap();
    c.store
        .put(
            &format!("{PREFIX}bgppeers/tor"),
            br#"{"peerIP":"192.0.2.1","asNumber":65100,"password":{"value":"twlbb-s3cr3t"}}"#,
            None,
        )
        .unwrap();
    let t0 = Instant::now();
    c.start(0);
    c.wait_ready(0);
    let block = c.block(0);
    // The node learns the router's prefix; the router's kernel learns the node's block.
    c.wait_routes(
        0,
        &[("203.0.113.0/24".into(), "192.0.2.1".into())],
        Duration::from_secs(30),
    );
    wait(
        "BIRD's kernel to hold the node's block",
        Duration::from_secs(30),
        || {
            let r = bgp_routes_any(&router);
            if r.contains(&(block.clone(), "192.0.2.11".to_string())) {
                Ok(())
            } else {
                Err(format!(
                    "{r:?}\n{}\n{}",
                    bird.cmd("show protocols all n1"),
                    c.logs()
                ))
            }
        },
    );
    let st = wait(
        "routingstatus/n1 Established",
        Duration::from_secs(10),
        || {
            let st = c.routing(0).ok_or("absent")?;
            (st.peers.len() == 1 && st.peers[0].state == "Established")
                .then_some(st.clone())
                .ok_or(format!("{st:?}"))
        },
    );
    let p = &st.peers[0];
    assert_eq!(
        (p.address.as_str(), p.asn, p.node.as_deref()),
        ("192.0.2.1", Some(65100), None)
    );
    assert_eq!(p.peer_type, twill_api::bgp::PeerType::Global);
    assert_eq!(
        (p.prefixes_received, p.prefixes_advertised),
        (1, 1),
        "{p:?}"
    );
    let up_in = t0.elapsed();
    // A wrong password: the session drops and /readyz says it is stuck, with the fix.
    c.store
        .put(
            &format!("{PREFIX}bgppeers/tor"),
            br#"{"peerIP":"192.0.2.1","asNumber":65100,"password":{"value":"wrong"}}"#,
            None,
        )
        .unwrap();
    let why = wait(
        "/readyz to report the stuck session",
        Duration::from_secs(30),
        || match c.get(0, "/readyz") {
            Some((200, body)) if body.contains("stuck in") => Ok(body),
            other => Err(format!("{other:?}\n{:?}\n{}", c.routing(0), c.logs())),
        },
    );
    assert!(why.contains("BGP session with 192.0.2.1 (global)"), "{why}");
    assert!(why.contains("same password"), "{why}");
    c.wait_routes(0, &[], Duration::from_secs(10));
    eprintln!("BIRD and n1 exchanged routes {up_in:?} after n1's start; the wrong password was reported {:?} after that", t0.elapsed() - up_in);
}

/// BIRD's routes in its kernel (protocol bird), as (dst, gateway).
fn bgp_routes_any(ns: &TestNetns) -> Vec<(String, String)> {
    let out = ns.exec(&["ip", "-j", "-4", "route", "show"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_route_reflector_picked_by_selector_carries_bridge_wired_pods_with_the_mesh_off() {
    twill_testkit::require_root(
        "a_route_reflector_picked_by_selector_carries_bridge_wired_pods_with_the_mesh_off",
    );
    // Bridge wiring (kube-router's way with BGP): the bridge's connected route covers each
    // block, no blackhole. The mesh off; n2 reflects (cluster 224.0.0.1) and every node
    // peers with the nodes labelled rr: n1 and n3 only with n2, n2 back with both.
    let mut c = cluster_wired("twlbbr", 3, PodWiring::Bridge);
    c.store
        .put(
            &format!("{PREFIX}bgpconfig"),
            br#"{"nodeToNodeMeshEnabled":false,"holdTimeSeconds":9,"keepaliveTimeSeconds":3,"connectRetrySeconds":1}"#,
            None,
        )
        .unwrap();
    c.store
        .put(
            &format!("{PREFIX}nodeconfigs/n2"),
            br#"{"bgp":{"routeReflectorClusterID":"224.0.0.1"},"labels":{"rr":"yes"}}"#,
            None,
        )
        .unwrap();
    c.store
        .put(
            &format!("{PREFIX}bgppeers/to-rr"),
            br#"{"nodeSelector":"all()","peerSelector":"rr == 'yes'"}"#,
            None,
        )
        .unwrap();
    for i in 0..3 {
        c.start(i);
    }
    for i in 0..3 {
        c.wait_ready(i);
    }
    let blocks: Vec<String> = (0..3).map(|i| c.block(i)).collect();
    // Reflected routes keep the originator's next hop: n1 reaches n3's block via n3.
    for i in 0..3 {
        let want: Vec<(String, String)> = (0..3)
            .filter(|j| *j != i)
            .map(|j| (blocks[j].clone(), gw(j)))
            .collect();
        c.wait_routes(i, &want, Duration::from_secs(30));
    }
    for (i, peers) in [(0, 1), (1, 2), (2, 1)] {
        let st = wait(
            &format!("n{}'s sessions", i + 1),
            Duration::from_secs(10),
            || {
                let st = c.routing(i).ok_or("absent")?;
                (st.peers.len() == peers && st.peers.iter().all(|p| p.state == "Established"))
                    .then_some(st.clone())
                    .ok_or(format!("{st:?}"))
            },
        );
        assert!(st
            .peers
            .iter()
            .all(|p| p.peer_type == twill_api::bgp::PeerType::RouteReflector));
        if i == 1 {
            assert_eq!(
                st.route_reflector_cluster_id,
                Some("224.0.0.1".parse().unwrap())
            );
            assert!(
                st.peers.iter().all(|p| p.prefixes_advertised == 2),
                "{st:?}"
            );
        }
    }
    // No blackhole with a bridge; pods reach each other through the reflected routes.
    for i in 0..3 {
        let bh = text(&c.nodes[i].exec(&["ip", "route", "show", "type", "blackhole"]));
        assert!(bh.trim().is_empty(), "n{}: {bh}", i + 1);
    }
    let ips: Vec<String> = (0..3).map(|i| c.add_pod(i)).collect();
    for (from, pod) in c.pods.iter().enumerate() {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                wait(
                    &format!("pod {from} -> pod {to} ({ip})"),
                    Duration::from_secs(10),
                    || ping(pod, ip),
                );
            }
        }
    }
    // The reflector leaves cleanly: the clients lose each other's routes at once (they
    // learned them only through it).
    c.sigterm(1);
    c.wait_routes(0, &[], Duration::from_secs(5));
    c.wait_routes(2, &[], Duration::from_secs(5));
}

#[test]
fn a_speaker_that_cannot_listen_is_in_readyz_with_the_fix_and_starts_once_the_port_is_free() {
    twill_testkit::require_root(
        "a_speaker_that_cannot_listen_is_in_readyz_with_the_fix_and_starts_once_the_port_is_free",
    );
    let mut c = cluster("twlbbp", 2);
    // Another BGP daemon's port 179 on n1, as a plain listener in its namespace.
    let ns = Netns::open(c.nodes[0].path()).unwrap();
    let squatter = run_in(&ns, || std::net::TcpListener::bind("0.0.0.0:179"))
        .unwrap()
        .unwrap();
    c.start(0);
    c.start(1);
    let why = wait(
        "n1's /readyz to say why",
        Duration::from_secs(20),
        || match c.get(0, "/readyz") {
            Some((200, body)) if body.contains("the BGP speaker cannot start") => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(
        why.contains("port 179") && why.contains("listenPort"),
        "{why}"
    );
    drop(squatter);
    c.wait_ready(1);
    let blocks = [c.block(0), c.block(1)];
    c.wait_routes(0, &[(blocks[1].clone(), gw(1))], Duration::from_secs(20));
    c.wait_routes(1, &[(blocks[0].clone(), gw(0))], Duration::from_secs(20));
    wait("the problem gone", Duration::from_secs(10), || {
        match c.get(0, "/readyz") {
            Some((200, body)) if !body.contains("cannot start") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

#[test]
fn an_as_per_node_makes_an_ebgp_mesh_that_routes_every_block() {
    twill_testkit::require_root("an_as_per_node_makes_an_ebgp_mesh_that_routes_every_block");
    let mut c = cluster("twlbba", 3);
    for (i, asn) in [(1, 65001), (2, 65002)] {
        c.store
            .put(
                &format!("{PREFIX}nodeconfigs/n{i}"),
                format!(r#"{{"bgp":{{"asNumber":{asn}}}}}"#).as_bytes(),
                None,
            )
            .unwrap();
    }
    for i in 0..3 {
        c.start(i);
    }
    for i in 0..3 {
        c.wait_ready(i);
    }
    let blocks: Vec<String> = (0..3).map(|i| c.block(i)).collect();
    for i in 0..3 {
        let want: Vec<(String, String)> = (0..3)
            .filter(|j| *j != i)
            .map(|j| (blocks[j].clone(), gw(j)))
            .collect();
        c.wait_routes(i, &want, Duration::from_secs(30));
    }
    let st = wait("n1's sessions", Duration::from_secs(10), || {
        let st = c.routing(0).ok_or("absent")?;
        (st.peers.len() == 2 && st.peers.iter().all(|p| p.state == "Established"))
            .then_some(st.clone())
            .ok_or(format!("{st:?}"))
    });
    assert_eq!(st.asn, Some(65001));
    let mut asns: Vec<Option<u32>> = st.peers.iter().map(|p| p.asn).collect();
    asns.sort();
    assert_eq!(asns, [Some(64512), Some(65002)]);
    let ips: Vec<String> = (0..3).map(|i| c.add_pod(i)).collect();
    for (from, pod) in c.pods.iter().enumerate() {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                wait(
                    &format!("pod {from} -> pod {to} ({ip})"),
                    Duration::from_secs(10),
                    || ping(pod, ip),
                );
            }
        }
    }
}

/// The bgp backend driven as the agent's loop drives it (twilld's `Routing`, its speaker
/// spawned in the node's namespace), for the path between passes.
fn bgp_routing(node: &TestNetns, state: &std::path::Path) -> twilld::routing::Routing {
    twilld::routing::Routing::new(&twill_api::resources::BackendSpec::Bgp, state)
        .unwrap()
        .in_netns(Netns::open(node.path()).unwrap())
}

fn local_of(i: usize) -> twilld::backend::Local {
    twilld::backend::Local {
        name: format!("n{i}"),
        address: format!("192.0.2.1{i}").parse().unwrap(),
        uplink: "eth0".into(),
        uplink_cidr: "192.0.2.0/24".parse().unwrap(),
        blocks: vec![format!("10.244.{i}.0/24").parse().unwrap()],
        mtu_uplink: 1500,
        pod_wiring: PodWiring::L3,
    }
}

fn peer_of(l: &twilld::backend::Local) -> twilld::backend::Peer {
    twilld::backend::Peer {
        name: l.name.clone(),
        address: l.address,
        blocks: l.blocks.clone(),
        vtep_mac: None,
    }
}

/// A reflector hears of a joining client from the watch while its own round still waits
/// (on the store, on its kernel pass): `Routing::peers_changed` alone, with no pass after
/// it, must give the client its session and both kernels their routes.
#[test]
fn a_node_that_joins_gets_its_session_and_routes_between_passes() {
    twill_testkit::require_root("a_node_that_joins_gets_its_session_and_routes_between_passes");
    let c = cluster("twlbbjn", 2);
    let (l1, l2) = (local_of(1), local_of(2));
    let mut r1 = bgp_routing(&c.nodes[0], &c.dir.path.join("state1"));
    let mut r2 = bgp_routing(&c.nodes[1], &c.dir.path.join("state2"));
    let n1 = Netns::open(c.nodes[0].path()).unwrap();
    let n2 = Netns::open(c.nodes[1].path()).unwrap();
    // n1 runs alone: one pass, no peer. n2 starts knowing n1 (its pass lists it).
    let pass = run_in(&n1, || r1.reconcile(&l1, &[])).unwrap().unwrap();
    assert!(pass.unwrap().failures.is_empty());
    let pass = run_in(&n2, || r2.reconcile(&l2, &[peer_of(&l1)]))
        .unwrap()
        .unwrap();
    assert!(pass.unwrap().failures.is_empty());
    // Control: n1 does not know n2, so no session and no route, however long n2 tries.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bgp_routes(&c.nodes[0]), vec![], "n1 peered unasked");
    // The watch tells n1 of n2: the list goes to its speaker now, and no pass follows.
    let t0 = Instant::now();
    run_in(&n1, || r1.peers_changed(&[peer_of(&l2)])).unwrap();
    let want = |i: usize| vec![(format!("10.244.{i}.0/24"), format!("192.0.2.1{i}"))];
    wait("n1 routes to n2's block", Duration::from_secs(10), || {
        let got = bgp_routes(&c.nodes[0]);
        (got == want(2)).then_some(()).ok_or(format!("{got:?}"))
    });
    wait("n2 routes to n1's block", Duration::from_secs(10), || {
        let got = bgp_routes(&c.nodes[1]);
        (got == want(1)).then_some(()).ok_or(format!("{got:?}"))
    });
    let took = t0.elapsed();
    // The pass that follows in the agent finds the list already there: it changes nothing
    // (the session stays up).
    let pass = run_in(&n1, || r1.reconcile(&l1, &[peer_of(&l2)]))
        .unwrap()
        .unwrap()
        .expect("the peers differ from the last pass");
    assert!(pass.failures.is_empty(), "{:?}", pass.failures);
    let st = r1.routing_status().expect("a bgp status");
    assert_eq!(st.peers.len(), 1, "{st:?}");
    assert_eq!(st.peers[0].state, "Established", "{st:?}");
    assert_eq!(st.peers[0].node.as_deref(), Some("n2"), "{st:?}");
    eprintln!(
        "session and routes {:.3} s after peers_changed",
        took.as_secs_f64()
    );
    drop((r1, r2));
}
