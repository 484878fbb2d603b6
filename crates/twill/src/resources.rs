//! `twill get`, `twill apply -f` and `twill delete`: the cluster's resources, calicoctl's
//! way. Rendering ([`render_get`]) and the checks before a write ([`check_apply`],
//! [`check_delete_config`]) are pure, over a [`ClusterView`]; the `run_*` functions do the
//! store I/O.

use crate::policy_get::{self, Scope};
use crate::store_args::{self, StoreArgs};
use crate::table;
use crate::view::{block_capacity, BlockEntry, ClusterView};
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use twill_api::bgp::{
    BgpConfiguration, BgpPeer, Password, BGP_CONFIG_NAME, KEY_BGP_CONFIG, PREFIX_BGP_PEERS,
};
use twill_api::policy::{
    global_network_policy_key, namespace_key, network_policy_key, DEFAULT_NAMESPACE,
};
use twill_api::resources::{
    parse_resources, NetworkConfig, Resource, ResourceKind, KEY_CONFIG, PREFIX_NODECONFIGS,
};
use twill_store::{Store, StoreError, PREFIX};

/// The `apiVersion` printed on resources; `twill apply` accepts any.
pub const API_VERSION: &str = "twill/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "block")]
    Blocks,
    #[value(alias = "networkconfig")]
    Config,
    /// The cluster's BGPConfiguration (the defaults when none is stored).
    #[value(
        name = "bgpconfig",
        alias = "bgpconfiguration",
        alias = "bgpconfigurations",
        alias = "bgpconfigs"
    )]
    BgpConfig,
    #[value(name = "bgppeers", alias = "bgppeer")]
    BgpPeers,
    /// Kubernetes NetworkPolicies of a namespace (-n NS, default `default`; -A all).
    #[value(
        name = "networkpolicies",
        alias = "networkpolicy",
        alias = "netpol",
        alias = "netpols"
    )]
    NetworkPolicies,
    /// Calico GlobalNetworkPolicies, in the order they are evaluated.
    #[value(
        name = "globalnetworkpolicies",
        alias = "globalnetworkpolicy",
        alias = "gnp",
        alias = "gnps"
    )]
    GlobalNetworkPolicies,
    /// Namespaces and their labels (applied ones, and those pods or policies are in).
    #[value(name = "namespaces", alias = "namespace", alias = "ns")]
    Namespaces,
    /// The pods' endpoints as twilld publishes them (read-only; -n NS, -A).
    #[value(
        name = "endpoints",
        alias = "endpoint",
        alias = "wep",
        alias = "weps",
        alias = "workloadendpoints",
        alias = "workloadendpoint"
    )]
    Endpoints,
}

impl Kind {
    /// Whether its resources live in a namespace (so -n and -A apply).
    pub fn namespaced(self) -> bool {
        matches!(self, Kind::NetworkPolicies | Kind::Endpoints)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
}

#[derive(Args)]
pub struct GetArgs {
    /// What to list.
    #[arg(value_enum)]
    kind: Kind,
    /// One node (its name), block (10.244.1.0/24 or 10.244.1.0-24), BGP peer, policy,
    /// namespace or pod; all when omitted.
    name: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// The namespace of namespaced kinds (networkpolicies, endpoints).
    #[arg(
        short = 'n',
        long,
        value_name = "NS",
        conflicts_with = "all_namespaces"
    )]
    namespace: Option<String>,
    /// Every namespace, for namespaced kinds.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
}

impl GetArgs {
    fn scope(&self) -> anyhow::Result<Scope> {
        if !self.kind.namespaced() && (self.namespace.is_some() || self.all_namespaces) {
            bail!(
                "{:?} are not in namespaces; drop -n/--all-namespaces (they apply to networkpolicies and endpoints)",
                self.kind.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
            );
        }
        Ok(match (&self.namespace, self.all_namespaces) {
            (_, true) => Scope::All,
            (Some(n), false) => Scope::One(n.clone()),
            (None, false) => Scope::default(),
        })
    }
}

#[derive(Args)]
pub struct ApplyArgs {
    /// The resource file (YAML or JSON, several documents separated by `---`); `-` reads
    /// stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[command(subcommand)]
    command: DeleteCommand,
}

#[derive(Subcommand)]
enum DeleteCommand {
    /// Remove a node's override (nodeconfigs/NAME); the agent goes back to autodetection.
    /// To retire the node itself, use `twill node remove NAME`.
    Node { name: String },
    /// Remove the network config; refused while any node holds a block.
    Config,
    /// Remove a BGPPeer rule; the nodes it applied to close those sessions.
    #[command(name = "bgppeer", alias = "bgppeers")]
    BgpPeer { name: String },
    /// Remove the BGPConfiguration; the defaults apply again (mesh on, AS 64512, …).
    #[command(name = "bgpconfig", alias = "bgpconfiguration", alias = "bgpconfigs")]
    BgpConfig,
    /// Remove a NetworkPolicy; the pods it selected are open again unless another selects
    /// them.
    #[command(
        name = "networkpolicy",
        alias = "networkpolicies",
        alias = "netpol",
        alias = "netpols"
    )]
    NetworkPolicy {
        name: String,
        /// Its namespace.
        #[arg(short = 'n', long, value_name = "NS", default_value = DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Remove a GlobalNetworkPolicy.
    #[command(
        name = "globalnetworkpolicy",
        alias = "globalnetworkpolicies",
        alias = "gnp",
        alias = "gnps"
    )]
    GlobalNetworkPolicy { name: String },
    /// Remove a Namespace's labels (only `kubernetes.io/metadata.name` stays); its pods
    /// and NetworkPolicies are not touched.
    #[command(name = "namespace", alias = "namespaces", alias = "ns")]
    Namespace { name: String },
}

// ---- get ----

pub fn run_get(args: GetArgs, store: &dyn Store) -> anyhow::Result<i32> {
    let scope = args.scope()?;
    let view = ClusterView::load(store)?;
    let (text, note) = render_get_in(
        &view,
        args.kind,
        args.name.as_deref(),
        &scope,
        args.output,
        now(),
    )?;
    print!("{text}");
    if let Some(note) = note {
        eprintln!("{note}");
    }
    // The table says it itself; in yaml and json (which must stay re-appliable) on stderr.
    if let (Some(note), Output::Yaml | Output::Json) = (get_note(&view, args.kind), args.output) {
        eprintln!("{note}");
    }
    Ok(0)
}

