//! Durable openraft storage on RocksDB: many Raft groups (one per shard) in one
//! database per node.
//!
//! A data directory holds a `FORMAT` marker and the RocksDB files under `db/`. Three
//! column families hold every group's data under a 4-byte big-endian group prefix, so
//! one group can be scanned, dropped or moved wholly with a prefix range:
//!
//! - `log`: `[group][index u64 BE]` → a log entry;
//! - `meta`: `[group][tag]` → the vote, the committed and last purged log ids, the
//!   state machine's last applied log id and membership, the current snapshot;
//! - `sm`: `[group][record key]` → the seat state machine's records (see
//!   `machine::persist`).
//!
//! Durability: log appends are written unsynced and acknowledged by the group-commit
//! syncer only after a WAL fsync ([`sync`]); votes and truncations are written with
//! `sync = true` before returning. All column families share one WAL that is written
//! in order, so any sync also covers every earlier write, including state machine
//! batches, which therefore need no sync of their own: an applied entry lost in a crash
//! is still in the (synced) log and is applied again. For the same reason `apply` does
//! not wait for its records to be written: a writer thread stores them behind it
//! ([`writer`]).
//!
//! Opening refuses, with an error naming the path: a directory that is not a seatd data
//! directory, a format version this build does not read, a database locked by another
//! process, and a database RocksDB finds corrupt. Nothing is ever reset silently.

mod filter;
mod log;
mod sm;
pub mod sync;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use serde::{de::DeserializeOwned, Serialize};

pub use log::{LogStore, Reformed};
pub use sm::{MachineReader, StateMachineStore};
pub use sync::SyncStats;

use crate::raft::NodeId;
use crate::Error;
use sync::Syncer;
use writer::Writer;

/// The data directory's format marker; bump the number on an incompatible change.
/// Format 2 added the retention queue's records (`machine::retention`). Format 3
/// (issue 20) changed the encoding of log entries and records: events carry the key of
/// their id tags, commands and holds the actor of the audit trail. Its records cannot
/// be read from an older directory's, so formats 1 and 2 are refused with a message
/// that says so, rather than read wrong.
const FORMAT_FILE: &str = "FORMAT";
const FORMAT_LINE: &str = "seatd-store 3";
const FORMAT_LINES_UPGRADED: [&str; 0] = [];
const FORMAT_LINES_OLDER: [&str; 2] = ["seatd-store 1", "seatd-store 2"];

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_SM: &str = "sm";

const META_VOTE: u8 = 1;
const META_COMMITTED: u8 = 2;
const META_PURGED: u8 = 3;
const META_APPLIED: u8 = 4;
const META_MEMBERSHIP: u8 = 5;
const META_SNAPSHOT: u8 = 6;

const RECORD_MAGIC: [u8; 4] = *b"SRS1";
const RECORD_VERSION: u16 = 1;

pub type GroupId = u32;

/// One node's storage: a RocksDB shared by all its Raft groups.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    // Field order matters: the syncer and writer threads must stop before the database
    // closes (each also holds the database open until it has stopped).
    syncer: Syncer,
    writer: Writer,
    db: Arc<DB>,
    path: PathBuf,
    /// Shared by the groups' filters of stored requests (`filter`).
    filters: Arc<filter::Budget>,
}

