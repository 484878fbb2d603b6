//! `twill lab ...`: argument parsing and printing; the work is in the `twill-lab` crate.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use twill_lab::plan::{
    self, BackendKind, ExternalRouter, LabSpec, PodWiring, StoreKind, DEFAULT_BLOCK_SIZE,
    DEFAULT_NAME,
};
use twill_lab::{build, check, daemons, runtime, status};

use crate::kind_arg;

mod demo_bgp;
mod demo_ovs;
mod explain;
use crate::store_args::StoreArgs;

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
    // Global: `twill lab store stop --name X` works as well as `store --name X stop`.
    #[arg(long, default_value = DEFAULT_NAME, global = true)]
    name: String,
}

#[derive(Args)]
struct CniArg {
    /// The twill-cni binary [default: $TWILL_CNI_BIN, else twill-cni next to this twill]
    #[arg(long, value_name = "PATH")]
    cni_bin: Option<PathBuf>,
}

#[derive(Args)]
struct AgentArgs {
    /// The twilld binary [default: $TWILL_TWILLD_BIN, else twilld next to this twill]
    #[arg(long, value_name = "PATH")]
    twilld_bin: Option<PathBuf>,
    /// Prefix length of the blocks the agents claim: 24 gives each node a /24 (flannel's
    /// model); 26 gives /26 blocks, claimed as a node fills (Calico's)
    #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE, value_name = "LEN")]
    block_size: u8,
    /// The agents' --poll-interval-seconds: how soon they notice a pod that vanished
    /// [default: twilld's]
    #[arg(long, env = "TWILL_LAB_AGENT_POLL_INTERVAL", value_name = "SECONDS")]
    agent_poll_interval: Option<String>,
}

#[derive(Args)]
struct NetArgs {
    /// How pods reach pods on other nodes (the network config's backend; vxlan, like
    /// flannel's default, works across segments too; static, the VXLAN mesh from a file
    /// the lab writes, implies --store static)
    #[arg(long, default_value = "vxlan", value_parser = kind_arg::parser::<BackendKind>())]
    backend: BackendKind,
    /// vxlan only: direct routes to nodes on the same segment, the tunnel across segments
    #[arg(long)]
    direct_routing: bool,
    /// ovs only: the tunnel between the nodes' Open vSwitch, gre (the walk-through's) or
    /// vxlan (UDP 4789) [default: gre]
    #[arg(long, value_name = "TYPE", value_parser = kind_arg::parser::<twill_lab::plan::TunnelType>())]
    tunnel_type: Option<twill_lab::plan::TunnelType>,
    /// udp only: the datapaths send each other partial inner checksums (no pass over each
    /// payload; for clusters where every node runs Twill's udp backend)
    #[arg(long)]
    partial_checksums: bool,
    /// Underlay segments: 2 puts every other node on 198.51.100.0/24 behind the router
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    segments: u8,
    /// How pods meet their node: bridge (each pod's veth on the node bridge twl0, Docker's
    /// and flannel's way) or l3 (Calico's: no bridge, a /32 route per pod to its veth, proxy
    /// ARP for the pods' gateway 169.254.1.1)
    #[arg(long, default_value = "bridge", value_name = "WIRING", value_parser = kind_arg::parser::<PodWiring>())]
    pod_wiring: PodWiring,
    /// bgp: the first K nodes are route reflectors (routeReflectorClusterID, label
    /// route-reflector=true), the node-to-node mesh is off, and every node peers with them
    #[arg(long, default_value_t = 0, value_name = "K")]
    route_reflectors: u16,
    /// bgp or rip: the router runs a real routing daemon: bird (BIRD 2) or frr (FRR bgpd;
    /// ripd for rip) in AS 64513, peering eBGP (TCP MD5) with every node, installing the pod
    /// blocks and passing them between segments, so the outside host reaches pods by IP.
    /// bgp with --segments 2 always has one (bird unless frr is asked)
    #[arg(long, value_name = "DAEMON", value_parser = kind_arg::parser::<ExternalRouter>())]
    external_router: Option<ExternalRouter>,
    /// bgp: every node in its own AS (65000 + i) instead of all in 64512
    #[arg(long)]
    as_per_node: bool,
}

impl kind_arg::Kind for ExternalRouter {
    fn all() -> &'static [Self] {
        &ExternalRouter::ALL
    }
    fn name(self) -> &'static str {
        ExternalRouter::name(self)
    }
}

