//! openraft's state machine storage for one group: the seat machine, applied through
//! the pure [`SeatMachine`] and persisted record by record.
//!
//! Invariants: each `apply` writes (in one atomic batch) the records its entries
//! changed, the last applied log id and the membership, so the records on disk always
//! equal the machine after a whole number of entries, and a restarted node resumes from
//! its last applied entry without replaying the log. The batch is written behind the
//! apply by the node's writer thread (`writer`): `apply` answers before the write is
//! done, and whatever reads the group's records from disk first waits for it (the next
//! apply, a snapshot, a reader looking for a cold hold), so every reader finds the
//! records of the machine it sees in memory.
//!
//! Memory holds only the machine's hot records; cold ones (released and expired
//! holds, request decisions, refused checkouts) are read back from RocksDB before an
//! entry that may need them is applied, and dropped again after (`machine::persist`).
//! A cold record dropped while its write is still in flight is found once that write
//! is done, which is why readers of the disk wait for it.
//! A new hold request, which has no record, is not looked for at all: a filter of
//! the request records on disk says so (`filter`).
//!
//! Retention (`machine::retention`): the machine purges records that only answer
//! retries once their retention ran out, and `take_changes` names them for deletion;
//! the same batch deletes them. The filter cannot forget a key, so a purged request
//! stays "maybe decided" there: its retry reads RocksDB, finds nothing and is decided
//! as new, which is the intended meaning of a retry after the retention. Nothing takes
//! "in the filter" for "decided": only a record read back decides.
//!
//! A snapshot is every record of the group, read from a RocksDB snapshot taken under
//! the state lock (so it matches the applied id exactly) and framed with a checksum;
//! the latest one is stored in the group's metadata so a restarted node can still serve
//! it. Installing a snapshot replaces the group's records in one atomic batch.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use super::blocking;
use super::filter::KeyFilter;
use super::writer::WriteSlot;
use super::{
    encode_record, group_range, prefixed, GroupId, Inner, CF_META, CF_SM, META_APPLIED,
    META_MEMBERSHIP, META_SNAPSHOT,
};
use crate::command::{Batch, HoldView, Outcome, Refusal};
use crate::ids::HoldId;
use crate::machine::{is_request_key, is_retention_key, Record, SeatMachine};
use crate::raft::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::Error;

struct SmState {
    machine: SeatMachine,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// A superset of the hold requests the group has decided on disk (see `filter`):
    /// fed by `record_batch`, which builds every batch of records, and by `load`.
    stored_requests: KeyFilter,
}

/// One group's state machine. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
    group: GroupId,
    state: Arc<RwLock<SmState>>,
    /// The group's record write in flight (shared by clones and readers).
    writes: Arc<WriteSlot>,
    snapshots_built: Arc<std::sync::atomic::AtomicU64>,
}

/// Read access to a group's seat machine, for serving reads.
#[derive(Clone)]
pub struct MachineReader {
    inner: Arc<Inner>,
    group: GroupId,
    state: Arc<RwLock<SmState>>,
    writes: Arc<WriteSlot>,
}

impl MachineReader {
    /// Runs `f` on the machine's in-memory (hot) state as of its last applied entry.
    pub fn read<T>(&self, f: impl FnOnce(&SeatMachine) -> T) -> T {
        f(&read_lock(&self.state).machine)
    }

    /// A hold, including one whose record is only on disk.
    pub fn hold(&self, id: &HoldId) -> Result<Result<HoldView, Refusal>, Error> {
        let st = read_lock(&self.state);
        st.machine.hold_or_stored(id, |k| {
            // A hold evicted by the last apply is on disk once its write is done.
            settle(&self.inner, &self.writes)?;
            self.inner.get_sm(self.group, k)
        })
    }
}

/// Waits for `writes` (see the module doc); the error of any failed write.
fn settle(inner: &Inner, writes: &WriteSlot) -> Result<(), Error> {
    writes.settle().map_err(|reason| inner.write_failed(reason))
}

