//! Byte encodings of state images and log batches.
//!
//! Both are framed the same way: a 4-byte magic naming the kind, a format version
//! (u16 LE), the payload length (u64 LE), the payload's CRC-32 (u32 LE), then
//! the payload (postcard). The frame makes every kind of damage a clear error instead
//! of a panic or a silently wrong value: wrong magic, unknown version, truncation, bit
//! flips (checksum), and trailing garbage are all refused before postcard runs.
//!
//! State images are canonical: maps are written as vectors sorted by key, derived
//! indexes are left out and recomputed on load, and a loaded image must pass the full
//! invariant check. Two machines in the same state therefore encode to the same bytes,
//! which is what [`SeatMachine::digest`] relies on.
//!
//! Format versions: a state image is never stored (snapshots and the store are
//! records, see `machine::persist`); it is only compared (digests) and decoded by
//! tests, so a new version does not read old ones. Version 2 added the shard-wide
//! idempotency key bindings, version 3 the retention queue (`machine::retention`), version
//! 4 the id keys and actors of issue 20 (log batches: version 2). [`decode_framed_versions`] reads a range
//! of versions for kinds that are stored, such as the store's snapshots.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{Actor, Batch, CreateEvent, SaleState};
use crate::ids::HoldId;
use crate::machine::event::{
    CheckoutRecord, EventState, Hold, HoldTable, Order, RequestRecord, Seat,
};
use crate::machine::retention::{Retention, RetentionEntry, RetentionState};
use crate::machine::SeatMachine;
use crate::Error;

const HEADER_BYTES: usize = 4 + 2 + 8 + 4;
/// Largest payload we will try to decode: bounds memory on a corrupt length field.
pub const PAYLOAD_BYTES_MAX: u64 = 1 << 32;

const STATE_MAGIC: [u8; 4] = *b"SSM1";
/// 2: the shard-wide idempotency key bindings follow the events. 3: then the
/// retention queue. 4: events carry their id key and the audit trail's actors.
const STATE_VERSION: u16 = 4;
const BATCH_MAGIC: [u8; 4] = *b"SBT1";
const BATCH_VERSION: u16 = 2;

