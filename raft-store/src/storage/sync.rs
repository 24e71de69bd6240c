//! Group commit: one fsync of the write-ahead log acknowledges every append that
//! completed before it.
//!
//! All Raft groups of a node share one RocksDB and therefore one WAL. An append writes
//! its entries (unsynced) and hands its callback to the syncer thread; the thread takes
//! every callback waiting, syncs the WAL once, then fires them all. Because an append's
//! write finished before its callback was queued, the sync covers it: no callback fires
//! before its entries are on disk, and concurrent appends from different groups (or a
//! burst from one) share a sync instead of paying one each.
//!
//! The queue is bounded (`SYNC_QUEUE_MAX`); a full queue makes appenders wait, which is
//! the right back-pressure when the disk is the bottleneck.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;
use rocksdb::DB;

use crate::raft::TypeConfig;

/// Most callbacks waiting for a sync.
const SYNC_QUEUE_MAX: usize = 4096;

/// Counters for the benchmark and for operators: how much one sync covers.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub syncs: AtomicU64,
    pub appends_acknowledged: AtomicU64,
}

impl SyncStats {
    /// `(syncs, appends acknowledged)` so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.appends_acknowledged.load(Ordering::Relaxed),
        )
    }
}

pub(crate) struct Syncer {
    tx: Option<SyncSender<LogFlushed<TypeConfig>>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<SyncStats>,
}

impl Syncer {
    pub fn start(db: Arc<DB>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(SYNC_QUEUE_MAX);
        let stats = Arc::new(SyncStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("seatd-wal-sync".into())
            .spawn(move || run(db, rx, thread_stats))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues `callback` to fire after the next WAL sync. The caller's writes must have
    /// completed before this call.
    pub fn after_sync(&self, callback: LogFlushed<TypeConfig>) {
        let Some(tx) = &self.tx else {
            callback.log_io_completed(Err(std::io::Error::other("log store is closed")));
            return;
        };
        match tx.try_send(callback) {
            Ok(()) => {}
            // Back-pressure: wait for room (the syncer drains continuously).
            Err(TrySendError::Full(cb)) => {
                if let Err(e) = tx.send(cb) {
                    e.0.log_io_completed(Err(std::io::Error::other("WAL syncer stopped")));
                }
            }
            Err(TrySendError::Disconnected(cb)) => {
                cb.log_io_completed(Err(std::io::Error::other("WAL syncer stopped")))
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the queue lets the thread fire what is left and exit.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(db: Arc<DB>, rx: Receiver<LogFlushed<TypeConfig>>, stats: Arc<SyncStats>) {
    let mut waiting = Vec::with_capacity(SYNC_QUEUE_MAX);
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        while waiting.len() < SYNC_QUEUE_MAX {
            match rx.try_recv() {
                Ok(cb) => waiting.push(cb),
                Err(_) => break,
            }
        }
        let result = db.flush_wal(true);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats
            .appends_acknowledged
            .fetch_add(waiting.len() as u64, Ordering::Relaxed);
        for cb in waiting.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(format!("WAL sync failed: {e}"))),
            };
            cb.log_io_completed(r);
        }
    }
}
