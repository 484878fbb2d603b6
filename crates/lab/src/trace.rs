//! `twill lab trace SRC DST`: the I/O edge. Computes the path from the kernel's answers
//! ([`path::walk`] with `ip route get` in every namespace, and the udp backend's datapaths'
//! tables), starts `tcpdump -w -` on every device of it, reads the datapaths' counters, sends
//! one probe, stops the captures, reads the counters again and conntrack, and assembles the
//! report ([`path`]); frames are decoded by [`pcap`].

pub mod learned;
pub mod path;
pub mod pcap;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::build::{self, LabError};
use crate::graph::live::read_topology;
use crate::graph::topo::{Role, Topology};
use crate::plan::{CONTAINER_PORT_TCP, CONTAINER_PORT_UDP, HOST_PORT_TCP, HOST_PORT_UDP};
use crate::probe::open_netns;
use crate::state::LabState;
use path::{Endpoint, PathPlan, RouteAnswer, Router, TraceProto, TraceReport};

/// How long a capture may take to attach before the trace gives up on it.
const CAPTURE_READY: Duration = Duration::from_secs(5);
/// How long the probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time for the last frames to reach the captures after the probe.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRequest {
    pub src: String,
    pub dst: String,
    pub proto: TraceProto,
    /// TCP/UDP destination port; None: the host port for a node, else the container port.
    pub port: Option<u16>,
}

/// `ip -j -n NS route get` as the walker's oracle; `ip -j -n NS route show` (read once
/// per namespace) for the entry each hop took.
#[derive(Default)]
struct IpRouter {
    tables: HashMap<String, Vec<crate::routes::RouteEntry>>,
    /// `--backend ovs`: every node's OVS (database and flows), by namespace.
    ovs: HashMap<String, crate::ovs::NodeOvs>,
}

impl Router for IpRouter {
    fn route_get(
        &mut self,
        netns: &str,
        dst: Ipv4Addr,
        from: Option<Ipv4Addr>,
        iif: Option<&str>,
    ) -> Result<RouteAnswer, String> {
        let dst = dst.to_string();
        let from = from.map(|f| f.to_string());
        let mut args = vec!["-j", "-n", netns, "route", "get", dst.as_str()];
        if let Some(f) = &from {
            args.extend(["from", f.as_str()]);
        }
        if let Some(i) = iif {
            args.extend(["iif", i]);
        }
        let text = build::ip(&args).map_err(|e| e.to_string())?;
        path::parse_route_get(&text)
    }

    fn route_entry(&mut self, netns: &str, dst: Ipv4Addr) -> Option<crate::routes::RouteEntry> {
        let table = self.tables.entry(netns.to_string()).or_insert_with(|| {
            build::ip(&["-j", "-n", netns, "route", "show"])
                .map(|t| crate::routes::parse_routes(&t))
                .unwrap_or_default()
        });
        crate::routes::lookup(table, dst).cloned()
    }

    fn ovs_tunnel(&mut self, netns: &str, dev: &str, dst: Ipv4Addr) -> Option<path::OvsJump> {
        if dev != crate::ovs::HOST_PORT
            && self.ovs_master(netns, crate::ovs::HOST_PORT).as_deref() == Some(dev)
        {
            // Bridge wiring: the route goes into the pods' bridge, whose port twl.ovs is.
            let o = self.ovs.get(netns)?;
            let mut j = crate::ovs::tunnel_for(o, crate::ovs::HOST_PORT, dst)?;
            j.note = format!(
                "bridge {dev} → its port {}; {}",
                crate::ovs::HOST_PORT,
                j.note
            );
            return Some(j);
        }
        crate::ovs::tunnel_for(self.ovs.get(netns)?, dev, dst)
    }

    fn ovs_master(&mut self, netns: &str, port: &str) -> Option<String> {
        let text = build::ip(&["-j", "-d", "-n", netns, "link", "show", "dev", port]).ok()?;
        twill_ovs::join::parse_link(&text).ok()??.master
    }

    fn ovs_uplink(&mut self, netns: &str, dev: &str) -> Option<String> {
        crate::ovs::system_port(&self.ovs.get(netns)?.view, dev)
    }
}

