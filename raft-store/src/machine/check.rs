//! The full invariant check: recomputes everything derivable and compares.
//!
//! `apply` asserts the local invariants of each change as it makes it; this walks the
//! whole state. Tests run it after every step, and decoding a snapshot runs it before
//! trusting the bytes, so it returns an error rather than panicking.
//!
//! The retention queue is checked against the records (`check_retention`): its shape
//! always, each entry in memory against the record it names when that is in memory
//! too, and, when the whole queue is in memory (a machine that never evicts), a one to
//! one match between the queue and the records that only answer retries.

use std::collections::{BTreeSet, HashMap};

use super::event::request_key;
use super::persist::{is_cold_checkout, is_cold_hold};
use super::retention::{Retained, QUEUE_POSITIONS_MAX};

use super::event::{CheckoutResult, Counts, EventState, RequestRecord, SeatStatus};
use super::SeatMachine;
use crate::command::{HoldState, SaleState};
use crate::ids::validate_token;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

impl SeatMachine {
    /// Checks every invariant of every event. `Err` names the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, event) in &self.events {
            ensure!(
                *id == event.def.event_id,
                "event stored under {id} is {}",
                event.def.event_id
            );
            event.check().map_err(|e| format!("event {id}: {e}"))?;
            ensure!(
                event.retired.is_empty(),
                "event {id} has records retired but not queued"
            );
        }
        self.check_retention()
    }

    /// The retention queue's invariants (see `machine::retention`).
    pub(crate) fn check_retention(&self) -> Result<(), String> {
        let r = &self.retention;
        let s = &r.state;
        ensure!(
            s.head <= s.tail && s.tail <= QUEUE_POSITIONS_MAX,
            "retention head {} and tail {} out of order or range",
            s.head,
            s.tail
        );
        ensure!(
            s.head < s.tail || s.head_decided_at_ms == 0,
            "an empty retention queue has a head time"
        );
        if let Some((&first, _)) = r.window.first_key_value() {
            ensure!(
                first >= s.head,
                "retention entry {first} is before the head {}",
                s.head
            );
        }
        if let Some((&last, _)) = r.window.last_key_value() {
            ensure!(
                last < s.tail,
                "retention entry {last} is past the tail {}",
                s.tail
            );
        }
        if let Some(e) = r.window.get(&s.head) {
            ensure!(
                e.decided_at_ms == s.head_decided_at_ms,
                "retention head decided at {} ms, the queue says {}",
                e.decided_at_ms,
                s.head_decided_at_ms
            );
        }
        let mut previous: Option<(u64, u64)> = None;
        for (&pos, e) in &r.window {
            ensure!(
                e.decided_at_ms >= s.head_decided_at_ms && e.decided_at_ms <= self.clock_ms,
                "retention entry {pos} decided at {} ms, outside {}..={} ms",
                e.decided_at_ms,
                s.head_decided_at_ms,
                self.clock_ms
            );
            if let Some((p, t)) = previous {
                ensure!(
                    e.decided_at_ms >= t,
                    "retention entry {pos} is older than entry {p}"
                );
            }
            previous = Some((pos, e.decided_at_ms));
            let event = self.events.get(&e.event).ok_or(format!(
                "retention entry {pos} names unknown event {}",
                e.event
            ))?;
            match &e.target {
                Retained::Request(key) => {
                    let rec = event.requests.get(key.as_str());
                    ensure!(
                        rec.is_none_or(|rec| !event.is_derived_request(rec)),
                        "retention entry {pos} names request {key:?} of a live or committed hold"
                    );
                }
                Retained::Checkout(key) => {
                    let rec = event.checkouts.get(key);
                    ensure!(
                        rec.is_none_or(is_cold_checkout),
                        "retention entry {pos} names checkout {key:?} that is not refused"
                    );
                }
            }
        }
        // With the whole queue in memory, every record in memory that only answers
        // retries is named by it, once. (Not the converse: a store keeps the records
        // it names on disk.)
        if r.window.len() as u64 == s.tail - s.head {
            let mut named = BTreeSet::new();
            for (pos, e) in &r.window {
                ensure!(
                    named.insert((&e.event, &e.target)),
                    "retention entry {pos} names a record queued before"
                );
            }
            for (id, event) in &self.events {
                for (key, rec) in &event.requests {
                    if event.is_derived_request(rec) {
                        continue;
                    }
                    let target = Retained::Request(key.to_string());
                    ensure!(
                        named.contains(&(id, &target)),
                        "event {id}: request {key:?} only answers retries but is not queued"
                    );
                }
                for (key, rec) in &event.checkouts {
                    if !is_cold_checkout(rec) {
                        continue;
                    }
                    let target = Retained::Checkout(key.clone());
                    ensure!(
                        named.contains(&(id, &target)),
                        "event {id}: checkout {key:?} is refused but not queued"
                    );
                }
            }
        }
        self.check_keys()
    }

    /// Each key binding names a hold its event granted, and agrees with the event's own
    /// record of the key when that is in memory.
    pub(crate) fn check_keys(&self) -> Result<(), String> {
        for (key, hold) in &self.keys {
            validate_token("idempotency key", key)?;
            let event = self
                .events
                .get(&hold.event)
                .ok_or(format!("key {key} bound to a hold of unknown event"))?;
            ensure!(
                hold.seq > 0 && hold.seq < event.next_hold_seq,
                "key {key} bound to {hold}, never granted"
            );
            if let Some(rec) = event.checkouts.get(key) {
                ensure!(
                    rec.hold == hold.seq,
                    "key {key} bound to {hold} but its checkout is of hold {}",
                    rec.hold
                );
            }
        }
        Ok(())
    }
}

