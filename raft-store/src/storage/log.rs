//! openraft's log storage for one group: entries, vote, committed and purged ids.
//!
//! Invariants: entries of a group are contiguous from `last_purged + 1` to the last
//! log id; an append is acknowledged (its callback fired) only after a WAL sync that
//! covers it; `save_vote` and `truncate` return only once synced; `purge` records the
//! new last purged id in the same atomic batch that deletes the entries.
//!
//! Recent entries are also kept in memory ([`EntryCache`]): openraft reads each entry
//! back once per follower it replicates to and once more to apply it, and answering
//! those reads from memory (the payload is shared, not copied) saves a RocksDB
//! iterator, a checksum and a decode each time. The cache always holds a contiguous
//! run of the stored log, never an entry the log lacks: a write first drops the
//! entries it replaces or deletes, and adds new ones only after it succeeded; a failed
//! write clears the cache, an append that does not extend it starts a new run, and a
//! read it cannot answer whole goes to RocksDB. The lock is never held across a
//! RocksDB write, so readers do not wait for one. It is per `LogStore` and its clones,
//! so a group must have one log store at a time (as openraft uses it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, Membership, StorageIOError,
};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::{
    blocking, decode_record, encode_record, group_range, prefixed, GroupId, Inner, CF_LOG, CF_META,
    META_COMMITTED, META_PURGED, META_VOTE,
};
use crate::raft::{Entry, LogId, NodeId, StorageError, StoredMembership, TypeConfig, Vote};
use crate::Error;

/// One group's Raft log. Cheap to clone; clones share the database and the cache.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
    group: GroupId,
    cache: Arc<Mutex<EntryCache>>,
}

/// What [`LogStore::reform_offline`] did.
#[derive(Debug)]
pub struct Reformed {
    /// The last entry the replica held before.
    pub last_before: LogId,
    /// The membership entry that makes this node the group's only voter.
    pub entry: LogId,
    /// The voters the group had.
    pub voters_before: Vec<NodeId>,
}

/// Most entries the cache keeps, and most bytes (as encoded on disk) they may take.
const CACHED_ENTRIES_MAX: usize = 1024;
const CACHED_BYTES_MAX: usize = 32 << 20;

/// The newest entries of the log, contiguous, oldest first, with their encoded sizes.
#[derive(Default)]
struct EntryCache {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl EntryCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Adds an entry just written; one that does not extend the cached run starts a
    /// new run (the old one may no longer match the log).
    fn push(&mut self, entry: Entry, encoded_bytes: usize) {
        if self
            .last_index()
            .is_some_and(|last| last.checked_add(1) != Some(entry.log_id.index))
        {
            self.clear();
        }
        self.bytes += encoded_bytes;
        self.entries.push_back((entry, encoded_bytes));
        while self.entries.len() > CACHED_ENTRIES_MAX || self.bytes > CACHED_BYTES_MAX {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, n)) = self.entries.pop_front() {
            self.bytes -= n;
        }
    }

    /// Entries `start..end` if all of them are cached.
    fn get(&self, start: u64, end_exclusive: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start < first || end_exclusive.checked_sub(1)? > last {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end_exclusive - first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }

    /// Forgets entries at `index` and after (truncated).
    fn truncate_from(&mut self, index: u64) {
        while self.last_index().is_some_and(|last| last >= index) {
            if let Some((_, n)) = self.entries.pop_back() {
                self.bytes -= n;
            }
        }
    }

    /// Forgets entries up to and including `index` (purged).
    fn purge_to(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }
}

fn io(subject: ErrorSubject<u64>, verb: ErrorVerb, e: Error) -> StorageError {
    StorageIOError::new(subject, verb, &e).into()
}

impl LogStore {
    pub(crate) fn new(inner: Arc<Inner>, group: GroupId) -> Self {
        Self {
            inner,
            group,
            cache: Arc::default(),
        }
    }

    /// Writes `batch` and keeps the cache a part of the log: first `forget` drops
    /// from the cache what the write replaces or deletes, then the write runs with the
    /// cache unlocked (a reader meanwhile misses and reads RocksDB, as it would
    /// without a cache), then `add` puts in what it wrote. A failed write clears the
    /// cache.
    fn write_mirrored(
        &self,
        batch: WriteBatch,
        sync: bool,
        forget: impl FnOnce(&mut EntryCache),
        add: impl FnOnce(&mut EntryCache),
    ) -> Result<(), Error> {
        forget(&mut self.cache());
        match self.inner.write(batch, sync) {
            Ok(()) => {
                add(&mut self.cache());
                Ok(())
            }
            Err(e) => {
                self.cache().clear();
                Err(e)
            }
        }
    }

