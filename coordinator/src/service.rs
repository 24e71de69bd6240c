//! The client API over gRPC (`seatd.v1.Seats`): reads each unary call as the bytes of
//! its message, then either passes it on undecoded (`forward`) or decodes it and
//! calls the typed API ([`SeatsApi`]), whose failures become a status in the one place
//! that maps them (`error.rs`).
//!
//! A call is passed on undecoded when its routing metadata (`x-seatd-event`, set by
//! the client library) names an event whose shard this process does not lead, and
//! the API does not ask to see it decoded (`SeatsApi::decodes`). A process that only
//! forwards (a frontend, a follower) thus neither decodes a call nor re-encodes its
//! answer: that was about a third of a frontend's CPU per hold. Every other call is
//! decoded here: calls with no metadata, calls this node decides, lists, status.
//!
//! Invariants:
//! - Both ways give the same answers: the node that decides a call decodes it and
//!   routes it again by what it says, so metadata that lies costs a hop, not a wrong
//!   answer; a call the leader cannot decode gets its INVALID_ARGUMENT.
//! - The hop count is believed only from another node (`forward::hops`); a forwarded
//!   call carries only what the forwarder sets.
//! - A message over `REQUEST_BYTES_MAX` is refused from its length prefix, before it
//!   is read.
//! - A call passed on undecoded may be sent again by the forwarder (the leader did not
//!   answer in time), so it must carry its own retry key: a call with routing metadata
//!   whose retry key is empty is refused where it is decoded (INVALID_ARGUMENT), never
//!   given a fresh key per attempt. The client library always sets them; the API sets
//!   them on calls it forwards itself.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::Bytes;
use prost::Message;
use seatd_proto::v1 as pb;
use seatd_wire::routing::{paths, EVENT_METADATA};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::AsciiMetadataValue;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::admission::AddressLimiter;
use crate::api::{Api, SeatsApi};
use crate::auth::{AuthError, Role, Verifier};
use crate::error::Error;
use crate::forward::{hops, AsBytes, Call, Caller, Outbound, Raw, AUTHORIZATION_METADATA};
use crate::limits::{REPLY_BYTES_MAX, REQUEST_BYTES_MAX};
use crate::process::Process;
use crate::route::Mode;

/// The gRPC service over an API: a node's [`Api`], or a frontend's cached one; with
/// bearer tokens checked when it has a [`Verifier`].
pub struct SeatsService<A = Api> {
    api: Arc<A>,
    auth: Option<Arc<Verifier>>,
    /// Calls without a valid token, per client address (client ports only).
    anonymous: Option<Arc<AddressLimiter>>,
}

impl<A> Clone for SeatsService<A> {
    fn clone(&self) -> Self {
        Self {
            api: self.api.clone(),
            auth: self.auth.clone(),
            anonymous: self.anonymous.clone(),
        }
    }
}

impl SeatsService<Api> {
    /// A node's service: its API, uncached.
    pub fn for_node(node: Arc<Process>, auth: Option<Arc<Verifier>>) -> Self {
        Self::new(Api::new(node), auth)
    }
}

impl<A: SeatsApi> SeatsService<A> {
    pub fn new(api: A, auth: Option<Arc<Verifier>>) -> Self {
        Self {
            api: Arc::new(api),
            auth,
            anonymous: None,
        }
    }

    /// Limits the calls without a valid token each client address may make, where
    /// tokens are checked, to the process's `anonymous_calls_per_address_per_s`: for
    /// client ports (a node's peer port serves only nodes, whose certificates it checked).
    pub fn limit_anonymous_by_address(mut self) -> Self {
        let per_s = self.api.node().settings.anonymous_calls_per_address_per_s;
        if self.auth.is_some() && per_s > 0 {
            self.anonymous = Some(Arc::new(AddressLimiter::new(per_s)));
        }
        self
    }
}

impl<A> NamedService for SeatsService<A> {
    const NAME: &'static str = "seatd.v1.Seats";
}

/// Decodes a request message received as bytes.
fn decode<M: Message + Default>(body: Bytes) -> Result<M, Error> {
    M::decode(body).map_err(|e| {
        Error::Invalid(format!(
            "undecodable {}: {e}",
            std::any::type_name::<M>()
                .rsplit("::")
                .next()
                .unwrap_or("request")
        ))
    })
}

/// Whether a request carries the retry key that makes sending it again safe (see the
/// module doc); requests that need none answer `true`.
trait RetryKeys {
    fn has_retry_keys(&self) -> bool {
        true
    }
}

impl RetryKeys for pb::HoldRequest {
    fn has_retry_keys(&self) -> bool {
        !self.client_reservation_id.is_empty()
    }
}

impl RetryKeys for pb::HoldManyRequest {
    fn has_retry_keys(&self) -> bool {
        self.holds.iter().all(RetryKeys::has_retry_keys)
    }
}

