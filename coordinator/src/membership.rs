//! Keeping each shard's Raft membership equal to its placement, so that a cluster can
//! grow: start a new node with the longer `--peers` list, restart the others one at a
//! time with it, and each shard's leader moves the shard onto the nodes the new
//! placement names.
//!
//! How a shard moves (on its leader, every [`RECONCILE_INTERVAL_MS`]): every node the
//! placement names that is not yet in the group is added as a learner and caught up
//! (from the log or by snapshot), then the voters are replaced by the placement's
//! nodes in one joint-consensus change. Raft keeps a quorum of the old and the new
//! voters through the change, so no acknowledged write is lost by it.
//!
//! A node the shard moved away from notices it ([`retire_when_moved`]): once the
//! shard's leader reports a membership without it, it stops its copy of the group and
//! deletes its data (the group committed a configuration without it, so nothing
//! depends on that copy any more).
//!
//! Invariant (the guard): a leader changes membership only when its `--peers` list
//! names every node already in the group. During a rolling restart, a leader still on
//! the old list does not know the new node and leaves the group alone, so old and new
//! configurations never fight over it. (Shrinking a cluster therefore needs a node
//! replaced rather than removed; see README.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::lifecycle::{CancellationToken, Ticks};
use openraft::BasicNode;
use raft_store::raft::NodeId;
use tracing::{info, warn};

use crate::process::Process;

/// How often a shard's leader compares its membership with the placement.
pub const RECONCILE_INTERVAL_MS: u64 = 2_000;
/// Longest a new member may take to catch up before the change is retried later.
pub const CATCH_UP_MS_MAX: u64 = 120_000;

pub async fn reconcile(node: Arc<Process>, shard: u32, stop: CancellationToken) {
    let Some(local) = node.shards.get(&shard).cloned() else {
        return;
    };
    let desired: BTreeSet<NodeId> = node.cluster.members(shard).into_iter().collect();
    let mut ticks = Ticks::every(Duration::from_millis(RECONCILE_INTERVAL_MS), stop.clone());
    let mut guard_logged = false;
    while ticks.next().await {
        if !local.leader().1 {
            continue;
        }
        let metrics = local.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        if membership.get_joint_config().len() > 1 {
            continue; // a change is already under way
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters == desired {
            continue;
        }
        let in_group: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        if let Some(stranger) = in_group.iter().find(|id| node.cluster.addr(**id).is_none()) {
            if !guard_logged {
                info!(
                    shard,
                    node = stranger,
                    "membership differs from placement, but --peers does not name node \
                     {stranger}: leaving the group to a leader with the newer peer list"
                );
                guard_logged = true;
            }
            continue;
        }
        let mut caught_up = true;
        for id in desired.difference(&in_group) {
            let addr = node.cluster.addr(*id).unwrap_or_default();
            info!(
                shard,
                node = id,
                "adding a member: catching it up as a learner"
            );
            // Waiting for a learner to catch up may take minutes: a node that is
            // stopping stops waiting (the learner stays; the next leader goes on).
            let added = tokio::time::timeout(
                Duration::from_millis(CATCH_UP_MS_MAX),
                local.raft.add_learner(*id, BasicNode::new(addr), true),
            );
            let Some(added) = stop.run_until_cancelled(added).await else {
                return;
            };
            match added {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(shard, node = id, error = %e, "adding a learner failed");
                    caught_up = false;
                    break;
                }
                Err(_) => {
                    warn!(shard, node = id, "the learner did not catch up in time");
                    caught_up = false;
                    break;
                }
            }
        }
        if !caught_up {
            continue;
        }
        match local.raft.change_membership(desired.clone(), false).await {
            Ok(_) => info!(shard, members = ?desired, was = ?voters, "members changed"),
            Err(e) => warn!(shard, error = %e, "changing members failed; will retry"),
        }
    }
}

/// On a node that hosts `shard` only because it has data for it (the placement moved
/// the shard away): stop the group and drop its data once the shard's leader reports
/// a membership that does not include this node.
pub async fn retire_when_moved(node: Arc<Process>, shard: u32, stop: CancellationToken) {
    let Some(local) = node.shards.get(&shard).cloned() else {
        return;
    };
    let members = node.cluster.members(shard);
    let mut ticks = Ticks::every(Duration::from_millis(RECONCILE_INTERVAL_MS), stop);
    while ticks.next().await {
        if local.leader().1 {
            continue; // still leading: reconcile moves the shard first
        }
        let Ok(views) =
            crate::cluster_view::peer_views(&node, &members, Duration::from_millis(1_000)).await
        else {
            continue;
        };
        let moved = views
            .iter()
            .filter_map(|(_, v)| v.as_ref())
            .flat_map(|v| v.shards.iter())
            .any(|s| {
                s.shard == shard
                    && crate::shard::reports_leader(s)
                    && !s.members.is_empty()
                    && !s.members.contains(&node.id)
            });
        if moved {
            info!(shard, "the shard moved to other nodes; stopping this copy");
            local.retire().await;
            match node.store.as_ref().map(|s| s.drop_group(shard)) {
                Some(Ok(())) => info!(shard, "dropped this node's copy of the shard"),
                Some(Err(e)) => warn!(shard, error = %e, "dropping the shard's data failed"),
                None => {}
            }
            return;
        }
    }
}
