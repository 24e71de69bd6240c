//! Passing a `HoldMany` call through without decoding it.
//!
//! A process that only forwards a call (a frontend, or a node that does not lead the
//! call's shard) has no use for its holds or their answers beyond routing. When every
//! hold of a call is for one shard and carries its retry key, such a process reads
//! only the event ids, user ids and retry keys, through a view of the request
//! ([`HoldManyRouting`]) whose fields are slices of the received buffer; forwards the
//! bytes it received; and returns the leader's answer bytes as they came (checking
//! only that it answers every hold). Decoding and re-encoding every hold and every
//! answer at each hop was about a third of a frontend's CPU per call. Every other call
//! (holds for several shards, a hold without a retry key, bytes the view cannot read,
//! a call this node decides itself) is decoded and served the typed way
//! ([`super::hold_many`]).
//!
//! Invariants:
//! - Both ways give the same answers: the leader validates and decides every hold
//!   whichever way it came. Bytes the view accepted but the leader cannot decode get
//!   the leader's INVALID_ARGUMENT for the whole call, as the typed way gives at
//!   entry; a leader that cannot be reached fails every hold with the router's
//!   status, as a typed group does; an answer whose count does not match the call is
//!   refused (INTERNAL for every hold).
//! - The per-user rate limit is never asked here: the leader asks it for each hold it
//!   decides (`super::admit`), whichever way the call came.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::{Buf, BufMut, Bytes};
use prost::Message;
use seatd_proto::passthrough::{HoldManyAnswers, HoldManyRouting};
use seatd_proto::v1 as pb;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::{all_failed, check_count, count_mismatch, hold_many};
use crate::error::Error;
use crate::node::{NodeInner, REQUEST_BYTES_MAX};
use crate::route::{forwarded, hops, Mode, REPLY_BYTES_MAX};
use seatd_wire as convert;

/// The gRPC path of `Seats/HoldMany`, which [`PassThrough`] serves itself.
const HOLD_MANY_PATH: &str = "/seatd.v1.Seats/HoldMany";

/// How a call goes on, as read through its routing view.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Forward the received bytes to `shard`'s leader. The call has `holds` holds.
    PassOn { shard: u32, holds: usize },
    /// Decode it and serve it the typed way.
    Typed,
}

impl Plan {
    /// The plan for a call whose message is `body`; an error refuses the call.
    fn of(node: &NodeInner, body: &Bytes) -> Result<Plan, Error> {
        let Ok(view) = HoldManyRouting::decode(body.clone()) else {
            return Ok(Plan::Typed);
        };
        check_count(view.holds.len())?;
        // Holds of one call are mostly for one event: its id is checked once.
        let mut shard: Option<(u32, &Bytes)> = None;
        for h in &view.holds {
            let text = |b: &Bytes| std::str::from_utf8(b).is_ok();
            if h.client_reservation_id.is_empty()
                || !text(&h.client_reservation_id)
                || !text(&h.user_id)
            {
                return Ok(Plan::Typed);
            }
            let s = match shard {
                Some((s, event)) if *event == h.event_id => s,
                _ => {
                    let Ok(event) = std::str::from_utf8(&h.event_id) else {
                        return Ok(Plan::Typed);
                    };
                    let Ok(event) = convert::event_id(event) else {
                        return Ok(Plan::Typed);
                    };
                    node.cluster.shard_of(&event)
                }
            };
            match shard {
                Some((first, _)) if first != s => return Ok(Plan::Typed),
                Some(_) => {}
                // Decided here: decoding is needed anyway, so the leader reads no
                // further than the first hold.
                None if leads(node, s) => return Ok(Plan::Typed),
                None => {}
            }
            shard = Some((s, &h.event_id));
        }
        let Some((shard, _)) = shard else {
            return Ok(Plan::Typed);
        };
        Ok(Plan::PassOn {
            shard,
            holds: view.holds.len(),
        })
    }
}

/// Whether this node leads `shard` (and so decides calls for it).
fn leads(node: &NodeInner, shard: u32) -> bool {
    node.shards
        .get(&shard)
        .is_some_and(|s| s.is_serving() && s.leader().1)
}

/// Serves a `HoldMany` call whose message is still in `body`, as received.
async fn hold_many_bytes(node: Arc<NodeInner>, request: Request<Bytes>) -> Result<Bytes, Status> {
    let hops = hops(&request);
    let body = request.into_inner();
    let (shard, holds) = match Plan::of(&node, &body)? {
        Plan::Typed => return Ok(typed(&node, body, hops).await?),
        Plan::PassOn { shard, holds } => (shard, holds),
    };
    let answered = node
        .routed(
            shard,
            Mode::Leader,
            hops,
            // Leadership came here since the plan: decide it here.
            |_| typed(&node, body.clone(), hops),
            |c: Channel, hops, left| forward_bytes(c, body.clone(), hops, left),
        )
        .await;
    match answered {
        Ok(answer) => Ok(match HoldManyAnswers::decode(answer.clone()) {
            Ok(a) if a.results.len() == holds => answer,
            Ok(a) => encode(&all_failed(holds, count_mismatch(a.results.len(), holds))),
            Err(e) => encode(&all_failed(
                holds,
                Error::Internal(format!("undecodable answer from the leader: {e}")).into(),
            )),
        }),
        // The call itself is malformed: the typed way refuses it whole at entry.
        Err(e @ Error::Invalid(_)) => Err(e.into()),
        Err(Error::Remote(st)) if st.code() == Code::InvalidArgument => Err(st),
        // As a typed group: every hold fails with the status.
        Err(e) => Ok(encode(&all_failed(holds, e.into()))),
    }
}

/// Decodes a call and serves it the typed way.
async fn typed(node: &Arc<NodeInner>, body: Bytes, hops: u32) -> Result<Bytes, Error> {
    let req = pb::HoldManyRequest::decode(body)
        .map_err(|e| Error::Invalid(format!("undecodable HoldManyRequest: {e}")))?;
    Ok(encode(&hold_many(node, req, hops).await?))
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
    // Retryable: the router tries again, or another node.
    grpc.ready()
        .await
        .map_err(|e| Error::Unavailable(format!("connection not ready: {e}")))?;
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
/// every other method goes to `inner` unchanged. The size limits are the server's.
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
mod tests;
