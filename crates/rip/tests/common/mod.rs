//! Shared by twill-rip's interop tests and twilld's rip_*.rs (which include this file by
//! path): a segment of namespaces on one bridge, FRR's ripd (zebra + staticd + ripd, in the
//! foreground, owned by PID) in one of them, kernel routes read back with `ip -j route`.
//! Everything is named by the caller's unique tag (`twlrip…`) and removed on drop, failures
//! included.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twill_testkit::{sh, try_sh, unique_name, TempDir, TestNetns};

/// Namespaces on one segment 192.0.2.0/24 through a bridge in a switch namespace; member
/// `i` (from 0) is 192.0.2.(i+1) on its `eth0` (the name twilld's first-found picks; a
/// `twl…` name it would skip as its own).
pub struct Segment {
    pub members: Vec<Member>,
    /// Holds the bridge; dropped last.
    pub switch: TestNetns,
}

pub struct Member {
    pub ns: TestNetns,
    pub ifname: String,
    pub addr: Ipv4Addr,
}

impl Member {
    pub fn name(&self) -> &str {
        &self.ns.name
    }
}

impl Segment {
    /// `n` members on a fresh bridge; `tag` names everything (keep it short and unique per
    /// test, e.g. `twlripa`).
    pub fn new(tag: &str, n: usize) -> Segment {
        let switch = TestNetns::new(&format!("{tag}s"));
        let br = "twlripbr0";
        sh(&[
            "ip",
            "-n",
            &switch.name,
            "link",
            "add",
            br,
            "type",
            "bridge",
        ]);
        sh(&["ip", "-n", &switch.name, "link", "set", br, "up"]);
        let mut members = Vec::new();
        for i in 0..n {
            let ns = TestNetns::new(&format!("{tag}{i}"));
            let ifname = "eth0".to_string();
            let port = unique_name("twlrp", 15);
            sh(&[
                "ip",
                "link",
                "add",
                &ifname,
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &switch.name,
            ]);
            sh(&[
                "ip",
                "-n",
                &switch.name,
                "link",
                "set",
                &port,
                "master",
                br,
                "up",
            ]);
            let addr = Ipv4Addr::new(192, 0, 2, i as u8 + 1);
            sh(&[
                "ip",
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &ifname,
            ]);
            sh(&["ip", "-n", &ns.name, "link", "set", &ifname, "up"]);
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
            members.push(Member { ns, ifname, addr });
        }
        Segment { members, switch }
    }
}

/// One kernel route, as `ip -j route` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KRoute {
    pub dst: String,
    pub gateway: Option<String>,
    pub dev: Option<String>,
    pub protocol: String,
    pub kind: String,
}

/// The main table of `ns`.
pub fn routes(ns: &str) -> Vec<KRoute> {
    let (_, out, _) = try_sh(&["ip", "-n", ns, "-j", "route", "show", "table", "main"]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    v.iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().map(String::from);
            let mut dst = s("dst").unwrap_or_default();
            if !dst.contains('/') && dst != "default" {
                dst.push_str("/32");
            }
            KRoute {
                dst,
                gateway: s("gateway"),
                dev: s("dev"),
                protocol: s("protocol").unwrap_or_else(|| "boot".into()),
                kind: s("type").unwrap_or_else(|| "unicast".into()),
            }
        })
        .collect()
}

pub fn route(ns: &str, dst: &str) -> Option<KRoute> {
    routes(ns).into_iter().find(|r| r.dst == dst)
}

/// Polls `f` every 50 ms until it gives `Some`, or panics after `timeout` naming `what`
/// and the last state `show` describes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    show: impl Fn() -> String,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}; now:\n{}",
                show()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `ns` routes `dst` via `gw` with protocol `proto`.
pub fn wait_route(ns: &str, dst: &str, gw: &str, proto: &str, timeout: Duration) -> Duration {
    wait_for(
        &format!("{dst} via {gw} proto {proto} in {ns}"),
        timeout,
        || {
            route(ns, dst)
                .filter(|r| r.gateway.as_deref() == Some(gw) && r.protocol == proto)
                .map(|_| ())
        },
        || format!("{:#?}", routes(ns)),
    )
    .1
}

