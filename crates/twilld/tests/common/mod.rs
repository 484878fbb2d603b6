//! Shared by etcd.rs and cluster_ipam.rs: twilld as a real process, its HTTP pages and
//! metrics, waiting, free ports, and the network config a test puts in the store.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use twill_api::resources::NetworkConfig;
use twill_store::PREFIX;

pub const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

/// A full store key.
pub fn key(rel: &str) -> String {
    format!("{PREFIX}{rel}")
}

/// The stored network config: `cidr` cut into /`block_size` blocks, leases of `ttl` s.
pub fn network_config(cidr: &str, block_size: u8, ttl: u64, masquerade: bool) -> Vec<u8> {
    let c = NetworkConfig {
        cluster_cidr: cidr.parse().unwrap(),
        block_size,
        subnet_min: None,
        subnet_max: None,
        reservations: vec![],
        backend: twill_api::resources::BackendSpec::None,
        mtu: 1450,
        masquerade,
        pod_wiring: Default::default(),
        lease_ttl_seconds: ttl,
    };
    c.validate().unwrap();
    serde_json::to_vec(&c).unwrap()
}

/// `n` distinct free loopback ports: all held until every one is picked, so a port released
/// early cannot be handed out twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// GET on loopback: (status, body), or None if nothing answers.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// One metric's value from the agent's /metrics.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = get(port, "/metrics")?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A twilld process (its stderr in `log`), killed (SIGKILL) if still running when dropped.
pub struct AgentProc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl AgentProc {
    /// Runs `prefix... twilld args...` (prefix: e.g. `ip netns exec NS`, which execs twilld
    /// itself, so the PID is twilld's), stderr to `log`.
    pub fn spawn(prefix: &[&str], args: &[String], log: PathBuf) -> AgentProc {
        let err = std::fs::File::create(&log).unwrap();
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(TWILLD);
                c
            }
            None => Command::new(TWILLD),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        AgentProc {
            child: Some(cmd.spawn().expect("start twilld")),
            log,
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The workspace's `twill`, next to twilld ([`twill_testkit::workspace_bin`]): `cargo test
/// -p twilld` builds only twilld's own binaries.
pub fn twill_bin() -> PathBuf {
    twill_testkit::workspace_bin("twill", "twill")
}
