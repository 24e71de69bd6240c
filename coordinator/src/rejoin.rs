//! Catching up a replica whose gate is closed (it lost its state for a shard, or
//! probes whether it did; the rules are in [`crate::raft_net::gate`]).
//!
//! One task per closed gate: it keeps the group from standing for election, asks
//! every other member of the shard for its last log position over the peer port until
//! all of them answered (the latest is the target), settles the gate with it (a
//! probing replica level with the others opens at once; one behind, or one that
//! started empty, persists the target), and opens the gate once the replica has
//! applied the target. It ends when the gate opens or the node stops; a restart picks
//! up where it was from the gate file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::lifecycle::{pause, CancellationToken};
use raft_store::raft::NodeId;
use tracing::{info, warn};

use crate::process::Process;
use crate::raft_net::gate::LogPos;
use crate::raft_net::VoteGate;
use crate::shard::{reports_leader, Shard};

/// How often a closed gate looks again.
const REJOIN_POLL_MS: u64 = 250;

/// A replica's last log position as its status reports it (`None`: no entry).
fn position(s: &seatd_proto::v1::ShardStatus) -> Option<LogPos> {
    (s.last_log_index > 0 || s.last_log_term > 0).then_some(LogPos {
        term: s.last_log_term,
        node: s.last_log_leader,
        index: s.last_log_index,
    })
}

/// What the other members report for `shard` (the latest last log position, `None`
/// when none holds an entry, and the highest term), once it is sound to take (see [`crate::raft_net::gate`]):
/// every voter of the latest configuration any of them (or this replica) knows,
/// other than this replica, answered; and, for a gate closed on disk (this replica
/// lost state), none of those voters is itself catching up, since a replica that lost
/// state may lack what was committed, and two such are a majority lost (`seatd
/// reform`). Members outside that configuration (the placement's, not yet added)
/// count when they answer.
async fn target_from_members(node: &Arc<Process>, local: &Shard, on_disk: bool) -> Option<Answers> {
    let shard = local.id;
    let mine = local.status(false);
    let mut ask: BTreeSet<NodeId> = node.cluster.members(shard).into_iter().collect();
    ask.extend(mine.members.iter().copied());
    ask.remove(&node.id);
    let ask: Vec<NodeId> = ask.into_iter().collect();
    let views = crate::cluster_view::peer_views(node, &ask, Duration::from_millis(1_000))
        .await
        .ok()?;
    let answers: BTreeMap<NodeId, seatd_proto::v1::ShardStatus> = views
        .into_iter()
        .filter_map(|(id, v)| {
            let v = v?.shards.into_iter().find(|s| s.shard == shard);
            // A node without the shard answers as a replica without entries.
            Some((id, v.unwrap_or_default()))
        })
        .collect();
    // The configuration of the most advanced log known, this replica's included.
    let newest = answers
        .values()
        .chain(std::iter::once(&mine))
        .max_by_key(|s| position(s))?;
    let mut needed: BTreeSet<NodeId> = newest.members.iter().copied().collect();
    if needed.is_empty() {
        needed = ask.iter().copied().collect();
    }
    needed.remove(&node.id);
    let term = answers.values().map(|s| s.term).max().unwrap_or(0);
    // A leader in the highest term anyone reports holds every committed entry (it
    // was elected through the others' gates), so its answer is evidence enough even
    // when other voters are catching up (new members, or after `seatd reform`).

    let led = answers
        .values()
        .any(|s| reports_leader(s) && s.term == term && needed.contains(&s.reported_by));
    for voter in &needed {
        let answer = answers.get(voter)?;
        if on_disk && answer.catching_up && !led {
            return None;
        }
    }
    Some(Answers {
        latest: answers.values().filter_map(position).max(),
        term,
    })
}

/// What every needed member answered: the latest last log position (`None`: no
/// entry anywhere) and the highest current term.
struct Answers {
    latest: Option<LogPos>,
    term: u64,
}

/// Runs `shard`'s closed gate until it opens (see the module doc).
pub async fn catch_up(node: Arc<Process>, shard: u32, gate: VoteGate, stop: CancellationToken) {
    let Some(local) = node.shards.get(&shard).cloned() else {
        return;
    };
    gate.apply_to(&local.raft);
    let mut waiting_logged = false;
    loop {
        if gate.open_if_caught_up(&local.raft) {
            return;
        }
        // Asked each round: the group reports what it applied shortly after it starts.
        let applied = local
            .raft
            .metrics()
            .borrow()
            .last_applied
            .as_ref()
            .map(LogPos::from);
        match gate.reached_before_start(applied) {
            Ok(true) => info!(shard, ?applied, "had caught up before this start: probes"),
            Ok(false) => {}
            Err(e) => warn!(shard, error = %e, "cannot update the gate file"),
        }
        if gate.needs_target() {
            match target_from_members(&node, &local, gate.is_catching_up()).await {
                Some(Answers {
                    latest: others,
                    term,
                }) => {
                    gate.set_vote_floor(term);
                    let mine = local.last_log_id().as_ref().map(LogPos::from);
                    match gate.settle(others, mine) {
                        Ok(true) => {
                            info!(
                                shard,
                                ?others,
                                ?mine,
                                "rejoining: catching up before voting"
                            )
                        }
                        Ok(false) => {
                            gate.apply_to(&local.raft);
                            info!(shard, ?mine, "no other member is ahead: votes");
                            return;
                        }
                        Err(e) => warn!(shard, error = %e, "cannot record the rejoin target"),
                    }
                }
                None if !waiting_logged => {
                    warn!(
                        shard,
                        "rejoining: waiting for every other member to answer before this \
                         replica may vote"
                    );
                    waiting_logged = true;
                }
                None => {}
            }
        }
        if !pause(&stop, Duration::from_millis(REJOIN_POLL_MS)).await {
            return;
        }
    }
}
