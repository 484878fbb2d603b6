//! `twill lab bench --ovs` (issue 12), in one run on a `--backend ovs` lab:
//!
//! 1. **Throughput.** The lab's pods (n1 → n2, through both nodes' ovs-vswitchd, the
//!    userspace datapath) against the hand-built kernel-VXLAN twin ([`crate::bench`]'s),
//!    interleaved A B A B, `iperf3 -C cubic -P N`, pinned as the udp bench pins: node 1's
//!    iperf3 and ovs-vswitchd on CPU 0, node 2's on CPU 1 (every thread of each vswitchd,
//!    given every CPU back after). CPU s/Gbit: Σ utime+stime of both iperf3 and both
//!    ovs-vswitchd over the run ÷ Gbit received (kernel VXLAN has no process: its work is
//!    charged to the iperf3 processes, and the machine-wide busy time is beside it).
//! 2. **A node joining.** `add-node` on the running lab; from the moment its agent is ready,
//!    how long until every existing node's flows keep a tunnel to it and it to every node
//!    (polled with `ovs-ofctl dump-flows`, only on nodes not there yet); against the
//!    reference, the walk-through's way scripted at its fastest: one `ovs-vsctl add-port …
//!    type=gre options:remote_ip=NEW` on every existing node and one call adding a port per
//!    peer on the new node, on a bridge of their own (`twlhand`, which Twill never touches),
//!    removed after. Also: how many ports, bridges or interfaces of the existing nodes
//!    changed (should be 0). The new node then leaves again.
//!
//! Pure: the report types, [`join_ratio`], [`render`]. I/O: [`run`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::{self, twin_path, BenchError, TwinGuard, TwinKind, TwinPlan, TwinReport};
use crate::bench_udp::{self, fmt_num, Measured, UdpFigures, UdpVariant, CPU_OF_NODE};
use crate::build::{self, Log};
use crate::daemons;
use crate::ovs::{self, OvsPaths};
use crate::state::LabState;

/// The reference's own bridge on every node (Twill never touches a bridge it did not make).
pub const HAND_BRIDGE: &str = "twlhand";
/// How long the join may take before the bench gives up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvsBenchOptions {
    pub seconds: u32,
    pub rounds: u32,
    pub streams: Vec<u32>,
    /// Also time a node joining (needs the lab to have room for one more node).
    pub join: bool,
}

/// ovs / vxlan at one stream count: Gbit/s (the userspace datapath is expected to be
/// slower) and CPU s/Gbit (higher is costlier).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OvsRatio {
    pub streams: u32,
    pub gbps_ovs: f64,
    pub gbps_vxlan: f64,
    pub gbps_ratio: f64,
    pub cpu_s_per_gbit_ovs: f64,
    pub cpu_s_per_gbit_vxlan: f64,
    pub cpu_ratio: f64,
    pub busy_s_per_gbit_ovs: f64,
    pub busy_s_per_gbit_vxlan: f64,
}

/// The join, measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinReport {
    pub existing_nodes: usize,
    pub joined: String,
    /// `add-node` from start to return (namespace, OVS, agent, pods, routes everywhere).
    pub add_node_seconds: f64,
    /// From the new agent's /readyz 200 to the last node keeping a tunnel to it (both
    /// ways: its flows to every node, every node's to it).
    pub tunnels_up_seconds: f64,
    /// Per existing node: seconds from the new agent ready to its flows to the new node.
    pub per_node_seconds: BTreeMap<String, f64>,
    /// The reference: scripted ovs-vsctl on every node (the walk-through's by-hand way).
    pub by_hand_seconds: f64,
    pub by_hand_commands: usize,
    /// tunnels_up / by_hand.
    pub ratio: f64,
    /// Ports, bridges or interfaces of the existing nodes that changed over the join.
    pub existing_changed: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OvsBenchReport {
    pub lab: String,
    pub tunnel_type: String,
    pub seconds: u32,
    pub rounds: u32,
    pub streams: Vec<u32>,
    pub congestion_control: String,
    pub pinned: [usize; 2],
    /// Node 1's and node 2's ovs-vswitchd, pinned and counted.
    pub vswitchd: [u32; 2],
    pub order: Vec<UdpVariant>,
    pub figures: Vec<UdpFigures>,
    pub ratios: Vec<OvsRatio>,
    pub load_average: [[f64; 3]; 2],
    pub twins: Vec<TwinReport>,
    pub join: Option<JoinReport>,
}

fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        a / b
    } else {
        f64::NAN
    }
}

/// The ratios per stream count. Pure.
pub fn ovs_ratios(figures: &[UdpFigures]) -> Vec<OvsRatio> {
    let mut out = Vec::new();
    for ovs in figures.iter().filter(|f| f.variant == UdpVariant::Twill) {
        let Some(vx) = figures
            .iter()
            .find(|f| f.variant == UdpVariant::Vxlan && f.streams == ovs.streams)
        else {
            continue;
        };
        out.push(OvsRatio {
            streams: ovs.streams,
            gbps_ovs: ovs.median_gbps,
            gbps_vxlan: vx.median_gbps,
            gbps_ratio: div(ovs.median_gbps, vx.median_gbps),
            cpu_s_per_gbit_ovs: ovs.median_cpu_s_per_gbit,
            cpu_s_per_gbit_vxlan: vx.median_cpu_s_per_gbit,
            cpu_ratio: div(ovs.median_cpu_s_per_gbit, vx.median_cpu_s_per_gbit),
            busy_s_per_gbit_ovs: ovs.median_busy_s_per_gbit,
            busy_s_per_gbit_vxlan: vx.median_busy_s_per_gbit,
        });
    }
    out
}

/// tunnels_up / by_hand. Pure.
pub fn join_ratio(tunnels_up: f64, by_hand: f64) -> f64 {
    div(tunnels_up, by_hand)
}

/// The human-readable report. Pure.
pub fn render(r: &OvsBenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "lab {}: ovs ({}, userspace datapath) vs kernel VXLAN, iperf3 -C {} {} s x {} rounds interleaved, pinned CPU {} / {} (vswitchd pids {} and {})",
        r.lab,
        r.tunnel_type,
        r.congestion_control,
        r.seconds,
        r.rounds,
        r.pinned[0],
        r.pinned[1],
        r.vswitchd[0],
        r.vswitchd[1]
    );
    let _ = writeln!(
        s,
        "{:<4} {:>10} {:>10} {:>7} {:>12} {:>12} {:>7} {:>12} {:>12}",
        "-P",
        "ovs Gb/s",
        "vxlan Gb/s",
        "ratio",
        "ovs CPU s/Gb",
        "vx CPU s/Gb",
        "ratio",
        "ovs busy",
        "vx busy"
    );
    for x in &r.ratios {
        let _ = writeln!(
            s,
            "{:<4} {} {} {} {} {} {} {} {}",
            x.streams,
            fmt_num(x.gbps_ovs, 10, 2),
            fmt_num(x.gbps_vxlan, 10, 2),
            fmt_num(x.gbps_ratio, 7, 2),
            fmt_num(x.cpu_s_per_gbit_ovs, 12, 3),
            fmt_num(x.cpu_s_per_gbit_vxlan, 12, 3),
            fmt_num(x.cpu_ratio, 7, 2),
            fmt_num(x.busy_s_per_gbit_ovs, 12, 3),
            fmt_num(x.busy_s_per_gbit_vxlan, 12, 3)
        );
    }
    let _ = writeln!(
        s,
        "CPU s/Gbit: utime+stime of both iperf3 and both ovs-vswitchd (none for kernel VXLAN) per Gbit received; busy: the whole machine's (/proc/stat, noisy)."
    );
    if let Some(j) = &r.join {
        let _ = writeln!(
            s,
            "\njoin: {} joined {} nodes: add-node {:.2} s; tunnels up {:.3} s after its agent was ready (slowest node), by hand (scripted ovs-vsctl, {} commands) {:.3} s, ratio {}; ports/bridges/interfaces changed on the existing nodes: {}",
            j.joined,
            j.existing_nodes,
            j.add_node_seconds,
            j.tunnels_up_seconds,
            j.by_hand_commands,
            j.by_hand_seconds,
            fmt_num(j.ratio, 0, 2),
            j.existing_changed
        );
        let mut per: Vec<(&String, &f64)> = j.per_node_seconds.iter().collect();
        per.sort_by(|a, b| a.1.total_cmp(b.1));
        if let (Some(first), Some(last)) = (per.first(), per.last()) {
            let med = per[per.len() / 2];
            let _ = writeln!(
                s,
                "      per node: first {} {:.3} s, median {:.3} s, last {} {:.3} s",
                first.0, first.1, med.1, last.0, last.1
            );
        }
    }
    s
}

