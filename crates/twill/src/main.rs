//! `twill`: Twill's command-line tool. For now it has `twill lab`; resources, `node status`
//! and `ipam` come later. The work lives in the library crates; this stays a thin shell.

mod lab;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "twill",
    version,
    about = "Twill: a pod network for Kubernetes-style clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A cluster made of network namespaces on this machine: build, inspect, check, remove.
    Lab(lab::LabArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("twill: error: {e:#}");
            std::process::exit(1);
        }
    }
}