/// Everything in an event's state that is derivable from its seats and holds.
pub(crate) struct Derived<'a> {
    pub counts: Vec<Counts>,
    /// Seats owned (live holds plus orders) per user.
    pub owned: HashMap<&'a str, u32>,
    pub deadlines: BTreeSet<(u64, u64)>,
}

impl EventState {
    /// Recomputes section counts, per-user seat counts and the deadline index from
    /// seats and holds.
    pub(crate) fn derive(&self) -> Derived<'_> {
        let mut counts = vec![Counts::default(); self.plan.section_capacity.len()];
        for (i, seat) in self.seats.iter().enumerate() {
            let section = self.plan.rows[self.plan.seats[i].1 as usize].0 as usize;
            match seat.status {
                SeatStatus::Available => counts[section].available += 1,
                SeatStatus::Held(_) => counts[section].held += 1,
                SeatStatus::Sold(_) => counts[section].sold += 1,
            }
        }
        let mut owned: HashMap<&str, u32> = HashMap::new();
        let mut deadlines = BTreeSet::new();
        for (seq, hold) in self.holds.iter() {
            match &hold.state {
                HoldState::Active => {
                    deadlines.insert((hold.expires_at_ms, seq));
                }
                HoldState::CheckingOut {
                    payment_deadline_ms,
                    ..
                } => {
                    deadlines.insert((*payment_deadline_ms, seq));
                }
                _ => {}
            }
            if hold.state.is_live() || matches!(hold.state, HoldState::Committed { .. }) {
                let n = owned.entry(&*hold.user).or_default();
                *n = n.saturating_add(hold.seats.len() as u32);
            }
        }
        Derived {
            counts,
            owned,
            deadlines,
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        ensure!(
            self.seats.len() == self.plan.seats.len(),
            "seat count differs from the layout"
        );
        for (i, (id, _)) in self.plan.seats.iter().enumerate() {
            ensure!(
                self.plan.seat_index(id) == Some(i as u32),
                "seat {id} does not resolve to its index {i}"
            );
        }
        let Derived {
            counts,
            owned,
            deadlines,
        } = self.derive();
        ensure!(
            counts == self.counts,
            "section counters {:?} != recount {counts:?}",
            self.counts
        );
        for (c, &cap) in counts.iter().zip(&self.plan.section_capacity) {
            ensure!(
                c.available + c.held + c.sold == cap,
                "section counts do not add up to {cap}"
            );
        }
        ensure!(
            deadlines == self.deadlines,
            "deadline index out of step with holds"
        );
        for (user, &n) in &self.seats_owned {
            let want = owned.get(&**user).copied().unwrap_or(0);
            ensure!(n == want, "user {user} owns {want} seats, counted {n}");
        }
        ensure!(
            owned
                .iter()
                .all(|(u, &n)| n == 0 || self.seats_owned.contains_key(*u)),
            "a holder has no seat count"
        );

        for (i, seat) in self.seats.iter().enumerate() {
            let i = i as u32;
            match seat.status {
                SeatStatus::Available => {}
                SeatStatus::Held(h) => {
                    let hold = self
                        .holds
                        .get(&h)
                        .ok_or(format!("seat {i} held by missing hold {h}"))?;
                    ensure!(
                        hold.state.is_live(),
                        "seat {i} held by {} hold {h}",
                        hold.state.name()
                    );
                    ensure!(
                        hold.seats.contains(&i),
                        "seat {i} held by hold {h} that lacks it"
                    );
                }
                SeatStatus::Sold(o) => {
                    let order = self
                        .orders
                        .get(&o)
                        .ok_or(format!("seat {i} sold by missing order {o}"))?;
                    let hold = self
                        .holds
                        .get(&order.hold)
                        .ok_or(format!("order {o} lacks its hold"))?;
                    ensure!(
                        hold.seats.contains(&i),
                        "seat {i} sold by order {o} that lacks it"
                    );
                }
            }
        }
        for (seq, hold) in self.holds.iter() {
            ensure!(
                seq < self.next_hold_seq,
                "hold {seq} at or past the next sequence"
            );
            ensure!(!hold.seats.is_empty(), "hold {seq} has no seats");
            ensure!(
                hold.seats.len() == hold.granted_versions.len(),
                "hold {seq} versions mismatch"
            );
            let distinct: BTreeSet<_> = hold.seats.iter().collect();
            ensure!(
                distinct.len() == hold.seats.len(),
                "hold {seq} lists a seat twice"
            );
            ensure!(
                hold.seats.iter().all(|&s| (s as usize) < self.seats.len()),
                "hold {seq} has an unknown seat"
            );
            let want = match hold.state {
                HoldState::Active | HoldState::CheckingOut { .. } => Some(SeatStatus::Held(seq)),
                HoldState::Committed { order } => Some(SeatStatus::Sold(order)),
                HoldState::Released | HoldState::Expired => None,
            };
            if let Some(want) = want {
                for &s in &hold.seats {
                    ensure!(
                        self.seats[s as usize].status == want,
                        "hold {seq} lost seat {s}"
                    );
                }
            }
            if let HoldState::Committed { order } = hold.state {
                let o = self
                    .orders
                    .get(&order)
                    .ok_or(format!("hold {seq} committed to missing order"))?;
                ensure!(
                    o.hold == seq,
                    "order {order} points at hold {} not {seq}",
                    o.hold
                );
            }
            if let HoldState::CheckingOut {
                idempotency_key, ..
            } = &hold.state
            {
                let rec = self.checkouts.get(idempotency_key);
                ensure!(
                    rec.is_some_and(|r| r.hold == seq && r.result == CheckoutResult::InProgress),
                    "hold {seq} checking out without an in-progress record"
                );
            }
            let mut key = String::new();
            request_key(&mut key, &hold.user, &hold.client_reservation_id);
            // A live or committed hold's grant is kept in memory (it has no record
            // while the hold is hot); an ended hold's may be on disk only, or forgotten
            // after the retention and the request decided anew since.
            let rec = self.requests.get(key.as_str());
            ensure!(
                is_cold_hold(hold) || rec == Some(&RequestRecord::Granted(seq)),
                "hold {seq}'s request record says {rec:?}"
            );
        }
        for (&seq, order) in &self.orders {
            ensure!(
                seq < self.next_order_seq,
                "order {seq} at or past the next sequence"
            );
            let hold = self
                .holds
                .get(&order.hold)
                .ok_or(format!("order {seq} lacks its hold"))?;
            ensure!(
                hold.state == HoldState::Committed { order: seq },
                "order {seq}'s hold is not committed to it"
            );
        }
        for (key, rec) in &self.checkouts {
            ensure!(
                rec.hold < self.next_hold_seq,
                "key {key} names a hold never granted"
            );
            let Some(hold) = self.holds.get(&rec.hold) else {
                // Only a refused checkout's hold may have been evicted.
                ensure!(
                    matches!(rec.result, CheckoutResult::Refused(_)),
                    "key {key} names a missing hold"
                );
                continue;
            };
            match rec.result {
                CheckoutResult::InProgress => ensure!(
                    matches!(&hold.state, HoldState::CheckingOut { idempotency_key, .. } if idempotency_key == key),
                    "key {key} in progress but its hold is {}",
                    hold.state.name()
                ),
                CheckoutResult::Completed(o) => ensure!(
                    hold.state == HoldState::Committed { order: o },
                    "key {key} completed order {o} that its hold does not have"
                ),
                CheckoutResult::Refused(_) => {}
            }
        }
        let mut want_key = String::new();
        for (key, r) in &self.requests {
            if let RequestRecord::Granted(seq) = r {
                ensure!(
                    *seq < self.next_hold_seq,
                    "request {key:?} names a hold never granted"
                );
                // The hold may be cold (released or expired, evicted).
                let Some(hold) = self.holds.get(seq) else {
                    continue;
                };
                request_key(&mut want_key, &hold.user, &hold.client_reservation_id);
                ensure!(
                    **key == *want_key,
                    "request record {key:?} names another's hold"
                );
            }
        }
        if self.sale == SaleState::Cancelled {
            ensure!(
                self.deadlines.is_empty(),
                "cancelled event still has live holds"
            );
        }
        Ok(())
    }
}
