//! In-namespace listeners and probes. A socket keeps the namespace it was created in, so each
//! socket is made on a helper thread that entered the namespace (`twill_netlink::run_in`) and
//! is then served or used from any thread. Every listener answers with one line,
//! `<listener name> <peer address it saw>`, which is what lets a check tell masquerade,
//! DNAT and hairpin apart.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use twill_netlink::{run_in, Netns};

/// How long a listener's serving loop sleeps between polls of its stop flag.
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("namespace {netns}: {source} (is the lab up? `twill lab status`)")]
    Netns {
        netns: String,
        #[source]
        source: twill_netlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: unexpected reply {reply:?}")]
    BadReply { what: String, reply: String },
    #[error("ping {dst} from {netns} failed: {detail}")]
    Ping {
        netns: String,
        dst: Ipv4Addr,
        detail: String,
    },
}

/// Opens `/run/netns/<name>`.
pub fn open_netns(name: &str) -> Result<Netns, ProbeError> {
    Netns::open(format!("/run/netns/{name}")).map_err(|source| ProbeError::Netns {
        netns: name.into(),
        source,
    })
}

fn in_netns<T: Send>(
    netns: &str,
    f: impl FnOnce() -> Result<T, ProbeError> + Send,
) -> Result<T, ProbeError> {
    let ns = open_netns(netns)?;
    run_in(&ns, f).map_err(|source| ProbeError::Netns {
        netns: netns.into(),
        source,
    })?
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProbeError {
    let what = what.into();
    move |source| ProbeError::Io { what, source }
}

/// What a listener answered: who it is and the peer address it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub responder: String,
    pub peer: SocketAddr,
}

/// The one-line answer every listener sends.
pub fn format_reply(responder: &str, peer: SocketAddr) -> String {
    format!("{responder} {peer}\n")
}

/// Reads a listener's answer.
pub fn parse_reply(text: &str) -> Option<Reply> {
    let mut parts = text.trim_end_matches('\n').splitn(2, ' ');
    let responder = parts.next().filter(|s| !s.is_empty())?.to_string();
    let peer = parts.next()?.parse().ok()?;
    Some(Reply { responder, peer })
}

/// A TCP or UDP responder serving on a background thread until dropped.
pub struct Listener {
    pub responder: String,
    pub netns: String,
    pub local: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listens on TCP `addr` inside `netns`; every connection gets one reply line, then EOF.
pub fn tcp_listener(
    netns: &str,
    responder: &str,
    addr: SocketAddr,
) -> Result<Listener, ProbeError> {
    let what = format!("listen on tcp {addr} in {netns}");
    let listener = in_netns(netns, || TcpListener::bind(addr).map_err(io(what.clone())))?;
    listener.set_nonblocking(true).map_err(io(what))?;
    let local = listener.local_addr().unwrap_or(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, name) = (stop.clone(), responder.to_string());
    let thread = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    // Accepted sockets inherit non-blocking mode; a reply is tiny.
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = stream.write_all(format_reply(&name, peer).as_bytes());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    });
    Ok(Listener {
        responder: responder.into(),
        netns: netns.into(),
        local,
        stop,
        thread: Some(thread),
    })
}

/// Listens on UDP `addr` inside `netns`; every datagram gets one reply datagram.
pub fn udp_listener(
    netns: &str,
    responder: &str,
    addr: SocketAddr,
) -> Result<Listener, ProbeError> {
    let what = format!("listen on udp {addr} in {netns}");
    let socket = in_netns(netns, || UdpSocket::bind(addr).map_err(io(what.clone())))?;
    socket.set_read_timeout(Some(POLL)).map_err(io(what))?;
    let local = socket.local_addr().unwrap_or(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, name) = (stop.clone(), responder.to_string());
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format_reply(&name, peer).as_bytes(), peer);
            }
        }
    });
    Ok(Listener {
        responder: responder.into(),
        netns: netns.into(),
        local,
        stop,
        thread: Some(thread),
    })
}

/// Connects to `dst` over TCP from inside `netns` and returns the listener's answer.
pub fn tcp_ask(netns: &str, dst: SocketAddr, timeout: Duration) -> Result<Reply, ProbeError> {
    let what = format!("tcp {dst} from {netns}");
    let stream = in_netns(netns, || {
        TcpStream::connect_timeout(&dst, timeout).map_err(io(format!("{what}: connect")))
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io(what.clone()))?;
    let mut text = String::new();
    (&stream)
        .take(512)
        .read_to_string(&mut text)
        .map_err(io(format!("{what}: read reply")))?;
    parse_reply(&text).ok_or(ProbeError::BadReply { what, reply: text })
}

/// Sends one UDP datagram to `dst` from inside `netns` and returns the answer. The socket is
/// connected, so only a reply from `dst` itself (after un-DNAT) counts.
pub fn udp_ask(netns: &str, dst: SocketAddr, timeout: Duration) -> Result<Reply, ProbeError> {
    let what = format!("udp {dst} from {netns}");
    let socket = in_netns(netns, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(io(what.clone()))?;
        s.connect(dst).map_err(io(format!("{what}: connect")))?;
        Ok(s)
    })?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(io(what.clone()))?;
    socket
        .send(b"twill lab probe\n")
        .map_err(io(format!("{what}: send")))?;
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .map_err(io(format!("{what}: no reply")))?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    parse_reply(&text).ok_or(ProbeError::BadReply { what, reply: text })
}