/// What `twill get` adds in words: with no BGPConfiguration stored, that the defaults
/// apply. Pure.
pub fn get_note(view: &ClusterView, kind: Kind) -> Option<String> {
    (kind == Kind::BgpConfig && view.bgp_config.is_none()).then(|| {
        "No BGPConfiguration is stored: these defaults apply on every node. To change them, \
         `twill apply -f` a BGPConfiguration named default."
            .to_string()
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What `twill get` prints, for namespaced kinds from the `default` namespace. Pure.
#[cfg(test)]
pub fn render_get(
    view: &ClusterView,
    kind: Kind,
    name: Option<&str>,
    output: Output,
    now: u64,
) -> anyhow::Result<String> {
    render_get_in(view, kind, name, &Scope::default(), output, now).map(|(text, _)| text)
}

/// What `twill get` prints on stdout, and a note for stderr (e.g. that an empty listing
/// has resources in other namespaces). Pure: `now` (seconds since the epoch) gives the
/// ages.
pub fn render_get_in(
    view: &ClusterView,
    kind: Kind,
    name: Option<&str>,
    scope: &Scope,
    output: Output,
    now: u64,
) -> anyhow::Result<(String, Option<String>)> {
    match kind {
        Kind::NetworkPolicies => policy_get::get_network_policies(view, name, scope, output),
        Kind::Endpoints => policy_get::get_endpoints(view, name, scope, output),
        Kind::GlobalNetworkPolicies => {
            policy_get::get_global_network_policies(view, name, output).map(|t| (t, None))
        }
        Kind::Namespaces => policy_get::get_namespaces(view, name, output).map(|t| (t, None)),
        _ => render_get_cluster(view, kind, name, output, now).map(|t| (t, None)),
    }
}

/// The cluster-wide kinds of issues 1–9.
fn render_get_cluster(
    view: &ClusterView,
    kind: Kind,
    name: Option<&str>,
    output: Output,
    now: u64,
) -> anyhow::Result<String> {
    match kind {
        Kind::NetworkPolicies
        | Kind::GlobalNetworkPolicies
        | Kind::Namespaces
        | Kind::Endpoints => {
            unreachable!("rendered by policy_get")
        }
        Kind::Config => {
            if let Some(n) = name.filter(|n| *n != "default") {
                bail!("there is one network config, named \"default\"; not {n:?}");
            }
            let Some(c) = &view.config else {
                bail!("no network config in the store: apply one with `twill apply -f FILE` (kind: NetworkConfig)");
            };
            Ok(match output {
                Output::Table | Output::Wide => config_table(c, output == Output::Wide),
                _ => render_docs(vec![config_resource(c)], true, output)?,
            })
        }
        Kind::Nodes => {
            let mut names = view.node_names();
            if let Some(n) = name {
                if !names.iter().any(|m| m == n) {
                    bail!("node {n:?} not found: no status, override, block or allocations under that name (`twill get nodes` lists them)");
                }
                names = vec![n.to_string()];
            }
            Ok(match output {
                Output::Table | Output::Wide => {
                    nodes_table(view, &names, now, output == Output::Wide)
                }
                _ => render_docs(
                    names.iter().map(|n| node_resource(view, n)).collect(),
                    name.is_some(),
                    output,
                )?,
            })
        }
        Kind::BgpConfig => {
            if let Some(n) = name.filter(|n| *n != BGP_CONFIG_NAME) {
                bail!("there is one BGPConfiguration, named \"default\"; not {n:?}");
            }
            let default = BgpConfiguration::default();
            let c = view.bgp_config.as_ref().unwrap_or(&default);
            Ok(match output {
                Output::Table | Output::Wide => {
                    let mut t = bgp_config_table(c, output == Output::Wide);
                    if let Some(note) = get_note(view, kind) {
                        t.push('\n');
                        t.push_str(&note);
                        t.push('\n');
                    }
                    t
                }
                _ => render_docs(vec![bgp_config_resource(c)], true, output)?,
            })
        }
        Kind::BgpPeers => {
            let mut peers: Vec<(&String, &BgpPeer)> = view.bgp_peers.iter().collect();
            if let Some(n) = name {
                peers.retain(|(m, _)| *m == n);
                if peers.is_empty() {
                    bail!("bgppeer {n:?} not found (`twill get bgppeers` lists them)");
                }
            }
            Ok(match output {
                Output::Table | Output::Wide => bgp_peers_table(&peers, output == Output::Wide),
                _ => render_docs(
                    peers.iter().map(|(n, p)| bgp_peer_resource(n, p)).collect(),
                    name.is_some(),
                    output,
                )?,
            })
        }
        Kind::Blocks => {
            let mut blocks: Vec<&BlockEntry> = view
                .blocks
                .iter()
                .filter(|b| b.cidr.is_some() && b.block.is_some())
                .collect();
            if let Some(n) = name {
                let wanted = n.trim_start_matches("blocks/").replace('-', "/");
                blocks.retain(|b| b.cidr.is_some_and(|c| c.to_string() == wanted));
                if blocks.is_empty() {
                    bail!("block {n:?} not found: no node holds it (`twill get blocks` lists the held blocks)");
                }
            }
            Ok(match output {
                Output::Table | Output::Wide => {
                    blocks_table(view, &blocks, now, output == Output::Wide)
                }
                _ => render_docs(
                    blocks.iter().map(|b| block_resource(view, b)).collect(),
                    name.is_some(),
                    output,
                )?,
            })
        }
    }
}

/// YAML: one document per resource, `---` between them (re-appliable). JSON: the object
/// itself for one named resource, else a `List` as kubectl prints.
pub fn render_docs(docs: Vec<Value>, single: bool, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Yaml => {
            let mut out = String::new();
            for (i, d) in docs.iter().enumerate() {
                if i > 0 {
                    out.push_str("---\n");
                }
                out.push_str(&serde_yaml_ng::to_string(d)?);
            }
            out
        }
        _ => {
            let v = if single && docs.len() == 1 {
                docs.into_iter().next().expect("one")
            } else {
                json!({"apiVersion": API_VERSION, "kind": ResourceKind::List, "items": docs})
            };
            serde_json::to_string_pretty(&v)? + "\n"
        }
    })
}

pub fn config_resource(c: &NetworkConfig) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": ResourceKind::NetworkConfig,
        "metadata": {"name": "default"},
        "spec": c,
    })
}

fn config_table(c: &NetworkConfig, wide: bool) -> String {
    let list = |v: &[ipnet::Ipv4Net]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let opt = |v: Option<ipnet::Ipv4Net>| v.map_or("-".to_string(), |b| b.to_string());
    let mut header = vec!["CLUSTERCIDR", "BLOCKSIZE", "BACKEND", "MTU", "MASQUERADE"];
    let mut row = vec![
        c.cluster_cidr.to_string(),
        c.block_size.to_string(),
        c.backend.to_string(),
        c.mtu.to_string(),
        c.masquerade.to_string(),
    ];
    if wide {
        header.extend(["SUBNETMIN", "SUBNETMAX", "RESERVATIONS", "LEASETTL"]);
        row.extend([
            opt(c.subnet_min),
            opt(c.subnet_max),
            list(&c.reservations),
            format!("{}s", c.lease_ttl_seconds),
        ]);
    }
    table::render(&header, &[row])
}

