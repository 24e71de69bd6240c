//! Log time: the timestamps a shard's leader writes into its log entries. The state
//! machine never reads a clock; it decides every expiry from these stamps (and treats
//! a stamp below one it already applied as its own latest time). So log time, not any
//! node's wall clock, is what a hold's TTL is measured in, and a wall clock that is
//! wrong must not be able to move it far.
//!
//! # How a leader stamps ([`LogClock`])
//! - **Monotonic.** A leader continues from where its replica's log time stands (the
//!   stamp it last applied) and advances it by the time its *monotonic* clock
//!   ([`Clock::monotonic`]) measured since, which no wall-clock jump, NTP step or
//!   `--clock-skew-ms` changes.
//! - **Slewed toward the wall clock, at a bounded rate.** Between two stamps `Δ` of
//!   monotonic time apart, log time advances by `Δ ± min(Δ · CLOCK_SLEW_PPM / 10⁶,
//!   CLOCK_SLEW_PER_STAMP_MAX_MS)`, moving toward the wall clock and never past it: a
//!   wall clock ahead is followed at 1 ms per second at most; a wall clock behind is
//!   let catch up while log time keeps advancing (at 999 ms per second at least), never
//!   backwards.
//! - **A new term starts from the applied stamp, now**: at the leader's first stamp
//!   or first expiry tick of the term ([`Stamper::tick`], every second), whichever
//!   comes first. Not from anything this replica stamped in an earlier term (a stale
//!   leader cut off from the others may have run its own time ahead), and not from
//!   when it first saw that stamp (a hold granted after that, in entries it had not
//!   applied yet, would lose the difference). A later stamp applied meanwhile (an
//!   earlier leader's entries, applied late) raises log time: that stamp is already
//!   the machine's time, so this moves no expiry.
//! - **A brand-new shard starts at the wall clock**: with no stamp applied (0), there
//!   is no log time to continue, and 1970 is no time to start from.
//! - **A step to the wall clock only when it can shorten nothing**: the replica's
//!   state has no live hold or checkout, every entry in its log is applied, and it gave
//!   no stamp for `CLOCK_STEP_QUIET_MS` (so no entry it stamped earlier can still be on
//!   its way into the log ahead of the step). That is how log time gets back to real
//!   time after the whole shard was down for hours: at its first quiet moment. While
//!   holds stay live, the slew alone closes the gap (3.6 s per hour).
//! - A replica that does not lead stamps where a term would start: its entry is
//!   written only if it became leader in between, and then it moves no time.
//!
//! # The bound
//! While a hold or checkout is live no step happens, so every stamp is some anchor
//! (a stamp given, or an applied stamp taken up no earlier than it was given) plus at
//! most `(1 + CLOCK_SLEW_PPM / 10⁶)` times the monotonic time since that anchor. So
//! a deadline `d` ms of log time after a grant passes no earlier than
//! `d / (1 + CLOCK_SLEW_PPM / 10⁶)` of monotonic time after the grant's entry was
//! stamped: it ends at most [`early_expiry_bound_ms`]`(d)` =
//! `d · CLOCK_SLEW_PPM / 10⁶ + 1` ms early (the 1 ms is the stamps' rounding down to
//! whole milliseconds). That is 0.9 s for the default longest hold of 15 minutes,
//! 0.12 s for the 2-minute payment window, 86.4 s for the longest TTL any event may
//! allow (`HOLD_TTL_MS_CAP`, one day). This holds however far any leader's wall
//! clock is off, and across any number of leader changes, with one exception in a
//! shard's first moments: if its first leader is replaced before the next one has
//! applied any of its stamps, holds granted in them can end early by the difference
//! of the two leaders' wall clocks. It assumes monotonic clocks tick at the rate of
//! real time; their own error (tens of ppm, up to 500 ppm while NTP slews
//! `CLOCK_MONOTONIC`) adds to `CLOCK_SLEW_PPM`.
//!
//! The other way, holds may end later than their TTL: by 0.1 % while log time slows
//! toward a wall clock behind it, and by each leader change's gap (from the old
//! leader's last applied stamp to the new one's first stamp or tick: the election,
//! about 2 s), which log time does not count. The slew wins that back (3.6 s per hour)
//! and a quiet moment's step at once.
//!
//! Why 1,000 ppm: it makes the early-expiry bound negligible next to any TTL (0.1 %)
//! while still absorbing the small offsets that NTP leaves between nodes (a 100 ms
//! difference in under two minutes); large offsets are what the quiet step is for.
//!
//! The skew knob exists for fault tests: a node started with `--clock-skew-ms` has its
//! wall clock that far off (its monotonic clock is untouched), so tests can check that
//! a leader with a clock running behind or ahead moves log time only as above.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::{BasicNode, RaftMetrics, ServerState};
use raft_store::limits::HOLD_TTL_MS_CAP;
use raft_store::raft::NodeId;
use raft_store::storage::MachineReader;
use tokio::sync::watch;

/// How fast log time may run faster (or slower) than the monotonic clock to follow
/// the wall clock: parts per million, so 1,000 is 1 ms per second.
pub const CLOCK_SLEW_PPM: u64 = 1_000;

