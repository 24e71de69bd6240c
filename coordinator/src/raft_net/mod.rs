//! The Raft transport over gRPC: openraft's network for one shard ([`client`]) and the
//! `seatd.raft.v1.Raft` service that hands incoming messages to the right shard's
//! Raft ([`server`]), served only on a node's peer port over mutual TLS.
//!
//! Messages are openraft's own types, encoded by `raft_store::raft::encode_message`
//! and tagged with their shard and a sequence number. Every peer connection is shared
//! by every shard (see [`crate::peers`]).
//!
//! Invariants:
//! - A reply is only ever taken for the request it answers. AppendEntries, which
//!   replication sends several times per committed entry, travels over a pipe (one
//!   long-lived bidirectional stream per shard and follower); the pipe is owned by
//!   the call in flight and goes back into the client only after the reply matched
//!   its request's `seq`. A call dropped mid-way (openraft's own timeout around each
//!   call fires before ours) drops the pipe with it, and a reply whose `seq` differs
//!   is an error that drops the pipe too.
//! - A message is accepted only from the node its TLS certificate names: `from` and
//!   the vote's leader must both be that node ([`server`]).
//! - Terms, indexes, sizes and offsets are checked against sane bounds before a
//!   message reaches openraft ([`bounds`]), so even a buggy peer cannot overflow a term
//!   or make a replica allocate without limit.
//! - The vote gate ([`gate`]) keeps a replica that lost its state from voting until a
//!   leader caught it up.
//!
//! Errors: a peer that cannot be reached is `Unreachable` (openraft backs off); a reply
//! that does not decode or match, or a peer refusing the message, is a `Network` error;
//! a Raft error raised by the peer comes back as `RemoteError`. Every call is bounded by
//! the deadline openraft gives (`RPCOption::hard_ttl`).

pub mod bounds;
pub mod client;
pub mod gate;
pub mod server;

pub use client::{PeerClient, ShardNetwork};
pub use gate::{GateBook, VoteGate};
pub use server::{LocalStatusFn, RaftService};

/// Largest Raft message either side accepts: a batch entry list or a snapshot chunk.
pub const MESSAGE_BYTES_MAX: usize = raft_store::limits::RAFT_MESSAGE_BYTES_MAX;

// The largest message openraft may send under the log's limits must pass the transport.
const _: () = assert!(MESSAGE_BYTES_MAX >= raft_store::limits::APPEND_ENTRIES_BYTES_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX >= raft_store::limits::INSTALL_SNAPSHOT_BYTES_MAX);

/// Messages a pipe buffers in each direction. The sender waits for each reply, so one
/// is enough; two lets the next request be queued while the reply is being read.
const PIPE_DEPTH: usize = 2;
