//! Chains, rules, named sets and counters of any table as nfnetlink messages, pure: the
//! part of a policy change that `nft -f` used to carry, so that one change is one
//! nfnetlink batch (BATCH_BEGIN … END, see [`crate::elements::batch`]) and no subprocess.
//!
//! Rules come as the text the policy compiler writes, a closed subset of nft's rule
//! language ([`parse_rule`]), and are encoded as nft 1.0.6 encodes that text (checked by
//! `nft --debug=netlink` and by reading the kernel's tables back, see the tests): the
//! `meta nfproto ipv4` dependency before the first `ip` field, single-element anonymous
//! sets turned into comparisons (a byte-aligned prefix loads only its bytes), anonymous
//! interval sets with their leading `0 [end]` element and merged intervals, registers
//! 1, 9, 10 for a concatenation. Anything outside the subset is refused with
//! [`RuleError`]: the caller then falls back to `nft -f`.
//!
//! The subset:
//! ```text
//! meta mark set meta mark & HEX | meta mark set meta mark | HEX | meta mark & HEX == HEX
//! meta l4proto PROTO | meta l4proto { PROTO, … }
//! ip saddr|daddr [!=] @SET | ip saddr|daddr [!=] { CIDR, … }
//! ip saddr|daddr . meta l4proto . th sport|dport [!=] @SET
//! th sport|dport [!=] N | N-M | { N|N-M, … }
//! counter name NAME | log prefix "TEXT" group N
//! accept | drop | return | jump CHAIN | goto CHAIN
//! ```

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use twill_netlink::codec::{MessageBuilder, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};

use crate::policy::TableRef;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_DELOBJ: u16 = 20;
/// `NLM_F_APPEND`: a new rule goes at the chain's end.
const NLM_F_APPEND: u16 = 0x800;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFT_SET_ANONYMOUS: u32 = 1;
const NFT_SET_CONSTANT: u32 = 2;
const NFT_SET_INTERVAL: u32 = 4;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFT_OBJECT_COUNTER: u32 = 1;

/// nft's datatypes (their ids in NFTA_SET_KEY_TYPE).
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
/// `NFT_REG32_01`, `NFT_REG32_02`: the 4-byte registers after `NFT_REG_1`'s first.
const NFT_REG32_01: u32 = 9;
const NFT_REG32_02: u32 = 10;

const NFT_META_MARK: u32 = 3;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFPROTO_IPV4: u8 = 2;

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }
}

/// `nft_cmp_ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Lte = 3,
    Gte = 5,
}

/// One expression of a rule, in the kernel's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta load KEY => reg DREG`.
    Meta { key: u32, dreg: u32 },
    /// `meta set KEY with reg 1`.
    MetaSet { key: u32 },
    /// `payload load LEN @ BASE + OFFSET => reg DREG`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `cmp OP reg 1 DATA`.
    Cmp { op: CmpOp, data: Vec<u8> },
    /// `bitwise reg 1 = (reg 1 & MASK) ^ XOR`.
    Bitwise { mask: Vec<u8>, xor: Vec<u8> },
    /// `range neq reg 1 FROM TO` (an `!=` range; `==` ranges are two comparisons).
    RangeNeq { from: Vec<u8>, to: Vec<u8> },
    /// `lookup reg 1 set NAME`: a named set, or the anonymous set of the same rule
    /// with that id.
    Lookup { set: SetRef, invert: bool },
    /// `objref type 1 name NAME` (`counter name NAME`).
    Counter(String),
    /// `log prefix TEXT group N`.
    Log { prefix: String, group: u16 },
    /// `immediate reg 0 VERDICT`.
    Verdict(Verdict),
}

/// Which set a lookup reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetRef {
    Named(String),
    /// An anonymous set of the rule, by its batch-unique id.
    Anonymous(u32),
}

/// An anonymous constant set a rule creates (`{ … }` with more than one element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonSet {
    /// Unique within one batch (NFTA_SET_ID).
    pub id: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub interval: bool,
    /// Keys, each with its interval-end flag.
    pub elements: Vec<(Vec<u8>, bool)>,
}

