//! `twill-bench mesh`, the pure part: the address plan of a mesh of N nodes on one segment,
//! who peers with whom (full mesh or route reflectors), and each daemon's configuration.
//! The reference is BIRD 2 configured the way Calico's confd templates configure it
//! (projectcalico/calico confd/etc/calico/confd/templates/bird.cfg.template, translated to
//! BIRD 2 syntax); Twill's standalone speaker (`twill bgp serve`) gets the same sessions.
//! No I/O here.

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Calico's default AS.
pub const MESH_AS: u32 = 64512;
/// The route reflectors' RFC 4456 cluster ID (Calico's `routeReflectorClusterID`).
pub const CLUSTER_ID: Ipv4Addr = Ipv4Addr::new(244, 0, 0, 1);
/// Calico's mesh graceful restart time.
pub const RESTART_TIME: u16 = 120;
/// Node i (0-based) has 192.0.2.(i+1); .254 is the switch's own address (etcd).
pub const MAX_NODES: usize = 250;
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The cost scenario: routes each feeder announces.
pub const FEED_ROUTES_PER_PEER: usize = 100;

/// Who runs the BGP of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Implementation {
    /// BIRD 2, configured as Calico configures it: the reference.
    Bird,
    /// Twill's BGP speaker alone (`twill bgp serve`), given the reference's sessions.
    Speaker,
    /// twilld with `backend: bgp`: sessions from the store, as in a cluster.
    Twilld,
}

impl Implementation {
    pub const ALL: [Implementation; 3] = [
        Implementation::Bird,
        Implementation::Speaker,
        Implementation::Twilld,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Implementation::Bird => "bird",
            Implementation::Speaker => "speaker",
            Implementation::Twilld => "twilld",
        }
    }

    pub fn parse(s: &str) -> Option<Implementation> {
        Implementation::ALL.into_iter().find(|i| i.name() == s)
    }

    /// Twill's own (held to the goals), as opposed to the reference.
    pub fn is_twill(self) -> bool {
        self != Implementation::Bird
    }
}

/// Full mesh, or K route reflectors (nodes 0..K) that every other node peers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    Mesh,
    Reflectors(usize),
}

/// One node of the bench: its index, address, MAC and pod block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshNode {
    pub index: usize,
    pub ip: Ipv4Addr,
    /// Set on its uplink, so every other node can hold a permanent neighbour entry for it.
    pub mac: [u8; 6],
    /// The block it originates: 10.244.i.0/24.
    pub block: Ipv4Net,
}

