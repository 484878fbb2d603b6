//! The benchmarks' etcd (Debian etcd-server): one launcher for a cluster of any size, each
//! member started in the calling thread's network namespace with its data and log in the
//! run's scratch folder. `twill-bench agents` starts one member on loopback, `twill-bench
//! scale` three on the underlay bridge; both through [`start`]. I/O edge.

use crate::daemon::Daemon;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Raft's heartbeat interval and election timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub heartbeat_ms: u32,
    pub election_ms: u32,
}

impl Timings {
    /// The runbook's short timings (10 ms / 100 ms): a member is healthy in ~100 ms. Fine
    /// for one member, which has no peer to miss heartbeats from.
    pub const QUICK: Timings = Timings {
        heartbeat_ms: 10,
        election_ms: 100,
    };
    /// For several members on a busy machine: with QUICK, 2 cores running hundreds of agents
    /// starved the members long enough for 64–150 elections each in one scale run; at
    /// 100 ms / 1000 ms (etcd's defaults) a heartbeat can be late by ~10 of them first.
    pub const LOADED: Timings = Timings {
        heartbeat_ms: 100,
        election_ms: 1000,
    };
}

/// One member: its name and where it listens for clients and for its peers.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }

    fn peer_url(&self) -> String {
        format!("http://{}", self.peer)
    }
}

/// A new cluster of `members`, started together.
pub struct Cluster<'a> {
    pub exe: &'a Path,
    pub scratch: &'a Path,
    /// `--initial-cluster-token`: keeps this cluster's members from joining another's.
    pub token: &'a str,
    pub members: Vec<Member>,
    pub timings: Timings,
    /// A nice value for the members (None: inherited). On a machine where the members
    /// share 2 cores with hundreds of agents, at equal priority they missed heartbeats
    /// for over a second ("etcdserver: no leader" at 1000 agents even at 100/1000 ms); a
    /// real cluster runs etcd on hosts of its own.
    pub nice: Option<i32>,
}

impl Cluster<'_> {
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    fn log(&self, m: &Member) -> PathBuf {
        self.scratch.join(format!("{}.log", m.name))
    }

    /// The arguments of member `m` (pure; [`start`] runs them).
    pub fn args(&self, m: &Member) -> Vec<String> {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|p| format!("{}={}", p.name, p.peer_url()))
            .collect();
        let data = self.scratch.join(format!("{}.data", m.name));
        vec![
            format!("--name={}", m.name),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={}", m.client_url()),
            format!("--advertise-client-urls={}", m.client_url()),
            format!("--listen-peer-urls={}", m.peer_url()),
            format!("--initial-advertise-peer-urls={}", m.peer_url()),
            format!("--initial-cluster={}", cluster.join(",")),
            format!("--initial-cluster-token={}", self.token),
            "--initial-cluster-state=new".into(),
            format!("--heartbeat-interval={}", self.timings.heartbeat_ms),
            format!("--election-timeout={}", self.timings.election_ms),
            "--logger=zap".into(),
            format!("--log-outputs={}", self.log(m).display()),
        ]
    }
}

/// Starts every member, then waits until each says healthy (a cluster is healthy once it
/// has a leader). On error, what was started is stopped.
pub fn start(c: &Cluster) -> Result<Vec<Daemon>> {
    let mut started: Vec<Daemon> = Vec::new();
    let stop = |started: &mut Vec<Daemon>| {
        for d in started.iter_mut() {
            d.stop(Duration::from_secs(5));
        }
    };
    for m in &c.members {
        let child = Command::new(c.exe)
            .args(c.args(m))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (apt-get install etcd-server, or pass --etcd)",
                    c.exe.display()
                )
            });
        let child = child.and_then(|child| {
            if let Some(n) = c.nice {
                // SAFETY: setpriority has no memory-safety preconditions.
                let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, child.id(), n) };
                if r != 0 {
                    let e = std::io::Error::last_os_error();
                    let mut child = child;
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("cannot set etcd's nice value to {n} ({e}); run as root");
                }
            }
            Ok(child)
        });
        match child.and_then(|child| Daemon::new(m.name.clone(), child, c.scratch)) {
            Ok(d) => started.push(d),
            Err(e) => {
                stop(&mut started);
                return Err(e);
            }
        }
    }
    // A first election waits one election timeout, several if votes split.
    let wait = Duration::from_secs(10) + Duration::from_millis(10 * c.timings.election_ms as u64);
    let deadline = Instant::now() + wait;
    loop {
        if let Some(m) = started
            .iter_mut()
            .position(|d| !d.is_running())
            .map(|i| &c.members[i])
        {
            let why = format!(
                "etcd {} exited at start; its log:\n{}",
                m.name,
                tail(&c.log(m))
            );
            stop(&mut started);
            bail!(why);
        }
        if c.members.iter().all(|m| health(m.client)) {
            return Ok(started);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = c
                .members
                .iter()
                .map(|m| format!("{}:\n{}", m.name, tail(&c.log(m))))
                .collect();
            stop(&mut started);
            bail!(
                "etcd did not become healthy within {wait:?}; the members' logs:\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `GET /health` says `"health":"true"`.
pub fn health(client: SocketAddr) -> bool {
    let get = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&client, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        write!(
            s,
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            client.ip()
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    get().is_ok_and(|b| b.contains("\"health\":\"true\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_lists_the_whole_cluster_with_the_timings() {
        let m = |i: u16| Member {
            name: format!("twls{i}"),
            client: ([10, 244, 128, 1], 2379 + 100 * i).into(),
            peer: ([10, 244, 128, 1], 2380 + 100 * i).into(),
        };
        let c = Cluster {
            exe: Path::new("/usr/bin/etcd"),
            scratch: Path::new("/tmp/twlx"),
            token: "twlscale",
            members: vec![m(0), m(1), m(2)],
            timings: Timings::LOADED,
            nice: None,
        };
        let a = c.args(&c.members[1]);
        assert!(a.contains(&"--name=twls1".to_string()));
        assert!(a.contains(&"--listen-client-urls=http://10.244.128.1:2479".to_string()));
        assert!(a.contains(&"--initial-cluster=twls0=http://10.244.128.1:2380,twls1=http://10.244.128.1:2480,twls2=http://10.244.128.1:2580".to_string()));
        assert!(a.contains(&"--heartbeat-interval=100".to_string()));
        assert!(a.contains(&"--election-timeout=1000".to_string()));
        assert!(a.contains(&"--data-dir=/tmp/twlx/twls1.data".to_string()));
        assert_eq!(
            c.client_urls(),
            [
                "http://10.244.128.1:2379",
                "http://10.244.128.1:2479",
                "http://10.244.128.1:2579"
            ]
        );
    }
}
