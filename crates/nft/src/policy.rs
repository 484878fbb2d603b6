//! Set and verdict-map elements of any table (network policy's `table inet twill-policy`),
//! as one nfnetlink batch: the hot path of a policy change that only moves pods in and out
//! of sets and dispatch maps. Pure encoders plus [`ElementTable`], the thin socket edge.
//!
//! Rules and chains are not encoded here: changes that touch them go through `nft -f`
//! (one transaction), see `twilld`'s policy module.

use std::net::Ipv4Addr;

use twill_netlink::codec::{MessageBuilder, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};
use twill_netlink::{Netns, Socket};

use crate::elements::batch;
use crate::Error;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETOBJ: u16 = 19;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// `goto` (linux/netfilter/nf_tables.h: NFT_GOTO = -4).
const NFT_GOTO: i32 = -4;

/// `NFPROTO_INET`.
pub const FAMILY_INET: u8 = 1;

/// One table, by family and name.
#[derive(Debug, Clone, Copy)]
pub struct TableRef<'a> {
    pub family: u8,
    pub name: &'a str,
}

/// The data of a map element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementData {
    /// A plain set.
    None,
    /// `: goto <chain>`.
    Goto(String),
}

/// One element: its key in register layout, and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub data: ElementData,
}

/// Adds or deletes elements of one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementChange<'a> {
    pub set: &'a str,
    pub add: bool,
    pub elements: Vec<Element>,
}

/// Key fields each take a multiple of 4 bytes (nft registers).
pub fn key_addr(v: &mut Vec<u8>, ip: Ipv4Addr) {
    v.extend_from_slice(&ip.octets());
}
/// `ifname`: 16 bytes, zero-padded (IFNAMSIZ).
pub fn key_ifname(v: &mut Vec<u8>, name: &str) {
    let mut b = [0u8; 16];
    let n = name.len().min(15);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    v.extend_from_slice(&b);
}
/// `inet_proto`: 1 byte + 3 zero bytes.
pub fn key_proto(v: &mut Vec<u8>, proto: u8) {
    v.extend_from_slice(&[proto, 0, 0, 0]);
}
/// `inet_service`: 2 bytes big-endian + 2 zero bytes.
pub fn key_port(v: &mut Vec<u8>, port: u16) {
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
}

fn builder(msg: u16, flags: u16, family: u8) -> MessageBuilder {
    let mut b = MessageBuilder::new((NFNL_SUBSYS_NFTABLES << 8) | msg, flags);
    b.header(&[family, 0, 0, 0]);
    b
}

fn elements_message(
    table: TableRef<'_>,
    msg: u16,
    flags: u16,
    set: &str,
    elements: &[Element],
    with_data: bool,
) -> Vec<u8> {
    let mut b = builder(msg, flags, table.family);
    b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table.name);
    b.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    b.nest_begin_flagged(NFTA_SET_ELEM_LIST_ELEMENTS);
    for e in elements {
        b.nest_begin_flagged(NFTA_LIST_ELEM);
        b.nest_begin_flagged(NFTA_SET_ELEM_KEY);
        b.attr(NFTA_DATA_VALUE, &e.key);
        b.nest_end();
        if let (true, ElementData::Goto(chain)) = (with_data, &e.data) {
            b.nest_begin_flagged(NFTA_SET_ELEM_DATA);
            b.nest_begin_flagged(NFTA_DATA_VERDICT);
            b.attr_be32(NFTA_VERDICT_CODE, NFT_GOTO as u32);
            b.attr_str(NFTA_VERDICT_CHAIN, chain);
            b.nest_end();
            b.nest_end();
        }
        b.nest_end();
    }
    b.nest_end();
    b.build()
}

/// The changes as one transaction (BATCH_BEGIN … END): all land or none does. Adds are
/// not exclusive (re-adding an identical element is a no-op); deletes of absent elements
/// fail the batch (ENOENT), which tells the caller its picture of the table is wrong.
pub fn elements_batch(table: TableRef<'_>, changes: &[ElementChange<'_>]) -> Vec<Vec<u8>> {
    batch(element_messages(table, changes))
}

