//! Retention: decisions kept only to answer retries are forgotten after
//! [`DECISION_RETENTION_MS`] of log time, by `apply` itself, a bounded number per entry.
//!
//! What is forgotten. A record that decides nothing any more and only answers a retry:
//! a refused hold request, the grant of a hold that was released or expired, and a
//! refused checkout (its idempotency key's refusal, including a declined payment).
//! Each is final from the moment it becomes retention-only: no command changes it
//! again. Nothing else is forgotten: a live or committed hold's grant is derived from
//! the hold (and a committed hold stays, with its order, for good), a checkout in
//! progress or completed stays with its hold or order, and holds, orders and seats
//! themselves are kept. After its record is purged, a retry is a new request and is
//! decided afresh (a hold may be granted that was refused a day earlier). That is the
//! intended meaning of a retry: it repeats a request whose answer the client may have
//! missed, within a retry budget of seconds to minutes (the client library's default
//! is 30 s), not a day later.
//!
//! Why the retention is at least `HOLD_TTL_MS_CAP` (asserted below): a refused
//! checkout is decided at or after its hold was created, and a hold is active only
//! before `created + TTL <= created + HOLD_TTL_MS_CAP`. So when a refusal is purged,
//! its hold can no longer be active, and a retry under the purged key can never start
//! a second checkout (a second charge) of the hold whose payment it refused; at most it
//! hears that another checkout is in progress, or that the hold ended.
//!
//! The queue. Each record that becomes retention-only gets the next position of one
//! FIFO per machine (shard), with the log time at which it did (`decided_at_ms`). Log
//! time never moves backwards, so positions are in time order and the records due are
//! always a prefix of the queue: `apply` purges from the head, before the entry's
//! commands, every record decided more than [`DECISION_RETENTION_MS`] before the entry's
//! time, at most [`purge_budget_records`] per entry. So the work per entry is bounded by
//! the entry's own size, and purging keeps pace with any load: each command makes at
//! most one record retention-only over its life (a refused hold or checkout at once, a
//! granted hold when it ends, a begun checkout when it is refused), and each entry may
//! purge one record per command and some more.
//!
//! Invariants (checked by `check_invariants`):
//! - `head <= tail`; the positions `head..tail` are the queued records not purged yet,
//!   each stored (on disk, in memory in `window`, or both); their times do not
//!   decrease; `head_decided_at_ms` is the head's time (0 when the queue is empty).
//! - A queued record is retention-only: never a live or committed hold's grant, never
//!   a checkout in progress or completed. Purging checks this again and skips a record
//!   that is not (so a live hold's request can never be purged).
//! - In a machine holding everything in memory (one that never evicts, as the tests
//!   run it), the queue and the retention-only records correspond one to one.
//!
//! Determinism: what is purged depends only on replicated state (the queue, its head
//! time, the entry's time and command count), never on what a node has in memory: the
//! queue's entries are records like the cold ones, kept on disk and read back by
//! storage before the entry that purges them (`cold_keys` names them, only when the
//! head is due, so an entry with nothing due reads nothing). The queue's head, tail,
//! head time and a CRC-32 chained over every queued entry are part of the machine's
//! state image, hence of [`SeatMachine::digest`], and of its records, hence of
//! snapshots: a replica restored from a snapshot purges the same records at the same
//! log time, and replicas that queued or purged differently have different digests.
//!
//! A refused checkout's idempotency key binding (`SeatMachine::keys`) is forgotten
//! with its record: the binding was made by that record's decision, so after both go
//! the key is unknown to the shard, as if never used (its hold can no longer be active,
//! see above). The binding is cold, so it is deleted without being read back. Caveat:
//! a record written before bindings existed may share its key with a binding made
//! later for another hold; purging the old record forgets that binding too (on every
//! replica alike), and the key's own checkout record still answers its retries.
//!
//! Memory: a store keeps no queue entry in memory between entries (they are written
//! with the apply's records and evicted with the cold ones), only the four numbers.
//! Disk: one queue record per retention-only record, deleted with it.
//!
//! Stores written before retention existed have records that were never queued; they
//! are kept forever, as before (their decision times are unknown, and queueing them at
//! load time would not happen at the same log index on every replica).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::event::EventState;
use super::SeatMachine;
use crate::ids::EventId;
use crate::limits::{DECISION_RETENTION_MS, HOLD_TTL_MS_CAP};