fn read_lock(state: &RwLock<SmState>) -> RwLockReadGuard<'_, SmState> {
    // A panic while applying is a bug that already stopped this node's Raft; readers
    // still see the last complete state.
    state.read().unwrap_or_else(|p| p.into_inner())
}

const SNAPSHOT_MAGIC: [u8; 4] = *b"SSR1";
/// Version 2 may hold the retention queue's records (`machine::persist`); version 3
/// holds records with the id keys and actors of issue 20, which older builds cannot
/// read and this build cannot read from them: each refuses the other's snapshot by
/// its version instead of misreading it.
const SNAPSHOT_VERSION: u16 = 3;
const SNAPSHOT_VERSION_OLDEST: u16 = 3;

/// A snapshot's data: every record of the group, framed and checksummed.
fn encode_snapshot_records(records: &[Record]) -> Vec<u8> {
    crate::codec::encode_framed(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, &records)
}

fn decode_snapshot_records(data: &[u8]) -> Result<Vec<Record>, Error> {
    // The payload is the same list of records in both versions.
    crate::codec::decode_framed_versions(
        "snapshot",
        SNAPSHOT_MAGIC,
        SNAPSHOT_VERSION_OLDEST..=SNAPSHOT_VERSION,
        data,
    )
    .map(|(records, _)| records)
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
        // A store opened for the group before has its last write on disk and can
        // write no more once this returns.
        let writes = inner.writer.open_group(group);
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
        // Streamed: cold records are checked and dropped as they are read, so a long
        // history does not have to fit in memory at startup.
        let mut failed = None;
        let mut stored_requests = KeyFilter::new(&inner.filters);
        let records = it
            .map_while(|item| match item {
                Ok((k, v)) => Some((k[4..].to_vec(), v)),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            })
            .inspect(|(k, _)| {
                if is_request_key(k) {
                    stored_requests.insert(k);
                }
            });
        let machine = SeatMachine::load_records(records);
        if let Some(e) = failed {
            return Err(super::db_error(&inner.path, e));
        }
        let machine = machine?;
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
                stored_requests,
            })),
            writes,
            snapshots_built: Default::default(),
        })
    }

    /// The membership the applied entries left in force.
    pub fn membership(&self) -> crate::raft::StoredMembership {
        read_lock(&self.state).membership.clone()
    }

    pub fn reader(&self) -> MachineReader {
        MachineReader {
            inner: self.inner.clone(),
            group: self.group,
            state: self.state.clone(),
            writes: self.writes.clone(),
        }
    }

    /// Reads back the cold records applying `batch` may need. A request the filter has
    /// never seen has no record to read.
    fn warm_for(
        &self,
        machine: &mut SeatMachine,
        stored_requests: &KeyFilter,
        batch: &Batch,
    ) -> Result<(), Error> {
        let mut tried = std::collections::BTreeSet::new();
        // Each round can only reveal records the previous one found (a request's
        // hold), so a few rounds always suffice, and a round that found nothing ends
        // it (the usual case: new requests have no record).
        for _ in 0..4 {
            let mut keys = machine.cold_keys(batch);
            keys.retain(|k| {
                !tried.contains(k) && (!is_request_key(k) || stored_requests.may_contain(k))
            });
            if keys.is_empty() {
                return Ok(());
            }
            let cf = self.inner.cf(CF_SM);
            let full: Vec<Vec<u8>> = keys.iter().map(|k| prefixed(self.group, k)).collect();
            let values = self.inner.db.multi_get_cf(full.iter().map(|k| (cf, k)));
            let mut found = Vec::new();
            for (k, v) in keys.iter().zip(values) {
                match v.map_err(|e| super::db_error(&self.inner.path, e))? {
                    Some(v) => found.push((k.clone(), v)),
                    // The queue's entries between its head and tail are all stored: a
                    // purge must never run without the one it needs.
                    None if is_retention_key(k) => {
                        return Err(Error::Corrupt {
                            what: "state machine records",
                            detail: format!(
                                "group {}: a retention queue entry is missing",
                                self.group
                            ),
                        })
                    }
                    None => {}
                }
            }
            if found.is_empty() {
                return Ok(());
            }
            // Only a round that found something needs another, which must skip these.
            tried.extend(keys);
            machine.warm(found)?;
        }
        Err(Error::Corrupt {
            what: "state machine records",
            detail: "cold records keep naming further records".into(),
        })
    }

    /// Every record of the group, as of a RocksDB snapshot.
    fn stored_records(&self, snapshot: &rocksdb::Snapshot<'_>) -> Result<Vec<Record>, Error> {
        let (from, to) = group_range(self.group);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(to);
        ro.set_snapshot(snapshot);
        let it = self.inner.db.iterator_cf_opt(
            self.inner.cf(CF_SM),
            ro,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut records = Vec::new();
        for item in it {
            let (k, v) = item.map_err(|e| super::db_error(&self.inner.path, e))?;
            records.push((k[4..].to_vec(), v.to_vec()));
        }
        Ok(records)
    }

    /// The batch that writes the machine's changed records and deletes its purged ones
    /// (disjoint keys) with the applied id and membership (after deleting all of the
    /// group's records, with `wipe`). The only place record batches are built, so the
    /// only place a request record can head for the disk: its key enters
    /// `stored_requests` here, before any apply can look for it (the filter's
    /// invariant). A deleted key stays in the filter, which only costs a read.
    fn record_batch(
        &self,
        stored_requests: &mut KeyFilter,
        membership: &StoredMembership,
        last_applied: Option<&LogId>,
        records: Vec<crate::machine::Record>,
        deletes: Vec<Vec<u8>>,
        wipe: bool,
    ) -> WriteBatch {
        let mut batch = WriteBatch::default();
        let sm = self.inner.cf(CF_SM);
        if wipe {
            let (from, to) = group_range(self.group);
            batch.delete_range_cf(sm, from, to);
        }
        for k in deletes {
            batch.delete_cf(sm, prefixed(self.group, &k));
        }
        for (k, v) in records {
            if is_request_key(&k) {
                stored_requests.insert(&k);
            }
            batch.put_cf(sm, prefixed(self.group, &k), v);
        }
        let meta = self.inner.cf(CF_META);
        batch.put_cf(
            meta,
            prefixed(self.group, &[META_MEMBERSHIP]),
            encode_record(membership),
        );
        match last_applied {
            Some(l) => batch.put_cf(
                meta,
                prefixed(self.group, &[META_APPLIED]),
                encode_record(l),
            ),
            None => batch.delete_cf(meta, prefixed(self.group, &[META_APPLIED])),
        }
        batch
    }

    fn store_snapshot(&self, snap: &StoredSnapshot) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        let key = prefixed(self.group, &[META_SNAPSHOT]);
        batch.put_cf(self.inner.cf(CF_META), key, encode_record(snap));
        self.write_now(batch)
    }

    /// Writes `batch` through the group's slot (after its write in flight) and waits
    /// for it: a group dropped or opened again meanwhile writes nothing, and a failure
    /// is sticky like an apply's.
    fn write_now(&self, batch: WriteBatch) -> Result<(), Error> {
        self.inner
            .writer
            .submit(&self.writes, batch)
            .and_then(|()| self.writes.settle())
            .map_err(|reason| self.inner.write_failed(reason))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    // openraft's StorageError, which its storage traits return, is large by design.
    #[allow(clippy::result_large_err)]
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        blocking(move || this.build_snapshot_now()).await
    }
}

