//! openraft's state machine storage for one group: the seat machine, applied through
//! the pure [`SeatMachine`] and persisted record by record.
//!
//! Invariants: after `apply` returns, RocksDB holds (in one atomic batch) the records
//! the entries changed, the last applied log id and the membership, so the records on
//! disk always equal the machine after a whole number of entries, and a restarted node
//! resumes from its last applied entry without replaying the log. The in-memory
//! machine behind the lock always equals those records.
//!
//! Snapshots are the machine's canonical encoding (`codec`), built under the read lock
//! so they are consistent while applies continue; the latest one is stored in the
//! group's metadata so a restarted node can still serve it. Installing a snapshot
//! replaces the group's records in one atomic batch.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use super::{
    encode_record, group_range, prefixed, GroupId, Inner, CF_META, CF_SM, META_APPLIED,
    META_MEMBERSHIP, META_SNAPSHOT,
};
use crate::command::Outcome;
use crate::machine::SeatMachine;
use crate::raft::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::Error;

struct SmState {
    machine: SeatMachine,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// One group's state machine. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
    group: GroupId,
    state: Arc<RwLock<SmState>>,
    snapshots_built: Arc<std::sync::atomic::AtomicU64>,
}

/// Read access to a group's seat machine, for serving reads.
#[derive(Clone)]
pub struct MachineReader {
    state: Arc<RwLock<SmState>>,
}

impl MachineReader {
    /// Runs `f` on the machine as of its last applied entry.
    pub fn read<T>(&self, f: impl FnOnce(&SeatMachine) -> T) -> T {
        f(&read_lock(&self.state).machine)
    }
}

fn read_lock(state: &RwLock<SmState>) -> RwLockReadGuard<'_, SmState> {
    // A panic while applying is a bug that already stopped this node's Raft; readers
    // still see the last complete state.
    state.read().unwrap_or_else(|p| p.into_inner())
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

fn sm_io(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, &e).into()
}

impl StateMachineStore {
    pub(crate) fn load(inner: Arc<Inner>, group: GroupId) -> Result<Self, Error> {
        let last_applied: Option<LogId> = inner.get_meta(group, META_APPLIED)?;
        let membership: StoredMembership =
            inner.get_meta(group, META_MEMBERSHIP)?.unwrap_or_default();
        let (from, to) = group_range(group);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(to);
        let it = inner.db.iterator_cf_opt(
            inner.cf(CF_SM),
            ro,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut records = Vec::new();
        for item in it {
            let (k, v) = item.map_err(|e| super::db_error(&inner.path, e))?;
            records.push((k[4..].to_vec(), v.to_vec()));
        }
        let machine = SeatMachine::load_records(records)?;
        let want = last_applied.map(|l| l.index);
        if machine.applied_index() != want {
            return Err(Error::Corrupt {
                what: "state machine records",
                detail: format!(
                    "group {group}: records are at index {:?} but the applied log id says {want:?}",
                    machine.applied_index()
                ),
            });
        }
        Ok(Self {
            inner,
            group,
            state: Arc::new(RwLock::new(SmState {
                machine,
                last_applied,
                membership,
            })),
            snapshots_built: Default::default(),
        })
    }

    pub fn reader(&self) -> MachineReader {
        MachineReader {
            state: self.state.clone(),
        }
    }

    /// Writes the machine's changed records with the applied id and membership.
    fn persist(
        &self,
        st: &mut SmState,
        records: Vec<crate::machine::Record>,
        wipe: bool,
    ) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        let sm = self.inner.cf(CF_SM);
        if wipe {
            let (from, to) = group_range(self.group);
            batch.delete_range_cf(sm, from, to);
        }
        for (k, v) in records {
            batch.put_cf(sm, prefixed(self.group, &k), v);
        }
        let meta = self.inner.cf(CF_META);
        batch.put_cf(
            meta,
            prefixed(self.group, &[META_MEMBERSHIP]),
            encode_record(&st.membership),
        );
        match &st.last_applied {
            Some(l) => batch.put_cf(
                meta,
                prefixed(self.group, &[META_APPLIED]),
                encode_record(l),
            ),
            None => batch.delete_cf(meta, prefixed(self.group, &[META_APPLIED])),
        }
        self.inner.write(batch, false)
    }

    fn store_snapshot(&self, snap: &StoredSnapshot) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        let key = prefixed(self.group, &[META_SNAPSHOT]);
        batch.put_cf(self.inner.cf(CF_META), key, encode_record(snap));
        self.inner.write(batch, false)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_applied, membership) = {
            let st = read_lock(&self.state);
            (st.machine.encode(), st.last_applied, st.membership.clone())
        };
        let n = self
            .snapshots_built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!(
                "{}-{}-{}-{n}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("empty-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };
        self.store_snapshot(&stored)
            .map_err(|e| sm_io(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = read_lock(&self.state);
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        let mut replies = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            match entry.payload {
                EntryPayload::Blank => {
                    st.machine.apply_empty(index);
                    replies.push(Vec::new());
                }
                EntryPayload::Normal(batch) => replies.push(st.machine.apply(index, &batch)),
                EntryPayload::Membership(m) => {
                    st.machine.apply_empty(index);
                    st.membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(Vec::new());
                }
            }
            st.last_applied = Some(entry.log_id);
        }
        let records = st.machine.take_changes();
        self.persist(st, records, false)
            .map_err(|e| sm_io(ErrorVerb::Write, e))?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let read_err = |e: Error| -> StorageError {
            StorageIOError::read_snapshot(Some(meta.signature()), &e).into()
        };
        let mut machine = SeatMachine::decode(&data).map_err(read_err)?;
        let want = meta.last_log_id.map(|l| l.index);
        if machine.applied_index() != want {
            return Err(read_err(Error::Corrupt {
                what: "snapshot",
                detail: format!(
                    "machine at index {:?} but snapshot meta says {want:?}",
                    machine.applied_index()
                ),
            }));
        }
        let records = machine.all_records();
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        st.machine = machine;
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        let write_err = |e: Error| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        self.persist(st, records, true).map_err(write_err)?;
        self.store_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .map_err(write_err)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let stored: Option<StoredSnapshot> = self
            .inner
            .get_meta(self.group, META_SNAPSHOT)
            .map_err(|e| sm_io(ErrorVerb::Read, e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
