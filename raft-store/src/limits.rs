//! Limits: per-event policy chosen at creation, and absolute caps that bound every
//! input the state machine accepts and every byte the log carries.
//!
//! Three kinds, each with its unit in its name:
//!
//! 1. **Per-event policy** ([`Limits`]): replicated with the event, so every replica
//!    enforces the same policy; bounded by the caps below.
//! 2. **Input caps** (lengths of ids and names, seats per hold and per event, sections
//!    per event, events and seats per shard): checked where a request enters the
//!    cluster, so a caller hears a clear [`Exceeded`] before anything is proposed, and
//!    checked again in `apply`, which decides (every replica applies the same rule to
//!    the same log, so all agree even when two entry checks raced).
//! 3. **Bytes of the log** ([`COMMAND_BYTES_MAX`], [`ENTRY_BYTES_MAX`],
//!    [`ENTRIES_PER_APPEND_MAX`], [`SNAPSHOT_CHUNK_BYTES_MAX`]): a command larger than
//!    [`COMMAND_BYTES_MAX`] (as raft-store encodes it, [`command_bytes`]) is refused
//!    before it is proposed; the proposer closes an entry before its commands pass
//!    [`ENTRY_BYTES_MAX`]; openraft sends at most [`ENTRIES_PER_APPEND_MAX`] entries per
//!    AppendEntries (`raft::raft_config`). So no message the Raft transport must carry
//!    can exceed [`RAFT_MESSAGE_BYTES_MAX`], the transport's limit: an entry that could
//!    never be sent (it stalls replication, forces elections and, as a reviewer saw,
//!    panics RaftCore) cannot be written in the first place.
//!
//! Invariants, asserted at compile time at the bottom of this file:
//! - every hold or checkout step that passed the entry checks fits
//!   [`COMMAND_BYTES_MAX`] ([`HOLD_BYTES_MAX`], [`CHECKOUT_BYTES_MAX`]), so only a
//!   `CreateEvent` (its layout) ever meets the byte limit;
//! - one command of the largest allowed size fits one entry;
//! - [`ENTRIES_PER_APPEND_MAX`] entries of the largest allowed size, with their log ids
//!   and the message's own fields, fit [`RAFT_MESSAGE_BYTES_MAX`], and so does a
//!   snapshot chunk;
//! - a whole event's seat counts fit the `u32` counters the machine keeps.
//!
//! Membership entries are not batches: they name a group's members (at most two
//! configurations of a handful of nodes) and their addresses, which the operator
//! chose; a few KiB at most, far below [`ENTRY_BYTES_MAX`].

use serde::{Deserialize, Serialize};

use crate::command::{Batch, Command};

/// Longest event id, in bytes.
pub const EVENT_ID_BYTES_MAX: usize = 64;
/// Longest user id, client reservation id, idempotency key or payment reference.
pub const TOKEN_BYTES_MAX: usize = 128;
/// Longest free-text field (event name, venue name, abort reason, list query).
pub const TEXT_BYTES_MAX: usize = 256;
/// Longest seat, row or section id.
pub const SEAT_ID_BYTES_MAX: usize = 32;
/// Most seats any event may allow in a single hold.
pub const SEATS_PER_HOLD_CAP: u32 = 100;
/// Longest hold TTL any event may allow: one day.
pub const HOLD_TTL_MS_CAP: u64 = 24 * 60 * 60 * 1000;

