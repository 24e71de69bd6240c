//! The crate's error type: everything that is a fault rather than a decision.
//!
//! Refusals of commands (a seat taken, a hold expired) are not errors: they are
//! replicated outcomes, see [`crate::command::Refusal`].

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An id given by a caller does not parse.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// Bytes that should hold an encoded value do not.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// A data directory cannot be used; the reason says why.
    #[error("{}: {reason}", path.display())]
    Open {
        path: std::path::PathBuf,
        reason: String,
    },
    /// RocksDB failed on a data directory.
    #[cfg(feature = "storage")]
    #[error("{}: {source}", path.display())]
    Db {
        path: std::path::PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    /// A write the store makes behind its callers failed (a group's state machine
    /// records, now or at an earlier entry), or the group can no longer write (it
    /// was dropped or opened again). The group stops until the node restarts.
    #[error("{}: write failed: {reason}", path.display())]
    Write {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Bytes written by a format this build does not read.
    #[error("{what} has format version {found}; this build reads version {supported}")]
    UnsupportedFormat {
        what: &'static str,
        found: u16,
        supported: u16,
    },
}
