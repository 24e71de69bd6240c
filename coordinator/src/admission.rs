//! Admission control: how many holds one user may ask for per second.
//!
//! A flash sale's bots hammer the hold call; a token bucket per user (refilled at
//! `holds_per_user_per_s`, holding at most that many tokens) answers the excess with
//! RESOURCE_EXHAUSTED (reason RATE_LIMITED; HTTP 429) before it reaches a shard's
//! queue. It is asked where holds are decided, on the leader of the event's shard
//! (`api::holds::Verdicts`), so one user has one budget per event whichever frontends or
//! nodes the holds come through, and no header a client sends skips it. It is not
//! replicated: it protects capacity, not correctness, so it uses the leader's
//! monotonic clock, and a new leader starts with full buckets.
//!
//! Caveat: the budget is per leader, so a user holding seats of events on shards led
//! by different nodes has one budget on each of them.
//!
//! Bounded: at most [`USERS_TRACKED_MAX`] buckets; when full, idle buckets (full
//! again) are dropped first, and if none is idle every bucket is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub use crate::limits::USERS_TRACKED_MAX;

pub struct HoldLimiter {
    per_s: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl HoldLimiter {
    /// `per_s` holds per user per second, in bursts of up to `per_s`; 0 admits all.
    pub fn new(per_s: u32) -> Self {
        Self {
            per_s: f64::from(per_s),
            buckets: Mutex::default(),
        }
    }

    /// Whether `user` may ask for one more hold now.
    pub fn admit(&self, user: &str) -> bool {
        self.admit_at(user, Instant::now())
    }

    fn admit_at(&self, user: &str, now: Instant) -> bool {
        if self.per_s == 0.0 {
            return true;
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= USERS_TRACKED_MAX && !buckets.contains_key(user) {
            let per_s = self.per_s;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_s < per_s
            });
            if buckets.len() >= USERS_TRACKED_MAX {
                buckets.clear();
            }
        }
        // A user seen before costs a lookup, not an allocation.
        if !buckets.contains_key(user) {
            buckets.insert(user.to_string(), (self.per_s, now));
        }
        let Some((tokens, at)) = buckets.get_mut(user) else {
            return true;
        };
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_s).min(self.per_s);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_user_gets_a_burst_then_the_rate() {
        let l = HoldLimiter::new(5);
        let t0 = Instant::now();
        let granted = (0..20).filter(|_| l.admit_at("bot", t0)).count();
        assert_eq!(granted, 5);
        // Another user is not affected.
        assert!(l.admit_at("fan", t0));
        // 400 ms later: two more tokens.
        let t1 = t0 + Duration::from_millis(400);
        assert_eq!((0..10).filter(|_| l.admit_at("bot", t1)).count(), 2);
        // Off: everything passes.
        let off = HoldLimiter::new(0);
        assert!((0..1000).all(|_| off.admit_at("bot", t0)));
    }
}
