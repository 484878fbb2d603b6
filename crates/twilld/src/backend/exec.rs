//! The I/O edge of the backends: read what the kernel holds ([`observe`]) and program a
//! plan's operations ([`apply`]), one netlink request each, going on after a failure so
//! one bad peer never keeps the others from being served.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use twill_netlink::neigh::NUD_PERMANENT;
use twill_netlink::{Error, Handle, Route, RouteType, VxlanLink};

use super::{owned_by_backend, FdbRow, ForeignRoute, NeighEntry, Observed, ObservedDevice};
use super::{ObservedVxlan, Op, RouteEntry, ROUTE_PROTOCOL, TUN_DEVICE};

/// One operation that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub op: Op,
    pub error: String,
}

/// The outcome of [`apply`]: every operation is either done or failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub done: Vec<Op>,
    pub failures: Vec<Failure>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} done, {} failed",
            self.done.len(),
            self.failures.len()
        )?;
        for fail in &self.failures {
            write!(f, "\n  {}: {}", fail.op, fail.error)?;
        }
        Ok(())
    }
}

/// The main-table routes, the state of `device` (Twill's VXLAN device name) with its
/// permanent neighbour and FDB entries, and the link named [`TUN_DEVICE`], as the kernel
/// of `handle`'s namespace holds them.
pub fn observe(handle: &mut Handle, device: &str) -> Result<Observed, Error> {
    let names: HashMap<u32, String> = handle
        .links()?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let name_of = |index: Option<u32>| {
        index
            .and_then(|i| names.get(&i).cloned())
            .unwrap_or_default()
    };
    let mut observed = Observed::default();
    for r in handle.routes(Route::TABLE_MAIN)? {
        let dev = name_of(r.oif);
        let ours = r.protocol == ROUTE_PROTOCOL;
        if ours && r.kind == RouteType::Blackhole {
            observed.blackholes.push(r.dst);
        } else if ours && r.kind == RouteType::Unicast {
            // twill-cni's pod routes are Twill's too, but not the backend's: skipped.
            if owned_by_backend(false, r.gateway, &dev) {
                observed.routes.push(RouteEntry {
                    dst: r.dst,
                    via: r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    dev,
                    onlink: r.onlink,
                });
            }
        } else {
            observed.foreign_routes.push(ForeignRoute {
                dst: r.dst,
                metric: r.metric.unwrap_or(0),
                protocol: r.protocol,
            });
        }
    }
    if let Some(tun) = handle.link_by_name(TUN_DEVICE)? {
        observed.tun = Some(ObservedDevice {
            name: tun.name.clone(),
            kind: tun.kind.clone(),
            vxlan: None,
            mtu: tun.mtu,
            mac: tun.mac,
            up: tun.up,
            addresses: handle
                .addresses(Some(tun.index))?
                .into_iter()
                .map(|(_, net)| net)
                .collect(),
            tx_checksum: false,
        });
    }
    let Some(link) = handle.link_by_name(device)? else {
        return Ok(observed);
    };
    let vxlan = handle.vxlan_info(link.index)?;
    let is_vxlan = vxlan.is_some();
    observed.device = Some(ObservedDevice {
        name: link.name.clone(),
        kind: link.kind.clone(),
        vxlan: vxlan.map(|v| ObservedVxlan {
            vni: v.vni,
            port: v.port,
            local: v.local,
            uplink: v.uplink.map(|i| name_of(Some(i))),
            learning: v.learning,
        }),
        mtu: link.mtu,
        mac: link.mac,
        up: link.up,
        addresses: handle
            .addresses(Some(link.index))?
            .into_iter()
            .map(|(_, net)| net)
            .collect(),
        tx_checksum: is_vxlan && handle.tx_checksum(&link.name)?,
    });
    if !is_vxlan {
        // Not Twill's device: its tables are not Twill's either.
        return Ok(observed);
    }
    for n in handle.neighbours(Some(link.index))? {
        if let (Some(mac), true) = (n.mac, n.state & NUD_PERMANENT != 0) {
            observed.neighbours.push(NeighEntry {
                dev: link.name.clone(),
                ip: n.ip,
                mac,
            });
        }
    }
    for e in handle.fdb(Some(link.index))? {
        // Unicast entries with a remote only: the kernel's own (multicast, all-zero
        // default destination) are not Twill's business.
        if let (Some(dst), false) = (e.dst, e.mac[0] & 1 == 1 || e.mac == [0; 6]) {
            observed.fdb.push(FdbRow {
                dev: link.name.clone(),
                mac: e.mac,
                dst,
            });
        }
    }
    Ok(observed)
}

/// Programs `ops` in order. A failed operation is recorded and the next one is tried;
/// a removal of something already gone counts as done.
pub fn apply(handle: &mut Handle, ops: &[Op]) -> Report {
    let mut report = Report::default();
    let mut indexes: HashMap<String, u32> = HashMap::new();
    for op in ops {
        match apply_one(handle, op, &mut indexes) {
            Ok(()) => report.done.push(op.clone()),
            Err(e) => report.failures.push(Failure {
                op: op.clone(),
                error: e.to_string(),
            }),
        }
    }
    report
}

