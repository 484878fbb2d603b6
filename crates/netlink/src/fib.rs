//! Routes a routing protocol installs (Twill's BGP speaker): IPv4 or IPv6, to one gateway or
//! to several at once (equal-cost multipath, RTA_MULTIPATH), marked with the protocol byte,
//! changed in batches of thousands per sendmsg ([`Handle::apply_routes`]) and read back by
//! protocol ([`Handle::fib_routes`]) so a restarted speaker adopts what it left behind.
//!
//! The message builders and the parser are pure; only the two [`Handle`] methods do I/O.
//!
//! An RTA_MULTIPATH attribute is a list of `struct rtnexthop` (linux/rtnetlink.h):
//! ```text
//!  0               2       3       4                               8
//! +---------------+-------+-------+-------------------------------+
//! |  rtnh_len     | flags | hops  |  rtnh_ifindex                 |  then the hop's own
//! +---------------+-------+-------+-------------------------------+  attributes (RTA_GATEWAY)
//! ```
//! "rtnh_hops: Nexthop priority or weight" (the weight minus one); `rtnh_len` covers the
//! header and the hop's attributes, and each hop starts RTNH_ALIGN'ed (4 bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::codec::{self, MessageBuilder, RtMsg, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use crate::rtnl::{
    AF_INET, AF_INET6, AF_UNSPEC, RTA_DST, RTA_GATEWAY, RTA_MULTIPATH, RTA_OIF, RTA_PRIORITY,
    RTA_TABLE, RTM_DELROUTE, RTM_GETROUTE, RTM_NEWROUTE, RTNH_F_ONLINK, RTNH_LEN, RTN_BLACKHOLE,
    RTN_UNICAST, RT_SCOPE_NOWHERE, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN,
};
use crate::{Error, Handle, ROUTE_PROTOCOL};

/// One way out of a [`FibRoute`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// The gateway (same family as the destination); None for a device route.
    pub gateway: Option<IpAddr>,
    /// The device; None lets the kernel find it from the gateway's connected subnet.
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK: the gateway is on the link even if no address covers it.
    pub onlink: bool,
}

impl NextHop {
    /// A next hop through `gateway`, the device found by the kernel.
    pub fn via(gateway: IpAddr) -> NextHop {
        NextHop {
            gateway: Some(gateway),
            oif: None,
            onlink: false,
        }
    }
}

/// A unicast route with any number of equal next hops (none: a blackhole), in one table,
/// marked with a protocol byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FibRoute {
    pub dst: IpNet,
    /// One next hop: a plain route (RTA_GATEWAY/RTA_OIF); several: RTA_MULTIPATH with equal
    /// weights; none: `blackhole dst`.
    pub next_hops: Vec<NextHop>,
    pub table: u32,
    /// rtm_protocol; [`ROUTE_PROTOCOL`] for Twill's.
    pub protocol: u8,
    /// RTA_PRIORITY; None is 0 for IPv4 and the kernel's 1024 for IPv6.
    pub metric: Option<u32>,
}

impl FibRoute {
    /// A route of Twill's ([`ROUTE_PROTOCOL`]) in the main table to `dst` through each of
    /// `gateways` (the kernel finds the devices).
    pub fn via(dst: IpNet, gateways: &[IpAddr]) -> FibRoute {
        FibRoute {
            dst,
            next_hops: gateways.iter().copied().map(NextHop::via).collect(),
            table: RT_TABLE_MAIN,
            protocol: ROUTE_PROTOCOL,
            metric: None,
        }
    }