/// Most seats in one event. Real venues stop at about 150,000 (the `stadium` preset
/// is 100,000), but issue 8's flash-sale benchmark, whose figures README.md reports,
/// sells one event of 1,000,000 seats, so that is the bound. Bounded because
/// everything per event is linear in it: creating the event in `apply` (README.md,
/// "Limits"), its memory on every replica (measured: 88 bytes a seat, 160 when every
/// seat is named), its seat map (read in pages beyond a few hundred thousand seats).
/// A layout that names its seats meets [`COMMAND_BYTES_MAX`] first (at about 400,000
/// short names).
pub const SEATS_PER_EVENT_MAX: usize = 1_000_000;
/// Most sections in one event. Large stadiums have a few hundred; every seat map
/// answer carries all sections' counts, so this bounds a page's fixed part.
pub const SECTIONS_PER_EVENT_MAX: usize = 1_000;
/// Most events in one shard, counting stopped and cancelled ones (events are never
/// deleted). `Expire`, the leader's once-a-second deadline check and `ListEvents`
/// walk every event of a shard, and a snapshot carries every one, so this bounds each
/// walk; a cluster holds `shards ×` this many (80,000 with the default 8 shards).
pub const EVENTS_PER_SHARD_MAX: usize = 10_000;
/// Most seats across the events of one shard. Seats are the bulk of a shard's memory
/// on every replica that hosts it (88–160 bytes each), so this bounds a shard to about
/// 0.45–0.8 GB whatever mix of events it holds (5 events of the largest size, 50
/// stadiums, 250 arenas, 10,000 small halls), and a node hosting all 8 shards of a
/// default cluster to 3.5–6.5 GB.
pub const SEATS_PER_SHARD_MAX: usize = 5_000_000;

/// Longest encoding of one command in the log ([`command_bytes`]). Holds and checkout
/// steps are a few KiB at most; only an event's layout comes near it (a layout that
/// numbers its seats is a few bytes per row, 160 KB for 1,000,000 seats in rows of 50;
/// one that names its seats costs each name's length plus one: 200,000 names of 8
/// bytes take 1.8 MB).
pub const COMMAND_BYTES_MAX: usize = 4 << 20;
/// Longest postcard varint of a `u64` (or `usize` length).
const VARINT_BYTES_MAX: usize = 10;
/// A batch's fields around its commands: the timestamp and the command count.
pub const BATCH_HEADER_BYTES_MAX: usize = 2 * VARINT_BYTES_MAX;
/// Longest encoding of one log entry's batch: the proposer adds commands to an entry
/// while their bytes and [`BATCH_HEADER_BYTES_MAX`] stay within it.
pub const ENTRY_BYTES_MAX: usize = COMMAND_BYTES_MAX + BATCH_HEADER_BYTES_MAX;
/// An entry's fields around its batch in a Raft message: its log id (term, node id,
/// index, as varints) and the payload's tag, with room.
pub const ENTRY_LOG_ID_BYTES_MAX: usize = 64;
/// A Raft message's own fields around its entries or snapshot chunk (vote, previous
/// log id, commit index, snapshot metadata with its membership, the transport's
/// envelope), with ample room for the transport to add its own (sequence numbers).
pub const MESSAGE_HEADER_BYTES_MAX: usize = 64 << 10;
/// Largest message the Raft transport sends or accepts. `coordinator::raft_net`
/// configures its gRPC limits; it must be at least this (see the report of issue 18).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Most entries in one AppendEntries (openraft's `max_payload_entries`): as many of
/// the largest entries as fit one message, 15. Entries are usually far smaller, so a
/// lagging follower catches up 15 entries per round trip.
pub const ENTRIES_PER_APPEND_MAX: usize = (RAFT_MESSAGE_BYTES_MAX - MESSAGE_HEADER_BYTES_MAX)
    / (ENTRY_BYTES_MAX + ENTRY_LOG_ID_BYTES_MAX);
/// Longest AppendEntries the limits above allow.
pub const APPEND_ENTRIES_BYTES_MAX: usize =
    ENTRIES_PER_APPEND_MAX * (ENTRY_BYTES_MAX + ENTRY_LOG_ID_BYTES_MAX) + MESSAGE_HEADER_BYTES_MAX;
/// Largest answer of the client API (`coordinator::route`, and the client library's
/// decoding limit). A whole seat map of the largest event fits it in practice
/// (1,000,000 seats with ids of up to 7 bytes: 15 MB measured; with ids of 32 bytes,
/// about 43 MB by the encoding's sizes) but not for every id and version the types
/// allow; one that does not fit is refused, naming this limit, and is read by section
/// or in pages.
pub const REPLY_BYTES_MAX: usize = 64 << 20;
/// Largest request of the client API a server accepts (a layout naming every seat of
/// a big venue).
pub const REQUEST_BYTES_MAX: usize = 16 << 20;
/// Most holds one `HoldMany` call may carry (the client library's batches stay below).
pub const HOLDS_PER_CALL_MAX: usize = 1024;
/// Most shards a cluster may have (`--shards`; a client's routing table accepts as
/// many).
pub const SHARDS_MAX: u32 = 1024;
/// Snapshot bytes per InstallSnapshot message (openraft's `snapshot_max_chunk_size`,
/// its default).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 3 << 20;
/// Longest InstallSnapshot the limits above allow.
pub const INSTALL_SNAPSHOT_BYTES_MAX: usize = SNAPSHOT_CHUNK_BYTES_MAX + MESSAGE_HEADER_BYTES_MAX;

