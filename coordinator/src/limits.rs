//! Every bound the coordinator enforces, in one place, each with its unit in its
//! name; the relations between them are asserted at compile time below.
//!
//! The bounds of the state machine and of the client API that the client library
//! shares live one crate down, in `raft_store::limits`, and are re-exported here
//! under the same names, so no name is defined twice with two values. The bounds
//! here are the coordinator's own: what a process accepts from a socket, keeps in
//! memory, or lets a call do.

use raft_store::limits::{BATCH_HEADER_BYTES_MAX, ENTRY_BYTES_MAX, SEATS_PER_EVENT_MAX};
pub use raft_store::limits::{
    COMMAND_BYTES_MAX, ENTRIES_PER_APPEND_MAX, HOLDS_PER_CALL_MAX, RAFT_MESSAGE_BYTES_MAX,
    REPLY_BYTES_MAX, REQUEST_BYTES_MAX, SHARDS_MAX,
};

// --- Calls ---------------------------------------------------------------------

/// A call is forwarded at most this often: entry node → a member → its leader.
pub const HOPS_MAX: u32 = 2;
/// Events a list returns when the caller names no limit.
pub const EVENTS_PER_LIST_DEFAULT: u32 = 100;
/// Events a list returns at most.
pub const EVENTS_PER_LIST_MAX: u32 = 1000;
/// Holds in a `ListHolds` page when the caller names no limit, and at most.
pub const HOLDS_PER_LIST_DEFAULT: u32 = 100;
pub const HOLDS_PER_LIST_MAX: u32 = 1000;
/// Seat-map pages and whole maps: bounded by the wire crate, which knows the
/// encoding's sizes.
pub use seatd_wire::limits::{SEAT_MAP_PAGE_SEATS_MAX, SEAT_MAP_WHOLE_SEATS_MAX};

// --- Callers -------------------------------------------------------------------

/// A bearer token longer than this is refused before it is parsed.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// The key file `--auth-keys` names is refused above this size.
pub const KEY_FILE_BYTES_MAX: usize = 1024 * 1024;
/// Keys one key file may hold (rotation needs two or three).
pub const KEYS_MAX: usize = 64;
/// Tokens a process remembers as verified (at most this many times
/// `TOKEN_BYTES_MAX`: 32 MiB; a few hundred KiB with common token sizes).
pub const VERIFIED_TOKENS_MAX: usize = 4096;
/// How long a verified token is remembered at most (and never past its `exp`).
pub const VERIFIED_TOKEN_MS_MAX: u64 = 60_000;

// --- Cluster shape -------------------------------------------------------------

/// Most nodes in a cluster.
pub const NODES_MAX: usize = 64;
/// Replicas of each shard (all nodes when there are fewer).
pub const REPLICAS_PER_SHARD: usize = 3;
/// Longest client address a node may advertise (`host:port`).
pub const ADDR_BYTES_MAX: usize = 256;

// --- A shard's proposer --------------------------------------------------------

/// Most commands in one log entry.
pub const COMMANDS_PER_ENTRY_MAX: usize = 1024;
/// Most bytes of commands in one log entry: what `ENTRY_BYTES_MAX` leaves once the
/// batch's own fields are counted.
pub const COMMAND_BYTES_PER_ENTRY_MAX: usize = ENTRY_BYTES_MAX - BATCH_HEADER_BYTES_MAX;
/// Most commands waiting for a shard's next entry; beyond this, calls are refused.
pub const QUEUED_COMMANDS_MAX: usize = 16 * 1024;
/// Entries of one shard proposed but not yet answered. One: while it is replicated,
/// the next batch gathers everything that arrives, so entries are as large as the load
/// makes them. Measured with `seatctl bench` (docs/benchmarks.md), a second entry in
/// flight cost more CPU per decision (more, smaller entries, each paying its syncs and
/// messages) and gave no more throughput.
pub const ENTRIES_IN_FLIGHT_MAX: usize = 1;

// --- What peers may name (the Raft transport) ----------------------------------

/// Largest term a peer may name.
pub const TERM_MAX: u64 = 1 << 48;
/// Largest log index a peer may name.
pub const INDEX_MAX: u64 = 1 << 56;
/// Largest snapshot a peer may send (offset + chunk).
pub const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;

// --- Memory kept per process ---------------------------------------------------

/// Most append pipes open at once: one per (shard, leader) pair of a 64-node,
/// 1,024-shard cluster would be far fewer; a peer opening more is misbehaving.
pub const PIPES_MAX: usize = 4_096;
/// Largest gate file read (one entry per shard).
pub const GATE_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most nodes a local cluster (`seatd dev`, in-process tests) may have: it is for one
/// machine.
pub const LOCAL_NODES_MAX: u64 = 7;

/// Most users with a rate-limit bucket at once (per leader).
pub const USERS_TRACKED_MAX: usize = 100_000;
/// Most answers each of a frontend's caches keeps; a full cache is emptied.
pub const FRONTEND_CACHE_ENTRIES_MAX: usize = 1_024;
/// Most idempotency keys the built-in test payment gateway remembers.
pub const TEST_GATEWAY_KEYS_MAX: usize = 100_000;
/// Largest PEM file (certificate or key) read.
pub const PEM_BYTES_MAX: u64 = 64 << 10;

// --- Relations -----------------------------------------------------------------

// A command the proposer accepts always fits an entry of its own.
const _: () = assert!(COMMAND_BYTES_MAX <= COMMAND_BYTES_PER_ENTRY_MAX);
// A call of the most holds is decided in at most one full entry per shard.
const _: () = assert!(HOLDS_PER_CALL_MAX <= COMMANDS_PER_ENTRY_MAX);
const _: () = assert!(COMMANDS_PER_ENTRY_MAX <= QUEUED_COMMANDS_MAX);
const _: () = assert!(ENTRIES_IN_FLIGHT_MAX >= 1);
// A request the server accepts can become a command (a layout naming every seat).
const _: () = assert!(COMMAND_BYTES_MAX <= REQUEST_BYTES_MAX);
const _: () = assert!(REPLICAS_PER_SHARD <= NODES_MAX);
const _: () = assert!(HOPS_MAX >= 1);
const _: () = assert!(EVENTS_PER_LIST_DEFAULT <= EVENTS_PER_LIST_MAX);
const _: () = assert!(HOLDS_PER_LIST_DEFAULT <= HOLDS_PER_LIST_MAX);
const _: () = assert!(SEAT_MAP_WHOLE_SEATS_MAX <= SEATS_PER_EVENT_MAX);
const _: () = assert!(TERM_MAX < u64::MAX / 2 && INDEX_MAX < u64::MAX / 2);
// A snapshot is many messages; the transport's message limit is not a snapshot's.
const _: () = assert!(SNAPSHOT_BYTES_MAX > RAFT_MESSAGE_BYTES_MAX as u64);
const _: () = assert!(ENTRIES_PER_APPEND_MAX >= 1);
const _: () = assert!(LOCAL_NODES_MAX as usize <= NODES_MAX);
