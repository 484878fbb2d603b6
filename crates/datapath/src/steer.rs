//! Which TUN queue an arriving packet is written into: the same queue for both directions of
//! a flow, whichever worker received it. Pure.
//!
//! Why: the kernel sends a flow's outgoing packets to the TUN queue that last *wrote* a
//! packet of that flow (tun.c `tun_automq_select_queue`: "the queue of the flow entry",
//! which `tun_get_user` updates with `tun_flow_update` on every write, keyed by
//! `__skb_get_hash_symmetric`). If each worker wrote into its own queue, the queue a flow's
//! data leaves by would follow whichever worker received its last ACK; that worker is picked
//! by the receive socket's `SO_REUSEPORT` hash of the *outer* ports, i.e. of the far worker
//! that sent the ACK. Two nodes of two workers each then pass a flow back and forth between
//! queues, its segments leave by two workers at once and arrive out of order (measured: a
//! single iperf3 stream, 2 queues per node, 58,418 out-of-order segments queued by the
//! receiver and 52,954 retransmissions in 8 s). Writing every packet into the queue its own
//! flow hashes to pins the flow to one queue, hence one worker and one outer source port,
//! hence one receive socket on the far side: in order end to end.
//!
//! The hash is symmetric (the two endpoints sorted), so the far node, computing it on the
//! reply direction, picks the same index. Until the first packet of a flow is written (its
//! first outgoing packet, e.g. a SYN) the kernel picks a queue by its own hash; the flow
//! moves to ours with the first reply, when nothing of it is in flight.

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_SCTP: u8 = 132;

/// The queue (0..queues) for an IPv4 packet `pkt` (starting at its IP header). Anything
/// that is not an IPv4 packet with a whole header goes to queue 0; fragments and protocols
/// without ports hash on the addresses only, so all fragments of a datagram stay together.
pub fn queue(pkt: &[u8], queues: usize) -> usize {
    if queues <= 1 || pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return 0;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let proto = pkt[9];
    let src = u32::from_be_bytes([pkt[12], pkt[13], pkt[14], pkt[15]]);
    let dst = u32::from_be_bytes([pkt[16], pkt[17], pkt[18], pkt[19]]);
    // More-fragments set or a fragment offset: only the first fragment carries the ports.
    let fragmented = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0;
    let ports = matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && !fragmented;
    let (sport, dport) = match pkt.get(ihl..ihl + 4) {
        Some(p) if ports && ihl >= 20 => (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ),
        _ => (0, 0),
    };
    let (a, b) = if (src, sport) <= (dst, dport) {
        ((src, sport), (dst, dport))
    } else {
        ((dst, dport), (src, sport))
    };
    let addrs = (u64::from(a.0) << 32) | u64::from(b.0);
    let rest = (u64::from(proto) << 32) | (u64::from(a.1) << 16) | u64::from(b.1);
    // A 64-bit mix (splitmix64's finaliser) of the two words; then the top bits scaled to
    // 0..queues (no modulo bias to speak of, no division).
    let mut h = addrs ^ rest.rotate_left(23) ^ 0x9e37_79b9_7f4a_7c15;
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    ((u128::from(h) * queues as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn both_directions_of_a_flow_pick_the_same_queue() {
        for queues in 2..=8 {
            for port in 40_000..40_200u16 {
                let there = packet(PROTO_TCP, [10, 244, 1, 2], [10, 244, 2, 2], port, 5201);
                let back = packet(PROTO_TCP, [10, 244, 2, 2], [10, 244, 1, 2], 5201, port);
                assert_eq!(queue(&there, queues), queue(&back, queues));
                assert!(queue(&there, queues) < queues);
            }
        }
    }

    #[test]
    fn flows_spread_over_every_queue() {
        let queues = 4;
        let mut seen = [0usize; 4];
        for port in 0..4000u16 {
            let p = packet(
                PROTO_TCP,
                [10, 244, 1, 2],
                [10, 244, 2, 2],
                30_000 + port,
                5201,
            );
            seen[queue(&p, queues)] += 1;
        }
        // 1000 expected per queue; a hash that ignored the ports would put all in one.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn fragments_and_portless_protocols_hash_on_the_addresses() {
        let mut first = packet(PROTO_UDP, [10, 244, 1, 2], [10, 244, 2, 2], 1, 2);
        first[6] = 0x20; // more fragments
        let mut later = packet(PROTO_UDP, [10, 244, 1, 2], [10, 244, 2, 2], 9, 9);
        later[7] = 0xb9; // offset 185 (× 8 bytes): its "ports" are payload
        let icmp = packet(1, [10, 244, 1, 2], [10, 244, 2, 2], 7, 7);
        let icmp_other = packet(1, [10, 244, 1, 2], [10, 244, 2, 2], 8, 8);
        assert_eq!(queue(&first, 4), queue(&later, 4));
        assert_eq!(queue(&icmp, 4), queue(&icmp_other, 4));
    }

    #[test]
    fn what_is_not_a_whole_ipv4_header_goes_to_queue_zero() {
        assert_eq!(queue(&[], 4), 0);
        assert_eq!(queue(&[0x45; 19], 4), 0);
        let mut v6 = packet(PROTO_TCP, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        v6[0] = 0x60;
        assert_eq!(queue(&v6, 4), 0);
        // IHL past the end: the addresses alone.
        let mut long = packet(PROTO_TCP, [10, 244, 1, 2], [10, 244, 2, 2], 1, 2);
        long[0] = 0x4f;
        assert!(queue(&long, 4) < 4);
        assert_eq!(queue(&long, 1), 0);
    }
}
