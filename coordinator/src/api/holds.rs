//! `HoldMany`: many holds in one call, decided together.
//!
//! A call's holds are grouped by shard. Each group is proposed on its shard's leader
//! together (so its holds share log entries), and each hold is answered on its own,
//! in the call's order: a refused or failed hold fails alone. A group that no leader
//! answers within the router's wait fails every one of its holds with that status.
//!
//! A process that only forwards a call whose routing metadata names one event passes
//! it on undecoded (`service`, `forward`); this module is the typed way, which every
//! call takes where it is decided and where it has no such metadata (holds for
//! several events, say).
//!
//! Invariants:
//! - The per-user rate limit is asked where holds are decided: on the shard's leader,
//!   once per hold and call ([`Verdicts`]: a leader that tries a call again, after
//!   leadership wavered, reuses its first verdicts, so a retry is never refused a hold
//!   it may already have applied). Every entry point (frontends,
//!   nodes) forwards to that one leader, so a user's budget for an event is one budget
//!   whichever way the holds come, and nothing a client sends (a forged hop count)
//!   can skip it.
//! - Every hold forwarded carries its retry key (filled in here when the caller left it
//!   empty), so the router's retries cannot apply a hold twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use raft_store::{Command, EventId, HoldRequest, Limit, Reply};
use seatd_proto::v1 as pb;
use tonic::Status;

use crate::error::Error;
use crate::forward::{Call, Outbound};
use crate::process::Process;
use crate::route::Mode;
use seatd_wire as convert;
use seatd_wire::routing::paths;

pub use crate::limits::HOLDS_PER_CALL_MAX;

/// Validates a hold request (filling in its retry key); returns its shard and event.
/// The command is made only where the hold is decided ([`hold_command`]): a frontend
/// or a follower that forwards the hold never needs it.
pub(crate) fn validate_hold(
    node: &Process,
    req: &mut pb::HoldRequest,
) -> Result<(u32, EventId), Error> {
    let event = convert::event_id(&req.event_id)?;
    check_hold_limits(req)?;
    if req.client_reservation_id.is_empty() {
        req.client_reservation_id = node.fresh_id("r");
    }
    if !req.expected_versions.is_empty() && req.expected_versions.len() != req.seat_ids.len() {
        return Err(Error::Invalid(format!(
            "{} expected versions for {} seats",
            req.expected_versions.len(),
            req.seat_ids.len()
        )));
    }
    Ok((node.cluster.shard_of(&event), event))
}

/// The rate limit's verdicts for one call's holds on this leader, asked the first time
/// the leader tries the call and reused if it tries again (see the module doc).
#[derive(Default)]
pub(crate) struct Verdicts(std::sync::OnceLock<Vec<bool>>);

impl Verdicts {
    /// Whether each of `users`' holds is admitted (asked once per call).
    pub(crate) fn of<'a>(&self, node: &Process, users: impl Iterator<Item = &'a str>) -> &[bool] {
        self.0
            .get_or_init(|| users.map(|u| node.hold_limiter.admit(u)).collect())
    }
}

/// The refusal of a hold over its user's rate.
pub(crate) fn rate_limited(node: &Process, user: &str) -> Error {
    Error::RateLimited(format!(
        "user {user:?} asked for more than {} holds per second",
        node.settings.holds_per_user_per_s
    ))
}

/// Refuses a hold over the absolute caps, from its fields alone: more seats than any
/// event allows in one hold, or an id longer than its limit. What passes encodes to at
/// most `HOLD_BYTES_MAX`, far below `COMMAND_BYTES_MAX`; the event's own (lower) seat
/// limit and the ids' syntax are the state machine's to check.
fn check_hold_limits(req: &pb::HoldRequest) -> Result<(), Error> {
    Limit::SeatsPerHold.check(req.seat_ids.len())?;
    Limit::SeatsPerHold.check(req.expected_versions.len())?;
    Limit::TokenBytes.check(req.user_id.len())?;
    Limit::TokenBytes.check(req.client_reservation_id.len())?;
    for seat in &req.seat_ids {
        Limit::SeatIdBytes.check(seat.len())?;
    }
    Ok(())
}

/// The command of a hold that [`validate_hold`] accepted.
pub(crate) fn hold_command(event: &EventId, req: &pb::HoldRequest) -> Command {
    Command::Hold(HoldRequest {
        event_id: event.clone(),
        user: req.user_id.clone(),
        seats: req.seat_ids.clone(),
        client_reservation_id: req.client_reservation_id.clone(),
        ttl_ms: req.ttl_ms,
        expected_versions: (!req.expected_versions.is_empty())
            .then(|| req.expected_versions.clone()),
    })
}

/// A failed item of a `HoldMany` answer.
fn failure(status: Status) -> pb::HoldResult {
    // One decode of the status's detail (a flash sale's conflicts come through here):
    // it names the seats only for CONFLICT and the limit only for LIMIT_EXCEEDED.
    let detail = crate::error::reason_of(&status).unwrap_or_default();
    pb::HoldResult {
        result: Some(pb::hold_result::Result::Failure(pb::Failure {
            code: status.code() as i32,
            message: status.message().to_string(),
            seat_ids: detail.seat_ids,
            limit_exceeded: detail.limit,
            reason: detail.reason,
        })),
    }
}

