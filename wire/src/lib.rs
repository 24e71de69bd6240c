//! Conversions between seatd's wire types (`seatd_proto::v1`) and the state
//! machine's (`raft_store`), written once and used by the server (`coordinator`) and
//! the client library alike, so neither depends on the other for them.
//!
//! Input conversions validate what the wire cannot express (id syntax, a layout row
//! naming its seats one way only) and return [`Invalid`]; the state machine checks the
//! rest (limits, TTLs, seats per hold) when it applies the command, so the rules live
//! in one place and are replicated decisions. (The absolute caps are also checked
//! where a call enters, by the same functions of `raft_store::limits`, so an oversized
//! request is refused before it is proposed.)
//!
//! Also shared: how an address becomes an endpoint URL and how long to back off
//! between attempts ([`net`]), and the routing metadata and gRPC paths a call is
//! forwarded by ([`routing`]).
//!
//! Seat maps ([`seat_map`]) are answered whole, by section or in pages; a page is
//! bounded at compile time to fit gRPC's default 4 MiB, a whole map is checked against
//! the reply limit.

use raft_store::layout::{RowLayout, SectionLayout};
use raft_store::{
    Actor, EventId, EventSummary, Exceeded, HoldId, HoldState, HoldView, Limits, OrderId,
    OrderView, SaleState, VenueLayout,
};
use seatd_proto::v1 as pb;

pub mod dev;
pub mod limits;
pub mod net;
pub mod routing;
pub mod seat_map;

pub use seat_map::{seat_map_part, seat_map_to_pb, whole_map_within_reply};

/// Wire input that cannot become a state machine type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Malformed: the message says what and why.
    #[error("{0}")]
    Input(String),
    /// Over one of the absolute caps.
    #[error(transparent)]
    Limit(#[from] Exceeded),
}

pub fn event_id(s: &str) -> Result<EventId, Invalid> {
    EventId::new(s).map_err(|e| Invalid::Input(e.to_string()))
}

pub fn hold_id(s: &str) -> Result<HoldId, Invalid> {
    HoldId::parse(s).map_err(|e| Invalid::Input(e.to_string()))
}

pub fn order_id(s: &str) -> Result<OrderId, Invalid> {
    OrderId::parse(s).map_err(|e| Invalid::Input(e.to_string()))
}

