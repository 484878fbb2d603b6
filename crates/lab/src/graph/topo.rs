//! Pure: the lab as the kernel holds it — per namespace its links (kind, bridge master,
//! veth peer, addresses, VXLAN parameters with neighbour and FDB entries) — parsed from
//! `ip -j -d addr show`, `ip -j netns list-id`, `ip -j neigh show` and `bridge -j fdb show`;
//! and a node's udp-backend datapath (its pid, queues and peer table, as its control socket
//! answered). Both `trace` (where does a packet go next?) and `graph` (what is there?) read
//! it.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

use crate::trace::pcap::Mac;

/// What a namespace is in the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Segment,
    Router,
    Outside,
    Store,
    Node,
    Pod,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    /// The uplink the tunnel rides on.
    pub uplink: Option<String>,
}

/// A veth's other end: its namespace and ifindex there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerRef {
    pub netns: String,
    pub ifindex: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `veth`, `bridge`, `vxlan`, ... (empty for lo and other kindless links).
    pub kind: String,
    pub master: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    pub addrs: Vec<Ipv4Net>,
    pub peer: Option<PeerRef>,
    pub vxlan: Option<VxlanInfo>,
    /// Neighbour entries (VXLAN devices only): next-hop IP → MAC.
    pub neighbours: Vec<(Ipv4Addr, Mac)>,
    /// FDB entries with a remote (VXLAN devices only): MAC → the peer node's IP.
    pub fdb: Vec<(Mac, Ipv4Addr)>,
}

impl Link {
    pub fn owns(&self, ip: Ipv4Addr) -> bool {
        self.addrs.iter().any(|a| a.addr() == ip)
    }
}

/// Another node in a datapath's table: where it sends (node IP, port) what is for `blocks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DatapathPeer {
    pub node_ip: Ipv4Addr,
    pub port: u16,
    pub blocks: Vec<Ipv4Net>,
}

/// A node's udp-backend datapath process, as its control socket answered (`Hello` and
/// `GetTable`): the userspace hop between the TUN and the UDP socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DatapathInfo {
    pub socket: String,
    pub pid: u32,
    pub tun: String,
    /// TUN queues, one worker thread each.
    pub queues: u16,
    pub generation: u64,
    pub node_ip: Ipv4Addr,
    pub blocks: Vec<Ipv4Net>,
    pub peers: Vec<DatapathPeer>,
}

impl DatapathInfo {
    /// The datapath's own table (its validation and longest-prefix match: the one the
    /// workers use); None when it refuses this one (which it then would not forward with).
    pub fn table(&self) -> Option<twill_datapath::table::PeerTable> {
        use twill_datapath::partial::Checksums;
        use twill_datapath::table::{LocalNode, Peer, PeerTable};
        PeerTable::new(
            self.generation,
            LocalNode {
                node_ip: self.node_ip,
                blocks: self.blocks.clone(),
            },
            self.peers
                .iter()
                .map(|p| Peer {
                    node_ip: p.node_ip,
                    port: p.port,
                    blocks: p.blocks.clone(),
                    checksums: Checksums::Full,
                })
                .collect(),
        )
        .ok()
    }
}

/// What a node's datapath said, or why it said nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Datapath {
    Up(DatapathInfo),
    Unreachable { socket: String, error: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    /// The lab's short name for it: `n1`, `n1-p2`, `rt`, `out`, `ul`, `st`.
    pub member: String,
    pub role: Role,
    pub links: Vec<Link>,
    /// A node with a TUN (the udp backend): its datapath.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datapath: Option<Datapath>,
}

/// One end of a veth pair: its namespace and link.
pub type LinkEnd<'a> = (&'a str, &'a Link);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub lab: String,
    pub namespaces: Vec<Namespace>,
}

