//! Twill's own speaker, `twill bgp serve --config FILE`, in a node's namespace, read back
//! with `twill bgp neighbors -o json` and `twill bgp rib -o json` over its control socket.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use twill_testkit::{try_sh, TempDir};

use super::net::Node;
use super::proc::Daemon;
use super::wait;

/// The workspace's `twill` binary ([`twill_testkit::workspace_bin`]).
///
/// `TWILL_BIN=/path/to/twill` runs that binary instead (a release build, or one built
/// elsewhere); nothing is built then.
pub fn twill_bin() -> PathBuf {
    std::env::var_os("TWILL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| twill_testkit::workspace_bin("twill", "twill"))
}

/// A counter of a `neighbors` JSON object under either spelling (camelCase or snake_case):
/// `count(&n["received"], "routeRefresh")`. 0 when absent.
pub fn count(v: &Value, camel: &str) -> u64 {
    let snake: String = camel
        .chars()
        .flat_map(|c| {
            if c.is_ascii_uppercase() {
                vec!['_', c.to_ascii_lowercase()]
            } else {
                vec![c]
            }
        })
        .collect();
    v[camel]
        .as_u64()
        .or_else(|| v[snake.as_str()].as_u64())
        .unwrap_or(0)
}

/// A peer entry with the suite's short timers (hold 9, keepalive 3, connect retry 1 s).
pub fn peer(address: &str, asn: u32) -> Value {
    json!({"address": address, "as": asn, "holdTime": 9, "connectRetry": 1})
}

pub struct Twill {
    pub dir: TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub daemon: Daemon,
    ns: String,
    starts: u32,
}

impl Twill {
    /// Writes `config` (its `controlSocket` set to one in the test's directory) and starts
    /// `twill bgp serve` on it inside `node`, then waits for its control socket to answer.
    pub fn start(node: &Node, mut config: Value) -> Twill {
        let dir = TempDir::new("twill");
        let socket = dir.path.join("bgp.sock");
        config["controlSocket"] = json!(socket);
        let path = dir.path.join("bgp.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let daemon = Twill::spawn(node.name(), &dir, &path, 1);
        let mut t = Twill {
            dir,
            config: path,
            socket,
            daemon,
            ns: node.name().to_string(),
            starts: 1,
        };
        t.wait_ready();
        t
    }

    fn spawn(ns: &str, dir: &TempDir, config: &std::path::Path, n: u32) -> Daemon {
        let bin = twill_bin();
        Daemon::spawn(
            "twill bgp serve",
            ns,
            &[
                bin.to_str().unwrap(),
                "bgp",
                "serve",
                "--config",
                config.to_str().unwrap(),
            ],
            &dir.path.join(format!("serve{n}.log")),
        )
    }

    fn wait_ready(&mut self) {
        let t = &mut *self;
        wait::until(
            "twill bgp serve's control socket",
            Duration::from_secs(15),
            || {
                t.daemon.assert_running();
                t.try_query("neighbors").map(|_| ())
            },
        );
    }

    /// Starts it again on the same config (after [`Twill::kill`]), as a restart would.
    pub fn restart(&mut self) {
        assert!(!self.daemon.running(), "restart of a running twill");
        self.starts += 1;
        self.daemon = Twill::spawn(&self.ns, &self.dir, &self.config, self.starts);
        self.wait_ready();
    }

    /// `twill bgp neighbors|rib -o json --socket S`, parsed, or why not.
    pub fn try_query(&self, what: &str) -> Result<Value, String> {
        let bin = twill_bin();
        let (ok, out, err) = try_sh(&[
            bin.to_str().unwrap(),
            "bgp",
            what,
            "-o",
            "json",
            "--socket",
            self.socket.to_str().unwrap(),
        ]);
        if !ok {
            return Err(format!("twill bgp {what}: {err}{out}"));
        }
        serde_json::from_str(&out).map_err(|e| format!("twill bgp {what}: not JSON ({e}): {out}"))
    }

    pub fn neighbors(&self) -> Value {
        self.try_query("neighbors")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `neighbors` entry of the peer configured as `peer` (its address as written).
    pub fn neighbor(&self, peer: &str) -> Result<Value, String> {
        let v = self.try_query("neighbors")?;
        v["neighbors"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["peer"] == peer).cloned())
            .ok_or_else(|| format!("no neighbor {peer} in {v}"))
    }

    pub fn state(&self, peer: &str) -> Result<String, String> {
        Ok(self.neighbor(peer)?["state"]
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    pub fn wait_established(&self, peer: &str, timeout: Duration) -> Duration {
        let probe = || match self.neighbor(peer) {
            Ok(n) if n["state"] == "Established" => Ok(()),
            Ok(n) => Err(n.to_string()),
            Err(e) => Err(e),
        };
        match wait::try_until(timeout, probe) {
            Ok(((), took)) => took,
            Err(last) => panic!(
                "timed out after {timeout:?} waiting for Twill's session with {peer} \
                 Established; last seen: {last}; its log ends:\n{}",
                super::bird::tail(&self.log_text(), 30)
            ),
        }
    }

    /// `twill bgp rib -o json`: its routes, prefix -> paths.
    pub fn rib(&self) -> Vec<Value> {
        let v = self.try_query("rib").unwrap_or_else(|e| panic!("{e}"));
        v["routes"].as_array().cloned().unwrap_or_default()
    }

    /// The paths Twill holds for exactly `prefix`.
    pub fn paths(&self, prefix: &str) -> Vec<Value> {
        self.rib()
            .into_iter()
            .find(|r| r["prefix"] == prefix)
            .and_then(|r| r["paths"].as_array().cloned())
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        for n in 1..=self.starts {
            s += &std::fs::read_to_string(self.dir.path.join(format!("serve{n}.log")))
                .unwrap_or_default();
        }
        s
    }

    /// SIGKILL: a crash (its kernel routes stay).
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    pub fn stop(&mut self) {
        self.daemon.stop(Duration::from_secs(10));
    }
}

impl Drop for Twill {
    fn drop(&mut self) {
        self.stop();
    }
}
