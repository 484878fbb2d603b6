//! Twill's RIP speaker (codec, router and socket, driven by a small loop in a test
//! namespace) against FRR 8.4's ripd and BIRD 2's `protocol rip` on a bridge: routes
//! learned both ways (in FRR's kernel as `proto rip`, BIRD's as `proto bird`), withdrawals
//! both ways with the next triggered update, Twill's last response at 16 on stop, the
//! whole-table request answered at once, and bad packets from a plain UDP socket changing
//! nothing. Bounded: FRR runs `timers basic 5 15 10`, BIRD `update time 5; timeout time
//! 15`; every wait has a deadline (the longest 20 s: FRR's silent stop times out).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{ripd_conf, route, routes, wait_for, wait_no_route, wait_route, FrrRip, Segment};
use ipnet::Ipv4Net;
use twill_rip::io::Socket;
use twill_rip::router::{Config, Input, Output, Route, Router, Timers};

enum Cmd {
    SetOwn(Vec<Ipv4Net>),
    /// Input::Stop, then end.
    Stop,
    /// End without a word (a crash).
    Kill,
}

/// The speaker in `ns` on `ifname` from `addr`, on its own thread.
struct Speaker {
    tx: mpsc::Sender<Cmd>,
    routes: Arc<Mutex<Vec<Route>>>,
    sent: Arc<Mutex<usize>>,
    thread: Option<JoinHandle<()>>,
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
}

impl Speaker {
    fn start(ns: &str, ifname: &str, addr: Ipv4Addr, timers: Timers, own: &[&str]) -> Speaker {
        let (tx, rx) = mpsc::channel();
        let routes = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(0));
        let (ns, ifname) = (ns.to_string(), ifname.to_string());
        let own: Vec<Ipv4Net> = own.iter().map(|p| p.parse().unwrap()).collect();
        let (r2, s2) = (routes.clone(), sent.clone());
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let socket = Socket::open(&ifname, addr).expect("RIP socket");
            let mut router = Router::new(Config {
                timers,
                ..Config::new(addr, "192.0.2.0/24".parse().unwrap())
            });
            let mut out = router.handle(Input::SetOwn(own), Instant::now());
            out.extend(router.handle(Input::Start, Instant::now()));
            ready_tx.send(()).unwrap();
            loop {
                for o in out.drain(..) {
                    if let Output::Send { to, message } = o {
                        socket.send(to, &message).expect("send");
                        *s2.lock().unwrap() += 1;
                    }
                }
                *r2.lock().unwrap() = router.routes();
                match rx.try_recv() {
                    Ok(Cmd::SetOwn(p)) => {
                        out.extend(router.handle(Input::SetOwn(p), Instant::now()))
                    }
                    Ok(Cmd::Stop) => {
                        for o in router.handle(Input::Stop, Instant::now()) {
                            if let Output::Send { to, message } = o {
                                socket.send(to, &message).expect("send");
                            }
                        }
                        return;
                    }
                    Ok(Cmd::Kill) => return,
                    Err(_) => {}
                }
                let now = Instant::now();
                let wait = router
                    .next_deadline()
                    .map_or(Duration::from_millis(50), |d| {
                        d.saturating_duration_since(now)
                    })
                    .min(Duration::from_millis(50));
                match socket.recv(wait).expect("recv") {
                    Some(got) => {
                        if let Ok(d) = got.message {
                            out.extend(router.handle(
                                Input::Received {
                                    from: got.from,
                                    message: d.message,
                                },
                                Instant::now(),
                            ));
                        }
                    }
                    None => out.extend(router.handle(Input::Tick, Instant::now())),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("speaker up");
        Speaker {
            tx,
            routes,
            sent,
            thread: Some(thread),
        }
    }

    fn routes(&self) -> Vec<(String, String, u8)> {
        self.routes
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.prefix.to_string(), r.next_hop.to_string(), r.metric))
            .collect()
    }

    fn wait_route(&self, dst: &str, via: &str, metric: u8, timeout: Duration) -> Duration {
        let want = (dst.to_string(), via.to_string(), metric);
        wait_for(
            &format!("twill learns {dst} via {via} metric {metric}"),
            timeout,
            || self.routes().contains(&want).then_some(()),
            || format!("{:?}", self.routes()),
        )
        .1
    }

    fn end(&mut self, cmd: Cmd) {
        let _ = self.tx.send(cmd);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.end(Cmd::Kill);
    }
}

