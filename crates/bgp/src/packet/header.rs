//! The message header (RFC 4271 §4.1) and framing of a received byte stream.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                                                               +
//! |                                                               |
//! +                                                               +
//! |                           Marker                              |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length               |      Type     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::notification::subcode::header::*;
use super::wire::Reader;
use super::{MessageType, Notification, HEADER_LEN, MAX_MESSAGE_LEN};

/// RFC 4271 §4.1 "Marker: This 16-octet field is included for compatibility; it MUST be set
/// to all ones."
pub const MARKER: [u8; 16] = [0xff; 16];

/// RFC 4271 §4.2: the smallest OPEN (no optional parameters).
pub const OPEN_MIN_LEN: usize = 29;
/// RFC 4271 §4.3: the smallest UPDATE (both length fields zero).
pub const UPDATE_MIN_LEN: usize = 23;
/// RFC 4271 §4.5: the smallest NOTIFICATION (code and subcode, no data).
pub const NOTIFICATION_MIN_LEN: usize = 21;
/// RFC 4271 §4.4: "A KEEPALIVE message consists of only the message header and has a length
/// of 19 octets."
pub const KEEPALIVE_LEN: usize = 19;
/// RFC 2918 §3: the header plus AFI, reserved, SAFI.
pub const ROUTE_REFRESH_LEN: usize = 23;

impl MessageType {
    pub fn from_u8(t: u8) -> Option<MessageType> {
        Some(match t {
            1 => MessageType::Open,
            2 => MessageType::Update,
            3 => MessageType::Notification,
            4 => MessageType::Keepalive,
            5 => MessageType::RouteRefresh,
            _ => return None,
        })
    }
}

/// The "Bad Message Length" data: "the erroneous Length field" (RFC 4271 §6.1).
pub(crate) fn length_data(len: usize) -> Vec<u8> {
    u16::try_from(len)
        .unwrap_or(u16::MAX)
        .to_be_bytes()
        .to_vec()
}

/// Checks a header and returns the message length and type it declares.
///
/// `buf` needs at least [`HEADER_LEN`] bytes; the caller checks that. The checks run in RFC
/// 4271 §6.1 order: marker, length range, type, then the per-type minimum.
pub(crate) fn check(buf: &[u8]) -> Result<(usize, MessageType), Notification> {
    let mut r = Reader::new(buf);
    let (Some(marker), Some(len), Some(ty)) = (r.array::<16>(), r.u16(), r.u8()) else {
        return Err(Notification::header(
            BAD_MESSAGE_LENGTH,
            length_data(buf.len()),
        ));
    };
    // §6.1: "If at least one of the following is true: - if the Marker field of the message
    // header is not as expected ... the Error Subcode MUST be set to Connection Not
    // Synchronized."
    if marker != MARKER {
        return Err(Notification::header(
            CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
        ));
    }
    let len = usize::from(len);
    let bad_len = || Notification::header(BAD_MESSAGE_LENGTH, length_data(len));
    // §6.1: "if the Length field of the message header is less than 19 or greater than 4096
    // ... the Error Subcode MUST be set to Bad Message Length. The Data field MUST contain
    // the erroneous Length field."
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(bad_len());
    }
    // §6.1: "If the Type field of the message header is not recognized, then the Error
    // Subcode MUST be set to Bad Message Type. The Data field MUST contain the erroneous Type
    // field."
    let Some(kind) = MessageType::from_u8(ty) else {
        return Err(Notification::header(BAD_MESSAGE_TYPE, vec![ty]));
    };
    // §6.1: "if the Length field of an OPEN message is less than the minimum length of the
    // OPEN message, or if the Length field of an UPDATE message is less than the minimum
    // length of the UPDATE message, or if the Length field of a KEEPALIVE message is not
    // equal to 19, or if the Length field of a NOTIFICATION message is less than the minimum
    // length of the NOTIFICATION message, then the Error Subcode MUST be set to Bad Message
    // Length." A ROUTE-REFRESH's length is checked when it is decoded (RFC 7313 §5 gives it
    // its own error, whose data is the whole message).
    let ok = match kind {
        MessageType::Open => len >= OPEN_MIN_LEN,
        MessageType::Update => len >= UPDATE_MIN_LEN,
        MessageType::Notification => len >= NOTIFICATION_MIN_LEN,
        MessageType::Keepalive => len == KEEPALIVE_LEN,
        MessageType::RouteRefresh => true,
    };
    if !ok {
        return Err(bad_len());
    }
    Ok((len, kind))
}

/// The length of the first complete message at the start of `buf`, `Ok(None)` while it is
/// still incomplete, or the NOTIFICATION to send when its header is bad (1/1 marker, 1/2
/// length with the length as data, 1/3 type with the type as data).
///
/// The speaker reads into a buffer, calls this until `Ok(None)`, and hands each
/// `&buf[..len]` to [`super::decode`]. A header error is fatal to the session: the stream can
/// no longer be framed.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, Notification> {
    // The marker is checked as soon as it is all here, so a desynchronized stream is caught
    // without waiting for bytes that may never come.
    if let Some(marker) = buf.get(..MARKER.len()) {
        if marker != MARKER {
            return Err(Notification::header(
                CONNECTION_NOT_SYNCHRONIZED,
                Vec::new(),
            ));
        }
    }
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let (len, _) = check(head)?;
    Ok((buf.len() >= len).then_some(len))
}

/// Appends a header with a placeholder length; [`finish`] fills it in.
pub(crate) fn start(out: &mut Vec<u8>, kind: MessageType) -> usize {
    let at = out.len();
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&[0, 0, kind as u8]);
    at
}

/// Writes the length of the message that starts at `at` into its header. `Err` when it is
/// over [`MAX_MESSAGE_LEN`]; the caller then removes it.
pub(crate) fn finish(out: &mut [u8], at: usize) -> Result<(), usize> {
    let len = out.len().saturating_sub(at);
    if len > MAX_MESSAGE_LEN {
        return Err(len);
    }
    // `len` ≤ 4096 fits.
    super::wire::patch_u16(out, at + MARKER.len(), len as u16);
    Ok(())
}
