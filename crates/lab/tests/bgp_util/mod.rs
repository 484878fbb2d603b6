//! What the Calico-mode proofs share: the real `twill` (with `twilld` and `twill-cni` built
//! next to it, where the lab looks for them), a lab that is removed however the test ends,
//! its check rows, its state (agents' PIDs), kernels read back with `ip -j`, a route monitor
//! (`ip monitor route`) and bounded waits. Lab names are `twl` + a letter per test + 4 hex
//! digits of the PID: unique per test and run.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `twill`, with `twilld` and `twill-cni` brought up to date beside it.
pub fn twill_bin() -> PathBuf {
    let t = twill_testkit::workspace_bin("twill", "twill");
    twill_testkit::workspace_bin("twilld", "twilld");
    twill_testkit::workspace_bin("twill-cni", "twill-cni");
    t
}

pub fn twill(args: &[&str]) -> Output {
    Command::new(twill_bin())
        .args(args)
        .output()
        .expect("run twill")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn ip_json(netns: &str, args: &[&str]) -> Value {
    let out = Command::new("ip")
        .args(["-j", "-n", netns])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    if s.trim().is_empty() {
        Value::Array(vec![])
    } else {
        serde_json::from_str(&s).unwrap()
    }
}

/// The destinations of `ip -j route show ...` in `netns`.
pub fn route_dsts(netns: &str, args: &[&str]) -> Vec<String> {
    let mut a = vec!["route", "show"];
    a.extend_from_slice(args);
    ip_json(netns, &a)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["dst"].as_str().map(String::from))
        .collect()
}

/// Waits up to `timeout` for `f` to give a value; panics naming `what` and the last answer.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return (v, start.elapsed()),
            Err(last) => assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A lab, taken down however the test ends.
pub struct Lab {
    pub name: String,
}

impl Lab {
    /// `twill lab up --name twl<tag><pid> ARGS…`; panics with the output if it fails.
    pub fn up(tag: char, args: &[&str]) -> Lab {
        let name = format!("twl{tag}{:04x}", std::process::id() & 0xffff);
        let lab = Lab { name };
        let mut a = vec!["lab", "up", "--name", lab.name.as_str()];
        a.extend_from_slice(args);
        let up = twill(&a);
        assert!(
            up.status.success(),
            "lab up {args:?} failed:\n{}",
            text(&up)
        );
        lab
    }

    /// The namespace of member `m` (n1, rt, out, n1-p1).
    pub fn ns(&self, m: &str) -> String {
        format!("{}-{m}", self.name)
    }

    /// `twill lab check -o json`: every row as expected (panics with the others), the rows.
    pub fn check_all_pass(&self) -> Vec<Value> {
        let check = twill(&["lab", "check", "--name", &self.name, "-o", "json"]);
        let report: Value = serde_json::from_slice(&check.stdout)
            .unwrap_or_else(|e| panic!("check -o json: {e}\n{}", text(&check)));
        let rows = report["checks"].as_array().unwrap().clone();
        let bad: Vec<&Value> = rows
            .iter()
            .filter(|r| r["passed"] != true || r["expected"] != r["result"])
            .collect();
        assert!(
            check.status.success() && bad.is_empty() && !rows.is_empty(),
            "unexpected rows: {bad:#?}\n{}",
            text(&check)
        );
        rows
    }

    pub fn status(&self) -> Value {
        let st = twill(&["lab", "status", "--name", &self.name, "-o", "json"]);
        assert!(st.status.success(), "status: {}", text(&st));
        serde_json::from_slice(&st.stdout).expect("status -o json is JSON")
    }

    /// The blocks each node holds, by node name.
    pub fn blocks(&self) -> BTreeMap<String, Vec<String>> {
        self.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let blocks = n["blocks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_str().unwrap().to_string())
                    .collect();
                (n["name"].as_str().unwrap().to_string(), blocks)
            })
            .collect()
    }

    /// `/run/<name>/state.json`.
    pub fn state(&self) -> Value {
        let p = PathBuf::from("/run").join(&self.name).join("state.json");
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }

    /// The PID of node `node`'s twilld.
    pub fn agent_pid(&self, node: &str) -> u32 {
        let st = self.state();
        st["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["role"] == node)
            .and_then(|a| a["pid"].as_u64())
            .unwrap_or_else(|| panic!("no running agent {node} in {st}")) as u32
    }

    /// `twill lab exec --name N MEMBER -- ARGS…`.
    pub fn exec(&self, member: &str, args: &[&str]) -> Output {
        let mut a = vec!["lab", "exec", "--name", self.name.as_str(), member, "--"];
        a.extend_from_slice(args);
        twill(&a)
    }

    /// `twill node status -o json` inside node `node`: the routing sessions of every node.
    pub fn node_status(&self, node: &str) -> Value {
        let o = self.exec(node, &["twill", "node", "status", "-o", "json"]);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("node status -o json: {e}\n{}", text(&o)))
    }

    /// Waits until every node's kernel routes each other node's blocks with `proto`.
    pub fn wait_routes(&self, proto: &str, timeout: Duration) {
        let blocks = self.blocks();
        wait_for(
            "every node to route every other node's blocks",
            timeout,
            || {
                for node in blocks.keys() {
                    let have = route_dsts(&self.ns(node), &["proto", proto]);
                    for (other, bs) in blocks.iter().filter(|(o, _)| *o != node) {
                        for b in bs {
                            if !have.contains(b) {
                                return Err(format!(
                                    "{node} has no proto {proto} route to {b} of {other}: {have:?}"
                                ));
                            }
                        }
                    }
                }
                Ok(())
            },
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = twill(&["lab", "down", "--name", &self.name]);
    }
}

/// `ip -4 -n NS monitor route` in the background (IPv6 link-local churn of new pod links is
/// not routing), its output in a file: every route change the
/// kernel announces while it runs. Killed (it is our child) when finished or dropped.
pub struct RouteMonitor {
    child: Option<Child>,
    dir: twill_testkit::TempDir,
}

impl RouteMonitor {
    pub fn start(netns: &str) -> RouteMonitor {
        let dir = twill_testkit::TempDir::new("mon");
        let out = std::fs::File::create(dir.path.join("monitor")).unwrap();
        let child = Command::new("ip")
            .args(["-4", "-n", netns, "monitor", "route"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("run ip monitor");
        // Give it time to subscribe before the test acts.
        std::thread::sleep(Duration::from_millis(200));
        RouteMonitor {
            child: Some(child),
            dir,
        }
    }

    /// Stops it; the lines it printed.
    pub fn finish(mut self) -> Vec<String> {
        self.stop();
        std::fs::read_to_string(self.dir.path.join("monitor"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `bin` is installed; the tests need bird2, frr and iperf3 (scripts/install-deps.sh).
pub fn require(bin: &str) {
    let found = ["/usr/sbin", "/usr/bin", "/usr/lib/frr", "/sbin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(bin).is_file());
    assert!(
        found,
        "{bin} is not installed: scripts/install-deps.sh installs it"
    );
}
