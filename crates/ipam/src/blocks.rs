//! Blocks: the cluster CIDR cut into equal blocks that nodes claim (flannel's one subnet
//! per node with blockSize 24, Calico's several /26 per node). Pure arithmetic: which
//! blocks exist, which may be handed out, and which to try next.

use ipnet::Ipv4Net;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use twill_api::resources::NetworkConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpace {
    cluster: Ipv4Net,
    block_size: u8,
    /// Indexes of the first and last usable block (subnetMin/subnetMax).
    first: u64,
    last: u64,
    reservations: Vec<Ipv4Net>,
}

impl BlockSpace {
    /// The config must have passed `NetworkConfig::validate`.
    pub fn new(config: &NetworkConfig) -> BlockSpace {
        let cluster = config.cluster_cidr.trunc();
        let count = 1u64 << (config.block_size - cluster.prefix_len());
        let index = |b: Ipv4Net| {
            (u64::from(u32::from(b.network())) - u64::from(u32::from(cluster.network())))
                >> (32 - config.block_size)
        };
        // The first block (holding the cluster's network address) is skipped by default,
        // as flannel does: 10.244.0.0/24 is easily mistaken for "the network".
        let first = config
            .subnet_min
            .map(index)
            .unwrap_or(if count > 1 { 1 } else { 0 });
        let last = config.subnet_max.map(index).unwrap_or(count - 1);
        BlockSpace {
            cluster,
            block_size: config.block_size,
            first,
            last,
            reservations: config.reservations.clone(),
        }
    }

    pub fn block_size(&self) -> u8 {
        self.block_size
    }

    /// The block at index `i` of the cluster CIDR.
    fn block(&self, i: u64) -> Ipv4Net {
        let base = u32::from(self.cluster.network()) as u64 + (i << (32 - self.block_size));
        Ipv4Net::new(Ipv4Addr::from(base as u32), self.block_size).expect("valid prefix")
    }

    /// Whether `b` is a block of this space that may be handed out.
    pub fn is_usable(&self, b: Ipv4Net) -> bool {
        if b.prefix_len() != self.block_size || b.trunc() != b || !self.cluster.contains(&b) {
            return false;
        }
        let i = (u64::from(u32::from(b.network())) - u64::from(u32::from(self.cluster.network())))
            >> (32 - self.block_size);
        (self.first..=self.last).contains(&i)
            && !self
                .reservations
                .iter()
                .any(|r| r.contains(&b) || b.contains(r))
    }

    /// How many blocks may be handed out in all.
    pub fn capacity(&self) -> u64 {
        self.usable().count() as u64
    }

    /// Every usable block, in address order.
    pub fn usable(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        (self.first..=self.last)
            .map(|i| self.block(i))
            .filter(|b| self.is_usable(*b))
    }

    /// Usable blocks not in `taken`, starting at a position derived from `seed` and
    /// wrapping, so agents racing for blocks mostly try different ones first (each
    /// collision costs a store round trip).
    pub fn free_from<'a>(
        &'a self,
        taken: &'a HashSet<Ipv4Net>,
        seed: u64,
    ) -> impl Iterator<Item = Ipv4Net> + 'a {
        let n = self.last - self.first + 1;
        let start = seed % n;
        (0..n)
            .map(move |k| self.block(self.first + (start + k) % n))
            .filter(move |b| self.is_usable(*b) && !taken.contains(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cidr: &str, size: u8) -> NetworkConfig {
        NetworkConfig {
            cluster_cidr: cidr.parse().unwrap(),
            block_size: size,
            subnet_min: None,
            subnet_max: None,
            reservations: vec![],
            backend: twill_api::resources::BackendSpec::None,
            mtu: 1500,
            masquerade: true,
            pod_wiring: Default::default(),
            lease_ttl_seconds: 60,
        }
    }

    #[test]
    fn slash16_into_slash24_skips_the_first_block() {
        let s = BlockSpace::new(&config("10.244.0.0/16", 24));
        assert_eq!(s.capacity(), 255);
        assert_eq!(s.usable().next(), Some("10.244.1.0/24".parse().unwrap()));
        assert!(!s.is_usable("10.244.0.0/24".parse().unwrap()));
        assert!(!s.is_usable("10.244.1.0/26".parse().unwrap()), "wrong size");
        assert!(!s.is_usable("10.245.1.0/24".parse().unwrap()), "outside");
    }

    #[test]
    fn min_max_and_reservations_bound_the_space() {
        let mut c = config("10.244.0.0/16", 26);
        c.subnet_min = Some("10.244.1.0/26".parse().unwrap());
        c.subnet_max = Some("10.244.1.192/26".parse().unwrap());
        c.reservations = vec!["10.244.1.64/27".parse().unwrap()];
        let s = BlockSpace::new(&c);
        let all: Vec<String> = s.usable().map(|b| b.to_string()).collect();
        assert_eq!(all, ["10.244.1.0/26", "10.244.1.128/26", "10.244.1.192/26"]);
    }

    #[test]
    fn free_from_visits_each_free_block_once_whatever_the_seed() {
        let s = BlockSpace::new(&config("10.244.0.0/22", 26));
        let taken: HashSet<Ipv4Net> = s.usable().step_by(3).collect();
        for seed in [0, 1, 7, 1000, u64::MAX] {
            let free: Vec<_> = s.free_from(&taken, seed).collect();
            let set: HashSet<_> = free.iter().copied().collect();
            assert_eq!(free.len(), set.len(), "no repeats");
            assert_eq!(free.len() as u64, s.capacity() - taken.len() as u64);
            assert!(free.iter().all(|b| !taken.contains(b)));
        }
    }

    /// Property: random claim/release sequences by many agents never hand out a block
    /// twice, never one outside min/max or a reservation, and run out exactly at capacity.
    #[test]
    fn random_claims_never_overlap() {
        let mut c = config("10.244.0.0/20", 26);
        c.reservations = vec!["10.244.3.0/24".parse().unwrap()];
        c.subnet_max = Some("10.244.14.192/26".parse().unwrap());
        let s = BlockSpace::new(&c);
        let mut held: HashSet<Ipv4Net> = HashSet::new();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) && !held.is_empty() {
                let victim = *held.iter().nth((x as usize / 3) % held.len()).unwrap();
                held.remove(&victim);
            } else {
                let next = s.free_from(&held, x).next();
                match next {
                    Some(b) => {
                        assert!(s.is_usable(b));
                        assert!(held.iter().all(|h| !h.contains(&b) && !b.contains(h)));
                        held.insert(b);
                    }
                    None => assert_eq!(held.len() as u64, s.capacity()),
                }
            }
        }
    }
}
