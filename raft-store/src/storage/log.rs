//! openraft's log storage for one group: entries, vote, committed and purged ids.
//!
//! Invariants: entries of a group are contiguous from `last_purged + 1` to the last
//! log id; an append is acknowledged (its callback fired) only after a WAL sync that
//! covers it; `save_vote` and `truncate` return only once synced; `purge` records the
//! new last purged id in the same atomic batch that deletes the entries.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::{
    decode_record, encode_record, group_range, prefixed, GroupId, Inner, CF_LOG, CF_META,
    META_COMMITTED, META_PURGED, META_VOTE,
};
use crate::raft::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::Error;

/// One group's Raft log. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
    group: GroupId,
}

fn io(subject: ErrorSubject<u64>, verb: ErrorVerb, e: Error) -> StorageError {
    StorageIOError::new(subject, verb, &e).into()
}

impl LogStore {
    pub(crate) fn new(inner: Arc<Inner>, group: GroupId) -> Self {
        Self { inner, group }
    }

    fn log_key(&self, index: u64) -> Vec<u8> {
        prefixed(self.group, &index.to_be_bytes())
    }

    /// The last entry's log id, if the group has any entry.
    fn last_entry_id(&self) -> Result<Option<LogId>, Error> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(self.log_key(0));
        let from = self.log_key(u64::MAX);
        let mut it = self.inner.db.iterator_cf_opt(
            self.inner.cf(CF_LOG),
            ro,
            IteratorMode::From(&from, Direction::Reverse),
        );
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(super::db_error(&self.inner.path, e)),
            Some(Ok((_, v))) => {
                let entry: Entry = decode_record("log entry", &v)?;
                Ok(Some(entry.log_id))
            }
        }
    }

    fn read_range(&self, start: u64, end_exclusive: u64) -> Result<Vec<Entry>, Error> {
        if start >= end_exclusive {
            return Ok(Vec::new());
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(self.log_key(end_exclusive));
        let from = self.log_key(start);
        let it = self.inner.db.iterator_cf_opt(
            self.inner.cf(CF_LOG),
            ro,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item.map_err(|e| super::db_error(&self.inner.path, e))?;
            let entry: Entry = decode_record("log entry", &v)?;
            if k.as_ref() != self.log_key(entry.log_id.index).as_slice() {
                return Err(Error::Corrupt {
                    what: "log entry",
                    detail: format!("entry {} stored under another index", entry.log_id.index),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        self.read_range(start, end)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = |e| io(ErrorSubject::Logs, ErrorVerb::Read, e);
        let last_purged_log_id: Option<LogId> =
            self.inner.get_meta(self.group, META_PURGED).map_err(read)?;
        let last_log_id = self.last_entry_id().map_err(read)?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let key = prefixed(self.group, &[META_VOTE]);
        batch.put_cf(self.inner.cf(CF_META), key, encode_record(vote));
        // A vote forgotten in a crash could be cast twice in one term: sync it now.
        self.inner
            .write(batch, true)
            .map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.inner
            .get_meta(self.group, META_VOTE)
            .map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let key = prefixed(self.group, &[META_COMMITTED]);
        batch.put_cf(self.inner.cf(CF_META), key, encode_record(&committed));
        // May lag: the committed index only speeds up re-applying after a restart.
        self.inner
            .write(batch, false)
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let stored: Option<Option<LogId>> = self
            .inner
            .get_meta(self.group, META_COMMITTED)
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(stored.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let cf = self.inner.cf(CF_LOG);
        for entry in entries {
            batch.put_cf(cf, self.log_key(entry.log_id.index), encode_record(&entry));
        }
        self.inner
            .write(batch, false)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Readable now; acknowledged once the syncer's next fsync covers it.
        self.inner.syncer.after_sync(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let (_, to) = group_range(self.group);
        batch.delete_range_cf(self.inner.cf(CF_LOG), self.log_key(log_id.index), to);
        // Entries that come back after a crash could contradict the new leader's log.
        self.inner
            .write(batch, true)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let key = prefixed(self.group, &[META_PURGED]);
        batch.put_cf(self.inner.cf(CF_META), key, encode_record(&log_id));
        let end = self.log_key(log_id.index.saturating_add(1));
        batch.delete_range_cf(self.inner.cf(CF_LOG), self.log_key(0), end);
        if log_id.index == u64::MAX {
            batch.delete_cf(self.inner.cf(CF_LOG), self.log_key(u64::MAX));
        }
        self.inner
            .write(batch, false)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
