//! One event's seats, holds and orders, and the commands that change them.
//!
//! Every seat change goes through [`EventState::set_seat`], which is where the core
//! invariants are asserted: the only legal moves are available → held(h),
//! held(h) → available and held(h) → sold(o); each bumps the seat's version and moves
//! the section counters, so `available + held + sold == capacity` holds by construction.
//! A seat therefore belongs to at most one live hold and at most one order: a hold can
//! only take seats that are available, and a sold seat never changes again.
//!
//! Expiry is lazy but exact: before any command touches an event, [`EventState::sweep`]
//! expires every hold (and aborts every checkout) whose deadline is at or before the
//! entry's timestamp. So after applying an entry stamped T, no live hold has a
//! deadline ≤ T, and "a seat held by an expired hold counts as available" needs no
//! special case anywhere else.
//!
//! Retries are answered from records: `(user, client_reservation_id)` remembers the
//! first decision of a hold; an idempotency key remembers how its checkout went.
//! Malformed input is refused without a record (the same input is refused again).
//! A record that from then on only answers retries (a refusal, an ended hold's grant)
//! is listed in [`EventState::retired`] the moment it becomes so, and the machine
//! queues it to be forgotten after `DECISION_RETENTION_MS` (see `machine::retention`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use serde::{Deserialize, Serialize};

use super::retention::Retained;
use crate::command::{
    Actor, CreateEvent, HoldRequest, HoldState, HoldView, OrderView, Outcome, Refusal, Reply,
    SaleState,
};
use crate::ids::{validate_token, HoldId, OrderId, HOLD_KIND, ORDER_KIND};
use crate::layout::SeatPlan;
use crate::limits::TEXT_BYTES_MAX;

