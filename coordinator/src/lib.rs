//! seatd's coordinator: wires the replicated state machine (`raft-store`) to the
//! network (`seatd-proto`). Layers, top to bottom (`docs/ARCHITECTURE.md` has the
//! whole picture; no module imports one above it):
//!
//! - entry points: [`cli`], [`node`] (`seatd node`), [`frontend`] (`seatd frontend`
//!   and its cache), [`dev`] (`seatd dev`), [`local`] (a whole cluster in one
//!   process), [`reform`];
//! - serving: [`server`] (the client port's stack), [`service`] (the client API over
//!   gRPC: passed on as bytes, or decoded for the API);
//! - the API, typed: [`api`] (one method per call; `api::holds` for holds),
//!   [`admission`] (the per-user hold rate, asked on the shard leader),
//!   [`cluster_view`] (what nodes report about their shards);
//! - routing: [`route`] (where a call goes, and acting on it), [`forward`] (the one
//!   way a call reaches another node), [`peers`] (channels to other processes);
//! - [`process`]: one process's shared state;
//! - shards: [`shard`] (a hosted Raft group, its proposer, expiry and checkout),
//!   [`clock`], [`payment`];
//! - cluster: [`placement`], [`membership`], [`rejoin`], [`raft_net`] (the peer
//!   port's Raft transport and internal status), [`tls`];
//! - cross-cutting: [`error`] (start-up errors and call outcomes, mapped to gRPC
//!   status in one place), [`limits`] (every bound), [`lifecycle`], [`ids`].

pub mod admission;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod cluster_view;
pub mod dev;
pub mod error;
pub mod forward;
pub mod frontend;
pub mod ids;
pub mod lifecycle;
pub mod limits;
pub mod local;
pub mod membership;
pub mod node;
pub mod payment;
pub mod peers;
pub mod placement;
pub mod process;
pub mod raft_net;
pub mod reform;
pub mod rejoin;
pub mod route;
pub mod server;
pub mod service;
pub mod shard;
pub mod tls;
