//! `twill lab demo --backend bgp`: the walk-through's Calico story (step 10), built and
//! proven: every node a router with its own BGP speaker, the resources that say who peers
//! with whom, the sessions, the routes they carry (and who learned which from whom), the
//! router outside the cluster, and the typical fault: a node whose IP autodetection
//! (`first-found`) picked the wrong interface, seen in `twill node status` as peers stuck in
//! Active/Connect, and fixed by setting the node's address explicitly.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use twill_lab::plan::{self, LabPlan, LabSpec, PodWiring};
use twill_lab::{build, check, daemons, routing, status, trace};

use super::progress;

/// How long the demo waits for sessions to go down after the fault, and up after the fix.
const SESSION_WAIT: Duration = Duration::from_secs(30);

fn indent(t: &str) -> String {
    t.lines().map(|l| format!("    {l}\n")).collect()
}

/// Prints `$ twill lab exec ...` and runs it inside the member, output straight through.
fn show(state: &twill_lab::LabState, target: &str, cmd: &[&str]) {
    println!(
        "  $ twill lab exec --name {} {target} -- {}",
        state.plan.name,
        cmd.join(" ")
    );
    let exe = std::env::current_exe().ok();
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    match build::exec(state, target, &cmd, exe.as_deref().and_then(Path::parent)) {
        Ok(0) => {}
        Ok(code) => println!("  (exit code {code})"),
        Err(e) => println!("  (could not run it: {e})"),
    }
    println!();
}

pub fn demo(spec: &LabSpec, p: &LabPlan, cni_bin: &Path, twilld_bin: &Path) -> anyhow::Result<i32> {
    let name = spec.name.as_str();
    let bgp = p.bgp.as_ref().expect("a bgp plan");
    anyhow::ensure!(
        p.nodes.len() >= 2,
        "lab demo --backend bgp needs --nodes 2 or more: sessions need a peer, and the fault is seen by the other nodes"
    );
    println!(
        "== 1. Calico's model: every node is a router\n\
         No overlay, no bridge between nodes, no NAT between pods. Each node's agent (twilld)\n\
         embeds a BGP speaker: it announces the node's pod blocks and installs what it learns\n\
         into the node's kernel (`proto bgp`). The lab: {} node(s) on {} segment(s) ({}), the\n\
         router {} between the segments and the outside host {}.\n",
        p.nodes.len(),
        p.segments.len(),
        p.segments
            .iter()
            .map(|s| s.subnet.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        p.router.netns,
        p.outside.netns,
    );
    let router_text = match &p.router.daemon {
        Some(d) => format!(
            "The router runs {}: it learns every pod block, installs it in its kernel and\n\
             passes it on between the segments (a ToR switch's job), so pods across segments\n\
             reach each other with no tunnel, and the outside host reaches pods by their IP.",
            routing::describe_router(d)
        ),
        None => {
            "The router only forwards: it knows no pod route, so the outside host reaches pods\n\
                 only through host ports (add --external-router bird|frr to make it a BGP peer)."
                .to_string()
        }
    };
    let mesh_text = if bgp.route_reflectors > 0 {
        format!(
            "The node-to-node mesh is off: the first {} node(s) are route reflectors (cluster ID\n\
             {}); every node peers with them only, and they reflect each node's routes to the\n\
             others: n sessions instead of n(n-1)/2.",
            bgp.route_reflectors,
            plan::RR_CLUSTER_ID
        )
    } else {
        format!(
            "The node-to-node mesh (Calico's default): every node peers with every other, iBGP\n\
             in AS {}; of each pair, the node with the lower IP connects, the other listens.",
            plan::NODE_AS
        )
    };
    println!("{mesh_text}\n{router_text}\n");
    println!(
        "== 2. The resources say who peers with whom\n\
         Before any agent starts, the lab writes calicoctl-style resources into the store (the\n\
         same keys `twill apply -f` writes; `twill get bgpconfig|bgppeers` shows them):"
    );
    if let Some(c) = routing::bgp_configuration(p) {
        println!("  BGPConfiguration default: {}", serde_json::to_string(&c)?);
    }
    for n in &p.nodes {
        if let Some(s) = routing::node_spec(p, n) {
            println!("  Node {}: {}", n.short, serde_json::to_string(&s)?);
        }
    }
    for (peer, spec) in routing::bgp_peers(p) {
        println!("  BGPPeer {peer}: {}", serde_json::to_string(&spec)?);
    }
    if bgp.as_per_node {
        println!("  (--as-per-node: every node has its own AS, so node-to-node sessions are eBGP)");
    }
    println!("\nbuilding lab {name} ...");
    let mut state = match build::up(spec, cni_bin, twilld_bin, &progress) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("twill: error: {e}");
            return Ok(1);
        }
    };
    let outcome = body(&mut state);
    println!(
        "\n== 9. Cleaning up\nThe agents stop (SIGTERM: each closes its sessions with a Cease), the router's\n\
         daemons stop by PID, DEL for every pod, then the namespaces."
    );
    super::demo_exit(name, outcome, build::down(name, &progress))
}

