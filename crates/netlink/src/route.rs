//! High-level rtnetlink operations (links, addresses, IPv4 routes) on one NETLINK_ROUTE socket.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use ipnet::Ipv4Net;

use crate::codec::{self, IfAddrMsg, IfInfoMsg, MessageBuilder, RtMsg};
use crate::codec::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use crate::rtnl::{
    AF_BRIDGE, AF_INET, IFA_ADDRESS, IFA_BROADCAST, IFA_LOCAL, IFF_UP, IFLA_ADDRESS, IFLA_IFNAME,
    IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINK, IFLA_LINKINFO, IFLA_MASTER, IFLA_MTU,
    IFLA_NET_NS_FD, IFLA_PROTINFO, RTA_DST, RTA_GATEWAY, RTA_OIF, RTA_PRIORITY, RTA_TABLE,
    RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE, RTM_NEWADDR,
    RTM_NEWLINK, RTM_NEWROUTE, RTM_SETLINK, RTNH_F_ONLINK, RTN_BROADCAST, RTN_LOCAL, RTN_UNICAST,
};
use crate::{Error, Netns, Socket};

const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_MODE: u16 = 4;

const RTPROT_BOOT: u8 = 3;

/// rtm_protocol of every route Twill installs: 0x54, 'T' (`ip route show proto 84`).
/// linux/rtnetlink.h: "Values of protocol >= RTPROT_STATIC are not interpreted by kernel;
/// they are just passed from user and back as is", and 0x54 is none of the numbers it (or
/// iproute2's rt_protos) assigns. The kernel reports the byte in every dump, so Twill finds
/// exactly its routes again after a restart, with no state file.
pub const ROUTE_PROTOCOL: u8 = 0x54;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// IFLA_INFO_KIND: "bridge", "veth", ...; None for physical devices and lo.
    pub kind: Option<String>,
    /// The bridge this link is a port of.
    pub master: Option<u32>,
    pub up: bool,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
}

/// rtm_type: what the kernel does with a packet a route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteType {
    /// Forward it (to a gateway or out of a device).
    #[default]
    Unicast,
    /// Drop it silently (`ip route add blackhole DST`): no device, no gateway.
    Blackhole,
    /// Any other type (local, broadcast, unreachable, prohibit, …), by its number.
    Other(u8),
}

impl RouteType {
    pub fn from_u8(t: u8) -> RouteType {
        match t {
            RTN_UNICAST => RouteType::Unicast,
            crate::rtnl::RTN_BLACKHOLE => RouteType::Blackhole,
            other => RouteType::Other(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            RouteType::Unicast => RTN_UNICAST,
            RouteType::Blackhole => crate::rtnl::RTN_BLACKHOLE,
            RouteType::Other(t) => t,
        }
    }
}

/// An IPv4 route (one next hop, or none for a blackhole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    /// Unicast unless set; a blackhole has no gateway or device.
    pub kind: RouteType,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// [`Route::SCOPE_UNIVERSE`], [`Route::SCOPE_LINK`] or [`Route::SCOPE_HOST`].
    pub scope: u8,
    /// Routing table id, [`Route::TABLE_MAIN`] by default.
    pub table: u32,
    pub metric: Option<u32>,
    /// RTNH_F_ONLINK: the gateway is on the link even if no address covers it.
    pub onlink: bool,
    /// rtm_protocol: who installed the route ([`Route::PROTO_BOOT`] unless set). The kernel
    /// keeps it verbatim, so an agent marks its routes with its own number and finds exactly
    /// those again after a restart.
    pub protocol: u8,
}

impl Route {
    pub const SCOPE_UNIVERSE: u8 = 0;
    pub const SCOPE_LINK: u8 = 253;
    pub const SCOPE_HOST: u8 = 254;
    pub const TABLE_MAIN: u32 = 254;
    /// What `ip route add` uses; [`Route::new`]'s default.
    pub const PROTO_BOOT: u8 = RTPROT_BOOT;
    /// Routes the kernel made itself (connected subnets).
    pub const PROTO_KERNEL: u8 = 2;