/// Waits until `ns` has no route to `dst`.
pub fn wait_no_route(ns: &str, dst: &str, timeout: Duration) -> Duration {
    wait_for(
        &format!("no route to {dst} in {ns}"),
        timeout,
        || route(ns, dst).is_none().then_some(()),
        || format!("{:#?}", routes(ns)),
    )
    .1
}

/// FRR 8.4's zebra, staticd and ripd in a namespace, in the foreground (their PIDs are the
/// children's: `ip netns exec` execs), stopped by PID on drop.
pub struct FrrRip {
    pub dir: TempDir,
    ns: String,
    daemons: Vec<(String, Child)>,
}

/// `router rip` for FRR on the segment 192.0.2.0/24 with FRR's `timers basic` and extra
/// lines (`redistribute static`, `network …`).
pub fn ripd_conf(timers: (u32, u32, u32), extra: &str) -> String {
    format!(
        "router rip\n version 2\n network 192.0.2.0/24\n timers basic {} {} {}\n{extra}\n",
        timers.0, timers.1, timers.2
    )
}

impl FrrRip {
    /// `statics`: staticd's lines (`ip route 10.244.5.0/24 blackhole`); `rip`: the `router
    /// rip` block ([`ripd_conf`]).
    pub fn start(ns: &str, statics: &str, rip: &str) -> FrrRip {
        let dir = TempDir::new("twlripfrr");
        let d = dir.path.to_str().unwrap().to_string();
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o750)).unwrap();
        let conf = |name: &str, body: &str| {
            std::fs::write(
                dir.path.join(format!("{name}.conf")),
                format!("hostname {ns}\nlog file {d}/{name}.log debugging\n{body}\n"),
            )
            .unwrap();
        };
        conf("zebra", "");
        conf("staticd", statics);
        conf(
            "ripd",
            &format!("debug rip events\ndebug rip packet\n{rip}"),
        );
        sh(&["chown", "-R", "frr:frr", &d]);
        let mut frr = FrrRip {
            dir,
            ns: ns.to_string(),
            daemons: Vec::new(),
        };
        let zserv = format!("{d}/zserv.api");
        for name in ["zebra", "staticd", "ripd"] {
            frr.spawn(name, &d, &zserv);
            if name == "zebra" {
                wait_for(
                    "zebra's zserv socket",
                    Duration::from_secs(10),
                    || std::path::Path::new(&zserv).exists().then_some(()),
                    || frr.log("zebra"),
                );
            }
        }
        wait_for(
            "ripd's vty",
            Duration::from_secs(10),
            || frr.try_vtysh(&["show ip rip status"]).ok(),
            || frr.log("ripd"),
        );
        frr
    }

    fn spawn(&mut self, name: &str, d: &str, zserv: &str) {
        let out = std::fs::File::create(self.dir.path.join(format!("{name}.out"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, &format!("/usr/lib/frr/{name}")])
            .args([
                "-u",
                "frr",
                "-g",
                "frr",
                "-P",
                "0",
                "-z",
                zserv,
                "--vty_socket",
                d,
            ])
            .args([
                "-f",
                &format!("{d}/{name}.conf"),
                "-i",
                &format!("{d}/{name}.pid"),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.daemons.push((name.to_string(), child));
    }

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

    /// A daemon's log file (and its stdout/stderr).
    pub fn log(&self, name: &str) -> String {
        let read = |f: String| std::fs::read_to_string(self.dir.path.join(f)).unwrap_or_default();
        let log = read(format!("{name}.log"));
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        format!(
            "{}\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            read(format!("{name}.out"))
        )
    }

    /// SIGTERM to every daemon, ripd first; waits for each (FRR needs 1–3 s), SIGKILL after 8 s.
    pub fn stop(&mut self) {
        for (_, c) in self.daemons.iter_mut().rev() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        for (_, c) in self.daemons.iter_mut() {
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.daemons.clear();
    }
}

impl Drop for FrrRip {
    fn drop(&mut self) {
        self.stop();
    }
}