impl Topology {
    pub fn ns(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    pub fn link(&self, netns: &str, name: &str) -> Option<&Link> {
        self.ns(netns)?.links.iter().find(|l| l.name == name)
    }

    pub fn member(&self, netns: &str) -> String {
        self.ns(netns)
            .map_or_else(|| netns.to_string(), |n| n.member.clone())
    }

    /// A veth's other end.
    pub fn peer(&self, link: &Link) -> Option<(&Namespace, &Link)> {
        let p = link.peer.as_ref()?;
        let ns = self.ns(&p.netns)?;
        let l = ns.links.iter().find(|l| l.ifindex == p.ifindex)?;
        Some((ns, l))
    }

    /// The device holding `ip` (loopback excluded).
    pub fn owner(&self, ip: Ipv4Addr) -> Option<(&Namespace, &Link)> {
        self.namespaces.iter().find_map(|ns| {
            ns.links
                .iter()
                .find(|l| l.name != "lo" && l.owns(ip))
                .map(|l| (ns, l))
        })
    }

    /// The ports of bridge `bridge` in `netns`.
    pub fn ports<'a>(&'a self, netns: &str, bridge: &'a str) -> impl Iterator<Item = &'a Link> {
        self.ns(netns)
            .into_iter()
            .flat_map(|n| n.links.iter())
            .filter(move |l| l.master.as_deref() == Some(bridge))
    }

    /// Every veth pair once: (namespace, link) of both ends.
    pub fn veth_pairs(&self) -> Vec<(LinkEnd<'_>, LinkEnd<'_>)> {
        let mut pairs = Vec::new();
        for ns in &self.namespaces {
            for l in &ns.links {
                if let Some((pns, pl)) = self.peer(l) {
                    // Once per pair: from the end that sorts first.
                    if (ns.name.as_str(), l.ifindex) < (pns.name.as_str(), pl.ifindex) {
                        pairs.push(((ns.name.as_str(), l), (pns.name.as_str(), pl)));
                    }
                }
            }
        }
        pairs
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot parse `{what}` output: {source}")]
pub struct ParseError {
    pub what: String,
    #[source]
    pub source: serde_json::Error,
}

fn parse_json(what: &str, text: &str) -> Result<Value, ParseError> {
    // `ip -j` prints nothing at all for an empty answer in some versions.
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(text).map_err(|source| ParseError {
        what: what.into(),
        source,
    })
}

/// `ip -j netns list-id` run inside a namespace: its nsid → namespace name.
pub fn parse_nsids(text: &str) -> Result<HashMap<i64, String>, ParseError> {
    let v = parse_json("ip -j netns list-id", text)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["nsid"].as_i64()?, e["name"].as_str()?.to_string())))
        .collect())
}

/// `ip -j -d addr show` run inside `netns` (nsids from [`parse_nsids`] of the same one).
pub fn parse_links(
    netns: &str,
    text: &str,
    nsids: &HashMap<i64, String>,
) -> Result<Vec<Link>, ParseError> {
    let v = parse_json("ip -j -d addr show", text)?;
    let mut links = Vec::new();
    for e in v.as_array().into_iter().flatten() {
        let (Some(ifindex), Some(name)) = (e["ifindex"].as_u64(), e["ifname"].as_str()) else {
            continue;
        };
        let kind = e["linkinfo"]["info_kind"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let peer = match (e["link_index"].as_u64(), e["link_netnsid"].as_i64()) {
            (Some(i), Some(id)) => nsids.get(&id).map(|ns| PeerRef {
                netns: ns.clone(),
                ifindex: i as u32,
            }),
            // A veth whose peer is in the same namespace.
            (Some(i), None) if kind == "veth" => Some(PeerRef {
                netns: netns.into(),
                ifindex: i as u32,
            }),
            _ => None,
        };
        let vxlan = (kind == "vxlan").then(|| {
            let d = &e["linkinfo"]["info_data"];
            VxlanInfo {
                vni: d["id"].as_u64().unwrap_or(0) as u32,
                local: d["local"].as_str().and_then(|s| s.parse().ok()),
                port: d["port"].as_u64().unwrap_or(0) as u16,
                uplink: d["link"].as_str().map(String::from),
            }
        });
        let addrs = e["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["family"] == "inet")
            .filter_map(|a| {
                let ip: Ipv4Addr = a["local"].as_str()?.parse().ok()?;
                Ipv4Net::new(ip, a["prefixlen"].as_u64()? as u8).ok()
            })
            .collect();
        let flags = e["flags"].as_array();
        links.push(Link {
            ifindex: ifindex as u32,
            name: name.to_string(),
            kind,
            master: e["master"].as_str().map(String::from),
            mac: e["address"].as_str().and_then(|m| m.parse().ok()),
            mtu: e["mtu"].as_u64().unwrap_or(0) as u32,
            up: flags.is_some_and(|f| f.iter().any(|x| x == "UP")),
            addrs,
            peer,
            vxlan,
            neighbours: Vec::new(),
            fdb: Vec::new(),
        });
    }
    Ok(links)
}

/// `ip -j neigh show dev DEV`: IP → MAC of the entries that have one.
pub fn parse_neighbours(text: &str) -> Result<Vec<(Ipv4Addr, Mac)>, ParseError> {
    let v = parse_json("ip -j neigh show", text)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["dst"].as_str()?.parse().ok()?,
                e["lladdr"].as_str()?.parse().ok()?,
            ))
        })
        .collect())
}