    /// A unicast route to `dst` in the main table, scope universe, no gateway, device or
    /// metric.
    pub fn new(dst: Ipv4Net) -> Route {
        Route {
            dst,
            kind: RouteType::Unicast,
            gateway: None,
            oif: None,
            scope: Route::SCOPE_UNIVERSE,
            table: Route::TABLE_MAIN,
            metric: None,
            onlink: false,
            protocol: RTPROT_BOOT,
        }
    }

    /// `blackhole dst` in the main table: matching packets are dropped.
    pub fn blackhole(dst: Ipv4Net) -> Route {
        Route {
            kind: RouteType::Blackhole,
            ..Route::new(dst)
        }
    }
}

/// A veth pair to create in one request (see [`Handle::create_veth_pair`]).
#[derive(Debug, Clone, Copy)]
pub struct VethPair<'a> {
    /// The end that stays in the handle's namespace, born up.
    pub host_name: &'a str,
    /// The end born inside `peer_ns`, down.
    pub peer_name: &'a str,
    pub peer_ns: &'a Netns,
    /// Both ends' MTU.
    pub mtu: u32,
    /// The bridge the host end is born a port of.
    pub host_master: Option<u32>,
    /// The host end's MAC from birth (else the kernel picks a random one).
    pub host_mac: Option<[u8; 6]>,
}

/// rtnetlink operations in one namespace, over one socket.
#[derive(Debug)]
pub struct Handle {
    socket: Socket,
}

impl Handle {
    /// A handle on the calling thread's namespace.
    pub fn new() -> Result<Handle, Error> {
        Ok(Handle {
            socket: Socket::new(libc::NETLINK_ROUTE)?,
        })
    }

    /// A handle on namespace `ns`; the calling thread does not move.
    pub fn new_in(ns: &Netns) -> Result<Handle, Error> {
        Ok(Handle {
            socket: Socket::new_in(libc::NETLINK_ROUTE, ns)?,
        })
    }

    /// A handle on namespace `ns` whose socket the calling thread makes itself, entering
    /// `ns` and coming back ([`crate::netns::run_here_in`]): cheaper than [`Handle::new_in`].
    pub fn new_here_in(ns: &Netns) -> Result<Handle, Error> {
        Ok(Handle {
            socket: Socket::new_here_in(libc::NETLINK_ROUTE, ns)?,
        })
    }

    /// The underlying socket, for requests this type does not cover (neighbours, FDB).
    pub fn socket(&mut self) -> &mut Socket {
        &mut self.socket
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, Error> {
        let mut b = IfInfoMsg::default().request(RTM_GETLINK);
        b.attr_str(IFLA_IFNAME, name);
        self.get_link(b.build(), || format!("look up link {name}"))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, Error> {
        let b = IfInfoMsg::link(index).request(RTM_GETLINK);
        self.get_link(b.build(), || format!("look up link #{index}"))
    }

    pub fn links(&mut self) -> Result<Vec<Link>, Error> {
        let mut b = MessageBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP);
        b.header(&IfInfoMsg::default().to_bytes());
        let replies = self
            .socket
            .request(b.build())
            .map_err(|e| e.context("list links"))?;
        Ok(replies.iter().filter_map(|p| parse_link(p)).collect())
    }

    /// The MAC address of link `index`; an error if the link is missing.
    pub fn link_mac(&mut self, index: u32) -> Result<Option<[u8; 6]>, Error> {
        Ok(self.require_link(index)?.mac)
    }

    /// Creates bridge `name` (up) or returns the existing one. Safe when many processes race:
    /// the losers see EEXIST and read the winner's bridge. Fails, naming the link, if `name`
    /// exists but is not a bridge.
    pub fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<Link, Error> {
        for _ in 0..3 {
            let mut b = MessageBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL);
            b.header(
                &IfInfoMsg {
                    flags: IFF_UP,
                    change: IFF_UP,
                    ..Default::default()
                }
                .to_bytes(),
            );
            b.attr_str(IFLA_IFNAME, name);
            // A bridge without an address of its own takes the lowest MAC of its ports, so
            // it changes whenever a pod leaves and every other pod's ARP entry for the
            // gateway goes stale (traffic stalls until it expires). Born with a fixed
            // address, it keeps it.
            b.attr(IFLA_ADDRESS, &random_local_mac()?);
            if let Some(mtu) = mtu {
                b.attr_u32(IFLA_MTU, mtu);
            }
            b.nest_begin(IFLA_LINKINFO)
                .attr_str(IFLA_INFO_KIND, "bridge")
                .nest_end();
            match self.socket.request(b.build()) {
                Ok(_)
                | Err(Error::Kernel {
                    errno: libc::EEXIST,
                    ..
                }) => {}
                Err(e) => return Err(e.context(format!("create bridge {name}"))),
            }
            // Deleted between our EEXIST and the lookup: try again.
            let Some(link) = self.link_by_name(name)? else {
                continue;
            };
            if link.kind.as_deref() != Some("bridge") {
                return Err(Error::Conflict(format!(
                    "link {name} exists but is a {} device, not a bridge; delete it or choose another bridge name",
                    link.kind.as_deref().unwrap_or("plain")
                )));
            }
            if !link.up {
                self.set_link_up(link.index)?;
                return Ok(Link { up: true, ..link });
            }
            return Ok(link);
        }
        Err(Error::Conflict(format!(
            "bridge {name} keeps disappearing while being created; is something deleting it?"
        )))
    }

