//! Seat maps on the wire: the part a request asks for, and the answer.
//!
//! A page is bounded at compile time to fit the 4 MiB that gRPC clients accept by
//! default ([`SEAT_MAP_PAGE_SEATS_MAX`]); a whole map is checked against the reply
//! limit ([`whole_map_within_reply`]), so a caller meets a named limit, never a
//! transport error.

use prost::Message;
use raft_store::limits::{REPLY_BYTES_MAX, SEAT_ID_BYTES_MAX, SECTIONS_PER_EVENT_MAX};
use raft_store::{Limit, SeatMap, SeatMapPart, SeatStateName};
use seatd_proto::v1 as pb;

use crate::limits::{
    GRPC_DEFAULT_MESSAGE_BYTES_MAX, SEAT_MAP_PAGE_SEATS_MAX, SEAT_MAP_WHOLE_SEATS_MAX,
};
use crate::Invalid;

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
const _: () = assert!(seat_map_pb_bytes_max(SEAT_MAP_WHOLE_SEATS_MAX) <= REPLY_BYTES_MAX);

/// Refuses a seat map answer larger than the reply limit (only a map asked for whole
/// can be: pages are bounded above), naming the limit, so the caller reads it by
/// section or in pages instead of meeting a transport error.
pub fn whole_map_within_reply(map: pb::SeatMap) -> Result<pb::SeatMap, Invalid> {
    Limit::ReplyBytes.check(map.encoded_len())?;
    Ok(map)
}

/// The part of a seat map a request asks for: its section, and its page (a page token
/// is the index of the page's first seat, as the previous page gave it).
pub fn seat_map_part(req: &pb::GetSeatMapRequest) -> Result<SeatMapPart, Invalid> {
    if let Some(section) = &req.section {
        Limit::SeatIdBytes.check(section.len())?;
    }
    let from_seat = match req.page_token.as_str() {
        "" => 0,
        token => parse_page_token(token).ok_or_else(|| {
            Invalid::Input(format!(
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
            Err(Invalid::Limit(_))
        ));
    }
}
