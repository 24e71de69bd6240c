//! The log-time rule driven by fake clocks: a simulated shard whose replicas have wall
//! clocks that are off (or jump) and monotonic clocks that tick with real time. Each
//! stamp is applied at once unless a test says otherwise; the shard's time is the
//! largest stamp applied, as in the state machine.

use super::*;

/// Real time when the simulations start.
const T0_MS: u64 = 1_800_000_000_000;
const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;

/// One replica: its log clock, how far its wall clock is off, and when its monotonic
/// clock started (in real time).
struct Replica {
    log_clock: LogClock,
    skew_ms: i64,
    mono_origin_ms: u64,
}

impl Replica {
    fn new(skew_ms: i64, real_ms: u64) -> Self {
        Self {
            log_clock: LogClock::default(),
            skew_ms,
            // Monotonic origins differ between replicas: only differences count.
            mono_origin_ms: real_ms - 12_345,
        }
    }
}

/// A shard: real time, the largest stamp applied (the machine's `clock_ms`), and
/// whether a hold is live.
struct Shard {
    real_ms: u64,
    applied_ms: u64,
    live: bool,
}

impl Shard {
    fn new() -> Self {
        Self {
            real_ms: T0_MS,
            applied_ms: 0,
            live: false,
        }
    }

    fn sample(&self, r: &Replica, term: Option<u64>) -> Sample {
        Sample {
            wall_ms: self.real_ms.saturating_add_signed(r.skew_ms),
            mono: Duration::from_millis(self.real_ms - r.mono_origin_ms),
            leading_term: term,
            applied_ms: self.applied_ms,
            log_settled: true,
        }
    }

    /// `r`, leading `term`, stamps an entry; the entry is applied.
    fn stamp(&mut self, r: &mut Replica, term: u64) -> u64 {
        let s = self.sample(r, Some(term));
        let live = self.live;
        let ts = r.log_clock.stamp(&s, || live);
        self.applied_ms = self.applied_ms.max(ts);
        ts
    }

    fn advance(&mut self, ms: u64) {
        self.real_ms += ms;
    }
}

/// A shard created by a leader with a correct clock, with a hold live from then on.
fn busy_shard() -> (Shard, Replica) {
    let mut shard = Shard::new();
    let mut first = Replica::new(0, shard.real_ms);
    assert_eq!(shard.stamp(&mut first, 1), T0_MS);
    shard.live = true;
    (shard, first)
}

#[test]
fn a_new_shard_starts_at_the_wall_clock() {
    let mut shard = Shard::new();
    let mut r = Replica::new(0, shard.real_ms);
    assert_eq!(shard.stamp(&mut r, 1), T0_MS, "not 1970");
    shard.advance(1_500);
    assert_eq!(shard.stamp(&mut r, 1), T0_MS + 1_500);
    // So does its first tick, and a replica that does not lead.
    let mut other = Replica::new(0, T0_MS);
    let new = Shard::new();
    assert_eq!(other.log_clock.peek(&new.sample(&other, None)), T0_MS);
    other.log_clock.tick(&new.sample(&other, Some(1)));
    assert_eq!(other.log_clock.peek(&new.sample(&other, Some(1))), T0_MS);
    let s = new.sample(&other, None);
    assert_eq!(other.log_clock.stamp(&s, || false), T0_MS);
}

#[test]
fn a_leader_an_hour_fast_moves_log_time_no_faster_than_the_slew() {
    let (mut shard, mut first) = busy_shard();
    // A hold with a 60 s TTL is granted by the correct leader, a second in.
    shard.advance(SECOND_MS);
    let granted_real_ms = shard.real_ms;
    let expires_at_ms = shard.stamp(&mut first, 1) + MINUTE_MS;
    // The correct leader dies; a leader whose wall clock is an hour fast stamps an
    // entry every 100 ms (the expiry ticker, buyers).
    let mut fast = Replica::new(HOUR_MS as i64, shard.real_ms);
    shard.advance(2 * SECOND_MS);
    let mut expired_at_real_ms = None;
    let mut last = 0;
    while shard.real_ms < T0_MS + 3 * HOUR_MS {
        let ts = shard.stamp(&mut fast, 2);
        assert!(ts >= last, "log time went back: {ts} after {last}");
        last = ts;
        let elapsed_ms = shard.real_ms - T0_MS;
        assert!(
            ts <= T0_MS + elapsed_ms + early_expiry_bound_ms(elapsed_ms),
            "log time {} ms ahead of real time after {elapsed_ms} ms",
            ts - (T0_MS + elapsed_ms)
        );
        if expired_at_real_ms.is_none() && ts >= expires_at_ms {
            expired_at_real_ms = Some(shard.real_ms);
        }
        shard.advance(100);
    }
    let lived_ms = expired_at_real_ms.unwrap() - granted_real_ms;
    assert!(
        lived_ms + early_expiry_bound_ms(MINUTE_MS) >= MINUTE_MS,
        "a 60 s hold lived {lived_ms} ms"
    );
    // It follows the wall clock at the slew's rate: 1 ms/s for the 3 h less 3.1 s it
    // led (10,796.9 ms), less the 2 s of the election that log time did not count.
    let ahead_ms = last - (shard.real_ms - 100);
    assert_eq!(ahead_ms, 8_796, "ms ahead of real time");
}

