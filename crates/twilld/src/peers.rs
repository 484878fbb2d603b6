//! Peers verify each node's IP: every agent sends an ICMP echo to the address each peer
//! advertises, every few seconds (at once when a peer appears or moves), and publishes what
//! it sees as `peers/<node>`. A node whose chosen IP no one can reach (the seed's
//! `first-found` trap) then shows up in `twill node status` instead of as silently missing
//! routes.
//!
//! Pure: [`PeerTable`] (per-peer state, what is due, replies and timeouts), [`targets`],
//! [`Publisher`] and the ICMP codec ([`echo_request`], [`parse_reply`]). I/O edge:
//! [`Prober`], one thread with one socket, asleep in `poll` between probes.

use crate::backend::Peer;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use twill_api::resources::{BackendSpec, PeerReach, PeerView};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe waits for its reply.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Unanswered probes in a row before a peer that answered before is declared unreachable
/// (one lost packet is no outage). A peer never reached is unreachable at its first failure.
pub const FAILURES_TO_DOWN: u32 = 3;
/// The RTT alone changes every probe; it is re-published at most this often.
pub const RTT_REFRESH: Duration = Duration::from_secs(30);

/// A peer to probe: its name, advertised address, and how the backend carries traffic to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub address: Ipv4Addr,
    pub backend: String,
}

/// How this node's backend reaches a peer, in words for `twill node status`. Pure.
pub fn backend_mode(spec: &BackendSpec, uplink: Option<Ipv4Net>, peer: Ipv4Addr) -> String {
    let near = uplink.is_some_and(|c| c.contains(&peer));
    match (spec, near) {
        (BackendSpec::HostGw, true) => "host-gw direct".into(),
        (BackendSpec::HostGw, false) => "host-gw unrouted: off segment".into(),
        // The static mesh is a VXLAN mesh.
        (BackendSpec::Vxlan(_) | BackendSpec::Static(_), true) if spec.direct_routing() => {
            "vxlan direct (same segment)".into()
        }
        (BackendSpec::Vxlan(_) | BackendSpec::Static(_), _) => "vxlan tunnel".into(),
        (BackendSpec::Bgp, true) => "bgp direct".into(),
        (BackendSpec::Bgp, false) => "bgp routed (off segment)".into(),
        (BackendSpec::None, _) => "none".into(),
        (BackendSpec::Rip(_), true) => "rip (same segment)".into(),
        (BackendSpec::Rip(_), false) => {
            "rip: off segment, reached through a RIP router if any".into()
        }
        (BackendSpec::Udp(o), _) => format!("udp tunnel (userspace, port {})", o.port()),
    }
}

