//! The lab's daemons: one `twilld` per node namespace and, for `--store etcd`, one etcd
//! member on the store host. Started detached (own process group, output to a log file),
//! recorded by PID in the state, stopped by that PID only. Also the store access the lab
//! itself needs (writing the network config, reading `nodes/<name>`), done from inside the
//! store host's namespace when the store is etcd: 192.0.2.2 is reachable only on the underlay.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use twill_api::bgp::{KEY_BGP_CONFIG, PREFIX_BGP_PEERS};
use twill_api::resources::{
    NetworkConfig, NodeStatus as StoreNode, KEY_CONFIG, PREFIX_NODECONFIGS, PREFIX_NODES,
};
use twill_store::{Store, StoreConfig, PREFIX};

use crate::build::LabError;
use crate::plan::{LabPlan, NodePlan, StoreKind, AGENT_LISTEN, CLUSTER_CIDR};
use crate::probe;
use crate::routing;
use crate::state::ProcRecord;

/// How long `up` waits for an agent's /readyz to say 200.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the lab waits for etcd's /health.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// SIGTERM, then SIGKILL after this long.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// etcd may take 3-5 s to exit on SIGTERM (RUNBOOK); its data dir is reused only after.
pub const ETCD_STOP_GRACE: Duration = Duration::from_secs(8);
/// Lines of a daemon's log quoted in errors.
const LOG_TAIL_LINES: usize = 15;

fn cmd_err(cmd: impl Into<String>, detail: impl Into<String>) -> LabError {
    LabError::Command {
        cmd: cmd.into(),
        detail: detail.into(),
    }
}

/// The network config the lab writes before any agent starts. Pure.
pub fn network_config(plan: &LabPlan) -> Result<NetworkConfig, LabError> {
    // Through serde, so fields the lab does not set keep the API's defaults.
    let config: NetworkConfig = serde_json::from_value(serde_json::json!({
        "clusterCIDR": CLUSTER_CIDR,
        "blockSize": plan.store.block_size,
        "leaseTTLSeconds": plan.store.lease_ttl_seconds,
        "masquerade": true,
        "backend": plan.backend_json(),
        "podWiring": plan.pod_wiring,
    }))
    .map_err(|e| cmd_err("build the lab's network config", e.to_string()))?;
    config
        .validate()
        .map_err(|e| cmd_err("check the lab's network config", e.to_string()))?;
    Ok(config)
}

/// The store config the lab itself uses (the same store the agents use).
pub fn store_config(plan: &LabPlan) -> StoreConfig {
    match plan.store.kind {
        StoreKind::Embedded => StoreConfig::Embedded {
            dir: plan.store.dir.clone().expect("embedded plans name a dir"),
        },
        StoreKind::Static => StoreConfig::Static {
            file: plan
                .store
                .static_file
                .clone()
                .expect("static plans name a file"),
        },
        StoreKind::Etcd => {
            let e = plan.store.etcd.as_ref().expect("etcd plans name a member");
            let mut c = twill_store::etcd::EtcdConfig::new(vec![e.client_url.clone()]);
            c.timeout = Duration::from_secs(2);
            StoreConfig::Etcd(c)
        }
    }
}

/// Runs `f` with the lab's store open, inside the namespace that reaches it (the store
/// host for etcd; the caller's own for the embedded store, a folder).
pub fn with_store<T: Send>(
    plan: &LabPlan,
    f: impl FnOnce(&dyn Store) -> Result<T, String> + Send,
) -> Result<T, String> {
    let cfg = store_config(plan);
    let body = move || {
        let store = twill_store::open(&cfg).map_err(|e| e.to_string())?;
        f(store.as_ref())
    };
    match &plan.store.etcd {
        None => body(),
        Some(e) => {
            let ns = probe::open_netns(&e.netns).map_err(|e| e.to_string())?;
            twill_netlink::run_in(&ns, body).map_err(|e| e.to_string())?
        }
    }
}

/// The static store's file for the lab's nodes: the network config, and per node its
/// underlay IP and one /24 (10.244.<i>.0/24). Pure.
pub fn static_file(plan: &LabPlan) -> Result<serde_json::Value, LabError> {
    let config = network_config(plan)?;
    let nodes: Vec<serde_json::Value> = plan
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.short,
                "address": n.address.addr().to_string(),
                "blocks": [plan.static_block(n.index).to_string()],
            })
        })
        .collect();
    Ok(serde_json::json!({"config": config, "nodes": nodes}))
}

