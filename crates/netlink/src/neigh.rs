//! Neighbour (ARP) entries and bridge/VXLAN forwarding-database (FDB) entries: the two
//! tables a flannel-style VXLAN overlay fills per remote node. Message builders and parsers
//! are pure; [`Handle`]'s methods send them.

use std::net::Ipv4Addr;

use crate::codec::{self, MessageBuilder};
use crate::codec::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST};
use crate::route::ipv4;
use crate::rtnl::{AF_BRIDGE, AF_INET, RTM_DELNEIGH, RTM_GETNEIGH, RTM_NEWNEIGH};
use crate::{Error, Handle};

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

/// NUD_PERMANENT: never probed, never expires.
pub const NUD_PERMANENT: u16 = 0x80;
/// NUD_NOARP: valid without resolution (the kernel's own entries, e.g. multicast).
pub const NUD_NOARP: u16 = 0x40;
/// NTF_SELF: the FDB entry belongs to the device itself (the VXLAN driver's table), not to
/// a bridge it is a port of.
pub const NTF_SELF: u8 = 0x02;

/// `struct ndmsg` (12 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NdMsg {
    pub family: u8,
    pub index: u32,
    pub state: u16,
    pub flags: u8,
    pub kind: u8,
}

impl NdMsg {
    pub const LEN: usize = 12;
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.family;
        b[4..8].copy_from_slice(&self.index.to_ne_bytes());
        b[8..10].copy_from_slice(&self.state.to_ne_bytes());
        b[10] = self.flags;
        b[11] = self.kind;
        b
    }
    pub fn parse(b: &[u8]) -> Option<NdMsg> {
        let b = b.get(..12)?;
        Some(NdMsg {
            family: b[0],
            index: u32::from_ne_bytes(b[4..8].try_into().ok()?),
            state: u16::from_ne_bytes(b[8..10].try_into().ok()?),
            flags: b[10],
            kind: b[11],
        })
    }
}

/// An IPv4 neighbour entry: `ip neigh replace IP lladdr MAC dev #index nud permanent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: Ipv4Addr,
    /// None for entries still resolving or failed.
    pub mac: Option<[u8; 6]>,
    /// NUD_* bits.
    pub state: u16,
}

/// A forwarding-database entry of a VXLAN device: frames for `mac` go in a UDP packet to
/// `dst` (`bridge fdb replace MAC dev #index dst DST self permanent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: [u8; 6],
    /// The remote VTEP; None for entries without one (a bridge's own MACs).
    pub dst: Option<Ipv4Addr>,
    /// NUD_* bits.
    pub state: u16,
    /// NTF_* bits.
    pub flags: u8,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// RTM_NEWNEIGH (replace) for a permanent IPv4 neighbour entry.
pub fn neighbour_set_message(index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut b = MessageBuilder::new(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE);
    b.header(
        &NdMsg {
            family: AF_INET,
            index,
            state: NUD_PERMANENT,
            ..Default::default()
        }
        .to_bytes(),
    );
    b.attr(NDA_DST, &ip.octets()).attr(NDA_LLADDR, &mac);
    b.build()
}

/// `kind` (a delete or a get) for the one IPv4 neighbour `ip` on link `index`.
fn neighbour_message(kind: u16, index: u32, ip: Ipv4Addr) -> Vec<u8> {
    let mut b = MessageBuilder::new(kind, NLM_F_REQUEST);
    b.header(
        &NdMsg {
            family: AF_INET,
            index,
            ..Default::default()
        }
        .to_bytes(),
    );
    b.attr(NDA_DST, &ip.octets());
    b.build()
}

/// RTM_DELNEIGH for the IPv4 neighbour `ip` on link `index`.
pub fn neighbour_delete_message(index: u32, ip: Ipv4Addr) -> Vec<u8> {
    neighbour_message(RTM_DELNEIGH, index, ip)
}

/// RTM_GETNEIGH for the one IPv4 neighbour `ip` on link `index` (not a dump: the kernel
/// looks it up in its hash, where a dump walks the whole table, which is one table for
/// every network namespace of the machine).
pub fn neighbour_get_message(index: u32, ip: Ipv4Addr) -> Vec<u8> {
    neighbour_message(RTM_GETNEIGH, index, ip)
}

