//! What a log entry carries, and what applying it answers.
//!
//! A log entry is a [`Batch`]: the leader's timestamp plus the client commands it
//! gathered. The timestamp is the only notion of time the state machine has; every
//! command in the batch sees the same "now". Applying a batch yields one [`Outcome`] per
//! command, in order.
//!
//! An [`Outcome`] is a decision, not an error: a refused hold is as final and as
//! replicated as a granted one, so a retry with the same client reservation id or
//! idempotency key is answered from the recorded decision.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{validate_token, EventId, HoldId, IdKey, OrderId};
use crate::layout::VenueLayout;
use crate::limits::{Exceeded, Limit, Limits};

/// Whether an event accepts new holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaleState {
    /// Holds and checkouts are accepted.
    OnSale,
    /// No new holds; existing holds may still be checked out or released.
    Stopped,
    /// Final: no holds, no checkouts; live holds were released when it was cancelled.
    Cancelled,
}

/// Who asked for a command, as their verified token said: recorded in the log entry
/// and kept with what it changed (the audit trail). `None` where tokens are not
/// checked, and for what the cluster does by itself (expiry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The token's subject (a user id: validated like one).
    pub subject: String,
    pub role: ActorRole,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActorRole {
    Buyer,
    Operator,
}

impl ActorRole {
    pub fn name(self) -> &'static str {
        match self {
            ActorRole::Buyer => "buyer",
            ActorRole::Operator => "operator",
        }
    }
}

impl Actor {
    /// Checks an actor carried by a command (bounded, printable).
    pub fn check(by: Option<&Actor>) -> Result<(), Refusal> {
        match by {
            Some(a) => validate_token("actor", &a.subject).map_err(Refusal::Invalid),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateEvent {
    pub event_id: EventId,
    pub name: String,
    pub starts_at_ms: u64,
    pub layout: VenueLayout,
    pub limits: Limits,
    /// The key of the event's hold and order id tags: random, drawn by the leader that
    /// proposes the command (`ids` module doc).
    pub id_key: IdKey,
    /// Who created the event.
    pub by: Option<Actor>,
}

impl CreateEvent {
    /// Whether `other` defines the same event: everything but the id key and the
    /// actor, which a retry draws or states anew.
    pub fn same_event(&self, other: &CreateEvent) -> bool {
        (
            &self.event_id,
            &self.name,
            self.starts_at_ms,
            &self.layout,
            &self.limits,
        ) == (
            &other.event_id,
            &other.name,
            other.starts_at_ms,
            &other.layout,
            &other.limits,
        )
    }

    /// Checks the definition against the absolute caps (name and id lengths, sections
    /// and seats per event) without building the seat plan: linear in the layout's
    /// rows and named seats, no allocation. The coordinator runs it where the request
    /// enters; `apply` runs it again before the costlier checks.
    pub fn check_limits(&self) -> Result<(), Exceeded> {
        Limit::TextBytes.check(self.name.len())?;
        self.layout.check_limits()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    pub event_id: EventId,
    pub user: String,
    pub seats: Vec<String>,
    pub client_reservation_id: String,
    /// `None` takes the event's default TTL.
    pub ttl_ms: Option<u64>,
    /// When given, one version per seat: the hold is granted only if every seat still
    /// has the version the client saw (compare-and-set).
    pub expected_versions: Option<Vec<u64>>,
}

/// One client command, as replicated in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates an event. Repeating the identical command is a no-op that succeeds.
    CreateEvent(CreateEvent),
    /// Stops, resumes or cancels the sale of an event.
    SetSale {
        event_id: EventId,
        sale: SaleState,
        by: Option<Actor>,
    },
    /// Holds seats for a user, all or nothing.
    Hold(HoldRequest),
    /// Starts paying for a hold: it stops expiring until its payment deadline.
    BeginCheckout {
        hold: HoldId,
        idempotency_key: String,
        by: Option<Actor>,
    },
    /// Payment succeeded: the seats become sold and an order is created.
    CompleteCheckout {
        hold: HoldId,
        idempotency_key: String,
        payment_ref: String,
    },
    /// Payment failed: the hold is active again (or expired if its time ran out).
    AbortCheckout {
        hold: HoldId,
        idempotency_key: String,
        reason: String,
    },
    /// The buyer gives the seats back.
    Release {
        hold: HoldId,
        user: String,
        by: Option<Actor>,
    },
    /// Expires every hold and aborts every checkout whose deadline is at or before the
    /// entry's timestamp, in every event.
    Expire,
}

/// The payload of one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The leader's clock when it proposed the entry, in ms since the Unix epoch.
    pub ts_ms: u64,
    pub commands: Vec<Command>,
}

/// The life of a hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    Active,
    CheckingOut {
        idempotency_key: String,
        payment_deadline_ms: u64,
    },
    Committed {
        order: u64,
    },
    Released,
    Expired,
}

impl HoldState {
    /// Whether the hold still owns its seats.
    pub fn is_live(&self) -> bool {
        matches!(self, HoldState::Active | HoldState::CheckingOut { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            HoldState::Active => "active",
            HoldState::CheckingOut { .. } => "checking_out",
            HoldState::Committed { .. } => "committed",
            HoldState::Released => "released",
            HoldState::Expired => "expired",
        }
    }
}

/// A hold as readers see it. Strings are shared with the machine's state, so a view
/// costs no copies of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    pub hold_id: HoldId,
    pub user: Arc<str>,
    pub client_reservation_id: Arc<str>,
    /// The seats and the version each got when the hold was granted.
    pub seats: Vec<(Arc<str>, u64)>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub state: HoldState,
    /// Who last released it or started paying for it (the audit trail).
    pub by: Option<Actor>,
}

/// An order as readers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: OrderId,
    pub hold_id: HoldId,
    pub user: Arc<str>,
    pub seats: Vec<Arc<str>>,
    pub payment_ref: String,
    pub created_at_ms: u64,
    /// Who committed it: started the checkout that paid for it.
    pub by: Option<Actor>,
}

