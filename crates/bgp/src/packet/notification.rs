//! NOTIFICATION (RFC 4271 §4.5): its codes, every subcode Twill sends or reads as a named
//! constant (the one definition the FSM and the speaker use), and its codec.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Error code    | Error subcode |   Data (variable)             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::fmt;

use super::wire::Reader;
use super::{ErrorCode, Notification};

/// NOTIFICATION error subcodes, one module per error code (IANA "BGP Error (Notification)
/// Codes" and "BGP Error Subcodes").
pub mod subcode {
    /// Code 1, Message Header Error (RFC 4271 §4.5, §6.1).
    pub mod header {
        /// "Connection Not Synchronized": the marker is not all ones.
        pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
        /// "Bad Message Length": the data is the erroneous Length field.
        pub const BAD_MESSAGE_LENGTH: u8 = 2;
        /// "Bad Message Type": the data is the erroneous Type field.
        pub const BAD_MESSAGE_TYPE: u8 = 3;
    }

    /// Code 2, OPEN Message Error (RFC 4271 §6.2, RFC 5492 §5).
    pub mod open {
        /// No more specific subcode applies (malformed optional parameters or capabilities).
        pub const UNSPECIFIC: u8 = 0;
        /// The data is the largest version this speaker supports, as 2 octets.
        pub const UNSUPPORTED_VERSION: u8 = 1;
        /// The FSM's decision: the AS in the OPEN is not the configured peer AS.
        pub const BAD_PEER_AS: u8 = 2;
        pub const BAD_BGP_IDENTIFIER: u8 = 3;
        pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
        pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
        /// RFC 5492 §5, the FSM's decision: a capability it requires is missing; the data
        /// lists the capabilities.
        pub const UNSUPPORTED_CAPABILITY: u8 = 7;
    }

    /// Code 3, UPDATE Message Error (RFC 4271 §6.3). Under RFC 7606 most of these become
    /// treat-as-withdraw or attribute-discard; they are still sent when a session is reset.
    pub mod update {
        pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
        pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
        pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
        pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
        pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
        pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
        pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
        pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
        pub const INVALID_NETWORK_FIELD: u8 = 10;
        pub const MALFORMED_AS_PATH: u8 = 11;
    }

    /// Code 5, Finite State Machine Error (RFC 6608 §3).
    pub mod fsm {
        pub const UNSPECIFIED: u8 = 0;
        pub const UNEXPECTED_IN_OPEN_SENT: u8 = 1;
        pub const UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
        pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
    }

    /// Code 6, Cease (RFC 4486 §4, RFC 8538 §5 for Hard Reset).
    pub mod cease {
        pub const MAXIMUM_PREFIXES_REACHED: u8 = 1;
        pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
        pub const PEER_DECONFIGURED: u8 = 3;
        pub const ADMINISTRATIVE_RESET: u8 = 4;
        pub const CONNECTION_REJECTED: u8 = 5;
        pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
        pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
        pub const OUT_OF_RESOURCES: u8 = 8;
        pub const HARD_RESET: u8 = 9;
    }

    /// Code 7, ROUTE-REFRESH Message Error (RFC 7313 §5).
    pub mod route_refresh {
        /// The data is the whole ROUTE-REFRESH message received.
        pub const INVALID_MESSAGE_LENGTH: u8 = 1;
    }
}

/// The largest version this speaker supports, as "Unsupported Version Number" data carries it
/// (RFC 4271 §6.2).
pub(crate) const VERSION_DATA: [u8; 2] = [0, super::BGP_VERSION];

