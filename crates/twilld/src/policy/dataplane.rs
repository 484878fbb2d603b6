//! I/O edge: Twill's policy table in this process's network namespace. A change that only
//! moves set or dispatch-map elements (a pod joining or leaving, a label) goes as one
//! nfnetlink batch, no subprocess; a change that touches chains or rules (a policy) and the
//! first load go as one `nft -f` transaction. Either way one atomic transaction.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use twill_nft::policy::{
    key_addr, key_ifname, key_port, key_proto, Element, ElementChange, ElementData, ElementTable,
    FAMILY_INET,
};
use twill_policy::compile::{DispatchKey, Elem, Ruleset, TABLE};
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

/// The element changes of `ops` (which must all be element operations), in order.
fn element_changes(ops: &[Op]) -> Vec<ElementChange<'_>> {
    ops.iter()
        .filter_map(|op| {
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
        .collect()
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
        twill_nft::apply_script(&full_script(rs))?;
        Ok(Applied {
            path: ApplyPath::Nft,
            took: start.elapsed(),
            ops: 1,
        })
    }

    /// Applies `ops` (from [`twill_policy::compile_diff::diff`]) as one transaction.
    pub fn apply(&mut self, ops: &[Op]) -> Result<Applied, twill_nft::Error> {
        let start = Instant::now();
        let path = if ops.iter().all(Op::is_elements) {
            self.table.apply(&element_changes(ops))?;
            ApplyPath::Netlink
        } else {
            twill_nft::apply_script(&ops_script(ops))?;
            ApplyPath::Nft
        };
        Ok(Applied {
            path,
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
