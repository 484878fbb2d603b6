//! The hot path: set and map element batches over nfnetlink, no subprocess.
//!
//! Pure encoders (this file's top half) turn pods and port mappings into nf_tables
//! messages; [`crate::Table`] sends them. A batch is one kernel transaction: every element
//! in it lands, or none does.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use twill_netlink::codec::{
    find_attr, MessageBuilder, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};

use crate::ruleset::{
    network_key, NetworkRules, PortMapping, MAP_HOSTPORTS_ANY, MAP_HOSTPORTS_IP, SET_GUARDED,
    SET_MASQ_PODS, SET_NETWORK_BLOCKS, SET_POD_IPS, SET_POD_MACS, TABLE,
};

// nfnetlink framing (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
/// Kernel ≥ 6.3: like DELSETELEM but an absent element is not an error.
const NFT_MSG_DESTROYSETELEM: u16 = 30;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NFPROTO_IPV4: u8 = libc::AF_INET as u8;
/// linux/netfilter.h NFPROTO_BRIDGE.
const NFPROTO_BRIDGE: u8 = 7;

/// What a set-element message does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementOp {
    /// NEWSETELEM; `exclusive` adds NLM_F_EXCL so an existing key fails the batch
    /// (without it, re-adding an identical element is a no-op).
    Add { exclusive: bool },
    /// DELSETELEM: an absent element fails the batch (ENOENT).
    Delete,
    /// DESTROYSETELEM: an absent element is fine.
    Destroy,
    /// GETSETELEM for the listed element(s): the reply carries it, ENOENT if absent.
    Get,
}

impl ElementOp {
    fn msg_type(self) -> u16 {
        let op = match self {
            ElementOp::Add { .. } => NFT_MSG_NEWSETELEM,
            ElementOp::Delete => NFT_MSG_DELSETELEM,
            ElementOp::Destroy => NFT_MSG_DESTROYSETELEM,
            ElementOp::Get => NFT_MSG_GETSETELEM,
        };
        (NFNL_SUBSYS_NFTABLES << 8) | op
    }

    fn flags(self) -> u16 {
        match self {
            ElementOp::Add { exclusive: true } => {
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
            }
            ElementOp::Add { exclusive: false } => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            ElementOp::Delete | ElementOp::Destroy | ElementOp::Get => NLM_F_REQUEST | NLM_F_ACK,
        }
    }
}

/// One element of one of our sets or maps, key and data in kernel register layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElement {
    pub set: &'static str,
    pub key: Vec<u8>,
    /// The mapped value, for maps only.
    pub data: Option<Vec<u8>>,
}

/// Concatenation fields each take a multiple of 4 bytes (an nft register): ipv4_addr is 4
/// bytes, inet_proto 1 byte + 3 zero bytes, inet_service 2 bytes big-endian + 2 zero bytes.
fn push_addr(v: &mut Vec<u8>, ip: Ipv4Addr) {
    v.extend_from_slice(&ip.octets());
}
fn push_proto(v: &mut Vec<u8>, proto: u8) {
    v.extend_from_slice(&[proto, 0, 0, 0]);
}
fn push_port(v: &mut Vec<u8>, port: u16) {
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
}

/// `masq_pods { ip }`.
pub fn masq_pod_element(ip: Ipv4Addr) -> SetElement {
    SetElement {
        set: SET_MASQ_PODS,
        key: ip.octets().to_vec(),
        data: None,
    }
}

/// `network_blocks { "network" . address . netmask }`, the marker that the network's
/// elements for `block` are installed. An `ifname` is 16 bytes, zero-padded.
pub fn network_marker_element(network: &str, block: Ipv4Net) -> SetElement {
    let mut key = [0u8; 16].to_vec();
    let name = network_key(network);
    key[..name.len()].copy_from_slice(name.as_bytes());
    push_addr(&mut key, block.network());
    push_addr(&mut key, block.netmask());
    SetElement {
        set: SET_NETWORK_BLOCKS,
        key,
        data: None,
    }
}

/// The markers of every block of `net`.
pub fn network_markers(net: &NetworkRules) -> Vec<SetElement> {
    net.subnets
        .iter()
        .map(|b| network_marker_element(&net.network, *b))
        .collect()
}

