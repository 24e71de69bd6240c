//! One shard hosted on this node: its Raft group, its state machine reader, its
//! batching queue, and two background duties.
//!
//! - The expiry ticker: about once a second, if this replica leads the shard and some
//!   hold's deadline has passed in log time (the time the leader's next stamp would
//!   carry, see `clock`; not its wall clock, which may be far off), propose `Expire`,
//!   so seats come back even when no command touches their event. On every replica it
//!   also shows the stamper the applied stamp, so a new leader's log time counts from
//!   when it last saw log time move.
//! - The watcher: one log line per notable Raft event (role or leader change,
//!   snapshot built or installed, log purged), never per request; and the one place
//!   that notices the group stopped by itself (a panic in openraft's core, a fatal
//!   storage error).
//!
//! A failed group is never trusted again in this process: its last metrics may still
//! say Leader, so [`Shard::leader`] and routing ignore it, its status says `failed`,
//! and the node is told (see `node`'s failure handling: health NOT_SERVING for the
//! shard, then the process exits for its supervisor to restart it).
//!
//! Reads: `read_consistent` confirms leadership with a quorum (openraft's ReadIndex)
//! and waits until the state machine has applied up to the read point, so a read never
//! misses a write acknowledged before it began.

use std::time::Duration;

use crate::lifecycle::{Background, CancellationToken, Ticks};
use openraft::{Raft, ServerState};
use raft_store::raft::{NodeId, TypeConfig};
use raft_store::storage::{LogStore, MachineReader};
use raft_store::{Command, Outcome, SeatMachine};
use seatd_proto::v1::ShardRole;
use tracing::{info, warn};

use crate::clock::Stamper;
pub use proposer::ShardError;
use proposer::{Pending, Proposer};

pub mod checkout;
pub mod proposer;

/// How often the leader checks for holds past their deadline.
pub const EXPIRE_INTERVAL_MS: u64 = 1_000;

pub struct Shard {
    pub id: u32,
    pub raft: Raft<TypeConfig>,
    pub reader: MachineReader,
    proposer: Proposer,
    node: NodeId,
    /// Set once the shard moved away from this node and its group was stopped here.
    retired: std::sync::atomic::AtomicBool,
    /// Set once the group stopped by itself (see the module doc).
    failed: std::sync::atomic::AtomicBool,
    /// The group's log, read for the last log id a rejoining peer compares with.
    log: LogStore,
}

/// Where a shard reports that its group failed: the shard's id.
pub type FailureReport = tokio::sync::mpsc::UnboundedSender<u32>;

/// A started Raft group of a shard on this node, with the views of its storage the
/// shard reads.
pub struct Replica {
    pub raft: Raft<TypeConfig>,
    /// The group's log (read for its last log id only; openraft owns the writing).
    pub log: LogStore,
    pub reader: MachineReader,
}

impl Shard {
    /// Wraps a started Raft group and starts the shard's background tasks on
    /// `background`; they end when its token is cancelled.
    pub fn start(
        id: u32,
        node: NodeId,
        replica: Replica,
        stamper: Stamper,
        background: &Background,
        failures: FailureReport,
    ) -> std::sync::Arc<Self> {
        let Replica { raft, log, reader } = replica;
        // Each term this replica leads starts its log time from the applied stamp.
        let stamper = stamper.following(raft.metrics());
        let proposer = Proposer::start(id, raft.clone(), stamper.clone());
        let shard = std::sync::Arc::new(Self {
            id,
            raft,
            reader,
            proposer,
            node,
            retired: Default::default(),
            failed: Default::default(),
            log,
        });
        let stop = background.stop.clone();
        background.spawn(expire_ticker(shard.clone(), stamper, stop.clone()));
        background.spawn(watch_metrics(shard.clone(), stop, failures));
        shard
    }

    /// The id of the last entry this replica's log holds (a storage error reads as
    /// none: the caller is a status report, and a rejoining peer then waits for more).
    pub fn last_log_id(&self) -> Option<openraft::LogId<NodeId>> {
        self.log.last_log_id().unwrap_or_else(|e| {
            tracing::warn!(shard = self.id, error = %e, "cannot read the last log id");
            None
        })
    }

