//! Running a plugin exactly as a runtime does: the command and the pod in the environment,
//! the config on stdin, the result on stdout; for the reference, a libcni-style chain of
//! bridge (+ portmap). I/O edge.

use crate::conf::Setup;
use crate::netns;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use twill_api::wiring::{PodWiring, L3_GATEWAY};
use twill_netlink::Netns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// twill-cni with this pod wiring.
    Twill(PodWiring),
    /// The reference chain: bridge + host-local (+ portmap).
    Reference,
}

impl Kind {
    /// Every plugin the CNI benchmark runs, in report order.
    pub const ALL: [Kind; 3] = [
        Kind::Twill(PodWiring::L3),
        Kind::Twill(PodWiring::Bridge),
        Kind::Reference,
    ];

    /// The name in namespaces, tables and JSON: `l3`, `bridge`, `ref`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Twill(w) => w.name(),
            Kind::Reference => "ref",
        }
    }
}

/// Fails unless twill-cni's ADD result shows the wiring it was asked for, so a run never
/// reports bridge figures as l3 ones.
fn check_wiring(wiring: PodWiring, result: &Value) -> Result<()> {
    let l3_gateway = result["ips"][0]["gateway"] == L3_GATEWAY.to_string();
    let interfaces = result["interfaces"].as_array().map_or(0, Vec::len);
    let as_asked = match wiring {
        // Host veth and pod side; the gateway nobody holds.
        PodWiring::L3 => l3_gateway && interfaces == 2,
        // Bridge, host veth and pod side; the bridge's address.
        PodWiring::Bridge => !l3_gateway && interfaces == 3,
    };
    if !as_asked {
        bail!("twill-cni ADD was asked for podWiring {wiring} but answered {result}");
    }
    Ok(())
}

/// A pod sandbox made beforehand: its namespace and the host port it maps.
#[derive(Debug, Clone)]
pub struct Pod {
    pub netns: String,
    pub host_port: u16,
}

/// A pod attached by ADD: what DEL needs (libcni caches the result and passes it back).
#[derive(Debug, Clone)]
pub struct Attachment {
    pub pod: Pod,
    pub container_id: String,
    pub result: Value,
}

/// A plugin under test and the node namespace it alone runs in.
pub struct Subject {
    pub kind: Kind,
    pub node: Netns,
    pub setup: Setup,
    pub twill_exe: PathBuf,
    pub cni_path: PathBuf,
}

static CONTAINER_SEQ: AtomicU64 = AtomicU64::new(1);

/// A fresh 64-hex-digit container ID, like the ones containerd and CRI-O hand out.
pub fn container_id() -> String {
    let n = CONTAINER_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{:048x}", std::process::id(), n)
}

/// What one ADD or DEL cost: wall time from the first spawn to the last exit, and the CPU
/// time of the plugin processes (a chain's summed).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Took {
    pub wall: Duration,
    pub cpu: Duration,
}

impl Subject {
    /// ADD, timed from the first spawn to the last exit. The calling thread enters the node
    /// namespace first, outside the timed region.
    pub fn add(&self, pod: &Pod) -> Result<(Took, Attachment)> {
        netns::enter(&self.node)?;
        let container_id = container_id();
        let mut cpu = Duration::ZERO;
        let start = Instant::now();
        let result = match self.kind {
            Kind::Twill(wiring) => self.exec(
                &self.twill_exe,
                "ADD",
                pod,
                &container_id,
                &self.setup.twill(wiring, pod.host_port, None),
                &mut cpu,
            )?,
            Kind::Reference => {
                let bridge = self.plugin("bridge");
                let r = self.exec(
                    &bridge,
                    "ADD",
                    pod,
                    &container_id,
                    &self.setup.ref_bridge(None),
                    &mut cpu,
                )?;
                match r {
                    Some(r) if self.setup.mappings => {
                        let conf = self.setup.ref_portmap(pod.host_port, &r);
                        let portmap = self.plugin("portmap");
                        self.exec(&portmap, "ADD", pod, &container_id, &conf, &mut cpu)?
                    }
                    r => r,
                }
            }
        };
        let wall = start.elapsed();
        let result =
            result.with_context(|| format!("{} ADD printed no result", self.kind.label()))?;
        if let Kind::Twill(wiring) = self.kind {
            check_wiring(wiring, &result)?;
        }
        Ok((
            Took { wall, cpu },
            Attachment {
                pod: pod.clone(),
                container_id,
                result,
            },
        ))
    }

