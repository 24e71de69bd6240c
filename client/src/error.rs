//! What a call can end in, as a caller acts on it.
//!
//! The server's gRPC codes (see the product brief) map onto these kinds one to one,
//! and `seatctl` maps them onto its exit codes and JSON error codes.
//!
//! Only [`Error::Unavailable`] is retried by the client: the codes that say "try again"
//! (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED) and a connection that failed under a
//! call. INTERNAL and UNKNOWN sent by a server are [`Error::Internal`]: a bug on the
//! server's side, which a retry with the same keys would only repeat. (tonic also
//! reports a connection that broke mid-call as INTERNAL or UNKNOWN, but such a status
//! is made by the client's own transport and carries the transport error as its
//! source; a status decoded from a server's answer never does.)

/// A failed call. Every variant carries the server's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bad input, or a command that does not fit the current state (a hold already
    /// committed, a payment declined). Retrying the same call gives the same answer.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Some seats are not available (or not at the version the caller saw).
    #[error("conflict: {message}")]
    Conflict { seats: Vec<String>, message: String },
    /// The hold expired before it could be used.
    #[error("expired: {0}")]
    Expired(String),
    /// No such event, hold or order.
    #[error("not found: {0}")]
    NotFound(String),
    /// The cluster is shedding load; try again later.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// No endpoint answered within the retry budget, or an outcome is unknown (a
    /// payment timed out). Retrying with the same keys is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server failed in a way that is not transient (INTERNAL, UNKNOWN, DATA_LOSS,
    /// UNIMPLEMENTED, or a code this client does not expect): not retried, since the
    /// same call would fail the same way. Whether the command took effect is unknown.
    #[error("internal: {0}")]
    Internal(String),
    /// No valid token: none sent, expired, or signed by a key the cluster does not
    /// trust.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The token's role may not make this call (a buyer creating an event, say).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl Error {
    /// The stable code `seatctl --json` prints.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::Conflict { .. } => "conflict",
            Error::Expired(_) => "expired",
            Error::NotFound(_) => "not_found",
            Error::RateLimited(_) => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
        }
    }

    /// `seatctl`'s exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_) => 2,
            Error::Conflict { .. } => 3,
            Error::Expired(_) => 4,
            Error::NotFound(_) => 5,
            Error::RateLimited(_) => 6,
            Error::Unavailable(_) => 7,
            Error::Internal(_) => 8,
            Error::Unauthenticated(_) => 9,
            Error::PermissionDenied(_) => 10,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::Invalid(m)
            | Error::Expired(m)
            | Error::NotFound(m)
            | Error::RateLimited(m)
            | Error::Unavailable(m)
            | Error::Internal(m)
            | Error::Unauthenticated(m)
            | Error::PermissionDenied(m) => m,
            Error::Conflict { message, .. } => message,
        }
    }

    /// Whether trying again (with the same keys) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::RateLimited(_))
    }

    /// The kind of a server status, from its code and the machine-readable reason
    /// seatd attaches (`seatd.v1.ErrorReason`); never from its message.
    pub fn from_status(status: &tonic::Status) -> Self {
        use seatd_proto::reason;
        use tonic::Code;
        let message = status.message().to_string();
        let detail: Option<seatd_proto::v1::ErrorReason> =
            prost::Message::decode(status.details()).ok();
        let why = detail
            .as_ref()
            .map(|r| r.reason.as_str())
            .filter(|r| !r.is_empty());
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Error::Invalid(message),
            Code::Aborted => Error::Conflict {
                seats: detail.map(|r| r.seat_ids).unwrap_or_default(),
                message,
            },
            Code::FailedPrecondition if why == Some(reason::EXPIRED) => Error::Expired(message),
            Code::FailedPrecondition => Error::Invalid(message),
            Code::NotFound => Error::NotFound(message),
            Code::ResourceExhausted => Error::RateLimited(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Error::Unavailable(format!("{:?}: {message}", status.code()))
            }
            Code::Internal | Code::Unknown if is_transport_failure(status) => {
                Error::Unavailable(format!("{:?}: {message}", status.code()))
            }
            _ => Error::Internal(format!("{:?}: {message}", status.code())),
        }
    }
}

/// Whether `status` was made by this client's transport for a connection that failed
/// under the call (tonic keeps the transport error as its source), rather than
/// decoded from a server's answer.
fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn with_reason(code: Code, message: &str, reason: &str) -> Status {
        let detail = prost::Message::encode_to_vec(&seatd_proto::v1::ErrorReason {
            reason: reason.into(),
            ..Default::default()
        });
        Status::with_details(code, message, detail.into())
    }

    #[test]
    fn statuses_map_to_kinds_and_exit_codes() {
        let cases = [
            (Status::invalid_argument("x"), "invalid", 2),
            (Status::aborted("x"), "conflict", 3),
            (
                with_reason(Code::FailedPrecondition, "gone", "EXPIRED"),
                "expired",
                4,
            ),
            // The message is never read: "expired" in words is not the reason.
            (Status::failed_precondition("expired: gone"), "invalid", 2),
            (
                with_reason(Code::FailedPrecondition, "payment declined", "DECLINED"),
                "invalid",
                2,
            ),
            (Status::not_found("x"), "not_found", 5),
            (Status::resource_exhausted("x"), "rate_limited", 6),
            (Status::unavailable("x"), "unavailable", 7),
            (Status::deadline_exceeded("x"), "unavailable", 7),
            (Status::cancelled("x"), "unavailable", 7),
            (Status::internal("x"), "internal", 8),
            (Status::unknown("x"), "internal", 8),
            (Status::data_loss("x"), "internal", 8),
            (Status::unimplemented("x"), "internal", 8),
        ];
        for (status, code, exit) in cases {
            let e = Error::from_status(&status);
            assert_eq!((e.code(), e.exit_code()), (code, exit), "{status:?}");
            let transient = code == "unavailable" || code == "rate_limited";
            assert_eq!(e.is_retryable(), transient, "{status:?}");
        }
        // The same codes made by the client's transport for a broken connection: the
        // call may not have reached a server, so it is tried again.
        let broken = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = Error::from_status(&Status::from_error(Box::new(broken)));
        assert_eq!(e.code(), "unavailable", "{e:?}");
        let detail = prost::Message::encode_to_vec(&seatd_proto::v1::ErrorReason {
            reason: "CONFLICT".into(),
            seat_ids: vec!["A-1".into()],
            limit: None,
        });
        let e = Error::from_status(&Status::with_details(
            Code::Aborted,
            "seats unavailable: A-1",
            detail.into(),
        ));
        assert_eq!(
            e,
            Error::Conflict {
                seats: vec!["A-1".into()],
                message: "seats unavailable: A-1".into()
            }
        );
    }
}
