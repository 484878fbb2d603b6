//! The figures of one run, the goals checked against them, and their two outputs:
//! tables for people, JSON for scripts. Pure.

use crate::stats::{ratio, Bucket, Summary};
use serde_json::{json, Value};
use std::fmt::Write;

/// Pods per bucket in the fill scenario.
pub const BUCKET: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub pairs: usize,
    pub concurrent: usize,
    pub fill: usize,
    pub mappings: bool,
    pub ip_masq: bool,
}

/// Everything measured for one plugin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginFigures {
    pub seq_add: Summary,
    pub seq_del: Summary,
    pub conc_add: Summary,
    pub conc_add_wall_ms: f64,
    pub conc_del: Summary,
    pub conc_del_wall_ms: f64,
    pub fill_add: Summary,
    pub fill_buckets: Vec<Bucket>,
    pub fill_del: Summary,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub config: Config,
    pub twill: PluginFigures,
    pub reference: PluginFigures,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub name: String,
    pub value: f64,
    pub limit: f64,
    pub unit: &'static str,
    pub met: bool,
}

pub(crate) fn goal(name: String, value: f64, limit: f64, unit: &'static str) -> Goal {
    // NaN (nothing measured) compares false: a goal is never met by default.
    Goal {
        name,
        value,
        limit,
        unit,
        met: value <= limit,
    }
}

/// The goals of the CNI issue, checked against Twill's figures.
pub fn goals(f: &Figures) -> Vec<Goal> {
    let (t, r) = (&f.twill, &f.reference);
    vec![
        goal(
            "sequential ADD p50 <= 0.3x ref".into(),
            ratio(t.seq_add.p50, r.seq_add.p50),
            0.3,
            "x",
        ),
        goal(
            "sequential DEL p50 <= 0.2x ref".into(),
            ratio(t.seq_del.p50, r.seq_del.p50),
            0.2,
            "x",
        ),
        goal(
            format!(
                "ADD p99 <= 2x p50 over a {}-pod fill (twill)",
                f.config.fill
            ),
            ratio(t.fill_add.p99, t.fill_add.p50),
            2.0,
            "x",
        ),
        goal(
            format!(
                "{} concurrent ADDs p50 <= 50 ms (twill)",
                f.config.concurrent
            ),
            t.conc_add.p50,
            50.0,
            "ms",
        ),
    ]
}

fn row(out: &mut String, label: &str, twill: f64, reference: f64) {
    let _ = writeln!(
        out,
        "  {label:<24} {twill:>10.2} {reference:>10.2} {:>10.2}",
        ratio(twill, reference)
    );
}

fn header(out: &mut String, title: &str) {
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "  {:<24} {:>10} {:>10} {:>10}",
        "(ms)", "twill", "ref", "twill/ref"
    );
}