/// Both nodes' ovs-vswitchd PIDs from the lab's records.
fn vswitchd_pids(state: &LabState) -> Result<[u32; 2], BenchError> {
    let pid = |k: usize| {
        let p = OvsPaths::of(&state.plan.nodes[k]);
        state
            .ovs
            .iter()
            .find(|r| r.role == p.vswitchd_role())
            .and_then(|r| r.pid.filter(|pid| daemons::is_ours(*pid, &r.bin)))
            .ok_or_else(|| BenchError::Command {
                cmd: format!("find {}'s ovs-vswitchd", state.plan.nodes[k].short),
                detail: "not running: is this a --backend ovs lab that is up? (`twill lab status`)"
                    .into(),
            })
    };
    Ok([pid(0)?, pid(1)?])
}

/// How a leaving node is taken out of the store (the CLI's `twill node remove`).
pub type Forget<'a> = &'a (dyn Fn(&dyn twill_store::Store, &str) -> Result<(), String> + Sync);

/// Runs the bench on lab `name` (an ovs lab with at least two nodes, bridge wiring).
pub fn bench_lab(
    name: &str,
    opts: &OvsBenchOptions,
    forget: Forget,
    log: Log,
) -> Result<OvsBenchReport, BenchError> {
    let mut state = build::load(name)?;
    let Some(tunnel) = state.plan.ovs_tunnel else {
        return Err(BenchError::Backend(format!(
            "lab {name} runs --backend {}: `lab bench --ovs` needs a lab made with `twill lab up --backend ovs`",
            state.plan.backend
        )));
    };
    let target = bench::target_from_lab(&state)?;
    let vswitchd = vswitchd_pids(&state)?;
    if !bench::iperf_installed() {
        return Err(BenchError::IperfMissing);
    }
    let load_start = bench_udp::loadavg();
    let twin = TwinPlan::of_kind(&target.lab, TwinKind::Vxlan, target.sides.clone());
    let guard = TwinGuard::build(&twin, log)?;
    let measured = vec![
        Measured {
            variant: UdpVariant::Twill,
            path: target.twill.clone(),
            datapaths: vec![(vswitchd[0], CPU_OF_NODE[0]), (vswitchd[1], CPU_OF_NODE[1])],
        },
        Measured {
            variant: UdpVariant::Vxlan,
            path: twin_path(&twin),
            datapaths: Vec::new(),
        },
    ];
    let udp_opts = bench_udp::UdpBenchOptions {
        seconds: opts.seconds,
        rounds: opts.rounds,
        streams: opts.streams.clone(),
        exe: std::path::PathBuf::new(),
    };
    let result = bench_udp::measure(&measured, &mut [], &udp_opts, log);
    for pid in vswitchd {
        let _ = bench_udp::unpin(pid);
    }
    drop(guard);
    let figures = result?;
    let join = if opts.join {
        Some(measure_join(&mut state, forget, log)?)
    } else {
        None
    };
    Ok(OvsBenchReport {
        lab: target.lab.clone(),
        tunnel_type: tunnel.name().into(),
        seconds: opts.seconds,
        rounds: opts.rounds,
        streams: opts.streams.clone(),
        congestion_control: "cubic".into(),
        pinned: CPU_OF_NODE,
        vswitchd,
        order: measured.iter().map(|m| m.variant).collect(),
        ratios: ovs_ratios(&figures),
        figures,
        load_average: [load_start, bench_udp::loadavg()],
        twins: vec![TwinReport {
            kind: twin.kind,
            netns: twin.netns(),
            commands: twin.commands().iter().map(|c| c.join(" ")).collect(),
        }],
        join,
    })
}

fn fail(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Command {
        cmd: what.into(),
        detail: e.to_string(),
    }
}

/// Whether node `p`'s flows keep a tunnel to `peer` (a flow out and one in).
fn has_tunnel(p: &OvsPaths, peer: Ipv4Addr) -> bool {
    p.ofctl(&["dump-flows", ovs::INTEGRATION_BRIDGE])
        .map(|t| {
            ovs::peer_tunnels(&ovs::parse_flows(&t))
                .get(&peer)
                .is_some_and(|(o, i)| *o > 0 && *i > 0)
        })
        .unwrap_or(false)
}

