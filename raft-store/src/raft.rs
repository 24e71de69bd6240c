//! seatd's openraft type configuration.
//!
//! A log entry's application data is a [`Batch`] of client commands stamped by the
//! leader; applying it answers one [`Outcome`] per command. Nodes are numbered and
//! reached at a plain address (`BasicNode`). Snapshots travel as in-memory buffers:
//! openraft sends them in chunks (`Config::snapshot_max_chunk_size`), and even a
//! 100,000-seat event encodes to a few MB.

use crate::command::{Batch, Outcome};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
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