/// One rule: the anonymous sets it needs, then its expressions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub sets: Vec<AnonSet>,
    pub exprs: Vec<Expr>,
}

/// A rule outside the subset this module encodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode the nft rule `{rule}` over netlink ({reason}): only the policy compiler's subset is supported")]
pub struct RuleError {
    pub rule: String,
    pub reason: String,
}

/// The key type of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedSetType {
    /// `ipv4_addr`.
    Addr,
    /// `ipv4_addr . inet_proto . inet_service`.
    AddrProtoPort,
}

impl NamedSetType {
    fn key(self) -> (u32, u32, &'static [u8]) {
        // The user data nft 1.0.6 stores with `type …` (the key's byte order; for the
        // concatenation, its fields' lengths), so `nft list` prints the set as before.
        match self {
            NamedSetType::Addr => (TYPE_IPV4_ADDR, 4, &[0, 4, 2, 0, 0, 0]),
            NamedSetType::AddrProtoPort => (
                (TYPE_IPV4_ADDR << 12) | (TYPE_INET_PROTO << 6) | TYPE_INET_SERVICE,
                12,
                &[0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 0x0d, 0, 0, 0, 1, 0],
            ),
        }
    }
}

fn proto(name: &str) -> Option<u8> {
    Some(match name {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        _ => return None,
    })
}

/// Splits rule text into tokens: a quoted string is one token (without its quotes,
/// marked by a leading `"`), commas separate list items.
fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').ok_or("unterminated string")?;
            out.push(format!("\"{}", &r[..end]));
            rest = r[end + 1..].trim_start();
            continue;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = rest[..end].trim_end_matches(',');
        if !word.is_empty() {
            out.push(word.to_string());
        }
        rest = rest[end..].trim_start();
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<String>,
    at: usize,
    rule: Rule,
    next_id: &'a mut u32,
    /// Whether `meta nfproto ipv4` is in the rule already.
    ipv4: bool,
}

/// An inclusive interval of a field's values, as big-endian numbers.
type Interval = (u64, u64);

