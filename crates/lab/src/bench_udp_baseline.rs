//! The flannel-style baseline of `twill lab bench` on udp: a port of flannel's `udp` backend
//! datapath (`run_proxy` in flannel-io/flannel `pkg/backend/udp/proxy_amd64.c`), the
//! reference for flannel's *design*, written inside the benchmark as the issue asks. It runs
//! as the hidden `twill lab udp-baseline --tun NAME --port P [--bind IP] [--tun-ip IP]
//! --route BLOCK=IP:PORT ...` in a twin's node namespace.
//!
//! What it keeps from flannel, on purpose (this is what is measured):
//! - a TUN opened `IFF_TUN | IFF_NO_PI`, no `IFF_VNET_HDR`, no offloads, one queue;
//! - `poll` on {tun, socket}, then, while either moved a packet, alternately one
//!   `tun_to_udp` and one `udp_to_tun`, skipping `poll` while busy;
//! - `tun_to_udp`: one `read` of at most the TUN's MTU, a linear scan of the routes (first
//!   match, moved to the front: not longest prefix), ICMP "net unreachable" back into the
//!   TUN on a miss, the TTL decremented with the incremental checksum, **one `sendto` per
//!   packet**;
//! - `udp_to_tun`: one `recv(MSG_DONTWAIT)`, TTL decrement, **one `write` per packet**
//!   (retried on EAGAIN);
//! - no check of who sent a datagram (flannel has none), no counters.
//!
//! What differs: routes come from the command line, not from flanneld's control socket (the
//! bench's table never changes during a run), and there is no log (flannel's is off unless
//! asked for). The TUN's address, MTU, routes and link state are set by whoever runs it, with
//! `ip`, as flanneld does before it starts the proxy.
//!
//! Pure: [`Routes`] (the scan), [`decrement_ttl`], [`net_unreachable`], [`parse_args`].
//! I/O: [`run`] (the loop), at the edge. Nothing here is shared with Twill's datapath: the
//! reference must not share code with what it is compared with (see [`crate::bench`]).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ipnet::Ipv4Net;

/// flannel's default UDP port (`udp_amd64.go`).
pub const FLANNEL_UDP_PORT: u16 = 8285;
/// flannel's encapsulation overhead: outer IPv4 (20) + UDP (8).
pub const FLANNEL_UDP_OVERHEAD: u32 = 28;
/// The TTL flannel gives its ICMP errors.
const ICMP_TTL: u8 = 8;
/// `MAX_IPOPTLEN`: flannel refuses to answer a packet whose header is this long or longer.
const MAX_IPOPTLEN: usize = 40;
const IPV4_HEADER: usize = 20;
const IPPROTO_ICMP: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("udp-baseline: {0} (usage: twill lab udp-baseline --tun NAME --port PORT [--bind IP] [--tun-ip IP] --route BLOCK=IP:PORT ...)")]
    Usage(String),
    #[error("udp-baseline: {what}: {err}{hint}")]
    Io {
        what: String,
        err: std::io::Error,
        hint: &'static str,
    },
}

/// One route: packets for `net` go to `next_hop` (a peer's node IP and port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub net: Ipv4Net,
    pub next_hop: SocketAddrV4,
}

/// flannel's route array: scanned in order, first match wins, and the match is swapped to
/// the front ("packets for same dest tend to come in bursts").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    entries: Vec<Route>,
}

impl Routes {
    /// Routes in the order given; a second route for the same network replaces the first
    /// (flannel's `set_route`).
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Routes {
        let mut entries: Vec<Route> = Vec::new();
        for r in routes {
            let net = r.net.trunc();
            match entries.iter_mut().find(|e| e.net == net) {
                Some(e) => e.next_hop = r.next_hop,
                None => entries.push(Route { net, ..r }),
            }
        }
        Routes { entries }
    }

    pub fn entries(&self) -> &[Route] {
        &self.entries
    }

