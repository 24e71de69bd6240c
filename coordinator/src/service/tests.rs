//! What a process that only forwards does with a call: passed on undecoded by its
//! routing metadata, decoded without it (or for several shards), retried at another
//! node when one fails, UNAVAILABLE when none answers; and the rate limit is never
//! asked where a call only passes. Against fake nodes that answer fixed bytes.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::auth::Verifier;
use crate::clock::SystemClock;
use crate::forward::tests::{fake_node, seen, with_unknown_field, Received};
use crate::placement::Cluster;
use crate::process::Settings;
use tonic::Code;

/// A frontend's view of a 3-node, 8-shard cluster whose nodes are at `addrs`, with
/// the API that serves its calls.
fn frontend_at(addrs: [&str; 3], route_wait: Duration, holds_per_user_per_s: u32) -> Api {
    let nodes = (1..=3u64)
        .zip(addrs)
        .map(|(id, addr)| (id, addr.to_string()))
        .collect();
    let settings = Settings {
        route_wait,
        holds_per_user_per_s,
        ..Settings::default()
    };
    let cluster = Cluster::new(nodes, 8).expect("a valid cluster");
    Api::new(Arc::new(Process::frontend(
        cluster,
        settings,
        &SystemClock::default(),
    )))
}

/// An address nothing listens on (a port bound, then let go).
fn closed_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("its address").to_string()
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

