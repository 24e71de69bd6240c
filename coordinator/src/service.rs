//! The client API over gRPC (`seatd.v1.Seats`): a thin adapter over the typed
//! [`Api`]. Each method reads the hop count (believed only from another node, see
//! `route::hops`), calls the API, and maps a failure to a status in the one place
//! that does it (`error.rs`).
//!
//! `HoldMany` reaches [`Seats::hold_many`] only when a process serves this service
//! without `holds::PassThrough` in front; a running server's `HoldMany` goes through
//! the pass-through, which calls the same typed code where it decides.

use std::sync::Arc;

use seatd_proto::v1 as pb;
use seatd_proto::v1::seats_server::Seats;
use tonic::{Request, Response, Status};

use crate::api::{Api, SeatsApi};
use crate::error::Error;
use crate::node::NodeInner;
use crate::route::hops;

/// The gRPC service over an API: a node's [`Api`], or a frontend's cached one.
pub struct SeatsService<A = Api> {
    api: A,
}

impl SeatsService<Api> {
    /// A node's service: its API, uncached.
    pub fn for_node(node: Arc<NodeInner>) -> Self {
        Self::new(Api::new(node))
    }
}

impl<A: SeatsApi> SeatsService<A> {
    pub fn new(api: A) -> Self {
        Self { api }
    }

    pub(crate) fn node(&self) -> &Arc<NodeInner> {
        self.api.node()
    }
}

/// A call's answer as gRPC gives it.
fn answer<T>(r: Result<T, Error>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

/// The `Seats` service: each listed method calls `Api::$method` with the request and
/// its hop count. (The impl is made whole by the macro, so `async_trait` sees the
/// methods.)
macro_rules! seats_service {
    ($($method:ident($req:ty) -> $reply:ty;)*) => {
        #[tonic::async_trait]
        impl<A: SeatsApi> Seats for SeatsService<A> {
            $(
                async fn $method(
                    &self,
                    request: Request<$req>,
                ) -> Result<Response<$reply>, Status> {
                    let hops = hops(&request);
                    answer(self.api.$method(request.into_inner(), hops).await)
                }
            )*

            async fn cluster_status(
                &self,
                request: Request<pb::ClusterStatusRequest>,
            ) -> Result<Response<pb::ClusterStatus>, Status> {
                answer(self.api.cluster_status(request.into_inner()).await)
            }
        }
    };
}

seats_service! {
    create_event(pb::CreateEventRequest) -> pb::Event;
    list_events(pb::ListEventsRequest) -> pb::ListEventsResponse;
    get_event(pb::GetEventRequest) -> pb::Event;
    set_sale(pb::SetSaleRequest) -> pb::Event;
    get_seat_map(pb::GetSeatMapRequest) -> pb::SeatMap;
    hold(pb::HoldRequest) -> pb::Hold;
    hold_many(pb::HoldManyRequest) -> pb::HoldManyResponse;
    commit(pb::CommitRequest) -> pb::Order;
    release(pb::ReleaseRequest) -> pb::Hold;
    get_hold(pb::GetHoldRequest) -> pb::Hold;
    get_order(pb::GetOrderRequest) -> pb::Order;
}
