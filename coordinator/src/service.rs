//! The client API (`seatd.v1.Seats`) as a node serves it.
//!
//! Each handler validates what it can without state (the absolute caps of
//! `raft_store::limits` among it, so an oversized request is refused before anything
//! is proposed), turns the request into a command or a read, and hands it to the
//! router (`route`), which runs it on the shard's leader (here or by forwarding). Retry keys the caller left empty (client
//! reservation id, idempotency key, event id) are filled in here, before routing, so
//! the router's own retries reuse them.
//!
//! Commit runs on the shard's leader: BeginCheckout, then the charge, then
//! CompleteCheckout, or AbortCheckout when the payment is declined. A charge whose
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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raft_store::limits::check_command_bytes;
use raft_store::raft::NodeId;
use raft_store::{Command, HoldId, Limit, OrderView, Refusal, Reply, SeatMapPart};
use seatd_proto::v1 as pb;
use seatd_proto::v1::seats_server::Seats;
use std::future::Future;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::convert;
use crate::error::Error;
use crate::frontend::FrontCache;
use crate::holds::{self, hold_command, validate_hold};
use crate::node::NodeInner;
use crate::payment::{charge_key, refund_key, ChargeRequest, PaymentError, RefundRequest};
use crate::peers::Links;
use crate::route::{forwarded, hops, seats_client, Mode};
use crate::shard::Shard;
use seatd_proto::raft::raft_client::RaftClient;
use seatd_proto::raft::LocalStatusRequest;

/// Events a list returns by default, and at most.
pub const LIST_LIMIT_DEFAULT: u32 = 100;
pub const LIST_LIMIT_MAX: u32 = 1000;

/// The forwarding half of a routed call: `method` of the next node's client with
/// `req`, marked with its hop count and the time left.
macro_rules! forward {
    ($req:expr, $method:ident) => {
        |c: Channel, hops, left| {
            let req = $req.clone();
            async move { seats_client(c).$method(forwarded(req, hops, left)).await }
        }
    };
}

pub struct SeatsService {
    node: Arc<NodeInner>,
    /// A frontend's cache of answers that callers accept old (see `frontend`).
    cache: Option<Arc<FrontCache>>,
}

impl SeatsService {
    pub fn new(node: Arc<NodeInner>) -> Self {
        Self { node, cache: None }
    }

    pub fn with_cache(node: Arc<NodeInner>, cache: Arc<FrontCache>) -> Self {
        Self {
            node,
            cache: Some(cache),
        }
    }

    pub(crate) fn node(&self) -> &Arc<NodeInner> {
        &self.node
    }

    fn events_changed(&self) {
        if let Some(c) = &self.cache {
            c.events_changed();
        }
    }
}

/// Waits for a linearizable read point on `shard`, then runs `f`.
async fn consistent<T>(
    node: &NodeInner,
    shard: &Shard,
    f: impl FnOnce(&raft_store::SeatMachine) -> T,
) -> Result<T, Error> {
    Ok(shard.read_consistent(node.settings.route_wait, f).await?)
}

/// Runs `read` on tokio's blocking pool: it takes the state lock, which an apply
/// holds for a whole entry, and may read RocksDB (a hold evicted to disk) or build a
/// large answer (a seat map); an async worker must wait for none of these.
async fn read_off_worker<T, F>(read: Arc<F>, shard: Arc<Shard>) -> Result<T, Error>
where
    T: Send + 'static,
    F: Fn(&Shard) -> Result<T, Error> + Send + Sync + 'static,
{
    match tokio::task::spawn_blocking(move || read(&shard)).await {
        Ok(answer) => answer,
        Err(e) => Err(Error::Internal(format!("a read failed: {e}"))),
    }
}

fn summary(shard: &Shard, event: &raft_store::EventId) -> Result<pb::Event, Error> {
    let s = shard.reader.read(|m| m.event_summary(event))?;
    Ok(convert::event_to_pb(s, shard.id))
}