/// The most one stamp may add to (or take off) the monotonic time elapsed since the
/// previous one, however long ago that was: no single entry moves log time by more.
pub const CLOCK_SLEW_PER_STAMP_MAX_MS: u64 = 1_000;

/// How long a replica must have given no stamp before its log time may step to the
/// wall clock: much longer than an entry takes from its stamp to the log (a task
/// spawn and a channel send), and several election timeouts.
pub const CLOCK_STEP_QUIET_MS: u64 = 5_000;

/// The most a deadline `deadline_ms` of log time after a grant can pass early, in
/// real (monotonic) time, whatever the wall clocks say; see the module doc.
pub const fn early_expiry_bound_ms(deadline_ms: u64) -> u64 {
    deadline_ms.saturating_mul(CLOCK_SLEW_PPM) / 1_000_000 + 1
}

// Slowing down by the slew must leave log time advancing (never still, never back).
const _: () = assert!(CLOCK_SLEW_PPM < 1_000_000);
// The longest hold any event may allow ends at most 90 s early (86.4 s + 1 ms).
const _: () = assert!(early_expiry_bound_ms(HOLD_TTL_MS_CAP) <= 90_000);
// A default-sized hold (15 min at most) ends less than a second early.
const _: () = assert!(early_expiry_bound_ms(15 * 60 * 1_000) < 1_000);

/// A node's clocks.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock milliseconds since the Unix epoch: may jump and may be wrong.
    fn now_ms(&self) -> u64;
    /// Time since an origin fixed for this clock's life: never decreases and runs at
    /// the rate of real time, whatever happens to the wall clock.
    fn monotonic(&self) -> Duration;
}

/// The system's clocks, the wall clock shifted by an adjustable skew.
#[derive(Debug)]
pub struct SystemClock {
    skew_ms: AtomicI64,
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::with_skew(0)
    }
}

