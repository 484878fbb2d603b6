//! `twill-bench policy`: network policy's two benchmarks, each side by side in one run.
//!
//! (a) **A change at scale.** Two one-node labs at once (real twilld with `--policy true`,
//! an etcd member, twill-cni ADD for the node's 2 real pods), one holding 100 endpoints and
//! one 10,000, both with the same 1,000 NetworkPolicies ([`crate::policy_gen`]'s layout;
//! every endpoint but the 2 real pods is a store entry of a remote node that does not
//! run, as its agent would have published it). Rounds alternate small, large: each times
//! one policy change (policy 0, which selects the real pod `ns0/p0`, gets a new port) and
//! one pod joining a selected set (a new remote endpoint with `app=a1`, policy 0's peer),
//! from the store write (etcd put returned) until `nft monitor` in the node prints the
//! change (the kernel has it), and reads twilld's own `twill_policy_apply_seconds` and
//! `twill_policy_compile_seconds`. Goal: <= 5 ms both, the same at 100 and at 10,000.
//!
//! (b) **The dataplane cost.** Two one-node labs, bridge wiring, the same 2 real pods; one
//! holds the 1,000 policies (and 1,000 endpoints), the other none; iperf3 (cubic, one
//! stream) from `ns0/p10` to `ns0/p0` on TCP 1000, which policy 0 allows (the first packet
//! of each connection walks the policy chains, the rest hits `ct state established`),
//! A B A B in one run. Goal: >= 0.95x.
//!
//! Never a timed test: it reports figures and ratios, and fails only when something
//! breaks. Lab names are fixed (`twlbpsm`, `twlbplg`, `twlbpip`, `twlbpno`): after a
//! killed run, `twill-bench policy --cleanup` (or `twill lab down --name …`).

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use twill_api::policy::{namespace_key, Namespace};
use twill_lab::plan::{BackendKind, PodIdentity, PodWiring, StoreKind};
use twill_lab::{LabSpec, LabState};
use twill_store::PREFIX;

use crate::policy_gen as gen;

pub const LAB_SMALL: &str = "twlbpsm";
pub const LAB_LARGE: &str = "twlbplg";
pub const LAB_IPERF_POLICIES: &str = "twlbpip";
pub const LAB_IPERF_NONE: &str = "twlbpno";
const LABS: [&str; 4] = [LAB_SMALL, LAB_LARGE, LAB_IPERF_POLICIES, LAB_IPERF_NONE];

#[derive(clap::Args)]
pub struct Args {
    /// Rounds of (a); each times both labs, alternating.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// NetworkPolicies in place in every lab of (a), and in the policy lab of (b).
    #[arg(long, default_value_t = 1000)]
    pub policies: usize,
    /// Endpoints of the small lab (the reference).
    #[arg(long, default_value_t = 100)]
    pub small: usize,
    /// Endpoints of the large lab.
    #[arg(long, default_value_t = 10_000)]
    pub large: usize,
    /// iperf3 runs per lab in (b), alternating.
    #[arg(long, default_value_t = 3)]
    pub iperf_rounds: usize,
    #[arg(long, default_value_t = 5)]
    pub iperf_seconds: u32,
    /// Skip (a).
    #[arg(long)]
    pub no_apply: bool,
    /// Skip (b).
    #[arg(long)]
    pub no_iperf: bool,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// twill-cni; default: next to this binary.
    #[arg(long)]
    pub twill_cni: Option<PathBuf>,
    /// twilld; default: next to this binary.
    #[arg(long)]
    pub twilld: Option<PathBuf>,
    /// Only take down the labs a killed run left.
    #[arg(long)]
    pub cleanup: bool,
}

