//! The coordinator's error types, and the one place where errors and refusals become
//! gRPC status codes.
//!
//! The codes follow the product brief: a seat taken is ABORTED, rate limited is
//! RESOURCE_EXHAUSTED, an expired hold or a declined payment is FAILED_PRECONDITION,
//! bad input is INVALID_ARGUMENT, an unknown id is NOT_FOUND, and "no leader in time"
//! (or a node shutting down) is UNAVAILABLE, which clients may retry with the same
//! keys.
//!
//! Every status made here carries one `seatd.v1.ErrorReason` detail with a stable
//! reason (`seatd_proto::reason`): the seats of a conflict in `seat_ids`, the limit of
//! LIMIT_EXCEEDED in `limit`. Programs match on the reason; nobody parses messages.
//!
//! A request over one of the absolute caps (`raft_store::limits`) is INVALID_ARGUMENT
//! whether the entry check or the state machine found it, with the limit in words
//! ("limit SEATS_PER_HOLD_CAP exceeded: ...") and in the detail (reason
//! `LIMIT_EXCEEDED`, with a `LimitExceeded` naming it).

use prost::Message;
use raft_store::{Exceeded, Refusal};
use seatd_proto::reason;
use tonic::{Code, Status};

/// A commit's idempotency key was already used with another hold (INVALID_ARGUMENT).
pub const REASON_KEY_REUSED: &str = reason::IDEMPOTENCY_KEY_REUSED;
/// The request is over one of the limits; the detail's `limit` says which.
pub const REASON_LIMIT_EXCEEDED: &str = reason::LIMIT_EXCEEDED;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The request is over one of the absolute caps; refused before it was proposed.
    #[error(transparent)]
    Limit(#[from] Exceeded),
    /// The state machine refused the command (a replicated decision).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No leader for the shard answered in time, or the outcome is unknown; the caller
    /// may retry with the same keys.
    #[error("{0}")]
    Unavailable(String),
    /// This replica stopped leading the shard while serving the call; the router
    /// tries again at the new leader. Never reaches a client as such.
    #[error("not the leader of the shard")]
    NotLeader,
    /// Too many calls queued for a shard: admission control.
    #[error("{0}")]
    Overloaded(String),
    /// The caller asked for more than its share (holds per user per second).
    #[error("{0}")]
    RateLimited(String),
    /// No valid bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role may not make this call.
    #[error("{0}")]
    PermissionDenied(String),
    /// A status from the node a call was forwarded to, passed on unchanged.
    #[error("{}", .0.message())]
    Remote(tonic::Status),
    /// A bug (a task panicked, an answer does not fit its call, the state machine
    /// replied with the wrong kind of reply): not worth retrying.
    #[error("{0}")]
    Internal(String),
    /// Storage failed while serving the call.
    #[error(transparent)]
    Store(#[from] raft_store::Error),
}

/// Why a process (a node, a frontend, `seatd dev`) could not start, or an offline
/// command (`seatd certs`, `seatd reform`) failed, or a file the node keeps (its
/// identity, its rejoin gates) could not be written: never the outcome of a call.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work (flags, certificates, a data dir of another
    /// node).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] raft_store::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The cluster did not answer in time while starting (a frontend's discovery,
    /// `seatd dev`'s first leaders).
    #[error("{0}")]
    Unavailable(String),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) => status(Code::InvalidArgument, m, reason::INVALID),
            Error::Limit(e) => limit_status(e),
            Error::Refused(r) => refusal_status(r),
            Error::Unavailable(m) => status(Code::Unavailable, m, reason::UNAVAILABLE),
            Error::NotLeader => status(
                Code::Unavailable,
                "leadership changed; retry".into(),
                reason::UNAVAILABLE,
            ),
            Error::Overloaded(m) => status(Code::ResourceExhausted, m, reason::OVERLOADED),
            Error::RateLimited(m) => status(Code::ResourceExhausted, m, reason::RATE_LIMITED),
            Error::Remote(s) => s,
            Error::Internal(m) => status(Code::Internal, m, reason::INTERNAL),
            Error::Unauthenticated(m) => status(Code::Unauthenticated, m, reason::UNAUTHENTICATED),
            Error::PermissionDenied(m) => {
                status(Code::PermissionDenied, m, reason::PERMISSION_DENIED)
            }
            Error::Store(e) => status(Code::Internal, format!("storage: {e}"), reason::INTERNAL),
        }
    }
}