fn bad(what: String) -> LabError {
    LabError::Command {
        cmd: "twill lab trace".into(),
        detail: what,
    }
}

/// The address a member answers on: a pod's or host's eth0, a node's eth0 (its node IP).
fn member_ip(topo: &Topology, netns: &str) -> Option<Ipv4Addr> {
    let ns = topo.ns(netns)?;
    let first = |name: &str| {
        ns.links
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.addrs.first())
            .map(|a| a.addr())
    };
    first("eth0").or_else(|| {
        ns.links
            .iter()
            .filter(|l| l.name != "lo")
            .find_map(|l| l.addrs.first().map(|a| a.addr()))
    })
}

/// A member name (`n1-p1`, `n1`, `out`, `rt`, ...) or an IP.
fn resolve(state: &LabState, topo: &Topology, name: &str) -> Result<Endpoint, LabError> {
    if let Ok(netns) = state.plan.target_netns(name) {
        let ip = member_ip(topo, netns).ok_or_else(|| {
            bad(format!(
                "{name} ({netns}) has no IPv4 address (is the lab fully up? `twill lab status`)"
            ))
        })?;
        return Ok(Endpoint {
            name: name.into(),
            netns: Some(netns.into()),
            ip,
        });
    }
    let ip: Ipv4Addr = name.parse().map_err(|_| {
        bad(format!(
            "{name:?} is neither a lab member (n1, n1-p2, rt, out, ul, st) nor an IPv4 address"
        ))
    })?;
    let owner = topo.owner(ip);
    Ok(Endpoint {
        name: owner.map_or_else(|| name.to_string(), |(n, _)| n.member.clone()),
        netns: owner.map(|(n, _)| n.name.clone()),
        ip,
    })
}

/// One `tcpdump -w -` on a device, its stdout collected by a thread.
struct Capture {
    key: (String, String),
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<String>>,
}

fn start_capture(
    netns: &str,
    dev: &str,
    ready: mpsc::Sender<(String, String)>,
) -> Result<Capture, LabError> {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "tcpdump",
            "-i",
            dev,
            "-n",
            "-U",
            "--immediate-mode",
        ])
        .args(["-s", "512"])
        // ARP too: an l3 pod's gateway is answered by proxy ARP, which the report shows.
        .args(["-w", "-", "ip or arp"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Io {
            what: "run ip netns exec tcpdump (is tcpdump installed? `apt-get install tcpdump`)"
                .into(),
            source,
        })?;
    let mut out = child.stdout.take().expect("piped stdout");
    let stdout = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err = child.stderr.take().expect("piped stderr");
    let key = (netns.to_string(), dev.to_string());
    let key2 = key.clone();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = ready.send(key2.clone());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    Ok(Capture {
        key,
        child,
        stdout: Some(stdout),
        stderr: Some(stderr),
    })
}

impl Capture {
    /// SIGINT (tcpdump flushes and exits), then the pcap bytes and tcpdump's messages.
    fn finish(mut self) -> (Vec<u8>, String) {
        // ip netns exec execs tcpdump in place: the child's PID is tcpdump's.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let bytes = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let msgs = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (bytes, msgs)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends the probe from `netns`; Ok(true) when it was answered.
fn send_probe(
    netns: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: TraceProto,
    port: u16,
) -> Result<bool, LabError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| LabError::Io { what, source }
    };
    match proto {
        TraceProto::Icmp => {
            let out = Command::new("ip")
                .args(["netns", "exec", netns, "ping", "-n", "-q", "-c1", "-W1"])
                .args(["-p", path::ICMP_PATTERN_HEX, "-I", &src.to_string()])
                .arg(dst.to_string())
                .output()
                .map_err(io("run ping (is iputils-ping installed?)"))?;
            Ok(out.status.success())
        }
        TraceProto::Tcp => {
            let ns = open_netns(netns).map_err(|e| bad(e.to_string()))?;
            let r = twill_netlink::run_in(&ns, || {
                TcpStream::connect_timeout(&SocketAddr::from((dst, port)), PROBE_TIMEOUT)
            })
            .map_err(|e| bad(format!("enter {netns}: {e}")))?;
            // A refusal is an answer too: the SYN arrived and the far end said no.
            Ok(r.is_ok() || r.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused))
        }
        TraceProto::Udp => {
            let ns = open_netns(netns).map_err(|e| bad(e.to_string()))?;
            let sock = twill_netlink::run_in(&ns, || UdpSocket::bind((src, 0)))
                .map_err(|e| bad(format!("enter {netns}: {e}")))?
                .map_err(io("bind the UDP probe"))?;
            sock.set_read_timeout(Some(PROBE_TIMEOUT))
                .map_err(io("set timeout"))?;
            sock.send_to(path::UDP_MARKER, (dst, port))
                .map_err(io("send the UDP probe"))?;
            let mut buf = [0u8; 512];
            Ok(sock.recv(&mut buf).is_ok())
        }
    }
}