    /// As `ip route` would print it: `10.0.0.0/24 nexthop via 192.0.2.1 nexthop via
    /// 192.0.2.2 proto 84`.
    pub fn describe(&self) -> String {
        let mut s = self.dst.to_string();
        let multi = self.next_hops.len() > 1;
        if self.next_hops.is_empty() {
            s.insert_str(0, "blackhole ");
        }
        for nh in &self.next_hops {
            if multi {
                s += " nexthop";
            }
            if let Some(gw) = nh.gateway {
                s += &format!(" via {gw}");
            }
            if let Some(oif) = nh.oif {
                s += &format!(" dev #{oif}");
            }
            if nh.onlink {
                s += " onlink";
            }
        }
        if self.table != RT_TABLE_MAIN {
            s += &format!(" table {}", self.table);
        }
        if let Some(m) = self.metric {
            s += &format!(" metric {m}");
        }
        s + &format!(" proto {}", self.protocol)
    }
}

/// One change of a batch for [`Handle::apply_routes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// Add the route, or replace the one with the same destination and metric in its table
    /// (NLM_F_CREATE | NLM_F_REPLACE): the next hops change in one step, never absent.
    Replace(FibRoute),
    /// Delete the route with this destination, table and metric, only if its protocol is
    /// the route's (the kernel checks rtm_protocol). Next hops are not compared.
    Delete(FibRoute),
}

impl RouteChange {
    pub fn route(&self) -> &FibRoute {
        match self {
            RouteChange::Replace(r) | RouteChange::Delete(r) => r,
        }
    }

    fn describe(&self) -> String {
        match self {
            RouteChange::Replace(r) => format!("replace route {}", r.describe()),
            RouteChange::Delete(r) => format!("delete route {}", r.describe()),
        }
    }
}

/// The RTM_NEWROUTE (replace) or RTM_DELROUTE message for `change`. Pure.
pub fn route_change_message(change: &RouteChange) -> Vec<u8> {
    let (r, msg_type, flags) = match change {
        RouteChange::Replace(r) => (
            r,
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE,
        ),
        RouteChange::Delete(r) => (r, RTM_DELROUTE, NLM_F_REQUEST),
    };
    let family = family_of(&r.dst);
    let single_onlink = r.next_hops.len() == 1 && r.next_hops[0].onlink;
    let header = RtMsg {
        family,
        dst_len: r.dst.prefix_len(),
        table: if r.table < 256 { r.table as u8 } else { 0 },
        protocol: r.protocol,
        // A delete matches any scope and type (RT_SCOPE_NOWHERE, RTN_UNSPEC: fib_table_delete
        // compares them only when set), so it removes our blackholes too.
        scope: if msg_type == RTM_NEWROUTE {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_NOWHERE
        },
        route_type: match (msg_type == RTM_NEWROUTE, r.next_hops.is_empty()) {
            (false, _) => 0,
            (true, true) => RTN_BLACKHOLE,
            (true, false) => RTN_UNICAST,
        },
        flags: if single_onlink && msg_type == RTM_NEWROUTE {
            RTNH_F_ONLINK
        } else {
            0
        },
        ..Default::default()
    };
    let mut b = MessageBuilder::new(msg_type, flags);
    b.header(&header.to_bytes()).attr_u32(RTA_TABLE, r.table);
    match r.dst {
        IpNet::V4(n) => b.attr(RTA_DST, &n.network().octets()),
        IpNet::V6(n) => b.attr(RTA_DST, &n.network().octets()),
    };
    if let Some(metric) = r.metric {
        b.attr_u32(RTA_PRIORITY, metric);
    }
    if msg_type == RTM_DELROUTE {
        return b.build();
    }
    match r.next_hops.as_slice() {
        [] => {}
        [nh] => {
            if let Some(gw) = nh.gateway {
                b.attr(RTA_GATEWAY, &ip_octets(&gw));
            }
            if let Some(oif) = nh.oif {
                b.attr_u32(RTA_OIF, oif);
            }
        }
        hops => {
            b.attr(RTA_MULTIPATH, &multipath(hops));
        }
    }
    b.build()
}