pub fn bgp_config_resource(c: &BgpConfiguration) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": ResourceKind::BgpConfiguration,
        "metadata": {"name": BGP_CONFIG_NAME},
        "spec": c,
    })
}

/// The values in effect (the defaults filled in).
fn bgp_config_table(c: &BgpConfiguration, wide: bool) -> String {
    let mut header = vec![
        "NAME",
        "MESHENABLED",
        "ASNUMBER",
        "LISTENPORT",
        "GRACEFULRESTART",
    ];
    let mut row = vec![
        BGP_CONFIG_NAME.to_string(),
        c.node_to_node_mesh_enabled.to_string(),
        c.as_number().to_string(),
        c.listen_port().to_string(),
        c.restart_time()
            .map_or("off".to_string(), |t| format!("{t}s")),
    ];
    if wide {
        header.extend([
            "HOLDTIME",
            "KEEPALIVE",
            "CONNECTRETRY",
            "ROUTERID",
            "COMMUNITIES",
        ]);
        row.extend([
            format!("{}s", c.hold_time()),
            format!("{}s", c.keepalive_time()),
            format!("{}s", c.connect_retry()),
            serde_json::to_value(c.router_id_mode)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            if c.communities.is_empty() {
                "-".into()
            } else {
                c.communities.join(",")
            },
        ]);
    }
    table::render(&header, &[row])
}

pub fn bgp_peer_resource(name: &str, p: &BgpPeer) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": ResourceKind::BgpPeer,
        "metadata": {"name": name},
        "spec": p,
    })
}

/// calicoctl's columns (NAME, PEERIP, NODE, ASN) with the selector peers' own column.
fn bgp_peers_table(peers: &[(&String, &BgpPeer)], wide: bool) -> String {
    let dash = |v: Option<&String>| v.cloned().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|(name, p)| {
            let mut row = vec![
                name.to_string(),
                dash(p.peer_ip.as_ref()),
                dash(p.peer_selector.as_ref()),
                p.node
                    .clone()
                    .or_else(|| p.node_selector.clone())
                    .unwrap_or_else(|| "(global)".into()),
                p.as_number
                    .map_or("(node's)".to_string(), |a| a.to_string()),
            ];
            if wide {
                row.push(match &p.password {
                    None => "-".into(),
                    Some(Password::Value(_)) => "(in store)".into(),
                    Some(Password::File(f)) => f.clone(),
                });
                row.push(p.keep_original_next_hop.to_string());
                row.push(dash(p.max_restart_time.as_ref()));
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "PEERIP", "PEERSELECTOR", "NODE", "ASN"];
    if wide {
        header.extend(["PASSWORD", "KEEPNEXTHOP", "MAXRESTART"]);
    }
    table::render(&header, &rows)
}

/// Ready, or NotReady and why (for `-o wide` and the status block).
fn node_state(view: &ClusterView, name: &str) -> (&'static str, String) {
    match view.statuses.get(name) {
        _ if view.is_live(name) => ("Ready", view.statuses[name].status.reason.clone()),
        Some(_) => (
            "NotReady",
            "its status key has no lease: no agent keeps it alive".into(),
        ),
        None => (
            "NotReady",
            "no status key: its agent is not running, or its lease expired".into(),
        ),
    }
}

fn nodes_table(view: &ClusterView, names: &[String], now: u64, wide: bool) -> String {
    let mut rows = Vec::new();
    for name in names {
        let status = view.statuses.get(name).map(|s| &s.status);
        let blocks: Vec<String> = view
            .blocks_of(name)
            .filter_map(|b| b.cidr.map(|c| c.to_string()))
            .collect();
        // Calico-style /26 blocks add up: the table shows two, -o wide all of them.
        let blocks = match blocks.len() {
            0 => "-".to_string(),
            n if n <= 2 || wide => blocks.join(","),
            n => format!("{},{} +{} more", blocks[0], blocks[1], n - 2),
        };
        let (state, reason) = node_state(view, name);
        let mut row = vec![
            name.clone(),
            status.map_or("-".into(), |s| s.address.to_string()),
            status.map_or("-".into(), |s| s.autodetection.clone()),
            blocks,
            status
                .filter(|s| s.started_at > 0)
                .map_or("-".into(), |s| table::age(now.saturating_sub(s.started_at))),
            state.to_string(),
        ];
        if wide {
            row.push(
                view.overrides
                    .get(name)
                    .and_then(|o| o.ipv4_address.clone())
                    .unwrap_or_else(|| "-".into()),
            );
            row.push(status.map_or("-".into(), |s| {
                if s.agent_version.is_empty() {
                    "-".into()
                } else {
                    s.agent_version.clone()
                }
            }));
            row.push(reason);
        }
        rows.push(row);
    }
    let mut header = vec!["NAME", "ADDRESS", "METHOD", "BLOCKS", "AGE", "STATUS"];
    if wide {
        header.extend(["OVERRIDE", "VERSION", "REASON"]);
    }
    table::render(&header, &rows)
}

pub fn node_resource(view: &ClusterView, name: &str) -> Value {
    let mut spec = view.overrides.get(name).cloned().unwrap_or_default();
    // Labels are written in metadata, as in Kubernetes and Calico.
    let labels = std::mem::take(&mut spec.labels);
    let mut metadata = json!({"name": name});
    if !labels.is_empty() {
        metadata["labels"] = json!(labels);
    }
    let (state, reason) = node_state(view, name);
    let blocks: Vec<String> = view
        .blocks_of(name)
        .filter_map(|b| b.cidr.map(|c| c.to_string()))
        .collect();
    let mut status = json!({"state": state, "blocks": blocks});
    if let Some(s) = view.statuses.get(name) {
        status["address"] = json!(s.status.address);
        status["autodetection"] = json!(s.status.autodetection);
        status["startedAt"] = json!(s.status.started_at);
        status["agentVersion"] = json!(s.status.agent_version);
    }
    status["reason"] = json!(reason);
    json!({
        "apiVersion": API_VERSION,
        "kind": ResourceKind::Node,
        "metadata": metadata,
        "spec": spec,
        "status": status,
    })
}

fn blocks_table(view: &ClusterView, blocks: &[&BlockEntry], now: u64, wide: bool) -> String {
    let rows: Vec<Vec<String>> = blocks
        .iter()
        .filter_map(|b| {
            let (cidr, block) = (b.cidr?, b.block.as_ref()?);
            let used = view.used_in(&block.node, cidr);
            let mut row = vec![
                cidr.to_string(),
                block.node.clone(),
                used.to_string(),
                block_capacity(cidr).saturating_sub(used).to_string(),
            ];
            if wide {
                row.push(if block.claimed_at > 0 {
                    table::age(now.saturating_sub(block.claimed_at))
                } else {
                    "-".into()
                });
                row.push(if b.leased { "yes" } else { "no" }.into());
                row.push(
                    if view.is_live(&block.node) {
                        "held"
                    } else {
                        "stale"
                    }
                    .into(),
                );
            }
            Some(row)
        })
        .collect();
    let mut header = vec!["CIDR", "NODE", "USED", "FREE"];
    if wide {
        header.extend(["AGE", "LEASED", "STATE"]);
    }
    table::render(&header, &rows)
}

pub fn block_resource(view: &ClusterView, b: &BlockEntry) -> Value {
    let (cidr, block) = (
        b.cidr.expect("filtered"),
        b.block.as_ref().expect("filtered"),
    );
    let used = view.used_in(&block.node, cidr);
    json!({
        "apiVersion": API_VERSION,
        "kind": ResourceKind::Block,
        "metadata": {"name": b.key.trim_start_matches("blocks/")},
        "spec": block,
        "status": {
            "used": used,
            "free": block_capacity(cidr).saturating_sub(used),
            "leased": b.leased,
            "state": if view.is_live(&block.node) { "held" } else { "stale" },
        },
    })
}

// ---- apply ----

/// Blocks held now, as "10.244.1.0/24 (n1), …", at most 10 named.
fn held_blocks(view: &ClusterView) -> Option<String> {
    let held: Vec<String> = view
        .blocks
        .iter()
        .map(|b| match (b.cidr, b.holder()) {
            (Some(c), Some(h)) => format!("{c} ({h})"),
            _ => b.key.clone(),
        })
        .collect();
    match held.len() {
        0 => None,
        n if n > 10 => Some(format!("{}, and {} more", held[..10].join(", "), n - 10)),
        _ => Some(held.join(", ")),
    }
}

/// Whether the resources may be written over what the store holds. Pure.
pub fn check_apply(view: &ClusterView, resources: &[Resource]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for r in resources {
        let (key, _) = r.to_store();
        if !seen.insert(key.clone()) {
            return Err(format!(
                "the file holds two documents for {}; keep one",
                describe(r)
            ));
        }
        if let (Resource::NetworkConfig(new), Some(old)) = (r, &view.config) {
            let mut changes = Vec::new();
            if new.cluster_cidr != old.cluster_cidr {
                changes.push(format!(
                    "clusterCIDR from {} to {}",
                    old.cluster_cidr, new.cluster_cidr
                ));
            }
            if new.block_size != old.block_size {
                changes.push(format!(
                    "blockSize from {} to {}",
                    old.block_size, new.block_size
                ));
            }
            if let (false, Some(held)) = (changes.is_empty(), held_blocks(view)) {
                return Err(format!(
                    "refusing to change {} while nodes hold blocks cut from the old config: {held}; \
                     remove those nodes first (`twill node remove NAME`), then apply again",
                    changes.join(" and ")
                ));
            }
        }
    }
    Ok(())
}

fn describe(r: &Resource) -> String {
    match r {
        Resource::NetworkConfig(_) => "networkconfig".into(),
        Resource::Node { name, .. } => format!("node/{name}"),
        Resource::Block { spec } => format!(
            "block/{}",
            twill_api::resources::block_key(spec.cidr).trim_start_matches("blocks/")
        ),
        Resource::BgpConfiguration(_) => format!("bgpconfiguration/{BGP_CONFIG_NAME}"),
        Resource::BgpPeer { name, .. } => format!("bgppeer/{name}"),
        Resource::NetworkPolicy {
            namespace, name, ..
        } => format!("networkpolicy/{namespace}/{name}"),
        Resource::GlobalNetworkPolicy { name, .. } => format!("globalnetworkpolicy/{name}"),
        Resource::Namespace { name, .. } => format!("namespace/{name}"),
        Resource::WorkloadEndpoint { spec } => {
            format!("workloadendpoint/{}/{}", spec.namespace, spec.pod)
        }
    }
}

/// What `apply` does with one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write it to the store.
    Write,
    /// The store already says the same: nothing to write.
    Unchanged,
}

