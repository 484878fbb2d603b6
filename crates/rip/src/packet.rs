//! RIPv2 messages (RFC 2453 §4): the codec. Pure: bytes in, values out, and back.
//!
//! A message is a 4-octet header and 1 to 25 route entries of 20 octets each (§3.6, §4):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  command (1)  |  version (1)  |       must be zero (2)        |
//! +---------------+---------------+-------------------------------+
//! |                                                               |
//! ~                 RIP Entry (20), up to 25 of them              ~
//! |                                                               |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! Each entry (§4, the RIP-2 format):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Address Family Identifier (2) |        Route Tag (2)          |
//! +-------------------------------+-------------------------------+
//! |                         IP Address (4)                        |
//! +---------------------------------------------------------------+
//! |                         Subnet Mask (4)                       |
//! +---------------------------------------------------------------+
//! |                         Next Hop (4)                          |
//! +---------------------------------------------------------------+
//! |                         Metric (4)                            |
//! +---------------------------------------------------------------+
//! ```
//!
//! What is refused and what is skipped:
//! - The whole message is refused ([`DecodeError`]) when it cannot be RIPv2: shorter than a
//!   header, a length that is not a whole number of entries, an unknown command, a version
//!   other than 2 (this speaker is `version 2` only, as FRR's `version 2` is), no entry, more
//!   than 25 entries, or an authentication entry (AFI 0xFFFF first: §5.2 "authenticated
//!   RIP-2 messages shall be discarded" by a router not configured to authenticate).
//! - One entry is skipped ([`Skipped`], with its reason) when it is not a usable IPv4 route:
//!   another address family, a mask that is not contiguous or absent, host bits set past the
//!   mask, a destination that is not unicast (§3.9.2: "not net 0 or 127", multicast, class
//!   E), or, in a Response, a metric outside 1..16 (§3.9.2: "is the metric valid (i.e.,
//!   between 1 and 16, inclusive)"). The rest of the message is used.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// RIP's UDP port (§3.6: "port 520").
pub const PORT: u16 = 520;
/// RIP-2's multicast group (§4.5: "the IP multicast address 224.0.0.9").
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 9);
/// The version this codec speaks.
pub const VERSION: u8 = 2;
/// The metric that means unreachable (§3.4: "infinity ... is 16").
pub const INFINITY: u8 = 16;
/// §3.6: "up to 25 RIP entries".
pub const MAX_ENTRIES: usize = 25;
pub const HEADER_LEN: usize = 4;
pub const ENTRY_LEN: usize = 20;
/// The largest message: a header and 25 entries (504 octets).
pub const MAX_LEN: usize = HEADER_LEN + MAX_ENTRIES * ENTRY_LEN;
/// Address family identifier of IPv4 entries (§3.6: "AFI ... for IP is 2").
pub const AFI_INET: u16 = 2;
/// §5.2: "the Address Family Identifier of the first (and only the first) entry in the
/// message is 0xFFFF" when the message is authenticated.
pub const AFI_AUTH: u16 = 0xFFFF;

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;

/// One route entry of a message (AFI 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// §4.1: "an attribute assigned to a route which must be preserved and readvertised".
    pub tag: u16,
    pub prefix: Ipv4Net,
    /// §4.4: 0.0.0.0 means "via the originator of the RIP advertisement".
    pub next_hop: Ipv4Addr,
    /// 1..=16 in a Response. In a Request the wire value is clamped to 16 (a query's metric
    /// means nothing; an answer fills it in).
    pub metric: u8,
}

/// A RIPv2 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// §3.9.1: "a request to send the entire routing table": exactly one entry, AFI 0, metric
    /// infinity.
    WholeTableRequest,
    /// A request for the listed destinations (a monitor's query): answered entry by entry.
    Request(Vec<Entry>),
    /// Routes: a periodic or triggered update, or the answer to a request.
    Response(Vec<Entry>),
}

