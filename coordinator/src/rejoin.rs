//! Catching up a replica whose gate is closed (it lost its state for a shard; the
//! rules are in [`crate::raft_net::gate`]).
//!
//! One task per closed gate: it keeps the group from standing for election, asks
//! every other member of the shard for its last log index over the peer port until
//! all of them answered (the highest is the target, persisted), and opens the gate
//! once the replica has applied the target. It ends when the gate opens or the node
//! stops; a restart picks up where it was from the gate file.

use std::sync::Arc;
use std::time::Duration;

use raft_store::raft::NodeId;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::node::NodeInner;
use crate::raft_net::VoteGate;

/// How often a closed gate looks again.
const REJOIN_POLL_MS: u64 = 250;

/// The highest last log index the other members report for `shard`, if every one
/// of them answered (a member without the shard counts as 0).
async fn target_from_members(node: &Arc<NodeInner>, shard: u32) -> Option<u64> {
    let others: Vec<NodeId> = node
        .cluster
        .members(shard)
        .into_iter()
        .filter(|m| *m != node.id)
        .collect();
    let views = crate::service::peer_views(node, &others, Duration::from_millis(1_000))
        .await
        .ok()?;
    let mut target = 0;
    for (_, view) in views {
        let view = view?;
        let last = view
            .shards
            .iter()
            .filter(|s| s.shard == shard)
            .map(|s| s.last_log_index.max(s.applied_index))
            .max()
            .unwrap_or(0);
        target = target.max(last);
    }
    Some(target)
}

/// Runs `shard`'s closed gate until it opens (see the module doc).
pub async fn catch_up(
    node: Arc<NodeInner>,
    shard: u32,
    gate: VoteGate,
    mut stop: watch::Receiver<bool>,
) {
    let Some(local) = node.shards.get(&shard).cloned() else {
        return;
    };
    gate.apply_to(&local.raft);
    let mut waiting_logged = false;
    loop {
        if gate.open_if_caught_up(&local.raft) {
            return;
        }
        if gate.target().is_none() {
            match target_from_members(&node, shard).await {
                Some(target) => match gate.set_target(target) {
                    Ok(()) => info!(shard, target, "rejoining: catching up before voting"),
                    Err(e) => warn!(shard, error = %e, "cannot record the rejoin target"),
                },
                None if !waiting_logged => {
                    warn!(
                        shard,
                        "rejoining without state: waiting for every other member to \
                         answer before this replica may vote"
                    );
                    waiting_logged = true;
                }
                None => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(REJOIN_POLL_MS)) => {}
            _ = stop.changed() => return,
        }
    }
}
