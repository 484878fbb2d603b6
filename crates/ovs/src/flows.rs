//! The OpenFlow table of Twill's bridge (pure).
//!
//! Port 1 is the host's internal port (`twl.ovs`), port 10 the flow-based tunnel. The host
//! routes every remote block `via` [`GATEWAY`] `onlink` into port 1; the table
//! - answers the host's ARP for [`GATEWAY`] with [`GATEWAY_MAC`] (priority 200);
//! - per remote block: `in_port=1,ip,nw_dst=BLOCK` → tunnel destination = the peer's node
//!   IP, out port 10 (priority 100);
//! - per remote block: `in_port=10,tun_src=PEER,ip,nw_src=BLOCK` → the host port's MAC as
//!   destination, out port 1, and the same for `nw_src=PEER` (the peer's node IP: its
//!   own packets to pods here, whose source the kernel takes from its uplink since
//!   `twl.ovs` has no address): only a known peer, with a source in its own blocks or its
//!   own address, gets in. That is what the kernel backends let through from a peer too
//!   (vxlan and host-gw carry its pods' and its own packets); a source the peer merely
//!   forwards for (another node's, the outside world's) is dropped here, and with every
//!   other backend it would arrive through that node's own tunnel or route instead.
//!
//! Anything else is dropped (the bridge is `fail_mode=secure`, no NORMAL flow). Each flow's
//! cookie is [`COOKIE_MARK`] + 48 bits of a hash of its text ([`Flow::new`]), so the set of
//! cookies on the bridge is the set of Twill's flows: the diff ([`script`]) compares
//! cookies, adds what is missing, deletes (by exact cookie) what is no longer wanted, and a
//! flow of another cookie is never touched.

use crate::{COOKIE_MARK, COOKIE_MASK};
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The OpenFlow port of the host's internal port.
pub const HOST_PORT: u16 = 1;
/// The OpenFlow port of the tunnel.
pub const TUNNEL_PORT: u16 = 10;
/// The next hop of every route into OVS: link-local, answered by the ARP flow only.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 84, 84);
/// The MAC the ARP flow answers with (`0a:54:` + [`GATEWAY`]'s bytes).
pub const GATEWAY_MAC: [u8; 6] = [0x0a, 0x54, 169, 254, 84, 84];

/// Another node, as the flows see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowPeer {
    pub address: Ipv4Addr,
    pub blocks: Vec<Ipv4Net>,
}

/// One flow: its cookie and its `ovs-ofctl` text (match and actions, no cookie).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    pub cookie: u64,
    pub text: String,
}

impl Flow {
    /// A flow whose cookie is [`COOKIE_MARK`] + the low 48 bits of FNV-1a of `text`.
    pub fn new(text: String) -> Flow {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Flow {
            cookie: COOKIE_MARK | (h & !COOKIE_MASK),
            text,
        }
    }
}

pub use twill_netlink::neigh::format_mac;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::from("0x"), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The flows for `peers`, the host port having MAC `host_mac`; sorted by cookie.
pub fn table(host_mac: [u8; 6], peers: &[FlowPeer]) -> Vec<Flow> {
    let gw_mac = format_mac(&GATEWAY_MAC);
    let mut flows = vec![Flow::new(format!(
        "priority=200,in_port={HOST_PORT},arp,arp_op=1,arp_tpa={GATEWAY},actions=\
         move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:{gw_mac},load:2->NXM_OF_ARP_OP[],\
         move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],load:{}->NXM_NX_ARP_SHA[],\
         move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],load:{}->NXM_OF_ARP_SPA[],in_port",
        hex(&GATEWAY_MAC),
        hex(&GATEWAY.octets()),
    ))];
    let host_mac = format_mac(&host_mac);
    let inbound = |peer: Ipv4Addr, src: String| {
        Flow::new(format!(
            "priority=100,in_port={TUNNEL_PORT},tun_src={peer},ip,nw_src={src},actions=mod_dl_src:{gw_mac},mod_dl_dst:{host_mac},output:{HOST_PORT}"
        ))
    };
    for p in peers {
        flows.push(inbound(p.address, p.address.to_string()));
        for b in &p.blocks {
            let b = b.trunc();
            flows.push(Flow::new(format!(
                "priority=100,in_port={HOST_PORT},ip,nw_dst={b},actions=set_field:{}->tun_dst,output:{TUNNEL_PORT}",
                p.address
            )));
            flows.push(inbound(p.address, b.to_string()));
        }
    }
    flows.sort();
    flows.dedup_by_key(|f| f.cookie);
    flows
}

/// The marked cookies in `ovs-ofctl dump-flows` output (other flows are not Twill's).
pub fn cookies(dump: &str) -> BTreeSet<u64> {
    dump.lines()
        .filter_map(|l| {
            let c = l.trim_start().strip_prefix("cookie=0x")?;
            let end = c
                .find(|ch: char| !ch.is_ascii_hexdigit())
                .unwrap_or(c.len());
            u64::from_str_radix(&c[..end], 16).ok()
        })
        .filter(|c| c & COOKIE_MASK == COOKIE_MARK)
        .collect()
}

