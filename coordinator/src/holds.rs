//! `HoldMany`: many holds in one call, and how a call that is only forwarded passes
//! through without being decoded.
//!
//! A call's holds are grouped by shard. Each group is proposed on its shard's leader
//! together (so its holds share log entries), and each hold is answered on its own,
//! in the call's order: a refused or failed hold fails alone.
//!
//! Passing through. A process that only forwards a call (a frontend, or a node that
//! does not lead the call's shard) has no use for its holds or their answers beyond
//! routing. When every hold of a call is for one shard and carries its retry key, such
//! a process reads only the event ids (and, on the first hop, the user ids for the
//! rate limit) through a view of the request ([`pb::HoldManyRouting`]), forwards the
//! bytes it received, and returns the leader's answer bytes as they came. Decoding and
//! re-encoding every hold and every answer at each hop was about a third of a
//! frontend's CPU per call. Every other call (holds for several shards, a hold without
//! a retry key, bytes the view cannot read, a call this node decides itself) is decoded
//! and served the typed way.
//!
//! Invariants:
//! - Both ways give the same answers: the leader validates and decides every hold
//!   whichever way it came; a call no leader answers fails every hold with the same
//!   status; an answer whose count does not match the holds is refused.
//! - The first hop asks the per-user rate limit once per hold, whichever way the call
//!   goes on (a call that falls back to the typed way carries the verdicts along).
//! - A forwarded call keeps its retry keys, so the router's retries cannot apply a
//!   hold twice; a passed-through call always has them (that is a condition).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::{Buf, BufMut, Bytes};
use prost::Message;
use raft_store::{Command, EventId, HoldRequest, Reply};
use seatd_proto::v1 as pb;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::Error;
use crate::node::{NodeInner, REQUEST_BYTES_MAX};
use crate::route::{forwarded, hops, seats_client, Mode, REPLY_BYTES_MAX};

/// Most holds one `HoldMany` call may carry.
pub const HOLDS_PER_CALL_MAX: usize = 1024;

/// The gRPC path of `Seats/HoldMany`, which [`PassThrough`] serves itself.
const HOLD_MANY_PATH: &str = "/seatd.v1.Seats/HoldMany";

