//! Shared by twilld's rip_*.rs: twilld nodes with `backend: rip` (short timers) on one
//! segment, against one embedded store, beside FRR's ripd when a test wants it
//! (`crates/rip/tests/common`, included by path: one harness for FRR's ripd). Member 0 of
//! the segment (192.0.2.1) is the router's place; node `n<i>` is member `i` (192.0.2.(i+1)).
//! Field order is drop order: agents stop before their namespaces go.
#![allow(dead_code)]

#[path = "../../../rip/tests/common/mod.rs"]
pub mod seg;

use std::time::{Duration, Instant};

use crate::common::{self, AgentProc};
use twill_api::backend::{BackendSpec, RipOptions};
use twill_api::resources::{NetworkConfig, NodeStatus};
use twill_api::wiring::PodWiring;
use twill_netlink::{run_in, Netns};
use twill_store::embedded::EmbeddedStore;
use twill_store::{Store, PREFIX};
use twill_testkit::{TempDir, TestNetns};

#[allow(unused_imports)]
pub use seg::{route, routes, wait_for, wait_no_route, wait_route, FrrRip, Segment};

pub const LISTEN_PORT: u16 = 9099;

/// FRR's `timers basic 5 15 10`, and the same for Twill.
pub const TIMERS: (u32, u32, u32) = (5, 15, 10);

pub struct Cluster {
    pub agents: Vec<Option<AgentProc>>,
    pub pods: Vec<TestNetns>,
    pub seg: Segment,
    pub store: EmbeddedStore,
    pub dir: TempDir,
    tag: String,
    wiring: PodWiring,
}

pub fn short_rip() -> BackendSpec {
    BackendSpec::Rip(RipOptions {
        update_seconds: Some(TIMERS.0),
        timeout_seconds: Some(TIMERS.1),
        garbage_seconds: Some(TIMERS.2),
    })
}

impl Cluster {
    /// `n` twilld nodes with `backend` and pods wired `wiring`, on a segment with a router
    /// place at 192.0.2.1 (every node's default route, as nodes have one).
    pub fn new(tag: &str, n: usize, backend: BackendSpec, wiring: PodWiring) -> Cluster {
        let seg = Segment::new(tag, n + 1);
        for m in &seg.members[1..] {
            twill_testkit::sh(&[
                "ip",
                "-n",
                m.name(),
                "route",
                "add",
                "default",
                "via",
                "192.0.2.1",
            ]);
        }
        let dir = TempDir::new(tag);
        let store = EmbeddedStore::open(&dir.path.join("store")).unwrap();
        let config = NetworkConfig {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            block_size: 24,
            subnet_min: None,
            subnet_max: None,
            reservations: vec![],
            backend,
            mtu: 1500,
            masquerade: false,
            pod_wiring: wiring,
            lease_ttl_seconds: 600,
        };
        config.validate().unwrap();
        store
            .put(
                &format!("{PREFIX}config"),
                &serde_json::to_vec(&config).unwrap(),
                None,
            )
            .unwrap();
        let mut c = Cluster {
            agents: Vec::new(),
            pods: Vec::new(),
            seg,
            store,
            dir,
            tag: tag.to_string(),
            wiring,
        };
        for i in 1..=n {
            let a = c.spawn(i);
            c.agents.push(Some(a));
        }
        c
    }

    /// The namespace of node `i` (from 1).
    pub fn node(&self, i: usize) -> &str {
        self.seg.members[i].name()
    }

    pub fn router_ns(&self) -> &str {
        self.seg.members[0].name()
    }

    fn spawn(&self, i: usize) -> AgentProc {
        let name = format!("n{i}");
        let d = self.dir.path.join(&name);
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
            "--listen",
            &format!("127.0.0.1:{LISTEN_PORT}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir.path.join(format!("{name}.log"));
        // Appended across restarts: the log of a test keeps every run of the agent.
        let before = std::fs::read_to_string(&log).unwrap_or_default();
        let agent = AgentProc::spawn(&["ip", "netns", "exec", self.node(i)], &args, log.clone());
        if !before.is_empty() {
            let _ = std::fs::write(self.dir.path.join(format!("{name}.log.0")), before);
        }
        agent
    }

    pub fn start(&mut self, i: usize) {
        let a = self.spawn(i);
        self.agents[i - 1] = Some(a);
    }

    /// SIGTERM, and wait for the agent to exit (bounded: 10 s, then SIGKILL).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i - 1].take() {
            if let Some(c) = a.child.as_mut() {
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let end = Instant::now() + Duration::from_secs(10);
                while c.try_wait().ok().flatten().is_none() && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            a.kill();
        }
    }