/// The probe targets for the backend's peers. Pure.
pub fn targets(peers: &[Peer], spec: &BackendSpec, uplink: Option<Ipv4Net>) -> Vec<Target> {
    peers
        .iter()
        .map(|p| Target {
            name: p.name.clone(),
            address: p.address,
            backend: backend_mode(spec, uplink, p.address),
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Entry {
    address: Ipv4Addr,
    backend: String,
    /// None until the first probe of this address ends.
    reachable: Option<bool>,
    rtt: Option<Duration>,
    failures: u32,
    since: u64,
    error: Option<String>,
    next_probe: Instant,
    /// The probe in flight: its sequence number and when it left.
    pending: Option<(u16, Instant)>,
}

/// A probe to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub name: String,
    pub address: Ipv4Addr,
    pub seq: u16,
}

/// Every peer's probe state. Pure: times come in as arguments (`now` for scheduling, `wall`
/// in seconds since the epoch for `since`).
#[derive(Debug)]
pub struct PeerTable {
    entries: BTreeMap<String, Entry>,
    interval: Duration,
    timeout: Duration,
    next_seq: u16,
}

impl PeerTable {
    pub fn new(interval: Duration) -> PeerTable {
        PeerTable {
            entries: BTreeMap::new(),
            interval,
            timeout: TIMEOUT.min(interval),
            next_seq: 1,
        }
    }

    /// Takes the current peers: new ones (or ones whose address moved) start unknown and
    /// are probed at once; gone ones are dropped. True if a probe became due.
    pub fn set_targets(&mut self, targets: &[Target], now: Instant) -> bool {
        self.entries
            .retain(|name, _| targets.iter().any(|t| &t.name == name));
        let mut due_now = false;
        for t in targets {
            match self.entries.get_mut(&t.name) {
                Some(e) if e.address == t.address => e.backend = t.backend.clone(),
                _ => {
                    self.entries.insert(
                        t.name.clone(),
                        Entry {
                            address: t.address,
                            backend: t.backend.clone(),
                            reachable: None,
                            rtt: None,
                            failures: 0,
                            since: 0,
                            error: None,
                            next_probe: now,
                            pending: None,
                        },
                    );
                    due_now = true;
                }
            }
        }
        due_now
    }

    /// The probes due at `now`; each is marked in flight and the next one scheduled.
    pub fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut out = Vec::new();
        for (name, e) in &mut self.entries {
            if e.pending.is_some() || now < e.next_probe {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1).max(1);
            e.pending = Some((seq, now));
            e.next_probe = now + self.interval;
            out.push(Due {
                name: name.clone(),
                address: e.address,
                seq,
            });
        }
        out
    }

    /// When something is next to do (a probe due or one timing out).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .map(|e| match e.pending {
                Some((_, sent)) => sent + self.timeout,
                None => e.next_probe,
            })
            .min()
    }

    /// An echo reply from `from` with `seq`; ignored unless it answers a probe in flight.
    pub fn on_reply(&mut self, from: Ipv4Addr, seq: u16, now: Instant, wall: u64) {
        let Some(e) = self
            .entries
            .values_mut()
            .find(|e| e.address == from && e.pending.is_some_and(|(s, _)| s == seq))
        else {
            return;
        };
        let (_, sent) = e.pending.take().expect("checked");
        if e.reachable != Some(true) {
            e.since = wall;
        }
        e.reachable = Some(true);
        e.rtt = Some(now.saturating_duration_since(sent));
        e.failures = 0;
        e.error = None;
    }

    /// The probe `seq` to `name` failed at once (the kernel refused to send it).
    pub fn on_send_error(&mut self, name: &str, seq: u16, error: String, wall: u64) {
        if let Some(e) = self.entries.get_mut(name) {
            if e.pending.is_some_and(|(s, _)| s == seq) {
                e.pending = None;
                Self::fail(e, error, wall);
            }
        }
    }

    /// Probes in flight longer than the timeout count as failed.
    pub fn expire(&mut self, now: Instant, wall: u64) {
        let timeout = self.timeout;
        for e in self.entries.values_mut() {
            if let Some((_, sent)) = e.pending {
                if now.saturating_duration_since(sent) >= timeout {
                    e.pending = None;
                    Self::fail(
                        e,
                        format!("no reply within {}ms", timeout.as_millis()),
                        wall,
                    );
                }
            }
        }
    }

    fn fail(e: &mut Entry, error: String, wall: u64) {
        e.failures = e.failures.saturating_add(1);
        e.rtt = None;
        e.error = Some(error);
        let down = match e.reachable {
            Some(true) => e.failures >= FAILURES_TO_DOWN,
            _ => true,
        };
        if down && e.reachable != Some(false) {
            e.reachable = Some(false);
            e.since = wall;
        }
    }

    /// What the probes found, per peer; peers with no verdict yet are left out.
    pub fn view(&self) -> BTreeMap<String, PeerReach> {
        self.entries
            .iter()
            .filter_map(|(name, e)| {
                Some((
                    name.clone(),
                    PeerReach {
                        address: e.address,
                        reachable: e.reachable?,
                        rtt_micros: e.rtt.map(|d| d.as_micros() as u64),
                        since: e.since,
                        failures: e.failures,
                        error: e.error.clone(),
                        backend: e.backend.clone(),
                    },
                ))
            })
            .collect()
    }
}

/// Decides when `peers/<node>` is written: at once when a verdict, address, error or
/// backend changes; for RTT changes alone at most every [`RTT_REFRESH`] (a store write
/// wakes every agent's watch). Pure.
#[derive(Debug, Default)]
pub struct Publisher {
    /// (the lease written under, the view without RTTs, the full view, when written)
    last: Option<(i64, PeerView, PeerView, Instant)>,
}

impl Publisher {
    /// Whether `view` should be written now under `lease`.
    pub fn due(&self, lease: i64, view: &PeerView, now: Instant) -> bool {
        let Some((l, sig, full, at)) = &self.last else {
            return true;
        };
        if *l != lease || *sig != without_rtt(view) {
            return true;
        }
        full != view && now.saturating_duration_since(*at) >= RTT_REFRESH
    }

    pub fn written(&mut self, lease: i64, view: &PeerView, now: Instant) {
        self.last = Some((lease, without_rtt(view), view.clone(), now));
    }
}

