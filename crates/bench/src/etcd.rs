//! One etcd member for the benchmark (Debian etcd-server), started in the calling thread's
//! network namespace on loopback with its data in the run's scratch folder, and the short
//! raft timings of the runbook so it is healthy in about 100 ms. I/O edge.

use crate::daemon::Daemon;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdOptions<'a> {
    pub exe: &'a Path,
    pub scratch: &'a Path,
    pub client_port: u16,
    pub peer_port: u16,
}

/// Starts the member and waits until `/health` says true.
pub fn start(o: &EtcdOptions) -> Result<Daemon> {
    let client = format!("http://127.0.0.1:{}", o.client_port);
    let peer = format!("http://127.0.0.1:{}", o.peer_port);
    let data = o.scratch.join("etcd-data");
    let log = o.scratch.join("etcd.log");
    let child = Command::new(o.exe)
        .args(["--name", "twlbench"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("twlbench={peer}")])
        .args(["--initial-cluster-state", "new"])
        .args(["--heartbeat-interval=10", "--election-timeout=100"])
        .args(["--logger=zap", "--log-outputs"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (apt-get install etcd-server, or pass --etcd)",
                o.exe.display()
            )
        })?;
    let mut member = Daemon::new("etcd".into(), child, o.scratch)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !member.is_running() {
            bail!("etcd exited at start; its log:\n{}", tail(&log));
        }
        if health(o.client_port) {
            return Ok(member);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "etcd did not become healthy within 10 s; its log:\n{}",
        tail(&log)
    )
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `GET /health` on loopback says `"health":"true"`.
fn health(port: u16) -> bool {
    let get = || -> std::io::Result<String> {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        write!(
            s,
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    get().is_ok_and(|b| b.contains("\"health\":\"true\""))
}
