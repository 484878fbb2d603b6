//! The I/O edge of autodetection: the interfaces with their IPv4 addresses, and the
//! kernel's route lookup for `can-reach` (RTM_GETROUTE, as `ip route get` does).

use crate::autodetect::{Interface, RouteAnswer};
use std::net::Ipv4Addr;
use twill_netlink::codec::{self, RtMsg};
use twill_netlink::route::route_get_request;
use twill_netlink::rtnl::{RTA_OIF, RTA_PREFSRC};
use twill_netlink::{Error, Handle, Netns, Socket};

/// Every interface of `ns` (the caller's namespace if None), in kernel (index) order.
pub fn interfaces(ns: Option<&Netns>) -> Result<Vec<Interface>, Error> {
    let mut h = match ns {
        Some(ns) => Handle::new_in(ns)?,
        None => Handle::new()?,
    };
    let addrs = h.addresses(None)?;
    let mut out: Vec<Interface> = h
        .links()?
        .into_iter()
        .map(|l| Interface {
            index: l.index,
            addrs: addrs
                .iter()
                .filter(|(i, _)| *i == l.index)
                .map(|(_, a)| *a)
                .collect(),
            name: l.name,
            kind: l.kind,
            up: l.up,
        })
        .collect();
    out.sort_by_key(|i| i.index);
    Ok(out)
}

/// How the kernel of `ns` would reach `dst`. `Ok(None)`: no route (unreachable).
pub fn route_get(ns: Option<&Netns>, dst: Ipv4Addr) -> Result<Option<RouteAnswer>, Error> {
    let mut sock = match ns {
        Some(ns) => Socket::new_in(libc::NETLINK_ROUTE, ns)?,
        None => Socket::new(libc::NETLINK_ROUTE)?,
    };
    let replies = match sock.request(route_get_request(dst)) {
        Ok(r) => r,
        Err(e)
            if matches!(
                e.errno(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ESRCH)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.context(format!("look up the route to {dst}"))),
    };
    Ok(replies.iter().find_map(|p| parse_route_answer(p, dst)))
}

/// Pure: decodes an RTM_NEWROUTE answer.
pub fn parse_route_answer(payload: &[u8], dst: Ipv4Addr) -> Option<RouteAnswer> {
    RtMsg::parse(payload)?;
    let attrs = payload.get(RtMsg::LEN..)?;
    let v4 = |d: &[u8]| -> Option<Ipv4Addr> { Some(Ipv4Addr::from(<[u8; 4]>::try_from(d).ok()?)) };
    Some(RouteAnswer {
        dst,
        src: codec::find_attr(attrs, RTA_PREFSRC).and_then(v4),
        oif: codec::find_attr(attrs, RTA_OIF).and_then(codec::parse_u32),
    })
}
