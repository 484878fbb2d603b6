//! The internet checksum (RFC 1071), the IPv4 pseudo-header and incremental updates
//! (RFC 1624). Pure: slices in, numbers out.
//!
//! The API (used by `gso`, `gro` and the workers):
//! - [`sum`]`(data) -> u64`: the ones'-complement sum of `data` as big-endian 16-bit words
//!   (an odd last byte is padded with a zero), *not* folded and *not* complemented. Partial
//!   sums add with `+` (each is at most 0xffff, so millions of them add without overflow),
//!   as long as every piece but the last has an even length.
//! - [`pseudo_v4`]`(src, dst, proto, len) -> u64`: the IPv4 pseudo-header's partial sum.
//! - [`fold`]`(sum) -> u16`: the sum folded to 16 bits (still not complemented). This is what
//!   a CHECKSUM_PARTIAL packet carries in its checksum field (the pseudo-header sum).
//! - [`finish`]`(sum) -> u16`: `!fold(sum)`, the value a checksum field holds.
//! - [`checksum`]`(data) -> u16`: `finish(sum(data))`.
//! - [`verify`]`(sum) -> bool`: a sum over data *including* its checksum field is valid when
//!   it folds to 0xffff.
//! - [`update16`]`(csum, old, new) -> u16`: RFC 1624 eqn. 3, the checksum field after one
//!   16-bit word of the covered data changed from `old` to `new`.
//!
//! Speed: [`sum`] reads 8 bytes at a time and adds their two 32-bit halves into a 64-bit
//! accumulator (no carry chain, so the compiler vectorises it); the end-around carries are
//! folded once at the end. The words are read in native order and the 16-bit result swapped
//! once (the ones'-complement sum is byte-order independent, RFC 1071 §2(B)).

/// The ones'-complement sum of `data` as big-endian 16-bit words, not folded (at most 0xffff
/// here, so sums of pieces add with `+`). An odd last byte counts as its high byte.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let w = u64::from_ne_bytes(tail);
    acc += (w & 0xffff_ffff) + (w >> 32);
    // acc < 2^64 for any slice shorter than 2^31 bytes (each step adds < 2^33).
    let folded = fold(acc);
    if cfg!(target_endian = "little") {
        u64::from(folded.swap_bytes())
    } else {
        u64::from(folded)
    }
}

/// Folds a partial sum to 16 bits with end-around carries (not complemented).
#[inline]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum field's value for data whose partial sum is `s`: `!fold(s)`.
#[inline]
pub fn finish(s: u64) -> u16 {
    !fold(s)
}

/// The checksum field's value for `data` (with its own checksum field zeroed).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// True when a sum taken over data that includes its checksum field is valid (folds to
/// 0xffff, i.e. ones'-complement zero).
#[inline]
pub fn verify(s: u64) -> bool {
    fold(s) == 0xffff
}

/// The IPv4 pseudo-header's partial sum: source, destination, zero + protocol, and the
/// transport length (header + payload).
#[inline]
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u64 {
    u64::from(u16::from_be_bytes([src[0], src[1]]))
        + u64::from(u16::from_be_bytes([src[2], src[3]]))
        + u64::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u64::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u64::from(proto)
        + u64::from(len)
}

/// RFC 1624 eqn. 3: the new checksum field `HC' = ~(~HC + ~m + m')` after a 16-bit word of
/// the covered data changed from `old` (m) to `new` (m').
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    finish(u64::from(!csum) + u64::from(!old) + u64::from(new))
}

/// [`update16`] for a 32-bit field (two words), e.g. a TCP sequence number or an address.
#[inline]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    finish(
        u64::from(!csum)
            + u64::from(!(old >> 16) as u16)
            + u64::from(!(old as u16))
            + u64::from((new >> 16) as u16)
            + u64::from(new as u16),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071, written plainly: 16-bit big-endian words, a 32-bit accumulator folded at the
    /// end, the odd byte padded.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            acc += u64::from(data[i]) << 8 | u64::from(data[i + 1]);
            i += 2;
        }
        if i < data.len() {
            acc += u64::from(data[i]) << 8;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn matches_the_reference_at_every_length_and_alignment() {
        let data = bytes(7, 3000);
        for start in 0..9 {
            for len in (0..600).chain([1419, 1420, 1480, 2048, 2991 - start]) {
                let d = &data[start..start + len];
                assert_eq!(checksum(d), reference(d), "start {start} len {len}");
            }
        }
        let ones = vec![0xffu8; 65535];
        assert_eq!(checksum(&ones), reference(&ones));
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn pieces_add_and_verify() {
        let d = bytes(99, 1001);
        for cut in (0..1000).step_by(2) {
            assert_eq!(finish(sum(&d[..cut]) + sum(&d[cut..])), reference(&d));
        }
        // With the checksum written in, the sum verifies; a flipped bit does not.
        let mut p = bytes(5, 64);
        p[10] = 0;
        p[11] = 0;
        let c = checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verify(sum(&p)));
        p[30] ^= 4;
        assert!(!verify(sum(&p)));
    }

    #[test]
    fn a_known_ipv4_header() {
        // A textbook header (Wikipedia's example): checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert!(verify(sum(&h)));
    }

    #[test]
    fn pseudo_header_matches_the_plain_layout() {
        let src = [10, 244, 1, 7];
        let dst = [10, 244, 2, 9];
        let plain = [10, 244, 1, 7, 10, 244, 2, 9, 0, 6, 0x05, 0xb4];
        assert_eq!(fold(pseudo_v4(src, dst, 6, 1460)), !reference(&plain));
    }

    #[test]
    fn incremental_updates_match_a_recomputation() {
        let mut d = bytes(3, 40);
        for round in 0..200u32 {
            d[2] = 0;
            d[3] = 0;
            let c = checksum(&d);
            let i = 4 + 2 * (round as usize % 8);
            let old = u16::from_be_bytes([d[i], d[i + 1]]);
            let new = old.wrapping_mul(31).wrapping_add(round as u16);
            d[i..i + 2].copy_from_slice(&new.to_be_bytes());
            let want = checksum(&d);
            let got = update16(c, old, new);
            // 0x0000 and 0xffff are the same ones'-complement value; RFC 1624 gives the
            // form a recomputation gives except for the all-zero data case.
            assert!(got == want || (fold(u64::from(got)) == 0xffff && want == 0xffff));
            let o32 = u32::from_be_bytes([d[20], d[21], d[22], d[23]]);
            let n32 = o32.wrapping_add(round * 1420);
            let c = checksum(&d);
            d[20..24].copy_from_slice(&n32.to_be_bytes());
            assert_eq!(update32(c, o32, n32), checksum(&d));
        }
    }
}
