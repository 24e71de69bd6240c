//! Writing the state machine's records behind `apply`, off the path of the answer.
//!
//! Applying an entry decides its commands in memory; the records those decisions
//! changed must reach RocksDB too, but nothing waits on that write for durability: the
//! entry is already in the synced log, and a node that loses the write in a crash
//! applies the entry again. So `apply` hands the batch to this node's writer thread
//! and returns its answers at once, and the write runs while the next entry is on its
//! way (measured with `seatctl bench`: the leader's apply took about 0.12 ms less per
//! entry of 63 holds).
//!
//! Invariants, per group ([`WriteSlot`]):
//! - At most one write is in flight. Before a group's next apply, snapshot or install
//!   reads or writes its records, it waits for that write ([`WriteSlot::settle`]), so
//!   the records on disk are always those of a whole number of applied entries, and
//!   writes land in apply order.
//! - Cold records leave memory only after the write that stored them is done (the
//!   next apply evicts them after settling), so a record is always in memory or on
//!   disk.
//! - A failed write is sticky: every later settle fails with it, and no later write of
//!   the group is started, because one would store records that skip the lost batch's.
//!   openraft stops the group on that error, as it did when the write was inline.
//!
//! The thread writes in the order writes were queued, so a group's deletion
//! ([`Writer::write_after_queued`]) lands after any record write of it still queued.
//!
//! Caveat: waiting is a blocking wait, inside async `apply` and reads, as the inline
//! write it replaces was. The write usually finished long before (an entry's whole
//! replication round trip passes between two applies).
//!
//! The queue between groups and the thread is bounded ([`WRITES_QUEUED_MAX`]); each
//! group has at most one write queued or running, so it only fills with as many groups.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, WriteOptions, DB};

/// Most writes queued for the thread (each group has at most one).
const WRITES_QUEUED_MAX: usize = 4096;

/// A group's write in flight, or the write that failed it.
#[derive(Default)]
pub(crate) struct WriteSlot {
    state: Mutex<SlotState>,
    done: Condvar,
}

#[derive(Default)]
struct SlotState {
    in_flight: bool,
    /// Why a write of the group failed.
    failed: Option<String>,
}

impl WriteSlot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The lock guards two plain fields that are never left half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the group's write in flight (if any) is done; the error of any
    /// write of the group that failed, now or before.
    pub fn settle(&self) -> Result<(), String> {
        let mut st = self.lock();
        while st.in_flight {
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match &st.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn finish(&self, result: Result<(), String>) {
        let mut st = self.lock();
        st.in_flight = false;
        if let Err(e) = result {
            st.failed.get_or_insert(e);
        }
        self.done.notify_all();
    }
}

struct Job {
    batch: WriteBatch,
    sync: bool,
    slot: Arc<WriteSlot>,
}

/// The node's writer thread.
pub(crate) struct Writer {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start(db: Arc<DB>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(WRITES_QUEUED_MAX);
        let thread = std::thread::Builder::new()
            .name("seatd-sm-write".into())
            .spawn(move || run(db, rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Settles `slot`, then starts writing `batch` (unsynced) behind the caller.
    pub fn submit(&self, slot: &Arc<WriteSlot>, batch: WriteBatch) -> Result<(), String> {
        self.enqueue(slot, batch, false)
    }

    /// Writes `batch` (synced) after every write queued before it, and waits for it.
    pub fn write_after_queued(&self, batch: WriteBatch) -> Result<(), String> {
        let slot = Arc::new(WriteSlot::default());
        self.enqueue(&slot, batch, true)?;
        slot.settle()
    }

    fn enqueue(&self, slot: &Arc<WriteSlot>, batch: WriteBatch, sync: bool) -> Result<(), String> {
        slot.settle()?;
        slot.lock().in_flight = true;
        let job = Job {
            batch,
            sync,
            slot: slot.clone(),
        };
        let sent = match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        if let Err(job) = sent {
            // The thread is gone (it panicked): fail the group rather than lose the write.
            let e = String::from("the state machine writer thread has stopped");
            job.slot.finish(Err(e.clone()));
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish the writes queued, then exit.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(db: Arc<DB>, rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let mut wo = WriteOptions::default();
        wo.set_sync(job.sync);
        let result = db.write_opt(job.batch, &wo).map_err(|e| e.to_string());
        job.slot.finish(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn db(dir: &tempfile::TempDir) -> Arc<DB> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        Arc::new(DB::open(&opts, dir.path()).expect("open a scratch database"))
    }

    #[test]
    fn a_write_is_readable_once_its_slot_settles_and_writes_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        let writer = Writer::start(db.clone()).unwrap();
        let slot = Arc::new(WriteSlot::default());
        for i in 0..100u32 {
            let mut batch = WriteBatch::default();
            batch.put(b"k", i.to_be_bytes());
            batch.put(i.to_be_bytes(), b"v");
            // Each submit settles the one before, so the last value wins.
            writer.submit(&slot, batch).unwrap();
        }
        slot.settle().unwrap();
        assert_eq!(db.get(b"k").unwrap().unwrap(), 99u32.to_be_bytes());
        assert!(db.get(42u32.to_be_bytes()).unwrap().is_some());
        // A write through `write_after_queued` lands after everything queued before it.
        writer.submit(&slot, WriteBatch::default()).unwrap();
        let mut delete = WriteBatch::default();
        delete.delete(b"k");
        writer.write_after_queued(delete).unwrap();
        assert!(db.get(b"k").unwrap().is_none());
        drop(writer);
        assert!(
            !slot.lock().in_flight,
            "dropping the writer finishes what was queued"
        );
    }

    #[test]
    fn settle_waits_for_the_write_in_flight_and_a_failure_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::start(db(&dir)).unwrap();
        let slot = Arc::new(WriteSlot::default());
        slot.lock().in_flight = true;
        let finisher = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                slot.finish(Err("disk on fire".into()));
            })
        };
        // Returns only once the write is finished, with its error.
        assert_eq!(slot.settle(), Err("disk on fire".to_string()));
        finisher.join().unwrap();
        assert_eq!(slot.settle(), Err("disk on fire".to_string()), "sticky");
        // No later write of the group starts: it would skip the lost batch.
        let mut batch = WriteBatch::default();
        batch.put(b"after", b"x");
        assert_eq!(writer.submit(&slot, batch), Err("disk on fire".to_string()));
        slot.finish(Ok(()));
        assert!(slot.settle().is_err(), "a later success does not clear it");
    }
}