/// A bound on the encoding of a hold that passed the entry checks (seats at most
/// [`SEATS_PER_HOLD_CAP`], ids and tokens within their lengths): every string with its
/// length prefix, every number as its longest varint, every tag. About 5.6 KiB.
pub const HOLD_BYTES_MAX: usize = 1 // the command's tag
    + (VARINT_BYTES_MAX + EVENT_ID_BYTES_MAX)
    + 2 * (VARINT_BYTES_MAX + TOKEN_BYTES_MAX) // user, client reservation id
    + VARINT_BYTES_MAX + SEATS_PER_HOLD_CAP as usize * (VARINT_BYTES_MAX + SEAT_ID_BYTES_MAX)
    + (1 + VARINT_BYTES_MAX) // TTL
    + (1 + VARINT_BYTES_MAX + SEATS_PER_HOLD_CAP as usize * VARINT_BYTES_MAX); // versions
/// A bound on the encoding of a checkout step or a release: a hold id, an idempotency
/// key or user id, and a payment reference or an abort reason.
pub const CHECKOUT_BYTES_MAX: usize = 1
    + (VARINT_BYTES_MAX + EVENT_ID_BYTES_MAX + VARINT_BYTES_MAX)
    + (VARINT_BYTES_MAX + TOKEN_BYTES_MAX)
    + (VARINT_BYTES_MAX + TEXT_BYTES_MAX);

// The relations the module doc promises.
const _: () = assert!(HOLD_BYTES_MAX <= COMMAND_BYTES_MAX);
const _: () = assert!(CHECKOUT_BYTES_MAX <= COMMAND_BYTES_MAX);
const _: () = assert!(COMMAND_BYTES_MAX + BATCH_HEADER_BYTES_MAX <= ENTRY_BYTES_MAX);
const _: () = assert!(ENTRIES_PER_APPEND_MAX >= 1);
const _: () = assert!(APPEND_ENTRIES_BYTES_MAX <= RAFT_MESSAGE_BYTES_MAX);
const _: () = assert!(INSTALL_SNAPSHOT_BYTES_MAX <= RAFT_MESSAGE_BYTES_MAX);
const _: () = assert!(SEATS_PER_EVENT_MAX <= SEATS_PER_SHARD_MAX);
const _: () = assert!(SEATS_PER_SHARD_MAX <= u32::MAX as usize);
const _: () = assert!(SECTIONS_PER_EVENT_MAX <= SEATS_PER_EVENT_MAX);
// The stadium preset must stay creatable.
const _: () = assert!(SEATS_PER_EVENT_MAX >= 100_000);

/// The encoded size of `command` as the log carries it (postcard, as in a [`crate::Batch`]
/// and in Raft messages). Counts bytes without writing them: one pass over the
/// command, no allocation.
pub fn command_bytes(command: &Command) -> usize {
    // Our commands are plain data; postcard's size flavor cannot fail on them.
    postcard::serialize_with_flavor(command, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX)
}

/// The encoded size of a log entry's batch (what [`ENTRY_BYTES_MAX`] bounds).
pub fn batch_bytes(batch: &Batch) -> usize {
    postcard::serialize_with_flavor(batch, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX)
}

/// Refuses a command larger than [`COMMAND_BYTES_MAX`]; returns its size otherwise.
pub fn check_command_bytes(command: &Command) -> Result<usize, Exceeded> {
    let bytes = command_bytes(command);
    Limit::CommandBytes.check(bytes)?;
    Ok(bytes)
}

