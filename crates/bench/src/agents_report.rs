//! The figures of one `twill-bench agents` run, the goals checked against them,
//! the correctness checks of the pods' addresses, and the two outputs (table, JSON). Pure.

use crate::report::{goal, num, summary_json, Goal};
use crate::stats::Summary;
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The goals.
pub const GOAL_ALL_CLAIMED_MS: f64 = 5000.0;
pub const GOAL_IDLE_CORES: f64 = 0.005;
pub const GOAL_IDLE_RSS_MB: f64 = 20.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentsConfig {
    pub agents: usize,
    pub pods: usize,
    pub idle_minutes: f64,
    pub parallel: usize,
}

/// Phase 1: every agent claiming its first block at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    /// From the first spawn to the last.
    pub spawn_wall_ms: f64,
    /// From the first spawn until every agent holds a block in the store.
    pub all_claimed_ms: f64,
    /// From the first spawn until every agent's hand-off file lists a block.
    pub all_handoff_ms: f64,
    /// Per agent: from its own spawn until its block appeared in the store.
    pub time_to_block: Summary,
    /// Blocks held when all had claimed (one per agent unless an agent grew).
    pub blocks: usize,
}

/// Phase 2: pod ADDs spread over the agents, then DELs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pods {
    pub add: Summary,
    pub add_total_ms: f64,
    pub del: Summary,
    pub del_total_ms: f64,
    pub check: AddressCheck,
}

/// What the pods' addresses were checked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddressCheck {
    pub addresses: usize,
    /// Addresses handed to more than one pod.
    pub duplicates: Vec<Ipv4Addr>,
    /// Pods whose address lies outside every block their agent holds: (pod, address).
    pub outside_block: Vec<(usize, Ipv4Addr)>,
}

impl AddressCheck {
    pub fn ok(&self) -> bool {
        self.duplicates.is_empty() && self.outside_block.is_empty()
    }
}

