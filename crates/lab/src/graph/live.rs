//! The I/O edge of `graph` and `trace`: reads the running lab's topology from the kernel
//! (`ip -j`, `bridge -j` in every namespace state.json names) and runs Graphviz.

use std::io::Write;
use std::process::{Command, Stdio};

use super::topo::{self, Datapath, DatapathInfo, DatapathPeer, Namespace, Role, Topology};
use crate::build::{self, LabError};
use crate::plan::netns_prefix;
use crate::state::LabState;

fn parse_err(e: topo::ParseError) -> LabError {
    LabError::Command {
        cmd: e.what.clone(),
        detail: e.to_string(),
    }
}

/// Every namespace of the lab with its role and short name, from the plan.
pub fn members(state: &LabState) -> Vec<(String, String, Role)> {
    let p = &state.plan;
    let prefix = netns_prefix(&p.name);
    let short = |ns: &str| ns.strip_prefix(&prefix).unwrap_or(ns).to_string();
    let mut v: Vec<(String, String, Role)> = p
        .segments
        .iter()
        .map(|s| (s.netns.clone(), short(&s.netns), Role::Segment))
        .collect();
    v.push((p.router.netns.clone(), "rt".into(), Role::Router));
    v.push((p.outside.netns.clone(), "out".into(), Role::Outside));
    if let Some(e) = &p.store.etcd {
        v.push((e.netns.clone(), "st".into(), Role::Store));
    }
    for n in &p.nodes {
        v.push((n.netns.clone(), n.short.clone(), Role::Node));
    }
    for pod in p.pods() {
        v.push((pod.netns.clone(), pod.short.clone(), Role::Pod));
    }
    v
}

/// Reads links, addresses, veth peers and VXLAN entries of every lab namespace that exists.
pub fn read_topology(state: &LabState) -> Result<Topology, LabError> {
    let mut t = Topology {
        lab: state.plan.name.clone(),
        namespaces: Vec::new(),
    };
    for (netns, member, role) in members(state) {
        if !build::netns_exists(&netns) {
            continue;
        }
        let nsids = topo::parse_nsids(&build::ip(&["-j", "-n", &netns, "netns", "list-id"])?)
            .map_err(parse_err)?;
        let text = build::ip(&["-j", "-d", "-n", &netns, "addr", "show"])?;
        let mut links = topo::parse_links(&netns, &text, &nsids).map_err(parse_err)?;
        for l in links.iter_mut().filter(|l| l.vxlan.is_some()) {
            let neigh = build::ip(&["-j", "-n", &netns, "neigh", "show", "dev", &l.name])?;
            l.neighbours = topo::parse_neighbours(&neigh).map_err(parse_err)?;
            l.fdb = topo::parse_fdb(&bridge(&[
                "-j", "-n", &netns, "fdb", "show", "dev", &l.name,
            ])?)
            .map_err(parse_err)?;
        }
        let datapath = (role == Role::Node && links.iter().any(|l| l.kind == "tun"))
            .then(|| {
                let node = state.plan.nodes.iter().find(|n| n.netns == netns)?;
                Some(read_datapath(
                    &node
                        .agent_state_dir
                        .join(twill_datapath::client::SOCKET_NAME),
                ))
            })
            .flatten();
        t.namespaces.push(Namespace {
            name: netns,
            member,
            role,
            links,
            datapath,
        });
    }
    Ok(t)
}

/// How long a node's datapath may take to answer (it answers at once when it runs).
const DATAPATH_ANSWER: std::time::Duration = std::time::Duration::from_millis(500);

/// Asks the datapath at `socket` who it is and what table it forwards with (a second
/// control client beside twilld's; the fds its Hello hands over are closed at once).
pub fn read_datapath(socket: &std::path::Path) -> Datapath {
    use twill_datapath::client::Client;
    let unreachable = |error: String| Datapath::Unreachable {
        socket: socket.display().to_string(),
        error,
    };
    let (client, hello, fds) = match Client::connect(socket, DATAPATH_ANSWER) {
        Ok(c) => c,
        Err(e) => return unreachable(e.to_string()),
    };
    drop(fds);
    match client.get_table() {
        Ok((generation, local, peers)) => Datapath::Up(DatapathInfo {
            socket: socket.display().to_string(),
            pid: hello.pid,
            tun: hello.tun,
            queues: hello.queues,
            generation,
            node_ip: local.node_ip,
            blocks: local.blocks,
            peers: peers
                .into_iter()
                .map(|p| DatapathPeer {
                    node_ip: p.node_ip,
                    port: p.port,
                    blocks: p.blocks,
                })
                .collect(),
        }),
        Err(e) => unreachable(format!(
            "{e} (a datapath older than GetTable: restart it with the lab's twilld)"
        )),
    }
}

/// What a node's datapath counted, for the trace's before/after (None: it did not answer).
pub fn datapath_stats(socket: &str) -> Option<twill_datapath::stats::Stats> {
    let (c, _, fds) =
        twill_datapath::client::Client::connect(socket.as_ref(), DATAPATH_ANSWER).ok()?;
    drop(fds);
    c.stats().ok()
}

fn bridge(args: &[&str]) -> Result<String, LabError> {
    let cmd = format!("bridge {}", args.join(" "));
    let out = Command::new("bridge")
        .args(args)
        .output()
        .map_err(|source| LabError::Io {
            what: format!("run `{cmd}` (is iproute2 installed?)"),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Renders DOT with Graphviz (`dot -T<format>`).
pub fn render_with_dot(dot: &str, format: &str) -> Result<Vec<u8>, LabError> {
    let mut child = Command::new("dot")
        .arg(format!("-T{format}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                LabError::Command {
                    cmd: format!("dot -T{format}"),
                    detail: "Graphviz is not installed (no `dot` on PATH): install it \
                             (`apt-get install graphviz`, or scripts/install-deps.sh), or use -o dot"
                        .into(),
                }
            } else {
                LabError::Io {
                    what: "run dot".into(),
                    source,
                }
            }
        })?;
    // dot reads all of its input before writing: write, close, then collect.
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(dot.as_bytes())
        .map_err(|source| LabError::Io {
            what: "write to dot".into(),
            source,
        })?;
    drop(stdin);
    let out = child.wait_with_output().map_err(|source| LabError::Io {
        what: "wait for dot".into(),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("dot -T{format}"),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}
