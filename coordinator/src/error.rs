//! The coordinator's error type, and the one place where errors and refusals become
//! gRPC status codes.
//!
//! The codes follow the product brief: a seat taken is ABORTED (the seats in the
//! message and in a `seatd.v1.Conflict` detail), rate limited is RESOURCE_EXHAUSTED,
//! an expired hold is FAILED_PRECONDITION with a message starting "expired", bad input
//! is INVALID_ARGUMENT, an unknown id is NOT_FOUND, and "no leader in time" (or a node
//! shutting down) is UNAVAILABLE, which clients may retry with the same keys.
//!
//! Bad input a program must tell apart from other bad input carries a stable reason
//! code in a `seatd.v1.ErrorReason` detail (the `REASON_*` constants), so nobody has
//! to parse messages.
//!
//! A request over one of the absolute caps (`raft_store::limits`) is INVALID_ARGUMENT
//! whether the entry check or the state machine found it, with the limit in words
//! ("limit SEATS_PER_HOLD_CAP exceeded: ...") and in the `ErrorReason` detail
//! (reason `LIMIT_EXCEEDED`, with a `LimitExceeded` naming it) that programs match on.

use prost::Message;
use raft_store::{Exceeded, Refusal};

/// A commit's idempotency key was already used with another hold (INVALID_ARGUMENT).
pub const REASON_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
/// The request is over one of the limits; the detail's `limit` says which.
pub const REASON_LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";

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
    /// A status from the node a call was forwarded to, passed on unchanged.
    #[error("{}", .0.message())]
    Remote(tonic::Status),
    /// The node's configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// A bug (a task panicked, an answer does not fit its call, the state machine
    /// replied with the wrong kind of reply): not worth retrying.
    #[error("{0}")]
    Internal(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] raft_store::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::{Code, Status};
        match e {
            Error::Invalid(m) => Status::invalid_argument(m),
            Error::Limit(e) => limit_status(e),
            Error::Refused(r) => refusal_status(r),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::NotLeader => Status::unavailable("leadership changed; retry"),
            Error::Overloaded(m) => Status::resource_exhausted(m),
            Error::Remote(s) => s,
            Error::Config(m) | Error::Internal(m) => Status::new(Code::Internal, m),
            Error::Store(e) => Status::internal(format!("storage: {e}")),
            Error::Io(e) => Status::internal(e.to_string()),
        }
    }
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

impl From<crate::proposer::ProposeError> for Error {
    fn from(e: crate::proposer::ProposeError) -> Self {
        use crate::proposer::ProposeError as P;
        match e {
            P::NotLeader(_) => Error::NotLeader,
            P::TooLarge(e) => Error::Limit(e),
            P::Overloaded(_) => Error::Overloaded(e.to_string()),
            P::Unavailable(m) => Error::Unavailable(m),
        }
    }
}

fn refusal_status(r: Refusal) -> tonic::Status {
    use tonic::{Code, Status};
    match r {
        Refusal::Invalid(m) => Status::invalid_argument(m),
        Refusal::NotFound(m) => Status::not_found(m),
        Refusal::Conflict { seats } => {
            let message = format!("seats unavailable: {}", seats.join(","));
            let detail = seatd_proto::v1::Conflict { seat_ids: seats }.encode_to_vec();
            Status::with_details(Code::Aborted, message, detail.into())
        }
        Refusal::Expired => Status::failed_precondition("expired: the hold expired"),
        Refusal::Declined(m) => Status::failed_precondition(format!("payment declined: {m}")),
        Refusal::WrongState(m) => Status::failed_precondition(m),
        Refusal::KeyReused => {
            let detail = seatd_proto::v1::ErrorReason {
                reason: REASON_KEY_REUSED.into(),
                limit: None,
            }
            .encode_to_vec();
            Status::with_details(
                Code::InvalidArgument,
                "idempotency key already used with another hold: use a new key for each \
                 hold",
                detail.into(),
            )
        }
        Refusal::Limit(e) => limit_status(e),
    }
}

/// INVALID_ARGUMENT naming the limit, in the message and in a `LimitExceeded` detail.
fn limit_status(e: Exceeded) -> tonic::Status {
    let detail = seatd_proto::v1::ErrorReason {
        reason: REASON_LIMIT_EXCEEDED.into(),
        limit: Some(seatd_proto::v1::LimitExceeded {
            limit: e.limit.name().to_string(),
            max: e.max,
            actual: e.actual,
        }),
    };
    tonic::Status::with_details(
        tonic::Code::InvalidArgument,
        e.to_string(),
        detail.encode_to_vec().into(),
    )
}

/// The limit named in an INVALID_ARGUMENT status's `LimitExceeded` detail.
pub fn limit_exceeded(status: &tonic::Status) -> Option<seatd_proto::v1::LimitExceeded> {
    if status.code() != tonic::Code::InvalidArgument {
        return None;
    }
    let reason = seatd_proto::v1::ErrorReason::decode(status.details()).ok()?;
    reason
        .limit
        .filter(|_| reason.reason == REASON_LIMIT_EXCEEDED)
}

/// The reason code in an INVALID_ARGUMENT status's `ErrorReason` detail, if any.
pub fn error_reason(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::InvalidArgument {
        return None;
    }
    seatd_proto::v1::ErrorReason::decode(status.details())
        .ok()
        .map(|r| r.reason)
        .filter(|r| !r.is_empty())
}

/// The seats named in an ABORTED status's `Conflict` detail.
pub fn conflict_seats(status: &tonic::Status) -> Option<Vec<String>> {
    if status.code() != tonic::Code::Aborted {
        return None;
    }
    seatd_proto::v1::Conflict::decode(status.details())
        .ok()
        .map(|c| c.seat_ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn refusals_map_to_the_briefs_codes() {
        let cases = [
            (Refusal::Invalid("x".into()), Code::InvalidArgument),
            (Refusal::NotFound("x".into()), Code::NotFound),
            (Refusal::Expired, Code::FailedPrecondition),
            (Refusal::Declined("no".into()), Code::FailedPrecondition),
            (Refusal::WrongState("x".into()), Code::FailedPrecondition),
            (Refusal::KeyReused, Code::InvalidArgument),
        ];
        for (r, code) in cases {
            assert_eq!(tonic::Status::from(Error::from(r)).code(), code);
        }
        let s = tonic::Status::from(Error::from(Refusal::KeyReused));
        assert_eq!(error_reason(&s).as_deref(), Some(REASON_KEY_REUSED));
        let other = tonic::Status::from(Error::from(Refusal::Invalid("x".into())));
        assert_eq!(error_reason(&other), None);
        let s = tonic::Status::from(Error::from(Refusal::Expired));
        assert!(s.message().starts_with("expired"));
        let s = tonic::Status::from(Error::from(Refusal::Conflict {
            seats: vec!["A-1".into(), "A-2".into()],
        }));
        assert_eq!(s.code(), Code::Aborted);
        assert!(s.message().contains("A-1,A-2"));
        assert_eq!(conflict_seats(&s).unwrap(), vec!["A-1", "A-2"]);
        assert_eq!(
            tonic::Status::from(Error::Overloaded("busy".into())).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            tonic::Status::from(Error::Unavailable("no leader".into())).code(),
            Code::Unavailable
        );
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
