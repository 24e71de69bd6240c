//! seatd's coordinator: wires the replicated state machine (`raft-store`) to the
//! network (`seatd-proto`).
//!
//! - [`cli`]: the `seatd` command line.
//! - [`node`]: a replica process (`seatd node`): its shards, its server, bootstrap and
//!   graceful shutdown.
//! - [`shard`]: one hosted Raft group with its batching queue (`shard::proposer`), expiry
//!   ticker and event log.
//! - [`api`]: the client API, typed; [`service`]: it over gRPC; [`route`]: how a call
//!   reaches the replica that may answer it; [`cluster_view`]: what nodes report about
//!   their shards; [`holds`]: `HoldMany`, decided per shard, and passed through
//!   undecoded where a process only forwards it.
//! - [`frontend`]: `seatd frontend`, the stateless gateway; [`local`]: a whole cluster
//!   in one process (tests, and [`dev`]: `seatd dev`).
//! - [`raft_net`]: the Raft transport over gRPC, on the peer port; [`tls`]: the
//!   cluster CA, node certificates and who is calling; [`peers`]: channels to other
//!   processes (mutual TLS between nodes, plaintext from frontends).
//! - [`placement`]: which shard holds an event, which nodes replicate a shard;
//!   [`membership`]: moving a shard's group onto the nodes its placement names.
//! - [`clock`], [`payment`]: the injected clock and the payment gateway;
//!   [`admission`]: the per-user hold rate, asked on the shard leader;
//!   [`lifecycle`]: one cancellation token and task tracker per process.
//! - [`error`]: the one mapping to gRPC status codes (wire conversions are the
//!   `seatd-wire` crate's, shared with the client);
//!   [`ids`]: the ids a process makes up for callers that leave them empty;
//!   [`limits`]: every bound, with the relations between them asserted.

pub mod admission;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster_view;
pub mod dev;
pub mod error;
pub mod frontend;
pub mod holds;
pub mod ids;
pub mod lifecycle;
pub mod limits;
pub mod local;
pub mod membership;
pub mod node;
pub mod payment;
pub mod peers;
pub mod placement;
pub mod raft_net;
pub mod reform;
pub mod rejoin;
pub mod route;
pub mod service;
pub mod shard;
pub mod tls;
