//! The builder: turns a plan into namespaces, bridges, veths, addresses and routes (with
//! `ip`; the lab is not a hot path), plays the runtime for every pod, and tears it all down.
//! Every step is recorded in `state.json` before the next one, so a failed `up` and a later
//! `down` remove exactly what exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use serde_json::Value;

use crate::daemons;
use crate::plan::{
    self, BackendKind, LabPlan, LabSpec, NodePlan, PlanError, PodPlan, StoreKind, Veth,
};
use crate::runtime::{self, CniCommand, RuntimeError};
use crate::state::{LabState, PodRecord, ProcRecord, StateError};

/// Where `ip netns add` puts namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("lab {name} exists; run twill lab down --name {name}")]
    Exists { name: String },
    #[error("the CNI plugin {} does not exist: build it (`cargo build -p twill-cni`) or point --cni-bin / {} at it", bin.display(), runtime::CNI_BIN_ENV)]
    PluginMissing { bin: PathBuf },
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("the node agent {} does not exist: build it (`cargo build -p twilld`) or point --twilld-bin / {} at it", bin.display(), runtime::TWILLD_BIN_ENV)]
    AgentMissing { bin: PathBuf },
    #[error("etcd is not installed (no `etcd` on PATH): install it (`apt-get install etcd-server`) or use --store embedded")]
    EtcdMissing,
    #[error("lab {name} uses the {store} store, which has no server to {action}; only --store etcd labs have one")]
    NoStoreServer {
        name: String,
        store: String,
        action: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lab {name} is not fully removed: {} still exist; remove them with `ip netns del` / `rm -r`", leftovers.join(", "))]
    Leftovers {
        name: String,
        leftovers: Vec<String>,
    },
}

/// Progress messages (`up`, `down`) go through this, so the CLI decides where they go.
pub type Log<'a> = &'a dyn Fn(&str);

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Runs `ip ARGS`, returning stdout; a failure carries ip's own message.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    let cmd = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(io_err(format!("run `{cmd}` (is iproute2 installed?)")))?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(LabError::Command { cmd, detail });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of all namespaces `ip netns` knows (the files in /run/netns).
pub fn list_netns() -> Result<Vec<String>, LabError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("list {NETNS_DIR}"))(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The namespaces that carry lab `name`'s prefix, whether or not its state knows them.
pub fn lab_netns(name: &str) -> Result<Vec<String>, LabError> {
    let prefix = plan::netns_prefix(name);
    Ok(list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect())
}

pub fn netns_exists(netns: &str) -> bool {
    Path::new(NETNS_DIR).join(netns).exists()
}

fn add_netns(state: &mut LabState, netns: &str) -> Result<(), LabError> {
    ip(&["netns", "add", netns])?;
    state.netns.push(netns.to_string());
    state.save()?;
    // A fresh namespace has only lo, and it is down.
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    Ok(())
}

fn set_ip_forward(netns: &str) -> Result<(), LabError> {
    sysctl_in(netns, "net/ipv4/ip_forward", "1")
}

/// Writes `value` to /proc/sys/`key` of namespace `netns`.
fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let what = format!("set {key} = {value} in {netns}");
    // /proc/sys/net is per namespace, resolved for the thread that opens it.
    let ns = crate::probe::open_netns(netns).map_err(|e| LabError::Command {
        cmd: what.clone(),
        detail: e.to_string(),
    })?;
    twill_netlink::run_in(&ns, || std::fs::write(format!("/proc/sys/{key}"), value))
        .map_err(|e| LabError::Command {
            cmd: what.clone(),
            detail: e.to_string(),
        })?
        .map_err(io_err(what))
}

fn wire_veth(v: &Veth) -> Result<(), LabError> {
    // Both ends are created directly in their namespaces: nothing touches the root namespace.
    ip(&[
        "-n",
        &v.netns,
        "link",
        "add",
        &v.ifname,
        "type",
        "veth",
        "peer",
        "name",
        &v.peer_ifname,
        "netns",
        &v.peer_netns,
    ])?;
    if let Some(a) = v.address {
        ip(&[
            "-n",
            &v.netns,
            "addr",
            "add",
            &a.to_string(),
            "dev",
            &v.ifname,
        ])?;
    }
    if let Some(a) = v.peer_address {
        ip(&[
            "-n",
            &v.peer_netns,
            "addr",
            "add",
            &a.to_string(),
            "dev",
            &v.peer_ifname,
        ])?;
    }
    if let Some(m) = &v.peer_master {
        ip(&[
            "-n",
            &v.peer_netns,
            "link",
            "set",
            &v.peer_ifname,
            "master",
            m,
        ])?;
    }
    ip(&["-n", &v.netns, "link", "set", &v.ifname, "up"])?;
    ip(&["-n", &v.peer_netns, "link", "set", &v.peer_ifname, "up"])?;
    Ok(())
}

/// `etcd` on PATH.
pub fn find_etcd() -> Result<PathBuf, LabError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or(LabError::EtcdMissing)
}