/// RTM_NEWNEIGH (replace) for a permanent FDB entry of the device itself (NTF_SELF).
pub fn fdb_set_message(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Vec<u8> {
    let mut b = MessageBuilder::new(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE);
    b.header(
        &NdMsg {
            family: AF_BRIDGE,
            index,
            state: NUD_PERMANENT,
            flags: NTF_SELF,
            ..Default::default()
        }
        .to_bytes(),
    );
    b.attr(NDA_LLADDR, &mac).attr(NDA_DST, &dst.octets());
    b.build()
}

/// RTM_DELNEIGH for the FDB entry `mac` → `dst` of device `index`.
pub fn fdb_delete_message(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Vec<u8> {
    let mut b = MessageBuilder::new(RTM_DELNEIGH, NLM_F_REQUEST);
    b.header(
        &NdMsg {
            family: AF_BRIDGE,
            index,
            flags: NTF_SELF,
            ..Default::default()
        }
        .to_bytes(),
    );
    b.attr(NDA_LLADDR, &mac).attr(NDA_DST, &dst.octets());
    b.build()
}

fn dump_message(family: u8) -> Vec<u8> {
    let mut b = MessageBuilder::new(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP);
    b.header(
        &NdMsg {
            family,
            ..Default::default()
        }
        .to_bytes(),
    );
    b.build()
}

/// Decodes one RTM_NEWNEIGH of family AF_INET; None for other families or no NDA_DST.
pub fn parse_neighbour(payload: &[u8]) -> Option<Neighbour> {
    let h = NdMsg::parse(payload)?;
    if h.family != AF_INET {
        return None;
    }
    let attrs = &payload[NdMsg::LEN..];
    Some(Neighbour {
        index: h.index,
        ip: codec::find_attr(attrs, NDA_DST).and_then(ipv4)?,
        mac: codec::find_attr(attrs, NDA_LLADDR).and_then(|m| m.try_into().ok()),
        state: h.state,
    })
}

/// Decodes one RTM_NEWNEIGH of family AF_BRIDGE; None for other families or no MAC.
pub fn parse_fdb(payload: &[u8]) -> Option<FdbEntry> {
    let h = NdMsg::parse(payload)?;
    if h.family != AF_BRIDGE {
        return None;
    }
    let attrs = &payload[NdMsg::LEN..];
    Some(FdbEntry {
        index: h.index,
        mac: codec::find_attr(attrs, NDA_LLADDR)?.try_into().ok()?,
        dst: codec::find_attr(attrs, NDA_DST).and_then(ipv4),
        state: h.state,
        flags: h.flags,
    })
}

impl Handle {
    /// Sets (creates or replaces) the permanent neighbour entry `ip` → `mac` on link `index`.
    pub fn set_neighbour(&mut self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), Error> {
        self.ack(
            neighbour_set_message(index, ip, mac),
            format!(
                "set neighbour {ip} lladdr {} on link #{index}",
                format_mac(&mac)
            ),
        )
    }

    /// Deletes the neighbour entry `ip` on link `index`. Missing: [`Error::is_not_found`].
    pub fn delete_neighbour(&mut self, index: u32, ip: Ipv4Addr) -> Result<(), Error> {
        self.ack(
            neighbour_delete_message(index, ip),
            format!("delete neighbour {ip} on link #{index}"),
        )
    }

    /// The IPv4 neighbour entries of link `index`, or of every link.
    pub fn neighbours(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>, Error> {
        let replies = self
            .socket()
            .request(dump_message(AF_INET))
            .map_err(|e| e.context("list neighbours"))?;
        Ok(replies
            .iter()
            .filter_map(|p| parse_neighbour(p))
            .filter(|n| index.is_none_or(|i| i == n.index))
            .collect())
    }

    /// The IPv4 neighbour entry of `ip` on link `index`, if there is one.
    pub fn neighbour(&mut self, index: u32, ip: Ipv4Addr) -> Result<Option<Neighbour>, Error> {
        match self.socket().request(neighbour_get_message(index, ip)) {
            Ok(replies) => Ok(replies.iter().find_map(|p| parse_neighbour(p))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.context(format!("look up neighbour {ip} on link #{index}"))),
        }
    }

    /// Sets (creates or replaces) the permanent FDB entry `mac` → remote `dst` of device
    /// `index` (a VXLAN device).
    pub fn set_fdb(&mut self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), Error> {
        self.ack(
            fdb_set_message(index, mac, dst),
            format!("set fdb {} dst {dst} on link #{index}", format_mac(&mac)),
        )
    }

    /// Deletes the FDB entry `mac` → `dst` of device `index`. Missing: [`Error::is_not_found`].
    pub fn delete_fdb(&mut self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), Error> {
        self.ack(
            fdb_delete_message(index, mac, dst),
            format!("delete fdb {} dst {dst} on link #{index}", format_mac(&mac)),
        )
    }

    /// The FDB entries of device `index`, or of every bridge and VXLAN device.
    pub fn fdb(&mut self, index: Option<u32>) -> Result<Vec<FdbEntry>, Error> {
        let replies = self
            .socket()
            .request(dump_message(AF_BRIDGE))
            .map_err(|e| e.context("list fdb entries"))?;
        Ok(replies
            .iter()
            .filter_map(|p| parse_fdb(p))
            .filter(|n| index.is_none_or(|i| i == n.index))
            .collect())
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x0a, 0x54, 192, 0, 2, 12];

    #[test]
    fn neighbour_set_bytes_and_round_trip() {
        let msg = neighbour_set_message(5, Ipv4Addr::new(10, 244, 2, 0), MAC);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            48, 0, 0, 0,  28, 0,  0x01, 0x05,  0, 0, 0, 0,  0, 0, 0, 0,
            2, 0, 0, 0,  5, 0, 0, 0,  0x80, 0, 0, 0,        // AF_INET, #5, PERMANENT
            8, 0, 1, 0,  10, 244, 2, 0,                     // NDA_DST
            10, 0, 2, 0,  0x0a, 0x54, 192, 0, 2, 12, 0, 0,  // NDA_LLADDR
        ];
        assert_eq!(msg, want);
        assert_eq!(
            parse_neighbour(&msg[16..]),
            Some(Neighbour {
                index: 5,
                ip: Ipv4Addr::new(10, 244, 2, 0),
                mac: Some(MAC),
                state: NUD_PERMANENT,
            })
        );
        assert_eq!(parse_fdb(&msg[16..]), None, "family AF_INET is not FDB");
    }

    #[test]
    fn fdb_set_and_delete_bytes() {
        let msg = fdb_set_message(5, MAC, Ipv4Addr::new(192, 0, 2, 12));
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            48, 0, 0, 0,  28, 0,  0x01, 0x05,  0, 0, 0, 0,  0, 0, 0, 0,
            7, 0, 0, 0,  5, 0, 0, 0,  0x80, 0, 0x02, 0,     // AF_BRIDGE, #5, PERMANENT, SELF
            10, 0, 2, 0,  0x0a, 0x54, 192, 0, 2, 12, 0, 0,  // NDA_LLADDR
            8, 0, 1, 0,  192, 0, 2, 12,                     // NDA_DST
        ];
        assert_eq!(msg, want);
        let entry = parse_fdb(&msg[16..]).unwrap();
        assert_eq!(entry.dst, Some(Ipv4Addr::new(192, 0, 2, 12)));
        assert_eq!(
            (entry.flags, entry.state, entry.mac),
            (NTF_SELF, NUD_PERMANENT, MAC)
        );

        let del = fdb_delete_message(5, MAC, Ipv4Addr::new(192, 0, 2, 12));
        assert_eq!(&del[4..6], &[29, 0]);
        assert_eq!(&del[6..8], &[1, 0], "no create/replace flags on delete");
        assert_eq!(&del[16..28], &[7, 0, 0, 0, 5, 0, 0, 0, 0, 0, 2, 0]);
        let n = neighbour_delete_message(3, Ipv4Addr::new(10, 244, 2, 0));
        assert_eq!(&n[28..36], &[8, 0, 1, 0, 10, 244, 2, 0]);
    }

    #[test]
    fn macs_format_and_parse() {
        assert_eq!(format_mac(&MAC), "0a:54:c0:00:02:0c");
        assert_eq!(parse_mac("0a:54:c0:00:02:0c"), Some(MAC));
        assert_eq!(parse_mac("0a:54:c0:00:02"), None);
        assert_eq!(parse_mac("0a:54:c0:00:02:0c:01"), None);
        assert_eq!(parse_mac("0a:54:c0:00:02:zz"), None);
        assert_eq!(parse_mac("a:54:c0:00:02:0c"), None);
    }

    #[test]
    fn garbage_does_not_parse() {
        assert_eq!(parse_neighbour(&[2, 0, 0]), None);
        assert_eq!(parse_fdb(&[7; 12]), None, "no NDA_LLADDR");
        assert_eq!(NdMsg::parse(&[0; 11]), None);
    }
}