/// A status with its `ErrorReason` detail.
fn status(code: Code, message: String, reason: &str) -> Status {
    with_reason(code, message, pb_reason(reason))
}

fn pb_reason(reason: &str) -> seatd_proto::v1::ErrorReason {
    seatd_proto::v1::ErrorReason {
        reason: reason.into(),
        ..Default::default()
    }
}

fn with_reason(code: Code, message: String, detail: seatd_proto::v1::ErrorReason) -> Status {
    Status::with_details(code, message, detail.encode_to_vec().into())
}

impl Error {
    /// The state machine answered a command with a reply of another kind: a bug, so
    /// not worth retrying (a retry with the same keys gets the same reply).
    pub(crate) fn unexpected(reply: raft_store::Reply) -> Error {
        Error::Internal(format!(
            "unexpected reply from the state machine: {reply:?}"
        ))
    }
}

impl From<seatd_wire::Invalid> for Error {
    fn from(e: seatd_wire::Invalid) -> Self {
        match e {
            seatd_wire::Invalid::Input(m) => Error::Invalid(m),
            seatd_wire::Invalid::Limit(e) => Error::Limit(e),
        }
    }
}

fn refusal_status(r: Refusal) -> Status {
    match r {
        Refusal::Invalid(m) => status(Code::InvalidArgument, m, reason::INVALID),
        Refusal::NotFound(m) => status(Code::NotFound, m, reason::NOT_FOUND),
        Refusal::Conflict { seats } => {
            let message = format!("seats unavailable: {}", seats.join(","));
            let detail = seatd_proto::v1::ErrorReason {
                seat_ids: seats,
                ..pb_reason(reason::CONFLICT)
            };
            with_reason(Code::Aborted, message, detail)
        }
        Refusal::Expired => status(
            Code::FailedPrecondition,
            "expired: the hold expired".into(),
            reason::EXPIRED,
        ),
        Refusal::Declined(m) => status(
            Code::FailedPrecondition,
            format!("payment declined: {m}"),
            reason::DECLINED,
        ),
        Refusal::WrongState(m) => status(Code::FailedPrecondition, m, reason::WRONG_STATE),
        Refusal::KeyReused => status(
            Code::InvalidArgument,
            "idempotency key already used with another hold: use a new key for each hold".into(),
            reason::IDEMPOTENCY_KEY_REUSED,
        ),
        Refusal::Limit(e) => limit_status(e),
    }
}

/// INVALID_ARGUMENT naming the limit, in the message and in a `LimitExceeded` detail.
fn limit_status(e: Exceeded) -> Status {
    let detail = seatd_proto::v1::ErrorReason {
        limit: Some(seatd_proto::v1::LimitExceeded {
            limit: e.limit.name().to_string(),
            max: e.max,
            actual: e.actual,
        }),
        ..pb_reason(reason::LIMIT_EXCEEDED)
    };
    with_reason(Code::InvalidArgument, e.to_string(), detail)
}

/// The `ErrorReason` detail of a status seatd made, if it has one.
pub fn reason_of(status: &Status) -> Option<seatd_proto::v1::ErrorReason> {
    seatd_proto::v1::ErrorReason::decode(status.details())
        .ok()
        .filter(|r| !r.reason.is_empty())
}

/// The limit named in a LIMIT_EXCEEDED status's detail.
pub fn limit_exceeded(status: &Status) -> Option<seatd_proto::v1::LimitExceeded> {
    reason_of(status)
        .filter(|r| r.reason == REASON_LIMIT_EXCEEDED)
        .and_then(|r| r.limit)
}

/// The reason code in an INVALID_ARGUMENT status's `ErrorReason` detail other than
/// plain INVALID (which every bad input has): what a program must tell apart.
pub fn error_reason(status: &Status) -> Option<String> {
    if status.code() != Code::InvalidArgument {
        return None;
    }
    reason_of(status)
        .map(|r| r.reason)
        .filter(|r| r != reason::INVALID)
}

