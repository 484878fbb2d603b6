//! etcd processes for tests: single members and 3-member clusters on loopback, plain or
//! TLS, on free ports, with data in `twl…` temp dirs. Only processes started here are
//! signalled, by PID; every member is killed and waited for on drop.
//!
//! Health and leadership are read from the plain-HTTP metrics listener
//! (`--listen-metrics-urls`: `/health`, `etcd_server_is_leader`), so TLS members are
//! checked the same way without a TLS client here.

use crate::{sh, unique_name, TempDir};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port: bound to port 0, then released for etcd to take.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP GET on loopback: (status, body), or None if nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    Some((
        status,
        raw.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

/// Certificates for a TLS etcd: a CA, a server certificate for 127.0.0.1 / localhost and
/// a client certificate, made with the `openssl` CLI.
pub struct EtcdTls {
    pub dir: TempDir,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    pub fn generate() -> EtcdTls {
        let dir = TempDir::new("etcdtls");
        let p = |f: &str| dir.path.join(f);
        let s = |f: &str| p(f).to_string_lossy().into_owned();
        sh(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &s("ca.key"),
            "-out",
            &s("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=twill test CA",
        ]);
        std::fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        std::fs::write(p("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (who, cn) in [("server", "etcd"), ("client", "twill-agent")] {
            sh(&[
                "openssl",
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &s(&format!("{who}.key")),
                "-out",
                &s(&format!("{who}.csr")),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            sh(&[
                "openssl",
                "x509",
                "-req",
                "-in",
                &s(&format!("{who}.csr")),
                "-CA",
                &s("ca.pem"),
                "-CAkey",
                &s("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&format!("{who}.ext")),
                "-out",
                &s(&format!("{who}.pem")),
            ]);
        }
        EtcdTls {
            ca_file: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            dir,
        }
    }
}

/// One etcd process (or a stopped one, kept with its ports and data for a restart).
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    tls: bool,
    args: Vec<String>,
    child: Option<Child>,
    // Last field: removed after the process is gone.
    dir: TempDir,
}

struct Ports {
    client: u16,
    peer: u16,
    metrics: u16,
}

impl Ports {
    fn pick() -> Ports {
        Ports {
            client: free_port(),
            peer: free_port(),
            metrics: free_port(),
        }
    }
}

impl EtcdMember {
    /// A single-member cluster, healthy when this returns.
    pub fn start(name: &str) -> EtcdMember {
        Self::start_single(name, None)
    }

    /// A single member serving clients over https with `--client-cert-auth`.
    pub fn start_tls(name: &str, tls: &EtcdTls) -> EtcdMember {
        Self::start_single(name, Some(tls))
    }

    fn start_single(name: &str, tls: Option<&EtcdTls>) -> EtcdMember {
        // A port picked free may be taken again before etcd binds it: retry with others.
        let mut last_log = String::new();
        for _ in 0..3 {
            let ports = Ports::pick();
            let name = unique_name(name, 40);
            let cluster = format!("{name}=http://127.0.0.1:{}", ports.peer);
            let mut m = Self::spawn(&name, ports, &cluster, &unique_name("tok", 40), tls);
            if m.wait_healthy(Duration::from_secs(10)) {
                return m;
            }
            last_log = m.log_tail();
        }
        panic!("etcd {name} did not become healthy; log tail:\n{last_log}");
    }

    fn spawn(
        name: &str,
        ports: Ports,
        initial_cluster: &str,
        token: &str,
        tls: Option<&EtcdTls>,
    ) -> EtcdMember {
        let dir = TempDir::new("etcd");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", ports.client);
        let peer_url = format!("http://127.0.0.1:{}", ports.peer);
        let mut args: Vec<String> = [
            "--name",
            name,
            "--data-dir",
            &dir.path.join("data").to_string_lossy(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{}", ports.metrics),
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            token,
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            "--log-outputs",
            &dir.path.join("etcd.log").to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(t) = tls {
            for (flag, path) in [
                ("--cert-file", &t.server_cert),
                ("--key-file", &t.server_key),
                ("--trusted-ca-file", &t.ca_file),
            ] {
                args.push(flag.into());
                args.push(path.to_string_lossy().into_owned());
            }
            args.push("--client-cert-auth".into());
        }
        let mut m = EtcdMember {
            name: name.to_string(),
            client_port: ports.client,
            peer_port: ports.peer,
            metrics_port: ports.metrics,
            tls: tls.is_some(),
            args,
            child: None,
            dir,
        };
        m.launch();
        m
    }

    fn launch(&mut self) {
        assert!(
            self.child.is_none(),
            "etcd {} is already running",
            self.name
        );
        let child = Command::new("etcd")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd (install etcd-server): {e}"));
        self.child = Some(child);
    }

    pub fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Polls `/health` until it says true; false if the process exits or time runs out.
    pub fn wait_healthy(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            } else {
                return false;
            }
            if let Some((200, body)) = http_get(self.metrics_port, "/health") {
                if body.contains("\"health\":\"true\"") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether this member is the leader now (`etcd_server_is_leader` in its metrics).
    pub fn is_leader(&self) -> bool {
        self.child.is_some()
            && http_get(self.metrics_port, "/metrics").is_some_and(|(_, body)| {
                body.lines().any(|l| l.trim() == "etcd_server_is_leader 1")
            })
    }

    fn signal_and_wait(&mut self, signal: libc::c_int) {
        if let Some(mut child) = self.child.take() {
            // Our own child, by PID: it cannot have been reaped and reused before wait().
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit (it may take a few seconds).
    pub fn stop(&mut self) {
        self.signal_and_wait(libc::SIGTERM);
    }

    /// SIGKILL, then waits for the process to exit.
    pub fn kill(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// Starts the stopped member again with its ports and data (it rejoins its cluster).
    /// Does not wait for health: a lone member of a 3-cluster is not healthy.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// The end of etcd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Members forming one cluster on loopback.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// `n` members, all healthy (a leader elected) when this returns.
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, None)
    }

    pub fn start_tls(n: usize, tls: &EtcdTls) -> EtcdCluster {
        Self::start_with(n, Some(tls))
    }

    fn start_with(n: usize, tls: Option<&EtcdTls>) -> EtcdCluster {
        let mut last_log = String::new();
        for _ in 0..3 {
            let names: Vec<String> = (0..n).map(|i| unique_name(&format!("m{i}"), 40)).collect();
            let ports: Vec<Ports> = (0..n).map(|_| Ports::pick()).collect();
            let initial = names
                .iter()
                .zip(&ports)
                .map(|(name, p)| format!("{name}=http://127.0.0.1:{}", p.peer))
                .collect::<Vec<_>>()
                .join(",");
            let token = unique_name("tok", 40);
            let members: Vec<EtcdMember> = names
                .iter()
                .zip(ports)
                .map(|(name, p)| EtcdMember::spawn(name, p, &initial, &token, tls))
                .collect();
            let mut cluster = EtcdCluster { members };
            if cluster
                .members
                .iter_mut()
                .all(|m| m.wait_healthy(Duration::from_secs(15)))
            {
                return cluster;
            }
            last_log = cluster
                .members
                .iter()
                .map(|m| format!("--- {}\n{}", m.name, m.log_tail()))
                .collect();
        }
        panic!("etcd cluster of {n} did not become healthy:\n{last_log}");
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    pub fn stop(&mut self, i: usize) {
        self.members[i].stop();
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    pub fn restart(&mut self, i: usize) {
        self.members[i].restart();
    }

    /// The index of the running member that is leader now, if any.
    pub fn leader_index(&self) -> Option<usize> {
        self.members.iter().position(EtcdMember::is_leader)
    }

    /// Waits until some member leads.
    pub fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader_index() {
                return Some(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
