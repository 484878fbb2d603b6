//! Status over HTTP on a loopback port, std only: `/healthz` (the main loop is alive),
//! `/readyz` (the node holds its blocks and the store answers; else 503 with the reason),
//! `/metrics` (Prometheus text format). One thread, one short request per connection.

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twill_api::bgp::RoutingStatus;
use twill_api::resources::PeerReach;

/// /healthz fails when the main loop has not ticked for this long.
pub const STALL: Duration = Duration::from_secs(30);

/// What the agent reports, updated by its main loop.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// None when ready; else why not, in words.
    pub not_ready: Option<String>,
    pub store_up: bool,
    pub node: String,
    pub node_ip: Option<(Ipv4Addr, String)>,
    pub blocks: Vec<Ipv4Net>,
    pub used: u64,
    pub free: u64,
    pub lease_renewals: u64,
    pub lease_renewal_failures: u64,
    pub store_errors: u64,
    pub last_tick: Instant,
    /// The backend, and what it cannot route (peers off the segment, conflicts).
    pub backend: String,
    pub backend_problems: Vec<String>,
    pub backend_changes: u64,
    pub backend_failures: u64,
    /// What this node's probes see of each peer's node IP.
    pub peers: BTreeMap<String, PeerReach>,
    /// ICMP probes sent to peers since start.
    pub peer_probes: u64,
    /// The backend's routing sessions (bgp), as `routingstatus/<node>` has them.
    pub routing: Option<RoutingStatus>,
    /// Network policy's state, when it is on.
    pub policy: Option<Arc<crate::policy::Shared>>,
    /// The backend's own series (udp: its datapath's counters), read at each scrape.
    pub backend_metrics: Option<Arc<dyn crate::backend::MetricsSource>>,
}

#[derive(Debug)]
pub struct Status(Mutex<Snapshot>);

