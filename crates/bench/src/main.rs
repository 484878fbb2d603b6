//! `twill-bench`: runs Twill and its reference side by side in one run, interleaved, and
//! reports figures and ratios. It reports missed goals but only fails when something
//! breaks (a plugin error, a missing binary).

/// A line to stderr, for people watching a run. A write that fails (its reader went away:
/// `| head`, a closed terminal) is dropped: `eprintln!` panics there, and a panic mid-run,
/// or in a cleanup's message while unwinding, left the run's namespaces behind.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod agents;
mod agents_report;
mod cni;
mod conf;
mod daemon;
mod etcd;
mod mesh;
mod mesh_conf;
mod mesh_report;
mod mesh_watch;
mod netns;
mod plugin;
mod policy;
mod policy_gen;
mod procstat;
mod report;
mod scale;
mod stats;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "twill-bench",
    about = "Twill vs the reference, side by side in one run"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Bench {
    /// Network policy: one change at 10,000 vs 100 endpoints (1,000 policies), and iperf3 through 1,000 policies vs none.
    Policy(policy::Args),
    /// twill-cni (podWiring l3 and bridge) vs bridge + host-local (+ portmap): sequential, concurrent and fill ADD/DEL latency.
    Cni {
        /// Sequential ADD/DEL pairs per plugin.
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        /// ADDs started at once per plugin.
        #[arg(long, default_value_t = 30)]
        concurrent: usize,
        /// Pods to fill each node with, one by one.
        #[arg(long, default_value_t = 1000)]
        fill: usize,
        /// One tcp host port per pod: runtimeConfig for Twill, a bridge→portmap chain for the reference.
        #[arg(long)]
        mappings: bool,
        /// Turn off ipMasq on both plugins (on by default, as in a pod network).
        #[arg(long)]
        no_masq: bool,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The twill-cni binary; default: next to this binary.
        #[arg(long)]
        twill_cni: Option<PathBuf>,
        /// Where the reference plugins live (CNI_PATH).
        #[arg(long, default_value = "/usr/lib/cni")]
        cni_path: PathBuf,
        /// Only remove every twlbench* namespace and scratch folder (left by a killed run).
        #[arg(long)]
        cleanup: bool,
    },
    /// N twilld against one etcd member: time until all hold a block, pod ADDs across them, idle CPU and RSS.
    Agents {
        /// twilld processes started at once, each its own node.
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Pod ADDs (then DELs) spread round-robin over the agents.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// How long the agents stay idle after the pods, measured (fractions allowed).
        #[arg(long, default_value_t = 10.0)]
        idle_minutes: f64,
        /// Pod ADDs/DELs run at a time.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The twilld binary; default: next to this binary.
        #[arg(long)]
        twilld: Option<PathBuf>,
        /// The twill-cni binary; default: next to this binary.
        #[arg(long)]
        twill_cni: Option<PathBuf>,
        /// The etcd server binary.
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd: PathBuf,
        /// Only stop what a killed run left (its etcd and agents, by their recorded PIDs) and
        /// remove every twlbench* namespace and scratch folder.
        #[arg(long)]
        cleanup: bool,
    },
    /// N twilld, each in its own namespace and routing table (host-gw), against a 3-member etcd: cold start with a member SIGKILLed, a join, idle etcd rates and agent cost.
    Scale {
        /// twilld processes started at once (one more joins at the end).
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// The measured idle window, in seconds.
        #[arg(long, default_value_t = 60.0)]
        idle_seconds: f64,
        /// Between the join and the idle window (steady state: past the first peer-view refresh, 150 s).
        #[arg(long, default_value_t = 5.0)]
        settle_seconds: f64,
        /// Between the cold start's convergence and the join (a cluster that has settled).
        #[arg(long, default_value_t = 0.0)]
        join_after_seconds: f64,
        /// How long the cold start may take to converge before the run fails (the goal is 30 s; a longer wait still measures the rest).
        #[arg(long, default_value_t = 300.0)]
        converge_timeout_seconds: f64,
        /// The twilld binary; default: next to this binary.
        #[arg(long)]
        twilld: Option<PathBuf>,
        /// The etcd server binary.
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd: PathBuf,
        /// Only stop what a killed run left and remove every twlbench* namespace and folder.
        #[arg(long)]
        cleanup: bool,
    },
    /// BGP meshes of namespaces: BIRD configured as Calico does vs Twill (its speaker, twilld's bgp backend): cold start, a join, route reflectors, cost.
    Mesh {
        /// Nodes of the mesh (cold start and join).
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Skip the join run.
        #[arg(long)]
        no_join: bool,
        /// Nodes of the route-reflector cold start (0: skip it).
        #[arg(long, default_value_t = 100)]
        rr_nodes: usize,
        /// Route reflectors among them.
        #[arg(long, default_value_t = 2)]
        reflectors: usize,
        /// Peers of the cost run, 100 routes each (0: skip it).
        #[arg(long, default_value_t = 100)]
        cost_peers: usize,
        /// The cost run's idle window after convergence, seconds.
        #[arg(long, default_value_t = 10.0)]
        idle_seconds: f64,
        /// Rounds; each round runs every implementation once, interleaved.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Comma-separated: bird (the reference), speaker (twill bgp serve), twilld.
        #[arg(long, value_delimiter = ',', default_value = "bird,speaker,twilld")]
        implementations: Vec<String>,
        /// How long one run may take to converge.
        #[arg(long, default_value_t = 60.0)]
        timeout_seconds: f64,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The twill binary; default: next to this binary.
        #[arg(long)]
        twill: Option<PathBuf>,
        /// The twilld binary; default: next to this binary.
        #[arg(long)]
        twilld: Option<PathBuf>,
        #[arg(long, default_value = "bird")]
        bird: PathBuf,
        /// Only stop what a killed run left and remove every twlbench* namespace and folder.
        #[arg(long)]
        cleanup: bool,
    },
}