/// The key of a mapping in its map: `hostIP . proto . port` or `proto . port`.
pub fn mapping_key(m: &PortMapping) -> (&'static str, Vec<u8>) {
    let mut key = Vec::with_capacity(12);
    let set = match m.host_ip {
        Some(ip) => {
            push_addr(&mut key, ip);
            MAP_HOSTPORTS_IP
        }
        None => MAP_HOSTPORTS_ANY,
    };
    push_proto(&mut key, m.protocol.number());
    push_port(&mut key, m.host_port);
    (set, key)
}

/// The mapped value: `podIP . podPort`.
pub fn mapping_data(m: &PortMapping) -> Vec<u8> {
    let mut data = Vec::with_capacity(8);
    push_addr(&mut data, m.container_ip);
    push_port(&mut data, m.container_port);
    data
}

/// The full element of a mapping (key and data).
pub fn mapping_element(m: &PortMapping) -> SetElement {
    let (set, key) = mapping_key(m);
    SetElement {
        set,
        key,
        data: Some(mapping_data(m)),
    }
}

/// A message (seq 0; the socket numbers messages) with its nfgenmsg header.
fn builder(msg_type: u16, flags: u16, family: u8, res_id: u16) -> MessageBuilder {
    let mut b = MessageBuilder::new(msg_type, flags);
    let res = res_id.to_be_bytes();
    b.header(&[family, 0 /* NFNETLINK_V0 */, res[0], res[1]]);
    b
}

/// One set-element message for `elements`, which must all belong to `set` of
/// `table ip twill`.
pub fn setelem_message(op: ElementOp, set: &str, elements: &[SetElement]) -> Vec<u8> {
    setelem_message_in(NFPROTO_IPV4, op, set, elements)
}

/// The same for a set of the family's table named [`TABLE`].
fn setelem_message_in(family: u8, op: ElementOp, set: &str, elements: &[SetElement]) -> Vec<u8> {
    debug_assert!(elements.iter().all(|e| e.set == set));
    let mut b = builder(op.msg_type(), op.flags(), family, 0);
    b.attr_str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
    b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    b.nest_begin_flagged(NFTA_SET_ELEM_LIST_ELEMENTS);
    for e in elements {
        b.nest_begin_flagged(NFTA_LIST_ELEM);
        b.nest_begin_flagged(NFTA_SET_ELEM_KEY);
        b.attr(NFTA_DATA_VALUE, &e.key);
        b.nest_end();
        // Deletes and lookups match by key; data there is ignored, so it is left out.
        if let (Some(data), ElementOp::Add { .. }) = (&e.data, op) {
            b.nest_begin_flagged(NFTA_SET_ELEM_DATA);
            b.attr(NFTA_DATA_VALUE, data);
            b.nest_end();
        }
        b.nest_end();
    }
    b.nest_end();
    b.build()
}

/// Wraps messages in NFNL_MSG_BATCH_BEGIN / END for nf_tables: one transaction.
pub fn batch(messages: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(messages.len() + 2);
    let res = NFNL_SUBSYS_NFTABLES;
    out.push(
        builder(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            libc::AF_UNSPEC as u8,
            res,
        )
        .build(),
    );
    out.extend(messages);
    out.push(
        builder(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            libc::AF_UNSPEC as u8,
            res,
        )
        .build(),
    );
    out
}

/// Groups elements by set, keeping first-seen order: one message per set.
fn per_set(op: ElementOp, elements: Vec<SetElement>) -> Vec<Vec<u8>> {
    let mut sets: Vec<&'static str> = Vec::new();
    for e in &elements {
        if !sets.contains(&e.set) {
            sets.push(e.set);
        }
    }
    sets.into_iter()
        .map(|set| {
            let group: Vec<SetElement> =
                elements.iter().filter(|e| e.set == set).cloned().collect();
            setelem_message(op, set, &group)
        })
        .collect()
}

/// The batch that adds a pod: its `masq_pods` element (re-adding it is harmless) and its
/// mappings with NLM_F_EXCL, so a host port that is already taken fails the whole batch.
pub fn add_pod_batch(ip: Ipv4Addr, masquerade: bool, mappings: &[PortMapping]) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    if masquerade {
        msgs.push(setelem_message(
            ElementOp::Add { exclusive: false },
            SET_MASQ_PODS,
            &[masq_pod_element(ip)],
        ));
    }
    msgs.extend(per_set(
        ElementOp::Add { exclusive: true },
        mappings.iter().map(mapping_element).collect(),
    ));
    batch(msgs)
}