    /// Creates a veth pair in ONE request: `host_name` is born up in this handle's namespace
    /// (already a port of `host_master` if given), `peer_name` is born directly inside
    /// `peer_ns`, down: the kernel refuses (ENOTCONN) a peer born up, so bring it up with a
    /// handle in `peer_ns`. Both get `mtu`. EEXIST surfaces as an error with
    /// [`Error::is_exists`].
    pub fn create_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_ns: &Netns,
        mtu: u32,
        host_master: Option<u32>,
    ) -> Result<(), Error> {
        self.create_veth_pair(&VethPair {
            host_name,
            peer_name,
            peer_ns,
            mtu,
            host_master,
            host_mac: None,
        })
    }

    /// [`Handle::create_veth`] with every option, the host end's MAC among them: set at
    /// birth (IFLA_ADDRESS of the new link), so no moment exists with another address.
    pub fn create_veth_pair(&mut self, v: &VethPair<'_>) -> Result<(), Error> {
        let up = IfInfoMsg {
            flags: IFF_UP,
            change: IFF_UP,
            ..Default::default()
        };
        let mut b = MessageBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL);
        b.header(&up.to_bytes())
            .attr_str(IFLA_IFNAME, v.host_name)
            .attr_u32(IFLA_MTU, v.mtu);
        if let Some(mac) = v.host_mac {
            b.attr(IFLA_ADDRESS, &mac);
        }
        if let Some(master) = v.host_master {
            b.attr_u32(IFLA_MASTER, master);
        }
        b.nest_begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .nest_begin(IFLA_INFO_DATA);
        b.nest_begin(VETH_INFO_PEER)
            .header(&IfInfoMsg::default().to_bytes());
        b.attr_str(IFLA_IFNAME, v.peer_name)
            .attr_u32(IFLA_MTU, v.mtu);
        b.attr_u32(IFLA_NET_NS_FD, v.peer_ns.fd().as_raw_fd() as u32);
        b.nest_end().nest_end().nest_end();
        self.socket.request(b.build()).map(drop).map_err(|e| {
            e.context(format!(
                "create veth {} with peer {} in {}",
                v.host_name,
                v.peer_name,
                v.peer_ns.path().display()
            ))
        })
    }

    pub fn set_link_up(&mut self, index: u32) -> Result<(), Error> {
        self.set_link_state(index, true)
    }

    pub fn set_link_down(&mut self, index: u32) -> Result<(), Error> {
        self.set_link_state(index, false)
    }

    fn set_link_state(&mut self, index: u32, up: bool) -> Result<(), Error> {
        let b = IfInfoMsg {
            flags: if up { IFF_UP } else { 0 },
            change: IFF_UP,
            ..IfInfoMsg::link(index)
        }
        .request(RTM_SETLINK);
        let state = if up { "up" } else { "down" };
        self.ack(b.build(), format!("set link #{index} {state}"))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        let mut b = IfInfoMsg::link(index).request(RTM_SETLINK);
        b.attr_u32(IFLA_MTU, mtu);
        self.ack(b.build(), format!("set mtu {mtu} on link #{index}"))
    }

    /// Sets the MAC address of link `index`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), Error> {
        let mut b = IfInfoMsg::link(index).request(RTM_SETLINK);
        b.attr(IFLA_ADDRESS, &mac);
        self.ack(
            b.build(),
            format!(
                "set mac {} on link #{index}",
                crate::neigh::format_mac(&mac)
            ),
        )
    }

    /// Makes `index` a port of bridge `master` (0 releases it).
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), Error> {
        let mut b = IfInfoMsg::link(index).request(RTM_SETLINK);
        b.attr_u32(IFLA_MASTER, master);
        self.ack(b.build(), format!("set master #{master} on link #{index}"))
    }

    /// Turns hairpin mode of bridge port `index` on or off (what `bridge link set hairpin`
    /// sends: AF_BRIDGE, IFLA_PROTINFO with NLA_F_NESTED, IFLA_BRPORT_MODE).
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), Error> {
        let mut b = IfInfoMsg {
            family: AF_BRIDGE,
            ..IfInfoMsg::link(index)
        }
        .request(RTM_SETLINK);
        b.nest_begin_flagged(IFLA_PROTINFO)
            .attr_u8(IFLA_BRPORT_MODE, on as u8)
            .nest_end();
        self.ack(
            b.build(),
            format!(
                "set hairpin {} on bridge port #{index}",
                if on { "on" } else { "off" }
            ),
        )
    }

    /// Deletes link `index` (a veth takes its peer with it). Missing: [`Error::is_not_found`].
    pub fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        let b = IfInfoMsg::link(index).request(RTM_DELLINK);
        self.ack(b.build(), format!("delete link #{index}"))
    }

    /// Adds `addr/prefix_len` to link `index` (with the broadcast address below /31).
    /// Returns false if it was already there.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<bool, Error> {
        let net = Ipv4Net::new(addr, prefix_len)
            .map_err(|_| Error::Conflict(format!("bad prefix length /{prefix_len}")))?;
        let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
        let mut b = address_message(RTM_NEWADDR, flags, index, addr, prefix_len);
        if prefix_len < 31 {
            b.attr(IFA_BROADCAST, &net.broadcast().octets());
        }
        match self.socket.request(b.build()) {
            Ok(_) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e.context(format!("add address {net} to link #{index}"))),
        }
    }

    /// IPv4 addresses as (link index, address/prefix), of one link or all.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>, Error> {
        let mut b = MessageBuilder::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
        b.header(
            &IfAddrMsg {
                family: AF_INET,
                ..Default::default()
            }
            .to_bytes(),
        );
        let replies = self
            .socket
            .request(b.build())
            .map_err(|e| e.context("list addresses"))?;
        let mut out = Vec::new();
        for p in &replies {
            let Some(h) = IfAddrMsg::parse(p) else {
                continue;
            };
            if h.family != AF_INET || index.is_some_and(|i| i != h.index) {
                continue;
            }
            let attrs = &p[IfAddrMsg::LEN..];
            let addr =
                codec::find_attr(attrs, IFA_LOCAL).or_else(|| codec::find_attr(attrs, IFA_ADDRESS));
            if let Some(net) = addr
                .and_then(ipv4)
                .and_then(|a| Ipv4Net::new(a, h.prefix_len).ok())
            {
                out.push((h.index, net));
            }
        }
        Ok(out)
    }

    /// Removes `addr/prefix_len` from link `index`. Missing: [`Error::is_not_found`].
    pub fn delete_address(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), Error> {
        let b = address_message(RTM_DELADDR, NLM_F_REQUEST, index, addr, prefix_len);
        self.ack(
            b.build(),
            format!("delete address {addr}/{prefix_len} from link #{index}"),
        )
    }

    /// Adds `route`; returns false if an identical one already exists (EEXIST).
    pub fn add_route(&mut self, route: &Route) -> Result<bool, Error> {
        let msg = route_message(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
            route,
        );
        match self.socket.request(msg) {
            Ok(_) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e.context(format!("add route {}", describe(route)))),
        }
    }

    /// Adds `route` or replaces the one with the same destination, TOS and metric in its
    /// table: the next hop changes in one step, with no moment without a route.
    pub fn replace_route(&mut self, route: &Route) -> Result<(), Error> {
        let msg = route_message(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_CREATE | codec::NLM_F_REPLACE,
            route,
        );
        self.ack(msg, format!("replace route {}", describe(route)))
    }

    /// Deletes `route`, whoever installed it (the protocol is a wildcard). Missing:
    /// [`Error::is_not_found`] (ESRCH).
    pub fn delete_route(&mut self, route: &Route) -> Result<(), Error> {
        let msg = route_message(RTM_DELROUTE, NLM_F_REQUEST, route);
        self.ack(msg, format!("delete route {}", describe(route)))
    }

    /// Deletes `route` only if its protocol matches `route.protocol` too (the kernel checks
    /// it), so a same-looking route someone else installed is never removed. Missing or
    /// foreign: [`Error::is_not_found`] (ESRCH).
    pub fn delete_route_exact(&mut self, route: &Route) -> Result<(), Error> {
        let mut msg = route_message(RTM_DELROUTE, NLM_F_REQUEST, route);
        // rtm_protocol sits at byte 5 of the rtmsg after the 16-byte netlink header.
        msg[codec::NLMSG_HDRLEN + 5] = route.protocol;
        self.ack(msg, format!("delete route {}", describe(route)))
    }

    /// The IPv4 routes of `table`, of every [`RouteType`] (the next hops of multipath
    /// routes are not decoded yet).
    pub fn routes(&mut self, table: u32) -> Result<Vec<Route>, Error> {
        let mut b = MessageBuilder::new(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP);
        b.header(
            &RtMsg {
                family: AF_INET,
                ..Default::default()
            }
            .to_bytes(),
        );
        let replies = self
            .socket
            .request(b.build())
            .map_err(|e| e.context(format!("list routes of table {table}")))?;
        Ok(replies
            .iter()
            .filter_map(|p| parse_route(p))
            .filter(|r| r.table == table)
            .collect())
    }

    /// The route the kernel would send a packet to `dst` by (`ip route get DST`): its
    /// device and gateway (a local address comes back with device lo).
    /// None when the kernel has no route (ENETUNREACH, EHOSTUNREACH) or the route is a
    /// blackhole, unreachable or prohibit one.
    pub fn route_to(&mut self, dst: Ipv4Addr) -> Result<Option<Route>, Error> {
        match self.socket.request(route_get_request(dst)) {
            Ok(replies) => Ok(replies.iter().find_map(|p| {
                let h = RtMsg::parse(p)?;
                [RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST]
                    .contains(&h.route_type)
                    .then(|| parse_route_attrs(p, h))
                    .flatten()
            })),
            Err(Error::Kernel {
                errno: libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EINVAL | libc::EACCES,
                ..
            }) => Ok(None),
            Err(e) => Err(e.context(format!("look up the route to {dst}"))),
        }
    }

    pub(crate) fn ack(&mut self, msg: Vec<u8>, what: String) -> Result<(), Error> {
        self.socket
            .request(msg)
            .map(drop)
            .map_err(|e| e.context(what))
    }

    fn get_link(
        &mut self,
        msg: Vec<u8>,
        what: impl FnOnce() -> String,
    ) -> Result<Option<Link>, Error> {
        match self.socket.request(msg) {
            Ok(replies) => Ok(replies.iter().find_map(|p| parse_link(p))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.context(what())),
        }
    }

    fn require_link(&mut self, index: u32) -> Result<Link, Error> {
        self.link_by_index(index)?.ok_or_else(|| Error::Kernel {
            errno: libc::ENODEV,
            op: format!("look up link #{index}"),
            ext_ack: None,
        })
    }
}