/// Two event ids that live in different shards.
fn events_in_two_shards(api: &Api) -> (String, String) {
    let shard = |e: &str| {
        api.node()
            .cluster
            .shard_of(&seatd_wire::event_id(e).expect("valid"))
    };
    let first = "ev-0".to_string();
    let other = (1..1_000)
        .map(|i| format!("ev-{i}"))
        .find(|e| shard(e) != shard(&first))
        .expect("8 shards: some id lands elsewhere");
    (first, other)
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

/// A client's call: `body`, with routing metadata naming `event` when given.
fn call(body: Bytes, event: Option<&str>) -> Request<Bytes> {
    let mut r = Request::new(body);
    if let Some(e) = event {
        r.metadata_mut()
            .insert(EVENT_METADATA, e.parse().expect("ascii"));
    }
    r
}

async fn hold_many(api: &Api, request: Request<Bytes>) -> Result<Bytes, Status> {
    serve(api, None, None, Method::HoldMany, request).await
}

fn only(received: &Mutex<Vec<Received>>) -> Received {
    let seen = seen(received);
    assert_eq!(seen.len(), 1, "one call reached the node: {seen:?}");
    seen[0].clone()
}

#[tokio::test]
async fn a_call_with_routing_metadata_is_passed_on_as_received() {
    let answer = with_unknown_field(Bytes::from(answer_of(3).encode_to_vec()));
    let (addr, received) = fake_node(Ok(answer.clone())).await;
    let api = frontend_at([&addr; 3], Duration::from_secs(5), 0);
    let (event, _) = events_in_two_shards(&api);
    let sent = with_unknown_field(body(vec![
        hold(&event, "ann", "r1"),
        hold(&event, "bob", "r2"),
        hold(&event, "cy", "r3"),
    ]));
    let mut request = call(sent.clone(), Some(&event));
    // What a client may not set for nodes: a hop count, anything else of its own.
    request
        .metadata_mut()
        .insert(crate::forward::HOPS_HEADER, "7".parse().expect("ascii"));
    request
        .metadata_mut()
        .insert("x-client-secret", "s".parse().expect("ascii"));
    let got = hold_many(&api, request).await.expect("answered");
    // Byte for byte both ways, the field no message defines included: not decoded.
    assert_eq!(got, answer);
    let received = only(&received);
    assert_eq!(received.body, sent);
    assert_eq!(received.hops, 1, "the client's hop count is not believed");
    assert_eq!(received.event.as_deref(), Some(event.as_str()));
    assert!(
        !received.keys.iter().any(|k| k.contains("x-client-secret")),
        "a client's metadata does not travel on: {:?}",
        received.keys
    );
}

#[tokio::test]
async fn a_call_without_routing_metadata_is_decoded_and_sent_on_typed() {
    let (addr, received) = fake_node(Ok(Bytes::from(pb::Hold::default().encode_to_vec()))).await;
    let api = frontend_at([&addr; 3], Duration::from_secs(5), 0);
    let (event, _) = events_in_two_shards(&api);
    let req = pb::GetHoldRequest {
        hold_id: format!("{event}.h1-0123456789abcdef"),
    };
    let sent = with_unknown_field(Bytes::from(req.encode_to_vec()));
    serve(&api, None, None, Method::GetHold, call(sent, None))
        .await
        .expect("answered");
    let received = only(&received);
    // Re-encoded from the typed message: the unknown field is gone, and the
    // forwarder adds the routing metadata for the next hop.
    assert_eq!(received.body, Bytes::from(req.encode_to_vec()));
    assert_eq!(received.event.as_deref(), Some(event.as_str()));
}

#[tokio::test]
async fn metadata_for_a_call_that_must_be_seen_decoded_is_not_trusted_to_route() {
    // A stale seat map, say, is answered where it enters when it can; `ListEvents`
    // has no routing metadata at all: its metadata is ignored and it is decoded.
    let (addr, received) = fake_node(Ok(Bytes::from(
        pb::ListEventsResponse::default().encode_to_vec(),
    )))
    .await;
    let api = frontend_at([&addr; 3], Duration::from_secs(5), 0);
    let sent = with_unknown_field(Bytes::from(
        pb::ListEventsRequest::default().encode_to_vec(),
    ));
    serve(
        &api,
        None,
        None,
        Method::ListEvents,
        call(sent.clone(), Some("ev-0")),
    )
    .await
    .expect("answered");
    let seen = seen(&received);
    assert_eq!(seen.len(), 8, "one list per shard: decoded and fanned out");
    assert!(seen.iter().all(|r| r.body != sent));
}

#[tokio::test]
async fn a_call_for_two_shards_is_decoded_and_sent_on_per_shard() {
    let (addr, received) = fake_node(Ok(Bytes::from(answer_of(1).encode_to_vec()))).await;
    let api = frontend_at([&addr; 3], Duration::from_secs(5), 0);
    let (a, b) = events_in_two_shards(&api);
    let sent = with_unknown_field(body(vec![hold(&a, "ann", "r1"), hold(&b, "bob", "r2")]));
    let got = hold_many(&api, call(sent, None)).await.expect("answered");
    let got = pb::HoldManyResponse::decode(got).expect("an answer");
    assert_eq!(codes(&got), [Code::Ok, Code::Ok]);
    let mut sent: Vec<_> = seen(&received)
        .into_iter()
        .map(|r| {
            let req = pb::HoldManyRequest::decode(r.body).expect("a call");
            let events: Vec<_> = req.holds.into_iter().map(|h| h.event_id).collect();
            (events, r.hops, r.event)
        })
        .collect();
    sent.sort();
    let mut want = vec![(vec![a.clone()], 1, Some(a)), (vec![b.clone()], 1, Some(b))];
    want.sort();
    assert_eq!(sent, want);
}

#[tokio::test]
async fn a_failed_forward_is_retried_at_another_node() {
    // Node 1 is down; the frontend knows no leader, tries members in turn, forgets
    // the one that failed and reaches one that answers.
    let answer = Bytes::from(pb::Hold::default().encode_to_vec());
    let (addr, received) = fake_node(Ok(answer.clone())).await;
    let closed = closed_addr();
    let api = frontend_at([&closed, &addr, &addr], Duration::from_secs(5), 0);
    let (event, _) = events_in_two_shards(&api);
    for i in 0..6 {
        let req = pb::GetHoldRequest {
            hold_id: format!("{event}.h{i}"),
        };
        let got = serve(
            &api,
            None,
            None,
            Method::GetHold,
            call(Bytes::from(req.encode_to_vec()), Some(&event)),
        )
        .await
        .expect("answered by a live node");
        assert_eq!(got, answer);
    }
    assert_eq!(seen(&received).len(), 6);
}

#[tokio::test]
async fn when_no_node_answers_the_call_is_unavailable_within_the_wait() {
    let closed = closed_addr();
    let api = frontend_at([&closed; 3], Duration::from_millis(300), 0);
    let (event, _) = events_in_two_shards(&api);
    let started = std::time::Instant::now();
    let sent = body(vec![hold(&event, "ann", "r1"), hold(&event, "bob", "r2")]);
    let got = hold_many(&api, call(sent.clone(), Some(&event))).await;
    assert_eq!(got.err().map(|s| s.code()), Some(Code::Unavailable));
    // Decoded (no metadata), every hold fails as unavailable instead.
    let got = hold_many(&api, call(sent, None)).await.expect("answered");
    let got = pb::HoldManyResponse::decode(got).expect("an answer");
    assert_eq!(codes(&got), [Code::Unavailable; 2]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the wait"
    );
}

#[tokio::test]
async fn a_refusal_from_the_leader_comes_back_as_given() {
    let refusal = Status::invalid_argument("undecodable HoldManyRequest");
    let (addr, _) = fake_node(Err(refusal)).await;
    let api = frontend_at([&addr; 3], Duration::from_secs(5), 0);
    let (event, _) = events_in_two_shards(&api);
    let got = hold_many(&api, call(Bytes::from_static(&[0xff]), Some(&event))).await;
    let got = got.expect_err("refused");
    assert_eq!(got.code(), Code::InvalidArgument);
    assert_eq!(got.message(), "undecodable HoldManyRequest");
}

#[tokio::test]
async fn undecodable_bytes_are_refused_where_they_are_decoded() {
    let api = frontend_at([&closed_addr(); 3], Duration::from_millis(50), 0);
    let got = hold_many(&api, call(Bytes::from_static(&[0xff]), None)).await;
    assert_eq!(got.err().map(|s| s.code()), Some(Code::InvalidArgument));
}

#[tokio::test]
async fn metadata_naming_no_valid_event_is_ignored() {
    // Decoded instead: the body's own (invalid) event id is refused.
    let api = frontend_at([&closed_addr(); 3], Duration::from_millis(50), 0);
    let req = pb::GetEventRequest {
        event_id: "no spaces allowed".into(),
    };
    let got = serve(
        &api,
        None,
        None,
        Method::GetEvent,
        call(Bytes::from(req.encode_to_vec()), Some("bad id!")),
    )
    .await;
    assert_eq!(got.err().map(|s| s.code()), Some(Code::InvalidArgument));
}

#[tokio::test]
async fn a_process_that_only_forwards_never_asks_the_rate_limit() {
    // One hold per second, and no node answers: a frontend that asked the limit would
    // refuse ann's second and third holds itself (RESOURCE_EXHAUSTED); the leader
    // decides that, so every hold fails only as unavailable.
    let api = frontend_at([&closed_addr(); 3], Duration::from_millis(50), 1);
    let (event, _) = events_in_two_shards(&api);
    let sent = body(vec![
        hold(&event, "ann", "r1"),
        hold(&event, "ann", "r2"),
        hold(&event, "ann", "r3"),
    ]);
    let got = hold_many(&api, call(sent.clone(), None))
        .await
        .expect("answered");
    let got = pb::HoldManyResponse::decode(got).expect("an answer");
    assert_eq!(codes(&got), [Code::Unavailable; 3]);
    let got = hold_many(&api, call(sent, Some(&event))).await;
    assert_eq!(got.err().map(|s| s.code()), Some(Code::Unavailable));
    assert!(
        api.node().hold_limiter.admit("ann"),
        "the limit was not asked"
    );
}

#[test]
fn every_path_names_its_method_and_unknown_paths_none() {
    for path in [
        paths::CREATE_EVENT,
        paths::LIST_EVENTS,
        paths::GET_EVENT,
        paths::SET_SALE,
        paths::GET_SEAT_MAP,
        paths::HOLD,
        paths::HOLD_MANY,
        paths::COMMIT,
        paths::RELEASE,
        paths::GET_HOLD,
        paths::GET_ORDER,
        paths::CLUSTER_STATUS,
    ] {
        let method = Method::of(path).expect("a method");
        assert_eq!(method.path(), path);
    }
    assert_eq!(Method::of("/seatd.v1.Seats/Nope"), None);
    assert!(!Method::ClusterStatus.routable() && !Method::ListEvents.routable());
}

#[test]
fn a_call_with_routing_metadata_but_no_retry_key_is_refused_where_decoded() {
    let keyless = body(vec![hold("ev-0", "ann", "r1"), hold("ev-0", "bob", "")]);
    let got = decode_call::<pb::HoldManyRequest>(keyless.clone(), true);
    assert!(matches!(got, Err(Error::Invalid(_))), "{got:?}");
    // Without metadata it was decoded where it entered, which fills the key once.
    assert!(decode_call::<pb::HoldManyRequest>(keyless, false).is_ok());
    let commit = pb::CommitRequest {
        hold_id: "ev-0.h1-0123456789abcdef".into(),
        payment_token: "tok_ok".into(),
        idempotency_key: String::new(),
    };
    let got = decode_call::<pb::CommitRequest>(Bytes::from(commit.encode_to_vec()), true);
    assert!(matches!(got, Err(Error::Invalid(_))), "{got:?}");
    let read = pb::GetHoldRequest {
        hold_id: "ev-0.h1-0123456789abcdef".into(),
    };
    assert!(decode_call::<pb::GetHoldRequest>(Bytes::from(read.encode_to_vec()), true).is_ok());
}

#[tokio::test]
async fn a_checked_token_travels_on_and_a_bad_one_stops_the_call_where_it_enters() {
    use crate::auth::issue::{new_key_pair, token};
    use crate::auth::{Role, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
    let (addr, received) = fake_node(Ok(Bytes::from(pb::Hold::default().encode_to_vec()))).await;
    let api = frontend_at([&addr; 3], Duration::from_secs(5), 0);
    let dir = tempfile::tempdir().expect("dir");
    let (private, public) = new_key_pair().expect("keys");
    let keys = dir.path().join("k.pem");
    std::fs::write(&keys, public).expect("write");
    let v = Verifier::from_file(&keys, DEFAULT_ISSUER, DEFAULT_AUDIENCE).expect("keys");
    let (event, _) = events_in_two_shards(&api);
    let body = Bytes::from(
        pb::GetHoldRequest {
            hold_id: format!("{event}.h1-0123456789abcdef"),
        }
        .encode_to_vec(),
    );
    let with_token = |t: &str| {
        let mut r = call(body.clone(), Some(&event));
        r.metadata_mut().insert(
            AUTHORIZATION_METADATA,
            format!("Bearer {t}").parse().expect("ascii"),
        );
        r
    };
    let got = serve(
        &api,
        Some(&v),
        None,
        Method::GetHold,
        call(body.clone(), Some(&event)),
    )
    .await;
    assert_eq!(got.err().map(|s| s.code()), Some(Code::Unauthenticated));
    let got = serve(
        &api,
        Some(&v),
        None,
        Method::GetHold,
        with_token("not.a.token"),
    )
    .await;
    assert_eq!(got.err().map(|s| s.code()), Some(Code::Unauthenticated));
    let buyer = token(&private, "ann", Role::Buyer, Duration::from_secs(60)).expect("token");
    let create = {
        let mut r = with_token(&buyer);
        *r.get_mut() = Bytes::from(
            pb::CreateEventRequest {
                event_id: event.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        r
    };
    let got = serve(&api, Some(&v), None, Method::CreateEvent, create).await;
    assert_eq!(got.err().map(|s| s.code()), Some(Code::PermissionDenied));
    assert!(seen(&received).is_empty(), "nothing refused went on");
    serve(&api, Some(&v), None, Method::GetHold, with_token(&buyer))
        .await
        .expect("passed on");
    let received = only(&received);
    assert!(
        received.keys.iter().any(|k| k.contains("authorization")),
        "the token travels on for the deciding node to check: {:?}",
        received.keys
    );
}
