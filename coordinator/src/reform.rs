//! `seatd reform`: the operator's way out when a majority of a shard's replicas lost
//! their disks, and the shard can no longer elect a leader.
//!
//! Raft cannot recover from that by itself: a committed entry may have lived only on
//! the lost replicas, and no rule lets the survivors tell. So a person decides, on a
//! stopped node holding the most advanced surviving copy (each node's local
//! `ClusterStatus` shows its last log term and index), to re-form the group from it:
//! `raft_store::storage::LogStore::reform_offline` appends a membership entry that
//! makes this node the group's only voter, in a term above any it saw. Started again,
//! the node elects itself, and the placement's other members (started empty) join as
//! learners, catch up from it and are promoted (`membership`), their rejoin gates
//! closed until they hold its log.
//!
//! Invariants: it runs only on a stopped node (RocksDB's lock keeps a running one out),
//! only on a replica that has the shard's log and is not itself still catching up (its
//! rejoin gate open), and only with `--yes`; it says loudly what it did and what may
//! be lost (whatever only the lost replicas held).

use std::path::Path;

use raft_store::storage::{Reformed, Store};

use crate::error::StartError;
use crate::raft_net::GateBook;

/// Re-forms `shard` on the stopped node whose data dir is `dir` (see the module doc).
pub fn reform(dir: &Path, shard: u32) -> Result<(u64, Reformed), StartError> {
    let (node, shards) = crate::node::identity_of(dir)?;
    if shard >= shards {
        return Err(StartError::Config(format!(
            "shard {shard} does not exist: {} belongs to a cluster of {shards} shards",
            dir.display()
        )));
    }
    if GateBook::open(dir)?.closed_on_disk(shard) {
        return Err(StartError::Config(format!(
            "this replica of shard {shard} was still catching up (rejoin.json): it is not \
             the most advanced copy; re-form from another survivor"
        )));
    }
    let store = Store::open(dir)?;
    if !store.groups()?.contains(&shard) {
        return Err(StartError::Config(format!(
            "{} holds no state for shard {shard}",
            dir.display()
        )));
    }
    let done = store.reform_group(shard, node)?;
    Ok((node, done))
}