    /// `find_route`: the first route containing `dst`, moved to the front.
    pub fn find(&mut self, dst: Ipv4Addr) -> Option<SocketAddrV4> {
        let i = self.entries.iter().position(|r| r.net.contains(&dst))?;
        self.entries.swap(0, i);
        Some(self.entries[0].next_hop)
    }
}

/// `decrement_ttl`: TTL − 1 with the header checksum patched incrementally (RFC 1624: the
/// (TTL, protocol) word drops by 0x100, so the one's-complement checksum rises by 0x100,
/// end-around carry). False when the TTL reaches 0 (flannel drops the packet, no ICMP).
/// `pkt` must hold at least the 20-byte header.
pub fn decrement_ttl(pkt: &mut [u8]) -> bool {
    pkt[8] = pkt[8].wrapping_sub(1);
    if pkt[8] == 0 {
        return false;
    }
    let check = u16::from_be_bytes([pkt[10], pkt[11]]) as u32 + 0x100;
    let check = (check & 0xffff) + (check >> 16);
    pkt[10..12].copy_from_slice(&(check as u16).to_be_bytes());
    true
}

/// The Internet checksum of `data` (even length or not).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `send_net_unreachable`: the ICMP "destination unreachable, net unreachable" flannel
/// writes back into the TUN for a packet no route matches, from `tun_addr` to the
/// offender's source, quoting its header and 8 bytes. None where flannel sends nothing: an
/// offender that is ICMP (RFC 792), a non-first fragment, a header of 60 bytes or more
/// (flannel's `>= sizeof(iphdr) + MAX_IPOPTLEN`), or (unlike flannel, which reads past the
/// packet then) one too short to quote.
pub fn net_unreachable(offender: &[u8], tun_addr: Ipv4Addr) -> Option<Vec<u8>> {
    if offender.len() < IPV4_HEADER {
        return None;
    }
    let ihl = (offender[0] & 0x0f) as usize * 4;
    if !(IPV4_HEADER..IPV4_HEADER + MAX_IPOPTLEN).contains(&ihl) || offender.len() < ihl + 8 {
        return None;
    }
    if offender[9] == IPPROTO_ICMP {
        return None;
    }
    if u16::from_be_bytes([offender[6], offender[7]]) & 0x1fff != 0 {
        return None;
    }
    let len = IPV4_HEADER + 8 + ihl + 8;
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = ICMP_TTL;
    p[9] = IPPROTO_ICMP;
    p[12..16].copy_from_slice(&tun_addr.octets());
    p[16..20].copy_from_slice(&offender[12..16]);
    let c = checksum(&p[..IPV4_HEADER]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 3; // ICMP_DEST_UNREACH
    p[21] = 0; // ICMP_NET_UNREACH
    p[28..].copy_from_slice(&offender[..ihl + 8]);
    let c = checksum(&p[IPV4_HEADER..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    Some(p)
}

/// The baseline's command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaselineConfig {
    /// The TUN device, created if absent (non-persistent then, as flannel's).
    pub tun: String,
    /// Where the UDP socket listens (flannel: the external interface's IP).
    pub bind: SocketAddrV4,
    /// Source of the ICMP errors (flannel: the TUN's address); none: no ICMP is sent.
    pub tun_ip: Option<Ipv4Addr>,
    pub routes: Routes,
}

/// Reads `--tun NAME --port PORT [--bind IP] [--tun-ip IP] --route BLOCK=IP:PORT ...`
/// (`--route` repeats; a route without `:PORT` goes to `--port`).
pub fn parse_args(args: &[String]) -> Result<BaselineConfig, BaselineError> {
    let usage = |m: String| BaselineError::Usage(m);
    let (mut tun, mut port, mut bind, mut tun_ip) = (None, None, Ipv4Addr::UNSPECIFIED, None);
    let mut routes: Vec<(Ipv4Net, Ipv4Addr, Option<u16>)> = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--tun" => {
                let v = value()?;
                if v.is_empty() || v.len() > 15 || v.contains('/') {
                    return Err(usage(format!(
                        "--tun {v:?}: an interface name is 1 to 15 characters, no '/'"
                    )));
                }
                tun = Some(v.clone());
            }
            "--port" => {
                let v = value()?;
                port = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| usage(format!("--port {v:?}: a UDP port is 1..65535")))?,
                );
            }
            "--bind" => {
                let v = value()?;
                bind = v
                    .parse()
                    .map_err(|_| usage(format!("--bind {v:?}: not an IPv4 address")))?;
            }
            "--tun-ip" => {
                let v = value()?;
                tun_ip = Some(
                    v.parse()
                        .map_err(|_| usage(format!("--tun-ip {v:?}: not an IPv4 address")))?,
                );
            }
            "--route" => {
                let v = value()?;
                routes.push(parse_route(v).map_err(usage)?);
            }
            other => return Err(usage(format!("unknown argument {other:?}"))),
        }
    }
    let tun = tun.ok_or_else(|| usage("--tun is required".into()))?;
    let port = port.ok_or_else(|| usage("--port is required".into()))?;
    if routes.is_empty() {
        return Err(usage(
            "no --route: the baseline would forward nothing".into(),
        ));
    }
    Ok(BaselineConfig {
        tun,
        bind: SocketAddrV4::new(bind, port),
        tun_ip,
        routes: Routes::new(routes.into_iter().map(|(net, ip, p)| Route {
            net,
            next_hop: SocketAddrV4::new(ip, p.unwrap_or(port)),
        })),
    })
}

