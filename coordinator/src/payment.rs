//! Charging a buyer: the payment gateway seen by the commit flow, and its built-in
//! test mode.
//!
//! A gateway must honour the idempotency key the way card processors do: charging
//! the same key twice returns the first charge and moves money once. The commit flow
//! relies on that when a commit is retried (on another node, after a leader change):
//! it may call `charge` again for a checkout that is still in progress.
//!
//! [`TestGateway`] behaves like a card processor's test mode: `tok_visa` succeeds,
//! `tok_chargeDeclined` is declined and `tok_timeout` never answers (the commit flow's
//! deadline turns it into a timeout). Its payment references are derived from the
//! idempotency key, so every node's test gateway gives a retried charge the same
//! reference, as one real processor account would.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// What the commit flow asks a gateway to do.
#[derive(Clone, Debug)]
pub struct ChargeRequest {
    pub token: String,
    pub idempotency_key: String,
    /// Shown on the charge (the hold id).
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The processor refused the charge; nothing was charged.
    #[error("{0}")]
    Declined(String),
    /// The gateway failed in a way that leaves the outcome unknown.
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
}

pub type PaymentFuture<T> = Pin<Box<dyn Future<Output = Result<T, PaymentError>> + Send>>;

pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges `request.token`, returning the payment reference.
    fn charge(&self, request: ChargeRequest) -> PaymentFuture<String>;
    /// Gives back a charge that could not be turned into an order.
    fn refund(&self, payment_ref: String) -> PaymentFuture<()>;
}

/// Test tokens, as in card processors' test modes.
pub const TOKEN_OK: &str = "tok_visa";
pub const TOKEN_DECLINED: &str = "tok_chargeDeclined";
pub const TOKEN_TIMEOUT: &str = "tok_timeout";

/// Keys the test gateway remembers; older ones are forgotten first.
const TEST_KEYS_MAX: usize = 100_000;

#[derive(Default)]
struct Ledger {
    results: HashMap<String, Result<String, PaymentError>>,
    order: VecDeque<String>,
    charges: u64,
    refunds: u64,
}

/// The built-in test-mode gateway.
#[derive(Default)]
pub struct TestGateway {
    ledger: Mutex<Ledger>,
}

impl TestGateway {
    /// (charges made, refunds made) since start; repeated keys are not counted again.
    pub fn counts(&self) -> (u64, u64) {
        let l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        (l.charges, l.refunds)
    }

    fn decide(&self, request: &ChargeRequest) -> Option<Result<String, PaymentError>> {
        let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = l.results.get(&request.idempotency_key) {
            return Some(first.clone());
        }
        let result = match request.token.as_str() {
            TOKEN_OK => Ok(payment_ref(&request.idempotency_key)),
            TOKEN_DECLINED => Err(PaymentError::Declined("card declined".into())),
            TOKEN_TIMEOUT => return None,
            other => Err(PaymentError::Declined(format!(
                "unknown test token {other:?} (use {TOKEN_OK}, {TOKEN_DECLINED} or {TOKEN_TIMEOUT})"
            ))),
        };
        if result.is_ok() {
            l.charges += 1;
        }
        if l.order.len() >= TEST_KEYS_MAX {
            if let Some(old) = l.order.pop_front() {
                l.results.remove(&old);
            }
        }
        l.order.push_back(request.idempotency_key.clone());
        l.results
            .insert(request.idempotency_key.clone(), result.clone());
        Some(result)
    }
}

/// `ch_test_` and 24 hex digits of SHA-256 of the key.
fn payment_ref(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("ch_test_{hex}")
}

impl PaymentGateway for TestGateway {
    fn charge(&self, request: ChargeRequest) -> PaymentFuture<String> {
        match self.decide(&request) {
            Some(result) => Box::pin(std::future::ready(result)),
            // Never answers: the caller's deadline decides.
            None => Box::pin(std::future::pending()),
        }
    }

    fn refund(&self, _payment_ref: String) -> PaymentFuture<()> {
        let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        l.refunds += 1;
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn req(token: &str, key: &str) -> ChargeRequest {
        ChargeRequest {
            token: token.into(),
            idempotency_key: key.into(),
            description: "ev.h1".into(),
        }
    }

    #[tokio::test]
    async fn test_tokens_behave_like_a_processor_test_mode() {
        let g = TestGateway::default();
        let r1 = g.charge(req(TOKEN_OK, "k1")).await.unwrap();
        assert!(r1.starts_with("ch_test_"));
        // Same key: same charge, no second charge, even with another token.
        assert_eq!(g.charge(req(TOKEN_OK, "k1")).await.unwrap(), r1);
        assert_eq!(g.charge(req(TOKEN_DECLINED, "k1")).await.unwrap(), r1);
        assert_eq!(g.counts(), (1, 0));
        assert!(matches!(
            g.charge(req(TOKEN_DECLINED, "k2")).await,
            Err(PaymentError::Declined(_))
        ));
        assert!(matches!(
            g.charge(req("tok_bogus", "k3")).await,
            Err(PaymentError::Declined(m)) if m.contains("unknown test token")
        ));
        let timed_out = tokio::time::timeout(
            Duration::from_millis(50),
            g.charge(req(TOKEN_TIMEOUT, "k4")),
        )
        .await;
        assert!(timed_out.is_err());
        // A key that timed out was not charged: a later try can still succeed.
        assert!(g.charge(req(TOKEN_OK, "k4")).await.is_ok());
        assert_eq!(g.counts(), (2, 0));
        // Another node's gateway names the same key's charge identically.
        let other = TestGateway::default();
        assert_eq!(other.charge(req(TOKEN_OK, "k1")).await.unwrap(), r1);
    }
}
