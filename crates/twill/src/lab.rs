//! `twill lab ...`: argument parsing and printing; the work is in the `twill-lab` crate.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use twill_lab::plan::{self, LabSpec, DEFAULT_NAME};
use twill_lab::{build, check, runtime, status};

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Args)]
struct NameArg {
    /// Lab name: starts with "twl", at most 8 of a-z/0-9; every namespace is named <name>-...
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
}

#[derive(Args)]
struct CniArg {
    /// The twill-cni binary [default: $TWILL_CNI_BIN, else twill-cni next to this twill]
    #[arg(long, value_name = "PATH")]
    cni_bin: Option<PathBuf>,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build the lab: underlay switch, router, outside host, nodes, and pods wired by twill-cni.
    Up {
        #[command(flatten)]
        name: NameArg,
        /// Number of nodes.
        #[arg(long, default_value_t = 1)]
        nodes: u16,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods_per_node: u16,
        #[command(flatten)]
        cni: CniArg,
    },
    /// Namespaces, interfaces and addresses (read live), node subnets and pod addresses.
    Status {
        #[command(flatten)]
        name: NameArg,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Run a command inside a lab member (n1, n1-p2, rt, out, ul); its exit code passes through.
    Exec {
        #[command(flatten)]
        name: NameArg,
        /// n1, n1-p2, rt, out or ul.
        #[arg(value_name = "NODE_OR_POD")]
        target: String,
        /// The command, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Connectivity checks (pod↔pod, pod↔node, masquerade, host ports, hairpin); exits 1 on a failure.
    Check {
        #[command(flatten)]
        name: NameArg,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Remove the lab: DEL every pod, delete its namespaces and /run/<name>.
    Down {
        #[command(flatten)]
        name: NameArg,
    },
    /// up, status, check, down, explaining what is built and why.
    Demo {
        #[command(flatten)]
        name: NameArg,
        #[arg(long, default_value_t = 2)]
        pods_per_node: u16,
        #[command(flatten)]
        cni: CniArg,
    },
}

fn progress(line: &str) {
    eprintln!("  {line}");
}

fn cni_bin(arg: &CniArg) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running twill executable")?;
    let env = std::env::var(runtime::CNI_BIN_ENV).ok();
    Ok(runtime::locate_plugin(
        arg.cni_bin.as_deref(),
        env.as_deref(),
        &exe,
    ))
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn run(args: LabArgs) -> anyhow::Result<i32> {
    match args.command {
        LabCommand::Up {
            name,
            nodes,
            pods_per_node,
            cni,
        } => {
            let spec = LabSpec {
                name: name.name,
                nodes,
                pods_per_node,
                segments: 1,
            };
            let state = build::up(&spec, &cni_bin(&cni)?, &progress)?;
            println!(
                "lab {} is up: {} node(s), {} pod(s); try `twill lab status --name {0}` and `twill lab check --name {0}`",
                state.plan.name,
                state.plan.nodes.len(),
                state.pods.len()
            );
            Ok(0)
        }
        LabCommand::Status { name, output } => {
            let st = status::status(&build::load(&name.name)?)?;
            match output {
                Output::Json => print_json(&st)?,
                Output::Table => print!("{}", status::render(&st)),
            }
            Ok(0)
        }
        LabCommand::Exec {
            name,
            target,
            command,
        } => Ok(build::exec(&build::load(&name.name)?, &target, &command)?),
        LabCommand::Check { name, output } => {
            let report = check::run(&build::load(&name.name)?)?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Table => print!("{}", check::render(&report)),
            }
            Ok(if report.passed { 0 } else { 1 })
        }
        LabCommand::Down { name } => {
            let report = build::down(&name.name, &progress)?;
            for w in &report.warnings {
                eprintln!("twill: warning: {w}");
            }
            if report.found {
                println!("lab {} removed", name.name);
            } else {
                println!("no lab {} here; nothing to remove", name.name);
            }
            Ok(0)
        }
        LabCommand::Demo {
            name,
            pods_per_node,
            cni,
        } => demo(&name.name, pods_per_node, &cni_bin(&cni)?),
    }
}

/// The classic walk through pod networking, built and proven in one go.
fn demo(name: &str, pods_per_node: u16, cni_bin: &std::path::Path) -> anyhow::Result<i32> {
    let spec = LabSpec {
        name: name.into(),
        nodes: 1,
        pods_per_node,
        segments: 1,
    };
    let p = plan::plan(&spec)?;
    let node = &p.nodes[0];
    let seg = &p.segments[0];
    println!(
        "== 1. Network namespaces\n\
         Every machine of the lab is a network namespace: its own interfaces, routes and firewall.\n\
         A new one holds only `lo`. The lab makes: {} (the underlay switch), {} (a router),\n\
         {} (a host on the outside), {} (a node), and one per pod.\n",
        seg.netns, p.router.netns, p.outside.netns, node.netns
    );
    println!(
        "== 2. veth pairs and bridges\n\
         A veth pair is a cable between two namespaces. The underlay is a Linux bridge ({} in {}),\n\
         a layer-2 switch: the node's eth0 ({}) and the router's leg ({}/24) plug into it.\n",
        seg.bridge, seg.netns, node.address, seg.gateway
    );
    println!(
        "== 3. The runtime calls the CNI plugin\n\
         For each pod the lab does what kubelet's container runtime does: it creates the pod's\n\
         namespace and runs `twill-cni` inside the node with CNI_COMMAND=ADD,\n\
         CNI_NETNS=/run/netns/<pod>, CNI_IFNAME=eth0 and the network config on stdin\n\
         (from {}). The plugin makes a veth pair (eth0 in the pod, the other end a\n\
         port of the node bridge {}), picks an address in {} and routes the pod via {}:\n\
         the docker0/cni0 model.\n",
        node.conflist.display(),
        node.bridge,
        node.pod_subnet,
        node.pod_gateway
    );
    println!("building lab {name} ...");
    let state = match build::up(&spec, cni_bin, &progress) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("twill: error: {e}");
            return Ok(1);
        }
    };
    let outcome = demo_body(&state);
    println!("\n== 7. Cleaning up\nDEL for every pod (with the ADD result as prevResult), then the namespaces.");
    let down = build::down(name, &progress);
    let check_passed = match outcome {
        Ok(passed) => passed,
        Err(e) => {
            eprintln!("twill: error: {e:#}");
            false
        }
    };
    match down {
        Ok(r) => r
            .warnings
            .iter()
            .for_each(|w| eprintln!("twill: warning: {w}")),
        Err(e) => {
            eprintln!("twill: error: {e}");
            return Ok(1);
        }
    }
    println!("lab {name} removed");
    Ok(if check_passed { 0 } else { 1 })
}