fn parse_route(v: &str) -> Result<(Ipv4Net, Ipv4Addr, Option<u16>), String> {
    let bad =
        || format!("--route {v:?}: expected BLOCK=IP[:PORT], e.g. 10.244.1.0/24=192.0.2.12:8285");
    let (net, hop) = v.split_once('=').ok_or_else(bad)?;
    let net: Ipv4Net = net.parse().map_err(|_| bad())?;
    let (ip, port) = match hop.split_once(':') {
        Some((ip, p)) => (
            ip,
            Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
        ),
        None => (hop, None),
    };
    Ok((net, ip.parse().map_err(|_| bad())?, port))
}

// ---------------------------------------------------------------------------------------
// The I/O edge: the TUN, the socket, the loop.
// ---------------------------------------------------------------------------------------

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

fn io_err(
    what: impl Into<String>,
    hint: &'static str,
) -> impl FnOnce(std::io::Error) -> BaselineError {
    let what = what.into();
    move |err| BaselineError::Io { what, err, hint }
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqMtu {
    name: [u8; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

fn ifname(name: &str) -> [u8; libc::IFNAMSIZ] {
    let mut n = [0u8; libc::IFNAMSIZ];
    n[..name.len()].copy_from_slice(name.as_bytes());
    n
}

/// flannel's `ip.OpenTun`: `/dev/net/tun`, `TUNSETIFF` with `IFF_TUN | IFF_NO_PI`.
fn open_tun(name: &str) -> Result<OwnedFd, BaselineError> {
    // SAFETY: a plain open of a constant path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io_err(
            "open /dev/net/tun",
            " (run as root, with the tun driver)",
        )(last_err()));
    }
    // SAFETY: fd was just opened and is owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReqFlags {
        name: ifname(name),
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is laid out as.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(io_err(
            format!("TUNSETIFF {name} (IFF_TUN|IFF_NO_PI)"),
            " (a device of that name that is not a single-queue TUN, e.g. made with multi_queue or as a tap? delete it or pick another --tun)",
        )(last_err()));
    }
    Ok(fd)
}

