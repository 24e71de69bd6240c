//! seatd's Rust client library (`seatd-client`) and the `seatctl` CLI.
//!
//! Empty until the client API exists (issue 5): typed calls with deadlines, retries
//! against the next endpoint that reuse the same reservation id or idempotency key, and
//! the `seatctl` command line with its stable `--json` output.
