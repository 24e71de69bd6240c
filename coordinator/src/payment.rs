//! Charging a buyer: the payment gateway seen by the commit flow, the idempotency keys
//! it is given, and its built-in test mode.
//!
//! A gateway must honour the idempotency key the way card processors do: charging
//! the same key twice returns the first charge and moves money once. The commit flow
//! relies on that when a commit is retried (on another node, after a leader change):
//! it may call `charge` again for a checkout that is still in progress.
//!
//! Invariant: a gateway key names one checkout attempt of one hold, never anything a
//! caller can share with another hold. The client's idempotency key is not sent as it
//! is: it is the caller's, and one caller reusing it for another hold (of another event,
//! even of another shard, where the state machine cannot see the first use) must not
//! get the first hold's charge back, nor have it refunded. [`charge_key`] and
//! [`refund_key`] are `{hold id}:{attempt}:{charge|refund}`, where the attempt is 128
//! bits of SHA-256 over the hold id and the client's key (each length-prefixed). The
//! state machine binds a client key to one hold and each checkout attempt of a hold to
//! one client key, so equal gateway keys mean the same attempt of the same hold: a
//! retried commit charges once, and no two holds or attempts share a charge. The hold
//! id is in clear for people reading the processor's dashboard; the fixed-size attempt
//! keeps every key within processors' limits (Stripe: 255 bytes) whatever the client
//! sent. A refund names the payment reference its own attempt's charge returned.
//!
//! [`TestGateway`] behaves like a card processor's test mode: `tok_visa` succeeds,
//! `tok_chargeDeclined` is declined and `tok_timeout` never answers (the commit flow's
//! deadline turns it into a timeout). Its payment references are derived from the
//! idempotency key, so every node's test gateway gives a retried charge the same
//! reference, as one real processor account would. It refunds only charges it made,
//! each at most once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use raft_store::HoldId;
use sha2::{Digest, Sha256};

/// What the commit flow asks a gateway to do.
#[derive(Clone, Debug)]
pub struct ChargeRequest {
    pub token: String,
    /// [`charge_key`] of the hold and the client's key.
    pub idempotency_key: String,
    /// Shown on the charge (the hold id).
    pub description: String,
}

/// Giving back one charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    /// What the charge of this very attempt returned.
    pub payment_ref: String,
    /// [`refund_key`] of the hold and the client's key: a refund retried is made once.
    pub idempotency_key: String,
}

/// The gateway's idempotency key for the charge of `hold` under the client's key.
pub fn charge_key(hold: &HoldId, client_key: &str) -> String {
    format!("{hold}:{}:charge", attempt(hold, client_key))
}

/// The gateway's idempotency key for refunding that charge.
pub fn refund_key(hold: &HoldId, client_key: &str) -> String {
    format!("{hold}:{}:refund", attempt(hold, client_key))
}

