//! `twill-bench cni`: builds one node namespace per plugin, a pool of pod namespaces
//! (untimed), runs the three scenarios with the plugins interleaved, and removes everything
//! it made, on error and on Ctrl-C too. I/O edge driving the pure stats and report.

use crate::conf::Setup;
use crate::netns::{self, PREFIX};
use crate::plugin::{Attachment, Kind, Pod, Subject, Took};
use crate::report::{Config, Figures, PluginFigures, BUCKET};
use crate::stats::{buckets, ms, summarize};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use twill_netlink::Netns;

/// First host port; pod `i` maps `HOST_PORT_BASE + i`.
const HOST_PORT_BASE: u16 = 10000;

pub struct Options {
    pub config: Config,
    pub twill_cni: PathBuf,
    pub cni_path: PathBuf,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C, SIGTERM and SIGHUP stop the run between two plugin calls, so the guard can
/// still remove what was made.
pub(crate) fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler) };
    }
}

pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the benchmark's namespaces and folders were removed");
    }
    Ok(())
}

/// Everything the run made; dropping it removes it all (best effort, errors on stderr).
struct Guard {
    root: Netns,
    namespaces: Vec<String>,
    scratch: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Deleting the node namespaces takes the bridges, veths and nft/iptables state along.
        if let Err(e) = netns::enter(&self.root) {
            say!("twill-bench: {e:#}");
        }
        if let Err(e) = netns::remove(&self.namespaces) {
            say!("twill-bench: cleanup: {e:#}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                say!(
                    "twill-bench: cleanup: cannot remove {}: {e}",
                    self.scratch.display()
                );
            }
        }
    }
}

fn progress(msg: &str) {
    say!("twill-bench: {msg}");
}

