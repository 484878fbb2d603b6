//! Watching the kernels of many namespaces for the routes a mesh should give them: one
//! netlink socket per namespace subscribed to IPv4 route changes (what `ip monitor route`
//! reads), each change stamped as it arrives, so "every kernel has every block" is timed to
//! the event, not to a polling interval. [`Tracker`] is the pure bookkeeping; [`Watcher`]
//! the I/O edge (sockets, poll, a dump to start from and to recover a lost event).

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;
use twill_netlink::codec;
use twill_netlink::fib::{parse_fib_route, route_dump_request};
use twill_netlink::rtnl::{RTM_DELROUTE, RTM_NEWROUTE, RT_TABLE_MAIN};
use twill_netlink::{FibRoute, Netns, Socket};

/// RTMGRP_IPV4_ROUTE (linux/rtnetlink.h), the legacy group bit for RTNLGRP_IPV4_ROUTE.
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// Room for a burst of 10,000 route changes before the kernel drops events (ENOBUFS).
const RCVBUF: libc::c_int = 16 << 20;

/// The pod network every watched route lies in.
pub const POD_NET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16);

/// What one kernel must end up holding: for each gateway, that many distinct prefixes of
/// length `prefix_len` inside [`POD_NET`] routed through it (the blocks of the node behind
/// it: which blocks a twilld claims is its own business, so they are counted, not named).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Want {
    pub prefix_len: u8,
    pub per_gateway: HashMap<Ipv4Addr, usize>,
}

#[derive(Debug, Default)]
struct Node {
    want: Want,
    /// Wanted-shape prefixes present, and the wanted gateway they go through.
    have: HashMap<Ipv4Net, Ipv4Addr>,
    /// How many of `have` go through each gateway.
    count: HashMap<Ipv4Addr, usize>,
    /// When `have` last became all of `want` (None while it is not).
    done_at: Option<Instant>,
}

impl Node {
    fn complete(&self) -> bool {
        self.want
            .per_gateway
            .iter()
            .all(|(gw, n)| self.count.get(gw).copied().unwrap_or(0) >= *n)
    }

    fn remove(&mut self, dst: &Ipv4Net) {
        if let Some(gw) = self.have.remove(dst) {
            *self.count.entry(gw).or_default() -= 1;
        }
    }

    fn insert(&mut self, dst: Ipv4Net, gw: Ipv4Addr) {
        self.remove(&dst);
        self.have.insert(dst, gw);
        *self.count.entry(gw).or_default() += 1;
    }

    fn stamp(&mut self, at: Instant) {
        self.done_at = self.complete().then(|| self.done_at.unwrap_or(at));
    }
}

/// Which wanted routes each kernel has, from route events. Pure.
#[derive(Debug, Default)]
pub struct Tracker {
    nodes: Vec<Node>,
}

impl Tracker {
    pub fn new(wants: Vec<Want>) -> Tracker {
        Tracker {
            nodes: wants
                .into_iter()
                .map(|want| Node {
                    want,
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// The prefix of a route of the wanted shape for node `i` (main table, in [`POD_NET`],
    /// the wanted length), and the wanted gateway among its next hops if it has one.
    fn shape(&self, i: usize, r: &FibRoute) -> Option<(Ipv4Net, Option<Ipv4Addr>)> {
        let IpNet::V4(dst) = r.dst else { return None };
        let want = &self.nodes[i].want;
        if r.table != RT_TABLE_MAIN
            || dst.prefix_len() != want.prefix_len
            || !POD_NET.contains(&dst)
        {
            return None;
        }
        let gw = r.next_hops.iter().find_map(|h| match h.gateway {
            Some(IpAddr::V4(g)) if want.per_gateway.contains_key(&g) => Some(g),
            _ => None,
        });
        Some((dst, gw))
    }

    /// A route of node `i` was added or replaced (`present`) or deleted, at `at`.
    pub fn apply(&mut self, i: usize, r: &FibRoute, present: bool, at: Instant) {
        let Some((dst, gw)) = self.shape(i, r) else {
            return;
        };
        let n = &mut self.nodes[i];
        match (present, gw) {
            (true, Some(gw)) => n.insert(dst, gw),
            // Deleted, or replaced by a route through another gateway (or a blackhole).
            _ => n.remove(&dst),
        }
        n.stamp(at);
    }

    /// Node `i`'s kernel as a dump shows it (replacing what events said).
    pub fn reset(&mut self, i: usize, routes: &[FibRoute], at: Instant) {
        let found: Vec<(Ipv4Net, Ipv4Addr)> = routes
            .iter()
            .filter_map(|r| match self.shape(i, r) {
                Some((dst, Some(gw))) => Some((dst, gw)),
                _ => None,
            })
            .collect();
        let n = &mut self.nodes[i];
        n.have.clear();
        n.count.clear();
        for (dst, gw) in found {
            n.insert(dst, gw);
        }
        n.stamp(at);
    }

    /// When the last kernel became complete, once all are.
    pub fn all_done(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .map(|n| n.done_at)
            .collect::<Option<Vec<Instant>>>()?
            .into_iter()
            .max()
    }

    /// (node, routes it has, routes it wants) for every node still missing some.
    /// When each kernel got everything it wants (None: not yet).
    pub fn done_times(&self) -> Vec<Option<Instant>> {
        self.nodes.iter().map(|n| n.done_at).collect()
    }

    pub fn missing(&self) -> Vec<(usize, usize, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.done_at.is_none())
            .map(|(i, n)| (i, n.have.len(), n.want.per_gateway.values().sum()))
            .collect()
    }
}

/// One namespace's subscription and a socket for dumps.
struct Sub {
    events: OwnedFd,
    dumper: Socket,
}

/// Route events of many namespaces, fed into a [`Tracker`].
pub struct Watcher {
    subs: Vec<Sub>,
    pub tracker: Tracker,
    buf: Vec<u8>,
}

fn subscribe() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("open a netlink socket");
    }
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the option value is a c_int that lives across the call.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &RCVBUF as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: sockaddr_nl is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = RTMGRP_IPV4_ROUTE;
    // SAFETY: addr is a valid sockaddr_nl and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("subscribe to route changes (bind RTMGRP_IPV4_ROUTE)");
    }
    Ok(fd)
}