/// One of the absolute caps above, as callers see it named (`LimitExceeded.limit` in
/// the gRPC API is [`Limit::name`]). New variants go at the end: refusals naming a
/// limit are stored in request records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Limit {
    CommandBytes,
    EventIdBytes,
    TokenBytes,
    TextBytes,
    SeatIdBytes,
    SeatsPerHold,
    SeatsPerEvent,
    SectionsPerEvent,
    EventsPerShard,
    SeatsPerShard,
    ReplyBytes,
}

impl Limit {
    /// The constant's name, stable: what clients match on.
    pub fn name(self) -> &'static str {
        match self {
            Limit::CommandBytes => "COMMAND_BYTES_MAX",
            Limit::EventIdBytes => "EVENT_ID_BYTES_MAX",
            Limit::TokenBytes => "TOKEN_BYTES_MAX",
            Limit::TextBytes => "TEXT_BYTES_MAX",
            Limit::SeatIdBytes => "SEAT_ID_BYTES_MAX",
            Limit::SeatsPerHold => "SEATS_PER_HOLD_CAP",
            Limit::SeatsPerEvent => "SEATS_PER_EVENT_MAX",
            Limit::SectionsPerEvent => "SECTIONS_PER_EVENT_MAX",
            Limit::EventsPerShard => "EVENTS_PER_SHARD_MAX",
            Limit::SeatsPerShard => "SEATS_PER_SHARD_MAX",
            Limit::ReplyBytes => "REPLY_BYTES_MAX",
        }
    }

    /// The constant's value.
    pub fn max(self) -> u64 {
        (match self {
            Limit::CommandBytes => COMMAND_BYTES_MAX,
            Limit::EventIdBytes => EVENT_ID_BYTES_MAX,
            Limit::TokenBytes => TOKEN_BYTES_MAX,
            Limit::TextBytes => TEXT_BYTES_MAX,
            Limit::SeatIdBytes => SEAT_ID_BYTES_MAX,
            Limit::SeatsPerHold => SEATS_PER_HOLD_CAP as usize,
            Limit::SeatsPerEvent => SEATS_PER_EVENT_MAX,
            Limit::SectionsPerEvent => SECTIONS_PER_EVENT_MAX,
            Limit::EventsPerShard => EVENTS_PER_SHARD_MAX,
            Limit::SeatsPerShard => SEATS_PER_SHARD_MAX,
            Limit::ReplyBytes => REPLY_BYTES_MAX,
        }) as u64
    }

    /// What the limit counts, for messages.
    fn counts(self) -> &'static str {
        match self {
            Limit::CommandBytes => "bytes in one command",
            Limit::EventIdBytes => "bytes in an event id",
            Limit::TokenBytes => "bytes in a user id, reservation id, key or reference",
            Limit::TextBytes => "bytes in a name or text",
            Limit::SeatIdBytes => "bytes in a seat, row or section id",
            Limit::SeatsPerHold => "seats in one hold",
            Limit::SeatsPerEvent => "seats in one event",
            Limit::SectionsPerEvent => "sections in one event",
            Limit::EventsPerShard => "events in one shard",
            Limit::SeatsPerShard => "seats in one shard",
            Limit::ReplyBytes => "bytes in one answer (read it by section or in pages)",
        }
    }

    /// Refuses `actual` above the limit.
    pub fn check(self, actual: usize) -> Result<(), Exceeded> {
        if actual as u64 > self.max() {
            return Err(self.exceeded(actual));
        }
        Ok(())
    }

    pub fn exceeded(self, actual: usize) -> Exceeded {
        Exceeded {
            limit: self,
            max: self.max(),
            actual: actual as u64,
        }
    }
}

/// A request over one of the caps: which, its value, and what the request had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "limit {} exceeded: {actual} {} where at most {max} are allowed",
    limit.name(),
    limit.counts()
)]
pub struct Exceeded {
    pub limit: Limit,
    pub max: u64,
    pub actual: u64,
}

/// Policy of one event. Defaults follow the product brief.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most seats in one hold.
    pub seats_per_hold_max: u32,
    /// Most seats one user may have held or bought in this event at once.
    pub seats_per_user_max: u32,
    /// Shortest TTL a client may ask for.
    pub hold_ttl_ms_min: u64,
    /// Longest TTL a client may ask for.
    pub hold_ttl_ms_max: u64,
    /// TTL used when the client gives none.
    pub hold_ttl_ms_default: u64,
    /// How long a hold stays protected while its payment is in flight.
    pub checkout_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            seats_per_hold_max: 10,
            seats_per_user_max: 8,
            hold_ttl_ms_min: 1_000,
            hold_ttl_ms_max: 15 * 60 * 1000,
            hold_ttl_ms_default: 5 * 60 * 1000,
            checkout_ttl_ms: 2 * 60 * 1000,
        }
    }
}