impl RetryKeys for pb::CommitRequest {
    fn has_retry_keys(&self) -> bool {
        !self.idempotency_key.is_empty()
    }
}

impl RetryKeys for pb::CreateEventRequest {
    fn has_retry_keys(&self) -> bool {
        !self.event_id.is_empty()
    }
}

impl RetryKeys for pb::ListEventsRequest {}
impl RetryKeys for pb::GetEventRequest {}
impl RetryKeys for pb::SetSaleRequest {}
impl RetryKeys for pb::GetSeatMapRequest {}
impl RetryKeys for pb::ReleaseRequest {}
impl RetryKeys for pb::GetHoldRequest {}
impl RetryKeys for pb::ListHoldsRequest {}
impl RetryKeys for pb::GetOrderRequest {}

/// Decodes a call that arrived with routing metadata (`routed`) or without.
fn decode_call<M: Message + Default + RetryKeys>(body: Bytes, routed: bool) -> Result<M, Error> {
    let req: M = decode(body)?;
    if routed && !req.has_retry_keys() {
        return Err(Error::Invalid(format!(
            "a call with {EVENT_METADATA} metadata must carry its retry key \
             (client reservation id, idempotency key or event id)"
        )));
    }
    Ok(req)
}

fn encode(answer: &impl Message) -> Raw {
    Raw(Bytes::from(answer.encode_to_vec()))
}

/// The unary methods of `Seats`: `Method`, its path, and `decided`, which decodes a
/// call and answers it with the API method of the same name. `routable` methods may
/// be passed on undecoded by their routing metadata.
macro_rules! seats_methods {
    ($($variant:ident $path:ident $routable:literal => $method:ident($req:ty);)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Method { $($variant,)* ClusterStatus }

        impl Method {
            fn of(path: &str) -> Option<Self> {
                match path {
                    $(paths::$path => Some(Self::$variant),)*
                    paths::CLUSTER_STATUS => Some(Self::ClusterStatus),
                    _ => None,
                }
            }

            fn path(self) -> &'static str {
                match self {
                    $(Self::$variant => paths::$path,)*
                    Self::ClusterStatus => paths::CLUSTER_STATUS,
                }
            }

            /// The role a caller needs for this method (`None`: no token needed).
            fn role(self) -> Option<Role> {
                match self {
                    Self::CreateEvent | Self::SetSale | Self::ListHolds => Some(Role::Operator),
                    // Topology only (digests are never served on the client port):
                    // what frontends and clients route by.
                    Self::ClusterStatus => None,
                    _ => Some(Role::Buyer),
                }
            }

            /// Whether a call may be passed on by its routing metadata alone.
            fn routable(self) -> bool {
                match self {
                    $(Self::$variant => $routable,)*
                    Self::ClusterStatus => false,
                }
            }
        }

        /// Decodes a call and answers it with the typed API.
        async fn decided<A: SeatsApi>(
            api: &A,
            method: Method,
            body: Bytes,
            call: Call,
            routed: bool,
        ) -> Result<Raw, Error> {
            match method {
                $(Method::$variant => {
                    let req: $req = decode_call(body, routed)?;
                    Ok(encode(&api.$method(req, call).await?))
                })*
                Method::ClusterStatus => {
                    let req: pb::ClusterStatusRequest = decode(body)?;
                    Ok(encode(&api.cluster_status(req).await?))
                }
            }
        }
    };
}

seats_methods! {
    CreateEvent CREATE_EVENT true => create_event(pb::CreateEventRequest);
    ListEvents LIST_EVENTS false => list_events(pb::ListEventsRequest);
    GetEvent GET_EVENT true => get_event(pb::GetEventRequest);
    SetSale SET_SALE true => set_sale(pb::SetSaleRequest);
    GetSeatMap GET_SEAT_MAP true => get_seat_map(pb::GetSeatMapRequest);
    Hold HOLD true => hold(pb::HoldRequest);
    HoldMany HOLD_MANY true => hold_many(pb::HoldManyRequest);
    Commit COMMIT true => commit(pb::CommitRequest);
    Release RELEASE true => release(pb::ReleaseRequest);
    GetHold GET_HOLD true => get_hold(pb::GetHoldRequest);
    GetOrder GET_ORDER true => get_order(pb::GetOrderRequest);
    ListHolds LIST_HOLDS true => list_holds(pb::ListHoldsRequest);
}

/// The shard a call's routing metadata names, with the metadata to send on, when the
/// call may be passed on undecoded and this process does not lead that shard.
fn pass_on<A: SeatsApi>(
    api: &A,
    method: Method,
    request: &Request<Bytes>,
) -> Option<(u32, AsciiMetadataValue)> {
    if !method.routable() || api.decodes(method.path()) {
        return None;
    }
    let value = request.metadata().get(EVENT_METADATA)?;
    // Parsed as the event id it claims to be (bounded, valid syntax), or ignored.
    let event = seatd_wire::event_id(value.to_str().ok()?).ok()?;
    let node = api.node();
    let shard = node.cluster.shard_of(&event);
    (!node.leads(shard)).then(|| (shard, value.clone()))
}

