//! What a call says about where it goes, outside its message: the gRPC paths of the
//! client API and the routing metadata the client library sets, so that a process
//! that only forwards a call (a frontend, a follower) can route it without decoding
//! it.
//!
//! Invariant: routing metadata is a hint, never a source of answers. The process that
//! decides a call decodes it and routes it again by what the message says; metadata
//! that lies (an event the message does not name) costs a hop, never a wrong answer.
//! A call without it is decoded where it enters, as any call may be.

/// The metadata key naming the event a call is about (for a call on a hold or an
/// order, the event in its id). Set by the client library on calls about one event
/// that the shard's leader must answer; left out of calls that any replica or the
/// entry point may answer (stale reads, lists).
pub const EVENT_METADATA: &str = "x-seatd-event";

/// The gRPC paths of `seatd.v1.Seats`, for forwarding a call as the bytes received.
pub mod paths {
    pub const CREATE_EVENT: &str = "/seatd.v1.Seats/CreateEvent";
    pub const LIST_EVENTS: &str = "/seatd.v1.Seats/ListEvents";
    pub const GET_EVENT: &str = "/seatd.v1.Seats/GetEvent";
    pub const SET_SALE: &str = "/seatd.v1.Seats/SetSale";
    pub const GET_SEAT_MAP: &str = "/seatd.v1.Seats/GetSeatMap";
    pub const HOLD: &str = "/seatd.v1.Seats/Hold";
    pub const HOLD_MANY: &str = "/seatd.v1.Seats/HoldMany";
    pub const COMMIT: &str = "/seatd.v1.Seats/Commit";
    pub const RELEASE: &str = "/seatd.v1.Seats/Release";
    pub const GET_HOLD: &str = "/seatd.v1.Seats/GetHold";
    pub const GET_ORDER: &str = "/seatd.v1.Seats/GetOrder";
    pub const LIST_HOLDS: &str = "/seatd.v1.Seats/ListHolds";
    pub const CLUSTER_STATUS: &str = "/seatd.v1.Seats/ClusterStatus";
}

/// The event a hold id names (the routing metadata of a call on that hold), if the id
/// parses.
pub fn event_of_hold(hold_id: &str) -> Option<String> {
    crate::hold_id(hold_id).ok().map(|h| h.event.to_string())
}

/// The event an order id names, if the id parses.
pub fn event_of_order(order_id: &str) -> Option<String> {
    crate::order_id(order_id).ok().map(|o| o.event.to_string())
}
