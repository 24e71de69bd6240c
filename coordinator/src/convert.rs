//! Conversions between the wire types (`seatd_proto::v1`) and raft-store's types.
//!
//! Input conversions validate what the wire cannot express (id syntax, a layout row
//! naming its seats one way only) and return `Error::Invalid`; the state machine checks
//! the rest (limits, TTLs, seats per hold) when it applies the command, so the rules
//! live in one place and are replicated decisions. (The absolute caps are also checked
//! where a call enters, by the same functions of `raft_store::limits`, so an oversized
//! request is refused before it is proposed.)
//!
//! Seat maps are answered whole, by section or in pages; a page is bounded at compile
//! time to fit gRPC's default 4 MiB ([`SEAT_MAP_PAGE_SEATS_MAX`]), a whole map is
//! checked against the reply limit ([`whole_map_within_reply`]).

use prost::Message;
use raft_store::layout::{RowLayout, SectionLayout};
use raft_store::limits::{SEATS_PER_EVENT_MAX, SEAT_ID_BYTES_MAX, SECTIONS_PER_EVENT_MAX};
use raft_store::{
    EventId, EventSummary, HoldId, HoldState, HoldView, Limit, Limits, OrderId, OrderView,
    SaleState, SeatMap, SeatMapPart, SeatStateName, VenueLayout,
};
use seatd_proto::v1 as pb;

use crate::error::Error;
use crate::route::REPLY_BYTES_MAX;

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

/// Most seats in one page of a seat map: `GetSeatMapRequest.page_size` is capped to
/// it, so a page fits the 4 MiB that gRPC clients accept by default (grpcurl, most
/// languages' stubs), not only seatd's own client.
pub const SEAT_MAP_PAGE_SEATS_MAX: u32 = 20_000;
/// What gRPC implementations accept by default in one received message.
const GRPC_DEFAULT_MESSAGE_BYTES_MAX: usize = 4 << 20;
/// Longest protobuf encoding of one `Seat` in a `SeatMap`, with its field tag and
/// length: id (tag, length, bytes), row (tag, varint u32), state, version (tag, varint
/// u64).
const SEAT_PB_BYTES_MAX: usize = 2 + (2 + SEAT_ID_BYTES_MAX) + 6 + 2 + 11;
/// Longest `RowInfo`: section index, id.
const ROW_PB_BYTES_MAX: usize = 2 + 6 + (2 + SEAT_ID_BYTES_MAX);
/// Longest `SectionCounts`: id and four counters.
const SECTION_PB_BYTES_MAX: usize = 2 + (2 + SEAT_ID_BYTES_MAX) + 4 * 6;
/// A `SeatMap`'s other fields: event id, shard, index, age, next page token.
const SEAT_MAP_HEADER_PB_BYTES_MAX: usize = 1024;

/// Longest `SeatMap` answer holding `seats` seats: every section's counts, the seats
/// and at most one row each.
const fn seat_map_pb_bytes_max(seats: usize) -> usize {
    SEAT_MAP_HEADER_PB_BYTES_MAX
        + SECTIONS_PER_EVENT_MAX * SECTION_PB_BYTES_MAX
        + seats * (SEAT_PB_BYTES_MAX + ROW_PB_BYTES_MAX)
}

// A page fits any gRPC client's default, whatever the event. (A whole map fits the
// reply limit for every event of realistic ids, but not for every id and version the
// types allow: `whole_map_within_reply` checks it.)
const _: () = assert!(
    seat_map_pb_bytes_max(SEAT_MAP_PAGE_SEATS_MAX as usize) <= GRPC_DEFAULT_MESSAGE_BYTES_MAX
);
/// Seats of an event whose whole map always fits one answer, whatever its ids.
pub const SEAT_MAP_WHOLE_SEATS_MAX: usize = 500_000;
const _: () = assert!(seat_map_pb_bytes_max(SEAT_MAP_WHOLE_SEATS_MAX) <= REPLY_BYTES_MAX);
const _: () = assert!(SEAT_MAP_WHOLE_SEATS_MAX <= SEATS_PER_EVENT_MAX);

/// Refuses a seat map answer larger than the reply limit (only a map asked for whole
/// can be: pages are bounded above), naming the limit, so the caller reads it by
/// section or in pages instead of meeting a transport error.
pub fn whole_map_within_reply(map: pb::SeatMap) -> Result<pb::SeatMap, Error> {
    Limit::ReplyBytes.check(map.encoded_len())?;
    Ok(map)
}

/// The part of a seat map a request asks for: its section, and its page (a page token
/// is the index of the page's first seat, as the previous page gave it).
pub fn seat_map_part(req: &pb::GetSeatMapRequest) -> Result<SeatMapPart, Error> {
    if let Some(section) = &req.section {
        Limit::SeatIdBytes.check(section.len())?;
    }
    let from_seat = match req.page_token.as_str() {
        "" => 0,
        token => parse_page_token(token).ok_or_else(|| {
            Error::Invalid(format!(
                "page_token {token:?} is not one a seat map answer gave"
            ))
        })?,
    };
    Ok(SeatMapPart {
        section: req.section.clone(),
        from_seat,
        seats_max: (req.page_size > 0).then(|| req.page_size.min(SEAT_MAP_PAGE_SEATS_MAX)),
    })
}

/// A page token: `p` and the index of the page's first seat. Opaque to callers.
fn page_token(next_seat: u32) -> String {
    format!("p{next_seat}")
}

fn parse_page_token(token: &str) -> Option<u32> {
    let digits = token.strip_prefix('p')?;
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
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
        next_page_token: m.next_seat.map(page_token).unwrap_or_default(),
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

    #[test]
    fn seat_map_requests_become_parts_and_tokens_round_trip() {
        let req = |section: Option<&str>, page_size, token: &str| pb::GetSeatMapRequest {
            event_id: "e".into(),
            stale_ok: false,
            section: section.map(Into::into),
            page_size,
            page_token: token.into(),
        };
        assert_eq!(
            seat_map_part(&req(None, 0, "")).unwrap(),
            SeatMapPart::default()
        );
        let part = seat_map_part(&req(Some("S1"), 1_000_000, &page_token(42))).unwrap();
        assert_eq!(part.section.as_deref(), Some("S1"));
        assert_eq!(part.from_seat, 42);
        assert_eq!(part.seats_max, Some(SEAT_MAP_PAGE_SEATS_MAX));
        for bad in ["42", "p", "p-1", "p99999999999", "px"] {
            assert!(seat_map_part(&req(None, 10, bad)).is_err(), "{bad}");
        }
        let long = "s".repeat(SEAT_ID_BYTES_MAX + 1);
        assert!(matches!(
            seat_map_part(&req(Some(&long), 0, "")),
            Err(Error::Limit(_))
        ));
    }
}