/// The changes' messages, without the batch around them (to go in a larger batch).
pub fn element_messages(table: TableRef<'_>, changes: &[ElementChange<'_>]) -> Vec<Vec<u8>> {
    changes
        .iter()
        .filter(|c| !c.elements.is_empty())
        .map(|c| {
            if c.add {
                elements_message(
                    table,
                    NFT_MSG_NEWSETELEM,
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                    c.set,
                    &c.elements,
                    true,
                )
            } else {
                elements_message(
                    table,
                    NFT_MSG_DELSETELEM,
                    NLM_F_REQUEST | NLM_F_ACK,
                    c.set,
                    &c.elements,
                    false,
                )
            }
        })
        .collect()
}

/// A GETSETELEM for one element (ENOENT if it, its set or its table is absent).
pub fn get_element_request(table: TableRef<'_>, set: &str, element: &Element) -> Vec<u8> {
    elements_message(
        table,
        NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_ACK,
        set,
        std::slice::from_ref(element),
        false,
    )
}

/// A GETTABLE for the table (ENOENT if absent).
pub fn get_table_request(table: TableRef<'_>) -> Vec<u8> {
    let mut b = builder(NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_ACK, table.family);
    b.attr_str(NFTA_TABLE_NAME, table.name);
    b.build()
}

/// A GETOBJ dump request for the table's named counters.
pub fn get_counters_request(table: TableRef<'_>) -> Vec<u8> {
    let mut b = builder(NFT_MSG_GETOBJ, NLM_F_REQUEST | NLM_F_ACK, table.family);
    b.attr_str(NFTA_OBJ_TABLE, table.name);
    b.attr_be32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
    b.build()
}

/// One named counter from a GETOBJ reply's payload (after the netlink header): name,
/// packets, bytes. `None` for other objects or a malformed reply.
pub fn parse_counter(payload: &[u8]) -> Option<(String, u64, u64)> {
    use twill_netlink::codec::{find_attr, parse_be32, parse_be64, parse_str};
    let body = payload.get(4..)?;
    if find_attr(body, NFTA_OBJ_TYPE).and_then(parse_be32)? != NFT_OBJECT_COUNTER {
        return None;
    }
    let name = find_attr(body, NFTA_OBJ_NAME)
        .and_then(parse_str)?
        .to_string();
    let data = find_attr(body, NFTA_OBJ_DATA)?;
    let packets = find_attr(data, NFTA_COUNTER_PACKETS).and_then(parse_be64)?;
    let bytes = find_attr(data, NFTA_COUNTER_BYTES).and_then(parse_be64)?;
    Some((name, packets, bytes))
}

/// A NETLINK_NETFILTER socket bound to one table: element batches and lookups.
pub struct ElementTable {
    socket: Socket,
    family: u8,
    name: String,
}

impl ElementTable {
    /// In the calling thread's namespace.
    pub fn new(family: u8, name: &str) -> Result<ElementTable, Error> {
        Ok(ElementTable {
            socket: Socket::new(libc::NETLINK_NETFILTER)?,
            family,
            name: name.into(),
        })
    }

    /// In namespace `ns`.
    pub fn new_in(ns: &Netns, family: u8, name: &str) -> Result<ElementTable, Error> {
        Ok(ElementTable {
            socket: Socket::new_in(libc::NETLINK_NETFILTER, ns)?,
            family,
            name: name.into(),
        })
    }

