//! Standard base64 (RFC 4648 §4, `+/`, `=` padding): etcd's JSON gateway carries every key
//! and value this way. Pure; small enough that a crate is not worth its build time.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // A chunk of k bytes yields k + 1 significant symbols; the rest is padding.
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn symbol_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes standard base64; the `=` padding may be present or left out. Rejects other
/// symbols, misplaced padding and non-zero leftover bits (non-canonical input).
pub fn decode(input: &str) -> Result<Vec<u8>, String> {
    let bytes = input.as_bytes();
    let data = match bytes.iter().position(|&c| c == b'=') {
        Some(p) => {
            let pad = &bytes[p..];
            if pad.len() > 2 || pad.iter().any(|&c| c != b'=') || bytes.len() & 3 != 0 {
                return Err(format!("bad base64 padding in {input:?}"));
            }
            &bytes[..p]
        }
        None => bytes,
    };
    if data.len() % 4 == 1 {
        return Err(format!("bad base64 length in {input:?}"));
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = symbol_value(c)
                .ok_or_else(|| format!("bad base64 symbol {:?} in {input:?}", c as char))?;
            n |= v << (18 - 6 * i);
        }
        let produced = chunk.len() - 1; // 2 symbols -> 1 byte, 3 -> 2, 4 -> 3
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // Bits below the last whole byte must be zero, or two inputs would decode alike.
        let leftover_bits = n & ((1u32 << (8 * (3 - produced))) - 1);
        if leftover_bits != 0 {
            return Err(format!("non-canonical base64 {input:?}"));
        }
        out.extend_from_slice(&decoded[..produced]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4648 §10 test vectors.
    const VECTORS: &[(&str, &str)] = &[
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn rfc4648_vectors() {
        for (plain, coded) in VECTORS {
            assert_eq!(encode(plain.as_bytes()), *coded);
            assert_eq!(decode(coded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn keys_seen_from_etcd() {
        assert_eq!(encode(b"/twill/v1/blocks/a"), "L3R3aWxsL3YxL2Jsb2Nrcy9h");
        assert_eq!(decode("eyJhIjoxfQ==").unwrap(), br#"{"a":1}"#);
    }

    #[test]
    fn every_byte_and_length_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        for len in 0..all.len() {
            let coded = encode(&all[..len]);
            assert_eq!(coded.len() % 4, 0);
            assert_eq!(decode(&coded).unwrap(), &all[..len]);
            assert_eq!(
                decode(coded.trim_end_matches('=')).unwrap(),
                &all[..len],
                "unpadded"
            );
        }
        assert_eq!(encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "Zg=", "Z", "Zm9v=", "Zg==Zg==", "Zm-v", "Zm9v\n", "Zh==", "Zm9=", "=Zg=",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