fn measure_join(state: &mut LabState, forget: Forget, log: Log) -> Result<JoinReport, BenchError> {
    let existing: Vec<crate::plan::NodePlan> = state.plan.nodes.clone();
    let new = state
        .plan
        .next_node()
        .map_err(|e| fail("plan the joining node", e))?;
    let before: Vec<Vec<(String, String)>> = existing
        .iter()
        .map(|n| ovs::read_view(&OvsPaths::of(n)).map(|v| v.identities()))
        .collect::<Result<_, _>>()?;
    let new_ip = new.address.addr();
    let new_paths = OvsPaths::of(&new);
    let existing_paths: Vec<OvsPaths> = existing.iter().map(OvsPaths::of).collect();
    let existing_ips: Vec<Ipv4Addr> = existing.iter().map(|n| n.address.addr()).collect();
    log(&format!(
        "join: {} joins {} nodes; polling every node's flows",
        new.short,
        existing.len()
    ));
    let start = Instant::now();
    let (add, watched) = std::thread::scope(|scope| {
        let watcher = scope.spawn(
            || -> Result<(Duration, BTreeMap<String, Duration>), String> {
                // The new agent ready (its /readyz), then the flows node by node.
                let ready = loop {
                    if let Ok((200, _)) =
                        daemons::http_get(&new.netns, daemons::agent_addr(), "/readyz")
                    {
                        break start.elapsed();
                    }
                    if start.elapsed() > JOIN_TIMEOUT {
                        return Err(format!(
                            "{}'s agent not ready after {JOIN_TIMEOUT:?}",
                            new.short
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                };
                let mut seen: BTreeMap<String, Duration> = BTreeMap::new();
                let mut new_done = false;
                while seen.len() < existing_paths.len() || !new_done {
                    for p in &existing_paths {
                        if !seen.contains_key(&p.node) && has_tunnel(p, new_ip) {
                            seen.insert(p.node.clone(), start.elapsed());
                        }
                    }
                    if !new_done {
                        new_done = existing_ips.iter().all(|ip| has_tunnel(&new_paths, *ip));
                        if new_done {
                            seen.insert(format!("{} (to all)", new.short), start.elapsed());
                        }
                    }
                    if start.elapsed() > JOIN_TIMEOUT {
                        return Err(format!(
                            "after {JOIN_TIMEOUT:?} only {} of {} nodes keep a tunnel to {}",
                            seen.len(),
                            existing_paths.len() + 1,
                            new.short
                        ));
                    }
                }
                Ok((ready, seen))
            },
        );
        let add = build::add_node(state, log).map(|_| start.elapsed());
        (
            add,
            watcher
                .join()
                .unwrap_or_else(|_| Err("watcher panicked".into())),
        )
    });
    let add = add?;
    let (ready, seen) = watched.map_err(|e| fail("watch the join", e))?;
    let after: Vec<Vec<(String, String)>> = existing
        .iter()
        .map(|n| ovs::read_view(&OvsPaths::of(n)).map(|v| v.identities()))
        .collect::<Result<_, _>>()?;
    let changed = before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            b.iter().filter(|x| !a.contains(x)).count()
                + a.iter().filter(|x| !b.contains(x)).count()
        })
        .sum();
    let per: BTreeMap<String, f64> = seen
        .iter()
        .map(|(k, t)| (k.clone(), t.saturating_sub(ready).as_secs_f64()))
        .collect();
    let tunnels_up = per.values().cloned().fold(0.0, f64::max);
    // The reference, by hand (scripted): a GRE port to the new node on every existing node,
    // and one per peer on the new node, on a bridge of their own.
    let (by_hand, commands) = by_hand(&existing_paths, &existing_ips, &new_paths, new_ip)?;
    let joined = new.short.clone();
    build::remove_node(state, &joined, forget, log)
        .map_err(|e| fail(&format!("remove {joined} after the join"), e))?;
    Ok(JoinReport {
        existing_nodes: existing.len(),
        joined,
        add_node_seconds: add.as_secs_f64(),
        tunnels_up_seconds: tunnels_up,
        per_node_seconds: per,
        by_hand_seconds: by_hand.as_secs_f64(),
        by_hand_commands: commands,
        ratio: join_ratio(tunnels_up, by_hand.as_secs_f64()),
        existing_changed: changed,
    })
}

/// The scripted by-hand reference; returns its wall time and command count. Its bridge
/// goes again after.
fn by_hand(
    existing: &[OvsPaths],
    ips: &[Ipv4Addr],
    new: &OvsPaths,
    new_ip: Ipv4Addr,
) -> Result<(Duration, usize), BenchError> {
    let all: Vec<&OvsPaths> = existing.iter().chain(std::iter::once(new)).collect();
    for p in &all {
        p.vsctl(&[
            "--may-exist",
            "add-br",
            HAND_BRIDGE,
            "--",
            "set",
            "bridge",
            HAND_BRIDGE,
            "datapath_type=netdev",
        ])?;
    }
    let start = Instant::now();
    let mut commands = 0;
    for (i, p) in existing.iter().enumerate() {
        let port = format!("twlh{}", i + 1000);
        p.vsctl(&[
            "add-port",
            HAND_BRIDGE,
            &port,
            "--",
            "set",
            "interface",
            &port,
            "type=gre",
            &format!("options:remote_ip={new_ip}"),
        ])?;
        commands += 1;
    }
    let mut args: Vec<String> = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let port = format!("twlh{i}");
        args.extend(
            [
                "--",
                "add-port",
                HAND_BRIDGE,
                &port,
                "--",
                "set",
                "interface",
                &port,
                "type=gre",
            ]
            .map(String::from),
        );
        args.push(format!("options:remote_ip={ip}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    new.vsctl(&refs)?;
    commands += 1;
    let took = start.elapsed();
    for p in &all {
        let _ = p.vsctl(&["--if-exists", "del-br", HAND_BRIDGE]);
    }
    Ok((took, commands))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::IperfRun;
    use crate::bench_udp::UdpRun;

    fn fig(v: UdpVariant, gbps: f64, cpu: f64) -> UdpFigures {
        let run = UdpRun {
            iperf: IperfRun {
                gbps,
                retransmits: Some(0),
                sender_cpu: 50.0,
                receiver_cpu: 40.0,
                congestion: Some("cubic".into()),
            },
            gbit: gbps * 10.0,
            cpu_seconds: cpu * gbps * 10.0,
            busy_seconds: 2.0 * cpu * gbps * 10.0,
        };
        UdpFigures::new(v, 1, "p".into(), vec![run])
    }

    #[test]
    fn ratios_and_report() {
        let figs = vec![
            fig(UdpVariant::Twill, 1.0, 2.0),
            fig(UdpVariant::Vxlan, 4.0, 0.5),
        ];
        let r = ovs_ratios(&figs);
        assert_eq!(r.len(), 1);
        assert!((r[0].gbps_ratio - 0.25).abs() < 1e-9, "{r:?}");
        assert!((r[0].cpu_ratio - 4.0).abs() < 1e-9, "{r:?}");
        assert!(join_ratio(1.0, 0.0).is_nan());
        assert!((join_ratio(0.5, 2.0) - 0.25).abs() < 1e-9);
        let report = OvsBenchReport {
            lab: "twlb".into(),
            tunnel_type: "gre".into(),
            seconds: 5,
            rounds: 3,
            streams: vec![1],
            congestion_control: "cubic".into(),
            pinned: [0, 1],
            vswitchd: [10, 11],
            order: vec![UdpVariant::Twill, UdpVariant::Vxlan],
            ratios: r,
            figures: figs,
            load_average: [[0.0; 3]; 2],
            twins: Vec::new(),
            join: Some(JoinReport {
                existing_nodes: 20,
                joined: "n21".into(),
                add_node_seconds: 3.0,
                tunnels_up_seconds: 0.4,
                per_node_seconds: [("n1".to_string(), 0.2), ("n2".to_string(), 0.4)].into(),
                by_hand_seconds: 0.8,
                by_hand_commands: 21,
                ratio: 0.5,
                existing_changed: 0,
            }),
        };
        let text = render(&report);
        assert!(text.contains("0.25"), "{text}");
        assert!(text.contains("n21 joined 20 nodes"), "{text}");
        assert!(text.contains("changed on the existing nodes: 0"), "{text}");
        assert!(serde_json::to_string(&report)
            .unwrap()
            .contains("tunnelsUpSeconds"));
    }
}