/// What `apply` does with each resource, after [`check_apply`]: a resource the store
/// already holds as it is (the output of `twill get`, applied again) is left unchanged,
/// a node with no settings needs no override, and a block, which only agents claim, must
/// be held by the node it names. Pure.
pub fn plan_apply(view: &ClusterView, resources: &[Resource]) -> Result<Vec<Action>, String> {
    check_apply(view, resources)?;
    resources
        .iter()
        .map(|r| match r {
            Resource::NetworkConfig(c) if view.config.as_ref() == Some(c) => Ok(Action::Unchanged),
            Resource::NetworkConfig(_) => Ok(Action::Write),
            Resource::BgpConfiguration(c) => Ok(match &view.bgp_config {
                Some(old) if old == c => Action::Unchanged,
                None if *c == BgpConfiguration::default() => Action::Unchanged,
                _ => Action::Write,
            }),
            Resource::BgpPeer { name, spec } => Ok(if view.bgp_peers.get(name) == Some(spec) {
                Action::Unchanged
            } else {
                Action::Write
            }),
            Resource::NetworkPolicy {
                namespace,
                name,
                spec,
            } => Ok(
                if view.network_policies.get(&(namespace.clone(), name.clone())) == Some(spec) {
                    Action::Unchanged
                } else {
                    Action::Write
                },
            ),
            Resource::GlobalNetworkPolicy { name, spec } => Ok(
                if view.global_network_policies.get(name) == Some(spec) {
                    Action::Unchanged
                } else {
                    Action::Write
                },
            ),
            // A namespace with no labels exists without a key (as those pods are in).
            Resource::Namespace { name, spec } => Ok(match view.namespaces.get(name) {
                Some(n) if n == spec => Action::Unchanged,
                None if spec.labels.is_empty() => Action::Unchanged,
                _ => Action::Write,
            }),
            Resource::Node { name, spec } => Ok(match view.overrides.get(name) {
                Some(o) if o == spec => Action::Unchanged,
                None if *spec == twill_api::resources::NodeSpec::default() => Action::Unchanged,
                _ => Action::Write,
            }),
            Resource::WorkloadEndpoint { spec } => {
                let key = (spec.namespace.clone(), spec.pod.clone(), spec.node.clone());
                let fix = format!(
                    "endpoints are published by twilld from the pod's record, not applied; to change the pod's labels, `twill label pod {}/{} KEY=VALUE`",
                    spec.namespace, spec.pod
                );
                match view.endpoints.get(&key) {
                    Some(e) if e == spec => Ok(Action::Unchanged),
                    Some(_) => Err(format!(
                        "{}: differs from what node {} publishes; {fix}",
                        describe(r),
                        spec.node
                    )),
                    None => Err(format!(
                        "{}: node {} publishes no such endpoint; {fix}",
                        describe(r),
                        spec.node
                    )),
                }
            }
            Resource::Block { spec } => {
                let holder = view
                    .blocks
                    .iter()
                    .find(|b| b.cidr == Some(spec.cidr))
                    .and_then(|b| b.holder());
                match holder {
                    Some(h) if h == spec.node => Ok(Action::Unchanged),
                    Some(h) => Err(format!(
                        "{}: the store has it held by {h}, the file says {}; blocks are claimed by \
                         the agents, not applied (to free one, `twill node remove NAME`)",
                        describe(r),
                        spec.node
                    )),
                    None => Err(format!(
                        "{}: no node holds it; blocks are claimed by the agents (twilld), not applied",
                        describe(r)
                    )),
                }
            }
        })
        .collect()
}