impl ErrorCode {
    /// The code octet on the wire.
    pub fn to_u8(self) -> u8 {
        match self {
            ErrorCode::MessageHeader => 1,
            ErrorCode::OpenMessage => 2,
            ErrorCode::UpdateMessage => 3,
            ErrorCode::HoldTimerExpired => 4,
            ErrorCode::FsmError => 5,
            ErrorCode::Cease => 6,
            ErrorCode::RouteRefresh => 7,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_u8(code: u8) -> ErrorCode {
        match code {
            1 => ErrorCode::MessageHeader,
            2 => ErrorCode::OpenMessage,
            3 => ErrorCode::UpdateMessage,
            4 => ErrorCode::HoldTimerExpired,
            5 => ErrorCode::FsmError,
            6 => ErrorCode::Cease,
            7 => ErrorCode::RouteRefresh,
            c => ErrorCode::Other(c),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ErrorCode::MessageHeader => "Message Header Error",
            ErrorCode::OpenMessage => "OPEN Message Error",
            ErrorCode::UpdateMessage => "UPDATE Message Error",
            ErrorCode::HoldTimerExpired => "Hold Timer Expired",
            ErrorCode::FsmError => "Finite State Machine Error",
            ErrorCode::Cease => "Cease",
            ErrorCode::RouteRefresh => "ROUTE-REFRESH Message Error",
            ErrorCode::Other(_) => "unknown error code",
        }
    }
}

impl Notification {
    pub fn new(code: ErrorCode, subcode: u8, data: Vec<u8>) -> Notification {
        Notification {
            code,
            subcode,
            data,
        }
    }

    /// A Cease with no data (RFC 4486), e.g. `Notification::cease(subcode::cease::ADMINISTRATIVE_SHUTDOWN)`.
    pub fn cease(subcode: u8) -> Notification {
        Notification::new(ErrorCode::Cease, subcode, Vec::new())
    }

    /// RFC 4271 §6.5: "Error Subcode ... Unspecific" for Hold Timer Expired is 0.
    pub fn hold_timer_expired() -> Notification {
        Notification::new(ErrorCode::HoldTimerExpired, 0, Vec::new())
    }

    pub(crate) fn header(subcode: u8, data: Vec<u8>) -> Notification {
        Notification::new(ErrorCode::MessageHeader, subcode, data)
    }

    pub(crate) fn open(subcode: u8, data: Vec<u8>) -> Notification {
        Notification::new(ErrorCode::OpenMessage, subcode, data)
    }

    pub(crate) fn update(subcode: u8, data: Vec<u8>) -> Notification {
        Notification::new(ErrorCode::UpdateMessage, subcode, data)
    }

    fn subcode_name(&self) -> Option<&'static str> {
        use subcode::*;
        Some(match (self.code, self.subcode) {
            (ErrorCode::MessageHeader, header::CONNECTION_NOT_SYNCHRONIZED) => {
                "Connection Not Synchronized"
            }
            (ErrorCode::MessageHeader, header::BAD_MESSAGE_LENGTH) => "Bad Message Length",
            (ErrorCode::MessageHeader, header::BAD_MESSAGE_TYPE) => "Bad Message Type",
            (ErrorCode::OpenMessage, open::UNSUPPORTED_VERSION) => "Unsupported Version Number",
            (ErrorCode::OpenMessage, open::BAD_PEER_AS) => "Bad Peer AS",
            (ErrorCode::OpenMessage, open::BAD_BGP_IDENTIFIER) => "Bad BGP Identifier",
            (ErrorCode::OpenMessage, open::UNSUPPORTED_OPTIONAL_PARAMETER) => {
                "Unsupported Optional Parameter"
            }
            (ErrorCode::OpenMessage, open::UNACCEPTABLE_HOLD_TIME) => "Unacceptable Hold Time",
            (ErrorCode::OpenMessage, open::UNSUPPORTED_CAPABILITY) => "Unsupported Capability",
            (ErrorCode::UpdateMessage, update::MALFORMED_ATTRIBUTE_LIST) => {
                "Malformed Attribute List"
            }
            (ErrorCode::UpdateMessage, update::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE) => {
                "Unrecognized Well-known Attribute"
            }
            (ErrorCode::UpdateMessage, update::MISSING_WELL_KNOWN_ATTRIBUTE) => {
                "Missing Well-known Attribute"
            }
            (ErrorCode::UpdateMessage, update::ATTRIBUTE_FLAGS_ERROR) => "Attribute Flags Error",
            (ErrorCode::UpdateMessage, update::ATTRIBUTE_LENGTH_ERROR) => "Attribute Length Error",
            (ErrorCode::UpdateMessage, update::INVALID_ORIGIN_ATTRIBUTE) => {
                "Invalid ORIGIN Attribute"
            }
            (ErrorCode::UpdateMessage, update::INVALID_NEXT_HOP_ATTRIBUTE) => {
                "Invalid NEXT_HOP Attribute"
            }
            (ErrorCode::UpdateMessage, update::OPTIONAL_ATTRIBUTE_ERROR) => {
                "Optional Attribute Error"
            }
            (ErrorCode::UpdateMessage, update::INVALID_NETWORK_FIELD) => "Invalid Network Field",
            (ErrorCode::UpdateMessage, update::MALFORMED_AS_PATH) => "Malformed AS_PATH",
            (ErrorCode::FsmError, fsm::UNEXPECTED_IN_OPEN_SENT) => {
                "Receive Unexpected Message in OpenSent State"
            }
            (ErrorCode::FsmError, fsm::UNEXPECTED_IN_OPEN_CONFIRM) => {
                "Receive Unexpected Message in OpenConfirm State"
            }
            (ErrorCode::FsmError, fsm::UNEXPECTED_IN_ESTABLISHED) => {
                "Receive Unexpected Message in Established State"
            }
            (ErrorCode::Cease, cease::MAXIMUM_PREFIXES_REACHED) => {
                "Maximum Number of Prefixes Reached"
            }
            (ErrorCode::Cease, cease::ADMINISTRATIVE_SHUTDOWN) => "Administrative Shutdown",
            (ErrorCode::Cease, cease::PEER_DECONFIGURED) => "Peer De-configured",
            (ErrorCode::Cease, cease::ADMINISTRATIVE_RESET) => "Administrative Reset",
            (ErrorCode::Cease, cease::CONNECTION_REJECTED) => "Connection Rejected",
            (ErrorCode::Cease, cease::OTHER_CONFIGURATION_CHANGE) => "Other Configuration Change",
            (ErrorCode::Cease, cease::CONNECTION_COLLISION_RESOLUTION) => {
                "Connection Collision Resolution"
            }
            (ErrorCode::Cease, cease::OUT_OF_RESOURCES) => "Out of Resources",
            (ErrorCode::Cease, cease::HARD_RESET) => "Hard Reset",
            (ErrorCode::RouteRefresh, route_refresh::INVALID_MESSAGE_LENGTH) => {
                "Invalid Message Length"
            }
            _ => return None,
        })
    }
}

/// "UPDATE Message Error / Malformed Attribute List (3/1)", for logs and `twill bgp neighbors`.
impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.to_u8();
        match self.subcode_name() {
            Some(sub) => write!(f, "{} / {sub} ({code}/{})", self.code.name(), self.subcode)?,
            None => write!(f, "{} ({code}/{})", self.code.name(), self.subcode)?,
        }
        if !self.data.is_empty() {
            write!(f, ", data")?;
            for b in self.data.iter().take(32) {
                write!(f, " {b:02x}")?;
            }
            if self.data.len() > 32 {
                write!(f, " …")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Notification {}

/// Decodes a NOTIFICATION body (after the header). The header check already guaranteed the
/// two octets (RFC 4271 §4.5: minimum length 21).
pub(crate) fn decode(body: &[u8]) -> Result<Notification, Notification> {
    let mut r = Reader::new(body);
    match (r.u8(), r.u8()) {
        (Some(code), Some(subcode)) => Ok(Notification::new(
            ErrorCode::from_u8(code),
            subcode,
            r.rest().to_vec(),
        )),
        _ => Err(Notification::header(
            subcode::header::BAD_MESSAGE_LENGTH,
            super::header::length_data(body.len() + super::HEADER_LEN),
        )),
    }
}

pub(crate) fn encode(n: &Notification, out: &mut Vec<u8>) {
    out.push(n.code.to_u8());
    out.push(n.subcode);
    out.extend_from_slice(&n.data);
}