/// The `ovs-ofctl --bundle add-flows BRIDGE -` script turning the marked flows `have`
/// into `want`: deletes (by exact cookie) first, then adds. Empty when they match.
pub fn script(want: &[Flow], have: &BTreeSet<u64>) -> String {
    let wanted: BTreeSet<u64> = want.iter().map(|f| f.cookie).collect();
    let mut out = String::new();
    for c in have.difference(&wanted) {
        let _ = writeln!(out, "delete cookie={c:#018x}/-1");
    }
    for f in want.iter().filter(|f| !have.contains(&f.cookie)) {
        let _ = writeln!(out, "add cookie={:#018x},{}", f.cookie, f.text);
    }
    out
}

/// The `ovs-ofctl dump-flows` filter selecting Twill's flows.
pub fn cookie_filter() -> String {
    format!("cookie={COOKIE_MARK:#018x}/{COOKIE_MASK:#018x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str, blocks: &[&str]) -> FlowPeer {
        FlowPeer {
            address: ip.parse().unwrap(),
            blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
        }
    }

    const MAC: [u8; 6] = [0x0a, 0x54, 192, 0, 2, 11];

    #[test]
    fn the_table_has_the_arp_answer_two_flows_per_remote_block_and_one_per_peer() {
        let t = table(MAC, &[peer("192.0.2.12", &["10.244.2.0/24"])]);
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|f| f.cookie & COOKIE_MASK == COOKIE_MARK));
        let texts: Vec<&str> = t.iter().map(|f| f.text.as_str()).collect();
        assert!(texts.contains(&"priority=100,in_port=1,ip,nw_dst=10.244.2.0/24,actions=set_field:192.0.2.12->tun_dst,output:10"));
        assert!(texts.contains(&"priority=100,in_port=10,tun_src=192.0.2.12,ip,nw_src=10.244.2.0/24,actions=mod_dl_src:0a:54:a9:fe:54:54,mod_dl_dst:0a:54:c0:00:02:0b,output:1"));
        // The peer's own packets (its node IP as source) get in too.
        assert!(texts.contains(&"priority=100,in_port=10,tun_src=192.0.2.12,ip,nw_src=192.0.2.12,actions=mod_dl_src:0a:54:a9:fe:54:54,mod_dl_dst:0a:54:c0:00:02:0b,output:1"));
        // Two blocks: one more flow each way, still one for the node IP.
        assert_eq!(
            table(
                MAC,
                &[peer("192.0.2.12", &["10.244.2.0/24", "10.244.9.0/24"])]
            )
            .len(),
            6
        );
        assert!(texts.iter().any(|t| t.contains("arp_tpa=169.254.84.84")
            && t.contains("load:0x0a54a9fe5454->NXM_NX_ARP_SHA[]")
            && t.contains("load:0xa9fe5454->NXM_OF_ARP_SPA[]")));
    }

    #[test]
    fn a_node_joining_adds_only_its_flows_and_leaving_deletes_only_them() {
        let one = table(MAC, &[peer("192.0.2.12", &["10.244.2.0/24"])]);
        let two = table(
            MAC,
            &[
                peer("192.0.2.12", &["10.244.2.0/24"]),
                peer("192.0.2.13", &["10.244.3.0/24"]),
            ],
        );
        let have: BTreeSet<u64> = one.iter().map(|f| f.cookie).collect();
        let s = script(&two, &have);
        assert_eq!(s.lines().count(), 3, "{s}");
        assert!(s
            .lines()
            .all(|l| l.starts_with("add cookie=0x5477") && l.contains("192.0.2.13")));
        let have2: BTreeSet<u64> = two.iter().map(|f| f.cookie).collect();
        let s = script(&one, &have2);
        assert_eq!(s.lines().count(), 3, "{s}");
        assert!(s
            .lines()
            .all(|l| l.starts_with("delete cookie=0x5477") && l.ends_with("/-1")));
        assert_eq!(script(&two, &have2), "");
    }

    #[test]
    fn only_marked_cookies_are_read_from_a_dump() {
        let dump = " cookie=0x5477000000000002, priority=100,ip,in_port=1,nw_dst=10.244.2.0/24 actions=output:10\n \
                    cookie=0x1, priority=5 actions=drop\n \
                    cookie=0x0, priority=0 actions=NORMAL\nNXST_FLOW reply (xid=0x4):\n";
        assert_eq!(cookies(dump), BTreeSet::from([0x5477000000000002]));
        // A foreign flow is never in the script.
        let s = script(&[], &cookies(dump));
        assert_eq!(s, "delete cookie=0x5477000000000002/-1\n");
        assert_eq!(
            cookie_filter(),
            "cookie=0x5477000000000000/0xffff000000000000"
        );
    }

    #[test]
    fn a_changed_host_mac_replaces_the_receiving_flows() {
        let a = table(MAC, &[peer("192.0.2.12", &["10.244.2.0/24"])]);
        let b = table(
            [2, 0, 0, 0, 0, 1],
            &[peer("192.0.2.12", &["10.244.2.0/24"])],
        );
        let have: BTreeSet<u64> = a.iter().map(|f| f.cookie).collect();
        let s = script(&b, &have);
        assert_eq!(
            (s.matches("delete").count(), s.matches("add ").count()),
            (2, 2),
            "{s}"
        );
    }
}
