//! `twill ipam show` and `twill ipam check`: the address space as nodes hold and use it.
//! [`summarize`] and [`check`] are pure (a [`ClusterView`] in, rows or problems out); only
//! [`run`] touches the store.

use crate::table;
use crate::view::{block_capacity, ClusterView};
use clap::{Args, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use twill_store::{Store, StoreKind};

#[derive(Args)]
pub struct IpamArgs {
    #[command(subcommand)]
    command: IpamCommand,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum IpamCommand {
    /// Per node: the blocks it holds, the addresses used and free in them; totals.
    Show {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Addresses nodes report in use against the blocks in the store: conflicts, leaks,
    /// stranded blocks (held by a live node, not handed off), stale blocks. Exits 1 on any
    /// conflict, leak or stranded block.
    Check {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
}

pub fn run(args: IpamArgs, store: &dyn Store) -> anyhow::Result<i32> {
    let view = ClusterView::load(store)?;
    match args.command {
        IpamCommand::Show { output } => {
            let s = summarize(&view);
            match output {
                Output::Table => print!("{}", render_show(&s)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            Ok(0)
        }
        IpamCommand::Check { output } => {
            let report = check(&view);
            match output {
                Output::Table => print!("{}", render_check(&report)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(if report.ok { 0 } else { 1 })
        }
    }
}

// ---- show ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeUsage {
    pub node: String,
    pub live: bool,
    pub blocks: Vec<Ipv4Net>,
    pub used: u64,
    pub free: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<Ipv4Net>,
    /// Blocks that may be handed out in all (after subnetMin/Max and reservations).
    pub block_capacity: Option<u64>,
    pub nodes: Vec<NodeUsage>,
    pub total_blocks: u64,
    pub total_used: u64,
    pub total_free: u64,
}

/// Per node, the blocks it holds and the addresses used and free in them. Nodes holding
/// no block are listed too when they are live (they will claim one).
pub fn summarize(view: &ClusterView) -> Summary {
    let mut nodes = Vec::new();
    for name in view.node_names() {
        let blocks: Vec<Ipv4Net> = view.blocks_of(&name).filter_map(|b| b.cidr).collect();
        if blocks.is_empty() && !view.is_live(&name) {
            continue;
        }
        let used: u64 = blocks.iter().map(|b| view.used_in(&name, *b)).sum();
        let capacity: u64 = blocks.iter().map(|b| block_capacity(*b)).sum();
        nodes.push(NodeUsage {
            live: view.is_live(&name),
            node: name,
            blocks,
            used,
            free: capacity.saturating_sub(used),
        });
    }
    Summary {
        cluster_cidr: view.config.as_ref().map(|c| c.cluster_cidr),
        block_capacity: view
            .config
            .as_ref()
            .map(|c| twill_ipam::BlockSpace::new(c).capacity()),
        total_blocks: nodes.iter().map(|n| n.blocks.len() as u64).sum(),
        total_used: nodes.iter().map(|n| n.used).sum(),
        total_free: nodes.iter().map(|n| n.free).sum(),
        nodes,
    }
}

pub fn render_show(s: &Summary) -> String {
    let join = |b: &[Ipv4Net]| {
        if b.is_empty() {
            "-".to_string()
        } else {
            b.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let mut rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                join(&n.blocks),
                n.used.to_string(),
                n.free.to_string(),
                if n.live { "Ready" } else { "NotReady" }.to_string(),
            ]
        })
        .collect();
    rows.push(vec![
        "TOTAL".into(),
        format!("{} blocks", s.total_blocks),
        s.total_used.to_string(),
        s.total_free.to_string(),
        String::new(),
    ]);
    let mut out = table::render(&["NODE", "BLOCKS", "USED", "FREE", "STATUS"], &rows);
    match (s.cluster_cidr, s.block_capacity) {
        (Some(c), Some(cap)) => {
            let _ = writeln!(
                out,
                "cluster {c}: {} of {cap} blocks held, {} free",
                s.total_blocks,
                cap.saturating_sub(s.total_blocks)
            );
        }
        _ => out.push_str("no network config in the store: apply one with `twill apply -f`\n"),
    }
    out
}

// ---- check ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProblemKind {
    /// Two owners for one address, or a record that contradicts the address space.
    Conflict,
    /// An address held for a pod that is gone.
    Leak,
    /// A block a live node holds but does not hand off to twill-cni: no pod can get an
    /// address in it until the node's lease ends.
    Stranded,
    /// A block whose holder is gone; it will be freed, nothing is wrong yet.
    Stale,
}

impl ProblemKind {
    pub fn label(self) -> &'static str {
        match self {
            ProblemKind::Conflict => "CONFLICT",
            ProblemKind::Leak => "LEAK",
            ProblemKind::Stranded => "STRANDED",
            ProblemKind::Stale => "STALE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// What the problem is about: an address, a block or a key.
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// No conflict, leak or stranded block (stale blocks are expected after a node goes away).
    pub ok: bool,
    pub problems: Vec<Problem>,
    pub conflicts: usize,
    pub leaks: usize,
    pub stranded: usize,
    pub stale: usize,
    pub nodes: usize,
    pub blocks: usize,
    pub addresses: usize,
}

fn problem(kind: ProblemKind, subject: impl ToString, message: String) -> Problem {
    Problem {
        kind,
        subject: subject.to_string(),
        message,
    }
}

fn describe(node: &str, a: &crate::view::Allocation) -> String {
    format!(
        "on {node} (container {}, {})",
        short(&a.container_id),
        a.ifname
    )
}

/// Container ids are 64 hex digits; 12 identify one, as docker and crictl print them.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Every disagreement between what nodes report in use and the blocks in the store.
pub fn check(view: &ClusterView) -> CheckReport {
    use ProblemKind::*;
    let mut problems = Vec::new();
    let cluster = view.config.as_ref().map(|c| (c.cluster_cidr, c.block_size));

    if cluster.is_none() && !view.blocks.is_empty() {
        problems.push(problem(
            Conflict,
            "config",
            format!(
                "{} blocks are held but the store has no network config: apply the config they were cut from",
                view.blocks.len()
            ),
        ));
    }
    for u in &view.unreadable {
        problems.push(problem(
            Conflict,
            &u.key,
            format!(
                "{} holds a value no one can read ({}): rewrite or delete it",
                u.key, u.reason
            ),
        ));
    }

    // Blocks: each must parse, lie in the cluster CIDR at the configured size, not
    // overlap another, and belong to a live node.
    let mut valid: Vec<(Ipv4Net, &str)> = Vec::new();
    for b in &view.blocks {
        let Some(cidr) = b.cidr else {
            problems.push(problem(
                Conflict,
                &b.key,
                format!(
                    "block key {} does not name a block (blocks/a.b.c.d-len): delete it",
                    b.key
                ),
            ));
            continue;
        };
        let Some(block) = &b.block else {
            continue; // reported with the unreadable values
        };
        if block.cidr != cidr {
            problems.push(problem(
                Conflict,
                cidr,
                format!(
                    "block key {} records a different block, {}",
                    b.key, block.cidr
                ),
            ));
        }
        if let Some((c, size)) = cluster {
            if !c.contains(&cidr) {
                problems.push(problem(
                    Conflict,
                    cidr,
                    format!(
                        "block {cidr} (held by {}) lies outside the cluster CIDR {c}",
                        block.node
                    ),
                ));
            } else if cidr.prefix_len() != size {
                problems.push(problem(
                    Conflict,
                    cidr,
                    format!(
                        "block {cidr} (held by {}) is a /{} but blockSize is {size}",
                        block.node,
                        cidr.prefix_len()
                    ),
                ));
            }
        }
        if let Some((other, holder)) = valid
            .iter()
            .find(|(o, _)| o.contains(&cidr) || cidr.contains(o))
        {
            problems.push(problem(
                Conflict,
                cidr,
                format!(
                    "block {cidr} (held by {}) overlaps block {other} (held by {holder})",
                    block.node
                ),
            ));
        }
        valid.push((cidr, &block.node));
        // A live node publishes what it hands off (NodeStatus.blocks) after each claim; a
        // status written after the block was, that does not list it, is a stranded block.
        // (A block claimed since the status was last written is not judged yet.)
        if let Some(st) = view.statuses.get(&block.node).filter(|s| {
            view.is_live(&block.node)
                && view.store_kind != StoreKind::Static
                && s.mod_revision > b.mod_revision
                && !s.status.blocks.contains(&cidr)
        }) {
            let handed: Vec<String> = st.status.blocks.iter().map(|b| b.to_string()).collect();
            problems.push(problem(
                Stranded,
                cidr,
                format!(
                    "block {cidr} is held by {} but not handed off to its pods (it hands off {}): no pod gets an address in it until {}'s lease ends; restart twilld on {}, which adopts the blocks held in its name at start",
                    block.node,
                    if handed.is_empty() { "nothing".to_string() } else { handed.join(", ") },
                    block.node,
                    block.node
                ),
            ));
        }
        if !view.is_live(&block.node) {
            let when = if b.leased {
                "it is freed when its lease expires, or now by"
            } else {
                "it has no lease and is never freed by itself: free it with"
            };
            problems.push(problem(
                Stale,
                cidr,
                format!(
                    "block {cidr} is held by {}, which has no live status key: {when} `twill node remove {}`",
                    block.node, block.node
                ),
            ));
        }
    }

    // Addresses: each in a block of its own node, on one node only, its pod present.
    let mut seen: BTreeMap<Ipv4Addr, (&str, &crate::view::Allocation)> = BTreeMap::new();
    let mut addresses = 0;
    for (node, list) in &view.allocations {
        for a in list {
            addresses += 1;
            let holder = valid.iter().find(|(c, _)| c.contains(&a.ip));
            match holder {
                Some((_, h)) if *h == node => {}
                Some((c, h)) => problems.push(problem(
                    Conflict,
                    a.ip,
                    format!(
                        "{} is used {} but block {c} is held by {h}",
                        a.ip,
                        describe(node, a)
                    ),
                )),
                None => {
                    let where_ = match cluster {
                        Some((c, _)) if !c.contains(&a.ip) => {
                            format!("outside the cluster CIDR {c}")
                        }
                        _ => "in no block held by any node".to_string(),
                    };
                    problems.push(problem(
                        Conflict,
                        a.ip,
                        format!("{} is used {} but lies {where_}", a.ip, describe(node, a)),
                    ))
                }
            }
            if let Some((other, b)) = seen.get(&a.ip) {
                problems.push(problem(
                    Conflict,
                    a.ip,
                    format!(
                        "{} is used twice: {} and {}",
                        a.ip,
                        describe(other, b),
                        describe(node, a)
                    ),
                ));
            } else {
                seen.insert(a.ip, (node, a));
            }
            if !a.present {
                problems.push(problem(
                    Leak,
                    a.ip,
                    format!(
                        "{} is held {} but its host veth {} is gone: the pod was deleted without a CNI DEL; a CNI DEL for that container (or the agent's garbage collection) frees it",
                        a.ip,
                        describe(node, a),
                        if a.host_veth.is_empty() { "(unnamed)" } else { &a.host_veth }
                    ),
                ));
            }
        }
    }

    // Stable order: by kind, then by what the problem is about.
    problems.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
    let count = |k| problems.iter().filter(|p| p.kind == k).count();
    let (conflicts, leaks, stranded, stale) =
        (count(Conflict), count(Leak), count(Stranded), count(Stale));
    CheckReport {
        ok: conflicts == 0 && leaks == 0 && stranded == 0,
        conflicts,
        leaks,
        stranded,
        stale,
        nodes: view.node_names().len(),
        blocks: view.blocks.len(),
        addresses,
        problems,
    }
}

pub fn render_check(r: &CheckReport) -> String {
    let rows: Vec<Vec<String>> = r
        .problems
        .iter()
        .map(|p| vec![p.kind.label().to_string(), p.message.clone()])
        .collect();
    let mut out = if rows.is_empty() {
        String::new()
    } else {
        table::render(&["KIND", "PROBLEM"], &rows)
    };
    let _ = writeln!(
        out,
        "{}: {} conflicts, {} leaks, {} stranded, {} stale blocks ({} nodes, {} blocks, {} addresses in use checked)",
        if r.ok { "ok" } else { "FAILED" },
        r.conflicts,
        r.leaks,
        r.stranded,
        r.stale,
        r.nodes,
        r.blocks,
        r.addresses
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::*;

    fn kinds(r: &CheckReport) -> Vec<(ProblemKind, String)> {
        r.problems
            .iter()
            .map(|p| (p.kind, p.subject.clone()))
            .collect()
    }

    #[test]
    fn a_clean_cluster_passes() {
        let r = check(&view(&clean()));
        assert!(r.ok && r.problems.is_empty(), "{r:?}");
        assert_eq!((r.nodes, r.blocks, r.addresses), (2, 2, 3));
        assert_eq!(
            render_check(&r),
            "ok: 0 conflicts, 0 leaks, 0 stranded, 0 stale blocks (2 nodes, 2 blocks, 3 addresses in use checked)\n"
        );
    }

    #[test]
    fn a_pod_gone_without_del_is_a_leak() {
        let mut kvs = clean();
        kvs[6] = kv(
            "allocations/n2",
            serde_json::json!([
                alloc("10.244.2.2", "c", true),
                alloc("10.244.2.9", "gone", false)
            ]),
            7,
            false,
        );
        let r = check(&view(&kvs));
        assert_eq!(kinds(&r), [(ProblemKind::Leak, "10.244.2.9".to_string())]);
        assert!(!r.ok);
        assert!(r.problems[0].message.contains("vethgone"), "{r:?}");
        assert!(render_check(&r).starts_with("KIND   PROBLEM\nLEAK   10.244.2.9 is held on n2"));
    }

    #[test]
    fn an_address_in_another_nodes_block_names_the_holder() {
        let mut kvs = clean();
        kvs[6] = kv(
            "allocations/n2",
            serde_json::json!([
                alloc("10.244.2.2", "c", true),
                alloc("10.244.1.3", "d", true)
            ]),
            7,
            false,
        );
        let r = check(&view(&kvs));
        // In n1's block, and n1 uses it too.
        assert_eq!(
            kinds(&r),
            [
                (ProblemKind::Conflict, "10.244.1.3".to_string()),
                (ProblemKind::Conflict, "10.244.1.3".to_string())
            ]
        );
        let all: String = r
            .problems
            .iter()
            .map(|p| p.message.clone() + "\n")
            .collect();
        assert!(all.contains("block 10.244.1.0/24 is held by n1"), "{all}");
        assert!(
            all.contains("used twice: on n1 (container b, eth0) and on n2 (container d, eth0)"),
            "{all}"
        );
        assert_eq!(r.conflicts, 2);
    }

    #[test]
    fn an_address_outside_every_block_or_the_cluster() {
        let mut kvs = clean();
        kvs[6] = kv(
            "allocations/n2",
            serde_json::json!([
                alloc("10.244.9.2", "e", true),
                alloc("192.0.2.50", "f", true)
            ]),
            7,
            false,
        );
        let r = check(&view(&kvs));
        let msgs: Vec<&str> = r.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(msgs[0].contains("10.244.9.2 is used on n2 (container e, eth0) but lies in no block held by any node"), "{msgs:?}");
        assert!(
            msgs[1].contains("outside the cluster CIDR 10.244.0.0/16"),
            "{msgs:?}"
        );
    }

    #[test]
    fn bad_block_keys_and_blocks_outside_the_cidr_conflict() {
        let mut kvs = clean();
        kvs.push(kv("blocks/garbage", serde_json::json!({}), 8, true));
        let (k, v) = block("10.99.1.0/24", "n1");
        kvs.push(kv(&k, v, 9, true));
        let (k, v) = block("10.244.1.0/26", "n2");
        kvs.push(kv(&k, v, 10, true));
        let r = check(&view(&kvs));
        let msgs: Vec<String> = r
            .problems
            .iter()
            .map(|p| format!("{} {}", p.kind.label(), p.message))
            .collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("CONFLICT block key blocks/garbage does not name a block")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains(
                "block 10.99.1.0/24 (held by n1) lies outside the cluster CIDR 10.244.0.0/16"
            )),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("10.244.1.0/26 (held by n2) is a /26 but blockSize is 24")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("overlaps block 10.244.1.0/24 (held by n1)")),
            "{msgs:?}"
        );
        assert!(r.problems.iter().all(|p| p.kind == ProblemKind::Conflict));
    }

    #[test]
    fn a_block_a_live_node_does_not_hand_off_is_stranded() {
        let mut kvs = clean();
        // n1's status lists its block and was written after it: fine.
        let mut st = status("n1", "192.0.2.11");
        st["blocks"] = serde_json::json!(["10.244.1.0/24"]);
        kvs[1] = kv("nodes/n1", st.clone(), 10, true);
        // A second block of n1's, older than its status, that the status does not list.
        let (b3, v3) = block("10.244.3.0/24", "n1");
        kvs.push(kv(&b3, v3.clone(), 8, true));
        let r = check(&view(&kvs));
        assert_eq!(
            kinds(&r),
            [(ProblemKind::Stranded, "10.244.3.0/24".to_string())]
        );
        assert!(!r.ok);
        assert_eq!(r.stranded, 1);
        let m = &r.problems[0].message;
        assert!(
            m.contains("held by n1 but not handed off")
                && m.contains("10.244.1.0/24")
                && m.contains("restart twilld on n1"),
            "{m}"
        );
        assert!(render_check(&r).contains("STRANDED"));
        // Claimed after the status was last written: the agent has not published yet.
        let last = kvs.len() - 1;
        kvs[last] = kv(&b3, v3, 11, true);
        assert!(check(&view(&kvs)).ok);
    }

    #[test]
    fn a_block_of_a_dead_node_is_stale_not_an_error() {
        let mut kvs = clean();
        kvs.remove(2); // nodes/n2: the agent's lease expired
        let r = check(&view(&kvs));
        assert_eq!(
            kinds(&r),
            [(ProblemKind::Stale, "10.244.2.0/24".to_string())]
        );
        assert!(r.ok, "stale alone exits 0");
        assert!(r.problems[0].message.contains("`twill node remove n2`"));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["problems"][0]["kind"], "STALE");
        assert_eq!(j["stale"], 1);
    }

    #[test]
    fn show_sums_per_node_and_in_total() {
        let s = summarize(&view(&clean()));
        assert_eq!(s.nodes.len(), 2);
        assert_eq!((s.nodes[0].used, s.nodes[0].free), (2, 251));
        assert_eq!((s.total_blocks, s.total_used, s.total_free), (2, 3, 503));
        assert_eq!(s.block_capacity, Some(255));
        assert_eq!(
            render_show(&s),
            "NODE    BLOCKS          USED   FREE   STATUS\n\
             n1      10.244.1.0/24   2      251    Ready\n\
             n2      10.244.2.0/24   1      252    Ready\n\
             TOTAL   2 blocks        3      503\n\
             cluster 10.244.0.0/16: 2 of 255 blocks held, 253 free\n"
        );
    }
}
