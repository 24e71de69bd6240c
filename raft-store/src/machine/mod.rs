//! The seat state machine: a pure function from (state, log entry) to (state, outcomes).
//!
//! [`SeatMachine::apply`] is the only way state changes. It uses no wall clock, no
//! randomness and no unordered iteration: time comes from the entry's timestamp
//! (clamped so it never moves backwards), ids come from per-event counters, and every
//! iteration that can affect state or output walks a `BTreeMap`/`BTreeSet` or a `Vec`.
//! Hash maps are used only for point lookups. So every replica that applies the same
//! entries from the same state reaches byte-identical state (see `codec` and
//! [`SeatMachine::digest`]).
//!
//! Events are independent: a command touches one event (or, for `Expire`, each event in
//! id order). Reads never change state. The one thing shared across a shard's events is
//! the idempotency keys: a key names one checkout attempt of one hold, so the first
//! `BeginCheckout` under a key binds it to its hold for good ([`SeatMachine::keys`]),
//! and the key is refused with any other hold of any event in the shard
//! ([`Refusal::KeyReused`]). (Keys of another shard are not known here; the payment
//! gateway's own keys are scoped to the hold by the coordinator, so a key reused across
//! shards cannot reach another hold's charge either.)
//!
//! Each entry first forgets the decisions whose retention ran out (`retention`): at
//! most a bounded number, oldest first, chosen from replicated state only.

mod check;
pub(crate) mod event;
mod persist;
pub(crate) mod retention;

pub use persist::Record;
// Only the storage layer asks what a record key is.
#[cfg(feature = "storage")]
pub use persist::{is_request_key, is_retention_key};

use std::collections::BTreeMap;

use crate::command::{
    Actor, Batch, Command, CreateEvent, EventSummary, HoldView, OrderView, Outcome, Refusal, Reply,
    RowView, SeatMap, SeatMapPart, SeatStateName, SeatView, SectionCounts,
};
use crate::ids::{EventId, HoldId, OrderId};
use crate::limits::Limit;
pub(crate) use check::Derived;
use event::{EventState, SeatStatus};
use retention::{purge_budget_records, Retention};

/// The replicated state of one shard: every event in it.
#[derive(Clone, Debug, Default)]
pub struct SeatMachine {
    /// The log index of the last applied entry; `None` before any. (Raft logs may
    /// start at index 0, so 0 cannot mean "nothing".)
    pub(crate) applied_index: Option<u64>,
    /// The latest entry timestamp applied; entries stamped earlier are treated as now.
    pub(crate) clock_ms: u64,
    pub(crate) events: BTreeMap<EventId, EventState>,
    /// The hold each idempotency key was first used to check out. Written once per
    /// key and never changed; cold, like the other records that only answer retries
    /// (on disk, read back for an entry that needs it: see `persist`).
    pub(crate) keys: BTreeMap<String, HoldId>,
    /// Keys bound since storage last took the changes.
    pub(crate) dirty_keys: Vec<String>,
    /// Keys in memory since the last eviction (bound or read back).
    pub(crate) touched_keys: Vec<String>,
    /// Keys whose binding was forgotten with their refused checkout since storage last
    /// took the changes (deleted from disk unless bound again meanwhile).
    pub(crate) purged_keys: Vec<String>,
    /// Decisions kept only to answer retries, queued to be forgotten in log time.
    pub(crate) retention: Retention,
}

impl SeatMachine {
    pub fn new() -> Self {
        Self::default()
    }

    /// The log index of the last applied entry (`None` before any).
    pub fn applied_index(&self) -> Option<u64> {
        self.applied_index
    }

    fn advance(&mut self, index: u64) {
        assert!(
            self.applied_index.is_none_or(|a| index > a),
            "log index {index} applied after {:?}",
            self.applied_index
        );
        self.applied_index = Some(index);
    }

