//! The plan a forwarding process makes for a `HoldMany` call, and what reaches the
//! leader and comes back, against a fake leader that answers with fixed bytes.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::clock::SystemClock;
use crate::node::Settings;
use crate::placement::Cluster;
use seatd_proto::passthrough::HoldRouting;

/// A frontend's view of a 3-node, 8-shard cluster whose nodes are all at `addr`.
fn frontend_at(addr: &str, holds_per_user_per_s: u32) -> Arc<NodeInner> {
    let nodes = (1..=3u64).map(|id| (id, addr.to_string())).collect();
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

/// An address nothing listens on (a port bound, then let go).
fn closed_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("its address").to_string()
}

fn frontend(holds_per_user_per_s: u32) -> Arc<NodeInner> {
    frontend_at(&closed_addr(), holds_per_user_per_s)
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
    Bytes::from(pb::HoldManyRequest { holds }.encode_to_vec())
}

/// `bytes` with a field no message here defines (15, varint 7) appended: the typed
/// way drops it, passing through keeps it.
fn with_unknown_field(bytes: Bytes) -> Bytes {
    let mut v = bytes.to_vec();
    v.extend_from_slice(&[15 << 3, 7]);
    Bytes::from(v)
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

fn shard_of(node: &NodeInner, event: &str) -> u32 {
    node.cluster
        .shard_of(&convert::event_id(event).expect("valid"))
}

fn answer_of(holds: usize) -> pb::HoldManyResponse {
    pb::HoldManyResponse {
        results: (0..holds)
            .map(|i| pb::HoldResult {
                result: Some(pb::hold_result::Result::Hold(pb::Hold {
                    hold_id: format!("h{i}"),
                    ..Default::default()
                })),
            })
            .collect(),
    }
}

fn codes(answer: &pb::HoldManyResponse) -> Vec<Code> {
    answer
        .results
        .iter()
        .map(|r| match &r.result {
            Some(pb::hold_result::Result::Failure(f)) => Code::from(f.code),
            Some(pb::hold_result::Result::Hold(_)) => Code::Ok,
            None => Code::Unknown,
        })
        .collect()
}

#[test]
fn the_routing_views_read_full_messages() {
    let full = body(vec![hold("ev-1", "ann", "r1"), hold("ev-2", "bob", "r2")]);
    let view = HoldManyRouting::decode(full).expect("decodes");
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
    let answers = HoldManyAnswers::decode(encode(&answer_of(3))).expect("decodes");
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
    let shard = shard_of(&node, &event);
    assert_eq!(
        Plan::of(&node, &call).expect("a valid call"),
        Plan::PassOn { shard, holds: 3 }
    );
}

#[test]
fn calls_that_need_decoding_go_the_typed_way_without_asking_the_limit() {
    // One hold per second: asking the limit for "ann" would use her only token.
    let node = frontend(1);
    let (a, b) = events_in_two_shards(&node);
    let not_text = |user: &[u8], reservation: &[u8]| {
        Bytes::from(
            HoldManyRouting {
                holds: vec![HoldRouting {
                    event_id: Bytes::from(a.clone()),
                    user_id: Bytes::copy_from_slice(user),
                    client_reservation_id: Bytes::copy_from_slice(reservation),
                }],
            }
            .encode_to_vec(),
        )
    };
    let cases = [
        (
            "no retry key",
            body(vec![hold(&a, "ann", "r1"), hold(&a, "ann", "")]),
        ),
        (
            "two shards",
            body(vec![hold(&a, "ann", "r1"), hold(&b, "ann", "r2")]),
        ),
        ("a bad event id", body(vec![hold("", "ann", "r1")])),
        ("no holds", body(vec![])),
        ("not protobuf", Bytes::from_static(&[0xff, 0xff, 0xff])),
        ("a user id that is not text", not_text(&[0xff], b"r1")),
        ("a retry key that is not text", not_text(b"ann", &[0xff])),
    ];
    for (what, call) in cases {
        assert_eq!(
            Plan::of(&node, &call).expect("not refused here"),
            Plan::Typed,
            "{what}"
        );
    }
    assert!(node.hold_limiter.admit("ann"), "the limit was not asked");
}

#[test]
fn a_call_with_too_many_holds_is_refused_before_it_is_decoded() {
    let node = frontend(0);
    let (a, _) = events_in_two_shards(&node);
    let call = body(
        (0..=crate::holds::HOLDS_PER_CALL_MAX)
            .map(|i| hold(&a, "ann", &format!("r{i}")))
            .collect(),
    );
    assert!(matches!(Plan::of(&node, &call), Err(Error::Invalid(_))));
}

#[tokio::test]
async fn a_process_that_only_forwards_never_asks_the_rate_limit() {
    // One hold per second, and no node answers: a frontend that asked the limit would
    // refuse ann's second and third holds itself (RESOURCE_EXHAUSTED); the leader
    // decides that, so every hold fails only as unavailable.
    let node = frontend(1);
    let (event, _) = events_in_two_shards(&node);
    let call = body(vec![
        hold(&event, "ann", "r1"),
        hold(&event, "ann", "r2"),
        hold(&event, "ann", "r3"),
    ]);
    assert_eq!(
        codes(&answered(node.clone(), call).await),
        [Code::Unavailable; 3]
    );
    let req = pb::HoldManyRequest {
        holds: vec![hold(&event, "ann", "r4"), hold(&event, "ann", "")],
    };
    let answer = hold_many(&node, req, 0).await.expect("answered");
    assert_eq!(codes(&answer), [Code::Unavailable; 2]);
    assert!(node.hold_limiter.admit("ann"), "the limit was not asked");
}

/// A leader that answers every `HoldMany` with `answer` and keeps what it received
/// (the message's bytes and the call's hop count).
#[derive(Clone)]
struct FakeLeader {
    answer: Result<Bytes, Status>,
    seen: Arc<Mutex<Vec<(Bytes, u32)>>>,
}

impl NamedService for FakeLeader {
    const NAME: &'static str = "seatd.v1.Seats";
}

impl tonic::server::UnaryService<Bytes> for FakeLeader {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        // Read as sent: `route::hops` believes the header only from a node over the
        // peer port, and this fake leader listens in plaintext.
        let hops: u32 = request
            .metadata()
            .get(crate::route::HOPS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((request.into_inner(), hops));
        }
        let answer = self.answer.clone();
        Box::pin(async move { answer.map(Response::new) })
    }
}

