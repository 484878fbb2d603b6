//! Twill's nftables tables on a node: `table ip twill`, masquerade for pod traffic leaving
//! the cluster and host-port DNAT (Docker's `-p`, CNI's `portmap`); `table bridge twill`,
//! anti-spoofing of bridged pods (source MAC, IPv4 address and ARP sender).
//!
//! - [`ruleset`] (pure): the table's sets, maps, chains and rules as `nft -f` script text.
//! - [`apply`] (I/O): applies a script with `nft -f -`, one atomic transaction; used once per
//!   network, off the hot path.
//! - [`elements`] (pure encoders) and [`Table`] (I/O): per-pod set and map elements sent as
//!   one nfnetlink batch, no subprocess. Pods only ever add or remove elements, so the cost
//!   of adding one pod does not grow with the number of mappings present.

pub mod apply;
pub mod elements;
pub mod policy;
pub mod rules;
pub mod ruleset;

use std::net::Ipv4Addr;

use twill_netlink::{Netns, Socket};

pub use apply::{apply_script, check_script, find_nft};
pub use elements::GuardedPod;
pub use ruleset::{
    antispoof_script, base_script, network_script, NetworkRules, PortMapping, Protocol,
};

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the nft command was not found: install nftables (apt-get install nftables)")]
    NftMissing,

    #[error("cannot run nft: {0}")]
    NftSpawn(std::io::Error),

    #[error("nft rejected the rule set ({status}): {stderr}")]
    NftFailed { status: String, stderr: String },

    /// A host port of the pod is already mapped on this node; nothing of the pod was added.
    #[error("host port {} is already taken{}: choose another host port or remove the pod holding it; nothing of this pod was added", taken_port(mapping), holder.map(|(ip, port)| format!(" (forwarded to {ip}:{port})")).unwrap_or_default())]
    HostPortTaken {
        mapping: PortMapping,
        /// Where the existing mapping forwards to, if it could be read.
        holder: Option<(Ipv4Addr, u16)>,
    },

    /// Two mappings of one pod claim the same host port.
    #[error("host port {} is listed twice in the pod's port mappings: remove the duplicate", taken_port(.0))]
    DuplicateMapping(PortMapping),

    /// An interval set rejects even a transaction that only adds elements to it, so no
    /// retry can help: its contents are inconsistent (left so, for instance, by writers
    /// that merged intervals at the same moment without a lock).
    #[error("Twill's nftables set {set} (table ip twill) is inconsistent: it rejects network {network}'s elements, and retrying will not help (nft: {nft})")]
    SetBroken {
        set: &'static str,
        network: String,
        /// What nft said when the network's script failed.
        nft: String,
    },

    /// The table or one of its sets is missing (ENOENT from the kernel).
    /// A retry cures it: the table goes with its markers, so the next ADD reinstalls it.
    #[error("Twill's nftables table (table ip twill) or one of its sets is missing in this network namespace (removed while the pod was being added?): retry, and the network's next ADD reinstalls it ({0})")]
    TableMissing(twill_netlink::Error),

    #[error("nftables over netlink: {0}")]
    Netlink(#[from] twill_netlink::Error),
}

impl Error {
    /// How to repair what this error reports, for errors that a retry cannot cure.
    pub fn repair(&self) -> Option<String> {
        match self {
            Error::SetBroken { set, .. } => Some(format!(
                "reset the set, in this network namespace, with `{}`: every network's next ADD then reinstalls its elements (until then pods of other networks on this node may be masqueraded towards other pods, or lose hairpin)",
                ruleset::reset_set_command(set)
            )),
            _ => None,
        }
    }
}

fn taken_port(m: &PortMapping) -> String {
    match m.host_ip {
        Some(ip) => format!("{ip}:{}/{}", m.host_port, m.protocol),
        None => format!("{}/{} (all addresses)", m.host_port, m.protocol),
    }
}

/// An exclusive `flock` on a network namespace's nsfs inode, held while a process sets up
/// a network in Twill's table there. The table belongs to the namespace, so the lock does
/// too: it needs no lock file or directory, every opener of the namespace (`/run/netns/X`,
/// `/proc/PID/ns/net`) meets the same lock, namespaces do not wait for each other, and
/// the kernel drops it once the holder and the children it started while holding it
/// (nft) are gone. Released on drop.
pub struct NetnsLock {
    /// Closing it releases the lock.
    _file: std::fs::File,
}