fn dump(s: &mut Socket) -> Result<Vec<FibRoute>> {
    let mut out = Vec::new();
    let cell = std::cell::RefCell::new(&mut out);
    s.dump_each(
        route_dump_request(),
        || cell.borrow_mut().clear(),
        |p| {
            if let Some(r) = parse_fib_route(p) {
                cell.borrow_mut().push(r);
            }
        },
    )
    .context("dump the routes")?;
    Ok(out)
}

impl Watcher {
    /// When each kernel got everything it wants (None: not yet).
    pub fn done_times(&self) -> Vec<Option<Instant>> {
        self.tracker.done_times()
    }

    /// Subscribes in each namespace (`/run/netns/NAME`), then reads each kernel once, so the
    /// tracker starts from what is there. `wants[i]` belongs to `namespaces[i]`.
    pub fn open(namespaces: &[String], wants: Vec<Want>) -> Result<Watcher> {
        assert_eq!(namespaces.len(), wants.len());
        let mut subs = Vec::new();
        for name in namespaces {
            let ns = Netns::open(format!("/run/netns/{name}"))?;
            let events = twill_netlink::run_here_in(&ns, subscribe)
                .with_context(|| format!("in namespace {name}"))??;
            let dumper = Socket::new_here_in(libc::NETLINK_ROUTE, &ns)?;
            subs.push(Sub { events, dumper });
        }
        let mut w = Watcher {
            subs,
            tracker: Tracker::new(wants),
            buf: vec![0; 1 << 20],
        };
        for i in 0..w.subs.len() {
            w.resync(i)?;
        }
        Ok(w)
    }

    fn resync(&mut self, i: usize) -> Result<()> {
        let routes = dump(&mut self.subs[i].dumper)?;
        self.tracker.reset(i, &routes, Instant::now());
        Ok(())
    }