#[test]
fn a_leader_an_hour_slow_never_sets_log_time_back() {
    let (mut shard, mut first) = busy_shard();
    shard.advance(10 * SECOND_MS);
    let before = shard.stamp(&mut first, 1);
    // The leader an hour slow takes over at once (its term starts from the applied
    // stamp at its first stamp: an election's gap would not count).
    let mut slow = Replica::new(-(HOUR_MS as i64), shard.real_ms);
    assert_eq!(shard.stamp(&mut slow, 2), before);
    let mut last = before;
    let start_real_ms = shard.real_ms;
    for _ in 0..10_000 {
        shard.advance(250);
        let ts = shard.stamp(&mut slow, 2);
        assert!(ts >= last, "log time went back: {ts} after {last}");
        last = ts;
    }
    // It kept advancing, slowed by the slew (0.1 % of 2,500 s) toward a wall clock an
    // hour behind.
    let elapsed_ms = shard.real_ms - start_real_ms;
    assert_eq!(last - before, elapsed_ms - elapsed_ms / 1_000);
}

#[test]
fn a_correct_leader_after_a_fast_one_goes_on_from_its_time_and_lets_it_fade() {
    let (mut shard, _) = busy_shard();
    // Two hours under a leader an hour fast: log time 7.2 s ahead.
    let mut fast = Replica::new(HOUR_MS as i64, shard.real_ms);
    fast.log_clock.tick(&shard.sample(&fast, Some(2)));
    for _ in 0..(2 * HOUR_MS / SECOND_MS) {
        shard.advance(SECOND_MS);
        shard.stamp(&mut fast, 2);
    }
    let ahead_ms = shard.applied_ms - shard.real_ms;
    assert!((7_000..=7_200).contains(&ahead_ms), "{ahead_ms} ms ahead");
    // A correct leader takes over two seconds later.
    let mut correct = Replica::new(0, shard.real_ms);
    shard.advance(2 * SECOND_MS);
    let mut last = shard.applied_ms;
    let first = shard.stamp(&mut correct, 3);
    assert_eq!(first, last, "a new term starts from the applied stamp");
    // It never goes back, and its slew takes the lead back at 1 ms per second.
    for _ in 0..(HOUR_MS / SECOND_MS) {
        shard.advance(SECOND_MS);
        let ts = shard.stamp(&mut correct, 3);
        assert!(ts > last);
        last = ts;
    }
    let ahead_after_ms = last - shard.real_ms;
    assert!(
        ahead_after_ms + 3_500 <= ahead_ms,
        "{ahead_ms} ms ahead before, {ahead_after_ms} ms after an hour"
    );
}

#[test]
fn a_stale_leader_does_not_bring_back_the_time_it_ran_alone() {
    let (mut shard, _) = busy_shard();
    let mut a = Replica::new(HOUR_MS as i64, shard.real_ms);
    shard.stamp(&mut a, 2);
    // `a` is cut off for ten hours, still believing it leads term 2: its stamps are
    // never applied, and it slews 36 s ahead of real time.
    let mut cut_off = Shard {
        real_ms: shard.real_ms,
        applied_ms: shard.applied_ms,
        live: true,
    };
    // Meanwhile a correct leader keeps the shard's time.
    let mut b = Replica::new(0, shard.real_ms);
    for _ in 0..(10 * HOUR_MS / MINUTE_MS) {
        shard.advance(MINUTE_MS);
        cut_off.advance(MINUTE_MS);
        shard.stamp(&mut b, 3);
        cut_off.stamp(&mut a, 2);
    }
    assert!(cut_off.applied_ms >= cut_off.real_ms + 35_000);
    // Back with the others, `a` leads term 4: from the shard's time, not its own.
    shard.advance(2 * SECOND_MS);
    let before = shard.applied_ms;
    let ts = shard.stamp(&mut a, 4);
    assert_eq!(ts, before);
    shard.advance(SECOND_MS);
    assert!(shard.stamp(&mut a, 4) <= before + SECOND_MS + 1);
}

