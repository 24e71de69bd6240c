//! Limits: per-event policy chosen at creation, and absolute caps that bound every
//! input the state machine accepts.
//!
//! Per-event limits are replicated with the event, so every replica enforces the same
//! policy. Absolute caps are compile-time constants: they bound memory per command and
//! keep a malicious or buggy client from making one log entry arbitrarily expensive.

use serde::{Deserialize, Serialize};

/// Longest event id, in bytes.
pub const EVENT_ID_BYTES_MAX: usize = 64;
/// Longest user id, client reservation id, idempotency key or payment reference.
pub const TOKEN_BYTES_MAX: usize = 128;
/// Longest free-text field (event name, venue name, abort reason).
pub const TEXT_BYTES_MAX: usize = 256;
/// Longest seat, row or section id.
pub const SEAT_ID_BYTES_MAX: usize = 32;
/// Most seats in one event (a large stadium with headroom).
pub const SEATS_PER_EVENT_MAX: usize = 2_000_000;
/// Most seats any event may allow in a single hold.
pub const SEATS_PER_HOLD_CAP: u32 = 100;
/// Longest hold TTL any event may allow: one day.
pub const HOLD_TTL_MS_CAP: u64 = 24 * 60 * 60 * 1000;

/// Policy of one event. Defaults follow the product brief.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most seats in one hold.
    pub seats_per_hold_max: u32,
    /// Most seats one user may have held or bought in this event at once.
    pub seats_per_user_max: u32,
    /// Shortest TTL a client may ask for.
    pub hold_ttl_ms_min: u64,
    /// Longest TTL a client may ask for.
    pub hold_ttl_ms_max: u64,
    /// TTL used when the client gives none.
    pub hold_ttl_ms_default: u64,
    /// How long a hold stays protected while its payment is in flight.
    pub checkout_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            seats_per_hold_max: 10,
            seats_per_user_max: 8,
            hold_ttl_ms_min: 1_000,
            hold_ttl_ms_max: 15 * 60 * 1000,
            hold_ttl_ms_default: 5 * 60 * 1000,
            checkout_ttl_ms: 2 * 60 * 1000,
        }
    }
}

impl Limits {
    /// Checks that the policy is coherent and inside the absolute caps.
    pub fn validate(&self) -> Result<(), String> {
        if self.seats_per_hold_max == 0 || self.seats_per_hold_max > SEATS_PER_HOLD_CAP {
            return Err(format!(
                "seats_per_hold_max must be 1..={SEATS_PER_HOLD_CAP}"
            ));
        }
        if self.seats_per_user_max == 0 {
            return Err("seats_per_user_max must be at least 1".into());
        }
        if self.hold_ttl_ms_min == 0
            || self.hold_ttl_ms_min > self.hold_ttl_ms_max
            || self.hold_ttl_ms_max > HOLD_TTL_MS_CAP
        {
            return Err(format!(
                "hold TTL bounds must satisfy 0 < min <= max <= {HOLD_TTL_MS_CAP} ms"
            ));
        }
        if !(self.hold_ttl_ms_min..=self.hold_ttl_ms_max).contains(&self.hold_ttl_ms_default) {
            return Err("hold_ttl_ms_default must lie within the TTL bounds".into());
        }
        if self.checkout_ttl_ms == 0 || self.checkout_ttl_ms > HOLD_TTL_MS_CAP {
            return Err(format!("checkout_ttl_ms must be 1..={HOLD_TTL_MS_CAP}"));
        }
        Ok(())
    }
}