/// One process's cost over the idle window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Idle {
    /// CPU seconds spent / wall seconds.
    pub cores: f64,
    /// VmRSS at the end of the window.
    pub rss_mb: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdleFigures {
    pub seconds: f64,
    /// The first agent, singled out.
    pub one_node: String,
    pub one: Idle,
    pub mean: Idle,
    /// Worst agent on each figure (maybe not the same agent).
    pub max: Idle,
    pub etcd: Idle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentsFigures {
    pub config: AgentsConfig,
    pub claims: Claims,
    pub pods: Pods,
    pub idle: IdleFigures,
}

/// Checks that no address went to two pods and that every pod's address lies in a block
/// its agent holds. `pods[i]` = (agent of pod i, its address); `blocks` = agent → blocks.
pub fn check_addresses(
    pods: &[(String, Ipv4Addr)],
    blocks: &HashMap<String, Vec<Ipv4Net>>,
) -> AddressCheck {
    let mut seen = HashSet::new();
    let mut duplicates = Vec::new();
    let mut outside_block = Vec::new();
    for (i, (agent, ip)) in pods.iter().enumerate() {
        if !seen.insert(*ip) && !duplicates.contains(ip) {
            duplicates.push(*ip);
        }
        let inside = blocks
            .get(agent)
            .is_some_and(|bs| bs.iter().any(|b| b.contains(ip)));
        if !inside {
            outside_block.push((i, *ip));
        }
    }
    AddressCheck {
        addresses: pods.len(),
        duplicates,
        outside_block,
    }
}

/// Mean and per-figure maximum of several processes' idle costs.
pub fn mean_and_max(all: &[Idle]) -> (Idle, Idle) {
    if all.is_empty() {
        return (Idle::default(), Idle::default());
    }
    let n = all.len() as f64;
    let mean = Idle {
        cores: all.iter().map(|i| i.cores).sum::<f64>() / n,
        rss_mb: all.iter().map(|i| i.rss_mb).sum::<f64>() / n,
    };
    let max = Idle {
        cores: all.iter().map(|i| i.cores).fold(0.0, f64::max),
        rss_mb: all.iter().map(|i| i.rss_mb).fold(0.0, f64::max),
    };
    (mean, max)
}

/// The goals; the idle ones are checked against the worst agent.
pub fn goals(f: &AgentsFigures) -> Vec<Goal> {
    let n = f.config.agents;
    vec![
        goal(
            format!("{n} agents all hold a block <= 5 s"),
            f.claims.all_claimed_ms / 1000.0,
            GOAL_ALL_CLAIMED_MS / 1000.0,
            "s",
        ),
        goal(
            "idle CPU per agent <= 0.005 cores (worst)".into(),
            f.idle.max.cores,
            GOAL_IDLE_CORES,
            " cores",
        ),
        goal(
            "idle RSS per agent <= 20 MB (worst)".into(),
            f.idle.max.rss_mb,
            GOAL_IDLE_RSS_MB,
            " MB",
        ),
    ]
}

fn line(out: &mut String, label: &str, value: String) {
    let _ = writeln!(out, "  {label:<34} {value:>14}");
}

fn ms(x: f64) -> String {
    format!("{x:.1} ms")
}

/// The human-readable report, in the style of `twill-bench cni`.
pub fn tables(f: &AgentsFigures) -> String {
    let c = &f.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Agents benchmark: {} twilld against one etcd member, {} pods via twill-cni, {} min idle\n",
        c.agents, c.pods, c.idle_minutes
    );
    let _ = writeln!(
        out,
        "1. {} agents started at once, each claiming a block",
        c.agents
    );
    let cl = &f.claims;
    line(&mut out, "spawn all (first to last)", ms(cl.spawn_wall_ms));
    line(
        &mut out,
        "all hold a block in the store",
        ms(cl.all_claimed_ms),
    );
    line(
        &mut out,
        "all hand-off files written",
        ms(cl.all_handoff_ms),
    );
    line(
        &mut out,
        "time to block p50 (per agent)",
        ms(cl.time_to_block.p50),
    );
    line(
        &mut out,
        "time to block p99 (per agent)",
        ms(cl.time_to_block.p99),
    );
    line(
        &mut out,
        "time to block max (per agent)",
        ms(cl.time_to_block.max),
    );
    line(&mut out, "blocks held", cl.blocks.to_string());
    let _ = writeln!(out);
    let p = &f.pods;
    let _ = writeln!(
        out,
        "2. {} pod ADDs across the agents ({} at a time), then DELs",
        c.pods, c.parallel
    );
    line(&mut out, "ADD p50", ms(p.add.p50));
    line(&mut out, "ADD p99", ms(p.add.p99));
    line(&mut out, "ADD max", ms(p.add.max));
    line(&mut out, "ADD total", ms(p.add_total_ms));
    line(&mut out, "DEL p50", ms(p.del.p50));
    line(&mut out, "DEL p99", ms(p.del.p99));
    line(&mut out, "DEL total", ms(p.del_total_ms));
    line(
        &mut out,
        "addresses distinct",
        format!(
            "{} ({} dup)",
            if p.check.duplicates.is_empty() {
                "yes"
            } else {
                "NO"
            },
            p.check.duplicates.len()
        ),
    );
    line(
        &mut out,
        "each in its agent's block",
        format!(
            "{} ({} out)",
            if p.check.outside_block.is_empty() {
                "yes"
            } else {
                "NO"
            },
            p.check.outside_block.len()
        ),
    );
    let _ = writeln!(out);
    let i = &f.idle;
    let _ = writeln!(
        out,
        "3. idle for {:.1} s after the churn (CPU = cpu s / wall s; RSS at the end)",
        i.seconds
    );
    let idle = |out: &mut String, label: &str, x: &Idle| {
        line(
            out,
            label,
            format!("{:.5} cores {:>6.1} MB", x.cores, x.rss_mb),
        )
    };
    idle(&mut out, &format!("one agent ({})", i.one_node), &i.one);
    idle(&mut out, &format!("mean of {} agents", c.agents), &i.mean);
    idle(&mut out, &format!("worst of {} agents", c.agents), &i.max);
    idle(&mut out, "etcd (serving all agents)", &i.etcd);
    let _ = writeln!(out);
    let _ = writeln!(out, "Goals");
    for g in goals(f) {
        let _ = writeln!(
            out,
            "  [{}] {:<48} {:>8.4}{} (limit {}{})",
            if g.met { "met " } else { "MISS" },
            g.name,
            g.value,
            g.unit,
            g.limit,
            g.unit
        );
    }
    out
}

fn idle_json(i: &Idle) -> Value {
    json!({"cpuCores": num(i.cores), "rssMb": num(i.rss_mb)})
}

