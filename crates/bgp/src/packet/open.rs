//! OPEN (RFC 4271 §4.2) and the capabilities it carries (RFC 5492).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+
//! |    Version    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     My Autonomous System      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Hold Time           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         BGP Identifier                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Opt Parm Len  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |             Optional Parameters (variable)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! Optional parameter:             Capability (RFC 5492 §4), in parameter type 2:
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-  +------------------------------+
//! |  Parm. Type   | Parm. Length  | Capability Code (1 octet)    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-  +------------------------------+
//! |  Parameter Value (variable)   | Capability Length (1 octet)  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-  +------------------------------+
//!                                 | Capability Value (variable)  |
//!                                 +------------------------------+
//! ```
//!
//! Checks that need the configuration are the FSM's, with the constants in
//! [`super::subcode::open`]: a peer AS other than the configured one (2/2), a BGP Identifier
//! equal to ours, and a required capability missing (2/7).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::notification::subcode::open::*;
use super::notification::VERSION_DATA;
use super::wire::{put_u16, put_u32, Reader};
use super::{
    Afi, Capability, EncodeError, Family, GracefulRestart, GracefulRestartFamily, Negotiated,
    Notification, Open, Safi, BGP_VERSION,
};

/// RFC 5492 §4: "Capabilities Optional Parameter (Parameter Type 2)".
const PARAM_CAPABILITIES: u8 = 2;

/// Capability codes (IANA "Capability Codes").
pub mod code {
    /// RFC 4760 §8.
    pub const MULTIPROTOCOL: u8 = 1;
    /// RFC 2918 §2.
    pub const ROUTE_REFRESH: u8 = 2;
    /// RFC 4724 §3.
    pub const GRACEFUL_RESTART: u8 = 64;
    /// RFC 6793 §3.
    pub const FOUR_OCTET_AS: u8 = 65;
}

/// RFC 4724 §3: "Restart State (R): ... the most significant bit" of the Restart Flags.
const GR_RESTART_STATE: u16 = 0x8000;
/// RFC 4724 §3: "Restart Time in seconds" is the low 12 bits.
const GR_TIME_MASK: u16 = 0x0fff;
/// RFC 4724 §3: "Forwarding State (F): ... the most significant bit" of the AFI flags.
const GR_FORWARDING: u8 = 0x80;

impl Afi {
    pub fn from_u16(afi: u16) -> Afi {
        match afi {
            1 => Afi::Ipv4,
            2 => Afi::Ipv6,
            n => Afi::Other(n),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
            Afi::Other(n) => n,
        }
    }
}

impl Safi {
    pub fn from_u8(safi: u8) -> Safi {
        match safi {
            1 => Safi::Unicast,
            n => Safi::Other(n),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Safi::Unicast => 1,
            Safi::Other(n) => n,
        }
    }
}

impl Family {
    pub fn new(afi: u16, safi: u8) -> Family {
        Family {
            afi: Afi::from_u16(afi),
            safi: Safi::from_u8(safi),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Family::IPV4_UNICAST => write!(f, "ipv4-unicast"),
            Family::IPV6_UNICAST => write!(f, "ipv6-unicast"),
            _ => write!(f, "afi {} safi {}", self.afi.to_u16(), self.safi.to_u8()),
        }
    }
}

impl Negotiated {
    /// What two OPENs agree on: four-octet AS numbers when both sent the capability (RFC 6793
    /// §3); the families both announced with the multiprotocol capability, a side that sent
    /// none counting as IPv4 unicast only (RFC 4760 §8, RFC 4271); iBGP when both name the
    /// same AS (RFC 4271 §3).
    pub fn new(local: &Open, remote: &Open) -> Negotiated {
        let families = |o: &Open| -> BTreeSet<Family> {
            let mp: BTreeSet<Family> = o
                .capabilities
                .iter()
                .filter_map(|c| match c {
                    Capability::Multiprotocol(f) => Some(*f),
                    _ => None,
                })
                .collect();
            if mp.is_empty() {
                BTreeSet::from([Family::IPV4_UNICAST])
            } else {
                mp
            }
        };
        let theirs = families(remote);
        let has_four = |o: &Open| {
            o.capabilities
                .iter()
                .any(|c| matches!(c, Capability::FourOctetAs(_)))
        };
        Negotiated {
            four_octet_as: has_four(local) && has_four(remote),
            families: families(local).intersection(&theirs).copied().collect(),
            ibgp: local.asn() == remote.asn(),
        }
    }