fn frame(magic: [u8; 4], version: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of framed `bytes` and its format version, one of `versions`.
fn unframe<'a>(
    what: &'static str,
    magic: [u8; 4],
    versions: std::ops::RangeInclusive<u16>,
    bytes: &'a [u8],
) -> Result<(&'a [u8], u16), Error> {
    let corrupt = |detail: String| Error::Corrupt { what, detail };
    if bytes.len() < HEADER_BYTES {
        return Err(corrupt(format!(
            "{} bytes is shorter than the {HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    let (header, payload) = bytes.split_at(HEADER_BYTES);
    if header[0..4] != magic {
        return Err(corrupt(format!("bad magic {:?}", &header[0..4])));
    }
    let found = u16::from_le_bytes([header[4], header[5]]);
    if !versions.contains(&found) {
        return Err(Error::UnsupportedFormat {
            what,
            found,
            supported: *versions.end(),
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[6..14]);
    let len = u64::from_le_bytes(len);
    if len > PAYLOAD_BYTES_MAX || len != payload.len() as u64 {
        return Err(corrupt(format!(
            "header says {len} payload bytes, found {}",
            payload.len()
        )));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&header[14..18]);
    if u32::from_le_bytes(crc) != crc32fast::hash(payload) {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok((payload, found))
}

pub(crate) fn encode_framed<T: Serialize>(magic: [u8; 4], version: u16, value: &T) -> Vec<u8> {
    // postcard only fails on types it cannot represent; ours are plain data.
    let payload = postcard::to_stdvec(value).expect("plain data encodes");
    frame(magic, version, &payload)
}

pub(crate) fn decode_framed<T: DeserializeOwned>(
    what: &'static str,
    magic: [u8; 4],
    version: u16,
    bytes: &[u8],
) -> Result<T, Error> {
    decode_framed_versions(what, magic, version..=version, bytes).map(|(value, _)| value)
}

/// [`decode_framed`] for a kind whose payload type is the same in each of `versions`
/// (what differs is read by the caller); also returns the version found.
pub(crate) fn decode_framed_versions<T: DeserializeOwned>(
    what: &'static str,
    magic: [u8; 4],
    versions: std::ops::RangeInclusive<u16>,
    bytes: &[u8],
) -> Result<(T, u16), Error> {
    let (payload, version) = unframe(what, magic, versions, bytes)?;
    let (value, rest) = postcard::take_from_bytes(payload).map_err(|e| Error::Corrupt {
        what,
        detail: format!("undecodable payload: {e}"),
    })?;
    if !rest.is_empty() {
        return Err(Error::Corrupt {
            what,
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok((value, version))
}

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        encode_framed(BATCH_MAGIC, BATCH_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        decode_framed("log batch", BATCH_MAGIC, BATCH_VERSION, bytes)
    }
}

// The image types exist twice, borrowed for writing and owned for reading; postcard
// encodes `&T` exactly like `T`, and the round-trip tests pin the two together.

#[derive(Serialize)]
struct MachineImageRef<'a> {
    applied_index: Option<u64>,
    clock_ms: u64,
    events: Vec<EventImageRef<'a>>,
    keys: Vec<(&'a str, &'a HoldId)>,
    retention: RetentionState,
    /// The queue entries in memory, by position (every one, in a machine that never
    /// evicts; none in a store's between entries).
    retention_window: Vec<(u64, &'a RetentionEntry)>,
}

#[derive(Serialize)]
struct EventImageRef<'a> {
    def: &'a CreateEvent,
    sale: SaleState,
    sale_by: &'a Option<Actor>,
    created_at_ms: u64,
    seats: &'a [Seat],
    holds: Vec<(u64, &'a Hold)>,
    orders: Vec<(u64, &'a Order)>,
    next_hold_seq: u64,
    next_order_seq: u64,
    requests: Vec<(&'a str, &'a RequestRecord)>,
    checkouts: Vec<(&'a str, &'a CheckoutRecord)>,
}

#[derive(Deserialize)]
struct MachineImage {
    applied_index: Option<u64>,
    clock_ms: u64,
    events: Vec<EventImage>,
    keys: Vec<(String, HoldId)>,
    retention: RetentionState,
    retention_window: Vec<(u64, RetentionEntry)>,
}

#[derive(Deserialize)]
pub(crate) struct EventImage {
    pub def: CreateEvent,
    pub sale: SaleState,
    pub sale_by: Option<Actor>,
    pub created_at_ms: u64,
    pub seats: Vec<Seat>,
    pub holds: Vec<(u64, Hold)>,
    pub orders: Vec<(u64, Order)>,
    pub next_hold_seq: u64,
    pub next_order_seq: u64,
    pub requests: Vec<(String, RequestRecord)>,
    pub checkouts: Vec<(String, CheckoutRecord)>,
}

fn sorted<K: Ord + Copy, V>(mut v: Vec<(K, V)>) -> Vec<(K, V)> {
    v.sort_unstable_by_key(|(k, _)| *k);
    v
}

fn event_image(e: &EventState) -> EventImageRef<'_> {
    let requests = e.requests.iter().map(|(k, r)| (&**k, r)).collect();
    EventImageRef {
        def: &e.def,
        sale: e.sale,
        sale_by: &e.sale_by,
        created_at_ms: e.created_at_ms,
        seats: &e.seats,
        holds: e.holds.sorted(),
        orders: e.orders.iter().map(|(k, v)| (*k, v)).collect(),
        next_hold_seq: e.next_hold_seq,
        next_order_seq: e.next_order_seq,
        requests: sorted(requests),
        checkouts: sorted(e.checkouts.iter().map(|(k, v)| (k.as_str(), v)).collect()),
    }
}

pub(crate) fn restore_event(img: EventImage) -> Result<EventState, String> {
    let plan = img.def.layout.plan()?;
    if img.seats.len() != plan.seats.len() {
        return Err(format!(
            "{} seats stored for a layout of {}",
            img.seats.len(),
            plan.seats.len()
        ));
    }
    let mut e = EventState::new(img.def, plan, img.created_at_ms);
    e.sale = img.sale;
    e.sale_by = img.sale_by;
    e.seats = img.seats;
    let n_holds = img.holds.len();
    e.holds = HoldTable::from_pairs(img.holds)?;
    let n_orders = img.orders.len();
    e.orders = img.orders.into_iter().collect();
    if e.holds.len() != n_holds || e.orders.len() != n_orders {
        return Err("duplicate hold or order sequence".into());
    }
    e.next_hold_seq = img.next_hold_seq;
    e.next_order_seq = img.next_order_seq;
    let n_requests = img.requests.len();
    e.requests = img
        .requests
        .into_iter()
        .map(|(k, r)| (k.into(), r))
        .collect();
    let n_checkouts = img.checkouts.len();
    e.checkouts = img.checkouts.into_iter().collect();
    if e.requests.len() != n_requests || e.checkouts.len() != n_checkouts {
        return Err("duplicate request or checkout record".into());
    }
    let crate::machine::Derived {
        counts,
        owned,
        deadlines,
    } = e.derive();
    let owned = owned
        .into_iter()
        .map(|(u, n)| (std::sync::Arc::from(u), n))
        .collect();
    e.counts = counts;
    e.deadlines = deadlines;
    e.seats_owned = owned;
    e.check()?;
    e.dirty = Default::default();
    e.dirty_created = false;
    Ok(e)
}

impl SeatMachine {
    /// The canonical encoding of the whole state (a snapshot).
    pub fn encode(&self) -> Vec<u8> {
        let image = MachineImageRef {
            applied_index: self.applied_index,
            clock_ms: self.clock_ms,
            events: self.events.values().map(event_image).collect(),
            // A BTreeMap: already in key order.
            keys: self.keys.iter().map(|(k, h)| (k.as_str(), h)).collect(),
            retention: self.retention.state,
            retention_window: self.retention.window.iter().map(|(&p, e)| (p, e)).collect(),
        };
        encode_framed(STATE_MAGIC, STATE_VERSION, &image)
    }

    /// Loads an encoded state, refusing anything damaged or inconsistent.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let image: MachineImage = decode_framed("state image", STATE_MAGIC, STATE_VERSION, bytes)?;
        let corrupt = |detail: String| Error::Corrupt {
            what: "state image",
            detail,
        };
        let mut retention = Retention::stored(image.retention);
        let n_window = image.retention_window.len();
        retention.window = image.retention_window.into_iter().collect();
        if retention.window.len() != n_window {
            return Err(corrupt("a retention entry stored twice".into()));
        }
        let mut machine = SeatMachine {
            applied_index: image.applied_index,
            clock_ms: image.clock_ms,
            retention,
            ..SeatMachine::default()
        };
        for img in image.events {
            let id = img.def.event_id.clone();
            let event = restore_event(img).map_err(|e| corrupt(format!("event {id}: {e}")))?;
            if machine.events.insert(id.clone(), event).is_some() {
                return Err(corrupt(format!("event {id} stored twice")));
            }
        }
        let n_keys = image.keys.len();
        machine.keys = image.keys.into_iter().collect();
        if machine.keys.len() != n_keys {
            return Err(corrupt("an idempotency key bound twice".into()));
        }
        machine.check_keys().map_err(corrupt)?;
        machine.check_retention().map_err(corrupt)?;
        Ok(machine)
    }

    /// SHA-256 of the canonical encoding: equal digests mean identical state.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}