/// The frames each (namespace, device) capture saw.
type Frames = HashMap<(String, String), Vec<pcap::Frame>>;
/// Each datapath's (by control socket) counters before and after the probe.
type Counters = HashMap<String, (twill_datapath::stats::Stats, twill_datapath::stats::Stats)>;

/// The UDP ports whose payload is the udp backend's inner packet: every port in the
/// datapaths' tables, and the default.
fn overlay_ports(topo: &Topology) -> Vec<u16> {
    let mut ports = vec![pcap::UDP_OVERLAY_PORT];
    for ns in &topo.namespaces {
        if let Some(crate::graph::topo::Datapath::Up(d)) = &ns.datapath {
            for p in &d.peers {
                if !ports.contains(&p.port) {
                    ports.push(p.port);
                }
            }
        }
    }
    ports
}

/// The counters of every datapath a hop of `plan` goes through.
fn read_counters(plan: &PathPlan) -> HashMap<String, twill_datapath::stats::Stats> {
    let mut out = HashMap::new();
    for p in plan.hops.iter().filter_map(|h| h.process.as_ref()) {
        if !out.contains_key(&p.socket) {
            if let Some(s) = crate::graph::live::datapath_stats(&p.socket) {
                out.insert(p.socket.clone(), s);
            }
        }
    }
    out
}

/// Captures on every device of `plan`, sends one probe, returns the frames per device and
/// the counters of the datapaths on the way. `forget`: a neighbour entry of the source to
/// drop first (an l3 pod's gateway), so the captures see it resolved again.
#[allow(clippy::too_many_arguments)]
fn capture_probe(
    plan: &PathPlan,
    extra: &[(String, String)],
    src_ns: &str,
    proto: TraceProto,
    port: u16,
    forget: Option<Ipv4Addr>,
    overlay: &[u16],
    notes: &mut Vec<String>,
) -> Result<(bool, Frames, Counters), LabError> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for h in plan
        .hops
        .iter()
        .filter(|h| h.direction != path::Dir::Process)
    {
        let k = (h.netns.clone(), h.device.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for k in extra {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    let (tx, rx) = mpsc::channel();
    let mut caps = Vec::new();
    for (ns, dev) in &keys {
        caps.push(start_capture(ns, dev, tx.clone())?);
    }
    drop(tx);
    let deadline = Instant::now() + CAPTURE_READY;
    let mut ready = 0;
    while ready < caps.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(_) => ready += 1,
            Err(_) => break,
        }
    }
    if ready < caps.len() {
        notes.push(format!(
            "only {ready} of {} captures started in time",
            caps.len()
        ));
    }
    if let Some(gw) = forget {
        if let Err(e) = build::ip(&["-n", src_ns, "neigh", "flush", "to", &gw.to_string()]) {
            notes.push(format!("could not forget {gw} in {src_ns} first: {e}"));
        }
    }
    let before = read_counters(plan);
    let answered = send_probe(src_ns, plan.src_ip, plan.dst_ip, proto, port);
    std::thread::sleep(SETTLE);
    let mut after = read_counters(plan);
    let counters: Counters = before
        .into_iter()
        .filter_map(|(sock, b)| after.remove(&sock).map(|a| (sock, (b, a))))
        .collect();
    let mut frames = HashMap::new();
    for c in caps {
        let key = c.key.clone();
        let (bytes, msgs) = c.finish();
        if std::env::var_os("TWILL_TRACE_DEBUG").is_some() {
            eprintln!(
                "capture {key:?}: {} bytes; tcpdump: {}",
                bytes.len(),
                msgs.trim()
            );
        }
        match pcap::parse_pcap(&bytes) {
            Ok(cap) => {
                let fs = cap
                    .records
                    .iter()
                    .filter_map(|r| pcap::decode(cap.link, &r.data, overlay))
                    .collect();
                frames.insert(key, fs);
            }
            Err(e) => notes.push(format!(
                "capture on {} in {}: {e}; tcpdump said: {}",
                key.1,
                key.0,
                msgs.trim()
            )),
        }
    }
    Ok((answered?, frames, counters))
}