    /// Whether routes of `family` may be exchanged on this session.
    pub fn has_family(&self, family: Family) -> bool {
        self.families.contains(&family)
    }
}

/// Decodes an OPEN body (after the 19-octet header; the header check guaranteed ≥ 10 octets).
pub(crate) fn decode(body: &[u8]) -> Result<Open, Notification> {
    let mut r = Reader::new(body);
    let (Some(version), Some(my_as), Some(hold_time), Some(router_id), Some(opt_len)) =
        (r.u8(), r.u16(), r.u16(), r.ipv4(), r.u8())
    else {
        return Err(Notification::open(UNSPECIFIC, Vec::new()));
    };
    // RFC 4271 §6.2: "If the version number in the Version field of the received OPEN message
    // is not supported, then the Error Subcode MUST be set to Unsupported Version Number. The
    // Data field is a 2-octet unsigned integer, which indicates the largest, locally-
    // supported version number less than the version the remote BGP peer bid".
    if version != BGP_VERSION {
        return Err(Notification::open(
            UNSUPPORTED_VERSION,
            VERSION_DATA.to_vec(),
        ));
    }
    // RFC 4271 §6.2: "An implementation MUST reject Hold Time values of one or two seconds."
    if hold_time == 1 || hold_time == 2 {
        return Err(Notification::open(UNACCEPTABLE_HOLD_TIME, Vec::new()));
    }
    // RFC 6286 §2.1: "the BGP Identifier ... a 4-octet, unsigned, non-zero integer"; RFC 4271
    // §6.2: "If the BGP Identifier field of the OPEN message is syntactically incorrect, then
    // the Error Subcode MUST be set to Bad BGP Identifier."
    if router_id == Ipv4Addr::UNSPECIFIED {
        return Err(Notification::open(BAD_BGP_IDENTIFIER, Vec::new()));
    }
    // The optional parameters must fill the rest of the message exactly.
    let params = match r.take(usize::from(opt_len)) {
        Some(p) if r.is_empty() => p,
        _ => return Err(Notification::open(UNSPECIFIC, Vec::new())),
    };
    let mut capabilities = Vec::new();
    let mut pr = Reader::new(params);
    while !pr.is_empty() {
        let (Some(ty), Some(len)) = (pr.u8(), pr.u8()) else {
            return Err(Notification::open(UNSPECIFIC, Vec::new()));
        };
        let Some(value) = pr.take(usize::from(len)) else {
            return Err(Notification::open(UNSPECIFIC, Vec::new()));
        };
        // RFC 4271 §6.2: "If one of the Optional Parameters in the OPEN message is not
        // recognized, then the Error Subcode MUST be set to Unsupported Optional
        // Parameters." Type 2 (capabilities) is the only one still defined; RFC 9072's
        // extended parameters (type 255) are not announced by Twill, so land here too.
        if ty != PARAM_CAPABILITIES {
            return Err(Notification::open(
                UNSUPPORTED_OPTIONAL_PARAMETER,
                Vec::new(),
            ));
        }
        decode_capabilities(value, &mut capabilities)?;
    }
    Ok(Open {
        version,
        my_as,
        hold_time,
        router_id,
        capabilities,
    })
}

/// Decodes the capabilities of one Capabilities parameter into `out`. A capability Twill
/// knows but with a value of the wrong size is 2/0: RFC 5492 defines no subcode for it (BIRD
/// sends the same).
fn decode_capabilities(value: &[u8], out: &mut Vec<Capability>) -> Result<(), Notification> {
    let bad = || Notification::open(UNSPECIFIC, Vec::new());
    let mut r = Reader::new(value);
    while !r.is_empty() {
        let (Some(code), Some(len)) = (r.u8(), r.u8()) else {
            return Err(bad());
        };
        let v = r.take(usize::from(len)).ok_or_else(bad)?;
        out.push(decode_capability(code, v).ok_or_else(bad)?);
    }
    Ok(())
}

