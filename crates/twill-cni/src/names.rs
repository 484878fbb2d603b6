//! Names derived from an attachment, so that DEL finds what ADD made even without a record
//! or a prevResult.

/// The host end of a pod's veth: `twl` + 12 hex digits of a hash of the container ID and
/// the interface name (15 bytes, Linux's limit), like Calico's `cali` + hash.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bit: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("twl{:012x}", h >> 16)
}

/// Whether `name` has the shape `host_veth` gives: what twill-cni made, not a link of
/// the operator's.
pub fn is_host_veth(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("twl")
        && name[3..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_ifnamsiz_and_is_stable() {
        let n = host_veth("c1", "eth0");
        assert_eq!(n.len(), 15);
        assert_eq!(n, host_veth("c1", "eth0"));
        assert_ne!(n, host_veth("c1", "eth1"));
        assert_ne!(host_veth("ab", "c"), host_veth("a", "bc"));
        assert!(is_host_veth(&n));
        assert!(!is_host_veth("twl0"));
        assert!(!is_host_veth("eth0"));
        assert!(!is_host_veth("twlABCDEF012345"));
    }
}
