//! The leader's clock, injected: the state machine never reads a clock; a shard's
//! leader stamps each log entry with [`Clock::now_ms`], and [`Stamper`] makes sure the
//! stamp never goes below what the shard has already applied.
//!
//! The skew knob exists for fault tests: a node started with `--clock-skew-ms` stamps
//! entries as if its clock were that far off, so tests can check that a leader with a
//! clock running behind or ahead cannot make time go backwards or expire holds early
//! beyond its skew.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use raft_store::storage::MachineReader;

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system clock, shifted by an adjustable skew.
#[derive(Debug, Default)]
pub struct SystemClock {
    skew_ms: AtomicI64,
}

impl SystemClock {
    pub fn with_skew(skew_ms: i64) -> Self {
        Self {
            skew_ms: AtomicI64::new(skew_ms),
        }
    }

    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        wall.saturating_add_signed(self.skew_ms.load(Ordering::Relaxed))
    }
}

/// Stamps one shard's entries: `max(clock, last applied stamp, last stamp given)`.
///
/// Why both floors: a new leader may start with a clock behind the old leader's; the
/// applied clock keeps it from stamping earlier than what its replica has applied, and
/// the state machine clamps anything still earlier (entries applied later than this
/// replica has seen) to its own clock, so time as the machine sees it never moves back.
#[derive(Clone)]
pub struct Stamper {
    clock: Arc<dyn Clock>,
    reader: MachineReader,
    last_ms: Arc<AtomicU64>,
}

impl Stamper {
    pub fn new(clock: Arc<dyn Clock>, reader: MachineReader) -> Self {
        Self {
            clock,
            reader,
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn stamp(&self) -> u64 {
        let applied_ms = self.reader.read(|m| m.clock_ms());
        let ts = self.clock.now_ms().max(applied_ms);
        let before = self.last_ms.fetch_max(ts, Ordering::Relaxed);
        ts.max(before)
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}