pub fn node(index: usize) -> MeshNode {
    assert!(index < MAX_NODES, "node index {index} beyond the plan");
    MeshNode {
        index,
        ip: Ipv4Addr::new(192, 0, 2, index as u8 + 1),
        mac: [0x02, 0x74, 0x77, 0x6c, 0x00, index as u8 + 1],
        block: Ipv4Net::new(Ipv4Addr::new(10, 244, index as u8, 0), 24).expect("a /24"),
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One session of a node, as its own configuration states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub peer: Ipv4Addr,
    /// Wait for the peer to connect (Calico: toward a higher IP in the mesh).
    pub passive: bool,
    /// We reflect the peer's routes (we are a reflector, it a client).
    pub rr_client: bool,
}

/// Whether node `i` reflects under `topology`.
pub fn is_reflector(topology: Topology, i: usize) -> bool {
    matches!(topology, Topology::Reflectors(k) if i < k)
}

/// The sessions of node `i` among `nodes` nodes (indices `0..nodes`), as Calico's templates
/// give them. Mesh: every other node, passive toward a higher IP ("Mesh is unidirectional,
/// peer will connect to us"; Calico compares the strings, here the numbers). Reflectors:
/// a reflector peers with every node (clients marked `rr client`, other reflectors plain);
/// a client peers with the reflectors only; both ends active, as Calico's BGPPeers are.
pub fn sessions(topology: Topology, nodes: usize, i: usize) -> Vec<Session> {
    let me = node(i).ip;
    (0..nodes)
        .filter(|&j| j != i)
        .filter_map(|j| {
            let peer = node(j).ip;
            match topology {
                Topology::Mesh => Some(Session {
                    peer,
                    passive: peer > me,
                    rr_client: false,
                }),
                Topology::Reflectors(_) => {
                    let (me_rr, it_rr) = (is_reflector(topology, i), is_reflector(topology, j));
                    (me_rr || it_rr).then_some(Session {
                        peer,
                        passive: false,
                        rr_client: me_rr && !it_rr,
                    })
                }
            }
        })
        .collect()
}

/// Calico's bird.cfg for node `n` with `sessions`, in BIRD 2 syntax: kernel protocol with
/// `learn`, `persist`, `scan time 2`, `graceful restart`, `merge paths on`; device `scan
/// time 2`; direct (so the recursive next hops resolve); the node's block as a static
/// blackhole (bird_aggr.cfg); the BGP template's `multihop`, `gateway recursive`, `add paths
/// on`, `graceful restart`, `connect delay time 1`, `connect retry time 3`, `error wait
/// time 5,60`; per mesh peer `source address`, `passive on` toward higher IPs and `graceful
/// restart time 120`; `rr client; rr cluster id` toward clients. The filters keep Calico's
/// meaning: export our pod blocks, import everything, program BGP routes into the kernel.
pub fn bird_config(n: &MeshNode, sessions: &[Session], log: &str) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "log \"{log}\" {{ warning, error, fatal }};");
    let _ = writeln!(c, "router id {};", n.ip);
    c.push_str(
        "filter calico_kernel_programming { if source = RTS_BGP || source = RTS_STATIC then accept; reject; }\n\
         filter calico_export_to_bgp_peers { if net ~ 10.244.0.0/16 && (source = RTS_STATIC || source = RTS_BGP) then accept; reject; }\n\
         protocol kernel {\n  learn;\n  persist;\n  scan time 2;\n  graceful restart;\n  merge paths on;\n  \
         ipv4 { import all; export filter calico_kernel_programming; };\n}\n\
         protocol device { scan time 2; }\n\
         protocol direct { ipv4; interface -\"twl*br*\", \"*\"; }\n",
    );
    let _ = writeln!(
        c,
        "protocol static {{ ipv4; route {} blackhole; }}",
        n.block
    );
    let _ = writeln!(
        c,
        "template bgp bgp_template {{\n  description \"Connection to BGP peer\";\n  local as {MESH_AS};\n  multihop;\n  \
         ipv4 {{ gateway recursive; import all; export filter calico_export_to_bgp_peers; add paths on; }};\n  \
         graceful restart;\n  connect delay time 1;\n  connect retry time 3;\n  error wait time 5,60;\n}}"
    );
    for s in sessions {
        let id = s.peer.to_string().replace('.', "_");
        let _ = writeln!(
            c,
            "protocol bgp Mesh_{id} from bgp_template {{\n  neighbor {} as {MESH_AS};\n  source address {};",
            s.peer, n.ip
        );
        if s.passive {
            c.push_str("  passive on;\n");
        }
        if s.rr_client {
            let _ = writeln!(c, "  rr client;\n  rr cluster id {CLUSTER_ID};");
        }
        let _ = writeln!(c, "  graceful restart time {RESTART_TIME};\n}}");
    }
    c
}