/// One capability's value, `None` when its length is wrong for its code.
fn decode_capability(code: u8, v: &[u8]) -> Option<Capability> {
    let mut r = Reader::new(v);
    let cap = match code {
        // RFC 4760 §8:
        //  0       7      15      23      31
        // +-------+-------+-------+-------+
        // |      AFI      | Res.  | SAFI  |
        // +-------+-------+-------+-------+
        code::MULTIPROTOCOL => {
            let (afi, _res, safi) = (r.u16()?, r.u8()?, r.u8()?);
            Capability::Multiprotocol(Family::new(afi, safi))
        }
        // RFC 2918 §2: "Capability Length field: 0".
        code::ROUTE_REFRESH => Capability::RouteRefresh,
        // RFC 4724 §3:
        // +--------------------------------------------------+
        // | Restart Flags (4 bits)                           |
        // +--------------------------------------------------+
        // | Restart Time in seconds (12 bits)                |
        // +--------------------------------------------------+
        // | Address Family Identifier (16 bits)              |
        // +--------------------------------------------------+
        // | Subsequent Address Family Identifier (8 bits)    |
        // +--------------------------------------------------+
        // | Flags for Address Family (8 bits)                |
        // +--------------------------------------------------+
        // | ...                                              |
        code::GRACEFUL_RESTART => {
            let flags_time = r.u16()?;
            let mut families = Vec::new();
            while !r.is_empty() {
                let (afi, safi, flags) = (r.u16()?, r.u8()?, r.u8()?);
                families.push(GracefulRestartFamily {
                    family: Family::new(afi, safi),
                    forwarding_preserved: flags & GR_FORWARDING != 0,
                });
            }
            Capability::GracefulRestart(GracefulRestart {
                restarting: flags_time & GR_RESTART_STATE != 0,
                restart_time: flags_time & GR_TIME_MASK,
                families,
            })
        }
        // RFC 6793 §3: "the Capability Value field contains the four-octet AS number".
        code::FOUR_OCTET_AS => Capability::FourOctetAs(r.u32()?),
        _ => {
            return Some(Capability::Unknown {
                code,
                value: v.to_vec(),
            })
        }
    };
    r.is_empty().then_some(cap)
}

/// Appends an OPEN body. Capabilities go into as few Capabilities parameters as fit 255
/// octets each (RFC 5492 §4 allows one or many).
pub(crate) fn encode(open: &Open, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(open.version);
    put_u16(out, open.my_as);
    put_u16(out, open.hold_time);
    out.extend_from_slice(&open.router_id.octets());
    let opt_len_at = out.len();
    out.push(0);
    let mut cap = Vec::new();
    let mut param_at: Option<usize> = None;
    for c in &open.capabilities {
        cap.clear();
        encode_capability(c, &mut cap)?;
        let at = match param_at {
            Some(at) if out.len() - at - 2 + cap.len() <= 255 => at,
            _ => {
                out.push(PARAM_CAPABILITIES);
                out.push(0);
                out.len() - 2
            }
        };
        param_at = Some(at);
        out.extend_from_slice(&cap);
        out[at + 1] = (out.len() - at - 2) as u8;
    }
    let opt_len = out.len() - opt_len_at - 1;
    out[opt_len_at] = u8::try_from(opt_len)
        .map_err(|_| EncodeError::OptionalParametersTooLong { len: opt_len })?;
    Ok(())
}

/// Appends one capability, code, length and value (RFC 5492 §4); also the data of a
/// NOTIFICATION 2/7 that names a capability (RFC 5492 §5).
pub(crate) fn encode_capability(cap: &Capability, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let code = match cap {
        Capability::Multiprotocol(_) => code::MULTIPROTOCOL,
        Capability::RouteRefresh => code::ROUTE_REFRESH,
        Capability::GracefulRestart(_) => code::GRACEFUL_RESTART,
        Capability::FourOctetAs(_) => code::FOUR_OCTET_AS,
        Capability::Unknown { code, .. } => *code,
    };
    out.push(code);
    out.push(0);
    match cap {
        Capability::Multiprotocol(f) => {
            put_u16(out, f.afi.to_u16());
            out.push(0);
            out.push(f.safi.to_u8());
        }
        Capability::RouteRefresh => {}
        Capability::GracefulRestart(gr) => {
            let mut flags_time = gr.restart_time & GR_TIME_MASK;
            if gr.restarting {
                flags_time |= GR_RESTART_STATE;
            }
            put_u16(out, flags_time);
            for f in &gr.families {
                put_u16(out, f.family.afi.to_u16());
                out.push(f.family.safi.to_u8());
                out.push(if f.forwarding_preserved {
                    GR_FORWARDING
                } else {
                    0
                });
            }
        }
        Capability::FourOctetAs(asn) => put_u32(out, *asn),
        Capability::Unknown { value, .. } => out.extend_from_slice(value),
    }
    let len = out.len() - 2;
    // One octet of capability length, and the parameter holding it has one octet too.
    out[1] = u8::try_from(len)
        .ok()
        .filter(|&l| l <= 253)
        .ok_or(EncodeError::CapabilityTooLong { code, len })?;
    Ok(())
}