impl Status {
    pub fn new(node: &str) -> Status {
        Status(Mutex::new(Snapshot {
            not_ready: Some("starting".into()),
            store_up: false,
            node: node.into(),
            node_ip: None,
            blocks: Vec::new(),
            used: 0,
            free: 0,
            lease_renewals: 0,
            lease_renewal_failures: 0,
            store_errors: 0,
            backend: String::new(),
            backend_problems: Vec::new(),
            backend_changes: 0,
            backend_failures: 0,
            peers: BTreeMap::new(),
            peer_probes: 0,
            routing: None,
            policy: None,
            backend_metrics: None,
            last_tick: Instant::now(),
        }))
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// CPU time and resident memory of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Reads /proc/self/stat and /proc/self/statm (zeros if unreadable).
pub fn proc_stats() -> ProcStats {
    // SAFETY: sysconf has no memory effects.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / tick)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * page;
    ProcStats {
        cpu_seconds: cpu,
        rss_bytes: rss,
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Pure: the /metrics page.
pub fn render_metrics(s: &Snapshot, p: ProcStats) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "twill_store_up",
        "gauge",
        "1 if the last store request succeeded.",
        &one(u8::from(s.store_up).to_string()),
    );
    metric(
        "twill_blocks_held",
        "gauge",
        "Blocks of pod addresses this node holds.",
        &one(s.blocks.len().to_string()),
    );
    metric(
        "twill_block_addresses",
        "gauge",
        "Allocatable addresses in this node's blocks, by state.",
        &[
            ("{state=\"used\"}".into(), s.used.to_string()),
            ("{state=\"free\"}".into(), s.free.to_string()),
        ],
    );
    metric(
        "twill_lease_renewals_total",
        "counter",
        "Successful lease keep-alives.",
        &one(s.lease_renewals.to_string()),
    );
    metric(
        "twill_lease_renewal_failures_total",
        "counter",
        "Failed lease keep-alives (store errors or a lost lease).",
        &one(s.lease_renewal_failures.to_string()),
    );
    metric(
        "twill_backend_changes_total",
        "counter",
        "Routes, neighbours, FDB entries and devices the backend added, changed or removed.",
        &one(s.backend_changes.to_string()),
    );
    metric(
        "twill_backend_failures_total",
        "counter",
        "Backend operations the kernel refused.",
        &one(s.backend_failures.to_string()),
    );
    metric(
        "twill_backend_problems",
        "gauge",
        "Peers or blocks the backend cannot route (see /readyz).",
        &one(s.backend_problems.len().to_string()),
    );
    metric(
        "twill_store_errors_total",
        "counter",
        "Store requests that failed.",
        &one(s.store_errors.to_string()),
    );
    metric(
        "twill_peer_probes_total",
        "counter",
        "ICMP probes this node sent to peers' node IPs (a bounded sample per interval).",
        &one(s.peer_probes.to_string()),
    );
    if !s.peers.is_empty() {
        let peer = |name: &str, p: &PeerReach| {
            format!("{{peer=\"{}\",address=\"{}\"}}", label(name), p.address)
        };
        metric(
            "twill_peer_reachable",
            "gauge",
            "1 if the peer's node IP answers this node's ICMP probes.",
            &s.peers
                .iter()
                .map(|(n, p)| (peer(n, p), u8::from(p.reachable).to_string()))
                .collect::<Vec<_>>(),
        );
        metric(
            "twill_peer_rtt_seconds",
            "gauge",
            "Round-trip time of the last answered probe to the peer's node IP.",
            &s.peers
                .iter()
                .filter_map(|(n, p)| {
                    Some((peer(n, p), format!("{:.6}", p.rtt_micros? as f64 / 1e6)))
                })
                .collect::<Vec<_>>(),
        );
    }
    if let Some(r) = s.routing.as_ref().filter(|r| !r.peers.is_empty()) {
        let peer = |p: &twill_api::bgp::RoutingPeerStatus| {
            let node = p
                .node
                .as_deref()
                .map(|n| format!(",node=\"{}\"", label(n)))
                .unwrap_or_default();
            format!(
                "{{peer=\"{}\",type=\"{}\"{node}}}",
                label(&p.address),
                p.peer_type.label()
            )
        };
        let each = |f: &dyn Fn(&twill_api::bgp::RoutingPeerStatus) -> String| {
            r.peers.iter().map(|p| (peer(p), f(p))).collect::<Vec<_>>()
        };
        metric(
            "twill_bgp_session_established",
            "gauge",
            "1 if the BGP session with the peer is Established.",
            &each(&|p| u8::from(p.state == "Established").to_string()),
        );
        metric(
            "twill_bgp_prefixes_received",
            "gauge",
            "Prefixes the peer announces to this node.",
            &each(&|p| p.prefixes_received.to_string()),
        );
        metric(
            "twill_bgp_prefixes_advertised",
            "gauge",
            "Prefixes this node announces to the peer.",
            &each(&|p| p.prefixes_advertised.to_string()),
        );
    }
    if let Some((addr, method)) = &s.node_ip {
        metric(
            "twill_node_info",
            "gauge",
            "This node's name, IP and how the IP was chosen.",
            &[(
                format!(
                    "{{node=\"{}\",address=\"{addr}\",method=\"{}\"}}",
                    label(&s.node),
                    label(method)
                ),
                "1".into(),
            )],
        );
    }
    metric(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time.",
        &one(format!("{:.2}", p.cpu_seconds)),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory.",
        &one(p.rss_bytes.to_string()),
    );
    out
}

/// Pure: status code and body for a GET of `path`.
pub fn respond(path: &str, s: &Snapshot, now: Instant, p: ProcStats) -> (u16, String) {
    match path {
        "/healthz" => {
            let idle = now.saturating_duration_since(s.last_tick);
            if idle < STALL {
                (200, "ok\n".into())
            } else {
                (
                    503,
                    format!("the main loop has not run for {}s\n", idle.as_secs()),
                )
            }
        }
        "/readyz" => match &s.not_ready {
            // Ready, but say what the backend cannot reach: a partly routed node.
            None if !s.backend_problems.is_empty() => (
                200,
                format!("ready, with warnings:\n{}\n", s.backend_problems.join("\n")),
            ),
            None => (200, "ready\n".into()),
            Some(why) => (503, format!("{why}\n")),
        },
        "/metrics" => {
            let mut page = render_metrics(s, p);
            if let Some(policy) = &s.policy {
                page.push_str(&crate::policy::render_metrics(&policy.status()));
            }
            if let Some(m) = &s.backend_metrics {
                m.render(&mut page);
            }
            (200, page)
        }
        _ => (404, "not found: try /healthz, /readyz or /metrics\n".into()),
    }
}

/// Serves on `listener` until `shutdown` is set.
pub fn serve(listener: TcpListener, status: Arc<Status>, shutdown: Arc<AtomicBool>) {
    // Non-blocking accept so the thread notices shutdown (tests run many agents in one process).
    let _ = listener.set_nonblocking(true);
    while !shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = handle(conn, &status);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(&listener),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Sleeps until a connection arrives or a second passes (then shutdown is checked):
/// an idle agent wakes once a second here, not twenty times.
fn wait_readable(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, 1000) };
}

fn handle(conn: TcpStream, status: &Status) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Drain the headers; nothing in them matters.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or(target);
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let (code, body) = if path == "/policy/log" && (method == "GET" || method == "HEAD") {
        match &status.snapshot().policy {
            Some(p) => (
                200,
                crate::policy::log::render(&p.log.after(crate::policy::log::after_of(query))),
            ),
            None => (
                404,
                "network policy is off on this node: start twilld with --policy true\n".into(),
            ),
        }
    } else if method == "GET" || method == "HEAD" {
        respond(path, &status.snapshot(), Instant::now(), proc_stats())
    } else {
        (405, "only GET\n".into())
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let content_type = if path == "/metrics" {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        w.write_all(body.as_bytes())?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let st = Status::new("n1");
        st.update(|s| {
            s.node_ip = Some(("192.0.2.11".parse().unwrap(), "interface=eth.*".into()));
            s.blocks = vec!["10.244.1.0/26".parse().unwrap()];
            s.used = 3;
            s.free = 58;
            s.store_up = true;
        });
        let s = st.snapshot();
        let now = Instant::now();
        assert_eq!(
            respond("/readyz", &s, now, ProcStats::default()),
            (503, "starting\n".into())
        );
        assert_eq!(respond("/healthz", &s, now, ProcStats::default()).0, 200);
        assert_eq!(
            respond("/healthz", &s, now + STALL, ProcStats::default()).0,
            503
        );
        let (code, m) = respond(
            "/metrics",
            &s,
            now,
            ProcStats {
                cpu_seconds: 1.5,
                rss_bytes: 4096,
            },
        );
        assert_eq!(code, 200);
        for want in [
            "twill_store_up 1\n",
            "twill_blocks_held 1\n",
            "twill_block_addresses{state=\"used\"} 3\n",
            "twill_block_addresses{state=\"free\"} 58\n",
            "twill_node_info{node=\"n1\",address=\"192.0.2.11\",method=\"interface=eth.*\"} 1\n",
            "process_cpu_seconds_total 1.50\n",
            "process_resident_memory_bytes 4096\n",
        ] {
            assert!(m.contains(want), "{want} missing from\n{m}");
        }
        assert_eq!(respond("/nope", &s, now, ProcStats::default()).0, 404);
        assert!(!m.contains("twill_bgp_"), "no BGP series without sessions");
    }

    #[test]
    fn bgp_sessions_are_in_the_metrics() {
        use twill_api::bgp::{PeerType, RoutingPeerStatus, RoutingProtocol};
        let st = Status::new("n1");
        let peer = |address: &str, node: Option<&str>, t, state: &str, rx, tx| RoutingPeerStatus {
            address: address.into(),
            node: node.map(String::from),
            peer_type: t,
            asn: Some(64512),
            state: state.into(),
            since: 1,
            info: String::new(),
            prefixes_received: rx,
            prefixes_advertised: tx,
        };
        st.update(|s| {
            s.routing = Some(RoutingStatus {
                protocol: RoutingProtocol::Bgp,
                router_id: Some("192.0.2.11".parse().unwrap()),
                asn: Some(64512),
                route_reflector_cluster_id: None,
                peers: vec![
                    peer(
                        "192.0.2.12",
                        Some("n2"),
                        PeerType::NodeMesh,
                        "Established",
                        2,
                        1,
                    ),
                    peer("203.0.113.1:1179", None, PeerType::Global, "Active", 0, 0),
                ],
            })
        });
        let (_, m) = respond(
            "/metrics",
            &st.snapshot(),
            Instant::now(),
            ProcStats::default(),
        );
        for want in [
            "# TYPE twill_bgp_session_established gauge\n",
            "twill_bgp_session_established{peer=\"192.0.2.12\",type=\"node-to-node mesh\",node=\"n2\"} 1\n",
            "twill_bgp_session_established{peer=\"203.0.113.1:1179\",type=\"global\"} 0\n",
            "twill_bgp_prefixes_received{peer=\"192.0.2.12\",type=\"node-to-node mesh\",node=\"n2\"} 2\n",
            "twill_bgp_prefixes_advertised{peer=\"192.0.2.12\",type=\"node-to-node mesh\",node=\"n2\"} 1\n",
            "twill_bgp_prefixes_received{peer=\"203.0.113.1:1179\",type=\"global\"} 0\n",
        ] {
            assert!(m.contains(want), "{want} missing from\n{m}");
        }
    }

    #[test]
    fn proc_stats_are_read() {
        let p = proc_stats();
        assert!(p.rss_bytes > 0);
    }
}
