//! Identifiers that cross the API boundary.
//!
//! An event id is chosen when the event is created and never changes; it decides the
//! shard. Hold and order ids embed their event id (`{event}.h{seq}-{tag}`,
//! `{event}.o{seq}-{tag}`), so any node or frontend can route a commit or a release to
//! the right shard from the id alone, without a lookup table. Sequence numbers are
//! assigned by the state machine in log order, so every replica names the same hold the
//! same way.
//!
//! The tag (16 hex digits) makes ids impossible to walk: it is a keyed hash of the
//! sequence number under the event's [`IdKey`], 128 random bits the leader drew when it
//! proposed the event and put into the log, so every replica computes the same tag and
//! nobody without the key can. The machine answers an id whose tag is wrong exactly as
//! it answers an id that names nothing: not found.
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

/// An event's key for the tags of its hold and order ids: drawn at random by the
/// leader that proposed the event, carried in the log entry, never shown to clients.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdKey(pub [u8; ID_KEY_BYTES]);

/// Bytes in an [`IdKey`]: 128 bits, beyond any search.
pub const ID_KEY_BYTES: usize = 16;
/// Hex digits of a tag in an id: the first 64 bits of the keyed hash.
pub const ID_TAG_DIGITS: usize = 16;
const _: () = assert!(ID_TAG_DIGITS * 4 == 64, "a tag is one u64 in hex");

impl fmt::Debug for IdKey {
    // A key does not belong in logs or panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdKey(..)")
    }
}

impl IdKey {
    /// The tag of the id of kind `kind` (`b'h'` or `b'o'`) and sequence `seq`:
    /// SHA-256 over the key, the kind and the sequence number, its first 8 bytes.
    pub fn tag(&self, kind: u8, seq: u64) -> u64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.0);
        h.update([kind]);
        h.update(seq.to_be_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

/// The id of a hold: its event, its sequence number inside that event, and the tag
/// that proves the id was handed out (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HoldId {
    pub event: EventId,
    pub seq: u64,
    pub tag: u64,
}

/// The id of an order: its event, its sequence number inside that event, and its tag.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderId {
    pub event: EventId,
    pub seq: u64,
    pub tag: u64,
}

/// The kind bytes of hold and order ids (the letter before the sequence number).
pub const HOLD_KIND: u8 = b'h';
pub const ORDER_KIND: u8 = b'o';

fn parse_scoped(s: &str, kind: u8, what: &str) -> Result<(EventId, u64, u64), Error> {
    let tag_char = kind as char;
    let bad = || {
        Error::InvalidId(format!(
            "{what} id {s:?} is not of the form EVENT.{tag_char}N-TAG"
        ))
    };
    let (event, rest) = s.split_once('.').ok_or_else(bad)?;
    let rest = rest.strip_prefix(tag_char).ok_or_else(bad)?;
    let (digits, hex) = rest.split_once('-').ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if hex.len() != ID_TAG_DIGITS || !hex.bytes().all(lower_hex) {
        return Err(bad());
    }
    let seq = digits.parse::<u64>().map_err(|_| bad())?;
    let tag = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
    Ok((EventId::new(event)?, seq, tag))
}

impl HoldId {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (event, seq, tag) = parse_scoped(s, HOLD_KIND, "hold")?;
        Ok(Self { event, seq, tag })
    }
}

impl OrderId {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (event, seq, tag) = parse_scoped(s, ORDER_KIND, "order")?;
        Ok(Self { event, seq, tag })
    }
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.h{}-{:016x}", self.event, self.seq, self.tag)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.o{}-{:016x}", self.event, self.seq, self.tag)
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
            tag: 0x0123_4567_89ab_cdef,
        };
        assert_eq!(h.to_string(), "rock-night_1.h42-0123456789abcdef");
        assert_eq!(
            HoldId::parse("rock-night_1.h42-0123456789abcdef").unwrap(),
            h
        );
        let o = OrderId::parse("ev.o7-00000000000000ff").unwrap();
        assert_eq!((o.seq, o.tag), (7, 255));
        assert_eq!(o.to_string(), "ev.o7-00000000000000ff");
        let tag = "-0123456789abcdef";
        for bad in [
            "".to_string(),
            "ev".into(),
            "ev.".into(),
            "ev.h1".into(),
            format!("ev.h{tag}"),
            format!("ev.x1{tag}"),
            format!("ev.h1x{tag}"),
            format!(".h1{tag}"),
            format!("e v.h1{tag}"),
            format!("ev.o1{tag}"),
            "ev.h1-0123456789ABCDEF".into(),
            "ev.h1-0123456789abcde".into(),
            "ev.h1-0123456789abcdef0".into(),
            "ev.h1-+123456789abcdef".into(),
            format!("ev.h.1{tag}"),
            format!("ev.h99999999999999999999999{tag}"),
        ] {
            assert!(HoldId::parse(&bad).is_err(), "{bad:?} accepted");
        }
        assert!(EventId::new("a.b").is_err());
        assert!(EventId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn tags_depend_on_key_kind_and_sequence() {
        let (a, b) = (IdKey([1; ID_KEY_BYTES]), IdKey([2; ID_KEY_BYTES]));
        assert_eq!(a.tag(HOLD_KIND, 1), a.tag(HOLD_KIND, 1));
        assert_ne!(a.tag(HOLD_KIND, 1), a.tag(HOLD_KIND, 2));
        assert_ne!(a.tag(HOLD_KIND, 1), a.tag(ORDER_KIND, 1));
        assert_ne!(a.tag(HOLD_KIND, 1), b.tag(HOLD_KIND, 1));
        assert_eq!(format!("{a:?}"), "IdKey(..)");
    }

    #[test]
    fn tokens_are_bounded_and_printable() {
        assert!(validate_token("user", "u-1").is_ok());
        assert!(validate_token("user", "").is_err());
        assert!(validate_token("user", "a b").is_err());
        assert!(validate_token("user", &"x".repeat(TOKEN_BYTES_MAX + 1)).is_err());
    }
}
