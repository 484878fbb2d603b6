//! Drives `tests/peer/bgp_peer.py`, the scripted raw-socket BGP peer, from a node's
//! namespace: one process per session, commands on its stdin, one JSON answer per line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use super::net::Node;

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer/bgp_peer.py");

/// What one malformed message must get, by the RFC, as the script's table says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Treat-as-withdraw: the prefix goes, the session stays.
    Withdraw,
    /// The prefix stays and so does the session ("discard", "keep" and "ignore" in the
    /// script: the differences are in attributes, which the caller checks).
    Kept,
    /// A NOTIFICATION with this code and subcode, then the session closes.
    Notify(u8, u8),
}

impl Outcome {
    pub fn from_script(v: &Value) -> Outcome {
        match v {
            Value::String(s) if s == "withdraw" => Outcome::Withdraw,
            Value::String(s) if ["discard", "keep", "ignore"].contains(&s.as_str()) => {
                Outcome::Kept
            }
            Value::Array(a) if a.len() == 2 => {
                Outcome::Notify(a[0].as_u64().unwrap() as u8, a[1].as_u64().unwrap() as u8)
            }
            other => panic!("bgp_peer.py: unknown outcome {other}"),
        }
    }
}

/// The script's cases: name -> (RFC outcome, the RFC's words), in the script's order.
pub fn cases() -> Vec<(String, Outcome, String)> {
    let out = Command::new("python3")
        .args([SCRIPT, "--list"])
        .output()
        .expect("run bgp_peer.py --list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Map<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|(k, c)| {
            (
                k,
                Outcome::from_script(&c["outcome"]),
                c["rfc"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

pub struct PyPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The speaker's OPEN and our local address, as the script reported them.
    pub established: Value,
}

impl PyPeer {
    /// Connects from `node` (bound to `local`) to `host`:179 as AS `asn` and waits for
    /// Established; Err says why not (the script's words).
    pub fn connect(node: &Node, local: &str, host: &str, asn: u32) -> Result<PyPeer, String> {
        PyPeer::connect_hold(node, local, host, asn, 9)
    }

    /// [`PyPeer::connect`] offering hold time `hold`.
    pub fn connect_hold(
        node: &Node,
        local: &str,
        host: &str,
        asn: u32,
        hold: u16,
    ) -> Result<PyPeer, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", node.name(), "python3", SCRIPT])
            .args([
                "--host",
                host,
                "--asn",
                &asn.to_string(),
                "--router-id",
                local,
            ])
            .args(["--local", local, "--hold", &hold.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {SCRIPT}: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v.get("established").is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("bgp_peer.py: {line}"));
        }
        Ok(PyPeer {
            established: v["established"].clone(),
            child,
            stdin,
            stdout,
        })
    }

    /// One command, its JSON answer.
    pub fn command(&mut self, cmd: &str) -> Value {
        writeln!(self.stdin, "{cmd}").expect("write to bgp_peer.py");
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read bgp_peer.py");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bgp_peer.py said {line:?}: {e}"))
    }

    pub fn announce(&mut self, prefix: &str) -> Value {
        self.command(&format!("announce {prefix}"))
    }

    /// Sends the malformed message `case` about `prefix`.
    pub fn case(&mut self, case: &str, prefix: &str) -> Value {
        self.command(&format!("case {case} {prefix}"))
    }

    /// What the speaker sent in `secs` (keepalives left out), and whether it closed.
    pub fn wait(&mut self, secs: f64) -> Value {
        self.command(&format!("wait {secs}"))
    }

    /// The NOTIFICATION among `received`, if any, as (code, subcode, data hex).
    pub fn notification(answer: &Value) -> Option<(u8, u8, String)> {
        answer["received"].as_array()?.iter().find_map(|m| {
            (m["type"] == 3).then(|| {
                (
                    m["code"].as_u64().unwrap() as u8,
                    m["subcode"].as_u64().unwrap() as u8,
                    m["data"].as_str().unwrap_or("").to_string(),
                )
            })
        })
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
