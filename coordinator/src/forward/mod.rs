//! Forwarding: the one way a call that this process does not decide reaches the node
//! that does. Every unary call of the client API travels as the bytes of its message,
//! to the gRPC path it came on, with only what the forwarder sets as metadata (the
//! hop count, the routing metadata it routed by, the time left); the answer comes back
//! as the bytes the next node sent, or as its status, details included.
//!
//! Two callers, one component:
//! - the gRPC service (`service`) forwards a call it received without decoding it,
//!   when the call's routing metadata names a shard this process does not lead;
//! - the router (`route::routed`) forwards a call the API decoded (it had no routing
//!   metadata, or it spans several shards): the API hands it an [`Outbound`], the
//!   request encoded once, and gets the answer back decoded ([`Answer`]).
//!
//! Invariants:
//! - Bytes are passed on unchanged both ways: fields this version does not know
//!   survive a hop.
//! - Nothing a client sent as metadata travels on (a forwarded call is a fresh
//!   request) but its bearer token, once checked: a client cannot forge the hop count
//!   or anything internal by way of a forwarder, and the node that decides the call
//!   checks the token itself.
//! - Sizes are bounded by the client API's limits in both directions.

use std::sync::Arc;
use std::time::Duration;

use prost::bytes::Bytes;
use prost::Message;
use raft_store::EventId;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::auth::Identity;
use crate::error::Error;
use crate::limits::HOPS_MAX;
use crate::limits::{REPLY_BYTES_MAX, REQUEST_BYTES_MAX};
use seatd_wire::routing::EVENT_METADATA;

mod codec;

/// The metadata key of a call's bearer token.
pub const AUTHORIZATION_METADATA: &str = "authorization";

/// The header that counts how often a call was forwarded.
pub const HOPS_HEADER: &str = "x-seatd-hops";

/// How many times a call was forwarded already, as another node says. Only a call
/// from a node (its peer-port certificate) is believed: on the client port anyone can
/// write the header, so a client's own header counts as 0.
pub fn hops<T>(request: &tonic::Request<T>) -> u32 {
    if !crate::tls::from_a_node(request) {
        return 0;
    }
    request
        .metadata()
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `message` as a forwarded request that has made `hops` hops: a fresh request, so
/// nothing the caller sent (its metadata) travels on.
pub fn forwarded<T>(message: T, hops: u32, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        HOPS_HEADER,
        tonic::metadata::MetadataValue::from(hops.min(HOPS_MAX)),
    );
    r.set_timeout(timeout);
    r
}

pub(crate) use codec::AsBytes;

/// What a call carries besides its message, as this process believes it: how often it
/// was forwarded already, and who made it (when this process checks tokens).
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub hops: u32,
    pub caller: Option<Arc<Caller>>,
}

/// Who made a call: the identity its bearer token names, and the token itself, which
/// travels on with the call so that the node deciding it checks it again.
#[derive(Debug)]
pub struct Caller {
    pub identity: Identity,
    pub(crate) bearer: AsciiMetadataValue,
}

impl Caller {
    pub fn new(identity: Identity, bearer: AsciiMetadataValue) -> Self {
        Self { identity, bearer }
    }
}

impl Call {
    /// The caller's identity, when tokens are checked.
    pub fn identity(&self) -> Option<&Identity> {
        self.caller.as_ref().map(|c| &c.identity)
    }
}

/// A call on its way to another node: its path, its message's bytes, and the event it
/// is about (sent on as routing metadata, so the next hop need not decode it either).
#[derive(Clone, Debug)]
pub struct Outbound {
    path: &'static str,
    body: Bytes,
    event: Option<AsciiMetadataValue>,
}

impl Outbound {
    /// A call received as `body` on `path`, routed by `event`.
    pub fn bytes(path: &'static str, body: Bytes, event: Option<AsciiMetadataValue>) -> Self {
        Self { path, body, event }
    }

    /// A decoded call, encoded once for every attempt the router makes.
    pub fn message(path: &'static str, message: &impl Message, event: Option<&EventId>) -> Self {
        Self {
            path,
            body: Bytes::from(message.encode_to_vec()),
            // Event ids are ASCII by their syntax; one that is not goes without.
            event: event.and_then(|e| MetadataValue::try_from(e.as_str()).ok()),
        }
    }

    /// The request to send to the next node as its `hops`-th hop: a fresh one, so
    /// nothing the caller sent as metadata travels on but the bearer token that was
    /// checked here.
    fn request(&self, call: &Call, hops: u32, timeout: Duration) -> Request<Bytes> {
        let mut r = forwarded(self.body.clone(), hops, timeout);
        if let Some(event) = &self.event {
            r.metadata_mut().insert(EVENT_METADATA, event.clone());
        }
        if let Some(caller) = &call.caller {
            r.metadata_mut()
                .insert(AUTHORIZATION_METADATA, caller.bearer.clone());
        }
        debug_assert!(r.metadata().get(HOPS_HEADER).is_some());
        r
    }
}

/// What a forwarded answer becomes: a decoded message for the typed API, or the bytes
/// as they came ([`Raw`]) for a call passed on undecoded.
pub trait Answer: Sized {
    fn from_answer(bytes: Bytes) -> Result<Self, Error>;
}

impl<M: Message + Default> Answer for M {
    fn from_answer(bytes: Bytes) -> Result<Self, Error> {
        M::decode(bytes)
            .map_err(|e| Error::Internal(format!("an undecodable answer from a node: {e}")))
    }
}

/// An answer passed on as the bytes the next node sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw(pub Bytes);

impl Answer for Raw {
    fn from_answer(bytes: Bytes) -> Result<Self, Error> {
        Ok(Raw(bytes))
    }
}

/// Sends `out` to the node behind `channel` as `call`'s next hop, with `left` to
/// answer. A status is the next node's (or UNAVAILABLE when it cannot be reached),
/// for the router to retry or return.
pub async fn send(
    channel: Channel,
    out: &Outbound,
    call: &Call,
    left: Duration,
) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(REPLY_BYTES_MAX)
        .max_encoding_message_size(REQUEST_BYTES_MAX);
    // Retryable: the router tries again, or another node.
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let path = http::uri::PathAndQuery::from_static(out.path);
    let request = out.request(call, call.hops + 1, left);
    let answer = grpc.unary(request, path, AsBytes).await?;
    Ok(answer.into_inner())
}

#[cfg(test)]
pub(crate) mod tests;
