//! ROUTE-REFRESH (RFC 2918 §3).
//!
//! ```text
//!  0       7      15      23      31
//! +-------+-------+-------+-------+
//! |      AFI      | Res.  | SAFI  |
//! +-------+-------+-------+-------+
//! ```
//!
//! The reserved octet is RFC 7313's Message Subtype; Twill does not announce enhanced route
//! refresh, sends 0 and decodes any value as a plain refresh.
//!
//! RFC 2918 §4: "If a BGP speaker receives from its peer a ROUTE-REFRESH message with the
//! <AFI, SAFI> that the speaker didn't advertise to the peer at the session establishment
//! time via capability advertisement, the speaker shall ignore such a message." That is the
//! FSM's check ([`super::Negotiated::has_family`]); the codec decodes any AFI/SAFI.

use super::notification::subcode::route_refresh::INVALID_MESSAGE_LENGTH;
use super::wire::{put_u16, Reader};
use super::{ErrorCode, Family, Notification, RouteRefresh};

/// Decodes a ROUTE-REFRESH. `msg` is the whole message, header included, because a length
/// error returns it as the NOTIFICATION's data.
pub(crate) fn decode(msg: &[u8]) -> Result<RouteRefresh, Notification> {
    let mut r = Reader::new(msg.get(super::HEADER_LEN..).unwrap_or_default());
    match (r.u16(), r.u8(), r.u8()) {
        // RFC 7313 §5: "If the length, excluding the fixed-size message header, of the
        // received ROUTE-REFRESH message with Message Subtype 1 and 2 is not 4, then the BGP
        // speaker MUST send a NOTIFICATION message with the Error Code of "ROUTE-REFRESH
        // Message Error" and the subcode of "Invalid Message Length". The Data field of the
        // NOTIFICATION message MUST contain the complete ROUTE-REFRESH message." RFC 2918
        // defines no length error, so the same rule is applied to every subtype.
        (Some(afi), Some(_subtype), Some(safi)) if r.is_empty() => Ok(RouteRefresh {
            family: Family::new(afi, safi),
        }),
        _ => Err(Notification::new(
            ErrorCode::RouteRefresh,
            INVALID_MESSAGE_LENGTH,
            msg.to_vec(),
        )),
    }
}

pub(crate) fn encode(rr: &RouteRefresh, out: &mut Vec<u8>) {
    put_u16(out, rr.family.afi.to_u16());
    out.push(0);
    out.push(rr.family.safi.to_u8());
}