fn without_rtt(view: &PeerView) -> PeerView {
    let mut v = view.clone();
    for p in v.peers.values_mut() {
        p.rtt_micros = None;
    }
    v
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// Marks Twill's probes among whatever else a raw socket sees.
const PAYLOAD: &[u8; 8] = b"twillpr1";

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request (header + payload). Pure.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![ICMP_ECHO_REQUEST, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// The sequence number of an echo reply to one of our probes, or None. `with_ip_header`:
/// a raw socket gets the IPv4 header too; a datagram socket gets the ICMP message only, its
/// identifier rewritten by the kernel (which already delivers only our replies). Pure.
pub fn parse_reply(buf: &[u8], with_ip_header: bool, id: u16) -> Option<u16> {
    let icmp = if with_ip_header {
        let ihl = usize::from(buf.first()? & 0x0f) * 4;
        if buf.get(9) != Some(&1) {
            return None;
        }
        buf.get(ihl..)?
    } else {
        buf
    };
    if icmp.len() < 8 + PAYLOAD.len() || icmp[0] != ICMP_ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    if with_ip_header && u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    if &icmp[8..8 + PAYLOAD.len()] != PAYLOAD {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn wall_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One ICMP socket: raw (the agent runs as root) or, failing that, an unprivileged ping
/// socket (net.ipv4.ping_group_range).
struct IcmpSocket {
    fd: OwnedFd,
    raw: bool,
    id: u16,
}

impl IcmpSocket {
    fn open() -> io::Result<IcmpSocket> {
        let mut last = None;
        for (kind, raw) in [(libc::SOCK_RAW, true), (libc::SOCK_DGRAM, false)] {
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_ICMP,
                )
            };
            if fd < 0 {
                last = Some(io::Error::last_os_error());
                continue;
            }
            // SAFETY: fd is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Several agents may share a namespace (tests): the id keeps their replies apart.
            static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
            let id = (std::process::id() as u16)
                .wrapping_mul(31)
                .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
            return Ok(IcmpSocket { fd, raw, id });
        }
        Err(last.unwrap_or_else(|| io::Error::other("no ICMP socket")))
    }

    fn send(&self, to: Ipv4Addr, seq: u16) -> io::Result<()> {
        let packet = echo_request(self.id, seq);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(to).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: packet and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram: (source, payload), or None when nothing is waiting.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(Ipv4Addr, usize)>> {
        // SAFETY: zeroed sockaddr_in is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: buf and addr are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some((
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            n as usize,
        )))
    }
}

/// The probing thread and the state it shares with the agent's loop.
pub struct Prober {
    table: Arc<Mutex<PeerTable>>,
    /// Wakes the thread when a probe becomes due at once (a peer appeared or moved).
    wake: UnixDatagram,
    /// Why probing cannot run, if it cannot (no ICMP socket).
    problem: Arc<Mutex<Option<String>>>,
}

impl Prober {
    /// Starts the thread; it ends when `shutdown` is set.
    pub fn start(interval: Duration, shutdown: Arc<AtomicBool>) -> io::Result<Prober> {
        let table = Arc::new(Mutex::new(PeerTable::new(interval)));
        let problem = Arc::new(Mutex::new(None));
        let (wake, wakee) = UnixDatagram::pair()?;
        wakee.set_nonblocking(true)?;
        {
            let (table, problem) = (table.clone(), problem.clone());
            std::thread::Builder::new()
                .name("twilld-peers".into())
                .spawn(move || run(table, wakee, problem, interval, shutdown))?;
        }
        Ok(Prober {
            table,
            wake,
            problem,
        })
    }

    pub fn set_targets(&self, targets: &[Target]) {
        let due = lock(&self.table).set_targets(targets, Instant::now());
        if due {
            let _ = self.wake.send(&[1]);
        }
    }

    pub fn view(&self) -> BTreeMap<String, PeerReach> {
        lock(&self.table).view()
    }

