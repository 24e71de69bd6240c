//! Conversions between the wire types (`seatd_proto::v1`) and raft-store's types.
//!
//! Input conversions validate what the wire cannot express (id syntax, a layout row
//! naming its seats one way only) and return `Error::Invalid`; the state machine checks
//! the rest (limits, TTLs, seats per hold) when it applies the command, so the rules
//! live in one place and are replicated decisions.

use raft_store::layout::{RowLayout, SectionLayout};
use raft_store::{
    EventId, EventSummary, HoldId, HoldState, HoldView, Limits, OrderId, OrderView, SaleState,
    SeatMap, SeatStateName, VenueLayout,
};
use seatd_proto::v1 as pb;

use crate::error::Error;

pub fn event_id(s: &str) -> Result<EventId, Error> {
    EventId::new(s).map_err(|e| Error::Invalid(e.to_string()))
}

pub fn hold_id(s: &str) -> Result<HoldId, Error> {
    HoldId::parse(s).map_err(|e| Error::Invalid(e.to_string()))
}

pub fn order_id(s: &str) -> Result<OrderId, Error> {
    OrderId::parse(s).map_err(|e| Error::Invalid(e.to_string()))
}

pub fn layout(l: Option<pb::Layout>) -> Result<VenueLayout, Error> {
    let l = l.ok_or_else(|| Error::Invalid("an event needs a layout".into()))?;
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

/// The wire form of a layout (shared with the client library, which sends it).
pub use seatd_client::layout_to_pb;

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

pub fn sale(s: i32) -> Result<SaleState, Error> {
    match pb::SaleState::try_from(s) {
        Ok(pb::SaleState::OnSale) => Ok(SaleState::OnSale),
        Ok(pb::SaleState::Stopped) => Ok(SaleState::Stopped),
        Ok(pb::SaleState::Cancelled) => Ok(SaleState::Cancelled),
        _ => Err(Error::Invalid(
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
    }
}

pub fn seat_map_to_pb(m: &SeatMap, shard: u32) -> pb::SeatMap {
    pb::SeatMap {
        event_id: m.event_id.to_string(),
        shard,
        applied_index: m.applied_index,
        sections: m
            .sections
            .iter()
            .map(|s| pb::SectionCounts {
                section: s.section.clone(),
                capacity: s.capacity,
                available: s.available,
                held: s.held,
                sold: s.sold,
            })
            .collect(),
        rows: m
            .rows
            .iter()
            .map(|r| pb::RowInfo {
                section: r.section,
                id: r.id.clone(),
            })
            .collect(),
        seats: m
            .seats
            .iter()
            .map(|s| pb::Seat {
                id: s.id.to_string(),
                row: s.row,
                state: match s.state {
                    SeatStateName::Available => pb::SeatState::Available,
                    SeatStateName::Held => pb::SeatState::Held,
                    SeatStateName::Sold => pb::SeatState::Sold,
                } as i32,
                version: s.version,
            })
            .collect(),
        cache_age_ms: 0,
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
    }
}