/// `twill bgp serve`'s configuration for node `n` with the same sessions as the reference:
/// it originates its block, installs learned routes, graceful restart on, a reflector's
/// cluster ID set. Connect retry 3 s as Calico's; no connect delay (the speaker has none).
pub fn speaker_config(
    n: &MeshNode,
    sessions: &[Session],
    reflector: bool,
    control_socket: &str,
) -> Value {
    let peers: Vec<Value> = sessions
        .iter()
        .map(|s| {
            json!({
                "address": s.peer.to_string(),
                "as": MESH_AS,
                "passive": s.passive,
                "connectRetry": 3,
                "localAddress": n.ip.to_string(),
                "routeReflectorClient": s.rr_client,
            })
        })
        .collect();
    let mut c = json!({
        "routerId": n.ip.to_string(),
        "as": MESH_AS,
        "listen": {"address": n.ip.to_string()},
        "controlSocket": control_socket,
        "gracefulRestart": {"restartTime": RESTART_TIME},
        "originate": [n.block.to_string()],
        "peers": peers,
    });
    if reflector {
        c["clusterId"] = json!(CLUSTER_ID.to_string());
    }
    c
}

/// The cost scenario's feeders: feeder k (0-based) holds 192.0.2.(k+2) (node k+1 of the
/// plan; the measured daemon is node 0) and announces its share of the /30s of 10.244.0.0/16.
pub fn feed_prefixes(k: usize) -> Vec<Ipv4Net> {
    (0..FEED_ROUTES_PER_PEER)
        .map(|j| {
            let idx = (k * FEED_ROUTES_PER_PEER + j) as u32;
            let base = u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 4 * idx;
            Ipv4Net::new(Ipv4Addr::from(base), 30).expect("a /30")
        })
        .collect()
}

/// A feeder BIRD: one session to the measured node (node 0), active at once (`connect
/// delay time 0`, retry 1 s), announcing `prefixes` with itself as next hop; no kernel.
pub fn feeder_config(n: &MeshNode, center: Ipv4Addr, prefixes: &[Ipv4Net], log: &str) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "log \"{log}\" {{ warning, error, fatal }};");
    let _ = writeln!(c, "router id {};\nprotocol device {{ }}", n.ip);
    c.push_str("protocol static feed {\n  ipv4;\n");
    for p in prefixes {
        let _ = writeln!(c, "  route {p} blackhole;");
    }
    c.push_str("}\n");
    let _ = writeln!(
        c,
        "protocol bgp center {{\n  local {} as {MESH_AS};\n  neighbor {center} as {MESH_AS};\n  \
         connect delay time 0;\n  connect retry time 1;\n  \
         ipv4 {{ import none; export where source = RTS_STATIC; next hop self; }};\n}}",
        n.ip
    );
    c
}

/// The measured node of the cost scenario as BIRD: Calico's kernel and template settings,
/// passive toward every feeder (they connect).
pub fn cost_bird_config(n: &MeshNode, feeders: &[Ipv4Addr], log: &str) -> String {
    let sessions: Vec<Session> = feeders
        .iter()
        .map(|&peer| Session {
            peer,
            passive: true,
            rr_client: false,
        })
        .collect();
    bird_config(n, &sessions, log)
}

