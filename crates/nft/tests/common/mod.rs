//! Helpers shared by the root-gated tests: running code inside a test namespace and
//! reading Twill's table back with `nft`.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use twill_netlink::{run_in, Netns};
use twill_testkit::TestNetns;

/// Runs `f` on a thread inside the test namespace `ns`.
pub fn in_ns<T: Send>(ns: &TestNetns, f: impl FnOnce() -> T + Send) -> T {
    let handle = Netns::open(ns.path()).expect("open test netns");
    run_in(&handle, f).expect("enter test netns")
}

/// `nft -j list table ip twill` inside `ns`, parsed.
pub fn list_table_json(ns: &TestNetns) -> serde_json::Value {
    let out = ns.exec(&["nft", "-j", "list", "table", "ip", "twill"]);
    serde_json::from_slice(&out.stdout).expect("nft -j output is JSON")
}

/// The rules of each chain of our table as nft prints them back (`nft -j` expressions).
pub fn rules_per_chain(
    ns: &TestNetns,
) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
    let mut chains = std::collections::BTreeMap::new();
    for item in list_table_json(ns)["nftables"].as_array().unwrap() {
        if let Some(chain) = item.get("chain") {
            chains
                .entry(chain["name"].as_str().unwrap().to_string())
                .or_insert_with(Vec::new);
        }
        if let Some(rule) = item.get("rule") {
            chains
                .entry(rule["chain"].as_str().unwrap().to_string())
                .or_insert_with(Vec::new)
                .push(rule["expr"].clone());
        }
    }
    chains
}

/// `nft list set|map ip twill NAME` inside `ns`, as text.
pub fn list_set(ns: &TestNetns, kind: &str, name: &str) -> String {
    String::from_utf8(ns.exec(&["nft", "list", kind, "ip", "twill", name]).stdout).unwrap()
}

/// A TCP server inside `ns` on `addr` that answers every connection with the peer's
/// address (what the server sees as the source) and closes. Runs until the process ends.
pub fn tcp_peer_reporter(ns: &TestNetns, addr: &str) {
    let listener = in_ns(ns, || TcpListener::bind(addr)).expect("bind tcp reporter");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = std::io::Write::write_all(&mut conn, peer.as_bytes());
        }
    });
}

/// A UDP server inside `ns` on `addr` that answers each datagram with the sender's address.
pub fn udp_peer_reporter(ns: &TestNetns, addr: &str) {
    let socket = in_ns(ns, || UdpSocket::bind(addr)).expect("bind udp reporter");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(from.ip().to_string().as_bytes(), from);
        }
    });
}

/// Connects from inside `ns` to `to` and returns what the server reported (the source
/// address it saw), or the error.
pub fn tcp_ask(ns: &TestNetns, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, || {
        let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut conn, &mut answer)
            .map_err(|e| format!("read from {to}: {e}"))?;
        Ok(answer)
    })
}

/// Sends one UDP datagram from inside `ns` to `to` and returns the reply.
pub fn udp_ask(ns: &TestNetns, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, || {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        socket
            .connect(to)
            .map_err(|e| format!("connect {to}: {e}"))?;
        socket
            .send(b"who am i")
            .map_err(|e| format!("send to {to}: {e}"))?;
        let mut buf = [0u8; 64];
        let n = socket
            .recv(&mut buf)
            .map_err(|e| format!("no reply from {to}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}