/// The RTA_MULTIPATH payload for `hops`, equal weights (rtnh_hops 0). Pure.
fn multipath(hops: &[NextHop]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hops.len() * (RTNH_LEN + 20));
    for nh in hops {
        let start = out.len();
        out.extend_from_slice(&0u16.to_ne_bytes()); // rtnh_len, filled in below
        out.push(if nh.onlink { RTNH_F_ONLINK as u8 } else { 0 });
        out.push(0); // rtnh_hops: weight 1
        out.extend_from_slice(&(nh.oif.unwrap_or(0) as i32).to_ne_bytes());
        if let Some(gw) = nh.gateway {
            let octets = ip_octets(&gw);
            let len = (codec::NLA_HDRLEN + octets.len()) as u16;
            out.extend_from_slice(&len.to_ne_bytes());
            out.extend_from_slice(&RTA_GATEWAY.to_ne_bytes());
            out.extend_from_slice(&octets);
            out.resize(codec::align(out.len()), 0);
        }
        let len = (out.len() - start) as u16;
        out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
    out
}

/// The RTM_GETROUTE dump of every family's routes (AF_UNSPEC). Pure.
pub fn route_dump_request() -> Vec<u8> {
    let mut b = MessageBuilder::new(RTM_GETROUTE, NLM_F_REQUEST | codec::NLM_F_DUMP);
    b.header(
        &RtMsg {
            family: AF_UNSPEC,
            ..Default::default()
        }
        .to_bytes(),
    );
    b.build()
}

/// Decodes one RTM_NEWROUTE payload of a dump (IPv4 or IPv6, unicast or blackhole) into a
/// [`FibRoute`], multipath next hops included; None for other families, other route types,
/// and routes with a source prefix or TOS (which a [`FibRoute`] cannot express). Pure.
pub fn parse_fib_route(payload: &[u8]) -> Option<FibRoute> {
    let h = RtMsg::parse(payload)?;
    if !(h.family == AF_INET || h.family == AF_INET6)
        || !(h.route_type == RTN_UNICAST || h.route_type == RTN_BLACKHOLE)
        || h.src_len != 0
        || h.tos != 0
    {
        return None;
    }
    let mut dst = None;
    let mut table = h.table as u32;
    let mut metric = None;
    let mut single = NextHop {
        gateway: None,
        oif: None,
        onlink: h.flags & RTNH_F_ONLINK != 0,
    };
    let mut hops = Vec::new();
    for (kind, data) in codec::attrs(&payload[RtMsg::LEN..]) {
        match kind {
            RTA_DST => dst = Some(parse_ip(h.family, data)?),
            RTA_GATEWAY => single.gateway = Some(parse_ip(h.family, data)?),
            RTA_OIF => single.oif = codec::parse_u32(data),
            RTA_PRIORITY => metric = codec::parse_u32(data),
            RTA_TABLE => table = codec::parse_u32(data)?,
            RTA_MULTIPATH => hops = parse_multipath(h.family, data)?,
            _ => {}
        }
    }
    let dst = match dst {
        Some(a) => a,
        None if h.family == AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let dst = IpNet::new(dst, h.dst_len).ok()?;
    let next_hops = if h.route_type == RTN_BLACKHOLE {
        Vec::new()
    } else if !hops.is_empty() {
        hops
    } else {
        vec![single]
    };
    Some(FibRoute {
        dst,
        next_hops,
        table,
        protocol: h.protocol,
        metric,
    })
}

fn parse_multipath(family: u8, mut data: &[u8]) -> Option<Vec<NextHop>> {
    let mut hops = Vec::new();
    while data.len() >= RTNH_LEN {
        let len = codec::parse_u16(data)? as usize;
        if len < RTNH_LEN || len > data.len() {
            return None;
        }
        let flags = data[2] as u32;
        let ifindex = codec::parse_i32(&data[4..8])?;
        let mut nh = NextHop {
            gateway: None,
            oif: (ifindex > 0).then_some(ifindex as u32),
            onlink: flags & RTNH_F_ONLINK != 0,
        };
        if let Some(gw) = codec::find_attr(&data[RTNH_LEN..len], RTA_GATEWAY) {
            nh.gateway = Some(parse_ip(family, gw)?);
        }
        hops.push(nh);
        data = &data[codec::align(len).min(data.len())..];
    }
    Some(hops)
}

fn family_of(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => AF_INET,
        IpNet::V6(_) => AF_INET6,
    }
}

