//! I/O edge: Twill's policy table in this process's network namespace. Every change (set
//! and dispatch-map elements, counters, sets, chains, rules) goes as one nfnetlink batch,
//! no subprocess ([`ops_messages`], pure, encodes it with `twill_nft::rules`); the first
//! load (and the reload after a refused change) goes as one `nft -f` transaction. Either
//! way one atomic transaction.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use twill_nft::policy::{
    element_messages, key_addr, key_ifname, key_port, key_proto, Element, ElementChange,
    ElementData, ElementTable, TableRef, FAMILY_INET,
};
use twill_nft::rules::{self, NamedSetType, RuleError};
use twill_policy::compile::{DispatchKey, Elem, Ruleset, SetKind, TABLE};
use twill_policy::compile_diff::{delete_script, full_script, ops_script, Op};

/// How a change reached the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyPath {
    /// One nfnetlink batch of element changes.
    Netlink,
    /// One `nft -f` transaction (chains, rules, or the whole table).
    Nft,
}

impl ApplyPath {
    pub fn name(self) -> &'static str {
        match self {
            ApplyPath::Netlink => "netlink",
            ApplyPath::Nft => "nft",
        }
    }
}

/// What one apply did.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub path: ApplyPath,
    /// Encoding the change (the operations as nfnetlink messages, or the script).
    pub encode: Duration,
    /// The kernel's part: from sending the transaction to its answer.
    pub took: Duration,
    pub ops: usize,
}

pub struct Dataplane {
    table: ElementTable,
}

fn elem_key(e: &Elem) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    match e {
        Elem::Addr(a) => key_addr(&mut k, *a),
        Elem::Port(a, p, n) => {
            key_addr(&mut k, *a);
            key_proto(&mut k, *p);
            key_port(&mut k, *n);
        }
    }
    k
}

/// The dispatch maps' key: `ifname . ipv4_addr`.
pub fn dispatch_key((iface, ip): &DispatchKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    key_ifname(&mut k, iface);
    key_addr(&mut k, *ip);
    k
}

/// The element changes of one operation (none for other operations).
fn element_change(op: &Op) -> Option<ElementChange<'_>> {
    [op].into_iter().find_map(|op| {
        Some(match op {
            Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
                ElementChange {
                    set,
                    add: matches!(op, Op::AddElements { .. }),
                    elements: elements
                        .iter()
                        .map(|e| Element {
                            key: elem_key(e),
                            data: ElementData::None,
                        })
                        .collect(),
                }
            }
            Op::AddDispatch { map, elements } => ElementChange {
                set: map,
                add: true,
                elements: elements
                    .iter()
                    .map(|(k, chain)| Element {
                        key: dispatch_key(k),
                        data: ElementData::Goto(chain.clone()),
                    })
                    .collect(),
            },
            Op::DeleteDispatch { map, keys } => ElementChange {
                set: map,
                add: false,
                elements: keys
                    .iter()
                    .map(|k| Element {
                        key: dispatch_key(k),
                        data: ElementData::None,
                    })
                    .collect(),
            },
            _ => return None,
        })
    })
}

const POLICY_TABLE: TableRef<'static> = TableRef {
    family: FAMILY_INET,
    name: TABLE,
};