#[derive(Subcommand)]
enum StoreAction {
    /// Stop the etcd member (SIGTERM, SIGKILL after 8 s); its data stays.
    Stop,
    /// Start the etcd member again with the same arguments and data; waits for /health.
    Start,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build the lab: underlay switch (two with --segments 2, joined by the router), router,
    /// outside host, the store (embedded; an etcd member with the global --store etcd; a
    /// static file the lab writes with --store static or --backend static), nodes each
    /// running twilld with the chosen --backend, and pods wired by twill-cni from the
    /// blocks their node's agent holds. Returns once every agent is ready and has its
    /// routes to the other nodes (or reports why it cannot: host-gw across segments).
    /// --backend bgp writes the BGPConfiguration, BGPPeers and Node resources first (the
    /// mesh, or --route-reflectors); with --external-router (always with bgp across 2
    /// segments) the router runs BIRD or FRR and the wait covers its routes too.
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
        #[command(flatten)]
        agent: AgentArgs,
        #[command(flatten)]
        net: NetArgs,
    },
    /// A node joins the running lab: its namespace on the next segment in turn, its
    /// twilld, its pods; waits until every node routes to it.
    AddNode {
        #[command(flatten)]
        name: NameArg,
    },
    /// A node leaves: DEL of its pods, its twilld stopped, `twill node remove` from the
    /// store (the static file loses its entry), its namespaces deleted; waits until no
    /// node routes to its blocks.
    RemoveNode {
        #[command(flatten)]
        name: NameArg,
        /// n1, n2, ...
        #[arg(value_name = "NODE")]
        node: String,
    },
    /// Restart a node's twilld with the arguments it had, and wait until it is ready.
    RestartAgent {
        #[command(flatten)]
        name: NameArg,
        /// n1, n2, ...
        #[arg(value_name = "NODE")]
        node: String,
    },
    /// --backend ovs: every node's Open vSwitch read back: its bridges and ports (from its
    /// ovsdb-server), and the peers its flows keep tunnels to (from ovs-vswitchd).
    Ovs {
        #[command(flatten)]
        name: NameArg,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// --backend ovs: kill a node's ovs-vswitchd by its recorded PID (SIGKILL, a crash) and
    /// start it again on the same database; its flows are gone until twilld programs them
    /// again. Prints the old and new PID.
    OvsRestart {
        #[command(flatten)]
        name: NameArg,
        /// n1, n2, ...
        #[arg(value_name = "NODE")]
        node: String,
        /// How long it stays down before it is started again (a supervisor's restart delay)
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        down_for: f64,
    },
    /// Stop or start the lab's etcd member (--store etcd labs), e.g. to watch the agents ride
    /// out an outage.
    Store {
        #[command(flatten)]
        name: NameArg,
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Per node: the IP its agent chose and why, its blocks, the agent's readiness; pods;
    /// namespaces, interfaces and addresses (read live).
    Status {
        #[command(flatten)]
        name: NameArg,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Run a command inside a lab member (n1, n1-p2, rt, out, ul, st); its exit code passes
    /// through. Inside, `twill` is this twill and reads the lab's store (TWILL_STORE and
    /// TWILL_STORE_DIR or TWILL_ETCD_ENDPOINTS are set): `twill lab exec n1 -- twill node status`.
    Exec {
        #[command(flatten)]
        name: NameArg,
        /// n1, n1-p2, rt, out, ul, or st (the etcd host of a --store etcd lab).
        #[arg(value_name = "NODE_OR_POD")]
        target: String,
        /// The command, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Connectivity checks (pod↔pod on a node, across nodes and segments, node→pod,
    /// masquerade, host ports, hairpin), each with what the backend makes of it: host-gw
    /// across segments must fail and its agent must say why. Exits 1 on any unexpected row.
    Check {
        #[command(flatten)]
        name: NameArg,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// iperf3 (cubic, one stream) pod on n1 -> pod on n2, interleaved with the bare underlay
    /// (node -> node) and a hand-built twin of the backend (namespaces <name>-tw*, removed
    /// after); prints Gbit/s, CPU and the ratios against the goals.
    Bench {
        #[command(flatten)]
        name: NameArg,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Rounds of every variant, interleaved (A B C A B C ...).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// On a vxlan lab, also build a host-gw twin and compare against it.
        #[arg(long)]
        compare_host_gw: bool,
        /// The udp backend's bench: Twill's udp datapath (the lab's if it runs udp, else a
        /// twin running twill-datapath) vs a kernel-VXLAN twin vs the flannel-style
        /// baseline, pinned, with CPU s/Gbit (always so on a udp lab).
        #[arg(long, conflicts_with = "compare_host_gw")]
        udp: bool,
        /// The ovs backend's bench (a --backend ovs lab): its pods through the nodes'
        /// ovs-vswitchd vs a kernel-VXLAN twin, pinned, with CPU s/Gbit; then, with --join,
        /// a node joining timed against scripted ovs-vsctl on every node
        #[arg(long, conflicts_with_all = ["compare_host_gw", "udp"])]
        ovs: bool,
        /// With --ovs: also time a node joining the lab (it leaves again after).
        #[arg(long, requires = "ovs")]
        join: bool,
        /// With --udp or --ovs: the iperf3 -P values to measure, each for every variant.
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        streams: Vec<u32>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// What the policies in the lab's store say of a flow (`twill policy explain`), then a
    /// real probe between those lab pods, and whether the dataplane agrees (exit 1 if not).
    /// SRC/DST: a pod as NAMESPACE/NAME or its IP; SRC may be `host` (DST's node).
    Explain {
        #[command(flatten)]
        name: NameArg,
        src: String,
        dst: String,
        /// e.g. 80/tcp, 81/udp, serve-80-tcp/tcp
        port: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Send one probe SRC -> DST and show every device it crossed (tcpdump on each, in its
    /// namespace): MACs, IP and ports, outer and inner headers where VXLAN carries it, and
    /// any NAT (masquerade, host-port DNAT). SRC/DST: n1-p1, n1, out, rt, or an IP.
    Trace {
        #[command(flatten)]
        name: NameArg,
        #[arg(value_name = "SRC")]
        src: String,
        #[arg(value_name = "DST")]
        dst: String,
        #[arg(long, value_enum, default_value = "icmp")]
        proto: TraceProtoFlag,
        /// TCP/UDP port [default: the host port (30080/30053) for a node, else 8080/5353]
        #[arg(long)]
        port: Option<u16>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The topology (segments, router, hosts, nodes, pods, bridges, veths, VXLAN tunnels,
    /// host ports) read from the kernel, as Graphviz DOT or SVG (needs `dot`).
    Graph {
        #[command(flatten)]
        name: NameArg,
        #[arg(short = 'o', long, value_enum, default_value = "dot")]
        output: GraphFormat,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Remove the lab: stop the agents and etcd, DEL every pod, delete its namespaces and
    /// /run/<name>.
    Down {
        #[command(flatten)]
        name: NameArg,
    },
    /// The flannel-style baseline datapath `lab bench` runs in its udp twin (a port of
    /// flannel's run_proxy: one read/sendto and one recv/write per packet).
    #[command(hide = true)]
    UdpBaseline {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Twill's udp datapath (`twill_datapath::run`: `--ctl PATH --tun NAME --port PORT ...`),
    /// which `lab bench --udp` runs in its twin of Twill's udp backend.
    #[command(hide = true)]
    UdpDatapath {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// up, status, check, down, explaining what is built and why.
    Demo {
        #[command(flatten)]
        name: NameArg,
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: u16,
        #[arg(long, default_value_t = 2)]
        pods_per_node: u16,
        #[command(flatten)]
        cni: CniArg,
        #[command(flatten)]
        agent: AgentArgs,
        #[command(flatten)]
        net: NetArgs,
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

fn twilld_bin(arg: &AgentArgs) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running twill executable")?;
    let env = std::env::var(runtime::TWILLD_BIN_ENV).ok();
    Ok(runtime::locate_binary(
        runtime::AGENT_BIN,
        arg.twilld_bin.as_deref(),
        env.as_deref(),
        &exe,
    ))
}

/// The lab's store from the global --store flag: embedded unless etcd or static is asked
/// for; `--backend static` implies the static store (the lab writes the file).
fn lab_store(store: &StoreArgs, net: &NetArgs) -> StoreKind {
    match store.store {
        None if net.backend == BackendKind::Static => StoreKind::Static,
        None => StoreKind::Embedded,
        Some(kind) => kind,
    }
}

fn spec(
    name: String,
    nodes: u16,
    pods_per_node: u16,
    store: &StoreArgs,
    agent: &AgentArgs,
    net: &NetArgs,
) -> LabSpec {
    LabSpec {
        name,
        nodes,
        pods_per_node,
        segments: net.segments,
        store: lab_store(store, net),
        block_size: agent.block_size,
        agent_poll_interval: agent.agent_poll_interval.clone(),
        backend: net.backend,
        direct_routing: net.direct_routing,
        tunnel_type: net.tunnel_type,
        partial_checksums: net.partial_checksums,
        pod_wiring: net.pod_wiring,
        route_reflectors: net.route_reflectors,
        external_router: net.external_router,
        as_per_node: net.as_per_node,
        ..LabSpec::default()
    }
}

/// `twill node remove NAME --force` against the lab's store (its agent is stopped, but
/// its lease has not expired yet).
fn node_remove(store: &dyn twill_store::Store, node: &str) -> Result<(), String> {
    #[derive(clap::Parser)]
    struct NodeCli {
        #[command(flatten)]
        args: crate::node_cmd::NodeArgs,
    }
    use clap::Parser;
    let cli =
        NodeCli::try_parse_from(["node", "remove", node, "--force"]).map_err(|e| e.to_string())?;
    crate::node_cmd::run(cli.args, store)
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn run(args: LabArgs, store: &StoreArgs) -> anyhow::Result<i32> {
    match args.command {
        LabCommand::Up {
            name,
            nodes,
            pods_per_node,
            cni,
            agent,
            net,
        } => {
            let spec = spec(name.name, nodes, pods_per_node, store, &agent, &net);
            let state = build::up(&spec, &cni_bin(&cni)?, &twilld_bin(&agent)?, &progress)?;
            println!(
                "lab {} is up: {} node(s), {} pod(s); try `twill lab status --name {0}` and `twill lab check --name {0}`",
                state.plan.name,
                state.plan.nodes.len(),
                state.pods.len()
            );
            Ok(0)
        }
        LabCommand::AddNode { name } => {
            let mut state = build::load(&name.name)?;
            let node = build::add_node(&mut state, &progress)?;
            println!(
                "node {node} joined lab {}: twilld ready, {} pod(s), every node routes to it",
                name.name, state.plan.pods_per_node
            );
            Ok(0)
        }
        LabCommand::RemoveNode { name, node } => {
            let mut state = build::load(&name.name)?;
            build::remove_node(&mut state, &node, &node_remove, &progress)?;
            println!(
                "node {node} left lab {}: pods deleted, twilld stopped, removed from the store, no node routes to it",
                name.name
            );
            Ok(0)
        }
        LabCommand::RestartAgent { name, node } => {
            let mut state = build::load(&name.name)?;
            let pid = build::restart_agent(&mut state, &node)?;
            println!("node {node}: twilld restarted (pid {pid}) and ready");
            Ok(0)
        }
        LabCommand::Ovs { name, output } => {
            let state = build::load(&name.name)?;
            anyhow::ensure!(
                state.plan.ovs_tunnel.is_some(),
                "lab {} runs --backend {}, not ovs: it has no Open vSwitch to show",
                name.name,
                state.plan.backend.name()
            );
            let reports = demo_ovs::reports(&state)?;
            match output {
                Output::Json => print_json(&reports)?,
                Output::Table => print!(
                    "{}",
                    twill_lab::ovs::render(&reports, &demo_ovs::node_names(&state))
                ),
            }
            Ok(0)
        }
        LabCommand::OvsRestart {
            name,
            node,
            down_for,
        } => {
            anyhow::ensure!(
                down_for.is_finite() && (0.0..=60.0).contains(&down_for),
                "--down-for takes 0 to 60 seconds, e.g. 1 or 0.5"
            );
            let mut state = build::load(&name.name)?;
            let (old, new) = build::restart_vswitchd(
                &mut state,
                &node,
                std::time::Duration::from_secs_f64(down_for),
            )?;
            println!(
                "node {node}: ovs-vswitchd {old} killed, down for {down_for} s, {new} started"
            );
            Ok(0)
        }
        LabCommand::Store { name, action } => {
            let mut state = build::load(&name.name)?;
            match action {
                StoreAction::Stop => {
                    if let Some(note) = build::store_stop(&mut state)? {
                        eprintln!("twill: warning: {note}");
                    }
                    println!("etcd of lab {} stopped; its data is kept", name.name);
                }
                StoreAction::Start => {
                    let pid = build::store_start(&mut state)?;
                    println!("etcd of lab {} running (pid {pid}) and healthy", name.name);
                }
            }
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
        } => {
            let exe =
                std::env::current_exe().context("cannot find the running twill executable")?;
            Ok(build::exec(
                &build::load(&name.name)?,
                &target,
                &command,
                exe.parent(),
            )?)
        }
        LabCommand::Check { name, output } => {
            let report = check::run(&build::load(&name.name)?)?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Table => print!("{}", check::render(&report)),
            }
            match report.failure() {
                None => Ok(0),
                Some(why) => {
                    eprintln!("twill: lab check failed: {why}");
                    Ok(1)
                }
            }
        }
        LabCommand::Bench {
            name,
            seconds,
            rounds,
            compare_host_gw,
            udp,
            ovs,
            join,
            streams,
            output,
        } => {
            anyhow::ensure!(
                seconds > 0 && rounds > 0,
                "--seconds and --rounds must be at least 1"
            );
            anyhow::ensure!(
                !streams.is_empty() && streams.iter().all(|p| (1..=128).contains(p)),
                "--streams takes iperf3 -P values from 1 to 128, e.g. 1,4"
            );
            if ovs {
                let opts = twill_lab::bench_ovs::OvsBenchOptions {
                    seconds,
                    rounds,
                    streams,
                    join,
                };
                let report =
                    twill_lab::bench_ovs::bench_lab(&name.name, &opts, &node_remove, &progress)?;
                match output {
                    Output::Json => print_json(&report)?,
                    Output::Table => print!("{}", twill_lab::bench_ovs::render(&report)),
                }
                return Ok(0);
            }
            // A udp lab is benched against the udp backend's references.
            if udp || twill_lab::bench_udp::lab_runs_udp(&name.name)? {
                let opts = twill_lab::bench_udp::UdpBenchOptions {
                    seconds,
                    rounds,
                    streams,
                    exe: std::env::current_exe()
                        .context("cannot find the running twill executable")?,
                };
                let report = twill_lab::bench_udp::bench_lab(&name.name, &opts, &progress)?;
                match output {
                    Output::Json => print_json(&report)?,
                    Output::Table => print!("{}", twill_lab::bench_udp::render(&report)),
                }
                return Ok(0);
            }
            let opts = twill_lab::bench::BenchOptions {
                seconds,
                rounds,
                compare_host_gw,
            };
            let report = twill_lab::bench::bench_lab(&name.name, &opts, &progress)?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Table => print!("{}", twill_lab::bench::render(&report)),
            }
            Ok(0)
        }
        LabCommand::Trace {
            name,
            src,
            dst,
            proto,
            port,
            output,
        } => trace_cmd(&name.name, src, dst, proto, port, output),
        LabCommand::Explain {
            name,
            src,
            dst,
            port,
            output,
        } => explain::run(&name.name, &src, &dst, &port, output == Output::Json),
        LabCommand::Graph { name, output, out } => graph_cmd(&name.name, output, out),
        LabCommand::UdpBaseline { args } => {
            use twill_lab::bench_udp_baseline as baseline;
            match baseline::run(baseline::parse_args(&args)?)? {}
        }
        LabCommand::UdpDatapath { args } => {
            let code = twill_datapath::run::run(&args);
            Ok(if code == std::process::ExitCode::SUCCESS {
                0
            } else {
                1
            })
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
            nodes,
            pods_per_node,
            cni,
            agent,
            net,
        } => {
            let spec = spec(name.name, nodes, pods_per_node, store, &agent, &net);
            demo(&spec, &cni_bin(&cni)?, &twilld_bin(&agent)?)
        }
    }
}

/// The classic walk through pod networking, built and proven in one go.
fn demo(
    spec: &LabSpec,
    cni_bin: &std::path::Path,
    twilld_bin: &std::path::Path,
) -> anyhow::Result<i32> {
    let name = spec.name.as_str();
    let p = plan::plan(spec)?;
    if p.backend == BackendKind::Bgp {
        return demo_bgp::demo(spec, &p, cni_bin, twilld_bin);
    }
    if p.backend == BackendKind::Ovs {
        return demo_ovs::demo(spec, &p, cni_bin, twilld_bin);
    }
    let node = &p.nodes[0];
    let seg = &p.segments[0];
    println!(
        "== 1. Network namespaces\n\
         Every machine of the lab is a network namespace: its own interfaces, routes and firewall.\n\
         A new one holds only `lo`. The lab makes: {} (the underlay switch), {} (a router),\n\
         {} (a host on the outside), {} node(s) ({} ...), and one per pod.\n",
        seg.netns,
        p.router.netns,
        p.outside.netns,
        p.nodes.len(),
        node.netns
    );
    println!(
        "== 2. veth pairs and bridges\n\
         A veth pair is a cable between two namespaces. The underlay is a Linux bridge ({} in {}),\n\
         a layer-2 switch: each node's eth0 ({} for {}) and the router's leg ({}/24) plug into it.\n",
        seg.bridge, seg.netns, node.address, node.short, seg.gateway
    );
    let store_text = match &p.store.etcd {
        Some(e) => format!(
            "one etcd member, started by the lab on its own host {} ({}), data in {}:\n\
             the strongly consistent store a real cluster uses",
            e.netns,
            e.client_url,
            e.data_dir.display()
        ),
        None => format!(
            "the embedded store, a folder ({}) all node agents of this machine share:\n\
             no server, the same keys and semantics as etcd",
            p.store
                .dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        ),
    };
    println!(
        "== 3. The cluster store and the network config\n\
         Every node must own pod addresses no other node owns. Who owns what is recorded in\n\
         the store: {store_text}.\n\
         Before any agent starts, the lab writes the network config there (key /twill/v1/config):\n\
         clusterCIDR {}, blocks of /{}, leases of {} s, masquerade on.\n",
        p.cluster_cidr, p.store.block_size, p.store.lease_ttl_seconds
    );
    println!(
        "== 4. One agent per node: twilld\n\
         The lab starts `ip netns exec {} {} {}`\n\
         (and likewise on every node). The agent:\n\
         - picks its node IP: `--ip-autodetection {}` takes eth0's address; it records\n\
           the address and why in the store (nodes/{}), shown by `twill lab status`;\n\
         - claims a block of /{} out of {} by an atomic create-if-absent (blocks/<cidr>),\n\
           bound to a lease it keeps alive; if it dies, the claim expires after the lease TTL;\n\
           restarted, it takes the same blocks back, so running pods keep their addresses;\n\
         - writes the hand-off file {} for twill-cni: the node's blocks, the\n\
           cluster CIDR, MTU and masquerade (the role of flannel's subnet.env);\n\
         - serves /healthz, /readyz, /metrics on {} inside the node: the lab waits for\n\
           /readyz before it creates any pod.\n",
        node.netns,
        twilld_bin.display(),
        p.agent_args(node).join(" "),
        plan::AGENT_IP_AUTODETECTION,
        node.short,
        p.store.block_size,
        p.cluster_cidr,
        node.handoff_file.display(),
        plan::AGENT_LISTEN
    );
    println!(
        "== 5. The runtime calls the CNI plugin\n\
         For each pod the lab does what kubelet's container runtime does: it creates the pod's\n\
         namespace and runs `twill-cni` inside the node with CNI_COMMAND=ADD,\n\
         CNI_NETNS=/run/netns/<pod>, CNI_IFNAME=eth0 and the network config on stdin\n\
         (from {}). That config names no subnet, only the hand-off file:\n\
         the plugin picks a free address in the node's block (no network round trip) and makes a\n\
         veth pair, eth0 in the pod.",
        node.conflist.display(),
    );
    match &node.bridge {
        Some(bridge) => println!(
            "   podWiring bridge: the other end is a port of the node bridge {bridge}, and the pod\n   \
             is routed via the bridge's address in that block: the docker0/cni0 model.\n"
        ),
        None => println!(
            "   podWiring l3 (Calico's): there is no bridge. The pod holds its address as a /32\n   \
             and routes everything via {gw}, an address no interface has: the host end of\n   \
             the veth (MAC {mac}) answers the pod's ARP for it by proxy ARP. The node\n   \
             routes the pod's /32 to that veth, and strict reverse-path filtering on the veth\n   \
             drops anything the pod sends from another address.\n",
            gw = twill_api::wiring::L3_GATEWAY,
            mac = check::l3_host_mac(),
        ),
    }
    println!("building lab {name} ...");
    let state = match build::up(spec, cni_bin, twilld_bin, &progress) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("twill: error: {e}");
            return Ok(1);
        }
    };
    let outcome = demo_body(&state);
    println!("\n== 10. Cleaning up\nThe agents and the store stop (SIGTERM), DEL for every pod (with the ADD result as\nprevResult), then the namespaces.");
    demo_exit(name, outcome, build::down(name, &progress))
}

fn demo_body(state: &twill_lab::LabState) -> anyhow::Result<bool> {
    let p = &state.plan;
    let node = &p.nodes[0];
    let st = status::status(state)?;
    println!("\n{}", status::render(&st));
    println!(
        "== 6. Node IPs and block claims\n\
         Each agent chose its node IP and claimed its block(s); the blocks are disjoint because\n\
         each was created only if absent. From the store:"
    );
    for n in &st.nodes {
        let blocks: Vec<String> = n.blocks.iter().map(|b| b.to_string()).collect();
        println!(
            "    {}: node IP {} ({}: {}), blocks {}",
            n.name,
            n.node_ip.map_or("-".into(), |a| a.to_string()),
            n.ip_method.as_deref().unwrap_or("-"),
            n.ip_reason.as_deref().unwrap_or("-"),
            blocks.join(", ")
        );
    }
    let handoff = std::fs::read_to_string(&node.handoff_file)
        .with_context(|| format!("read {}", node.handoff_file.display()))?;
    println!(
        "\n== 7. The hand-off file\n\
         {} (written atomically by {}'s agent, read by twill-cni on every ADD):\n{}",
        node.handoff_file.display(),
        node.short,
        handoff
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let (_, ready) = daemons::http_get(&node.netns, daemons::agent_addr(), "/readyz")
        .unwrap_or((0, "unreachable".into()));
    println!(
        "   {}'s agent answers /readyz inside its namespace: {}\n   See more: twill lab exec --name {} {} -- curl -s http://{}/metrics\n",
        node.short,
        ready.trim(),
        p.name,
        node.short,
        plan::AGENT_LISTEN
    );
    let routes = build::ip(&["-n", &node.netns, "route", "show"])?;
    let across = match p.backend {
        BackendKind::None => "(backend none: pods on different nodes do not reach each other.)",
        BackendKind::HostGw => "The other nodes' blocks (proto 84) go via their node IPs: host-gw, one route each.",
        BackendKind::Udp => "The other nodes' blocks (proto 84) go into twl.tun, the TUN: the node's datapath process wraps each packet in UDP to the node holding it.",
        BackendKind::Ovs => "The other nodes' blocks (proto 84) go into twl.ovs, Open vSwitch's internal port (with bridge wiring a port of the pods' bridge twl0, so the routes say dev twl0): its flows send each to the node holding it through one GRE (or VXLAN) port.",
        _ => "The other nodes' blocks (proto 84) go through twl.1, the VXLAN device: onlink via each node's VTEP.",
    };
    let indent = |t: &str| t.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let mut story_ok = true;
    if p.pod_wiring == PodWiring::L3 {
        let (table, pod_view) = l3_story(state, &st)?;
        println!(
            "== 8. The routing table picks the interface: Calico's table, no bridge\n\
             `ip -n {} route` on the node. Routes choose where a packet goes; NAT only rewrites it.\n\
             {across}\n{}",
            node.netns,
            indent(&routes)
        );
        for r in &table.blackholes {
            println!(
                "   {r}\n     the node's block, as a blackhole: an address of it that no pod holds is\n     \
                 dropped here at once instead of following the default route out (and looping),\n     \
                 and a BGP speaker can announce the block as one route."
            );
        }
        for (pod, r) in &table.pod_routes {
            println!(
                "   {r}\n     {pod}: one /32 per pod, to its host veth (scope link: no gateway)."
            );
        }
        println!(
            "   No bridge: nothing holds a gateway address. Pods on this node reach each other\n   \
             through these /32 routes, and every other address through the node's own table.\n"
        );
        println!("{pod_view}");
        for m in &table.missing {
            println!("   MISSING: {m}");
            story_ok = false;
        }
    } else {
        println!(
            "== 8. The routing table picks the interface\n\
             `ip -n {} route` on the node: the default route goes to the router on eth0, the node's own\n\
             block sits on the bridge. Routes choose where a packet goes; NAT only rewrites it.\n\
             {across}\n{}",
            node.netns,
            indent(&routes)
        );
    }
    println!(
        "== 9. NAT: masquerade and host ports\n\
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
    println!("== Proving it: every check sends real packets between the namespaces");
    let report = check::run(state)?;
    print!("{}", check::render(&report));
    if !story_ok {
        eprintln!(
            "twill: error: node {}'s routing table is not the l3 one (see MISSING above)",
            node.short
        );
    }
    Ok(report.passed && story_ok)
}

/// The first node's table read for the l3 story (its blocks from the store, its pods'
/// addresses, its bridges), and the first pod's own view: its routes and its neighbour
/// entry for 169.254.1.1, answered by proxy ARP.
fn l3_story(
    state: &twill_lab::LabState,
    st: &status::LabStatus,
) -> anyhow::Result<(twill_lab::routes::L3Table, String)> {
    use twill_lab::routes;
    let p = &state.plan;
    let node = &p.nodes[0];
    let table = routes::parse_routes(&build::ip(&["-j", "-n", &node.netns, "route", "show"])?);
    let blocks = st
        .nodes
        .iter()
        .find(|n| n.name == node.short)
        .map(|n| n.blocks.clone())
        .unwrap_or_default();
    let pods: Vec<(String, std::net::Ipv4Addr)> = state
        .pods
        .iter()
        .filter(|r| r.node == node.index)
        .filter_map(|r| Some((r.short.clone(), r.address?)))
        .collect();
    let bridges: Vec<String> = serde_json::from_str::<serde_json::Value>(&build::ip(&[
        "-j",
        "-n",
        &node.netns,
        "link",
        "show",
        "type",
        "bridge",
    ])?)
    .ok()
    .and_then(|v| v.as_array().cloned())
    .unwrap_or_default()
    .iter()
    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
    .collect();
    let mut story = routes::l3_table(&table, &blocks, &pods, &bridges);
    let Some(pod) = node.pods.first() else {
        return Ok((story, String::new()));
    };
    // One ping from the pod to its node makes it resolve its gateway.
    let gw = twill_api::wiring::L3_GATEWAY;
    if let Err(e) = twill_lab::probe::proxy_arp(
        &pod.netns,
        gw,
        &check::l3_host_mac(),
        node.address.addr(),
        check::PROBE_TIMEOUT,
    ) {
        story.missing.push(format!("proxy ARP for {gw}: {e}"));
    }
    let pod_routes = build::ip(&["-n", &pod.netns, "route", "show"])?;
    let neigh = build::ip(&[
        "-n",
        &pod.netns,
        "neigh",
        "show",
        &twill_api::wiring::L3_GATEWAY.to_string(),
    ])?;
    let indent = |t: &str| t.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let view = format!(
        "   Inside pod {} (`ip -n {} route`): its /32 address, a link route to 169.254.1.1, and\n   \
         the default via it:\n{}   and, after one ping to its node, its neighbour entry for 169.254.1.1, which\n   \
         only the node's proxy ARP could have answered (`ip neigh`):\n{}",
        pod.short,
        pod.netns,
        indent(&pod_routes),
        indent(if neigh.trim().is_empty() { "(none yet)" } else { &neigh })
    );
    Ok((story, view))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TraceProtoFlag {
    Icmp,
    Tcp,
    Udp,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GraphFormat {
    Dot,
    Svg,
}

fn trace_cmd(
    name: &str,
    src: String,
    dst: String,
    proto: TraceProtoFlag,
    port: Option<u16>,
    output: Output,
) -> anyhow::Result<i32> {
    use twill_lab::trace::{self, path::TraceProto};
    let state = build::load(name)?;
    let proto = match proto {
        TraceProtoFlag::Icmp => TraceProto::Icmp,
        TraceProtoFlag::Tcp => TraceProto::Tcp,
        TraceProtoFlag::Udp => TraceProto::Udp,
    };
    let req = trace::TraceRequest {
        src,
        dst,
        proto,
        port,
    };
    let report = trace::run(&state, &req)?;
    match output {
        Output::Json => print_json(&report)?,
        Output::Table => print!("{}", trace::path::render(&report)),
    }
    Ok(0)
}

fn graph_cmd(name: &str, format: GraphFormat, out: Option<PathBuf>) -> anyhow::Result<i32> {
    use twill_lab::graph;
    let state = build::load(name)?;
    let topo = graph::live::read_topology(&state)?;
    let mut extras = graph::Extras::from_plan(&state.plan);
    // The blocks each node holds, from the store (an l3 node has no bridge address to
    // show them); without the store the graph still draws what the kernel holds.
    match daemons::read_nodes(&state.plan) {
        Ok(nodes) => {
            for n in &state.plan.nodes {
                if let Some(s) = nodes.get(&n.short) {
                    let blocks = s.blocks.iter().map(|b| b.to_string()).collect();
                    extras.node_blocks.insert(n.netns.clone(), blocks);
                }
            }
        }
        Err(e) => eprintln!("twill: warning: blocks not read from the store: {e}"),
    }
    // --backend ovs: each node's OVS bridges, ports and per-peer flows, from its database.
    for o in twill_lab::ovs::read_lab(&state.plan) {
        extras.ovs.insert(o.netns.clone(), o);
    }
    let dot = graph::to_dot(&topo, &extras);
    let bytes = match format {
        GraphFormat::Dot => dot.into_bytes(),
        GraphFormat::Svg => graph::live::render_with_dot(&dot, "svg")?,
    };
    match out {
        Some(path) => {
            std::fs::write(&path, &bytes).with_context(|| format!("write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
        }
    }
    Ok(0)
}

/// How a demo ends: its error if any, the tear-down's warnings, and exit 0 only when its
/// checks passed and the lab is gone.
fn demo_exit(
    name: &str,
    outcome: anyhow::Result<bool>,
    down: Result<build::DownReport, build::LabError>,
) -> anyhow::Result<i32> {
    let passed = match outcome {
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
    Ok(if passed { 0 } else { 1 })
}
