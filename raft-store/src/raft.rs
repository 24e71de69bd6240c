//! seatd's openraft type configuration.
//!
//! A log entry's application data is a [`Batch`] of client commands stamped by the
//! leader, shared (`Arc`) so that the log store's cache of recent entries hands them
//! to replication and to the state machine without copying or decoding them again;
//! applying it answers one [`Outcome`] per command. Nodes are numbered and
//! reached at a plain address (`BasicNode`). Snapshots travel as in-memory buffers:
//! openraft sends them in chunks (`Config::snapshot_max_chunk_size`), and even a
//! 100,000-seat event encodes to a few MB. [`raft_config`] bounds every message by
//! `crate::limits` (entries per AppendEntries, snapshot chunk size).

use crate::command::{Batch, Outcome};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = std::sync::Arc<Batch>,
        R = Vec<Outcome>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// When a group snapshots its state machine and how much log it keeps behind the
/// snapshot. openraft purges the log up to `snapshot index − logs_kept_after_snapshot`
/// after each snapshot; a follower further behind than that is caught up by snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPolicy {
    /// Build a snapshot once this many entries were applied since the last one.
    pub logs_since_snapshot: u64,
    /// Entries kept behind a snapshot, so slightly lagging followers catch up from the log.
    pub logs_kept_after_snapshot: u64,
}

impl Default for LogPolicy {
    fn default() -> Self {
        Self {
            logs_since_snapshot: 10_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

/// How fast a group notices a dead leader.
///
/// openraft 0.9 makes a follower that heard from a leader wait out the leader's lease
/// (`election_ms_max`) plus a random election timeout in `[election_ms_min,
/// election_ms_max)` before it stands, so a killed leader is replaced after
/// `election_ms_max + [min, max)` plus one vote round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_ms_min: u64,
    pub election_ms_max: u64,
}

impl Default for RaftTiming {
    /// A dead leader is replaced in 1.5–2 s; a heartbeat every 150 ms gives a busy
    /// 2-core machine three chances inside the shortest timeout before a follower
    /// would call a spurious election.
    fn default() -> Self {
        Self {
            heartbeat_ms: 150,
            election_ms_min: 500,
            election_ms_max: 1_000,
        }
    }
}

/// The openraft configuration of one group under `policy` and `timing`, validated.
pub fn raft_config(
    cluster: &str,
    policy: LogPolicy,
    timing: RaftTiming,
) -> Result<std::sync::Arc<openraft::Config>, crate::Error> {
    if policy.logs_since_snapshot == 0 {
        return Err(crate::Error::Config(
            "logs_since_snapshot must be at least 1".into(),
        ));
    }
    let config = openraft::Config {
        cluster_name: cluster.to_string(),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(policy.logs_since_snapshot),
        max_in_snapshot_log_to_keep: policy.logs_kept_after_snapshot,
        // Purge in steps rather than after every entry.
        purge_batch_size: 64,
        // Byte bounds on every message the transport carries (`limits`): at most this
        // many entries of at most ENTRY_BYTES_MAX each per AppendEntries, snapshots in
        // chunks of SNAPSHOT_CHUNK_BYTES_MAX.
        max_payload_entries: crate::limits::ENTRIES_PER_APPEND_MAX as u64,
        snapshot_max_chunk_size: crate::limits::SNAPSHOT_CHUNK_BYTES_MAX as u64,
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_ms_min,
        election_timeout_max: timing.election_ms_max,
        ..Default::default()
    };
    let config = config
        .validate()
        .map_err(|e| crate::Error::Config(e.to_string()))?;
    Ok(std::sync::Arc::new(config))
}

/// Encodes an openraft message (request, response or error) for the wire. The
/// transport treats it as opaque bytes.
pub fn encode_message<T: serde::Serialize>(message: &T) -> Vec<u8> {
    postcard::to_stdvec(message).expect("openraft messages are plain data")
}

/// Decodes what [`encode_message`] wrote; a peer speaking nonsense gets an error.
pub fn decode_message<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, crate::Error> {
    postcard::from_bytes(bytes).map_err(|e| crate::Error::Corrupt {
        what: "raft message",
        detail: e.to_string(),
    })
}