/// Conntrack entries of the nodes and the router the path crosses.
fn read_conntrack(topo: &Topology, plan: &PathPlan) -> Vec<(String, Vec<path::Conntrack>)> {
    let mut seen: Vec<String> = Vec::new();
    for h in &plan.hops {
        let natting = topo
            .ns(&h.netns)
            .is_some_and(|n| matches!(n.role, Role::Node | Role::Router));
        if natting && !seen.contains(&h.netns) {
            seen.push(h.netns.clone());
        }
    }
    seen.into_iter()
        .filter_map(|ns| {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "cat", "/proc/net/nf_conntrack"])
                .output()
                .ok()?;
            let entries = path::parse_conntrack(&String::from_utf8_lossy(&out.stdout));
            Some((ns, entries))
        })
        .collect()
}

/// Which router of the path learned its route to `dst`, and from whom: every node and the
/// router the packet crossed, asked with the tool that knows (the node's speaker, BIRD,
/// FRR), else read from the kernel route itself (RIP, the agent's routes).
fn route_origins(
    state: &LabState,
    topo: &Topology,
    router: &mut IpRouter,
    plan: &PathPlan,
    dst: Ipv4Addr,
) -> Vec<learned::RouteOrigin> {
    let lab = &state.plan;
    let name = |ip: Ipv4Addr| topo.owner(ip).map(|(ns, _)| ns.member.clone());
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for h in &plan.hops {
        let ns = h.netns.as_str();
        let role = topo.ns(ns).map(|n| n.role);
        if seen.contains(&ns) || !matches!(role, Some(Role::Node | Role::Router)) {
            continue;
        }
        seen.push(ns);
        let entry = router.route_entry(ns, dst);
        let route = entry
            .as_ref()
            .map_or_else(|| "no route".to_string(), |e| e.to_string());
        let kernel = || {
            entry.as_ref().map_or_else(
                || format!("no route to {dst}"),
                |e| learned::from_kernel(e, &name, lab.backend == crate::plan::BackendKind::Rip),
            )
        };
        let (learned_text, source) = match role {
            Some(Role::Node) if lab.backend == crate::plan::BackendKind::Bgp => {
                let sock = lab
                    .nodes
                    .iter()
                    .find(|n| n.netns == ns)
                    .map(|n| lab.bgp_socket(n));
                let rib = sock.as_ref().map(|s| {
                    twill_bgp::speaker::control::query::<twill_bgp::speaker::control::RibReply>(
                        s,
                        twill_bgp::speaker::control::Request::Rib,
                    )
                });
                match (rib, sock) {
                    (Some(Ok(rib)), Some(s)) => match learned::best_in_rib(&rib, dst) {
                        // The kernel knows more (a pod's /32 under the node's own block).
                        Some(p)
                            if entry
                                .as_ref()
                                .is_some_and(|e| e.dst.prefix_len() > p.prefix.prefix_len()) =>
                        {
                            (
                                kernel(),
                                "kernel (more specific than the speaker's RIB)".into(),
                            )
                        }
                        Some(p) => (
                            p.describe(&name),
                            format!("twill bgp rib --socket {}", s.display()),
                        ),
                        None => (kernel(), "kernel (not in the speaker's RIB)".into()),
                    },
                    (Some(Err(e)), _) => (kernel(), format!("kernel; the speaker: {e}")),
                    _ => (kernel(), "kernel".into()),
                }
            }
            Some(Role::Router) => match &lab.router.daemon {
                Some(d) if d.protocol == crate::plan::RoutingProtocol::Bgp => {
                    let dst_s = dst.to_string();
                    let (args, src): (Vec<String>, String) = match d.kind {
                        crate::plan::ExternalRouter::Bird => (
                            ["show", "route", "for", &dst_s, "all"]
                                .map(String::from)
                                .into(),
                            format!("birdc show route for {dst} all"),
                        ),
                        crate::plan::ExternalRouter::Frr => (
                            vec![format!("show ip bgp {dst} json")],
                            format!("vtysh -c 'show ip bgp {dst} json'"),
                        ),
                    };
                    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                    let parsed =
                        crate::daemons::router_query(lab, &refs)
                            .ok()
                            .and_then(|t| match d.kind {
                                crate::plan::ExternalRouter::Bird => {
                                    learned::parse_bird_route(&t).map(|(p, _)| p)
                                }
                                crate::plan::ExternalRouter::Frr => learned::parse_frr_bgp_json(&t),
                            });
                    match parsed {
                        Some(p) => (p.describe(&name), src),
                        None => (kernel(), format!("kernel ({src} knew nothing)")),
                    }
                }
                _ => (kernel(), "kernel".into()),
            },
            _ => (kernel(), "kernel".into()),
        };
        out.push(learned::RouteOrigin {
            member: topo.member(ns),
            route,
            learned: learned_text,
            source,
        });
    }
    out
}