/// An entry that was left out, and why (the rest of the message is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Its position in the message, from 0.
    pub index: usize,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("address family {0} is not IPv4 (2)")]
    Family(u16),
    #[error("mask {0} is not contiguous")]
    Mask(Ipv4Addr),
    /// A RIP-1 style entry (mask 0) for something other than the default route: §4.3 leaves
    /// the mask to be guessed from the class, which a classless network cannot do.
    #[error("no mask for {0}")]
    NoMask(Ipv4Addr),
    #[error("{0} has bits set past its mask /{1}")]
    HostBits(Ipv4Addr, u8),
    #[error("{0} is not a unicast destination")]
    Destination(Ipv4Addr),
    #[error("metric {0} is outside 1..16")]
    Metric(u32),
}

/// Why a whole message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} octets is shorter than a RIP header (4)")]
    Short(usize),
    #[error("{0} octets is not a header and whole 20-octet entries")]
    Length(usize),
    #[error("{0} entries: a message carries at most 25")]
    TooManyEntries(usize),
    #[error("no route entry")]
    Empty,
    #[error("command {0} is neither request (1) nor response (2)")]
    Command(u8),
    #[error("version {0}: this speaker talks RIP version 2 only")]
    Version(u8),
    #[error("authenticated message (AFI 0xFFFF first): authentication is not configured, so it is discarded (RFC 2453 §5.2)")]
    Authenticated,
}

/// A decoded message and the entries it had to leave out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub message: Message,
    pub skipped: Vec<Skipped>,
}

impl Message {
    pub fn entries(&self) -> &[Entry] {
        match self {
            Message::WholeTableRequest => &[],
            Message::Request(e) | Message::Response(e) => e,
        }
    }

    /// The message on the wire. Callers keep to [`MAX_ENTRIES`] (see [`responses`]); more
    /// are written as given, and a receiver refuses them.
    pub fn encode(&self) -> Vec<u8> {
        let (command, entries) = match self {
            Message::WholeTableRequest => (REQUEST, &[][..]),
            Message::Request(e) => (REQUEST, &e[..]),
            Message::Response(e) => (RESPONSE, &e[..]),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * entries.len().max(1));
        out.extend_from_slice(&[command, VERSION, 0, 0]);
        if let Message::WholeTableRequest = self {
            // §3.9.1: "exactly one entry ... an address family identifier of zero and a metric
            // of infinity".
            out.extend_from_slice(&[0; 16]);
            out.extend_from_slice(&u32::from(INFINITY).to_be_bytes());
            return out;
        }
        for e in entries {
            out.extend_from_slice(&AFI_INET.to_be_bytes());
            out.extend_from_slice(&e.tag.to_be_bytes());
            out.extend_from_slice(&e.prefix.network().octets());
            out.extend_from_slice(&e.prefix.netmask().octets());
            out.extend_from_slice(&e.next_hop.octets());
            out.extend_from_slice(&u32::from(e.metric).to_be_bytes());
        }
        out
    }
}

/// `entries` as Responses of at most [`MAX_ENTRIES`] each (none for no entries).
pub fn responses(entries: &[Entry]) -> Vec<Message> {
    entries
        .chunks(MAX_ENTRIES)
        .map(|c| Message::Response(c.to_vec()))
        .collect()
}

