//! Anti-spoofing in both pod wirings, in the lab's upstream model (x, y, z × a, b, c on 2
//! nodes): x/a (on n1) sends UDP datagrams to receivers in x/c (same node) and x/b (the
//! other node) with its own address and MAC (they arrive), with another pod's address
//! (y/b's) and with an address no pod has, bound to a /32 added to its eth0 (nothing
//! arrives), and (bridge wiring) from its own address with a MAC that is not its own
//! (nothing arrives);
//! then with its own again (they arrive: nothing was left broken).
//!
//! Bound: one lab per wiring (~5-20 s to build) and five sends of 1 s each: under 40 s
//! per test. Needs root.

mod policy_util;
use policy_util::*;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use twill_lab::plan::PodWiring;

const PORT: u16 = 82;

/// A UDP socket on :82 in `netns` recording the source of every datagram it gets.
struct Recorder {
    seen: Arc<Mutex<Vec<Ipv4Addr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn new(netns: &str) -> Recorder {
        let ns = twill_lab::probe::open_netns(netns).unwrap();
        let sock = twill_netlink::run_in(&ns, || UdpSocket::bind(("0.0.0.0", PORT)))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((_, SocketAddr::V4(peer))) = sock.recv_from(&mut buf) {
                    seen2.lock().unwrap().push(*peer.ip());
                }
            }
        });
        Recorder {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn take(&self) -> Vec<Ipv4Addr> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Ten datagrams from `src` (an address of the pod) in `netns` to each of `dsts`, then a
/// second for stragglers.
fn send_from(netns: &str, src: Ipv4Addr, dsts: &[Ipv4Addr]) {
    let ns = twill_lab::probe::open_netns(netns).unwrap();
    let sock = twill_netlink::run_in(&ns, || UdpSocket::bind((src, 0)))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {src} in {netns}: {e}"));
    for _ in 0..10 {
        for d in dsts {
            let _ = sock.send_to(b"twill spoof probe", (*d, PORT));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(800));
}

fn ip(args: &[&str]) {
    twill_testkit::sh(&[&["ip"], args].concat());
}

fn spoofing(tag: char, wiring: PodWiring) {
    let lab = PolicyLab::up(tag, wiring);
    let (xa, xb, xc, yb) = (
        lab.pod("x/a").clone(),
        lab.pod("x/b").clone(),
        lab.pod("x/c").clone(),
        lab.pod("y/b").clone(),
    );
    let near = Recorder::new(&xc.netns);
    let far = Recorder::new(&xb.netns);
    let dsts = [xc.ip, xb.ip];
    let check = |what: &str, src: Ipv4Addr, arrive: bool| {
        send_from(&xa.netns, src, &dsts);
        for (r, who) in [(&near, "x/c (same node)"), (&far, "x/b (other node)")] {
            let seen = r.take();
            if arrive {
                assert!(
                    seen.iter().filter(|s| **s == src).count() >= 5,
                    "{wiring:?}, {what}: {who} got {seen:?}, expected datagrams from {src}"
                );
            } else {
                assert!(
                    seen.is_empty(),
                    "{wiring:?}, {what}: {who} got {seen:?}, expected nothing"
                );
            }
        }
    };
    check("own address and MAC", xa.ip, true);

    // Another pod's address, then one no pod has.
    for (what, forged) in [
        ("y/b's address", yb.ip),
        ("an address no pod has", Ipv4Addr::new(10, 244, 250, 7)),
    ] {
        let a = format!("{forged}/32");
        ip(&["-n", &xa.netns, "addr", "add", &a, "dev", "eth0"]);
        check(what, forged, false);
        ip(&["-n", &xa.netns, "addr", "del", &a, "dev", "eth0"]);
    }

    // Its own address from a MAC that is not its own: bridge wiring only. In l3 the pod's
    // veth is point to point and routed (every frame goes to the host veth's fixed MAC,
    // nothing is switched by source MAC), so a MAC impersonates nobody; l3's anti-spoofing
    // is strict reverse-path filtering on the address, proven above.
    if wiring == PodWiring::Bridge {
        forged_mac(&xa, &check);
    }

    check("own address and MAC again", xa.ip, true);
}

fn forged_mac(xa: &twill_lab::netpol_probe::ModelPod, check: &dyn Fn(&str, Ipv4Addr, bool)) {
    let link = twill_testkit::sh(&["ip", "-j", "-n", &xa.netns, "link", "show", "eth0"]);
    let link: serde_json::Value = serde_json::from_slice(&link.stdout).unwrap();
    let mac = link[0]["address"].as_str().unwrap().to_string();
    ip(&[
        "-n",
        &xa.netns,
        "link",
        "set",
        "eth0",
        "address",
        "02:42:de:ad:be:ef",
    ]);
    check("a forged MAC", xa.ip, false);
    ip(&["-n", &xa.netns, "link", "set", "eth0", "address", &mac]);
}

#[test]
fn spoofing_is_dropped_bridge() {
    twill_testkit::require_root("spoofing_is_dropped_bridge");
    spoofing('s', PodWiring::Bridge);
}

#[test]
fn spoofing_is_dropped_l3() {
    twill_testkit::require_root("spoofing_is_dropped_l3");
    spoofing('t', PodWiring::L3);
}