fn ip_octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn parse_ip(family: u8, data: &[u8]) -> Option<IpAddr> {
    if family == AF_INET {
        Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(data.get(..4)?).ok()?,
        )))
    } else {
        Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(data.get(..16)?).ok()?,
        )))
    }
}

/// A route the kernel refused in [`Handle::apply_routes`]: which change, and why.
#[derive(Debug)]
pub struct RouteRefusal {
    /// Index of the change in the slice given.
    pub index: usize,
    /// The kernel's error, its operation naming the route ("replace route 10.0.0.0/24 via
    /// 192.0.2.1 proto 84").
    pub error: Error,
}

impl Handle {
    /// Applies `changes` in batches of thousands of messages per sendmsg
    /// ([`crate::Socket::request_each`]), reading every ack. Returns the refused changes,
    /// each tied to its route; an `Err` means the socket failed and the kernel state of the
    /// batch in flight is unknown (read it back with [`Handle::fib_routes`]).
    pub fn apply_routes(&mut self, changes: &[RouteChange]) -> Result<Vec<RouteRefusal>, Error> {
        let refused = self
            .socket()
            .request_each(changes.iter().map(route_change_message))
            .map_err(|e| e.context(format!("apply {} route changes", changes.len())))?;
        Ok(refused
            .into_iter()
            .map(|(index, error)| RouteRefusal {
                index,
                error: error.context(changes[index].describe()),
            })
            .collect())
    }

    /// Every IPv4 and IPv6 route of `table` whose protocol is `protocol`, multipath next
    /// hops decoded: what a restarted speaker finds of its own. Streams the dump, so only
    /// the matching routes are ever held.
    pub fn fib_routes(&mut self, protocol: u8, table: u32) -> Result<Vec<FibRoute>, Error> {
        let out = std::cell::RefCell::new(Vec::new());
        self.socket()
            .dump_each(
                route_dump_request(),
                || out.borrow_mut().clear(),
                |p| {
                    if let Some(r) = parse_fib_route(p) {
                        if r.protocol == protocol && r.table == table {
                            out.borrow_mut().push(r);
                        }
                    }
                },
            )
            .map_err(|e| e.context(format!("list routes of protocol {protocol}")))?;
        Ok(out.into_inner())
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn single_next_hop_replace_bytes() {
        let r = FibRoute::via("10.1.2.0/27".parse().unwrap(), &[ip("192.0.2.1")]);
        let msg = route_change_message(&RouteChange::Replace(r.clone()));
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            52, 0, 0, 0,  24, 0,  0x01, 0x05,  0, 0, 0, 0,  0, 0, 0, 0,
            2, 27, 0, 0,  254, 0x54, 0, 1,  0, 0, 0, 0,
            8, 0, 15, 0,  254, 0, 0, 0,
            8, 0, 1, 0,  10, 1, 2, 0,
            8, 0, 5, 0,  192, 0, 2, 1,
        ];
        assert_eq!(msg, want);
        assert_eq!(parse_fib_route(&msg[16..]), Some(r.clone()));
        assert_eq!(r.describe(), "10.1.2.0/27 via 192.0.2.1 proto 84");
    }