#[test]
fn a_new_term_starts_at_its_first_tick_so_deadlines_come_due_without_proposals() {
    let (mut shard, _) = busy_shard();
    let mut b = Replica::new(0, shard.real_ms);
    shard.advance(2 * SECOND_MS);
    let applied_ms = shard.applied_ms;
    // Not leading: log time is the applied stamp.
    assert_eq!(b.log_clock.peek(&shard.sample(&b, None)), applied_ms);
    // Elected: the first tick starts the term; log time runs from then on.
    b.log_clock.tick(&shard.sample(&b, Some(2)));
    shard.advance(30 * SECOND_MS);
    let now = b.log_clock.peek(&shard.sample(&b, Some(2)));
    // 30 s, and 30 ms of slew toward its wall clock (2 s ahead: the election).
    assert_eq!(now, applied_ms + 30 * SECOND_MS + 30);
    // Peeking changes nothing; another tick in the same term neither.
    b.log_clock.tick(&shard.sample(&b, Some(2)));
    assert_eq!(b.log_clock.peek(&shard.sample(&b, Some(2))), now);
    assert_eq!(shard.stamp(&mut b, 2), now);
}

#[test]
fn a_replica_that_does_not_lead_stamps_its_applied_time() {
    let (mut shard, _) = busy_shard();
    let mut follower = Replica::new(HOUR_MS as i64, shard.real_ms);
    shard.advance(MINUTE_MS);
    let s = shard.sample(&follower, None);
    assert_eq!(follower.log_clock.stamp(&s, || false), T0_MS);
}

#[test]
fn after_a_long_downtime_log_time_steps_to_the_wall_clock_at_a_quiet_moment() {
    let (mut shard, _) = busy_shard();
    // The whole shard was down for three days; a replica restarts and leads.
    shard.advance(3 * 24 * HOUR_MS);
    let mut r = Replica::new(0, shard.real_ms);
    // A hold from before the downtime is still live: no step, it would cut it short.
    assert_eq!(shard.stamp(&mut r, 5), T0_MS);
    shard.advance(MINUTE_MS);
    assert!(shard.stamp(&mut r, 5) <= T0_MS + MINUTE_MS + 61);
    // Nothing live any more, but it stamped a moment ago: an entry it stamped might
    // still be on its way to the log, so no step yet.
    shard.live = false;
    shard.advance(CLOCK_STEP_QUIET_MS - 1);
    let ts = shard.stamp(&mut r, 5);
    assert!(ts < shard.real_ms - HOUR_MS);
    // Quiet long enough: log time steps to the wall clock.
    shard.advance(CLOCK_STEP_QUIET_MS);
    assert_eq!(shard.stamp(&mut r, 5), shard.real_ms);
}

#[test]
fn no_step_while_entries_in_the_log_are_not_applied() {
    let (mut shard, _) = busy_shard();
    shard.live = false;
    shard.advance(HOUR_MS);
    let mut r = Replica::new(0, shard.real_ms);
    let mut s = shard.sample(&r, Some(2));
    s.log_settled = false;
    assert_eq!(r.log_clock.stamp(&s, || false), T0_MS);
    // A new shard takes the wall clock even so: with no stamp applied there is no
    // log time to keep, and 1970 is no time to start from.
    let fresh = Shard::new();
    let mut s = fresh.sample(&Replica::new(0, fresh.real_ms), Some(1));
    s.log_settled = false;
    assert_eq!(LogClock::default().stamp(&s, || true), T0_MS);
}

#[test]
fn a_leader_whose_wall_clock_jumps_during_its_term_is_not_followed() {
    let (mut shard, _) = busy_shard();
    let mut r = Replica::new(0, shard.real_ms);
    shard.advance(SECOND_MS);
    let before = shard.stamp(&mut r, 2);
    // NTP steps its wall clock a day forward, then a day back.
    r.skew_ms = 24 * HOUR_MS as i64;
    shard.advance(SECOND_MS);
    let ts = shard.stamp(&mut r, 2);
    assert!(ts <= before + SECOND_MS + 1, "followed the jump: {ts}");
    r.skew_ms = -(24 * HOUR_MS as i64);
    shard.advance(SECOND_MS);
    let back = shard.stamp(&mut r, 2);
    assert!(back >= ts, "went back with the wall clock");
}