/// `twill apply -f FILE`: the whole file is read, parsed and validated before any store is
/// opened, and checked against the store before anything is written, so a rejected file
/// leaves nothing behind. A new embedded store is made only when there is something to
/// write to it.
pub fn run_apply(args: ApplyArgs, flags: &StoreArgs) -> anyhow::Result<i32> {
    let (name, resources) = read_resources(&args.file)?;
    let cfg = flags.config()?;
    let existing = match twill_store::open_existing(&cfg) {
        Ok(store) => Some(store),
        // Only an embedded store can be missing; it is made below if the file needs it.
        Err(StoreError::Missing { .. }) => None,
        Err(e) => return Err(store_args::explain(e, &cfg)),
    };
    let view = match &existing {
        Some(store) => {
            ClusterView::load(store.as_ref()).map_err(|e| store_args::explain(e, &cfg))?
        }
        None => ClusterView::default(),
    };
    let actions = match plan_apply(&view, &resources) {
        Ok(a) => a,
        Err(why) => bail!("{name}: {why}; nothing was applied"),
    };
    let store = match existing {
        Some(store) => store,
        None if actions.contains(&Action::Write) => store_args::open(&cfg)?,
        None => {
            // Nothing to write: no store is made for it.
            for r in &resources {
                println!("{} unchanged", describe(r));
            }
            return Ok(0);
        }
    };
    write_planned(store.as_ref(), &view, &name, &resources, &actions)
        .map_err(|e| store_args::explain_any(e, &cfg))?;
    for note in apply_notes(&view, &resources) {
        eprintln!("note: {note}");
    }
    Ok(0)
}

/// What an applied set of BGP resources leads to that is likely not meant, in words (not
/// errors: the rest of the cluster may come later): the mesh off with no BGPPeer, so
/// nodes have no sessions; a BGPPeer for a node the store does not know; a peerSelector
/// that matches no node's labels. Over the store's view with the file's resources
/// applied. Pure.
pub fn apply_notes(view: &ClusterView, resources: &[Resource]) -> Vec<String> {
    let mut config = view.bgp_config.clone();
    let mut peers = view.bgp_peers.clone();
    let mut labels: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        view.node_names()
            .into_iter()
            .map(|n| {
                let l = view
                    .overrides
                    .get(&n)
                    .map(|o| o.labels.clone())
                    .unwrap_or_default();
                (n, l)
            })
            .collect();
    let mut touched = Vec::new();
    for r in resources {
        match r {
            Resource::BgpConfiguration(c) => config = Some(c.clone()),
            Resource::BgpPeer { name, spec } => {
                peers.insert(name.clone(), spec.clone());
                touched.push(name.clone());
            }
            Resource::Node { name, spec } => {
                labels.insert(name.clone(), spec.labels.clone());
            }
            _ => {}
        }
    }
    let mut notes = Vec::new();
    let mesh_off = config
        .as_ref()
        .is_some_and(|c| !c.node_to_node_mesh_enabled);
    let config_applied = resources
        .iter()
        .any(|r| matches!(r, Resource::BgpConfiguration(_)));
    if mesh_off && peers.is_empty() && config_applied {
        notes.push(
            "nodeToNodeMeshEnabled is false and there is no BGPPeer: the nodes have no BGP sessions and learn no routes; \
             apply BGPPeers (route reflectors with peerSelector, or routers with peerIP)"
                .to_string(),
        );
    }
    for name in touched {
        let p = &peers[&name];
        if let Some(n) = &p.node {
            if !labels.contains_key(n) {
                notes.push(format!(
                    "bgppeer/{name} is for node {n}, which the store does not know yet (`twill get nodes`); it applies once {n}'s twilld starts"
                ));
            }
        }
        if let (Ok(Some(sel)), false) = (p.peer_selector(), labels.is_empty()) {
            if !labels.values().any(|l| sel.matches(l)) {
                notes.push(format!(
                    "bgppeer/{name}: peerSelector {sel} matches no node's labels yet, so it makes no session; label the route reflectors (metadata.labels in their Node resources)"
                ));
            }
        }
    }
    notes.extend(policy_get::policy_notes(view, resources));
    notes
}

/// The file's resources, every document parsed and validated; `name` is how errors name
/// the file. Touches no store.
fn read_resources(file: &Path) -> anyhow::Result<(String, Vec<Resource>)> {
    let shown = file.display().to_string();
    let (name, text) = if shown == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the resources from stdin; nothing was applied")?;
        ("<stdin>".to_string(), s)
    } else {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading {shown}; nothing was applied"))?;
        (shown, text)
    };
    let resources =
        parse_resources(&text).map_err(|e| anyhow::anyhow!("{name}: {e}; nothing was applied"))?;
    Ok((name, resources))
}

/// Writes what [`plan_apply`] decided, over the `view` it decided it on.
fn write_planned(
    store: &dyn Store,
    view: &ClusterView,
    name: &str,
    resources: &[Resource],
    actions: &[Action],
) -> anyhow::Result<()> {
    for (r, action) in resources.iter().zip(actions) {
        if *action == Action::Unchanged {
            println!("{} unchanged", describe(r));
            continue;
        }
        let (key, value) = r.to_store();
        let full = format!("{PREFIX}{key}");
        let written = match (r, view.config_revision) {
            // The config is written only over the version checked above, so a concurrent
            // change is not silently overwritten.
            (Resource::NetworkConfig(_), Some(rev)) => store.update(&full, rev, &value, None)?,
            (Resource::NetworkConfig(_), None) => store.create(&full, &value, None)?.is_some(),
            (Resource::Block { .. } | Resource::WorkloadEndpoint { .. }, _) => {
                unreachable!("plan_apply writes no block and no endpoint")
            }
            _ => {
                store.put(&full, &value, None)?;
                true
            }
        };
        if !written {
            bail!("the network config changed while applying {name}; run `twill apply` again");
        }
        println!("{} configured", describe(r));
    }
    Ok(())
}

