//! `twill node status`: every node's peers, reachable or not (see [`crate::node_status`]).
//! `twill node remove NAME`: retires a node and frees what it held. [`plan_removal`] is
//! pure (what to delete, or why not); [`run`] deletes, blocks by compare-and-delete so a
//! block another node re-claimed meanwhile is left alone.

use crate::node_status;
use crate::view::ClusterView;
use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use twill_api::resources::{PREFIX_NODECONFIGS, PREFIX_NODES};
use twill_store::{Revision, Store, PREFIX};

#[derive(Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Each node's peers as its agent's probes see them (like calicoctl node status):
    /// reachable or not, round-trip time, how the backend carries traffic to them; in
    /// Calico mode its BGP (or RIP) sessions too ("IPv4 BGP status"). Warns, and exits 1,
    /// when a node's chosen IP is unreachable from its peers or BGP sessions are stuck in
    /// Active/Connect, with the fix.
    Status {
        /// Only this node's peers (and warnings about it); every node when omitted.
        #[arg(long)]
        node: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: StatusOutput,
    },
    /// Retire a node: delete its status, override and allocations, and free every block it
    /// holds. Refused while its agent looks alive, unless --force.
    Remove {
        name: String,
        /// Remove it even though its agent still holds a lease (the agent will re-claim
        /// blocks and re-publish its status if it is really running).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StatusOutput {
    Table,
    Wide,
    Json,
}

fn run_status(store: &dyn Store, node: Option<&str>, output: StatusOutput) -> anyhow::Result<i32> {
    // One list, one revision: statuses and peer views agree with each other.
    let (kvs, revision) = store.list(PREFIX)?;
    let view = ClusterView::from_kvs(store.kind(), revision, &kvs);
    let report = match node_status::build(
        &view,
        &node_status::peer_views(&kvs),
        &node_status::routing_statuses(&kvs),
        node,
        now(),
    ) {
        Ok(r) => r,
        Err(why) => bail!(why),
    };
    match output {
        StatusOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        o => print!(
            "{}",
            node_status::render(&report, o == StatusOutput::Wide, now())
        ),
    }
    Ok(report.exit_code())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What removing a node deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub node: String,
    /// Each block key with the revision it was read at.
    pub blocks: Vec<(Ipv4Net, String, Revision)>,
    /// Addresses the node reported in its blocks.
    pub addresses: u64,
    /// Plain keys (status, override, allocations) that exist.
    pub keys: Vec<String>,
}

/// What removing `node` would delete, or why it is refused. Pure.
pub fn plan_removal(view: &ClusterView, node: &str, force: bool) -> Result<Removal, String> {
    if view.is_live(node) && !force {
        return Err(format!(
            "node {node} still looks alive: its status key {PREFIX_NODES}{node} is bound to a lease its agent keeps renewing. \
             Stop its twilld first (the key goes when the lease expires), or pass --force"
        ));
    }
    let blocks: Vec<(Ipv4Net, String, Revision)> = view
        .blocks_of(node)
        .filter_map(|b| Some((b.cidr?, b.key.clone(), b.mod_revision)))
        .collect();
    let addresses = blocks.iter().map(|(c, _, _)| view.used_in(node, *c)).sum();
    let mut keys = Vec::new();
    if view.statuses.contains_key(node) {
        keys.push(format!("{PREFIX_NODES}{node}"));
    }
    if view.overrides.contains_key(node) {
        keys.push(format!("{PREFIX_NODECONFIGS}{node}"));
    }
    if view.allocations.contains_key(node) {
        keys.push(format!("{}{node}", crate::view::PREFIX_ALLOCATIONS));
    }
    if blocks.is_empty() && keys.is_empty() {
        return Err(format!(
            "node {node} not found: no status, override, allocations or block under that name (`twill get nodes` lists them)"
        ));
    }
    Ok(Removal {
        node: node.to_string(),
        blocks,
        addresses,
        keys,
    })
}

pub fn run(args: NodeArgs, store: &dyn Store) -> anyhow::Result<i32> {
    let (name, force) = match args.command {
        NodeCommand::Status { node, output } => return run_status(store, node.as_deref(), output),
        NodeCommand::Remove { name, force } => (name, force),
    };
    let view = ClusterView::load(store)?;
    let plan = match plan_removal(&view, &name, force) {
        Ok(p) => p,
        Err(why) => bail!(why),
    };
    // Blocks first: if interrupted, the rest still names the node, so running again
    // finishes the job.
    let mut freed = Vec::new();
    for (cidr, key, rev) in &plan.blocks {
        if store.delete_if(&format!("{PREFIX}{key}"), *rev)? {
            freed.push(cidr.to_string());
        } else {
            println!("block {cidr}: left alone, it changed since it was read (re-claimed by another node, or already freed)");
        }
    }
    let mut deleted = Vec::new();
    for key in &plan.keys {
        if store.delete(&format!("{PREFIX}{key}"))? {
            deleted.push(key.clone());
        }
    }
    println!(
        "node/{name} removed: freed {} block{}{}, {} address{} in use on it released; deleted {}",
        freed.len(),
        if freed.len() == 1 { "" } else { "s" },
        if freed.is_empty() {
            String::new()
        } else {
            format!(" ({})", freed.join(", "))
        },
        plan.addresses,
        if plan.addresses == 1 { "" } else { "es" },
        if deleted.is_empty() {
            "no other key".to_string()
        } else {
            deleted.join(", ")
        }
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::*;

    #[test]
    fn a_live_node_is_refused_without_force() {
        let v = view(&clean());
        let e = plan_removal(&v, "n1", false).unwrap_err();
        assert!(
            e.contains("still looks alive") && e.contains("--force"),
            "{e}"
        );
        let p = plan_removal(&v, "n1", true).unwrap();
        assert_eq!(
            p.blocks,
            [(
                "10.244.1.0/24".parse().unwrap(),
                "blocks/10.244.1.0-24".to_string(),
                4
            )]
        );
        assert_eq!(p.addresses, 2);
        assert_eq!(p.keys, ["nodes/n1", "allocations/n1"]);
    }

    #[test]
    fn a_dead_node_is_planned_with_block_revisions() {
        let mut kvs = clean();
        kvs.remove(2); // nodes/n2 expired
        kvs.push(kv("nodeconfigs/n2", serde_json::json!({}), 9, false));
        let p = plan_removal(&view(&kvs), "n2", false).unwrap();
        assert_eq!(p.blocks.len(), 1);
        assert_eq!(p.blocks[0].2, 5);
        assert_eq!(p.keys, ["nodeconfigs/n2", "allocations/n2"]);
        let e = plan_removal(&view(&kvs), "n9", false).unwrap_err();
        assert!(e.contains("not found"), "{e}");
    }
}