/// The batch that removes a pod's `masq_pods` element and the given mappings with
/// DESTROYSETELEM: whatever is already gone is skipped.
pub fn remove_pod_batch(ip: Ipv4Addr, mappings: &[PortMapping]) -> Vec<Vec<u8>> {
    let mut msgs = vec![setelem_message(
        ElementOp::Destroy,
        SET_MASQ_PODS,
        &[masq_pod_element(ip)],
    )];
    msgs.extend(per_set(
        ElementOp::Destroy,
        mappings.iter().map(mapping_element).collect(),
    ));
    batch(msgs)
}

/// An `ifname` key: the name, zero-padded to 16 bytes (IFNAMSIZ).
fn push_ifname(v: &mut Vec<u8>, name: &str) {
    let mut b = [0u8; 16];
    let n = name.len().min(15);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    v.extend_from_slice(&b);
}

/// One bridged pod as anti-spoofing knows it: its host veth, MAC and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardedPod<'a> {
    pub host_veth: &'a str,
    /// None for a pod recorded before Twill knew its MAC: only its other elements are
    /// removed (it was never guarded).
    pub mac: Option<[u8; 6]>,
    pub ip: Ipv4Addr,
}

/// The pod's elements of `table bridge twill`: `pods { veth }`, `pod_macs { veth . mac }`,
/// `pod_ips { veth . ip }`.
pub fn guard_elements(pod: &GuardedPod<'_>) -> Vec<SetElement> {
    let mut veth = Vec::with_capacity(16);
    push_ifname(&mut veth, pod.host_veth);
    let mut out = vec![SetElement {
        set: SET_GUARDED,
        key: veth.clone(),
        data: None,
    }];
    if let Some(mac) = pod.mac {
        // ether_addr: 6 bytes, padded to a whole register.
        let mut key = veth.clone();
        key.extend_from_slice(&mac);
        key.extend_from_slice(&[0, 0]);
        out.push(SetElement {
            set: SET_POD_MACS,
            key,
            data: None,
        });
    }
    let mut key = veth;
    push_addr(&mut key, pod.ip);
    out.push(SetElement {
        set: SET_POD_IPS,
        key,
        data: None,
    });
    out
}

/// The batch that guards a pod: its address and MAC first, then its veth in `pods` (in
/// one transaction anyway). Re-adding what is there is harmless.
pub fn guard_batch(pod: &GuardedPod<'_>) -> Vec<Vec<u8>> {
    bridge_batch(ElementOp::Add { exclusive: false }, guard_elements(pod))
}

/// The batch that removes a pod's guard elements; whatever is gone already is skipped.
pub fn unguard_batch(pod: &GuardedPod<'_>) -> Vec<Vec<u8>> {
    bridge_batch(ElementOp::Destroy, guard_elements(pod))
}

/// One GETSETELEM request per guard element of the pod (lookups are not transactions).
pub fn guard_lookups(pod: &GuardedPod<'_>) -> Vec<Vec<u8>> {
    guard_elements(pod)
        .iter()
        .map(|e| {
            setelem_message_in(
                NFPROTO_BRIDGE,
                ElementOp::Get,
                e.set,
                std::slice::from_ref(e),
            )
        })
        .collect()
}

fn bridge_batch(op: ElementOp, elements: Vec<SetElement>) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    for set in [SET_POD_MACS, SET_POD_IPS, SET_GUARDED] {
        let group: Vec<SetElement> = elements.iter().filter(|e| e.set == set).cloned().collect();
        if !group.is_empty() {
            msgs.push(setelem_message_in(NFPROTO_BRIDGE, op, set, &group));
        }
    }
    // Adds: the pod's MAC and address before its veth joins `pods`; removes: the veth
    // leaves `pods` first. One transaction either way, so this is only tidiness.
    if op == ElementOp::Destroy {
        msgs.rotate_right(1);
    }
    batch(msgs)
}

/// A GETSETELEM request for one element (not a batch: lookups are not transactions).
pub fn get_element_request(element: &SetElement) -> Vec<u8> {
    get_elements_request(std::slice::from_ref(element))
}

