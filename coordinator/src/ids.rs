//! Ids a process makes up for callers that leave them empty: client reservation ids,
//! idempotency keys and event ids (see `service` and `holds`).
//!
//! Invariant: no two processes, and no two starts of one process, give out the same
//! id. An id is `{prefix}-{node}-{start ms, hex}-{nonce, hex}-{counter, hex}`. The node
//! id alone does not separate processes (every frontend is node 0) and neither does the
//! start time (two frontends can start in the same millisecond), so each process also
//! draws a 64-bit nonce from the operating system's random source when it starts; the
//! counter separates the ids of one process.
//!
//! Randomness is fine here, and only here: these ids are made before a command is
//! proposed and travel inside it, so every replica applies the same bytes; the state
//! machine itself never draws a random number.
//!
//! With the prefixes in use (at most 2 bytes), node ids up to `u32::MAX` and fewer than
//! 2^32 ids per start, an id is at most 51 bytes of `[A-Za-z0-9-]`: a valid event id
//! (64 bytes at most) and a valid token.

use std::sync::atomic::{AtomicU64, Ordering};

use raft_store::raft::NodeId;

/// Ids unique across processes and restarts.
pub(crate) struct IdGen {
    node: NodeId,
    boot_ms: u64,
    nonce: u64,
    counter: AtomicU64,
}

impl IdGen {
    /// A generator for node `node` (0 on a frontend) started at `boot_ms`.
    pub(crate) fn new(node: NodeId, boot_ms: u64) -> Self {
        Self::with_nonce(node, boot_ms, process_nonce())
    }

    fn with_nonce(node: NodeId, boot_ms: u64, nonce: u64) -> Self {
        Self {
            node,
            boot_ms,
            nonce,
            counter: AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{prefix}-{}-{:x}-{:016x}-{n:x}",
            self.node, self.boot_ms, self.nonce
        )
    }
}

/// 64 random bits for this generator. Should the OS source fail (it does not on the
/// platforms we run on), std's per-process hash keys, themselves seeded from the OS
/// when it can, are the fallback: ids must still be made, and the start time and the
/// process id then keep them apart.
/// A fresh key for an event's hold and order id tags (`raft_store::ids`), drawn by the
/// leader that proposes the event. Without the operating system's random source there
/// is no safe key, so the event is not created.
pub(crate) fn event_id_key() -> Result<raft_store::IdKey, crate::error::Error> {
    let mut key = [0u8; raft_store::ids::ID_KEY_BYTES];
    getrandom::fill(&mut key).map_err(|e| {
        crate::error::Error::Internal(format!("no random source for an event's id key: {e}"))
    })?;
    Ok(raft_store::IdKey(key))
}

fn process_nonce() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_frontends_started_in_the_same_millisecond_give_different_ids() {
        let boot_ms = 1_800_000_000_000;
        let a = IdGen::new(0, boot_ms);
        let b = IdGen::new(0, boot_ms);
        let (ka, kb) = (a.next("k"), b.next("k"));
        assert_ne!(ka, kb);
        // ...and each gives a fresh id every time.
        assert_ne!(ka, a.next("k"));
        // The nonce is what separates them: without it they would collide.
        let same = |nonce| IdGen::with_nonce(0, boot_ms, nonce).next("k");
        assert_eq!(same(7), same(7));
    }

    #[test]
    fn ids_are_valid_event_ids_and_tokens() {
        let g = IdGen::with_nonce(u32::MAX as NodeId, 16_000_000_000_000, u64::MAX);
        g.counter.store(u32::MAX as u64 - 1, Ordering::Relaxed);
        for prefix in ["ev", "k", "r"] {
            let id = g.next(prefix);
            assert!(id.len() <= 51, "{id} is {} bytes", id.len());
            raft_store::EventId::new(id.clone()).unwrap();
            raft_store::ids::validate_token("id", &id).unwrap();
        }
    }
}