/// What `request` carries besides its message: its hop count, and (when `auth` is
/// set) the caller its bearer token names, who must have the method's role.
fn call_of(
    auth: Option<&Verifier>,
    anonymous: Option<&AddressLimiter>,
    method: Method,
    request: &Request<Bytes>,
) -> Result<Call, Error> {
    let hops = hops(request);
    let Some(auth) = auth else {
        return Ok(Call { hops, caller: None });
    };
    let Some(needed) = method.role() else {
        // A call that needs no token counts against its address unless it has one.
        let signed = request
            .metadata()
            .get(AUTHORIZATION_METADATA)
            .is_some_and(|h| {
                auth.verify_header(Some(h.to_str().unwrap_or_default()))
                    .is_ok()
            });
        if !signed {
            charge_address(anonymous, request)?;
        }
        return Ok(Call { hops, caller: None });
    };
    let unauthenticated = |e: AuthError| -> Result<Call, Error> {
        charge_address(anonymous, request)?;
        Err(Error::Unauthenticated(e.to_string()))
    };
    let Some(header) = request.metadata().get(AUTHORIZATION_METADATA) else {
        return unauthenticated(AuthError::Missing);
    };
    let identity = match auth.verify_header(Some(header.to_str().unwrap_or_default())) {
        Ok(identity) => identity,
        Err(e) => return unauthenticated(e),
    };
    if needed == Role::Operator && identity.role != Role::Operator {
        return Err(Error::PermissionDenied(format!(
            "{} needs the operator role; {:?} is a {}",
            method.path(),
            identity.subject,
            identity.role
        )));
    }
    Ok(Call {
        hops,
        caller: Some(Arc::new(Caller::new(identity, header.clone()))),
    })
}

/// Takes one call without a valid token from the budget of the address it came from:
/// RATE_LIMITED once the address has spent it.
fn charge_address(
    anonymous: Option<&AddressLimiter>,
    request: &Request<Bytes>,
) -> Result<(), Error> {
    let (Some(limiter), Some(addr)) = (anonymous, request.remote_addr()) else {
        return Ok(());
    };
    if limiter.admit(&addr.ip()) {
        return Ok(());
    }
    Err(Error::RateLimited(format!(
        "too many calls without a valid token from {}; send a bearer token",
        addr.ip()
    )))
}

/// Serves one unary call whose message is `request`'s bytes.
async fn serve<A: SeatsApi>(
    api: &A,
    auth: Option<&Verifier>,
    anonymous: Option<&AddressLimiter>,
    method: Method,
    request: Request<Bytes>,
) -> Result<Bytes, Status> {
    let call = call_of(auth, anonymous, method, &request)?;
    let routed = request.metadata().get(EVENT_METADATA).is_some();
    let answered = match pass_on(api, method, &request) {
        None => decided(api, method, request.into_inner(), call, routed).await,
        Some((shard, event)) => {
            let body = request.into_inner();
            let out = Outbound::bytes(method.path(), body.clone(), Some(event));
            // Leadership may come here while the router waits: then it is decided here.
            api.node()
                .routed(shard, Mode::Leader, &call, &out, |_| {
                    decided(api, method, body.clone(), call.clone(), true)
                })
                .await
        }
    };
    answered.map(|Raw(bytes)| bytes).map_err(Status::from)
}

/// One call's method over the API, as tonic's unary service on bytes.
struct Unary<A> {
    api: Arc<A>,
    auth: Option<Arc<Verifier>>,
    anonymous: Option<Arc<AddressLimiter>>,
    method: Method,
}

impl<A: SeatsApi> tonic::server::UnaryService<Bytes> for Unary<A> {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let (api, auth, method) = (self.api.clone(), self.auth.clone(), self.method);
        let anonymous = self.anonymous.clone();
        Box::pin(async move {
            serve(
                api.as_ref(),
                auth.as_deref(),
                anonymous.as_deref(),
                method,
                request,
            )
            .await
            .map(Response::new)
        })
    }
}

impl<A: SeatsApi> Service<http::Request<Body>> for SeatsService<A> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(method) = Method::of(req.uri().path()) else {
            let unknown = Status::unimplemented(format!("no method {}", req.uri().path()));
            return Box::pin(async move { Ok(unknown.into_http()) });
        };
        let (api, auth) = (self.api.clone(), self.auth.clone());
        let anonymous = self.anonymous.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(AsBytes)
                .apply_max_message_size_config(Some(REQUEST_BYTES_MAX), Some(REPLY_BYTES_MAX));
            let unary = Unary {
                api,
                auth,
                anonymous,
                method,
            };
            Ok(grpc.unary(unary, req).await)
        })
    }
}

#[cfg(test)]
mod tests;