fn log(msg: &str) {
    eprintln!("twill-bench policy: {msg}");
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if args.cleanup {
        for name in LABS {
            twill_lab::down(name, &|_| {}).with_context(|| format!("lab down {name}"))?;
        }
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let bin = |flag: &Option<PathBuf>, name: &str| {
        flag.clone()
            .unwrap_or_else(|| exe.parent().unwrap_or(Path::new(".")).join(name))
    };
    let (cni, twilld) = (
        bin(&args.twill_cni, "twill-cni"),
        bin(&args.twilld, "twilld"),
    );
    let mut report = json!({"config": {
        "rounds": args.rounds, "policies": args.policies, "small": args.small,
        "large": args.large, "iperfRounds": args.iperf_rounds,
        "iperfSeconds": args.iperf_seconds, "store": "etcd", "realPodsPerLab": gen::REAL_PODS.len(),
    }});
    if !args.no_apply {
        report["apply"] = apply_bench(&args, &cni, &twilld)?;
    }
    if !args.no_iperf {
        report["iperf"] = iperf_bench(&args, &cni, &twilld)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// A lab taken down however the benchmark ends.
struct Lab {
    state: LabState,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = twill_lab::down(&self.state.plan.name, &|_| {}) {
            log(&format!("lab down {}: {e}", self.state.plan.name));
        }
    }
}

impl Lab {
    fn up(name: &str, wiring: PodWiring, cni: &Path, twilld: &Path) -> anyhow::Result<Lab> {
        let pods = gen::REAL_PODS
            .iter()
            .map(|&i| PodIdentity {
                namespace: gen::namespace(i),
                name: format!("p{i}"),
                labels: gen::labels(i),
                named_ports: Vec::new(),
            })
            .collect();
        let spec = LabSpec {
            name: name.into(),
            nodes: 1,
            store: StoreKind::Etcd,
            backend: BackendKind::None,
            pod_wiring: wiring,
            pods,
            policy: true,
            ..LabSpec::default()
        };
        let state =
            twill_lab::up(&spec, cni, twilld, &|_| {}).with_context(|| format!("lab up {name}"))?;
        Ok(Lab { state })
    }

    fn node_ns(&self) -> &str {
        &self.state.plan.nodes[0].netns
    }

    fn put_all(&self, kvs: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        twill_lab::daemons::with_store(&self.state.plan, move |store| {
            for (k, v) in &kvs {
                store
                    .put(&format!("{PREFIX}{k}"), v, None)
                    .map_err(|e| format!("{k}: {e}"))?;
            }
            Ok(())
        })
        .map_err(|e| anyhow!("write to {}'s store: {e}", self.state.plan.name))
    }

    fn delete(&self, key: &str) -> anyhow::Result<()> {
        let key = format!("{PREFIX}{key}");
        twill_lab::daemons::with_store(&self.state.plan, move |store| {
            store.delete(&key).map(|_| ()).map_err(|e| e.to_string())
        })
        .map_err(|e| anyhow!("delete in {}'s store: {e}", self.state.plan.name))
    }

    /// `pods` endpoints (the real ones included) and `policies` policies, plus the
    /// namespaces; the remote addresses avoid the node's own blocks.
    fn populate(&self, pods: usize, policies: usize) -> anyhow::Result<Vec<Ipv4Addr>> {
        let blocks: Vec<ipnet::Ipv4Net> = twill_lab::daemons::read_nodes(&self.state.plan)
            .map_err(|e| anyhow!(e))?
            .into_values()
            .flat_map(|n| n.blocks)
            .collect();
        let mut ips = gen::addresses(self.state.plan.cluster_cidr, &blocks, pods + 100);
        let spare = ips.split_off(pods);
        let mut kvs: Vec<(String, Vec<u8>)> = (0..gen::NAMESPACES)
            .map(|n| {
                let name = gen::namespace(n);
                let ns = Namespace {
                    labels: [("ns".to_string(), name.clone())].into(),
                };
                (namespace_key(&name), serde_json::to_vec(&ns).unwrap())
            })
            .collect();
        for (k, ep) in gen::remote_endpoints(pods, &ips) {
            kvs.push((k, serde_json::to_vec(&ep)?));
        }
        for k in 0..policies {
            let (key, spec) = gen::policy(k, None);
            kvs.push((key, serde_json::to_vec(&spec)?));
        }
        self.put_all(kvs)?;
        Ok(spare)
    }

    fn metrics(&self) -> (Option<f64>, Option<f64>) {
        let page = twill_lab::daemons::http_get(
            self.node_ns(),
            twill_lab::daemons::agent_addr(),
            "/metrics",
        )
        .map(|(_, b)| b)
        .unwrap_or_default();
        (
            twill_lab::daemons::metric(&page, "twill_policy_apply_seconds"),
            twill_lab::daemons::metric(&page, "twill_policy_compile_seconds"),
        )
    }
}

/// `nft monitor` in a node: every line it prints, with when it arrived.
struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Monitor {
    fn start(netns: &str) -> anyhow::Result<Monitor> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "nft", "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("run nft monitor (is nftables installed?)")?;
        let out = child.stdout.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push((Instant::now(), line));
            }
        });
        Ok(Monitor { child, lines })
    }

    fn clear(&self) {
        self.lines.lock().unwrap().clear();
    }

    /// Waits until the monitor has been quiet for `quiet` (the agent is done), at most
    /// `limit`.
    fn settle(&self, quiet: Duration, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            let last = self.lines.lock().unwrap().last().map(|(t, _)| *t);
            let since = last.map_or(start.elapsed(), |t| t.elapsed());
            if since >= quiet && start.elapsed() >= quiet {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Milliseconds from `t0` to the first line holding `marker`, waiting up to `limit`.
    fn wait_for(&self, t0: Instant, marker: &str, limit: Duration) -> Option<f64> {
        loop {
            let lines: Vec<(f64, String)> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .map(|(t, l)| {
                    (
                        t.saturating_duration_since(t0).as_secs_f64() * 1000.0,
                        l.clone(),
                    )
                })
                .collect();
            if let Some(ms) = gen::first_with(&lines, marker) {
                return Some(ms);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One timed change: `write` at t0, then the first monitor line with `marker`.
fn timed(
    lab: &Lab,
    mon: &Monitor,
    marker: &str,
    write: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Value> {
    mon.settle(Duration::from_millis(300), Duration::from_secs(30));
    mon.clear();
    let t0 = Instant::now();
    write()?;
    let written = t0.elapsed().as_secs_f64() * 1000.0;
    let visible = mon.wait_for(t0, marker, Duration::from_secs(10));
    mon.settle(Duration::from_millis(300), Duration::from_secs(30));
    let (apply, compile) = lab.metrics();
    Ok(json!({
        "writeMs": written,
        "visibleMs": visible,
        "applyMs": apply.map(|s| s * 1000.0),
        "compileMs": compile.map(|s| s * 1000.0),
    }))
}

fn apply_bench(args: &Args, cni: &Path, twilld: &Path) -> anyhow::Result<Value> {
    log("(a) building the small and large labs");
    let small = Lab::up(LAB_SMALL, PodWiring::Bridge, cni, twilld)?;
    let large = Lab::up(LAB_LARGE, PodWiring::Bridge, cni, twilld)?;
    let mons = [
        Monitor::start(small.node_ns())?,
        Monitor::start(large.node_ns())?,
    ];
    let mut spares = Vec::new();
    for (lab, pods, mon) in [
        (&small, args.small, &mons[0]),
        (&large, args.large, &mons[1]),
    ] {
        let t = Instant::now();
        spares.push(lab.populate(pods, args.policies)?);
        let settled = mon.settle(Duration::from_secs(2), Duration::from_secs(300));
        log(&format!(
            "(a) {}: {pods} endpoints and {} policies in the store, agent settled after {:.1}s{}",
            lab.state.plan.name,
            args.policies,
            t.elapsed().as_secs_f64(),
            if settled { "" } else { " (still busy)" }
        ));
    }
    let mut samples: Vec<Vec<(Value, Value)>> = vec![Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (s, lab) in [&small, &large].into_iter().enumerate() {
            let mon = &mons[s];
            let port = gen::marker_port(round);
            let change = timed(lab, mon, &port.to_string(), || {
                let (k, spec) = gen::policy(0, Some(port));
                lab.put_all(vec![(k, serde_json::to_vec(&spec)?)])
            })?;
            let ip = spares[s][round % spares[s].len()];
            let mut ep = gen::remote_endpoint(100_000 + round, "rmjoin", ip).1;
            ep.namespace = "ns0".into();
            ep.labels = gen::joining_labels();
            let key = twill_api::policy::endpoint_key("rmjoin", "ns0", &ep.pod);
            let join = timed(lab, mon, &ip.to_string(), || {
                lab.put_all(vec![(key.clone(), serde_json::to_vec(&ep)?)])
            })?;
            lab.delete(&key)?;
            samples[s].push((change, join));
        }
        log(&format!("(a) round {} of {} done", round + 1, args.rounds));
    }
    let summarize = |v: &[(Value, Value)], pick: fn(&(Value, Value)) -> &Value, field: &str| {
        let xs: Vec<f64> = v.iter().filter_map(|p| pick(p)[field].as_f64()).collect();
        json!({"median": gen::median(&xs), "n": xs.len(), "missed": v.len() - xs.len(),
               "max": xs.iter().cloned().fold(f64::NAN, f64::max)})
    };
    let side = |v: &[(Value, Value)], pods: usize| {
        let mut o = json!({"endpoints": pods});
        for (name, pick) in [
            (
                "policyChange",
                (|p: &(Value, Value)| &p.0) as fn(&(Value, Value)) -> &Value,
            ),
            ("podJoin", |p: &(Value, Value)| &p.1),
        ] {
            o[name] = json!({
                "visible": summarize(v, pick, "visibleMs"),
                "apply": summarize(v, pick, "applyMs"),
                "compile": summarize(v, pick, "compileMs"),
                "write": summarize(v, pick, "writeMs"),
            });
        }
        o
    };
    let (s, l) = (side(&samples[0], args.small), side(&samples[1], args.large));
    let ratio = |what: &str| {
        l[what]["visible"]["median"].as_f64().unwrap_or(f64::NAN)
            / s[what]["visible"]["median"].as_f64().unwrap_or(f64::NAN)
    };
    let ratios = json!({"policyChange": ratio("policyChange"), "podJoin": ratio("podJoin")});
    Ok(json!({"small": s, "large": l, "ratioLargeToSmall": ratios,
              "rounds": samples.iter().map(|v| v.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()).collect::<Vec<_>>()}))
}

fn pod(lab: &Lab, i: usize) -> anyhow::Result<(String, Ipv4Addr)> {
    let short = format!("{}-p{i}", gen::namespace(i));
    let p = lab
        .state
        .plan
        .pods()
        .find(|p| p.short == short)
        .ok_or_else(|| anyhow!("no pod {short}"))?;
    let ip = lab
        .state
        .pod(&short)
        .and_then(|r| r.address)
        .ok_or_else(|| anyhow!("pod {short} has no address"))?;
    Ok((p.netns.clone(), ip))
}

/// One iperf3 run in `lab` from pod 10 to pod 0 on policy 0's port: Gbit/s.
fn iperf(lab: &Lab, seconds: u32) -> anyhow::Result<f64> {
    let (srv_ns, srv_ip) = pod(lab, 0)?;
    let (cli_ns, _) = pod(lab, 10)?;
    let port = gen::policy_port(0).to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", &srv_ns, "iperf3", "-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run iperf3 (apt-get install iperf3)")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns", "exec", &cli_ns, "iperf3", "-J", "-C", "cubic", "-c",
        ])
        .arg(srv_ip.to_string())
        .args(["-p", &port, "-t", &seconds.to_string()])
        .output()
        .context("run iperf3 -c")?;
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow!(
            "iperf3 -J output: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3 in {}: {err}", lab.state.plan.name);
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| anyhow!("iperf3 gave no throughput: {v}"))
}

fn iperf_bench(args: &Args, cni: &Path, twilld: &Path) -> anyhow::Result<Value> {
    log("(b) building the labs with and without policies");
    let with = Lab::up(LAB_IPERF_POLICIES, PodWiring::Bridge, cni, twilld)?;
    let none = Lab::up(LAB_IPERF_NONE, PodWiring::Bridge, cni, twilld)?;
    let mon = Monitor::start(with.node_ns())?;
    with.populate(args.policies, args.policies)?;
    mon.settle(Duration::from_secs(2), Duration::from_secs(300));
    drop(mon);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..args.iperf_rounds {
        a.push(iperf(&with, args.iperf_seconds)?);
        b.push(iperf(&none, args.iperf_seconds)?);
        log(&format!(
            "(b) round {}: {:.2} vs {:.2} Gbit/s",
            r + 1,
            a[r],
            b[r]
        ));
    }
    let (ma, mb) = (gen::median(&a), gen::median(&b));
    Ok(
        json!({"withPolicies": {"gbps": a, "median": ma, "policies": args.policies},
              "none": {"gbps": b, "median": mb}, "ratio": ma / mb}),
    )
}

fn f(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))
}

fn render(r: &Value) -> String {
    let mut s = String::new();
    if let Some(a) = r.get("apply") {
        s.push_str(&format!(
            "(a) store write -> nft-visible, median ms ({} rounds, {} policies; goal <= 5 ms)\n",
            r["config"]["rounds"], r["config"]["policies"]
        ));
        s.push_str(
            "                      endpoints  visible   apply(twilld)  compile(twilld)  etcd put\n",
        );
        for what in ["policyChange", "podJoin"] {
            for side in ["small", "large"] {
                let x = &a[side][what];
                s.push_str(&format!(
                    "{what:<14} {side:<6} {:>9}  {:>7}  {:>13}  {:>15}  {:>8}\n",
                    a[side]["endpoints"],
                    f(&x["visible"]["median"]),
                    f(&x["apply"]["median"]),
                    f(&x["compile"]["median"]),
                    f(&x["write"]["median"]),
                ));
            }
        }
        s.push_str(&format!(
            "ratio large/small (visible): policy change {}, pod join {}\n",
            f(&a["ratioLargeToSmall"]["policyChange"]),
            f(&a["ratioLargeToSmall"]["podJoin"])
        ));
    }
    if let Some(b) = r.get("iperf") {
        s.push_str(&format!(
            "(b) iperf3 Gbit/s (cubic, median of {}): {} policies {} vs none {}: ratio {} (goal >= 0.95)\n",
            r["config"]["iperfRounds"],
            b["withPolicies"]["policies"],
            f(&b["withPolicies"]["median"]),
            f(&b["none"]["median"]),
            f(&b["ratio"])
        ));
    }
    s
}