/// Builds lab `spec` with plugin `cni_bin` and node agent `twilld_bin`. On any failure it
/// removes what it made and returns the original error.
pub fn up(
    spec: &LabSpec,
    cni_bin: &Path,
    twilld_bin: &Path,
    log: Log,
) -> Result<LabState, LabError> {
    let plan = plan::plan(spec)?;
    // The plugin is looked for here unless it sits in a CNI bin dir a node's own agent
    // fills at start (`twill install-cni`, the DaemonSet's init step, run by a wrapper
    // given as --twilld-bin): then it is checked when the first pod is wired.
    if !cni_bin.is_file() && !cni_bin.parent().is_some_and(Path::is_dir) {
        return Err(LabError::PluginMissing {
            bin: cni_bin.to_path_buf(),
        });
    }
    if !twilld_bin.is_file() {
        return Err(LabError::AgentMissing {
            bin: twilld_bin.to_path_buf(),
        });
    }
    if plan.store.etcd.is_some() {
        find_etcd()?;
    }
    if plan.state_dir.exists() || !lab_netns(&plan.name)?.is_empty() {
        return Err(LabError::Exists { name: plan.name });
    }
    std::fs::create_dir_all(&plan.state_dir)
        .map_err(io_err(format!("create {}", plan.state_dir.display())))?;
    let mut state = LabState::new(plan, cni_bin.to_path_buf(), twilld_bin.to_path_buf());
    if let Err(e) = state
        .save()
        .map_err(LabError::from)
        .and_then(|_| build(&mut state, log))
    {
        log(&format!("up failed ({e}); removing what was made"));
        for w in teardown(&state, log) {
            log(&format!("warning: {w}"));
        }
        return Err(e);
    }
    Ok(state)
}

fn build(state: &mut LabState, log: Log) -> Result<(), LabError> {
    let plan = state.plan.clone();
    log(&format!("namespaces: {}", plan.infra_netns().join(", ")));
    for ns in plan.infra_netns() {
        add_netns(state, ns)?;
    }
    for seg in &plan.segments {
        log(&format!(
            "underlay switch: bridge {} in {} for {}",
            seg.bridge, seg.netns, seg.subnet
        ));
        ip(&[
            "-n",
            &seg.netns,
            "link",
            "add",
            &seg.bridge,
            "type",
            "bridge",
        ])?;
        ip(&["-n", &seg.netns, "link", "set", &seg.bridge, "up"])?;
    }
    for v in plan.veths() {
        log(&format!(
            "veth: {}:{} <-> {}:{}",
            v.netns, v.ifname, v.peer_netns, v.peer_ifname
        ));
        wire_veth(v)?;
    }
    set_ip_forward(&plan.router.netns)?;
    ovs_infra_checksums(&plan)?;
    let out = &plan.outside;
    ip(&[
        "-n",
        &out.netns,
        "route",
        "add",
        "default",
        "via",
        &out.gateway.to_string(),
    ])?;
    if let Some(e) = &plan.store.etcd {
        // Nodes behind the router (segment 2) reach the store through it: the answer
        // needs the way back.
        let gw = plan.segments[0].gateway.to_string();
        ip(&["-n", &e.netns, "route", "add", "default", "via", &gw])?;
    }
    for node in &plan.nodes {
        setup_node(&plan, node, log)?;
        setup_ovs(state, node, log)?;
    }
    start_store(state, log)?;
    let config = daemons::write_network_config(&plan)?;
    log(&format!(
        "network config written to the {} store: clusterCIDR {}, blockSize /{}, leaseTTLSeconds {}, masquerade {}",
        plan.store.kind.name(),
        config.cluster_cidr,
        config.block_size,
        config.lease_ttl_seconds,
        config.masquerade
    ));
    let keys = daemons::write_bgp_resources(&plan)?;
    if !keys.is_empty() {
        log(&format!(
            "BGP resources written to the store before any agent starts: {}",
            keys.join(", ")
        ));
    }
    let keys = daemons::write_namespaces(&plan)?;
    if !keys.is_empty() {
        log(&format!(
            "namespaces written to the store: {}",
            keys.join(", ")
        ));
    }
    start_router(state, log)?;
    for node in &plan.nodes {
        let rec = daemons::spawn(
            &node.short,
            &node.netns,
            &state.twilld_bin,
            &plan.agent_args(node),
            &node.agent_log,
        )?;
        log(&format!(
            "node {}: twilld started (pid {}), log {}",
            node.short,
            rec.pid.unwrap_or(0),
            node.agent_log.display()
        ));
        state.agents.push(rec);
        state.save()?;
    }
    for rec in &state.agents {
        daemons::wait_agent_ready(rec, daemons::AGENT_READY_TIMEOUT)?;
        log(&format!("node {}: twilld ready", rec.role));
    }
    for node in &plan.nodes {
        add_pods(state, node, log)?;
    }
    warm_underlay(&plan);
    wait_peering(state, log)
}

