//! `twill-bench`: runs Twill and its reference side by side in one run, interleaved, and
//! reports figures and ratios. It reports missed goals but only fails when something
//! breaks (a plugin error, a missing binary).

mod cni;
mod conf;
mod netns;
mod plugin;
mod report;
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
    /// twill-cni vs bridge + host-local (+ portmap): sequential, concurrent and fill ADD/DEL latency.
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
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("twill-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.bench {
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
                let (namespaces, dirs) = netns::cleanup_all()?;
                eprintln!("twill-bench: removed {namespaces} namespaces and {dirs} folders");
                return Ok(());
            }
            let twill_cni = match twill_cni {
                Some(p) => p,
                None => std::env::current_exe()?
                    .parent()
                    .map(|d| d.join("twill-cni"))
                    .ok_or_else(|| {
                        anyhow::anyhow!("cannot find the folder of twill-bench; pass --twill-cni")
                    })?,
            };
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
    }
}