    /// DEL with the cached result as prevResult; the reference chain runs in reverse.
    pub fn del(&self, a: &Attachment) -> Result<Took> {
        netns::enter(&self.node)?;
        let prev = Some(&a.result);
        let mut cpu = Duration::ZERO;
        let start = Instant::now();
        match self.kind {
            Kind::Twill(wiring) => {
                self.exec(
                    &self.twill_exe,
                    "DEL",
                    &a.pod,
                    &a.container_id,
                    &self.setup.twill(wiring, a.pod.host_port, prev),
                    &mut cpu,
                )?;
            }
            Kind::Reference => {
                if self.setup.mappings {
                    let conf = self.setup.ref_portmap(a.pod.host_port, &a.result);
                    self.exec(
                        &self.plugin("portmap"),
                        "DEL",
                        &a.pod,
                        &a.container_id,
                        &conf,
                        &mut cpu,
                    )?;
                }
                self.exec(
                    &self.plugin("bridge"),
                    "DEL",
                    &a.pod,
                    &a.container_id,
                    &self.setup.ref_bridge(prev),
                    &mut cpu,
                )?;
            }
        }
        Ok(Took {
            wall: start.elapsed(),
            cpu,
        })
    }

    fn plugin(&self, name: &str) -> PathBuf {
        self.cni_path.join(name)
    }

    /// One plugin call; its CPU time is added to `cpu`.
    fn exec(
        &self,
        exe: &Path,
        command: &str,
        pod: &Pod,
        container_id: &str,
        conf: &Value,
        cpu: &mut Duration,
    ) -> Result<Option<Value>> {
        let (out, used) =
            exec_plugin_cpu(exe, &self.cni_path, command, &pod.netns, container_id, conf)?;
        *cpu += used;
        Ok(out)
    }
}

/// Runs one CNI plugin call as a runtime does: the command and pod in the environment, the
/// config on stdin; returns the parsed stdout. A non-zero exit or an error object fails.
pub fn exec_plugin(
    exe: &Path,
    cni_path: &Path,
    command: &str,
    netns: &str,
    container_id: &str,
    conf: &Value,
) -> Result<Option<Value>> {
    exec_plugin_cpu(exe, cni_path, command, netns, container_id, conf).map(|(v, _)| v)
}

/// [`exec_plugin`], and the CPU time (user + system) the plugin and the children it waited
/// for used: its own work, whatever else the machine runs, where wall time also counts
/// the time it waited for a CPU.
pub fn exec_plugin_cpu(
    exe: &Path,
    cni_path: &Path,
    command: &str,
    netns: &str,
    container_id: &str,
    conf: &Value,
) -> Result<(Option<Value>, Duration)> {
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = Command::new(exe)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=twlbench;K8S_POD_NAME={container_id:.12}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(conf.to_string().as_bytes());
    drop(stdin);
    let (stdout, stderr) = read_both(
        child.stdout.take().expect("stdout is piped"),
        child.stderr.take().expect("stderr is piped"),
    )
    .with_context(|| format!("reading what {name} printed"))?;
    let (status, cpu) = wait_cpu(child.id()).with_context(|| format!("waiting for {name}"))?;
    written.with_context(|| format!("writing the config to {name}"))?;
    let stdout = String::from_utf8_lossy(&stdout);
    let parsed: Option<Value> = serde_json::from_str(stdout.trim()).ok();
    let is_error = parsed.as_ref().is_some_and(|v| v.get("code").is_some());
    if !status.success() || is_error {
        bail!(
            "{name} {command} failed for netns {netns} ({status}): {} {}",
            stdout.trim(),
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    if command == "ADD" && parsed.is_none() {
        bail!("{name} ADD printed no JSON result: {:?}", stdout.trim());
    }
    Ok((parsed, cpu))
}

/// Reads two pipes to their ends at once with poll(2), as std's wait_with_output does: no
/// thread (which would add its own scheduling delay to the timed call), no deadlock when
/// the child fills one pipe while we read the other.
fn read_both(out: ChildStdout, err: ChildStderr) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut pipes = [
        (Some(out.into()), Vec::new()),
        (Some(err.into()), Vec::new()),
    ];
    loop {
        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .filter_map(|(fd, _): &(Option<OwnedFd>, Vec<u8>)| fd.as_ref())
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            let [(_, a), (_, b)] = pipes;
            return Ok((a, b));
        }
        // SAFETY: fds is a valid array of pollfd of the length given.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for p in fds.iter().filter(|p| p.revents != 0) {
            let (slot, buf) = pipes
                .iter_mut()
                .find(|(fd, _)| fd.as_ref().is_some_and(|f| f.as_raw_fd() == p.fd))
                .expect("polled one of ours");
            let mut chunk = [0u8; 4096];
            let file = slot.as_ref().expect("still open");
            // SAFETY: reading into a stack buffer of the length given, from an open fd.
            let n = unsafe { libc::read(file.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            match n {
                0 => *slot = None,
                n if n > 0 => buf.extend_from_slice(&chunk[..n as usize]),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Reaps child `pid` with wait4(2): its exit status and the CPU time of it and the
/// children it waited for (the reference bridge plugin runs host-local so).
fn wait_cpu(pid: u32) -> std::io::Result<(ExitStatus, Duration)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our unreaped child; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r >= 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((
        ExitStatus::from_raw(status),
        tv(usage.ru_utime) + tv(usage.ru_stime),
    ))
}
