//! The OPEN exchange: the OPEN this speaker sends, the checks on the peer's (RFC 4271 §6.2,
//! RFC 6286, RFC 6793), and what the two OPENs negotiate (RFC 4760, RFC 6793, RFC 2918,
//! RFC 4724).

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::packet::notification::VERSION_DATA;
use crate::packet::open::encode_capability;
use crate::packet::{
    subcode, Capability, ErrorCode, GracefulRestart, GracefulRestartFamily, Negotiated,
    Notification, Open, AS_TRANS, BGP_VERSION,
};

use super::SessionConfig;

/// The OPEN this speaker sends on every connection of the session.
pub(super) fn ours(config: &SessionConfig, restarting: bool) -> Open {
    // RFC 6793 §4.1, in substance: a speaker whose AS number does not fit in two octets
    // puts AS_TRANS in "My Autonomous System" and its real AS in the capability.
    let my_as = u16::try_from(config.local_as).unwrap_or(AS_TRANS);
    let mut capabilities: Vec<Capability> = config
        .families
        .iter()
        // RFC 4760 §8: "A BGP speaker that uses Multiprotocol Extensions SHOULD use the
        // Capability Advertisement procedures ... to determine whether the speaker could use
        // Multiprotocol Extensions with a particular peer."
        .map(|f| Capability::Multiprotocol(*f))
        .collect();
    if config.route_refresh {
        // RFC 2918 §2: "A BGP speaker that is willing to receive the ROUTE-REFRESH message
        // from its peer SHOULD advertise the Route Refresh Capability to the peer".
        capabilities.push(Capability::RouteRefresh);
    }
    // RFC 6793 §3: "A BGP speaker that supports four-octet Autonomous System numbers SHOULD
    // advertise this to its peers using BGP Capabilities Advertisement".
    capabilities.push(Capability::FourOctetAs(config.local_as));
    if let Some(gr) = &config.graceful_restart {
        capabilities.push(Capability::GracefulRestart(GracefulRestart {
            // RFC 4724 §4.2: "the 'Restart State' bit ... MUST NOT be set unless the
            // [speaker] has restarted."
            restarting,
            restart_time: gr.restart_time,
            families: config
                .families
                .iter()
                .map(|f| GracefulRestartFamily {
                    family: *f,
                    // RFC 4724 §3: "When set (value 1), the bit indicates that the forwarding
                    // state has been preserved."
                    forwarding_preserved: gr.forwarding_preserved,
                })
                .collect(),
        }));
    }
    Open {
        version: BGP_VERSION,
        my_as,
        hold_time: config.hold_time,
        router_id: config.router_id,
        capabilities,
    }
}

fn open_error(sub: u8, data: Vec<u8>) -> Notification {
    Notification::new(ErrorCode::OpenMessage, sub, data)
}

/// RFC 4271 §6.2 OPEN message error handling, with RFC 6286 for the identifier. `Err` is the
/// NOTIFICATION to send before closing the connection.
pub(super) fn check(config: &SessionConfig, open: &Open) -> Result<(), Notification> {
    if open.version != BGP_VERSION {
        // §6.2: "If the version number in the Version field of the received OPEN message is
        // not supported, then the Error Subcode MUST be set to Unsupported Version Number. The
        // Data field is a 2-octet unsigned integer, which indicates the largest, locally-
        // supported version number less than the version the remote BGP peer bid".
        return Err(open_error(
            subcode::open::UNSUPPORTED_VERSION,
            VERSION_DATA.to_vec(),
        ));
    }
    if open.asn() != config.peer_as {
        // §6.2: "If the Autonomous System field of the OPEN message is unacceptable, then the
        // Error Subcode MUST be set to Bad Peer AS."
        return Err(open_error(subcode::open::BAD_PEER_AS, Vec::new()));
    }
    // RFC 6286 §2.2: "If the BGP Identifier field of the OPEN message is zero, or if it is
    // the same as the BGP Identifier of the local BGP speaker and the message is from an
    // internal peer, then the Error Subcode is set to 'Bad BGP Identifier'."
    let internal = config.peer_as == config.local_as;
    if open.router_id == Ipv4Addr::UNSPECIFIED || (internal && open.router_id == config.router_id) {
        return Err(open_error(subcode::open::BAD_BGP_IDENTIFIER, Vec::new()));
    }
    // §6.2: "If the Hold Time field of the OPEN message is unacceptable, then the Error
    // Subcode MUST be set to Unacceptable Hold Time. An implementation MUST reject Hold Time
    // values of one or two seconds."
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(open_error(
            subcode::open::UNACCEPTABLE_HOLD_TIME,
            Vec::new(),
        ));
    }
    Ok(())
}

/// A session that would carry no address family at all is refused: RFC 5492 §5, "If a BGP
/// speaker that supports a certain capability determines that its peer doesn't support this
/// capability, the speaker MAY send a NOTIFICATION message to the peer and terminate peering
/// ... The Error Subcode in the message is set to Unsupported Capability. The message MUST
/// contain the capability or capabilities that causes the speaker to send the message." The
/// data is our multiprotocol capabilities, so both sides' logs say which families to align.
pub(super) fn check_families(ours: &Open, negotiated: &Negotiated) -> Result<(), Notification> {
    if !negotiated.families.is_empty() {
        return Ok(());
    }
    let mut data = Vec::new();
    for c in &ours.capabilities {
        if matches!(c, Capability::Multiprotocol(_)) {
            // A multiprotocol capability is 6 octets: it always encodes.
            let _ = encode_capability(c, &mut data);
        }
    }
    Err(open_error(subcode::open::UNSUPPORTED_CAPABILITY, data))
}

/// The peer's graceful restart capability, if it sent one.
pub(super) fn peer_graceful_restart(peer: &Open) -> Option<&GracefulRestart> {
    peer.capabilities.iter().find_map(|c| match c {
        Capability::GracefulRestart(gr) => Some(gr),
        _ => None,
    })
}

/// Whether the peer advertised route refresh (RFC 2918 §2).
pub(super) fn peer_route_refresh(peer: &Open) -> bool {
    peer.capabilities
        .iter()
        .any(|c| matches!(c, Capability::RouteRefresh))
}

/// RFC 4271 §4.2: "Upon receipt of an OPEN message, a BGP speaker MUST calculate the value
/// of the Hold Timer by using the smaller of its configured Hold Time and the Hold Time
/// received in the OPEN message."
pub(super) fn hold_time(config: &SessionConfig, peer: &Open) -> u16 {
    config.hold_time.min(peer.hold_time)
}

/// The keepalive interval for a negotiated hold time (not 0): RFC 4271 §4.4 "A reasonable
/// maximum time between KEEPALIVE messages would be one third of the Hold Time interval", and
/// a configured interval only when it is shorter, so that a peer that asked for a smaller
/// hold time than ours never runs out between two KEEPALIVEs.
pub(super) fn keepalive_interval(config: &SessionConfig, hold: u16) -> Duration {
    let third = u64::from(hold / 3).max(1);
    let secs = match config.keepalive {
        Some(k) if k > 0 => u64::from(k).min(third),
        _ => third,
    };
    Duration::from_secs(secs)
}