/// A GETSETELEM request for several elements of one set: the kernel answers each, or
/// ENOENT if any is absent.
pub fn get_elements_request(elements: &[SetElement]) -> Vec<u8> {
    let set = elements.first().map_or("", |e| e.set);
    setelem_message(ElementOp::Get, set, elements)
}

/// The data of the first element in a NEWSETELEM reply's payload (a GETSETELEM answer,
/// after the netlink header), or `None` if it carries no element or the element has no
/// data (a plain set).
pub fn reply_element_data(payload: &[u8]) -> Option<Vec<u8>> {
    let body = payload.get(4..)?; // nfgenmsg
    let elements = find_attr(body, NFTA_SET_ELEM_LIST_ELEMENTS)?;
    let first = find_attr(elements, NFTA_LIST_ELEM)?;
    let data = find_attr(first, NFTA_SET_ELEM_DATA)?;
    find_attr(data, NFTA_DATA_VALUE).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Protocol;
    use twill_netlink::codec::{attrs, NLA_F_NESTED};

    /// One attribute, padded, as the expected side of a comparison.
    fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(payload);
        buf.resize(buf.len() + (4 - len % 4) % 4, 0);
    }

    fn put_cstr(buf: &mut Vec<u8>, kind: u16, s: &str) {
        let mut z = s.as_bytes().to_vec();
        z.push(0);
        put_attr(buf, kind, &z);
    }

    // The attribute bytes below (everything after the 16-byte nlmsghdr) were printed by
    // nft 1.0.6 on this machine, inside a scratch namespace holding the table:
    //   nft --debug=mnl add element ip twill hostports_ip '{ 192.0.2.1 . tcp . 8080 : 10.244.1.5 . 80 }'
    //   nft --debug=mnl add element ip twill hostports_any '{ udp . 5353 : 10.244.1.6 . 53 }'
    //   nft --debug=mnl add element ip twill masq_pods '{ 10.244.1.5 }'
    //   nft --debug=mnl delete element ip twill hostports_ip '{ 192.0.2.1 . tcp . 8080 }'
    //   nft --debug=mnl get element ip twill network_blocks '{ "twltest" . 10.244.1.0 . 255.255.255.0 }'
    // nft also sends NFTA_SET_ELEM_LIST_SET_ID (type 4, for sets created in the same batch);
    // we look sets up by name only, so the tests cut that attribute out (`without_set_id`).
    // nft printed the types 2572 (NEWSETELEM), 2574 (DELSETELEM), 2573 (GETSETELEM).
    #[rustfmt::skip]
    const NFT_ADD_HOSTPORTS_IP: &[u8] = &[
        0x02, 0x00, 0x00, 0x00, // nfgenmsg: AF_INET, v0, res_id 0
        10, 0, 1, 0, b't', b'w', b'i', b'l', b'l', 0, 0, 0, // TABLE "twill"
        17, 0, 2, 0, b'h', b'o', b's', b't', b'p', b'o', b'r', b't', b's', b'_', b'i', b'p', 0, 0, 0, 0, // SET
        8, 0, 4, 0, 0, 0, 0, 5, // SET_ID
        44, 0, 3, 0x80, // ELEMENTS
        40, 0, 1, 0x80, // LIST_ELEM
        20, 0, 1, 0x80, // KEY
        16, 0, 1, 0, 0xc0, 0x00, 0x02, 0x01, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x90, 0x00, 0x00, // VALUE
        16, 0, 2, 0x80, // DATA
        12, 0, 1, 0, 0x0a, 0xf4, 0x01, 0x05, 0x00, 0x50, 0x00, 0x00, // VALUE
    ];
    #[rustfmt::skip]
    const NFT_ADD_HOSTPORTS_ANY: &[u8] = &[
        0x02, 0x00, 0x00, 0x00,
        10, 0, 1, 0, b't', b'w', b'i', b'l', b'l', 0, 0, 0,
        18, 0, 2, 0, b'h', b'o', b's', b't', b'p', b'o', b'r', b't', b's', b'_', b'a', b'n', b'y', 0, 0, 0,
        8, 0, 4, 0, 0, 0, 0, 6,
        40, 0, 3, 0x80,
        36, 0, 1, 0x80,
        16, 0, 1, 0x80,
        12, 0, 1, 0, 0x11, 0x00, 0x00, 0x00, 0x14, 0xe9, 0x00, 0x00,
        16, 0, 2, 0x80,
        12, 0, 1, 0, 0x0a, 0xf4, 0x01, 0x06, 0x00, 0x35, 0x00, 0x00,
    ];
    #[rustfmt::skip]
    const NFT_ADD_MASQ_POD: &[u8] = &[
        0x02, 0x00, 0x00, 0x00,
        10, 0, 1, 0, b't', b'w', b'i', b'l', b'l', 0, 0, 0,
        14, 0, 2, 0, b'm', b'a', b's', b'q', b'_', b'p', b'o', b'd', b's', 0, 0, 0,
        8, 0, 4, 0, 0, 0, 0, 1,
        20, 0, 3, 0x80,
        16, 0, 1, 0x80,
        12, 0, 1, 0x80,
        8, 0, 1, 0, 0x0a, 0xf4, 0x01, 0x05,
    ];
    #[rustfmt::skip]
    const NFT_DEL_HOSTPORTS_IP: &[u8] = &[
        0x02, 0x00, 0x00, 0x00,
        10, 0, 1, 0, b't', b'w', b'i', b'l', b'l', 0, 0, 0,
        17, 0, 2, 0, b'h', b'o', b's', b't', b'p', b'o', b'r', b't', b's', b'_', b'i', b'p', 0, 0, 0, 0,
        28, 0, 3, 0x80,
        24, 0, 1, 0x80,
        20, 0, 1, 0x80,
        16, 0, 1, 0, 0xc0, 0x00, 0x02, 0x01, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x90, 0x00, 0x00,
    ];
    // nft put SET before TABLE here and left libmnl's unzeroed padding (0xc1 0x6f 0x18);
    // the test rebuilds those two and takes the element list verbatim (attribute order
    // and padding do not matter to the kernel).
    #[rustfmt::skip]
    const NFT_GET_NETWORK_MARKER_ELEMENTS: &[u8] = &[
        40, 0, 3, 0x80,
        36, 0, 1, 0x80,
        32, 0, 1, 0x80,
        28, 0, 1, 0,
        b't', b'w', b'l', b't', b'e', b's', b't', 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x0a, 0xf4, 0x01, 0x00,
        0xff, 0xff, 0xff, 0x00,
    ];

    /// nft's bytes without the SET_ID attribute (8 bytes, type 4), nest lengths unchanged.
    fn without_set_id(bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes[..4].to_vec();
        for (kind, payload) in attrs(&bytes[4..]) {
            if kind != 4 {
                // Re-emit with the nested flag the original had.
                let raw_kind = if kind == NFTA_SET_ELEM_LIST_ELEMENTS {
                    kind | NLA_F_NESTED
                } else {
                    kind
                };
                put_attr(&mut out, raw_kind, payload);
            }
        }
        out
    }

    fn header(msg: &[u8]) -> (u32, u16, u16) {
        (
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()),
            u16::from_ne_bytes(msg[4..6].try_into().unwrap()),
            u16::from_ne_bytes(msg[6..8].try_into().unwrap()),
        )
    }

    fn tcp_8080_on_192_0_2_1() -> PortMapping {
        PortMapping {
            host_ip: Some("192.0.2.1".parse().unwrap()),
            host_port: 8080,
            container_ip: "10.244.1.5".parse().unwrap(),
            container_port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn udp_5353_any() -> PortMapping {
        PortMapping {
            host_ip: None,
            host_port: 5353,
            container_ip: "10.244.1.6".parse().unwrap(),
            container_port: 53,
            protocol: Protocol::Udp,
        }
    }

    // nft --debug=mnl add element bridge twill pod_macs '{ "twlabc" . 02:11:22:33:44:55 }'
    #[rustfmt::skip]
    const NFT_ADD_POD_MAC: &[u8] = &[
        0x07, 0x00, 0x00, 0x00, // nfgenmsg: NFPROTO_BRIDGE, v0, res_id 0
        10, 0, 1, 0, b't', b'w', b'i', b'l', b'l', 0, 0, 0, // TABLE "twill"
        13, 0, 2, 0, b'p', b'o', b'd', b'_', b'm', b'a', b'c', b's', 0, 0, 0, 0, // SET
        8, 0, 4, 0, 0, 0, 0, 2, // SET_ID
        40, 0, 3, 0x80, // ELEMENTS
        36, 0, 1, 0x80, // LIST_ELEM
        32, 0, 1, 0x80, // KEY
        28, 0, 1, 0, // VALUE: ifname (16) . ether_addr (6 + 2)
        b't', b'w', b'l', b'a', b'b', b'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0, 0,
    ];

    #[test]
    fn guard_elements_match_nft_and_go_in_one_batch() {
        let pod = GuardedPod {
            host_veth: "twlabc",
            mac: Some([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
            ip: "10.244.1.5".parse().unwrap(),
        };
        let els = guard_elements(&pod);
        let mac = els.iter().find(|e| e.set == "pod_macs").unwrap();
        let m = setelem_message_in(
            NFPROTO_BRIDGE,
            ElementOp::Add { exclusive: false },
            "pod_macs",
            std::slice::from_ref(mac),
        );
        assert_eq!(m[16..], without_set_id(NFT_ADD_POD_MAC)[..]);
        let ip = els.iter().find(|e| e.set == "pod_ips").unwrap();
        assert_eq!(&ip.key[..6], b"twlabc");
        assert_eq!(&ip.key[16..], &[10, 244, 1, 5]);
        let b = guard_batch(&pod);
        assert_eq!(b.len(), 5, "begin, three sets, end");
        assert_eq!(header(&b[1]).1, 2572);
        // An old record without a MAC: its other elements only.
        let old = GuardedPod { mac: None, ..pod };
        assert_eq!(guard_elements(&old).len(), 2);
        assert_eq!(unguard_batch(&old).len(), 4);
        assert_eq!(header(&unguard_batch(&pod)[1]).1, (10 << 8) | 30);
    }

    #[test]
    fn keys_and_data_pad_each_field_to_four_bytes() {
        let (set, key) = mapping_key(&tcp_8080_on_192_0_2_1());
        assert_eq!(set, "hostports_ip");
        assert_eq!(key, [192, 0, 2, 1, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(
            mapping_data(&tcp_8080_on_192_0_2_1()),
            [10, 244, 1, 5, 0, 80, 0, 0]
        );
        let (set, key) = mapping_key(&udp_5353_any());
        assert_eq!(set, "hostports_any");
        assert_eq!(key, [17, 0, 0, 0, 0x14, 0xe9, 0, 0]);
    }

    #[test]
    fn add_mapping_with_host_ip_matches_nft() {
        let m = setelem_message(
            ElementOp::Add { exclusive: true },
            "hostports_ip",
            &[mapping_element(&tcp_8080_on_192_0_2_1())],
        );
        assert_eq!(m[16..], without_set_id(NFT_ADD_HOSTPORTS_IP)[..]);
        let (len, kind, flags) = header(&m);
        assert_eq!(len as usize, m.len());
        assert_eq!(kind, 2572);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
    }

    #[test]
    fn add_mapping_on_any_address_matches_nft() {
        let m = setelem_message(
            ElementOp::Add { exclusive: true },
            "hostports_any",
            &[mapping_element(&udp_5353_any())],
        );
        assert_eq!(m[16..], without_set_id(NFT_ADD_HOSTPORTS_ANY)[..]);
    }

    #[test]
    fn add_masq_pod_matches_nft_and_is_not_exclusive() {
        let m = setelem_message(
            ElementOp::Add { exclusive: false },
            "masq_pods",
            &[masq_pod_element("10.244.1.5".parse().unwrap())],
        );
        assert_eq!(m[16..], without_set_id(NFT_ADD_MASQ_POD)[..]);
        assert_eq!(header(&m).2, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
    }

    #[test]
    fn delete_and_destroy_carry_only_the_key() {
        let e = mapping_element(&tcp_8080_on_192_0_2_1());
        let del = setelem_message(ElementOp::Delete, "hostports_ip", std::slice::from_ref(&e));
        assert_eq!(del[16..], NFT_DEL_HOSTPORTS_IP[..]);
        assert_eq!(header(&del).1, 2574);
        let destroy = setelem_message(ElementOp::Destroy, "hostports_ip", &[e]);
        assert_eq!(destroy[16..], NFT_DEL_HOSTPORTS_IP[..]);
        assert_eq!(header(&destroy).1, (10 << 8) | 30);
        assert_eq!(header(&destroy).2, NLM_F_REQUEST | NLM_F_ACK);
    }

    #[test]
    fn get_marker_matches_nft() {
        let m = get_element_request(&network_marker_element(
            "twltest",
            "10.244.1.0/24".parse().unwrap(),
        ));
        let mut expected = vec![2, 0, 0, 0];
        put_cstr(&mut expected, 1, "twill");
        put_cstr(&mut expected, 2, "network_blocks");
        expected.extend_from_slice(NFT_GET_NETWORK_MARKER_ELEMENTS);
        assert_eq!(m[16..], expected[..]);
        assert_eq!(header(&m).1, 2573);
    }

    #[test]
    fn markers_carry_the_network_key_and_the_block() {
        let long = "a-network-with-a-long-name";
        let m = network_marker_element(long, "10.244.9.70/26".parse().unwrap());
        assert_eq!(m.set, "network_blocks");
        assert_eq!(m.key.len(), 24);
        let key = network_key(long);
        assert_eq!(&m.key[..key.len()], key.as_bytes());
        assert!(m.key[key.len()..16].iter().all(|b| *b == 0));
        assert_eq!(m.key[16..], [10, 244, 9, 64, 255, 255, 255, 192]);
        let net = NetworkRules {
            network: "n".into(),
            subnets: vec![
                "10.244.1.0/24".parse().unwrap(),
                "10.244.2.0/25".parse().unwrap(),
            ],
            cluster_cidrs: vec![],
            masquerade: false,
        };
        let markers = network_markers(&net);
        assert_eq!(markers.len(), 2);
        let get = get_elements_request(&markers);
        assert!(get.windows(24).any(|w| w == markers[0].key));
        assert!(get.windows(24).any(|w| w == markers[1].key));
    }

    #[test]
    fn batch_is_framed_for_nftables() {
        let b = batch(vec![]);
        // nft's BEGIN and END: type 16 / 17, 20 bytes, nfgenmsg 00 00 00 0a.
        assert_eq!(b.len(), 2);
        assert_eq!(b[0][..8], [20, 0, 0, 0, 16, 0, 1, 0]);
        assert_eq!(b[0][16..], [0, 0, 0, 10]);
        assert_eq!(b[1][..8], [20, 0, 0, 0, 17, 0, 1, 0]);
        assert_eq!(b[1][16..], [0, 0, 0, 10]);
    }

    #[test]
    fn add_pod_batch_groups_by_set() {
        let ip = "10.244.1.5".parse().unwrap();
        let a = tcp_8080_on_192_0_2_1();
        let b = PortMapping {
            host_port: 8443,
            container_port: 443,
            ..a
        };
        let c = PortMapping {
            host_ip: None,
            container_ip: ip,
            ..udp_5353_any()
        };
        let msgs = add_pod_batch(ip, true, &[a, c, b]);
        // begin, masq_pods, hostports_ip (a, b), hostports_any (c), end
        assert_eq!(msgs.len(), 5);
        assert_eq!(header(&msgs[1]).1, 2572);
        let ip_msg = &msgs[2];
        assert!(ip_msg.windows(12).any(|w| w == mapping_key(&a).1));
        assert!(ip_msg.windows(12).any(|w| w == mapping_key(&b).1));
        assert_eq!(header(ip_msg).2 & NLM_F_EXCL, NLM_F_EXCL);
        assert_eq!(add_pod_batch(ip, false, &[]).len(), 2);
        assert_eq!(remove_pod_batch(ip, &[a, c]).len(), 5);
    }

    #[test]
    fn reply_element_data_reads_the_mapped_value() {
        // A GETSETELEM answer has the request's shape with NEWSETELEM type and the data.
        let m = setelem_message(
            ElementOp::Add { exclusive: true },
            "hostports_ip",
            &[mapping_element(&tcp_8080_on_192_0_2_1())],
        );
        assert_eq!(
            reply_element_data(&m[16..]).unwrap(),
            [10, 244, 1, 5, 0, 80, 0, 0]
        );
        let masq = setelem_message(
            ElementOp::Add { exclusive: false },
            "masq_pods",
            &[masq_pod_element("10.244.1.5".parse().unwrap())],
        );
        assert_eq!(reply_element_data(&masq[16..]), None);
        assert_eq!(reply_element_data(&[1, 2, 3]), None);
    }
}
