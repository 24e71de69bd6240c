//! Batching: concurrent client commands for one shard become one log entry.
//!
//! openraft 0.9 appends and syncs one entry at a time per group, so the number of
//! entries per second is bounded by sync latency; the number of commands is not.
//! Callers put a command on the shard's bounded queue; one task takes the first
//! command, waits for an in-flight slot, then drains whatever else is queued into one
//! [`Batch`] stamped by the leader's clock, up to [`COMMANDS_PER_ENTRY_MAX`] commands
//! and [`ENTRY_BYTES_MAX`] bytes: a command that would pass either waits for the next
//! entry (it is held back, not requeued, so order is kept).
//!
//! No timer: a lone command is proposed at once, and under load the queue fills while
//! earlier entries are in flight, so batches grow exactly when waiting is free.
//!
//! Invariants: every command gets exactly one answer (its outcome, or an error that
//! says it was not applied by this leader); a full queue refuses at once
//! ([`ShardError::Overloaded`]) rather than growing. Commands whose caller already
//! gave up are dropped before they are proposed, never after. A command that encodes
//! to more than [`COMMAND_BYTES_MAX`] is refused when it is submitted
//! ([`ShardError::TooLarge`]), so every entry encodes to at most [`ENTRY_BYTES_MAX`]
//! and every AppendEntries fits the Raft transport (`raft_store::limits`).
//!
//! Caveat: an error after a command was proposed (leadership lost mid-flight) does not
//! prove it was not applied. That is why every command carries a retry key (client
//! reservation id, idempotency key) or is idempotent by nature, and why callers retry
//! with the same command.

use std::sync::Arc;

use openraft::Raft;
use raft_store::limits::{check_command_bytes, ENTRY_BYTES_MAX};
use raft_store::raft::{NodeId, TypeConfig};
use raft_store::{Batch, Command, Exceeded, Outcome};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use crate::clock::Stamper;

use crate::limits::{
    COMMANDS_PER_ENTRY_MAX, COMMAND_BYTES_PER_ENTRY_MAX, ENTRIES_IN_FLIGHT_MAX, QUEUED_COMMANDS_MAX,
};

/// Why a shard did not propose a command or serve a read: the one error type of the
/// shard layer (`Shard::propose`, `Shard::submit`, `Shard::read_consistent`); the
/// router acts on it, and `error.rs` turns what reaches a caller into a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// This node is not the shard's leader (the leader it knows, if any).
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The shard's queue is full.
    #[error("shard {0} is overloaded: too many commands queued")]
    Overloaded(u32),
    /// Raft failed or is shutting down; the command may or may not have been applied.
    #[error("{0}")]
    Unavailable(String),
    /// The command encodes to more than `COMMAND_BYTES_MAX`; it was not proposed.
    #[error(transparent)]
    TooLarge(Exceeded),
}

/// What a caller of the shard is told (here, not in `error.rs`, so the error layer
/// does not depend on the shard layer).
impl From<ShardError> for crate::error::Error {
    fn from(e: ShardError) -> Self {
        use crate::error::Error;
        match e {
            ShardError::NotLeader(_) => Error::NotLeader,
            ShardError::TooLarge(e) => Error::Limit(e),
            ShardError::Overloaded(_) => Error::Overloaded(e.to_string()),
            ShardError::Unavailable(m) => Error::Unavailable(m),
        }
    }
}

struct Proposal {
    command: Command,
    /// `command`'s encoded size, as the log carries it.
    bytes: usize,
    reply: oneshot::Sender<Result<Outcome, ShardError>>,
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
    pub async fn propose(&self, command: Command) -> Result<Outcome, ShardError> {
        self.submit(command)?.outcome().await
    }

    /// Queues `command` without waiting: many commands can be queued this way (they
    /// share entries) and their outcomes awaited afterwards, in any order. A command
    /// larger than `COMMAND_BYTES_MAX` is refused here, before it is proposed.
    pub fn submit(&self, command: Command) -> Result<Pending, ShardError> {
        let bytes = check_command_bytes(&command).map_err(ShardError::TooLarge)?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Proposal {
                command,
                bytes,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ShardError::Overloaded(self.shard),
                mpsc::error::TrySendError::Closed(_) => {
                    ShardError::Unavailable("shard is shutting down".into())
                }
            })?;
        Ok(Pending(answer))
    }
}

/// A queued command's outcome, to come. Dropping it before the command is proposed
/// withdraws the command (see the module doc).
pub struct Pending(oneshot::Receiver<Result<Outcome, ShardError>>);

impl Pending {
    pub async fn outcome(self) -> Result<Outcome, ShardError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(ShardError::Unavailable("shard stopped".into())))
    }
}