impl NetnsLock {
    /// Waits for the lock of `ns`. Its own open file description, so two tables in one
    /// process exclude each other as two processes do.
    pub fn take(ns: &Netns) -> Result<NetnsLock, Error> {
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", ns.fd().as_raw_fd());
        let file = std::fs::File::open(&path).map_err(|source| twill_netlink::Error::Io {
            op: format!("reopen the network namespace {}", ns.path().display()),
            source,
        })?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                // Inherited by the nft it runs (not close-on-exec): if this process is
                // killed, the lock lasts until that nft has committed too.
                // SAFETY: fcntl on a descriptor we own.
                unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0) };
                return Ok(NetnsLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(twill_netlink::Error::Io {
                    op: format!("lock the network namespace {}", ns.path().display()),
                    source: e,
                }
                .into());
            }
        }
    }
}

/// Twill's table in one network namespace, driven over a NETLINK_NETFILTER socket.
pub struct Table {
    socket: Socket,
    /// The socket's namespace, where `ensure_network` runs nft (on a helper thread).
    netns: Netns,
}

impl std::os::fd::AsFd for Table {
    /// The nfnetlink socket. Closing the last reference to a netfilter socket after a
    /// transaction that deleted elements waits for the kernel's deferred cleanup (an RCU
    /// grace period, 7-17 ms here): a caller in a hurry can hand it to another process.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.socket)
    }
}

impl Table {
    /// The table of the calling thread's network namespace.
    pub fn new() -> Result<Table, Error> {
        Ok(Table {
            socket: Socket::new(libc::NETLINK_NETFILTER)?,
            // An open handle: it stays this namespace even if the thread moves later.
            netns: Netns::current()?,
        })
    }

