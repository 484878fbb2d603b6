//! `twill-bench mesh`: the figures of a run, their medians, the ratios to the reference
//! (BIRD configured as Calico does) and the goals, as tables or JSON. Pure.

use crate::mesh_conf::Implementation;
use crate::report::{goal, Goal};
use crate::stats::ratio;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// What one timed run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// All nodes started at once: from the last start until every kernel has every block.
    Cold,
    /// One node started next to a converged mesh: until all kernels route to it and it to
    /// them.
    Join,
    /// A cold start of the larger cluster whose nodes peer with route reflectors only.
    Reflectors,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Cold, Scenario::Join, Scenario::Reflectors];

    pub fn key(self) -> &'static str {
        match self {
            Scenario::Cold => "cold",
            Scenario::Join => "join",
            Scenario::Reflectors => "reflectors",
        }
    }

    /// The goal for Twill, in seconds.
    pub fn goal_seconds(self) -> f64 {
        match self {
            Scenario::Cold => 0.5,
            Scenario::Join => 0.3,
            Scenario::Reflectors => 2.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MeshConfig {
    pub nodes: usize,
    pub join: bool,
    /// Nodes of the route-reflector run (0: not run).
    pub rr_nodes: usize,
    pub reflectors: usize,
    /// Peers of the cost run (0: not run), each announcing [`crate::mesh_conf::FEED_ROUTES_PER_PEER`].
    pub cost_peers: usize,
    pub idle_seconds: f64,
    pub rounds: usize,
    pub implementations: Vec<Implementation>,
}

impl MeshConfig {
    pub fn label(&self, s: Scenario) -> String {
        match s {
            Scenario::Cold => format!("{}-node mesh, cold start", self.nodes),
            Scenario::Join => format!("1 node joins a {}-node mesh", self.nodes),
            Scenario::Reflectors => format!(
                "{} nodes, {} route reflectors, cold start",
                self.rr_nodes, self.reflectors
            ),
        }
    }

    pub fn runs(&self, s: Scenario) -> bool {
        match s {
            Scenario::Cold => true,
            Scenario::Join => self.join,
            Scenario::Reflectors => self.rr_nodes > 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TimedRun {
    pub scenario: Scenario,
    pub implementation: Implementation,
    pub round: usize,
    /// Seconds, or why the run did not converge.
    pub outcome: Result<f64, String>,
}

/// The cost run of one implementation: the measured daemon with `cost_peers` sessions.
#[derive(Clone, Debug, PartialEq)]
pub struct CostRun {
    pub implementation: Implementation,
    pub round: usize,
    pub outcome: Result<Cost, String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    pub routes: usize,
    /// From its start until every route is in its kernel.
    pub converge_seconds: f64,
    /// CPU (user + system) used by then.
    pub cpu_seconds: f64,
    /// Cores used over the idle window after that.
    pub idle_cores: f64,
    /// VmRSS at the end, and the peak (VmHWM), MB.
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MeshFigures {
    pub config: MeshConfig,
    pub timed: Vec<TimedRun>,
    pub costs: Vec<CostRun>,
}

/// The median of some samples (the mean of the middle two for an even count); NaN for none.
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// VmHWM (peak resident set) in kB from the text of `/proc/PID/status`.
pub fn parse_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// (median seconds of the converged runs, converged, runs) of one implementation.
pub fn summary(f: &MeshFigures, s: Scenario, i: Implementation) -> (f64, usize, usize) {
    let runs: Vec<&TimedRun> = f
        .timed
        .iter()
        .filter(|r| r.scenario == s && r.implementation == i)
        .collect();
    let ok: Vec<f64> = runs.iter().filter_map(|r| r.outcome.clone().ok()).collect();
    (median(&ok), ok.len(), runs.len())
}

fn cost_median(f: &MeshFigures, i: Implementation, fig: impl Fn(&Cost) -> f64) -> f64 {
    let v: Vec<f64> = f
        .costs
        .iter()
        .filter(|c| c.implementation == i)
        .filter_map(|c| c.outcome.as_ref().ok().map(&fig))
        .collect();
    median(&v)
}

/// Each of Twill's implementations against the goals (time in seconds).
pub fn goals(f: &MeshFigures) -> Vec<Goal> {
    let mut out = Vec::new();
    for &i in f.config.implementations.iter().filter(|i| i.is_twill()) {
        for s in Scenario::ALL.into_iter().filter(|s| f.config.runs(*s)) {
            out.push(goal(
                format!(
                    "{}: {} <= {} s (median)",
                    i.name(),
                    f.config.label(s),
                    s.goal_seconds()
                ),
                summary(f, s, i).0,
                s.goal_seconds(),
                "s",
            ));
        }
    }
    out
}

/// Any run that did not converge: the bench reports it and fails.
pub fn failures(f: &MeshFigures) -> Vec<String> {
    let timed = f.timed.iter().filter_map(|r| {
        r.outcome.as_ref().err().map(|e| {
            format!(
                "{} {} round {}: {e}",
                r.implementation.name(),
                r.scenario.key(),
                r.round
            )
        })
    });
    let cost = f.costs.iter().filter_map(|c| {
        c.outcome
            .as_ref()
            .err()
            .map(|e| format!("{} cost round {}: {e}", c.implementation.name(), c.round))
    });
    timed.chain(cost).collect()
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.3}")
    }
}

/// The human-readable report: one table per scenario (each run, the median, the ratio to
/// BIRD), the cost table, then the goals.
pub fn tables(f: &MeshFigures) -> String {
    let c = &f.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "twill-bench mesh: {} rounds, interleaved ({}); reference: BIRD 2 configured as Calico's confd templates do",
        c.rounds,
        c.implementations
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for s in Scenario::ALL.into_iter().filter(|s| c.runs(*s)) {
        let _ = writeln!(out, "\n{} (s)", c.label(s));
        let _ = writeln!(
            out,
            "  {:<8} {:>8} {:>8} {:>12}  runs",
            "", "median", "ok", "vs bird"
        );
        let bird = summary(f, s, Implementation::Bird).0;
        for &i in &c.implementations {
            let (m, ok, n) = summary(f, s, i);
            let each: Vec<String> = f
                .timed
                .iter()
                .filter(|r| r.scenario == s && r.implementation == i)
                .map(|r| r.outcome.as_ref().map(|v| fmt(*v)).unwrap_or("FAIL".into()))
                .collect();
            let _ = writeln!(
                out,
                "  {:<8} {:>8} {:>8} {:>12}  {}",
                i.name(),
                fmt(m),
                format!("{ok}/{n}"),
                fmt(ratio(m, bird)),
                each.join(" ")
            );
        }
    }
    if c.cost_peers > 0 {
        let _ = writeln!(
            out,
            "\ncost: one daemon with {} peers and {} routes (medians)",
            c.cost_peers,
            c.cost_peers * crate::mesh_conf::FEED_ROUTES_PER_PEER
        );
        let _ = writeln!(
            out,
            "  {:<8} {:>11} {:>8} {:>11} {:>8} {:>12}",
            "", "converge s", "CPU s", "idle cores", "RSS MB", "peak RSS MB"
        );
        for &i in &c.implementations {
            let _ = writeln!(
                out,
                "  {:<8} {:>11} {:>8} {:>11} {:>8} {:>12}",
                i.name(),
                fmt(cost_median(f, i, |x| x.converge_seconds)),
                fmt(cost_median(f, i, |x| x.cpu_seconds)),
                fmt(cost_median(f, i, |x| x.idle_cores)),
                fmt(cost_median(f, i, |x| x.rss_mb)),
                fmt(cost_median(f, i, |x| x.peak_rss_mb)),
            );
        }
    }
    let _ = writeln!(out, "\ngoals");
    for g in goals(f) {
        let _ = writeln!(
            out,
            "  [{}] {}: {} {}",
            if g.met { "met" } else { "MISSED" },
            g.name,
            fmt(g.value),
            g.unit
        );
    }
    for e in failures(f) {
        let _ = writeln!(out, "  FAILED {e}");
    }
    out
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

pub fn to_json(f: &MeshFigures) -> Value {
    let c = &f.config;
    let mut scenarios = serde_json::Map::new();
    for s in Scenario::ALL.into_iter().filter(|s| c.runs(*s)) {
        let bird = summary(f, s, Implementation::Bird).0;
        let mut per = serde_json::Map::new();
        for &i in &c.implementations {
            let (m, ok, n) = summary(f, s, i);
            let runs: Vec<Value> = f
                .timed
                .iter()
                .filter(|r| r.scenario == s && r.implementation == i)
                .map(|r| match &r.outcome {
                    Ok(v) => json!(v),
                    Err(e) => json!({ "error": e }),
                })
                .collect();
            per.insert(
                i.name().into(),
                json!({"medianSeconds": num(m), "ok": ok, "runs": n,
                       "ratioToBird": num(ratio(m, bird)), "seconds": runs}),
            );
        }
        per.insert("label".into(), json!(c.label(s)));
        scenarios.insert(s.key().into(), Value::Object(per));
    }
    let mut cost = serde_json::Map::new();
    if c.cost_peers > 0 {
        for &i in &c.implementations {
            cost.insert(
                i.name().into(),
                json!({
                    "convergeSeconds": num(cost_median(f, i, |x| x.converge_seconds)),
                    "cpuSeconds": num(cost_median(f, i, |x| x.cpu_seconds)),
                    "idleCores": num(cost_median(f, i, |x| x.idle_cores)),
                    "rssMb": num(cost_median(f, i, |x| x.rss_mb)),
                    "peakRssMb": num(cost_median(f, i, |x| x.peak_rss_mb)),
                    "routes": f.costs.iter().filter(|x| x.implementation == i)
                        .filter_map(|x| x.outcome.as_ref().ok().map(|o| o.routes)).max(),
                }),
            );
        }
    }
    json!({
        "config": {
            "nodes": c.nodes, "join": c.join, "rrNodes": c.rr_nodes, "reflectors": c.reflectors,
            "costPeers": c.cost_peers, "idleSeconds": c.idle_seconds, "rounds": c.rounds,
            "implementations": c.implementations.iter().map(|i| i.name()).collect::<Vec<_>>(),
        },
        "scenarios": scenarios,
        "cost": cost,
        "goals": goals(f).iter().map(|g| json!({"name": g.name, "value": num(g.value),
            "limit": g.limit, "unit": g.unit, "met": g.met})).collect::<Vec<_>>(),
        "failures": failures(f),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MeshConfig {
        MeshConfig {
            nodes: 20,
            join: true,
            rr_nodes: 0,
            reflectors: 2,
            cost_peers: 0,
            idle_seconds: 1.0,
            rounds: 3,
            implementations: vec![Implementation::Bird, Implementation::Speaker],
        }
    }

    fn run(s: Scenario, i: Implementation, round: usize, v: Result<f64, &str>) -> TimedRun {
        TimedRun {
            scenario: s,
            implementation: i,
            round,
            outcome: v.map_err(String::from),
        }
    }

    #[test]
    fn medians_ratios_goals_and_failures() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let (b, s) = (Implementation::Bird, Implementation::Speaker);
        let f = MeshFigures {
            config: config(),
            timed: vec![
                run(Scenario::Cold, b, 0, Ok(2.0)),
                run(Scenario::Cold, s, 0, Ok(0.2)),
                run(Scenario::Cold, b, 1, Ok(1.0)),
                run(Scenario::Cold, s, 1, Ok(0.4)),
                run(Scenario::Cold, b, 2, Ok(2.0)),
                run(Scenario::Cold, s, 2, Err("timed out")),
                run(Scenario::Join, b, 0, Ok(1.0)),
                run(Scenario::Join, s, 0, Ok(0.5)),
            ],
            costs: vec![],
        };
        assert_eq!(summary(&f, Scenario::Cold, b), (2.0, 3, 3));
        let (m, ok, n) = summary(&f, Scenario::Cold, s);
        assert!((m - 0.3).abs() < 1e-12 && ok == 2 && n == 3);
        let g = goals(&f);
        assert_eq!(g.len(), 2, "only Twill's, only the scenarios run: {g:?}");
        assert!(g[0].met && g[0].name.contains("20-node mesh"));
        assert!(!g[1].met && (g[1].value - 0.5).abs() < 1e-12);
        assert_eq!(failures(&f), ["speaker cold round 2: timed out"]);
        let j = to_json(&f);
        assert!(
            (j["scenarios"]["cold"]["speaker"]["ratioToBird"]
                .as_f64()
                .unwrap()
                - 0.15)
                .abs()
                < 1e-9
        );
        assert_eq!(
            j["scenarios"]["cold"]["speaker"]["seconds"][2]["error"],
            "timed out"
        );
        assert!(j["scenarios"].get("reflectors").is_none());
        let t = tables(&f);
        assert!(t.contains("FAILED speaker cold round 2"), "{t}");
        assert!(
            t.contains("[MISSED] speaker: 1 node joins a 20-node mesh"),
            "{t}"
        );
    }

    #[test]
    fn hwm_from_status() {
        assert_eq!(
            parse_hwm_kb("VmPeak:\t 9 kB\nVmHWM:\t    6144 kB\n"),
            Some(6144)
        );
        assert_eq!(parse_hwm_kb("Name: x\n"), None);
    }
}