    fn table(&self) -> TableRef<'_> {
        TableRef {
            family: self.family,
            name: &self.name,
        }
    }

    /// Sends the changes as one transaction.
    pub fn apply(&mut self, changes: &[ElementChange<'_>]) -> Result<(), Error> {
        let msgs = elements_batch(self.table(), changes);
        match self.socket.send_batch(msgs) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Err(Error::TableMissing(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `msgs` (object and element messages, e.g. from [`crate::rules`] and
    /// [`element_messages`]) as one transaction.
    pub fn send(&mut self, msgs: Vec<Vec<u8>>) -> Result<(), Error> {
        match self.socket.send_batch(batch(msgs)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Err(Error::TableMissing(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the table exists.
    pub fn exists(&mut self) -> Result<bool, Error> {
        match self.socket.request(get_table_request(self.table())) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every named counter of the table: (name, packets, bytes); empty if the table is
    /// absent.
    pub fn counters(&mut self) -> Result<Vec<(String, u64, u64)>, Error> {
        let out = std::cell::RefCell::new(Vec::new());
        let req = get_counters_request(self.table());
        match self.socket.dump_each(
            req,
            || out.borrow_mut().clear(),
            |payload| {
                if let Some(c) = parse_counter(payload) {
                    out.borrow_mut().push(c);
                }
            },
        ) {
            Ok(()) => Ok(out.into_inner()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// What the rules of `chain` compare with, rule by rule ([`crate::rules::rule_cmp_values`]);
    /// empty when the chain or the table is absent.
    pub fn chain_cmp_values(&mut self, chain: &str) -> Result<Vec<Vec<Vec<u8>>>, Error> {
        let out = std::cell::RefCell::new(Vec::new());
        let req = crate::rules::get_rules_request(self.table(), chain);
        match self.socket.dump_each(
            req,
            || out.borrow_mut().clear(),
            |payload| {
                out.borrow_mut()
                    .push(crate::rules::rule_cmp_values(payload))
            },
        ) {
            Ok(()) => Ok(out.into_inner()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `set` holds `element` (false also when the set or table is absent).
    pub fn has(&mut self, set: &str, element: &Element) -> Result<bool, Error> {
        match self
            .socket
            .request(get_element_request(self.table(), set, element))
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_netlink::codec::{attrs, find_attr};

    #[test]
    fn keys_pad_each_field_to_registers() {
        let mut k = Vec::new();
        key_ifname(&mut k, "twl0123456789ab");
        key_addr(&mut k, Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(k.len(), 20);
        assert_eq!(&k[..15], b"twl0123456789ab");
        assert_eq!(k[15], 0);
        assert_eq!(k[16..], [10, 244, 1, 5]);
        let mut p = Vec::new();
        key_addr(&mut p, Ipv4Addr::new(10, 0, 0, 1));
        key_proto(&mut p, 6);
        key_port(&mut p, 8080);
        assert_eq!(p, [10, 0, 0, 1, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
    }

    #[test]
    fn a_goto_element_carries_the_verdict_and_chain() {
        let t = TableRef {
            family: FAMILY_INET,
            name: "twill-policy",
        };
        let e = Element {
            key: vec![1, 2, 3, 4],
            data: ElementData::Goto("prof/in/x".into()),
        };
        let b = elements_batch(
            t,
            &[ElementChange {
                set: "to_pod",
                add: true,
                elements: vec![e.clone()],
            }],
        );
        assert_eq!(b.len(), 3);
        let m = &b[1];
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (10 << 8) | 12);
        assert_eq!(m[16], FAMILY_INET);
        let body = &m[20..];
        assert_eq!(
            find_attr(body, NFTA_SET_ELEM_LIST_TABLE),
            Some(&b"twill-policy\0"[..])
        );
        let list = find_attr(body, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
        let elem = find_attr(list, NFTA_LIST_ELEM).unwrap();
        let data = find_attr(elem, NFTA_SET_ELEM_DATA).unwrap();
        let verdict = find_attr(data, NFTA_DATA_VERDICT).unwrap();
        assert_eq!(
            find_attr(verdict, NFTA_VERDICT_CODE),
            Some(&(NFT_GOTO as u32).to_be_bytes()[..])
        );
        assert_eq!(
            find_attr(verdict, NFTA_VERDICT_CHAIN),
            Some(&b"prof/in/x\0"[..])
        );
        // A delete carries only the key; empty changes send nothing.
        let d = elements_batch(
            t,
            &[
                ElementChange {
                    set: "to_pod",
                    add: false,
                    elements: vec![e],
                },
                ElementChange {
                    set: "x",
                    add: true,
                    elements: vec![],
                },
            ],
        );
        assert_eq!(d.len(), 3);
        let list = find_attr(&d[1][20..], NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
        let elem = find_attr(list, NFTA_LIST_ELEM).unwrap();
        assert_eq!(attrs(elem).count(), 1);
    }
}