/// An RTM_NEWADDR or RTM_DELADDR request for `addr/prefix_len` on link `index` (IFA_LOCAL
/// and IFA_ADDRESS both `addr`, as `ip addr` sends them). Pure.
fn address_message(
    ty: u16,
    flags: u16,
    index: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
) -> MessageBuilder {
    let mut b = MessageBuilder::new(ty, flags);
    b.header(
        &IfAddrMsg {
            family: AF_INET,
            prefix_len,
            index,
            ..Default::default()
        }
        .to_bytes(),
    );
    b.attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets());
    b
}

/// The RTM_GETROUTE request `ip route get DST` sends: which route the kernel would take
/// to `dst`. Pure.
pub fn route_get_request(dst: Ipv4Addr) -> Vec<u8> {
    let mut b = MessageBuilder::new(RTM_GETROUTE, NLM_F_REQUEST);
    b.header(
        &RtMsg {
            family: AF_INET,
            dst_len: 32,
            ..Default::default()
        }
        .to_bytes(),
    )
    .attr(RTA_DST, &dst.octets());
    b.build()
}

fn route_message(msg_type: u16, flags: u16, r: &Route) -> Vec<u8> {
    let header = RtMsg {
        family: AF_INET,
        dst_len: r.dst.prefix_len(),
        table: if r.table < 256 { r.table as u8 } else { 0 },
        protocol: if msg_type == RTM_NEWROUTE {
            r.protocol
        } else {
            0
        },
        scope: r.scope,
        route_type: r.kind.to_u8(),
        flags: if r.onlink { RTNH_F_ONLINK } else { 0 },
        ..Default::default()
    };
    let mut b = MessageBuilder::new(msg_type, flags);
    b.header(&header.to_bytes()).attr_u32(RTA_TABLE, r.table);
    b.attr(RTA_DST, &r.dst.network().octets());
    if let Some(gw) = r.gateway {
        b.attr(RTA_GATEWAY, &gw.octets());
    }
    if let Some(oif) = r.oif {
        b.attr_u32(RTA_OIF, oif);
    }
    if let Some(metric) = r.metric {
        b.attr_u32(RTA_PRIORITY, metric);
    }
    b.build()
}