    /// SIGKILL: the agent says nothing to anyone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i - 1].take() {
            a.kill();
        }
    }

    pub fn get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let ns = Netns::open(format!("/run/netns/{}", self.node(i))).unwrap();
        run_in(&ns, || common::get(LISTEN_PORT, path)).unwrap()
    }

    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let (_, text) = self.get(i, "/metrics")?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
    }

    pub fn status(&self, i: usize) -> Option<NodeStatus> {
        let kv = self.store.get(&format!("{PREFIX}nodes/n{i}")).unwrap()?;
        serde_json::from_slice(&kv.value).ok()
    }

    /// Node `i`'s first block, once it holds one (up to 30 s).
    pub fn block(&self, i: usize) -> String {
        wait_for(
            &format!("n{i} holds a block"),
            Duration::from_secs(30),
            || {
                self.status(i)
                    .and_then(|s| s.blocks.first().map(|b| b.to_string()))
            },
            || self.logs(),
        )
        .0
    }

    pub fn wait_ready(&self, i: usize) {
        wait_for(
            &format!("n{i} ready"),
            Duration::from_secs(30),
            || matches!(self.get(i, "/readyz"), Some((200, _))).then_some(()),
            || format!("{:?}\n{}", self.get(i, "/readyz"), self.logs()),
        );
    }

    pub fn logs(&self) -> String {
        (1..=self.agents.len())
            .map(|i| {
                let log = self.dir.path.join(format!("n{i}.log"));
                format!(
                    "--- n{i}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// A pod on node `i` at .2 of its block: behind the bridge `twl0` (.1 the gateway), or
    /// with l3 wiring as twill-cni wires it (a /32, default via 169.254.1.1 answered by proxy
    /// ARP on the host veth, whose `/32 scope link proto 84` route the node gets).
    pub fn add_pod(&mut self, i: usize) -> String {
        if self.wiring == PodWiring::L3 {
            return self.add_l3_pod(i);
        }
        let block: ipnet::Ipv4Net = self.block(i).parse().unwrap();
        let base = u32::from(block.network());
        let (gw, ip) = (
            std::net::Ipv4Addr::from(base + 1),
            std::net::Ipv4Addr::from(base + 2),
        );
        let node = self.node(i).to_string();
        let pod = TestNetns::new(&format!("{}p{i}", self.tag));
        let n = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &node];
            full.extend_from_slice(args);
            twill_testkit::sh(&full);
        };
        n(&["ip", "link", "add", "twl0", "type", "bridge"]);
        n(&[
            "ip",
            "addr",
            "add",
            &format!("{gw}/{}", block.prefix_len()),
            "dev",
            "twl0",
        ]);
        n(&["ip", "link", "set", "twl0", "up"]);
        n(&[
            "ip", "link", "add", "twlvpod", "type", "veth", "peer", "name", "eth0", "netns",
            &pod.name,
        ]);
        n(&["ip", "link", "set", "twlvpod", "master", "twl0", "up"]);
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ip}/{}", block.prefix_len()),
            "dev",
            "eth0",
        ]);
        pod.exec(&["ip", "route", "add", "default", "via", &gw.to_string()]);
        self.pods.push(pod);
        ip.to_string()
    }
}

impl Cluster {
    fn add_l3_pod(&mut self, i: usize) -> String {
        let block: ipnet::Ipv4Net = self.block(i).parse().unwrap();
        let ip = std::net::Ipv4Addr::from(u32::from(block.network()) + 2).to_string();
        let gw = twill_api::wiring::L3_GATEWAY.to_string();
        let node = self.node(i).to_string();
        let pod = TestNetns::new(&format!("{}p{i}", self.tag));
        let n = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &node];
            full.extend_from_slice(args);
            twill_testkit::sh(&full);
        };
        let host = "twll3pod";
        n(&[
            "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        n(&["ip", "link", "set", host, "up"]);
        n(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{host}.proxy_arp=1"),
        ]);
        n(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.neigh.{host}.proxy_delay=0"),
        ]);
        let host_route = format!("{ip}/32");
        n(&[
            "ip",
            "route",
            "add",
            &host_route,
            "dev",
            host,
            "scope",
            "link",
            "proto",
            "84",
        ]);
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&["ip", "addr", "add", &host_route, "dev", "eth0"]);
        pod.exec(&["ip", "route", "add", &gw, "dev", "eth0", "scope", "link"]);
        pod.exec(&["ip", "route", "add", "default", "via", &gw, "dev", "eth0"]);
        self.pods.push(pod);
        ip
    }
}

/// One ping from namespace `ns` to `ip` (1 s), retried until it answers or `timeout`.
pub fn wait_ping(ns: &str, ip: &str, timeout: Duration) -> Duration {
    wait_for(
        &format!("{ns} reaches {ip}"),
        timeout,
        || {
            twill_testkit::try_sh(&[
                "ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1", ip,
            ])
            .0
            .then_some(())
        },
        || format!("{:#?}", routes(ns)),
    )
    .1
}
