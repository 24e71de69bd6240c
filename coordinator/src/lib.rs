//! seatd's coordinator: wires the replicated state machine (`raft-store`) to the
//! network (`seatd-proto`).
//!
//! - [`cli`]: the `seatd` command line.
//! - [`node`]: a replica process (`seatd node`): its shards, its server, bootstrap and
//!   graceful shutdown.
//! - [`shard`]: one hosted Raft group with its batching queue ([`proposer`]), expiry
//!   ticker and event log.
//! - [`service`] and [`route`]: the client API, and how a call reaches the replica
//!   that may answer it; [`holds`]: `HoldMany`, decided per shard, and passed through
//!   undecoded where a process only forwards it.
//! - [`frontend`]: `seatd frontend`, the stateless gateway; [`dev`]: `seatd dev`, a
//!   whole local cluster in one process.
//! - [`raft_net`]: the Raft transport over gRPC, on the peer port; [`tls`]: the
//!   cluster CA, node certificates and who is calling; [`peers`]: channels to other
//!   processes (mutual TLS between nodes, plaintext from frontends).
//! - [`placement`]: which shard holds an event, which nodes replicate a shard;
//!   [`membership`]: moving a shard's group onto the nodes its placement names.
//! - [`clock`], [`payment`]: the injected clock and the payment gateway;
//!   [`admission`]: per-user hold rate limits where calls enter.
//! - [`convert`], [`error`]: wire conversions, and the one mapping to gRPC status codes;
//!   [`ids`]: the ids a process makes up for callers that leave them empty.

pub mod admission;
pub mod cli;
pub mod clock;
pub mod convert;
pub mod dev;
pub mod error;
pub mod frontend;
pub mod holds;
pub mod ids;
pub mod membership;
pub mod node;
pub mod payment;
pub mod peers;
pub mod placement;
pub mod proposer;
pub mod raft_net;
pub mod reform;
pub mod rejoin;
pub mod route;
pub mod service;
pub mod shard;
pub mod tls;