fn describe(r: &Route) -> String {
    let mut s = match r.kind {
        RouteType::Unicast => String::new(),
        RouteType::Blackhole => "blackhole ".into(),
        RouteType::Other(t) => format!("type {t} "),
    };
    s += &r.dst.to_string();
    if let Some(gw) = r.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = r.oif {
        s += &format!(" dev #{oif}");
    }
    if r.table != Route::TABLE_MAIN {
        s += &format!(" table {}", r.table);
    }
    if r.onlink {
        s += " onlink";
    }
    if r.protocol != RTPROT_BOOT {
        s += &format!(" proto {}", r.protocol);
    }
    s
}

pub(crate) fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data.get(..4)?).ok().map(Ipv4Addr::from)
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    let h = IfInfoMsg::parse(payload)?;
    let mut link = Link {
        index: h.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        kind: None,
        master: None,
        up: h.flags & IFF_UP != 0,
        peer_index: None,
    };
    for (kind, data) in codec::attrs(&payload[IfInfoMsg::LEN..]) {
        match kind {
            IFLA_IFNAME => link.name = codec::parse_str(data)?.to_owned(),
            IFLA_MTU => link.mtu = codec::parse_u32(data)?,
            IFLA_ADDRESS => link.mac = data.try_into().ok(),
            IFLA_MASTER => link.master = codec::parse_u32(data),
            IFLA_LINK => link.peer_index = codec::parse_u32(data),
            IFLA_LINKINFO => {
                link.kind = codec::find_attr(data, IFLA_INFO_KIND)
                    .and_then(codec::parse_str)
                    .map(str::to_owned)
            }
            _ => {}
        }
    }
    Some(link)
}