/// The TUN's MTU (`SIOCGIFMTU`): flannel reads at most this much per packet.
fn link_mtu(name: &str) -> Result<usize, BaselineError> {
    // SAFETY: a plain socket for the ioctl.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io_err("socket for SIOCGIFMTU", "")(last_err()));
    }
    // SAFETY: s was just opened.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = IfReqMtu {
        name: ifname(name),
        mtu: 0,
        _pad: [0; 20],
    };
    // SAFETY: SIOCGIFMTU fills a struct ifreq's ifr_mtu, which `req` is laid out as.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
        return Err(io_err(format!("SIOCGIFMTU {name}"), "")(last_err()));
    }
    Ok(req.mtu.max(IPV4_HEADER as i32) as usize)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// flannel's `net.ListenUDP("udp4", ExtIface.IP:port)`: non-blocking, default buffers.
fn bind_udp(at: SocketAddrV4) -> Result<OwnedFd, BaselineError> {
    // SAFETY: a plain socket.
    let s = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if s < 0 {
        return Err(io_err("UDP socket", "")(last_err()));
    }
    // SAFETY: s was just opened.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let sa = sockaddr(at);
    // SAFETY: sa is a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::bind(
            s.as_raw_fd(),
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io_err(
            format!("bind UDP {at}"),
            " (is the port taken, or the address not on this namespace's links?)",
        )(last_err()));
    }
    Ok(s)
}

fn set_nonblocking(fd: RawFd) -> Result<(), BaselineError> {
    // SAFETY: fcntl on a descriptor we own.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(io_err("fcntl O_NONBLOCK on the TUN", "")(last_err()));
    }
    Ok(())
}

/// `tun_send_packet`: one write, retried while the TUN says EAGAIN.
fn tun_write(tun: RawFd, pkt: &[u8]) {
    loop {
        // SAFETY: pkt is a valid buffer of its length.
        let n = unsafe { libc::write(tun, pkt.as_ptr().cast(), pkt.len()) };
        if n < 0 && last_err().kind() == std::io::ErrorKind::WouldBlock {
            continue;
        }
        return;
    }
}

