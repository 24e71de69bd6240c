//! Record-level persistence: the state machine as key/value records, written a few at
//! a time as entries apply and read back whole when a node restarts.
//!
//! Every `apply` marks what it changed (`event::Dirty`); [`SeatMachine::take_changes`]
//! turns the marks into records holding the current values. The storage layer writes
//! those records, the applied log id and the membership in one atomic batch, so the
//! records on disk always equal the machine after some whole number of entries.
//! [`SeatMachine::load_records`] rebuilds the machine from all of a group's records and
//! runs the full invariant check before trusting them.
//!
//! Keys (the storage layer prefixes them with the Raft group):
//! `[0]` the machine (applied index, clock); then per event, with
//! `E = [len][event id bytes]`: `[1]E` definition (written once), `[2]E` counters
//! (sale state, sequence numbers), `[3]E[idx u32 BE]` a seat that is available again
//! after a hold on it ended (a held or sold seat is derived from its live or committed
//! hold when loading, so a hold writes no seat records), `[4]E[seq u64 BE]` a
//! hold, `[5]E[seq u64 BE]` an order, `[6]E[key]` a hold request's first decision
//! (a refusal, or a grant whose hold has ended: while a hold is live or committed, its
//! request's grant is derived from the hold, which names its user and reservation id),
//! `[7]E[key]` an idempotency key's checkout. Outside any event, `[8][key]` names the
//! hold an idempotency key is bound to, shard-wide (`SeatMachine::keys`; always cold);
//! and for the machine's retention queue (`machine::retention`), `[9]` its head, tail,
//! head time and checksum, and `[10][position u64 BE]` a queued record (its event,
//! kind, key and decision time).
//! Big-endian numbers keep RocksDB's key order equal to numeric order. A seat without
//! a record is available at version 0, so creating a stadium writes one record, not
//! 100,000.
//!
//! Records are written and, since retention, deleted: [`SeatMachine::take_changes`]
//! gives both, for disjoint keys. A request or checkout record the queue purges is
//! deleted unless it was decided anew in the same changes, and a queue entry is
//! deleted once purged. A store written before retention has no `[9]` record: its
//! queue is empty, and its records are kept as they were.
//!
//! Memory is bounded by the venue, not by history. What an event needs to decide lives
//! in memory: seats, live and committed holds, orders (each holds a sold seat, so there
//! are at most as many as seats), the grants of those holds' requests, and checkouts
//! in progress or completed. What only answers retries is *cold*: released and expired
//! holds, refused hold requests and the grants of ended holds, refused checkouts. Once
//! storage has taken the records of an apply ([`SeatMachine::take_changes`]) and queued
//! their write, [`SeatMachine::evict_cold`] drops the cold ones from memory; before the
//! next entry is applied, storage waits for that write and reads back the few it needs
//! ([`SeatMachine::cold_keys`], [`SeatMachine::warm`]). Decisions never depend on what
//! happens to be cached: a record is in memory, in the write in flight, or on disk
//! (storage's readers wait for the write before reading the disk), and `cold_keys`
//! names every record `apply` may read (including the queue entries a purge needs,
//! and excluding records purged whose deletion is not written yet).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::event::{
    request_key, CheckoutRecord, CheckoutResult, EventState, Hold, Order, RequestRecord, Seat,
    SeatStatus,
};
use super::retention::{Retention, RetentionEntry, RetentionState, QUEUE_POSITIONS_MAX};
use super::SeatMachine;
use crate::codec::{restore_event, EventImage};
use crate::command::{Batch, Command, HoldState};
use crate::command::{CreateEvent, SaleState};
use crate::Error;

const KIND_MACHINE: u8 = 0;
const KIND_DEF: u8 = 1;
const KIND_COUNTERS: u8 = 2;
const KIND_SEAT: u8 = 3;
const KIND_HOLD: u8 = 4;
const KIND_ORDER: u8 = 5;
const KIND_REQUEST: u8 = 6;
const KIND_CHECKOUT: u8 = 7;
const KIND_KEY: u8 = 8;
const KIND_RETENTION_STATE: u8 = 9;
const KIND_RETENTION_ENTRY: u8 = 10;