/// The answer to `count` holds that all failed with `status`.
fn all_failed(count: usize, status: Status) -> pb::HoldManyResponse {
    pb::HoldManyResponse {
        results: vec![failure(status); count],
    }
}

fn count_mismatch(answers: usize, holds: usize) -> Status {
    Error::Internal(format!("{answers} answers for {holds} holds")).into()
}

/// Refuses a call with more holds than [`HOLDS_PER_CALL_MAX`].
fn check_count(holds: usize) -> Result<(), Error> {
    if holds > HOLDS_PER_CALL_MAX {
        return Err(Error::Invalid(format!(
            "at most {HOLDS_PER_CALL_MAX} holds per call, not {holds}"
        )));
    }
    Ok(())
}

/// Decides a `HoldMany` call the typed way.
pub(crate) async fn hold_many(
    node: &Arc<Process>,
    req: pb::HoldManyRequest,
    call: Call,
) -> Result<pb::HoldManyResponse, Error> {
    check_count(req.holds.len())?;
    let mut results: Vec<Option<pb::HoldResult>> = vec![None; req.holds.len()];
    let mut groups: BTreeMap<u32, Vec<(usize, pb::HoldRequest, EventId)>> = BTreeMap::new();
    for (i, mut h) in req.holds.into_iter().enumerate() {
        let valid =
            super::acting_user(&call, &mut h.user_id).and_then(|()| validate_hold(node, &mut h));
        match valid {
            Ok((shard, event)) => groups.entry(shard).or_default().push((i, h, event)),
            Err(e) => results[i] = Some(failure(e.into())),
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (shard, items) in groups {
        tasks.spawn(hold_group(node.clone(), shard, call.clone(), items));
    }
    while let Some(done) = tasks.join_next().await {
        let done = done.map_err(|e| Error::Internal(format!("hold task: {e}")))?;
        for (i, r) in done {
            results[i] = Some(r);
        }
    }
    Ok(pb::HoldManyResponse {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| failure(Error::Internal("no result".into()).into())))
            .collect(),
    })
}

/// The holds of one shard from a `HoldMany` call, decided on the shard's leader:
/// proposed together (so they share log entries), each answered on its own. If
/// leadership moves while they are in flight the whole group is tried again at the
/// new leader, which is safe: every hold carries its reservation id.
async fn hold_group(
    node: Arc<Process>,
    shard: u32,
    call: Call,
    items: Vec<(usize, pb::HoldRequest, EventId)>,
) -> Vec<(usize, pb::HoldResult)> {
    let mut indices = Vec::with_capacity(items.len());
    let mut holds = Vec::with_capacity(items.len());
    let mut events = Vec::with_capacity(items.len());
    for (i, h, e) in items {
        indices.push(i);
        holds.push(h);
        events.push(e);
    }
    let forward = pb::HoldManyRequest { holds };
    // Sent on with one of its events as routing metadata: they share the shard.
    let out = Outbound::message(paths::HOLD_MANY, &forward, events.first());
    let verdicts = Verdicts::default();
    let answered = node
        .routed(shard, Mode::Leader, &call, &out, |s| {
            // Every command is queued before any answer is awaited, so they share
            // entries; no task per hold. A hold over its user's rate is not queued.
            let admitted = verdicts.of(&node, forward.holds.iter().map(|h| h.user_id.as_str()));
            let pending: Vec<_> = forward
                .holds
                .iter()
                .zip(&events)
                .zip(admitted)
                .map(|((h, e), ok)| match ok {
                    true => Ok(s.submit(hold_command(e, h))),
                    false => Err(rate_limited(&node, &h.user_id)),
                })
                .collect();
            async move {
                let mut results = Vec::with_capacity(pending.len());
                for p in pending {
                    let outcome = match p {
                        Err(limited) => {
                            results.push(failure(limited.into()));
                            continue;
                        }
                        Ok(Ok(p)) => p.outcome().await,
                        Ok(Err(e)) => Err(e),
                    };
                    results.push(match outcome {
                        Ok(Ok(Reply::Held(h))) => pb::HoldResult {
                            result: Some(pb::hold_result::Result::Hold(convert::hold_to_pb(&h))),
                        },
                        Ok(Ok(other)) => failure(Error::unexpected(other).into()),
                        Ok(Err(refusal)) => failure(Error::from(refusal).into()),
                        // Refused here, not applied anywhere: this hold alone fails.
                        Err(
                            e @ (crate::shard::proposer::ShardError::Overloaded(_)
                            | crate::shard::proposer::ShardError::TooLarge(_)),
                        ) => failure(Error::from(e).into()),
                        // Not applied here, or unknown: the group goes again.
                        Err(e) => return Err(Error::from(e)),
                    });
                }
                Ok(pb::HoldManyResponse { results })
            }
        })
        .await;
    let results = match answered {
        Ok(r) if r.results.len() == indices.len() => r.results,
        Ok(r) => {
            all_failed(
                indices.len(),
                count_mismatch(r.results.len(), indices.len()),
            )
            .results
        }
        Err(e) => all_failed(indices.len(), e.into()).results,
    };
    indices.into_iter().zip(results).collect()
}
