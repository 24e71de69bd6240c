//! seatd's fault-injection suite: a real cluster under injected faults, a recorded
//! history of every client operation, and a checker that reads the history and the
//! final state and says whether anything was oversold, lost or answered wrongly.
//!
//! - [`history`]: operations as invocations and completions (ok, fail, info), as
//!   JSON lines.
//! - [`checker`]: per-seat linearizability (made cheap by seat versions) and the
//!   whole-system checks on the healed cluster.
//! - [`proxy`], [`cluster`]: real `seatd node` processes whose every node-to-node
//!   link runs through a proxy the harness can cut or slow; process faults.
//! - [`compose`]: the docker compose deployment as a target, with container faults;
//!   [`target`]: what a run needs from either.
//! - [`workload`]: the buyers; [`run`]: one seeded scenario from start to verdict.

pub mod checker;
pub mod cluster;
pub mod compose;
pub mod history;
pub mod proxy;
pub mod run;
pub mod target;
pub mod workload;