impl Parser<'_> {
    fn next(&mut self) -> Result<String, String> {
        let t = self.toks.get(self.at).cloned().ok_or("unexpected end")?;
        self.at += 1;
        Ok(t)
    }
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.at).map(String::as_str)
    }
    fn expect(&mut self, want: &str) -> Result<(), String> {
        let t = self.next()?;
        if t == want {
            Ok(())
        } else {
            Err(format!("expected `{want}`, found `{t}`"))
        }
    }
    fn negated(&mut self) -> bool {
        if self.peek() == Some("!=") {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn push(&mut self, e: Expr) {
        self.rule.exprs.push(e);
    }
    /// The items of `{ a, b, … }` (the `{` already read).
    fn list(&mut self) -> Result<Vec<String>, String> {
        let mut items = Vec::new();
        loop {
            let t = self.next()?;
            if t == "}" {
                return Ok(items);
            }
            items.push(t);
        }
    }

    fn mark_value(&mut self) -> Result<u32, String> {
        let t = self.next()?;
        let hex = t.strip_prefix("0x").ok_or(format!("`{t}` is not hex"))?;
        u32::from_str_radix(hex, 16).map_err(|e| format!("`{t}`: {e}"))
    }

    fn meta(&mut self) -> Result<(), String> {
        match self.next()?.as_str() {
            "mark" => {
                let load = Expr::Meta {
                    key: NFT_META_MARK,
                    dreg: NFT_REG_1,
                };
                if self.peek() == Some("set") {
                    self.at += 1;
                    self.expect("meta")?;
                    self.expect("mark")?;
                    let op = self.next()?;
                    let v = self.mark_value()?;
                    let (mask, xor) = match op.as_str() {
                        "&" => (v, 0),
                        "|" => (!v, v),
                        _ => return Err(format!("mark operator `{op}`")),
                    };
                    self.push(load);
                    self.push(Expr::Bitwise {
                        mask: mask.to_ne_bytes().to_vec(),
                        xor: xor.to_ne_bytes().to_vec(),
                    });
                    self.push(Expr::MetaSet { key: NFT_META_MARK });
                } else {
                    self.expect("&")?;
                    let mask = self.mark_value()?;
                    self.expect("==")?;
                    let v = self.mark_value()?;
                    self.push(load);
                    self.push(Expr::Bitwise {
                        mask: mask.to_ne_bytes().to_vec(),
                        xor: vec![0; 4],
                    });
                    self.push(Expr::Cmp {
                        op: CmpOp::Eq,
                        data: v.to_ne_bytes().to_vec(),
                    });
                }
                Ok(())
            }
            "l4proto" => {
                let neg = self.negated();
                let t = self.next()?;
                let items = if t == "{" { self.list()? } else { vec![t] };
                let protos = items
                    .iter()
                    .map(|p| proto(p).ok_or(format!("protocol `{p}`")))
                    .collect::<Result<Vec<u8>, String>>()?;
                self.push(Expr::Meta {
                    key: NFT_META_L4PROTO,
                    dreg: NFT_REG_1,
                });
                let ranges: Vec<Interval> = protos
                    .iter()
                    .map(|p| (u64::from(*p), u64::from(*p)))
                    .collect();
                self.matches(neg, &ranges, 1, TYPE_INET_PROTO)
            }
            k => Err(format!("meta `{k}`")),
        }
    }

    fn ipv4_dependency(&mut self) {
        if !self.ipv4 {
            self.ipv4 = true;
            self.push(Expr::Meta {
                key: NFT_META_NFPROTO,
                dreg: NFT_REG_1,
            });
            self.push(Expr::Cmp {
                op: CmpOp::Eq,
                data: vec![NFPROTO_IPV4],
            });
        }
    }

    fn ip(&mut self) -> Result<(), String> {
        let field = self.next()?;
        let offset = match field.as_str() {
            "saddr" => 12,
            "daddr" => 16,
            f => return Err(format!("ip `{f}`")),
        };
        self.ipv4_dependency();
        let load = |len| Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len,
            dreg: NFT_REG_1,
        };
        if self.peek() == Some(".") {
            // ip ADDR . meta l4proto . th PORT @set
            self.at += 1;
            self.expect("meta")?;
            self.expect("l4proto")?;
            self.expect(".")?;
            self.expect("th")?;
            let port = self.port_offset()?;
            let neg = self.negated();
            let set = self.named_set()?;
            self.push(load(4));
            self.push(Expr::Meta {
                key: NFT_META_L4PROTO,
                dreg: NFT_REG32_01,
            });
            self.push(Expr::Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: port,
                len: 2,
                dreg: NFT_REG32_02,
            });
            self.push(Expr::Lookup {
                set: SetRef::Named(set),
                invert: neg,
            });
            return Ok(());
        }
        let neg = self.negated();
        let t = self.next()?;
        if let Some(set) = t.strip_prefix('@') {
            self.push(load(4));
            self.push(Expr::Lookup {
                set: SetRef::Named(set.to_string()),
                invert: neg,
            });
            return Ok(());
        }
        let items = if t == "{" { self.list()? } else { vec![t] };
        let nets = items
            .iter()
            .map(|n| {
                n.parse::<Ipv4Net>()
                    .or_else(|_| n.parse::<Ipv4Addr>().map(Ipv4Net::from))
                    .map_err(|_| format!("address `{n}`"))
            })
            .collect::<Result<Vec<Ipv4Net>, String>>()?;
        if let [net] = nets[..] {
            // One prefix: a comparison on the prefix's bytes (nft's way).
            let net = net.trunc();
            let bits = net.prefix_len();
            let op = if neg { CmpOp::Neq } else { CmpOp::Eq };
            let octets = net.network().octets();
            if bits > 0 && bits % 8 == 0 {
                let n = u32::from(bits / 8);
                self.push(load(n));
                self.push(Expr::Cmp {
                    op,
                    data: octets[..n as usize].to_vec(),
                });
            } else {
                self.push(load(4));
                self.push(Expr::Bitwise {
                    mask: net.netmask().octets().to_vec(),
                    xor: vec![0; 4],
                });
                self.push(Expr::Cmp {
                    op,
                    data: octets.to_vec(),
                });
            }
            return Ok(());
        }
        self.push(load(4));
        let ranges: Vec<Interval> = nets
            .iter()
            .map(|n| {
                (
                    u64::from(u32::from(n.network())),
                    u64::from(u32::from(n.broadcast())),
                )
            })
            .collect();
        self.matches(neg, &ranges, 4, TYPE_IPV4_ADDR)
    }

    fn port_offset(&mut self) -> Result<u32, String> {
        match self.next()?.as_str() {
            "sport" => Ok(0),
            "dport" => Ok(2),
            f => Err(format!("th `{f}`")),
        }
    }

    fn named_set(&mut self) -> Result<String, String> {
        let t = self.next()?;
        t.strip_prefix('@')
            .map(str::to_string)
            .ok_or(format!("expected a set reference, found `{t}`"))
    }

    fn th(&mut self) -> Result<(), String> {
        let offset = self.port_offset()?;
        let neg = self.negated();
        let t = self.next()?;
        let items = if t == "{" { self.list()? } else { vec![t] };
        let ranges = items
            .iter()
            .map(|p| {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) if a <= b => Ok((u64::from(a), u64::from(b))),
                    _ => Err(format!("port `{p}`")),
                }
            })
            .collect::<Result<Vec<Interval>, String>>()?;
        self.push(Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset,
            len: 2,
            dreg: NFT_REG_1,
        });
        self.matches(neg, &ranges, 2, TYPE_INET_SERVICE)
    }

    /// Matches the loaded field (`width` bytes in register 1) against `ranges`: one
    /// value or range as comparisons, several as an anonymous set.
    fn matches(
        &mut self,
        neg: bool,
        ranges: &[Interval],
        width: usize,
        key_type: u32,
    ) -> Result<(), String> {
        let bytes = |v: u64| v.to_be_bytes()[8 - width..].to_vec();
        if let [(a, b)] = ranges[..] {
            if a == b {
                self.push(Expr::Cmp {
                    op: if neg { CmpOp::Neq } else { CmpOp::Eq },
                    data: bytes(a),
                });
            } else if neg {
                self.push(Expr::RangeNeq {
                    from: bytes(a),
                    to: bytes(b),
                });
            } else {
                self.push(Expr::Cmp {
                    op: CmpOp::Gte,
                    data: bytes(a),
                });
                self.push(Expr::Cmp {
                    op: CmpOp::Lte,
                    data: bytes(b),
                });
            }
            return Ok(());
        }
        if ranges.is_empty() {
            return Err("an empty set".into());
        }
        let interval = ranges.iter().any(|(a, b)| a != b);
        let mut elements = Vec::new();
        if interval {
            let max = (1u64 << (8 * width)) - 1;
            let mut sorted = ranges.to_vec();
            sorted.sort();
            let mut merged: Vec<Interval> = Vec::new();
            for (a, b) in sorted {
                match merged.last_mut() {
                    Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            if merged[0].0 != 0 {
                elements.push((bytes(0), true));
            }
            for (a, b) in merged {
                elements.push((bytes(a), false));
                if b < max {
                    elements.push((bytes(b + 1), true));
                }
            }
        } else {
            for (a, _) in ranges {
                let k = (bytes(*a), false);
                if !elements.contains(&k) {
                    elements.push(k);
                }
            }
        }
        let id = *self.next_id;
        *self.next_id += 1;
        self.rule.sets.push(AnonSet {
            id,
            key_type,
            key_len: width as u32,
            interval,
            elements,
        });
        self.push(Expr::Lookup {
            set: SetRef::Anonymous(id),
            invert: neg,
        });
        Ok(())
    }

    fn rule(&mut self) -> Result<(), String> {
        while let Some(t) = self.peek().map(str::to_string) {
            self.at += 1;
            match t.as_str() {
                "meta" => self.meta()?,
                "ip" => self.ip()?,
                "th" => self.th()?,
                "counter" => {
                    self.expect("name")?;
                    let name = self.next()?;
                    self.push(Expr::Counter(name));
                }
                "log" => {
                    self.expect("prefix")?;
                    let p = self.next()?;
                    let prefix = p
                        .strip_prefix('"')
                        .ok_or(format!("log prefix `{p}` is not quoted"))?
                        .to_string();
                    self.expect("group")?;
                    let g = self.next()?;
                    let group = g.parse().map_err(|_| format!("log group `{g}`"))?;
                    self.push(Expr::Log { prefix, group });
                }
                "accept" => self.push(Expr::Verdict(Verdict::Accept)),
                "drop" => self.push(Expr::Verdict(Verdict::Drop)),
                "return" => self.push(Expr::Verdict(Verdict::Return)),
                "jump" => {
                    let c = self.next()?;
                    self.push(Expr::Verdict(Verdict::Jump(c)));
                }
                "goto" => {
                    let c = self.next()?;
                    self.push(Expr::Verdict(Verdict::Goto(c)));
                }
                other => return Err(format!("`{other}`")),
            }
        }
        Ok(())
    }
}

/// The rule `text` as expressions (and the anonymous sets it needs, numbered from
/// `*next_set_id`, which it advances).
pub fn parse_rule(text: &str, next_set_id: &mut u32) -> Result<Rule, RuleError> {
    let err = |reason: String| RuleError {
        rule: text.to_string(),
        reason,
    };
    let mut p = Parser {
        toks: tokens(text).map_err(|e| err(e.to_string()))?,
        at: 0,
        rule: Rule::default(),
        next_id: next_set_id,
        ipv4: false,
    };
    p.rule().map_err(err)?;
    Ok(p.rule)
}

fn builder(msg: u16, flags: u16, family: u8) -> MessageBuilder {
    let mut b = MessageBuilder::new((NFNL_SUBSYS_NFTABLES << 8) | msg, flags);
    b.header(&[family, 0, 0, 0]);
    b
}

fn data_value(b: &mut MessageBuilder, kind: u16, data: &[u8]) {
    b.nest_begin_flagged(kind);
    b.attr(NFTA_DATA_VALUE, data);
    b.nest_end();
}

fn expr(b: &mut MessageBuilder, e: &Expr) {
    b.nest_begin_flagged(NFTA_LIST_ELEM);
    let name = match e {
        Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Cmp { .. } => "cmp",
        Expr::Bitwise { .. } => "bitwise",
        Expr::RangeNeq { .. } => "range",
        Expr::Lookup { .. } => "lookup",
        Expr::Counter(_) => "objref",
        Expr::Log { .. } => "log",
        Expr::Verdict(_) => "immediate",
    };
    b.attr_str(NFTA_EXPR_NAME, name);
    b.nest_begin_flagged(NFTA_EXPR_DATA);
    match e {
        Expr::Meta { key, dreg } => {
            b.attr_be32(2, *key); // NFTA_META_KEY
            b.attr_be32(1, *dreg); // NFTA_META_DREG
        }
        Expr::MetaSet { key } => {
            b.attr_be32(2, *key);
            b.attr_be32(3, NFT_REG_1); // NFTA_META_SREG
        }
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            b.attr_be32(1, *dreg); // NFTA_PAYLOAD_DREG
            b.attr_be32(2, *base);
            b.attr_be32(3, *offset);
            b.attr_be32(4, *len);
        }
        Expr::Cmp { op, data } => {
            b.attr_be32(1, NFT_REG_1); // NFTA_CMP_SREG
            b.attr_be32(2, *op as u32);
            data_value(b, 3, data);
        }
        Expr::Bitwise { mask, xor } => {
            b.attr_be32(1, NFT_REG_1); // NFTA_BITWISE_SREG
            b.attr_be32(2, NFT_REG_1); // DREG
            b.attr_be32(3, mask.len() as u32); // LEN
            data_value(b, 4, mask);
            data_value(b, 5, xor);
        }
        Expr::RangeNeq { from, to } => {
            b.attr_be32(1, NFT_REG_1); // NFTA_RANGE_SREG
            b.attr_be32(2, 1); // NFT_RANGE_NEQ
            data_value(b, 3, from);
            data_value(b, 4, to);
        }
        Expr::Lookup { set, invert } => {
            match set {
                SetRef::Named(n) => {
                    b.attr_str(1, n); // NFTA_LOOKUP_SET
                }
                SetRef::Anonymous(id) => {
                    b.attr_str(1, "__set%d");
                    b.attr_be32(4, *id); // NFTA_LOOKUP_SET_ID
                }
            }
            b.attr_be32(2, NFT_REG_1); // NFTA_LOOKUP_SREG
            if *invert {
                b.attr_be32(5, 1); // NFTA_LOOKUP_FLAGS: NFT_LOOKUP_F_INV
            }
        }
        Expr::Counter(name) => {
            b.attr_be32(1, NFT_OBJECT_COUNTER); // NFTA_OBJREF_IMM_TYPE
            b.attr_str(2, name); // NFTA_OBJREF_IMM_NAME
        }
        Expr::Log { prefix, group } => {
            b.attr_be16(1, *group); // NFTA_LOG_GROUP
            b.attr_str(2, prefix); // NFTA_LOG_PREFIX
        }
        Expr::Verdict(v) => {
            b.attr_be32(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
            b.nest_begin_flagged(2); // NFTA_IMMEDIATE_DATA
            b.nest_begin_flagged(NFTA_DATA_VERDICT);
            b.attr_be32(NFTA_VERDICT_CODE, v.code() as u32);
            if let Verdict::Jump(c) | Verdict::Goto(c) = v {
                b.attr_str(NFTA_VERDICT_CHAIN, c);
            }
            b.nest_end();
            b.nest_end();
        }
    }
    b.nest_end();
    b.nest_end();
}

const NEW: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
const DEL: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// `add rule TABLE CHAIN …`: its anonymous sets (set, then elements), then the rule.
pub fn add_rule(table: TableRef<'_>, chain: &str, rule: &Rule) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(1 + 2 * rule.sets.len());
    for s in &rule.sets {
        let mut b = builder(NFT_MSG_NEWSET, NEW, table.family);
        b.attr_str(NFTA_SET_TABLE, table.name);
        b.attr_str(NFTA_SET_NAME, "__set%d");
        let flags =
            NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | if s.interval { NFT_SET_INTERVAL } else { 0 };
        b.attr_be32(NFTA_SET_FLAGS, flags);
        b.attr_be32(NFTA_SET_KEY_TYPE, s.key_type);
        b.attr_be32(NFTA_SET_KEY_LEN, s.key_len);
        b.attr_be32(NFTA_SET_ID, s.id);
        b.nest_begin_flagged(NFTA_SET_DESC);
        b.attr_be32(NFTA_SET_DESC_SIZE, s.elements.len() as u32);
        b.nest_end();
        out.push(b.build());
        let mut b = builder(NFT_MSG_NEWSETELEM, NEW, table.family);
        b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table.name);
        b.attr_str(NFTA_SET_ELEM_LIST_SET, "__set%d");
        b.attr_be32(NFTA_SET_ELEM_LIST_SET_ID, s.id);
        b.nest_begin_flagged(NFTA_SET_ELEM_LIST_ELEMENTS);
        for (key, end) in &s.elements {
            b.nest_begin_flagged(NFTA_LIST_ELEM);
            data_value(&mut b, NFTA_SET_ELEM_KEY, key);
            if *end {
                b.attr_be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
            }
            b.nest_end();
        }
        b.nest_end();
        out.push(b.build());
    }
    let mut b = builder(NFT_MSG_NEWRULE, NEW | NLM_F_APPEND, table.family);
    b.attr_str(NFTA_RULE_TABLE, table.name);
    b.attr_str(NFTA_RULE_CHAIN, chain);
    b.nest_begin_flagged(NFTA_RULE_EXPRESSIONS);
    for e in &rule.exprs {
        expr(&mut b, e);
    }
    b.nest_end();
    out.push(b.build());
    out
}

