//! What every process that calls another shares about reaching it: how an address
//! the user wrote becomes a URL, and how long to wait between attempts. Written once
//! for nodes, frontends and the client library.

use std::time::Duration;

/// The URL of a gRPC endpoint given as a URL (`http://host:port`, `https://...`) or
/// as `host:port` (plaintext), with surrounding space and a trailing `/` dropped.
/// `None` for an empty address.
pub fn endpoint_url(addr: &str) -> Option<String> {
    let addr = addr.trim().trim_end_matches('/');
    if addr.is_empty() {
        return None;
    }
    Some(if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    })
}

/// Exponential backoff: each delay doubles the one before, from `min` up to `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// A `max` below `min` is taken as `min` (a constant delay).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            max: max.max(min),
        }
    }

    /// The next delay in full.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// The next delay with full jitter: `fraction` (in [0, 1), from the caller's
    /// randomness) of it, so callers that failed together do not retry together.
    pub fn next_jittered(&mut self, fraction: f64) -> Duration {
        self.next_delay().mul_f64(fraction.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_urls() {
        assert_eq!(
            endpoint_url("127.0.0.1:7400").as_deref(),
            Some("http://127.0.0.1:7400")
        );
        assert_eq!(
            endpoint_url(" https://a:1/ ").as_deref(),
            Some("https://a:1")
        );
        assert_eq!(endpoint_url("http://a:1").as_deref(), Some("http://a:1"));
        assert_eq!(endpoint_url("  "), None);
    }

    #[test]
    fn delays_double_up_to_the_most() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(5), ms(30));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [ms(5), ms(10), ms(20), ms(30), ms(30)]);
        let mut b = Backoff::new(ms(100), ms(100));
        assert_eq!(b.next_jittered(0.5), ms(50));
        assert_eq!(b.next_jittered(7.0), ms(100));
    }
}
