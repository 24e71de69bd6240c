//! Fault-injection tests against real seatd processes and containers, and the
//! checker that reads their recorded histories.
//!
//! Empty until a cluster exists to break (issue 6).