fn body(state: &mut twill_lab::LabState) -> anyhow::Result<bool> {
    let p = state.plan.clone();
    let first = &p.nodes[0];
    let last = p.nodes.last().expect("a lab has nodes").clone();
    let settled = wait_sessions(state, SESSION_WAIT, |m| all_established(m, &p));
    if !settled {
        println!(
            "  (not every session was Established within {}s)",
            SESSION_WAIT.as_secs()
        );
    }
    println!(
        "\n== 3. The sessions\n\
         Each agent publishes its sessions (routingstatus/<node>); `twill node status` prints\n\
         them as `calicoctl node status` does:"
    );
    show(state, &first.short, &["twill", "node", "status"]);
    let sock = p.bgp_socket(first);
    println!(
        "  The speaker inside {}'s twilld answers on {}:",
        first.short,
        sock.display()
    );
    show(
        state,
        &first.short,
        &[
            "twill",
            "bgp",
            "neighbors",
            "--socket",
            &sock.display().to_string(),
        ],
    );
    let routes = build::ip(&["-n", &first.netns, "route", "show"])?;
    println!(
        "== 4. The routes BGP carries\n\
         `ip -n {} route`: its own block as a blackhole (proto 84, the agent's: what it\n\
         announces), {} and the other nodes' blocks learned over BGP (proto bgp),\n\
         each via the node that announced it (or via the router, across segments):\n{}",
        first.netns,
        if p.pod_wiring == PodWiring::L3 {
            "a /32 per local pod to its veth,"
        } else {
            "its pods on the bridge,"
        },
        indent(&routes)
    );
    let far = p
        .nodes
        .iter()
        .rev()
        .find(|n| n.segment != first.segment)
        .unwrap_or(&last);
    let (src, dst) = (
        first.pods.first().map(|x| x.short.clone()),
        far.pods.first().map(|x| x.short.clone()),
    );
    if let (Some(src), Some(dst)) = (src, dst) {
        println!(
            "== 5. Who learned which route from whom\n\
             `twill lab trace {src} {dst}`: the packet's path, and for every router on it, the route\n\
             it took and where that route came from:"
        );
        let req = trace::TraceRequest {
            src,
            dst,
            proto: trace::path::TraceProto::Icmp,
            port: None,
        };
        match trace::run(state, &req) {
            Ok(r) => println!("{}", indent(&trace::path::render(&r))),
            Err(e) => println!("  (trace failed: {e})\n"),
        }
    }
    if p.router.daemon.is_some() {
        let rt = build::ip(&["-n", &p.router.netns, "route", "show"])?;
        println!(
            "== 6. The router outside the cluster\n\
             `ip -n {} route`: the pod blocks its daemon learned, each via its node:\n{}",
            p.router.netns,
            indent(&rt)
        );
        let ask: &[&str] = match p.router.daemon.as_ref().map(|d| d.kind) {
            Some(plan::ExternalRouter::Frr) => &["show ip bgp"],
            _ => &["show", "protocols"],
        };
        match daemons::router_query(&p, ask) {
            Ok(t) => println!("  its own view ({}):\n{}", ask.join(" "), indent(&t)),
            Err(e) => println!("  ({e})"),
        }
    } else {
        println!("== 6. (no routing daemon in the router: nothing outside the cluster learns pod routes)\n");
    }

    // The fault.
    println!(
        "== 7. The typical fault: first-found picks the wrong interface\n\
         Node {n} gets a second NIC, {ifn} with {addr}, which the kernel lists before eth0, and its\n\
         agent restarts with Calico's default detection, `--ip-autodetection first-found`: the\n\
         first address of the first interface that is not skipped. It now tells the store\n\
         that its IP is {wrong}; its peers try to reach it there and never can.",
        n = last.short,
        ifn = build::FAULT_IFNAME,
        addr = build::FAULT_ADDRESS,
        wrong = build::FAULT_ADDRESS.split('/').next().unwrap_or_default(),
    );
    let pid = build::inject_first_found_fault(state, &last.short)?;
    println!(
        "  {}: twilld restarted (pid {pid}) with first-found",
        last.short
    );
    let wrong: std::net::Ipv4Addr = build::FAULT_ADDRESS
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .context("the fault address")?;
    let stuck = wait_sessions(state, SESSION_WAIT, |m| {
        p.nodes
            .iter()
            .filter(|n| n.short != last.short)
            .any(|n| routing::session(m, &n.short, wrong).is_some_and(|s| s.state != "Established"))
    });
    let st = status::status(state)?;
    if let Some(n) = st.nodes.iter().find(|n| n.name == last.short) {
        println!(
            "  `twill lab status`: {} has node IP {} ({}: {})",
            n.name,
            n.node_ip.map_or("-".into(), |a| a.to_string()),
            n.ip_method.as_deref().unwrap_or("-"),
            n.ip_reason.as_deref().unwrap_or("-")
        );
    }
    let peer_of_last = p
        .nodes
        .iter()
        .find(|n| n.short != last.short)
        .unwrap_or(first);
    println!(
        "  The sessions with it stay in Connect/Active ({}):",
        if stuck {
            "seen in the published status"
        } else {
            "NOT seen within the wait: see below"
        }
    );
    show(state, &peer_of_last.short, &["twill", "node", "status"]);
    let down_now = daemons::read_routing_status(&p)
        .map(|m| routing::sessions_down(&m))
        .unwrap_or_default();
    for d in &down_now {
        println!("  not established: {d}");
    }
    let fix_file = p.state_dir.join(format!("node-{}.yaml", last.short));
    let labels = routing::node_spec(&p, &last)
        .map(|s| s.labels)
        .unwrap_or_default();
    let mut yaml = format!(
        "apiVersion: twill/v1\nkind: Node\nmetadata:\n  name: {}\n",
        last.short
    );
    if !labels.is_empty() {
        yaml.push_str("  labels:\n");
        for (k, v) in &labels {
            yaml.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    yaml.push_str(&format!("spec:\n  ipv4Address: {}\n", last.address));
    if let Some(b) = routing::node_spec(&p, &last).and_then(|s| s.bgp) {
        yaml.push_str("  bgp:\n");
        if let Some(a) = b.as_number {
            yaml.push_str(&format!("    asNumber: {a}\n"));
        }
        if let Some(c) = b.route_reflector_cluster_id {
            yaml.push_str(&format!("    routeReflectorClusterID: {c}\n"));
        }
    }
    std::fs::write(&fix_file, &yaml).with_context(|| format!("write {}", fix_file.display()))?;
    println!(
        "\n== 8. The fix: set the node's address explicitly\n\
         Calico's fix: the Node's spec.bgp.ipv4Address (here spec.ipv4Address), or a better\n\
         method (`interface=eth0`, `can-reach=<peer>`). The Node resource, with its labels (apply\n\
         replaces the whole resource), in {}:\n{}",
        fix_file.display(),
        indent(&yaml)
    );
    show(
        state,
        &first.short,
        &["twill", "apply", "-f", &fix_file.display().to_string()],
    );
    let right = last.address.addr();
    let up = wait_sessions(state, SESSION_WAIT, |m| {
        all_established(m, &p)
            && p.nodes.iter().filter(|n| n.short != last.short).all(|n| {
                routing::session(m, &n.short, right).is_some_and(|s| s.state == "Established")
            })
    });
    println!(
        "  {}'s agent sees the change in the store, takes {} ('override'), and its peers' sessions\n  \
         come up{}:",
        last.short,
        right,
        if up { "" } else { " (NOT within the wait)" }
    );
    show(state, &peer_of_last.short, &["twill", "node", "status"]);
    let peered = build::wait_peering(state, &progress).is_ok();
    println!("== Proving it: every check sends real packets between the namespaces");
    let report = check::run(state)?;
    print!("{}", check::render(&report));
    if !stuck {
        eprintln!(
            "twill: error: the fault did not show: no peer saw its session with {wrong} stuck"
        );
    }
    if !up || !peered {
        eprintln!(
            "twill: error: after the fix, the sessions with {} did not all come up",
            last.short
        );
    }
    Ok(report.passed && stuck && up && peered)
}

/// Every node published its sessions, and every one is Established.
fn all_established(
    m: &std::collections::HashMap<String, twill_api::bgp::RoutingStatus>,
    p: &LabPlan,
) -> bool {
    p.nodes
        .iter()
        .all(|n| m.get(&n.short).is_some_and(|s| !s.peers.is_empty()))
        && routing::sessions_down(m).is_empty()
}

/// Polls the published routing status until `done` holds or `timeout` passes.
fn wait_sessions(
    state: &twill_lab::LabState,
    timeout: Duration,
    done: impl Fn(&std::collections::HashMap<String, twill_api::bgp::RoutingStatus>) -> bool,
) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if daemons::read_routing_status(&state.plan).is_ok_and(|m| done(&m)) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