#[derive(Serialize, Deserialize)]
struct MachineRecord {
    applied_index: Option<u64>,
    clock_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Counters {
    sale: SaleState,
    sale_by: Option<crate::Actor>,
    created_at_ms: u64,
    next_hold_seq: u64,
    next_order_seq: u64,
}

/// One record: key and value bytes.
pub type Record = (Vec<u8>, Vec<u8>);

/// What storage must do to a machine's records after an apply: write `puts`, delete
/// `deletes`. No key is in both, so their order does not matter.
#[derive(Debug, Default)]
pub struct Changes {
    pub puts: Vec<Record>,
    pub deletes: Vec<Vec<u8>>,
}

/// Whether a record key (without the storage's group prefix) is a hold request's
/// decision: the storage layer keeps a filter of those it has on disk.
#[cfg_attr(not(feature = "storage"), allow(dead_code))]
pub fn is_request_key(key: &[u8]) -> bool {
    key.first() == Some(&KIND_REQUEST)
}

/// Whether a record key is a retention queue entry: one that [`SeatMachine::cold_keys`]
/// names must be stored (the queue's positions `head..tail` all are), so storage
/// reports a missing one as damage instead of applying without it.
pub fn is_retention_key(key: &[u8]) -> bool {
    key.first() == Some(&KIND_RETENTION_ENTRY)
}

fn retention_key(pos: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(KIND_RETENTION_ENTRY);
    k.extend_from_slice(&pos.to_be_bytes());
    k
}

fn key(kind: u8, event: &str, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + event.len() + suffix.len());
    k.push(kind);
    // Event ids are at most 64 bytes, so their length fits one byte.
    k.push(event.len() as u8);
    k.extend_from_slice(event.as_bytes());
    k.extend_from_slice(suffix);
    k
}

/// The key of an idempotency key's binding (`[8][key]`): shard-wide, so no event id.
fn key_binding(idempotency_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + idempotency_key.len());
    k.push(KIND_KEY);
    k.extend_from_slice(idempotency_key.as_bytes());
    k
}

/// The idempotency key and hold of a `[8][key]` record.
fn decode_binding(suffix: &[u8], v: &[u8]) -> Result<(String, crate::HoldId), Error> {
    let key = std::str::from_utf8(suffix).map_err(|_| corrupt("key binding is not UTF-8"))?;
    crate::ids::validate_token("idempotency key", key).map_err(corrupt)?;
    Ok((key.to_string(), decode("key binding", v)?))
}

fn value<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("plain data encodes")
}

/// `(kind, event id, rest)` of an event record's key.
fn split_key(k: &[u8]) -> Result<(u8, &[u8], &[u8]), Error> {
    let (&kind, rest) = k.split_first().ok_or_else(|| corrupt("empty key"))?;
    let (&len, rest) = rest.split_first().ok_or_else(|| corrupt("short key"))?;
    if rest.len() < len as usize {
        return Err(corrupt("key shorter than its event id"));
    }
    let (event, suffix) = rest.split_at(len as usize);
    Ok((kind, event, suffix))
}

fn seq_of(suffix: &[u8]) -> Result<u64, Error> {
    suffix
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("sequence key"))
}

fn corrupt(detail: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "state machine records",
        detail: detail.into(),
    }
}

fn decode<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(format!("{what}: {e}")))
}

/// Where [`emit`] writes: records of one kind of one event.
struct KindOut<'a> {
    out: &'a mut Vec<Record>,
    kind: u8,
    event: &'a str,
}

fn out_kind<'a>(out: &'a mut Vec<Record>, kind: u8, event: &'a str) -> KindOut<'a> {
    KindOut { out, kind, event }
}

/// Writes the current value of each dirty key once (marks may repeat).
fn emit<'s, K: Ord, V: Serialize + 's>(
    to: &mut KindOut<'_>,
    mut keys: Vec<K>,
    suffix: impl Fn(&K) -> Vec<u8>,
    current: impl Fn(&K) -> &'s V,
) {
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        to.out
            .push((key(to.kind, to.event, &suffix(&k)), value(current(&k))));
    }
}

impl EventState {
    fn counters(&self) -> Counters {
        Counters {
            sale: self.sale,
            sale_by: self.sale_by.clone(),
            created_at_ms: self.created_at_ms,
            next_hold_seq: self.next_hold_seq,
            next_order_seq: self.next_order_seq,
        }
    }