    fn cache(&self) -> MutexGuard<'_, EntryCache> {
        // A panic while the lock was held may have left the cache half-changed: it is
        // only a copy, so start it afresh.
        self.cache.lock().unwrap_or_else(|p| {
            let mut c = p.into_inner();
            c.clear();
            c
        })
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

    /// The log id of the newest entry stored (or, with none, the last purged): what a
    /// replica tells a rejoining peer it holds. From the cache when it has entries
    /// (it always ends at the log's end), else one reverse seek.
    pub fn last_log_id(&self) -> Result<Option<LogId>, Error> {
        if let Some((e, _)) = self.cache().entries.back() {
            return Ok(Some(e.log_id));
        }
        let purged: Option<LogId> = self.inner.get_meta(self.group, META_PURGED)?;
        Ok(self.last_entry_id()?.or(purged))
    }

    /// Re-forms the group as `node` alone, offline (an operator's last resort when a
    /// majority of the group lost its disks; see [`Reformed`]): appends, synced, a
    /// membership entry naming `node` the only voter, at the next index and a term
    /// above any this replica has seen, and votes for `node` in that term. On its next
    /// start the group elects `node` with its own vote; the placement's other members
    /// then join as learners and are promoted once caught up (the coordinator's
    /// `membership`). Entries that only the lost replicas held are gone for good.
    pub fn reform_offline(
        &self,
        node: NodeId,
        membership: &StoredMembership,
    ) -> Result<Reformed, Error> {
        let refuse = |reason: String| Error::Open {
            path: self.inner.path.clone(),
            reason,
        };
        let Some(last) = self.last_log_id()? else {
            return Err(refuse(format!(
                "group {} holds no log here: re-form from a replica that has it",
                self.group
            )));
        };
        let vote: Option<Vote> = self.inner.get_meta(self.group, META_VOTE)?;
        // The membership in force: the latest in the log after what was applied.
        let mut config = membership.membership().clone();
        let applied = membership.log_id().map_or(0, |l| l.index + 1);
        let first = self
            .inner
            .get_meta::<LogId>(self.group, META_PURGED)?
            .map_or(applied, |p| applied.max(p.index + 1));
        for e in self.read_range(first, last.index.saturating_add(1))? {
            if let EntryPayload::Membership(m) = e.payload {
                config = m;
            }
        }
        let Some(me) = config.get_node(&node).cloned() else {
            return Err(refuse(format!(
                "node {node} is not a member of group {} here",
                self.group
            )));
        };
        let before: Vec<NodeId> = config.voter_ids().collect();
        let term = vote
            .map_or(0, |v| v.leader_id.term)
            .max(last.leader_id.term)
            + 1;
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, node), last.index + 1),
            payload: EntryPayload::Membership(Membership::new(
                vec![BTreeSet::from([node])],
                BTreeMap::from([(node, me)]),
            )),
        };
        let log_id = entry.log_id;
        let bytes = encode_record(&entry);
        let mut batch = WriteBatch::default();
        batch.put_cf(self.inner.cf(CF_LOG), self.log_key(log_id.index), &bytes);
        let vote = Vote::new(term, node);
        batch.put_cf(
            self.inner.cf(CF_META),
            prefixed(self.group, &[META_VOTE]),
            encode_record(&vote),
        );
        self.write_mirrored(batch, true, |_| {}, |cache| cache.push(entry, bytes.len()))?;
        Ok(Reformed {
            last_before: last,
            entry: log_id,
            voters_before: before,
        })
    }

    /// Before the group starts: turns a committed vote for `node` into an uncommitted
    /// one of the same term (synced), so that a node that led before a restart must
    /// win an election again rather than resume its term at once (openraft's startup
    /// does that for a committed self-vote). An election goes through the other
    /// replicas' rejoin gates, and a data dir restored from a backup must not lead on
    /// the strength of the vote it had then. Returns whether it changed the vote.
    pub fn uncommit_own_vote(&self, node: NodeId) -> Result<bool, Error> {
        let vote: Option<Vote> = self.inner.get_meta(self.group, META_VOTE)?;
        match vote {
            Some(v) if v.committed && v.leader_id.node_id == node => {
                let mut batch = WriteBatch::default();
                let key = prefixed(self.group, &[META_VOTE]);
                let uncommitted = Vote::new(v.leader_id.term, node);
                batch.put_cf(self.inner.cf(CF_META), key, encode_record(&uncommitted));
                self.inner.write(batch, true)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn read_range(&self, start: u64, end_exclusive: u64) -> Result<Vec<Entry>, Error> {
        if start >= end_exclusive {
            return Ok(Vec::new());
        }
        if let Some(hit) = self.cache().get(start, end_exclusive) {
            return Ok(hit);
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
        if let Some(hit) = self.cache().get(start, end) {
            return Ok(hit);
        }
        // A read RocksDB answers: on the blocking pool, not on openraft's worker.
        let this = self.clone();
        blocking(move || this.read_range(start, end))
            .await
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
        // A vote forgotten in a crash could be cast twice in one term: sync it now,
        // on the blocking pool (an fsync).
        let inner = self.inner.clone();
        blocking(move || inner.write(batch, true))
            .await
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
        let mut written: Vec<(Entry, usize)> = Vec::new();
        for entry in entries {
            let bytes = encode_record(&entry);
            batch.put_cf(cf, self.log_key(entry.log_id.index), &bytes);
            written.push((entry, bytes.len()));
        }
        let first = written.first().map(|(e, _)| e.log_id.index);
        let forget = |cache: &mut EntryCache| {
            if let Some(first) = first {
                cache.truncate_from(first);
            }
        };
        self.write_mirrored(batch, false, forget, |cache| {
            for (entry, bytes) in written {
                cache.push(entry, bytes);
            }
        })
        .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Readable now; acknowledged once the syncer's next fsync covers it.
        self.inner.syncer.after_sync(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let (_, to) = group_range(self.group);
        batch.delete_range_cf(self.inner.cf(CF_LOG), self.log_key(log_id.index), to);
        // Entries that come back after a crash could contradict the new leader's log:
        // synced, on the blocking pool.
        let this = self.clone();
        blocking(move || {
            let forget = |cache: &mut EntryCache| cache.truncate_from(log_id.index);
            this.write_mirrored(batch, true, forget, |_| {})
        })
        .await
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
        let forget = |cache: &mut EntryCache| cache.purge_to(log_id.index);
        self.write_mirrored(batch, false, forget, |_| {})
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn the_cache_answers_only_whole_contiguous_ranges() {
        let mut c = EntryCache::default();
        assert_eq!(indexes(c.get(1, 2)), None);
        for i in 5..=9 {
            c.push(entry(i), 10);
        }
        assert_eq!(indexes(c.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(c.get(7, 9)), Some(vec![7, 8]));
        assert_eq!(indexes(c.get(4, 6)), None, "4 is not cached");
        assert_eq!(indexes(c.get(9, 11)), None, "10 is not cached");
        assert_eq!(indexes(c.get(9, u64::MAX)), None);
        // An append that does not extend the run replaces it.
        c.push(entry(20), 10);
        assert_eq!(indexes(c.get(5, 6)), None);
        assert_eq!(indexes(c.get(20, 21)), Some(vec![20]));
        assert_eq!(c.bytes, 10);
    }

    #[test]
    fn truncate_and_purge_drop_what_the_log_dropped() {
        let mut c = EntryCache::default();
        for i in 1..=10 {
            c.push(entry(i), 100);
        }
        c.truncate_from(8);
        assert_eq!(c.last_index(), Some(7));
        assert_eq!(indexes(c.get(7, 9)), None);
        c.purge_to(3);
        assert_eq!(c.first_index(), Some(4));
        assert_eq!(c.bytes, 400);
        c.push(entry(8), 100);
        assert_eq!(indexes(c.get(4, 9)), Some(vec![4, 5, 6, 7, 8]));
        c.truncate_from(1);
        assert_eq!((c.entries.len(), c.bytes), (0, 0));
    }

    #[test]
    fn the_cache_is_bounded_by_count_and_bytes() {
        let mut c = EntryCache::default();
        for i in 1..=(CACHED_ENTRIES_MAX as u64 + 10) {
            c.push(entry(i), 1);
        }
        assert_eq!(c.entries.len(), CACHED_ENTRIES_MAX);
        assert_eq!(c.first_index(), Some(11));
        c.push(entry(CACHED_ENTRIES_MAX as u64 + 11), CACHED_BYTES_MAX);
        assert_eq!(c.entries.len(), 1, "one huge entry pushes out the rest");
        c.push(entry(CACHED_ENTRIES_MAX as u64 + 12), 1);
        assert_eq!(c.first_index(), Some(CACHED_ENTRIES_MAX as u64 + 12));
    }
}