    /// Whether the shard moved away and this copy was stopped (see `membership`).
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the group stopped by itself (see the module doc).
    pub fn has_failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this copy may serve anything: neither retired nor failed.
    pub fn is_serving(&self) -> bool {
        !self.is_retired() && !self.has_failed()
    }

    /// Stops this copy of the group for good: the group's committed membership no
    /// longer names this node.
    pub async fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        if let Err(e) = self.raft.shutdown().await {
            warn!(shard = self.id, error = %e, "raft shutdown failed");
        }
    }

    /// The leader this replica knows of, and whether it is this node, acting as leader.
    pub fn leader(&self) -> (Option<NodeId>, bool) {
        if self.has_failed() {
            return (None, false);
        }
        let m = self.raft.metrics();
        let m = m.borrow();
        let me = m.current_leader == Some(self.node) && m.state == ServerState::Leader;
        (m.current_leader, me)
    }

    pub async fn propose(&self, command: Command) -> Result<Outcome, ShardError> {
        self.proposer.propose(command).await
    }

    /// Queues `command` for the shard's next entry; see [`Proposer::submit`].
    pub fn submit(&self, command: Command) -> Result<Pending, ShardError> {
        self.proposer.submit(command)
    }

    /// Runs `f` on the state machine after a linearizable read point was reached.
    pub async fn read_consistent<T>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&SeatMachine) -> T,
    ) -> Result<T, ShardError> {
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(ShardError::Unavailable(format!(
                "shard {}: no quorum confirmed leadership within {} ms",
                self.id,
                timeout.as_millis()
            ))),
            Ok(Err(e)) => Err(match e.forward_to_leader() {
                Some(f) => ShardError::NotLeader(f.leader_id),
                None => ShardError::Unavailable(format!("shard {}: {e}", self.id)),
            }),
            Ok(Ok(_)) => Ok(self.reader.read(f)),
        }
    }

    /// This replica's view of the shard, for status answers.
    pub fn status(&self, with_digest: bool) -> seatd_proto::v1::ShardStatus {
        let m = self.raft.metrics().borrow().clone();
        let (applied, digest) = self.reader.read(|sm| {
            let digest = if with_digest {
                sm.digest().to_vec()
            } else {
                Vec::new()
            };
            (sm.applied_index(), digest)
        });
        let retired = self.is_retired();
        let last = self.last_log_id();
        let members = if retired {
            Vec::new()
        } else {
            m.membership_config.membership().voter_ids().collect()
        };
        let role = if retired {
            ShardRole::Retired
        } else if self.has_failed() {
            ShardRole::Failed
        } else {
            role_of(m.state)
        };
        seatd_proto::v1::ShardStatus {
            shard: self.id,
            leader: m.current_leader,
            members,
            applied_index: applied.unwrap_or(0),
            term: m.current_term,
            reported_by: self.node,
            role: role_name(role).into(),
            role_kind: role as i32,
            initialized: m.current_term > 0 || m.last_log_index.is_some(),
            digest,
            last_log_index: last.map_or(0, |l| l.index),
            last_log_term: last.map_or(0, |l| l.leader_id.term),
            last_log_leader: last.map_or(0, |l| l.leader_id.node_id),
            purged_index: m.purged.map(|p| p.index).unwrap_or(0),
            // Known to the node, which holds the gates (see `cluster_view::local_status`).
            rejoining: false,
            catching_up: false,
        }
    }
}

/// A replica's role as the wire says it.
pub fn role_of(state: ServerState) -> ShardRole {
    match state {
        ServerState::Leader => ShardRole::Leader,
        ServerState::Follower => ShardRole::Follower,
        ServerState::Candidate => ShardRole::Candidate,
        ServerState::Learner => ShardRole::Learner,
        ServerState::Shutdown => ShardRole::Shutdown,
    }
}