    /// `ip route replace 10.9.0.0/16 proto 84 nexthop via 192.0.2.1 nexthop via 192.0.2.2
    /// dev #3`; the kernel test reads it back with `ip -j route`.
    #[test]
    fn multipath_replace_bytes() {
        let mut r = FibRoute::via(
            "10.9.0.0/16".parse().unwrap(),
            &[ip("192.0.2.1"), ip("192.0.2.2")],
        );
        r.next_hops[1].oif = Some(3);
        let msg = route_change_message(&RouteChange::Replace(r.clone()));
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            80, 0, 0, 0,  24, 0,  0x01, 0x05,  0, 0, 0, 0,  0, 0, 0, 0,
            2, 16, 0, 0,  254, 0x54, 0, 1,  0, 0, 0, 0,
            8, 0, 15, 0,  254, 0, 0, 0,
            8, 0, 1, 0,  10, 9, 0, 0,
            36, 0, 9, 0,
              16, 0, 0, 0,  0, 0, 0, 0,  8, 0, 5, 0,  192, 0, 2, 1,
              16, 0, 0, 0,  3, 0, 0, 0,  8, 0, 5, 0,  192, 0, 2, 2,
        ];
        assert_eq!(msg, want);
        assert_eq!(parse_fib_route(&msg[16..]), Some(r.clone()));
        assert_eq!(
            r.describe(),
            "10.9.0.0/16 nexthop via 192.0.2.1 nexthop via 192.0.2.2 dev #3 proto 84"
        );
    }

    #[test]
    fn delete_carries_protocol_and_no_next_hops() {
        let r = FibRoute::via("10.1.2.0/27".parse().unwrap(), &[ip("192.0.2.1")]);
        let msg = route_change_message(&RouteChange::Delete(r));
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            44, 0, 0, 0,  25, 0,  0x01, 0x00,  0, 0, 0, 0,  0, 0, 0, 0,
            2, 27, 0, 0,  254, 0x54, 255, 0,  0, 0, 0, 0,
            8, 0, 15, 0,  254, 0, 0, 0,
            8, 0, 1, 0,  10, 1, 2, 0,
        ];
        assert_eq!(msg, want);
    }

    #[test]
    fn ipv6_multipath_and_blackhole_round_trip() {
        let mut r = FibRoute::via(
            "2001:db8:5::/48".parse().unwrap(),
            &[ip("2001:db8::1"), ip("fe80::2")],
        );
        r.next_hops[1].oif = Some(7);
        r.metric = Some(1024);
        let msg = route_change_message(&RouteChange::Replace(r.clone()));
        assert_eq!(msg[16], AF_INET6);
        assert_eq!(parse_fib_route(&msg[16..]), Some(r));
        let bh = FibRoute {
            next_hops: vec![],
            ..FibRoute::via("10.5.0.0/24".parse().unwrap(), &[])
        };
        let msg = route_change_message(&RouteChange::Replace(bh.clone()));
        assert_eq!(msg[16 + 7], RTN_BLACKHOLE);
        assert_eq!(parse_fib_route(&msg[16..]), Some(bh.clone()));
        assert_eq!(bh.describe(), "blackhole 10.5.0.0/24 proto 84");
    }

    #[test]
    fn parse_refuses_what_it_cannot_express() {
        let r = FibRoute::via("10.1.2.0/27".parse().unwrap(), &[ip("192.0.2.1")]);
        let mut msg = route_change_message(&RouteChange::Replace(r));
        msg[16 + 7] = crate::rtnl::RTN_LOCAL;
        assert_eq!(parse_fib_route(&msg[16..]), None);
        assert_eq!(parse_fib_route(&msg[16..20]), None);
        // A truncated multipath list is refused, not misread.
        let r = FibRoute::via(
            "10.9.0.0/16".parse().unwrap(),
            &[ip("192.0.2.1"), ip("192.0.2.2")],
        );
        let mut msg = route_change_message(&RouteChange::Replace(r));
        let n = msg.len();
        msg[n - 16] = 200; // second rtnh_len beyond the attribute
        assert_eq!(parse_fib_route(&msg[16..]), None);
    }
}
