//! rtnetlink's numbers (linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h): the message
//! types and the attributes that more than one kind of request uses, defined once for
//! every module here and for callers that build their own requests.

/// Message types.
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_SETLINK: u16 = 19;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_DELNEIGH: u16 = 29;
pub const RTM_GETNEIGH: u16 = 30;

/// Link attributes (`ifinfomsg`).
pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_MASTER: u16 = 10;
pub const IFLA_PROTINFO: u16 = 12;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_NET_NS_FD: u16 = 28;
/// Nested in IFLA_LINKINFO.
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;

/// Address attributes (`ifaddrmsg`).
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_BROADCAST: u16 = 4;

/// Route attributes (`rtmsg`).
pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_PRIORITY: u16 = 6;
pub const RTA_PREFSRC: u16 = 7;
/// A list of `struct rtnexthop`, each followed by its own attributes (RTA_GATEWAY, ...).
pub const RTA_MULTIPATH: u16 = 9;
pub const RTA_TABLE: u16 = 15;

/// `struct rtnexthop` (linux/rtnetlink.h): `rtnh_len` u16, `rtnh_flags` u8, `rtnh_hops` u8
/// (the weight minus one), `rtnh_ifindex` i32; its attributes follow, RTNH_ALIGN'ed to 4.
pub const RTNH_LEN: usize = 8;
/// rtnh_flags / rtm_flags: "Gateway is forced on link".
pub const RTNH_F_ONLINK: u32 = 4;

/// rtm_type values (linux/rtnetlink.h `enum { RTN_UNSPEC, RTN_UNICAST, ... }`).
pub const RTN_UNICAST: u8 = 1;
pub const RTN_LOCAL: u8 = 2;
pub const RTN_BROADCAST: u8 = 3;
pub const RTN_BLACKHOLE: u8 = 6;

/// rtm_scope (`enum rt_scope_t`): a route to somewhere else, through a gateway.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// rtm_scope: "nowhere"; in a delete request, any scope.
pub const RT_SCOPE_NOWHERE: u8 = 255;
/// rtm_table (`enum rt_class_t`): the main table.
pub const RT_TABLE_MAIN: u32 = 254;

/// `ifi_flags`: the link is administratively up.
pub const IFF_UP: u32 = 1;

/// Address families, as the one byte the family headers carry.
pub const AF_UNSPEC: u8 = libc::AF_UNSPEC as u8;
pub const AF_INET: u8 = libc::AF_INET as u8;
pub const AF_INET6: u8 = libc::AF_INET6 as u8;
pub const AF_BRIDGE: u8 = libc::AF_BRIDGE as u8;
