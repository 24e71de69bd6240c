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
//! keys where request records head for the disk and where they come back from it:
//! `sm::record_batch`, which builds every batch of records (each apply's, and an
//! installed snapshot's, which starts a new filter), and the records read when a group
//! opens. A "maybe" costs only the read it would have cost anyway.
//!
//! A "maybe" never means "decided": only a record read back from RocksDB decides a
//! retry. That is what keeps the filter right across retention (`machine::retention`):
//! a purged request record is deleted from the disk but stays in the filter (a Bloom
//! filter cannot forget), so its retry reads RocksDB, finds nothing, and is decided as
//! a new request, as it should be once the retention ran out. The invariant above
//! only needs a superset of the records on disk, which deleting keeps.
//!
//! Caveats: the filter has a fixed size (`FILTER_BITS`) and nothing is ever removed,
//! so after millions of decided requests most answers are "maybe" and the store reads
//! RocksDB as it did before. It lives in memory only and is rebuilt when a group opens,
//! from the records then on disk, so purged keys leave it only then.
//! A node gives filters to at most `FILTER_BYTES_PER_NODE_MAX / FILTER_BYTES` groups
//! (the first to store a request record); the others answer "maybe" to everything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bits per group's filter: about 1% false "maybe"s at 1.5 million request records
/// and about 15% at 4 million.
pub(crate) const FILTER_BITS: usize = 1 << 24;
/// 2 MiB.
pub(crate) const FILTER_BYTES: usize = FILTER_BITS / 8;
/// What all of a node's filters may take together: 32 groups' worth.
pub(crate) const FILTER_BYTES_PER_NODE_MAX: usize = 64 << 20;
/// Bit positions set per key.
const PROBES: u32 = 4;

/// How many filters a node may still allocate; shared by its groups.
pub(crate) struct Budget {
    filters_max: usize,
    filters: AtomicUsize,
}

impl Budget {
    pub fn new(filters_max: usize) -> Arc<Self> {
        Arc::new(Self {
            filters_max,
            filters: AtomicUsize::new(0),
        })
    }

    pub fn per_node() -> Arc<Self> {
        Self::new(FILTER_BYTES_PER_NODE_MAX / FILTER_BYTES)
    }

    fn take(&self) -> bool {
        self.filters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.filters_max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        let was = self.filters.fetch_sub(1, Ordering::AcqRel);
        assert!(was > 0, "a filter returned to an empty budget");
    }
}

enum Bits {
    /// No key added yet: nothing is on disk.
    Empty,
    Set(Box<[u64]>),
    /// The node's budget was spent when the first key came: anything may be on disk.
    Unknown,
}

pub(crate) struct KeyFilter {
    /// Allocated with the first key, so a group that never refused a hold nor ended
    /// one costs nothing.
    bits: Bits,
    budget: Arc<Budget>,
}

impl KeyFilter {
    pub fn new(budget: &Arc<Budget>) -> Self {
        Self {
            bits: Bits::Empty,
            budget: budget.clone(),
        }
    }

    pub fn insert(&mut self, key: &[u8]) {
        const { assert!(FILTER_BITS.is_power_of_two() && FILTER_BITS >= 64) };
        if let Bits::Empty = self.bits {
            self.bits = if self.budget.take() {
                Bits::Set(vec![0u64; FILTER_BITS / 64].into_boxed_slice())
            } else {
                Bits::Unknown
            };
        }
        if let Bits::Set(words) = &mut self.bits {
            for bit in positions(key) {
                words[bit / 64] |= 1 << (bit % 64);
            }
        }
    }

    /// False only if `key` was never added.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        match &self.bits {
            Bits::Empty => false,
            Bits::Set(words) => positions(key).all(|bit| words[bit / 64] & (1 << (bit % 64)) != 0),
            Bits::Unknown => true,
        }
    }
}

impl Drop for KeyFilter {
    fn drop(&mut self) {
        if let Bits::Set(_) = self.bits {
            self.budget.give_back();
        }
    }
}

/// The `PROBES` bit positions of `key`: double hashing over two halves of one 64-bit
/// hash (FxHash of the bytes, then a SplitMix64 finaliser to spread FxHash's bits).
/// The step is odd and the size a power of two, so the positions are distinct.
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
        let mut f = KeyFilter::new(&Budget::new(1));
        for i in 0..200_000 {
            f.insert(&key(i));
        }
        assert!((0..200_000).all(|i| f.may_contain(&key(i))));
    }

    #[test]
    fn keys_never_added_are_mostly_refused() {
        // Deterministic (a fixed hash and fixed keys), so the bound cannot flake. At
        // 200,000 keys in 2^24 bits the expected share of false "maybe"s is 0.0005%.
        let mut f = KeyFilter::new(&Budget::new(1));
        assert!(!f.may_contain(&key(1)), "an empty filter contains nothing");
        for i in 0..200_000 {
            f.insert(&key(i));
        }
        let maybes = (200_000..400_000)
            .filter(|&i| f.may_contain(&key(i)))
            .count();
        assert!(maybes < 20, "{maybes} of 200,000 new keys looked known");
        // A key one byte away from an added one is told apart.
        let mut near = key(7);
        *near.last_mut().unwrap() ^= 1;
        assert!(!f.may_contain(&near));
    }

    #[test]
    fn a_group_beyond_the_nodes_budget_reads_everything() {
        let budget = Budget::new(1);
        let mut first = KeyFilter::new(&budget);
        let mut second = KeyFilter::new(&budget);
        assert!(!second.may_contain(&key(1)), "nothing stored yet");
        first.insert(&key(1));
        second.insert(&key(2));
        assert!(!first.may_contain(&key(3)), "the first has its bits");
        assert!(second.may_contain(&key(3)), "the second cannot tell");
        // A dropped filter gives its share back.
        drop(first);
        let mut third = KeyFilter::new(&budget);
        third.insert(&key(4));
        assert!(!third.may_contain(&key(5)));
    }
}