impl StateMachineStore {
    // openraft's StorageError, which its storage traits return, is large by design.
    #[allow(clippy::result_large_err)]
    fn build_snapshot_now(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // The RocksDB snapshot is taken under the state lock, so its records are
        // exactly those of `last_applied`; reading them needs no lock.
        let (data, last_applied, membership) = {
            let st = read_lock(&self.state);
            // No apply runs while the lock is held; the last one's write must land.
            settle(&self.inner, &self.writes).map_err(|e| sm_io(ErrorVerb::Read, e))?;
            let db_snapshot = self.inner.db.snapshot();
            let meta = (st.last_applied, st.membership.clone());
            drop(st);
            let records = self
                .stored_records(&db_snapshot)
                .map_err(|e| sm_io(ErrorVerb::Read, e))?;
            (encode_snapshot_records(&records), meta.0, meta.1)
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

    // openraft's StorageError, which its storage traits return, is large by design.
    #[allow(clippy::result_large_err)]
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let this = self.clone();
        blocking(move || this.apply_now(entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    // openraft's StorageError, which its storage traits return, is large by design.
    #[allow(clippy::result_large_err)]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let this = self.clone();
        let meta = meta.clone();
        blocking(move || this.install_snapshot_now(&meta, snapshot.into_inner())).await
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

impl StateMachineStore {
    /// `apply`'s work, on a blocking thread.
    // openraft's StorageError, which its storage traits return, is large by design.
    #[allow(clippy::result_large_err)]
    fn apply_now(&self, entries: Vec<Entry>) -> Result<Vec<Vec<Outcome>>, StorageError> {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        // Cold records the last apply dropped are read back from disk below.
        settle(&self.inner, &self.writes).map_err(|e| sm_io(ErrorVerb::Write, e))?;
        let mut replies = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            match entry.payload {
                EntryPayload::Blank => {
                    st.machine.apply_empty(index);
                    replies.push(Vec::new());
                }
                EntryPayload::Normal(batch) => {
                    self.warm_for(&mut st.machine, &st.stored_requests, &batch)
                        .map_err(|e| sm_io(ErrorVerb::Read, e))?;
                    replies.push(st.machine.apply(index, &batch));
                }
                EntryPayload::Membership(m) => {
                    st.machine.apply_empty(index);
                    st.membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(Vec::new());
                }
            }
            st.last_applied = Some(entry.log_id);
        }
        let changes = st.machine.take_changes();
        let batch = self.record_batch(
            &mut st.stored_requests,
            &st.membership,
            st.last_applied.as_ref(),
            changes.puts,
            changes.deletes,
            false,
        );
        self.inner
            .writer
            .submit(&self.writes, batch)
            .map_err(|reason| sm_io(ErrorVerb::Write, self.inner.write_failed(reason)))?;
        // Being written: what only answers retries can leave memory (readers of the
        // disk wait for the write).
        st.machine.evict_cold();
        Ok(replies)
    }
}

impl StateMachineStore {
    /// `install_snapshot`'s work, on a blocking thread.
    // openraft's StorageError, which its storage traits return, is large by design.
    #[allow(clippy::result_large_err)]
    fn install_snapshot_now(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
        let read_err = |e: Error| -> StorageError {
            StorageIOError::read_snapshot(Some(meta.signature()), &e).into()
        };
        let records = decode_snapshot_records(&data).map_err(read_err)?;
        let machine =
            SeatMachine::load_records(records.iter().map(|(k, v)| (k, v))).map_err(read_err)?;
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
        let write_err = |e: Error| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        // Behind the last apply's write; memory changes only once the records did. The
        // snapshot's records replace the group's, so the filter starts afresh.
        let mut stored_requests = KeyFilter::new(&self.inner.filters);
        let batch = self.record_batch(
            &mut stored_requests,
            &meta.last_membership,
            meta.last_log_id.as_ref(),
            records,
            Vec::new(),
            true,
        );
        self.write_now(batch).map_err(write_err)?;
        st.machine = machine;
        st.stored_requests = stored_requests;
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        self.store_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .map_err(write_err)?;
        Ok(())
    }
}