    /// The table of namespace `ns`, whatever namespace the caller's thread is in.
    pub fn new_in(ns: &Netns) -> Result<Table, Error> {
        let socket = Socket::new_in(libc::NETLINK_NETFILTER, ns)?;
        // Our own handle on the namespace, for running nft there later: reopen it through
        // the fd, which stays valid whatever path the caller used.
        let fd = ns
            .fd()
            .try_clone_to_owned()
            .map_err(|source| twill_netlink::Error::Io {
                op: "duplicate the namespace descriptor".into(),
                source,
            })?;
        let own = Netns::open(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))?;
        Ok(Table { socket, netns: own })
    }

    /// Whether the network's elements for every one of `net.subnets` are installed (each
    /// block's marker is in `network_blocks`), in one lookup. False also when the table or
    /// the set is missing, and when `net.subnets` is empty.
    pub fn network_ready(&mut self, net: &NetworkRules) -> Result<bool, Error> {
        let markers = elements::network_markers(net);
        if markers.is_empty() {
            return Ok(false);
        }
        match self
            .socket
            .request(elements::get_elements_request(&markers))
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Installs the table and the network's elements unless its markers show they are
    /// there: the first pod of a network (or of a block new to it) pays for one `nft -f`,
    /// later pods one netlink lookup.
    ///
    /// Race-free across processes: the check and the `nft -f` run under an exclusive
    /// `flock` on the namespace itself (see [`NetnsLock`]). Without it, two first ADDs
    /// could each read `local_subnets` and `cluster_cidrs` before the other's commit; nft
    /// merges intervals (auto-merge) in user space from what it read, so the later commit
    /// leaves the set unmerged, and nft then fails every later add of a neighbouring block.
    /// A set found in that state (by an older writer) is reported as [`Error::SetBroken`].
    pub fn ensure_network(&mut self, net: &NetworkRules) -> Result<(), Error> {
        if self.network_ready(net)? {
            return Ok(());
        }
        let _lock = NetnsLock::take(&self.netns)?;
        // Another process may have installed it while we waited.
        if self.network_ready(net)? {
            return Ok(());
        }
        let script = ruleset::network_script(net);
        match twill_netlink::run_in(&self.netns, || apply_script(&script))? {
            Err(Error::NftFailed { status, stderr }) => Err(self
                .diagnose(net)
                .unwrap_or(Error::NftFailed { status, stderr })),
            other => other,
        }
    }

    /// After the network's script failed under the lock: the interval set that rejects
    /// the network's elements on its own (checked with `nft --check`, which commits
    /// nothing), if there is one.
    fn diagnose(&self, net: &NetworkRules) -> Option<Error> {
        for (set, script) in ruleset::interval_checks(net) {
            if let Ok(Err(Error::NftFailed { stderr, .. })) =
                twill_netlink::run_in(&self.netns, || check_script(&script))
            {
                return Some(Error::SetBroken {
                    set,
                    network: net.network.clone(),
                    nft: stderr,
                });
            }
        }
        None
    }

    /// Adds a pod in one transaction: its `masq_pods` element when `masquerade`, and its
    /// host-port mappings. A host port already taken fails the whole batch, with
    /// [`Error::HostPortTaken`] naming it; nothing of the pod is left behind.
    pub fn add_pod(
        &mut self,
        ip: Ipv4Addr,
        masquerade: bool,
        mappings: &[PortMapping],
    ) -> Result<(), Error> {
        for (i, m) in mappings.iter().enumerate() {
            if mappings[..i]
                .iter()
                .any(|o| elements::mapping_key(o) == elements::mapping_key(m))
            {
                return Err(Error::DuplicateMapping(*m));
            }
        }
        match self
            .socket
            .send_batch(elements::add_pod_batch(ip, masquerade, mappings))
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_exists() => Err(self
                .which_port_is_taken(mappings)
                .unwrap_or(Error::Netlink(e))),
            Err(e) if e.is_not_found() => Err(Error::TableMissing(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a pod's `masq_pods` element and those of `mappings` that still forward to
    /// this pod, in one transaction. Absent elements (or table) are fine: DEL may repeat.
    ///
    /// A mapping whose host port now forwards elsewhere is left alone: after a failed ADD
    /// (port taken), the runtime's DEL must not remove the other pod's mapping. The check
    /// and the delete are two steps; a port re-taken in between by another pod with the
    /// same address and port would be removed, which needs that address to be reused first.
    pub fn remove_pod(&mut self, ip: Ipv4Addr, mappings: &[PortMapping]) -> Result<(), Error> {
        let mut ours = Vec::with_capacity(mappings.len());
        for m in mappings {
            let element = elements::mapping_element(m);
            if self.element_data(&element)? == element.data {
                ours.push(*m);
            }
        }
        match self
            .socket
            .send_batch(elements::remove_pod_batch(ip, &ours))
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Guards a bridged pod against spoofing (see [`ruleset::antispoof_script`]): its
    /// elements in `table bridge twill`, one transaction. The first pod of a node installs
    /// the table (one `nft -f`, under the namespace's lock); later pods pay one batch.
    pub fn guard_pod(&mut self, pod: &elements::GuardedPod<'_>) -> Result<(), Error> {
        match self.socket.send_batch(elements::guard_batch(pod)) {
            Err(e) if e.is_not_found() => {
                let _lock = NetnsLock::take(&self.netns)?;
                let script = ruleset::antispoof_script();
                twill_netlink::run_in(&self.netns, || apply_script(&script))??;
                self.socket
                    .send_batch(elements::guard_batch(pod))
                    .map_err(|e| {
                        if e.is_not_found() {
                            Error::TableMissing(e)
                        } else {
                            e.into()
                        }
                    })
            }
            other => other.map_err(Error::from),
        }
    }

    /// Whether every anti-spoofing element of the pod is in place (CHECK).
    pub fn is_guarded(&mut self, pod: &elements::GuardedPod<'_>) -> Result<bool, Error> {
        for request in elements::guard_lookups(pod) {
            match self.socket.request(request) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Removes a pod's anti-spoofing elements; gone already (or no table) is fine.
    pub fn unguard_pod(&mut self, pod: &elements::GuardedPod<'_>) -> Result<(), Error> {
        match self.socket.send_batch(elements::unguard_batch(pod)) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map_err(Error::from),
        }
    }

    /// Whether `mapping` is installed exactly (same host port, forwarding to the same
    /// pod address and port).
    pub fn has_mapping(&mut self, mapping: &PortMapping) -> Result<bool, Error> {
        let element = elements::mapping_element(mapping);
        Ok(self.element_data(&element)? == element.data)
    }

    /// Whether `ip` is in `masq_pods`.
    pub fn is_masqueraded(&mut self, ip: Ipv4Addr) -> Result<bool, Error> {
        Ok(self
            .element_data(&elements::masq_pod_element(ip))?
            .is_some())
    }

    /// Looks one element up: `Some(data)` if present (empty for a plain set), `None` if the
    /// element, its set or the table is absent.
    fn element_data(&mut self, element: &elements::SetElement) -> Result<Option<Vec<u8>>, Error> {
        match self.socket.request(elements::get_element_request(element)) {
            Ok(replies) => Ok(Some(
                replies
                    .iter()
                    .find_map(|r| elements::reply_element_data(r))
                    .unwrap_or_default(),
            )),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// After EEXIST: the first mapping whose key is present, with where it forwards to.
    fn which_port_is_taken(&mut self, mappings: &[PortMapping]) -> Option<Error> {
        for m in mappings {
            let (set, key) = elements::mapping_key(m);
            let probe = elements::SetElement {
                set,
                key,
                data: None,
            };
            if let Ok(Some(data)) = self.element_data(&probe) {
                let holder = (data.len() >= 6).then(|| {
                    (
                        Ipv4Addr::new(data[0], data[1], data[2], data[3]),
                        u16::from_be_bytes([data[4], data[5]]),
                    )
                });
                return Some(Error::HostPortTaken {
                    mapping: *m,
                    holder,
                });
            }
        }
        None
    }
}
