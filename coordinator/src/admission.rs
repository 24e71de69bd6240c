//! Admission control: token buckets that answer excess calls with RESOURCE_EXHAUSTED
//! (reason RATE_LIMITED; HTTP 429) before they cost anything.
//!
//! - [`HoldLimiter`]: how many holds one user may ask for per second. A flash sale's
//!   bots hammer the hold call; a bucket per user (refilled at `holds_per_user_per_s`,
//!   holding at most that many tokens) stops the excess before it reaches a shard's
//!   queue. It is asked where holds are decided, on the leader of the event's shard
//!   (`api::holds::Verdicts`), so one user has one budget per event whichever
//!   frontends or nodes the holds come through, and no header a client sends skips it.
//!   With tokens checked, the user is the token's subject, so a new name buys nothing.
//! - [`AddressLimiter`]: how many calls without a valid token one client address may
//!   make per second, where tokens are checked (`service`): missing or bad tokens, and
//!   the calls that need none (cluster status). A script that cannot sign tokens cannot
//!   make the process answer it more than that.
//!
//! Neither is replicated: they protect capacity, not correctness, so they use the
//! process's monotonic clock, and a restart (or a new leader) starts with full buckets.
//!
//! Caveat: a user's hold budget is per leader, so a user holding seats of events on
//! shards led by different nodes has one budget on each of them.
//!
//! Bounded: at most [`USERS_TRACKED_MAX`] buckets; when full, idle buckets (full
//! again) are dropped first, and if none is idle every bucket is.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

pub use crate::limits::USERS_TRACKED_MAX;

/// Token buckets by key: `per_s` a second, in bursts of up to `per_s`.
pub struct Buckets<K> {
    per_s: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

/// Holds per user per second.
pub type HoldLimiter = Buckets<String>;
/// Calls without a valid token per client address per second.
pub type AddressLimiter = Buckets<IpAddr>;

impl<K: Hash + Eq> Buckets<K> {
    /// `per_s` a second per key, in bursts of up to `per_s`; 0 admits all.
    pub fn new(per_s: u32) -> Self {
        Self {
            per_s: f64::from(per_s),
            buckets: Mutex::default(),
        }
    }

    /// Whether `key` may have one more now.
    pub fn admit<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.admit_at(key, Instant::now())
    }

    fn admit_at<Q>(&self, key: &Q, now: Instant) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.per_s == 0.0 {
            return true;
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= USERS_TRACKED_MAX && !buckets.contains_key(key) {
            let per_s = self.per_s;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_s < per_s
            });
            if buckets.len() >= USERS_TRACKED_MAX {
                buckets.clear();
            }
        }
        // A key seen before costs a lookup, not an allocation.
        if !buckets.contains_key(key) {
            buckets.insert(key.to_owned(), (self.per_s, now));
        }
        let Some((tokens, at)) = buckets.get_mut(key) else {
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

    #[test]
    fn an_address_gets_a_burst_then_the_rate() {
        let l = AddressLimiter::new(3);
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        assert_eq!((0..10).filter(|_| l.admit_at(&a, t0)).count(), 3);
        assert!(l.admit_at(&IpAddr::from([10, 0, 0, 2]), t0));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| l.admit_at(&a, t1)).count(), 3);
    }
}