fn parse_route(payload: &[u8]) -> Option<Route> {
    let h = RtMsg::parse(payload)?;
    parse_route_attrs(payload, h)
}

/// An IPv4 route's header and attributes, whatever its type.
fn parse_route_attrs(payload: &[u8], h: RtMsg) -> Option<Route> {
    if h.family != AF_INET {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut route = Route::new(Ipv4Net::default());
    route.kind = RouteType::from_u8(h.route_type);
    route.scope = h.scope;
    route.table = h.table as u32;
    route.onlink = h.flags & RTNH_F_ONLINK != 0;
    route.protocol = h.protocol;
    for (kind, data) in codec::attrs(&payload[RtMsg::LEN..]) {
        match kind {
            RTA_DST => dst = ipv4(data)?,
            RTA_GATEWAY => route.gateway = ipv4(data),
            RTA_OIF => route.oif = codec::parse_u32(data),
            RTA_PRIORITY => route.metric = codec::parse_u32(data),
            RTA_TABLE => route.table = codec::parse_u32(data)?,
            _ => {}
        }
    }
    route.dst = Ipv4Net::new(dst, h.dst_len).ok()?;
    Some(route)
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn route_get_request_is_what_ip_route_get_sends() {
        let msg = route_get_request(Ipv4Addr::new(192, 0, 2, 9));
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            36, 0, 0, 0,  26, 0,  1, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            2, 32, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            8, 0, 1, 0,  192, 0, 2, 9,
        ];
        assert_eq!(msg, want);
    }

    #[test]
    fn route_message_bytes() {
        let mut r = Route::new("10.244.1.0/24".parse().unwrap());
        r.gateway = Some(Ipv4Addr::new(192, 0, 2, 2));
        r.oif = Some(3);
        r.onlink = true;
        let msg = route_message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, &r);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            60, 0, 0, 0,  24, 0,  0x01, 0x06,  0, 0, 0, 0,  0, 0, 0, 0,
            2, 24, 0, 0,  254, 3, 0, 1,  4, 0, 0, 0,
            8, 0, 15, 0,  254, 0, 0, 0,
            8, 0, 1, 0,  10, 244, 1, 0,
            8, 0, 5, 0,  192, 0, 2, 2,
            8, 0, 4, 0,  3, 0, 0, 0,
        ];
        assert_eq!(msg, want);
        // What the kernel sends back parses to the same route.
        assert_eq!(parse_route(&msg[16..]), Some(r));
    }

    #[test]
    fn blackhole_message_bytes() {
        let mut r = Route::blackhole("10.244.1.0/26".parse().unwrap());
        r.protocol = 0x54;
        let msg = route_message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, &r);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            44, 0, 0, 0,  24, 0,  0x01, 0x06,  0, 0, 0, 0,  0, 0, 0, 0,
            2, 26, 0, 0,  254, 0x54, 0, 6,  0, 0, 0, 0,
            8, 0, 15, 0,  254, 0, 0, 0,
            8, 0, 1, 0,  10, 244, 1, 0,
        ];
        assert_eq!(msg, want);
        assert_eq!(parse_route(&msg[16..]), Some(r.clone()));
        assert_eq!(describe(&r), "blackhole 10.244.1.0/26 proto 84");
        for t in [
            RouteType::Unicast,
            RouteType::Blackhole,
            RouteType::Other(7),
        ] {
            assert_eq!(RouteType::from_u8(t.to_u8()), t);
        }
    }

    #[test]
    fn link_parse_reads_linkinfo_and_peer() {
        let mut b = MessageBuilder::new(RTM_NEWLINK, 0);
        b.header(
            &IfInfoMsg {
                index: 7,
                flags: IFF_UP,
                ..Default::default()
            }
            .to_bytes(),
        );
        b.attr_str(IFLA_IFNAME, "twlv0")
            .attr_u32(IFLA_MTU, 1450)
            .attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]);
        b.attr_u32(IFLA_MASTER, 4).attr_u32(IFLA_LINK, 9);
        b.nest_begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .nest_end();
        let msg = b.build();
        let link = parse_link(&msg[16..]).unwrap();
        assert_eq!(
            link,
            Link {
                index: 7,
                name: "twlv0".into(),
                mtu: 1450,
                mac: Some([2, 0, 0, 0, 0, 1]),
                kind: Some("veth".into()),
                master: Some(4),
                up: true,
                peer_index: Some(9),
            }
        );
        assert_eq!(parse_link(&msg[16..20]), None);
    }
}

/// A random unicast, locally administered MAC address.
fn random_local_mac() -> Result<[u8; 6], Error> {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most mac.len() bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(Error::Io {
            op: "getrandom for a bridge MAC".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}