/// A role as a word for people (logs, `ShardStatus.role`).
pub fn role_name(role: ShardRole) -> &'static str {
    match role {
        ShardRole::Leader => "leader",
        ShardRole::Follower => "follower",
        ShardRole::Candidate => "candidate",
        ShardRole::Learner => "learner",
        ShardRole::Shutdown => "shutdown",
        ShardRole::Failed => "failed",
        ShardRole::Retired => "retired",
        ShardRole::Unspecified => "unknown",
    }
}

/// Whether a status says its reporter leads the shard. A node of an older version
/// sends no `role_kind`: its word for the role is read then.
pub fn reports_leader(s: &seatd_proto::v1::ShardStatus) -> bool {
    match ShardRole::try_from(s.role_kind) {
        Ok(ShardRole::Unspecified) | Err(_) => s.role == "leader",
        Ok(role) => role == ShardRole::Leader,
    }
}

async fn expire_ticker(shard: std::sync::Arc<Shard>, stamper: Stamper, stop: CancellationToken) {
    let mut ticks = Ticks::every(Duration::from_millis(EXPIRE_INTERVAL_MS), stop);
    while ticks.next().await {
        stamper.tick();
        if !shard.leader().1 {
            continue;
        }
        let due = shard.reader.read(|m| m.next_deadline_ms());
        if due.is_some_and(|d| d <= stamper.log_now_ms()) {
            match shard.propose(Command::Expire).await {
                Ok(Ok(raft_store::Reply::Expired {
                    holds_expired,
                    checkouts_aborted,
                })) if holds_expired + checkouts_aborted > 0 => {
                    tracing::debug!(
                        shard = shard.id,
                        holds_expired,
                        checkouts_aborted,
                        "expired"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(shard = shard.id, error = %e, "expire not proposed"),
            }
        }
    }
}

/// Marks `shard` failed and reports it, unless its stop was asked for.
fn group_stopped(shard: &Shard, failures: &FailureReport, why: &str) {
    if shard.is_retired() {
        return;
    }
    tracing::error!(
        shard = shard.id,
        why,
        "raft group stopped by itself; this copy serves nothing more"
    );
    shard
        .failed
        .store(true, std::sync::atomic::Ordering::Release);
    let _ = failures.send(shard.id);
}

/// Logs role changes, leader changes, snapshots and purges of one shard, and
/// notices when its group stops without being asked to.
async fn watch_metrics(
    shard_ref: std::sync::Arc<Shard>,
    stop: CancellationToken,
    failures: FailureReport,
) {
    let shard = shard_ref.id;
    let mut rx = shard_ref.raft.metrics();
    let mut last = rx.borrow().clone();
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() {
                // The core task is gone (a panic drops the metrics sender).
                if !stop.is_cancelled() {
                    group_stopped(&shard_ref, &failures, "its core task ended");
                }
                return;
            },
            _ = stop.cancelled() => return,
        }
        let m = rx.borrow().clone();
        if (m.running_state.is_err() || m.state == ServerState::Shutdown) && !stop.is_cancelled() {
            let why = match &m.running_state {
                Err(e) => e.to_string(),
                Ok(()) => "it shut down".to_string(),
            };
            group_stopped(&shard_ref, &failures, &why);
            return;
        }
        if m.state != last.state {
            info!(
                shard,
                term = m.current_term,
                "now {}",
                role_name(role_of(m.state))
            );
        }
        if m.current_leader != last.current_leader {
            match m.current_leader {
                Some(l) => info!(shard, term = m.current_term, leader = l, "leader elected"),
                None => warn!(shard, term = m.current_term, "no leader"),
            }
        }
        if m.snapshot != last.snapshot {
            if let Some(s) = m.snapshot {
                info!(shard, index = s.index, "snapshot at index {}", s.index);
            }
        }
        if m.purged != last.purged {
            if let Some(p) = m.purged {
                info!(shard, index = p.index, "log purged up to index {}", p.index);
            }
        }
        last = m;
    }
}
