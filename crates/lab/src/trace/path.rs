//! Pure: where a packet goes, hop by hop, from the kernel's own answers (`ip route get`, the
//! topology's veth peers, bridge ports, VXLAN neighbour and FDB entries) and, for the udp
//! backend, from the node's datapath (its peer table: the TUN → datapath → UDP socket hop,
//! checked against its own longest-prefix match and admission rules); which captured
//! frame is the probe; what NAT did to it (from the headers seen before and after a
//! namespace, and from conntrack); and the report, as a table or JSON.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use serde::Serialize;
use serde_json::Value;

use super::pcap::{describe, Frame, Ipv4, Mac, L4};
use crate::graph::topo::{Datapath, DatapathInfo, Link, Role, Topology};
use twill_datapath::stats::Stats;

/// More hops than any lab path has: a routing loop.
pub const MAX_HOPS: usize = 48;
/// The ICMP probe's payload pattern (`ping -p`): "twll".
pub const ICMP_PATTERN: &[u8] = b"twll";
pub const ICMP_PATTERN_HEX: &str = "74776c6c";
/// The UDP probe's payload starts with this.
pub const UDP_MARKER: &[u8] = b"twill-trace";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceProto {
    Icmp,
    Tcp,
    Udp,
}

impl TraceProto {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceProto::Icmp => "icmp",
            TraceProto::Tcp => "tcp",
            TraceProto::Udp => "udp",
        }
    }
}

/// One answer of `ip -j route get`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAnswer {
    pub local: bool,
    /// A blackhole route: the kernel drops the packet here.
    pub blackhole: bool,
    pub dev: String,
    pub gateway: Option<Ipv4Addr>,
    pub prefsrc: Option<Ipv4Addr>,
}

pub fn parse_route_get(text: &str) -> Result<RouteAnswer, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("bad ip -j route get output: {e}"))?;
    let r = v.get(0).ok_or("ip route get gave no route")?;
    let ip = |k: &str| r[k].as_str().and_then(|s| s.parse().ok());
    Ok(RouteAnswer {
        local: r["type"] == "local",
        blackhole: r["type"] == "blackhole",
        dev: r["dev"].as_str().unwrap_or("").to_string(),
        gateway: ip("gateway"),
        prefsrc: ip("prefsrc"),
    })
}

/// The kernel's routing decision in a namespace (the I/O edge implements it with `ip`).
pub trait Router {
    fn route_get(
        &mut self,
        netns: &str,
        dst: Ipv4Addr,
        from: Option<Ipv4Addr>,
        iif: Option<&str>,
    ) -> Result<RouteAnswer, String>;

    /// The entry of `netns`'s main table that matches `dst` (longest prefix), as `ip route`
    /// prints it, to show which route a hop took; None when unknown.
    fn route_entry(&mut self, _netns: &str, _dst: Ipv4Addr) -> Option<crate::routes::RouteEntry> {
        None
    }

    /// Where Open vSwitch sends a packet the kernel routed into its port `dev` of
    /// `netns` (`--backend ovs`: twl.ovs): the tunnel it takes. None: `dev` is not an OVS
    /// port, or no flow sends `dst` into a tunnel.
    fn ovs_tunnel(&mut self, _netns: &str, _dev: &str, _dst: Ipv4Addr) -> Option<OvsJump> {
        None
    }

    /// The system port through which OVS bridge `dev` of `netns` meets the wire (br-phy's
    /// eth0), when `dev` is such a bridge's internal port.
    fn ovs_uplink(&mut self, _netns: &str, _dev: &str) -> Option<String> {
        None
    }

    /// The bridge OVS's internal port `port` of `netns` is a port of (bridge wiring:
    /// twl0), if any.
    fn ovs_master(&mut self, _netns: &str, _port: &str) -> Option<String> {
        None
    }
}

/// A packet's way through a node's Open vSwitch into a tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvsJump {
    /// The outer source (the tunnel port's local_ip) and destination (the flow's tun_dst).
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
    /// The far node's port the decapsulated packet comes out of.
    pub far_port: String,
    /// What the hop says: the bridge, the flow, the tunnel port.
    pub note: String,
}

/// What a hop's note says of the route it took: the entry itself, and for a pure-L3 pod's
/// /32 (Twill's, scope link, to a veth) what it is.
pub fn route_note(r: &crate::routes::RouteEntry) -> String {
    if r.dst.prefix_len() == 32 && r.is_twill() && r.scope.as_deref() == Some("link") {
        format!("route {r} (l3: the pod's /32 to its host veth)")
    } else {
        format!("route {r}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Sent by this namespace (or leaving a bridge through this port).
    Out,
    /// Received by this namespace.
    In,
    /// Switched by this bridge, not for the namespace itself.
    Bridged,
    /// Carried by a userspace process of this namespace (the udp backend's datapath), not
    /// by a device: nothing to capture, its counters show it.
    Process,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Out => "out",
            Dir::In => "in",
            Dir::Bridged => "bridged",
            Dir::Process => "process",
        }
    }
}

/// A device the packet should cross.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedHop {
    pub netns: String,
    pub member: String,
    pub device: String,
    pub direction: Dir,
    /// Carried inside a VXLAN packet here: the capture shows outer and inner headers.
    pub encapsulated: bool,
    pub note: String,
    /// A [`Dir::Process`] hop: which process, and what it does with the packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessHop>,
}

/// Which way a datapath moves the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Way {
    /// Read from the TUN, sent in UDP to `peer`: its `tx` counters.
    Tx,
    /// Received in UDP from `peer`, admitted, written into the TUN: its `rx` counters.
    Rx,
}

/// The udp backend's userspace hop: the datapath process, and the peer it sends to or
/// admitted from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessHop {
    pub pid: u32,
    pub queues: u16,
    /// Its control socket (where the trace reads its counters).
    pub socket: String,
    pub way: Way,
    /// The other node's IP, and the UDP port the outer packet goes to.
    pub peer: Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathPlan {
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub hops: Vec<PlannedHop>,
    /// The namespace that takes the packet as its own, if the walk got there.
    pub delivered_to: Option<String>,
    /// Why the walk stopped early.
    pub stopped: Option<String>,
}

struct Walker<'a, R: Router> {
    topo: &'a Topology,
    router: &'a mut R,
    hops: Vec<PlannedHop>,
}

