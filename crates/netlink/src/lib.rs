//! rtnetlink without a runtime or a netlink crate: a pure message codec ([`codec`]), one
//! blocking socket per network namespace ([`socket`]), namespace handles ([`netns`]), the
//! link/address/route operations Twill needs ([`route`]) and rtnetlink's numbers
//! ([`rtnl`]), neighbour and FDB entries ([`neigh`]), VXLAN devices ([`vxlan`]), TX
//! checksum offload ([`ethtool`]) and per-namespace sysctls ([`sysctl`]).
//!
//! A socket keeps the namespace it was created in, so the caller's thread never has to move:
//! [`Socket::new_in`] and [`Handle::new_in`] create their socket on a short-lived helper thread
//! that entered the namespace.

pub mod codec;
mod error;
pub mod ethtool;
pub mod fib;
pub mod neigh;
pub mod netns;
pub mod nflog;
pub mod route;
pub mod rtnl;
pub mod socket;
pub mod sysctl;
pub mod vxlan;

pub use error::Error;
pub use fib::{FibRoute, NextHop, RouteChange, RouteRefusal};
pub use neigh::{FdbEntry, Neighbour};
pub use netns::{run_here_in, run_in, Netns};
pub use route::{Handle, Link, Route, RouteType, VethPair, ROUTE_PROTOCOL};
pub use socket::Socket;
pub use sysctl::{ensure_sysctl, get_sysctl, set_sysctl};
pub use vxlan::{VxlanInfo, VxlanLink};
