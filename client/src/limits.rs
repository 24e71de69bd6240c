//! Every bound the client library keeps, in one place, each with its unit in its
//! name. The bounds it shares with the server (the largest answer, the most holds in
//! one call, the most shards) are the server's own, from `raft_store::limits`, never
//! a second copy; the relations between them are asserted at compile time.

use std::time::Duration;

pub use raft_store::limits::{HOLDS_PER_CALL_MAX, REPLY_BYTES_MAX, SHARDS_MAX};

/// Most shards the client's routing table accepts: above the cluster's own limit, so
/// a server that allows more shards later still gets its batches split by leader.
pub const ROUTING_TABLE_SHARDS_MAX: usize = 4_096;

/// Most holds waiting for a batch; a full queue makes callers wait.
pub const QUEUED_HOLDS_MAX: usize = 8192;
/// Most holds the client puts in one `HoldMany` call: well below what the server
/// accepts, so a batch is answered while the next one fills.
pub const HOLDS_PER_BATCH_MAX: usize = 256;
/// Batches in flight at once, at most (a batch split across shard leaders is one
/// call per leader). Normally one is (see [`HOLD_CALL_OVERDUE_MS`]): while it is out,
/// the next batch fills up.
pub const HOLD_CALLS_IN_FLIGHT_MAX: usize = 4;
/// How long a `HoldMany` call may be out before the next batch goes beside it
/// instead of waiting for its turn. Calls take one turn at a time because every call
/// costs a round of RPCs on every hop and usually a log entry of its own: measured
/// with `seatctl bench` (docs/benchmarks.md) at 64 callers, one call at a time instead
/// of two put 54 decisions in a log entry instead of 23.5 (63 once the batcher lets the
/// callers it just answered queue again) and cost 20-30% less CPU per decision. A
/// call this overdue is stuck (a shard without a leader, a slow node; p99 is about
/// 12 ms): from then on, batches go beside it until the slots run out, so holds for
/// other shards keep moving. A full batch never waits for the turn: it cannot grow.
pub const HOLD_CALL_OVERDUE_MS: u64 = 50;
/// Most times the batcher lets callers run before it drains the queue.
pub const BATCH_YIELDS_MAX: usize = 8;
/// How often the routing table may be refreshed while holds are sent.
pub const ROUTES_REFRESH_MS: u64 = 1_000;

/// [`HOLD_CALL_OVERDUE_MS`] as a duration.
pub const HOLD_CALL_OVERDUE: Duration = Duration::from_millis(HOLD_CALL_OVERDUE_MS);

const _: () = assert!(HOLDS_PER_BATCH_MAX <= HOLDS_PER_CALL_MAX);
const _: () = assert!(HOLDS_PER_BATCH_MAX <= QUEUED_HOLDS_MAX);
const _: () = assert!(HOLD_CALLS_IN_FLIGHT_MAX >= 1);
const _: () = assert!(ROUTING_TABLE_SHARDS_MAX >= SHARDS_MAX as usize);