/// Records every entry may purge, whatever it carries: drains a backlog even through
/// small entries (the leader's periodic `Expire`).
pub(crate) const PURGES_PER_ENTRY_MIN: usize = 64;
/// Further records an entry may purge per command it carries.
pub(crate) const PURGES_PER_COMMAND: usize = 1;
/// Queue positions a machine may reach: one per record ever queued, so a real history
/// stays far below (2^62 decisions would take millions of years at a million a
/// second). Stored queues beyond it are refused as damaged, so `push` cannot overflow.
pub(crate) const QUEUE_POSITIONS_MAX: u64 = 1 << 62;

// A purged checkout refusal's hold can no longer be active (see the module doc).
const _: () = assert!(DECISION_RETENTION_MS >= HOLD_TTL_MS_CAP);
// Purging keeps pace with queueing: each command queues at most one record in its life.
const _: () = assert!(PURGES_PER_COMMAND >= 1);
const _: () = assert!(PURGES_PER_ENTRY_MIN >= 1);

/// Most records an entry of `commands` commands purges.
pub(crate) fn purge_budget_records(commands: usize) -> usize {
    PURGES_PER_ENTRY_MIN.saturating_add(commands.saturating_mul(PURGES_PER_COMMAND))
}

/// Whether a record decided at `decided_at_ms` is forgotten at `now_ms`: once more
/// than the retention has passed (at exactly the retention it still answers).
pub(crate) fn is_due(decided_at_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(DECISION_RETENTION_MS) > decided_at_ms
}

/// Which record of an event a queue entry names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum Retained {
    /// A hold request's record, by `request_key(user, client_reservation_id)`.
    Request(String),
    /// An idempotency key's checkout record.
    Checkout(String),
}

/// One queued record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetentionEntry {
    /// The log time at which the record became retention-only.
    pub decided_at_ms: u64,
    pub event: EventId,
    pub target: Retained,
}

/// The queue's replicated numbers (stored as one record, and in the state image).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetentionState {
    /// Position of the oldest record not purged yet.
    pub head: u64,
    /// Position the next queued record gets.
    pub tail: u64,
    /// When the record at `head` was decided; 0 while the queue is empty.
    pub head_decided_at_ms: u64,
    /// CRC-32 chained over every entry ever queued (position and encoding), so the
    /// digest covers what was queued even while the entries are on disk only.
    pub queued_crc32: u32,
}

/// The retention queue of a machine.
#[derive(Clone, Debug, Default)]
pub(crate) struct Retention {
    pub state: RetentionState,
    /// Queue entries in memory, by position: those queued since storage last took the
    /// changes, and those read back to be purged. Every one, in a machine that never
    /// evicts.
    pub window: BTreeMap<u64, RetentionEntry>,
    /// `head` and `tail` when storage last took the changes (bookkeeping for
    /// `take_changes`, not state).
    pub taken_head: u64,
    pub taken_tail: u64,
}

impl Retention {
    /// A queue at `state` with nothing in memory and nothing to write.
    pub fn stored(state: RetentionState) -> Self {
        Self {
            state,
            window: BTreeMap::new(),
            taken_head: state.head,
            taken_tail: state.tail,
        }
    }

    fn push(&mut self, entry: RetentionEntry) {
        let s = &mut self.state;
        debug_assert!(
            s.head == s.tail
                || self
                    .window
                    .last_key_value()
                    .is_none_or(|(_, last)| last.decided_at_ms <= entry.decided_at_ms),
            "log time moved backwards in the retention queue"
        );
        if s.head == s.tail {
            s.head_decided_at_ms = entry.decided_at_ms;
        }
        let mut crc = crc32fast::Hasher::new_with_initial(s.queued_crc32);
        crc.update(&s.tail.to_be_bytes());
        crc.update(&postcard::to_stdvec(&entry).expect("plain data encodes"));
        s.queued_crc32 = crc.finalize();
        self.window.insert(s.tail, entry);
        s.tail += 1;
        assert!(
            s.tail <= QUEUE_POSITIONS_MAX,
            "retention queue positions exhausted"
        );
    }

    /// The first log time at which the head is due, if anything is queued.
    pub fn head_due_at_ms(&self) -> Option<u64> {
        let s = &self.state;
        (s.head < s.tail).then(|| {
            s.head_decided_at_ms
                .saturating_add(DECISION_RETENTION_MS)
                .saturating_add(1)
        })
    }