/// The human-readable report: one table per scenario, then the goals.
pub fn tables(f: &Figures) -> String {
    let c = &f.config;
    let (t, r) = (&f.twill, &f.reference);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "CNI benchmark: twill-cni vs bridge+host-local{} (ipMasq={}), interleaved A B A B\n",
        if c.mappings {
            "+portmap, one tcp host port per pod"
        } else {
            ""
        },
        c.ip_masq
    );
    header(
        &mut out,
        &format!("1. {} sequential ADD/DEL pairs", c.pairs),
    );
    for (label, a, b) in [
        ("ADD p50", t.seq_add.p50, r.seq_add.p50),
        ("ADD p90", t.seq_add.p90, r.seq_add.p90),
        ("ADD p99", t.seq_add.p99, r.seq_add.p99),
        ("DEL p50", t.seq_del.p50, r.seq_del.p50),
        ("DEL p90", t.seq_del.p90, r.seq_del.p90),
        ("DEL p99", t.seq_del.p99, r.seq_del.p99),
    ] {
        row(&mut out, label, a, b);
    }
    let _ = writeln!(out);
    header(
        &mut out,
        &format!(
            "2. {} concurrent ADDs (all started at once), then DELs",
            c.concurrent
        ),
    );
    for (label, a, b) in [
        ("ADD p50", t.conc_add.p50, r.conc_add.p50),
        ("ADD p99", t.conc_add.p99, r.conc_add.p99),
        ("ADD wall", t.conc_add_wall_ms, r.conc_add_wall_ms),
        ("DEL p50", t.conc_del.p50, r.conc_del.p50),
        ("DEL p99", t.conc_del.p99, r.conc_del.p99),
        ("DEL wall", t.conc_del_wall_ms, r.conc_del_wall_ms),
    ] {
        row(&mut out, label, a, b);
    }
    let _ = writeln!(out);
    header(
        &mut out,
        &format!(
            "3. fill a node to {} pods one by one, then tear down",
            c.fill
        ),
    );
    row(&mut out, "ADD p50 (all)", t.fill_add.p50, r.fill_add.p50);
    row(&mut out, "ADD p99 (all)", t.fill_add.p99, r.fill_add.p99);
    for (bt, br) in t.fill_buckets.iter().zip(&r.fill_buckets) {
        row(
            &mut out,
            &format!("ADD p50 pods {}-{}", bt.from, bt.to),
            bt.summary.p50,
            br.summary.p50,
        );
        row(
            &mut out,
            &format!("ADD p99 pods {}-{}", bt.from, bt.to),
            bt.summary.p99,
            br.summary.p99,
        );
    }
    row(
        &mut out,
        "DEL p50 (teardown)",
        t.fill_del.p50,
        r.fill_del.p50,
    );
    row(
        &mut out,
        "DEL p99 (teardown)",
        t.fill_del.p99,
        r.fill_del.p99,
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Goals (twill)");
    for g in goals(f) {
        let _ = writeln!(
            out,
            "  [{}] {:<48} {:>8.2}{} (limit {}{})",
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

pub(crate) fn summary_json(s: &Summary) -> Value {
    json!({"n": s.n, "p50": s.p50, "p90": s.p90, "p99": s.p99, "min": s.min, "max": s.max, "mean": s.mean})
}

fn plugin_json(p: &PluginFigures) -> Value {
    json!({
        "sequential": {"add": summary_json(&p.seq_add), "del": summary_json(&p.seq_del)},
        "concurrent": {
            "add": summary_json(&p.conc_add), "addWallMs": p.conc_add_wall_ms,
            "del": summary_json(&p.conc_del), "delWallMs": p.conc_del_wall_ms,
        },
        "fill": {
            "add": summary_json(&p.fill_add),
            "buckets": p.fill_buckets.iter().map(|b| json!({"from": b.from, "to": b.to, "add": summary_json(&b.summary)})).collect::<Vec<_>>(),
            "del": summary_json(&p.fill_del),
        },
    })
}

/// NaN is not JSON: a ratio of nothing becomes null.
pub(crate) fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// Machine-readable figures, all latencies in milliseconds.
pub fn to_json(f: &Figures) -> Value {
    let c = &f.config;
    let (t, r) = (&f.twill, &f.reference);
    json!({
        "config": {"pairs": c.pairs, "concurrent": c.concurrent, "fill": c.fill, "mappings": c.mappings, "ipMasq": c.ip_masq},
        "units": "ms",
        "twill": plugin_json(t),
        "ref": plugin_json(r),
        "ratio": {
            "sequentialAddP50": num(ratio(t.seq_add.p50, r.seq_add.p50)),
            "sequentialDelP50": num(ratio(t.seq_del.p50, r.seq_del.p50)),
            "concurrentAddP50": num(ratio(t.conc_add.p50, r.conc_add.p50)),
            "concurrentAddWall": num(ratio(t.conc_add_wall_ms, r.conc_add_wall_ms)),
            "fillAddP50": num(ratio(t.fill_add.p50, r.fill_add.p50)),
            "fillAddP99": num(ratio(t.fill_add.p99, r.fill_add.p99)),
        },
        "goals": goals(f).iter().map(|g| json!({"goal": g.name, "value": num(g.value), "limit": g.limit, "unit": g.unit, "met": g.met})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p50: f64, p99: f64) -> Summary {
        Summary {
            n: 10,
            p50,
            p90: p50,
            p99,
            min: p50,
            max: p99,
            mean: p50,
        }
    }

    fn figures() -> Figures {
        let twill = PluginFigures {
            seq_add: s(2.0, 4.0),
            seq_del: s(2.0, 3.0),
            conc_add: s(40.0, 60.0),
            fill_add: s(3.0, 7.0),
            fill_buckets: vec![Bucket {
                from: 1,
                to: 100,
                summary: s(3.0, 7.0),
            }],
            ..Default::default()
        };
        let reference = PluginFigures {
            seq_add: s(10.0, 20.0),
            seq_del: s(20.0, 30.0),
            conc_add: s(80.0, 90.0),
            fill_add: s(9.0, 12.0),
            fill_buckets: vec![Bucket {
                from: 1,
                to: 100,
                summary: s(9.0, 12.0),
            }],
            ..Default::default()
        };
        let config = Config {
            pairs: 200,
            concurrent: 30,
            fill: 1000,
            mappings: false,
            ip_masq: true,
        };
        Figures {
            config,
            twill,
            reference,
        }
    }

    #[test]
    fn goals_compare_ratios_and_limits() {
        let g = goals(&figures());
        let by = |n: &str| g.iter().find(|g| g.name.contains(n)).unwrap().clone();
        assert!(by("ADD p50 <= 0.3x").met, "2/10 = 0.2");
        assert_eq!(by("ADD p50 <= 0.3x").value, 0.2);
        assert!(by("DEL p50").met, "2/20 = 0.1");
        let tail = by("1000-pod fill");
        assert!(!tail.met, "7/3 > 2");
        assert!(by("30 concurrent").met);
    }

    #[test]
    fn nothing_measured_meets_no_goal_and_is_null_in_json() {
        let mut f = figures();
        f.reference = PluginFigures::default();
        assert!(!goals(&f)[0].met);
        let j = to_json(&f);
        assert!(j["ratio"]["sequentialAddP50"].is_null());
        assert_eq!(j["goals"][0]["met"], false);
    }

    #[test]
    fn json_and_tables_carry_both_plugins() {
        let f = figures();
        let j = to_json(&f);
        assert_eq!(j["twill"]["sequential"]["add"]["p50"], 2.0);
        assert_eq!(j["ref"]["sequential"]["del"]["p50"], 20.0);
        assert_eq!(j["twill"]["fill"]["buckets"][0]["to"], 100);
        let t = tables(&f);
        assert!(t.contains("1. 200 sequential ADD/DEL pairs"), "{t}");
        assert!(t.contains("ADD p50 pods 1-100"), "{t}");
        assert!(t.contains("[MISS]") && t.contains("[met ]"), "{t}");
    }
}