impl<R: Router> Walker<'_, R> {
    fn push(&mut self, netns: &str, device: &str, direction: Dir, encapsulated: bool, note: &str) {
        self.hops.push(PlannedHop {
            netns: netns.into(),
            member: self.topo.member(netns),
            device: device.into(),
            direction,
            encapsulated,
            note: note.into(),
            process: None,
        });
    }

    /// The udp backend's datapath in `netns`, or why there is none to follow.
    fn datapath(&self, netns: &str, tun: &str) -> Result<DatapathInfo, String> {
        let member = self.topo.member(netns);
        match self.topo.ns(netns).and_then(|n| n.datapath.as_ref()) {
            Some(Datapath::Up(d)) => Ok(d.clone()),
            Some(Datapath::Unreachable { socket, error }) => Err(format!(
                "{member}: {tun} is a TUN and its datapath does not answer at {socket}: {error}"
            )),
            None => Err(format!(
                "{member}: {tun} is a TUN that no Twill datapath serves (not the udp backend's)"
            )),
        }
    }

    fn push_process(&mut self, netns: &str, dp: &DatapathInfo, process: ProcessHop, note: &str) {
        self.push(netns, DATAPATH_HOP, Dir::Process, false, note);
        let last = self.hops.len() - 1;
        self.hops[last].process = Some(ProcessHop {
            pid: dp.pid,
            queues: dp.queues,
            socket: dp.socket.clone(),
            ..process
        });
    }

    /// The udp backend: the kernel hands the packet (`src` → `dst`) to the TUN `out` in
    /// `netns`; the datapath picks the peer by its own table, the outer UDP packet is routed
    /// like any other, and the far datapath admits it (or says why not) and writes it into
    /// its TUN. Returns the far namespace and its TUN.
    fn userspace(
        &mut self,
        netns: &str,
        out: &Link,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        taken: &str,
    ) -> Result<(String, String), String> {
        let dp = self.datapath(netns, &out.name)?;
        let member = self.topo.member(netns);
        let table = dp.table().ok_or_else(|| {
            format!(
                "{member}: the datapath's table (generation {}) does not validate",
                dp.generation
            )
        })?;
        let who = |ip: Ipv4Addr| {
            self.topo
                .owner(ip)
                .map_or_else(|| ip.to_string(), |(n, _)| format!("{} {ip}", n.member))
        };
        let peer = table.route(dst).map(|id| table.peer(id).clone()).ok_or_else(|| {
            format!(
                "{member}'s datapath (pid {}) has no peer holding {dst}: it drops the packet                  (no_route) and answers ICMP net unreachable",
                dp.pid
            )
        })?;
        let block = peer
            .blocks
            .iter()
            .filter(|b| b.contains(&dst))
            .max_by_key(|b| b.prefix_len())
            .map(|b| b.to_string())
            .unwrap_or_default();
        self.push(netns, &out.name, Dir::Out, false, taken);
        self.push_process(
            netns,
            &dp,
            ProcessHop {
                pid: 0,
                queues: 0,
                socket: String::new(),
                way: Way::Tx,
                peer: peer.node_ip,
                port: peer.port,
            },
            &format!(
                "twill datapath pid {}, {} queue(s): read from {}, {block} is {}'s: sent in UDP to {}:{}",
                dp.pid,
                dp.queues,
                out.name,
                who(peer.node_ip),
                peer.node_ip,
                peer.port
            ),
        );
        let far = self.l3(netns.into(), None, dp.node_ip, peer.node_ip, true)?;
        let far_member = self.topo.member(&far);
        let fdp = self.datapath(&far, "its TUN")?;
        let ftable = fdp.table().ok_or_else(|| {
            format!(
                "{far_member}: the datapath's table (generation {}) does not validate",
                fdp.generation
            )
        })?;
        let drop = |why: &str| format!("{far_member}'s datapath (pid {}) drops it: {why}", fdp.pid);
        let from = ftable.peer_by_ip(dp.node_ip).ok_or_else(|| {
            drop(&format!(
                "{} is no peer of its table (unknown_peer)",
                dp.node_ip
            ))
        })?;
        if !ftable.admit_src(from, src) {
            return Err(drop(&format!(
                "inner source {src} is not in {}'s blocks (spoofed_inner)",
                dp.node_ip
            )));
        }
        if !ftable.is_local(dst) {
            return Err(drop(&format!(
                "{dst} is not in its own blocks (foreign_dst)"
            )));
        }
        self.push_process(
            &far,
            &fdp,
            ProcessHop {
                pid: 0,
                queues: 0,
                socket: String::new(),
                way: Way::Rx,
                peer: dp.node_ip,
                port: peer.port,
            },
            &format!(
                "twill datapath pid {}, {} queue(s): admitted from {} (inner source in its blocks), written into {}",
                fdp.pid,
                fdp.queues,
                who(dp.node_ip),
                fdp.tun
            ),
        );
        self.push(&far, &fdp.tun, Dir::In, false, "decapsulated");
        Ok((far.clone(), fdp.tun))
    }

    fn link(&self, netns: &str, dev: &str) -> Result<Link, String> {
        self.topo
            .link(netns, dev)
            .cloned()
            .ok_or_else(|| format!("{netns} has no device {dev}"))
    }

    fn route(
        &mut self,
        netns: &str,
        dst: Ipv4Addr,
        src: Ipv4Addr,
        iif: Option<&str>,
    ) -> Result<RouteAnswer, String> {
        match self.router.route_get(netns, dst, Some(src), iif) {
            Ok(a) => Ok(a),
            // A forwarded packet's source may be unknown to this namespace (rp_filter, a
            // source that NAT replaces later): ask for the destination alone.
            Err(first) if iif.is_some() => self
                .router
                .route_get(netns, dst, None, None)
                .map_err(|_| format!("no route to {dst} in {netns}: {first}")),
            Err(e) => Err(format!("no route to {dst} in {netns}: {e}")),
        }
    }

    /// Routes a packet from `netns` (entered through `iif`) until a namespace takes it as
    /// its own; returns that namespace.
    fn l3(
        &mut self,
        mut netns: String,
        mut iif: Option<String>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        encap: bool,
    ) -> Result<String, String> {
        while self.hops.len() < MAX_HOPS {
            let ans = match self.route(&netns, dst, src, iif.as_deref()) {
                Ok(a) if !a.blackhole => a,
                other => {
                    // A blackhole drops it (`ip route get` answers so, or refuses with iif).
                    if let Some(r) = self
                        .router
                        .route_entry(&netns, dst)
                        .filter(|r| r.kind == "blackhole")
                    {
                        return Err(format!(
                            "{} drops it: `{r}` (no pod holds {dst}; an l3 node blackholes its blocks)",
                            self.topo.member(&netns)
                        ));
                    }
                    other?
                }
            };
            if ans.local {
                return Ok(netns);
            }
            let taken = self
                .router
                .route_entry(&netns, dst)
                .map(|r| route_note(&r))
                .unwrap_or_default();
            let out = self.link(&netns, &ans.dev)?;
            let nexthop = ans.gateway.unwrap_or(dst);
            if let Some(j) = self.router.ovs_tunnel(&netns, &out.name, dst) {
                if encap {
                    return Err(format!("{netns}: a tunnel inside a tunnel ({})", out.name));
                }
                self.push(
                    &netns,
                    &out.name,
                    Dir::Out,
                    false,
                    &format!("{taken}; {}", j.note),
                );
                let far = self.l3(netns.clone(), None, j.local, j.remote, true)?;
                self.push(&far, &j.far_port, Dir::In, false, "decapsulated by OVS");
                let mut port = j.far_port;
                if let Some(bridge) = self.router.ovs_master(&far, &port) {
                    // Addressed to the port's own MAC: the pods' bridge passes it up.
                    let note = format!("from its port {port}, up to the host");
                    self.push(&far, &bridge, Dir::In, false, &note);
                    port = bridge;
                }
                netns = far;
                iif = Some(port);
                continue;
            }
            if let Some(vx) = out.vxlan.clone() {
                if encap {
                    return Err(format!("{netns}: VXLAN inside VXLAN ({})", out.name));
                }
                let mac = out
                    .neighbours
                    .iter()
                    .find(|(ip, _)| *ip == nexthop)
                    .map(|(_, m)| *m)
                    .ok_or_else(|| {
                        format!(
                            "{netns}: no neighbour entry for {nexthop} on {}: the backend has not programmed that peer",
                            out.name
                        )
                    })?;
                let remote = out
                    .fdb
                    .iter()
                    .find(|(m, _)| *m == mac)
                    .map(|(_, ip)| *ip)
                    .ok_or_else(|| {
                        format!("{netns}: no FDB entry for {mac} on {}: the backend has not programmed that peer", out.name)
                    })?;
                let local = vx
                    .local
                    .ok_or_else(|| format!("{netns}: {} has no local address", out.name))?;
                self.push(
                    &netns,
                    &out.name,
                    Dir::Out,
                    false,
                    &format!(
                        "VXLAN vni {}: to VTEP {nexthop} ({mac}) at {remote}",
                        vx.vni
                    ),
                );
                let far = self.l3(netns.clone(), None, local, remote, true)?;
                let dev = self
                    .topo
                    .ns(&far)
                    .and_then(|n| {
                        n.links
                            .iter()
                            .find(|l| l.vxlan.as_ref().is_some_and(|v| v.vni == vx.vni))
                    })
                    .map(|l| l.name.clone())
                    .ok_or_else(|| format!("{far} has no VXLAN device with VNI {}", vx.vni))?;
                self.push(&far, &dev, Dir::In, false, "decapsulated");
                netns = far;
                iif = Some(dev);
                continue;
            }
            // An OVS netdev bridge's internal port (br-phy) is a TAP too, but OVS's, not a
            // udp datapath's: it is walked as the bridge below.
            let ovs_uplink = self.router.ovs_uplink(&netns, &out.name).is_some();
            if out.kind == "tun" && !ovs_uplink {
                if encap {
                    return Err(format!("{netns}: a TUN inside the tunnel ({})", out.name));
                }
                let (far, tun) = self.userspace(&netns, &out, src, dst, &taken)?;
                netns = far;
                iif = Some(tun);
                continue;
            }
            // A tunnel's outer packet that OVS made leaves through the OVS bridge's own port
            // (br-phy's eth0) without touching the bridge's internal port.
            if !(encap && ovs_uplink) {
                self.push(&netns, &out.name, Dir::Out, encap, &taken);
            }
            let (ns2, dev2) = self.l2(&netns, out, nexthop, encap)?;
            netns = ns2;
            iif = Some(dev2);
        }
        Err(format!("more than {MAX_HOPS} hops: a routing loop?"))
    }

    /// Carries a frame out of `out` in `netns` to the device that owns `nexthop`: across
    /// veth pairs and bridges. Returns where it enters layer 3 again.
    fn l2(
        &mut self,
        netns: &str,
        out: Link,
        nexthop: Ipv4Addr,
        encap: bool,
    ) -> Result<(String, String), String> {
        let (mut ns, mut link) = (netns.to_string(), out);
        while self.hops.len() < MAX_HOPS {
            if let Some(port) = self.router.ovs_uplink(&ns, &link.name) {
                let l = self.link(&ns, &port)?;
                self.push(
                    &ns,
                    &port,
                    Dir::Out,
                    encap,
                    &format!("OVS bridge {}'s port", link.name),
                );
                link = l;
                continue;
            }
            if link.kind == "bridge" {
                let port = self.port_towards(&ns, &link.name, nexthop, None)?;
                self.push(&ns, &port.name, Dir::Out, encap, "");
                link = port;
                continue;
            }
            let (pns, plink) = self
                .topo
                .peer(&link)
                .map(|(n, l)| (n.name.clone(), l.clone()))
                .ok_or_else(|| {
                    format!(
                        "{ns}: {} has no peer the lab knows (not a veth of the lab)",
                        link.name
                    )
                })?;
            self.push(&pns, &plink.name, Dir::In, encap, "");
            if let Some(br) = plink.master.clone() {
                let bridge = self.link(&pns, &br)?;
                if bridge.owns(nexthop) {
                    self.push(&pns, &br, Dir::In, encap, "to the bridge's own address");
                    return Ok((pns, br));
                }
                self.push(&pns, &br, Dir::Bridged, encap, "");
                let port = self.port_towards(&pns, &br, nexthop, Some(&plink.name))?;
                self.push(&pns, &port.name, Dir::Out, encap, "");
                ns = pns;
                link = port;
                continue;
            }
            return Ok((pns, plink.name));
        }
        Err(format!("more than {MAX_HOPS} hops: a loop?"))
    }

    fn port_towards(
        &mut self,
        netns: &str,
        bridge: &str,
        nexthop: Ipv4Addr,
        except: Option<&str>,
    ) -> Result<Link, String> {
        let (ons, olink) = self.topo.owner(nexthop).ok_or_else(|| {
            format!("no device of the lab holds {nexthop} (next hop from {netns})")
        })?;
        // An address on an OVS bridge's internal port (br-phy) is reached through that
        // bridge's own port (eth0).
        let olink = match self.router.ovs_uplink(&ons.name, &olink.name) {
            Some(up) => ons.links.iter().find(|l| l.name == up).unwrap_or(olink),
            None => olink,
        };
        self.topo
            .ports(netns, bridge)
            .filter(|p| Some(p.name.as_str()) != except)
            .find(|p| {
                self.topo
                    .peer(p)
                    .is_some_and(|(n, l)| n.name == ons.name && l.ifindex == olink.ifindex)
            })
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no port of {bridge} in {netns} leads to {nexthop} ({} {})",
                    ons.member, olink.name
                )
            })
    }
}

