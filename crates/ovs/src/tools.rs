//! The I/O edge: `ovs-vsctl` and `ovs-ofctl` against one run directory (where
//! ovsdb-server's `db.sock` and ovs-vswitchd's control and bridge sockets are).

use crate::db::Snapshot;
use crate::{flows, neigh, Error};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How long one tool call may wait for a daemon (`--timeout`), in seconds.
pub const TIMEOUT_SECONDS: u32 = 5;

/// The tools, for one OVS.
#[derive(Debug, Clone)]
pub struct Tools {
    rundir: PathBuf,
    /// Run before each tool (tests: `ip netns exec NS`).
    prefix: Vec<String>,
}

impl Tools {
    pub fn new(rundir: &Path) -> Tools {
        Tools {
            rundir: rundir.to_owned(),
            prefix: Vec::new(),
        }
    }

    /// Runs every tool as `prefix… tool args…`.
    pub fn with_prefix(mut self, prefix: Vec<String>) -> Tools {
        self.prefix = prefix;
        self
    }

    pub fn rundir(&self) -> &Path {
        &self.rundir
    }

    /// ovsdb-server's socket.
    pub fn db_socket(&self) -> PathBuf {
        self.rundir.join("db.sock")
    }

    /// Runs `program args…` (with the prefix, `OVS_RUNDIR` set), `stdin` fed in.
    pub fn run(
        &self,
        tool: &'static str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, Error> {
        let (program, lead): (&str, &[String]) = match self.prefix.split_first() {
            Some((p, rest)) => (p.as_str(), rest),
            None => (tool, &[]),
        };
        let mut cmd = Command::new(program);
        cmd.args(lead);
        if !self.prefix.is_empty() {
            cmd.arg(tool);
        }
        cmd.args(args)
            .env("OVS_RUNDIR", &self.rundir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Error::Missing {
            tool,
            reason: e.to_string(),
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| Error::Failed {
            tool,
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // `ip netns exec` reports a missing program itself.
        if !out.status.success()
            && stderr.contains("No such file or directory")
            && stderr.contains(tool)
        {
            return Err(Error::Missing {
                tool,
                reason: stderr,
            });
        }
        if !out.status.success() {
            return Err(Error::Failed {
                tool,
                args: args.join(" "),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The installed version, checked ([`crate::check_version`]); ovs-ofctl must exist too.
    pub fn version(&self) -> Result<(u32, u32), Error> {
        let text = self.run("ovs-vsctl", &["--version".into()], None)?;
        let v = crate::check_version(&text)?;
        self.run("ovs-ofctl", &["--version".into()], None)?;
        Ok(v)
    }

    fn vsctl_args(&self, wait: bool, args: &[String]) -> Vec<String> {
        let mut a = vec![
            format!("--db=unix:{}", self.db_socket().display()),
            format!("--timeout={TIMEOUT_SECONDS}"),
        ];
        if !wait {
            a.push("--no-wait".into());
        }
        a.extend(args.iter().cloned());
        a
    }

    /// One `ovs-vsctl` transaction; `wait`: until ovs-vswitchd applied it.
    pub fn vsctl(&self, args: &[String], wait: bool) -> Result<String, Error> {
        self.run("ovs-vsctl", &self.vsctl_args(wait, args), None)
    }

    /// The bridges, ports and interfaces (one read-only call).
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let q: Vec<String> = Snapshot::QUERY.iter().map(|s| s.to_string()).collect();
        Snapshot::parse(&self.vsctl(&q, false)?)
    }

    /// The cookies of Twill's flows on `bridge`.
    pub fn flow_cookies(&self, bridge: &str) -> Result<BTreeSet<u64>, Error> {
        let out = self.run(
            "ovs-ofctl",
            &[
                format!("--timeout={TIMEOUT_SECONDS}"),
                "dump-flows".into(),
                "--no-stats".into(),
                bridge.into(),
                flows::cookie_filter(),
            ],
            None,
        )?;
        Ok(flows::cookies(&out))
    }

    /// Runs a [`flows::script`] as one bundle (all or nothing).
    pub fn apply_flows(&self, bridge: &str, script: &str) -> Result<(), Error> {
        self.run(
            "ovs-ofctl",
            &[
                format!("--timeout={TIMEOUT_SECONDS}"),
                "--bundle".into(),
                "add-flows".into(),
                bridge.into(),
                "-".into(),
            ],
            Some(script),
        )
        .map(drop)
    }

    /// `ovs-appctl -t <the live ovs-vswitchd's control socket> ARGS…`.
    pub fn vswitchd_appctl(&self, args: &[String]) -> Result<String, Error> {
        let pid = self.vswitchd_pid().ok_or_else(|| Error::Failed {
            tool: "ovs-appctl",
            args: args.join(" "),
            stderr: format!(
                "no live ovs-vswitchd control socket in {}",
                self.rundir.display()
            ),
        })?;
        let mut a = vec![
            format!("--timeout={TIMEOUT_SECONDS}"),
            "-t".to_string(),
            self.rundir
                .join(format!("ovs-vswitchd.{pid}.ctl"))
                .display()
                .to_string(),
        ];
        a.extend(args.iter().cloned());
        self.run("ovs-appctl", &a, None)
    }

    /// ovs-vswitchd's tunnel neighbour cache (`tnl/neigh/show`).
    pub fn tunnel_neighbours(&self) -> Result<Vec<neigh::CacheEntry>, Error> {
        Ok(neigh::parse_cache(
            &self.vswitchd_appctl(&["tnl/neigh/show".into()])?,
        ))
    }

    /// `tnl/neigh/set BRIDGE IP MAC`.
    pub fn set_tunnel_neighbour(
        &self,
        bridge: &str,
        ip: Ipv4Addr,
        mac: &[u8; 6],
    ) -> Result<(), Error> {
        self.vswitchd_appctl(&[
            "tnl/neigh/set".into(),
            bridge.into(),
            ip.to_string(),
            flows::format_mac(mac),
        ])
        .map(drop)
    }

    /// The host's main routing table (`ip -j -4 route show table main`).
    pub fn kernel_routes(&self) -> Result<Vec<neigh::KernelRoute>, Error> {
        let args = ["-j", "-4", "route", "show", "table", "main"].map(String::from);
        let text = self.run("ip", &args, None)?;
        neigh::parse_routes(&text).map_err(|reason| Error::Decode {
            what: "ip -j route show".into(),
            reason,
        })
    }

    /// The host's IPv4 neighbours (`ip -j -4 neigh show`).
    pub fn kernel_neighbours(&self) -> Result<Vec<neigh::KernelNeighbour>, Error> {
        let args = ["-j", "-4", "neigh", "show"].map(String::from);
        let text = self.run("ip", &args, None)?;
        neigh::parse_neighbours(&text).map_err(|reason| Error::Decode {
            what: "ip -j neigh show".into(),
            reason,
        })
    }

    /// The kernel link `dev` (`ip -j -d link show dev DEV`): None when there is none.
    pub fn link(&self, dev: &str) -> Result<Option<crate::join::LinkState>, Error> {
        let args = ["-j", "-d", "link", "show", "dev", dev].map(String::from);
        match self.run("ip", &args, None) {
            Ok(text) => crate::join::parse_link(&text).map_err(|reason| Error::Decode {
                what: format!("ip -j -d link show dev {dev}"),
                reason,
            }),
            // `ip` says so on stderr with a failure: no such device.
            Err(Error::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `arp_ignore` of `all` and of `dev` (/proc/sys/net/ipv4/conf/*/arp_ignore).
    pub fn arp_ignore(&self, dev: &str) -> Result<[u8; 2], Error> {
        let path = |d: &str| format!("/proc/sys/net/ipv4/conf/{d}/arp_ignore");
        let text = self.run("cat", &[path("all"), path(dev)], None)?;
        let v: Vec<u8> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        match v[..] {
            [all, d] => Ok([all, d]),
            _ => Err(Error::Decode {
                what: format!("arp_ignore of all and {dev}"),
                reason: format!("{text:?}"),
            }),
        }
    }

    /// Asks the host's kernel to resolve `ip` on `dev` now (`ip neigh replace IP dev DEV
    /// use`: NTF_USE, an ARP request without any packet to send).
    pub fn kernel_resolve(&self, ip: Ipv4Addr, dev: &str) -> Result<(), Error> {
        let args = ["neigh", "replace", &ip.to_string(), "dev", dev, "use"].map(String::from);
        self.run("ip", &args, None).map(drop)
    }

    /// ovsdb-server accepts a connection on its socket.
    pub fn db_alive(&self) -> bool {
        UnixStream::connect(self.db_socket()).is_ok()
    }

    /// The PID of the live ovs-vswitchd: the `ovs-vswitchd.PID.ctl` in the run directory
    /// that accepts a connection (a dead daemon's socket file stays, refusing). None: not
    /// running.
    pub fn vswitchd_pid(&self) -> Option<u32> {
        self.live_ctl("ovs-vswitchd")
    }

    pub fn vswitchd_alive(&self) -> bool {
        self.vswitchd_pid().is_some()
    }

    /// The PID of the live ovsdb-server, from its `ovsdb-server.PID.ctl` (None when it runs
    /// with its control socket elsewhere or not at all; [`Tools::db_alive`] is the test of
    /// life).
    pub fn db_pid(&self) -> Option<u32> {
        self.live_ctl("ovsdb-server")
    }

    /// Who runs now: (ovsdb-server answers, its PID, ovs-vswitchd's PID). A daemon killed
    /// and started again between two looks has another PID, so a restart is seen however
    /// short it was.
    pub fn liveness(&self) -> Liveness {
        Liveness {
            db_up: self.db_alive(),
            db_pid: self.db_pid(),
            vswitchd_pid: self.vswitchd_pid(),
        }
    }

    fn live_ctl(&self, daemon: &str) -> Option<u32> {
        let dir = std::fs::read_dir(&self.rundir).ok()?;
        dir.flatten().find_map(|e| {
            let pid = ctl_pid(&e.file_name().to_string_lossy(), daemon)?;
            UnixStream::connect(e.path()).is_ok().then_some(pid)
        })
    }
}

/// What [`Tools::liveness`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Liveness {
    pub db_up: bool,
    pub db_pid: Option<u32>,
    pub vswitchd_pid: Option<u32>,
}

/// `DAEMON.PID.ctl` (OVS's unixctl socket name) to PID.
pub fn ctl_pid(file: &str, daemon: &str) -> Option<u32> {
    file.strip_prefix(daemon)?
        .strip_prefix('.')?
        .strip_suffix(".ctl")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_socket_names_give_the_pid() {
        assert_eq!(ctl_pid("ovs-vswitchd.4242.ctl", "ovs-vswitchd"), Some(4242));
        assert_eq!(ctl_pid("ovsdb-server.7.ctl", "ovsdb-server"), Some(7));
        assert_eq!(ctl_pid("ovsdb-server.7.ctl", "ovs-vswitchd"), None);
        assert_eq!(ctl_pid("ovs-vswitchd.pid", "ovs-vswitchd"), None);
        assert_eq!(ctl_pid("ovs-vswitchd.x.ctl", "ovs-vswitchd"), None);
        assert_eq!(ctl_pid("ovs-vswitchd.12.ctlx", "ovs-vswitchd"), None);
    }

    #[test]
    fn liveness_reads_a_listening_control_socket_and_skips_a_dead_one() {
        let dir = std::env::temp_dir().join(format!("twlovsctl{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Tools::new(&dir);
        assert_eq!(t.liveness(), Liveness::default());
        // A dead daemon's socket file: it refuses.
        drop(std::os::unix::net::UnixListener::bind(dir.join("ovs-vswitchd.11.ctl")).unwrap());
        assert_eq!(t.vswitchd_pid(), None);
        let _live =
            std::os::unix::net::UnixListener::bind(dir.join("ovs-vswitchd.12.ctl")).unwrap();
        let _db = std::os::unix::net::UnixListener::bind(dir.join("db.sock")).unwrap();
        assert_eq!(
            t.liveness(),
            Liveness {
                db_up: true,
                db_pid: None,
                vswitchd_pid: Some(12)
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