fn demo_body(state: &twill_lab::LabState) -> anyhow::Result<bool> {
    let p = &state.plan;
    let node = &p.nodes[0];
    let st = status::status(state)?;
    println!("\n{}", status::render(&st));
    let routes = build::ip(&["-n", &node.netns, "route", "show"])?;
    println!(
        "== 4. The routing table picks the interface\n\
         `ip -n {} route` on the node: the default route goes to the router on eth0, the node's own\n\
         pod subnet sits on the bridge. Routes choose where a packet goes; NAT only rewrites it.\n{}",
        node.netns,
        routes.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    println!(
        "== 5. NAT: masquerade and host ports\n\
         The router ({}) has no route to {}: pods reach the outside only because the node\n\
         masquerades their traffic to its own address {}. A host port is a DNAT rule: {}:{} is\n\
         rewritten to pod 1's :{}. Hairpin: a pod reaching its own host port needs masquerade too.\n\
         See the rules: twill lab exec --name {} {} -- nft list ruleset\n",
        p.router.netns,
        p.cluster_cidr,
        node.address.addr(),
        node.address.addr(),
        plan::HOST_PORT_TCP,
        plan::CONTAINER_PORT_TCP,
        p.name,
        node.short
    );
    println!("== 6. Proving it: every check sends real packets between the namespaces");
    let report = check::run(state)?;
    print!("{}", check::render(&report));
    Ok(report.passed)
}