/// A successful outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    EventCreated {
        event_id: EventId,
    },
    SaleSet {
        event_id: EventId,
        sale: SaleState,
    },
    /// The hold as granted (a retry gets the very same view back).
    Held(HoldView),
    CheckoutStarted {
        hold_id: HoldId,
        payment_deadline_ms: u64,
    },
    /// The order (also the answer to a retried begin or complete of a finished checkout).
    Completed(OrderView),
    CheckoutAborted {
        hold_id: HoldId,
        state: HoldState,
    },
    Released {
        hold_id: HoldId,
    },
    Expired {
        holds_expired: u32,
        checkouts_aborted: u32,
    },
}

/// A refused command: nothing changed (except that the refusal may be remembered for
/// retries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// Malformed or out-of-policy input (gRPC INVALID_ARGUMENT).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Unknown event, hold or order (gRPC NOT_FOUND).
    #[error("not found: {0}")]
    NotFound(String),
    /// Some seats are not available, or not at the version the client saw
    /// (gRPC ABORTED). Lists every such seat.
    #[error("seats unavailable: {}", seats.join(","))]
    Conflict { seats: Vec<String> },
    /// The hold expired before it could be used (HTTP 410, gRPC FAILED_PRECONDITION).
    #[error("hold expired")]
    Expired,
    /// The payment was declined; the hold went back to active.
    #[error("payment declined: {0}")]
    Declined(String),
    /// The command does not fit the current state (gRPC FAILED_PRECONDITION).
    #[error("failed precondition: {0}")]
    WrongState(String),
    /// The idempotency key already names a checkout of another hold, in this event or
    /// another of the shard (gRPC INVALID_ARGUMENT, reason `IDEMPOTENCY_KEY_REUSED`):
    /// a key names one checkout attempt of one hold, and its payment belongs to that
    /// hold. Which hold is not said: it may be another buyer's.
    #[error("invalid: idempotency key already used for another hold")]
    KeyReused,
    /// Over one of the absolute caps (gRPC INVALID_ARGUMENT, naming the limit).
    /// Last: refusals are stored in request records by variant index.
    #[error("{0}")]
    Limit(#[from] Exceeded),
}

pub type Outcome = Result<Reply, Refusal>;

/// One seat in a seat map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatView {
    pub id: Arc<str>,
    /// Index into [`SeatMap::rows`].
    pub row: u32,
    pub state: SeatStateName,
    pub version: u64,
}

/// One row in a seat map; its seats are contiguous in [`SeatMap::seats`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowView {
    /// Index into [`SeatMap::sections`].
    pub section: u32,
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeatStateName {
    Available,
    Held,
    Sold,
}

/// Per-section counts; `available + held + sold == capacity` always.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionCounts {
    pub section: String,
    pub capacity: u32,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
}

/// An event's seat map at one log index: the whole map, or one part of it
/// ([`SeatMapPart`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatMap {
    pub event_id: EventId,
    /// The last log index applied when the map was read.
    pub applied_index: u64,
    /// Every section's counts, whatever part was asked for.
    pub sections: Vec<SectionCounts>,
    /// The rows of [`SeatMap::seats`], in layout order (all rows for a whole map).
    pub rows: Vec<RowView>,
    /// The seats asked for, in layout order (row by row).
    pub seats: Vec<SeatView>,
    /// Where the next part starts (its first seat's index in layout order), if the
    /// part asked for has more seats than this answer holds.
    pub next_seat: Option<u32>,
}

/// Which part of a seat map to read: seats in layout order from `from_seat`, of one
/// section or of the whole event, at most `seats_max` of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeatMapPart {
    /// Only this section's seats (a section's seats are contiguous in layout order).
    pub section: Option<String>,
    /// The index, in layout order, of the first seat to return (0: the first seat of
    /// the event or section). A cursor from [`SeatMap::next_seat`].
    pub from_seat: u32,
    /// At most this many seats; `None` for all of them.
    pub seats_max: Option<u32>,
}

/// An event in the event list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    pub event_id: EventId,
    pub name: String,
    pub venue: String,
    pub starts_at_ms: u64,
    pub sale: SaleState,
    pub capacity: u32,
    pub available: u32,
    pub limits: Limits,
    pub created_by: Option<Actor>,
    /// Who last stopped, resumed or cancelled the sale.
    pub sale_changed_by: Option<Actor>,
}