/// One shard's part of an event list, read on its leader.
async fn list_shard(
    node: Arc<NodeInner>,
    shard: u32,
    req: pb::ListEventsRequest,
    hops: u32,
) -> Result<Vec<pb::Event>, Error> {
    let limit = req.limit as usize;
    let mut forwarded_req = req.clone();
    forwarded_req.shard = Some(shard);
    node.routed(
        shard,
        Mode::Leader,
        hops,
        |s| {
            let (node, q) = (node.clone(), req.q.clone());
            async move {
                let found = consistent(&node, &s, |m| {
                    m.events(req.from_ms, req.to_ms, Some(q.as_str()), limit)
                })
                .await?;
                Ok(pb::ListEventsResponse {
                    events: found
                        .into_iter()
                        .map(|e| convert::event_to_pb(e, s.id))
                        .collect(),
                    cache_age_ms: 0,
                })
            }
        },
        forward!(forwarded_req, list_events),
    )
    .await
    .map(|r| r.events)
}

/// Asks every node in `nodes` for its local view (this node answers itself), each
/// within `timeout`; `None` for a node that did not answer. A node asks its peers
/// over the peer port (and learns where each serves clients from the answer); a
/// frontend asks the nodes' client ports.
pub async fn peer_views(
    node: &Arc<NodeInner>,
    nodes: &[NodeId],
    timeout: Duration,
) -> Result<Vec<(NodeId, Option<pb::ClusterStatus>)>, Error> {
    let mut tasks = tokio::task::JoinSet::new();
    for &peer in nodes {
        let node = node.clone();
        tasks.spawn(async move {
            if peer == node.id {
                return (peer, Some(local_status(&node, false)));
            }
            let view = tokio::time::timeout(timeout, view_of(&node, peer, timeout))
                .await
                .ok()
                .flatten();
            if let Some(me) = view.as_ref().and_then(|v| v.nodes.first()) {
                if me.id == peer && matches!(node.links, Links::Peers(_)) {
                    node.learn_client_addr(peer, &me.addr);
                }
            }
            (peer, view)
        });
    }
    let mut views = Vec::with_capacity(nodes.len());
    while let Some(joined) = tasks.join_next().await {
        views.push(joined.map_err(|e| Error::Unavailable(format!("status task: {e}")))?);
    }
    views.sort_by_key(|(id, _)| *id);
    Ok(views)
}

/// Node `peer`'s own view, without digests.
async fn view_of(node: &NodeInner, peer: NodeId, timeout: Duration) -> Option<pb::ClusterStatus> {
    let channel = node.channel_to(peer).ok()?;
    match &node.links {
        Links::Peers(_) => {
            let mut client = RaftClient::new(channel);
            let mut req = Request::new(LocalStatusRequest { digest: false });
            req.set_timeout(timeout);
            client
                .local_status(req)
                .await
                .ok()
                .map(Response::into_inner)
        }
        Links::Clients(_) => {
            let mut client = pb::seats_client::SeatsClient::new(channel);
            let req = forwarded(
                pb::ClusterStatusRequest {
                    local: true,
                    digest: false,
                },
                0,
                timeout,
            );
            client
                .cluster_status(req)
                .await
                .ok()
                .map(Response::into_inner)
        }
    }
}

/// This node's own view of the shards it hosts, with each shard's state digest when
/// `with_digest` (asked over the peer port only: it reads a shard's whole state).
pub(crate) fn local_status(node: &NodeInner, with_digest: bool) -> pb::ClusterStatus {
    let mut shards: Vec<pb::ShardStatus> = node
        .shards
        .values()
        .map(|s| {
            let mut view = s.status(with_digest);
            let gate = node.gates.get(&s.id);
            view.rejoining = gate.is_some_and(|g| g.is_closed());
            view.catching_up = gate.is_some_and(|g| g.is_catching_up());
            view
        })
        .collect();
    shards.sort_by_key(|s| s.shard);
    pb::ClusterStatus {
        nodes: vec![pb::NodeStatus {
            id: node.id,
            addr: node.client_addr(node.id).unwrap_or_default(),
            reachable: true,
        }],
        shards,
    }
}