    /// The state machine's notion of now: the latest entry timestamp applied.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The earliest log time at which an entry changes state by time alone: a hold or
    /// payment deadline of any event, or the moment the oldest decision kept for
    /// retries is due to be forgotten (`retention`). The leader proposes `Expire` once
    /// its clock passes it, so seats come back without a read touching them, and an
    /// idle shard still forgets (a bounded number per entry).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.events
            .values()
            .filter_map(|e| e.deadlines.first().map(|&(ms, _)| ms))
            .chain(self.retention.head_due_at_ms())
            .min()
    }

    /// Applies one log entry. `index` must be above every index applied before.
    pub fn apply(&mut self, index: u64, batch: &Batch) -> Vec<Outcome> {
        self.advance(index);
        self.clock_ms = self.clock_ms.max(batch.ts_ms);
        let now_ms = self.clock_ms;
        // Before the commands, so a retry in this entry of a request forgotten now is
        // decided as new, on every replica alike.
        self.purge_due(now_ms, purge_budget_records(batch.commands.len()));
        batch
            .commands
            .iter()
            .map(|c| {
                let outcome = self.apply_command(c, now_ms);
                self.queue_retired(command_event(c), now_ms);
                outcome
            })
            .collect()
    }

    /// Records that a log entry without commands (a Raft blank or membership entry) was
    /// applied, so the applied index keeps up with the log.
    pub fn apply_empty(&mut self, index: u64) {
        self.advance(index);
    }

    fn event_mut(&mut self, id: &EventId, now_ms: u64) -> Result<&mut EventState, Refusal> {
        let event = self
            .events
            .get_mut(id)
            .ok_or_else(|| Refusal::NotFound(format!("event {id}")))?;
        event.sweep(now_ms);
        Ok(event)
    }

    /// The event of `hold`, swept to `now_ms`, if the id's tag is the one the event
    /// hands out: a forged or walked id is not found, like an id that names nothing.
    fn hold_event(&mut self, hold: &HoldId, now_ms: u64) -> Result<&mut EventState, Refusal> {
        let event = self.event_mut(&hold.event, now_ms)?;
        event.check_hold_id(hold)?;
        Ok(event)
    }

    fn apply_command(&mut self, cmd: &Command, now_ms: u64) -> Outcome {
        match cmd {
            Command::CreateEvent(def) => self.create_event(def, now_ms),
            Command::SetSale { event_id, sale, by } => {
                Actor::check(by.as_ref())?;
                self.event_mut(event_id, now_ms)?.set_sale(*sale, by)
            }
            Command::Hold(req) => self.event_mut(&req.event_id, now_ms)?.hold(req, now_ms),
            Command::BeginCheckout {
                hold,
                idempotency_key,
                by,
            } => {
                Actor::check(by.as_ref())?;
                self.begin_checkout(hold, idempotency_key, by, now_ms)
            }
            Command::CompleteCheckout {
                hold,
                idempotency_key,
                payment_ref,
            } => self.hold_event(hold, now_ms)?.complete_checkout(
                hold.seq,
                idempotency_key,
                payment_ref,
                now_ms,
            ),
            Command::AbortCheckout {
                hold,
                idempotency_key,
                reason,
            } => self.hold_event(hold, now_ms)?.abort_checkout(
                hold.seq,
                idempotency_key,
                reason,
                now_ms,
            ),
            Command::Release { hold, user, by } => {
                Actor::check(by.as_ref())?;
                self.hold_event(hold, now_ms)?.release(hold.seq, user, by)
            }
            Command::Expire => {
                let (mut holds_expired, mut checkouts_aborted) = (0, 0);
                for event in self.events.values_mut() {
                    let (e, a) = event.sweep(now_ms);
                    holds_expired += e;
                    checkouts_aborted += a;
                }
                Ok(Reply::Expired {
                    holds_expired,
                    checkouts_aborted,
                })
            }
        }
    }

    /// Starts a checkout of `hold` under `key` (or answers a retry of one). A key bound
    /// to another hold is refused before the event looks at the command (after its
    /// sweep, which every command on an event runs first); the first checkout decided
    /// under a key, started or refused, binds it to its hold.
    fn begin_checkout(
        &mut self,
        hold: &HoldId,
        key: &str,
        by: &Option<Actor>,
        now_ms: u64,
    ) -> Outcome {
        let reused = self.keys.get(key).is_some_and(|owner| owner != hold);
        let event = self.hold_event(hold, now_ms)?;
        if reused {
            return Err(Refusal::KeyReused);
        }
        let outcome = event.begin_checkout(hold.seq, key, by, now_ms);
        // The event records the key with the hold whenever it decides (malformed keys
        // and transient refusals leave no record, so they bind nothing). A key recorded
        // before the shard kept bindings is bound by its first retry.
        let decided = event.checkouts.get(key).is_some_and(|r| r.hold == hold.seq);
        if decided && !self.keys.contains_key(key) {
            self.keys.insert(key.to_string(), hold.clone());
            self.dirty_keys.push(key.to_string());
        }
        outcome
    }

    fn create_event(&mut self, def: &CreateEvent, now_ms: u64) -> Outcome {
        if let Some(existing) = self.events.get(&def.event_id) {
            return if existing.def.same_event(def) {
                Ok(Reply::EventCreated {
                    event_id: def.event_id.clone(),
                })
            } else {
                Err(Refusal::Invalid(format!(
                    "event {} already exists with a different definition",
                    def.event_id
                )))
            };
        }
        if def.name.is_empty() {
            return Err(Refusal::Invalid("an event needs a name".into()));
        }
        // The caps first: cheap, and they bound the work of everything after.
        def.check_limits()?;
        Actor::check(def.by.as_ref())?;
        def.limits.validate().map_err(Refusal::Invalid)?;
        self.check_room(&def.event_id, def.layout.capacity() as usize)?;
        let plan = def.layout.plan().map_err(Refusal::Invalid)?;
        let event = EventState::new(def.clone(), plan, now_ms);
        self.events.insert(def.event_id.clone(), event);
        Ok(Reply::EventCreated {
            event_id: def.event_id.clone(),
        })
    }

    /// How many events the shard has (every one, cancelled ones too).
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// How many seats the shard's events have together.
    pub fn seats(&self) -> usize {
        self.events.values().map(|e| e.seats.len()).sum()
    }

    /// Whether the shard has room for a new event `id` of `seats` seats: at most
    /// `EVENTS_PER_SHARD_MAX` events and `SEATS_PER_SHARD_MAX` seats together. An
    /// event that exists needs no room (creating it again is a no-op). `apply` decides
    /// with it; the coordinator asks it before proposing, for a clear early answer.
    pub fn check_room(&self, id: &EventId, seats: usize) -> Result<(), crate::Exceeded> {
        if self.events.contains_key(id) {
            return Ok(());
        }
        Limit::EventsPerShard.check(self.events.len() + 1)?;
        Limit::SeatsPerShard.check(self.seats().saturating_add(seats))
    }

    fn event(&self, id: &EventId) -> Result<&EventState, Refusal> {
        self.events
            .get(id)
            .ok_or_else(|| Refusal::NotFound(format!("event {id}")))
    }

    /// The full seat map of an event, as of [`SeatMachine::applied_index`].
    pub fn seat_map(&self, id: &EventId) -> Result<SeatMap, Refusal> {
        self.seat_map_part(id, &SeatMapPart::default())
    }

    /// Part of an event's seat map (see [`SeatMapPart`]): every section's counts, then
    /// up to `seats_max` seats of the section (or event) from `from_seat` on, and their
    /// rows. Costs what it returns, plus one pass over the sections.
    pub fn seat_map_part(&self, id: &EventId, part: &SeatMapPart) -> Result<SeatMap, Refusal> {
        let event = self.event(id)?;
        let layout = &event.def.layout;
        let plan = &event.plan;
        let sections = event
            .counts
            .iter()
            .zip(&plan.section_capacity)
            .zip(&layout.sections)
            .map(|((c, &capacity), s)| SectionCounts {
                section: s.id.clone(),
                capacity,
                available: c.available,
                held: c.held,
                sold: c.sold,
            })
            .collect();
        // The seats of the section, or of the event: sections are contiguous in
        // layout order.
        let (mut first, mut end) = (0u32, plan.seats.len() as u32);
        if let Some(name) = &part.section {
            let mut start = 0u32;
            let found = layout
                .sections
                .iter()
                .zip(&plan.section_capacity)
                .find(|(s, &cap)| {
                    if s.id == *name {
                        return true;
                    }
                    start += cap;
                    false
                });
            let Some((_, &cap)) = found else {
                return Err(Refusal::NotFound(format!("section {name:?} in event {id}")));
            };
            (first, end) = (start, start + cap);
        }
        if part.from_seat != 0 {
            if !(first..end).contains(&part.from_seat) {
                return Err(Refusal::Invalid(format!(
                    "seat map cursor {} is outside {first}..{end}",
                    part.from_seat
                )));
            }
            first = part.from_seat;
        }
        let last = match part.seats_max {
            // At least one seat, so a reader following cursors always moves on.
            Some(max) => end.min(first.saturating_add(max.max(1))),
            None => end,
        };
        let range = first as usize..last as usize;
        // Seats are in row order, so a part's rows are one run of the plan's rows.
        let first_row = plan.seats.get(range.start).map_or(0, |s| s.1);
        let rows = plan
            .seats
            .get(range.clone())
            .and_then(|seats| seats.last())
            .map_or(&[][..], |last| {
                &plan.rows[first_row as usize..=last.1 as usize]
            })
            .iter()
            .map(|(section, id)| RowView {
                section: *section,
                id: id.to_string(),
            })
            .collect();
        let seats = plan.seats[range.clone()]
            .iter()
            .zip(&event.seats[range])
            .map(|((seat_id, row), seat)| SeatView {
                id: seat_id.clone(),
                row: *row - first_row,
                state: match seat.status {
                    SeatStatus::Available => SeatStateName::Available,
                    SeatStatus::Held(_) => SeatStateName::Held,
                    SeatStatus::Sold(_) => SeatStateName::Sold,
                },
                version: seat.version,
            })
            .collect();
        Ok(SeatMap {
            event_id: id.clone(),
            applied_index: self.applied_index.unwrap_or(0),
            sections,
            rows,
            seats,
            next_seat: (last < end).then_some(last),
        })
    }

    /// One event's summary.
    pub fn event_summary(&self, id: &EventId) -> Result<EventSummary, Refusal> {
        self.event(id).map(summary)
    }

    pub fn hold(&self, id: &HoldId) -> Result<HoldView, Refusal> {
        let event = self.event(&id.event)?;
        event.check_hold_id(id)?;
        let hold = event
            .holds
            .get(&id.seq)
            .ok_or_else(|| Refusal::NotFound(format!("hold {id}")))?;
        Ok(event.hold_view(id.seq, hold))
    }

    /// The ids of the holds of `event` numbered `after + 1` on, at most `limit` of them,
    /// and whether more were granted after the last: the ids to read a page of holds
    /// by (a hold that was purged is not found then, and skipped).
    pub fn hold_ids(
        &self,
        event: &EventId,
        after: u64,
        limit: u64,
    ) -> Result<(Vec<HoldId>, bool), Refusal> {
        let e = self.event(event)?;
        let first = after.saturating_add(1);
        let end = e.next_hold_seq.min(first.saturating_add(limit));
        let ids = (first..end).map(|seq| e.hold_id(seq)).collect();
        Ok((ids, end < e.next_hold_seq))
    }

    pub fn order(&self, id: &OrderId) -> Result<OrderView, Refusal> {
        let event = self.event(&id.event)?;
        event.check_order_id(id)?;
        event
            .order_view(id.seq)
            .ok_or_else(|| Refusal::NotFound(format!("order {id}")))
    }

    /// Events starting in `[from_ms, to_ms]` whose name or venue contains `query`
    /// (case-insensitive), ordered by start time then id, at most `limit` of them.
    pub fn events(
        &self,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
        query: Option<&str>,
        limit: usize,
    ) -> Vec<EventSummary> {
        let query = query.map(str::to_lowercase).filter(|q| !q.is_empty());
        let mut found: Vec<EventSummary> = self
            .events
            .values()
            .filter(|e| from_ms.is_none_or(|f| e.def.starts_at_ms >= f))
            .filter(|e| to_ms.is_none_or(|t| e.def.starts_at_ms <= t))
            .filter(|e| {
                query.as_ref().is_none_or(|q| {
                    e.def.name.to_lowercase().contains(q)
                        || e.def.layout.venue.to_lowercase().contains(q)
                })
            })
            .map(summary)
            .collect();
        found.sort_by(|a, b| (a.starts_at_ms, &a.event_id).cmp(&(b.starts_at_ms, &b.event_id)));
        found.truncate(limit);
        found
    }
}

/// The event a command may change records of; `None` for every event (`Expire`).
fn command_event(cmd: &Command) -> Option<&EventId> {
    match cmd {
        Command::CreateEvent(def) => Some(&def.event_id),
        Command::SetSale { event_id, .. } => Some(event_id),
        Command::Hold(req) => Some(&req.event_id),
        Command::BeginCheckout { hold, .. }
        | Command::CompleteCheckout { hold, .. }
        | Command::AbortCheckout { hold, .. }
        | Command::Release { hold, .. } => Some(&hold.event),
        Command::Expire => None,
    }
}

fn summary(e: &EventState) -> EventSummary {
    EventSummary {
        event_id: e.def.event_id.clone(),
        name: e.def.name.clone(),
        venue: e.def.layout.venue.clone(),
        starts_at_ms: e.def.starts_at_ms,
        sale: e.sale,
        capacity: e.seats.len() as u32,
        available: e.counts.iter().map(|c| c.available).sum(),
        limits: e.def.limits.clone(),
        created_by: e.def.by.clone(),
        sale_changed_by: e.sale_by.clone(),
    }
}