/// `tun_to_udp`: true when a packet was read (whatever became of it).
fn tun_to_udp(tun: RawFd, sock: RawFd, buf: &mut [u8], cfg: &mut BaselineConfig) -> bool {
    // SAFETY: buf is a valid buffer of its length.
    let n = unsafe { libc::read(tun, buf.as_mut_ptr().cast(), buf.len()) };
    if n < IPV4_HEADER as isize {
        return false;
    }
    let pkt = &mut buf[..n as usize];
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let Some(hop) = cfg.routes.find(dst) else {
        if let Some(icmp) = cfg.tun_ip.and_then(|a| net_unreachable(pkt, a)) {
            // SAFETY: icmp is a valid buffer of its length.
            unsafe { libc::write(tun, icmp.as_ptr().cast(), icmp.len()) };
        }
        return true;
    };
    if !decrement_ttl(pkt) {
        return true;
    }
    let sa = sockaddr(hop);
    // SAFETY: pkt and sa are valid for the lengths given.
    unsafe {
        libc::sendto(
            sock,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    true
}

/// `udp_to_tun`: true when a datagram was received.
fn udp_to_tun(sock: RawFd, tun: RawFd, buf: &mut [u8]) -> bool {
    // SAFETY: buf is a valid buffer of its length.
    let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < IPV4_HEADER as isize {
        return false;
    }
    let pkt = &mut buf[..n as usize];
    if decrement_ttl(pkt) {
        tun_write(tun, pkt);
    }
    true
}

/// `run_proxy`: opens the TUN and the socket, then forwards until killed (SIGTERM). Returns
/// only on a setup or poll error.
pub fn run(mut cfg: BaselineConfig) -> Result<std::convert::Infallible, BaselineError> {
    let tun = open_tun(&cfg.tun)?;
    let mtu = link_mtu(&cfg.tun)?;
    let sock = bind_udp(cfg.bind)?;
    set_nonblocking(tun.as_raw_fd())?;
    let (t, s) = (tun.as_raw_fd(), sock.as_raw_fd());
    let mut buf = vec![0u8; mtu];
    let mut fds = [
        libc::pollfd {
            fd: t,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: s,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: fds is a valid array of its length.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            let e = last_err();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io_err("poll", "")(e));
        }
        if fds.iter().any(|f| f.revents & libc::POLLIN != 0) {
            // As long as either is readable, skip poll (flannel's comment: an occasional
            // EAGAIN is cheaper than the poll call).
            loop {
                let a = tun_to_udp(t, s, &mut buf, &mut cfg);
                let b = udp_to_tun(s, t, &mut buf);
                if !a && !b {
                    break;
                }
            }
        }
        if fds
            .iter()
            .any(|f| f.revents & (libc::POLLERR | libc::POLLNVAL) != 0)
        {
            return Err(io_err(
                format!("poll on {} and the socket", cfg.tun),
                " (the device was deleted?)",
            )(std::io::Error::other("POLLERR/POLLNVAL")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    /// A valid IPv4 header + 8 bytes of payload.
    fn packet(ttl: u8, proto: u8, id: u16, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = ttl;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..].copy_from_slice(b"payload!");
        p
    }

    #[test]
    fn the_route_scan_is_first_match_and_moves_the_match_to_the_front() {
        let r = |net: &str, hop: &str| Route {
            net: net.parse().unwrap(),
            next_hop: hop.parse().unwrap(),
        };
        let mut routes = Routes::new([
            r("10.244.1.0/24", "192.0.2.12:8285"),
            r("10.244.0.0/16", "192.0.2.99:8285"),
            r("10.244.2.0/24", "192.0.2.13:8285"),
            // Same network again: replaces the next hop, keeps the place.
            r("10.244.1.7/24", "192.0.2.14:9000"),
        ]);
        assert_eq!(routes.entries().len(), 3);
        assert_eq!(
            routes.find("10.244.1.5".parse().unwrap()),
            Some("192.0.2.14:9000".parse().unwrap())
        );
        // Not longest prefix: the /16 comes before 10.244.2.0/24 and wins.
        assert_eq!(
            routes.find("10.244.2.5".parse().unwrap()),
            Some("192.0.2.99:8285".parse().unwrap())
        );
        assert_eq!(routes.entries()[0].net, "10.244.0.0/16".parse().unwrap());
        assert_eq!(routes.entries()[1].net, "10.244.1.0/24".parse().unwrap());
        assert_eq!(routes.find("10.245.0.1".parse().unwrap()), None);
        assert_eq!(routes.entries()[0].net, "10.244.0.0/16".parse().unwrap());
    }

    #[test]
    fn ttl_decrement_keeps_the_header_checksum_valid() {
        // Every TTL, and ids that walk the checksum through its whole range, including the
        // end-around carry.
        let mut n = 0;
        for ttl in 2..=255u8 {
            for id in (0..=u16::MAX).step_by(257) {
                let mut p = packet(ttl, 6, id, [10, 244, 0, 2], [10, 244, 1, 2]);
                assert!(decrement_ttl(&mut p));
                assert_eq!(p[8], ttl - 1);
                assert_eq!(
                    checksum(&p[..20]),
                    0,
                    "ttl {ttl} id {id}: {:02x?}",
                    &p[..20]
                );
                n += 1;
            }
        }
        assert!(n > 60_000);
        let mut p = packet(1, 6, 7, [10, 244, 0, 2], [10, 244, 1, 2]);
        assert!(!decrement_ttl(&mut p), "TTL 1 reaches 0: dropped");
    }

    #[test]
    fn net_unreachable_quotes_the_offender_as_flannel_does() {
        let off = packet(64, 17, 1, [10, 244, 0, 2], [10, 9, 9, 9]);
        let tun: Ipv4Addr = "10.244.0.0".parse().unwrap();
        let icmp = net_unreachable(&off, tun).unwrap();
        assert_eq!(icmp.len(), 20 + 8 + 20 + 8);
        assert_eq!(checksum(&icmp[..20]), 0);
        assert_eq!(checksum(&icmp[20..]), 0);
        assert_eq!((icmp[8], icmp[9]), (8, 1), "ttl 8, ICMP");
        assert_eq!(&icmp[12..16], &[10, 244, 0, 0]);
        assert_eq!(&icmp[16..20], &[10, 244, 0, 2]);
        assert_eq!((icmp[20], icmp[21]), (3, 0), "dest unreachable, net");
        assert_eq!(&icmp[28..], &off[..28]);
        // No ICMP about ICMP, about a later fragment, a 60-byte header, or a stub.
        assert_eq!(
            net_unreachable(&packet(64, 1, 1, [10, 244, 0, 2], [10, 9, 9, 9]), tun),
            None
        );
        let mut frag = off.clone();
        frag[7] = 1;
        assert_eq!(net_unreachable(&frag, tun), None);
        let mut long = vec![0u8; 80];
        long[0] = 0x4f;
        assert_eq!(net_unreachable(&long, tun), None);
        assert_eq!(net_unreachable(&off[..24], tun), None);
        assert_eq!(net_unreachable(&off[..10], tun), None);
    }

    #[test]
    fn the_command_line_gives_the_routes_and_refuses_what_is_wrong() {
        let c = parse_args(&args(
            "--tun twl.tun --port 8285 --bind 192.0.2.11 --tun-ip 10.244.0.0 --route 10.244.1.0/24=192.0.2.12 --route 10.244.2.0/24=192.0.2.13:9000",
        ))
        .unwrap();
        assert_eq!(c.tun, "twl.tun");
        assert_eq!(c.bind, "192.0.2.11:8285".parse().unwrap());
        assert_eq!(c.tun_ip, Some("10.244.0.0".parse().unwrap()));
        let hops: Vec<String> = c
            .routes
            .entries()
            .iter()
            .map(|r| format!("{}={}", r.net, r.next_hop))
            .collect();
        assert_eq!(
            hops,
            [
                "10.244.1.0/24=192.0.2.12:8285",
                "10.244.2.0/24=192.0.2.13:9000"
            ]
        );
        let d = parse_args(&args("--tun t0 --port 1 --route 10.0.0.0/8=192.0.2.1")).unwrap();
        assert_eq!(d.bind, "0.0.0.0:1".parse().unwrap());
        assert_eq!(d.tun_ip, None);
        for (bad, says) in [
            (
                "--port 8285 --route 10.0.0.0/8=1.2.3.4",
                "--tun is required",
            ),
            ("--tun t0 --route 10.0.0.0/8=1.2.3.4", "--port is required"),
            ("--tun t0 --port 8285", "no --route"),
            ("--tun t0 --port 0 --route 10.0.0.0/8=1.2.3.4", "1..65535"),
            ("--tun t0 --port 8285 --route 10.0.0.0/8", "BLOCK=IP[:PORT]"),
            (
                "--tun t0 --port 8285 --route 10.0.0.0/8=1.2.3.4:x",
                "BLOCK=IP[:PORT]",
            ),
            (
                "--tun t0 --port 8285 --route 10.0.0.0/33=1.2.3.4",
                "BLOCK=IP[:PORT]",
            ),
            (
                "--tun abcdefghijklmnop --port 1 --route 10.0.0.0/8=1.2.3.4",
                "1 to 15",
            ),
            (
                "--tun t0 --port 1 --bind nope --route 10.0.0.0/8=1.2.3.4",
                "--bind",
            ),
            (
                "--tun t0 --port 1 --queues 2 --route 10.0.0.0/8=1.2.3.4",
                "unknown argument",
            ),
            ("--tun", "--tun needs a value"),
        ] {
            let e = parse_args(&args(bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("usage: twill lab udp-baseline"), "{e}");
        }
    }
}