/// Runs a trace.
pub fn run(state: &LabState, req: &TraceRequest) -> Result<TraceReport, LabError> {
    let topo = read_topology(state)?;
    let src = resolve(state, &topo, &req.src)?;
    let src_ns = src.netns.clone().ok_or_else(|| {
        bad(format!(
            "source {} is not in the lab: a trace starts in a lab member (n1-p1, n1, out, ...)",
            req.src
        ))
    })?;
    let dst = resolve(state, &topo, &req.dst)?;
    let dst_is_node = dst
        .netns
        .as_deref()
        .and_then(|n| topo.ns(n))
        .is_some_and(|n| n.role == Role::Node);
    let port = req.port.unwrap_or(match (req.proto, dst_is_node) {
        (TraceProto::Udp, true) => HOST_PORT_UDP,
        (TraceProto::Udp, false) => CONTAINER_PORT_UDP,
        (_, true) => HOST_PORT_TCP,
        _ => CONTAINER_PORT_TCP,
    });
    let src_ip = (req.src.parse::<Ipv4Addr>().is_ok()
        || topo.ns(&src_ns).is_some_and(|n| n.role == Role::Pod))
    .then_some(src.ip);
    let mut router = IpRouter {
        ovs: crate::ovs::read_lab(&state.plan)
            .into_iter()
            .map(|o| (o.netns.clone(), o))
            .collect(),
        ..IpRouter::default()
    };
    // An l3 pod resolves its gateway 169.254.1.1 afresh, so the trace shows proxy ARP.
    let forget = (state.plan.pod_wiring == crate::plan::PodWiring::L3
        && topo.ns(&src_ns).is_some_and(|n| n.role == Role::Pod))
    .then_some(twill_api::wiring::L3_GATEWAY);
    let mut plan = path::walk(&topo, &mut router, &src_ns, src_ip, dst.ip);
    let mut notes = Vec::new();
    // A TCP/UDP probe ending at a node may be DNATed on (a host port): watch the node's
    // bridges too, to see where it goes (a refused connection leaves no conntrack entry).
    let extra: Vec<(String, String)> = match (&plan.delivered_to, req.proto) {
        (Some(end), TraceProto::Tcp | TraceProto::Udp) => topo
            .ns(end)
            .filter(|n| n.role == Role::Node)
            .map(|n| {
                n.links
                    .iter()
                    .filter(|l| l.kind == "bridge")
                    .map(|l| (n.name.clone(), l.name.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let overlay = overlay_ports(&topo);
    let (mut answered, mut frames, mut counters) = capture_probe(
        &plan, &extra, &src_ns, req.proto, port, forget, &overlay, &mut notes,
    )?;
    let mut conntrack = read_conntrack(&topo, &plan);

    // A host port: the route ends at the node, but conntrack shows the DNAT; walk on to
    // the pod and probe again, so the capture covers the whole way.
    if let Some(end) = plan.delivered_to.clone() {
        let dnat = conntrack
            .iter()
            .filter(|(ns, _)| *ns == end)
            .flat_map(|(ns, e)| {
                path::nat_from_conntrack(&topo, ns, e, req.proto, plan.src_ip, dst.ip)
            })
            .find(|n| n.kind == path::NatKind::Dnat);
        let seen_dnat = extra
            .iter()
            .filter_map(|k| frames.get(k))
            .flatten()
            .filter(|f| path::is_probe(req.proto, f))
            .filter_map(|f| f.innermost().ip.as_ref())
            .find(|ip| ip.dst != dst.ip)
            .map(|ip| ip.dst);
        let to_ip = dnat
            .as_ref()
            .and_then(|n| n.to.split(':').next()?.parse::<Ipv4Addr>().ok())
            .or(seen_dnat);
        let dnat = dnat.map(|n| n.to_string()).or(seen_dnat.map(|ip| {
            format!(
                "DNAT {} → {ip}, seen on {}'s bridge",
                dst.ip,
                topo.member(&end)
            )
        }));
        let iif = plan.hops.last().map(|h| h.device.clone());
        if let (Some(n), Some(to_ip)) = (dnat, to_ip) {
            let more = path::walk_from(
                &topo,
                &mut router,
                &end,
                iif.as_deref(),
                Some(plan.src_ip),
                to_ip,
                plan.hops.clone(),
            );
            if more.hops.len() > plan.hops.len() {
                notes.push(format!(
                    "{} rewrote the destination ({n}); the path beyond it was walked to {to_ip} and probed a second time",
                    topo.member(&end)
                ));
                let src_ip = plan.src_ip;
                plan = PathPlan {
                    src_ip,
                    dst_ip: dst.ip,
                    ..more
                };
                (answered, frames, counters) = capture_probe(
                    &plan,
                    &[],
                    &src_ns,
                    req.proto,
                    port,
                    forget,
                    &overlay,
                    &mut notes,
                )?;
                conntrack = read_conntrack(&topo, &plan);
            }
        }
    }

    let routing = route_origins(state, &topo, &mut router, &plan, plan.dst_ip);
    let hops = path::attach(&plan.hops, &frames, &counters, req.proto);
    let arp = path::arp_seen(&topo, &plan.hops, &frames);
    let from_ct = conntrack
        .iter()
        .flat_map(|(ns, e)| path::nat_from_conntrack(&topo, ns, e, req.proto, plan.src_ip, dst.ip))
        .collect();
    let nat = path::merge_nat(path::nat_from_headers(&topo, &hops), from_ct);
    let outcome = match (&plan.delivered_to, &plan.stopped) {
        (Some(ns), _) => format!("delivered to {} ({ns})", topo.member(ns)),
        (None, Some(why)) => format!("path stops after hop {}: {why}", hops.len()),
        (None, None) => "path unknown".into(),
    };
    let unseen = hops.iter().filter(|h| !h.seen).count();
    if unseen > 0 {
        notes.push(format!(
            "{unseen} hop(s) did not see the probe: a drop, or a capture that missed it"
        ));
    }
    let probe = match (req.proto, answered) {
        (TraceProto::Icmp, true) => "ping answered",
        (TraceProto::Icmp, false) => "ping NOT answered",
        (TraceProto::Tcp, true) => "TCP connect answered (accepted or refused)",
        (TraceProto::Tcp, false) => "TCP connect NOT answered",
        (TraceProto::Udp, true) => "UDP reply received",
        (TraceProto::Udp, false) => "no UDP reply (nothing may listen there)",
    };
    Ok(TraceReport {
        lab: state.plan.name.clone(),
        src: Endpoint {
            ip: plan.src_ip,
            ..src
        },
        dst,
        proto: req.proto,
        port: (req.proto != TraceProto::Icmp).then_some(port),
        answered,
        probe: probe.into(),
        hops,
        nat,
        arp,
        outcome,
        notes,
        routing,
    })
}