    pub fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The longest the thread sleeps, so it notices shutdown.
const MAX_SLEEP: Duration = Duration::from_secs(1);

fn run(
    table: Arc<Mutex<PeerTable>>,
    wakee: UnixDatagram,
    problem: Arc<Mutex<Option<String>>>,
    interval: Duration,
    shutdown: Arc<AtomicBool>,
) {
    let mut socket: Option<IcmpSocket> = None;
    let mut next_open = Instant::now();
    let mut buf = [0u8; 1500];
    while !shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        if socket.is_none() && now >= next_open {
            match IcmpSocket::open() {
                Ok(s) => {
                    *lock(&problem) = None;
                    socket = Some(s);
                }
                Err(e) => {
                    let why = format!(
                        "cannot open an ICMP socket to probe peers ({e}): run twilld as root, or allow ping sockets with sysctl net.ipv4.ping_group_range"
                    );
                    if lock(&problem).as_deref() != Some(why.as_str()) {
                        crate::log::warn("peer probing is off", &[("error", &why)]);
                        *lock(&problem) = Some(why);
                    }
                    next_open = now + interval;
                }
            }
        }
        let mut wait = MAX_SLEEP;
        if let Some(s) = &socket {
            let due = {
                let mut t = lock(&table);
                t.expire(now, wall_now());
                t.due(now)
            };
            for d in due {
                if let Err(e) = s.send(d.address, d.seq) {
                    lock(&table).on_send_error(&d.name, d.seq, e.to_string(), wall_now());
                }
            }
            if let Some(at) = lock(&table).next_deadline() {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
        }
        // Sleep until a reply, a wake-up or the next deadline; never spin.
        let mut fds = vec![libc::pollfd {
            fd: wakee.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(s) = &socket {
            fds.push(libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // Round up so a deadline 0.3 ms away does not become a 0 ms busy poll.
        let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: fds is a valid array of fds.len() pollfd.
        let _ = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if fds[0].revents != 0 {
            let mut b = [0u8; 16];
            while wakee.recv(&mut b).is_ok() {}
        }
        if let Some(s) = &socket {
            loop {
                match s.recv(&mut buf) {
                    Ok(Some((from, n))) => {
                        if let Some(seq) = parse_reply(&buf[..n], s.raw, s.id) {
                            lock(&table).on_reply(from, seq, Instant::now(), wall_now());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        crate::log::warn(
                            "the ICMP socket failed; opening a new one",
                            &[("error", &e)],
                        );
                        socket = None;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, addr: &str) -> Target {
        Target {
            name: name.into(),
            address: addr.parse().unwrap(),
            backend: "host-gw direct".into(),
        }
    }

    #[test]
    fn a_new_peer_is_probed_at_once_then_every_interval() {
        let start = Instant::now();
        let mut table = PeerTable::new(Duration::from_secs(5));
        assert!(table.set_targets(&[t("n2", "192.0.2.12")], start));
        let due = table.due(start);
        assert_eq!(due.len(), 1);
        assert!(table.due(start).is_empty(), "one probe in flight at a time");
        assert_eq!(table.next_deadline(), Some(start + TIMEOUT));
        assert!(table.view().is_empty(), "no verdict yet");
        table.on_reply(
            "192.0.2.12".parse().unwrap(),
            due[0].seq,
            start + Duration::from_micros(250),
            100,
        );
        let v = table.view();
        assert!(v["n2"].reachable);
        assert_eq!((v["n2"].rtt_micros, v["n2"].since), (Some(250), 100));
        assert_eq!(table.next_deadline(), Some(start + Duration::from_secs(5)));
        assert!(
            !table.set_targets(&[t("n2", "192.0.2.12")], start),
            "unchanged"
        );
    }

    #[test]
    fn reachable_goes_down_after_three_misses_never_reached_at_the_first() {
        let mut now = Instant::now();
        let mut table = PeerTable::new(Duration::from_secs(5));
        table.set_targets(&[t("n2", "192.0.2.12"), t("n3", "10.0.5.3")], now);
        let due = table.due(now);
        table.on_reply("192.0.2.12".parse().unwrap(), due[0].seq, now, 1);
        table.on_send_error("n3", due[1].seq, "Network is unreachable".into(), 1);
        let v = table.view();
        assert!(!v["n3"].reachable);
        assert_eq!(v["n3"].error.as_deref(), Some("Network is unreachable"));
        for i in 1..=3 {
            now += Duration::from_secs(5);
            assert_eq!(table.due(now).len(), 2);
            now += TIMEOUT;
            table.expire(now, 10 + i);
            let v = table.view();
            assert_eq!(v["n2"].failures, i as u32);
            assert_eq!(v["n2"].reachable, i < 3, "after {i} misses");
        }
        let v = table.view();
        assert_eq!((v["n2"].since, v["n3"].since), (13, 1));
        assert_eq!(v["n2"].error.as_deref(), Some("no reply within 1000ms"));
    }

    #[test]
    fn a_moved_peer_starts_over_and_a_stale_reply_is_ignored() {
        let now = Instant::now();
        let mut table = PeerTable::new(Duration::from_secs(5));
        table.set_targets(&[t("n2", "10.0.5.2")], now);
        let old = table.due(now)[0].seq;
        assert!(table.set_targets(&[t("n2", "192.0.2.12")], now));
        table.on_reply("10.0.5.2".parse().unwrap(), old, now, 1);
        assert!(table.view().is_empty());
        let seq = table.due(now)[0].seq;
        table.on_reply("192.0.2.12".parse().unwrap(), seq, now, 2);
        assert_eq!(
            table.view()["n2"].address,
            "192.0.2.12".parse::<Ipv4Addr>().unwrap()
        );
        table.set_targets(&[], now);
        assert!(table.view().is_empty() && table.next_deadline().is_none());
    }

    #[test]
    fn rtt_alone_is_published_rarely() {
        let now = Instant::now();
        let mut p = Publisher::default();
        let mut view = PeerView {
            address: Some("192.0.2.11".parse().unwrap()),
            interface: Some("eth0".into()),
            peers: BTreeMap::new(),
        };
        let reach = |rtt| PeerReach {
            address: "192.0.2.12".parse().unwrap(),
            reachable: true,
            rtt_micros: Some(rtt),
            since: 1,
            failures: 0,
            error: None,
            backend: String::new(),
        };
        view.peers.insert("n2".to_string(), reach(100));
        assert!(p.due(7, &view, now));
        p.written(7, &view, now);
        assert!(!p.due(7, &view, now + RTT_REFRESH));
        view.peers.insert("n2".to_string(), reach(120));
        assert!(!p.due(7, &view, now + Duration::from_secs(5)));
        assert!(p.due(7, &view, now + RTT_REFRESH));
        assert!(p.due(8, &view, now), "a new lease");
        let mut moved = view.clone();
        moved.interface = Some("eth1".into());
        assert!(p.due(7, &moved, now), "this node's own address moved");
        let mut down = reach(0);
        down.reachable = false;
        view.peers.insert("n2".to_string(), down);
        assert!(p.due(7, &view, now));
    }

    #[test]
    fn echo_codec_round_trips() {
        let req = echo_request(0x1234, 7);
        assert_eq!(checksum(&req), 0, "a valid checksum sums to zero");
        let mut reply = req.clone();
        reply[0] = ICMP_ECHO_REPLY;
        assert_eq!(parse_reply(&reply, false, 0), Some(7));
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 12, 192, 0, 2, 11,
        ];
        ip.extend_from_slice(&reply);
        assert_eq!(parse_reply(&ip, true, 0x1234), Some(7));
        assert_eq!(parse_reply(&ip, true, 0x9999), None, "another prober's");
        let mut req_ip = ip.clone();
        req_ip[20] = ICMP_ECHO_REQUEST;
        assert_eq!(parse_reply(&req_ip, true, 0x1234), None, "a request");
        assert_eq!(parse_reply(&ip[..24], true, 0x1234), None, "truncated");
    }

    #[test]
    fn backend_modes_read_plainly() {
        let uplink = Some("192.0.2.0/24".parse().unwrap());
        let near: Ipv4Addr = "192.0.2.12".parse().unwrap();
        let far: Ipv4Addr = "198.51.100.13".parse().unwrap();
        assert_eq!(
            backend_mode(&BackendSpec::HostGw, uplink, near),
            "host-gw direct"
        );
        assert_eq!(
            backend_mode(&BackendSpec::HostGw, uplink, far),
            "host-gw unrouted: off segment"
        );
        let dr = BackendSpec::Vxlan(twill_api::resources::VxlanOptions {
            direct_routing: true,
            ..Default::default()
        });
        assert_eq!(
            backend_mode(&dr, uplink, near),
            "vxlan direct (same segment)"
        );
        assert_eq!(backend_mode(&dr, uplink, far), "vxlan tunnel");
        assert_eq!(
            backend_mode(&BackendSpec::Vxlan(Default::default()), uplink, near),
            "vxlan tunnel"
        );
        assert_eq!(
            backend_mode(&BackendSpec::Static(Default::default()), uplink, near),
            "vxlan tunnel"
        );
        assert_eq!(
            backend_mode(&BackendSpec::Udp(Default::default()), uplink, far),
            "udp tunnel (userspace, port 8285)"
        );
    }
}