pub fn run(opts: &Options) -> Result<Figures> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("twill-bench cni builds network namespaces: run it as root");
    }
    for exe in [
        opts.twill_cni.clone(),
        opts.cni_path.join("bridge"),
        opts.cni_path.join("host-local"),
        opts.cni_path.join("portmap"),
    ] {
        if !exe.is_file() {
            bail!(
                "{} is missing: build twill-cni (cargo build --release --bins) or install containernetworking-plugins, or point --twill-cni/--cni-path at them",
                exe.display()
            );
        }
    }
    catch_signals();
    let c = opts.config;
    let pid = std::process::id();
    let scratch = std::env::temp_dir().join(format!("{PREFIX}{pid}"));
    let mut guard = Guard {
        root: Netns::current()?,
        namespaces: Vec::new(),
        scratch: scratch.clone(),
    };
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;

    let pool = c.pairs.max(c.concurrent).max(c.fill).max(1);
    if pool > usize::from(u16::MAX - HOST_PORT_BASE) {
        bail!("{pool} pods need more host ports than there are; use smaller sizes");
    }
    let kinds = Kind::ALL;
    let n = kinds.len();
    let node_name = |k: Kind| format!("{PREFIX}{pid}-{}", k.label());
    let pod_name = |k: Kind, i: usize| format!("{PREFIX}{pid}-{}-{i}", k.label());
    let mut names: Vec<String> = kinds.iter().map(|k| node_name(*k)).collect();
    for k in kinds {
        names.extend((0..pool).map(|i| pod_name(k, i)));
    }
    // Recorded before creating, so a half-made pool is removed too.
    guard.namespaces = names.clone();
    progress(&format!(
        "creating {n} node and {} pod namespaces (not timed)",
        n * pool
    ));
    netns::create(&names)?;
    for k in kinds {
        // Every node alike: an uplink and a default route, as a real node has (an l3
        // pod's gateway 169.254.1.1 is answered by proxy ARP only if the node routes it).
        netns::batch_in(
            &node_name(k),
            &[
                "link add twlbup0 type veth peer name twlbup1".into(),
                "link set twlbup1 up".into(),
                "link set twlbup0 up".into(),
                "addr add 192.0.2.11/24 dev twlbup0".into(),
                "route add default via 192.0.2.1 dev twlbup0".into(),
            ],
        )?;
    }
    check_interrupted()?;

    let setup = Setup {
        ip_masq: c.ip_masq,
        mappings: c.mappings,
        twill_data_dir: scratch.join("twill-ipam"),
        ref_data_dir: scratch.join("host-local"),
    };
    let subjects = kinds
        .iter()
        .map(|k| {
            Ok(Subject {
                kind: *k,
                node: Netns::open(netns::path_of(&node_name(*k)))?,
                setup: setup.clone(),
                twill_exe: opts.twill_cni.clone(),
                cni_path: opts.cni_path.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let pods: Vec<Vec<Pod>> = kinds
        .iter()
        .map(|k| {
            (0..pool)
                .map(|i| Pod {
                    netns: netns::path_of(&pod_name(*k, i)),
                    host_port: HOST_PORT_BASE + i as u16,
                })
                .collect()
        })
        .collect();

    let mut figures: [PluginFigures; 3] = Default::default();

    progress(&format!(
        "1/3: {} sequential ADD/DEL pairs per plugin",
        c.pairs
    ));
    let (adds, dels) = sequential(&subjects, &pods, c.pairs)?;
    for s in 0..n {
        figures[s].seq_add = summarize(&walls(&adds[s]));
        figures[s].seq_del = summarize(&walls(&dels[s]));
        figures[s].seq_add_cpu = summarize(&cpus(&adds[s]));
        figures[s].seq_del_cpu = summarize(&cpus(&dels[s]));
    }

    progress(&format!(
        "2/3: {} concurrent ADDs, then DELs, per plugin",
        c.concurrent
    ));
    for s in 0..n {
        check_interrupted()?;
        let (add, add_wall, attached) = concurrent_add(&subjects[s], &pods[s][..c.concurrent])?;
        let (del, del_wall) = concurrent_del(&subjects[s], &attached)?;
        let f = &mut figures[s];
        f.conc_add = summarize(&add);
        f.conc_add_wall_ms = ms(add_wall);
        f.conc_del = summarize(&del);
        f.conc_del_wall_ms = ms(del_wall);
    }

    progress(&format!(
        "3/3: filling each node to {} pods, then tearing down",
        c.fill
    ));
    let (adds, dels) = fill(&subjects, &pods, c.fill)?;
    for s in 0..n {
        figures[s].fill_add = summarize(&walls(&adds[s]));
        figures[s].fill_buckets = buckets(&walls(&adds[s]), BUCKET);
        figures[s].fill_del = summarize(&walls(&dels[s]));
        figures[s].fill_add_cpu = summarize(&cpus(&adds[s]));
        figures[s].fill_cpu_buckets = buckets(&cpus(&adds[s]), BUCKET);
    }

    drop(subjects);
    drop(guard);
    let [l3, bridge, reference] = figures;
    Ok(Figures {
        config: c,
        l3,
        bridge,
        reference,
    })
}

/// The order the plugins run in round `i`: rotated, so none always runs first (on a warmer
/// or colder machine) or always after the same one.
fn order(i: usize) -> [usize; 3] {
    [i % 3, (i + 1) % 3, (i + 2) % 3]
}

type PerPlugin = [Vec<Took>; 3];

fn walls(t: &[Took]) -> Vec<Duration> {
    t.iter().map(|t| t.wall).collect()
}

fn cpus(t: &[Took]) -> Vec<Duration> {
    t.iter().map(|t| t.cpu).collect()
}

fn sequential(
    subjects: &[Subject],
    pods: &[Vec<Pod>],
    pairs: usize,
) -> Result<(PerPlugin, PerPlugin)> {
    let mut adds: PerPlugin = Default::default();
    let mut dels: PerPlugin = Default::default();
    for i in 0..pairs {
        for s in order(i) {
            check_interrupted()?;
            let pod = &pods[s][i % pods[s].len()];
            let (took, attached) = subjects[s].add(pod)?;
            adds[s].push(took);
            dels[s].push(subjects[s].del(&attached)?);
        }
    }
    Ok((adds, dels))
}

/// Runs `op` for every item on its own thread, all released at once by a barrier. Returns
/// each op's own latency and the wall time from the first start to the last finish.
fn all_at_once<T: Sync, R: Send>(
    items: &[T],
    op: impl Fn(&T) -> Result<(Duration, R)> + Sync,
) -> Result<(Vec<Duration>, Duration, Vec<R>)> {
    let barrier = Barrier::new(items.len());
    let outcomes: Vec<Result<(Instant, Instant, Duration, R)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| {
                let (barrier, op) = (&barrier, &op);
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let (took, r) = op(item)?;
                    Ok((start, Instant::now(), took, r))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a benchmark thread panicked")))
            })
            .collect()
    });
    let mut lat = Vec::new();
    let mut results = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for o in outcomes {
        let (start, end, took, r) = o?;
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
        lat.push(took);
        results.push(r);
    }
    let wall = match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => Duration::ZERO,
    };
    Ok((lat, wall, results))
}

fn concurrent_add(
    subject: &Subject,
    pods: &[Pod],
) -> Result<(Vec<Duration>, Duration, Vec<Attachment>)> {
    all_at_once(pods, |p| subject.add(p).map(|(t, a)| (t.wall, a)))
}

fn concurrent_del(subject: &Subject, attached: &[Attachment]) -> Result<(Vec<Duration>, Duration)> {
    let (lat, wall, _) = all_at_once(attached, |a| subject.del(a).map(|t| (t.wall, ())))?;
    Ok((lat, wall))
}

// `i` picks pod i of both plugins, in the order `order(i)` gives: an index reads clearest.
#[allow(clippy::needless_range_loop)]
fn fill(subjects: &[Subject], pods: &[Vec<Pod>], count: usize) -> Result<(PerPlugin, PerPlugin)> {
    let mut adds: PerPlugin = Default::default();
    let mut dels: PerPlugin = Default::default();
    let mut attached: [Vec<Attachment>; 3] = Default::default();
    for i in 0..count {
        for s in order(i) {
            check_interrupted()?;
            let (took, a) = subjects[s].add(&pods[s][i])?;
            adds[s].push(took);
            attached[s].push(a);
        }
    }
    for i in 0..count {
        for s in order(i) {
            check_interrupted()?;
            dels[s].push(subjects[s].del(&attached[s][i])?);
        }
    }
    Ok((adds, dels))
}