/// `ops` (in the order [`twill_policy::compile_diff::diff`] gives) as the messages of one
/// nfnetlink transaction, in the same order as [`ops_script`] writes them: deleted chains
/// are flushed first and deleted before the first set or counter goes (or at the end).
/// An error names a rule outside what `twill_nft::rules` encodes.
pub fn ops_messages(ops: &[Op]) -> Result<Vec<Vec<u8>>, RuleError> {
    let t = POLICY_TABLE;
    let mut out = Vec::new();
    let mut deleted: Vec<&str> = Vec::new();
    // Ids of the sets the batch creates (named and anonymous): unique within it.
    let mut id = 1u32;
    for op in ops {
        if let Some(change) = element_change(op) {
            out.extend(element_messages(t, std::slice::from_ref(&change)));
            continue;
        }
        match op {
            Op::AddCounter(c) => out.push(rules::add_counter(t, c)),
            Op::AddSet { name, kind } => {
                let kind = match kind {
                    SetKind::Addr => NamedSetType::Addr,
                    SetKind::NamedPort => NamedSetType::AddrProtoPort,
                };
                out.push(rules::add_set(t, name, kind, id));
                id += 1;
            }
            Op::AddChain(c) => out.push(rules::add_chain(t, c)),
            Op::SetRules { chain, rules: list } => {
                out.push(rules::flush_chain(t, chain));
                for r in list {
                    let rule = rules::parse_rule(r, &mut id)?;
                    out.extend(rules::add_rule(t, chain, &rule));
                }
            }
            Op::DeleteChain(c) => {
                deleted.push(c);
                out.push(rules::flush_chain(t, c));
            }
            Op::DeleteSet(n) => {
                out.extend(deleted.drain(..).map(|c| rules::delete_chain(t, c)));
                out.push(rules::delete_set(t, n));
            }
            Op::DeleteCounter(c) => {
                out.extend(deleted.drain(..).map(|c| rules::delete_chain(t, c)));
                out.push(rules::delete_counter(t, c));
            }
            Op::AddElements { .. }
            | Op::DeleteElements { .. }
            | Op::AddDispatch { .. }
            | Op::DeleteDispatch { .. } => unreachable!("element operations are handled above"),
        }
    }
    out.extend(deleted.drain(..).map(|c| rules::delete_chain(t, c)));
    Ok(out)
}

impl Dataplane {
    /// The table of this process's namespace (it need not exist yet).
    pub fn open() -> Result<Dataplane, twill_nft::Error> {
        Ok(Dataplane {
            table: ElementTable::new(FAMILY_INET, TABLE)?,
        })
    }

    pub fn exists(&mut self) -> Result<bool, twill_nft::Error> {
        self.table.exists()
    }

    /// Replaces whatever table is there by `rs`, atomically.
    pub fn load(&mut self, rs: &Ruleset) -> Result<Applied, twill_nft::Error> {
        let start = Instant::now();
        let script = full_script(rs);
        let encode = start.elapsed();
        let start = Instant::now();
        twill_nft::apply_script(&script)?;
        Ok(Applied {
            path: ApplyPath::Nft,
            encode,
            took: start.elapsed(),
            ops: 1,
        })
    }

    /// Applies `ops` (from [`twill_policy::compile_diff::diff`]) as one transaction: one
    /// nfnetlink batch; `nft -f` only for a rule `twill_nft::rules` cannot encode (a
    /// compiler form it does not know yet: logged, and the change still lands).
    pub fn apply(&mut self, ops: &[Op]) -> Result<Applied, twill_nft::Error> {
        let start = Instant::now();
        let encoded = ops_messages(ops);
        let mut encode = start.elapsed();
        let mut start = Instant::now();
        let path = match encoded {
            Ok(msgs) => {
                self.table.send(msgs)?;
                ApplyPath::Netlink
            }
            Err(e) => {
                super::logfmt::warn("policy: applying this change with nft -f", &[("error", &e)]);
                let script = ops_script(ops);
                encode += start.elapsed();
                start = Instant::now();
                twill_nft::apply_script(&script)?;
                ApplyPath::Nft
            }
        };
        Ok(Applied {
            path,
            encode,
            took: start.elapsed(),
            ops: ops.len(),
        })
    }

    /// The table's drop counters: name → packets.
    pub fn counters(&mut self) -> Result<BTreeMap<String, u64>, twill_nft::Error> {
        Ok(self
            .table
            .counters()?
            .into_iter()
            .map(|(n, p, _)| (n, p))
            .collect())
    }
}

/// Removes the table if it is there (policy off): every pod is open again.
pub fn remove_table() -> Result<bool, twill_nft::Error> {
    let mut t = ElementTable::new(FAMILY_INET, TABLE)?;
    if !t.exists()? {
        return Ok(false);
    }
    twill_nft::apply_script(&delete_script())?;
    Ok(true)
}