/// Where a seat is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SeatStatus {
    Available,
    Held(u64),
    Sold(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seat {
    pub status: SeatStatus,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hold {
    pub user: Arc<str>,
    pub client_reservation_id: Arc<str>,
    /// Seat indices, in the order the client asked for them.
    pub seats: Vec<u32>,
    /// The version each seat got when the hold was granted.
    pub granted_versions: Vec<u64>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub state: HoldState,
    /// Who last released it or started paying for it (the audit trail).
    pub by: Option<Actor>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Order {
    pub hold: u64,
    pub payment_ref: String,
    pub created_at_ms: u64,
}

/// The first decision on a `(user, client_reservation_id)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RequestRecord {
    Granted(u64),
    Refused(Refusal),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CheckoutResult {
    InProgress,
    Completed(u64),
    Refused(Refusal),
}

/// What an idempotency key did, and to which hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CheckoutRecord {
    pub hold: u64,
    pub result: CheckoutResult,
}

/// The key of a hold request's record: user and client reservation id, which are
/// printable ASCII, joined by a newline so that no two pairs share a key.
pub(crate) fn request_key(buf: &mut String, user: &str, client_reservation_id: &str) {
    buf.clear();
    buf.push_str(user);
    buf.push('\n');
    buf.push_str(client_reservation_id);
}

/// What changed since the storage last took the changes (see `machine::persist`).
/// Entries may repeat; the storage writes each record's current value once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dirty {
    /// The event's own record: definition, sale state, sequence counters.
    pub meta: bool,
    pub seats: Vec<u32>,
    pub holds: Vec<u64>,
    pub orders: Vec<u64>,
    pub requests: Vec<Arc<str>>,
    pub checkouts: Vec<String>,
    /// Request and checkout records purged (see `machine::retention`): their records
    /// must leave the disk too, unless decided anew meanwhile. Until storage takes the
    /// changes, the disk may still hold them, so nothing may read them back from there
    /// (`cold_keys` skips them).
    pub purged_requests: BTreeSet<Arc<str>>,
    pub purged_checkouts: BTreeSet<String>,
}

/// Counters per section, indexed like `SeatPlan::section_capacity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub available: u32,
    pub held: u32,
    pub sold: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct EventState {
    pub def: CreateEvent,
    pub sale: SaleState,
    /// Who last changed the sale (the audit trail).
    pub sale_by: Option<Actor>,
    pub created_at_ms: u64,
    pub plan: SeatPlan,
    pub seats: Vec<Seat>,
    pub counts: Vec<Counts>,
    pub holds: HoldTable,
    pub orders: BTreeMap<u64, Order>,
    pub next_hold_seq: u64,
    pub next_order_seq: u64,
    /// Seats in each user's live holds plus seats in their orders (derived).
    pub seats_owned: FxHashMap<Arc<str>, u32>,
    /// First decision per `request_key(user, client_reservation_id)`.
    pub requests: FxHashMap<Arc<str>, RequestRecord>,
    pub checkouts: FxHashMap<String, CheckoutRecord>,
    /// `(deadline_ms, hold)` for every live hold: `expires_at_ms` while active, the
    /// payment deadline while checking out (derived).
    pub deadlines: BTreeSet<(u64, u64)>,
    /// Reused buffer for request keys, so a hold allocates no key to look one up.
    scratch: String,
    /// Changes not yet handed to storage.
    pub dirty: Dirty,
    /// Created since storage last took the changes: its definition must be written.
    pub dirty_created: bool,
    /// Records in memory that may be cold: changed or read back since the last
    /// eviction. Eviction looks at these only, so it costs what the entries touched.
    pub touched: Touched,
    /// Records that became retention-only during the command being applied, in the
    /// order they did; the machine moves them to its retention queue after each
    /// command, so this is empty between commands.
    pub retired: Vec<Retained>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Touched {
    pub holds: Vec<u64>,
    pub requests: Vec<Arc<str>>,
    pub checkouts: Vec<String>,
}

/// Moves one seat, bumping its version and the section counters. The only place a
/// seat's status changes.
fn set_seat(
    seats: &mut [Seat],
    counts: &mut [Counts],
    plan: &SeatPlan,
    dirty: &mut Dirty,
    idx: u32,
    to: SeatStatus,
) {
    dirty.seats.push(idx);
    let seat = &mut seats[idx as usize];
    let section = plan.rows[plan.seats[idx as usize].1 as usize].0 as usize;
    let c = &mut counts[section];
    match (seat.status, to) {
        (SeatStatus::Available, SeatStatus::Held(_)) => {
            c.available -= 1;
            c.held += 1;
        }
        (SeatStatus::Held(_), SeatStatus::Available) => {
            c.held -= 1;
            c.available += 1;
        }
        (SeatStatus::Held(h), SeatStatus::Sold(_)) => {
            let _ = h;
            c.held -= 1;
            c.sold += 1;
        }
        (from, to) => panic!("illegal seat move {from:?} -> {to:?} for seat {idx}"),
    }
    seat.status = to;
    seat.version += 1;
}

impl EventState {
    pub fn new(def: CreateEvent, plan: SeatPlan, created_at_ms: u64) -> Self {
        let seats = vec![
            Seat {
                status: SeatStatus::Available,
                version: 0
            };
            plan.seats.len()
        ];
        let counts = plan
            .section_capacity
            .iter()
            .map(|&cap| Counts {
                available: cap,
                held: 0,
                sold: 0,
            })
            .collect();
        Self {
            def,
            sale: SaleState::OnSale,
            sale_by: None,
            created_at_ms,
            plan,
            seats,
            counts,
            holds: HoldTable::default(),
            orders: BTreeMap::new(),
            next_hold_seq: 1,
            next_order_seq: 1,
            seats_owned: FxHashMap::default(),
            requests: FxHashMap::default(),
            checkouts: FxHashMap::default(),
            deadlines: BTreeSet::new(),
            scratch: String::new(),
            dirty: Dirty {
                meta: true,
                ..Dirty::default()
            },
            dirty_created: true,
            touched: Touched::default(),
            retired: Vec::new(),
        }
    }

    pub fn hold_id(&self, seq: u64) -> HoldId {
        HoldId {
            event: self.def.event_id.clone(),
            seq,
            tag: self.def.id_key.tag(HOLD_KIND, seq),
        }
    }

    pub fn order_id(&self, seq: u64) -> OrderId {
        OrderId {
            event: self.def.event_id.clone(),
            seq,
            tag: self.def.id_key.tag(ORDER_KIND, seq),
        }
    }

    /// Refuses, as not found, a hold id whose tag this event did not hand out.
    pub fn check_hold_id(&self, id: &HoldId) -> Result<(), Refusal> {
        if id.tag == self.def.id_key.tag(HOLD_KIND, id.seq) {
            Ok(())
        } else {
            Err(Refusal::NotFound(format!("hold {id}")))
        }
    }

    /// Refuses, as not found, an order id whose tag this event did not hand out.
    pub fn check_order_id(&self, id: &OrderId) -> Result<(), Refusal> {
        if id.tag == self.def.id_key.tag(ORDER_KIND, id.seq) {
            Ok(())
        } else {
            Err(Refusal::NotFound(format!("order {id}")))
        }
    }

    pub fn seat_id(&self, idx: u32) -> &Arc<str> {
        &self.plan.seats[idx as usize].0
    }

    pub fn hold_view(&self, seq: u64, hold: &Hold) -> HoldView {
        HoldView {
            hold_id: self.hold_id(seq),
            user: hold.user.clone(),
            client_reservation_id: hold.client_reservation_id.clone(),
            seats: hold
                .seats
                .iter()
                .zip(&hold.granted_versions)
                .map(|(&s, &v)| (self.seat_id(s).clone(), v))
                .collect(),
            created_at_ms: hold.created_at_ms,
            expires_at_ms: hold.expires_at_ms,
            state: hold.state.clone(),
            by: hold.by.clone(),
        }
    }

    pub fn order_view(&self, seq: u64) -> Option<OrderView> {
        let order = self.orders.get(&seq)?;
        let hold = self.holds.get(&order.hold)?;
        Some(OrderView {
            order_id: self.order_id(seq),
            hold_id: self.hold_id(order.hold),
            user: hold.user.clone(),
            seats: hold
                .seats
                .iter()
                .map(|&s| self.seat_id(s).clone())
                .collect(),
            payment_ref: order.payment_ref.clone(),
            created_at_ms: order.created_at_ms,
            by: hold.by.clone(),
        })
    }

    fn set_hold_state(&mut self, seq: u64, state: HoldState) {
        self.dirty.holds.push(seq);
        self.holds.get_mut(&seq).expect("hold exists").state = state;
    }

    fn set_checkout(&mut self, key: &str, hold: u64, result: CheckoutResult) {
        self.dirty.checkouts.push(key.to_string());
        self.retire_checkout_if_refused(key, &result);
        self.checkouts
            .insert(key.to_string(), CheckoutRecord { hold, result });
    }

    fn set_checkout_result(&mut self, key: &str, result: CheckoutResult) {
        self.dirty.checkouts.push(key.to_string());
        self.retire_checkout_if_refused(key, &result);
        let rec = self.checkouts.get_mut(key).expect("checkout record exists");
        debug_assert_eq!(
            rec.result,
            CheckoutResult::InProgress,
            "only a checkout in progress ends"
        );
        rec.result = result;
    }

    /// A refused checkout is final (`replay_checkout` answers every later use of its
    /// key), so from now on its record only answers retries.
    fn retire_checkout_if_refused(&mut self, key: &str, result: &CheckoutResult) {
        if let CheckoutResult::Refused(_) = result {
            self.retired.push(Retained::Checkout(key.to_string()));
        }
    }

    /// Gives a live hold's seats back and moves it to `end` (released or expired).
    fn end_live_hold(&mut self, seq: u64, end: HoldState) {
        assert!(matches!(end, HoldState::Released | HoldState::Expired));
        self.dirty.holds.push(seq);
        let hold = self.holds.get_mut(&seq).expect("live hold exists");
        assert!(hold.state.is_live(), "ending a hold that is not live");
        for &s in &hold.seats {
            assert_eq!(self.seats[s as usize].status, SeatStatus::Held(seq));
            set_seat(
                &mut self.seats,
                &mut self.counts,
                &self.plan,
                &mut self.dirty,
                s,
                SeatStatus::Available,
            );
        }
        let owned = self
            .seats_owned
            .get_mut(&*hold.user)
            .expect("holder has a seat count");
        *owned -= hold.seats.len() as u32;
        hold.state = end;
        // The request's record can no longer be derived from a hot hold: write it.
        request_key(&mut self.scratch, &hold.user, &hold.client_reservation_id);
        let (key, rec) = self
            .requests
            .get_key_value(self.scratch.as_str())
            .expect("a live hold's request is in memory");
        assert_eq!(*rec, RequestRecord::Granted(seq), "hold {seq}'s request");
        self.dirty.requests.push(key.clone());
        // The hold can never be live again, so its grant now only answers retries.
        self.retired.push(Retained::Request(key.to_string()));
    }

    /// Expires holds and aborts checkouts whose deadline is ≤ `now_ms`.
    /// Returns `(holds expired, checkouts aborted)`.
    pub fn sweep(&mut self, now_ms: u64) -> (u32, u32) {
        let (mut expired, mut aborted) = (0, 0);
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.pop_first();
            let hold = &self.holds[&seq];
            match &hold.state {
                HoldState::Active => {
                    self.end_live_hold(seq, HoldState::Expired);
                    expired += 1;
                }
                HoldState::CheckingOut {
                    idempotency_key, ..
                } => {
                    aborted += 1;
                    let key = idempotency_key.clone();
                    let refusal = if hold.expires_at_ms <= now_ms {
                        self.end_live_hold(seq, HoldState::Expired);
                        expired += 1;
                        Refusal::Expired
                    } else {
                        let expires_at_ms = hold.expires_at_ms;
                        self.set_hold_state(seq, HoldState::Active);
                        self.deadlines.insert((expires_at_ms, seq));
                        Refusal::WrongState("checkout timed out: payment deadline passed".into())
                    };
                    self.set_checkout_result(&key, CheckoutResult::Refused(refusal));
                }
                other => panic!("hold {seq} in deadline index while {}", other.name()),
            }
        }
        (expired, aborted)
    }

    pub fn hold(&mut self, req: &HoldRequest, now_ms: u64) -> Outcome {
        validate_token("user id", &req.user).map_err(Refusal::Invalid)?;
        validate_token("client reservation id", &req.client_reservation_id)
            .map_err(Refusal::Invalid)?;
        request_key(&mut self.scratch, &req.user, &req.client_reservation_id);
        if let Some(rec) = self.requests.get(self.scratch.as_str()) {
            return match rec {
                RequestRecord::Granted(seq) => {
                    let mut view = self.hold_view(*seq, &self.holds[seq]);
                    view.state = HoldState::Active; // the decision as first given
                    Ok(Reply::Held(view))
                }
                RequestRecord::Refused(r) => Err(r.clone()),
            };
        }
        let limits = &self.def.limits;
        let n = req.seats.len();
        if n == 0 {
            return Err(Refusal::Invalid("a hold needs at least one seat".into()));
        }
        if n > limits.seats_per_hold_max as usize {
            return Err(Refusal::Invalid(format!(
                "a hold may have at most {} seats, asked for {n}",
                limits.seats_per_hold_max
            )));
        }
        let ttl_ms = req.ttl_ms.unwrap_or(limits.hold_ttl_ms_default);
        if !(limits.hold_ttl_ms_min..=limits.hold_ttl_ms_max).contains(&ttl_ms) {
            return Err(Refusal::Invalid(format!(
                "hold TTL must be {}..={} ms, asked for {ttl_ms}",
                limits.hold_ttl_ms_min, limits.hold_ttl_ms_max
            )));
        }
        if let Some(v) = &req.expected_versions {
            if v.len() != n {
                return Err(Refusal::Invalid(format!(
                    "{} expected versions given for {n} seats",
                    v.len()
                )));
            }
        }
        let mut idxs = Vec::with_capacity(n);
        let mut unknown = Vec::new();
        for id in &req.seats {
            match self.plan.seat_index(id) {
                Some(i) if idxs.contains(&i) => {
                    return Err(Refusal::Invalid(format!("seat {id} is listed twice")))
                }
                Some(i) => idxs.push(i),
                None => unknown.push(id.as_str()),
            }
        }
        if !unknown.is_empty() {
            return Err(Refusal::Invalid(format!(
                "unknown seats: {}",
                unknown.join(",")
            )));
        }

        // From here on the decision depends on state, so it is remembered. A grant's
        // record is derived from its hold while the hold is live or committed, so it
        // is written only when the hold ends (`end_live_hold`); a refusal's now.
        let decision = self.decide_hold(req, idxs, ttl_ms, now_ms);
        let key: Arc<str> = self.scratch.as_str().into();
        let record = match &decision {
            Ok(Reply::Held(view)) => RequestRecord::Granted(view.hold_id.seq),
            Ok(other) => unreachable!("hold decided {other:?}"),
            Err(r) => {
                self.dirty.requests.push(key.clone());
                self.retired.push(Retained::Request(key.to_string()));
                RequestRecord::Refused(r.clone())
            }
        };
        self.requests.insert(key, record);
        decision
    }

    fn decide_hold(
        &mut self,
        req: &HoldRequest,
        idxs: Vec<u32>,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Outcome {
        match self.sale {
            SaleState::OnSale => {}
            SaleState::Stopped => {
                return Err(Refusal::WrongState(format!(
                    "sale of {} is stopped",
                    self.def.event_id
                )))
            }
            SaleState::Cancelled => {
                return Err(Refusal::WrongState(format!(
                    "{} is cancelled",
                    self.def.event_id
                )))
            }
        }
        let owned = self
            .seats_owned
            .get(req.user.as_str())
            .copied()
            .unwrap_or(0);
        let max = self.def.limits.seats_per_user_max;
        if owned as usize + idxs.len() > max as usize {
            return Err(Refusal::Invalid(format!(
                "user {} would have {} seats in this event, the limit is {max}",
                req.user,
                owned as usize + idxs.len()
            )));
        }
        let unavailable: Vec<String> = idxs
            .iter()
            .enumerate()
            .filter(|&(k, &i)| {
                let seat = &self.seats[i as usize];
                let stale = req
                    .expected_versions
                    .as_ref()
                    .is_some_and(|v| v[k] != seat.version);
                seat.status != SeatStatus::Available || stale
            })
            .map(|(_, &i)| self.seat_id(i).to_string())
            .collect();
        if !unavailable.is_empty() {
            return Err(Refusal::Conflict { seats: unavailable });
        }

        let seq = self.next_hold_seq;
        self.next_hold_seq += 1;
        self.dirty.meta = true;
        self.dirty.holds.push(seq);
        let n_seats = idxs.len() as u32;
        let mut granted_versions = Vec::with_capacity(idxs.len());
        for &i in &idxs {
            set_seat(
                &mut self.seats,
                &mut self.counts,
                &self.plan,
                &mut self.dirty,
                i,
                SeatStatus::Held(seq),
            );
            granted_versions.push(self.seats[i as usize].version);
        }
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        // One shared copy of the user id for the hold and the per-user count.
        let user: Arc<str> = match self.seats_owned.get_key_value(req.user.as_str()) {
            Some((u, _)) => u.clone(),
            None => req.user.as_str().into(),
        };
        let hold = Hold {
            user: user.clone(),
            client_reservation_id: req.client_reservation_id.as_str().into(),
            seats: idxs,
            granted_versions,
            created_at_ms: now_ms,
            expires_at_ms,
            state: HoldState::Active,
            by: None,
        };
        let view = self.hold_view(seq, &hold);
        *self.seats_owned.entry(user).or_default() += n_seats;
        self.deadlines.insert((expires_at_ms, seq));
        assert!(!self.holds.contains(&seq), "hold sequence {seq} reused");
        self.holds.insert(seq, hold);
        Ok(Reply::Held(view))
    }

    fn existing_hold(&self, seq: u64) -> Result<&Hold, Refusal> {
        self.holds
            .get(&seq)
            .ok_or_else(|| Refusal::NotFound(format!("hold {}", self.hold_id(seq))))
    }

    /// Answers a repeated idempotency key from its record; `None` for a new key.
    fn replay_checkout(&self, seq: u64, key: &str) -> Option<Outcome> {
        let rec = self.checkouts.get(key)?;
        if rec.hold != seq {
            return Some(Err(Refusal::KeyReused));
        }
        Some(match &rec.result {
            CheckoutResult::Completed(o) => Ok(Reply::Completed(
                self.order_view(*o)
                    .expect("completed checkout has its order"),
            )),
            CheckoutResult::Refused(r) => Err(r.clone()),
            CheckoutResult::InProgress => match &self.holds[&seq].state {
                HoldState::CheckingOut {
                    payment_deadline_ms,
                    ..
                } => Ok(Reply::CheckoutStarted {
                    hold_id: self.hold_id(seq),
                    payment_deadline_ms: *payment_deadline_ms,
                }),
                other => panic!("checkout in progress on a hold that is {}", other.name()),
            },
        })
    }

    pub fn begin_checkout(
        &mut self,
        seq: u64,
        key: &str,
        by: &Option<Actor>,
        now_ms: u64,
    ) -> Outcome {
        validate_token("idempotency key", key).map_err(Refusal::Invalid)?;
        if let Some(answer) = self.replay_checkout(seq, key) {
            return answer;
        }
        let hold = self.existing_hold(seq)?;
        let refusal = match &hold.state {
            HoldState::Active => {
                let payment_deadline_ms = now_ms.saturating_add(self.def.limits.checkout_ttl_ms);
                let expires_at_ms = hold.expires_at_ms;
                assert!(
                    self.deadlines.remove(&(expires_at_ms, seq)),
                    "active hold has a deadline"
                );
                self.deadlines.insert((payment_deadline_ms, seq));
                self.set_hold_state(
                    seq,
                    HoldState::CheckingOut {
                        idempotency_key: key.to_string(),
                        payment_deadline_ms,
                    },
                );
                self.set_checkout(key, seq, CheckoutResult::InProgress);
                self.holds
                    .get_mut(&seq)
                    .expect("hold exists")
                    .by
                    .clone_from(by);
                return Ok(Reply::CheckoutStarted {
                    hold_id: self.hold_id(seq),
                    payment_deadline_ms,
                });
            }
            // Transient: the other checkout may still abort. Not recorded.
            HoldState::CheckingOut { .. } => {
                return Err(Refusal::WrongState(
                    "a checkout of this hold is already in progress under another idempotency key"
                        .into(),
                ))
            }
            HoldState::Committed { order } => Refusal::WrongState(format!(
                "hold already committed as order {}",
                self.order_id(*order)
            )),
            HoldState::Released => Refusal::WrongState("hold was released".into()),
            HoldState::Expired => Refusal::Expired,
        };
        self.set_checkout(key, seq, CheckoutResult::Refused(refusal.clone()));
        Err(refusal)
    }

    /// Validates a key and finds the checkout it runs: `None` when it is in progress,
    /// otherwise the answer to the command.
    fn checkout_in_progress(&self, seq: u64, key: &str) -> Option<Outcome> {
        if let Err(e) = validate_token("idempotency key", key) {
            return Some(Err(Refusal::Invalid(e)));
        }
        match self.replay_checkout(seq, key) {
            Some(Ok(Reply::CheckoutStarted { .. })) => None,
            Some(answer) => Some(answer),
            None => Some(self.existing_hold(seq).and_then(|_| {
                Err(Refusal::WrongState(format!(
                    "no checkout of hold {} under idempotency key {key:?}",
                    self.hold_id(seq)
                )))
            })),
        }
    }

    pub fn complete_checkout(
        &mut self,
        seq: u64,
        key: &str,
        payment_ref: &str,
        now_ms: u64,
    ) -> Outcome {
        validate_token("payment reference", payment_ref).map_err(Refusal::Invalid)?;
        if let Some(answer) = self.checkout_in_progress(seq, key) {
            return answer;
        }
        let order_seq = self.next_order_seq;
        self.next_order_seq += 1;
        self.dirty.meta = true;
        self.dirty.holds.push(seq);
        self.dirty.orders.push(order_seq);
        let hold = self.holds.get_mut(&seq).expect("hold exists");
        let HoldState::CheckingOut {
            payment_deadline_ms,
            ..
        } = hold.state
        else {
            panic!("completing a hold that is {}", hold.state.name());
        };
        assert!(self.deadlines.remove(&(payment_deadline_ms, seq)));
        for &s in &hold.seats {
            assert_eq!(self.seats[s as usize].status, SeatStatus::Held(seq));
            set_seat(
                &mut self.seats,
                &mut self.counts,
                &self.plan,
                &mut self.dirty,
                s,
                SeatStatus::Sold(order_seq),
            );
        }
        hold.state = HoldState::Committed { order: order_seq };
        let order = Order {
            hold: seq,
            payment_ref: payment_ref.to_string(),
            created_at_ms: now_ms,
        };
        assert!(
            self.orders.insert(order_seq, order).is_none(),
            "order sequence reused"
        );
        self.set_checkout_result(key, CheckoutResult::Completed(order_seq));
        Ok(Reply::Completed(
            self.order_view(order_seq).expect("order just created"),
        ))
    }

    pub fn abort_checkout(&mut self, seq: u64, key: &str, reason: &str, now_ms: u64) -> Outcome {
        if reason.len() > TEXT_BYTES_MAX {
            return Err(Refusal::Invalid(format!(
                "abort reason longer than {TEXT_BYTES_MAX} bytes"
            )));
        }
        match self.checkout_in_progress(seq, key) {
            None => {}
            // Aborting twice answers like the first abort did.
            Some(Err(Refusal::Declined(_) | Refusal::Expired | Refusal::WrongState(_)))
                if self.checkouts.get(key).is_some_and(|r| r.hold == seq) =>
            {
                let state = self.holds[&seq].state.clone();
                return Ok(Reply::CheckoutAborted {
                    hold_id: self.hold_id(seq),
                    state,
                });
            }
            Some(Ok(Reply::Completed(order))) => {
                return Err(Refusal::WrongState(format!(
                    "checkout already completed as order {}",
                    order.order_id
                )))
            }
            Some(answer) => return answer,
        }
        let hold = &self.holds[&seq];
        let HoldState::CheckingOut {
            payment_deadline_ms,
            ..
        } = hold.state
        else {
            panic!("aborting a hold that is {}", hold.state.name());
        };
        let expires_at_ms = hold.expires_at_ms;
        assert!(self.deadlines.remove(&(payment_deadline_ms, seq)));
        if expires_at_ms <= now_ms {
            self.end_live_hold(seq, HoldState::Expired);
        } else {
            self.set_hold_state(seq, HoldState::Active);
            self.deadlines.insert((expires_at_ms, seq));
        }
        let declined = CheckoutResult::Refused(Refusal::Declined(reason.to_string()));
        self.set_checkout_result(key, declined);
        let state = self.holds[&seq].state.clone();
        Ok(Reply::CheckoutAborted {
            hold_id: self.hold_id(seq),
            state,
        })
    }

    pub fn release(&mut self, seq: u64, user: &str, by: &Option<Actor>) -> Outcome {
        let hold = self.existing_hold(seq)?;
        if &*hold.user != user {
            return Err(Refusal::Invalid(format!(
                "hold {} does not belong to user {user:?}",
                self.hold_id(seq)
            )));
        }
        match hold.state {
            HoldState::Active => {
                assert!(self.deadlines.remove(&(hold.expires_at_ms, seq)));
                self.holds
                    .get_mut(&seq)
                    .expect("hold exists")
                    .by
                    .clone_from(by);
                self.end_live_hold(seq, HoldState::Released);
                Ok(Reply::Released {
                    hold_id: self.hold_id(seq),
                })
            }
            HoldState::Released => Ok(Reply::Released {
                hold_id: self.hold_id(seq),
            }),
            HoldState::Expired => Err(Refusal::Expired),
            HoldState::CheckingOut { .. } => Err(Refusal::WrongState(
                "a checkout of this hold is in progress".into(),
            )),
            HoldState::Committed { .. } => {
                Err(Refusal::WrongState("hold already committed".into()))
            }
        }
    }

    pub fn set_sale(&mut self, sale: SaleState, by: &Option<Actor>) -> Outcome {
        let reply = Ok(Reply::SaleSet {
            event_id: self.def.event_id.clone(),
            sale,
        });
        match (self.sale, sale) {
            (SaleState::Cancelled, SaleState::Cancelled) => return reply,
            (SaleState::Cancelled, _) => {
                return Err(Refusal::WrongState(format!(
                    "{} is cancelled",
                    self.def.event_id
                )))
            }
            _ => {}
        }
        self.sale = sale;
        self.sale_by.clone_from(by);
        self.dirty.meta = true;
        if sale == SaleState::Cancelled {
            // Give back every live hold, in deadline order (deterministic).
            let live: Vec<u64> = self.deadlines.iter().map(|&(_, seq)| seq).collect();
            self.deadlines.clear();
            for seq in live {
                if let HoldState::CheckingOut {
                    idempotency_key, ..
                } = &self.holds[&seq].state
                {
                    let key = idempotency_key.clone();
                    let refusal =
                        Refusal::WrongState(format!("{} is cancelled", self.def.event_id));
                    self.set_checkout_result(&key, CheckoutResult::Refused(refusal));
                }
                // Whoever cancelled the sale gave the seats back.
                self.holds
                    .get_mut(&seq)
                    .expect("hold exists")
                    .by
                    .clone_from(by);
                self.end_live_hold(seq, HoldState::Released);
            }
        }
        reply
    }
}

/// Holds by sequence number. A table rather than a tree: granting a hold is an insert
/// into a hash map, and nothing iterates holds in an order that matters (the encodings
/// sort). Released and expired holds may be evicted (see `persist`), so numbers can
/// have gaps.
///
/// Each hold is boxed so that the table's slots are 16 bytes, not 136 (a `Hold` and
/// its number): when the table grows it moves every slot at once, inside one apply,
/// on every replica at the same moment. Boxed, growing past 229,376 holds moves 3.7
/// MB into a fresh 8 MB table instead of 31 MB into 71 MB (a 4 s profile of the bench
/// that caught one such growth unboxed found it in 6–7% of each node's CPU).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HoldTable {
    holds: FxHashMap<u64, Box<Hold>>,
}

impl HoldTable {
    /// A table from `(seq, hold)` pairs; refuses a number given twice.
    pub fn from_pairs(pairs: Vec<(u64, Hold)>) -> Result<Self, String> {
        let n = pairs.len();
        let holds: FxHashMap<u64, Box<Hold>> =
            pairs.into_iter().map(|(s, h)| (s, Box::new(h))).collect();
        if holds.len() != n {
            return Err("a hold sequence number is stored twice".into());
        }
        Ok(Self { holds })
    }

    pub fn get(&self, seq: &u64) -> Option<&Hold> {
        self.holds.get(seq).map(|h| &**h)
    }

    pub fn get_mut(&mut self, seq: &u64) -> Option<&mut Hold> {
        self.holds.get_mut(seq).map(|h| &mut **h)
    }

    pub fn contains(&self, seq: &u64) -> bool {
        self.holds.contains_key(seq)
    }

    /// Adds a hold (a new one, or one read back from storage).
    pub fn insert(&mut self, seq: u64, hold: Hold) {
        self.holds.insert(seq, Box::new(hold));
    }

    /// In no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Hold)> {
        self.holds.iter().map(|(s, h)| (*s, &**h))
    }

    /// In sequence order.
    pub fn sorted(&self) -> Vec<(u64, &Hold)> {
        let mut v: Vec<_> = self.iter().collect();
        v.sort_unstable_by_key(|(s, _)| *s);
        v
    }

    pub fn remove(&mut self, seq: &u64) -> Option<Hold> {
        self.holds.remove(seq).map(|h| *h)
    }

    pub fn len(&self) -> usize {
        self.holds.len()
    }
}

impl std::ops::Index<&u64> for HoldTable {
    type Output = Hold;
    fn index(&self, seq: &u64) -> &Hold {
        self.get(seq).expect("hold exists")
    }
}