/// Walks the path a packet from `src_ns` to `dst` takes, asking the kernel at every
/// namespace. `src` is the source address (None: the one the kernel picks).
pub fn walk(
    topo: &Topology,
    router: &mut impl Router,
    src_ns: &str,
    src: Option<Ipv4Addr>,
    dst: Ipv4Addr,
) -> PathPlan {
    walk_from(topo, router, src_ns, None, src, dst, Vec::new())
}

/// Continues a walk from `netns`, entered through `iif` (after a DNAT, say).
pub fn walk_from(
    topo: &Topology,
    router: &mut impl Router,
    netns: &str,
    iif: Option<&str>,
    src: Option<Ipv4Addr>,
    dst: Ipv4Addr,
    hops: Vec<PlannedHop>,
) -> PathPlan {
    let mut w = Walker { topo, router, hops };
    let src_ip = match src {
        Some(s) => Ok(s),
        None => w
            .router
            .route_get(netns, dst, None, None)
            .map_err(|e| format!("no route to {dst} in {netns}: {e}"))
            .and_then(|a| {
                a.prefsrc
                    .ok_or_else(|| format!("{netns} has no source address for {dst}"))
            }),
    };
    let (delivered_to, stopped) = match &src_ip {
        Ok(s) => match w.l3(netns.into(), iif.map(String::from), *s, dst, false) {
            Ok(ns) => (Some(ns), None),
            Err(e) => (None, Some(e)),
        },
        Err(e) => (None, Some(e.clone())),
    };
    PathPlan {
        src_ip: src_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        dst_ip: dst,
        hops: w.hops,
        delivered_to,
        stopped,
    }
}

/// Is this frame the probe? Looks at the innermost packet: the ICMP echo request carrying
/// our pattern, the UDP datagram with our marker, or a bare TCP SYN.
pub fn is_probe(proto: TraceProto, frame: &Frame) -> bool {
    let Some(ip) = &frame.innermost().ip else {
        return false;
    };
    match (&ip.l4, proto) {
        (
            L4::Icmp {
                kind: 8, payload, ..
            },
            TraceProto::Icmp,
        ) => payload
            .windows(ICMP_PATTERN.len())
            .any(|w| w == ICMP_PATTERN),
        (L4::Udp { payload, .. }, TraceProto::Udp) => payload.starts_with(UDP_MARKER),
        (L4::Tcp { flags, .. }, TraceProto::Tcp) => flags == "S",
        _ => false,
    }
}

/// An IP header as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    pub summary: String,
}