/// The seats named in a CONFLICT status's detail.
pub fn conflict_seats(status: &Status) -> Option<Vec<String>> {
    reason_of(status)
        .filter(|r| r.reason == reason::CONFLICT)
        .map(|r| r.seat_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_the_briefs_codes_with_a_reason_each() {
        let cases = [
            (
                Refusal::Invalid("x".into()),
                Code::InvalidArgument,
                reason::INVALID,
            ),
            (
                Refusal::NotFound("x".into()),
                Code::NotFound,
                reason::NOT_FOUND,
            ),
            (Refusal::Expired, Code::FailedPrecondition, reason::EXPIRED),
            (
                Refusal::Declined("no".into()),
                Code::FailedPrecondition,
                reason::DECLINED,
            ),
            (
                Refusal::WrongState("x".into()),
                Code::FailedPrecondition,
                reason::WRONG_STATE,
            ),
            (
                Refusal::KeyReused,
                Code::InvalidArgument,
                reason::IDEMPOTENCY_KEY_REUSED,
            ),
            (
                Refusal::Conflict {
                    seats: vec!["A-1".into()],
                },
                Code::Aborted,
                reason::CONFLICT,
            ),
        ];
        for (r, code, why) in cases {
            let s = Status::from(Error::from(r));
            assert_eq!(s.code(), code);
            assert_eq!(reason_of(&s).unwrap().reason, why, "{s:?}");
        }
        let s = Status::from(Error::from(Refusal::KeyReused));
        assert_eq!(error_reason(&s).as_deref(), Some(REASON_KEY_REUSED));
        let other = Status::from(Error::from(Refusal::Invalid("x".into())));
        assert_eq!(error_reason(&other), None);
        let s = Status::from(Error::from(Refusal::Conflict {
            seats: vec!["A-1".into(), "A-2".into()],
        }));
        assert_eq!(s.code(), Code::Aborted);
        assert!(s.message().contains("A-1,A-2"));
        assert_eq!(conflict_seats(&s).unwrap(), vec!["A-1", "A-2"]);
        let errors = [
            (
                Error::Overloaded("busy".into()),
                Code::ResourceExhausted,
                reason::OVERLOADED,
            ),
            (
                Error::RateLimited("slow".into()),
                Code::ResourceExhausted,
                reason::RATE_LIMITED,
            ),
            (
                Error::Unavailable("no leader".into()),
                Code::Unavailable,
                reason::UNAVAILABLE,
            ),
            (Error::NotLeader, Code::Unavailable, reason::UNAVAILABLE),
            (
                Error::Invalid("bad".into()),
                Code::InvalidArgument,
                reason::INVALID,
            ),
            (
                Error::Internal("bug".into()),
                Code::Internal,
                reason::INTERNAL,
            ),
        ];
        for (e, code, why) in errors {
            let s = Status::from(e);
            assert_eq!(
                (s.code(), reason_of(&s).unwrap().reason.as_str()),
                (code, why)
            );
        }
        // A status passed on from another node is not touched.
        let remote = Status::with_details(Code::NotFound, "gone", vec![1u8, 2].into());
        let passed = Status::from(Error::Remote(remote));
        assert_eq!(passed.details(), &[1u8, 2][..]);
    }

    #[test]
    fn limits_are_invalid_argument_with_the_limit_named_in_a_detail() {
        use raft_store::Limit;
        let over = Limit::SeatsPerHold.exceeded(500_000);
        for s in [
            tonic::Status::from(Error::Limit(over.clone())),
            tonic::Status::from(Error::from(Refusal::Limit(over))),
        ] {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message().starts_with("limit SEATS_PER_HOLD_CAP exceeded"));
            let detail = limit_exceeded(&s).unwrap();
            assert_eq!(detail.limit, "SEATS_PER_HOLD_CAP");
            assert_eq!((detail.max, detail.actual), (100, 500_000));
        }
        assert!(limit_exceeded(&tonic::Status::invalid_argument("bad")).is_none());
        // The two reasons share one detail type and are never taken for each other.
        let s = tonic::Status::from(Error::Limit(Limit::SeatsPerHold.exceeded(101)));
        assert_eq!(error_reason(&s).as_deref(), Some(REASON_LIMIT_EXCEEDED));
        let reused = tonic::Status::from(Error::from(Refusal::KeyReused));
        assert!(limit_exceeded(&reused).is_none());
    }
}