    /// Records for everything marked dirty, and deletions of the records purged,
    /// clearing the marks.
    fn take_changes(&mut self, with_def: bool, out: &mut Vec<Record>, deletes: &mut Vec<Vec<u8>>) {
        let id = self.def.event_id.as_str();
        let dirty = std::mem::take(&mut self.dirty);
        self.touched.holds.extend(&dirty.holds);
        self.touched.requests.extend(dirty.requests.iter().cloned());
        self.touched
            .checkouts
            .extend(dirty.checkouts.iter().cloned());
        if with_def {
            out.push((key(KIND_DEF, id, &[]), value(&self.def)));
        }
        if dirty.meta || with_def {
            out.push((key(KIND_COUNTERS, id, &[]), value(&self.counters())));
        }
        // Held and sold seats are derived from their holds when loading; only a seat
        // that is available again (its hold ended) needs a record of its own.
        let mut seats = dirty.seats;
        seats.retain(|&i| self.seats[i as usize].status == SeatStatus::Available);
        emit(
            &mut out_kind(out, KIND_SEAT, id),
            seats,
            |i| i.to_be_bytes().to_vec(),
            |i| &self.seats[*i as usize],
        );
        emit(
            &mut out_kind(out, KIND_HOLD, id),
            dirty.holds,
            |s| s.to_be_bytes().to_vec(),
            |s| &self.holds[s],
        );
        emit(
            &mut out_kind(out, KIND_ORDER, id),
            dirty.orders,
            |s| s.to_be_bytes().to_vec(),
            |s| &self.orders[s],
        );
        // A request or checkout changed or purged is written as it is in memory, or
        // deleted when it has no record of its own now: purged (and not decided anew),
        // or decided anew as a live hold's grant, which is derived from the hold.
        let mut requests = dirty.requests;
        requests.extend(dirty.purged_requests);
        requests.sort_unstable();
        requests.dedup();
        for k in requests {
            let at = key(KIND_REQUEST, id, k.as_bytes());
            match self.requests.get(&k) {
                Some(r) if !self.is_derived_request(r) => out.push((at, value(r))),
                _ => deletes.push(at),
            }
        }
        let mut checkouts = dirty.checkouts;
        checkouts.extend(dirty.purged_checkouts);
        checkouts.sort_unstable();
        checkouts.dedup();
        for k in checkouts {
            let at = key(KIND_CHECKOUT, id, k.as_bytes());
            match self.checkouts.get(&k) {
                Some(c) => out.push((at, value(c))),
                None => deletes.push(at),
            }
        }
    }

    fn mark_all_dirty(&mut self) {
        let requests = self
            .requests
            .iter()
            .filter(|(_, r)| !self.is_derived_request(r))
            .map(|(k, _)| k.clone())
            .collect();
        let d = &mut self.dirty;
        d.meta = true;
        d.seats = (0..self.seats.len() as u32)
            .filter(|&i| {
                self.seats[i as usize]
                    != Seat {
                        status: SeatStatus::Available,
                        version: 0,
                    }
            })
            .collect();
        d.holds = self.holds.iter().map(|(seq, _)| seq).collect();
        d.orders = self.orders.keys().copied().collect();
        d.requests = requests;
        d.checkouts = self.checkouts.keys().cloned().collect();
    }
}

/// What loading saw of the retention queue's entries, to check them against its state
/// without keeping them: the queue's positions `head..tail`, each once, the head's
/// time, times that never decrease (where entries come in position order, as they do
/// from RocksDB) and none after the machine's clock.
#[derive(Default)]
struct QueueSeen {
    count: u64,
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    previous: Option<(u64, u64)>,
    latest_ms: u64,
}

impl QueueSeen {
    fn see(&mut self, pos: u64, decided_at_ms: u64) -> Result<(), Error> {
        if let Some((p, t)) = self.previous {
            if p.checked_add(1) == Some(pos) && decided_at_ms < t {
                return Err(corrupt(format!(
                    "retention entry {pos} is older than the one before it"
                )));
            }
        }
        self.previous = Some((pos, decided_at_ms));
        self.count += 1;
        if self.first.is_none_or(|(p, _)| pos < p) {
            self.first = Some((pos, decided_at_ms));
        }
        if self.last.is_none_or(|(p, _)| pos > p) {
            self.last = Some((pos, decided_at_ms));
        }
        self.latest_ms = self.latest_ms.max(decided_at_ms);
        Ok(())
    }

