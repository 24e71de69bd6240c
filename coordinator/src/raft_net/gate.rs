//! The rejoin gate: a replica that lost its state for a shard (it started with none,
//! in a cluster where the shard may already exist: a replaced disk) may hold none of
//! the entries it acknowledged before, nor remember its vote. Until a leader has
//! caught it up, it must neither vote nor stand for election: its vote could elect a
//! leader that lacks committed entries, and so could its own candidacy once its log
//! is longer than a lagging peer's.
//!
//! Rules, per shard:
//! - A replica that starts with no state for a shard starts **closed**, and the
//!   closed state is written to `rejoin.json` in the data dir before its group starts,
//!   so a restart half-way through catching up stays closed (the store then holds
//!   some of the shard, which alone would look like a healthy replica).
//! - While closed, the replica refuses every vote and its group does not start
//!   elections (openraft's runtime `elect` switch); it still stores what a leader
//!   sends and acknowledges it, which is safe: those acknowledgements are durable.
//! - The **target**: the highest last log index that every other member of the
//!   shard reports (`rejoin`, over the peer port), asked once after the start and
//!   persisted. Every committed entry is on a majority of the members; this replica
//!   may have been one of them, so only the answers of all the others are sure to
//!   include it. The gate opens once the replica has applied the target: it then
//!   holds every entry that was committed when it rejoined. Until every other member
//!   answered, the gate stays closed (a shard with a member down and a member wiped
//!   waits for the one that is down, which is the price of not losing entries).
//! - A brand-new group is created by one node ([`VoteGate::open`] after it checked that
//!   no node has any state for the shard) as a group of itself alone; the other
//!   members join as learners and catch up like any rejoining replica (see
//!   `membership`), so no closed gate ever has to vote for the first leader.
//!
//! Caveat: a data dir restored from an old backup is not detected here (it has state,
//! so its gate is open); restore a node by starting it empty instead (README).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::raft::VoteRequest;
use openraft::Raft;
use raft_store::raft::{NodeId, TypeConfig};

use crate::error::Error;

/// The gate file, in a node's data dir.
pub const GATE_FILE: &str = "rejoin.json";
/// Largest gate file read (one entry per shard).
const GATE_FILE_BYTES_MAX: u64 = 1 << 20;

/// The closed gates of a node (shard → target, `None` until a leader reported one),
/// as in its gate file.
#[derive(Clone)]
pub struct GateBook {
    path: PathBuf,
    closed: Arc<Mutex<BTreeMap<u32, Option<u64>>>>,
}

impl GateBook {
    /// Reads `dir`'s gate file (none: every gate open).
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(GATE_FILE);
        let bad = |e: String| Error::Config(format!("{}: {e}", path.display()));
        let closed = match std::fs::metadata(&path) {
            Ok(m) if m.len() > GATE_FILE_BYTES_MAX => {
                return Err(bad(format!("larger than {GATE_FILE_BYTES_MAX} bytes")))
            }
            Ok(_) => {
                let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(bad(e.to_string())),
        };
        Ok(Self {
            path,
            closed: Arc::new(Mutex::new(closed)),
        })
    }

    /// Writes the closed gates: a new file, synced, renamed over the old one.
    fn persist(&self, closed: &BTreeMap<u32, Option<u64>>) -> Result<(), Error> {
        let bad = |e: std::io::Error| Error::Config(format!("{}: {e}", self.path.display()));
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string(closed).expect("a map of numbers");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(bad)?;
            f.write_all(text.as_bytes()).map_err(bad)?;
            f.sync_all().map_err(bad)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(bad)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(bad)?;
        }
        Ok(())
    }

    fn update(&self, f: impl FnOnce(&mut BTreeMap<u32, Option<u64>>) -> bool) -> Result<(), Error> {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = closed.clone();
        if f(&mut next) {
            self.persist(&next)?;
            *closed = next;
        }
        Ok(())
    }

    /// The gate of `shard`: closed if the file says so, or (written now) if the
    /// replica starts with no state for it.
    pub fn gate(&self, shard: u32, started_empty: bool) -> Result<VoteGate, Error> {
        if started_empty {
            self.update(|c| {
                if c.contains_key(&shard) {
                    return false;
                }
                c.insert(shard, None);
                true
            })?;
        }
        Ok(VoteGate {
            shard,
            book: self.clone(),
        })
    }

    fn state(&self, shard: u32) -> Option<Option<u64>> {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        closed.get(&shard).copied()
    }
}

/// One shard's gate (see the module doc).
#[derive(Clone)]
pub struct VoteGate {
    shard: u32,
    book: GateBook,
}

impl VoteGate {
    /// Whether the gate is closed (the replica is catching up).
    pub fn is_closed(&self) -> bool {
        self.book.state(self.shard).is_some()
    }

    /// The commit index the replica must apply before the gate opens, once known.
    pub fn target(&self) -> Option<u64> {
        self.book.state(self.shard).flatten()
    }

    /// Makes `raft` follow the gate: no elections while it is closed.
    pub fn apply_to(&self, raft: &Raft<TypeConfig>) {
        raft.runtime_config().elect(!self.is_closed());
    }

    /// Opens the gate for good (a group this node creates, or a replica caught up).
    pub fn open(&self, raft: &Raft<TypeConfig>) -> Result<(), Error> {
        self.book.update(|c| c.remove(&self.shard).is_some())?;
        raft.runtime_config().elect(true);
        Ok(())
    }

    /// Records the target (see the module doc), unless one is set already.
    pub fn set_target(&self, target: u64) -> Result<(), Error> {
        let shard = self.shard;
        self.book.update(|c| match c.get_mut(&shard) {
            Some(t @ None) => {
                *t = Some(target);
                true
            }
            _ => false,
        })
    }

    /// Opens the gate if the replica has applied its target.
    pub fn open_if_caught_up(&self, raft: &Raft<TypeConfig>) -> bool {
        let Some(state) = self.book.state(self.shard) else {
            return true;
        };
        let Some(target) = state else { return false };
        let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
        if applied.is_some_and(|a| a >= target) {
            match self.open(raft) {
                Ok(()) => {
                    tracing::info!(shard = self.shard, target, "caught up: votes again");
                    return true;
                }
                Err(e) => tracing::warn!(shard = self.shard, error = %e, "cannot open the gate"),
            }
        }
        false
    }

    /// Whether `raft` may take part in `_request`'s election.
    pub(super) fn admits(&self, raft: &Raft<TypeConfig>, _request: &VoteRequest<NodeId>) -> bool {
        self.open_if_caught_up(raft)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_and_its_target_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let book = GateBook::open(dir.path()).unwrap();
        let g = book.gate(3, true).unwrap();
        assert!(g.is_closed());
        assert_eq!(g.target(), None);
        g.set_target(1_000).unwrap();
        g.set_target(2_000).unwrap(); // the first target stays
        assert_eq!(g.target(), Some(1_000));
        // Restarted: the store now holds part of the shard, so it does not start
        // empty, but the file keeps the gate closed.
        let again = GateBook::open(dir.path()).unwrap().gate(3, false).unwrap();
        assert!(again.is_closed());
        assert_eq!(again.target(), Some(1_000));
        assert!(!GateBook::open(dir.path())
            .unwrap()
            .gate(4, false)
            .unwrap()
            .is_closed());
    }

    #[test]
    fn a_corrupt_gate_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(GATE_FILE), b"{not json").unwrap();
        assert!(GateBook::open(dir.path()).is_err());
    }
}
