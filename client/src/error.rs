//! What a call can end in, as a caller acts on it.
//!
//! The server's gRPC codes (see the product brief) map onto these kinds one to one,
//! and `seatctl` maps them onto its exit codes and JSON error codes.

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
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::Invalid(m)
            | Error::Expired(m)
            | Error::NotFound(m)
            | Error::RateLimited(m)
            | Error::Unavailable(m) => m,
            Error::Conflict { message, .. } => message,
        }
    }

    /// Whether trying again (with the same keys) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::RateLimited(_))
    }

    /// The kind of a server status.
    pub fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Error::Invalid(message),
            Code::Aborted => {
                let seats = prost::Message::decode(status.details())
                    .map(|c: seatd_proto::v1::Conflict| c.seat_ids)
                    .unwrap_or_default();
                Error::Conflict { seats, message }
            }
            Code::FailedPrecondition if message.starts_with("expired") => Error::Expired(message),
            Code::FailedPrecondition => Error::Invalid(message),
            Code::NotFound => Error::NotFound(message),
            Code::ResourceExhausted => Error::RateLimited(message),
            _ => Error::Unavailable(format!("{:?}: {message}", status.code())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn statuses_map_to_kinds_and_exit_codes() {
        let cases = [
            (Status::invalid_argument("x"), "invalid", 2),
            (Status::aborted("x"), "conflict", 3),
            (Status::failed_precondition("expired: gone"), "expired", 4),
            (
                Status::failed_precondition("payment declined"),
                "invalid",
                2,
            ),
            (Status::not_found("x"), "not_found", 5),
            (Status::resource_exhausted("x"), "rate_limited", 6),
            (Status::unavailable("x"), "unavailable", 7),
            (Status::deadline_exceeded("x"), "unavailable", 7),
        ];
        for (status, code, exit) in cases {
            let e = Error::from_status(&status);
            assert_eq!((e.code(), e.exit_code()), (code, exit), "{status:?}");
        }
        let detail = prost::Message::encode_to_vec(&seatd_proto::v1::Conflict {
            seat_ids: vec!["A-1".into()],
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