    /// Reads what is pending on node `i`'s subscription.
    fn drain(&mut self, i: usize) -> Result<()> {
        loop {
            let fd = self.subs[i].events.as_raw_fd();
            // SAFETY: buf is valid for its length; MSG_DONTWAIT never blocks.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let at = Instant::now();
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => continue,
                    // Events were lost: read the kernel whole instead.
                    Some(libc::ENOBUFS) => {
                        self.resync(i)?;
                        continue;
                    }
                    _ => return Err(e).context("read route events"),
                }
            }
            for m in codec::messages(&self.buf[..n as usize]).flatten() {
                let present = match m.msg_type {
                    RTM_NEWROUTE => true,
                    RTM_DELROUTE => false,
                    _ => continue,
                };
                if let Some(r) = parse_fib_route(m.payload) {
                    self.tracker.apply(i, &r, present, at);
                }
            }
        }
    }

    /// Follows the events until every kernel holds what it wants (returns when the last one
    /// got there) or `deadline` passes (an error naming who misses what). `alive` is asked
    /// between waits, so a daemon that died ends the wait at once with its error.
    pub fn wait_all(
        &mut self,
        deadline: Instant,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<Instant> {
        loop {
            if let Some(t) = self.tracker.all_done() {
                return Ok(t);
            }
            let now = Instant::now();
            if now >= deadline {
                let missing = self.tracker.missing();
                let some: Vec<String> = missing
                    .iter()
                    .take(5)
                    .map(|(i, have, want)| format!("node {i} has {have} of {want}"))
                    .collect();
                bail!(
                    "{} kernels still miss routes at the deadline: {}",
                    missing.len(),
                    some.join(", ")
                );
            }
            alive()?;
            let mut fds: Vec<libc::pollfd> = self
                .subs
                .iter()
                .map(|s| libc::pollfd {
                    fd: s.events.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let wait_ms = (deadline - now).as_millis().min(200) as libc::c_int;
            // SAFETY: fds is a valid array of pollfd for its length.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e).context("poll the route subscriptions");
            }
            for (i, p) in fds.iter().enumerate() {
                if p.revents != 0 {
                    self.drain(i)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use twill_netlink::NextHop;

    fn route(dst: &str, gw: Option<&str>) -> FibRoute {
        FibRoute {
            dst: dst.parse().unwrap(),
            next_hops: gw
                .map(|g| vec![NextHop::via(g.parse().unwrap())])
                .unwrap_or_default(),
            table: RT_TABLE_MAIN,
            protocol: 12,
            metric: None,
        }
    }
    fn want(len: u8, gws: &[(&str, usize)]) -> Want {
        Want {
            prefix_len: len,
            per_gateway: gws.iter().map(|(g, n)| (g.parse().unwrap(), *n)).collect(),
        }
    }

    #[test]
    fn done_when_every_kernel_has_its_routes_through_each_gateway() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = Tracker::new(vec![
            want(24, &[("192.0.2.2", 1)]),
            want(24, &[("192.0.2.1", 1)]),
        ]);
        assert_eq!(t.all_done(), None);
        // Other gateways, lengths, tables, networks and blackholes do not count.
        t.apply(0, &route("10.244.9.0/24", Some("192.0.2.9")), true, at(1));
        t.apply(0, &route("10.244.1.0/26", Some("192.0.2.2")), true, at(1));
        t.apply(0, &route("10.9.1.0/24", Some("192.0.2.2")), true, at(1));
        let mut other_table = route("10.244.1.0/24", Some("192.0.2.2"));
        other_table.table = 7;
        t.apply(0, &other_table, true, at(2));
        t.apply(1, &route("10.244.0.0/24", None), true, at(4));
        assert_eq!(t.missing(), [(0, 0, 1), (1, 0, 1)]);
        t.apply(0, &route("10.244.1.0/24", Some("192.0.2.2")), true, at(10));
        t.apply(1, &route("10.244.0.0/24", Some("192.0.2.1")), true, at(20));
        assert_eq!(t.all_done(), Some(at(20)));
        // A route that leaves undoes it; coming back stamps the new time.
        t.apply(1, &route("10.244.0.0/24", Some("192.0.2.1")), false, at(30));
        assert_eq!(t.all_done(), None);
        t.apply(1, &route("10.244.0.0/24", Some("192.0.2.1")), true, at(40));
        assert_eq!(t.all_done(), Some(at(40)));
        // A repeated add keeps the first completion time and counts once.
        t.apply(1, &route("10.244.0.0/24", Some("192.0.2.1")), true, at(50));
        assert_eq!(t.all_done(), Some(at(40)));
        // Replaced through another gateway: no longer counts.
        t.apply(1, &route("10.244.0.0/24", Some("192.0.2.7")), true, at(60));
        assert_eq!(t.all_done(), None);
    }

    #[test]
    fn counts_per_gateway_and_a_dump_replaces_the_event_state() {
        let t0 = Instant::now();
        let mut t = Tracker::new(vec![want(30, &[("192.0.2.2", 2), ("192.0.2.3", 1)])]);
        t.reset(0, &[route("10.244.0.0/30", Some("192.0.2.2"))], t0);
        assert_eq!(t.missing(), [(0, 1, 3)]);
        t.apply(0, &route("10.244.0.8/30", Some("192.0.2.3")), true, t0);
        assert_eq!(t.all_done(), None, "192.0.2.2 still gives one of two");
        t.reset(
            0,
            &[
                route("10.244.0.0/30", Some("192.0.2.2")),
                route("10.244.0.4/30", Some("192.0.2.2")),
                route("10.244.0.8/30", Some("192.0.2.3")),
            ],
            t0,
        );
        assert_eq!(t.all_done(), Some(t0));
        // Nothing wanted: done from the start.
        let mut empty = Tracker::new(vec![Want::default()]);
        empty.reset(0, &[], t0);
        assert_eq!(empty.all_done(), Some(t0));
    }
}
