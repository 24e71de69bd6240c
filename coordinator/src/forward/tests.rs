//! Forwarding against a fake node that answers with fixed bytes and keeps what it
//! received: bytes pass unchanged both ways, statuses come back whole, and nothing a
//! caller sent as metadata travels on. The fake is shared with `service`'s tests.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::bytes::Bytes;
use seatd_proto::v1 as pb;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use super::*;

/// What a fake node received: the message's bytes, the hop count sent, and the
/// metadata keys that came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    pub body: Bytes,
    pub hops: u32,
    pub event: Option<String>,
    pub keys: Vec<String>,
}

/// A node that answers every client API call with `answer` and keeps what it
/// received.
#[derive(Clone)]
pub(crate) struct FakeNode {
    answer: Result<Bytes, Status>,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl NamedService for FakeNode {
    const NAME: &'static str = "seatd.v1.Seats";
}

impl tonic::server::UnaryService<Bytes> for FakeNode {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        // Read as sent: `forward::hops` believes the header only from a node over the
        // peer port, and this fake listens in plaintext.
        let text = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let received = Received {
            hops: text(HOPS_HEADER).and_then(|s| s.parse().ok()).unwrap_or(0),
            event: text(EVENT_METADATA),
            keys: request
                .metadata()
                .keys()
                .map(|k| format!("{k:?}"))
                .collect(),
            body: request.into_inner(),
        };
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(received);
        }
        let answer = self.answer.clone();
        Box::pin(async move { answer.map(Response::new) })
    }
}

impl Service<http::Request<Body>> for FakeNode {
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

/// Starts a fake node on a loopback port answering `answer`; returns its address
/// and what it receives.
pub(crate) async fn fake_node(
    answer: Result<Bytes, Status>,
) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = FakeNode {
        answer,
        seen: seen.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(fake)
            .serve_with_incoming(crate::server::incoming(listener)),
    );
    (addr, seen)
}

pub(crate) fn seen(s: &Mutex<Vec<Received>>) -> Vec<Received> {
    s.lock().expect("not poisoned").clone()
}

/// `bytes` with a field no message here defines (15, varint 7) appended: decoding
/// drops it, passing on keeps it.
pub(crate) fn with_unknown_field(bytes: Bytes) -> Bytes {
    let mut v = bytes.to_vec();
    v.extend_from_slice(&[15 << 3, 7]);
    Bytes::from(v)
}

async fn channel_to(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid url")
        .connect_lazy()
}

fn some_call() -> Bytes {
    Bytes::from(
        pb::GetHoldRequest {
            hold_id: "demo.h1-0123456789abcdef".into(),
        }
        .encode_to_vec(),
    )
}

#[tokio::test]
async fn bytes_pass_unchanged_both_ways_with_only_the_forwarders_metadata() {
    let answer = with_unknown_field(Bytes::from(pb::Hold::default().encode_to_vec()));
    let (addr, received) = fake_node(Ok(answer.clone())).await;
    let body = with_unknown_field(some_call());
    let event = Some("demo".parse().expect("ascii"));
    let call = Outbound::bytes(seatd_wire::routing::paths::GET_HOLD, body.clone(), event);
    let hops1 = Call {
        hops: 1,
        caller: None,
    };
    let got = send(
        channel_to(&addr).await,
        &call,
        &hops1,
        Duration::from_secs(5),
    )
    .await
    .expect("answered");
    assert_eq!(got, answer, "the answer as the node sent it");
    let seen = seen(&received);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body, body,
        "the call as received, unknown field included"
    );
    assert_eq!(seen[0].hops, 2);
    assert_eq!(seen[0].event.as_deref(), Some("demo"));
    for key in &seen[0].keys {
        assert!(
            !key.contains("authorization") && !key.contains("x-client"),
            "only what the forwarder sets travels: {key}"
        );
    }
}

#[tokio::test]
async fn a_status_comes_back_whole() {
    let details = Bytes::from_static(b"\x0a\x08CONFLICT");
    let refusal = Status::with_details(Code::Aborted, "seat A-1 is taken", details.clone());
    let (addr, _) = fake_node(Err(refusal)).await;
    let call = Outbound::bytes(seatd_wire::routing::paths::GET_HOLD, some_call(), None);
    let got = send(
        channel_to(&addr).await,
        &call,
        &Call::default(),
        Duration::from_secs(5),
    )
    .await
    .expect_err("refused");
    assert_eq!(got.code(), Code::Aborted);
    assert_eq!(got.message(), "seat A-1 is taken");
    assert_eq!(got.details(), details.as_ref());
}

#[tokio::test]
async fn a_node_that_cannot_be_reached_is_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let call = Outbound::bytes(seatd_wire::routing::paths::GET_HOLD, some_call(), None);
    let got = send(
        channel_to(&closed).await,
        &call,
        &Call::default(),
        Duration::from_secs(5),
    )
    .await
    .expect_err("nobody listens");
    assert_eq!(got.code(), Code::Unavailable);
}

#[test]
fn a_typed_answer_that_does_not_decode_is_internal() {
    let garbage = Bytes::from_static(&[0xff, 0xff, 0xff]);
    let got = pb::Hold::from_answer(garbage.clone());
    assert!(matches!(got, Err(Error::Internal(_))), "{got:?}");
    assert_eq!(
        Raw::from_answer(garbage.clone()).expect("as is"),
        Raw(garbage)
    );
}
