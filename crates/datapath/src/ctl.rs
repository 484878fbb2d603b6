//! The control protocol between twilld and the datapath process: pure encode/decode of the
//! messages carried one per `AF_UNIX SOCK_SEQPACKET` message (the socket and SCM_RIGHTS are
//! the server's and the client's business).
//!
//! Every message: the magic `b"TWDP"`, a `u16` wire version ([`VERSION`]), a `u8` message type,
//! then the body. Integers are big-endian; counts, lengths and counters are LEB128 varints
//! (minimal encodings only), so a peer is 4 (node IP) + 2 (port) + 1 (block count, < 128) +
//! 5·k (address, prefix length) bytes: 5,000 peers of one block each are ~60 KB, one message.
//! A `Stats` reply is 4 + 5 varints per peer (9 bytes idle, ~25 busy).
//!
//! | type | message | body |
//! |---|---|---|
//! | 0x01 | `Hello` | proto u16 |
//! | 0x02 | `Table` | generation u64, local (node IP, n, blocks), n peers (node IP, port u16, n, blocks) |
//! | 0x03 | `Stats` | (none) |
//! | 0x04 | `Shutdown` | remove_device u8 (0 or 1) |
//! | 0x05 | `GetTable` | (none) |
//! | 0x06 | `Table` with flags | as 0x02, each peer's port followed by flags u8 |
//! | 0x81 | `HelloAck` | proto u16, pid u32, generation u64, tun str, queues u16, build str |
//! | 0x82 | `TableAck` | generation u64 |
//! | 0x83 | `Stats` | n peers (node IP, rx_packets, rx_bytes, tx_packets, tx_bytes, drops), n drops (code u8, count), gso_fallbacks |
//! | 0x84 | `Error` | str |
//! | 0x85 | `Table` | the table in use, as `Table` carries it (generation 0 and nothing: none yet) |
//! | 0x86 | `Table` with flags | the same, as 0x06 carries it |
//!
//! A peer's flags: bit 0 is [`Checksums::Partial`] ([`crate::partial`]), the others are 0.
//! A table is sent with flags (0x06, 0x86) only when some peer has one, and a flagged table
//! in which none has is refused (so each table has one encoding). A datapath that predates
//! the flags answers a flagged `Table` with `Error` (an unknown type), which the client
//! reports as such: it only gets one when twilld asked for partial checksums, which twilld
//! does only with a datapath of its own build.
//!
//! A str is a varint length and UTF-8. Decoding checks every length against what is left,
//! refuses trailing bytes, unknown types, prefix lengths over 32, non-0/1 booleans and
//! non-minimal varints, so `encode(decode(b)) == b` for every `b` that decodes. `GetTable` came
//! after the first datapaths: one that predates it answers `Error` (an unknown type), so
//! [`PROTO`] stayed (a running datapath is still adopted). Whether a
//! table makes sense (overlaps, ports) is [`crate::table::PeerTable::new`]'s job.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::filter::Drop;
use crate::partial::Checksums;
use crate::stats::{PeerStats, Stats};
use crate::table::{LocalNode, Peer};

/// The magic every message starts with.
pub const MAGIC: [u8; 4] = *b"TWDP";
/// The wire version in every header; a decoder refuses others.
pub const VERSION: u16 = 1;
/// The protocol spoken on top (`Hello{proto}`, `HelloAck{proto}`): twilld adopts a running
/// datapath only when its proto is this one.
pub const PROTO: u16 = 1;
/// Header length: magic, version, type.
pub const HEADER_LEN: usize = 7;

/// twilld → datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Hello {
        proto: u16,
    },
    Table {
        generation: u64,
        local: LocalNode,
        peers: Vec<Peer>,
    },
    Stats,
    Shutdown {
        remove_device: bool,
    },
    /// The table the workers forward with (`lab trace` walks the userspace hop with it).
    GetTable,
}

/// datapath → twilld.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    HelloAck {
        proto: u16,
        pid: u32,
        generation: u64,
        tun: String,
        queues: u16,
        build: String,
    },
    TableAck {
        generation: u64,
    },
    Stats(Stats),
    Error(String),
    /// The table in use: what the last acknowledged `Table` carried.
    Table {
        generation: u64,
        local: LocalNode,
        peers: Vec<Peer>,
    },
}

