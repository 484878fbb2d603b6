//! A hash table in shards, so growing it never holds two copies of the whole table: a
//! `HashMap` that grows allocates the new table before freeing the old one, which for one
//! 100,000-prefix table is a peak of one and a half times its size. In 16 shards the extra
//! is a sixteenth of that.

use std::collections::HashMap;
use std::hash::Hash;

use ipnet::{Ipv4Net, Ipv6Net};

const SHARDS: usize = 16;

/// A key that says which shard it lives in (its own cheap hash, independent of the map's).
pub(crate) trait ShardKey: Hash + Eq + Copy {
    fn shard(&self) -> usize;
}

impl ShardKey for Ipv4Net {
    fn shard(&self) -> usize {
        // Multiplicative hashing: the top bits depend on every address bit, so consecutive
        // prefixes spread over all shards.
        let x = u32::from(self.addr()) ^ u32::from(self.prefix_len());
        (x.wrapping_mul(0x9E37_79B1) >> 28) as usize
    }
}

impl ShardKey for Ipv6Net {
    fn shard(&self) -> usize {
        let a = u128::from(self.addr());
        let x = ((a >> 64) as u64) ^ (a as u64) ^ u64::from(self.prefix_len());
        (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize
    }
}

pub(crate) struct Table<K, V> {
    shards: Vec<HashMap<K, V>>,
}

impl<K: ShardKey, V> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
        }
    }
}

impl<K: ShardKey, V> Table<K, V> {
    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.shards[k.shard()].get(k)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.shards[k.shard()].get_mut(k)
    }

    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.shards[k.shard()].insert(k, v)
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        self.shards[k.shard()].remove(k)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    /// Empty it and give the memory back.
    pub(crate) fn reset(&mut self) {
        for s in &mut self.shards {
            *s = HashMap::new();
        }
    }

    /// The bytes the shards' tables hold: buckets (a power of two at the std map's 7/8 load)
    /// of one entry and one control byte each. What values point to is not counted.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|m| {
                if m.capacity() == 0 {
                    return 0;
                }
                let buckets = (m.capacity() * 8 / 7).next_power_of_two();
                buckets * (std::mem::size_of::<(K, V)>() + 1)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_prefixes_spread_over_every_shard() {
        let mut counts = [0usize; SHARDS];
        for i in 0..16_000u32 {
            let p = Ipv4Net::new((0x0A00_0000 + (i << 8)).into(), 24).unwrap();
            counts[p.shard()] += 1;
        }
        for c in counts {
            assert!((500..1500).contains(&c), "{counts:?}");
        }
        let mut counts = [0usize; SHARDS];
        for i in 0..16_000u128 {
            let p = Ipv6Net::new(((0x2001_0db8u128 << 96) + (i << 80)).into(), 48).unwrap();
            counts[p.shard()] += 1;
        }
        for c in counts {
            assert!((500..1500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn table_behaves_as_a_map() {
        let mut t: Table<Ipv4Net, u32> = Table::default();
        let a: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let b: Ipv4Net = "10.0.1.0/24".parse().unwrap();
        assert_eq!(t.insert(a, 1), None);
        assert_eq!(t.insert(b, 2), None);
        assert_eq!(t.insert(a, 3), Some(1));
        assert_eq!(t.len(), 2);
        *t.get_mut(&b).unwrap() += 10;
        assert_eq!(t.get(&b), Some(&12));
        let mut all: Vec<u32> = t.values().copied().collect();
        all.sort();
        assert_eq!(all, vec![3, 12]);
        assert_eq!(t.remove(&a), Some(3));
        assert_eq!(t.iter().count(), 1);
        assert!(t.heap_bytes() > 0);
        t.reset();
        assert_eq!(t.len(), 0);
        assert_eq!(t.heap_bytes(), 0);
    }
}
