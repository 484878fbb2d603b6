//! Test harness: a "node" namespace where twill-cni runs (as a runtime would run it on a
//! host), pod namespaces, and a leak check that reads the kernel back.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use twill_testkit::{TempDir, TestNetns};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_twill-cni");

pub struct Node {
    pub ns: TestNetns,
    pub data: TempDir,
    /// The node's pod subnet (`ipam.subnet`).
    pub subnet: String,
    /// `podWiring` in the config; None leaves it out (bridge, the default).
    pub wiring: Option<&'static str>,
}

/// The node's uplink address, towards the `outside` namespace of [`Node::uplink`].
pub const NODE_IP: &str = "192.0.2.11";
/// The outside host's address: no route to pods, so it only sees masqueraded traffic.
pub const OUTSIDE_IP: &str = "192.0.2.100";

pub struct Reply {
    pub ok: bool,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        let ns = TestNetns::new(tag);
        let data = TempDir::new(tag);
        Node {
            ns,
            data,
            subnet: "10.244.1.0/24".into(),
            wiring: None,
        }
    }

    /// A node whose config says `"podWiring": wiring`.
    pub fn wired(tag: &str, wiring: &'static str) -> Node {
        Node {
            wiring: Some(wiring),
            ..Node::new(tag)
        }
    }

    /// Gives the node an uplink: `NODE_IP` on a veth to `out`, which holds `OUTSIDE_IP`
    /// and is the node's default route (l3 pods' proxy ARP needs the node to route
    /// 169.254.1.1 somewhere).
    pub fn uplink(&self, out: &TestNetns) {
        twill_testkit::sh(&[
            "ip",
            "link",
            "add",
            "uplink",
            "netns",
            &self.ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &out.name,
        ]);
        self.ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "uplink",
        ]);
        self.ns.exec(&["ip", "link", "set", "uplink", "up"]);
        self.ns
            .exec(&["ip", "route", "add", "default", "via", OUTSIDE_IP]);
        out.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/24"),
            "dev",
            "eth0",
        ]);
        out.exec(&["ip", "link", "set", "eth0", "up"]);
    }

    pub fn conf(&self) -> Value {
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": "twltest",
            "type": "twill-cni",
            "bridge": "twl0",
            "clusterCIDR": "10.244.0.0/16",
            "capabilities": {"portMappings": true},
            "ipam": {"type": "twill", "subnet": self.subnet, "dataDir": self.data.path.join("ipam")},
        });
        if let Some(w) = self.wiring {
            conf["podWiring"] = w.into();
        }
        conf
    }

    /// Runs the plugin in the node's namespace exactly as a runtime does: env + stdin.
    pub fn cni(
        &self,
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
        conf: &Value,
    ) -> Reply {
        self.cni_raw(
            command,
            &[
                ("CNI_CONTAINERID", container_id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
            ],
            conf.to_string().as_bytes(),
        )
    }

    pub fn cni_raw(&self, command: &str, vars: &[(&str, &str)], stdin: &[u8]) -> Reply {
        let mut all = vec![("CNI_COMMAND", Some(command))];
        all.extend(vars.iter().map(|(k, v)| (*k, Some(*v))));
        self.run_plugin(&all, stdin)
    }

    /// Runs the plugin with exactly these variables (besides PATH and CNI_PATH); `None`
    /// leaves a variable unset, so a test can leave out even CNI_COMMAND.
    pub fn run_plugin(&self, vars: &[(&str, Option<&str>)], stdin: &[u8]) -> Reply {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name, PLUGIN])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd.spawn().expect("spawn twill-cni");
        // The plugin may exit before reading stdin (a bad environment is refused first):
        // a broken pipe here is its answer, not a harness failure.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Reply {
            ok: out.status.success(),
            json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts an ADD of `conf` in the node's namespace the way a runtime does, without
    /// waiting, with `path` as PATH (a test may put wrappers first). `ip netns exec` execs
    /// the plugin in place, so the child's pid is the plugin's.
    pub fn spawn_add(
        &self,
        conf: &Value,
        cid: &str,
        pod: &TestNetns,
        path: &str,
    ) -> std::process::Child {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, PLUGIN])
            .env_clear()
            .env("PATH", path)
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn twill-cni");
        // A plugin killed before it read its config makes this write fail: that is fine.
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes());
        child
    }

    pub fn add(&self, cid: &str, pod: &TestNetns) -> Value {
        let r = self.cni("ADD", cid, &pod.path(), "eth0", &self.conf());
        assert!(r.ok, "ADD {cid} failed: {} {}", r.stdout, r.stderr);
        r.json
    }

    pub fn del(&self, cid: &str, pod: &TestNetns, prev: Option<&Value>) {
        let mut conf = self.conf();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let r = self.cni("DEL", cid, &pod.path(), "eth0", &conf);
        assert!(r.ok, "DEL {cid} failed: {} {}", r.stdout, r.stderr);
        assert!(
            r.stdout.trim().is_empty(),
            "DEL prints nothing: {}",
            r.stdout
        );
    }

    /// Links in the node namespace other than lo and the bridge.
    pub fn veths(&self) -> Vec<String> {
        let out = self.ns.exec(&["ip", "-j", "link", "show"]);
        let links: Value = serde_json::from_slice(&out.stdout).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("twl") && *n != "twl0")
            .map(str::to_string)
            .collect()
    }

    /// Waits (up to 5 s) until no pod veth awaits DEL's reaper: a host veth that DEL took
    /// down is deleted by a detached child just after DEL returns.
    pub fn wait_reaped(&self) {
        let pending = || {
            let out = self.ns.exec(&["ip", "-j", "link", "show"]);
            let links: Value = serde_json::from_slice(&out.stdout).unwrap();
            links.as_array().unwrap().iter().any(|l| {
                let name = l["ifname"].as_str().unwrap_or("");
                let up = l["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "UP"));
                name.starts_with("twl") && name != "twl0" && !up
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pending() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Every link name in the node namespace (lo and the bridge included).
    pub fn links(&self) -> Vec<String> {
        link_names(&self.ns)
    }

    /// The IPv4 addresses (a.b.c.d/len) on the bridge twl0; empty if it does not exist.
    pub fn bridge_addrs(&self) -> Vec<String> {
        let (ok, out, _) = self
            .ns
            .try_exec(&["ip", "-j", "-4", "addr", "show", "dev", "twl0"]);
        if !ok {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
            .collect()
    }

    /// Ports of the bridge twl0 (links whose master it is).
    pub fn bridge_ports(&self) -> Vec<String> {
        let (ok, out, _) = self
            .ns
            .try_exec(&["ip", "-j", "link", "show", "master", "twl0"]);
        if !ok {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str())
            .map(str::to_string)
            .collect()
    }

    /// Addresses held in the IPAM record directory.
    pub fn records(&self) -> Vec<String> {
        let dir = self.data.path.join("ipam/twltest/ips");
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Elements of Twill's per-pod nft sets/maps in the node (masq_pods, hostports_*,
    /// and anti-spoofing's pods, pod_macs, pod_ips).
    pub fn nft_elements(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (family, per_pod) in [
            ("ip", &["masq_pods", "hostports_ip", "hostports_any"][..]),
            ("bridge", &["pods", "pod_macs", "pod_ips"][..]),
        ] {
            let (ok, out, _) = self
                .ns
                .try_exec(&["nft", "-j", "list", "table", family, "twill"]);
            if !ok {
                continue;
            }
            let v: Value = serde_json::from_str(&out).unwrap();
            for item in v["nftables"].as_array().unwrap() {
                for kind in ["set", "map"] {
                    if let Some(s) = item.get(kind) {
                        let name = s["name"].as_str().unwrap_or("");
                        if per_pod.contains(&name) {
                            if let Some(elems) = s.get("elem").and_then(Value::as_array) {
                                for e in elems {
                                    // ip's as before ("masq_pods: ..."), others named.
                                    found.push(if family == "ip" {
                                        format!("{name}: {e}")
                                    } else {
                                        format!("{family} {name}: {e}")
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        found
    }

    /// Nothing of any pod is left: no veth, no address record, no nft element.
    pub fn assert_clean(&self, context: &str) {
        // DEL hands the kernel's slow veth unregister to a detached reaper (see
        // twill-cni's reaper.rs): give it a moment, then insist.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.veths().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            self.veths().is_empty(),
            "{context}: leaked veths {:?}",
            self.veths()
        );
        assert!(
            self.records().is_empty(),
            "{context}: leaked IPAM records {:?}",
            self.records()
        );
        assert!(
            self.nft_elements().is_empty(),
            "{context}: leaked nft elements {:?}",
            self.nft_elements()
        );
        assert!(
            self.twill_routes().is_empty(),
            "{context}: leaked routes {:?}",
            self.twill_routes()
        );
    }

    /// The node's routes carrying Twill's protocol (l3 pods' /32 routes).
    pub fn twill_routes(&self) -> Vec<String> {
        let out = self.ns.exec(&["ip", "-4", "route", "show", "proto", "84"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

pub fn pod_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// One echo reply from `to` within 2 s (ping sends again after 1 s if the first request
/// is lost, e.g. while a loaded machine's kernel is still bringing a new port up).
pub fn ping(from: &TestNetns, to: &str) -> bool {
    from.try_exec(&["ping", "-c1", "-w2", to]).0
}

/// Every link name in a namespace, sorted.
pub fn link_names(ns: &TestNetns) -> Vec<String> {
    let out = ns.exec(&["ip", "-j", "link", "show"]);
    let links: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}
