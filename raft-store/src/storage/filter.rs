//! A Bloom filter of the hold requests a group has decided and keeps on disk only, so
//! that a new request (almost every request) is known to be new without asking RocksDB.
//!
//! Before an entry is applied, the store reads back every cold record the entry may
//! need (`sm::warm_for`). For a hold that means the record of its `(user, client
//! reservation id)`: a retry must be answered from it. New requests have none, yet
//! each one cost a RocksDB `multi_get` that finds nothing (3–7% of a node's CPU under
//! the flash-sale bench). This filter answers "certainly not on disk" for them.
//!
//! Invariant: every request record the group has on disk, or in the write in flight,
//! was added to the filter before any apply could look for it. So a "no" is always
//! right, and a retry is never taken for a new request. The store keeps that by adding
//! keys at the only three places request records reach the disk or memory from it:
//! the records each `apply` writes, the records read when a group is opened, and the
//! records of an installed snapshot (which starts a new filter). A "maybe" costs only
//! the read it would have cost anyway.
//!
//! Caveats: the filter has a fixed size (`FILTER_BITS`) and nothing is ever removed,
//! so after millions of decided requests most answers are "maybe" and the store reads
//! RocksDB as it did before. It lives in memory only and is rebuilt when a group opens.

/// Bits per group's filter: 2 MiB, about 1% false "maybe"s at 1.5 million request
/// records and about 15% at 4 million.
pub(crate) const FILTER_BITS: usize = 1 << 24;
/// Bit positions set per key.
const PROBES: u32 = 4;

#[derive(Default)]
pub(crate) struct KeyFilter {
    /// Allocated with the first key: a group that never refused a hold nor ended one
    /// costs nothing.
    words: Option<Box<[u64]>>,
}

impl KeyFilter {
    pub fn insert(&mut self, key: &[u8]) {
        const { assert!(FILTER_BITS.is_power_of_two() && FILTER_BITS >= 64) };
        let words = self
            .words
            .get_or_insert_with(|| vec![0u64; FILTER_BITS / 64].into_boxed_slice());
        for bit in positions(key) {
            words[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// False only if `key` was never added.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.words
            .as_ref()
            .is_some_and(|words| positions(key).all(|bit| words[bit / 64] & (1 << (bit % 64)) != 0))
    }
}

/// The `PROBES` bit positions of `key`: double hashing over two halves of one 64-bit
/// hash (FxHash of the bytes, then a SplitMix64 finaliser to spread FxHash's bits).
fn positions(key: &[u8]) -> impl Iterator<Item = usize> {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(key);
    let mut x = h.finish();
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let (a, b) = (x as u32 as usize, ((x >> 32) as usize) | 1);
    (0..PROBES as usize).map(move |i| a.wrapping_add(i.wrapping_mul(b)) & (FILTER_BITS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Vec<u8> {
        let mut k = vec![6, 5];
        k.extend_from_slice(b"bench");
        k.extend_from_slice(format!("b{}n{}\nhold-{i}", i % 64, i / 64).as_bytes());
        k
    }

    #[test]
    fn every_added_key_is_found() {
        let mut f = KeyFilter::default();
        for i in 0..200_000 {
            f.insert(&key(i));
        }
        assert!((0..200_000).all(|i| f.may_contain(&key(i))));
    }

    #[test]
    fn keys_never_added_are_mostly_refused() {
        // Deterministic (a fixed hash and fixed keys), so the bound cannot flake. At
        // 200,000 keys in 2^24 bits the expected share of false "maybe"s is 0.0005%.
        let mut f = KeyFilter::default();
        assert!(!f.may_contain(&key(1)), "an empty filter contains nothing");
        for i in 0..200_000 {
            f.insert(&key(i));
        }
        let maybes = (200_000..400_000)
            .filter(|&i| f.may_contain(&key(i)))
            .count();
        assert!(maybes < 20, "{maybes} of 200,000 new keys looked known");
        // Keys that differ in one byte only are told apart.
        assert!(!f.may_contain(b"\x06\x05bench-other"));
    }
}