/// The best view of each shard among the answers: a leader's (highest term first),
/// else the most advanced replica's.
pub(crate) fn merge_views(
    node: &NodeInner,
    views: Vec<(NodeId, Option<pb::ClusterStatus>)>,
) -> pb::ClusterStatus {
    let mut best: BTreeMap<u32, pb::ShardStatus> = BTreeMap::new();
    let mut nodes = Vec::new();
    for (id, view) in views {
        nodes.push(pb::NodeStatus {
            id,
            addr: node.client_addr(id).unwrap_or_default(),
            reachable: view.is_some(),
        });
        for mut s in view.map(|v| v.shards).unwrap_or_default() {
            s.digest.clear();
            let rank = |s: &pb::ShardStatus| (s.role == "leader", s.term, s.applied_index);
            match best.get(&s.shard) {
                Some(b) if rank(b) >= rank(&s) => {}
                _ => {
                    best.insert(s.shard, s);
                }
            }
        }
    }
    let shards = (0..node.cluster.shards())
        .map(|shard| {
            best.remove(&shard).unwrap_or_else(|| pb::ShardStatus {
                shard,
                members: node.cluster.members(shard),
                ..Default::default()
            })
        })
        .collect();
    pb::ClusterStatus { nodes, shards }
}

/// The commit flow, on the shard's leader.
async fn commit_here(
    node: &NodeInner,
    shard: &Shard,
    hold: HoldId,
    token: String,
    key: String,
) -> Result<OrderView, Error> {
    let begun = shard
        .propose(Command::BeginCheckout {
            hold: hold.clone(),
            idempotency_key: key.clone(),
        })
        .await??;
    match begun {
        Reply::Completed(order) => return Ok(order),
        Reply::CheckoutStarted { .. } => {}
        other => return Err(Error::unexpected(other)),
    }
    // BeginCheckout answered for this hold, so the machine has bound `key` to it: the
    // gateway key names this attempt of this hold and nothing else.
    let charge = node.gateway.charge(ChargeRequest {
        token,
        idempotency_key: charge_key(&hold, &key),
        description: hold.to_string(),
    });
    match tokio::time::timeout(node.settings.payment_timeout, charge).await {
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
                    if let Err(e) = node.gateway.refund(refund).await {
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
            node.settings.payment_timeout.as_millis()
        ))),
    }
}

impl SeatsService {
    /// Proposes `command` on its shard's leader (here or forwarded) and turns the
    /// state machine's reply into the answer with `answer`.
    async fn write<T, R, RF>(
        &self,
        shard: u32,
        hops: u32,
        command: Command,
        answer: impl Fn(&Shard, Reply) -> Result<T, Error>,
        remote: R,
    ) -> Result<Response<T>, Status>
    where
        R: Fn(Channel, u32, Duration) -> RF,
        RF: Future<Output = Result<Response<T>, Status>>,
    {
        let answer = &answer;
        let reply = self
            .node
            .routed(
                shard,
                Mode::Leader,
                hops,
                |s| {
                    let command = command.clone();
                    async move {
                        let reply = s.propose(command).await??;
                        answer(&s, reply)
                    }
                },
                remote,
            )
            .await?;
        Ok(Response::new(reply))
    }

    /// Runs `read` on the shard's leader (here or forwarded) once a linearizable read
    /// point has been applied.
    async fn read<T, F, R, RF>(
        &self,
        shard: u32,
        hops: u32,
        read: Arc<F>,
        remote: R,
    ) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        F: Fn(&Shard) -> Result<T, Error> + Send + Sync + 'static,
        R: Fn(Channel, u32, Duration) -> RF,
        RF: Future<Output = Result<Response<T>, Status>>,
    {
        let (node, read) = (&self.node, &read);
        let reply = node
            .routed(
                shard,
                Mode::Leader,
                hops,
                |s| async move {
                    consistent(node, &s, |_| ()).await?;
                    read_off_worker(read.clone(), s).await
                },
                remote,
            )
            .await?;
        Ok(Response::new(reply))
    }
}

