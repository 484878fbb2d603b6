//! FRR 8.4 (zebra + bgpd, in the foreground so their PIDs are ours) in a node's namespace,
//! started from a bgpd config string, driven with `vtysh … json`.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use twill_testkit::{sh, try_sh, TempDir};

use super::net::Node;
use super::proc::{stop_all, Daemon};
use super::wait;

pub struct Frr {
    pub dir: TempDir,
    pub zebra: Daemon,
    pub bgpd: Daemon,
}

impl Frr {
    /// Starts zebra, waits for its zserv socket, then bgpd on `bgpd_conf` (a whole
    /// `router bgp …` config). They drop to user frr, so the directory is chowned to it.
    pub fn start(node: &Node, bgpd_conf: &str) -> Frr {
        let dir = TempDir::new("frr");
        let d = dir.path.to_str().unwrap().to_string();
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(
            dir.path.join("zebra.conf"),
            format!(
                "hostname {}\nlog file {d}/zebra.log informational\n",
                node.name()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path.join("bgpd.conf"),
            format!(
                "hostname {}\nlog file {d}/bgpd.log debugging\n{bgpd_conf}\n",
                node.name()
            ),
        )
        .unwrap();
        sh(&["chown", "-R", "frr:frr", &d]);
        let zserv = format!("{d}/zserv.api");
        let common = [
            "-u",
            "frr",
            "-g",
            "frr",
            "-P",
            "0",
            "-z",
            &zserv,
            "--vty_socket",
            &d,
        ];
        let daemon = |name: &str| {
            let mut args = vec![format!("/usr/lib/frr/{name}")];
            args.extend(common.iter().map(|s| s.to_string()));
            args.extend([
                "-f".into(),
                format!("{d}/{name}.conf"),
                "-i".into(),
                format!("{d}/{name}.pid"),
            ]);
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            Daemon::spawn(
                name,
                node.name(),
                &args,
                &dir.path.join(format!("{name}.out")),
            )
        };
        let mut zebra = daemon("zebra");
        wait::until("zebra's zserv socket", Duration::from_secs(10), || {
            zebra.assert_running();
            if std::path::Path::new(&zserv).exists() {
                Ok(())
            } else {
                Err("no socket yet".into())
            }
        });
        let bgpd = daemon("bgpd");
        let mut frr = Frr { dir, zebra, bgpd };
        let f = &mut frr;
        wait::until("bgpd's vty", Duration::from_secs(10), || {
            f.bgpd.assert_running();
            f.try_vtysh(&["show bgp summary json"]).map(|_| ())
        });
        frr
    }

    /// `vtysh --vty_socket DIR -c CMD…`, its output or the error.
    pub fn try_vtysh(&self, cmds: &[&str]) -> Result<String, String> {
        let mut argv = vec!["vtysh", "--vty_socket", self.dir.path.to_str().unwrap()];
        for c in cmds {
            argv.extend(["-c", c]);
        }
        let (ok, out, err) = try_sh(&argv);
        if ok {
            Ok(out)
        } else {
            Err(format!("vtysh {cmds:?}: {out}{err}"))
        }
    }

    pub fn vtysh(&self, cmds: &[&str]) -> String {
        self.try_vtysh(cmds).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A `… json` show command, parsed.
    pub fn json(&self, cmd: &str) -> serde_json::Value {
        let out = self.vtysh(&[cmd]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("vtysh {cmd}: not JSON ({e}): {out}"))
    }

    /// The BGP state of neighbor `peer` ("Established", "Active", "Connect", "Idle", …).
    pub fn peer_state(&self, peer: &str) -> Result<String, String> {
        let out = self.try_vtysh(&[&format!("show bgp neighbors {peer} json")])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        v[peer]["bgpState"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("no neighbor {peer}: {out}"))
    }

    /// The neighbor's whole `show bgp neighbors PEER json` entry (counters, capabilities,
    /// graceful-restart state).
    pub fn neighbor(&self, peer: &str) -> serde_json::Value {
        self.json(&format!("show bgp neighbors {peer} json"))[peer].clone()
    }

    pub fn wait_established(&self, peer: &str, timeout: Duration) -> Duration {
        let probe = || match self.peer_state(peer) {
            Ok(s) if s == "Established" => Ok(()),
            Ok(s) => Err(s),
            Err(e) => Err(e),
        };
        match wait::try_until(timeout, probe) {
            Ok(((), took)) => took,
            Err(last) => panic!(
                "timed out after {timeout:?} waiting for FRR neighbor {peer} Established; \
                 last seen: {last}; bgpd's log ends:\n{}",
                super::bird::tail(&self.log_text(), 30)
            ),
        }
    }

    /// `show bgp ipv4|ipv6 unicast json`: its "routes" object, prefix -> paths.
    pub fn routes(&self, afi: &str) -> serde_json::Map<String, serde_json::Value> {
        self.json(&format!("show bgp {afi} unicast json"))["routes"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    /// The detailed paths of one prefix (`show bgp ipv4 unicast PREFIX json`: communities,
    /// originator, cluster list, stale flags).
    pub fn paths(&self, prefix: &str) -> Vec<serde_json::Value> {
        let afi = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        self.json(&format!("show bgp {afi} unicast {prefix} json"))["paths"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The number of prefixes bgpd holds for a family (`show bgp ipv4 unicast summary`).
    pub fn prefix_count(&self, peer: &str) -> u64 {
        let v = self.json("show bgp summary json");
        v["ipv4Unicast"]["peers"][peer]["pfxRcd"]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("bgpd.log")).unwrap_or_default()
    }

    /// SIGTERM to bgpd and zebra together; each needs 1–3 s to exit.
    pub fn stop(&mut self) {
        stop_all(
            &mut [&mut self.bgpd, &mut self.zebra],
            Duration::from_secs(8),
        );
    }

    /// SIGKILL bgpd only (zebra, and with it the kernel routes, stays): a crash.
    pub fn kill_bgpd(&mut self) {
        self.bgpd.kill();
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        self.stop();
    }
}