/// One ICMP echo from inside `netns` (`ping -c1 -W<timeout>`), the tool users know.
pub fn ping(netns: &str, dst: Ipv4Addr, timeout: Duration) -> Result<(), ProbeError> {
    let wait = timeout.as_secs().max(1).to_string();
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "ping", "-n", "-q", "-c1", "-W", &wait,
        ])
        .arg(dst.to_string())
        .output()
        .map_err(io("run ip netns exec ping (is iputils-ping installed?)"))?;
    if out.status.success() {
        return Ok(());
    }
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let detail = text
        .lines()
        .find(|l| l.contains("packet loss") || l.contains("connect:") || l.contains("ping:"))
        .unwrap_or(text.trim())
        .trim()
        .to_string();
    Err(ProbeError::Ping {
        netns: netns.into(),
        dst,
        detail,
    })
}

/// A neighbour entry as `ip -j neigh show` gives it: its MAC and states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub lladdr: Option<String>,
    pub state: Vec<String>,
}

/// The entry for `ip` in `ip -j neigh show` output, if any. Pure.
pub fn parse_neighbour(text: &str, ip: Ipv4Addr) -> Option<Neighbour> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.as_array()?.iter().find_map(|e| {
        (e.get("dst")?.as_str()? == ip.to_string()).then(|| Neighbour {
            lladdr: e.get("lladdr").and_then(|l| l.as_str()).map(str::to_string),
            state: e
                .get("state")
                .and_then(|s| s.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    })
}

/// Proxy ARP, seen from a pod: one ping to `via` (any address behind the pod's gateway)
/// makes the pod resolve `gateway`, then the pod's neighbour entry for it must hold
/// `mac`, learnt from an ARP answer (not PERMANENT: nobody may have written it by hand).
/// Returns the entry's states.
pub fn proxy_arp(
    netns: &str,
    gateway: Ipv4Addr,
    mac: &str,
    via: Ipv4Addr,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let _ = ping(netns, via, timeout);
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "neigh", "show", &gateway.to_string()])
        .output()
        .map_err(io("run ip neigh show (is iproute2 installed?)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let what = format!("{netns}'s neighbour entry for {gateway}");
    let bad = |reply: String| ProbeError::BadReply {
        what: what.clone(),
        reply,
    };
    let n = parse_neighbour(&text, gateway).ok_or_else(|| {
        bad(format!(
            "none after a ping to {via}: nothing answered the pod's ARP request for {gateway}"
        ))
    })?;
    if n.state.iter().any(|s| s == "PERMANENT") {
        return Err(bad(format!(
            "{n:?} was written by hand, not answered by proxy ARP"
        )));
    }
    match &n.lladdr {
        Some(l) if l.eq_ignore_ascii_case(mac) => Ok(n.state.join(",")),
        other => Err(bad(format!(
            "MAC {}, not the host veth's {mac} (states {})",
            other.as_deref().unwrap_or("none"),
            n.state.join(",")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_entries_are_read() {
        let text = r#"[{"dst":"169.254.1.1","dev":"eth0","lladdr":"ee:ee:ee:ee:ee:ee","state":["REACHABLE"]},
            {"dst":"10.244.1.9","dev":"eth0","state":["FAILED"]}]"#;
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        assert_eq!(
            parse_neighbour(text, gw),
            Some(Neighbour {
                lladdr: Some("ee:ee:ee:ee:ee:ee".into()),
                state: vec!["REACHABLE".into()]
            })
        );
        assert_eq!(
            parse_neighbour(text, Ipv4Addr::new(10, 244, 1, 9))
                .unwrap()
                .lladdr,
            None
        );
        assert_eq!(parse_neighbour(text, Ipv4Addr::new(10, 0, 0, 1)), None);
        assert_eq!(parse_neighbour("", gw), None);
    }

    #[test]
    fn replies_round_trip() {
        let peer: SocketAddr = "10.244.1.3:41234".parse().unwrap();
        let text = format_reply("n1-p1", peer);
        assert_eq!(text, "n1-p1 10.244.1.3:41234\n");
        assert_eq!(
            parse_reply(&text),
            Some(Reply {
                responder: "n1-p1".into(),
                peer
            })
        );
        assert_eq!(parse_reply(""), None);
        assert_eq!(parse_reply("n1-p1"), None);
        assert_eq!(parse_reply("n1-p1 nonsense"), None);
        assert_eq!(parse_reply(" 1.2.3.4:5"), None);
    }

    /// Listener and probes against the loopback of the test's own namespace (needs root to
    /// make one; never touches the root namespace).
    #[test]
    fn listeners_answer_with_the_peer_they_saw() {
        twill_testkit::require_root("listeners_answer_with_the_peer_they_saw");
        let ns = twill_testkit::TestNetns::new("probe");
        let t = Duration::from_secs(1);
        let _tcp = tcp_listener(&ns.name, "tcpl", "127.0.0.1:8080".parse().unwrap()).unwrap();
        let _udp = udp_listener(&ns.name, "udpl", "127.0.0.1:5353".parse().unwrap()).unwrap();
        let r = tcp_ask(&ns.name, "127.0.0.1:8080".parse().unwrap(), t).unwrap();
        assert_eq!(r.responder, "tcpl");
        assert_eq!(r.peer.ip(), Ipv4Addr::LOCALHOST);
        let r = udp_ask(&ns.name, "127.0.0.1:5353".parse().unwrap(), t).unwrap();
        assert_eq!(r.responder, "udpl");
        ping(&ns.name, Ipv4Addr::LOCALHOST, t).unwrap();
        // Nothing listens on 9: refused, not a hang.
        let err = tcp_ask(&ns.name, "127.0.0.1:9".parse().unwrap(), t).unwrap_err();
        assert!(err.to_string().contains("connect"), "{err}");
        let err = ping(&ns.name, Ipv4Addr::new(192, 0, 2, 99), t).unwrap_err();
        assert!(matches!(err, ProbeError::Ping { .. }), "{err}");
    }
}