/// The measured node of the cost scenario as `twill bgp serve`: passive toward every feeder.
pub fn cost_speaker_config(n: &MeshNode, feeders: &[Ipv4Addr], control_socket: &str) -> Value {
    let sessions: Vec<Session> = feeders
        .iter()
        .map(|&peer| Session {
            peer,
            passive: true,
            rr_client: false,
        })
        .collect();
    speaker_config(n, &sessions, false, control_socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_addresses_macs_blocks() {
        let n = node(19);
        assert_eq!(n.ip, Ipv4Addr::new(192, 0, 2, 20));
        assert_eq!(format_mac(&n.mac), "02:74:77:6c:00:14");
        assert_eq!(n.block.to_string(), "10.244.19.0/24");
    }

    #[test]
    fn mesh_is_one_sided_passive_toward_higher_ips() {
        let s = sessions(Topology::Mesh, 4, 1);
        assert_eq!(s.len(), 3);
        let passive: Vec<(String, bool)> =
            s.iter().map(|s| (s.peer.to_string(), s.passive)).collect();
        assert_eq!(
            passive,
            [
                ("192.0.2.1".into(), false),
                ("192.0.2.3".into(), true),
                ("192.0.2.4".into(), true)
            ]
        );
        // Every pair has exactly one active side.
        for i in 0..6 {
            for s in sessions(Topology::Mesh, 6, i) {
                let j = s.peer.octets()[3] as usize - 1;
                let back = sessions(Topology::Mesh, 6, j)
                    .into_iter()
                    .find(|b| b.peer == node(i).ip)
                    .unwrap();
                assert_ne!(s.passive, back.passive, "{i} <-> {j}");
            }
        }
    }

    #[test]
    fn reflectors_peer_with_all_clients_with_reflectors_only() {
        let t = Topology::Reflectors(2);
        let rr = sessions(t, 6, 0);
        assert_eq!(rr.len(), 5);
        assert!(!rr[0].rr_client, "the other reflector is no client");
        assert!(rr[1..].iter().all(|s| s.rr_client && !s.passive));
        let client = sessions(t, 6, 4);
        let peers: Vec<String> = client.iter().map(|s| s.peer.to_string()).collect();
        assert_eq!(peers, ["192.0.2.1", "192.0.2.2"]);
        assert!(client.iter().all(|s| !s.rr_client && !s.passive));
    }

    #[test]
    fn bird_config_has_calicos_settings() {
        let t = Topology::Reflectors(1);
        let c = bird_config(&node(0), &sessions(t, 3, 0), "/tmp/x.log");
        for want in [
            "router id 192.0.2.1;",
            "scan time 2;",
            "persist;",
            "merge paths on;",
            "route 10.244.0.0/24 blackhole;",
            "connect delay time 1;",
            "connect retry time 3;",
            "error wait time 5,60;",
            "graceful restart time 120;",
            "protocol bgp Mesh_192_0_2_2 from bgp_template",
            "source address 192.0.2.1;",
            "rr cluster id 244.0.0.1;",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
        let mesh = bird_config(&node(1), &sessions(Topology::Mesh, 3, 1), "/l");
        let after = mesh.split("Mesh_192_0_2_3").nth(1).unwrap();
        assert!(after.contains("passive on;"));
        let before = mesh.split("Mesh_192_0_2_1").nth(1).unwrap();
        assert!(!before.split('}').next().unwrap().contains("passive on;"));
    }

    #[test]
    fn speaker_config_mirrors_the_sessions() {
        let c = speaker_config(
            &node(0),
            &sessions(Topology::Reflectors(1), 3, 0),
            true,
            "/s",
        );
        assert_eq!(c["clusterId"], "244.0.0.1");
        assert_eq!(c["originate"][0], "10.244.0.0/24");
        assert_eq!(c["peers"].as_array().unwrap().len(), 2);
        assert_eq!(c["peers"][0]["routeReflectorClient"], true);
        let plain = speaker_config(&node(1), &sessions(Topology::Mesh, 3, 1), false, "/s");
        assert!(plain.get("clusterId").is_none());
        assert_eq!(plain["peers"][1]["passive"], true);
    }

    #[test]
    fn feeders_announce_disjoint_thirties() {
        let a = feed_prefixes(0);
        let b = feed_prefixes(99);
        assert_eq!(a.len(), FEED_ROUTES_PER_PEER);
        assert_eq!(a[0].to_string(), "10.244.0.0/30");
        assert_eq!(a[1].to_string(), "10.244.0.4/30");
        assert_eq!(b[99].to_string(), "10.244.156.60/30");
        let mut all: Vec<Ipv4Net> = (0..100).flat_map(feed_prefixes).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10_000);
        let f = feeder_config(&node(1), node(0).ip, &a[..2], "/l");
        assert!(f.contains("route 10.244.0.4/30 blackhole;"));
        assert!(f.contains("neighbor 192.0.2.1 as 64512;"));
    }
}