/// A GETRULE dump request for the rules of one chain (the kernel filters by table and
/// chain; a missing table or chain is ENOENT).
pub fn get_rules_request(table: TableRef<'_>, chain: &str) -> Vec<u8> {
    let mut b = builder(NFT_MSG_GETRULE, NLM_F_REQUEST | NLM_F_ACK, table.family);
    b.attr_str(NFTA_RULE_TABLE, table.name);
    b.attr_str(NFTA_RULE_CHAIN, chain);
    b.build()
}

/// The values a rule compares with (each `cmp` expression's data, e.g. a port's two
/// bytes big-endian), from a NEWRULE message's payload after the netlink header (a
/// GETRULE answer, or what [`add_rule`] builds); empty for anything else.
pub fn rule_cmp_values(payload: &[u8]) -> Vec<Vec<u8>> {
    use twill_netlink::codec::{attrs, find_attr};
    let Some(body) = payload.get(4..) else {
        return Vec::new();
    };
    let Some(exprs) = find_attr(body, NFTA_RULE_EXPRESSIONS) else {
        return Vec::new();
    };
    attrs(exprs)
        .filter(|(k, _)| *k == NFTA_LIST_ELEM)
        .filter(|(_, e)| find_attr(e, NFTA_EXPR_NAME) == Some(&b"cmp\0"[..]))
        .filter_map(|(_, e)| {
            let data = find_attr(e, NFTA_EXPR_DATA)?;
            let value = find_attr(data, 3)?; // NFTA_CMP_DATA
            find_attr(value, NFTA_DATA_VALUE).map(<[u8]>::to_vec)
        })
        .collect()
}