/// Validates a hold request (filling in its retry key); returns its shard and event.
/// `admitted` is the rate limit's verdict when it was already asked for this hold
/// (else a first hop asks it here). The command is made only where the hold is
/// decided ([`hold_command`]): a frontend or a follower that forwards the hold never
/// needs it.
pub(crate) fn validate_hold(
    node: &NodeInner,
    req: &mut pb::HoldRequest,
    hops: u32,
    admitted: Option<bool>,
) -> Result<(u32, EventId), Error> {
    let event = convert::event_id(&req.event_id)?;
    if hops == 0 && !admitted.unwrap_or_else(|| node.hold_limiter.admit(&req.user_id)) {
        return Err(Error::Overloaded(format!(
            "user {:?} asked for more than {} holds per second",
            req.user_id, node.settings.holds_per_user_per_s
        )));
    }
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

pub(crate) fn unexpected(reply: Reply) -> Error {
    Error::Unavailable(format!(
        "unexpected reply from the state machine: {reply:?}"
    ))
}

/// A failed item of a `HoldMany` answer.
fn failure(status: Status) -> pb::HoldResult {
    pb::HoldResult {
        result: Some(pb::hold_result::Result::Failure(pb::Failure {
            code: status.code() as i32,
            message: status.message().to_string(),
            seat_ids: crate::error::conflict_seats(&status).unwrap_or_default(),
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
    Status::internal(format!("{answers} answers for {holds} holds"))
}

/// Decides a `HoldMany` call the typed way. `admitted` carries the rate limit's
/// verdict for each hold when the pass-through already asked it.
pub(crate) async fn hold_many(
    node: &Arc<NodeInner>,
    req: pb::HoldManyRequest,
    hops: u32,
    admitted: Option<&[bool]>,
) -> Result<pb::HoldManyResponse, Error> {
    if req.holds.len() > HOLDS_PER_CALL_MAX {
        return Err(Error::Invalid(format!(
            "at most {HOLDS_PER_CALL_MAX} holds per call, not {}",
            req.holds.len()
        )));
    }
    let mut results: Vec<Option<pb::HoldResult>> = vec![None; req.holds.len()];
    let mut groups: BTreeMap<u32, Vec<(usize, pb::HoldRequest, EventId)>> = BTreeMap::new();
    for (i, mut h) in req.holds.into_iter().enumerate() {
        let verdict = admitted.and_then(|a| a.get(i).copied());
        match validate_hold(node, &mut h, hops, verdict) {
            Ok((shard, event)) => groups.entry(shard).or_default().push((i, h, event)),
            Err(e) => results[i] = Some(failure(e.into())),
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (shard, items) in groups {
        tasks.spawn(hold_group(node.clone(), shard, hops, items));
    }
    while let Some(done) = tasks.join_next().await {
        let done = done.map_err(|e| Error::Unavailable(format!("hold task: {e}")))?;
        for (i, r) in done {
            results[i] = Some(r);
        }
    }
    Ok(pb::HoldManyResponse {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| failure(Status::internal("no result"))))
            .collect(),
    })
}

/// The holds of one shard from a `HoldMany` call, decided on the shard's leader:
/// proposed together (so they share log entries), each answered on its own. If
/// leadership moves while they are in flight the whole group is tried again at the
/// new leader, which is safe: every hold carries its reservation id.
async fn hold_group(
    node: Arc<NodeInner>,
    shard: u32,
    hops: u32,
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
    let answered = node
        .routed(
            shard,
            Mode::Leader,
            hops,
            |s| {
                // Every command is queued before any answer is awaited, so they share
                // entries; no task per hold.
                let pending: Vec<_> = forward
                    .holds
                    .iter()
                    .zip(&events)
                    .map(|(h, e)| s.submit(hold_command(e, h)))
                    .collect();
                async move {
                    let mut results = Vec::with_capacity(pending.len());
                    for p in pending {
                        let outcome = match p {
                            Ok(p) => p.outcome().await,
                            Err(e) => Err(e),
                        };
                        results.push(match outcome {
                            Ok(Ok(Reply::Held(h))) => pb::HoldResult {
                                result: Some(pb::hold_result::Result::Hold(convert::hold_to_pb(
                                    &h,
                                ))),
                            },
                            Ok(Ok(other)) => failure(unexpected(other).into()),
                            Ok(Err(refusal)) => failure(Error::from(refusal).into()),
                            Err(e @ crate::proposer::ProposeError::Overloaded(_)) => {
                                failure(Error::from(e).into())
                            }
                            // Not applied here, or unknown: the group goes again.
                            Err(e) => return Err(Error::from(e)),
                        });
                    }
                    Ok(pb::HoldManyResponse { results })
                }
            },
            |c: Channel, hops, left| {
                let req = forward.clone();
                async move { seats_client(c).hold_many(forwarded(req, hops, left)).await }
            },
        )
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

/// How a call goes on, as read through its routing view.
enum Plan {
    /// Forward the received bytes to `shard`'s leader; the call has `holds` holds.
    PassOn { shard: u32, holds: usize },
    /// Decode it and serve it the typed way, with the rate limit's verdicts if a
    /// first hop asked them already.
    Typed { admitted: Option<Vec<bool>> },
}

impl Plan {
    const TYPED: Plan = Plan::Typed { admitted: None };

    fn of(node: &NodeInner, body: &Bytes, hops: u32) -> Plan {
        let Ok(view) = pb::HoldManyRouting::decode(body.clone()) else {
            return Plan::TYPED;
        };
        if view.holds.len() > HOLDS_PER_CALL_MAX {
            return Plan::TYPED;
        }
        // Holds of one call are mostly for one event: its id is checked once.
        let mut shard: Option<(u32, &Bytes)> = None;
        for h in &view.holds {
            if h.client_reservation_id.is_empty() || std::str::from_utf8(&h.user_id).is_err() {
                return Plan::TYPED;
            }
            let s = match shard {
                Some((s, event)) if *event == h.event_id => s,
                _ => {
                    let Ok(event) = std::str::from_utf8(&h.event_id) else {
                        return Plan::TYPED;
                    };
                    let Ok(event) = convert::event_id(event) else {
                        return Plan::TYPED;
                    };
                    node.cluster.shard_of(&event)
                }
            };
            if shard.is_some_and(|(first, _)| first != s) {
                return Plan::TYPED;
            }
            shard = Some((s, &h.event_id));
        }
        let Some((shard, _)) = shard else {
            return Plan::TYPED;
        };
        // Decided here: decoding is needed anyway.
        if node
            .shards
            .get(&shard)
            .is_some_and(|s| !s.is_retired() && s.leader().1)
        {
            return Plan::TYPED;
        }
        if hops == 0 {
            // Every user id is UTF-8 (checked above), so the typed way would ask the
            // limit for every hold as well.
            let admitted: Vec<bool> = view
                .holds
                .iter()
                .map(|h| {
                    let user = std::str::from_utf8(&h.user_id).unwrap_or_default();
                    node.hold_limiter.admit(user)
                })
                .collect();
            if admitted.contains(&false) {
                return Plan::Typed {
                    admitted: Some(admitted),
                };
            }
        }
        Plan::PassOn {
            shard,
            holds: view.holds.len(),
        }
    }
}

/// Serves a `HoldMany` call whose message is still in `body`, as received.
async fn hold_many_bytes(node: Arc<NodeInner>, request: Request<Bytes>) -> Result<Bytes, Status> {
    let hops = hops(&request);
    let body = request.into_inner();
    match Plan::of(&node, &body, hops) {
        Plan::Typed { admitted } => Ok(typed(&node, body, hops, admitted.as_deref()).await?),
        Plan::PassOn { shard, holds } => {
            let answered = node
                .routed(
                    shard,
                    Mode::Leader,
                    hops,
                    // Leadership came here since the plan: decide it here.
                    |_| typed(&node, body.clone(), hops, None),
                    |c: Channel, hops, left| forward_bytes(c, body.clone(), hops, left),
                )
                .await;
            Ok(match answered {
                Ok(answer) => match pb::HoldManyAnswers::decode(answer.clone()) {
                    Ok(a) if a.results.len() == holds => answer,
                    Ok(a) => encode(&all_failed(holds, count_mismatch(a.results.len(), holds))),
                    Err(e) => encode(&all_failed(
                        holds,
                        Status::internal(format!("undecodable answer from the leader: {e}")),
                    )),
                },
                Err(e) => encode(&all_failed(holds, e.into())),
            })
        }
    }
}

/// Decodes a call and serves it the typed way.
async fn typed(
    node: &Arc<NodeInner>,
    body: Bytes,
    hops: u32,
    admitted: Option<&[bool]>,
) -> Result<Bytes, Error> {
    let req = pb::HoldManyRequest::decode(body)
        .map_err(|e| Error::Invalid(format!("undecodable HoldManyRequest: {e}")))?;
    Ok(encode(&hold_many(node, req, hops, admitted).await?))
}

fn encode(answer: &pb::HoldManyResponse) -> Bytes {
    Bytes::from(answer.encode_to_vec())
}

/// Forwards a call's bytes to the node behind `channel`.
async fn forward_bytes(
    channel: Channel,
    body: Bytes,
    hops: u32,
    left: std::time::Duration,
) -> Result<Response<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(REPLY_BYTES_MAX)
        .max_encoding_message_size(REQUEST_BYTES_MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let path = http::uri::PathAndQuery::from_static(HOLD_MANY_PATH);
    grpc.unary(forwarded(body, hops, left), path, AsBytes).await
}

/// A gRPC codec that leaves messages as bytes.
#[derive(Clone, Copy, Debug, Default)]
struct AsBytes;

impl Codec for AsBytes {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = AsBytes;
    type Decoder = AsBytes;

    fn encoder(&mut self) -> AsBytes {
        AsBytes
    }

    fn decoder(&mut self) -> AsBytes {
        AsBytes
    }
}

impl Encoder for AsBytes {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for AsBytes {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The client API's server with `HoldMany` served as bytes (see the module doc);
/// every other method goes to `inner` unchanged.
#[derive(Clone)]
pub struct PassThrough<S> {
    inner: S,
    node: Arc<NodeInner>,
}

impl<S> PassThrough<S> {
    pub fn new(inner: S, node: Arc<NodeInner>) -> Self {
        Self { inner, node }
    }
}

impl<S: NamedService> NamedService for PassThrough<S> {
    const NAME: &'static str = S::NAME;
}

/// `HoldMany` as a unary service on bytes.
struct HoldManyBytes(Arc<NodeInner>);

impl tonic::server::UnaryService<Bytes> for HoldManyBytes {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let node = self.0.clone();
        Box::pin(async move { hold_many_bytes(node, request).await.map(Response::new) })
    }
}

impl<S> Service<http::Request<Body>> for PassThrough<S>
where
    S: Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = BoxFuture<http::Response<Body>, Infallible>,
    >,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != HOLD_MANY_PATH {
            return self.inner.call(req);
        }
        let node = self.node.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(AsBytes)
                .apply_max_message_size_config(Some(REQUEST_BYTES_MAX), Some(REPLY_BYTES_MAX));
            Ok(grpc.unary(HoldManyBytes(node), req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::node::Settings;
    use crate::placement::Cluster;
    use std::time::Duration;

    /// A frontend's view of a 3-node, 8-shard cluster whose nodes do not answer.
    fn frontend(holds_per_user_per_s: u32) -> Arc<NodeInner> {
        let nodes = (1..=3u64)
            .map(|id| (id, format!("127.0.0.1:{}", 9 + id)))
            .collect();
        let settings = Settings {
            route_wait: Duration::from_millis(50),
            holds_per_user_per_s,
            ..Settings::default()
        };
        let cluster = Cluster::new(nodes, 8).expect("a valid cluster");
        Arc::new(NodeInner::stateless(
            cluster,
            settings,
            &SystemClock::default(),
        ))
    }

    fn hold(event: &str, user: &str, reservation: &str) -> pb::HoldRequest {
        pb::HoldRequest {
            event_id: event.into(),
            user_id: user.into(),
            seat_ids: vec!["A-1".into(), "A-2".into()],
            client_reservation_id: reservation.into(),
            ttl_ms: Some(60_000),
            expected_versions: vec![3, 4],
        }
    }

    fn body(holds: Vec<pb::HoldRequest>) -> Bytes {
        encode_request(&pb::HoldManyRequest { holds })
    }

    fn encode_request(req: &pb::HoldManyRequest) -> Bytes {
        Bytes::from(req.encode_to_vec())
    }

    /// Two event ids that live in different shards.
    fn events_in_two_shards(node: &NodeInner) -> (String, String) {
        let shard = |e: &str| node.cluster.shard_of(&convert::event_id(e).expect("valid"));
        let first = "ev-0".to_string();
        let other = (1..1_000)
            .map(|i| format!("ev-{i}"))
            .find(|e| shard(e) != shard(&first))
            .expect("8 shards: some id lands elsewhere");
        (first, other)
    }

    #[test]
    fn the_routing_views_read_full_messages() {
        let full = pb::HoldManyRequest {
            holds: vec![hold("ev-1", "ann", "r1"), hold("ev-2", "bob", "r2")],
        };
        let view = pb::HoldManyRouting::decode(encode_request(&full)).expect("decodes");
        let read: Vec<_> = view
            .holds
            .iter()
            .map(|h| {
                (
                    h.event_id.as_ref(),
                    h.user_id.as_ref(),
                    h.client_reservation_id.as_ref(),
                )
            })
            .collect();
        assert_eq!(
            read,
            [
                (&b"ev-1"[..], &b"ann"[..], &b"r1"[..]),
                (&b"ev-2"[..], &b"bob"[..], &b"r2"[..])
            ]
        );
        let answer = all_failed(3, Status::unavailable("no leader"));
        let answers = pb::HoldManyAnswers::decode(encode(&answer)).expect("decodes");
        assert_eq!(answers.results.len(), 3);
    }

    #[test]
    fn a_call_for_one_shard_with_retry_keys_passes_on() {
        let node = frontend(0);
        let (event, _) = events_in_two_shards(&node);
        let call = body(vec![
            hold(&event, "ann", "r1"),
            hold(&event, "bob", "r2"),
            hold(&event, "cy", "r3"),
        ]);
        let shard = node
            .cluster
            .shard_of(&convert::event_id(&event).expect("valid"));
        for hops in [0, 1] {
            match Plan::of(&node, &call, hops) {
                Plan::PassOn { shard: s, holds } => assert_eq!((s, holds), (shard, 3)),
                Plan::Typed { .. } => panic!("a one-shard call with retry keys is passed on"),
            }
        }
    }

    #[test]
    fn calls_that_need_decoding_go_the_typed_way() {
        let node = frontend(0);
        let (a, b) = events_in_two_shards(&node);
        let too_many = (0..=HOLDS_PER_CALL_MAX)
            .map(|i| hold(&a, "ann", &format!("r{i}")))
            .collect();
        let cases = [
            (
                "no retry key",
                body(vec![hold(&a, "ann", "r1"), hold(&a, "bob", "")]),
            ),
            (
                "two shards",
                body(vec![hold(&a, "ann", "r1"), hold(&b, "bob", "r2")]),
            ),
            ("a bad event id", body(vec![hold("", "ann", "r1")])),
            ("no holds", body(vec![])),
            ("too many holds", body(too_many)),
            ("not protobuf", Bytes::from_static(&[0xff, 0xff, 0xff])),
        ];
        for (what, call) in cases {
            assert!(
                matches!(Plan::of(&node, &call, 0), Plan::Typed { admitted: None }),
                "{what}: typed way, and no verdicts taken"
            );
        }
    }

    #[test]
    fn a_first_hop_asks_the_rate_limit_once_per_hold_and_a_later_hop_never() {
        let node = frontend(2);
        let (event, _) = events_in_two_shards(&node);
        let call = body(vec![
            hold(&event, "ann", "r1"),
            hold(&event, "ann", "r2"),
            hold(&event, "ann", "r3"),
        ]);
        match Plan::of(&node, &call, 0) {
            Plan::Typed {
                admitted: Some(verdicts),
            } => assert_eq!(verdicts, [true, true, false]),
            _ => panic!("a refused hold sends the call the typed way with the verdicts"),
        }
        // ann has no tokens left, but a forwarded call is not limited again.
        assert!(matches!(Plan::of(&node, &call, 1), Plan::PassOn { .. }));
    }

    #[tokio::test]
    async fn the_typed_way_uses_the_verdicts_it_is_given() {
        // No limit configured: only the verdict can refuse the second hold.
        let node = frontend(0);
        let (event, _) = events_in_two_shards(&node);
        let req = pb::HoldManyRequest {
            holds: vec![hold(&event, "ann", "r1"), hold(&event, "ann", "r2")],
        };
        let answer = hold_many(&node, req, 0, Some(&[true, false]))
            .await
            .expect("answered");
        let codes: Vec<_> = answer
            .results
            .iter()
            .map(|r| match &r.result {
                Some(pb::hold_result::Result::Failure(f)) => tonic::Code::from(f.code),
                other => panic!("no node answers, so nothing is held: {other:?}"),
            })
            .collect();
        assert_eq!(
            codes,
            [tonic::Code::Unavailable, tonic::Code::ResourceExhausted]
        );
    }
}