// ---- delete ----

/// Whether the config may be deleted. Pure.
pub fn check_delete_config(view: &ClusterView) -> Result<(), String> {
    if view.config.is_none() {
        return Err("no network config in the store; nothing to delete".into());
    }
    if let Some(held) = held_blocks(view) {
        return Err(format!(
            "refusing to delete the network config while nodes hold blocks cut from it: {held}; \
             remove those nodes first (`twill node remove NAME`)"
        ));
    }
    Ok(())
}

pub fn run_delete(args: DeleteArgs, store: &dyn Store) -> anyhow::Result<i32> {
    match args.command {
        DeleteCommand::Node { name } => {
            if !store.delete(&format!("{PREFIX}{PREFIX_NODECONFIGS}{name}"))? {
                bail!(
                    "node/{name} has no override (no {PREFIX_NODECONFIGS}{name} key); nothing deleted. \
                     To retire the node itself, use `twill node remove {name}`"
                );
            }
            println!("node/{name} deleted");
        }
        DeleteCommand::Config => {
            let view = ClusterView::load(store)?;
            check_delete_config(&view).map_err(anyhow::Error::msg)?;
            let rev = view.config_revision.expect("checked");
            if !store.delete_if(&format!("{PREFIX}{KEY_CONFIG}"), rev)? {
                bail!("the network config changed meanwhile; run `twill delete config` again");
            }
            println!("networkconfig deleted");
        }
        DeleteCommand::BgpPeer { name } => {
            if !store.delete(&format!("{PREFIX}{PREFIX_BGP_PEERS}{name}"))? {
                bail!(
                    "bgppeer/{name} not found; nothing deleted (`twill get bgppeers` lists them)"
                );
            }
            println!("bgppeer/{name} deleted");
        }
        DeleteCommand::BgpConfig => {
            if !store.delete(&format!("{PREFIX}{KEY_BGP_CONFIG}"))? {
                bail!(
                    "no BGPConfiguration is stored; nothing deleted (the defaults already apply)"
                );
            }
            println!("bgpconfiguration/default deleted: the defaults apply again");
        }
        DeleteCommand::NetworkPolicy { name, namespace } => {
            if !store.delete(&format!(
                "{PREFIX}{}",
                network_policy_key(&namespace, &name)
            ))? {
                bail!(
                    "networkpolicy/{namespace}/{name} not found; nothing deleted (`twill get networkpolicies -A` lists them)"
                );
            }
            println!("networkpolicy/{namespace}/{name} deleted");
        }
        DeleteCommand::GlobalNetworkPolicy { name } => {
            if !store.delete(&format!("{PREFIX}{}", global_network_policy_key(&name)))? {
                bail!(
                    "globalnetworkpolicy/{name} not found; nothing deleted (`twill get globalnetworkpolicies` lists them)"
                );
            }
            println!("globalnetworkpolicy/{name} deleted");
        }
        DeleteCommand::Namespace { name } => {
            if !store.delete(&format!("{PREFIX}{}", namespace_key(&name)))? {
                bail!(
                    "namespace/{name} has no labels stored (no {} key); nothing deleted",
                    namespace_key(&name)
                );
            }
            println!("namespace/{name} deleted: its labels are gone (kubernetes.io/metadata.name stays); its pods and NetworkPolicies are untouched");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::*;

    const NOW: u64 = 1000 + 3 * 3600;

    fn get(kvs: &[twill_store::KeyValue], kind: Kind, name: Option<&str>, o: Output) -> String {
        render_get(&view(kvs), kind, name, o, NOW).unwrap()
    }

    fn with_override() -> Vec<twill_store::KeyValue> {
        let mut kvs = clean();
        kvs.push(kv(
            "nodeconfigs/n3",
            json!({"ipv4Address": "192.0.2.13/24"}),
            8,
            false,
        ));
        kvs
    }

    #[test]
    fn nodes_table_and_wide() {
        let t = get(&with_override(), Kind::Nodes, None, Output::Table);
        assert_eq!(
            t,
            "NAME   ADDRESS      METHOD        BLOCKS          AGE   STATUS\n\
             n1     192.0.2.11   first-found   10.244.1.0/24   3h    Ready\n\
             n2     192.0.2.12   first-found   10.244.2.0/24   3h    Ready\n\
             n3     -            -             -               -     NotReady\n"
        );
        let w = get(&with_override(), Kind::Nodes, Some("n3"), Output::Wide);
        assert_eq!(
            w,
            "NAME   ADDRESS   METHOD   BLOCKS   AGE   STATUS     OVERRIDE        VERSION   REASON\n\
             n3     -         -        -        -     NotReady   192.0.2.13/24   -         no status key: its agent is not running, or its lease expired\n"
        );
    }

    #[test]
    fn many_blocks_are_abbreviated_unless_wide() {
        let mut kvs = clean();
        for c in ["10.244.3.0/24", "10.244.4.0/24"] {
            let (k, v) = block(c, "n1");
            kvs.push(kv(&k, v, 9, true));
        }
        let t = get(&kvs, Kind::Nodes, Some("n1"), Output::Table);
        assert!(t.contains("10.244.1.0/24,10.244.3.0/24 +1 more"), "{t}");
        let w = get(&kvs, Kind::Nodes, Some("n1"), Output::Wide);
        assert!(
            w.contains("10.244.1.0/24,10.244.3.0/24,10.244.4.0/24"),
            "{w}"
        );
    }

    #[test]
    fn node_yaml_and_json() {
        let y = get(&with_override(), Kind::Nodes, Some("n3"), Output::Yaml);
        assert_eq!(
            y,
            "apiVersion: twill/v1\nkind: Node\nmetadata:\n  name: n3\nspec:\n  ipv4Address: 192.0.2.13/24\n\
             status:\n  blocks: []\n  reason: 'no status key: its agent is not running, or its lease expired'\n  state: NotReady\n"
        );
        let j: Value =
            serde_json::from_str(&get(&with_override(), Kind::Nodes, None, Output::Json)).unwrap();
        assert_eq!(j["kind"], "List");
        assert_eq!(j["items"][0]["status"]["address"], "192.0.2.11");
        assert_eq!(j["items"][0]["status"]["blocks"][0], "10.244.1.0/24");
        assert_eq!(j["items"][2]["spec"]["ipv4Address"], "192.0.2.13/24");
        let all = get(&with_override(), Kind::Nodes, None, Output::Yaml);
        assert_eq!(all.matches("\n---\n").count(), 2, "{all}");
    }

    #[test]
    fn blocks_table_counts_from_allocations() {
        let t = get(&clean(), Kind::Blocks, None, Output::Table);
        assert_eq!(
            t,
            "CIDR            NODE   USED   FREE\n\
             10.244.1.0/24   n1     2      251\n\
             10.244.2.0/24   n2     1      252\n"
        );
        let w = get(&clean(), Kind::Blocks, Some("10.244.2.0-24"), Output::Wide);
        assert_eq!(
            w,
            "CIDR            NODE   USED   FREE   AGE   LEASED   STATE\n\
             10.244.2.0/24   n2     1      252    3h    yes      held\n"
        );
        let j: Value = serde_json::from_str(&get(
            &clean(),
            Kind::Blocks,
            Some("10.244.1.0/24"),
            Output::Json,
        ))
        .unwrap();
        assert_eq!(j["metadata"]["name"], "10.244.1.0-24");
        assert_eq!(j["spec"]["node"], "n1");
        assert_eq!(j["status"]["used"], 2);
    }

    #[test]
    fn config_in_every_format_and_yaml_reapplies() {
        let t = get(&clean(), Kind::Config, None, Output::Table);
        assert_eq!(
            t,
            "CLUSTERCIDR     BLOCKSIZE   BACKEND   MTU    MASQUERADE\n\
             10.244.0.0/16   24          none      1500   true\n"
        );
        let w = get(&clean(), Kind::Config, None, Output::Wide);
        assert!(
            w.ends_with("-           -           -              3600s\n"),
            "{w}"
        );
        let y = get(&clean(), Kind::Config, None, Output::Yaml);
        let back = parse_resources(&y).unwrap();
        assert_eq!(
            Resource::NetworkConfig(view(&clean()).config.unwrap()),
            back[0]
        );
        let j: Value =
            serde_json::from_str(&get(&clean(), Kind::Config, None, Output::Json)).unwrap();
        assert_eq!(j["spec"]["clusterCIDR"], "10.244.0.0/16");
        assert_eq!(j["kind"], "NetworkConfig");
    }

    #[test]
    fn missing_things_are_named() {
        let v = view(&clean());
        let e = render_get(&v, Kind::Nodes, Some("n9"), Output::Table, NOW).unwrap_err();
        assert!(e.to_string().contains("node \"n9\" not found"), "{e}");
        let e =
            render_get(&v, Kind::Blocks, Some("10.244.7.0/24"), Output::Table, NOW).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        let e = render_get(&view(&[]), Kind::Config, None, Output::Table, NOW).unwrap_err();
        assert!(e.to_string().contains("twill apply -f"), "{e}");
    }

    #[test]
    fn a_cidr_or_block_size_change_is_refused_while_blocks_are_held() {
        let v = view(&clean());
        let new = |text: &str| parse_resources(text).unwrap();
        let e = check_apply(
            &v,
            &new("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.245.0.0/16\n  blockSize: 26\n"),
        )
        .unwrap_err();
        assert!(
            e.contains(
                "clusterCIDR from 10.244.0.0/16 to 10.245.0.0/16 and blockSize from 24 to 26"
            ),
            "{e}"
        );
        assert!(e.contains("10.244.1.0/24 (n1), 10.244.2.0/24 (n2)"), "{e}");
        assert!(e.contains("twill node remove"), "{e}");
        // Other fields may change; with no block held anything may.
        check_apply(
            &v,
            &new("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  mtu: 1400\n"),
        )
        .unwrap();
        check_apply(
            &view(&clean()[..3]),
            &new("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.245.0.0/16\n"),
        )
        .unwrap();
        let e = check_apply(&v, &new("kind: Node\nmetadata: {name: a}\nspec: {}\n---\nkind: Node\nmetadata: {name: a}\nspec: {}\n")).unwrap_err();
        assert!(e.contains("two documents for node/a"), "{e}");
    }

    fn with_bgp() -> Vec<twill_store::KeyValue> {
        let mut kvs = clean();
        kvs.push(kv(
            "bgpconfig",
            json!({"nodeToNodeMeshEnabled": false, "asNumber": 65001, "holdTimeSeconds": 9,
                "communities": ["65001:100"]}),
            20,
            false,
        ));
        kvs.push(kv(
            "bgppeers/rack1-tor",
            json!({"nodeSelector": "rack == 'r1'", "peerIP": "192.0.2.1", "asNumber": 65000,
                "password": {"file": "/etc/twill/bgp-password"}, "maxRestartTime": "2m"}),
            21,
            false,
        ));
        kvs.push(kv(
            "bgppeers/to-rr",
            json!({"peerSelector": "has(route-reflector)"}),
            22,
            false,
        ));
        kvs.push(kv(
            "nodeconfigs/n1",
            json!({"labels": {"rack": "r1"}, "bgp": {"routeReflectorClusterID": "244.0.0.1"}}),
            23,
            false,
        ));
        kvs
    }

    #[test]
    fn bgp_config_shows_the_values_in_effect_and_says_when_they_are_the_defaults() {
        let t = get(&clean(), Kind::BgpConfig, None, Output::Table);
        assert_eq!(
            t,
            "NAME      MESHENABLED   ASNUMBER   LISTENPORT   GRACEFULRESTART\n\
             default   true          64512      179          120s\n\
             \n\
             No BGPConfiguration is stored: these defaults apply on every node. To change them, `twill apply -f` a BGPConfiguration named default.\n"
        );
        let w = get(&clean(), Kind::BgpConfig, Some("default"), Output::Wide);
        assert!(
            w.contains("HOLDTIME   KEEPALIVE   CONNECTRETRY   ROUTERID   COMMUNITIES\n")
                && w.contains("90s        30s         5s             nodeIP     -\n"),
            "{w}"
        );
        let t = get(&with_bgp(), Kind::BgpConfig, None, Output::Wide);
        assert_eq!(
            t,
            "NAME      MESHENABLED   ASNUMBER   LISTENPORT   GRACEFULRESTART   HOLDTIME   KEEPALIVE   CONNECTRETRY   ROUTERID   COMMUNITIES\n\
             default   false         65001      179          120s              9s         3s          5s             nodeIP     65001:100\n"
        );
        assert_eq!(get_note(&view(&with_bgp()), Kind::BgpConfig), None);
        assert!(get_note(&view(&clean()), Kind::BgpConfig).is_some());
        // yaml and json apply back as they are.
        for kvs in [clean(), with_bgp()] {
            let v = view(&kvs);
            for o in [Output::Yaml, Output::Json] {
                let text = render_get(&v, Kind::BgpConfig, None, o, NOW).unwrap();
                let back = parse_resources(&text).unwrap();
                assert_eq!(plan_apply(&v, &back), Ok(vec![Action::Unchanged]), "{text}");
            }
        }
        let e = render_get(
            &view(&clean()),
            Kind::BgpConfig,
            Some("prod"),
            Output::Table,
            NOW,
        )
        .unwrap_err();
        assert!(e.to_string().contains("named \"default\""), "{e}");
    }

    #[test]
    fn bgp_peers_table_yaml_and_json() {
        let t = get(&with_bgp(), Kind::BgpPeers, None, Output::Table);
        assert_eq!(
            t,
            "NAME        PEERIP      PEERSELECTOR           NODE           ASN\n\
             rack1-tor   192.0.2.1   -                      rack == 'r1'   65000\n\
             to-rr       -           has(route-reflector)   (global)       (node's)\n"
        );
        let w = get(&with_bgp(), Kind::BgpPeers, Some("rack1-tor"), Output::Wide);
        assert!(
            w.ends_with("PASSWORD                  KEEPNEXTHOP   MAXRESTART\n\
                rack1-tor   192.0.2.1   -              rack == 'r1'   65000   /etc/twill/bgp-password   false         2m\n"),
            "{w}"
        );
        assert_eq!(
            get(&clean(), Kind::BgpPeers, None, Output::Table),
            "NAME   PEERIP   PEERSELECTOR   NODE   ASN\n"
        );
        let y = get(&with_bgp(), Kind::BgpPeers, Some("to-rr"), Output::Yaml);
        assert_eq!(
            y,
            "apiVersion: twill/v1\nkind: BGPPeer\nmetadata:\n  name: to-rr\nspec:\n  peerSelector: has(route-reflector)\n"
        );
        let v = view(&with_bgp());
        for o in [Output::Yaml, Output::Json] {
            let text = render_get(&v, Kind::BgpPeers, None, o, NOW).unwrap();
            let back = parse_resources(&text).unwrap();
            assert_eq!(back.len(), 2);
            assert_eq!(
                plan_apply(&v, &back),
                Ok(vec![Action::Unchanged, Action::Unchanged]),
                "{text}"
            );
        }
        let e = render_get(&v, Kind::BgpPeers, Some("nope"), Output::Table, NOW).unwrap_err();
        assert!(e.to_string().contains("twill get bgppeers"), "{e}");
    }

    #[test]
    fn node_labels_print_in_metadata_and_apply_back() {
        let v = view(&with_bgp());
        let y = render_get(&v, Kind::Nodes, Some("n1"), Output::Yaml, NOW).unwrap();
        assert!(
            y.starts_with("apiVersion: twill/v1\nkind: Node\nmetadata:\n  labels:\n    rack: r1\n  name: n1\nspec:\n  bgp:\n    routeReflectorClusterID: 244.0.0.1\n"),
            "{y}"
        );
        let back = parse_resources(&y).unwrap();
        assert_eq!(plan_apply(&v, &back), Ok(vec![Action::Unchanged]));
        // A changed label is a write.
        let back = parse_resources(&y.replace("rack: r1", "rack: r2")).unwrap();
        assert_eq!(plan_apply(&v, &back), Ok(vec![Action::Write]));
    }

    #[test]
    fn bgp_resources_are_written_only_when_they_change() {
        let v = view(&with_bgp());
        let new = |text: &str| parse_resources(text).unwrap();
        let r = new("kind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 65002}\n---\nkind: BGPPeer\nmetadata: {name: to-rr}\nspec: {peerSelector: has(route-reflector)}\n---\nkind: BGPPeer\nmetadata: {name: new}\nspec: {peerIP: 192.0.2.9, asNumber: 65009}\n");
        assert_eq!(
            plan_apply(&v, &r),
            Ok(vec![Action::Write, Action::Unchanged, Action::Write])
        );
        assert_eq!(describe(&r[0]), "bgpconfiguration/default");
        assert_eq!(describe(&r[2]), "bgppeer/new");
        // The defaults over no stored config need no write.
        let r = new("kind: BGPConfiguration\nspec: {}\n");
        assert_eq!(plan_apply(&view(&clean()), &r), Ok(vec![Action::Unchanged]));
        let e = plan_apply(
            &v,
            &new("kind: BGPPeer\nmetadata: {name: a}\nspec: {peerIP: 192.0.2.9, asNumber: 1}\n---\nkind: BGPPeer\nmetadata: {name: a}\nspec: {peerIP: 192.0.2.9, asNumber: 1}\n"),
        )
        .unwrap_err();
        assert!(e.contains("two documents for bgppeer/a"), "{e}");
    }

    #[test]
    fn notes_point_out_bgp_setups_that_make_no_session() {
        let new = |text: &str| parse_resources(text).unwrap();
        // The mesh off with no peer at all.
        let notes = apply_notes(
            &view(&clean()),
            &new("kind: BGPConfiguration\nspec: {nodeToNodeMeshEnabled: false}\n"),
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("no BGP sessions"), "{notes:?}");
        // A selector no node's labels match, and a node the store does not know.
        let notes = apply_notes(
            &view(&clean()),
            &new("kind: BGPPeer\nmetadata: {name: to-rr}\nspec: {peerSelector: has(route-reflector)}\n---\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {node: n9, peerIP: 192.0.2.1, asNumber: 65000}\n"),
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("bgppeer/to-rr: peerSelector has(route-reflector) matches no node"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("node n9, which the store does not know"),
            "{notes:?}"
        );
        // Labelled in the same file: nothing to say; nor with the stored peers and labels.
        let notes = apply_notes(
            &view(&clean()),
            &new("kind: BGPConfiguration\nspec: {nodeToNodeMeshEnabled: false}\n---\nkind: BGPPeer\nmetadata: {name: to-rr}\nspec: {peerSelector: has(route-reflector)}\n---\nkind: Node\nmetadata: {name: n1, labels: {route-reflector: 'true'}}\nspec: {}\n"),
        );
        assert!(notes.is_empty(), "{notes:?}");
        let v = view(&with_bgp());
        let notes = apply_notes(
            &v,
            &new("kind: BGPPeer\nmetadata: {name: x}\nspec: {peerSelector: rack == 'r1'}\n"),
        );
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn config_delete_is_refused_while_blocks_are_held() {
        assert!(check_delete_config(&view(&clean()))
            .unwrap_err()
            .contains("10.244.1.0/24 (n1)"));
        check_delete_config(&view(&clean()[..1])).unwrap();
        assert!(check_delete_config(&view(&[])).is_err());
    }
}