impl SystemClock {
    pub fn with_skew(skew_ms: i64) -> Self {
        Self {
            skew_ms: AtomicI64::new(skew_ms),
            origin: Instant::now(),
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

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// What a replica knows at the moment it stamps (or peeks at) log time.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// The wall clock, ms since the Unix epoch.
    pub wall_ms: u64,
    /// The monotonic clock.
    pub mono: Duration,
    /// The term this replica leads, `None` when it does not lead.
    pub leading_term: Option<u64>,
    /// The latest stamp the replica applied (0 before any).
    pub applied_ms: u64,
    /// Whether every entry in the replica's log is applied.
    pub log_settled: bool,
}

/// Where this replica's log time stands in the term it leads: the last stamp given
/// (or the applied stamp the term started from, or was raised to), and when
/// (monotonic).
#[derive(Clone, Copy, Debug)]
struct Anchor {
    term: u64,
    log: Duration,
    at: Duration,
}

/// One shard's log time as this replica's leader sees it: the rule of the module doc,
/// as a pure function of [`Sample`]s, so tests drive it with any clocks.
///
/// Invariants: within a term, stamps never decrease, never fall below the applied
/// stamp of their sample, and two stamps `Δ` of monotonic time apart differ by at
/// most `Δ + min(Δ · CLOCK_SLEW_PPM / 10⁶, CLOCK_SLEW_PER_STAMP_MAX_MS)` unless a
/// step was allowed or the later one was raised to its applied stamp. An anchor's time is never earlier than the moment its log time
/// was given (by this leader, or by the leader whose stamp it applied): that is what
/// keeps the bound across leader changes.
#[derive(Debug, Default)]
pub struct LogClock {
    anchor: Option<Anchor>,
    /// When this replica last gave any stamp (for the step's quiet period).
    stamped_at: Option<Duration>,
}

impl LogClock {
    /// Starts the term this replica leads, if it has not yet: from the applied stamp,
    /// now. Called about once a second, so a leader that has nothing to stamp still
    /// has log time running (the expiry ticker compares deadlines with it).
    pub fn tick(&mut self, s: &Sample) {
        let started = self.anchor.is_some_and(|a| Some(a.term) == s.leading_term);
        if !started {
            self.anchor = s.leading_term.map(|term| Anchor {
                term,
                log: start(s),
                at: s.mono,
            });
        }
    }

    /// The stamp for an entry proposed now. `live` says whether the replica's state
    /// has a hold or checkout whose deadline is still to come; it is asked only when a
    /// step is otherwise allowed, because it walks every event.
    pub fn stamp(&mut self, s: &Sample, live: impl FnOnce() -> bool) -> u64 {
        let quiet = self
            .stamped_at
            .is_none_or(|t| s.mono.saturating_sub(t) >= ms(CLOCK_STEP_QUIET_MS));
        self.stamped_at = Some(s.mono);
        let Some((term, mut log)) = self.project(s) else {
            self.anchor = None;
            return whole_ms(start(s));
        };
        let wall = ms(s.wall_ms);
        if wall > log && s.log_settled && quiet && !live() {
            log = wall;
        }
        self.anchor = Some(Anchor {
            term,
            log,
            at: s.mono,
        });
        whole_ms(log)
    }

    /// Log time as a stamp given now would be at least (no step, nothing recorded):
    /// what the leader compares deadlines with. Where a term would start when not
    /// leading.
    pub fn peek(&self, s: &Sample) -> u64 {
        whole_ms(self.project(s).map_or_else(|| start(s), |(_, log)| log))
    }

    /// The term led and log time now, before any step; `None` when not leading.
    fn project(&self, s: &Sample) -> Option<(u64, Duration)> {
        let term = s.leading_term?;
        let applied = ms(s.applied_ms);
        let Some(a) = self.anchor.filter(|a| a.term == term) else {
            return Some((term, start(s)));
        };
        let elapsed = s.mono.saturating_sub(a.at);
        let slew = slew_for(elapsed);
        let steady = a.log.saturating_add(elapsed);
        let wall = ms(s.wall_ms);
        let log = if wall > steady {
            steady + slew.min(wall - steady)
        } else {
            // `slew` ≤ `elapsed` (CLOCK_SLEW_PPM < 10⁶): never below `a.log`.
            steady - slew.min(steady - wall)
        };
        // A later applied stamp (an earlier leader's, applied late) is already the
        // machine's time: continuing from it moves no expiry.
        Some((term, log.max(applied)))
    }
}

/// Where a term starts: from the applied stamp, now. Not from this replica's own
/// earlier stamps, which a stale leader cut off from the others may have run ahead;
/// not from when it first saw that stamp, since holds granted after that (in entries
/// it had not applied yet) would lose the difference. A shard with no stamp applied
/// yet starts at the wall clock: it is new, and 1970 is no time to start from.
fn start(s: &Sample) -> Duration {
    if s.applied_ms == 0 {
        ms(s.wall_ms)
    } else {
        ms(s.applied_ms)
    }
}

/// How far log time may move away from `elapsed` toward the wall clock in one stamp.
fn slew_for(elapsed: Duration) -> Duration {
    // In nanoseconds, so stamps a millisecond apart still add up to the full rate.
    let ns = elapsed.as_nanos() * u128::from(CLOCK_SLEW_PPM) / 1_000_000;
    let cap = ms(CLOCK_SLEW_PER_STAMP_MAX_MS);
    u64::try_from(ns).map_or(cap, |ns| Duration::from_nanos(ns).min(cap))
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn whole_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The Raft group's metrics, for whether and in which term this replica leads.
pub type GroupMetrics = watch::Receiver<RaftMetrics<NodeId, BasicNode>>;

/// Stamps one shard's entries by the rule of the module doc: a [`LogClock`] fed by
/// this node's clocks, the shard's state machine and its Raft group.
#[derive(Clone)]
pub struct Stamper {
    clock: Arc<dyn Clock>,
    reader: MachineReader,
    group: Option<GroupMetrics>,
    log_clock: Arc<Mutex<LogClock>>,
}

impl Stamper {
    /// A stamper for a replica alone in its group until [`Stamper::following`] names
    /// the group: it counts as leading one term with every entry applied.
    pub fn new(clock: Arc<dyn Clock>, reader: MachineReader) -> Self {
        Self {
            clock,
            reader,
            group: None,
            log_clock: Default::default(),
        }
    }

    /// Ties the stamper to the Raft group whose entries it stamps, so each term this
    /// replica leads starts from the applied stamp.
    pub fn following(mut self, group: GroupMetrics) -> Self {
        self.group = Some(group);
        self
    }

    /// The stamp for an entry proposed now.
    pub fn stamp(&self) -> u64 {
        let s = self.sample();
        let mut lc = self.lock();
        lc.stamp(&s, || self.reader.read(|m| m.next_deadline_ms().is_some()))
    }

    /// Log time now as this replica sees it (its applied stamp when it does not lead):
    /// what deadlines are compared with.
    pub fn log_now_ms(&self) -> u64 {
        let s = self.sample();
        self.lock().peek(&s)
    }

    /// Starts the term this replica leads if it has not yet; see [`LogClock::tick`].
    pub fn tick(&self) {
        let s = self.sample();
        self.lock().tick(&s);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogClock> {
        // The state is a few numbers updated at once: a panic elsewhere leaves it whole.
        self.log_clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sample(&self) -> Sample {
        // The applied state first: a log read after it can only be longer, so a
        // settled log is never claimed for entries the state has not seen.
        let (applied_ms, applied_index) = self.reader.read(|m| (m.clock_ms(), m.applied_index()));
        let (leading_term, last_log_index) = match &self.group {
            None => (Some(0), applied_index),
            Some(g) => {
                let m = g.borrow();
                let leads = m.state == ServerState::Leader && m.current_leader == Some(m.id);
                (leads.then_some(m.current_term), m.last_log_index)
            }
        };
        Sample {
            wall_ms: self.clock.now_ms(),
            mono: self.clock.monotonic(),
            leading_term,
            applied_ms,
            log_settled: applied_index >= last_log_index,
        }
    }
}

#[cfg(test)]
mod tests;