impl From<&Ipv4> for Header {
    fn from(ip: &Ipv4) -> Header {
        let ports = ip.l4.ports();
        Header {
            src: ip.src,
            dst: ip.dst,
            ttl: ip.ttl,
            sport: ports.map(|p| p.0),
            dport: ports.map(|p| p.1),
            summary: describe(ip),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct L2 {
    pub src: Mac,
    pub dst: Mac,
}

/// The device name a [`Dir::Process`] hop shows (there is no device: the datapath process).
pub const DATAPATH_HOP: &str = "twill-datapath";

pub use super::pcap::Encap;

/// The outer headers of an encapsulated packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outer {
    pub encap: Encap,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2: Option<L2>,
    pub ip: Header,
    /// The VNI (VXLAN) or the GRE key (None: none, or the udp backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
}

/// What a datapath counted for a [`Dir::Process`] hop while the probe went (its peer's
/// `tx` or `rx` counters, after minus before).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Counted {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HopReport {
    pub index: usize,
    #[serde(flatten)]
    pub hop: PlannedHop,
    /// Whether the capture on this device saw the probe.
    pub seen: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer: Option<Outer>,
    /// The probe's own (inner, if encapsulated) Ethernet and IP headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2: Option<L2>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet: Option<Header>,
    /// A [`Dir::Process`] hop: what its datapath counted (seen: at least one packet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted: Option<Counted>,
}

/// Fills each planned hop with the probe frame its capture saw. `captures` maps
/// (netns, device) to the frames that device carried, in time order; the k-th time a device
/// appears on the path takes its k-th probe frame. A [`Dir::Process`] hop is seen when its
/// datapath's counters for the peer moved: `counters` maps its control socket to its
/// stats before and after the probe.
pub fn attach(
    hops: &[PlannedHop],
    captures: &HashMap<(String, String), Vec<Frame>>,
    counters: &HashMap<String, (Stats, Stats)>,
    proto: TraceProto,
) -> Vec<HopReport> {
    let mut used: HashMap<(String, String), usize> = HashMap::new();
    hops.iter()
        .enumerate()
        .map(|(i, hop)| {
            if let Some(p) = &hop.process {
                let counted = counters.get(&p.socket).map(|(before, after)| {
                    let of = |s: &Stats| {
                        s.peer(p.peer).map_or((0, 0), |c| match p.way {
                            Way::Tx => (c.tx_packets, c.tx_bytes),
                            Way::Rx => (c.rx_packets, c.rx_bytes),
                        })
                    };
                    let (b, a) = (of(before), of(after));
                    Counted {
                        packets: a.0.saturating_sub(b.0),
                        bytes: a.1.saturating_sub(b.1),
                    }
                });
                return HopReport {
                    index: i + 1,
                    hop: hop.clone(),
                    seen: counted.is_some_and(|c| c.packets > 0),
                    outer: None,
                    l2: None,
                    packet: None,
                    counted,
                };
            }
            let key = (hop.netns.clone(), hop.device.clone());
            let k = used.entry(key.clone()).or_insert(0);
            let frame = captures
                .get(&key)
                .and_then(|fs| fs.iter().filter(|f| is_probe(proto, f)).nth(*k));
            if frame.is_some() {
                *k += 1;
            }
            let mut r = HopReport {
                index: i + 1,
                hop: hop.clone(),
                seen: frame.is_some(),
                outer: None,
                l2: None,
                packet: None,
                counted: None,
            };
            let l2 = |f: &Frame| {
                Some(L2 {
                    src: f.src_mac?,
                    dst: f.dst_mac?,
                })
            };
            if let Some(f) = frame {
                let encap = match (&f.vxlan, &f.udp_overlay) {
                    (Some(v), _) => Some((
                        v.encap,
                        (v.encap == Encap::Vxlan || v.vni != 0).then_some(v.vni),
                    )),
                    (None, Some(_)) => Some((Encap::Udp, None)),
                    (None, None) => None,
                };
                if let (Some((encap, vni)), Some(ip)) = (encap, &f.ip) {
                    r.outer = Some(Outer {
                        encap,
                        l2: l2(f),
                        ip: ip.into(),
                        vni,
                    });
                }
                let inner = f.innermost();
                r.l2 = l2(inner);
                r.packet = inner.ip.as_ref().map(Header::from);
            }
            r
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NatKind {
    Snat,
    Dnat,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NatEvent {
    pub kind: NatKind,
    pub from: String,
    pub to: String,
    pub netns: String,
    pub member: String,
    /// `masquerade`, `host port`, or empty.
    pub how: String,
    /// `headers` (seen changing between two captures) or `conntrack`.
    pub evidence: String,
}

impl std::fmt::Display for NatEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            NatKind::Snat => "SNAT",
            NatKind::Dnat => "DNAT",
        };
        let mut why = Vec::new();
        if !self.how.is_empty() {
            why.push(self.how.clone());
        }
        why.push(format!("{} {}", role_word(&self.member), self.member));
        write!(f, "{kind} {} → {} ({})", self.from, self.to, why.join(", "))
    }
}

fn role_word(member: &str) -> &'static str {
    match member {
        "rt" => "router",
        "out" => "host",
        m if m.contains("-p") => "pod",
        m if m.starts_with('n') => "node",
        _ => "in",
    }
}

fn endpoint(ip: Ipv4Addr, port: Option<u16>, show_port: bool) -> String {
    match port {
        Some(p) if show_port => format!("{ip}:{p}"),
        _ => ip.to_string(),
    }
}

/// How a NAT is called: masquerade when the new source is the egress device's address,
/// host port when the original destination is a node's address.
fn nat_how(
    topo: &Topology,
    kind: NatKind,
    netns: &str,
    egress: Option<&str>,
    orig: Ipv4Addr,
    new: Ipv4Addr,
) -> String {
    match kind {
        NatKind::Snat => {
            let on_egress = egress
                .and_then(|d| topo.link(netns, d))
                .is_some_and(|l| l.owns(new));
            let node_addr = topo
                .ns(netns)
                .is_some_and(|n| n.links.iter().any(|l| l.owns(new)));
            if on_egress || node_addr {
                "masquerade".into()
            } else {
                String::new()
            }
        }
        NatKind::Dnat => {
            let to_node = topo.owner(orig).is_some_and(|(n, _)| n.role == Role::Node);
            if to_node {
                "host port".into()
            } else {
                String::new()
            }
        }
    }
}

/// NAT seen in the headers: the source or destination changing between two consecutive
/// captures. The rewrite happened in the namespace of the later hop if it sends the packet
/// (postrouting SNAT shows on egress), else of the earlier one.
pub fn nat_from_headers(topo: &Topology, hops: &[HopReport]) -> Vec<NatEvent> {
    let seen: Vec<&HopReport> = hops.iter().filter(|h| h.packet.is_some()).collect();
    let mut out = Vec::new();
    for pair in seen.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let (pa, pb) = (a.packet.as_ref().unwrap(), b.packet.as_ref().unwrap());
        let at = if b.hop.direction == Dir::Out || a.hop.netns == b.hop.netns {
            &b.hop
        } else {
            &a.hop
        };
        if (pa.src, pa.sport) != (pb.src, pb.sport) {
            let ports = pa.src == pb.src;
            out.push(NatEvent {
                kind: NatKind::Snat,
                from: endpoint(pa.src, pa.sport, ports),
                to: endpoint(pb.src, pb.sport, ports),
                netns: at.netns.clone(),
                member: at.member.clone(),
                how: nat_how(
                    topo,
                    NatKind::Snat,
                    &at.netns,
                    Some(&b.hop.device),
                    pa.src,
                    pb.src,
                ),
                evidence: "headers".into(),
            });
        }
        if (pa.dst, pa.dport) != (pb.dst, pb.dport) {
            out.push(NatEvent {
                kind: NatKind::Dnat,
                from: endpoint(pa.dst, pa.dport, true),
                to: endpoint(pb.dst, pb.dport, true),
                netns: at.netns.clone(),
                member: at.member.clone(),
                how: nat_how(topo, NatKind::Dnat, &at.netns, None, pa.dst, pb.dst),
                evidence: "headers".into(),
            });
        }
    }
    out
}

/// One tuple of a conntrack entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// An entry of `/proc/net/nf_conntrack`: the original direction and the expected reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conntrack {
    pub proto: String,
    pub orig: Tuple,
    pub reply: Tuple,
}

/// Parses `/proc/net/nf_conntrack` (IPv4 entries; the rest is skipped).
pub fn parse_conntrack(text: &str) -> Vec<Conntrack> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() != Some(&"ipv4") || f.len() < 3 {
                return None;
            }
            let mut tuples: Vec<Tuple> = Vec::new();
            let mut cur: Option<Tuple> = None;
            for kv in &f[3..] {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                match k {
                    "src" => {
                        if let Some(t) = cur.take() {
                            tuples.push(t);
                        }
                        cur = Some(Tuple {
                            src: v.parse().ok()?,
                            dst: Ipv4Addr::UNSPECIFIED,
                            sport: None,
                            dport: None,
                        });
                    }
                    "dst" => cur.as_mut()?.dst = v.parse().ok()?,
                    "sport" => cur.as_mut()?.sport = v.parse().ok(),
                    "dport" => cur.as_mut()?.dport = v.parse().ok(),
                    _ => {}
                }
            }
            tuples.extend(cur);
            if tuples.len() < 2 {
                return None;
            }
            Some(Conntrack {
                proto: f[2].to_string(),
                orig: tuples[0].clone(),
                reply: tuples[1].clone(),
            })
        })
        .collect()
}

/// NAT conntrack recorded in `netns` for the probe's flow (original source `src`, to `dst`).
pub fn nat_from_conntrack(
    topo: &Topology,
    netns: &str,
    entries: &[Conntrack],
    proto: TraceProto,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Vec<NatEvent> {
    let mut out = Vec::new();
    let member = topo.member(netns);
    for e in entries {
        if e.proto != proto.as_str() || e.orig.src != src || e.orig.dst != dst {
            continue;
        }
        if (e.reply.dst, e.reply.dport) != (e.orig.src, e.orig.sport) {
            let ports = e.reply.dport != e.orig.sport && e.reply.dst == e.orig.src;
            out.push(NatEvent {
                kind: NatKind::Snat,
                from: endpoint(e.orig.src, e.orig.sport, ports),
                to: endpoint(e.reply.dst, e.reply.dport, ports),
                netns: netns.into(),
                member: member.clone(),
                how: nat_how(topo, NatKind::Snat, netns, None, e.orig.src, e.reply.dst),
                evidence: "conntrack".into(),
            });
        }
        if (e.reply.src, e.reply.sport) != (e.orig.dst, e.orig.dport) {
            out.push(NatEvent {
                kind: NatKind::Dnat,
                from: endpoint(e.orig.dst, e.orig.dport, true),
                to: endpoint(e.reply.src, e.reply.sport, true),
                netns: netns.into(),
                member: member.clone(),
                how: nat_how(topo, NatKind::Dnat, netns, None, e.orig.dst, e.reply.src),
                evidence: "conntrack".into(),
            });
        }
    }
    out
}

/// Header evidence first; conntrack adds what the captures could not show, and confirms
/// the rest.
pub fn merge_nat(mut headers: Vec<NatEvent>, conntrack: Vec<NatEvent>) -> Vec<NatEvent> {
    for c in conntrack {
        let addr = |s: &str| s.split(':').next().unwrap_or("").to_string();
        match headers.iter_mut().find(|h| {
            h.kind == c.kind && addr(&h.from) == addr(&c.from) && addr(&h.to) == addr(&c.to)
        }) {
            Some(h) => {
                if !h.evidence.contains("conntrack") {
                    h.evidence.push_str(" + conntrack");
                }
            }
            None => headers.push(c),
        }
    }
    headers
}

/// One ARP frame a device of the path carried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArpSeen {
    pub member: String,
    pub device: String,
    /// `ARP who-has ... tell ...` / `ARP reply ... is-at ...`.
    pub arp: String,
    /// A reply for an address no interface of the lab holds: proxy ARP answered.
    pub proxy: bool,
}

