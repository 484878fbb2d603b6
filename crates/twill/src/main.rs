//! `twill`: Twill's command-line tool (calicoctl's role): the cluster's resources (`get`,
//! `apply -f`, `delete`), `node remove`, `ipam show|check`, and `twill lab`. The work lives
//! in the library crates and in pure functions here; the `run` functions do the I/O.

mod bgp_cmd;
mod install_cni;
mod ipam_cmd;
mod kind_arg;
mod lab;
mod label_cmd;
mod node_cmd;
mod node_status;
mod policy_cmd;
mod policy_get;
mod policy_log;
mod resources;
mod store_args;
mod suggest;
mod table;
mod view;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "twill",
    version,
    about = "Twill: a pod network for Kubernetes-style clusters"
)]
struct Cli {
    #[command(flatten)]
    store: store_args::StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List nodes, blocks, the network config, the BGP configuration, BGP peers, network
    /// policies, global network policies, namespaces or the pods' endpoints: a table, or
    /// -o wide|yaml|json.
    Get(resources::GetArgs),
    /// Create or update resources from a file (NetworkConfig, Node overrides,
    /// BGPConfiguration, BGPPeer, NetworkPolicy, GlobalNetworkPolicy, Namespace).
    Apply(resources::ApplyArgs),
    /// Delete a node's override, the network config, a BGP peer, the BGP configuration, a
    /// network policy, a global network policy or a namespace's labels.
    Delete(resources::DeleteArgs),
    /// Set or remove labels of a pod (`podlabels/…`) or a namespace, as kubectl label.
    Label(label_cmd::LabelArgs),
    /// Nodes: peer reachability (status), retiring a node and freeing its blocks (remove).
    Node(node_cmd::NodeArgs),
    /// The pod address space: per-node usage, and a consistency check.
    Ipam(ipam_cmd::IpamArgs),
    /// A cluster made of network namespaces on this machine: build, inspect, check, remove.
    Lab(lab::LabArgs),
    /// Twill's BGP speaker on its own: serve a config, show its neighbors and RIB.
    Bgp(bgp_cmd::BgpArgs),
    /// Network policy: why a flow is allowed or denied (explain).
    Policy(policy_cmd::PolicyArgs),
    /// Copy twill-cni into the CNI bin dir and write 10-twill.conflist (a node's init
    /// step, as flannel's and Calico's install-cni); --uninstall removes them.
    InstallCni(install_cni::InstallCniArgs),
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| suggest::with_tip(e, &Cli::command(), &argv).exit());
    let result = match cli.command {
        Command::Lab(args) => lab::run(args, &cli.store),
        Command::Bgp(args) => bgp_cmd::run(args),
        // Files only: no store.
        Command::InstallCni(args) => install_cni::run(args),
        // Each of its subcommands reads what it needs (the store, or twilld).
        Command::Policy(args) => policy_cmd::run(args, &cli.store),
        // Only apply may make a new store, and only once the file is found good; the rest
        // work on one that exists.
        Command::Apply(a) => resources::run_apply(a, &cli.store),
        command => with_store(&cli.store, |store| match command {
            Command::Get(a) => resources::run_get(a, store),
            Command::Delete(a) => resources::run_delete(a, store),
            Command::Node(a) => node_cmd::run(a, store),
            Command::Label(a) => label_cmd::run(a, store),
            Command::Ipam(a) => ipam_cmd::run(a, store),
            Command::Lab(_)
            | Command::Apply(_)
            | Command::Bgp(_)
            | Command::Policy(_)
            | Command::InstallCni(_) => {
                unreachable!("handled above")
            }
        }),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("twill: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Opens the store the flags name, never creating one, and runs `f`; a store failure comes
/// back explained.
fn with_store(
    args: &store_args::StoreArgs,
    f: impl FnOnce(&dyn twill_store::Store) -> anyhow::Result<i32>,
) -> anyhow::Result<i32> {
    let cfg = args.config()?;
    let store = store_args::open_existing(&cfg)?;
    f(store.as_ref()).map_err(|e| store_args::explain_any(e, &cfg))
}