const FRR_TIMERS: (u32, u32, u32) = (5, 15, 10);

fn short() -> Timers {
    Timers {
        update: Duration::from_secs(5),
        timeout: Duration::from_secs(15),
        garbage: Duration::from_secs(10),
    }
}

#[test]
fn twill_and_frr_ripd_learn_each_others_routes_and_withdrawals() {
    twill_testkit::require_root("twill_and_frr_ripd_learn_each_others_routes_and_withdrawals");
    twill_testkit::require_program("frr rip interop", "/usr/lib/frr/ripd", "frr");
    let seg = Segment::new("twlripa", 2);
    let (frr_ns, twl) = (&seg.members[0], &seg.members[1]);
    let mut frr = FrrRip::start(
        frr_ns.name(),
        "ip route 10.244.5.0/24 blackhole\nip route 10.244.6.0/24 blackhole tag 7",
        &ripd_conf(FRR_TIMERS, " redistribute static"),
    );
    let mut twill = Speaker::start(
        twl.name(),
        &twl.ifname,
        twl.addr,
        short(),
        &["10.244.1.0/24"],
    );

    // FRR's routes at its metric 1 + 1, via FRR.
    twill.wait_route("10.244.5.0/24", "192.0.2.1", 2, Duration::from_secs(8));
    twill.wait_route("10.244.6.0/24", "192.0.2.1", 2, Duration::from_secs(2));
    assert_eq!(
        twill
            .routes
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.prefix.to_string() == "10.244.6.0/24")
            .unwrap()
            .tag,
        7
    );
    // Ours in FRR's kernel as proto rip, via us; and in `show ip rip` at metric 2.
    wait_route(
        frr_ns.name(),
        "10.244.1.0/24",
        "192.0.2.2",
        "rip",
        Duration::from_secs(8),
    );
    let show = frr.vtysh(&["show ip rip"]);
    let line = show
        .lines()
        .find(|l| l.contains("10.244.1.0/24"))
        .unwrap_or_else(|| panic!("{show}"));
    assert!(
        line.contains("192.0.2.2") && line.split_whitespace().any(|w| w == "2"),
        "{line}"
    );
    // FRR sees us as a RIP neighbour (a "gateway" in its status) with no bad packets or routes.
    let status = frr.vtysh(&["show ip rip status"]);
    let gw = status
        .lines()
        .find(|l| l.trim_start().starts_with("192.0.2.2"))
        .unwrap_or_else(|| panic!("{status}"));
    let counts: Vec<&str> = gw.split_whitespace().collect();
    assert_eq!(
        &counts[1..3],
        ["0", "0"],
        "bad packets / bad routes from us: {status}"
    );
    // Poisoned reverse reaches FRR as 16 and it keeps its own route.
    assert_eq!(
        route(frr_ns.name(), "10.244.5.0/24").map(|r| r.kind),
        Some("blackhole".to_string())
    );

    // FRR withdraws a route: gone from Twill with FRR's triggered update (held 1-5 s after
    // its previous one).
    frr.vtysh(&["conf t", "no ip route 10.244.5.0/24 blackhole"]);
    wait_for(
        "twill drops 10.244.5.0/24",
        Duration::from_secs(6),
        || (!twill.routes().iter().any(|r| r.0 == "10.244.5.0/24")).then_some(()),
        || format!("{:?}", twill.routes()),
    );
    // Twill adds a block: in FRR's kernel with our next triggered update (1-5 s hold).
    twill
        .tx
        .send(Cmd::SetOwn(vec![
            "10.244.1.0/24".parse().unwrap(),
            "10.244.2.0/24".parse().unwrap(),
        ]))
        .unwrap();
    wait_route(
        frr_ns.name(),
        "10.244.2.0/24",
        "192.0.2.2",
        "rip",
        Duration::from_secs(6),
    );
    // Twill drops one: FRR's kernel loses it with the next triggered update.
    twill
        .tx
        .send(Cmd::SetOwn(vec!["10.244.2.0/24".parse().unwrap()]))
        .unwrap();
    let took = wait_no_route(frr_ns.name(), "10.244.1.0/24", Duration::from_secs(6));
    eprintln!("FRR dropped a withdrawn block after {took:?}");
    // Twill stops: its final response at 16 empties FRR's kernel of its routes at once.
    twill.end(Cmd::Stop);
    let took = wait_no_route(frr_ns.name(), "10.244.2.0/24", Duration::from_secs(2));
    eprintln!("FRR dropped a stopped Twill's block after {took:?}");
    drop(twill);

    // The other way round: FRR 8.4's ripd sends nothing when it stops (SIGTERM), so a
    // neighbour keeps its routes until they time out (15 s here, 180 s by default).
    let mut twill = Speaker::start(twl.name(), &twl.ifname, twl.addr, short(), &[]);
    twill.wait_route("10.244.6.0/24", "192.0.2.1", 2, Duration::from_secs(8));
    let stopped = Instant::now();
    frr.stop();
    wait_for(
        "twill drops a stopped FRR's 10.244.6.0/24",
        Duration::from_secs(20),
        || twill.routes().is_empty().then_some(()),
        || format!("{:?}", twill.routes()),
    );
    eprintln!(
        "Twill dropped a stopped FRR's route after {:?}",
        stopped.elapsed()
    );
    twill.end(Cmd::Kill);
}