/// Machine-readable figures; latencies in milliseconds.
pub fn to_json(f: &AgentsFigures) -> Value {
    let (c, cl, p, i) = (&f.config, &f.claims, &f.pods, &f.idle);
    json!({
        "config": {"agents": c.agents, "pods": c.pods, "idleMinutes": c.idle_minutes, "parallel": c.parallel},
        "units": "ms",
        "claims": {
            "spawnWallMs": num(cl.spawn_wall_ms),
            "allClaimedMs": num(cl.all_claimed_ms),
            "allHandoffMs": num(cl.all_handoff_ms),
            "timeToBlock": summary_json(&cl.time_to_block),
            "blocks": cl.blocks,
        },
        "pods": {
            "add": summary_json(&p.add),
            "addTotalMs": num(p.add_total_ms),
            "del": summary_json(&p.del),
            "delTotalMs": num(p.del_total_ms),
            "addresses": p.check.addresses,
            "duplicates": p.check.duplicates.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "outsideBlock": p.check.outside_block.iter().map(|(pod, a)| json!({"pod": pod, "address": a.to_string()})).collect::<Vec<_>>(),
            "addressesOk": p.check.ok(),
        },
        "idle": {
            "seconds": num(i.seconds),
            "one": {"node": i.one_node, "cpuCores": num(i.one.cores), "rssMb": num(i.one.rss_mb)},
            "mean": idle_json(&i.mean),
            "max": idle_json(&i.max),
            "etcd": idle_json(&i.etcd),
        },
        "goals": goals(f).iter().map(|g| json!({"goal": g.name, "value": num(g.value), "limit": g.limit, "unit": g.unit.trim(), "met": g.met})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_must_be_distinct_and_inside_the_agents_block() {
        let blocks = HashMap::from([
            ("a".to_string(), vec![net("10.244.1.0/24")]),
            (
                "b".to_string(),
                vec![net("10.244.2.0/24"), net("10.244.3.0/24")],
            ),
        ]);
        let good = vec![
            ("a".to_string(), ip("10.244.1.2")),
            ("b".to_string(), ip("10.244.2.2")),
            ("b".to_string(), ip("10.244.3.2")),
        ];
        let c = check_addresses(&good, &blocks);
        assert!(c.ok(), "{c:?}");
        assert_eq!(c.addresses, 3);

        let bad = vec![
            ("a".to_string(), ip("10.244.1.2")),
            ("a".to_string(), ip("10.244.1.2")),
            ("a".to_string(), ip("10.244.2.9")),
            ("nobody".to_string(), ip("10.244.1.7")),
        ];
        let c = check_addresses(&bad, &blocks);
        assert_eq!(c.duplicates, vec![ip("10.244.1.2")]);
        assert_eq!(
            c.outside_block,
            vec![(2, ip("10.244.2.9")), (3, ip("10.244.1.7"))]
        );
        assert!(!c.ok());
    }

    #[test]
    fn mean_and_max_per_figure() {
        let (mean, max) = mean_and_max(&[
            Idle {
                cores: 0.001,
                rss_mb: 10.0,
            },
            Idle {
                cores: 0.003,
                rss_mb: 6.0,
            },
        ]);
        assert!((mean.cores - 0.002).abs() < 1e-12);
        assert_eq!((mean.rss_mb, max.cores, max.rss_mb), (8.0, 0.003, 10.0));
        assert_eq!(mean_and_max(&[]), (Idle::default(), Idle::default()));
    }

    fn figures() -> AgentsFigures {
        AgentsFigures {
            config: AgentsConfig {
                agents: 100,
                pods: 1000,
                idle_minutes: 10.0,
                parallel: 1,
            },
            claims: Claims {
                all_claimed_ms: 1200.0,
                ..Default::default()
            },
            pods: Pods::default(),
            idle: IdleFigures {
                seconds: 600.0,
                one_node: "n1".into(),
                max: Idle {
                    cores: 0.01,
                    rss_mb: 8.0,
                },
                ..Default::default()
            },
        }
    }

    #[test]
    fn goals_table_and_json() {
        let f = figures();
        let g = goals(&f);
        assert!(g[0].met && g[0].value == 1.2);
        assert!(!g[1].met, "0.01 cores > 0.005");
        assert!(g[2].met);
        let t = tables(&f);
        assert!(t.contains("1. 100 agents started at once"), "{t}");
        assert!(t.contains("[MISS] idle CPU"), "{t}");
        let j = to_json(&f);
        assert_eq!(j["claims"]["allClaimedMs"], 1200.0);
        assert_eq!(j["idle"]["max"]["cpuCores"], 0.01);
        assert_eq!(j["pods"]["addressesOk"], true);
        assert_eq!(j["goals"].as_array().unwrap().len(), 3);
        assert_eq!(j["goals"][1]["unit"], "cores");
    }
}