    fn check(&self, s: &RetentionState, clock_ms: u64) -> Result<(), Error> {
        let bad = |detail: String| Err(corrupt(format!("retention queue: {detail}")));
        if s.head > s.tail || s.tail > QUEUE_POSITIONS_MAX {
            return bad(format!(
                "head {} and tail {} out of order or range",
                s.head, s.tail
            ));
        }
        if self.count != s.tail - s.head {
            return bad(format!(
                "{} entries stored for positions {}..{}",
                self.count, s.head, s.tail
            ));
        }
        match (self.first, self.last) {
            (Some((first, first_ms)), Some((last, _))) => {
                if first != s.head || last.checked_add(1) != Some(s.tail) {
                    return bad(format!(
                        "entries {first}..={last} stored for positions {}..{}",
                        s.head, s.tail
                    ));
                }
                if first_ms != s.head_decided_at_ms {
                    return bad(format!(
                        "head decided at {first_ms} ms, the state says {}",
                        s.head_decided_at_ms
                    ));
                }
            }
            _ if s.head_decided_at_ms != 0 => return bad("an empty queue has a head time".into()),
            _ => {}
        }
        if self.latest_ms > clock_ms {
            return bad(format!(
                "an entry decided at {} ms, after the machine's clock {clock_ms} ms",
                self.latest_ms
            ));
        }
        Ok(())
    }
}

/// Derives what a live or committed hold implies from the hold itself: each seat it
/// owns, held at the version it was granted or sold one version later, and its
/// request's grant. These have no records of their own (`take_changes`); a seat record
/// left from before the seat was taken again is older than the hold, so the hold wins.
/// (A grant record may also be stored, by an older version; it is left on disk.)
fn derive_from_holds(img: &mut EventImage) -> Result<(), Error> {
    let id = img.def.event_id.clone();
    let mut key = String::new();
    for (seq, hold) in &img.holds {
        if !is_cold_hold(hold) {
            request_key(&mut key, &hold.user, &hold.client_reservation_id);
            img.requests
                .push((key.clone(), RequestRecord::Granted(*seq)));
        }
        if hold.seats.len() != hold.granted_versions.len() {
            return Err(corrupt(format!(
                "event {id}: hold {seq} has {} seats but {} versions",
                hold.seats.len(),
                hold.granted_versions.len()
            )));
        }
        for (&idx, &granted) in hold.seats.iter().zip(&hold.granted_versions) {
            let seat = match &hold.state {
                HoldState::Active | HoldState::CheckingOut { .. } => Seat {
                    status: SeatStatus::Held(*seq),
                    version: granted,
                },
                HoldState::Committed { order } => Seat {
                    status: SeatStatus::Sold(*order),
                    version: granted + 1,
                },
                // Cold holds are not loaded.
                HoldState::Released | HoldState::Expired => continue,
            };
            *img.seats.get_mut(idx as usize).ok_or_else(|| {
                corrupt(format!(
                    "event {id}: hold {seq} names seat {idx}, out of range"
                ))
            })? = seat;
        }
    }
    Ok(())
}

/// A released or expired hold: it decides nothing, so it lives on disk only.
pub(super) fn is_cold_hold(h: &Hold) -> bool {
    matches!(h.state, HoldState::Released | HoldState::Expired)
}

pub(super) fn is_cold_checkout(c: &CheckoutRecord) -> bool {
    matches!(c.result, CheckoutResult::Refused(_))
}

impl EventState {
    fn evict_cold(&mut self) {
        debug_assert!(self.dirty.holds.is_empty() && self.dirty.requests.is_empty());
        let touched = std::mem::take(&mut self.touched);
        for seq in touched.holds {
            if self.holds.get(&seq).is_some_and(is_cold_hold) {
                self.holds.remove(&seq);
            }
        }
        for key in touched.requests {
            if self
                .requests
                .get(&key)
                .is_some_and(|r| !self.is_derived_request(r))
            {
                self.requests.remove(&key);
            }
        }
        for key in touched.checkouts {
            if self.checkouts.get(&key).is_some_and(is_cold_checkout) {
                self.checkouts.remove(&key);
            }
        }
        // Every cold record in memory was touched, so none is left (the model test
        // checks this: asserting it here would scan every live hold per entry).
    }

    /// Whether a request's record is derived from a hot hold (a live or committed one
    /// names its request): such a record is neither written nor evicted.
    pub(super) fn is_derived_request(&self, r: &RequestRecord) -> bool {
        match r {
            RequestRecord::Granted(seq) => self.holds.get(seq).is_some_and(|h| !is_cold_hold(h)),
            RequestRecord::Refused(_) => false,
        }
    }

