//! The checkout saga: a hold becomes a paid order, on the shard's leader.
//!
//! BeginCheckout, then the charge, then CompleteCheckout, or AbortCheckout when the
//! payment is declined. A charge whose
//! outcome is unknown (the gateway timed out) leaves the checkout in progress and
//! answers UNAVAILABLE: a retry with the same idempotency key charges at most once
//! (the gateway honours the key) and completes it, and if nobody retries, the payment
//! deadline aborts it. A charge that cannot become an order (the checkout was aborted
//! meanwhile) is refunded.
//!
//! The gateway never sees the client's idempotency key itself, only keys scoped to
//! the hold and the checkout attempt (`payment::charge_key`, `payment::refund_key`):
//! the state machine refuses a client key already bound to another hold of the shard,
//! and the scoped keys keep a key reused across shards from reaching another hold's
//! charge. A refund names the payment reference that this attempt's charge returned.

use std::time::Duration;

use raft_store::{Command, HoldId, OrderView, Refusal, Reply};
use tracing::warn;

use super::Shard;
use crate::error::Error;
use crate::payment::{
    charge_key, refund_key, ChargeRequest, PaymentError, PaymentGateway, RefundRequest,
};

/// What a caller asks to check out.
pub struct Checkout {
    pub hold: HoldId,
    /// The payment token (a card's, from the payment provider).
    pub token: String,
    /// The caller's idempotency key (filled in when it gave none).
    pub key: String,
    /// Who pays (the audit trail).
    pub by: Option<raft_store::Actor>,
}

/// Runs a checkout on `shard`, whose leader this replica is (see the module doc).
pub async fn run(
    shard: &Shard,
    gateway: &dyn PaymentGateway,
    payment_timeout: Duration,
    checkout: Checkout,
) -> Result<OrderView, Error> {
    let Checkout {
        hold,
        token,
        key,
        by,
    } = checkout;
    let begun = shard
        .propose(Command::BeginCheckout {
            hold: hold.clone(),
            idempotency_key: key.clone(),
            by,
        })
        .await??;
    match begun {
        Reply::Completed(order) => return Ok(order),
        Reply::CheckoutStarted { .. } => {}
        other => return Err(Error::unexpected(other)),
    }
    // BeginCheckout answered for this hold, so the machine has bound `key` to it: the
    // gateway key names this attempt of this hold and nothing else.
    let charge = gateway.charge(ChargeRequest {
        token,
        idempotency_key: charge_key(&hold, &key),
        description: hold.to_string(),
    });
    match tokio::time::timeout(payment_timeout, charge).await {
        Ok(Ok(payment_ref)) => {
            let done = shard
                .propose(Command::CompleteCheckout {
                    hold: hold.clone(),
                    idempotency_key: key.clone(),
                    payment_ref: payment_ref.clone(),
                })
                .await?;
            match done {
                Ok(Reply::Completed(order)) => Ok(order),
                Ok(other) => Err(Error::unexpected(other)),
                Err(refusal) => {
                    // The checkout ended without us (its payment deadline passed):
                    // the money goes back. Only this attempt's own charge: the
                    // reference its charge just returned, under its own refund key.
                    warn!(%hold, %payment_ref, %refusal, "charged but not completed; refunding");
                    let refund = RefundRequest {
                        payment_ref,
                        idempotency_key: refund_key(&hold, &key),
                    };
                    if let Err(e) = gateway.refund(refund).await {
                        warn!(%hold, error = %e, "refund failed");
                    }
                    Err(refusal.into())
                }
            }
        }
        Ok(Err(PaymentError::Declined(reason))) => {
            shard
                .propose(Command::AbortCheckout {
                    hold,
                    idempotency_key: key,
                    reason: reason.clone(),
                })
                .await??;
            Err(Refusal::Declined(reason).into())
        }
        Ok(Err(e @ PaymentError::Unavailable(_))) => Err(Error::Unavailable(format!(
            "{e}; the payment outcome is unknown: retry with the same idempotency key"
        ))),
        Err(_) => Err(Error::Unavailable(format!(
            "payment gateway timed out after {} ms; the payment outcome is unknown: \
             retry with the same idempotency key",
            payment_timeout.as_millis()
        ))),
    }
}
