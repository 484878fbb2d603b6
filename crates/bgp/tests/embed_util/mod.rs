//! Helpers of the embedded-speaker tests (`embed_*.rs`): an [`Embed`] spawned in this test
//! process on a thread inside a node's namespace, and a [`RouteMonitor`] counting the route
//! changes a namespace's kernel announces (`ip -o monitor route`).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use twill_bgp::config::{Config, Peer};
use twill_bgp::fsm::State;
use twill_bgp::speaker::embed::{Embedded, Notice, Options, Status};
use twill_testkit::{sh, try_sh, TempDir};

use crate::common::bird::Bird;
use crate::common::conf::{self, bird_bgp};
use crate::common::kernel;
use crate::common::net::Node;
use crate::common::twill::twill_bin;
use crate::common::wait;

pub const T: Duration = Duration::from_secs(15);

/// A peer with the suite's short timers, taking and sending everything.
pub fn peer(address: &str, asn: u32) -> Peer {
    serde_json::from_value(json!({"address": address, "as": asn, "holdTime": 9,
        "connectRetry": 1, "import": "accept", "export": "accept"}))
    .unwrap()
}

/// An embedded speaker and what its callback heard.
pub struct Embed {
    pub sp: Option<Embedded>,
    pub notices: Arc<Mutex<Vec<Notice>>>,
    pub socket: std::path::PathBuf,
    pub cfg: Value,
    _dir: TempDir,
}

impl Embed {
    /// Spawns the speaker inside `node`'s namespace with `cfg` (JSON of a config file); its
    /// control socket in a directory of the test's.
    pub fn spawn(node: &Node, cfg: Value) -> Embed {
        Embed::spawn_with(node, cfg, TempDir::new("twlemb"), false)
    }

    /// The same in `dir` (a restart keeps it), `restarted` as twilld would say.
    pub fn spawn_with(node: &Node, mut cfg: Value, dir: TempDir, restarted: bool) -> Embed {
        let socket = dir.path.join("bgp.sock");
        cfg["controlSocket"] = json!(socket);
        let config: Config = serde_json::from_value(cfg.clone()).unwrap();
        let notices = Arc::new(Mutex::new(Vec::new()));
        let heard = notices.clone();
        let ns = twill_netlink::netns::Netns::open(node.ns.path()).unwrap();
        let sp = twill_netlink::netns::run_in(&ns, move || {
            Embedded::spawn(
                config,
                Options {
                    control_socket: true,
                    restarted,
                    notify: Some(Box::new(move |n| heard.lock().unwrap().push(n))),
                },
            )
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("spawn the embedded speaker: {e}"));
        Embed {
            sp: Some(sp),
            notices,
            socket,
            cfg,
            _dir: dir,
        }
    }

    /// Stops it (`graceful` or not) and hands back its directory for a restart.
    pub fn stop(mut self, graceful: bool) -> TempDir {
        self.sp.take().unwrap().stop(graceful).unwrap();
        let Embed { _dir, .. } = self;
        _dir
    }

    pub fn sp(&self) -> &Embedded {
        self.sp.as_ref().expect("running")
    }

    pub fn status(&self) -> Status {
        self.sp().status().unwrap()
    }

    pub fn wait_state(&self, peer: &str, want: State) {
        wait::until(&format!("{peer} {want}"), T, || {
            let st = self.status();
            match st.peers.iter().find(|p| p.address.to_string() == peer) {
                Some(p) if p.state == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }

    /// `twill bgp neighbors -o json --socket S`, as an operator would ask.
    pub fn neighbors_cli(&self) -> Value {
        let bin = twill_bin();
        let (ok, out, err) = try_sh(&[
            bin.to_str().unwrap(),
            "bgp",
            "neighbors",
            "-o",
            "json",
            "--socket",
            self.socket.to_str().unwrap(),
        ]);
        assert!(ok, "twill bgp neighbors: {err}{out}");
        serde_json::from_str(&out).unwrap()
    }

    pub fn sent_updates(&self, peer: &str) -> u64 {
        let n = self.sp().neighbors().unwrap();
        n.neighbors
            .iter()
            .find(|n| n.peer == peer)
            .map(|n| n.sent.update)
            .unwrap_or_else(|| panic!("no neighbor {peer}"))
    }
}

/// `ns`'s kernel routes `prefix` via `gw` with a route of protocol bgp (186).
pub fn bgp_route(ns: &str, prefix: &str, gw: &str) -> Result<(), String> {
    match kernel::route(ns, prefix) {
        Some(r) if r.gateways == [gw] && r.protocol == "bgp" => Ok(()),
        other => Err(format!("{prefix} in {ns}: {other:?}")),
    }
}

pub fn bird_peer(node: &Node, asn: u32, statics: &[&str]) -> Bird {
    bird_peer_of(node, asn, 65001, statics, "")
}

/// BIRD in `node` (AS `asn`) peering with a Twill at 192.0.2.1 in AS `twill_as`; `extra`
/// goes inside the protocol (`graceful restart on;`).
pub fn bird_peer_of(node: &Node, asn: u32, twill_as: u32, statics: &[&str], extra: &str) -> Bird {
    let me = node.v4.to_string();
    Bird::start(
        node,
        &conf::bird(
            &me,
            statics,
            &bird_bgp("twill", &me, asn, "192.0.2.1", twill_as, extra),
        ),
    )
}

/// `ip -o monitor route` in a namespace: every change to its routes of the pod range
/// 10.244.0.0/16 (RTM_NEWROUTE, RTM_DELROUTE), one line each, from [`RouteMonitor::start`]
/// until [`RouteMonitor::finish`]. Both ends are marked by a route the test adds and
/// deletes (`MARK`), so the monitor is known to be listening before and to have read
/// everything after. (Other routes, e.g. IPv6 link-local ones appearing as the veths
/// settle, are not BGP's and are not counted.)
pub struct RouteMonitor {
    ns: String,
    child: Option<Child>,
    out: std::path::PathBuf,
    /// Lines printed up to the end of the first mark.
    skip: usize,
    _dir: TempDir,
}

/// The marker route (inside a namespace the test made; nothing routes by it).
const MARK: &str = "198.51.100.254";

impl RouteMonitor {
    pub fn start(node: &Node) -> RouteMonitor {
        let dir = TempDir::new("twlembmon");
        let out = dir.path.join("monitor.txt");
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("ip")
            .args(["-n", node.name(), "-o", "monitor", "route"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("run ip monitor route");
        let mut m = RouteMonitor {
            ns: node.name().to_string(),
            child: Some(child),
            out,
            skip: 0,
            _dir: dir,
        };
        m.mark();
        m.skip = m.text().lines().count();
        m
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn marks(&self) -> usize {
        self.text().lines().filter(|l| l.contains(MARK)).count()
    }

    /// Adds and deletes the marker route until the monitor has printed both.
    fn mark(&mut self) {
        let before = self.marks();
        wait::until(
            &format!("ip monitor in {} hears the marker", self.ns),
            T,
            || {
                sh(&["ip", "-n", &self.ns, "route", "add", "blackhole", MARK]);
                sh(&["ip", "-n", &self.ns, "route", "del", "blackhole", MARK]);
                std::thread::sleep(Duration::from_millis(50));
                (self.marks() >= before + 2)
                    .then_some(())
                    .ok_or_else(|| self.text())
            },
        );
    }

    /// Stops the monitor (by its PID) and returns the pod-range route changes between the
    /// marks.
    pub fn finish(mut self) -> Vec<String> {
        self.mark();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.text()
            .lines()
            .skip(self.skip)
            .filter(|l| l.contains("10.244.") && !l.contains(MARK))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