#[tonic::async_trait]
impl Seats for SeatsService {
    async fn create_event(
        &self,
        request: Request<pb::CreateEventRequest>,
    ) -> Result<Response<pb::Event>, Status> {
        let hops = hops(&request);
        let mut req = request.into_inner();
        if req.event_id.is_empty() {
            req.event_id = self.node.fresh_id("ev");
        }
        let event = convert::event_id(&req.event_id)?;
        let def = raft_store::CreateEvent {
            event_id: event.clone(),
            name: req.name.clone(),
            starts_at_ms: req.starts_at_ms,
            layout: convert::layout(req.layout.clone())?,
            limits: convert::limits(req.limits),
        };
        // The caps, where the call enters: the layout's counts and lengths (cheap, no
        // plan built), then the command's encoded size. `apply` checks them again.
        def.check_limits().map_err(Error::from)?;
        let seats = def.layout.capacity() as usize;
        let command = Command::CreateEvent(def);
        check_command_bytes(&command).map_err(Error::from)?;
        let shard = self.node.cluster.shard_of(&event);
        let answer = &|s: &Shard, reply: Reply| match reply {
            Reply::EventCreated { .. } => summary(s, &event),
            other => Err(Error::unexpected(other)),
        };
        let event = &event;
        self.events_changed();
        let created = self
            .node
            .routed(
                shard,
                Mode::Leader,
                hops,
                |s| {
                    let command = command.clone();
                    async move {
                        // A clear answer on the leader when the shard is full; `apply`
                        // decides (another creation may take the room meanwhile).
                        s.reader.read(|m| m.check_room(event, seats))?;
                        let reply = s.propose(command).await??;
                        answer(&s, reply)
                    }
                },
                forward!(req, create_event),
            )
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.events_changed();
        created
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let hops = hops(&request);
        let mut req = request.into_inner();
        Limit::TextBytes.check(req.q.len()).map_err(Error::from)?;
        req.limit = match req.limit {
            0 => LIST_LIMIT_DEFAULT,
            n => n.min(LIST_LIMIT_MAX),
        };
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.event_list(&req)) {
            return Ok(Response::new(hit));
        }
        let shards: Vec<u32> = match req.shard {
            Some(s) => vec![s],
            None => (0..self.node.cluster.shards()).collect(),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for shard in shards {
            tasks.spawn(list_shard(self.node.clone(), shard, req.clone(), hops));
        }
        let mut events = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let found = joined.map_err(|e| Status::internal(format!("list task: {e}")))??;
            events.extend(found);
        }
        events.sort_by(|a, b| (a.starts_at_ms, &a.event_id).cmp(&(b.starts_at_ms, &b.event_id)));
        events.truncate(req.limit as usize);
        let list = pb::ListEventsResponse {
            events,
            cache_age_ms: 0,
        };
        if let Some(c) = &self.cache {
            c.keep_event_list(&req, &list);
        }
        Ok(Response::new(list))
    }

    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::Event>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let event = convert::event_id(&req.event_id)?;
        let shard = self.node.cluster.shard_of(&event);
        let read = Arc::new(move |s: &Shard| summary(s, &event));
        self.read(shard, hops, read, forward!(req, get_event)).await
    }

    async fn set_sale(
        &self,
        request: Request<pb::SetSaleRequest>,
    ) -> Result<Response<pb::Event>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let event = convert::event_id(&req.event_id)?;
        let command = Command::SetSale {
            event_id: event.clone(),
            sale: convert::sale(req.sale)?,
        };
        let shard = self.node.cluster.shard_of(&event);
        let answer = |s: &Shard, reply| match reply {
            Reply::SaleSet { .. } => summary(s, &event),
            other => Err(Error::unexpected(other)),
        };
        let set = self
            .write(shard, hops, command, answer, forward!(req, set_sale))
            .await;
        self.events_changed();
        set
    }

    async fn get_seat_map(
        &self,
        request: Request<pb::GetSeatMapRequest>,
    ) -> Result<Response<pb::SeatMap>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let event = convert::event_id(&req.event_id)?;
        let part = convert::seat_map_part(&req)?;
        let whole = part == SeatMapPart::default();
        let shard = self.node.cluster.shard_of(&event);
        let read = Arc::new(move |s: &Shard| {
            let map = s.reader.read(|m| m.seat_map_part(&event, &part))?;
            convert::whole_map_within_reply(convert::seat_map_to_pb(&map, s.id))
        });
        if !req.stale_ok {
            return self
                .read(shard, hops, read, forward!(req, get_seat_map))
                .await;
        }
        // Any replica (or a cached answer) may do; the map names the log index it
        // reflects and its age. Only whole maps are cached.
        let cache = self.cache.as_ref().filter(|_| whole);
        if let Some(hit) = cache.and_then(|c| c.seat_map(&req.event_id)) {
            return Ok(Response::new(hit));
        }
        let map = self
            .node
            .routed(
                shard,
                Mode::AnyReplica,
                hops,
                |s| read_off_worker(read.clone(), s),
                forward!(req, get_seat_map),
            )
            .await?;
        if let Some(c) = cache {
            c.keep_seat_map(&map);
        }
        Ok(Response::new(map))
    }

    async fn hold(&self, request: Request<pb::HoldRequest>) -> Result<Response<pb::Hold>, Status> {
        let hops = hops(&request);
        let mut req = request.into_inner();
        let (shard, event) = validate_hold(&self.node, &mut req, hops, None)?;
        let command = hold_command(&event, &req);
        let answer = |_: &Shard, reply| match reply {
            Reply::Held(h) => Ok(convert::hold_to_pb(&h)),
            other => Err(Error::unexpected(other)),
        };
        self.write(shard, hops, command, answer, forward!(req, hold))
            .await
    }

    async fn hold_many(
        &self,
        request: Request<pb::HoldManyRequest>,
    ) -> Result<Response<pb::HoldManyResponse>, Status> {
        // Served by `holds::PassThrough` in a running server; this is the typed way,
        // for a caller of the service itself.
        let hops = hops(&request);
        let answer = holds::hold_many(&self.node, request.into_inner(), hops, None).await?;
        Ok(Response::new(answer))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let hops = hops(&request);
        let mut req = request.into_inner();
        let hold = convert::hold_id(&req.hold_id)?;
        raft_store::ids::validate_token("payment token", &req.payment_token)
            .map_err(Error::Invalid)?;
        Limit::TokenBytes
            .check(req.idempotency_key.len())
            .map_err(Error::from)?;
        if req.idempotency_key.is_empty() {
            req.idempotency_key = self.node.fresh_id("k");
        }
        let shard = self.node.cluster.shard_of(&hold.event);
        let node = &self.node;
        let order = node
            .routed(
                shard,
                Mode::Leader,
                hops,
                |s| {
                    let (hold, token, key) = (
                        hold.clone(),
                        req.payment_token.clone(),
                        req.idempotency_key.clone(),
                    );
                    async move {
                        let order = commit_here(node, &s, hold, token, key).await?;
                        Ok(convert::order_to_pb(&order))
                    }
                },
                forward!(req, commit),
            )
            .await?;
        Ok(Response::new(order))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Hold>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let hold = convert::hold_id(&req.hold_id)?;
        Limit::TokenBytes
            .check(req.user_id.len())
            .map_err(Error::from)?;
        let command = Command::Release {
            hold: hold.clone(),
            user: req.user_id.clone(),
        };
        let shard = self.node.cluster.shard_of(&hold.event);
        let answer = |s: &Shard, reply| match reply {
            Reply::Released { .. } => Ok(convert::hold_to_pb(&s.reader.hold(&hold)??)),
            other => Err(Error::unexpected(other)),
        };
        self.write(shard, hops, command, answer, forward!(req, release))
            .await
    }

    async fn get_hold(
        &self,
        request: Request<pb::GetHoldRequest>,
    ) -> Result<Response<pb::Hold>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let hold = convert::hold_id(&req.hold_id)?;
        let shard = self.node.cluster.shard_of(&hold.event);
        // `hold` also finds holds whose records live only on disk.
        let read = Arc::new(move |s: &Shard| Ok(convert::hold_to_pb(&s.reader.hold(&hold)??)));
        self.read(shard, hops, read, forward!(req, get_hold)).await
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let order = convert::order_id(&req.order_id)?;
        let shard = self.node.cluster.shard_of(&order.event);
        let read = Arc::new(move |s: &Shard| {
            let o = s.reader.read(|m| m.order(&order))?;
            Ok(convert::order_to_pb(&o))
        });
        self.read(shard, hops, read, forward!(req, get_order)).await
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let req = request.get_ref();
        if req.local {
            // No digest on the client port: it reads a shard's whole state, so only
            // peers may ask for it (over the peer port).
            return Ok(Response::new(local_status(&self.node, false)));
        }
        let nodes: Vec<NodeId> = self.node.cluster.nodes().keys().copied().collect();
        let views = peer_views(&self.node, &nodes, Duration::from_millis(1_000)).await?;
        Ok(Response::new(merge_views(&self.node, views)))
    }
}
