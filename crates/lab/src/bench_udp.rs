//! `twill lab bench` for the udp backend (issue 11): Twill's userspace datapath side by side
//! in one run with kernel VXLAN and with the flannel-style baseline
//! ([`crate::bench_udp_baseline`]), interleaved A B C A B C for each stream count
//! (`iperf3 -C cubic -P 1`, then `-P 4`), pinned, with Gbit/s medians and CPU seconds per
//! Gbit moved.
//!
//! The variants (each a pod on node 1 → a pod on node 2):
//! - `twill`: the lab's own pods, when the lab runs `--backend udp`;
//! - `twill-twin`: otherwise a twin (`<lab>-twd*`) running Twill's `twill-datapath` (as the
//!   hidden `twill lab udp-datapath`), fed a hand-written peer table through
//!   `twill_datapath::Client`: Twill's code, so not a reference, but the same datapath the
//!   backend runs;
//! - `vxlan`: the hand-built kernel-VXLAN twin (`<lab>-twv*`, [`crate::bench::TwinPlan`]);
//! - `baseline`: a twin (`<lab>-twb*`) whose nodes run the flannel-style baseline.
//!
//! Pinning, as the issue asks: node 1's iperf3 client and its datapath on CPU 0, node 2's
//! server and datapath on CPU 1 (`iperf3 -A 0,1`; every thread of a datapath process with
//! `sched_setaffinity`, again before each run).
//!
//! CPU s/Gbit: Σ utime+stime (`/proc/<pid>/stat`, [`parse_cpu_ticks`]) of the iperf3 client,
//! the iperf3 server and both datapath processes over the run, ÷ the Gbit the receiver got.
//! Kernel VXLAN has no datapath process: its encapsulation is charged to whoever the kernel
//! runs it for (mostly the iperf3 processes; softirq work may land elsewhere), so the
//! machine-wide busy time from `/proc/stat` ÷ Gbit is given beside it (noisy: the machine is
//! shared).
//!
//! Pure: the report types, [`udp_ratios`], [`render`], [`daemon_command`], the `/proc`
//! parsers. I/O: [`run`], at the edge.

use std::fmt::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::{
    self, cmd, median, parse_iperf, run_cmd, start_server, twin_path, BenchError, IperfRun, Path,
    Ratio, Target, TwinGuard, TwinKind, TwinPlan, TwinReport, TWIN_TUN_DEVICE, TWIN_UDP_PORT,
};
use crate::build::Log;
use twill_api::backend::BackendKind;

/// Goals of issue 11, single stream.
pub const GOAL_VS_VXLAN: f64 = 0.8;
pub const GOAL_VS_BASELINE: f64 = 3.0;
/// Where node `k`'s iperf3 and datapath run (k = 1 or 2).
pub const CPU_OF_NODE: [usize; 2] = [0, 1];
/// How long a datapath may take to answer on its control socket.
const DATAPATH_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which path a udp bench variant measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UdpVariant {
    /// The lab's pods, through what twilld's udp backend runs.
    Twill,
    /// A twin running Twill's datapath with a hand-written table.
    TwillTwin,
    /// The kernel-VXLAN twin.
    Vxlan,
    /// The flannel-style baseline twin.
    Baseline,
}

impl UdpVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            UdpVariant::Twill => "twill",
            UdpVariant::TwillTwin => "twill-twin",
            UdpVariant::Vxlan => "vxlan",
            UdpVariant::Baseline => "baseline",
        }
    }
    /// The variant that stands for Twill in the ratios.
    fn is_twill(self) -> bool {
        matches!(self, UdpVariant::Twill | UdpVariant::TwillTwin)
    }
}

/// One iperf3 run with its CPU accounting.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UdpRun {
    pub iperf: IperfRun,
    /// What the receiver got, in Gbit.
    pub gbit: f64,
    /// Σ utime+stime of the iperf3 client and server and the datapath processes.
    pub cpu_seconds: f64,
    /// Machine-wide busy CPU seconds over the run (`/proc/stat`).
    pub busy_seconds: f64,
}

impl UdpRun {
    pub fn cpu_s_per_gbit(&self) -> f64 {
        per_gbit(self.cpu_seconds, self.gbit)
    }
    pub fn busy_s_per_gbit(&self) -> f64 {
        per_gbit(self.busy_seconds, self.gbit)
    }
}

fn per_gbit(seconds: f64, gbit: f64) -> f64 {
    if gbit > 0.0 {
        seconds / gbit
    } else {
        f64::NAN
    }
}

/// A variant's figures at one stream count, over all rounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UdpFigures {
    pub variant: UdpVariant,
    pub streams: u32,
    pub path: String,
    pub runs: Vec<UdpRun>,
    pub median_gbps: f64,
    pub median_cpu_s_per_gbit: f64,
    pub median_busy_s_per_gbit: f64,
}