/// `bridge -j fdb show dev DEV`: MAC → remote IP of the entries with a `dst`.
pub fn parse_fdb(text: &str) -> Result<Vec<(Mac, Ipv4Addr)>, ParseError> {
    let v = parse_json("bridge -j fdb show", text)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["mac"].as_str()?.parse().ok()?,
                e["dst"].as_str()?.parse().ok()?,
            ))
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod samples {
    //! A two-node VXLAN lab as `ip -j` printed it (trimmed to the fields read).
    use super::*;

    pub const N1_NSIDS: &str = r#"[{"nsid":0,"name":"twltr-ul"},{"nsid":1,"name":"twltr-n1-p1"},{"nsid":2,"name":"twltr-n1-p2"}]"#;
    pub const N1_ADDR: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"mtu":65536,"address":"00:00:00:00:00:00",
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":2,"link_index":4,"ifname":"eth0","flags":["BROADCAST","UP"],"mtu":1500,"address":"3a:db:42:7c:70:87","link_netnsid":0,
       "linkinfo":{"info_kind":"veth"},
       "addr_info":[{"family":"inet","local":"192.0.2.11","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]},
      {"ifindex":3,"ifname":"twl0","flags":["UP"],"mtu":1500,"address":"fa:ec:8a:1c:12:32",
       "linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}},
       "addr_info":[{"family":"inet","local":"10.244.226.1","prefixlen":24}]},
      {"ifindex":4,"link_index":2,"ifname":"twleac16fc378ec","master":"twl0","flags":["UP"],"mtu":1500,"address":"5a:02:6a:28:48:06","link_netnsid":1,
       "linkinfo":{"info_kind":"veth","info_slave_kind":"bridge"},"addr_info":[]},
      {"ifindex":5,"link_index":2,"ifname":"twl386cae62d29d","master":"twl0","flags":["UP"],"mtu":1500,"address":"82:c1:00:d5:4e:97","link_netnsid":2,
       "linkinfo":{"info_kind":"veth"},"addr_info":[]},
      {"ifindex":6,"ifname":"twl.1","flags":["UP"],"mtu":1450,"address":"0a:54:c0:00:02:0b",
       "linkinfo":{"info_kind":"vxlan","info_data":{"id":1,"local":"192.0.2.11","link":"eth0","port":8472}},
       "addr_info":[{"family":"inet","local":"10.244.226.0","prefixlen":32}]}
    ]"#;
    pub const N1_NEIGH: &str = r#"[{"dst":"10.244.4.0","lladdr":"0a:54:c0:00:02:0c","state":["PERMANENT"]},{"dst":"10.244.9.0","state":["FAILED"]}]"#;
    pub const N1_FDB: &str = r#"[{"mac":"0a:54:c0:00:02:0c","dst":"192.0.2.12","flags":["self"],"state":"permanent"},{"mac":"0a:54:c0:00:02:0b","flags":["self"]}]"#;

    fn link(ifindex: u32, name: &str, kind: &str, addrs: &[&str]) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind: kind.into(),
            master: None,
            mac: Some(Mac([2, 0, 0, 0, (ifindex >> 8) as u8, ifindex as u8])),
            mtu: 1500,
            up: true,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            peer: None,
            vxlan: None,
            neighbours: Vec::new(),
            fdb: Vec::new(),
        }
    }

    fn veth(
        ifindex: u32,
        name: &str,
        addrs: &[&str],
        peer: (&str, u32),
        master: Option<&str>,
    ) -> Link {
        Link {
            peer: Some(PeerRef {
                netns: peer.0.into(),
                ifindex: peer.1,
            }),
            master: master.map(String::from),
            ..link(ifindex, name, "veth", addrs)
        }
    }

    fn ns(name: &str, member: &str, role: Role, links: Vec<Link>) -> Namespace {
        let mut all = vec![link(1, "lo", "", &["127.0.0.1/8"])];
        all.extend(links);
        Namespace {
            name: name.into(),
            member: member.into(),
            role,
            links: all,
            datapath: None,
        }
    }

    fn vxlan(local: &str, vtep: &str, peer_vtep: &str, peer_mac: Mac, peer_node: &str) -> Link {
        Link {
            vxlan: Some(VxlanInfo {
                vni: 1,
                local: Some(local.parse().unwrap()),
                port: 8472,
                uplink: Some("eth0".into()),
            }),
            neighbours: vec![(peer_vtep.parse().unwrap(), peer_mac)],
            fdb: vec![(peer_mac, peer_node.parse().unwrap())],
            mac: Some(vtep_mac(local)),
            ..link(9, "twl.1", "vxlan", &[vtep])
        }
    }

    pub fn vtep_mac(local: &str) -> Mac {
        let o = local.parse::<Ipv4Addr>().unwrap().octets();
        Mac([0x0a, 0x54, o[0], o[1], o[2], o[3]])
    }

    /// The same lab with the udp backend: twl.tun instead of twl.1 and each node's datapath
    /// (n2's has 2 queues), 8285 on the wire.
    pub fn two_node_udp() -> Topology {
        let mut t = two_node_vxlan();
        let blocks = [
            ("twltr-n1", "10.244.226.0/24"),
            ("twltr-n2", "10.244.4.0/24"),
        ];
        for (i, (name, block)) in blocks.iter().enumerate() {
            let (other, other_block) = blocks[1 - i];
            let ns = t.namespaces.iter_mut().find(|n| n.name == *name).unwrap();
            let at = ns.links.iter().position(|l| l.kind == "vxlan").unwrap();
            let vtep = ns.links[at].addrs.clone();
            let node_ip = ns.links.iter().find(|l| l.name == "eth0").unwrap().addrs[0].addr();
            ns.links[at] = Link {
                mac: None,
                mtu: 1472,
                addrs: vtep,
                ..link(9, "twl.tun", "tun", &[])
            };
            let other_ip: Ipv4Addr = if other.ends_with("n1") {
                "192.0.2.11".parse().unwrap()
            } else {
                "192.0.2.12".parse().unwrap()
            };
            ns.datapath = Some(Datapath::Up(DatapathInfo {
                socket: format!("/run/twltr/{name}/agent/datapath.sock"),
                pid: 4100 + i as u32,
                tun: "twl.tun".into(),
                queues: 1 + i as u16,
                generation: 3,
                node_ip,
                blocks: vec![block.parse().unwrap()],
                peers: vec![DatapathPeer {
                    node_ip: other_ip,
                    port: 8285,
                    blocks: vec![other_block.parse().unwrap()],
                }],
            }));
        }
        t
    }

    /// ul (bridge + 3 ports), rt, out, n1 and n2 with twl0, twl.1, one pod each.
    pub fn two_node_vxlan() -> Topology {
        let l = "twl";
        let _ = l;
        Topology {
            lab: "twltr".into(),
            namespaces: vec![
                ns(
                    "twltr-ul",
                    "ul",
                    Role::Segment,
                    vec![
                        link(2, "twltr-br", "bridge", &[]),
                        veth(3, "twltr-rt", &[], ("twltr-rt", 2), Some("twltr-br")),
                        veth(4, "twltr-n1", &[], ("twltr-n1", 2), Some("twltr-br")),
                        veth(5, "twltr-n2", &[], ("twltr-n2", 2), Some("twltr-br")),
                    ],
                ),
                ns(
                    "twltr-rt",
                    "rt",
                    Role::Router,
                    vec![
                        veth(2, "eth0", &["192.0.2.1/24"], ("twltr-ul", 3), None),
                        veth(3, "eth1", &["203.0.113.1/24"], ("twltr-out", 2), None),
                    ],
                ),
                ns(
                    "twltr-out",
                    "out",
                    Role::Outside,
                    vec![veth(2, "eth0", &["203.0.113.10/24"], ("twltr-rt", 3), None)],
                ),
                ns(
                    "twltr-n1",
                    "n1",
                    Role::Node,
                    vec![
                        veth(2, "eth0", &["192.0.2.11/24"], ("twltr-ul", 4), None),
                        link(3, "twl0", "bridge", &["10.244.226.1/24"]),
                        veth(4, "twlaaaa", &[], ("twltr-n1-p1", 2), Some("twl0")),
                        vxlan(
                            "192.0.2.11",
                            "10.244.226.0/32",
                            "10.244.4.0",
                            vtep_mac("192.0.2.12"),
                            "192.0.2.12",
                        ),
                    ],
                ),
                ns(
                    "twltr-n1-p1",
                    "n1-p1",
                    Role::Pod,
                    vec![veth(2, "eth0", &["10.244.226.2/24"], ("twltr-n1", 4), None)],
                ),
                ns(
                    "twltr-n2",
                    "n2",
                    Role::Node,
                    vec![
                        veth(2, "eth0", &["192.0.2.12/24"], ("twltr-ul", 5), None),
                        link(3, "twl0", "bridge", &["10.244.4.1/24"]),
                        veth(4, "twlbbbb", &[], ("twltr-n2-p1", 2), Some("twl0")),
                        veth(5, "twlcccc", &[], ("twltr-n2-p2", 2), Some("twl0")),
                        vxlan(
                            "192.0.2.12",
                            "10.244.4.0/32",
                            "10.244.226.0",
                            vtep_mac("192.0.2.11"),
                            "192.0.2.11",
                        ),
                    ],
                ),
                ns(
                    "twltr-n2-p1",
                    "n2-p1",
                    Role::Pod,
                    vec![veth(2, "eth0", &["10.244.4.2/24"], ("twltr-n2", 4), None)],
                ),
                ns(
                    "twltr-n2-p2",
                    "n2-p2",
                    Role::Pod,
                    vec![veth(2, "eth0", &["10.244.4.3/24"], ("twltr-n2", 5), None)],
                ),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;

    #[test]
    fn ip_json_parses_into_links() {
        let nsids = parse_nsids(N1_NSIDS).unwrap();
        assert_eq!(nsids[&1], "twltr-n1-p1");
        let links = parse_links("twltr-n1", N1_ADDR, &nsids).unwrap();
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lo",
                "eth0",
                "twl0",
                "twleac16fc378ec",
                "twl386cae62d29d",
                "twl.1"
            ]
        );
        let eth0 = &links[1];
        assert_eq!(eth0.kind, "veth");
        assert_eq!(
            eth0.addrs,
            vec!["192.0.2.11/24".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(
            eth0.peer,
            Some(PeerRef {
                netns: "twltr-ul".into(),
                ifindex: 4
            })
        );
        assert!(eth0.up);
        let port = &links[3];
        assert_eq!(port.master.as_deref(), Some("twl0"));
        assert_eq!(port.peer.as_ref().unwrap().netns, "twltr-n1-p1");
        let vx = links[5].vxlan.as_ref().unwrap();
        assert_eq!((vx.vni, vx.port), (1, 8472));
        assert_eq!(vx.local, Some(Ipv4Addr::new(192, 0, 2, 11)));
        assert_eq!(vx.uplink.as_deref(), Some("eth0"));
        assert_eq!(links[5].mtu, 1450);

        let neigh = parse_neighbours(N1_NEIGH).unwrap();
        assert_eq!(
            neigh,
            vec![(Ipv4Addr::new(10, 244, 4, 0), vtep_mac("192.0.2.12"))]
        );
        let fdb = parse_fdb(N1_FDB).unwrap();
        assert_eq!(
            fdb,
            vec![(vtep_mac("192.0.2.12"), Ipv4Addr::new(192, 0, 2, 12))]
        );
        assert_eq!(parse_fdb("").unwrap(), vec![]);
        assert!(parse_links("x", "{oops", &nsids).is_err());
    }

    #[test]
    fn lookups_follow_peers_and_addresses() {
        let t = two_node_vxlan();
        let eth0 = t.link("twltr-n1", "eth0").unwrap();
        let (pns, pl) = t.peer(eth0).unwrap();
        assert_eq!(
            (pns.name.as_str(), pl.name.as_str()),
            ("twltr-ul", "twltr-n1")
        );
        let (ons, ol) = t.owner("10.244.4.3".parse().unwrap()).unwrap();
        assert_eq!((ons.member.as_str(), ol.name.as_str()), ("n2-p2", "eth0"));
        assert!(t.owner("127.0.0.1".parse().unwrap()).is_none());
        assert_eq!(t.ports("twltr-ul", "twltr-br").count(), 3);
        // 3 underlay legs + router→out + 3 pods.
        assert_eq!(t.veth_pairs().len(), 7);
        assert_eq!(t.member("twltr-n2-p1"), "n2-p1");
    }
}
