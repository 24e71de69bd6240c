//! The bounds of seat-map answers on the wire, each with its unit in its name. The
//! relations to the encoding's sizes are asserted in [`crate::seat_map`].

use raft_store::limits::SEATS_PER_EVENT_MAX;

/// Most seats in one page of a seat map: `GetSeatMapRequest.page_size` is capped to
/// it, so a page fits the 4 MiB that gRPC clients accept by default (grpcurl, most
/// languages' stubs), not only seatd's own client.
pub const SEAT_MAP_PAGE_SEATS_MAX: u32 = 20_000;
/// Seats of an event whose whole map always fits one answer, whatever its ids.
pub const SEAT_MAP_WHOLE_SEATS_MAX: usize = 500_000;
/// What gRPC implementations accept by default in one received message.
pub const GRPC_DEFAULT_MESSAGE_BYTES_MAX: usize = 4 << 20;

const _: () = assert!(SEAT_MAP_WHOLE_SEATS_MAX <= SEATS_PER_EVENT_MAX);
const _: () = assert!(SEAT_MAP_PAGE_SEATS_MAX as usize <= SEAT_MAP_WHOLE_SEATS_MAX);