impl UdpFigures {
    pub fn new(variant: UdpVariant, streams: u32, path: String, runs: Vec<UdpRun>) -> Self {
        let m = |f: &dyn Fn(&UdpRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        UdpFigures {
            variant,
            streams,
            path,
            median_gbps: m(&|r| r.iperf.gbps),
            median_cpu_s_per_gbit: m(&|r| r.cpu_s_per_gbit()),
            median_busy_s_per_gbit: m(&|r| r.busy_s_per_gbit()),
            runs,
        }
    }
}

/// Per stream count: Twill / vxlan and Twill / baseline in Gbit/s (goals at one stream),
/// and the same in CPU s/Gbit (lower is better, no goal).
pub fn udp_ratios(figures: &[UdpFigures]) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut streams: Vec<u32> = figures.iter().map(|f| f.streams).collect();
    streams.dedup();
    for p in streams {
        let at = |pred: &dyn Fn(UdpVariant) -> bool| {
            figures.iter().find(|f| f.streams == p && pred(f.variant))
        };
        let Some(twill) = at(&|v| v.is_twill()) else {
            continue;
        };
        for (other, goal) in [
            (UdpVariant::Vxlan, GOAL_VS_VXLAN),
            (UdpVariant::Baseline, GOAL_VS_BASELINE),
        ] {
            let Some(o) = at(&|v| v == other) else {
                continue;
            };
            let name = |what: &str| {
                format!(
                    "-P {p} {what} {} / {}",
                    twill.variant.as_str(),
                    other.as_str()
                )
            };
            let value = Some(twill.median_gbps / o.median_gbps).filter(|r| r.is_finite());
            let goal = (p == 1).then_some(goal);
            out.push(Ratio {
                name: name("Gbit/s"),
                value,
                goal,
                met: goal.map(|g| value.is_some_and(|v| v >= g)),
            });
            out.push(Ratio {
                name: name("CPU s/Gbit"),
                value: Some(twill.median_cpu_s_per_gbit / o.median_cpu_s_per_gbit)
                    .filter(|r| r.is_finite()),
                goal: None,
                met: None,
            });
        }
    }
    out
}

/// A datapath process the bench counted and pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathProcess {
    pub variant: UdpVariant,
    /// 1 or 2.
    pub node: usize,
    pub pid: u32,
    pub cpu: usize,
}

/// Everything one udp bench run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UdpBenchReport {
    pub lab: String,
    pub seconds: u32,
    pub rounds: u32,
    pub streams: Vec<u32>,
    pub congestion_control: String,
    /// CPUs of node 1's and node 2's iperf3 and datapath.
    pub pinned: [usize; 2],
    /// The order the runs went in, one round at one stream count.
    pub order: Vec<UdpVariant>,
    pub figures: Vec<UdpFigures>,
    pub ratios: Vec<Ratio>,
    /// /proc/loadavg's three figures at the start and at the end.
    pub load_average: [[f64; 3]; 2],
    /// The datapath processes counted and pinned (all stopped by the end of the run when
    /// the bench started them).
    pub datapaths: Vec<DatapathProcess>,
    pub twins: Vec<TwinReport>,
    /// On a udp lab: where its node 1 and pod 1 differ from the baseline twin's in what the
    /// backend programs (MTUs, the TUN, the route to the peer pod).
    pub differences: Vec<String>,
}

pub(crate) fn fmt_num(x: f64, width: usize, prec: usize) -> String {
    if x.is_finite() {
        format!("{x:>width$.prec$}")
    } else {
        format!("{:>width$}", "-")
    }
}

/// The human-readable report.
pub fn render(r: &UdpBenchReport) -> String {
    let mut out = String::new();
    let order: Vec<&str> = r.order.iter().map(|v| v.as_str()).collect();
    let streams: Vec<String> = r.streams.iter().map(|p| format!("-P {p}")).collect();
    let _ = writeln!(
        out,
        "twill lab bench (udp): lab {}, iperf3 -C {}, {}, {} s x {} rounds, interleaved {} ...",
        r.lab,
        r.congestion_control,
        streams.join(" and "),
        r.seconds,
        r.rounds,
        order.join(" ")
    );
    let la = |l: &[f64; 3]| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]);
    let _ = writeln!(
        out,
        "pinned: node 1's client and datapath on CPU {}, node 2's server and datapath on CPU {}; load average {} at the start, {} at the end\n",
        r.pinned[0],
        r.pinned[1],
        la(&r.load_average[0]),
        la(&r.load_average[1])
    );
    let _ = writeln!(
        out,
        "  {:<3} {:<11} {:>7} {:>10} {:>11}  {:<24} path",
        "-P", "variant", "Gbit/s", "CPU s/Gbit", "busy s/Gbit", "runs (Gbit/s)"
    );
    for f in &r.figures {
        let runs: Vec<String> = f
            .runs
            .iter()
            .map(|x| format!("{:.2}", x.iperf.gbps))
            .collect();
        let _ = writeln!(
            out,
            "  {:<3} {:<11} {} {} {}  {:<24} {}",
            f.streams,
            f.variant.as_str(),
            fmt_num(f.median_gbps, 7, 2),
            fmt_num(f.median_cpu_s_per_gbit, 10, 3),
            fmt_num(f.median_busy_s_per_gbit, 11, 3),
            runs.join(" "),
            f.path
        );
    }
    let _ = writeln!(
        out,
        "\nRatios (medians; goals at one stream: >= {GOAL_VS_VXLAN}x kernel VXLAN, >= {GOAL_VS_BASELINE}x the baseline; CPU s/Gbit: lower is better)"
    );
    for x in &r.ratios {
        let mark = match x.met {
            Some(true) => "[met ]",
            Some(false) => "[MISS]",
            None => "[    ]",
        };
        let goal = x.goal.map(|g| format!(">= {g:.2}")).unwrap_or_default();
        let line = format!(
            "  {mark} {:<40} {} {goal}",
            x.name,
            fmt_num(x.value.unwrap_or(f64::NAN), 6, 3)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if !r.differences.is_empty() {
        let _ = writeln!(out, "\nThe lab differs from the baseline twin:");
        for d in &r.differences {
            let _ = writeln!(out, "  - {d}");
        }
    }
    let _ = writeln!(
        out,
        "\nCPU s/Gbit: utime+stime of the iperf3 client and server and both datapath processes per Gbit received; busy s/Gbit: the whole machine's (/proc/stat, noisy)."
    );
    out
}

/// CPU ticks (utime + stime) from the text of `/proc/PID/stat`. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy ticks of the whole machine from `/proc/stat`'s `cpu` line: user, nice, system,
/// irq, softirq and steal (not idle, not iowait).
pub fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?)
}