impl Limits {
    /// Checks that the policy is coherent and inside the absolute caps.
    pub fn validate(&self) -> Result<(), String> {
        if self.seats_per_hold_max == 0 || self.seats_per_hold_max > SEATS_PER_HOLD_CAP {
            return Err(format!(
                "seats_per_hold_max must be 1..={SEATS_PER_HOLD_CAP}"
            ));
        }
        if self.seats_per_user_max == 0 {
            return Err("seats_per_user_max must be at least 1".into());
        }
        if self.hold_ttl_ms_min == 0
            || self.hold_ttl_ms_min > self.hold_ttl_ms_max
            || self.hold_ttl_ms_max > HOLD_TTL_MS_CAP
        {
            return Err(format!(
                "hold TTL bounds must satisfy 0 < min <= max <= {HOLD_TTL_MS_CAP} ms"
            ));
        }
        if !(self.hold_ttl_ms_min..=self.hold_ttl_ms_max).contains(&self.hold_ttl_ms_default) {
            return Err("hold_ttl_ms_default must lie within the TTL bounds".into());
        }
        if self.checkout_ttl_ms == 0 || self.checkout_ttl_ms > HOLD_TTL_MS_CAP {
            return Err(format!("checkout_ttl_ms must be 1..={HOLD_TTL_MS_CAP}"));
        }
        Ok(())
    }
}

/// How long, in log time (entry timestamps, never a wall clock), the state machine
/// keeps a decision that only answers retries: a refused hold request, the request
/// of a hold that was released or expired, a refused checkout. After it, the record
/// is purged and a retry is decided as a new request (see `machine::retention`).
/// One day: 2,880 times the client library's default retry budget (30 s), and at
/// least `HOLD_TTL_MS_CAP`, so no hold that refused a checkout can still be active
/// when that refusal is forgotten (asserted at compile time there).
pub const DECISION_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::HoldRequest;
    use crate::ids::EventId;

    /// The bound computed from a hold's fields is a bound: a hold at every cap
    /// encodes within it.
    #[test]
    fn the_largest_hold_encodes_within_its_bound() {
        let hold = Command::Hold(HoldRequest {
            event_id: EventId::new("e".repeat(EVENT_ID_BYTES_MAX)).unwrap(),
            user: "u".repeat(TOKEN_BYTES_MAX),
            seats: (0..SEATS_PER_HOLD_CAP)
                .map(|i| format!("{i:0>width$}", width = SEAT_ID_BYTES_MAX))
                .collect(),
            client_reservation_id: "r".repeat(TOKEN_BYTES_MAX),
            ttl_ms: Some(u64::MAX),
            expected_versions: Some(vec![u64::MAX; SEATS_PER_HOLD_CAP as usize]),
        });
        let bytes = command_bytes(&hold);
        assert_eq!(bytes, postcard::to_stdvec(&hold).unwrap().len());
        assert!(bytes <= HOLD_BYTES_MAX, "{bytes} > {HOLD_BYTES_MAX}");
        assert_eq!(check_command_bytes(&hold), Ok(bytes));
    }

    #[test]
    fn limits_name_themselves_and_refuse_only_above_the_cap() {
        assert_eq!(ENTRIES_PER_APPEND_MAX, 15);
        assert!(Limit::SeatsPerEvent.check(SEATS_PER_EVENT_MAX).is_ok());
        let e = Limit::SeatsPerEvent
            .check(SEATS_PER_EVENT_MAX + 1)
            .unwrap_err();
        assert_eq!(e.max, SEATS_PER_EVENT_MAX as u64);
        assert_eq!(e.actual, SEATS_PER_EVENT_MAX as u64 + 1);
        assert!(e
            .to_string()
            .starts_with("limit SEATS_PER_EVENT_MAX exceeded"));
    }
}
