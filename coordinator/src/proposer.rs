//! Batching: concurrent client commands for one shard become one log entry.
//!
//! openraft 0.9 appends and syncs one entry at a time per group, so the number of
//! entries per second is bounded by sync latency; the number of commands is not.
//! Callers put a command on the shard's bounded queue; one task takes the first
//! command, waits for an in-flight slot, then drains whatever else is queued (up to
//! [`COMMANDS_PER_ENTRY_MAX`]) into one [`Batch`] stamped by the leader's clock.
//!
//! No timer: a lone command is proposed at once, and under load the queue fills while
//! earlier entries are in flight, so batches grow exactly when waiting is free.
//!
//! Invariants: every command gets exactly one answer (its outcome, or an error that
//! says it was not applied by this leader); a full queue refuses at once
//! ([`ProposeError::Overloaded`]) rather than growing. Commands whose caller already
//! gave up are dropped before they are proposed, never after.
//!
//! Caveat: an error after a command was proposed (leadership lost mid-flight) does not
//! prove it was not applied. That is why every command carries a retry key (client
//! reservation id, idempotency key) or is idempotent by nature, and why callers retry
//! with the same command.

use std::sync::Arc;

use openraft::Raft;
use raft_store::raft::{NodeId, TypeConfig};
use raft_store::{Batch, Command, Outcome};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use crate::clock::Stamper;

/// Most commands in one log entry.
pub const COMMANDS_PER_ENTRY_MAX: usize = 1024;
/// Most commands waiting for a shard's next entry; beyond this, calls are refused.
pub const QUEUED_COMMANDS_MAX: usize = 16 * 1024;
/// Entries of one shard proposed but not yet answered. One: while it is replicated,
/// the next batch gathers everything that arrives, so entries are as large as the load
/// makes them. Measured with `seatctl bench` (README.md), a second entry in flight cost
/// more CPU per decision (more, smaller entries, each paying its syncs and messages)
/// and gave no more throughput.
pub const ENTRIES_IN_FLIGHT_MAX: usize = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the shard's leader (the leader it knows, if any).
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The shard's queue is full.
    #[error("shard {0} is overloaded: too many commands queued")]
    Overloaded(u32),
    /// Raft failed or is shutting down; the command may or may not have been applied.
    #[error("{0}")]
    Unavailable(String),
}

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// The sending side of one shard's batching queue.
#[derive(Clone)]
pub struct Proposer {
    shard: u32,
    queue: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the batching task for `raft`; it ends when every `Proposer` is dropped.
    pub fn start(shard: u32, raft: Raft<TypeConfig>, stamper: Stamper) -> Self {
        let (queue, rx) = mpsc::channel(QUEUED_COMMANDS_MAX);
        tokio::spawn(run(shard, raft, stamper, rx));
        Self { shard, queue }
    }

    /// Proposes `command` and waits for its outcome.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        self.submit(command)?.outcome().await
    }

    /// Queues `command` without waiting: many commands can be queued this way (they
    /// share entries) and their outcomes awaited afterwards, in any order.
    pub fn submit(&self, command: Command) -> Result<Pending, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Proposal { command, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded(self.shard),
                mpsc::error::TrySendError::Closed(_) => {
                    ProposeError::Unavailable("shard is shutting down".into())
                }
            })?;
        Ok(Pending(answer))
    }
}

/// A queued command's outcome, to come. Dropping it before the command is proposed
/// withdraws the command (see the module doc).
pub struct Pending(oneshot::Receiver<Result<Outcome, ProposeError>>);

impl Pending {
    pub async fn outcome(self) -> Result<Outcome, ProposeError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(ProposeError::Unavailable("shard stopped".into())))
    }
}

async fn run(
    shard: u32,
    raft: Raft<TypeConfig>,
    stamper: Stamper,
    mut rx: mpsc::Receiver<Proposal>,
) {
    let slots = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT_MAX));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        // While we waited for a slot, more commands arrived: they share this entry.
        let mut batch = Vec::with_capacity(rx.len().min(COMMANDS_PER_ENTRY_MAX) + 1);
        batch.push(first);
        while batch.len() < COMMANDS_PER_ENTRY_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        let ts_ms = stamper.stamp();
        tokio::spawn(async move {
            write(shard, raft, ts_ms, batch).await;
            drop(slot);
        });
    }
}

async fn write(shard: u32, raft: Raft<TypeConfig>, ts_ms: u64, batch: Vec<Proposal>) {
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let n = commands.len();
    match raft.client_write(Batch { ts_ms, commands }.into()).await {
        Ok(written) => {
            assert_eq!(written.data.len(), n, "one outcome per command of an entry");
            for (reply, outcome) in replies.into_iter().zip(written.data) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            let err = match e.forward_to_leader() {
                Some(f) => ProposeError::NotLeader(f.leader_id),
                None => ProposeError::Unavailable(format!("shard {shard}: {e}")),
            };
            debug!(shard, commands = n, error = %err, "entry not written");
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}