    /// Keys of records `apply` of `cmd` may read that are not in memory.
    fn cold_keys(&self, cmd: &Command, buf: &mut String, out: &mut Vec<Vec<u8>>) {
        let id = self.def.event_id.as_str();
        let want_hold = |seq: u64, out: &mut Vec<Vec<u8>>| {
            if seq > 0 && seq < self.next_hold_seq && !self.holds.contains(&seq) {
                out.push(key(KIND_HOLD, id, &seq.to_be_bytes()));
            }
        };
        match cmd {
            Command::Hold(req) => {
                request_key(buf, &req.user, &req.client_reservation_id);
                match self.requests.get(buf.as_str()) {
                    // Purged by an entry whose deletion is not written yet: the disk
                    // still has the record, which no longer exists.
                    None if self.dirty.purged_requests.contains(buf.as_str()) => {}
                    None => out.push(key(KIND_REQUEST, id, buf.as_bytes())),
                    Some(RequestRecord::Granted(seq)) => want_hold(*seq, out),
                    Some(RequestRecord::Refused(_)) => {}
                }
            }
            Command::BeginCheckout {
                hold,
                idempotency_key,
                ..
            }
            | Command::CompleteCheckout {
                hold,
                idempotency_key,
                ..
            }
            | Command::AbortCheckout {
                hold,
                idempotency_key,
                ..
            } => {
                want_hold(hold.seq, out);
                match self.checkouts.get(idempotency_key) {
                    None if self.dirty.purged_checkouts.contains(idempotency_key) => {}
                    None => out.push(key(KIND_CHECKOUT, id, idempotency_key.as_bytes())),
                    Some(rec) => want_hold(rec.hold, out),
                }
            }
            Command::Release { hold, .. } => want_hold(hold.seq, out),
            Command::CreateEvent(_) | Command::SetSale { .. } | Command::Expire => {}
        }
    }
}

impl SeatMachine {
    /// How many hold, order, request and checkout records are in memory: bounded by the
    /// venues' seats once cold records are evicted, whatever the history.
    pub fn records_in_memory(&self) -> usize {
        let events: usize = self
            .events
            .values()
            .map(|e| e.holds.len() + e.orders.len() + e.requests.len() + e.checkouts.len())
            .sum();
        events + self.keys.len()
    }

    /// Drops cold records from memory. Only call it once their records are taken by
    /// [`SeatMachine::take_changes`] and on their way to disk, where every reader
    /// waits for them.
    pub fn evict_cold(&mut self) {
        for event in self.events.values_mut() {
            event.evict_cold();
        }
        debug_assert!(self.dirty_keys.is_empty() && self.purged_keys.is_empty());
        // Every key binding is cold: it only decides a checkout under the same key.
        for key in std::mem::take(&mut self.touched_keys) {
            self.keys.remove(&key);
        }
        // Queue entries are records too: written, and read back when a purge needs them.
        let r = &mut self.retention;
        debug_assert!(r.taken_head == r.state.head && r.taken_tail == r.state.tail);
        r.window.clear();
    }

