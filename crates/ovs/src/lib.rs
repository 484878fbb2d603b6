//! Open vSwitch for Twill's `ovs` backend.
//!
//! - [`db`] (pure): OVSDB's JSON data (RFC 7047 §5.1, as `ovs-vsctl --format=json` prints
//!   it) decoded into the rows Twill reads, and the planner turning the bridge and ports
//!   Twill wants plus what the database holds into one batched `ovs-vsctl` transaction.
//! - [`flows`] (pure): the OpenFlow table Twill wants on its bridge, each flow marked by a
//!   cookie ([`COOKIE_MARK`] + a hash of its text), and the diff against `ovs-ofctl
//!   dump-flows` as one `ovs-ofctl --bundle add-flows` script (atomic).
//! - [`neigh`] (pure): ovs-vswitchd's tunnel neighbour cache (userspace datapath) planned
//!   from the host's routes and neighbours, so a peer's first packet is not dropped.
//! - [`join`] (pure): how the integration bridge meets the pod network: its internal
//!   port a port of the pod bridge (bridge wiring) or on its own (l3).
//! - [`tools`] (the I/O edge): runs `ovs-vsctl` / `ovs-ofctl` against a run directory,
//!   checks the version, probes the daemons' sockets.
//!
//! Twill only ever changes what it created: bridges, ports and interfaces carry
//! `external_ids:twill-owner=twilld` ([`OWNER_KEY`], [`OWNER_VALUE`]); flows carry a cookie
//! whose top 16 bits are [`COOKIE_MARK`]. Anything else (a foreign bridge, a foreign port on
//! Twill's bridge, a flow with another cookie) is left alone.
//!
//! Why `ovs-vsctl`/`ovs-ofctl` rather than an OVSDB/OpenFlow client: the mesh is one
//! flow-based tunnel port, so the database sees a transaction only when the bridge is made
//! or its settings change (a node joining changes flows, not ports), and flows go in one
//! bundle per pass; neither is on a packet path. Measured here (OVS 3.1, netdev): 100 ports
//! in one `ovs-vsctl` call 111 ms vs 65 ms as one raw RFC 7047 transaction, so the tools
//! cost nothing that matters for a handful of rows, and they keep OVS's own semantics.

pub mod db;
pub mod flows;
pub mod join;
pub mod neigh;
pub mod tools;

/// Twill's integration bridge.
pub const INTEGRATION_BRIDGE: &str = "twl-int";
/// The host's internal port on [`INTEGRATION_BRIDGE`] (OpenFlow port [`flows::HOST_PORT`]).
pub const HOST_DEVICE: &str = "twl.ovs";

/// The external_ids key on every bridge, port and interface Twill creates.
pub const OWNER_KEY: &str = "twill-owner";
/// Its value.
pub const OWNER_VALUE: &str = "twilld";
/// The top 16 bits of every flow cookie Twill sets ('T','w').
pub const COOKIE_MARK: u64 = 0x5477 << 48;
/// The mask selecting [`COOKIE_MARK`] in a cookie.
pub const COOKIE_MASK: u64 = 0xffff << 48;
/// The oldest Open vSwitch whose tools and features (flow-based tunnels, bundles, command
/// keywords in flow files, `mtu_request`) Twill uses.
pub const MIN_VERSION: (u32, u32) = (2, 13);
/// What to install when the tools are missing or too old.
pub const PACKAGE_HINT: &str =
    "install Open vSwitch 2.13 or newer: apt-get install openvswitch-switch (Debian/Ubuntu)";

/// Present when the kernel's openvswitch module is loaded.
pub const MODULE_PATH: &str = "/sys/module/openvswitch";

/// Which OVS datapath the bridge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// The kernel module's (`openvswitch.ko`).
    System,
    /// Userspace (`netdev`), inside ovs-vswitchd: where the kernel has no module. Tunnels
    /// are then OVS's own (native tunnelling): their outer packets leave through an OVS
    /// bridge holding the node IP.
    Netdev,
}

impl Datapath {
    /// The Bridge table's `datapath_type` value.
    pub const fn db_name(self) -> &'static str {
        match self {
            Datapath::System => "system",
            Datapath::Netdev => "netdev",
        }
    }

    /// `system` when the kernel module is loaded ([`MODULE_PATH`] exists), else `netdev`.
    pub fn detect(module_loaded: bool) -> Datapath {
        if module_loaded {
            Datapath::System
        } else {
            Datapath::Netdev
        }
    }
}

/// `ovs-vsctl --version`'s first line (`ovs-vsctl (Open vSwitch) 3.1.0`) to (major, minor).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().next()?;
    let v = line.rsplit(' ').next()?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    line.contains("Open vSwitch").then_some((major, minor))
}

/// Whether `version` is new enough, as an error naming what to install.
pub fn check_version(text: &str) -> Result<(u32, u32), Error> {
    match parse_version(text) {
        Some(v) if v >= MIN_VERSION => Ok(v),
        Some((major, minor)) => Err(Error::TooOld {
            found: format!("{major}.{minor}"),
        }),
        None => Err(Error::Unrecognised(
            text.lines().next().unwrap_or("").into(),
        )),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("Open vSwitch's {tool} is not installed ({reason}); {PACKAGE_HINT}")]
    Missing { tool: &'static str, reason: String },
    #[error("Open vSwitch {found} is too old (Twill needs {}.{}); {PACKAGE_HINT}", MIN_VERSION.0, MIN_VERSION.1)]
    TooOld { found: String },
    #[error("ovs-vsctl --version printed {0:?}, not an Open vSwitch version; {PACKAGE_HINT}")]
    Unrecognised(String),
    #[error("{tool} {args} failed: {stderr}")]
    Failed {
        tool: &'static str,
        args: String,
        stderr: String,
    },
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_checked_naming_the_package() {
        assert_eq!(
            parse_version("ovs-vsctl (Open vSwitch) 3.1.0\nDB Schema 8.3.1\n"),
            Some((3, 1))
        );
        assert_eq!(
            parse_version("ovs-vsctl (Open vSwitch) 2.17.9~pre"),
            Some((2, 17))
        );
        assert!(check_version("ovs-vsctl (Open vSwitch) 3.1.0").is_ok());
        let old = check_version("ovs-vsctl (Open vSwitch) 2.5.9")
            .unwrap_err()
            .to_string();
        assert_eq!(
            old,
            "Open vSwitch 2.5 is too old (Twill needs 2.13); install Open vSwitch 2.13 or newer: apt-get install openvswitch-switch (Debian/Ubuntu)"
        );
        let odd = check_version("something else 1.0").unwrap_err().to_string();
        assert!(odd.contains("not an Open vSwitch version") && odd.contains("openvswitch-switch"));
    }

    #[test]
    fn the_datapath_follows_the_kernel_module() {
        assert_eq!(Datapath::detect(true).db_name(), "system");
        assert_eq!(Datapath::detect(false).db_name(), "netdev");
    }
}