/// The ARP frames the devices of the path carried, in path order, each once. A reply
/// for an address nothing holds (169.254.1.1 of l3 pods) is marked as proxy ARP. Pure.
pub fn arp_seen(
    topo: &Topology,
    hops: &[PlannedHop],
    captures: &HashMap<(String, String), Vec<Frame>>,
) -> Vec<ArpSeen> {
    let mut out: Vec<ArpSeen> = Vec::new();
    for h in hops {
        let key = (h.netns.clone(), h.device.clone());
        for a in captures
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|f| f.arp.as_ref())
        {
            let proxy = a.op == 2 && topo.owner(a.sender_ip).is_none();
            let seen = ArpSeen {
                member: h.member.clone(),
                device: h.device.clone(),
                arp: a.to_string(),
                proxy,
            };
            // Both ends of a veth carry the same frames: each once, where first seen.
            if !out.iter().any(|o| o.arp == seen.arp) {
                out.push(seen);
            }
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceReport {
    pub lab: String,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub proto: TraceProto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Did the probe get its answer (ping reply, TCP connect or refusal, UDP reply)?
    pub answered: bool,
    pub probe: String,
    pub hops: Vec<HopReport>,
    pub nat: Vec<NatEvent>,
    /// ARP seen on the path's devices while the probe went (an l3 pod's gateway is
    /// answered by proxy ARP).
    pub arp: Vec<ArpSeen>,
    /// Where the packet ended, or why the path could not be computed further.
    pub outcome: String,
    pub notes: Vec<String>,
    /// Per node and router on the path: its route to the destination and who it learned
    /// it from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routing: Vec<super::learned::RouteOrigin>,
}

fn pad(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n >= w {
        format!("{s} ")
    } else {
        format!("{s}{}", " ".repeat(w - n))
    }
}

/// The report as a table: one row per hop, a second row for an encapsulated packet's
/// inner header, then NAT and the outcome.
pub fn render(r: &TraceReport) -> String {
    let mut s = String::new();
    let port = r.port.map(|p| format!(" port {p}")).unwrap_or_default();
    let _ = writeln!(
        s,
        "trace {} ({}) → {} ({}), {}{port}: {} hop(s), {}",
        r.src.name,
        r.src.ip,
        r.dst.name,
        r.dst.ip,
        r.proto.as_str(),
        r.hops.len(),
        r.probe
    );
    let w = (
        r.hops
            .iter()
            .map(|h| h.hop.member.len())
            .max()
            .unwrap_or(0)
            .max(6)
            + 1,
        r.hops
            .iter()
            .map(|h| h.hop.device.len())
            .max()
            .unwrap_or(0)
            .max(6)
            + 1,
    );
    let _ = writeln!(
        s,
        " #  {}{}{}{}packet",
        pad("member", w.0),
        pad("device", w.1),
        pad("dir", 8),
        pad("L2 src → dst", 38)
    );
    for h in &r.hops {
        let head = format!(
            "{:>2}  {}{}{}",
            h.index,
            pad(&h.hop.member, w.0),
            pad(&h.hop.device, w.1),
            pad(h.hop.direction.as_str(), 8)
        );
        let blank = " ".repeat(head.chars().count());
        let l2 = |l: &L2| format!("{} → {}", l.src, l.dst);
        let note = if h.hop.note.is_empty() {
            String::new()
        } else {
            format!("  [{}]", h.hop.note)
        };
        match (&h.outer, &h.packet) {
            _ if h.hop.direction == Dir::Process => {
                let what = match h.hop.process.as_ref().map(|p| p.way) {
                    Some(Way::Rx) => "UDP socket → TUN",
                    _ => "TUN → UDP socket",
                };
                let counted = match h.counted {
                    Some(c) => format!("counted +{} packet(s), +{} bytes", c.packets, c.bytes),
                    None => "(its counters could not be read)".into(),
                };
                let _ = writeln!(s, "{head}{}{what}: {counted}{note}", pad("-", 38));
            }
            (Some(o), Some(p)) => {
                let how = match (o.encap, o.vni) {
                    (Encap::Vxlan, Some(vni)) => format!("VXLAN vni {vni}"),
                    (Encap::Vxlan, None) => "VXLAN".into(),
                    (Encap::Gre, Some(key)) => format!("GRE key {key}"),
                    (Encap::Gre, None) => "GRE".into(),
                    (Encap::Udp, _) => "udp backend (the bare inner packet)".into(),
                };
                let _ = writeln!(
                    s,
                    "{head}{}outer {} {how}{note}",
                    pad(&o.l2.as_ref().map(l2).unwrap_or_default(), 38),
                    o.ip.summary,
                );
                let inner_l2 = h.l2.as_ref().map(l2).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "{blank}{}inner {} ttl {}",
                    pad(&inner_l2, 38),
                    p.summary,
                    p.ttl
                );
            }
            (None, Some(p)) => {
                let inner_l2 = h.l2.as_ref().map(l2).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "{head}{}{} ttl {}{note}",
                    pad(&inner_l2, 38),
                    p.summary,
                    p.ttl
                );
            }
            _ => {
                let _ = writeln!(s, "{head}{}(not seen){note}", pad("-", 38));
            }
        }
    }
    if r.nat.is_empty() {
        let _ = writeln!(s, "NAT: none");
    }
    for n in &r.nat {
        let _ = writeln!(s, "NAT: {n}  [{}]", n.evidence);
    }
    for a in &r.arp {
        let proxy = if a.proxy {
            "  [proxy ARP: no interface holds it; the host veth answers]"
        } else {
            ""
        };
        let _ = writeln!(s, "ARP: {} {}: {}{proxy}", a.member, a.device, a.arp);
    }
    if !r.routing.is_empty() {
        let _ = writeln!(s, "who learned the route to {} from whom:", r.dst.ip);
        let w = r.routing.iter().map(|o| o.member.len()).max().unwrap_or(0) + 2;
        for o in &r.routing {
            let _ = writeln!(s, "  {}{}", pad(&o.member, w), o.route);
            let _ = writeln!(s, "  {}{}  [{}]", " ".repeat(w), o.learned, o.source);
        }
    }
    let _ = writeln!(s, "{}", r.outcome);
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::pcap::{decode_frame, samples as fr};
    use super::*;
    use crate::graph::topo::samples::two_node_vxlan;

    /// Route answers recorded from a two-node VXLAN lab (`ip -j -n NS route get ...`).
    struct Recorded;

    impl Router for Recorded {
        fn route_get(
            &mut self,
            netns: &str,
            dst: Ipv4Addr,
            from: Option<Ipv4Addr>,
            iif: Option<&str>,
        ) -> Result<RouteAnswer, String> {
            let dst = dst.to_string();
            let text = match (netns, dst.as_str(), iif) {
                ("twltr-n1-p1", "10.244.4.2", None) => {
                    r#"[{"dst":"10.244.4.2","gateway":"10.244.226.1","dev":"eth0","prefsrc":"10.244.226.2","flags":[],"uid":0,"cache":[]}]"#
                }
                ("twltr-n1-p1", "203.0.113.10", None) => {
                    r#"[{"dst":"203.0.113.10","gateway":"10.244.226.1","dev":"eth0","prefsrc":"10.244.226.2"}]"#
                }
                ("twltr-n1", "10.244.4.2", Some("twl0")) => {
                    r#"[{"dst":"10.244.4.2","from":"10.244.226.2","gateway":"10.244.4.0","dev":"twl.1","flags":[],"cache":[],"iif":"twl0"}]"#
                }
                ("twltr-n1", "192.0.2.12", None) => {
                    r#"[{"dst":"192.0.2.12","from":"192.0.2.11","dev":"eth0","prefsrc":"192.0.2.11"}]"#
                }
                ("twltr-n2", "192.0.2.12", Some("eth0")) => {
                    r#"[{"type":"local","dst":"192.0.2.12","from":"192.0.2.11","dev":"lo","flags":[],"cache":["local"],"iif":"eth0"}]"#
                }
                ("twltr-n2", "10.244.4.2", Some("twl.1")) => {
                    r#"[{"dst":"10.244.4.2","from":"10.244.226.2","dev":"twl0","flags":[],"cache":[],"iif":"twl.1"}]"#
                }
                ("twltr-n2-p1", "10.244.4.2", Some("eth0")) => {
                    r#"[{"type":"local","dst":"10.244.4.2","dev":"lo","iif":"eth0"}]"#
                }
                ("twltr-n2-p2", "10.244.4.2", None) => {
                    r#"[{"dst":"10.244.4.2","dev":"eth0","prefsrc":"10.244.4.3"}]"#
                }
                ("twltr-n1", "203.0.113.10", Some("twl0")) => {
                    r#"[{"dst":"203.0.113.10","from":"10.244.226.2","gateway":"192.0.2.1","dev":"eth0","iif":"twl0"}]"#
                }
                // The router refuses the pod source (as rp_filter would); the walker retries.
                ("twltr-rt", "203.0.113.10", Some("eth0")) if from.is_some() => {
                    return Err("RTNETLINK answers: Invalid cross-device link".into())
                }
                ("twltr-rt", "203.0.113.10", None) => {
                    r#"[{"dst":"203.0.113.10","dev":"eth1","prefsrc":"203.0.113.1"}]"#
                }
                ("twltr-out", "203.0.113.10", Some("eth0")) => {
                    r#"[{"type":"local","dst":"203.0.113.10","dev":"lo"}]"#
                }
                other => return Err(format!("no recorded answer for {other:?}")),
            };
            parse_route_get(text)
        }
    }

    fn names(p: &PathPlan) -> Vec<String> {
        p.hops
            .iter()
            .map(|h| format!("{}/{}/{}", h.member, h.device, h.direction.as_str()))
            .collect()
    }

    #[test]
    fn pod_to_pod_across_nodes_goes_through_the_tunnel() {
        let t = two_node_vxlan();
        let p = walk(
            &t,
            &mut Recorded,
            "twltr-n1-p1",
            None,
            "10.244.4.2".parse().unwrap(),
        );
        assert_eq!(p.stopped, None);
        assert_eq!(p.src_ip, Ipv4Addr::new(10, 244, 226, 2));
        assert_eq!(p.delivered_to.as_deref(), Some("twltr-n2-p1"));
        assert_eq!(
            names(&p),
            [
                "n1-p1/eth0/out",
                "n1/twlaaaa/in",
                "n1/twl0/in",
                "n1/twl.1/out",
                "n1/eth0/out",
                "ul/twltr-n1/in",
                "ul/twltr-br/bridged",
                "ul/twltr-n2/out",
                "n2/eth0/in",
                "n2/twl.1/in",
                "n2/twl0/out",
                "n2/twlbbbb/out",
                "n2-p1/eth0/in"
            ]
        );
        let encap: Vec<bool> = p.hops.iter().map(|h| h.encapsulated).collect();
        assert_eq!(&encap[4..9], [true; 5]);
        assert!(!encap[3] && !encap[9]);
        assert!(
            p.hops[3].note.contains("at 192.0.2.12"),
            "{}",
            p.hops[3].note
        );
    }

    /// The udp lab's answers: the block route goes into twl.tun, the far node forwards
    /// what its TUN delivers to its bridge; the rest as in the VXLAN lab.
    struct RecordedUdp;

    impl Router for RecordedUdp {
        fn route_get(
            &mut self,
            netns: &str,
            dst: Ipv4Addr,
            from: Option<Ipv4Addr>,
            iif: Option<&str>,
        ) -> Result<RouteAnswer, String> {
            match (netns, dst.to_string().as_str(), iif) {
                ("twltr-n1", "10.244.4.2", Some("twl0")) => parse_route_get(
                    r#"[{"dst":"10.244.4.2","from":"10.244.226.2","dev":"twl.tun","iif":"twl0"}]"#,
                ),
                ("twltr-n2", "10.244.4.2", Some("twl.tun")) => parse_route_get(
                    r#"[{"dst":"10.244.4.2","from":"10.244.226.2","dev":"twl0","iif":"twl.tun"}]"#,
                ),
                _ => Recorded.route_get(netns, dst, from, iif),
            }
        }
    }

    fn udp_walk(t: &Topology) -> PathPlan {
        walk(
            t,
            &mut RecordedUdp,
            "twltr-n1-p1",
            None,
            "10.244.4.2".parse().unwrap(),
        )
    }

    #[test]
    fn the_udp_backend_goes_through_both_datapaths_by_their_tables() {
        let t = crate::graph::topo::samples::two_node_udp();
        let p = udp_walk(&t);
        assert_eq!(p.stopped, None);
        assert_eq!(p.delivered_to.as_deref(), Some("twltr-n2-p1"));
        assert_eq!(
            names(&p),
            [
                "n1-p1/eth0/out",
                "n1/twlaaaa/in",
                "n1/twl0/in",
                "n1/twl.tun/out",
                "n1/twill-datapath/process",
                "n1/eth0/out",
                "ul/twltr-n1/in",
                "ul/twltr-br/bridged",
                "ul/twltr-n2/out",
                "n2/eth0/in",
                "n2/twill-datapath/process",
                "n2/twl.tun/in",
                "n2/twl0/out",
                "n2/twlbbbb/out",
                "n2-p1/eth0/in"
            ]
        );
        let encap: Vec<bool> = p.hops.iter().map(|h| h.encapsulated).collect();
        assert_eq!(&encap[5..10], [true; 5]);
        assert!(!encap[3] && !encap[4] && !encap[10] && !encap[11]);
        let tx = p.hops[4].process.as_ref().unwrap();
        assert_eq!(
            (tx.pid, tx.queues, tx.way, tx.peer, tx.port),
            (4100, 1, Way::Tx, Ipv4Addr::new(192, 0, 2, 12), 8285)
        );
        assert!(
            p.hops[4].note.contains("10.244.4.0/24 is n2 192.0.2.12's"),
            "{}",
            p.hops[4].note
        );
        let rx = p.hops[10].process.as_ref().unwrap();
        assert_eq!(
            (rx.pid, rx.queues, rx.way, rx.peer),
            (4101, 2, Way::Rx, Ipv4Addr::new(192, 0, 2, 11))
        );
        assert!(rx.socket.ends_with("twltr-n2/agent/datapath.sock"));

        // Captures on the TUNs (raw IP) and the wire (outer UDP 8285), counters that moved
        // on n1 and did not on n2: the report shows the outer header and which hop missed.
        use super::super::pcap::{decode, samples as fr, LinkType};
        let mut caps: HashMap<(String, String), Vec<Frame>> = HashMap::new();
        let k = |ns: &str, dev: &str| (ns.to_string(), dev.to_string());
        let raw = decode(LinkType::Raw, &fr::ping_on_tun(), &[8285]).unwrap();
        let wire = decode_frame(&fr::ping_on_uplink_udp()).unwrap();
        caps.insert(k("twltr-n1", "twl.tun"), vec![raw.clone()]);
        caps.insert(k("twltr-n2", "twl.tun"), vec![raw]);
        caps.insert(k("twltr-n1", "eth0"), vec![wire]);
        let stats = |ip: &str, tx: u64, rx: u64| Stats {
            peers: vec![twill_datapath::stats::PeerStats {
                tx_packets: tx,
                tx_bytes: tx * 37,
                rx_packets: rx,
                rx_bytes: rx * 37,
                ..twill_datapath::stats::PeerStats::new(ip.parse().unwrap())
            }],
            ..Stats::default()
        };
        let mut counters = HashMap::new();
        counters.insert(
            tx.socket.clone(),
            (stats("192.0.2.12", 5, 0), stats("192.0.2.12", 6, 0)),
        );
        counters.insert(
            rx.socket.clone(),
            (stats("192.0.2.11", 0, 9), stats("192.0.2.11", 0, 9)),
        );
        let hops = attach(&p.hops, &caps, &counters, TraceProto::Icmp);
        assert!(hops[3].seen && hops[3].l2.is_none(), "{:?}", hops[3]);
        assert_eq!(
            hops[4].counted,
            Some(Counted {
                packets: 1,
                bytes: 37
            })
        );
        assert!(hops[4].seen);
        let o = hops[5].outer.as_ref().unwrap();
        assert_eq!((o.encap, o.vni, o.ip.dport), (Encap::Udp, None, Some(8285)));
        assert_eq!(
            hops[5].packet.as_ref().unwrap().dst,
            Ipv4Addr::new(10, 244, 4, 2)
        );
        assert!(!hops[10].seen, "n2's counters did not move");
        assert_eq!(
            hops[10].counted,
            Some(Counted {
                packets: 0,
                bytes: 0
            })
        );
        assert!(hops[11].seen);
        let report = TraceReport {
            lab: "twltr".into(),
            src: Endpoint {
                name: "n1-p1".into(),
                netns: None,
                ip: p.src_ip,
            },
            dst: Endpoint {
                name: "n2-p1".into(),
                netns: None,
                ip: p.dst_ip,
            },
            proto: TraceProto::Icmp,
            port: None,
            answered: true,
            probe: "ping answered".into(),
            hops,
            nat: Vec::new(),
            arp: Vec::new(),
            outcome: "delivered".into(),
            notes: Vec::new(),
            routing: Vec::new(),
        };
        let text = render(&report);
        assert!(
            text.contains("outer 192.0.2.11:40123 → 192.0.2.12:8285 UDP length 37 udp backend"),
            "{text}"
        );
        assert!(
            text.contains("TUN → UDP socket: counted +1 packet(s), +37 bytes"),
            "{text}"
        );
        assert!(
            text.contains("UDP socket → TUN: counted +0 packet(s)"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["hops"][4]["direction"], "process");
        assert_eq!(json["hops"][4]["process"]["pid"], 4100);
        assert_eq!(json["hops"][5]["outer"]["encap"], "udp");
        assert_eq!(json["hops"][5]["outer"]["ip"]["dport"], 8285);
    }

    #[test]
    fn the_far_datapath_refusing_the_packet_stops_the_walk_naming_the_drop() {
        let mut t = crate::graph::topo::samples::two_node_udp();
        let n2 = t
            .namespaces
            .iter_mut()
            .find(|n| n.name == "twltr-n2")
            .unwrap();
        let Some(Datapath::Up(d)) = n2.datapath.as_mut() else {
            unreachable!()
        };
        // n2 thinks n1 holds another block: the pod's source is spoofed to it.
        d.peers[0].blocks = vec!["10.244.9.0/24".parse().unwrap()];
        let p = udp_walk(&t);
        let why = p.stopped.unwrap();
        assert!(
            why.contains("n2's datapath (pid 4101) drops it") && why.contains("spoofed_inner"),
            "{why}"
        );
        // n2 does not know n1 at all.
        let n2 = t
            .namespaces
            .iter_mut()
            .find(|n| n.name == "twltr-n2")
            .unwrap();
        if let Some(Datapath::Up(d)) = n2.datapath.as_mut() {
            d.peers.clear();
        }
        assert!(udp_walk(&t).stopped.unwrap().contains("unknown_peer"));
        // n1's datapath does not answer: the walk says where it asked.
        let n1 = t
            .namespaces
            .iter_mut()
            .find(|n| n.name == "twltr-n1")
            .unwrap();
        n1.datapath = Some(Datapath::Unreachable {
            socket: "/run/x/datapath.sock".into(),
            error: "connection refused".into(),
        });
        let why = udp_walk(&t).stopped.unwrap();
        assert!(
            why.contains("does not answer at /run/x/datapath.sock"),
            "{why}"
        );
        // No peer holds the destination on n1.
        let mut t = crate::graph::topo::samples::two_node_udp();
        let n1 = t
            .namespaces
            .iter_mut()
            .find(|n| n.name == "twltr-n1")
            .unwrap();
        if let Some(Datapath::Up(d)) = n1.datapath.as_mut() {
            d.peers.clear();
        }
        assert!(udp_walk(&t).stopped.unwrap().contains("no_route"));
    }

    #[test]
    fn pod_to_pod_on_a_node_is_switched_by_the_bridge() {
        let t = two_node_vxlan();
        let p = walk(
            &t,
            &mut Recorded,
            "twltr-n2-p2",
            None,
            "10.244.4.2".parse().unwrap(),
        );
        assert_eq!(
            names(&p),
            [
                "n2-p2/eth0/out",
                "n2/twlcccc/in",
                "n2/twl0/bridged",
                "n2/twlbbbb/out",
                "n2-p1/eth0/in"
            ]
        );
        assert_eq!(p.delivered_to.as_deref(), Some("twltr-n2-p1"));
    }

    #[test]
    fn pod_to_outside_crosses_the_router_and_survives_a_refused_source() {
        let t = two_node_vxlan();
        let p = walk(
            &t,
            &mut Recorded,
            "twltr-n1-p1",
            None,
            "203.0.113.10".parse().unwrap(),
        );
        assert_eq!(p.stopped, None, "{p:?}");
        assert_eq!(
            names(&p)[3..],
            [
                "n1/eth0/out",
                "ul/twltr-n1/in",
                "ul/twltr-br/bridged",
                "ul/twltr-rt/out",
                "rt/eth0/in",
                "rt/eth1/out",
                "out/eth0/in"
            ]
        );
        assert_eq!(p.delivered_to.as_deref(), Some("twltr-out"));
    }

    #[test]
    fn a_missing_route_or_peer_stops_the_walk_with_the_reason() {
        let mut t = two_node_vxlan();
        let p = walk(
            &t,
            &mut Recorded,
            "twltr-n1-p1",
            None,
            "10.244.9.9".parse().unwrap(),
        );
        assert!(p
            .stopped
            .unwrap()
            .contains("no route to 10.244.9.9 in twltr-n1-p1"));
        // n1 lost its FDB entry: the walk says which peer the backend did not program.
        let n1 = t
            .namespaces
            .iter_mut()
            .find(|n| n.name == "twltr-n1")
            .unwrap();
        n1.links
            .iter_mut()
            .find(|l| l.name == "twl.1")
            .unwrap()
            .fdb
            .clear();
        let p = walk(
            &t,
            &mut Recorded,
            "twltr-n1-p1",
            None,
            "10.244.4.2".parse().unwrap(),
        );
        assert!(
            p.stopped.as_deref().unwrap().contains("no FDB entry"),
            "{p:?}"
        );
        assert_eq!(p.hops.len(), 3);
    }

    fn frames(list: &[Vec<u8>]) -> Vec<Frame> {
        list.iter().map(|b| decode_frame(b).unwrap()).collect()
    }

    #[test]
    fn a_hop_names_the_route_it_took_and_an_l3_pods_32() {
        let r = crate::routes::parse_routes(
            r#"[{"dst":"10.244.226.3","dev":"twlc005f236f371","protocol":"84","scope":"link"},
                {"dst":"10.244.4.0/24","gateway":"10.244.4.0","dev":"twl.1","protocol":"84","flags":["onlink"]}]"#,
        );
        assert_eq!(
            route_note(&r[0]),
            "route 10.244.226.3 dev twlc005f236f371 proto 84 scope link (l3: the pod's /32 to its host veth)"
        );
        assert_eq!(
            route_note(&r[1]),
            "route 10.244.4.0/24 via 10.244.4.0 dev twl.1 proto 84 onlink"
        );
    }

    #[test]
    fn captures_attach_to_hops_and_show_outer_and_inner() {
        let t = two_node_vxlan();
        let p = walk(
            &t,
            &mut Recorded,
            "twltr-n1-p1",
            None,
            "10.244.4.2".parse().unwrap(),
        );
        let mut caps = HashMap::new();
        // The pod resolves its gateway first: a request, the answer for an address nobody
        // holds (proxy ARP, as for an l3 pod's 169.254.1.1), and the same again.
        let pod_mac = [0x0e, 0, 0, 0, 0, 0x0a];
        let ask = fr::arp(1, pod_mac, [10, 244, 226, 2], [0; 6], [169, 254, 1, 1]);
        let answer = fr::arp(2, [0xee; 6], [169, 254, 1, 1], pod_mac, [10, 244, 226, 2]);
        caps.insert(
            ("twltr-n1-p1".to_string(), "eth0".to_string()),
            frames(&[ask.clone(), answer.clone(), ask, fr::ping_in_pod()]),
        );
        // An answer from the bridge's own address is plain ARP.
        let bridge = fr::arp(
            2,
            [2, 0, 0, 0, 0, 3],
            [10, 244, 226, 1],
            pod_mac,
            [10, 244, 226, 2],
        );
        caps.insert(
            ("twltr-n1".to_string(), "twlaaaa".to_string()),
            frames(&[bridge]),
        );
        caps.insert(
            ("twltr-n1".to_string(), "eth0".to_string()),
            frames(&[fr::ping_on_uplink()]),
        );
        let hops = attach(&p.hops, &caps, &HashMap::new(), TraceProto::Icmp);
        let arp = arp_seen(&t, &p.hops, &caps);
        assert_eq!(
            arp.iter()
                .map(|a| (a.member.as_str(), a.arp.as_str(), a.proxy))
                .collect::<Vec<_>>(),
            [
                ("n1-p1", "ARP who-has 169.254.1.1 tell 10.244.226.2", false),
                (
                    "n1-p1",
                    "ARP reply 169.254.1.1 is-at ee:ee:ee:ee:ee:ee",
                    true
                ),
                (
                    "n1",
                    "ARP reply 10.244.226.1 is-at 02:00:00:00:00:03",
                    false
                ),
            ]
        );
        assert!(hops[0].seen && hops[4].seen && !hops[1].seen);
        let o = hops[4].outer.as_ref().unwrap();
        assert_eq!(
            (
                o.ip.src.to_string(),
                o.ip.dst.to_string(),
                o.ip.dport,
                o.vni
            ),
            (
                "192.0.2.11".into(),
                "192.0.2.12".into(),
                Some(8472),
                Some(1)
            )
        );
        assert_eq!(
            hops[4].packet.as_ref().unwrap().src,
            Ipv4Addr::new(10, 244, 226, 2)
        );
        // A TCP probe does not match an ICMP frame.
        assert!(!attach(&p.hops, &caps, &HashMap::new(), TraceProto::Tcp)[0].seen);
        let report = TraceReport {
            lab: "twltr".into(),
            src: Endpoint {
                name: "n1-p1".into(),
                netns: Some("twltr-n1-p1".into()),
                ip: p.src_ip,
            },
            dst: Endpoint {
                name: "n2-p1".into(),
                netns: Some("twltr-n2-p1".into()),
                ip: p.dst_ip,
            },
            proto: TraceProto::Icmp,
            port: None,
            answered: true,
            probe: "answered".into(),
            hops: hops.clone(),
            nat: nat_from_headers(&t, &hops),
            arp,
            outcome: "delivered to n2-p1".into(),
            notes: vec![],
            routing: vec![super::super::learned::RouteOrigin {
                member: "n1".into(),
                route: "10.244.4.0/24 via 192.0.2.12 dev eth0 proto bgp".into(),
                learned: "10.244.4.0/24: BGP from n2 (192.0.2.12), empty AS path (iBGP)".into(),
                source: "twill bgp rib --socket /run/twltr/n1/agent/bgp.sock".into(),
            }],
        };
        let text = render(&report);
        assert!(
            text.contains(
                "who learned the route to 10.244.4.2 from whom:\n  n1  10.244.4.0/24 via 192.0.2.12 dev eth0 proto bgp\n      10.244.4.0/24: BGP from n2 (192.0.2.12), empty AS path (iBGP)  [twill bgp rib --socket /run/twltr/n1/agent/bgp.sock]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("outer 192.0.2.11:41000 → 192.0.2.12:8472 UDP length 59 VXLAN vni 1"),
            "{text}"
        );
        assert!(
            text.contains("inner 10.244.226.2 → 10.244.4.2 ICMP echo request id 7 seq 1 ttl 63"),
            "{text}"
        );
        assert!(
            text.contains("(not seen)") && text.contains("NAT: none"),
            "{text}"
        );
        assert!(
            text.contains("ARP: n1-p1 eth0: ARP reply 169.254.1.1 is-at ee:ee:ee:ee:ee:ee  [proxy ARP: no interface holds it; the host veth answers]"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["hops"][4]["outer"]["ip"]["dport"], 8472);
        assert_eq!(json["hops"][4]["device"], "eth0");
        assert_eq!(json["hops"][4]["direction"], "out");
        assert_eq!(json["hops"][0]["l2"]["src"], "0e:00:00:00:00:0a");
    }

    #[allow(clippy::too_many_arguments)]
    fn hop(
        member: &str,
        netns: &str,
        device: &str,
        dir: Dir,
        src: &str,
        sport: Option<u16>,
        dst: &str,
        dport: Option<u16>,
    ) -> HopReport {
        HopReport {
            index: 0,
            hop: PlannedHop {
                netns: netns.into(),
                member: member.into(),
                device: device.into(),
                direction: dir,
                encapsulated: false,
                note: String::new(),
                process: None,
            },
            seen: true,
            outer: None,
            counted: None,
            l2: None,
            packet: Some(Header {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                ttl: 64,
                sport,
                dport,
                summary: String::new(),
            }),
        }
    }

    #[test]
    fn masquerade_and_host_port_dnat_are_inferred_from_headers() {
        let t = two_node_vxlan();
        let hops = vec![
            hop(
                "n1",
                "twltr-n1",
                "twl0",
                Dir::In,
                "10.244.226.2",
                None,
                "203.0.113.10",
                None,
            ),
            hop(
                "n1",
                "twltr-n1",
                "eth0",
                Dir::Out,
                "192.0.2.11",
                None,
                "203.0.113.10",
                None,
            ),
            hop(
                "out",
                "twltr-out",
                "eth0",
                Dir::In,
                "192.0.2.11",
                None,
                "203.0.113.10",
                None,
            ),
        ];
        let nat = nat_from_headers(&t, &hops);
        assert_eq!(nat.len(), 1);
        assert_eq!(
            nat[0].to_string(),
            "SNAT 10.244.226.2 → 192.0.2.11 (masquerade, node n1)"
        );
        let hops = vec![
            hop(
                "n1",
                "twltr-n1",
                "eth0",
                Dir::In,
                "203.0.113.10",
                Some(40000),
                "192.0.2.11",
                Some(30080),
            ),
            hop(
                "n1",
                "twltr-n1",
                "twl0",
                Dir::Out,
                "203.0.113.10",
                Some(40000),
                "10.244.226.2",
                Some(8080),
            ),
        ];
        let nat = nat_from_headers(&t, &hops);
        assert_eq!(
            nat[0].to_string(),
            "DNAT 192.0.2.11:30080 → 10.244.226.2:8080 (host port, node n1)"
        );
    }

    #[test]
    fn conntrack_entries_parse_and_confirm_nat() {
        let text = "\
ipv4     2 icmp     1 29 src=10.244.226.2 dst=203.0.113.10 type=8 code=0 id=40 src=203.0.113.10 dst=192.0.2.11 type=0 code=0 id=40 mark=0 zone=0 use=2
ipv4     2 tcp      6 119 SYN_SENT src=203.0.113.10 dst=192.0.2.11 sport=40000 dport=30080 [UNREPLIED] src=10.244.226.2 dst=203.0.113.10 sport=8080 dport=40000 mark=0 use=1
ipv6     10 udp      17 20 src=fe80::1 dst=ff02::1 sport=1 dport=2 src=ff02::1 dst=fe80::1 sport=2 dport=1 use=1
ipv4     2 udp      17 20 src=10.244.226.2 dst=10.244.4.2 sport=5000 dport=5353 src=10.244.4.2 dst=10.244.226.2 sport=5353 dport=5000 use=1
garbage";
        let ct = parse_conntrack(text);
        assert_eq!(ct.len(), 3);
        assert_eq!(ct[1].orig.dport, Some(30080));
        assert_eq!(ct[1].reply.src, Ipv4Addr::new(10, 244, 226, 2));
        let t = two_node_vxlan();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let snat = nat_from_conntrack(
            &t,
            "twltr-n1",
            &ct,
            TraceProto::Icmp,
            ip("10.244.226.2"),
            ip("203.0.113.10"),
        );
        assert_eq!(snat.len(), 1);
        assert_eq!(
            snat[0].to_string(),
            "SNAT 10.244.226.2 → 192.0.2.11 (masquerade, node n1)"
        );
        let dnat = nat_from_conntrack(
            &t,
            "twltr-n1",
            &ct,
            TraceProto::Tcp,
            ip("203.0.113.10"),
            ip("192.0.2.11"),
        );
        assert_eq!(
            dnat[0].to_string(),
            "DNAT 192.0.2.11:30080 → 10.244.226.2:8080 (host port, node n1)"
        );
        // Pod to pod: no NAT at all.
        assert!(nat_from_conntrack(
            &t,
            "twltr-n1",
            &ct,
            TraceProto::Udp,
            ip("10.244.226.2"),
            ip("10.244.4.2")
        )
        .is_empty());
        // The same SNAT from headers and conntrack is listed once, with both as evidence.
        let mut seen = snat.clone();
        seen[0].evidence = "headers".into();
        let merged = merge_nat(seen, snat);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].evidence, "headers + conntrack");
    }
}