/// A binary next to this one, unless given.
fn sibling(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join(name))
            .ok_or_else(|| anyhow::anyhow!("cannot find the folder of twill-bench; pass --{name}")),
    }
}

/// Stops the processes killed runs left (recorded in their scratch folders), then removes
/// every `twlbench*` namespace and folder.
fn cleanup_leftovers() -> anyhow::Result<()> {
    let processes: usize = netns::leftover_dirs()
        .iter()
        .map(|d| daemon::kill_recorded(d))
        .sum();
    let (namespaces, dirs) = netns::cleanup_all()?;
    say!(
        "twill-bench: stopped {processes} processes, removed {namespaces} namespaces and {dirs} folders"
    );
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        say!("twill-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.bench {
        Bench::Policy(args) => policy::main(args),
        Bench::Cni {
            pairs,
            concurrent,
            fill,
            mappings,
            no_masq,
            output,
            twill_cni,
            cni_path,
            cleanup,
        } => {
            if cleanup {
                return cleanup_leftovers();
            }
            let twill_cni = sibling(twill_cni, "twill-cni")?;
            let config = report::Config {
                pairs,
                concurrent,
                fill,
                mappings,
                ip_masq: !no_masq,
            };
            let figures = cni::run(&cni::Options {
                config,
                twill_cni,
                cni_path,
            })?;
            match output {
                Output::Table => print!("{}", report::tables(&figures)),
                Output::Json => println!("{:#}", report::to_json(&figures)),
            }
            Ok(())
        }
        Bench::Scale {
            agents,
            idle_seconds,
            settle_seconds,
            join_after_seconds,
            converge_timeout_seconds,
            twilld,
            etcd,
            cleanup,
        } => {
            if cleanup {
                return scale::cleanup();
            }
            let figures = scale::run(&scale::Options {
                agents,
                idle_seconds,
                settle_seconds,
                join_after_seconds,
                converge_timeout: std::time::Duration::from_secs_f64(converge_timeout_seconds),
                twilld: sibling(twilld, "twilld")?,
                etcd,
            })?;
            println!("{figures:#}");
            Ok(())
        }
        Bench::Agents {
            agents,
            pods,
            idle_minutes,
            parallel,
            output,
            twilld,
            twill_cni,
            etcd,
            cleanup,
        } => {
            if cleanup {
                return cleanup_leftovers();
            }
            let figures = agents::run(&agents::Options {
                config: agents_report::AgentsConfig {
                    agents,
                    pods,
                    idle_minutes,
                    parallel,
                },
                twilld: sibling(twilld, "twilld")?,
                twill_cni: sibling(twill_cni, "twill-cni")?,
                etcd,
            })?;
            match output {
                Output::Table => print!("{}", agents_report::tables(&figures)),
                Output::Json => println!("{:#}", agents_report::to_json(&figures)),
            }
            // Missed goals are figures; addresses given twice or outside their block are a bug.
            if !figures.pods.check.ok() {
                anyhow::bail!(
                    "pod addresses failed the check: {} given twice, {} outside their agent's block",
                    figures.pods.check.duplicates.len(),
                    figures.pods.check.outside_block.len()
                );
            }
            Ok(())
        }
        Bench::Mesh {
            nodes,
            no_join,
            rr_nodes,
            reflectors,
            cost_peers,
            idle_seconds,
            rounds,
            implementations,
            timeout_seconds,
            output,
            twill,
            twilld,
            bird,
            cleanup,
        } => {
            if cleanup {
                return cleanup_leftovers();
            }
            let implementations = implementations
                .iter()
                .map(|s| {
                    mesh_conf::Implementation::parse(s).ok_or_else(|| {
                        anyhow::anyhow!("--implementations: unknown {s:?} (bird, speaker, twilld)")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let figures = mesh::run(&mesh::Options {
                config: mesh_report::MeshConfig {
                    nodes,
                    join: !no_join,
                    rr_nodes,
                    reflectors,
                    cost_peers,
                    idle_seconds,
                    rounds,
                    implementations,
                },
                twill: sibling(twill, "twill")?,
                twilld: sibling(twilld, "twilld")?,
                bird,
                timeout: std::time::Duration::from_secs_f64(timeout_seconds.max(0.1)),
            })?;
            match output {
                Output::Table => print!("{}", mesh_report::tables(&figures)),
                Output::Json => println!("{:#}", mesh_report::to_json(&figures)),
            }
            let failed = mesh_report::failures(&figures);
            if !failed.is_empty() {
                anyhow::bail!("{} runs did not converge: {}", failed.len(), failed[0]);
            }
            Ok(())
        }
    }
}