    /// Positions of the queue entries applying an entry stamped `now_ms` with
    /// `commands` commands reads: none unless the head is due, else as many as it may
    /// purge and one more, whose time becomes the head's.
    pub fn positions_read(&self, now_ms: u64, commands: usize) -> Range<u64> {
        let s = &self.state;
        if s.head == s.tail || !is_due(s.head_decided_at_ms, now_ms) {
            return s.head..s.head;
        }
        let budget = purge_budget_records(commands) as u64;
        s.head..s.head.saturating_add(budget).saturating_add(1).min(s.tail)
    }
}

impl SeatMachine {
    /// Most records one entry of `commands` commands purges (see `machine::retention`).
    pub fn purge_budget_records(commands: usize) -> usize {
        purge_budget_records(commands)
    }

    /// Records queued to be purged and not purged yet, on disk or in memory.
    pub fn records_awaiting_purge(&self) -> u64 {
        let s = &self.retention.state;
        s.tail - s.head
    }

    /// Forgets the records due at `now_ms`, at most `budget_records` of them, oldest
    /// first. Returns how many.
    pub(super) fn purge_due(&mut self, now_ms: u64, budget_records: usize) -> usize {
        let mut purged = 0;
        while purged < budget_records {
            let s = &mut self.retention.state;
            if s.head == s.tail || !is_due(s.head_decided_at_ms, now_ms) {
                break;
            }
            let pos = s.head;
            let entry = self.retention.window.remove(&pos).unwrap_or_else(|| {
                panic!("retention entry {pos} was not read back before the entry that purges it")
            });
            debug_assert_eq!(entry.decided_at_ms, s.head_decided_at_ms);
            s.head += 1;
            s.head_decided_at_ms = if s.head < s.tail {
                let next = s.head;
                self.retention
                    .window
                    .get(&next)
                    .unwrap_or_else(|| {
                        panic!("retention entry {next} was not read back to become the head")
                    })
                    .decided_at_ms
            } else {
                0
            };
            // An unknown event cannot have records; the entry is dropped all the same,
            // on every replica alike.
            let forgot = self
                .events
                .get_mut(&entry.event)
                .is_some_and(|event| event.forget(&entry.target));
            // A refused checkout's key is forgotten whole: its binding to the hold goes
            // with the record (which made it), so a key's records stay bounded too.
            if let (true, Retained::Checkout(key)) = (forgot, &entry.target) {
                self.keys.remove(key);
                self.purged_keys.push(key.clone());
            }
            purged += 1;
        }
        purged
    }

    /// Queues what became retention-only in `event` (all events when `None`) at
    /// `now_ms`, in event id order, each event's in the order it happened.
    pub(super) fn queue_retired(&mut self, event: Option<&EventId>, now_ms: u64) {
        let retention = &mut self.retention;
        let mut queue = |e: &mut EventState| {
            for target in e.retired.drain(..) {
                retention.push(RetentionEntry {
                    decided_at_ms: now_ms,
                    event: e.def.event_id.clone(),
                    target,
                });
            }
        };
        match event {
            Some(id) => {
                if let Some(e) = self.events.get_mut(id) {
                    queue(e);
                }
            }
            None => self.events.values_mut().for_each(queue),
        }
    }
}

impl EventState {
    /// Drops a queued record from memory and marks it for deletion from the disk. A
    /// record that is not retention-only (a live or committed hold's grant, a checkout
    /// in progress or completed) is never dropped: queueing one would be a bug, which
    /// `check_invariants` reports. Returns whether it was dropped.
    fn forget(&mut self, target: &Retained) -> bool {
        match target {
            Retained::Request(key) => {
                let derived = self
                    .requests
                    .get(key.as_str())
                    .is_some_and(|r| self.is_derived_request(r));
                debug_assert!(!derived, "a live or committed hold's request was queued");
                if derived {
                    return false;
                }
                let key: Arc<str> = match self.requests.remove_entry(key.as_str()) {
                    Some((k, _)) => k,
                    None => key.as_str().into(),
                };
                self.dirty.purged_requests.insert(key);
                true
            }
            Retained::Checkout(key) => {
                let open = self
                    .checkouts
                    .get(key)
                    .is_some_and(|c| !super::persist::is_cold_checkout(c));
                debug_assert!(!open, "a checkout in progress or completed was queued");
                if open {
                    return false;
                }
                self.checkouts.remove(key);
                self.dirty.purged_checkouts.insert(key.clone());
                true
            }
        }
    }
}