impl Service<http::Request<Body>> for FakeLeader {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { Ok(tonic::server::Grpc::new(AsBytes).unary(me, req).await) })
    }
}

/// Starts a fake leader on a loopback port; returns a frontend whose nodes are all
/// that leader, and what the leader receives.
async fn behind_fake_leader(
    answer: Result<Bytes, Status>,
) -> (Arc<NodeInner>, Arc<Mutex<Vec<(Bytes, u32)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = FakeLeader {
        answer,
        seen: seen.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(fake)
            .serve_with_incoming(crate::node::incoming(listener)),
    );
    (frontend_at(&addr, 0), seen)
}

fn seen(s: &Mutex<Vec<(Bytes, u32)>>) -> Vec<(Bytes, u32)> {
    s.lock().expect("not poisoned").clone()
}

#[tokio::test]
async fn a_passed_through_call_reaches_the_leader_as_sent_and_its_answer_comes_back_as_given() {
    let answer = with_unknown_field(encode(&answer_of(3)));
    let (node, received) = behind_fake_leader(Ok(answer.clone())).await;
    let (event, _) = events_in_two_shards(&node);
    let call = with_unknown_field(body(vec![
        hold(&event, "ann", "r1"),
        hold(&event, "bob", "r2"),
        hold(&event, "cy", "r3"),
    ]));
    let got = hold_many_bytes(node, Request::new(call.clone()))
        .await
        .expect("answered");
    // Byte for byte both ways, the field no message defines included: not decoded.
    assert_eq!(got, answer);
    assert_eq!(seen(&received), [(call, 1)]);
}

/// The pass-through's answer to `call`, which must be a whole `HoldMany` answer.
async fn answered(node: Arc<NodeInner>, call: Bytes) -> pb::HoldManyResponse {
    let got = hold_many_bytes(node, Request::new(call))
        .await
        .expect("answered");
    pb::HoldManyResponse::decode(got).expect("an answer")
}

#[tokio::test]
async fn an_answer_that_does_not_fit_the_call_fails_every_hold() {
    let (node, _) = behind_fake_leader(Ok(encode(&answer_of(2)))).await;
    let (event, _) = events_in_two_shards(&node);
    let call = body(vec![
        hold(&event, "ann", "r1"),
        hold(&event, "bob", "r2"),
        hold(&event, "cy", "r3"),
    ]);
    let got = answered(node, call).await;
    assert_eq!(codes(&got), [Code::Internal; 3]);
}

#[tokio::test]
async fn a_call_the_leader_cannot_decode_is_refused_whole() {
    let refusal = Status::invalid_argument("undecodable HoldManyRequest");
    let (node, _) = behind_fake_leader(Err(refusal)).await;
    let (event, _) = events_in_two_shards(&node);
    let call = body(vec![hold(&event, "ann", "r1"), hold(&event, "bob", "r2")]);
    let got = hold_many_bytes(node, Request::new(call)).await;
    assert_eq!(got.err().map(|s| s.code()), Some(Code::InvalidArgument));
}

#[tokio::test]
async fn an_unreachable_leader_fails_every_hold_as_unavailable() {
    let node = frontend(0);
    let (event, _) = events_in_two_shards(&node);
    let call = body(vec![hold(&event, "ann", "r1"), hold(&event, "bob", "r2")]);
    let got = answered(node, call).await;
    assert_eq!(codes(&got), [Code::Unavailable; 2]);
}

#[tokio::test]
async fn a_call_for_two_shards_is_decoded_and_sent_on_per_shard() {
    let (node, received) = behind_fake_leader(Ok(encode(&answer_of(1)))).await;
    let (a, b) = events_in_two_shards(&node);
    let call = with_unknown_field(body(vec![hold(&a, "ann", "r1"), hold(&b, "bob", "r2")]));
    let got = answered(node.clone(), call).await;
    assert_eq!(codes(&got), [Code::Ok, Code::Ok]);
    let mut sent: Vec<_> = seen(&received)
        .into_iter()
        .map(|(bytes, hops)| {
            // Re-encoded from the typed message: the unknown field is gone.
            assert_eq!(
                bytes,
                body(
                    pb::HoldManyRequest::decode(bytes.clone())
                        .expect("a call")
                        .holds
                )
            );
            let req = pb::HoldManyRequest::decode(bytes).expect("a call");
            let events: Vec<_> = req.holds.into_iter().map(|h| h.event_id).collect();
            (events, hops)
        })
        .collect();
    sent.sort();
    let mut want = vec![(vec![a], 1), (vec![b], 1)];
    want.sort();
    assert_eq!(sent, want);
}