#[test]
fn the_slew_adds_up_over_stamps_a_millisecond_apart() {
    let (mut shard, _) = busy_shard();
    let mut r = Replica::new(SECOND_MS as i64, shard.real_ms);
    shard.stamp(&mut r, 2);
    let start = shard.applied_ms;
    for _ in 0..10_000 {
        shard.advance(1);
        shard.stamp(&mut r, 2);
    }
    // 10 s at 1 ms per second: 10 ms more than the monotonic time, not 0.
    assert_eq!(shard.applied_ms - start, 10_000 + 10);
}

#[test]
fn one_stamp_after_a_long_gap_slews_at_most_the_per_stamp_cap() {
    let (mut shard, _) = busy_shard();
    let mut r = Replica::new(HOUR_MS as i64, shard.real_ms);
    let start = shard.stamp(&mut r, 2);
    // A day-long hold keeps the shard live with nothing to stamp for a day.
    shard.advance(24 * HOUR_MS);
    let ts = shard.stamp(&mut r, 2);
    assert_eq!(ts - start, 24 * HOUR_MS + CLOCK_SLEW_PER_STAMP_MAX_MS);
}

/// Many leader changes between replicas whose wall clocks are off by up to a day (and
/// jump), with entries stamped at random intervals and new leaders that have not
/// applied the last entries yet: no hold granted on the way ends early by more than
/// the bound.
#[test]
fn no_hold_ends_early_by_more_than_the_bound_whatever_the_wall_clocks() {
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut shard, _) = busy_shard();
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::new(next(2 * 24 * HOUR_MS) as i64 - (24 * HOUR_MS) as i64, T0_MS))
        .collect();
    // (real time applied, stamp applied) of every entry, in log order.
    let mut history: Vec<(u64, u64)> = vec![(shard.real_ms, shard.applied_ms)];
    let mut term = 1;
    let mut leader = 0;
    for _ in 0..20_000 {
        match next(100) {
            0..=2 => {
                // A leader change: an election's gap, and the new leader may not have
                // applied the last few entries yet.
                term += 1;
                leader = next(3) as usize;
                shard.advance(next(3_000));
                let lag = next(5) as usize;
                let k = history.len().saturating_sub(1 + lag);
                let mut s = shard.sample(&replicas[leader], Some(term));
                s.applied_ms = history[..=k].iter().map(|h| h.1).max().unwrap_or(0);
                s.log_settled = lag == 0;
                let ts = replicas[leader].log_clock.stamp(&s, || true);
                shard.applied_ms = shard.applied_ms.max(ts);
                history.push((shard.real_ms, shard.applied_ms));
                continue;
            }
            3 => {
                // Some wall clock jumps.
                let r = next(3) as usize;
                replicas[r].skew_ms = next(2 * 24 * HOUR_MS) as i64 - (24 * HOUR_MS) as i64;
            }
            _ => {}
        }
        let gap_max_ms = if next(10) == 0 { 20_000 } else { 300 };
        shard.advance(next(gap_max_ms));
        shard.stamp(&mut replicas[leader], term);
        history.push((shard.real_ms, shard.applied_ms));
    }
    // Every entry grants a hold for every TTL below; it must not end early by more
    // than the bound.
    for ttl_ms in [1_000, MINUTE_MS, 15 * MINUTE_MS] {
        let mut end = 0;
        for (i, &(granted_real_ms, granted_ms)) in history.iter().enumerate() {
            end = end.max(i);
            while end < history.len() && history[end].1 < granted_ms + ttl_ms {
                end += 1;
            }
            let Some(&(ended_real_ms, _)) = history.get(end) else {
                break;
            };
            let lived_ms = ended_real_ms - granted_real_ms;
            assert!(
                lived_ms + early_expiry_bound_ms(ttl_ms) >= ttl_ms,
                "a {ttl_ms} ms hold granted at entry {i} lived {lived_ms} ms"
            );
        }
    }
}

#[test]
fn the_skew_knob_moves_the_wall_clock_only() {
    let skewed = SystemClock::with_skew(HOUR_MS as i64);
    let plain = SystemClock::default();
    let diff_ms = skewed.now_ms() as i64 - plain.now_ms() as i64;
    assert!((HOUR_MS as i64 - 1_000..=HOUR_MS as i64 + 1_000).contains(&diff_ms));
    assert!(skewed.monotonic() < Duration::from_secs(60));
    skewed.set_skew_ms(-(HOUR_MS as i64));
    let diff_ms = skewed.now_ms() as i64 - plain.now_ms() as i64;
    assert!((-(HOUR_MS as i64) - 1_000..=-(HOUR_MS as i64) + 1_000).contains(&diff_ms));
    let (a, b) = (skewed.monotonic(), skewed.monotonic());
    assert!(b >= a);
}