    /// Keys of stored records that applying `batch` may read and that are not in
    /// memory. Reading them and handing them to [`SeatMachine::warm`] may reveal more
    /// (a request's hold): call again until it names nothing new. Retention queue
    /// entries among them ([`is_retention_key`]) are always stored.
    pub fn cold_keys(&self, batch: &Batch) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let now_ms = self.clock_ms.max(batch.ts_ms);
        for pos in self.retention.positions_read(now_ms, batch.commands.len()) {
            if !self.retention.window.contains_key(&pos) {
                out.push(retention_key(pos));
            }
        }
        let mut buf = String::new();
        for cmd in &batch.commands {
            let event = match cmd {
                Command::Hold(req) => &req.event_id,
                Command::BeginCheckout { hold, .. }
                | Command::CompleteCheckout { hold, .. }
                | Command::AbortCheckout { hold, .. }
                | Command::Release { hold, .. } => &hold.event,
                Command::CreateEvent(_) | Command::SetSale { .. } | Command::Expire => continue,
            };
            if let Some(e) = self.events.get(event) {
                e.cold_keys(cmd, &mut buf, &mut out);
                if let Command::BeginCheckout {
                    idempotency_key, ..
                } = cmd
                {
                    let valid = crate::ids::validate_token("", idempotency_key).is_ok();
                    if valid && !self.keys.contains_key(idempotency_key) {
                        out.push(key_binding(idempotency_key));
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Puts stored records back in memory (read for [`SeatMachine::cold_keys`]).
    pub fn warm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &mut self,
        records: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), Error> {
        for (k, v) in records {
            let (k, v) = (k.as_ref(), v.as_ref());
            if let Some((&KIND_KEY, suffix)) = k.split_first() {
                let (key, hold) = decode_binding(suffix, v)?;
                self.keys.insert(key.clone(), hold);
                self.touched_keys.push(key);
                continue;
            }
            if is_retention_key(k) {
                let pos = seq_of(&k[1..])?;
                let s = &self.retention.state;
                if !(s.head..s.tail).contains(&pos) {
                    return Err(corrupt(format!(
                        "retention entry {pos} read back outside the queue {}..{}",
                        s.head, s.tail
                    )));
                }
                let entry: RetentionEntry = decode("retention entry", v)?;
                self.retention.window.insert(pos, entry);
                continue;
            }
            let (kind, event, suffix) = split_key(k)?;
            let id = String::from_utf8_lossy(event);
            let e = self
                .events
                .values_mut()
                .find(|e| e.def.event_id.as_str().as_bytes() == event)
                .ok_or_else(|| corrupt(format!("record for unknown event {id}")))?;
            match kind {
                KIND_HOLD => {
                    let seq = seq_of(suffix)?;
                    e.holds.insert(seq, decode::<Hold>("hold", v)?);
                    e.touched.holds.push(seq);
                }
                KIND_ORDER => {
                    e.orders
                        .insert(seq_of(suffix)?, decode::<Order>("order", v)?);
                }
                KIND_REQUEST => {
                    let key = std::str::from_utf8(suffix)
                        .map_err(|_| corrupt("request key is not UTF-8"))?;
                    let record = decode("request record", v)?;
                    // A record purged but not yet deleted from the disk is gone.
                    if e.dirty.purged_requests.contains(key) {
                        continue;
                    }
                    let key: Arc<str> = key.into();
                    e.requests.insert(key.clone(), record);
                    e.touched.requests.push(key);
                }
                KIND_CHECKOUT => {
                    let key = std::str::from_utf8(suffix)
                        .map_err(|_| corrupt("checkout key is not UTF-8"))?;
                    let record = decode("checkout record", v)?;
                    if e.dirty.purged_checkouts.contains(key) {
                        continue;
                    }
                    e.checkouts.insert(key.to_string(), record);
                    e.touched.checkouts.push(key.to_string());
                }
                other => return Err(corrupt(format!("record kind {other} is never cold"))),
            }
        }
        Ok(())
    }

    /// A hold as readers see it, from memory or, for a cold one, from the stored record
    /// `get` returns for its key. `Ok(Err(_))` is an unknown hold.
    pub fn hold_or_stored(
        &self,
        id: &crate::HoldId,
        get: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, Error>,
    ) -> Result<Result<crate::HoldView, crate::Refusal>, Error> {
        let Some(event) = self.events.get(&id.event) else {
            return Ok(Err(crate::Refusal::NotFound(format!("event {}", id.event))));
        };
        if let Err(forged) = event.check_hold_id(id) {
            return Ok(Err(forged));
        }
        if let Some(hold) = event.holds.get(&id.seq) {
            return Ok(Ok(event.hold_view(id.seq, hold)));
        }
        let not_found = || crate::Refusal::NotFound(format!("hold {id}"));
        if id.seq == 0 || id.seq >= event.next_hold_seq {
            return Ok(Err(not_found()));
        }
        match get(&key(KIND_HOLD, id.event.as_str(), &id.seq.to_be_bytes()))? {
            Some(bytes) => {
                let hold: Hold = decode("hold", &bytes)?;
                if hold.seats.iter().any(|&s| s as usize >= event.seats.len()) {
                    return Err(corrupt(format!("hold {id} names a seat the event lacks")));
                }
                Ok(Ok(event.hold_view(id.seq, &hold)))
            }
            None => Ok(Err(not_found())),
        }
    }

    /// The records changed since the last call (or since the machine was loaded), as
    /// `(key, value)` pairs to write, and the keys of records to delete (purged by
    /// retention); always includes the machine record and the retention queue's state.
    /// Events created since the last call include their definition.
    pub fn take_changes(&mut self) -> Changes {
        let mut out = vec![
            (
                vec![KIND_MACHINE],
                value(&MachineRecord {
                    applied_index: self.applied_index,
                    clock_ms: self.clock_ms,
                }),
            ),
            (vec![KIND_RETENTION_STATE], value(&self.retention.state)),
        ];
        let mut deletes = Vec::new();
        let r = &mut self.retention;
        // Entries written before and purged since the last call (those also queued
        // since were never written), and entries queued since and not purged.
        let written = r.taken_tail.min(r.state.head);
        deletes.extend((r.taken_head..written).map(retention_key));
        let queued = r.taken_tail.max(r.state.head);
        out.extend(
            r.window
                .range(queued..)
                .map(|(&pos, entry)| (retention_key(pos), value(entry))),
        );
        r.taken_head = r.state.head;
        r.taken_tail = r.state.tail;
        for event in self.events.values_mut() {
            let created = std::mem::take(&mut event.dirty_created);
            event.take_changes(created, &mut out, &mut deletes);
        }
        let mut keys = std::mem::take(&mut self.dirty_keys);
        keys.sort_unstable();
        keys.dedup();
        // A binding forgotten and bound again in the same changes is written, not
        // deleted: puts and deletes stay disjoint.
        let mut purged = std::mem::take(&mut self.purged_keys);
        purged.sort_unstable();
        purged.dedup();
        purged.retain(|k| keys.binary_search(k).is_err());
        deletes.extend(purged.iter().map(|k| key_binding(k)));
        for key in keys {
            out.push((key_binding(&key), value(&self.keys[&key])));
            self.touched_keys.push(key);
        }
        Changes { puts: out, deletes }
    }

    /// Every record of the machine (for rewriting a group's state wholesale, as when a
    /// snapshot is installed): those in memory, which is all of them in a machine that
    /// never evicted.
    pub fn all_records(&mut self) -> Vec<Record> {
        for event in self.events.values_mut() {
            event.mark_all_dirty();
            event.dirty_created = true;
        }
        self.dirty_keys = self.keys.keys().cloned().collect();
        self.retention.taken_tail = self.retention.state.head;
        self.take_changes().puts
    }

    /// Rebuilds a machine from all of its records, in any order, keeping the cold ones
    /// on disk only (the result equals the stored machine after `evict_cold`). Damaged
    /// or inconsistent records give an error; nothing is guessed.
    pub fn load_records<K, V>(records: impl IntoIterator<Item = (K, V)>) -> Result<Self, Error>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        #[derive(Default)]
        struct Staged {
            def: Option<CreateEvent>,
            counters: Option<Counters>,
            seats: Vec<(u32, Seat)>,
            image: Option<EventImage>,
        }
        let mut machine = SeatMachine::default();
        let mut seen_machine = false;
        let mut retention: Option<RetentionState> = None;
        let mut queue = QueueSeen::default();
        let mut staged: BTreeMap<Vec<u8>, Staged> = BTreeMap::new();
        // Records that belong to an event image, kept until every image exists.
        struct Later {
            event: Vec<u8>,
            kind: u8,
            suffix: Vec<u8>,
            value: Vec<u8>,
        }
        let mut later: Vec<Later> = Vec::new();
        // Key bindings are cold, so only checked: each must name a hold its event granted.
        let mut bound_events = Vec::new();
        for (k, v) in records {
            let (k, v) = (k.as_ref(), v.as_ref());
            let Some((&kind, rest)) = k.split_first() else {
                return Err(corrupt("empty key"));
            };
            if kind == KIND_KEY {
                let (key, hold) = decode_binding(rest, v)?;
                bound_events.push((key, hold));
                continue;
            }
            if kind == KIND_MACHINE {
                let rec: MachineRecord = decode("machine record", v)?;
                machine.applied_index = rec.applied_index;
                machine.clock_ms = rec.clock_ms;
                seen_machine = true;
                continue;
            }
            if kind == KIND_RETENTION_STATE {
                if !rest.is_empty() {
                    return Err(corrupt("retention state key"));
                }
                retention = Some(decode("retention state", v)?);
                continue;
            }
            if kind == KIND_RETENTION_ENTRY {
                // Queued records stay on disk, like the cold records they name; the
                // queue's shape is checked below.
                let entry: RetentionEntry = decode("retention entry", v)?;
                queue.see(seq_of(rest)?, entry.decided_at_ms)?;
                continue;
            }
            let Some((&len, rest)) = rest.split_first() else {
                return Err(corrupt("short key"));
            };
            if rest.len() < len as usize {
                return Err(corrupt("key shorter than its event id"));
            }
            let (event, suffix) = rest.split_at(len as usize);
            let entry = staged.entry(event.to_vec()).or_default();
            match kind {
                KIND_DEF => entry.def = Some(decode("event definition", v)?),
                KIND_COUNTERS => entry.counters = Some(decode("event counters", v)?),
                KIND_SEAT => {
                    let idx =
                        u32::from_be_bytes(suffix.try_into().map_err(|_| corrupt("seat key"))?);
                    entry.seats.push((idx, decode("seat", v)?));
                }
                KIND_HOLD | KIND_ORDER | KIND_REQUEST | KIND_CHECKOUT => later.push(Later {
                    event: event.to_vec(),
                    kind,
                    suffix: suffix.to_vec(),
                    value: v.to_vec(),
                }),
                other => return Err(corrupt(format!("unknown record kind {other}"))),
            }
        }
        if !seen_machine && (!staged.is_empty() || !bound_events.is_empty()) {
            return Err(corrupt("event records without a machine record"));
        }
        if !seen_machine && (retention.is_some() || queue.count > 0) {
            return Err(corrupt("retention records without a machine record"));
        }
        // No retention state: a store written before retention, whose queue is empty.
        let retention = retention.unwrap_or_default();
        queue.check(&retention, machine.clock_ms)?;
        machine.retention = Retention::stored(retention);
        for (id, s) in staged.iter_mut() {
            let name = String::from_utf8_lossy(id);
            let def = s
                .def
                .take()
                .ok_or_else(|| corrupt(format!("event {name} has no definition")))?;
            let c = s
                .counters
                .take()
                .ok_or_else(|| corrupt(format!("event {name} has no counters")))?;
            if def.event_id.as_str().as_bytes() != id.as_slice() {
                return Err(corrupt(format!("event {name} stored under another id")));
            }
            let capacity = def.layout.capacity() as usize;
            if capacity > crate::limits::SEATS_PER_EVENT_MAX {
                return Err(corrupt(format!("event {name} is too large")));
            }
            let mut seats = vec![
                Seat {
                    status: SeatStatus::Available,
                    version: 0
                };
                capacity
            ];
            for (idx, seat) in s.seats.drain(..) {
                *seats
                    .get_mut(idx as usize)
                    .ok_or_else(|| corrupt(format!("event {name}: seat {idx} out of range")))? =
                    seat;
            }
            s.image = Some(EventImage {
                def,
                sale: c.sale,
                sale_by: c.sale_by,
                created_at_ms: c.created_at_ms,
                seats,
                holds: Vec::new(),
                orders: Vec::new(),
                next_hold_seq: c.next_hold_seq,
                next_order_seq: c.next_order_seq,
                requests: Vec::new(),
                checkouts: Vec::new(),
            });
        }
        for (key, hold) in &bound_events {
            let granted = staged
                .get(hold.event.as_str().as_bytes())
                .and_then(|s| s.image.as_ref())
                .is_some_and(|img| hold.seq > 0 && hold.seq < img.next_hold_seq);
            if !granted {
                return Err(corrupt(format!(
                    "idempotency key {key:?} bound to hold {hold}, never granted"
                )));
            }
        }
        for Later {
            event,
            kind,
            suffix,
            value: v,
        } in later
        {
            let img = staged
                .get_mut(&event)
                .and_then(|s| s.image.as_mut())
                .ok_or_else(|| {
                    corrupt(format!(
                        "record for unknown event {}",
                        String::from_utf8_lossy(&event)
                    ))
                })?;
            let seq = || {
                suffix
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("sequence key"))
            };
            let text = || {
                String::from_utf8(suffix.clone()).map_err(|_| corrupt("record key is not UTF-8"))
            };
            // Cold records stay on disk (see the module doc); they are still checked.
            match kind {
                KIND_HOLD => {
                    let hold: Hold = decode("hold", &v)?;
                    if !is_cold_hold(&hold) {
                        img.holds.push((seq()?, hold));
                    }
                }
                KIND_ORDER => img.orders.push((seq()?, decode("order", &v)?)),
                KIND_REQUEST => {
                    text()?;
                    let _: RequestRecord = decode("request record", &v)?;
                }
                _ => {
                    let rec: CheckoutRecord = decode("checkout record", &v)?;
                    if !is_cold_checkout(&rec) {
                        img.checkouts.push((text()?, rec));
                    }
                }
            }
        }
        for (_, s) in staged {
            let mut img = s.image.expect("every staged event got an image");
            derive_from_holds(&mut img)?;
            let id = img.def.event_id.clone();
            let event = restore_event(img).map_err(|e| corrupt(format!("event {id}: {e}")))?;
            machine.events.insert(id, event);
        }
        Ok(machine)
    }
}