/// `add chain TABLE NAME` (a regular chain).
pub fn add_chain(table: TableRef<'_>, name: &str) -> Vec<u8> {
    let mut b = builder(NFT_MSG_NEWCHAIN, NEW, table.family);
    b.attr_str(NFTA_CHAIN_TABLE, table.name);
    b.attr_str(NFTA_CHAIN_NAME, name);
    b.build()
}

/// `flush chain TABLE NAME`: every rule of the chain goes.
pub fn flush_chain(table: TableRef<'_>, name: &str) -> Vec<u8> {
    let mut b = builder(NFT_MSG_DELRULE, DEL, table.family);
    b.attr_str(NFTA_RULE_TABLE, table.name);
    b.attr_str(NFTA_RULE_CHAIN, name);
    b.build()
}

/// `delete chain TABLE NAME` (it must be empty and unreferenced by then).
pub fn delete_chain(table: TableRef<'_>, name: &str) -> Vec<u8> {
    let mut b = builder(NFT_MSG_DELCHAIN, DEL, table.family);
    b.attr_str(NFTA_CHAIN_TABLE, table.name);
    b.attr_str(NFTA_CHAIN_NAME, name);
    b.build()
}

/// `add set TABLE NAME { type …; }`; `id` must be unique within the batch.
pub fn add_set(table: TableRef<'_>, name: &str, kind: NamedSetType, id: u32) -> Vec<u8> {
    let (key_type, key_len, udata) = kind.key();
    let mut b = builder(NFT_MSG_NEWSET, NEW, table.family);
    b.attr_str(NFTA_SET_TABLE, table.name);
    b.attr_str(NFTA_SET_NAME, name);
    b.attr_be32(NFTA_SET_FLAGS, 0);
    b.attr_be32(NFTA_SET_KEY_TYPE, key_type);
    b.attr_be32(NFTA_SET_KEY_LEN, key_len);
    b.attr_be32(NFTA_SET_ID, id);
    b.attr(NFTA_SET_USERDATA, udata);
    b.build()
}