#[test]
fn frr_learns_twills_table_at_once_from_the_answer_to_its_request() {
    twill_testkit::require_root("frr_learns_twills_table_at_once_from_the_answer_to_its_request");
    twill_testkit::require_program("frr rip interop", "/usr/lib/frr/ripd", "frr");
    let seg = Segment::new("twlripq", 2);
    let (frr_ns, twl) = (&seg.members[0], &seg.members[1]);
    // Twill first, with a 30 s update: after its start-up update, only an answer to FRR's
    // request can bring FRR our routes quickly.
    let twill = Speaker::start(
        twl.name(),
        &twl.ifname,
        twl.addr,
        Timers::RFC,
        &["10.244.1.0/24"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let sent_before = *twill.sent.lock().unwrap();
    let start = Instant::now();
    let frr = FrrRip::start(frr_ns.name(), "", &ripd_conf(FRR_TIMERS, ""));
    wait_route(
        frr_ns.name(),
        "10.244.1.0/24",
        "192.0.2.2",
        "rip",
        Duration::from_secs(5),
    );
    let took = start.elapsed();
    eprintln!("FRR had Twill's block {took:?} after ripd started");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // We answered (unicast) rather than waiting for our periodic update.
    assert!(*twill.sent.lock().unwrap() > sent_before);
    assert!(frr.log("ripd").contains("192.0.2.2"), "{}", frr.log("ripd"));
}

#[test]
fn malformed_packets_change_nothing_and_a_response_from_another_port_is_ignored() {
    twill_testkit::require_root(
        "malformed_packets_change_nothing_and_a_response_from_another_port_is_ignored",
    );
    let seg = Segment::new("twlripm", 2);
    let (peer, twl) = (&seg.members[0], &seg.members[1]);
    let twill = Speaker::start(
        twl.name(),
        &twl.ifname,
        twl.addr,
        short(),
        &["10.244.1.0/24"],
    );
    let peer_ns = peer.name().to_string();
    let send_from = move |port: u16, payloads: Vec<Vec<u8>>| {
        let ns = peer_ns.clone();
        std::thread::spawn(move || {
            enter(&ns);
            let s = UdpSocket::bind(SocketAddrV4::new("192.0.2.1".parse().unwrap(), port)).unwrap();
            for p in payloads {
                s.send_to(&p, SocketAddrV4::new("192.0.2.2".parse().unwrap(), 520))
                    .unwrap();
            }
        })
        .join()
        .unwrap();
    };
    let good = |metric: u8| {
        twill_rip::Message::Response(vec![twill_rip::Entry {
            tag: 0,
            prefix: "10.244.5.0/24".parse().unwrap(),
            next_hop: Ipv4Addr::UNSPECIFIED,
            metric,
        }])
        .encode()
    };
    let mut bad = vec![
        vec![],
        vec![2],
        vec![2, 2, 0, 0],
        vec![9, 2, 0, 0],
        vec![2, 1, 0, 0],
    ];
    let mut long = good(1);
    long.push(0);
    bad.push(long);
    let mut v1 = good(1);
    v1[1] = 1;
    bad.push(v1);
    bad.push(good(0));
    bad.push(good(17));
    send_from(520, bad);
    // A good response from port 5200: ignored (§3.9.2).
    send_from(5200, vec![good(1)]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(twill.routes().is_empty(), "{:?}", twill.routes());
    // The same from 520 is learned: the socket and router were fine all along.
    send_from(520, vec![good(1)]);
    twill.wait_route("10.244.5.0/24", "192.0.2.1", 2, Duration::from_secs(2));
    let _ = routes(twl.name());
}

/// BIRD 2's `protocol rip` in a namespace, owned by PID (foreground), stopped on drop.
struct Bird {
    dir: twill_testkit::TempDir,
    child: Option<std::process::Child>,
}

impl Bird {
    fn start(ns: &str, conf: &str) -> Bird {
        let dir = twill_testkit::TempDir::new("twlripbird");
        let d = dir.path.display().to_string();
        std::fs::write(dir.path.join("bird.conf"), conf).unwrap();
        let out = std::fs::File::create(dir.path.join("bird.out")).unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "bird", "-f", "-c"])
            .arg(format!("{d}/bird.conf"))
            .args([
                "-s",
                &format!("{d}/bird.ctl"),
                "-P",
                &format!("{d}/bird.pid"),
            ])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start bird");
        Bird {
            dir,
            child: Some(child),
        }
    }

    fn birdc(&self, cmd: &str) -> String {
        let ctl = self.dir.path.join("bird.ctl").display().to_string();
        let mut argv = vec!["birdc", "-s", &ctl];
        argv.extend(cmd.split_whitespace());
        twill_testkit::try_sh(&argv).1
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn twill_and_bird_rip_learn_each_others_routes() {
    twill_testkit::require_root("twill_and_bird_rip_learn_each_others_routes");
    twill_testkit::require_program("bird rip interop", "bird", "bird2");
    let seg = Segment::new("twlripb", 2);
    let (bird_ns, twl) = (&seg.members[0], &seg.members[1]);
    let bird = Bird::start(
        bird_ns.name(),
        &format!(
            "router id 192.0.2.1;\nprotocol device {{ }}\n\
             protocol kernel {{ ipv4 {{ import none; export where source = RTS_RIP; }}; }}\n\
             protocol static {{ ipv4; route 10.244.9.0/24 blackhole; }}\n\
             protocol rip twlrip {{ ipv4 {{ import all; export where source = RTS_STATIC; }};\n\
               interface \"{}\" {{ version 2; update time 5; timeout time 15; }}; }}\n",
            bird_ns.ifname
        ),
    );
    let mut twill = Speaker::start(
        twl.name(),
        &twl.ifname,
        twl.addr,
        short(),
        &["10.244.1.0/24"],
    );
    twill.wait_route("10.244.9.0/24", "192.0.2.1", 2, Duration::from_secs(8));
    wait_route(
        bird_ns.name(),
        "10.244.1.0/24",
        "192.0.2.2",
        "bird",
        Duration::from_secs(8),
    );
    let show = bird.birdc("show route protocol twlrip");
    assert!(show.contains("10.244.1.0/24"), "{show}");
    // Stop: BIRD drops our route with our last response.
    twill.end(Cmd::Stop);
    let took = wait_no_route(bird_ns.name(), "10.244.1.0/24", Duration::from_secs(3));
    eprintln!("BIRD dropped a stopped Twill's block after {took:?}");
}

#[test]
fn frrs_next_hop_on_the_segment_is_used_as_the_gateway() {
    twill_testkit::require_root("frrs_next_hop_on_the_segment_is_used_as_the_gateway");
    twill_testkit::require_program("frr rip interop", "/usr/lib/frr/ripd", "frr");
    // FRR (.1) has a static route via a third host on the segment (.3); RIPv2's next hop
    // field (RFC 2453 §4.4) tells Twill (.2) to go to .3 directly, not through FRR.
    let seg = Segment::new("twlripn", 3);
    let (frr_ns, twl) = (&seg.members[0], &seg.members[1]);
    let _frr = FrrRip::start(
        frr_ns.name(),
        "ip route 10.244.8.0/24 192.0.2.3",
        &ripd_conf(FRR_TIMERS, " redistribute static"),
    );
    let twill = Speaker::start(twl.name(), &twl.ifname, twl.addr, short(), &[]);
    twill.wait_route("10.244.8.0/24", "192.0.2.3", 2, Duration::from_secs(8));
    let r = twill.routes.lock().unwrap()[0];
    assert_eq!(r.from.to_string(), "192.0.2.1", "learned from FRR, via .3");
}