fn db_error(path: &Path, e: rocksdb::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("LOCK") || msg.contains("lock") {
        Error::Open {
            path: path.to_path_buf(),
            reason: format!("locked by another process (is a seatd node running on it?): {msg}"),
        }
    } else {
        Error::Db {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

impl Store {
    /// Opens (or creates) the data directory at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let open_err = |reason: String| Error::Open {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(path).map_err(|e| open_err(format!("cannot create: {e}")))?;
        let marker = path.join(FORMAT_FILE);
        match std::fs::read_to_string(&marker) {
            Ok(text) if text.trim_end() == FORMAT_LINE => {}
            Ok(text) if FORMAT_LINES_UPGRADED.contains(&text.trim_end()) => {
                // Written aside and renamed over, so a crash leaves one marker or the
                // other, both of which this build opens.
                let aside = path.join(format!("{FORMAT_FILE}.new"));
                std::fs::write(&aside, format!("{FORMAT_LINE}\n"))
                    .and_then(|()| std::fs::rename(&aside, &marker))
                    .map_err(|e| open_err(format!("cannot upgrade {FORMAT_FILE}: {e}")))?;
            }
            Ok(text) if FORMAT_LINES_OLDER.contains(&text.trim_end()) => {
                return Err(open_err(format!(
                    "data format {:?} was written by an older seatd; this build reads \
                     {FORMAT_LINE:?} (hold and order ids and log entries changed) and \
                     cannot convert it: keep running the older build, or move the \
                     directory aside and start from an empty one",
                    text.trim_end()
                )))
            }
            Ok(text) => {
                return Err(open_err(format!(
                    "data format {:?} is not {FORMAT_LINE:?}, the one this build reads",
                    text.trim_end()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let entries = std::fs::read_dir(path)
                    .map_err(|e| open_err(format!("cannot list: {e}")))?
                    .count();
                if entries > 0 {
                    return Err(open_err(format!(
                        "not a seatd data directory (no {FORMAT_FILE} file, but not empty)"
                    )));
                }
                std::fs::write(&marker, format!("{FORMAT_LINE}\n"))
                    .map_err(|e| open_err(format!("cannot write {FORMAT_FILE}: {e}")))?;
            }
            Err(e) => return Err(open_err(format!("cannot read {FORMAT_FILE}: {e}"))),
        }

        let db_path = path.join("db");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // A stalled background job must not hide behind a 2-core machine.
        opts.increase_parallelism(2);
        let cfs = [CF_LOG, CF_META, CF_SM].map(|name| {
            let mut cf = Options::default();
            cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if name == CF_SM {
                // Applying a hold first asks whether its request was decided before;
                // almost always it was not. Bloom filters (in the memtable and in
                // each table file) answer such misses without searching.
                cf.set_memtable_whole_key_filtering(true);
                cf.set_memtable_prefix_bloom_ratio(0.05);
                let mut table = rocksdb::BlockBasedOptions::default();
                table.set_bloom_filter(10.0, false);
                table.set_whole_key_filtering(true);
                cf.set_block_based_table_factory(&table);
            }
            ColumnFamilyDescriptor::new(name, cf)
        });
        let db =
            DB::open_cf_descriptors(&opts, &db_path, cfs).map_err(|e| db_error(&db_path, e))?;
        let db = Arc::new(db);
        let syncer = Syncer::start(db.clone())
            .map_err(|e| open_err(format!("cannot start the WAL sync thread: {e}")))?;
        let writer = Writer::start(db.clone())
            .map_err(|e| open_err(format!("cannot start the state machine writer: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                syncer,
                writer,
                db,
                path: path.to_path_buf(),
                filters: filter::Budget::per_node(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The log store and state machine store of one group, loading the group's state
    /// machine from its records.
    pub fn group(&self, group: GroupId) -> Result<(LogStore, StateMachineStore), Error> {
        let sm = StateMachineStore::load(self.inner.clone(), group)?;
        Ok((LogStore::new(self.inner.clone(), group), sm))
    }

    /// Every group that has Raft metadata here (a vote, a log, an applied state), in
    /// order: the groups this node is part of, whatever its configuration says now.
    /// Re-forms `group` as `node` alone, offline: see [`LogStore::reform_offline`].
    /// The store must not be serving the group (an operator runs this on a stopped
    /// node; RocksDB's lock keeps a running node's directory out).
    pub fn reform_group(&self, group: GroupId, node: NodeId) -> Result<Reformed, Error> {
        let (log, sm) = self.group(group)?;
        log.reform_offline(node, &sm.membership())
    }

    pub fn groups(&self) -> Result<Vec<GroupId>, Error> {
        let inner = &self.inner;
        // A group's first records may still be on their way to disk.
        inner
            .writer
            .drain()
            .map_err(|reason| inner.write_failed(reason))?;
        let mut groups = Vec::new();
        for item in inner
            .db
            .iterator_cf(inner.cf(CF_META), rocksdb::IteratorMode::Start)
        {
            let (key, _) = item.map_err(|e| db_error(&inner.path, e))?;
            let prefix: [u8; 4] =
                key.get(..4)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| Error::Corrupt {
                        what: "metadata key",
                        detail: format!("{} bytes, shorter than a group prefix", key.len()),
                    })?;
            let group = GroupId::from_be_bytes(prefix);
            if groups.last() != Some(&group) {
                groups.push(group);
            }
        }
        Ok(groups)
    }

    /// Deletes every key of one group; other groups are untouched.
    pub fn drop_group(&self, group: GroupId) -> Result<(), Error> {
        let inner = &self.inner;
        let mut batch = WriteBatch::default();
        let (from, to) = group_range(group);
        for cf in [CF_LOG, CF_META, CF_SM] {
            batch.delete_range_cf(inner.cf(cf), &from, &to);
        }
        // A store still running for the group can write no more, and the writer, which
        // writes in order, lands any record write of it still queued before the delete:
        // nothing can bring the group back after it.
        inner.writer.close_group(group);
        inner
            .writer
            .write_after_queued(batch)
            .map_err(|reason| inner.write_failed(reason))
    }

    /// Group-commit counters: how many syncs, how many appends they acknowledged.
    pub fn sync_stats(&self) -> &SyncStats {
        &self.inner.syncer.stats
    }
}

/// `[from, to)` covering every key of `group`.
fn group_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let from = group.to_be_bytes().to_vec();
    let to = match group.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 5],
    };
    (from, to)
}

fn prefixed(group: GroupId, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + rest.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

impl Inner {
    fn cf(&self, name: &str) -> &ColumnFamily {
        // The three families are created when the database opens.
        self.db.cf_handle(name).expect("column family exists")
    }

    /// The error of a write the writer thread made (or can no longer make).
    fn write_failed(&self, reason: String) -> Error {
        Error::Write {
            path: self.path.clone(),
            reason,
        }
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| db_error(&self.path, e))
    }

    /// One state machine record of `group`, by its machine-level key.
    fn get_sm(&self, group: GroupId, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.db
            .get_cf(self.cf(CF_SM), prefixed(group, key))
            .map_err(|e| db_error(&self.path, e))
    }

    fn get_meta<T: DeserializeOwned>(&self, group: GroupId, tag: u8) -> Result<Option<T>, Error> {
        let key = prefixed(group, &[tag]);
        let bytes = self
            .db
            .get_cf(self.cf(CF_META), key)
            .map_err(|e| db_error(&self.path, e))?;
        bytes
            .map(|b| decode_record("metadata record", &b))
            .transpose()
    }
}

/// Runs `work` on tokio's blocking pool: RocksDB reads and writes, the wait for a
/// group's write in flight and the state machine's own work block, and must never
/// stall an async worker (other shards' Raft, the servers). A dropped caller leaves
/// the work to finish as a whole, under the state lock, so state stays consistent. A
/// panic in it (a broken invariant) is raised again in the caller, as if it ran there.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a storage task was cancelled: {e}"),
    }
}

fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    crate::codec::encode_framed(RECORD_MAGIC, RECORD_VERSION, value)
}

fn decode_record<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    crate::codec::decode_framed(what, RECORD_MAGIC, RECORD_VERSION, bytes)
}