/// `delete set TABLE NAME`.
pub fn delete_set(table: TableRef<'_>, name: &str) -> Vec<u8> {
    let mut b = builder(NFT_MSG_DELSET, DEL, table.family);
    b.attr_str(NFTA_SET_TABLE, table.name);
    b.attr_str(NFTA_SET_NAME, name);
    b.build()
}

/// `add counter TABLE NAME` (zeroed).
pub fn add_counter(table: TableRef<'_>, name: &str) -> Vec<u8> {
    let mut b = builder(NFT_MSG_NEWOBJ, NEW, table.family);
    b.attr_str(NFTA_OBJ_TABLE, table.name);
    b.attr_str(NFTA_OBJ_NAME, name);
    b.attr_be32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
    b.nest_begin_flagged(NFTA_OBJ_DATA);
    b.attr_be64(NFTA_COUNTER_BYTES, 0);
    b.attr_be64(NFTA_COUNTER_PACKETS, 0);
    b.nest_end();
    b.build()
}

/// `delete counter TABLE NAME`.
pub fn delete_counter(table: TableRef<'_>, name: &str) -> Vec<u8> {
    let mut b = builder(NFT_MSG_DELOBJ, DEL, table.family);
    b.attr_str(NFTA_OBJ_TABLE, table.name);
    b.attr_str(NFTA_OBJ_NAME, name);
    b.attr_be32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_s_comparisons_read_back_from_its_message() {
        let t = TableRef {
            family: crate::policy::FAMILY_INET,
            name: "twill-policy",
        };
        let mut id = 1;
        let r = parse_rule(
            "ip saddr @sel/1 meta l4proto tcp th dport 40007 meta mark set meta mark | 0x00100000 return",
            &mut id,
        )
        .unwrap();
        let msgs = add_rule(t, "np/in/ns0/p0", &r);
        let values = rule_cmp_values(&msgs.last().unwrap()[16..]);
        // nfproto ipv4, l4proto tcp, the port (big-endian).
        assert_eq!(
            values,
            vec![vec![2], vec![6], 40007u16.to_be_bytes().to_vec()]
        );
        assert!(rule_cmp_values(&[0; 3]).is_empty());
        assert!(rule_cmp_values(&add_chain(t, "c")[16..]).is_empty());
        let req = get_rules_request(t, "np/in/ns0/p0");
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), (10 << 8) | 7);
        assert_eq!(
            twill_netlink::codec::find_attr(&req[20..], NFTA_RULE_CHAIN),
            Some(&b"np/in/ns0/p0\0"[..])
        );
    }

    #[test]
    fn intervals_are_merged_with_a_leading_end_and_no_end_past_the_maximum() {
        let mut id = 7;
        let r = parse_rule(
            "ip saddr { 10.9.0.0/16, 10.10.0.0/16, 10.10.1.0/24 } th dport { 65000-65535, 1-2 } accept",
            &mut id,
        )
        .unwrap();
        assert_eq!(id, 9);
        let addr = &r.sets[0];
        assert!(addr.interval && addr.id == 7 && addr.key_len == 4);
        assert_eq!(
            addr.elements,
            vec![
                (vec![0, 0, 0, 0], true),
                (vec![10, 9, 0, 0], false),
                (vec![10, 11, 0, 0], true),
            ]
        );
        let ports = &r.sets[1];
        assert_eq!(
            ports.elements,
            vec![
                (vec![0, 0], true),
                (vec![0, 1], false),
                (vec![0, 3], true),
                (vec![0xfd, 0xe8], false),
            ]
        );
        // One nfproto dependency, before the first ip field.
        assert_eq!(
            r.exprs[..2],
            [
                Expr::Meta {
                    key: NFT_META_NFPROTO,
                    dreg: NFT_REG_1
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data: vec![2]
                }
            ]
        );
        assert_eq!(r.exprs.last(), Some(&Expr::Verdict(Verdict::Accept)));
    }

    #[test]
    fn one_element_sets_become_comparisons() {
        let mut id = 1;
        let r = parse_rule("ip daddr != { 10.1.0.0/20 } th sport != { 90-99 }", &mut id).unwrap();
        assert!(r.sets.is_empty());
        assert_eq!(
            r.exprs[3..],
            [
                Expr::Bitwise {
                    mask: vec![255, 255, 240, 0],
                    xor: vec![0; 4]
                },
                Expr::Cmp {
                    op: CmpOp::Neq,
                    data: vec![10, 1, 0, 0]
                },
                Expr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 0,
                    len: 2,
                    dreg: NFT_REG_1
                },
                Expr::RangeNeq {
                    from: vec![0, 90],
                    to: vec![0, 99]
                },
            ]
        );
    }

    #[test]
    fn text_outside_the_subset_is_refused_with_the_rule() {
        for bad in [
            "ct state established accept",
            "ip saddr",
            "log prefix unquoted group 1",
            "th dport 99-9",
            "meta l4proto gre",
            "log prefix \"open",
        ] {
            let e = parse_rule(bad, &mut 1).unwrap_err();
            assert_eq!(e.rule, bad);
            assert!(e.to_string().contains("cannot encode"), "{e}");
        }
    }
}