fn index_of(
    handle: &mut Handle,
    name: &str,
    cache: &mut HashMap<String, u32>,
) -> Result<u32, Error> {
    if let Some(i) = cache.get(name) {
        return Ok(*i);
    }
    let link = handle.link_by_name(name)?.ok_or_else(|| {
        Error::Conflict(format!(
            "link {name} does not exist (an earlier step creating it failed, or it was deleted meanwhile)"
        ))
    })?;
    cache.insert(name.to_owned(), link.index);
    Ok(link.index)
}

fn kernel_route(r: &RouteEntry, oif: u32) -> Route {
    let gateway = Some(r.via).filter(|g| !g.is_unspecified());
    Route {
        gateway,
        oif: Some(oif),
        // A route straight into a device (the TUN) is on-link, as `ip route add` makes it.
        scope: if gateway.is_some() {
            Route::SCOPE_UNIVERSE
        } else {
            Route::SCOPE_LINK
        },
        onlink: r.onlink,
        protocol: ROUTE_PROTOCOL,
        ..Route::new(r.dst)
    }
}

fn kernel_blackhole(dst: ipnet::Ipv4Net) -> Route {
    Route {
        protocol: ROUTE_PROTOCOL,
        ..Route::blackhole(dst)
    }
}

fn gone_is_fine(result: Result<(), Error>) -> Result<(), Error> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

fn apply_one(handle: &mut Handle, op: &Op, cache: &mut HashMap<String, u32>) -> Result<(), Error> {
    match op {
        Op::DeleteRoute(r) => {
            // The device may be gone already, taking the route with it.
            let Ok(oif) = index_of(handle, &r.dev, cache) else {
                return Ok(());
            };
            gone_is_fine(handle.delete_route_exact(&kernel_route(r, oif)))
        }
        Op::DeleteBlackhole(dst) => {
            gone_is_fine(handle.delete_route_exact(&kernel_blackhole(*dst)))
        }
        Op::AddBlackhole(dst) => {
            if handle.add_route(&kernel_blackhole(*dst))? {
                Ok(())
            } else {
                Err(Error::Conflict(format!(
                    "blackhole {dst}: a route to {dst} with the same metric appeared meanwhile, not Twill's; remove it"
                )))
            }
        }
        Op::DeleteFdb(e) => {
            let index = index_of(handle, &e.dev, cache)?;
            gone_is_fine(handle.delete_fdb(index, e.mac, e.dst))
        }
        Op::DeleteNeighbour(n) => {
            let index = index_of(handle, &n.dev, cache)?;
            gone_is_fine(handle.delete_neighbour(index, n.ip))
        }
        Op::DeleteDevice(name) => {
            // Gone already (a udp datapath told to stop removes its TUN itself).
            let Ok(index) = index_of(handle, name, cache) else {
                return Ok(());
            };
            cache.remove(name);
            gone_is_fine(handle.delete_link(index))
        }
        Op::DeleteDeviceAddress { dev, net } => {
            let index = index_of(handle, dev, cache)?;
            gone_is_fine(handle.delete_address(index, net.addr(), net.prefix_len()))
        }
        Op::CreateDevice(spec) => {
            let uplink = index_of(handle, &spec.uplink, cache)?;
            handle.create_vxlan(&VxlanLink {
                name: spec.name.clone(),
                vni: spec.vni,
                local: spec.local,
                uplink: Some(uplink),
                port: spec.port,
                learning: false,
                mtu: Some(spec.mtu),
                mac: Some(spec.mac),
            })?;
            cache.remove(&spec.name);
            Ok(())
        }
        Op::SetMtu { dev, mtu } => {
            let index = index_of(handle, dev, cache)?;
            handle.set_mtu(index, *mtu)
        }
        Op::SetMac { dev, mac } => {
            let index = index_of(handle, dev, cache)?;
            handle.set_mac(index, *mac)
        }
        Op::DisableTxChecksum(dev) => handle.set_tx_checksum(dev, false),
        Op::AddDeviceAddress { dev, net } => {
            let index = index_of(handle, dev, cache)?;
            handle
                .add_address(index, net.addr(), net.prefix_len())
                .map(drop)
        }
        Op::SetUp(dev) => {
            let index = index_of(handle, dev, cache)?;
            handle.set_link_up(index)
        }
        Op::SetNeighbour(n) => {
            let index = index_of(handle, &n.dev, cache)?;
            handle.set_neighbour(index, n.ip, n.mac)
        }
        Op::SetFdb(e) => {
            let index = index_of(handle, &e.dev, cache)?;
            handle.set_fdb(index, e.mac, e.dst)
        }
        Op::AddRoute(r) => {
            let oif = index_of(handle, &r.dev, cache)?;
            if handle.add_route(&kernel_route(r, oif))? {
                Ok(())
            } else {
                Err(Error::Conflict(format!(
                    "route {r}: a route to {} with the same metric appeared meanwhile, not Twill's; remove it",
                    r.dst
                )))
            }
        }
        Op::ReplaceRoute { new, .. } => {
            let oif = index_of(handle, &new.dev, cache)?;
            handle.replace_route(&kernel_route(new, oif))
        }
    }
}