pub fn layout(l: Option<pb::Layout>) -> Result<VenueLayout, Invalid> {
    let l = l.ok_or_else(|| Invalid::Input("an event needs a layout".into()))?;
    Ok(VenueLayout {
        venue: l.venue,
        sections: l
            .sections
            .into_iter()
            .map(|s| SectionLayout {
                id: s.id,
                rows: s
                    .rows
                    .into_iter()
                    .map(|r| RowLayout {
                        id: r.id,
                        seats: (r.seats > 0).then_some(r.seats),
                        first: r.first,
                        seat_ids: (!r.seat_ids.is_empty()).then_some(r.seat_ids),
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// Zero fields take the defaults.
pub fn limits(l: Option<pb::Limits>) -> Limits {
    let d = Limits::default();
    let Some(l) = l else { return d };
    let or = |v: u64, d: u64| if v == 0 { d } else { v };
    Limits {
        seats_per_hold_max: if l.seats_per_hold_max == 0 {
            d.seats_per_hold_max
        } else {
            l.seats_per_hold_max
        },
        seats_per_user_max: if l.seats_per_user_max == 0 {
            d.seats_per_user_max
        } else {
            l.seats_per_user_max
        },
        hold_ttl_ms_min: or(l.hold_ttl_ms_min, d.hold_ttl_ms_min),
        hold_ttl_ms_max: or(l.hold_ttl_ms_max, d.hold_ttl_ms_max),
        hold_ttl_ms_default: or(l.hold_ttl_ms_default, d.hold_ttl_ms_default),
        checkout_ttl_ms: or(l.checkout_ttl_ms, d.checkout_ttl_ms),
    }
}

fn limits_to_pb(l: &Limits) -> pb::Limits {
    pb::Limits {
        seats_per_hold_max: l.seats_per_hold_max,
        seats_per_user_max: l.seats_per_user_max,
        hold_ttl_ms_min: l.hold_ttl_ms_min,
        hold_ttl_ms_max: l.hold_ttl_ms_max,
        hold_ttl_ms_default: l.hold_ttl_ms_default,
        checkout_ttl_ms: l.checkout_ttl_ms,
    }
}

pub fn sale(s: i32) -> Result<SaleState, Invalid> {
    match pb::SaleState::try_from(s) {
        Ok(pb::SaleState::OnSale) => Ok(SaleState::OnSale),
        Ok(pb::SaleState::Stopped) => Ok(SaleState::Stopped),
        Ok(pb::SaleState::Cancelled) => Ok(SaleState::Cancelled),
        _ => Err(Invalid::Input(
            "sale must be ON_SALE, STOPPED or CANCELLED".into(),
        )),
    }
}

fn sale_to_pb(s: SaleState) -> pb::SaleState {
    match s {
        SaleState::OnSale => pb::SaleState::OnSale,
        SaleState::Stopped => pb::SaleState::Stopped,
        SaleState::Cancelled => pb::SaleState::Cancelled,
    }
}

pub fn event_to_pb(e: EventSummary, shard: u32) -> pb::Event {
    pb::Event {
        event_id: e.event_id.to_string(),
        name: e.name,
        venue: e.venue,
        starts_at_ms: e.starts_at_ms,
        sale: sale_to_pb(e.sale) as i32,
        capacity: e.capacity,
        available: e.available,
        shard,
        limits: Some(limits_to_pb(&e.limits)),
        created_by: e.created_by.as_ref().map(actor_to_pb),
        sale_changed_by: e.sale_changed_by.as_ref().map(actor_to_pb),
    }
}

/// The audit trail's actor as the API shows it.
pub fn actor_to_pb(a: &Actor) -> pb::Actor {
    pb::Actor {
        subject: a.subject.clone(),
        role: a.role.name().to_string(),
    }
}

fn hold_state_to_pb(s: &HoldState) -> pb::HoldState {
    match s {
        HoldState::Active => pb::HoldState::Active,
        HoldState::CheckingOut { .. } => pb::HoldState::CheckingOut,
        HoldState::Committed { .. } => pb::HoldState::Committed,
        HoldState::Released => pb::HoldState::Released,
        HoldState::Expired => pb::HoldState::Expired,
    }
}

pub fn hold_to_pb(h: &HoldView) -> pb::Hold {
    pb::Hold {
        hold_id: h.hold_id.to_string(),
        event_id: h.hold_id.event.to_string(),
        user_id: h.user.to_string(),
        client_reservation_id: h.client_reservation_id.to_string(),
        seats: h
            .seats
            .iter()
            .map(|(id, v)| pb::SeatVersion {
                seat_id: id.to_string(),
                version: *v,
            })
            .collect(),
        created_at_ms: h.created_at_ms,
        expires_at_ms: h.expires_at_ms,
        state: hold_state_to_pb(&h.state) as i32,
        by: h.by.as_ref().map(actor_to_pb),
    }
}

pub fn order_to_pb(o: &OrderView) -> pb::Order {
    pb::Order {
        order_id: o.order_id.to_string(),
        hold_id: o.hold_id.to_string(),
        user_id: o.user.to_string(),
        seat_ids: o.seats.iter().map(|s| s.to_string()).collect(),
        payment_ref: o.payment_ref.clone(),
        created_at_ms: o.created_at_ms,
        by: o.by.as_ref().map(actor_to_pb),
    }
}

/// The wire form of a layout (a layout file, see README.md), as
/// `CreateEventRequest.layout` carries it.
pub fn layout_to_pb(l: &VenueLayout) -> pb::Layout {
    pb::Layout {
        venue: l.venue.clone(),
        sections: l
            .sections
            .iter()
            .map(|s| pb::Section {
                id: s.id.clone(),
                rows: s
                    .rows
                    .iter()
                    .map(|r| pb::Row {
                        id: r.id.clone(),
                        seats: r.seats.unwrap_or(0),
                        first: r.first,
                        seat_ids: r.seat_ids.clone().unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The stable name of a hold state (`seatctl --json`'s `state`): active,
/// checking_out, committed, released, expired (or unknown).
pub fn hold_state_name(state: i32) -> &'static str {
    match pb::HoldState::try_from(state) {
        Ok(pb::HoldState::Active) => "active",
        Ok(pb::HoldState::CheckingOut) => "checking_out",
        Ok(pb::HoldState::Committed) => "committed",
        Ok(pb::HoldState::Released) => "released",
        Ok(pb::HoldState::Expired) => "expired",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_and_zero_limits_take_defaults() {
        let l = raft_store::layout::preset("small").unwrap();
        assert_eq!(layout(Some(layout_to_pb(&l))).unwrap(), l);
        assert!(layout(None).is_err());
        assert_eq!(limits(None), Limits::default());
        let l = limits(Some(pb::Limits {
            seats_per_hold_max: 4,
            ..Default::default()
        }));
        assert_eq!(l.seats_per_hold_max, 4);
        assert_eq!(l.hold_ttl_ms_default, Limits::default().hold_ttl_ms_default);
        assert!(sale(0).is_err());
        assert!(sale(99).is_err());
        assert_eq!(sale(3).unwrap(), SaleState::Cancelled);
        assert_eq!(
            hold_state_name(pb::HoldState::CheckingOut as i32),
            "checking_out"
        );
        assert_eq!(hold_state_name(99), "unknown");
    }
}