/// `/proc/loadavg`'s first three figures.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// What the receiver got, in bytes (`end.sum_received.bytes` of `iperf3 -J`).
pub fn parse_received_bytes(text: &str) -> Result<u64, BenchError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| BenchError::Parse(e.to_string()))?;
    v["end"]["sum_received"]["bytes"]
        .as_u64()
        .ok_or_else(|| BenchError::Parse("no end.sum_received.bytes in the output".into()))
}

/// The command that starts node `k`'s forwarding process of a udp twin, in its namespace:
/// `twill lab udp-baseline ...` or `twill lab udp-datapath ...` (`exe`: this twill), with its
/// control socket in `ctl_dir` for the datapath. None for a twin without one.
pub fn daemon_command(
    plan: &TwinPlan,
    k: usize,
    exe: &FsPath,
    ctl_dir: &FsPath,
) -> Option<Vec<String>> {
    let (me, peer) = (&plan.nodes[k - 1], &plan.nodes[2 - k]);
    let exe = exe.display().to_string();
    let port = TWIN_UDP_PORT.to_string();
    let node_ip = me.node_ip.addr().to_string();
    let mut c = cmd(&["ip", "netns", "exec", &plan.node_netns(k), &exe, "lab"]);
    match plan.kind {
        TwinKind::HostGw | TwinKind::Vxlan => return None,
        TwinKind::UdpBaseline => c.extend(cmd(&[
            "udp-baseline",
            "--tun",
            TWIN_TUN_DEVICE,
            "--port",
            &port,
            "--bind",
            &node_ip,
            "--tun-ip",
            &me.vtep_ip().to_string(),
            "--route",
            &format!("{}={}:{port}", peer.block(), peer.node_ip.addr()),
        ])),
        TwinKind::UdpDatapath => c.extend(cmd(&[
            "udp-datapath",
            "--ctl",
            &ctl_path(ctl_dir, k).display().to_string(),
            "--tun",
            TWIN_TUN_DEVICE,
            "--port",
            &port,
            "--bind",
            &node_ip,
            // One worker: the bench gives each node's datapath one CPU.
            "--queues",
            "1",
        ])),
    }
    Some(c)
}

fn ctl_path(dir: &FsPath, k: usize) -> PathBuf {
    dir.join(format!("n{k}.sock"))
}

// ---------------------------------------------------------------------------------------
// The I/O edge.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpBenchOptions {
    pub seconds: u32,
    pub rounds: u32,
    /// iperf3 -P values, each measured for every variant.
    pub streams: Vec<u32>,
    /// This twill (what the twins' nodes run as `twill lab udp-*`).
    pub exe: PathBuf,
}

fn hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

fn read(path: &str) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|e| BenchError::Command {
        cmd: format!("read {path}"),
        detail: e.to_string(),
    })
}

fn cpu_ticks(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/stat");
    parse_cpu_ticks(&read(&path)?)
        .ok_or_else(|| BenchError::Parse(format!("{path}: no utime/stime")))
}

fn busy_ticks() -> Result<u64, BenchError> {
    parse_busy_ticks(&read("/proc/stat")?)
        .ok_or_else(|| BenchError::Parse("/proc/stat: no cpu line".into()))
}

pub(crate) fn loadavg() -> [f64; 3] {
    read("/proc/loadavg")
        .ok()
        .and_then(|t| parse_loadavg(&t))
        .unwrap_or([f64::NAN; 3])
}

/// Every thread of `pid` on `cpu` only.
fn pin(pid: u32, cpu: usize) -> Result<(), BenchError> {
    set_affinity(pid, &[cpu])
}

