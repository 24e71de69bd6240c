//! seatd's replicated state: the seat state machine and its Raft storage.
//!
//! The state machine ([`SeatMachine`]) decides every seat. It is a pure function of
//! the log: a [`Batch`] of [`Command`]s stamped with the leader's clock goes in, the new
//! state and one [`Outcome`] per command come out. No I/O, no wall clock, no
//! randomness, so every replica that applies the same log reaches the same state, and
//! zero oversell reduces to three local facts asserted where state changes:
//!
//! 1. a hold takes only seats that are available, all of them or none;
//! 2. a held seat goes back to available or on to sold, and a sold seat stays sold;
//! 3. every change to a seat bumps its version, so a compare-and-set against a stale
//!    version fails.
//!
//! Retries are safe because decisions are recorded in the replicated state: the same
//! `(user, client_reservation_id)` or idempotency key is answered from its record.
//!
//! Layout: [`layout`] (venue files and generator), [`command`] (what the log carries
//! and what applying it answers), `machine` (the state and its rules, and its
//! record-level persistence), [`codec`] (canonical, checksummed bytes for snapshots and
//! log entries), and with the `storage` feature (default) `raft` (openraft's type
//! configuration) and `storage` (openraft's log and state machine storage on RocksDB,
//! many Raft groups per database). This crate knows nothing of gRPC.
//!
//! Why openraft 0.9.25 with `storage-v2`: it is the stable line; its RaftCore waits for
//! each append's callback before the next, so throughput comes from batching many
//! client commands into one entry ([`Batch`]) and from sharing WAL syncs across the
//! node's groups (`storage::sync`).

pub mod codec;
pub mod command;
mod error;
pub mod ids;
pub mod layout;
pub mod limits;
mod machine;
#[cfg(feature = "storage")]
pub mod raft;
#[cfg(feature = "storage")]
pub mod storage;

pub use command::{
    Actor, ActorRole, Batch, Command, CreateEvent, EventSummary, HoldRequest, HoldState, HoldView,
    OrderView, Outcome, Refusal, Reply, RowView, SaleState, SeatMap, SeatMapPart, SeatStateName,
    SeatView, SectionCounts,
};
pub use error::Error;
pub use ids::{EventId, HoldId, IdKey, OrderId};
pub use layout::VenueLayout;
pub use limits::{Exceeded, Limit, Limits};
pub use machine::{Record, SeatMachine};