/// (Re)writes the static file from the plan, atomically: the agents re-read it on change.
pub fn write_static_file(plan: &LabPlan) -> Result<(), LabError> {
    let Some(path) = &plan.store.static_file else {
        return Ok(());
    };
    let text = serde_json::to_vec_pretty(&static_file(plan)?).expect("JSON serializes");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| cmd_err(format!("write {}", path.display()), e.to_string()))
}

/// Writes the network config into the store (for the static store: the whole file).
pub fn write_network_config(plan: &LabPlan) -> Result<NetworkConfig, LabError> {
    let config = network_config(plan)?;
    if plan.store.kind == StoreKind::Static {
        write_static_file(plan)?;
        return Ok(config);
    }
    let value = serde_json::to_vec(&config).expect("a config serializes");
    with_store(plan, |store| {
        store
            .put(&format!("{PREFIX}{KEY_CONFIG}"), &value, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .map_err(|e| cmd_err("write the network config into the store", e))?;
    Ok(config)
}

/// Writes the BGP resources (BGPConfiguration, BGPPeers, every node's Node resource) into
/// the store; nothing for a lab without bgp. Returns the keys written.
pub fn write_bgp_resources(plan: &LabPlan) -> Result<Vec<String>, LabError> {
    let Some(config) = routing::bgp_configuration(plan) else {
        return Ok(Vec::new());
    };
    let mut kvs: Vec<(String, Vec<u8>)> = vec![(
        KEY_BGP_CONFIG.to_string(),
        serde_json::to_vec(&config).expect("a BGPConfiguration serializes"),
    )];
    for (name, peer) in routing::bgp_peers(plan) {
        kvs.push((
            format!("{PREFIX_BGP_PEERS}{name}"),
            serde_json::to_vec(&peer).expect("a BGPPeer serializes"),
        ));
    }
    for node in &plan.nodes {
        kvs.extend(node_spec_kv(plan, node));
    }
    put_all(plan, &kvs)?;
    Ok(kvs.into_iter().map(|(k, _)| k).collect())
}

/// Writes the plan's namespaces (`namespaces/<name>`, [`twill_api::policy::Namespace`]
/// with their labels) into the store. Returns the keys written.
pub fn write_namespaces(plan: &LabPlan) -> Result<Vec<String>, LabError> {
    let kvs: Vec<(String, Vec<u8>)> = plan
        .namespaces
        .iter()
        .map(|(name, labels)| {
            let ns = twill_api::policy::Namespace {
                labels: labels.clone(),
            };
            (
                twill_api::policy::namespace_key(name),
                serde_json::to_vec(&ns).expect("a Namespace serializes"),
            )
        })
        .collect();
    put_all(plan, &kvs)?;
    Ok(kvs.into_iter().map(|(k, _)| k).collect())
}

/// The Node resource of one node (`add-node` writes it before the agent starts).
pub fn write_node_spec(plan: &LabPlan, node: &NodePlan) -> Result<(), LabError> {
    put_all(
        plan,
        &node_spec_kv(plan, node).into_iter().collect::<Vec<_>>(),
    )
}

fn node_spec_kv(plan: &LabPlan, node: &NodePlan) -> Option<(String, Vec<u8>)> {
    let spec = routing::node_spec(plan, node)?;
    Some((
        format!("{PREFIX_NODECONFIGS}{}", node.short),
        serde_json::to_vec(&spec).expect("a NodeSpec serializes"),
    ))
}

fn put_all(plan: &LabPlan, kvs: &[(String, Vec<u8>)]) -> Result<(), LabError> {
    if kvs.is_empty() {
        return Ok(());
    }
    with_store(plan, |store| {
        for (k, v) in kvs {
            store
                .put(&format!("{PREFIX}{k}"), v, None)
                .map_err(|e| format!("{k}: {e}"))?;
        }
        Ok(())
    })
    .map_err(|e| cmd_err("write the lab's resources into the store", e))
}

/// How long the router's daemon may take to create its socket.
pub const ROUTER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the router's configuration and starts its daemons in the router namespace, in
/// order (FRR: zebra first, until its API socket exists). Returns their records, to be
/// stopped by PID in reverse. On failure the ones already started are stopped.
pub fn start_router(plan: &LabPlan) -> Result<Vec<ProcRecord>, LabError> {
    let Some(d) = &plan.router.daemon else {
        return Ok(Vec::new());
    };
    let what = format!("start the router's {}", d.kind);
    std::fs::create_dir_all(&d.dir)
        .map_err(|e| cmd_err(&what, format!("create {}: {e}", d.dir.display())))?;
    write_router_config(plan)?;
    if d.kind == crate::plan::ExternalRouter::Frr {
        // FRR drops to user frr: its pid, log and vty files live in the folder.
        run_checked(
            Command::new("chown").args(["-R", "frr:frr"]).arg(&d.dir),
            &what,
        )?;
    }
    let mut started: Vec<ProcRecord> = Vec::new();
    let stop_all = |started: &[ProcRecord]| {
        for r in started.iter().rev() {
            let _ = stop(r, STOP_GRACE);
        }
    };
    for c in routing::router_daemons(d) {
        let bin = find_program(&c.bin).ok_or_else(|| {
            stop_all(&started);
            cmd_err(
                &what,
                format!(
                    "{} is not installed: `apt-get install {}` (scripts/install-deps.sh has it)",
                    c.bin.display(),
                    match d.kind {
                        crate::plan::ExternalRouter::Bird => "bird2",
                        crate::plan::ExternalRouter::Frr => "frr",
                    }
                ),
            )
        })?;
        let log = d.dir.join(format!("{}.out", c.role));
        let rec = match spawn(
            &format!("rt-{}", c.role),
            &plan.router.netns,
            &bin,
            &c.args,
            &log,
        ) {
            Ok(r) => r,
            Err(e) => {
                stop_all(&started);
                return Err(e);
            }
        };
        started.push(rec.clone());
        let ready = c.ready_file.clone().unwrap_or_else(|| d.control());
        let end = Instant::now() + ROUTER_READY_TIMEOUT;
        while !ready.exists() {
            let dead = rec.pid.is_some_and(|p| !is_alive(p));
            if dead || Instant::now() >= end {
                stop_all(&started);
                return Err(cmd_err(
                    format!("{} in {}", c.role, plan.router.netns),
                    format!(
                        "{} after {}s without {}; its output {}:
{}
its log {}:
{}",
                        if dead { "exited" } else { "still starting" },
                        ROUTER_READY_TIMEOUT.as_secs(),
                        ready.display(),
                        log.display(),
                        log_tail(&log),
                        d.log_file().display(),
                        log_tail(&d.log_file())
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(started)
}

/// (Re)writes the router's configuration file from the plan.
pub fn write_router_config(plan: &LabPlan) -> Result<(), LabError> {
    let Some(d) = &plan.router.daemon else {
        return Ok(());
    };
    let path = d.config_file();
    std::fs::write(&path, routing::router_config(plan, d))
        .map_err(|e| cmd_err(format!("write {}", path.display()), e.to_string()))
}

/// A node joining or leaving a running lab, as the router must learn of it.
#[derive(Clone, Copy, Debug)]
pub enum NodeChange<'a> {
    Joined(&'a NodePlan),
    Left(&'a NodePlan),
}

/// Tells the running router about the plan's nodes after add-node or remove-node: BIRD
/// re-reads its file (`birdc configure`); FRR gets the neighbour added or removed through
/// vtysh (RIP needs nothing: it hears who is there).
pub fn reconfigure_router(plan: &LabPlan, change: NodeChange) -> Result<(), LabError> {
    let Some(d) = &plan.router.daemon else {
        return Ok(());
    };
    write_router_config(plan)?;
    match (d.kind, d.protocol) {
        (crate::plan::ExternalRouter::Bird, _) => {
            let out = router_query(plan, &["configure"])?;
            if !out.contains("Reconfigured") && !out.contains("Reconfiguration in progress") {
                return Err(cmd_err("birdc configure", out));
            }
            Ok(())
        }
        (crate::plan::ExternalRouter::Frr, crate::plan::RoutingProtocol::Bgp) => {
            let cmds = match change {
                NodeChange::Joined(node) => {
                    routing::frr_add_neighbor_commands(plan, d, &node.short)
                        .expect("the added node is in the plan")
                }
                NodeChange::Left(node) => routing::frr_remove_neighbor_commands(plan, d, node),
            };
            let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
            router_query(plan, &refs).map(|_| ())
        }
        (crate::plan::ExternalRouter::Frr, crate::plan::RoutingProtocol::Rip) => Ok(()),
    }
}

/// Asks the router's daemon: `birdc -s SOCK ARGS...`, or `vtysh --vty_socket DIR -c A -c B`
/// (each arg one command). Runs inside the router namespace; returns stdout.
pub fn router_query(plan: &LabPlan, args: &[&str]) -> Result<String, LabError> {
    let d = plan.router.daemon.as_ref().ok_or_else(|| {
        cmd_err(
            "ask the router",
            format!(
                "lab {}'s router runs no routing daemon (use --external-router, or --backend bgp --segments 2)",
                plan.name
            ),
        )
    })?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &plan.router.netns]);
    match d.kind {
        crate::plan::ExternalRouter::Bird => {
            cmd.arg("birdc").arg("-s").arg(d.control()).args(args);
        }
        crate::plan::ExternalRouter::Frr => {
            cmd.arg("vtysh").arg("--vty_socket").arg(d.control());
            for a in args {
                cmd.args(["-c", a]);
            }
        }
    }
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| cmd_err(&shown, e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(cmd_err(
            shown,
            format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        ));
    }
    Ok(text)
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<(), LabError> {
    let out = cmd.output().map_err(|e| cmd_err(what, e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(cmd_err(
            what,
            format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }
}

/// `bin` itself if it is a path, else the first match on PATH.
pub fn find_program(bin: &Path) -> Option<std::path::PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// What every agent published about its routing sessions (`routingstatus/<node>`).
pub fn read_routing_status(
    plan: &LabPlan,
) -> Result<HashMap<String, twill_api::bgp::RoutingStatus>, String> {
    with_store(plan, |store| {
        let prefix = format!("{PREFIX}{}", twill_api::bgp::PREFIX_ROUTING_STATUS);
        let (kvs, _) = store.list(&prefix).map_err(|e| e.to_string())?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let name = kv.key.strip_prefix(&prefix)?.to_string();
                let st = serde_json::from_slice(&kv.value).ok()?;
                Some((name, st))
            })
            .collect())
    })
}

/// Every node the agents published (`nodes/<name>`), by name.
pub fn read_nodes(plan: &LabPlan) -> Result<HashMap<String, StoreNode>, String> {
    with_store(plan, |store| {
        let (kvs, _) = store
            .list(&format!("{PREFIX}{PREFIX_NODES}"))
            .map_err(|e| e.to_string())?;
        Ok(kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<StoreNode>(&kv.value).ok())
            .map(|n| (n.name.clone(), n))
            .collect())
    })
}

/// Starts `bin args` inside `netns`, detached: own process group (a terminal's Ctrl-C does
/// not reach it), stdin closed, output appended to `log`. `ip netns exec` execs the daemon,
/// so the PID is the daemon's own.
pub fn spawn(
    role: &str,
    netns: &str,
    bin: &Path,
    args: &[String],
    log: &Path,
) -> Result<ProcRecord, LabError> {
    spawn_with_env(role, netns, bin, args, log, &[])
}

/// [`spawn`] with extra environment variables (OVS's OVS_RUNDIR and friends).
pub fn spawn_with_env(
    role: &str,
    netns: &str,
    bin: &Path,
    args: &[String],
    log: &Path,
    env: &[(&str, String)],
) -> Result<ProcRecord, LabError> {
    use std::os::unix::process::CommandExt;
    let what = format!("start {} in {netns}", bin.display());
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| cmd_err(&what, format!("open {}: {e}", log.display())))?;
    let err = out.try_clone().map_err(|e| cmd_err(&what, e.to_string()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    // The caller's TWILL_* settings (a config file, a store) must not leak into the agent:
    // the lab passes every setting it means as a flag.
    for (k, _) in std::env::vars() {
        if k.starts_with("TWILL_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let child = cmd.spawn().map_err(|e| cmd_err(&what, e.to_string()))?;
    Ok(ProcRecord {
        role: role.into(),
        netns: netns.into(),
        bin: bin.to_path_buf(),
        args: args.to_vec(),
        log: log.to_path_buf(),
        pid: Some(child.id()),
    })
}

/// Whether `pid` exists and is not a zombie: nothing here reaps daemons the CLI left
/// behind, so a dead one may linger as a zombie.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    match state {
        // A leader that is a zombie while other threads of its group still run is a
        // process in exit_group(2): its sockets (say the agent's listening port) are
        // closed only when the last thread goes, so it is not gone yet.
        Some("Z") => std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| tasks.count() > 1)
            .unwrap_or(false),
        Some("X") | None => false,
        Some(_) => true,
    }
}

/// Whether `pid` is alive and still the program `bin` names (a recycled PID is not ours).
pub fn is_ours(pid: u32, bin: &Path) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let name = bin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        // `ip netns exec` execs the daemon; before that instant the cmdline still says `ip`,
        // and during the exec it reads empty.
        Ok(c) => {
            let argv = String::from_utf8_lossy(&c);
            argv.is_empty()
                || argv
                    .split('\0')
                    .next()
                    .is_some_and(|a0| a0.ends_with(&name))
                || argv.starts_with("ip\0netns\0exec\0")
        }
        Err(_) => false,
    }
}

/// Stops a recorded daemon: SIGTERM, then SIGKILL after `grace`. Returns a note when it had
/// to be killed. Only the recorded PID is signalled, and only if it is still that program.
pub fn stop(rec: &ProcRecord, grace: Duration) -> Option<String> {
    let pid = rec.pid?;
    if !is_ours(pid, &rec.bin) {
        return None;
    }
    // SAFETY: kill(2) on a PID this lab started and just checked; no memory is involved.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if !is_ours(pid, &rec.bin) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_ours(pid, &rec.bin) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        for _ in 0..100 {
            if !is_ours(pid, &rec.bin) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        return Some(format!(
            "{} (pid {pid}) ignored SIGTERM for {}s; killed",
            rec.role,
            grace.as_secs()
        ));
    }
    None
}

/// The last lines of a log, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

/// A plain HTTP/1.0 GET from inside `netns`: (status, body).
pub fn http_get(netns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let ns = probe::open_netns(netns).map_err(|e| e.to_string())?;
    twill_netlink::run_in(&ns, || -> Result<(u16, String), String> {
        let t = Duration::from_secs(2);
        let mut s = TcpStream::connect_timeout(&addr, t).map_err(|e| format!("{addr}: {e}"))?;
        s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
        parse_http(&raw).ok_or_else(|| format!("unreadable HTTP answer {raw:?}"))
    })
    .map_err(|e| e.to_string())?
}

/// Status code and body of an HTTP answer. Pure.
pub fn parse_http(raw: &str) -> Option<(u16, String)> {
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A counter or gauge without labels from a Prometheus text page. Pure.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn agent_addr() -> SocketAddr {
    AGENT_LISTEN.parse().expect("a valid constant")
}

/// Waits until the agent answers 200 on /readyz; fails early if it exits, else after the
/// timeout, with its last readyz reason and log tail.
pub fn wait_agent_ready(rec: &ProcRecord, timeout: Duration) -> Result<(), LabError> {
    let end = Instant::now() + timeout;
    loop {
        let last = match http_get(&rec.netns, agent_addr(), "/readyz") {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => format!("/readyz {code}: {}", body.trim()),
            Err(e) => format!("/readyz unreachable: {e}"),
        };
        let exited = rec.pid.is_some_and(|p| !is_alive(p));
        if exited || Instant::now() >= end {
            let why = if exited {
                "exited".to_string()
            } else {
                format!("not ready after {}s", timeout.as_secs())
            };
            return Err(cmd_err(
                format!("twilld for node {} in {}", rec.role, rec.netns),
                format!(
                    "{why}; last {last}; log {}:\n{}",
                    rec.log.display(),
                    log_tail(&rec.log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for etcd's /health (from inside the store host).
pub fn wait_etcd_healthy(plan: &LabPlan, rec: &ProcRecord) -> Result<(), LabError> {
    let e = plan.store.etcd.as_ref().expect("an etcd lab");
    let addr = SocketAddr::from((e.address.addr(), crate::plan::ETCD_CLIENT_PORT));
    let end = Instant::now() + ETCD_READY_TIMEOUT;
    loop {
        let last = match http_get(&e.netns, addr, "/health") {
            Ok((200, body)) if body.contains("true") => return Ok(()),
            Ok((code, body)) => format!("/health {code}: {}", body.trim()),
            Err(err) => format!("/health unreachable: {err}"),
        };
        let exited = rec.pid.is_some_and(|p| !is_alive(p));
        if exited || Instant::now() >= end {
            return Err(cmd_err(
                format!("etcd in {}", e.netns),
                format!(
                    "{}; last {last}; log {}:\n{}",
                    if exited {
                        "exited"
                    } else {
                        "not healthy in time"
                    },
                    rec.log.display(),
                    log_tail(&rec.log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, LabSpec};

    #[test]
    fn the_network_config_is_the_labs() {
        let p = plan(&LabSpec {
            block_size: 26,
            ..LabSpec::default()
        })
        .unwrap();
        let c = network_config(&p).unwrap();
        assert_eq!(c.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(c.block_size, 26);
        assert_eq!(c.lease_ttl_seconds, 60);
        assert!(c.masquerade);
        assert_eq!(c.backend, twill_api::resources::BackendSpec::None);
        assert_eq!(c.pod_wiring, crate::plan::PodWiring::Bridge);
        let l3 = plan(&LabSpec {
            pod_wiring: crate::plan::PodWiring::L3,
            ..LabSpec::default()
        })
        .unwrap();
        assert_eq!(
            network_config(&l3).unwrap().pod_wiring,
            crate::plan::PodWiring::L3
        );
        assert_eq!(static_file(&l3).unwrap()["config"]["podWiring"], "l3");
    }

    #[test]
    fn the_static_file_lists_every_node_with_one_block() {
        use crate::plan::{BackendKind, StoreKind};
        let p = plan(&LabSpec {
            nodes: 3,
            segments: 2,
            store: StoreKind::Static,
            backend: BackendKind::Static,
            ..LabSpec::default()
        })
        .unwrap();
        let v = static_file(&p).unwrap();
        assert_eq!(v["config"]["backend"], "static");
        assert_eq!(v["config"]["blockSize"], 24);
        assert_eq!(
            v["nodes"],
            serde_json::json!([
                {"name": "n1", "address": "192.0.2.11", "blocks": ["10.244.1.0/24"]},
                {"name": "n2", "address": "198.51.100.12", "blocks": ["10.244.2.0/24"]},
                {"name": "n3", "address": "192.0.2.13", "blocks": ["10.244.3.0/24"]}
            ])
        );
        let vx = plan(&LabSpec {
            backend: BackendKind::Vxlan,
            direct_routing: true,
            ..LabSpec::default()
        })
        .unwrap();
        let c = network_config(&vx).unwrap();
        assert!(c.backend.direct_routing() && c.backend.kind() == BackendKind::Vxlan);
    }

    #[test]
    fn http_and_metrics_are_read() {
        let raw = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nno\n";
        assert_eq!(parse_http(raw), Some((503, "no\n".into())));
        assert_eq!(parse_http("garbage"), None);
        let page =
            "# HELP twill_lease_renewals_total x\n# TYPE twill_lease_renewals_total counter\n\
                    twill_lease_renewals_total 7\ntwill_lease_renewals_total_x 9\n\
                    twill_block_addresses{state=\"used\"} 3\n";
        assert_eq!(metric(page, "twill_lease_renewals_total"), Some(7.0));
        assert_eq!(metric(page, "twill_blocks_held"), None);
    }

    #[test]
    fn a_dead_or_foreign_pid_is_not_ours() {
        // PID 1 is never a twilld here; an absurd PID does not exist.
        assert!(!is_ours(1, Path::new("/x/twilld")));
        assert!(!is_ours(u32::MAX - 1, Path::new("/x/twilld")));
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        assert!(is_ours(me, &exe));
    }
}