/// Every thread of `pid` on every online CPU again.
pub(crate) fn unpin(pid: u32) -> Result<(), BenchError> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: sysconf has no preconditions.
    let online = (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(n as i64) as usize;
    set_affinity(pid, &(0..online).collect::<Vec<_>>())
}

fn set_affinity(pid: u32, cpus: &[usize]) -> Result<(), BenchError> {
    let tasks =
        std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| BenchError::Command {
            cmd: format!("list /proc/{pid}/task"),
            detail: format!("{e} (the datapath exited?)"),
        })?;
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get it by
        // reference with its size.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // A thread that ended since the listing is fine.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(BenchError::Command {
                    cmd: format!("sched_setaffinity({tid}, CPUs {cpus:?})"),
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A forwarding process of a twin, stopped by its PID (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Daemon {
    child: Child,
    what: String,
}

impl Daemon {
    fn start(c: &[String], log: Log) -> Result<Daemon, BenchError> {
        let what = c.join(" ");
        log(&format!("starting {what}"));
        let child = Command::new(&c[0])
            .args(&c[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Command {
                cmd: what.clone(),
                detail: e.to_string(),
            })?;
        Ok(Daemon { child, what })
    }
    /// `ip netns exec` execs the program, so this is the datapath's own PID.
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn check_running(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Command {
                cmd: self.what.clone(),
                detail: format!("exited with {status}"),
            }),
            Err(e) => Err(BenchError::Command {
                cmd: self.what.clone(),
                detail: e.to_string(),
            }),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One variant as measured: its path and the datapath processes to count and pin (node 1's,
/// node 2's).
pub(crate) struct Measured {
    pub(crate) variant: UdpVariant,
    pub(crate) path: Path,
    pub(crate) datapaths: Vec<(u32, usize)>,
}

/// Waits until `socket` answers, then gives the datapath its table: the node's block, and
/// the peer with its block (a hand-written table, as a test would).
fn feed_datapath(
    plan: &TwinPlan,
    k: usize,
    socket: &FsPath,
    d: &mut Daemon,
) -> Result<(), BenchError> {
    use twill_datapath::client::Client;
    use twill_datapath::partial::Checksums;
    use twill_datapath::table::{LocalNode, Peer};
    let (me, peer) = (&plan.nodes[k - 1], &plan.nodes[2 - k]);
    let start = Instant::now();
    let fail = |detail: String| BenchError::Command {
        cmd: format!("twill_datapath::Client on {}", socket.display()),
        detail,
    };
    while !socket.exists() {
        d.check_running()?;
        if start.elapsed() > DATAPATH_READY_TIMEOUT {
            return Err(fail(format!(
                "no control socket after {DATAPATH_READY_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (client, _hello, _fds) =
        Client::connect(socket, DATAPATH_READY_TIMEOUT).map_err(|e| fail(e.to_string()))?;
    client
        .table(
            1,
            LocalNode {
                node_ip: me.node_ip.addr(),
                blocks: vec![me.block()],
            },
            vec![Peer {
                node_ip: peer.node_ip.addr(),
                port: TWIN_UDP_PORT,
                blocks: vec![peer.block()],
                checksums: Checksums::Full,
            }],
        )
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// One iperf3 run on `m` with `streams` streams, its CPU counted.
fn run_once(
    m: &Measured,
    port: u16,
    server_pid: u32,
    seconds: u32,
    streams: u32,
) -> Result<UdpRun, BenchError> {
    for &(pid, cpu) in &m.datapaths {
        pin(pid, cpu)?;
    }
    let mut pids: Vec<u32> = vec![server_pid];
    pids.extend(m.datapaths.iter().map(|(p, _)| *p));
    let before: Vec<u64> = pids
        .iter()
        .map(|p| cpu_ticks(*p))
        .collect::<Result<_, _>>()?;
    let busy_before = busy_ticks()?;
    let p = &m.path;
    let line = format!(
        "ip netns exec {} iperf3 -c {} -p {port} -A {},{} -C cubic -P {streams} -J -t {seconds}",
        p.client_netns, p.server_ip, CPU_OF_NODE[0], CPU_OF_NODE[1]
    );
    let fail = |detail: String| BenchError::Iperf {
        variant: m.variant.as_str().into(),
        detail: format!("{line}: {detail}"),
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &p.client_netns, "iperf3", "-c"])
        .arg(p.server_ip.to_string())
        .args(["-p", &port.to_string()])
        .args(["-A", &format!("{},{}", CPU_OF_NODE[0], CPU_OF_NODE[1])])
        .args(["-C", "cubic", "-P", &streams.to_string(), "-J", "-t"])
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut text)
        .map_err(|e| fail(e.to_string()))?;
    // Wait for the exit but leave the zombie, so /proc/<pid>/stat still holds the client's
    // whole CPU time; then reap it.
    let pid = child.id();
    // SAFETY: waitid on our own child with a zeroed siginfo_t.
    let rc = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
    };
    let client_ticks = if rc == 0 {
        cpu_ticks(pid)
    } else {
        Err(fail("waitid failed".into()))
    };
    let status = child.wait().map_err(|e| fail(e.to_string()))?;
    let busy_after = busy_ticks()?;
    let after: Vec<u64> = pids
        .iter()
        .map(|p| cpu_ticks(*p))
        .collect::<Result<_, _>>()?;
    let iperf = parse_iperf(&text).map_err(|e| {
        fail(format!(
            "{e}{}",
            if status.success() {
                String::new()
            } else {
                format!(" ({status})")
            }
        ))
    })?;
    let bytes = parse_received_bytes(&text).map_err(|e| fail(e.to_string()))?;
    let ticks: u64 = client_ticks?
        + after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum::<u64>();
    Ok(UdpRun {
        iperf,
        gbit: bytes as f64 * 8.0 / 1e9,
        cpu_seconds: ticks as f64 / hz(),
        busy_seconds: busy_after.saturating_sub(busy_before) as f64 / hz(),
    })
}

/// Builds the twins, starts their datapaths, runs every variant `rounds` times interleaved
/// at each stream count, and removes all it made (servers and datapaths by PID, twins by
/// namespace, the control sockets' folder), also on error.
pub fn run(
    target: &Target,
    opts: &UdpBenchOptions,
    log: Log,
) -> Result<UdpBenchReport, BenchError> {
    if !bench::iperf_installed() {
        return Err(BenchError::IperfMissing);
    }
    let load_start = loadavg();
    let sides = target.sides.clone();
    let lab_runs_udp = target.backend == BackendKind::Udp;
    let mut kinds = vec![TwinKind::Vxlan, TwinKind::UdpBaseline];
    if !lab_runs_udp {
        kinds.insert(0, TwinKind::UdpDatapath);
    }
    let plans: Vec<TwinPlan> = kinds
        .iter()
        .map(|k| TwinPlan::of_kind(&target.lab, *k, sides.clone()))
        .collect();
    let ctl_dir = std::env::temp_dir().join(format!("{}-twd", target.lab));
    let _ = std::fs::remove_dir_all(&ctl_dir);
    std::fs::create_dir_all(&ctl_dir).map_err(|e| BenchError::Command {
        cmd: format!("mkdir {}", ctl_dir.display()),
        detail: e.to_string(),
    })?;
    // Drop order (reverse of declaration): servers, daemons, twins, the folder.
    let _dir = DirGuard(ctl_dir.clone());
    let mut guards = Vec::new();
    let mut daemons: Vec<Daemon> = Vec::new();
    let mut measured = Vec::new();
    for plan in &plans {
        guards.push(TwinGuard::build(plan, log)?);
        let mut dps = Vec::new();
        for k in 1..=2 {
            if let Some(c) = daemon_command(plan, k, &opts.exe, &ctl_dir) {
                let mut d = Daemon::start(&c, log)?;
                if plan.kind == TwinKind::UdpDatapath {
                    feed_datapath(plan, k, &ctl_path(&ctl_dir, k), &mut d)?;
                }
                dps.push((d.pid(), CPU_OF_NODE[k - 1]));
                daemons.push(d);
            }
        }
        let variant = match plan.kind {
            TwinKind::UdpDatapath => UdpVariant::TwillTwin,
            TwinKind::UdpBaseline => UdpVariant::Baseline,
            TwinKind::Vxlan | TwinKind::HostGw => UdpVariant::Vxlan,
        };
        measured.push(Measured {
            variant,
            path: twin_path(plan),
            datapaths: dps,
        });
    }
    // The lab's own pods, through the datapaths its agents run, first.
    let lab_datapaths = if lab_runs_udp {
        let pids = [
            lab_datapath_pid(&target.nodes_netns[0])?,
            lab_datapath_pid(&target.nodes_netns[1])?,
        ];
        log(&format!(
            "twill: the lab's datapaths are pids {} ({}) and {} ({})",
            pids[0], target.nodes_netns[0], pids[1], target.nodes_netns[1]
        ));
        measured.insert(
            0,
            Measured {
                variant: UdpVariant::Twill,
                path: target.twill.clone(),
                datapaths: vec![(pids[0], CPU_OF_NODE[0]), (pids[1], CPU_OF_NODE[1])],
            },
        );
        pids.to_vec()
    } else {
        Vec::new()
    };
    let result = measure(&measured, &mut daemons, opts, log);
    // The lab's datapaths run on after the bench: give them every CPU back.
    for pid in lab_datapaths {
        let _ = unpin(pid);
    }
    let figures = result?;
    let differences = match plans.iter().find(|p| p.kind == TwinKind::UdpBaseline) {
        Some(baseline) if lab_runs_udp => bench::compare_with_twin(target, baseline),
        _ => Vec::new(),
    };
    drop(daemons);
    drop(guards);
    let load_end = loadavg();
    Ok(UdpBenchReport {
        lab: target.lab.clone(),
        seconds: opts.seconds,
        rounds: opts.rounds,
        streams: opts.streams.clone(),
        congestion_control: "cubic".into(),
        pinned: CPU_OF_NODE,
        order: measured.iter().map(|m| m.variant).collect(),
        ratios: udp_ratios(&figures),
        figures,
        load_average: [load_start, load_end],
        differences,
        datapaths: measured
            .iter()
            .flat_map(|m| {
                m.datapaths
                    .iter()
                    .enumerate()
                    .map(|(i, &(pid, cpu))| DatapathProcess {
                        variant: m.variant,
                        node: i + 1,
                        pid,
                        cpu,
                    })
            })
            .collect(),
        twins: plans
            .iter()
            .map(|t| TwinReport {
                kind: t.kind,
                netns: t.netns(),
                commands: t
                    .commands()
                    .iter()
                    .chain(
                        (1..=2)
                            .filter_map(|k| daemon_command(t, k, &opts.exe, &ctl_dir))
                            .collect::<Vec<_>>()
                            .iter(),
                    )
                    .map(|c| c.join(" "))
                    .collect(),
            })
            .collect(),
    })
}

/// The iperf3 servers, then every variant `rounds` times interleaved at each stream count.
pub(crate) fn measure(
    measured: &[Measured],
    daemons: &mut [Daemon],
    opts: &UdpBenchOptions,
    log: Log,
) -> Result<Vec<UdpFigures>, BenchError> {
    let mut servers = Vec::new();
    for m in measured {
        let s = start_server(&m.path.server_netns)?;
        log(&format!(
            "{}: iperf3 server in {} on port {} (pid {})",
            m.variant.as_str(),
            m.path.server_netns,
            s.port,
            s.child.id()
        ));
        servers.push(s);
    }
    let mut figures = Vec::new();
    for &streams in &opts.streams {
        let mut runs: Vec<Vec<UdpRun>> = vec![Vec::new(); measured.len()];
        for round in 1..=opts.rounds {
            for (i, m) in measured.iter().enumerate() {
                for d in daemons.iter_mut() {
                    d.check_running()?;
                }
                let r = run_once(
                    m,
                    servers[i].port,
                    servers[i].child.id(),
                    opts.seconds,
                    streams,
                )?;
                log(&format!(
                    "-P {streams} round {round}/{}: {:<10} {:6.2} Gbit/s, {:.3} CPU s/Gbit, {:.3} busy s/Gbit",
                    opts.rounds,
                    m.variant.as_str(),
                    r.iperf.gbps,
                    r.cpu_s_per_gbit(),
                    r.busy_s_per_gbit()
                ));
                runs[i].push(r);
            }
        }
        for (m, runs) in measured.iter().zip(runs) {
            figures.push(UdpFigures::new(m.variant, streams, m.path.describe(), runs));
        }
    }
    Ok(figures)
}

/// Whether lab `name` runs the udp backend (its `lab bench` is then this bench).
pub fn lab_runs_udp(name: &str) -> Result<bool, BenchError> {
    Ok(crate::build::load(name)?.plan.backend == BackendKind::Udp)
}

/// Whether a command line is a datapath's (`twilld datapath --ctl ... --tun ...`, or the
/// `twill-datapath` binary), not the baseline's.
pub fn is_datapath_argv(argv: &[String]) -> bool {
    argv.iter().any(|a| a == "--ctl")
        && argv.iter().any(|a| a == "--tun")
        && !argv.iter().any(|a| a == "udp-baseline")
}

/// The PID of the datapath process in a lab node's namespace.
fn lab_datapath_pid(netns: &str) -> Result<u32, BenchError> {
    let out = run_cmd(&cmd(&["ip", "netns", "pids", netns]))?;
    out.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|b| {
                let argv: Vec<String> = b
                    .split(|c| *c == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                is_datapath_argv(&argv)
            })
        })
        .ok_or_else(|| BenchError::Command {
            cmd: format!("ip netns pids {netns}"),
            detail: format!(
                "no process in {netns} runs a datapath (--ctl ... --tun ...): is the lab's udp backend up? (`twill lab status`)"
            ),
        })
}

/// Loads lab `name`, reads it, and runs the udp bench on it.
pub fn bench_lab(
    name: &str,
    opts: &UdpBenchOptions,
    log: Log,
) -> Result<UdpBenchReport, BenchError> {
    let state = crate::build::load(name)?;
    let target = bench::target_from_lab(&state)?;
    run(&target, opts, log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::NodeSide;

    fn sides() -> [NodeSide; 2] {
        let side = |node: &str, pod: &str, gw: &str| NodeSide {
            node_ip: node.parse().unwrap(),
            uplink_mtu: 1500,
            pod_ip: pod.parse().unwrap(),
            gateway: gw.parse().unwrap(),
        };
        [
            side("192.0.2.11/24", "10.244.0.2/24", "10.244.0.1"),
            side("192.0.2.12/24", "10.244.1.2/24", "10.244.1.1"),
        ]
    }

    fn lines(c: &[Vec<String>]) -> Vec<String> {
        c.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn the_udp_twins_are_flannels_tun_layout_and_a_process_per_node() {
        let b = TwinPlan::of_kind("twllab", TwinKind::UdpBaseline, sides());
        assert_eq!(b.node_netns(1), "twllab-twbn1");
        assert_eq!(b.pod_mtu(1), 1472, "uplink - 28");
        assert_eq!(
            lines(&b.backend_commands(1)),
            [
                "ip -n twllab-twbn1 tuntap add dev twl.tun mode tun",
                "ip -n twllab-twbn1 link set twl.tun mtu 1472",
                "ip -n twllab-twbn1 addr add 10.244.0.0/32 dev twl.tun",
                "ip -n twllab-twbn1 link set twl.tun up",
                "ip -n twllab-twbn1 route add 10.244.1.0/24 dev twl.tun",
            ]
        );
        let all = lines(&b.commands());
        assert!(all.contains(&"ip -n twllab-twbn2 link add veth0 mtu 1472 type veth peer name eth0 mtu 1472 netns twllab-twbn2p".to_string()));
        let exe = FsPath::new("/x/twill");
        let dir = FsPath::new("/tmp/twllab-twd");
        assert_eq!(
            daemon_command(&b, 2, exe, dir).unwrap().join(" "),
            "ip netns exec twllab-twbn2 /x/twill lab udp-baseline --tun twl.tun --port 8285 --bind 192.0.2.12 --tun-ip 10.244.1.0 --route 10.244.0.0/24=192.0.2.11:8285"
        );
        // Its command line is one the baseline accepts.
        let c = daemon_command(&b, 1, exe, dir).unwrap();
        let cfg = crate::bench_udp_baseline::parse_args(&c[7..]).unwrap();
        assert_eq!(cfg.bind, "192.0.2.11:8285".parse().unwrap());

        let d = TwinPlan::of_kind("twllab", TwinKind::UdpDatapath, sides());
        assert_eq!(
            lines(&d.backend_commands(2))[0],
            "ip -n twllab-twdn2 tuntap add dev twl.tun mode tun multi_queue"
        );
        assert_eq!(
            daemon_command(&d, 1, exe, dir).unwrap().join(" "),
            "ip netns exec twllab-twdn1 /x/twill lab udp-datapath --ctl /tmp/twllab-twd/n1.sock --tun twl.tun --port 8285 --bind 192.0.2.11 --queues 1"
        );
        let v = TwinPlan::of_kind("twllab", TwinKind::Vxlan, sides());
        assert_eq!(daemon_command(&v, 1, exe, dir), None);
        assert_eq!(v.pod_mtu(1), 1450);
    }

    fn run(gbps: f64, cpu: f64) -> UdpRun {
        UdpRun {
            iperf: IperfRun {
                gbps,
                retransmits: Some(0),
                sender_cpu: 50.0,
                receiver_cpu: 40.0,
                congestion: Some("cubic".into()),
            },
            gbit: gbps * 10.0,
            cpu_seconds: cpu,
            busy_seconds: 2.0 * cpu,
        }
    }

    fn fig(v: UdpVariant, p: u32, runs: &[(f64, f64)]) -> UdpFigures {
        UdpFigures::new(
            v,
            p,
            format!("{v:?}"),
            runs.iter().map(|&(g, c)| run(g, c)).collect(),
        )
    }

    fn report() -> UdpBenchReport {
        let figures = vec![
            fig(
                UdpVariant::TwillTwin,
                1,
                &[(10.0, 5.0), (12.0, 6.0), (8.0, 4.0)],
            ),
            fig(UdpVariant::Vxlan, 1, &[(20.0, 4.0)]),
            fig(UdpVariant::Baseline, 1, &[(2.0, 4.0)]),
            fig(UdpVariant::TwillTwin, 4, &[(15.0, 6.0)]),
            fig(UdpVariant::Vxlan, 4, &[(15.0, 3.0)]),
            fig(UdpVariant::Baseline, 4, &[(3.0, 6.0)]),
        ];
        UdpBenchReport {
            lab: "twllab".into(),
            seconds: 10,
            rounds: 3,
            streams: vec![1, 4],
            congestion_control: "cubic".into(),
            pinned: CPU_OF_NODE,
            order: vec![
                UdpVariant::TwillTwin,
                UdpVariant::Vxlan,
                UdpVariant::Baseline,
            ],
            ratios: udp_ratios(&figures),
            figures,
            load_average: [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
            datapaths: Vec::new(),
            twins: Vec::new(),
            differences: Vec::new(),
        }
    }

    #[test]
    fn medians_and_cpu_per_gbit() {
        let f = fig(
            UdpVariant::TwillTwin,
            1,
            &[(10.0, 5.0), (12.0, 6.0), (8.0, 4.0)],
        );
        assert_eq!(f.median_gbps, 10.0);
        // 5 CPU s over 100 Gbit, 6 over 120, 4 over 80: 0.05 each.
        assert!((f.median_cpu_s_per_gbit - 0.05).abs() < 1e-12);
        assert!((f.median_busy_s_per_gbit - 0.1).abs() < 1e-12);
        let nothing = UdpRun {
            gbit: 0.0,
            ..run(0.0, 1.0)
        };
        assert!(nothing.cpu_s_per_gbit().is_nan());
    }

    #[test]
    fn ratios_carry_the_single_stream_goals() {
        let r = report().ratios;
        let names: Vec<&str> = r.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "-P 1 Gbit/s twill-twin / vxlan",
                "-P 1 CPU s/Gbit twill-twin / vxlan",
                "-P 1 Gbit/s twill-twin / baseline",
                "-P 1 CPU s/Gbit twill-twin / baseline",
                "-P 4 Gbit/s twill-twin / vxlan",
                "-P 4 CPU s/Gbit twill-twin / vxlan",
                "-P 4 Gbit/s twill-twin / baseline",
                "-P 4 CPU s/Gbit twill-twin / baseline",
            ]
        );
        // 10 / 20 = 0.5 < 0.8; 10 / 2 = 5 >= 3.
        assert_eq!(
            (r[0].value, r[0].goal, r[0].met),
            (Some(0.5), Some(0.8), Some(false))
        );
        assert_eq!(
            (r[2].value, r[2].goal, r[2].met),
            (Some(5.0), Some(3.0), Some(true))
        );
        // CPU: 0.05 / 0.02 (vxlan: 4 s over 200 Gbit).
        assert!((r[1].value.unwrap() - 2.5).abs() < 1e-9);
        assert_eq!((r[1].goal, r[1].met), (None, None));
        // No goals at 4 streams.
        assert_eq!((r[4].value, r[4].goal, r[4].met), (Some(1.0), None, None));
        // Without a Twill variant there is nothing to compare.
        let f = report().figures;
        assert!(udp_ratios(&f[1..3]).is_empty());
        // A ratio of nothing never meets its goal.
        let zero = [
            fig(UdpVariant::Twill, 1, &[(10.0, 1.0)]),
            fig(UdpVariant::Vxlan, 1, &[(0.0, 1.0)]),
        ];
        let r = udp_ratios(&zero);
        assert_eq!(r[0].name, "-P 1 Gbit/s twill / vxlan");
        assert_eq!((r[0].value, r[0].met), (None, Some(false)));
    }

    #[test]
    fn the_report_renders_and_serializes() {
        let rep = report();
        let text = render(&rep);
        assert!(
            text.contains(
                "-P 1 and -P 4, 10 s x 3 rounds, interleaved twill-twin vxlan baseline ..."
            ),
            "{text}"
        );
        assert!(
            text.contains("load average 1.00 2.00 3.00 at the start, 4.00 5.00 6.00 at the end"),
            "{text}"
        );
        assert!(
            text.contains("  1   twill-twin    10.00      0.050       0.100  10.00 12.00 8.00"),
            "{text}"
        );
        assert!(
            text.contains("[MISS] -P 1 Gbit/s twill-twin / vxlan            0.500 >= 0.80"),
            "{text}"
        );
        assert!(
            text.contains("[met ] -P 1 Gbit/s twill-twin / baseline         5.000 >= 3.00"),
            "{text}"
        );
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["figures"][0]["variant"], "twill-twin");
        assert_eq!(json["figures"][0]["streams"], 1);
        assert_eq!(json["figures"][0]["medianCpuSPerGbit"], 0.05);
        assert_eq!(json["ratios"][0]["met"], false);
        assert_eq!(json["pinned"], serde_json::json!([0, 1]));
    }

    #[test]
    fn a_datapath_is_told_by_its_command_line() {
        let argv = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert!(is_datapath_argv(&argv(
            "/x/twilld datapath --ctl /run/twl/n1/datapath.sock --tun twl.tun --port 8285"
        )));
        assert!(is_datapath_argv(&argv(
            "/x/twill lab udp-datapath --ctl /tmp/a.sock --tun twl.tun --port 8285"
        )));
        assert!(!is_datapath_argv(&argv(
            "/x/twill lab udp-baseline --tun twl.tun --port 8285 --route 10.0.0.0/8=1.2.3.4"
        )));
        assert!(!is_datapath_argv(&argv("/x/twilld --node-name n1")));
    }

    #[test]
    fn proc_files_are_read() {
        let stat =
            "4242 (tw (il) d) S 1 4242 4242 0 -1 4194560 500 0 0 0 123 45 0 0 20 0 3 0 99 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(168));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let ps = "cpu  100 5 30 9000 40 2 3 1 0 0\ncpu0 50 2 15 4500 20 1 1 0 0 0\nintr 1\n";
        assert_eq!(parse_busy_ticks(ps), Some(100 + 5 + 30 + 2 + 3 + 1));
        assert_eq!(parse_busy_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(
            parse_loadavg("4.68 3.06 2.58 3/812 26777\n"),
            Some([4.68, 3.06, 2.58])
        );
        assert_eq!(parse_loadavg("4.68 x"), None);
        let j = include_str!("testdata/iperf3_cubic_1s.json");
        assert!(parse_received_bytes(j).unwrap() > 1_000_000);
        assert!(parse_received_bytes("{}").is_err());
    }
}