/// The router's routing daemon, if the plan has one: config written, processes recorded.
fn start_router(state: &mut LabState, log: Log) -> Result<(), LabError> {
    let Some(d) = state.plan.router.daemon.clone() else {
        return Ok(());
    };
    let recs = daemons::start_router(&state.plan)?;
    log(&format!(
        "router {}: {} (pids {}), config {}, log {}",
        state.plan.router.netns,
        crate::routing::describe_router(&d),
        recs.iter()
            .map(|r| r.pid.unwrap_or(0).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        d.config_file().display(),
        d.log_file().display()
    ));
    state.router = recs;
    state.save()?;
    Ok(())
}

/// The blocks the router's kernel routes (what its daemon installed), when it runs one.
pub fn router_routes(plan: &LabPlan) -> Result<Option<Vec<Ipv4Net>>, LabError> {
    let Some(d) = &plan.router.daemon else {
        return Ok(None);
    };
    let proto = crate::routing::router_kernel_proto(d).to_string();
    let text = ip(&[
        "-j",
        "-n",
        &plan.router.netns,
        "route",
        "show",
        "proto",
        &proto,
    ])?;
    Ok(Some(plan::parse_route_dsts(&text)))
}

/// One ping from every node to its router, so the underlay's ARP entries exist before the
/// first check. A real network is never this cold: in the freshly built lab, with the
/// static store (no peer probes to warm it), the first tunnelled packets across the router
/// waited ~1 s for ARP and the next few were lost.
fn warm_underlay(plan: &LabPlan) {
    for node in &plan.nodes {
        let _ = Command::new("ip")
            .args(["netns", "exec", &node.netns, "ping", "-c1", "-W1", "-q"])
            .arg(node.gateway.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A node's own set-up once its namespace and uplink exist: default route via its
/// segment's router, forwarding, its folders and conflist.
fn setup_node(plan: &LabPlan, node: &NodePlan, log: Log) -> Result<(), LabError> {
    log(&format!(
        "node {}: {} on eth0, default via {}",
        node.short, node.address, node.gateway
    ));
    ip(&[
        "-n",
        &node.netns,
        "route",
        "add",
        "default",
        "via",
        &node.gateway.to_string(),
    ])?;
    set_ip_forward(&node.netns)?;
    for dir in [&node.ipam_dir, &node.agent_state_dir] {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let conflist = runtime::node_conflist(plan, node);
    let text = serde_json::to_string_pretty(&conflist).expect("conflist serializes");
    std::fs::write(&node.conflist, text)
        .map_err(io_err(format!("write {}", node.conflist.display())))
}

/// The conflist in node `node`'s CNI config dir, as a runtime reads it for each pod: the
/// one [`setup_node`] wrote, or what replaced it there (`twill install-cni
/// --cni-net-dir <node dir>`). Parsed as JSON; a missing or bad file is an error naming it.
fn read_conflist(node: &NodePlan) -> Result<Value, LabError> {
    let what = format!("read the conflist {}", node.conflist.display());
    let text = std::fs::read_to_string(&node.conflist).map_err(io_err(what.clone()))?;
    serde_json::from_str(&text).map_err(|e| LabError::Command {
        cmd: what,
        detail: format!("not JSON: {e}"),
    })
}

/// `--backend ovs`: the node's own ovsdb-server and ovs-vswitchd (recorded at once, so a
/// failure later still stops them), then, as the backend's contract asks of a node with
/// the userspace (netdev) datapath, its underlay address moved from eth0 to the OVS bridge
/// br-phy that holds eth0 as a port (twilld's uplink is then br-phy, and its tunnels' outer
/// packets leave through OVS), offloads off on br-phy, the default route back.
fn setup_ovs(state: &mut LabState, node: &NodePlan, log: Log) -> Result<(), LabError> {
    if state.plan.ovs_tunnel.is_none() {
        return Ok(());
    }
    let p = crate::ovs::OvsPaths::of(node);
    let recs = crate::ovs::start(&p)?;
    log(&format!(
        "node {}: ovsdb-server (pid {}) and ovs-vswitchd (pid {}), db {}",
        node.short,
        recs[0].pid.unwrap_or(0),
        recs[1].pid.unwrap_or(0),
        p.db_sock().display()
    ));
    state.ovs.extend(recs);
    state.save()?;
    if crate::ovs::datapath() != twill_ovs::Datapath::Netdev {
        return Ok(());
    }
    let phy = plan::OVS_PHY_BRIDGE;
    p.vsctl(&[
        "--may-exist",
        "add-br",
        phy,
        "--",
        "set",
        "bridge",
        phy,
        "datapath_type=netdev",
        "--",
        "--may-exist",
        "add-port",
        phy,
        &node.uplink.ifname,
    ])?;
    let addr = node.address.to_string();
    let ns = node.netns.as_str();
    // eth0, now OVS's, must not answer ARP for the node IP with its own MAC: peers would
    // learn a MAC on which OVS takes no tunnel packets (twill_ovs::neigh::arp_flux).
    sysctl_in(
        ns,
        &format!("net/ipv4/conf/{}/arp_ignore", node.uplink.ifname),
        "1",
    )?;
    ip(&["-n", ns, "addr", "del", &addr, "dev", &node.uplink.ifname])?;
    ip(&["-n", ns, "addr", "add", &addr, "dev", phy])?;
    ip(&["-n", ns, "link", "set", phy, "up"])?;
    let gw = node.gateway.to_string();
    ip(&[
        "-n", ns, "route", "replace", "default", "via", &gw, "dev", phy,
    ])?;
    crate::ovs::offloads_off(ns, phy)?;
    log(&format!(
        "node {}: {addr} moved to OVS bridge {phy} (netdev datapath), {} its port",
        node.short, node.uplink.ifname
    ));
    Ok(())
}

/// `--backend ovs` with the userspace datapath: the lab's other hosts (router legs, the
/// outside host, the store host) compute their checksums in software. A veth hands its
/// peer a frame with the checksum still to be filled in (CHECKSUM_PARTIAL); a node's OVS
/// reads it off eth0 and writes it into br-phy as it is, and the node's kernel drops it
/// (found in the lab: pod→outside and outside→host port timed out).
fn ovs_infra_checksums(plan: &LabPlan) -> Result<(), LabError> {
    if plan.ovs_tunnel.is_none() || crate::ovs::datapath() != twill_ovs::Datapath::Netdev {
        return Ok(());
    }
    let mut ends: Vec<(&str, &str)> = plan
        .router
        .segment_legs
        .iter()
        .map(|v| (v.netns.as_str(), v.ifname.as_str()))
        .collect();
    let o = &plan.router.outside_leg;
    ends.push((&o.netns, &o.ifname));
    ends.push((&o.peer_netns, &o.peer_ifname));
    if let Some(e) = &plan.store.etcd {
        ends.push((&e.uplink.netns, &e.uplink.ifname));
    }
    for (ns, dev) in ends {
        crate::ovs::offloads_off(ns, dev)?;
    }
    Ok(())
}

/// Stops a leaving node's OVS by its recorded PIDs (vswitchd first).
fn stop_node_ovs(state: &mut LabState, node: &NodePlan, log: Log) -> Result<(), LabError> {
    let p = crate::ovs::OvsPaths::of(node);
    let roles = [p.ovsdb_role(), p.vswitchd_role()];
    let recs: Vec<ProcRecord> = state
        .ovs
        .iter()
        .filter(|r| roles.contains(&r.role))
        .cloned()
        .collect();
    if recs.is_empty() {
        return Ok(());
    }
    for note in crate::ovs::stop(&recs) {
        log(&format!("warning: {note}"));
    }
    log(&format!("node {}: OVS stopped", node.short));
    state.ovs.retain(|r| !roles.contains(&r.role));
    state.save()?;
    Ok(())
}

/// `twill lab ovs-restart NODE`: kills the node's ovs-vswitchd by its recorded PID
/// (SIGKILL: a crash, not a clean exit), leaves it down for `down_for` (a supervisor's
/// restart delay), and starts it again with the same database. Returns (old pid, new pid).
pub fn restart_vswitchd(
    state: &mut LabState,
    node: &str,
    down_for: Duration,
) -> Result<(u32, u32), LabError> {
    let n = state
        .plan
        .nodes
        .iter()
        .find(|n| n.short == node)
        .cloned()
        .ok_or_else(|| LabError::Plan(PlanError::UnknownTarget(node.to_string())))?;
    let p = crate::ovs::OvsPaths::of(&n);
    let role = p.vswitchd_role();
    let rec = state
        .ovs
        .iter()
        .find(|r| r.role == role)
        .cloned()
        .ok_or_else(|| LabError::Command {
            cmd: format!("restart ovs-vswitchd of {node}"),
            detail: format!(
                "lab {} runs no OVS on {node} (it is not a --backend ovs lab)",
                state.plan.name
            ),
        })?;
    let old = rec.pid.unwrap_or(0);
    if old != 0 && daemons::is_ours(old, &rec.bin) {
        // SAFETY: kill(2) on the PID the lab recorded for this node's vswitchd, checked.
        unsafe { libc::kill(old as libc::pid_t, libc::SIGKILL) };
        while daemons::is_ours(old, &rec.bin) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(down_for);
    let new = crate::ovs::start_vswitchd(&p)?;
    let pid = new.pid.unwrap_or(0);
    state.ovs.retain(|r| r.role != role);
    state.ovs.push(new);
    state.save()?;
    Ok((old, pid))
}

fn add_pods(state: &mut LabState, node: &NodePlan, log: Log) -> Result<(), LabError> {
    if !node.pods.is_empty() && !state.cni_bin.is_file() {
        return Err(LabError::PluginMissing {
            bin: state.cni_bin.clone(),
        });
    }
    let conflist = read_conflist(node)?;
    for pod in &node.pods {
        add_pod(state, node, pod, &conflist)?;
        let rec = state.pods.last().expect("just added");
        log(&format!(
            "pod {}: twill-cni ADD gave {}",
            pod.short,
            rec.address.map_or("no address".into(), |a| a.to_string())
        ));
    }
    Ok(())
}

/// How long `up` waits for the agents to program routes to one another.
pub const PEERING_TIMEOUT: Duration = Duration::from_secs(30);

/// The backend's routes in `netns` (`ip -j route show proto P` for each of `protos`: the
/// agent's 84, and `bgp`/`rip` for what a speaker learned): their destinations.
pub fn twill_routes(netns: &str, protos: &[u8]) -> Result<Vec<Ipv4Net>, LabError> {
    let mut v = Vec::new();
    for p in protos {
        let text = ip(&["-j", "-n", netns, "route", "show", "proto", &p.to_string()])?;
        v.extend(plan::parse_route_dsts(&text));
    }
    Ok(v)
}

/// What the agents have not done yet: per node, a route to every block of every peer its
/// backend reaches, or the /readyz warning for a peer it cannot (host-gw across segments).
pub fn peering_gaps(state: &LabState) -> Result<Vec<String>, LabError> {
    let plan = &state.plan;
    let published = daemons::read_nodes(plan).map_err(|e| LabError::Command {
        cmd: "read the nodes from the store".into(),
        detail: e,
    })?;
    let blocks: HashMap<String, Vec<Ipv4Net>> =
        published.into_iter().map(|(k, v)| (k, v.blocks)).collect();
    let mut routes = HashMap::new();
    let mut readyz = HashMap::new();
    for n in &plan.nodes {
        routes.insert(
            n.short.clone(),
            twill_routes(&n.netns, plan.backend_route_protos())?,
        );
        let body = daemons::http_get(&n.netns, daemons::agent_addr(), "/readyz")
            .map(|(_, b)| b)
            .unwrap_or_default();
        readyz.insert(n.short.clone(), body);
    }
    let mut gaps = plan.peering_gaps(&blocks, &routes, &readyz);
    if plan.backend == BackendKind::Ovs {
        let userspace = crate::ovs::datapath() == twill_ovs::Datapath::Netdev;
        let mut states = Vec::new();
        for n in &plan.nodes {
            match crate::ovs::read_tunnel_state(&crate::ovs::OvsPaths::of(n), userspace) {
                Ok(s) => states.push(s),
                Err(e) => gaps.push(format!("{}: cannot read its OVS yet: {e}", n.short)),
            }
        }
        gaps.extend(crate::ovs::tunnel_gaps(plan, &states));
    }
    if let Some(have) = router_routes(plan)? {
        gaps.extend(plan::router_gaps(&plan.nodes, &blocks, &have));
    }
    Ok(gaps)
}

/// Waits until [`peering_gaps`] finds none, so that `check` right after `up` is meaningful.
pub fn wait_peering(state: &LabState, log: Log) -> Result<(), LabError> {
    if state.plan.backend == BackendKind::None {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        let gaps = peering_gaps(state)?;
        if gaps.is_empty() {
            log(&format!(
                "backend {}: every node has its routes to the others ({} ms)",
                state.plan.backend.name(),
                started.elapsed().as_millis()
            ));
            return Ok(());
        }
        if started.elapsed() > PEERING_TIMEOUT {
            return Err(LabError::Command {
                cmd: format!(
                    "wait for the {} routes between nodes",
                    state.plan.backend.name()
                ),
                detail: format!(
                    "still missing after {}s: {}; see the agents' logs under {}",
                    PEERING_TIMEOUT.as_secs(),
                    gaps.join("; "),
                    state.plan.state_dir.display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `twill lab add-node`: one more node (next index, alternating segments) joins the
/// running lab: namespace, uplink, its agent (for the static store, the file gains its
/// entry first), its pods; waits until every node routes to it. Returns its name.
pub fn add_node(state: &mut LabState, log: Log) -> Result<String, LabError> {
    let node = state.plan.next_node()?;
    state.plan.nodes.push(node.clone());
    state.save()?;
    add_netns(state, &node.netns)?;
    wire_veth(&node.uplink)?;
    setup_node(&state.plan, &node, log)?;
    setup_ovs(state, &node, log)?;
    daemons::write_static_file(&state.plan)?;
    daemons::write_node_spec(&state.plan, &node)?;
    daemons::reconfigure_router(&state.plan, daemons::NodeChange::Joined(&node))?;
    let rec = daemons::spawn(
        &node.short,
        &node.netns,
        &state.twilld_bin,
        &state.plan.agent_args(&node),
        &node.agent_log,
    )?;
    log(&format!(
        "node {}: twilld started (pid {})",
        node.short,
        rec.pid.unwrap_or(0)
    ));
    state.agents.push(rec.clone());
    state.save()?;
    daemons::wait_agent_ready(&rec, daemons::AGENT_READY_TIMEOUT)?;
    add_pods(state, &node, log)?;
    wait_peering(state, log)?;
    Ok(node.short)
}

/// `twill lab remove-node NODE`: the node leaves: DEL of its pods, its agent stopped,
/// `forget` takes it out of the store (the CLI runs `twill node remove`; for the static
/// store the lab rewrites the file), its namespaces deleted. Waits until no other node
/// has a route to its blocks (nor, with OVS, a flow to or from it) any more.
pub fn remove_node(
    state: &mut LabState,
    short: &str,
    forget: &(dyn Fn(&dyn twill_store::Store, &str) -> Result<(), String> + Sync),
    log: Log,
) -> Result<(), LabError> {
    let node = state
        .plan
        .nodes
        .iter()
        .find(|n| n.short == short)
        .cloned()
        .ok_or_else(|| LabError::Plan(PlanError::UnknownTarget(short.to_string())))?;
    let gone_blocks: Vec<Ipv4Net> = daemons::read_nodes(&state.plan)
        .ok()
        .and_then(|m| m.get(short).map(|n| n.blocks.clone()))
        .unwrap_or_default();
    let conflist =
        read_conflist(&node).unwrap_or_else(|_| runtime::node_conflist(&state.plan, &node));
    let pods: Vec<PodRecord> = state
        .pods
        .iter()
        .filter(|p| p.node == node.index)
        .cloned()
        .collect();
    for rec in pods.iter().rev() {
        if let Some(pod) = node.pods.iter().find(|p| p.short == rec.short) {
            call_plugin(
                state,
                &node,
                pod,
                &conflist,
                CniCommand::Del,
                rec.result.as_ref(),
            )?;
            log(&format!("pod {}: twill-cni DEL done", rec.short));
        }
        delete_netns(state, &rec.netns)?;
        state.pods.retain(|p| p.short != rec.short);
        state.save()?;
    }
    if let Some(rec) = state.agent(short).cloned() {
        if let Some(note) = daemons::stop(&rec, daemons::STOP_GRACE) {
            log(&format!("warning: {note}"));
        }
        log(&format!("node {short}: twilld stopped"));
        state.agents.retain(|a| a.role != short);
        state.save()?;
    }
    // A udp node's datapath outlives its agent (by design): it goes with the node.
    for note in stop_datapaths(&node.netns) {
        log(&format!("warning: {note}"));
    }
    stop_node_ovs(state, &node, log)?;
    state.plan.nodes.retain(|n| n.short != short);
    if state.plan.store.kind == StoreKind::Static {
        daemons::write_static_file(&state.plan)?;
        log(&format!("node {short}: removed from the static file"));
    } else {
        daemons::with_store(&state.plan, |store| forget(store, short)).map_err(|e| {
            LabError::Command {
                cmd: format!("twill node remove {short}"),
                detail: e,
            }
        })?;
        log(&format!("node {short}: removed from the store"));
    }
    delete_netns(state, &node.netns)?;
    let _ = std::fs::remove_dir_all(&node.dir);
    state.save()?;
    daemons::reconfigure_router(&state.plan, daemons::NodeChange::Left(&node))?;
    // The others drop their routes to it once they see it gone.
    let started = Instant::now();
    loop {
        let mut left = Vec::new();
        for n in &state.plan.nodes {
            let routes = twill_routes(&n.netns, state.plan.backend_route_protos())?;
            left.extend(
                gone_blocks
                    .iter()
                    .filter(|b| routes.contains(b))
                    .map(|b| format!("{} still routes {b}", n.short)),
            );
            // OVS: the routes go first, the flows of its tunnel just after them; the
            // node has left only once no flow leads to it (or comes from it).
            if state.plan.backend == BackendKind::Ovs {
                let gone_ip = node.address.addr();
                match crate::ovs::read_tunnel_state(&crate::ovs::OvsPaths::of(n), false) {
                    Ok(s) => left.extend(crate::ovs::leftover_tunnel(&n.short, &s, gone_ip)),
                    Err(e) => left.push(format!("{}: cannot read its OVS: {e}", n.short)),
                }
            }
        }
        if left.is_empty() {
            log(&format!(
                "node {short}: no node routes to its blocks any more ({} ms)",
                started.elapsed().as_millis()
            ));
            return Ok(());
        }
        if started.elapsed() > PEERING_TIMEOUT {
            return Err(LabError::Command {
                cmd: format!("wait for the routes to {short} to go"),
                detail: left.join("; "),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn delete_netns(state: &mut LabState, netns: &str) -> Result<(), LabError> {
    if netns_exists(netns) {
        ip(&["netns", "del", netns])?;
    }
    state.netns.retain(|n| n != netns);
    Ok(())
}

/// The store the agents share: the embedded store's folder, or the etcd member on its host.
fn start_store(state: &mut LabState, log: Log) -> Result<(), LabError> {
    let plan = state.plan.clone();
    if let Some(dir) = &plan.store.dir {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        log(&format!("store: embedded, folder {}", dir.display()));
    }
    if let Some(e) = &plan.store.etcd {
        std::fs::create_dir_all(&e.data_dir)
            .map_err(io_err(format!("create {}", e.data_dir.display())))?;
        let rec = daemons::spawn(
            "etcd",
            &e.netns,
            &find_etcd()?,
            &plan.etcd_args().expect("an etcd plan"),
            &e.log,
        )?;
        log(&format!(
            "store: etcd member in {} on {} (pid {}), data {}",
            e.netns,
            e.client_url,
            rec.pid.unwrap_or(0),
            e.data_dir.display()
        ));
        state.etcd = Some(rec.clone());
        state.save()?;
        daemons::wait_etcd_healthy(&plan, &rec)?;
        log("store: etcd is healthy");
    }
    Ok(())
}

/// Stops lab `state`'s etcd member (SIGTERM, SIGKILL after a grace period), keeping its data.
pub fn store_stop(state: &mut LabState) -> Result<Option<String>, LabError> {
    let rec = etcd_record(state, "stop")?;
    let note = daemons::stop(&rec, daemons::ETCD_STOP_GRACE);
    if let Some(r) = state.etcd.as_mut() {
        r.pid = None;
    }
    state.save()?;
    Ok(note)
}

/// Starts lab `state`'s etcd member again with the same arguments and data, and waits for it.
pub fn store_start(state: &mut LabState) -> Result<u32, LabError> {
    let rec = etcd_record(state, "start")?;
    if let Some(pid) = rec.pid.filter(|&p| daemons::is_ours(p, &rec.bin)) {
        return Ok(pid);
    }
    let new = daemons::spawn(&rec.role, &rec.netns, &rec.bin, &rec.args, &rec.log)?;
    let pid = new.pid.unwrap_or(0);
    state.etcd = Some(new.clone());
    state.save()?;
    daemons::wait_etcd_healthy(&state.plan, &new)?;
    Ok(pid)
}

fn etcd_record(state: &LabState, action: &str) -> Result<ProcRecord, LabError> {
    state.etcd.clone().ok_or_else(|| LabError::NoStoreServer {
        name: state.plan.name.clone(),
        store: state.plan.store.kind.name().into(),
        action: action.into(),
    })
}

/// Restarts node `node`'s agent with the arguments it had: stops the recorded process if it
/// still runs (SIGTERM; a restart keeps the lease), starts it again, waits for /readyz.
pub fn restart_agent(state: &mut LabState, node: &str) -> Result<u32, LabError> {
    let rec = state
        .agent(node)
        .cloned()
        .ok_or_else(|| LabError::Plan(PlanError::UnknownTarget(node.to_string())))?;
    let _ = daemons::stop(&rec, daemons::STOP_GRACE);
    let new = daemons::spawn(&rec.role, &rec.netns, &rec.bin, &rec.args, &rec.log)?;
    let pid = new.pid.unwrap_or(0);
    if let Some(r) = state.agents.iter_mut().find(|a| a.role == node) {
        *r = new.clone();
    }
    state.save()?;
    daemons::wait_agent_ready(&new, daemons::AGENT_READY_TIMEOUT)?;
    Ok(pid)
}

/// The second NIC the demo's first-found fault gives a node: listed before eth0 by the
/// kernel, on an address no other node can reach.
pub const FAULT_IFNAME: &str = "eth1";
pub const FAULT_PEER_IFNAME: &str = "eth1p";
pub const FAULT_ADDRESS: &str = "203.0.113.200/32";

/// Calico's first-found trap, made on node `node` of a running lab: the node gets a
/// second NIC ([`FAULT_IFNAME`], [`FAULT_ADDRESS`]) that the kernel lists before eth0 (eth0
/// is unplugged and plugged back, so it comes after), and its agent restarts with
/// `--ip-autodetection first-found`. It then publishes the wrong address: its peers try to
/// reach it there and their sessions stay in Connect/Active. Returns the agent's new PID.
pub fn inject_first_found_fault(state: &mut LabState, node: &str) -> Result<u32, LabError> {
    let n = state
        .plan
        .nodes
        .iter()
        .find(|n| n.short == node)
        .cloned()
        .ok_or_else(|| LabError::Plan(PlanError::UnknownTarget(node.to_string())))?;
    let ns = n.netns.as_str();
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        FAULT_IFNAME,
        "type",
        "veth",
        "peer",
        "name",
        FAULT_PEER_IFNAME,
    ])?;
    ip(&["-n", ns, "addr", "add", FAULT_ADDRESS, "dev", FAULT_IFNAME])?;
    ip(&["-n", ns, "link", "set", FAULT_PEER_IFNAME, "up"])?;
    ip(&["-n", ns, "link", "set", FAULT_IFNAME, "up"])?;
    // Re-plug the uplink: it gets a higher index than the new NIC.
    ip(&["-n", ns, "link", "del", &n.uplink.ifname])?;
    wire_veth(&n.uplink)?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        &n.gateway.to_string(),
    ])?;
    let rec = state
        .agents
        .iter_mut()
        .find(|a| a.role == node)
        .ok_or_else(|| LabError::Plan(PlanError::UnknownTarget(node.to_string())))?;
    if let Some(i) = rec.args.iter().position(|a| a == "--ip-autodetection") {
        if let Some(v) = rec.args.get_mut(i + 1) {
            *v = "first-found".into();
        }
    }
    state.save()?;
    restart_agent(state, node)
}

/// The runtime's part of "run a pod sandbox": make the namespace, then call the plugin.
fn add_pod(
    state: &mut LabState,
    node: &NodePlan,
    pod: &PodPlan,
    conflist: &Value,
) -> Result<(), LabError> {
    add_netns(state, &pod.netns)?;
    // Recorded before ADD: a failed ADD still gets its DEL, as kubelet does.
    state.pods.push(PodRecord {
        short: pod.short.clone(),
        node: node.index,
        netns: pod.netns.clone(),
        container_id: pod.container_id.clone(),
        address: None,
        result: None,
    });
    state.save()?;
    let result = call_plugin(state, node, pod, conflist, CniCommand::Add, None)?;
    let rec = state.pods.last_mut().expect("just pushed");
    rec.address = result.as_ref().and_then(runtime::pod_address);
    rec.result = result;
    state.save()?;
    Ok(())
}

fn call_plugin(
    state: &LabState,
    node: &NodePlan,
    pod: &PodPlan,
    conflist: &Value,
    command: CniCommand,
    prev_result: Option<&Value>,
) -> Result<Option<Value>, LabError> {
    let config =
        runtime::plugin_config(conflist, 0, &runtime::pod_capability_args(pod), prev_result)
            .expect("the lab's conflist has one plugin");
    let cni_path = state.cni_bin.parent().unwrap_or(Path::new("/"));
    let env = runtime::plugin_env(command, &state.plan.name, pod, cni_path);
    Ok(runtime::exec_plugin(
        &state.cni_bin,
        &node.netns,
        &env,
        &config,
        command,
        &pod.container_id,
    )?)
}

/// Removes what `state` records: DEL for every pod (prevResult = its ADD result), recorded
/// processes, namespaces (newest first), the state directory. Best effort: returns what
/// could not be done instead of stopping.
pub fn teardown(state: &LabState, log: Log) -> Vec<String> {
    let mut warnings = Vec::new();
    let plan = &state.plan;
    // The agents and the store go first (in parallel: each may take the grace period), so
    // nothing rewrites the hand-off or the store while pods are removed.
    let daemons: Vec<&ProcRecord> = state
        .agents
        .iter()
        .chain(state.etcd.iter())
        .chain(state.router.iter().rev())
        .collect();
    let notes: Vec<Option<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = daemons
            .iter()
            .map(|rec| scope.spawn(move || daemons::stop(rec, daemons::STOP_GRACE)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(None))
            .collect()
    });
    for (rec, note) in daemons.iter().zip(notes) {
        match note {
            Some(n) => warnings.push(n),
            None if rec.pid.is_some() => log(&format!("{}: stopped", rec.role)),
            None => {}
        }
    }
    // OVS after the agents (no agent reprograms it meanwhile), one thread per node.
    let per_node: Vec<Vec<ProcRecord>> = plan
        .nodes
        .iter()
        .map(|n| {
            let p = crate::ovs::OvsPaths::of(n);
            state
                .ovs
                .iter()
                .filter(|r| r.role == p.ovsdb_role() || r.role == p.vswitchd_role())
                .cloned()
                .collect()
        })
        .collect();
    let notes: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = per_node
            .iter()
            .map(|recs| scope.spawn(move || crate::ovs::stop(recs)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (recs, n) in per_node.iter().zip(notes) {
        warnings.extend(n);
        for r in recs.iter().filter(|r| r.pid.is_some()) {
            log(&format!("{}: stopped", r.role));
        }
    }
    // The udp backend's datapaths outlive their agents (by design): they go with the lab.
    for node in &plan.nodes {
        if netns_exists(&node.netns) {
            warnings.extend(stop_datapaths(&node.netns));
        }
    }
    for rec in state.pods.iter().rev() {
        let (Some(node), Some(pod)) = (
            plan.node(rec.node),
            plan.pods().find(|p| p.short == rec.short),
        ) else {
            warnings.push(format!(
                "pod {} is not in the plan; not running DEL",
                rec.short
            ));
            continue;
        };
        if !netns_exists(&node.netns) {
            continue;
        }
        let conflist = read_conflist(node).unwrap_or_else(|_| runtime::node_conflist(plan, node));
        match call_plugin(
            state,
            node,
            pod,
            &conflist,
            CniCommand::Del,
            rec.result.as_ref(),
        ) {
            Ok(_) => log(&format!("pod {}: twill-cni DEL done", rec.short)),
            Err(e) => warnings.push(format!("DEL {}: {e}", rec.short)),
        }
    }
    kill_recorded(&state.pids, &mut warnings);
    for ns in state.netns.iter().rev() {
        if netns_exists(ns) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                warnings.push(e.to_string());
            }
        }
    }
    if plan.state_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&plan.state_dir) {
            warnings.push(format!("remove {}: {e}", plan.state_dir.display()));
        }
    }
    warnings
}

/// Stops every udp datapath process in namespace `netns` (`twilld datapath --ctl … --tun
/// …`, started by the node's twilld in its own session, so not among the lab's recorded
/// pids): SIGTERM, then SIGKILL after 2 s. Returns what needed the SIGKILL.
pub fn stop_datapaths(netns: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else {
        return Vec::new();
    };
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|b| {
                let argv: Vec<String> = b
                    .split(|c| *c == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                argv.iter().any(|a| a == "datapath") && crate::bench_udp::is_datapath_argv(&argv)
            })
        })
        .collect();
    let mut warnings = Vec::new();
    for pid in pids {
        // SAFETY: kill(2) on a datapath process found in this lab's namespace.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end && Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            warnings.push(format!("datapath {pid} in {netns} ignored SIGTERM; killed"));
        }
    }
    warnings
}

fn kill_recorded(pids: &[u32], warnings: &mut Vec<String>) {
    for &pid in pids {
        let pid = pid as libc::pid_t;
        // SAFETY: kill(2) with a pid this lab recorded; no memory is involved.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            continue; // already gone
        }
        for _ in 0..50 {
            if unsafe { libc::kill(pid, 0) } != 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if unsafe { libc::kill(pid, 0) } == 0 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            warnings.push(format!("process {pid} ignored SIGTERM; killed"));
        }
    }
}

/// What `down` did.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Whether there was anything to remove.
    pub found: bool,
    /// Problems met on the way (all were worked around or are listed in an error).
    pub warnings: Vec<String>,
}

/// Removes lab `name`: by its state if readable, then every namespace carrying its prefix
/// (covers a partial or corrupt state). Succeeds only if nothing of the lab is left.
pub fn down(name: &str, log: Log) -> Result<DownReport, LabError> {
    plan::validate_name(name)?;
    let dir = plan::state_dir(name);
    let mut report = DownReport {
        found: dir.exists(),
        ..Default::default()
    };
    match LabState::load(name, &dir) {
        Ok(state) => report.warnings.extend(teardown(&state, log)),
        Err(StateError::Missing { .. }) => {}
        Err(e) => report.warnings.push(e.to_string()),
    }
    for ns in lab_netns(name)? {
        report.found = true;
        log(&format!("removing namespace {ns} (not in the lab's state)"));
        if let Err(e) = ip(&["netns", "del", &ns]) {
            report.warnings.push(e.to_string());
        }
    }
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            report
                .warnings
                .push(format!("remove {}: {e}", dir.display()));
        }
    }
    let mut leftovers = lab_netns(name)?;
    if dir.exists() {
        leftovers.push(dir.display().to_string());
    }
    if !leftovers.is_empty() {
        return Err(LabError::Leftovers {
            name: name.into(),
            leftovers,
        });
    }
    Ok(report)
}

/// Loads a running lab's state.
pub fn load(name: &str) -> Result<LabState, LabError> {
    plan::validate_name(name)?;
    Ok(LabState::load(name, &plan::state_dir(name))?)
}

/// Runs `cmd` inside a lab member (`n1`, `n1-p2`, `rt`, `out`, `ul`) with the caller's stdio;
/// returns its exit code (128 + signal if it was killed). The command finds the lab's
/// store in its environment ([`LabPlan::store_env`], replacing the caller's store settings),
/// and `tools_dir` (the running twill's folder) first on PATH, so `twill`, `twilld` and
/// `twill-cni` inside are the lab's own.
pub fn exec(
    state: &LabState,
    target: &str,
    cmd: &[String],
    tools_dir: Option<&Path>,
) -> Result<i32, LabError> {
    let netns = state.plan.target_netns(target)?;
    if !netns_exists(netns) {
        return Err(LabError::Command {
            cmd: format!("twill lab exec {target}"),
            detail: format!("namespace {netns} does not exist (is the lab up?)"),
        });
    }
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).args(cmd);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if plan::ENV_STORE_PREFIXES.iter().any(|p| k.starts_with(p)) {
            command.env_remove(k.as_ref());
        }
    }
    command.envs(state.plan.store_env());
    if let Some(dir) = tools_dir {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(
            std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path)),
        )
        .map_err(|e| LabError::Command {
            cmd: format!("twill lab exec {target}"),
            detail: format!("cannot put {} on PATH: {e}", dir.display()),
        })?;
        command.env("PATH", joined);
    }
    let status = command.status().map_err(io_err("run ip netns exec"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
