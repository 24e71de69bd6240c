//! Identifiers that cross the API boundary.
//!
//! An event id is chosen when the event is created and never changes; it decides the
//! shard. Hold and order ids embed their event id (`{event}.h{seq}`, `{event}.o{seq}`),
//! so any node or frontend can route a commit or a release to the right shard from the
//! id alone, without a lookup table. Sequence numbers are assigned by the state machine
//! in log order, so every replica names the same hold the same way.
//!
//! Invariant: every id that leaves this module has passed `validate_token`, so ids are
//! short, printable ASCII and never contain the `.` separator ambiguously (event ids may
//! not contain `.`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::limits::{EVENT_ID_BYTES_MAX, TOKEN_BYTES_MAX};
use crate::Error;

/// The id of an event: 1..=64 bytes of `[A-Za-z0-9_-]`. Shared, so that the many
/// hold and order ids that name it cost no allocation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(Arc<str>);

impl TryFrom<String> for EventId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> String {
        id.0.to_string()
    }
}

impl EventId {
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        let ok_len = !id.is_empty() && id.len() <= EVENT_ID_BYTES_MAX;
        let ok_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_len || !ok_chars {
            return Err(Error::InvalidId(format!(
                "event id {id:?} must be 1..={EVENT_ID_BYTES_MAX} characters of A-Z a-z 0-9 _ -"
            )));
        }
        Ok(Self(id.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shard this event lives in, of `shards` (at least 1): FNV-1a (64 bit) of the
    /// id's bytes, modulo the shard count. Nodes, frontends and clients that route to
    /// shard leaders all compute it; it is part of the on-disk contract (changing it
    /// would strand events in the wrong group), so a test pins its values.
    pub fn shard(&self, shards: u32) -> u32 {
        shard_of(&self.0, shards)
    }
}

/// [`EventId::shard`] of an id given as text (a client routing a request it has not
/// validated; an invalid id gets a shard too, and the cluster refuses it).
pub fn shard_of(event_id: &str, shards: u32) -> u32 {
    assert!(shards > 0, "a cluster has at least one shard");
    (fnv1a64(event_id.as_bytes()) % u64::from(shards)) as u32
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a hold: its event and its sequence number inside that event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HoldId {
    pub event: EventId,
    pub seq: u64,
}

/// The id of an order: its event and its sequence number inside that event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderId {
    pub event: EventId,
    pub seq: u64,
}

fn parse_scoped(s: &str, tag: char, what: &str) -> Result<(EventId, u64), Error> {
    let bad = || Error::InvalidId(format!("{what} id {s:?} is not of the form EVENT.{tag}N"));
    let (event, rest) = s.rsplit_once('.').ok_or_else(bad)?;
    let digits = rest.strip_prefix(tag).ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seq = digits.parse::<u64>().map_err(|_| bad())?;
    Ok((EventId::new(event)?, seq))
}

impl HoldId {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (event, seq) = parse_scoped(s, 'h', "hold")?;
        Ok(Self { event, seq })
    }
}

impl OrderId {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (event, seq) = parse_scoped(s, 'o', "order")?;
        Ok(Self { event, seq })
    }
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.h{}", self.event, self.seq)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.o{}", self.event, self.seq)
    }
}

/// Checks a caller-supplied token (user id, client reservation id, idempotency key,
/// payment reference): non-empty, at most `TOKEN_BYTES_MAX` bytes, printable ASCII.
pub fn validate_token(what: &str, token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
        return Err(format!("{what} must be 1..={TOKEN_BYTES_MAX} bytes"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} {token:?} must be printable ASCII without spaces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_and_order_ids_round_trip_and_reject_garbage() {
        let h = HoldId {
            event: EventId::new("rock-night_1").unwrap(),
            seq: 42,
        };
        assert_eq!(h.to_string(), "rock-night_1.h42");
        assert_eq!(HoldId::parse("rock-night_1.h42").unwrap(), h);
        let o = OrderId::parse("ev.o7").unwrap();
        assert_eq!(o.to_string(), "ev.o7");
        for bad in [
            "", "ev", "ev.", "ev.h", "ev.x1", "ev.h1x", ".h1", "e v.h1", "ev.o1",
        ] {
            assert!(HoldId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(HoldId::parse("ev.h99999999999999999999999").is_err());
        assert!(EventId::new("a.b").is_err());
        assert!(EventId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn tokens_are_bounded_and_printable() {
        assert!(validate_token("user", "u-1").is_ok());
        assert!(validate_token("user", "").is_err());
        assert!(validate_token("user", "a b").is_err());
        assert!(validate_token("user", &"x".repeat(TOKEN_BYTES_MAX + 1)).is_err());
    }
}