/// Why bytes are not a message. `what` names the field being read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    #[error("ctl message truncated in {what}: needs {need} more bytes, {have} left")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("not a ctl message: starts with {got:02x?}, not \"TWDP\" (is something else on the socket?)")]
    BadMagic { got: Vec<u8> },
    #[error("ctl wire version {got}, this side speaks {want}: run a matching twilld and datapath")]
    Version { got: u16, want: u16 },
    #[error("unknown ctl {expected} type 0x{code:02x}")]
    UnknownType { code: u8, expected: &'static str },
    #[error("{extra} trailing bytes after a whole {what} message")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what} is {value}, not a boolean (0 or 1)")]
    BadBool { what: &'static str, value: u8 },
    #[error("{what} has prefix length {len}, more than 32")]
    BadPrefix { what: &'static str, len: u8 },
    #[error("{what} is not UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{what} is a malformed varint (longer than needed, or over 64 bits)")]
    BadVarint { what: &'static str },
    #[error("{what} says {count} entries, more than the {have} bytes left can hold")]
    BadCount {
        what: &'static str,
        count: u64,
        have: usize,
    },
    #[error("drop reason code {code} is unknown (a newer datapath?)")]
    UnknownDrop { code: u8 },
    #[error("a peer's flags are 0x{value:02x}: only bit 0 (partial checksums) is defined (a newer twilld?)")]
    BadFlags { value: u8 },
    #[error("a flagged table in which no peer has a flag (it is sent as a plain Table)")]
    NeedlessFlags,
}

const HELLO: u8 = 0x01;
const TABLE: u8 = 0x02;
const STATS: u8 = 0x03;
const SHUTDOWN: u8 = 0x04;
const GET_TABLE: u8 = 0x05;
const HELLO_ACK: u8 = 0x81;
const TABLE_ACK: u8 = 0x82;
const STATS_REPLY: u8 = 0x83;
const ERROR: u8 = 0x84;
const TABLE_REPLY: u8 = 0x85;
/// The flagged forms of `TABLE` and `TABLE_REPLY`: the same body with a flags byte per peer.
const TABLE_FLAGS: u8 = 0x06;
const TABLE_FLAGS_REPLY: u8 = 0x86;
/// Peer flag bit 0: partial checksums.
const FLAG_PARTIAL: u8 = 0x01;

/// The type a table is sent as: flagged only when some peer has a flag.
fn table_kind(plain: u8, flagged: u8, peers: &[Peer]) -> u8 {
    if peers.iter().any(|p| p.checksums != Checksums::Full) {
        flagged
    } else {
        plain
    }
}

/// The body `Table` and the `Table` reply share: generation, local node, peers.
fn write_table(kind: u8, generation: u64, local: &LocalNode, peers: &[Peer]) -> Vec<u8> {
    let size = 8
        + 6
        + 5 * local.blocks.len()
        + peers.iter().map(|p| 10 + 5 * p.blocks.len()).sum::<usize>();
    let flagged = kind == TABLE_FLAGS || kind == TABLE_FLAGS_REPLY;
    let mut w = Writer::new(kind, size);
    w.u64(generation);
    w.ip(local.node_ip);
    w.blocks(&local.blocks);
    w.varint(peers.len() as u64);
    for p in peers {
        w.ip(p.node_ip);
        w.u16(p.port);
        if flagged {
            w.u8(match p.checksums {
                Checksums::Full => 0,
                Checksums::Partial => FLAG_PARTIAL,
            });
        }
        w.blocks(&p.blocks);
    }
    w.0
}

fn read_table(r: &mut Reader<'_>, flagged: bool) -> Result<(u64, LocalNode, Vec<Peer>), CtlError> {
    let generation = r.u64("Table.generation")?;
    let local = LocalNode {
        node_ip: r.ip("Table.local.node_ip")?,
        blocks: r.blocks("Table.local.blocks")?,
    };
    let n = r.count("Table.peers", 7)?;
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        let node_ip = r.ip("Table.peer.node_ip")?;
        let port = r.u16("Table.peer.port")?;
        let checksums = if flagged {
            match r.u8("Table.peer.flags")? {
                0 => Checksums::Full,
                FLAG_PARTIAL => Checksums::Partial,
                value => return Err(CtlError::BadFlags { value }),
            }
        } else {
            Checksums::Full
        };
        peers.push(Peer {
            node_ip,
            port,
            blocks: r.blocks("Table.peer.blocks")?,
            checksums,
        });
    }
    if flagged && peers.iter().all(|p| p.checksums == Checksums::Full) {
        return Err(CtlError::NeedlessFlags);
    }
    Ok((generation, local, peers))
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Hello { proto } => {
                let mut w = Writer::new(HELLO, 2);
                w.u16(*proto);
                w.0
            }
            Request::Table {
                generation,
                local,
                peers,
            } => write_table(
                table_kind(TABLE, TABLE_FLAGS, peers),
                *generation,
                local,
                peers,
            ),
            Request::Stats => Writer::new(STATS, 0).0,
            Request::GetTable => Writer::new(GET_TABLE, 0).0,
            Request::Shutdown { remove_device } => {
                let mut w = Writer::new(SHUTDOWN, 1);
                w.u8(u8::from(*remove_device));
                w.0
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Request, CtlError> {
        let (kind, mut r) = Reader::header(b)?;
        let (what, m) = match kind {
            HELLO => (
                "Hello",
                Request::Hello {
                    proto: r.u16("Hello.proto")?,
                },
            ),
            TABLE | TABLE_FLAGS => {
                let (generation, local, peers) = read_table(&mut r, kind == TABLE_FLAGS)?;
                (
                    "Table",
                    Request::Table {
                        generation,
                        local,
                        peers,
                    },
                )
            }
            STATS => ("Stats", Request::Stats),
            GET_TABLE => ("GetTable", Request::GetTable),
            SHUTDOWN => (
                "Shutdown",
                Request::Shutdown {
                    remove_device: r.bool("Shutdown.remove_device")?,
                },
            ),
            code => {
                return Err(CtlError::UnknownType {
                    code,
                    expected: "request",
                })
            }
        };
        r.end(what)?;
        Ok(m)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::HelloAck {
                proto,
                pid,
                generation,
                tun,
                queues,
                build,
            } => {
                let mut w = Writer::new(HELLO_ACK, 30 + tun.len() + build.len());
                w.u16(*proto);
                w.u32(*pid);
                w.u64(*generation);
                w.str(tun);
                w.u16(*queues);
                w.str(build);
                w.0
            }
            Reply::TableAck { generation } => {
                let mut w = Writer::new(TABLE_ACK, 8);
                w.u64(*generation);
                w.0
            }
            Reply::Stats(s) => {
                let mut w = Writer::new(STATS_REPLY, 16 + 14 * s.peers.len() + 4 * s.drops.len());
                w.varint(s.peers.len() as u64);
                for p in &s.peers {
                    w.ip(p.node_ip);
                    for v in [p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes, p.drops] {
                        w.varint(v);
                    }
                }
                w.varint(s.drops.len() as u64);
                for (d, n) in &s.drops {
                    w.u8(*d as u8);
                    w.varint(*n);
                }
                w.varint(s.gso_fallbacks);
                w.0
            }
            Reply::Error(e) => {
                let mut w = Writer::new(ERROR, 2 + e.len());
                w.str(e);
                w.0
            }
            Reply::Table {
                generation,
                local,
                peers,
            } => write_table(
                table_kind(TABLE_REPLY, TABLE_FLAGS_REPLY, peers),
                *generation,
                local,
                peers,
            ),
        }
    }

    pub fn decode(b: &[u8]) -> Result<Reply, CtlError> {
        let (kind, mut r) = Reader::header(b)?;
        let (what, m) = match kind {
            HELLO_ACK => (
                "HelloAck",
                Reply::HelloAck {
                    proto: r.u16("HelloAck.proto")?,
                    pid: r.u32("HelloAck.pid")?,
                    generation: r.u64("HelloAck.generation")?,
                    tun: r.str("HelloAck.tun")?,
                    queues: r.u16("HelloAck.queues")?,
                    build: r.str("HelloAck.build")?,
                },
            ),
            TABLE_ACK => (
                "TableAck",
                Reply::TableAck {
                    generation: r.u64("TableAck.generation")?,
                },
            ),
            STATS_REPLY => {
                let n = r.count("Stats.peers", 9)?;
                let mut peers = Vec::with_capacity(n);
                for _ in 0..n {
                    peers.push(PeerStats {
                        node_ip: r.ip("Stats.peer.node_ip")?,
                        rx_packets: r.varint("Stats.peer.rx_packets")?,
                        rx_bytes: r.varint("Stats.peer.rx_bytes")?,
                        tx_packets: r.varint("Stats.peer.tx_packets")?,
                        tx_bytes: r.varint("Stats.peer.tx_bytes")?,
                        drops: r.varint("Stats.peer.drops")?,
                    });
                }
                let n = r.count("Stats.drops", 2)?;
                let mut drops = Vec::with_capacity(n);
                for _ in 0..n {
                    let code = r.u8("Stats.drop.reason")?;
                    let d = Drop::from_code(code).ok_or(CtlError::UnknownDrop { code })?;
                    drops.push((d, r.varint("Stats.drop.count")?));
                }
                let gso_fallbacks = r.varint("Stats.gso_fallbacks")?;
                (
                    "Stats",
                    Reply::Stats(Stats {
                        peers,
                        drops,
                        gso_fallbacks,
                    }),
                )
            }
            ERROR => ("Error", Reply::Error(r.str("Error.message")?)),
            TABLE_REPLY | TABLE_FLAGS_REPLY => {
                let (generation, local, peers) = read_table(&mut r, kind == TABLE_FLAGS_REPLY)?;
                (
                    "Table",
                    Reply::Table {
                        generation,
                        local,
                        peers,
                    },
                )
            }
            code => {
                return Err(CtlError::UnknownType {
                    code,
                    expected: "reply",
                })
            }
        };
        r.end(what)?;
        Ok(m)
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8, body: usize) -> Writer {
        let mut v = Vec::with_capacity(HEADER_LEN + body);
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&VERSION.to_be_bytes());
        v.push(kind);
        Writer(v)
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn ip(&mut self, ip: Ipv4Addr) {
        self.0.extend_from_slice(&ip.octets());
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn blocks(&mut self, blocks: &[Ipv4Net]) {
        self.varint(blocks.len() as u64);
        for b in blocks {
            self.ip(b.addr());
            self.u8(b.prefix_len());
        }
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn header(b: &'a [u8]) -> Result<(u8, Reader<'a>), CtlError> {
        let mut r = Reader { rest: b };
        let magic = r.take("header.magic", 4)?;
        if magic != MAGIC {
            return Err(CtlError::BadMagic {
                got: magic.to_vec(),
            });
        }
        let version = r.u16("header.version")?;
        if version != VERSION {
            return Err(CtlError::Version {
                got: version,
                want: VERSION,
            });
        }
        let kind = r.u8("header.type")?;
        Ok((kind, r))
    }

    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], CtlError> {
        if self.rest.len() < n {
            return Err(CtlError::Truncated {
                what,
                need: n,
                have: self.rest.len(),
            });
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CtlError> {
        Ok(self.take(what, N)?.try_into().expect("took N bytes"))
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CtlError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, CtlError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CtlError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, CtlError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    fn ip(&mut self, what: &'static str) -> Result<Ipv4Addr, CtlError> {
        Ok(Ipv4Addr::from(self.array::<4>(what)?))
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, CtlError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CtlError::BadBool { what, value }),
        }
    }
    fn varint(&mut self, what: &'static str) -> Result<u64, CtlError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            // The 10th byte holds bit 63 only; a last byte of 0 (after the first) is a
            // non-minimal encoding.
            if (i == 9 && b > 1) || (i > 0 && b == 0) {
                return Err(CtlError::BadVarint { what });
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CtlError::BadVarint { what })
    }
    /// A count of entries each at least `min` bytes long, checked against what is left (so a
    /// garbage count allocates nothing).
    fn count(&mut self, what: &'static str, min: usize) -> Result<usize, CtlError> {
        let count = self.varint(what)?;
        let have = self.rest.len();
        if count > (have / min) as u64 {
            return Err(CtlError::BadCount { what, count, have });
        }
        Ok(count as usize)
    }
    fn str(&mut self, what: &'static str) -> Result<String, CtlError> {
        let n = self.count(what, 1)?;
        let b = self.take(what, n)?;
        String::from_utf8(b.to_vec()).map_err(|_| CtlError::BadUtf8 { what })
    }
    fn blocks(&mut self, what: &'static str) -> Result<Vec<Ipv4Net>, CtlError> {
        let n = self.count(what, 5)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = self.ip(what)?;
            let len = self.u8(what)?;
            v.push(Ipv4Net::new(addr, len).map_err(|_| CtlError::BadPrefix { what, len })?);
        }
        Ok(v)
    }
    fn end(&self, what: &'static str) -> Result<(), CtlError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CtlError::Trailing {
                what,
                extra: self.rest.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn table_of(peers: usize, blocks: usize) -> Request {
        Request::Table {
            generation: 42,
            local: LocalNode {
                node_ip: "192.0.2.1".parse().unwrap(),
                blocks: vec!["10.0.0.0/24".parse().unwrap()],
            },
            peers: (0..peers as u32)
                .map(|i| Peer {
                    node_ip: Ipv4Addr::from(0xc000_0000 + i + 2),
                    port: 8285,
                    blocks: (0..blocks as u32)
                        .map(|j| {
                            Ipv4Net::new(
                                Ipv4Addr::from(0x0a00_0000 + ((i * blocks as u32 + j + 1) << 8)),
                                24,
                            )
                            .unwrap()
                        })
                        .collect(),
                    checksums: Checksums::Full,
                })
                .collect(),
        }
    }

    /// [`table_of`] with every other peer taking partial checksums (the flagged form).
    fn flagged_table_of(peers: usize, blocks: usize) -> Request {
        let mut t = table_of(peers, blocks);
        if let Request::Table { peers, .. } = &mut t {
            for p in peers.iter_mut().step_by(2) {
                p.checksums = Checksums::Partial;
            }
        }
        t
    }

    fn all_messages() -> (Vec<Request>, Vec<Reply>) {
        let requests = vec![
            Request::Hello { proto: PROTO },
            table_of(3, 2),
            flagged_table_of(3, 2),
            table_of(0, 0),
            Request::Stats,
            Request::GetTable,
            Request::Shutdown {
                remove_device: true,
            },
            Request::Shutdown {
                remove_device: false,
            },
        ];
        let replies = vec![
            Reply::HelloAck {
                proto: PROTO,
                pid: 4242,
                generation: u64::MAX,
                tun: "twl.tun".into(),
                queues: 2,
                build: "twill 0.1 (héllo)".into(),
            },
            Reply::TableAck { generation: 7 },
            Reply::Stats(Stats {
                peers: vec![PeerStats {
                    node_ip: "192.0.2.2".parse().unwrap(),
                    rx_packets: 1,
                    rx_bytes: u64::MAX,
                    tx_packets: 127,
                    tx_bytes: 128,
                    drops: 0,
                }],
                drops: Drop::ALL
                    .iter()
                    .map(|d| (*d, d.index() as u64 * 1000))
                    .collect(),
                gso_fallbacks: 3,
            }),
            Reply::Stats(Stats::default()),
            Reply::Error("table refused: overlap".into()),
        ];
        let mut replies = replies;
        for t in [table_of(3, 2), table_of(0, 0), flagged_table_of(2, 1)] {
            if let Request::Table {
                generation,
                local,
                peers,
            } = t
            {
                replies.push(Reply::Table {
                    generation,
                    local,
                    peers,
                });
            }
        }
        (requests, replies)
    }

    #[test]
    fn every_message_round_trips_and_every_truncation_is_refused() {
        let (requests, replies) = all_messages();
        for m in &requests {
            let b = m.encode();
            assert_eq!(&Request::decode(&b).unwrap(), m);
            for cut in 0..b.len() {
                assert!(Request::decode(&b[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut long = b.clone();
            long.push(0);
            assert!(
                matches!(Request::decode(&long), Err(CtlError::Trailing { .. })),
                "{m:?}"
            );
            assert!(matches!(
                Reply::decode(&b),
                Err(CtlError::UnknownType { .. })
            ));
        }
        for m in &replies {
            let b = m.encode();
            assert_eq!(&Reply::decode(&b).unwrap(), m);
            for cut in 0..b.len() {
                assert!(Reply::decode(&b[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut long = b.clone();
            long.push(0);
            assert!(
                matches!(Reply::decode(&long), Err(CtlError::Trailing { .. })),
                "{m:?}"
            );
            assert!(matches!(
                Request::decode(&b),
                Err(CtlError::UnknownType { .. })
            ));
        }
    }

    /// Every byte of every message set to every value: decodes to something that encodes
    /// back to the same bytes, or is refused; never a panic.
    #[test]
    fn every_single_byte_change_decodes_canonically_or_is_refused() {
        let (requests, replies) = all_messages();
        let mut decoded = 0;
        let mut inputs: Vec<Vec<u8>> = requests.iter().map(Request::encode).collect();
        inputs.extend(replies.iter().map(Reply::encode));
        for b in inputs {
            for i in 0..b.len() {
                for v in 0..=255u8 {
                    let mut m = b.clone();
                    m[i] = v;
                    if let Ok(r) = Request::decode(&m) {
                        assert_eq!(r.encode(), m, "{r:?}");
                        decoded += 1;
                    }
                    if let Ok(r) = Reply::decode(&m) {
                        assert_eq!(r.encode(), m, "{r:?}");
                        decoded += 1;
                    }
                }
            }
        }
        assert!(decoded > 1000, "{decoded}");
    }

    #[test]
    fn a_table_of_5000_peers_is_about_60_kb() {
        let b = table_of(5000, 1).encode();
        assert!(b.len() <= 61_000, "{}", b.len());
        let b5 = table_of(1000, 5).encode();
        assert!(b5.len() <= 40_000, "{}", b5.len());
    }

    #[test]
    fn a_table_is_flagged_only_when_a_peer_takes_partial_checksums() {
        let plain = table_of(2, 1).encode();
        let flagged = flagged_table_of(2, 1).encode();
        assert_eq!((plain[6], flagged[6]), (TABLE, TABLE_FLAGS));
        // One flags byte per peer, after the port.
        assert_eq!(flagged.len(), plain.len() + 2);
        let Request::Table { peers, .. } = Request::decode(&flagged).unwrap() else {
            panic!("not a table");
        };
        let got: Vec<Checksums> = peers.iter().map(|p| p.checksums).collect();
        assert_eq!(got, [Checksums::Partial, Checksums::Full]);
        // The flagged form with no flag set, or an unknown flag bit: refused.
        let mut needless = flagged.clone();
        let first_flags = HEADER_LEN + 8 + 4 + 1 + 5 + 1 + 4 + 2;
        assert_eq!(needless[first_flags], FLAG_PARTIAL);
        needless[first_flags] = 0;
        assert_eq!(Request::decode(&needless), Err(CtlError::NeedlessFlags));
        let mut unknown = flagged;
        unknown[first_flags] = 0x03;
        assert_eq!(
            Request::decode(&unknown),
            Err(CtlError::BadFlags { value: 3 })
        );
    }

    #[test]
    fn refuses_garbage_naming_what_is_wrong() {
        assert_eq!(
            Request::decode(b"TWDQ\0\x01\x03"),
            Err(CtlError::BadMagic {
                got: b"TWDQ".to_vec()
            })
        );
        assert_eq!(
            Request::decode(b"TWDP\0\x02\x03"),
            Err(CtlError::Version { got: 2, want: 1 })
        );
        assert_eq!(
            Request::decode(b"TWDP\0\x01\x09"),
            Err(CtlError::UnknownType {
                code: 9,
                expected: "request"
            })
        );
        assert_eq!(
            Request::decode(b"TWDP\0\x01\x04\x02"),
            Err(CtlError::BadBool {
                what: "Shutdown.remove_device",
                value: 2
            })
        );
        let e = Request::decode(b"TWDP\0\x01\x01\x00").unwrap_err();
        assert_eq!(
            e,
            CtlError::Truncated {
                what: "Hello.proto",
                need: 2,
                have: 1
            }
        );
        assert!(e.to_string().contains("Hello.proto"), "{e}");
        // A huge peer count in a short message allocates nothing.
        let mut b = b"TWDP\0\x01\x02".to_vec();
        b.extend_from_slice(&[0; 8]); // generation
        b.extend_from_slice(&[192, 0, 2, 1, 0]); // local, no blocks
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // 2^32 - 1 peers
        assert!(matches!(
            Request::decode(&b),
            Err(CtlError::BadCount {
                what: "Table.peers",
                ..
            })
        ));
        // Prefix length 33.
        let mut b = b"TWDP\0\x01\x02".to_vec();
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[192, 0, 2, 1, 1, 10, 0, 0, 0, 33, 0]);
        assert_eq!(
            Request::decode(&b),
            Err(CtlError::BadPrefix {
                what: "Table.local.blocks",
                len: 33
            })
        );
        // Non-minimal and overflowing varints.
        assert!(matches!(
            Reply::decode(b"TWDP\0\x01\x84\x80\x00"),
            Err(CtlError::BadVarint { .. })
        ));
        let mut b = b"TWDP\0\x01\x83\x00\x00".to_vec();
        b.extend_from_slice(&[0xff; 9]);
        b.push(0x02);
        assert!(matches!(Reply::decode(&b), Err(CtlError::BadVarint { .. })));
        b.pop();
        b.push(0x01);
        assert_eq!(
            Reply::decode(&b),
            Ok(Reply::Stats(Stats {
                gso_fallbacks: u64::MAX,
                ..Stats::default()
            }))
        );
        assert_eq!(
            Reply::decode(b"TWDP\0\x01\x83\x00\x01\x0a\x00\x00"),
            Err(CtlError::UnknownDrop { code: 10 })
        );
        assert_eq!(
            Reply::decode(b"TWDP\0\x01\x84\x01\xff"),
            Err(CtlError::BadUtf8 {
                what: "Error.message"
            })
        );
    }
}