/// One checkout attempt of one hold, as 32 hex digits. Each part is length-prefixed,
/// so no two (hold, key) pairs hash the same input.
fn attempt(hold: &HoldId, client_key: &str) -> String {
    let hold = hold.to_string();
    let mut h = Sha256::new();
    h.update(b"seatd checkout attempt v1");
    for part in [hold.as_bytes(), client_key.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    fn refund(&self, request: RefundRequest) -> PaymentFuture<()>;
}

/// Test tokens, as in card processors' test modes.
pub const TOKEN_OK: &str = "tok_visa";
pub const TOKEN_DECLINED: &str = "tok_chargeDeclined";
pub const TOKEN_TIMEOUT: &str = "tok_timeout";

/// Keys the test gateway remembers; older ones are forgotten first.
use crate::limits::TEST_GATEWAY_KEYS_MAX as TEST_KEYS_MAX;

#[derive(Default)]
struct Ledger {
    results: HashMap<String, Result<String, PaymentError>>,
    order: VecDeque<String>,
    /// Each charge made (by payment reference), with the key of its refund once
    /// refunded; forgotten with the key that made it.
    charged: HashMap<String, Option<String>>,
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
        if let Ok(charge) = &result {
            l.charges += 1;
            l.charged.insert(charge.clone(), None);
        }
        if l.order.len() >= TEST_KEYS_MAX {
            if let Some(old) = l.order.pop_front() {
                if let Some(Ok(charge)) = l.results.remove(&old) {
                    l.charged.remove(&charge);
                }
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

    fn refund(&self, request: RefundRequest) -> PaymentFuture<()> {
        let mut guard = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let l = &mut *guard;
        let result = match l.charged.get_mut(&request.payment_ref) {
            None => Err(PaymentError::Declined(format!(
                "no charge {} to refund",
                request.payment_ref
            ))),
            // The same refund again: done once already.
            Some(Some(key)) if *key == request.idempotency_key => Ok(()),
            Some(Some(_)) => Err(PaymentError::Declined(format!(
                "charge {} was already refunded",
                request.payment_ref
            ))),
            Some(refund) => {
                *refund = Some(request.idempotency_key);
                l.refunds += 1;
                Ok(())
            }
        };
        Box::pin(std::future::ready(result))
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

    fn refund(payment_ref: &str, key: &str) -> RefundRequest {
        RefundRequest {
            payment_ref: payment_ref.into(),
            idempotency_key: key.into(),
        }
    }

    #[tokio::test]
    async fn the_test_gateway_refunds_only_its_own_charges_once() {
        let g = TestGateway::default();
        let r1 = g.charge(req(TOKEN_OK, "k1")).await.unwrap();
        assert!(g.refund(refund("ch_test_nope", "x")).await.is_err());
        g.refund(refund(&r1, "k1-refund")).await.unwrap();
        // Retried: done once.
        g.refund(refund(&r1, "k1-refund")).await.unwrap();
        assert_eq!(g.counts(), (1, 1));
        assert!(g.refund(refund(&r1, "another")).await.is_err());
        assert_eq!(g.counts(), (1, 1));
    }

    /// `id` with a tag added (any tag parses; only the machine checks them).
    fn hold(id: &str) -> HoldId {
        HoldId::parse(&format!("{id}-0123456789abcdef")).unwrap()
    }

    #[test]
    fn gateway_keys_name_one_attempt_of_one_hold() {
        let k = charge_key(&hold("gig.h1"), "k1");
        // Stable across processes and versions (retries on another node must match).
        assert_eq!(k, charge_key(&hold("gig.h1"), "k1"));
        let (hold_part, rest) = k.split_once(':').unwrap();
        let (att, op) = rest.split_once(':').unwrap();
        assert_eq!((hold_part, op), ("gig.h1-0123456789abcdef", "charge"));
        assert_eq!(att.len(), 32);
        assert!(att.bytes().all(|b| b.is_ascii_hexdigit()));
        // The same client key with another hold, of this event or another: another key.
        assert_ne!(k, charge_key(&hold("gig.h2"), "k1"));
        assert_ne!(k, charge_key(&hold("rock-night.h1"), "k1"));
        // Another attempt (another client key) on the same hold: another key.
        assert_ne!(k, charge_key(&hold("gig.h1"), "k2"));
        // The refund of an attempt is keyed apart from its charge, and from others'.
        let r = refund_key(&hold("gig.h1"), "k1");
        assert_eq!(r, format!("gig.h1-0123456789abcdef:{att}:refund"));
        assert_ne!(r, refund_key(&hold("gig.h2"), "k1"));
        // Length-prefixed parts: moving bytes between hold and key changes the attempt.
        assert_ne!(attempt(&hold("a.h11"), "2"), attempt(&hold("a.h1"), "12"));
        // Within processors' limits whatever the client sent.
        let longest = charge_key(
            &hold(&format!("{}.h{}", "e".repeat(64), u64::MAX)),
            &"k".repeat(raft_store::limits::TOKEN_BYTES_MAX),
        );
        assert!(longest.len() <= 255, "{}", longest.len());
    }
}