/// Reads one message (one UDP payload).
pub fn decode(buf: &[u8]) -> Result<Decoded, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Short(buf.len()));
    }
    let body = &buf[HEADER_LEN..];
    if !body.len().is_multiple_of(ENTRY_LEN) {
        return Err(DecodeError::Length(buf.len()));
    }
    let count = body.len() / ENTRY_LEN;
    let command = buf[0];
    if command != REQUEST && command != RESPONSE {
        return Err(DecodeError::Command(command));
    }
    // §4: RIP-2 messages carry version 2. RIP-1 (version 1) is not spoken; §3.6's "version 0
    // messages are to be ignored" holds as well.
    if buf[1] != VERSION {
        return Err(DecodeError::Version(buf[1]));
    }
    // The two octets after the version are "unused" in RIP-2 (§4): not checked.
    if count == 0 {
        return Err(DecodeError::Empty);
    }
    if count > MAX_ENTRIES {
        return Err(DecodeError::TooManyEntries(count));
    }
    let raw: Vec<RawEntry> = body.chunks_exact(ENTRY_LEN).map(RawEntry::read).collect();
    if raw[0].afi == AFI_AUTH {
        return Err(DecodeError::Authenticated);
    }
    // §3.9.1: "If there is exactly one entry in the request, and it has an address family
    // identifier of zero and a metric of infinity (i.e., 16), then this is a request to send
    // the entire routing table."
    if command == REQUEST && count == 1 && raw[0].afi == 0 && raw[0].metric == u32::from(INFINITY) {
        return Ok(Decoded {
            message: Message::WholeTableRequest,
            skipped: Vec::new(),
        });
    }
    let response = command == RESPONSE;
    let mut entries = Vec::with_capacity(count);
    let mut skipped = Vec::new();
    for (index, r) in raw.iter().enumerate() {
        match r.check(response) {
            Ok(e) => entries.push(e),
            Err(reason) => skipped.push(Skipped { index, reason }),
        }
    }
    let message = if response {
        Message::Response(entries)
    } else {
        Message::Request(entries)
    };
    Ok(Decoded { message, skipped })
}

/// An entry as the wire has it, not yet checked.
struct RawEntry {
    afi: u16,
    tag: u16,
    address: Ipv4Addr,
    mask: Ipv4Addr,
    next_hop: Ipv4Addr,
    metric: u32,
}

impl RawEntry {
    fn read(b: &[u8]) -> RawEntry {
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        RawEntry {
            afi: u16_at(0),
            tag: u16_at(2),
            address: Ipv4Addr::from(u32_at(4)),
            mask: Ipv4Addr::from(u32_at(8)),
            next_hop: Ipv4Addr::from(u32_at(12)),
            metric: u32_at(16),
        }
    }

    fn check(&self, response: bool) -> Result<Entry, SkipReason> {
        // §3.9.2 on an unknown family: "the entry ... is ignored" (AFI 0xFFFF past the first
        // entry included: §5.2 allows it only first).
        if self.afi != AFI_INET {
            return Err(SkipReason::Family(self.afi));
        }
        let mask = u32::from(self.mask);
        let len = mask.leading_ones();
        if mask.checked_shl(len).unwrap_or(0) != 0 {
            return Err(SkipReason::Mask(self.mask));
        }
        let len = len as u8; // at most 32
        let address = u32::from(self.address);
        if len == 0 && address != 0 {
            return Err(SkipReason::NoMask(self.address));
        }
        if address & !mask != 0 {
            return Err(SkipReason::HostBits(self.address, len));
        }
        // §3.9.2: "is the destination address valid (e.g., unicast; not net 0 or 127)". The
        // default route (0.0.0.0/0) is the one destination in net 0.
        let [first, ..] = self.address.octets();
        if (first == 0 && len != 0) || first == 127 || first >= 224 {
            return Err(SkipReason::Destination(self.address));
        }
        let metric = if response {
            if !(1..=u32::from(INFINITY)).contains(&self.metric) {
                return Err(SkipReason::Metric(self.metric));
            }
            self.metric as u8
        } else {
            self.metric.min(u32::from(INFINITY)) as u8
        };
        Ok(Entry {
            tag: self.tag,
            prefix: Ipv4Net::new(self.address, len).expect("a length from a 32-bit mask"),
            next_hop: self.next_hop,
            metric,
        })
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} metric {}", self.prefix, self.metric)?;
        if !self.next_hop.is_unspecified() {
            write!(f, " next-hop {}", self.next_hop)?;
        }
        if self.tag != 0 {
            write!(f, " tag {}", self.tag)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