async fn run(
    shard: u32,
    raft: Raft<TypeConfig>,
    stamper: Stamper,
    mut rx: mpsc::Receiver<Proposal>,
) {
    let slots = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT_MAX));
    // A command that did not fit the last entry: it opens the next one.
    let mut held_back: Option<Proposal> = None;
    loop {
        let first = match held_back.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        // While we waited for a slot, more commands arrived: they share this entry.
        let mut batch = gather(first, &mut held_back, || rx.try_recv().ok());
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

/// One entry's commands: `first`, then commands from `next` in order while the entry
/// stays within [`COMMANDS_PER_ENTRY_MAX`] commands and
/// [`COMMAND_BYTES_PER_ENTRY_MAX`] bytes. The first command that does not fit is put
/// in `held_back`, to open the next entry. `first` always fits (`submit` refused
/// anything larger than `COMMAND_BYTES_MAX`).
fn gather(
    first: Proposal,
    held_back: &mut Option<Proposal>,
    mut next: impl FnMut() -> Option<Proposal>,
) -> Vec<Proposal> {
    debug_assert!(first.bytes <= COMMAND_BYTES_PER_ENTRY_MAX);
    let mut bytes = first.bytes;
    let mut batch = Vec::with_capacity(16);
    batch.push(first);
    while batch.len() < COMMANDS_PER_ENTRY_MAX {
        let Some(p) = next() else { break };
        if bytes + p.bytes > COMMAND_BYTES_PER_ENTRY_MAX {
            *held_back = Some(p);
            break;
        }
        bytes += p.bytes;
        batch.push(p);
    }
    batch
}

async fn write(shard: u32, raft: Raft<TypeConfig>, ts_ms: u64, batch: Vec<Proposal>) {
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let n = commands.len();
    let batch = Batch { ts_ms, commands };
    debug_assert!(raft_store::limits::batch_bytes(&batch) <= ENTRY_BYTES_MAX);
    match raft.client_write(batch.into()).await {
        Ok(written) => {
            assert_eq!(written.data.len(), n, "one outcome per command of an entry");
            for (reply, outcome) in replies.into_iter().zip(written.data) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            let err = match e.forward_to_leader() {
                Some(f) => ShardError::NotLeader(f.leader_id),
                None => ShardError::Unavailable(format!("shard {shard}: {e}")),
            };
            debug!(shard, commands = n, error = %err, "entry not written");
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_store::limits::COMMAND_BYTES_MAX;
    use raft_store::{EventId, HoldRequest};

    /// A hold whose encoding is about `bytes` long (its seat ids carry the bulk; the
    /// proposer does not look inside commands).
    fn hold_of(n: usize, bytes: usize) -> Command {
        let id = "s".repeat(250);
        Command::Hold(HoldRequest {
            event_id: EventId::new("big").unwrap(),
            user: format!("u{n}"),
            seats: vec![id; bytes / 252],
            client_reservation_id: format!("r{n}"),
            ttl_ms: None,
            expected_versions: None,
        })
    }

    fn proposal(command: Command) -> Proposal {
        let bytes = check_command_bytes(&command).unwrap();
        Proposal {
            command,
            bytes,
            reply: oneshot::channel().0,
        }
    }

    /// Gathers every queued proposal into entries the way `run` does.
    fn entries_of(queued: Vec<Proposal>) -> Vec<Vec<Proposal>> {
        let mut queue = queued.into_iter();
        let mut held_back = None;
        let mut entries = Vec::new();
        while let Some(first) = held_back.take().or_else(|| queue.next()) {
            entries.push(gather(first, &mut held_back, || queue.next()));
        }
        entries
    }

    #[test]
    fn large_commands_are_split_into_entries_below_the_entry_limit() {
        // Ten commands of 1.5 MiB: two per entry (three would pass 4 MiB). Before
        // batching counted bytes, all ten shared one 15 MiB entry.
        let queued: Vec<Proposal> = (0..10).map(|n| proposal(hold_of(n, 3 << 19))).collect();
        let order: Vec<Command> = queued.iter().map(|p| p.command.clone()).collect();
        let entries = entries_of(queued);
        assert_eq!(entries.iter().map(Vec::len).collect::<Vec<_>>(), [2; 5]);
        for entry in &entries {
            let batch = Batch {
                ts_ms: u64::MAX,
                commands: entry.iter().map(|p| p.command.clone()).collect(),
            };
            let encoded = raft_store::limits::batch_bytes(&batch);
            assert!(encoded <= ENTRY_BYTES_MAX, "{encoded} > {ENTRY_BYTES_MAX}");
        }
        // Nothing lost, nothing reordered.
        let proposed: Vec<Command> = entries.into_iter().flatten().map(|p| p.command).collect();
        assert_eq!(proposed, order);
    }

    #[test]
    fn a_command_of_the_largest_size_gets_an_entry_of_its_own() {
        let small = || proposal(hold_of(0, 300));
        let mut big = hold_of(1, COMMAND_BYTES_MAX);
        // Trim it to exactly the limit.
        while check_command_bytes(&big).is_err() {
            let Command::Hold(h) = &mut big else {
                unreachable!()
            };
            h.seats.pop();
        }
        let entries = entries_of(vec![small(), proposal(big), small(), small()]);
        assert_eq!(entries.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 2]);
    }

    #[test]
    fn small_commands_fill_an_entry_up_to_the_command_count() {
        let queued = (0..COMMANDS_PER_ENTRY_MAX + 5)
            .map(|n| proposal(hold_of(n, 300)))
            .collect();
        let entries = entries_of(queued);
        assert_eq!(
            entries.iter().map(Vec::len).collect::<Vec<_>>(),
            [COMMANDS_PER_ENTRY_MAX, 5]
        );
    }

    #[test]
    fn a_command_over_the_limit_is_refused_before_it_is_queued() {
        let (queue, mut rx) = mpsc::channel(4);
        let proposer = Proposer { shard: 3, queue };
        let err = proposer
            .submit(hold_of(0, COMMAND_BYTES_MAX + 1024))
            .err()
            .unwrap();
        let ShardError::TooLarge(e) = err else {
            panic!("{err:?}")
        };
        assert_eq!(e.limit, raft_store::Limit::CommandBytes);
        assert!(e.actual > COMMAND_BYTES_MAX as u64);
        assert!(rx.try_recv().is_err(), "an oversized command was queued");
    }
}
